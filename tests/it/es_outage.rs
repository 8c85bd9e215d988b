//! The Elasticsearch server is stopped for 30 s while a workload commits (a private noida-db
//! instance, which keeps its data across the restart; the shared servers stay untouched):
//! - walcast keeps running and backs off (bounded retries, not a spin);
//! - while the server is down the slot's confirmed_flush_lsn never passes the WAL position of the
//!   moment it went down (nothing committed after it can have been delivered);
//! - after the server is back, walcast catches up and every row is in the index with its latest
//!   values: nothing is missing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::*;

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn server_down_for_30s_holds_the_slot_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = PrivateNoida::start(dir.path()).await;
    let es = Es::new(&server.url());
    let index = index_name("outage");
    let db = TestDb::create("es_outage").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, n int, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let extra = es_section(
        &server.url(),
        &format!("request_timeout_ms = 2000\nconnect_timeout_ms = 500\n\n[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n"),
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    // The workload: a transaction every ~20 ms inserting a row and updating an older one.
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
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        }
    });

    // Running normally for a while.
    es.wait_doc(&index, "20", Duration::from_secs(30), |d| d.is_some()).await;

    // Down.
    server.stop().await;
    // A change of t committed now is owed to the stopped server: nothing at or after its commit
    // may be confirmed until the server is back. (WAL of other databases before it may be: with
    // nothing owed, walcast confirms the server's position, so reading that position alone
    // raced with the workload's next commit.)
    exec(&sql, "UPDATE t SET n = n WHERE id = 1").await;
    let down_at = current_wal_lsn(&sql).await;
    let started = Instant::now();
    let mut max_confirmed = db.confirmed_flush_lsn().await;
    while started.elapsed() < OUTAGE {
        let c = db.confirmed_flush_lsn().await;
        assert!(c <= down_at, "confirmed_flush_lsn {c} moved past {down_at}, the WAL position when the server went down");
        max_confirmed = max_confirmed.max(c);
        assert!(wc.is_running(), "walcast must keep running while the server is down\n{}", wc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = current_wal_lsn(&sql).await;
    assert!(during > down_at, "the workload kept committing");

    // Back.
    server.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let last_id = workload.await.expect("workload");
    let end = current_wal_lsn(&sql).await;
    let confirmed = db.wait_confirmed_at_least(end, Duration::from_secs(60)).await;
    assert!(confirmed >= end, "walcast caught up: confirmed {confirmed}, end {end}\n{}", wc.log_tail(30));

    // Nothing missing: every row, with its latest values.
    let rows = sql.query("SELECT id, n, v FROM t ORDER BY id", &[]).await.expect("rows");
    assert_eq!(rows.len(), last_id as usize);
    let docs: BTreeMap<String, serde_json::Value> = es.all(&index).await.into_iter().collect();
    assert_eq!(docs.len(), rows.len(), "one document per row");
    for r in &rows {
        let (id, n, v): (i32, i32, String) = (r.get(0), r.get(1), r.get(2));
        let d = docs.get(&id.to_string()).unwrap_or_else(|| panic!("row {id} is missing from the index"));
        assert_eq!(d, &serde_json::json!({"id": id, "n": n, "v": v}), "row {id}");
    }

    // It backed off: retries were logged, with growing delays, far fewer than a spin would make.
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    let retries = log.lines().filter(|l| l.contains("elasticsearch write failed, retrying")).count();
    assert!((5..=200).contains(&retries), "{retries} retry lines in {OUTAGE:?}");
    eprintln!(
        "outage: {retries} retries, confirmed stayed <= {down_at} (max seen {max_confirmed}), {} rows, caught up to {end}",
        rows.len()
    );
    wc.stop().await;
    db.drop().await;
}
