//! The snapshot of the movies document rule (config/movies.toml) end to end, on the real
//! dataset (999 films) and osmem-server:
//! - `initial_snapshot_indexes_every_film`: a fresh database, `walcast run` creates the slot and
//!   loads film_work inside its exported snapshot: the index then holds exactly the 999 documents
//!   an independent SQL derivation expects (support::movies), and the progress file says
//!   `done` with 999 rows;
//! - `on_demand_snapshot_repairs_and_never_rolls_back`: while `walcast run` streams, a few
//!   documents are deleted by hand (plain DELETE); `walcast snapshot --rule movies` (chunked, so
//!   it runs for a while) brings them back, and neither a change committed just before it nor
//!   changes committed while it runs (streamed with newer versions than its consistent point)
//!   are rolled back by its older reads: afterwards every document equals the expectation.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::movies::*;
use crate::support::*;
use serde_json::json;

/// Films in the dataset.
const FILMS: usize = 999;
/// Generous: the snapshot itself takes about a second.
const LOAD_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn initial_snapshot_indexes_every_film() {
    let es_url = es_url();
    let index = index_name("movies-snap");
    let db = movies_db("movies_snap", &es_url, &index).await;
    let sql = db.client().await;
    let expected = expected_documents(&sql).await;
    assert_eq!(expected.len(), FILMS, "the dataset has {FILMS} films");

    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    let started = Instant::now();
    wc.start();
    // The progress file says done only after every chunk was written.
    let deadline = Instant::now() + LOAD_WAIT;
    let state = loop {
        if let Some(s) = snapshot_state(&wc, &db).filter(|s| s["status"] == "done") {
            break s;
        }
        assert!(wc.is_running(), "walcast exited during the snapshot\n{}", wc.log_tail(40));
        assert!(Instant::now() < deadline, "snapshot not done after {LOAD_WAIT:?}: {:?}\n{}", snapshot_state(&wc, &db), wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done_after = started.elapsed();
    let film_work = &state["tables"]["content.film_work"];
    assert_eq!(film_work["done"], json!(true), "{state}");
    assert_eq!(film_work["rows"], json!(FILMS), "{state}");
    assert!(state["point"].as_str().is_some_and(|p| p.contains('/')), "the consistent point is recorded: {state}");

    // Exactly the expected documents, no more (the diff lists extra ids too).
    let waited = wait_index_equals(&es_url, &index, &expected, LOAD_WAIT, &wc, "after the initial snapshot").await;
    assert_eq!(fetch_all(&es_url, &index).await.len(), FILMS);

    // Every snapshot write carries the consistent point as its version.
    let point = parse_lsn(state["point"].as_str().expect("point"));
    let some_id = expected.keys().next().expect("a film");
    let (_, version) = Es::new(&es_url).doc_with_version(&index, some_id).await.expect("document");
    assert_eq!(version, point.0, "snapshot documents are versioned with the consistent point {point}");

    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    let elapsed_ms = log
        .lines()
        .find(|l| l.contains("snapshot finished"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("elapsed_ms=")))
        .unwrap_or("?")
        .to_string();
    assert!(!log.contains("dead letter"), "no document may be rejected\n{}", wc.log_tail(40));
    eprintln!(
        "movies initial snapshot: {FILMS} documents, walcast's snapshot elapsed_ms={elapsed_ms}, progress file done {} ms after start, \
         index equal to the expectation {} ms later",
        done_after.as_millis(),
        waited.as_millis()
    );

    wc.stop().await;
    db.drop().await;
    Es::new(&es_url).delete_index(&index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_snapshot_repairs_and_never_rolls_back() {
    let es_url = es_url();
    let es = Es::new(&es_url);
    let index = index_name("movies-ondemand");
    let db = movies_db("movies_ondemand", &es_url, &index).await;
    let sql = db.client().await;
    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    wc.start();
    let before = assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the initial snapshot").await;

    // Corrupt the index by hand: three documents deleted with a plain DELETE (internal
    // versioning: the tombstone's version is the stored one plus one).
    let ids: Vec<&String> = before.keys().collect();
    let damaged = [ids[1].clone(), ids[400].clone(), ids[800].clone()];
    for id in &damaged {
        let (s, v) = es.request(reqwest::Method::DELETE, &format!("/{index}/_doc/{id}"), None).await;
        assert_eq!(s, 200, "DELETE {id}: {v}");
    }
    assert!(fetch_ids(&es_url, &index, &damaged).await.is_empty(), "the damaged documents are gone");

    // Committed just before the snapshot starts, not waited for.
    let first = ids[0].clone();
    exec(&sql, &format!("UPDATE content.film_work SET title = title || ' (just before)' WHERE id = '{first}'")).await;

    // A chunked on-demand snapshot (5 films per chunk: it runs for a few seconds), its log in a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("snapshot.toml");
    let opts = MoviesOptions { chunk_rows: Some(5), ..MoviesOptions::default() };
    std::fs::write(&config, movies_config(&db, &es_url, &index, &dir.path().join("state"), &opts)).expect("config");
    let log_path = dir.path().join("snapshot.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let snapshot_started = Instant::now();
    let mut snapshot = tokio::process::Command::new(BIN)
        .args(["snapshot", "--rule", "movies", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn walcast snapshot");

    // Once its consistent point is taken, change the films it reads last (highest ids: keyset
    // order) and a person of one of them. The stream writes them with commit LSNs newer than
    // the point; the snapshot's older reads of them must not win.
    let deadline = Instant::now() + LOAD_WAIT;
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("snapshot started") {
        assert!(Instant::now() < deadline, "walcast snapshot did not start\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        assert!(
            snapshot.try_wait().expect("try_wait").is_none(),
            "walcast snapshot exited early\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (last, second_last) = (ids[ids.len() - 1].clone(), ids[ids.len() - 2].clone());
    exec(&sql, &format!("UPDATE content.film_work SET title = title || ' (during)' WHERE id = '{last}'")).await;
    exec(&sql, &format!("UPDATE content.film_work SET rating = 1.5 WHERE id = '{second_last}'")).await;
    let person = sql_text(
        &sql,
        &format!("SELECT person_id::text FROM content.person_film_work WHERE film_work_id = '{second_last}' ORDER BY person_id LIMIT 1"),
    )
    .await;
    exec(&sql, &format!("UPDATE content.person SET full_name = full_name || ' (during)' WHERE id = '{person}'")).await;
    // The streamed change is visible while the snapshot still runs (so its later write of that
    // film is the older one).
    let streamed = es
        .wait_doc(&index, &last, Duration::from_secs(20), |d| {
            d.is_some_and(|d| d["title"].as_str().is_some_and(|t| t.ends_with("(during)")))
        })
        .await;
    assert!(streamed.is_some());
    let snapshot_still_running = snapshot.try_wait().expect("try_wait").is_none();

    let status = tokio::time::timeout(LOAD_WAIT, snapshot.wait()).await.expect("walcast snapshot finished in time").expect("wait");
    let snapshot_ms = snapshot_started.elapsed().as_millis();
    let snapshot_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "walcast snapshot exits 0 when done\n{snapshot_log}");
    assert!(snapshot_log.contains("snapshot finished rows=999"), "{snapshot_log}");

    // Everything equals the expectation recomputed now: the deleted documents are back, the
    // changes before and during the snapshot are kept.
    let after = assert_index_matches_sql(&sql, &es_url, &index, Duration::from_secs(30), &wc, "after walcast snapshot --rule movies").await;
    assert!(after[&first]["title"].as_str().is_some_and(|t| t.ends_with("(just before)")));
    assert!(after[&last]["title"].as_str().is_some_and(|t| t.ends_with("(during)")));
    assert_eq!(after[&second_last]["imdb_rating"], json!(1.5));

    // The temporary slot went away with the snapshot's session.
    let admin = db.admin().await;
    let leftovers =
        sql_text(&admin, &format!("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '{}\\_snapshot\\_%'", db.slot))
            .await;
    assert_eq!(leftovers, "0", "the on-demand snapshot's temporary slot is dropped");

    let stale: usize = snapshot_log
        .lines()
        .filter(|l| l.contains("writes older than the stored documents"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("stale=")).and_then(|n| n.parse::<usize>().ok()))
        .sum();
    eprintln!(
        "movies on-demand snapshot: {snapshot_ms} ms (chunk_rows=5), {} damaged documents restored, streamed change visible while it ran: \
         {snapshot_still_running}, its writes found stale (newer streamed version kept): {stale}",
        damaged.len()
    );

    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}
