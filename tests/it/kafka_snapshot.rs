//! The snapshot scenario of `snapshot.rs` in Kafka (several tables, SIGKILL
//! while chunks are in flight, resumed more than once) with a Kafka sink beside the JSON-lines
//! one. De-duplicating the topics by the documented identity, `(source.change_id, op)`
//! (docs/kafka.md "Delivery"), keeps every row of every table once and drops the records a
//! resumed load sent again. The old rule, `source.lsn` + `source.txId` per key, collapsed every
//! snapshot record of a table without a key (same point, txId 0, null key).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::kafka::*;
use crate::support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn resumed_snapshot_records_deduplicate_by_change_id_and_op() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_snap_ids").await;
    let sql = db.client().await;
    exec(&sql, SNAPSHOT_ID_SCHEMA).await;
    db.create_publication(&SNAPSHOT_ID_TABLES).await;
    let prefix = db.name.clone();
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("state");
    let extra = format!(
        "[snapshot]\nstate_dir = {}\nchunk_rows = 20\n\n{}",
        toml_str(&state_dir.to_string_lossy()),
        kafka_section(&bootstrap, &prefix, "")
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let (kills, resent) = interrupt_snapshot_in_flight(&mut wc, &state_dir, &db.slot).await;
    let expected = SnapshotIdExpectation::read(&sql).await;
    exec(&sql, SNAPSHOT_ID_STREAMED).await;
    wc.wait_for("the streamed transaction", WAIT, |l| l["op"] == "insert" && l["table"] == "nopk").await;
    wc.stop().await;

    let topics: Vec<String> = SNAPSHOT_ID_TABLES.iter().map(|t| format!("{prefix}.public.{t}")).collect();
    let total = expected.keyed.values().sum::<u64>() as usize + expected.nopk_rows() + 3;
    let collector = tokio::task::spawn_blocking({
        let (bootstrap, topics) = (bootstrap.clone(), topics.clone());
        move || {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut c = Collector::group(&bootstrap, &refs);
            // Every keyed row, a whole load of `nopk` and the streamed inserts: at least `total`
            // records (the checks below say what is missing).
            c.poll_until(Duration::from_secs(60), |recs| recs.iter().filter(|r| r.value.is_some()).count() >= total);
            c.poll_for(Duration::from_secs(1));
            c
        }
    })
    .await
    .expect("consumer");

    // De-duplicate as a consumer would: keep the first record of each (change_id, op).
    let mut seen = HashSet::new();
    let (mut raw, mut dropped) = (0usize, 0usize);
    let mut kept: HashMap<&str, Vec<&Value>> = HashMap::new();
    for (table, topic) in SNAPSHOT_ID_TABLES.iter().zip(&topics) {
        for r in collector.topic(topic) {
            let Some(v) = &r.value else { continue };
            check_debezium_envelope(v).unwrap_or_else(|e| panic!("{e}: {v}"));
            raw += 1;
            let id = (v["source"]["change_id"].as_str().expect("source.change_id").to_string(), v["op"].as_str().expect("op").to_string());
            if seen.insert(id) {
                kept.entry(table).or_default().push(v);
            } else {
                dropped += 1;
            }
        }
    }
    let key_of = |v: &Value| v["after"].to_string();
    for table in SNAPSHOT_ID_KEYED {
        let reads: Vec<String> = kept[table].iter().filter(|v| v["op"] == "r").map(|v| key_of(v)).collect();
        let distinct: HashSet<&String> = reads.iter().collect();
        assert_eq!(distinct.len() as u64, expected.keyed[table], "{table}: rows lost by de-duplication");
        assert_eq!(reads.len(), distinct.len(), "{table}: a record sent again was not recognised as a duplicate");
    }
    let nopk: Vec<&Value> = kept["nopk"].iter().copied().filter(|v| v["op"] == "r").collect();
    let raw_nopk = collector.topic(&topics[3]).iter().filter(|r| r.op() == Some("r")).count();
    assert_eq!(nopk.len(), raw_nopk, "records of a table without a key were taken for one another");
    let loads: HashSet<i64> = nopk.iter().map(|v| v["source"]["ts_us"].as_i64().expect("ts_us")).collect();
    assert!(loads.len() >= 2, "nopk was loaded once: the test did not interrupt it");
    let last_load = loads.iter().copied().max().expect("nopk records");
    expected.assert_nopk(nopk.iter().filter(|v| v["source"]["ts_us"].as_i64() == Some(last_load)).map(|v| &v["after"]));
    let creates = kept.values().flatten().filter(|v| v["op"] == "c").count();
    assert_eq!(creates, 3, "the streamed inserts, each kept");
    eprintln!("kafka snapshot ids: {kills} kills, {raw} records, {dropped} dropped as duplicates ({resent} rows caught in flight in the JSON lines)");
    db.drop().await;
}
