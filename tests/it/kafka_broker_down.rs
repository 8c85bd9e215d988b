//! The broker is unavailable for 30 s while a workload commits (librdkafka's MockCluster, the
//! pipeline in-process against the real Postgres of WALCAST_TEST_PG):
//! - while it is down, the slot's confirmed_flush_lsn never passes the first transaction that
//!   could not be delivered (nothing can be: every transaction committed after the broker went
//!   down is undelivered, so confirmed stays below the WAL position read once one such
//!   transaction has committed; WAL of other databases alone may legitimately be confirmed
//!   past the moment of the outage itself);
//! - after it comes back, everything arrives (no loss) and the slot catches up.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::kafka::*;
use crate::support::*;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;
use walcast::config::Config;

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_for_30s_loses_nothing_and_holds_the_slot() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let db = TestDb::create("kafka_down").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let topic = format!("{}.public.t", db.name);
    mock.create_topic(&topic, 2, 1).expect("create topic");

    let text = format!(
        "[source]\nhost = {host}\nport = {port}\ndatabase = {database}\nuser = {user}\nslot = {slot}\npublication = {slot}\n\
         status_interval_ms = 200\n\n[retry]\ninitial_ms = 100\nmax_ms = 1000\n\n{kafka}\n[log]\nlevel = \"walcast=debug\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        host = toml_str(&db.url.host),
        port = db.url.port,
        database = toml_str(&db.url.database),
        user = toml_str(&db.url.user),
        slot = toml_str(&db.slot),
        kafka = kafka_section(&bootstrap, &db.name, "create_topics = false\nmessage_timeout_ms = 5000\n"),
    );
    let config = Config::parse(&text, Path::new("kafka_broker_down.toml")).expect("config");
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { walcast::pipeline::run(&config, shutdown).await }
    });

    // The workload: one row per transaction, about 100 transactions per second, all the time.
    let workload = RowWorkload::start(&db, Duration::from_millis(10)).await;

    // Streaming works before the outage.
    let mut consumer = Collector::assigned(&bootstrap, &[&topic], 2);
    tokio::task::block_in_place(|| consumer.wait_until("first records", Duration::from_secs(60), |r| r.len() >= 50));

    // Outage.
    mock.broker_down(1).expect("broker down");
    let committed_before = workload.committed();
    let down_at = workload.bound_of_undelivered(&sql).await;
    let outage_started = Instant::now();
    let mut max_confirmed = db.confirmed_flush_lsn().await;
    while outage_started.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let confirmed = db.confirmed_flush_lsn().await;
        assert!(
            confirmed <= down_at,
            "confirmed_flush_lsn {confirmed} passed the WAL position {down_at} read once a transaction had committed during the outage \
             ({:?} into the outage): transactions that cannot have been delivered were confirmed",
            outage_started.elapsed()
        );
        max_confirmed = max_confirmed.max(confirmed);
    }
    let committed_during = workload.committed() - committed_before;
    assert!(committed_during > 500, "the workload kept committing during the outage ({committed_during} transactions)");
    eprintln!("outage: {committed_during} transactions committed, confirmed_flush_lsn stayed at {max_confirmed} <= {down_at}");

    // Recovery.
    mock.broker_up(1).expect("broker up");
    let up_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = workload.stop().await;
    let end = current_wal_lsn(&sql).await;

    tokio::task::block_in_place(|| {
        consumer.wait_until("every committed row after the outage", Duration::from_secs(120), |recs| {
            let got: BTreeSet<i64> = recs.iter().filter_map(|r| r.key.as_ref()?["id"].as_i64()).collect();
            ids.is_subset(&got)
        })
    });
    eprintln!("caught up {:?} after the broker came back ({} rows)", up_at.elapsed(), ids.len());
    let confirmed = db.wait_confirmed_at_least(end, Duration::from_secs(60)).await;
    assert!(confirmed >= end, "the slot caught up: confirmed {confirmed} < {end}");

    // Every row, with its value, at least once; in order per key (one record per key here).
    for r in &consumer.records {
        let v = r.value.as_ref().expect("inserts only");
        let id = v["after"]["id"].as_i64().expect("id");
        assert_eq!(r.key.as_ref().map(|k| k["id"].clone()), Some(serde_json::json!(id)));
    }

    shutdown.cancel();
    let summary = pipeline.await.expect("pipeline task").expect("pipeline stops cleanly");
    assert!(summary.confirmed >= end);
    db.drop().await;
}
