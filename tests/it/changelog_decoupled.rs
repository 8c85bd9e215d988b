//! Decoupled mode (`[changelog] ack = "decoupled"`): a private Elasticsearch-API server (noida-db)
//! is stopped for 2 minutes while a steady workload commits.
//! - the slot's confirmed_flush_lsn keeps advancing and the WAL the slot retains stays under
//!   16 MB: the log, not the sink, holds what the sink has not received;
//! - walcast keeps running, and the JSON-lines sink (its own follower) keeps up meanwhile;
//! - after the server is back, walcast is SIGKILLed while Elasticsearch catches up from the log,
//!   and restarted: the index ends equal to the table, row by row.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::changelog_strict::cursors;
use crate::support::es::*;
use crate::support::*;
use walcast::lsn::Lsn;

const OUTAGE: Duration = Duration::from_secs(120);
const RETAINED_MAX: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_down_2_minutes_slot_advances_and_the_index_catches_up_through_a_kill() {
    // Retained WAL is measured on the shared cluster: not beside a test writing hundreds of MB.
    let _heavy = wal_heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = PrivateNoida::start(dir.path()).await;
    let es = Es::new(&server.url());
    let index = index_name("decoupled");
    let db = TestDb::create("changelog_decoupled").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, n int, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    // Small batches from the log: the catch-up takes many bulk requests, so the kill lands in it.
    let extra = format!(
        "[pipeline]\nbatch_max_changes = 20\n\n[changelog]\nack = \"decoupled\"\n\n{}",
        es_section(
            &server.url(),
            &format!("request_timeout_ms = 2000\nconnect_timeout_ms = 500\n\n[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n"),
        )
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    // A transaction every ~10 ms: a row inserted and an older one updated.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn({
        let stop = stop.clone();
        let client = db.client().await;
        async move {
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sql = format!(
                    "BEGIN; INSERT INTO t VALUES ({i}, 0, md5('{i}')); UPDATE t SET n = n + 1 WHERE id = {}; COMMIT;",
                    (i / 2).max(1)
                );
                client.batch_execute(&sql).await.expect("workload");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i
        }
    });
    es.wait_doc(&index, "20", Duration::from_secs(30), |d| d.is_some()).await;

    // Down for two minutes.
    server.stop().await;
    let started = Instant::now();
    let mut last_confirmed = db.confirmed_flush_lsn().await;
    let (mut advances, mut samples, mut max_retained) = (0, 0, 0u64);
    while started.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(wc.is_running(), "walcast keeps running while Elasticsearch is down\n{}", wc.log_tail(30));
        let confirmed = db.confirmed_flush_lsn().await;
        let retained = retained_wal(&sql, &db.slot).await;
        max_retained = max_retained.max(retained);
        assert!(retained < RETAINED_MAX, "the slot retains {retained} bytes of WAL after {:?} of outage", started.elapsed());
        samples += 1;
        if confirmed > last_confirmed {
            advances += 1;
        }
        last_confirmed = confirmed;
    }
    assert!(advances + 2 >= samples, "confirmed_flush_lsn advanced in only {advances} of {samples} 5 s samples during the outage");
    // The JSON-lines sink followed the log meanwhile.
    let now = current_wal_lsn(&sql).await;
    let c = cursors(&wc, &db).expect("cursor file");
    let jsonl = parse_lsn(c["cursors"]["jsonl"].as_str().expect("jsonl cursor"));
    let es_cursor = c["cursors"]["elasticsearch"].as_str().map(parse_lsn).unwrap_or(Lsn::ZERO);
    assert!(es_cursor < jsonl, "Elasticsearch ({es_cursor}) is behind the JSON-lines sink ({jsonl}) after the outage");
    assert!(jsonl.0 + (8 << 20) > now.0, "the JSON-lines sink kept up: cursor {jsonl}, WAL {now}");

    // Back; the workload stops; SIGKILL while Elasticsearch catches up from the log.
    server.restart().await;
    stop.store(true, Ordering::Relaxed);
    let last_id = workload.await.expect("workload");
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught_during_catch_up = loop {
        let count = es.all(&index).await.len();
        if count > 50 {
            break (count as i32) < last_id;
        }
        assert!(Instant::now() < deadline, "Elasticsearch does not catch up\n{}", wc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wc.kill().await;
    db.wait_slot_inactive(Duration::from_secs(10)).await;
    wc.start();

    // Caught up: one document per row, with its latest values.
    let rows = sql.query("SELECT id, n, v FROM t ORDER BY id", &[]).await.expect("rows");
    assert_eq!(rows.len(), last_id as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    let docs = loop {
        let docs: BTreeMap<String, serde_json::Value> = es.all(&index).await.into_iter().collect();
        let equal = docs.len() == rows.len()
            && rows.iter().all(|r| {
                let (id, n, v): (i32, i32, String) = (r.get(0), r.get(1), r.get(2));
                docs.get(&id.to_string()) == Some(&serde_json::json!({"id": id, "n": n, "v": v}))
            });
        if equal || Instant::now() > deadline {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for r in &rows {
        let (id, n, v): (i32, i32, String) = (r.get(0), r.get(1), r.get(2));
        let d = docs.get(&id.to_string()).unwrap_or_else(|| panic!("row {id} is missing from the index\n{}", wc.log_tail(30)));
        assert_eq!(d, &serde_json::json!({"id": id, "n": n, "v": v}), "row {id}");
    }
    assert_eq!(docs.len(), rows.len(), "one document per row");
    eprintln!(
        "decoupled: {last_id} transactions, confirmed advanced in {advances}/{samples} samples, max retained WAL {max_retained} B, killed during catch-up: {caught_during_catch_up}"
    );
    assert!(caught_during_catch_up, "the kill came after the catch-up finished; make the backlog bigger");
    wc.stop().await;
    db.drop().await;
}

/// WAL the slot retains: the current WAL position minus its restart_lsn.
async fn retained_wal(sql: &tokio_postgres::Client, slot: &str) -> u64 {
    let row = sql
        .query_one("SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("retained WAL");
    u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)
}
