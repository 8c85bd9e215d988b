//! Error handling of the Kafka sink, in-process against librdkafka's MockCluster (no other
//! server needed): a record too large and a topic that does not exist go to the dead-letter
//! destination (file or topic) with their reason while the rest of the batch is delivered; no
//! dead-letter destination makes such a record stop walcast; an authorization failure is fatal
//! with a message that says what to fix; a full producer queue is waited out, never a drop.

use std::sync::Arc;
use std::time::Duration;

use crate::support::kafka::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;
use walcast::config::KafkaSinkConfig;
use walcast::decode::{Change, Column, Datum, Op, Relation, ReplicaIdentity, TruncateOptions, Tuple};
use walcast::lsn::Lsn;
use walcast::sink::{Batch, KafkaSink, Sink, SinkError};

fn relation(oid: u32, table: &str) -> Arc<Relation> {
    let col = |name: &str, key, type_oid| Column { key, name: name.into(), type_oid, type_modifier: -1 };
    Arc::new(Relation {
        oid,
        schema: "public".into(),
        table: table.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", true, 23), col("body", false, 25)],
    })
}

fn insert(rel: &Arc<Relation>, id: u32, body: &str) -> Change {
    Change {
        lsn: Lsn(0x1000 + u64::from(id)),
        commit_lsn: Lsn(0x10_0000),
        xid: 900,
        commit_ts: 0,
        seq: u64::from(id),
        relation: Arc::clone(rel),
        op: Op::Insert,
        old: None,
        new: Some(Tuple::from_datums([Datum::Text(id.to_string().as_bytes()), Datum::Text(body.as_bytes())])),
        truncate: TruncateOptions::default(),
    }
}

fn batch(changes: Vec<Change>) -> Batch {
    Batch { changes, checkpoint: Some(Lsn(0x10_0100)), ..Batch::default() }
}

