//! Clean stop and resume: SIGTERM drains (exit 0) and confirms the end of the last transaction;
//! changes made while walcast is stopped arrive after a restart, and nothing already delivered is
//! sent again. An idle slot (only unpublished changes) still advances.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;
use walcast::lsn::Lsn;

#[tokio::test(flavor = "multi_thread")]
async fn clean_stop_confirms_everything_and_resumes_without_repeats() {
    let db = TestDb::create("resume").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let oracle = format!("{}_oracle", db.slot);
    db.create_named_slot(&oracle).await;

    let mut wc = Walcast::new(&db);
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    exec(&sql, "UPDATE t SET v = 'b2' WHERE id = 2").await;
    exec(&sql, "DELETE FROM t WHERE id = 3").await;
    exec(&sql, "INSERT INTO t VALUES (4, 'd')").await;
    exec(&sql, "INSERT INTO t VALUES (5, 'e')").await;
    let first = wc.wait_lines(7, WAIT).await;

    wc.stop().await; // SIGTERM, exit code 0
    db.wait_slot_inactive(Duration::from_secs(10)).await;
    let confirmed = db.confirmed_flush_lsn().await;
    let last_commit = first.iter().map(commit_lsn).max().expect("lines");
    assert!(confirmed > last_commit, "after a clean stop the slot is confirmed past the last commit ({confirmed} <= {last_commit})");
    let txs = oracle_transactions(&sql, &oracle, &db.publication).await;
    assert_eq!(txs.len(), 5, "oracle: {txs:?}");
    let last_end = txs.last().expect("a transaction").end_lsn;
    assert_eq!(txs.last().map(|t| t.commit_lsn), Some(last_commit));
    assert!(confirmed >= last_end, "the slot must be confirmed at least to the end of the last transaction ({confirmed} < {last_end})");

    // Changes while walcast is stopped.
    exec(&sql, "BEGIN; INSERT INTO t VALUES (6, 'f'), (7, 'g'); UPDATE t SET v = 'd2' WHERE id = 4; COMMIT;").await;
    exec(&sql, "DELETE FROM t WHERE id = 5").await;

    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1000, 'marker')").await;
    let all = wc.wait_for("the marker row", WAIT, |l| l["after"]["id"] == 1000).await;
    // Anything sent again would have come before the marker; give stragglers a moment anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = {
        let now = wc.lines().to_vec();
        assert_eq!(now.len(), all.len(), "lines after the marker: {:?}", &now[all.len()..]);
        now
    };
    let new: Vec<_> = all[first.len()..].to_vec();
    let ops: Vec<(String, serde_json::Value)> =
        new.iter().map(|l| (l["op"].as_str().unwrap_or_default().to_string(), l["key"].clone())).collect();
    assert_eq!(
        ops,
        vec![
            ("insert".into(), json!({"id": 6})),
            ("insert".into(), json!({"id": 7})),
            ("update".into(), json!({"id": 4})),
            ("delete".into(), json!({"id": 5})),
            ("insert".into(), json!({"id": 1000})),
        ],
        "after a clean stop exactly the new changes arrive, none of the old ones again"
    );
    assert!(new.iter().all(|l| commit_lsn(l) > confirmed), "new lines are all after the confirmed position");
    transactions(&all);

    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_slot_advances_past_unpublished_changes() {
    let db = TestDb::create("resume_idle").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE unpublished (id int PRIMARY KEY)").await;
    db.create_publication(&["published"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    exec(&sql, "INSERT INTO published VALUES (1)").await;
    let lines = wc.wait_lines(1, WAIT).await;
    let c = db.wait_confirmed_at_least(Lsn(commit_lsn(&lines[0]).0 + 1), Duration::from_secs(30)).await;
    assert!(c > commit_lsn(&lines[0]), "the published transaction is confirmed once written");

    // Now only changes walcast has no interest in: the slot must not hold WAL for them.
    exec(&sql, "INSERT INTO unpublished SELECT g FROM generate_series(1, 100) g").await;
    let target = current_wal_lsn(&sql).await;
    let started = Instant::now();
    let confirmed = db.wait_confirmed_at_least(target, Duration::from_secs(45)).await;
    eprintln!("idle slot: confirmed {confirmed} >= {target} after {:?}", started.elapsed());
    assert!(
        confirmed >= target,
        "an idle slot must advance past unpublished transactions: confirmed {confirmed} < {target} after {:?}\n{}",
        started.elapsed(),
        wc.log_tail(20)
    );
    assert_eq!(wc.lines().len(), 1, "unpublished changes are not streamed");

    wc.stop().await;
    db.drop().await;
}

/// SIGTERM while a transaction larger than a batch is being written: the clean stop must leave
/// nothing that a restart sends twice (docs/events.md: "A clean stop ... confirms everything
/// written, so a restart sends nothing twice").
#[tokio::test(flavor = "multi_thread")]
async fn clean_stop_inside_a_large_transaction_sends_nothing_twice() {
    let db = TestDb::create("resume_mid").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    // Small batches and a small socket buffer make "in the middle" easy to hit.
    let opts = Options { extra: "[pipeline]\nbatch_max_changes = 100\nsource_buffer_events = 100\n".into(), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (0, 'before')").await;
    exec(&sql, "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g").await;
    let lines = wc.wait_lines(2000, WAIT).await;
    wc.sigterm();
    let status = wc.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", wc.log_tail(20));
    let written = wc.lines().len();
    eprintln!("resume_mid: stopped after {written} lines (at least {} when signalled)", lines.len());

    wc.start();
    exec(&sql, "INSERT INTO t VALUES (-1, 'marker')").await;
    let all = wc.wait_for("the marker", Duration::from_secs(120), |l| l["after"]["id"] == -1).await;
    let mut seen = std::collections::HashSet::new();
    let repeats = all.iter().filter(|l| !seen.insert(change_id(l))).count();
    assert_eq!(all.len(), 200_002, "every change once, {repeats} sent twice after a clean stop");
    assert_eq!(repeats, 0, "changes sent twice after a clean stop");

    wc.stop().await;
    db.drop().await;
}
