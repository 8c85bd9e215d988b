//! The broker stalls for 40 s (SIGSTOP, then SIGCONT) under a steady insert workload, with
//! `message_timeout_ms = 5000` so that every record in flight times out during the stall. The
//! broker is a private tansu on a free port (never the shared one). Once, the idempotent producer
//! stayed fenced after such a stall and every retry failed with `ProducerFenced` until walcast was
//! restarted. Now, without a restart:
//! - while the broker is paused, the slot's confirmed_flush_lsn never passes the first
//!   transaction committed during the stall (nothing is confirmed without a delivery report);
//! - afterwards every committed row arrives on the topic and the slot moves past the last commit.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::kafka::*;
use crate::support::*;

const STALL: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread")]
async fn broker_paused_40s_recovers_without_a_restart() {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let broker = PrivateBroker::start(broker_dir.path());
    let bootstrap = broker.bootstrap();
    let db = TestDb::create("kafka_stall").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let topic = format!("{}.public.t", db.name);

    let extra = kafka_section(&bootstrap, &db.name, "message_timeout_ms = 5000\ntopic_partitions = 2\n");
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    // The workload: one row per transaction, about 100 transactions per second, all the time.
    let workload = RowWorkload::start(&db, Duration::from_millis(10)).await;

    // Streaming works before the stall.
    let mut consumer = Collector::assigned(&bootstrap, &[&topic], 2);
    tokio::task::block_in_place(|| consumer.wait_until("first records", Duration::from_secs(60), |r| r.len() >= 50));

    // The stall.
    broker.pause();
    let committed_before = workload.committed();
    let paused_at = workload.bound_of_undelivered(&sql).await;
    let stall_started = Instant::now();
    let mut max_confirmed = db.confirmed_flush_lsn().await;
    while stall_started.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let confirmed = db.confirmed_flush_lsn().await;
        assert!(
            confirmed <= paused_at,
            "confirmed_flush_lsn {confirmed} passed the WAL position {paused_at} read once a transaction had committed during the stall \
             ({:?} into the stall): transactions that cannot have been delivered were confirmed",
            stall_started.elapsed()
        );
        max_confirmed = max_confirmed.max(confirmed);
    }
    broker.resume();
    let resumed = Instant::now();
    let committed_during = workload.committed() - committed_before;
    assert!(committed_during > 500, "the workload kept committing during the stall ({committed_during} transactions)");
    eprintln!("stall: {committed_during} transactions committed, confirmed_flush_lsn stayed at {max_confirmed} <= {paused_at}");

    // The workload goes on for a while after the broker is back, then stops.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids = workload.stop().await;
    let end = current_wal_lsn(&sql).await;

    // The slot moves past the last commit, by the same walcast process.
    let confirmed = db.wait_confirmed_at_least(end, Duration::from_secs(180)).await;
    assert!(
        confirmed >= end,
        "the slot is stuck after the stall: confirmed_flush_lsn {confirmed} < {end} (last commit)\n{}",
        wc.log_tail(40)
    );
    assert!(wc.is_running() && wc.starts == 1, "walcast was restarted or stopped\n{}", wc.log_tail(40));
    eprintln!("slot caught up {:?} after the broker was resumed", resumed.elapsed());

    // Every committed row is on the topic (at least once), with its value.
    tokio::task::block_in_place(|| {
        let found = consumer.poll_until(Duration::from_secs(120), |recs| {
            let got: BTreeSet<i64> = recs.iter().filter_map(|r| r.key.as_ref()?["id"].as_i64()).collect();
            ids.is_subset(&got)
        });
        let got: BTreeSet<i64> = consumer.records.iter().filter_map(|r| r.key.as_ref()?["id"].as_i64()).collect();
        let missing: Vec<&i64> = ids.difference(&got).collect();
        assert!(
            found,
            "{} of {} committed rows are not on the topic, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(20)]
        );
    });
    for r in &consumer.records {
        let v = r.value.as_ref().expect("inserts only");
        check_debezium_envelope(v).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert_eq!(r.key.as_ref().map(|k| k["id"].clone()), Some(v["after"]["id"].clone()));
    }
    let log = std::fs::read_to_string(&wc.log_path).unwrap_or_default();
    let replaced = log.lines().filter(|l| l.contains("replacing the kafka producer")).count();
    eprintln!("{} rows, {} records consumed, producer replaced {replaced} times", ids.len(), consumer.records.len());

    wc.stop().await;
    drop(broker);
    db.drop().await;
}