fn sink_config(bootstrap: &str, extra: &str) -> KafkaSinkConfig {
    let text = format!(
        "bootstrap_servers = \"{bootstrap}\"\nprefix = \"mock\"\ncreate_topics = false\nmessage_max_bytes = 10000\n\
         message_timeout_ms = 5000\n{extra}"
    );
    let cfg: KafkaSinkConfig = toml::from_str(&text).expect("kafka config");
    cfg.validate().expect("valid");
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn too_large_and_missing_topic_go_to_the_dead_letter_file() {
    let mock = MockCluster::new(1).expect("mock");
    mock.create_topic("mock.public.t", 1, 1).expect("topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("dead.jsonl");
    let cfg = sink_config(&mock.bootstrap_servers(), &format!("[dead_letter]\npath = {:?}\n", dead.to_string_lossy()));
    let mut sink = KafkaSink::open(&cfg, "app").expect("open");
    let counter = sink.dead_letter_counter();

    let t = relation(1, "t");
    let missing = relation(2, "nowhere");
    let big = "x".repeat(20_000);
    let b = batch(vec![insert(&t, 1, "small"), insert(&t, 2, &big), insert(&missing, 3, "lost topic"), insert(&t, 4, "after")]);
    sink.write(&b).await.expect("the batch is durable: delivered or dead-lettered");
    assert_eq!(sink.dead_letters(), 2);
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 2);

    let lines: Vec<Value> =
        std::fs::read_to_string(&dead).expect("dead-letter file").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["key"], serde_json::json!({"id": 2}));
    assert_eq!(lines[0]["topic"], "mock.public.t");
    assert_eq!(lines[0]["table"], "t");
    assert_eq!(lines[0]["lsn"], Lsn(0x1002).to_string());
    assert!(lines[0]["reason"].as_str().is_some_and(|r| r.contains("too large")), "{}", lines[0]);
    assert_eq!(lines[1]["topic"], "mock.public.nowhere");
    assert!(lines[1]["reason"].as_str().is_some_and(|r| r.contains("does not exist")), "{}", lines[1]);

    // The other records arrived, in order.
    let bootstrap = mock.bootstrap_servers();
    let recs = tokio::task::spawn_blocking(move || {
        let mut c = Collector::assigned(&bootstrap, &["mock.public.t"], 1);
        c.wait_until("two records", Duration::from_secs(30), |r| r.len() >= 2);
        c.poll_for(Duration::from_millis(300));
        c.records
    })
    .await
    .expect("consumer");
    let ids: Vec<i64> = recs.iter().map(|r| r.value.as_ref().expect("value")["after"]["id"].as_i64().expect("id")).collect();
    assert_eq!(ids, vec![1, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_topic_gets_the_record_or_a_truncated_document() {
    let mock = MockCluster::new(1).expect("mock");
    mock.create_topic("mock.public.t", 1, 1).expect("topic");
    mock.create_topic("mock.dead", 1, 1).expect("topic");
    let cfg = sink_config(&mock.bootstrap_servers(), "[dead_letter]\ntopic = \"mock.dead\"\n");
    let mut sink = KafkaSink::open(&cfg, "app").expect("open");
    let t = relation(1, "t");
    let missing = relation(2, "nowhere");
    let big = "y".repeat(20_000);
    sink.write(&batch(vec![insert(&t, 1, &big), insert(&missing, 2, "small")])).await.expect("durable");
    assert_eq!(sink.dead_letters(), 2);

    let bootstrap = mock.bootstrap_servers();
    let recs = tokio::task::spawn_blocking(move || {
        let mut c = Collector::assigned(&bootstrap, &["mock.dead"], 1);
        c.wait_until("two dead letters", Duration::from_secs(30), |r| r.len() >= 2);
        c.records
    })
    .await
    .expect("consumer");
    // Too large for the dead-letter topic as well: a small document saying what happened.
    let first = &recs[0];
    assert_eq!(first.key, Some(serde_json::json!({"id": 1})));
    assert_eq!(first.headers["walcast.topic"], "mock.public.t");
    assert!(first.headers["walcast.reason"].contains("too large"));
    assert_eq!(first.headers["walcast.lsn"], Lsn(0x1001).to_string());
    let v = first.value.as_ref().expect("value");
    assert_eq!(v["truncated"], true);
    assert!(v["value_bytes"].as_u64().is_some_and(|n| n > 20_000));
    // A missing topic: the whole envelope, which passes the Debezium check.
    let second = &recs[1];
    assert_eq!(second.headers["walcast.topic"], "mock.public.nowhere");
    let v = second.value.as_ref().expect("value");
    check_debezium_envelope(v).expect("envelope");
    assert_eq!(v["after"]["body"], "small");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_dead_letter_destination_a_bad_record_stops_walcast() {
    let mock = MockCluster::new(1).expect("mock");
    mock.create_topic("mock.public.t", 1, 1).expect("topic");
    let cfg = sink_config(&mock.bootstrap_servers(), "");
    let mut sink = KafkaSink::open(&cfg, "app").expect("open");
    let t = relation(1, "t");
    let err = sink.write(&batch(vec![insert(&t, 1, &"z".repeat(20_000))])).await.expect_err("fatal");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("too large") && msg.contains("[sinks.kafka.dead_letter]"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_failure_is_fatal_with_a_fix() {
    let mock = MockCluster::new(1).expect("mock");
    mock.create_topic("mock.public.t", 1, 1).expect("topic");
    let cfg = sink_config(&mock.bootstrap_servers(), "");
    let mut sink = KafkaSink::open(&cfg, "app").expect("open");
    let t = relation(1, "t");
    // Warm up: the producer id and metadata are in place.
    sink.write(&batch(vec![insert(&t, 1, "a")])).await.expect("first write");
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10]);
    let err = tokio::time::timeout(Duration::from_secs(20), sink.write(&batch(vec![insert(&t, 2, "b")])))
        .await
        .expect("fails fast, not after retries")
        .expect_err("fatal");
    match &err {
        SinkError::Fatal { reason, .. } => {
            assert!(reason.contains("authorization") && reason.contains("fix:") && reason.contains("ACL"), "{reason}")
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_producer_queue_is_backpressure_not_loss() {
    let mock = MockCluster::new(1).expect("mock");
    mock.create_topic("mock.public.t", 3, 1).expect("topic");
    // 64 kB of producer buffer for 4 MB of records.
    let cfg = sink_config(&mock.bootstrap_servers(), "queue_max_kbytes = 64\n");
    let mut sink = KafkaSink::open(&cfg, "app").expect("open");
    let t = relation(1, "t");
    let body = "q".repeat(1000);
    let changes: Vec<Change> = (0..4000).map(|i| insert(&t, i, &body)).collect();
    tokio::time::timeout(Duration::from_secs(60), sink.write(&batch(changes))).await.expect("in time").expect("durable");
    let bootstrap = mock.bootstrap_servers();
    let n = tokio::task::spawn_blocking(move || {
        let mut c = Collector::assigned(&bootstrap, &["mock.public.t"], 3);
        c.wait_until("4000 records", Duration::from_secs(60), |r| r.len() >= 4000);
        c.poll_for(Duration::from_millis(300));
        c.records.len()
    })
    .await
    .expect("consumer");
    assert_eq!(n, 4000);
    assert_eq!(sink.dead_letters(), 0);
}
