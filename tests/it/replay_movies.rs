//! The operator's recipe "restore an index from a backup, then replay from its mark" on the
//! movies document rule (config/movies.toml, 999 films, osmem): after the initial snapshot and
//! a first edit, mark M and back the index up (documents and versions); admin edits follow (a
//! person renamed, a genre renamed, a film deleted, a film added with its links); the index is
//! deleted and restored from the backup (stale as of M), then `walcast replay --from-mark M`
//! (beside the running `walcast run`) -> every document equals Postgres again; the same replay
//! again changes nothing.
//! And the index deleted outright: walcast starts on the empty movies tables, mark M, the whole
//! dataset is loaded (one transaction, after a TRUNCATE of the tables) and edited while streaming; the index is deleted, then
//! `walcast replay --from-mark M` recreates it from its mapping and every document (nested
//! genres and people) equals Postgres again; the same replay again: the same documents and
//! versions.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::es::*;
use crate::support::movies::*;
use crate::support::*;
use serde_json::{json, Value};

const LOAD_WAIT: Duration = Duration::from_secs(60);

/// Every document of the index with its version (realtime GETs).
async fn backup(es: &Es, index: &str) -> BTreeMap<String, (Value, u64)> {
    let mut out = BTreeMap::new();
    for id in fetch_all(&es.url, index).await.keys() {
        let dv = es.doc_with_version(index, id).await.unwrap_or_else(|| panic!("document {id} vanished"));
        out.insert(id.clone(), dv);
    }
    out
}

