//! The walcast binary, writing to the real broker (tansu), is killed with SIGKILL 10 times at
//! random moments under a workload of inserts, updates and deletes over two tables, and
//! restarted each time. Then:
//! 1. every committed change is on its topic at least once (the transactions and their change
//!    counts come from a second "oracle" slot created together with walcast's);
//! 2. a consumer that drops duplicates by `(source.change_id, op)` and replays the records
//!    of each key in partition order ends with exactly the tables' contents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::kafka::*;
use crate::support::*;
use serde_json::{json, Value};

const KILLS: usize = 10;

const SCHEMA: &str = "
CREATE TABLE acct (id int PRIMARY KEY, balance int8 NOT NULL, note text);
CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL, label text);
";

fn statement(rng: &mut fastrand::Rng) -> String {
    let k = rng.u32(1..=100);
    let n = rng.i32(-50..=50);
    match rng.u32(0..100) {
        0..=34 => format!(
            "INSERT INTO acct VALUES ({k}, {n}, 'n{n}') ON CONFLICT (id) DO UPDATE SET balance = acct.balance + EXCLUDED.balance, note = EXCLUDED.note"
        ),
        35..=69 => format!("INSERT INTO item VALUES ({k}, 1, 'l{n}') ON CONFLICT (id) DO UPDATE SET qty = item.qty + 1, label = EXCLUDED.label"),
        70..=79 => format!("DELETE FROM acct WHERE id = {k}"),
        80..=89 => format!("DELETE FROM item WHERE id = {k}"),
        _ => format!("UPDATE acct SET balance = balance - 1 WHERE id % 10 = {}", k % 10),
    }
}

