//! `walcast snapshot` beside a streaming `walcast run` while rows are deleted,
//! on both Elasticsearch-API servers: osmem-server (keeps delete tombstones) and noida-db
//! (keeps none, like Elasticsearch after `index.gc_deletes`).
//!
//! A row the snapshot read at its consistent point P and the stream deleted afterwards reaches
//! the index twice: the stream's delete, and the snapshot's older write. Without a tombstone,
//! the write arriving second creates the document again. walcast rechecks the loaded rows in a
//! newer snapshot and deletes those gone; afterwards the index must equal Postgres.
//!
//! - `rule_snapshot_beside_root_deletes_{osmem,noida}`: the movies document rule, chunked
//!   (5 films a chunk), a film deleted every 20 ms (alternately the highest id, which the
//!   snapshot writes last, and a random one) from its start to its end;
//! - `table_snapshot_beside_deletes_{osmem,noida}`: the same with `--table` into a flat index,
//!   on a table with a composite primary key (text, int) (and the JSON-lines sink of the
//!   snapshot's config, which gets the recheck's deletes).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::movies::*;
use crate::support::*;
use serde_json::{json, Value};

const LOAD_WAIT: Duration = Duration::from_secs(90);
/// After the snapshot exits, how long the index may take to equal Postgres (the stream
/// catching up); a resurrected document never goes away.
const SETTLE: Duration = Duration::from_secs(30);

/// `walcast snapshot ARGS --config CONFIG` in the background, its output in `log`.
fn spawn_snapshot(args: &[&str], config: &Path, log: &Path) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("log");
    tokio::process::Command::new(BIN)
        .arg("snapshot")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn walcast snapshot")
}

