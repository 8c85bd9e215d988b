//! `pg_logical_emit_message` as Debezium's `op: "m"` events and walcast's heartbeats as heartbeat
//! records, read back from the broker:
//! - `messages = true`: a transactional message (key `{"prefix"}`, `source.txId` of its
//!   transaction, `source.lsn` the LSN the function returned, `source.ts_ms` and `sequence` those
//!   of its transaction's row events, `change_id` numbered after the row before it) and a
//!   non-transactional one (`txId` null, its own LSN) land on `<prefix>.message` with the
//!   content as base64; a message in a rolled-back transaction and an excluded prefix never
//!   appear; the slot confirms past the last message;
//! - `schemas = true` with `message_prefix_include`: Connect schemas named as Debezium names
//!   them around the same payloads; a prefix not listed never appears;
//! - `[heartbeat] interval_ms = 300`: records on `__debezium-heartbeat.<prefix>` keyed
//!   `{"serverName"}` with a `ts_ms` of when they were made, one per heartbeat; the slot confirms.

use std::time::Duration;

use crate::support::kafka::*;
use crate::support::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Run `body` in one transaction whose last statement selects a text value; returns that value
/// and the transaction's id.
async fn tx_select(sql: &tokio_postgres::Client, body: &str, select: &str) -> (String, i64) {
    let out =
        query_text(sql, &format!("BEGIN; {body}; SELECT ({select})::text || ' ' || txid_current()::text; COMMIT")).await.expect("a value");
    let (value, txid) = out.split_once(' ').expect("value and txid");
    (value.to_string(), txid.parse().expect("txid"))
}

/// Consume `topics` until `done` holds, then a little longer (nothing more may come).
async fn collect(bootstrap: &str, topics: &[String], done: impl Fn(&[KRec]) -> bool + Send + 'static) -> Collector {
    let bootstrap = bootstrap.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut c = Collector::group(&bootstrap, &refs);
        c.wait_until("the expected records", WAIT, done);
        c.poll_for(Duration::from_millis(500));
        c
    })
    .await
    .expect("consumer")
}

fn has_content(recs: &[KRec], content_b64: &str) -> bool {
    recs.iter().any(|r| payload(r.value.as_ref()).is_some_and(|v| v["message"]["content"] == content_b64))
}

/// The payload of a value, with or without the Connect wrapper.
fn payload(v: Option<&Value>) -> Option<&Value> {
    let v = v?;
    Some(v.get("payload").unwrap_or(v))
}