/// Create the index from the v2 definition and write the backup into it with its versions, as
/// a snapshot restore does.
async fn restore(es: &Es, index: &str, docs: &BTreeMap<String, (Value, u64)>) {
    let definition: Value = serde_json::from_str(&std::fs::read_to_string(mapping_file()).expect("index definition")).expect("JSON");
    es.create_index(index, definition).await;
    let mut body = String::new();
    for (id, (doc, version)) in docs {
        body.push_str(&json!({"index": {"_index": index, "_id": id, "version": version, "version_type": "external"}}).to_string());
        body.push('\n');
        body.push_str(&doc.to_string());
        body.push('\n');
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/_bulk", es.url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("_bulk");
    let status = resp.status();
    let answer: Value = serde_json::from_slice(&resp.bytes().await.expect("_bulk answer")).expect("JSON answer");
    assert!(status.is_success() && answer["errors"] == json!(false), "restore: {status} {answer}");
    es.refresh(index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_backup_then_replay_from_its_mark() {
    let es_url = es_url();
    let es = Es::new(&es_url);
    let index = index_name("replay-movies");
    let db = movies_db("replay_movies", &es_url, &index).await;
    let sql = db.client().await;
    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    let config = wc.config_path.to_string_lossy().into_owned();
    wc.start();
    assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the initial snapshot").await;

    // A first edit gives the log an end (snapshot rows are not logged); mark it, back up.
    let film = sql_text(&sql, "SELECT id::text FROM content.film_work ORDER BY id LIMIT 1").await;
    exec(&sql, &format!("UPDATE content.film_work SET rating = 1.5 WHERE id = '{film}'")).await;
    let first = current_wal_lsn(&sql).await;
    assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the first edit").await;
    db.wait_confirmed_at_least(first, LOAD_WAIT).await;
    let out = walcast_cmd(&["mark", "backup-1", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let saved = backup(&es, &index).await;
    assert_eq!(saved.len(), 999);

    // Admin edits after the mark.
    let person = sql_text(
        &sql,
        "SELECT person_id::text FROM content.person_film_work GROUP BY person_id ORDER BY count(DISTINCT film_work_id) DESC, person_id LIMIT 1",
    )
    .await;
    exec(&sql, &format!("UPDATE content.person SET full_name = full_name || ' Renamed' WHERE id = '{person}'")).await;
    let genre =
        sql_text(&sql, "SELECT genre_id::text FROM content.genre_film_work GROUP BY genre_id ORDER BY count(*) DESC, genre_id LIMIT 1")
            .await;
    exec(&sql, &format!("UPDATE content.genre SET name = name || ' Renamed' WHERE id = '{genre}'")).await;
    let gone = sql_text(&sql, "SELECT film_work_id::text FROM content.person_film_work ORDER BY film_work_id DESC LIMIT 1").await;
    exec(&sql, &format!("DELETE FROM content.film_work WHERE id = '{gone}'")).await;
    let new_film = "00000000-0000-4000-8000-00000000f11a";
    exec(
        &sql,
        &format!(
            "BEGIN;
             INSERT INTO content.film_work (id, title, description, rating, type) VALUES ('{new_film}', 'Replayed', 'From the log.', 7.7, 'movie');
             INSERT INTO content.genre_film_work (id, film_work_id, genre_id) SELECT gen_random_uuid(), '{new_film}', id FROM content.genre ORDER BY id LIMIT 2;
             INSERT INTO content.person_film_work (id, film_work_id, person_id, role)
                 SELECT gen_random_uuid(), '{new_film}', id, 'actor' FROM content.person ORDER BY id LIMIT 3;
             COMMIT"
        ),
    )
    .await;
    let end = current_wal_lsn(&sql).await;
    let expected = assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the edits").await;
    db.wait_confirmed_at_least(end, LOAD_WAIT).await;
    assert!(expected.contains_key(new_film) && !expected.contains_key(&gone));

    // The index is lost; restored from the backup it is stale as of the mark.
    es.delete_index(&index).await;
    restore(&es, &index, &saved).await;
    assert!(!diff(&expected, &fetch_all(&es_url, &index).await).is_empty(), "the backup predates the edits");

    let out = walcast_cmd(&["replay", "--from-mark", "backup-1", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let got = fetch_all(&es_url, &index).await;
    let d = diff(&expected, &got);
    assert!(d.is_empty(), "after the replay the index equals Postgres:\n{}\n{out}", d.join("\n"));
    let replayed = backup(&es, &index).await;

    // The same replay again: the same documents, the same versions.
    let out = walcast_cmd(&["replay", "--from-mark", "backup-1", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(backup(&es, &index).await, replayed, "replaying twice gives the same index");

    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter"), "no document may be rejected\n{}", wc.log_tail(40));
    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_movies_index_is_rebuilt_by_a_replay_from_a_mark_before_the_load() {
    let es_url = es_url();
    let es = Es::new(&es_url);
    let index = index_name("replay-movies-deleted");
    let db = movies_db("replay_movies_deleted", &es_url, &index).await;
    let sql = db.client().await;
    // The dataset moves to a schema walcast does not read and the tables are emptied before
    // walcast starts: its snapshot loads nothing, so everything the index will hold is streamed
    // (and logged).
    const TABLES: [&str; 5] = ["film_work", "genre", "person", "genre_film_work", "person_film_work"];
    exec(&sql, "CREATE SCHEMA staging").await;
    for t in TABLES {
        exec(&sql, &format!("CREATE TABLE staging.{t} AS SELECT * FROM content.{t}")).await;
    }
    exec(&sql, "TRUNCATE content.person_film_work, content.genre_film_work, content.person, content.genre, content.film_work").await;
    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    let config = wc.config_path.to_string_lossy().into_owned();
    wc.start();
    wc.wait_streaming_slot(&db).await;
    assert!(assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the empty snapshot").await.is_empty());

    // A first transaction gives the log an end to mark (a genre alone makes no document).
    exec(&sql, "INSERT INTO content.genre (id, name) VALUES ('00000000-0000-4000-8000-0000000000ee', 'Warm-up')").await;
    let warm = current_wal_lsn(&sql).await;
    db.wait_confirmed_at_least(warm, LOAD_WAIT).await;
    let out = walcast_cmd(&["mark", "before-load", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");

    // The workload: the tables emptied and the whole dataset loaded in one transaction, then
    // edits. The second replay sends the TRUNCATE over the complete index: it must delete only
    // the documents older than it.
    let load: String = TABLES.iter().map(|t| format!("INSERT INTO content.{t} SELECT * FROM staging.{t}; ")).collect();
    exec(&sql, &format!("BEGIN; TRUNCATE content.person_film_work, content.genre_film_work, content.person, content.genre, content.film_work; {load} COMMIT")).await;
    let person = sql_text(&sql, "SELECT person_id::text FROM content.person_film_work ORDER BY person_id LIMIT 1").await;
    exec(&sql, &format!("UPDATE content.person SET full_name = full_name || ' Renamed' WHERE id = '{person}'")).await;
    let gone = sql_text(&sql, "SELECT film_work_id::text FROM content.genre_film_work ORDER BY film_work_id LIMIT 1").await;
    exec(&sql, &format!("DELETE FROM content.film_work WHERE id = '{gone}'")).await;
    let end = current_wal_lsn(&sql).await;
    let expected = assert_index_matches_sql(&sql, &es_url, &index, LOAD_WAIT, &wc, "after the load and the edits").await;
    assert_eq!(expected.len(), 998, "the dataset's 999 films, one deleted");
    db.wait_confirmed_at_least(end, LOAD_WAIT).await;
    let streamed = backup(&es, &index).await;

    es.delete_index(&index).await;
    let out = walcast_cmd(&["replay", "--from-mark", "before-load", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let d = diff(&expected, &fetch_all(&es_url, &index).await);
    assert!(d.is_empty(), "after the replay the index equals Postgres:\n{}\n{out}", d.join("\n"));
    let replayed = backup(&es, &index).await;

    let out = walcast_cmd(&["replay", "--from-mark", "before-load", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let d = diff(&expected, &fetch_all(&es_url, &index).await);
    assert!(
        d.is_empty(),
        "after the second replay (its TRUNCATE over the complete index) the index equals Postgres:\n{}\n{out}",
        d.join("\n")
    );
    let again = backup(&es, &index).await;
    assert_eq!(again, replayed, "replaying twice gives the same index");
    assert_eq!(again.keys().collect::<Vec<_>>(), streamed.keys().collect::<Vec<_>>());

    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter"), "no document may be rejected\n{}", wc.log_tail(40));
    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}