/// Wait until the snapshot has taken its consistent point and started loading.
async fn wait_started(snapshot: &mut tokio::process::Child, log: &Path) {
    let deadline = Instant::now() + LOAD_WAIT;
    while !std::fs::read_to_string(log).unwrap_or_default().contains("snapshot started") {
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "walcast snapshot did not start\n{}", text());
        assert!(snapshot.try_wait().expect("try_wait").is_none(), "walcast snapshot exited early\n{}", text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Run `delete` (one statement) every 20 ms until `stop`; returns how many rows it deleted.
fn deleter(db: &TestDb, statements: [String; 2], stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = db.url.clone();
    tokio::spawn(async move {
        let client = connect(&url).await;
        let mut deleted = 0;
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            deleted += client.execute(statements[n % 2].as_str(), &[]).await.expect("delete");
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        deleted
    })
}

/// The snapshot's exit, with its log; and the rows its recheck deleted (from the log).
async fn finish(snapshot: &mut tokio::process::Child, log: &Path) -> (String, Option<u64>) {
    let status = tokio::time::timeout(LOAD_WAIT, snapshot.wait()).await.expect("walcast snapshot finished in time").expect("wait");
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "walcast snapshot exits 0 when done\n{text}");
    let rechecked = text
        .lines()
        .find(|l| l.contains("snapshot recheck finished"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("deleted=")))
        .and_then(|n| n.parse().ok());
    (text, rechecked)
}

async fn rule_snapshot_beside_root_deletes(es_url: &str, test: &str) {
    let index = index_name(test);
    let db = movies_db(test, es_url, &index).await;
    let sql = db.client().await;
    let mut wc = movies_walcast(&db, es_url, &index, &MoviesOptions::default());
    wc.start();
    assert_index_matches_sql(&sql, es_url, &index, LOAD_WAIT, &wc, "after the initial snapshot").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("snapshot.toml");
    let opts = MoviesOptions { chunk_rows: Some(5), ..MoviesOptions::default() };
    std::fs::write(&config, movies_config(&db, es_url, &index, &dir.path().join("state"), &opts)).expect("config");
    let log = dir.path().join("snapshot.log");
    let mut snapshot = spawn_snapshot(&["--rule", "movies"], &config, &log);
    wait_started(&mut snapshot, &log).await;

    let stop = Arc::new(AtomicBool::new(false));
    let films = "DELETE FROM content.film_work WHERE id = (SELECT id FROM content.film_work ORDER BY";
    let deletes = deleter(&db, [format!("{films} id DESC LIMIT 1)"), format!("{films} random() LIMIT 1)")], Arc::clone(&stop));
    let (snapshot_log, rechecked) = finish(&mut snapshot, &log).await;
    stop.store(true, Ordering::Relaxed);
    let deleted = deletes.await.expect("deleter");
    assert!(snapshot_log.contains("snapshot finished"), "{snapshot_log}");

    // Every film deleted meanwhile is gone from the index, every other one is as in Postgres.
    let expected = expected_documents(&sql).await;
    let started = Instant::now();
    loop {
        let d = diff(&expected, &fetch_all(es_url, &index).await);
        if d.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < SETTLE,
            "{test}: after walcast snapshot --rule movies ({deleted} films deleted while it ran), the index differs from Postgres:\n{}\n\
             snapshot log tail:\n{}\nrun log tail:\n{}",
            d.join("\n"),
            tail(&snapshot_log, 15),
            wc.log_tail(15)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rechecked = rechecked.unwrap_or_else(|| panic!("no `snapshot recheck finished` line\n{snapshot_log}"));
    assert!(rechecked > 0, "films were deleted during the load, so the recheck deletes some\n{snapshot_log}");
    eprintln!("{test}: {deleted} films deleted while the snapshot ran; its recheck deleted {rechecked}");

    wc.stop().await;
    db.drop().await;
    Es::new(es_url).delete_index(&index).await;
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_snapshot_beside_root_deletes_osmem() {
    rule_snapshot_beside_root_deletes(&es_url(), "recheck_rule_osmem").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rule_snapshot_beside_root_deletes_noida() {
    rule_snapshot_beside_root_deletes(&noida_url(), "recheck_rule_noida").await;
}

async fn table_snapshot_beside_deletes(es_url: &str, test: &str) {
    let es = Es::new(es_url);
    let index = index_name(test);
    es.delete_index(&index).await;
    let db = TestDb::create(test).await;
    let sql = db.client().await;
    // A composite key (text, int): documents ids are `["k3",17]`.
    exec(
        &sql,
        "CREATE TABLE items (k text, id int, v text, PRIMARY KEY (k, id)); \
         INSERT INTO items SELECT 'k' || (s % 7), s, 'v' || s FROM generate_series(1, 5000) s",
    )
    .await;
    db.create_publication(&["items"]).await;
    db.create_slot().await; // `walcast run` only streams; the index is filled by `walcast snapshot`
    let rule = format!("[[sinks.elasticsearch.tables]]\ntable = \"public.items\"\nindex = \"{index}\"\n");
    let mut wc = Walcast::with_options(&db, &Options { extra: es_section(es_url, &rule), ..Options::default() });
    wc.start();

    // The snapshot's own config: its JSON lines in another file, 50 rows a chunk.
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, out, log) = (dir.path().join("snapshot.toml"), dir.path().join("snapshot.jsonl"), dir.path().join("snapshot.log"));
    let state = dir.path().join("state").to_string_lossy().into_owned();
    let extra = format!("{}\n[snapshot]\nchunk_rows = 50\nstate_dir = {}\n", es_section(es_url, &rule), toml_str(&state));
    std::fs::write(&config, config_toml(&db.url, &db.slot, &db.publication, &out, &Options { extra, ..Options::default() }))
        .expect("config");
    let mut snapshot = spawn_snapshot(&["--table", "public.items"], &config, &log);
    wait_started(&mut snapshot, &log).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rows = "DELETE FROM items WHERE (k, id) = (SELECT k, id FROM items ORDER BY";
    let deletes = deleter(&db, [format!("{rows} k DESC, id DESC LIMIT 1)"), format!("{rows} random() LIMIT 1)")], Arc::clone(&stop));
    let (snapshot_log, rechecked) = finish(&mut snapshot, &log).await;
    stop.store(true, Ordering::Relaxed);
    let deleted = deletes.await.expect("deleter");

    // The index equals the table once the stream has caught up.
    let expected: Vec<(String, Value)> = sql
        .query("SELECT k, id, v FROM items", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            let (k, id, v): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
            (json!([k, id]).to_string(), json!({"k": k, "id": id, "v": v}))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let started = Instant::now();
    loop {
        let actual = es.all(&index).await;
        if actual == expected {
            break;
        }
        if started.elapsed() >= SETTLE {
            let have: std::collections::BTreeSet<&String> = actual.iter().map(|(id, _)| id).collect();
            let want: std::collections::BTreeSet<&String> = expected.iter().map(|(id, _)| id).collect();
            let extra: Vec<&&String> = have.difference(&want).take(20).collect();
            let missing: Vec<&&String> = want.difference(&have).take(20).collect();
            panic!(
                "{test}: after walcast snapshot --table ({deleted} rows deleted while it ran), the index has {} documents, Postgres {} rows; \
                 extra (deleted in Postgres): {extra:?}; missing: {missing:?}\nsnapshot log tail:\n{}",
                actual.len(),
                expected.len(),
                tail(&snapshot_log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rechecked = rechecked.unwrap_or_else(|| panic!("no `snapshot recheck finished` line\n{snapshot_log}"));
    assert!(rechecked > 0, "rows were deleted during the load, so the recheck deletes some\n{snapshot_log}");

    // The snapshot's JSON lines: every row read at P, then the recheck's deletes at a later
    // point (with the row as it was read).
    let lines: Vec<Value> =
        std::fs::read_to_string(&out).expect("snapshot output").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let (reads, removals): (Vec<&Value>, Vec<&Value>) = lines.iter().partition(|l| l["op"] == "read");
    assert_eq!(reads.len(), 5000, "every row read once");
    assert_eq!(removals.len() as u64, rechecked, "one delete line per rechecked row");
    let point = commit_lsn(reads[0]);
    for d in &removals {
        assert_eq!(d["op"], "delete", "{d}");
        assert!(commit_lsn(d) > point, "a recheck delete is newer than the reads: {d}");
        assert!(d["before"]["v"].is_string(), "the delete carries the row as read: {d}");
    }
    // Both temporary slots went away with their sessions.
    let pattern = format!("{}\\_snapshot\\_%", db.slot);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = query_text(&sql, &format!("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '{pattern}'")).await;
        if left.as_deref() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "temporary slots left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = |what: &str| {
        snapshot_log
            .lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("elapsed_ms=")))
            .unwrap_or("?")
            .to_string()
    };
    eprintln!(
        "{test}: {deleted} rows deleted while the snapshot ran; its recheck deleted {rechecked}; load {} ms, recheck {} ms",
        elapsed("snapshot finished"),
        elapsed("snapshot recheck finished")
    );

    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn table_snapshot_beside_deletes_osmem() {
    table_snapshot_beside_deletes(&es_url(), "recheck_table_osmem").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn table_snapshot_beside_deletes_noida() {
    table_snapshot_beside_deletes(&noida_url(), "recheck_table_noida").await;
}
