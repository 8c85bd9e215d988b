//! Per-key order through the real broker: one transaction of 10,000 updates over 100 keys, on a
//! topic with 4 partitions and small batches (the transaction spans many of them), consumed
//! through a consumer group. Each key's values must arrive complete and in commit order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::kafka::*;
use crate::support::*;

const KEYS: i64 = 100;
const UPDATES: i64 = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_updates_keep_per_key_order() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_order").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE ord (id int PRIMARY KEY, v int NOT NULL)").await;
    db.create_publication(&["ord"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let topic = format!("{prefix}.public.ord");
    let extra =
        format!("[pipeline]\nbatch_max_changes = 512\n\n{}", kafka_section(&bootstrap, &prefix, "topic_partitions = 4\nlinger_ms = 2\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    exec(&sql, &format!("INSERT INTO ord SELECT g, 0 FROM generate_series(0, {}) g", KEYS - 1)).await;
    let started = Instant::now();
    exec(&sql, &format!("DO $$ BEGIN FOR i IN 1..{UPDATES} LOOP UPDATE ord SET v = i WHERE id = i % {KEYS}; END LOOP; END $$")).await;

    let total = (KEYS + UPDATES) as usize;
    let collector = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || {
            let mut c = Collector::group(&bootstrap, &[&topic]);
            c.wait_until("every update", Duration::from_secs(120), |r| r.len() >= total);
            c.poll_for(Duration::from_millis(500));
            c
        }
    })
    .await
    .expect("consumer");
    eprintln!("{total} records consumed {:?} after the commit", started.elapsed());

    let records = collector.topic(&topic);
    assert_eq!(records.len(), total, "exactly one record per change (no retries happened)");
    let mut partitions_used = std::collections::BTreeSet::new();
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut key_partition: BTreeMap<i64, i32> = BTreeMap::new();
    for r in &records {
        let v = r.value.as_ref().expect("no deletes here");
        let id = r.key.as_ref().and_then(|k| k["id"].as_i64()).expect("key");
        assert_eq!(v["after"]["id"].as_i64(), Some(id), "key and row agree");
        // One partition per key.
        assert_eq!(*key_partition.entry(id).or_insert(r.partition), r.partition, "key {id} in two partitions");
        partitions_used.insert(r.partition);
        if v["op"] == "u" {
            per_key.entry(id).or_default().push(v["after"]["v"].as_i64().expect("v"));
        }
    }
    assert!(partitions_used.len() > 1, "the keys should spread over the partitions: {partitions_used:?}");
    assert_eq!(per_key.len() as i64, KEYS);
    for (id, values) in &per_key {
        let expected: Vec<i64> = (1..=UPDATES).filter(|i| i % KEYS == *id).collect();
        assert_eq!(values, &expected, "key {id}: values out of order or missing");
    }

    // The final state equals the table.
    let rows = sql.query("SELECT id::int8, v::int8 FROM ord ORDER BY id", &[]).await.expect("select");
    for row in rows {
        let (id, v): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(per_key[&id].last(), Some(&v), "key {id}");
    }

    wc.stop().await;
    db.drop().await;
}