fn transaction(rng: &mut fastrand::Rng) -> String {
    match rng.u32(0..100) {
        0..=79 => statement(rng),
        _ => {
            let mut sql = String::from("BEGIN;");
            for _ in 0..rng.usize(2..=30) {
                sql.push_str(&statement(rng));
                sql.push(';');
            }
            sql.push_str("COMMIT;");
            sql
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_ten_times_loses_nothing_and_duplicates_drop_by_change_id() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_crash").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&["acct", "item"]).await;
    db.create_slot().await;
    let oracle = format!("{}_oracle", db.slot);
    db.create_named_slot(&oracle).await;
    let prefix = db.name.clone();
    let topics = [format!("{prefix}.public.acct"), format!("{prefix}.public.item")];

    let seed = crash_seed("kafka_crash");
    let mut rng = fastrand::Rng::with_seed(seed);

    let workload = Workload::start(&db, seed, transaction).await;

    let extra = format!("[pipeline]\nbatch_max_changes = 256\n\n{}", kafka_section(&bootstrap, &prefix, "topic_partitions = 3\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let started = Instant::now();
    for _ in 0..KILLS {
        wc.start();
        tokio::time::sleep(Duration::from_millis(rng.u64(300..=2000))).await;
        assert!(wc.is_running(), "walcast stopped by itself\n{}", wc.log_tail(40));
        wc.kill().await;
        db.wait_slot_inactive(Duration::from_secs(10)).await;
    }
    let killing = started.elapsed();

    // Stop the workload; a last run catches up and stops cleanly.
    let committed = workload.stop().await;
    let end = current_wal_lsn(&sql).await;
    wc.start();
    let confirmed = db.wait_confirmed_at_least(end, Duration::from_secs(120)).await;
    assert!(confirmed >= end, "walcast did not catch up: confirmed {confirmed} < {end}\n{}", wc.log_tail(40));
    wc.stop().await;

    // The oracle: every transaction and its number of changes.
    let txs = oracle_transactions(&sql, &oracle, &db.publication).await;
    let expected_events: HashMap<u32, usize> = txs.iter().filter(|t| t.changes > 0).map(|t| (t.xid, t.changes)).collect();
    let total: usize = expected_events.values().sum();

    let collector = tokio::task::spawn_blocking({
        let (bootstrap, topics) = (bootstrap.clone(), topics.clone());
        move || {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut c = Collector::group(&bootstrap, &refs);
            // Not asserted here: the per-transaction check below says what is missing.
            c.poll_until(Duration::from_secs(60), |recs| {
                let distinct: HashSet<(String, u64, String)> =
                    recs.iter().filter_map(|r| Some((r.topic.clone(), r.source("lsn")?.as_u64()?, r.key.as_ref()?.to_string()))).collect();
                distinct.len() >= total
            });
            c.poll_for(Duration::from_secs(1));
            c
        }
    })
    .await
    .expect("consumer");

    // --- 1. At least once: per transaction, the distinct events (table, lsn, key) it produced.
    let mut events_of: HashMap<u32, HashSet<(String, u64, String)>> = HashMap::new();
    for r in &collector.records {
        let (Some(v), Some(key)) = (&r.value, &r.key) else { continue };
        if let Err(e) = check_debezium_envelope(v) {
            panic!("{e}: {v}");
        }
        let xid = v["source"]["txId"].as_u64().expect("txId") as u32;
        let lsn = v["source"]["lsn"].as_u64().expect("lsn");
        events_of.entry(xid).or_default().insert((r.topic.clone(), lsn, key.to_string()));
    }
    let mut missing = Vec::new();
    for (xid, n) in &expected_events {
        let got = events_of.get(xid).map_or(0, HashSet::len);
        if got != *n {
            missing.push(format!("transaction {xid}: {n} changes committed, {got} distinct events on the topics"));
        }
    }
    assert!(missing.is_empty(), "{} transactions incomplete:\n  {}", missing.len(), missing[..missing.len().min(20)].join("\n  "));

    // --- 2. De-duplicate by (source.change_id, op) (docs/kafka.md "Delivery"), replay in
    // partition order: the tables' state.
    let mut duplicates = 0usize;
    let mut state: BTreeMap<(String, String), Option<Value>> = BTreeMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for topic in &topics {
        for r in collector.topic(topic) {
            let Some(v) = &r.value else { continue }; // tombstones
            let key = r.key.as_ref().expect("key").to_string();
            let id = (v["source"]["change_id"].as_str().expect("change_id").to_string(), v["op"].as_str().expect("op").to_string());
            if !seen.insert(id) {
                duplicates += 1;
                continue;
            }
            let row = match v["op"].as_str() {
                Some("c" | "u") => Some(v["after"].clone()),
                Some("d") => None,
                other => panic!("unexpected op {other:?}: {v}"),
            };
            state.insert((topic.clone(), key), row);
        }
    }
    let mut mismatches = Vec::new();
    for (table, topic) in ["acct", "item"].iter().zip(&topics) {
        let rows = sql.query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[]).await.expect("select");
        let mut actual: BTreeMap<String, Value> = BTreeMap::new();
        for r in rows {
            let v: Value = serde_json::from_str(r.get::<_, &str>(0)).expect("json");
            actual.insert(json!({"id": v["id"]}).to_string(), v);
        }
        let replayed: BTreeMap<&String, &Value> = state.iter().filter_map(|((t, k), v)| (t == topic).then_some((k, v.as_ref()?))).collect();
        for (k, v) in &actual {
            match replayed.get(k) {
                None => mismatches.push(format!("{table} {k}: in the table, not on the topic (lost): {v}")),
                Some(r) => {
                    if let Some(d) = json_diff(v, r, &format!("{table} {k}")) {
                        mismatches.push(format!("stale row: {d}"));
                    }
                }
            }
        }
        for (k, v) in &replayed {
            if !actual.contains_key(*k) {
                mismatches.push(format!("{table} {k}: on the topic but deleted in the table: {v}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} differences:\n  {}", mismatches.len(), mismatches[..mismatches.len().min(30)].join("\n  "));
    eprintln!(
        "kafka_crash: {KILLS} kills in {killing:?}; {} workload transactions, {} published with {total} changes; \
         {} records consumed, {duplicates} duplicates dropped by (change_id, op)",
        committed,
        expected_events.len(),
        collector.records.len()
    );
    db.drop().await;
}