/// The value without what depends on the clock (checked separately).
fn timeless(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().expect("object").remove("ts_ms");
    let s = v["source"].as_object_mut().expect("source");
    for f in ["version", "ts_ms", "ts_us", "ts_ns"] {
        s.remove(f);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn emitted_messages_are_debezium_message_events() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_messages").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let (message_topic, table_topic) = (format!("{prefix}.message"), format!("{prefix}.public.t"));
    let extra = kafka_section(&bootstrap, &prefix, "messages = true\nmessage_prefix_exclude = [\"skip*\"]\n");
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    let started_ms = now_ms();

    // A row, then a transactional message: the message is the transaction's second event.
    let (tx_lsn, txid) = tx_select(&sql, "INSERT INTO t VALUES (1)", "pg_logical_emit_message(true, 'audit', 'hello')").await;
    // Outside any transaction, binary content.
    let nt_lsn = query_text(&sql, "SELECT pg_logical_emit_message(false, 'audit.nt', '\\x00ff'::bytea)::text").await.expect("lsn");
    // Never published: rolled back, and an excluded prefix.
    exec(&sql, "BEGIN; SELECT pg_logical_emit_message(true, 'audit', 'rolled back'); ROLLBACK").await;
    exec(&sql, "SELECT pg_logical_emit_message(true, 'skip.me', 'excluded')").await;
    // The last one: once it is in, everything before it is.
    let last_lsn = query_text(&sql, "SELECT pg_logical_emit_message(true, 'audit', 'last')::text").await.expect("lsn");

    let last_b64 = "bGFzdA==";
    let c = collect(&bootstrap, &[message_topic.clone(), table_topic.clone()], move |recs| has_content(recs, last_b64)).await;
    let messages = c.topic(&message_topic);
    let contents: Vec<&str> = messages.iter().filter_map(|r| r.value.as_ref()?["message"]["content"].as_str()).collect();
    // "hello", "\x00\xff", "last": no "rolled back", no "excluded".
    assert_eq!(contents, ["aGVsbG8=", "AP8=", last_b64], "{messages:#?}");

    let row = c.topic(&table_topic);
    assert_eq!(row.len(), 1, "{row:#?}");
    let row_source = &row[0].value.as_ref().expect("value")["source"];
    let commit_lsn =
        row_source["sequence"].as_str().and_then(|s| serde_json::from_str::<Vec<String>>(s).ok()).expect("sequence")[0].clone();
    let row_change_id = row_source["change_id"].as_str().expect("change_id");
    let tx_change_id = row_change_id.replace(":0", ":1");
    let (tx_lsn, nt_lsn) = (parse_lsn(&tx_lsn).0, parse_lsn(&nt_lsn).0);

    let server =
        json!({"connector": "postgresql", "name": prefix, "snapshot": "false", "db": db.name, "schema": "", "table": "", "xmin": null});
    let mut expected = json!({"op": "m", "source": server.clone(),
        "message": {"prefix": "audit", "content": "aGVsbG8="}});
    let s = expected["source"].as_object_mut().expect("source");
    s.insert("sequence".into(), json!(format!("[\"{commit_lsn}\",\"{tx_lsn}\"]")));
    s.insert("txId".into(), json!(txid));
    s.insert("lsn".into(), json!(tx_lsn));
    s.insert("change_id".into(), json!(tx_change_id));
    let first = messages[0];
    assert_eq!(first.key, Some(json!({"prefix": "audit"})));
    let v = first.value.as_ref().expect("value");
    assert_eq!(timeless(v), expected, "the transactional message");
    assert_eq!(v["source"]["ts_ms"], row_source["ts_ms"], "the commit time, as its transaction's rows");
    assert_eq!(v["source"]["ts_us"], row_source["ts_us"]);
    let ts = v["ts_ms"].as_i64().expect("ts_ms");
    assert!(ts >= started_ms && ts <= now_ms(), "ts_ms is when walcast made the record: {ts}");

    let mut expected = json!({"op": "m", "source": server,
        "message": {"prefix": "audit.nt", "content": "AP8="}});
    let s = expected["source"].as_object_mut().expect("source");
    s.insert("sequence".into(), json!(format!("[\"{nt_lsn}\",\"{nt_lsn}\"]")));
    s.insert("txId".into(), Value::Null);
    s.insert("lsn".into(), json!(nt_lsn));
    s.insert("change_id".into(), json!(format!("{}:m", walcast::lsn::Lsn(nt_lsn))));
    let second = messages[1];
    assert_eq!(second.key, Some(json!({"prefix": "audit.nt"})));
    assert_eq!(timeless(second.value.as_ref().expect("value")), expected, "the non-transactional message");
    assert_eq!(second.headers.get("walcast.lsn").map(String::as_str), Some(walcast::lsn::Lsn(nt_lsn).to_string().as_str()));

    // The slot moves past every message.
    let last = parse_lsn(&last_lsn);
    let confirmed = db.wait_confirmed_at_least(last, WAIT).await;
    assert!(confirmed >= last, "confirmed {confirmed} is behind the last message {last}");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_schemas_messages_and_heartbeats_carry_debeziums_connect_schemas() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_messages_schemas").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let message_topic = format!("{prefix}.message");
    let heartbeat_topic = format!("__debezium-heartbeat.{prefix}");
    let extra = format!(
        "{}[heartbeat]\ninterval_ms = 300\n",
        kafka_section(&bootstrap, &prefix, "schemas = true\nmessages = true\nmessage_prefix_include = [\"audit\"]\n")
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    exec(&sql, "SELECT pg_logical_emit_message(true, 'other', 'not listed')").await;
    exec(&sql, "SELECT pg_logical_emit_message(false, 'audit', 'nt')").await;
    exec(&sql, "SELECT pg_logical_emit_message(true, 'audit', 'last')").await;

    let c = collect(&bootstrap, &[message_topic.clone(), heartbeat_topic.clone()], {
        let heartbeat_topic = heartbeat_topic.clone();
        move |recs| has_content(recs, "bGFzdA==") && recs.iter().any(|r| r.topic == heartbeat_topic)
    })
    .await;
    let messages = c.topic(&message_topic);
    let contents: Vec<&str> = messages.iter().filter_map(|r| payload(r.value.as_ref())?["message"]["content"].as_str()).collect();
    assert_eq!(contents, ["bnQ=", "bGFzdA=="], "only the listed prefix: {messages:#?}");
    for r in &messages {
        let key = r.key.as_ref().expect("key");
        assert_eq!(key["schema"]["name"], "io.debezium.connector.postgresql.MessageKey");
        assert_eq!(key["schema"]["fields"], json!([{"type": "string", "optional": true, "field": "prefix"}]));
        assert_eq!(key["payload"], json!({"prefix": "audit"}));
        let value = r.value.as_ref().expect("value");
        let schema = &value["schema"];
        assert_eq!(schema["name"], "io.debezium.connector.postgresql.MessageValue");
        let fields: Vec<&str> = schema["fields"].as_array().expect("fields").iter().filter_map(|f| f["field"].as_str()).collect();
        assert_eq!(fields, ["op", "ts_ms", "source", "message"]);
        assert_eq!(schema["fields"][2]["name"], "io.debezium.connector.postgresql.Source");
        assert_eq!(
            schema["fields"][3],
            json!({"type": "struct", "fields": [{"type": "string", "optional": true, "field": "prefix"},
                   {"type": "bytes", "optional": true, "field": "content"}], "optional": false,
                   "name": "io.debezium.connector.postgresql.Message", "version": 1, "field": "message"})
        );
        // Every payload field is in the schema, and the other way round.
        let payload_keys: std::collections::BTreeSet<&str> =
            value["payload"].as_object().expect("payload").keys().map(String::as_str).collect();
        assert_eq!(payload_keys, fields.iter().copied().collect());
        assert_eq!(value["payload"]["op"], "m");
    }
    let hb = c.topic(&heartbeat_topic);
    let key = hb[0].key.as_ref().expect("key");
    assert_eq!(
        key,
        &json!({"schema": {"type": "struct", "fields": [{"type": "string", "optional": false, "field": "serverName"}],
                "optional": false, "name": "io.debezium.connector.common.ServerNameKey", "version": 1},
                "payload": {"serverName": prefix}})
    );
    let value = hb[0].value.as_ref().expect("value");
    assert_eq!(
        value["schema"],
        json!({"type": "struct", "fields": [{"type": "int64", "optional": false, "field": "ts_ms"}], "optional": false,
               "name": "io.debezium.connector.common.Heartbeat", "version": 1})
    );
    assert!(value["payload"]["ts_ms"].is_i64(), "{value}");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_become_heartbeat_records_and_the_slot_confirms_them() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_heartbeat_records").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let heartbeat_topic = format!("__debezium-heartbeat.{prefix}");
    let extra = format!("{}[heartbeat]\ninterval_ms = 300\n", kafka_section(&bootstrap, &prefix, "server_name = \"inventory\"\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    let started_ms = now_ms();
    let before = current_wal_lsn(&sql).await;

    let c = collect(&bootstrap, std::slice::from_ref(&heartbeat_topic), {
        let topic = heartbeat_topic.clone();
        move |recs| recs.iter().filter(|r| r.topic == topic).count() >= 4
    })
    .await;
    let hb = c.topic(&heartbeat_topic);
    let mut last = 0;
    for r in &hb {
        assert_eq!(r.key, Some(json!({"serverName": "inventory"})), "keyed by the server name");
        let v = r.value.as_ref().expect("value");
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only ts_ms: {v}");
        let ts = v["ts_ms"].as_i64().expect("ts_ms");
        assert!(ts >= started_ms && ts <= now_ms() && ts >= last, "ts_ms {ts} is when the record was made, in order");
        last = ts;
    }
    // The heartbeats' commits are confirmed: the slot moves on while the table is quiet.
    let confirmed = db.wait_confirmed_at_least(walcast::lsn::Lsn(before.0 + 1), WAIT).await;
    assert!(confirmed > before, "confirmed {confirmed} did not move past {before}");
    // Nothing else: no message events (messages are off), and no table records.
    assert!(wc.lines().is_empty(), "the heartbeat must not reach the JSON-lines sink");
    wc.stop().await;
    db.drop().await;
}

/// `exactly_once = true`: messages ride in their batch's Kafka transaction and count in the
/// position. A second walcast on an older slot reads every message again and publishes none of
/// them twice, nor loses the row of a transaction whose commit directly follows a
/// non-transactional message (their LSNs touch: the message sits just before the commit).
#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_publishes_each_message_once_across_a_reread() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_messages_eos").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let older = format!("{}_older", db.slot);
    db.create_named_slot(&older).await;
    let prefix = db.name.clone();
    let (message_topic, table_topic) = (format!("{prefix}.message"), format!("{prefix}.public.t"));
    let kafka = kafka_section(&bootstrap, &prefix, "exactly_once = true\nmessages = true\n");
    let opts = Options { extra: format!("[pipeline]\nbatch_max_changes = 3\n\n{kafka}"), ..Options::default() };

    // Rows and messages mixed, batches splitting transactions.
    let mut id = 0;
    let mut emit = |round: &str, sql_text: &mut String| {
        for i in 0..4 {
            id += 1;
            sql_text.push_str(&format!(
                "BEGIN; INSERT INTO t VALUES ({id}); SELECT pg_logical_emit_message(true, 'tx', '{round}-{i}'); \
                 INSERT INTO t VALUES ({}); SELECT pg_logical_emit_message(false, 'nt', '{round}-{i}'); COMMIT; \
                 SELECT pg_logical_emit_message(false, 'between', '{round}-{i}');",
                id + 1000
            ));
        }
    };
    let mut first = String::new();
    emit("first", &mut first);
    exec(&sql, &first).await;
    let end = current_wal_lsn(&sql).await;
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    let confirmed = db.wait_confirmed_at_least(end, WAIT).await;
    assert!(confirmed >= end, "confirmed {confirmed} behind {end}\n{}", wc.log_tail(40));
    wc.stop().await;

    // The same config on the older slot: everything comes again and must be skipped.
    std::fs::write(&wc.config_path, config_toml(&db.url, &older, &db.publication, &wc.out_path, &opts)).expect("rewrite config");
    wc.start();
    let mut second = String::new();
    emit("second", &mut second);
    exec(&sql, &second).await;
    let end = current_wal_lsn(&sql).await;
    let deadline = std::time::Instant::now() + WAIT;
    while db.slot_state(&older).await.and_then(|s| s.confirmed_flush_lsn).unwrap_or_default() < end {
        assert!(std::time::Instant::now() < deadline, "slot {older} did not confirm {end}\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wc.stop().await;

    let c = collect(&bootstrap, &[message_topic.clone(), table_topic.clone()], |recs| recs.len() >= 40).await;
    let mut seen: std::collections::BTreeMap<(String, String), usize> = std::collections::BTreeMap::new();
    for r in c.topic(&message_topic) {
        let m = &r.value.as_ref().expect("value")["message"];
        let content = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, m["content"].as_str().expect("content")).expect("base64"),
        )
        .expect("utf-8");
        *seen.entry((m["prefix"].as_str().expect("prefix").to_string(), content)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(seen.len(), 24, "3 messages x 4 transactions x 2 rounds: {seen:?}");
    let mut rows: Vec<i64> = c.topic(&table_topic).iter().filter_map(|r| r.value.as_ref()?["after"]["id"].as_i64()).collect();
    rows.sort_unstable();
    let mut expected: Vec<i64> = (1..=8).chain(1001..=1008).collect();
    expected.sort_unstable();
    assert_eq!(rows, expected, "every row once");
    db.drop().await;
}
