//! Against the real broker (tansu from scripts/test-env): inserts, updates (one of them changing
//! the primary key), deletes and a truncate on two tables land on the right topic, with the
//! right key and an envelope equal, field by field, to what Postgres holds, consumed through a
//! consumer group. A tombstone follows each delete; a key change is a delete + tombstone +
//! create, as in Debezium; an unchanged TOASTed value is Debezium's placeholder. Transaction
//! metadata: BEGIN/END records with counts, and the `transaction` block in every envelope.
//! Every envelope passes the Debezium field check; LSNs, txId and headers match the JSON-lines
//! oracle written by the same walcast.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::kafka::*;
use crate::support::*;
use serde_json::{json, Value};

const SCHEMA: &str = r#"
CREATE TABLE acct (
    id int PRIMARY KEY,
    balance int8 NOT NULL,
    note text,
    data jsonb,
    amount numeric(12, 2),
    ts timestamptz,
    big text
);
CREATE TABLE item (
    sku text,
    shop int,
    qty int NOT NULL,
    tags text[],
    PRIMARY KEY (sku, shop)
);
ALTER TABLE item REPLICA IDENTITY FULL;
"#;

const PLACEHOLDER: &str = "__debezium_unavailable_value";

/// A row of `acct` as walcast renders it, computed by Postgres.
async fn acct_row(sql: &tokio_postgres::Client, id: i32) -> Value {
    let text = query_text(
        sql,
        &format!(
            "SELECT jsonb_build_object('id', id, 'balance', balance, 'note', note, 'data', data, 'amount', amount::text, \
             'ts', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'big', big)::text FROM acct WHERE id = {id}"
        ),
    )
    .await
    .unwrap_or_else(|| panic!("acct {id} missing"));
    serde_json::from_str(&text).expect("json")
}

async fn item_row(sql: &tokio_postgres::Client, sku: &str) -> Value {
    let text = query_text(
        sql,
        &format!(
            "SELECT jsonb_build_object('sku', sku, 'shop', shop, 'qty', qty, 'tags', to_jsonb(tags))::text FROM item WHERE sku = '{sku}'"
        ),
    )
    .await
    .unwrap_or_else(|| panic!("item {sku} missing"));
    serde_json::from_str(&text).expect("json")
}

/// Run one transaction; returns its txid.
async fn tx(sql: &tokio_postgres::Client, body: &str) -> i64 {
    let txid = query_text(sql, &format!("BEGIN; {body}; SELECT txid_current()::text; COMMIT")).await.expect("txid");
    txid.parse().expect("number")
}

/// One expected record of a table topic.
#[derive(Debug, Clone)]
struct Exp {
    op: &'static str,
    key: Value,
    before: Value,
    after: Value,
    txid: i64,
}

fn exp(op: &'static str, key: Value, before: Value, after: Value, txid: i64) -> Exp {
    Exp { op, key, before, after, txid }
}

fn acct_key_only(id: i32) -> Value {
    json!({"id": id, "balance": null, "note": null, "data": null, "amount": null, "ts": null, "big": null})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_lands_on_its_topic_as_a_debezium_envelope() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_ops").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&["acct", "item"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let (acct_topic, item_topic, tx_topic) =
        (format!("{prefix}.public.acct"), format!("{prefix}.public.item"), format!("{prefix}.transaction"));
    let extra = kafka_section(
        &bootstrap,
        &prefix,
        &format!(
            "server_name = \"fulfillment\"\ntransaction_topic = \"{tx_topic}\"\ntopic_partitions = 2\n\
             [sinks.kafka.tables.\"public.item\"]\nkey_columns = [\"sku\", \"shop\"]\n"
        ),
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;

    let mut acct: Vec<Exp> = Vec::new();
    let mut item: Vec<Exp> = Vec::new();
    let mut txids = Vec::new();

    // T1: three accounts; account 2 carries a value large enough to be TOASTed out of line.
    let t = tx(
        &sql,
        "INSERT INTO acct VALUES
           (1, 100, 'n1', '{\"a\": [1, 2]}', 12.50, '2026-01-02 03:04:05.123456+00', 'short'),
           (2, 200, NULL, 'null', -0.01, '1999-12-31 23:59:59.999999+00',
            (SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 640) g)),
           (3, 300, 'n3', NULL, NULL, NULL, NULL)",
    )
    .await;
    txids.push(t);
    for id in [1, 2, 3] {
        acct.push(exp("c", json!({"id": id}), Value::Null, acct_row(&sql, id).await, t));
    }
    let toasted = query_text(&sql, "SELECT pg_relation_size(reltoastrelid)::text FROM pg_class WHERE relname = 'acct'").await;
    assert!(toasted.as_deref().is_some_and(|b| b != "0"), "the big value was not TOASTed");

    // T2: two items (composite key, configured key_columns on a REPLICA IDENTITY FULL table).
    let t = tx(&sql, "INSERT INTO item VALUES ('a', 1, 5, '{x,\"y z\"}'), ('b', 2, 7, '{}')").await;
    txids.push(t);
    for sku in ["a", "b"] {
        let row = item_row(&sql, sku).await;
        item.push(exp("c", json!({"sku": row["sku"], "shop": row["shop"]}), Value::Null, row, t));
    }

    // T3: update without touching the TOASTed column: Debezium's placeholder in `after`.
    let t = tx(&sql, "UPDATE acct SET balance = balance + 10, note = 'x' WHERE id = 2").await;
    txids.push(t);
    let mut after = acct_row(&sql, 2).await;
    after["big"] = json!(PLACEHOLDER);
    acct.push(exp("u", json!({"id": 2}), Value::Null, after, t));

    // T4: primary key change: delete of the old key, its tombstone, create of the new key.
    let t = tx(&sql, "UPDATE acct SET id = 20 WHERE id = 3").await;
    txids.push(t);
    acct.push(exp("d", json!({"id": 3}), acct_key_only(3), Value::Null, t));
    acct.push(exp("tombstone", json!({"id": 3}), Value::Null, Value::Null, t));
    acct.push(exp("c", json!({"id": 20}), Value::Null, acct_row(&sql, 20).await, t));

    // T5: update of a REPLICA IDENTITY FULL row: `before` is the whole old row.
    let before = item_row(&sql, "a").await;
    let t = tx(&sql, "UPDATE item SET qty = qty + 1, tags = NULL WHERE sku = 'a'").await;
    txids.push(t);
    item.push(exp("u", json!({"sku": "a", "shop": 1}), before, item_row(&sql, "a").await, t));

    // T6, T7: deletes, each followed by a tombstone.
    let t = tx(&sql, "DELETE FROM acct WHERE id = 1").await;
    txids.push(t);
    acct.push(exp("d", json!({"id": 1}), acct_key_only(1), Value::Null, t));
    acct.push(exp("tombstone", json!({"id": 1}), Value::Null, Value::Null, t));
    let before = item_row(&sql, "b").await;
    let t = tx(&sql, "DELETE FROM item WHERE sku = 'b'").await;
    txids.push(t);
    item.push(exp("d", json!({"sku": "b", "shop": 2}), before, Value::Null, t));
    item.push(exp("tombstone", json!({"sku": "b", "shop": 2}), Value::Null, Value::Null, t));

    // T8: truncate: op t, null key, on the table's topic.
    let t = tx(&sql, "TRUNCATE item").await;
    txids.push(t);
    item.push(exp("t", Value::Null, Value::Null, Value::Null, t));

    // T9: one transaction over both tables.
    let t = tx(
        &sql,
        "INSERT INTO item VALUES ('c', 3, 1, NULL); UPDATE acct SET balance = 0 WHERE id = 20; INSERT INTO item VALUES ('d', 4, 2, '{q}')",
    )
    .await;
    txids.push(t);
    for sku in ["c", "d"] {
        let row = item_row(&sql, sku).await;
        item.push(exp("c", json!({"sku": row["sku"], "shop": row["shop"]}), Value::Null, row, t));
    }
    acct.push(exp("u", json!({"id": 20}), Value::Null, acct_row(&sql, 20).await, t));

    // The JSON-lines oracle of the same run: 3 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 3 changes.
    let lines = wc.wait_lines(14, WAIT).await;

    // Consume through a consumer group.
    let topics = [acct_topic.as_str(), item_topic.as_str(), tx_topic.as_str()];
    let (n_acct, n_item, n_tx) = (acct.len(), item.len(), 2 * txids.len());
    let collector = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
        let (acct_topic, item_topic, tx_topic) = (acct_topic.clone(), item_topic.clone(), tx_topic.clone());
        move || {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut c = Collector::group(&bootstrap, &refs);
            c.wait_until("every record", Duration::from_secs(60), |recs| {
                let n = |t: &str| recs.iter().filter(|r| r.topic == t).count();
                n(&acct_topic) >= n_acct && n(&item_topic) >= n_item && n(&tx_topic) >= n_tx
            });
            // Nothing more may come.
            c.poll_for(Duration::from_millis(500));
            c
        }
    })
    .await
    .expect("consumer");

    // Per topic: the expected sequence. Each key lives in one partition, so order is checked per
    // key; with the truncate (null key) in the picture, order across keys of one partition is
    // checked too.
    for (topic, expected) in [(&acct_topic, &acct), (&item_topic, &item)] {
        let got = collector.topic(topic);
        assert_eq!(got.len(), expected.len(), "{topic}: {} records, expected {}: {got:#?}", got.len(), expected.len());
        let mut by_partition: BTreeMap<i32, Vec<&KRec>> = BTreeMap::new();
        for r in &got {
            by_partition.entry(r.partition).or_default().push(r);
        }
        // Match each expected record, in order, against the records of the partition its key is in.
        let mut cursor: BTreeMap<i32, usize> = BTreeMap::new();
        for (i, e) in expected.iter().enumerate() {
            let partition = match got.iter().find(|r| r.key.as_ref().unwrap_or(&Value::Null) == &e.key) {
                Some(r) => r.partition,
                None => panic!("{topic}: no record with key {} (expected #{i} {e:?})", e.key),
            };
            let at = cursor.entry(partition).or_insert(0);
            let r = by_partition[&partition]
                .get(*at)
                .unwrap_or_else(|| panic!("{topic}: partition {partition} ends before expected #{i} {e:?}"));
            *at += 1;
            let what = format!("{topic} #{i} ({} {})", e.op, e.key);
            assert_json_eq(&e.key, r.key.as_ref().unwrap_or(&Value::Null), &format!("{what}: key"));
            if e.op == "tombstone" {
                assert!(r.value.is_none(), "{what}: expected a tombstone, got {:?}", r.value);
                // A tombstone repeats the delete's key bytes exactly (compaction matches bytes).
                let prev = by_partition[&partition][*at - 2];
                assert_eq!(prev.key_raw, r.key_raw, "{what}: tombstone key bytes differ from the delete's");
                continue;
            }
            let v = r.value.as_ref().unwrap_or_else(|| panic!("{what}: unexpected tombstone"));
            if let Err(err) = check_debezium_envelope(v) {
                panic!("{what}: {err}\n{v}");
            }
            assert_eq!(v["op"], e.op, "{what}: {v}");
            assert_json_eq(&e.before, &v["before"], &format!("{what}: before"));
            assert_json_eq(&e.after, &v["after"], &format!("{what}: after"));
            let s = &v["source"];
            assert_eq!(s["connector"], "postgresql");
            assert_eq!(s["name"], "fulfillment");
            assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
            assert_eq!(s["db"], json!(db.name), "{what}");
            assert_eq!(s["schema"], "public");
            assert_eq!(s["table"], json!(topic.rsplit('.').next().expect("table")));
            assert_eq!(s["snapshot"], "false");
            assert_eq!(s["txId"], json!(e.txid), "{what}");
            assert!(s["xmin"].is_null());
            let commit_ms = s["ts_ms"].as_i64().expect("ts_ms");
            assert!(commit_ms >= started_ms - 5_000 && commit_ms <= started_ms + 120_000, "{what}: source.ts_ms {commit_ms}");
            assert!(v["ts_ms"].as_i64().expect("ts_ms") >= commit_ms, "{what}: processed before committed?");
            // Position: the JSON-lines line of the same change.
            let lsn = s["lsn"].as_u64().expect("lsn");
            let lsn_text = walcast::lsn::Lsn(lsn).to_string();
            let line = lines
                .iter()
                .find(|l| l["lsn"] == json!(lsn_text) && l["table"] == s["table"] && l["xid"] == s["txId"])
                .unwrap_or_else(|| panic!("{what}: no JSON line with lsn {lsn_text}"));
            let commit_lsn = parse_lsn(line["commit_lsn"].as_str().expect("commit_lsn"));
            assert_eq!(s["sequence"], json!(format!("[\"{}\",\"{}\"]", commit_lsn.0, lsn)), "{what}");
            assert_eq!(r.headers.get("walcast.lsn"), Some(&lsn_text), "{what}: headers {:?}", r.headers);
            assert_eq!(r.headers.get("walcast.commit_lsn"), Some(&commit_lsn.to_string()), "{what}");
            // Transaction block.
            let t = &v["transaction"];
            assert_eq!(t["id"], json!(format!("{}:{}", e.txid, commit_lsn.0)), "{what}: {t}");
        }
        for (p, recs) in &by_partition {
            assert_eq!(cursor.get(p).copied().unwrap_or(0), recs.len(), "{topic}: extra records in partition {p}");
        }
    }

    // The key change carries Debezium's key headers.
    let d3 =
        collector.topic(&acct_topic).into_iter().find(|r| r.key == Some(json!({"id": 3})) && r.op() == Some("d")).expect("delete of 3");
    let newkey = d3.headers.get("__debezium.newkey").unwrap_or_else(|| panic!("no __debezium.newkey header: {d3:?}"));
    assert_eq!(serde_json::from_str::<Value>(newkey).expect("json"), json!({"id": 20}));

    // Transaction metadata: BEGIN then END per transaction, with counts per table.
    let txs = collector.topic(&tx_topic);
    assert_eq!(txs.len(), n_tx, "{txs:#?}");
    let data: Vec<&KRec> = collector.records.iter().filter(|r| r.topic != tx_topic && r.value.is_some()).collect();
    for txid in &txids {
        let mine: Vec<&&KRec> = txs
            .iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v["id"].as_str().is_some_and(|id| id.starts_with(&format!("{txid}:")))))
            .collect();
        assert_eq!(mine.len(), 2, "transaction {txid}: {mine:#?}");
        let (begin, end) = (mine[0].value.as_ref().expect("begin"), mine[1].value.as_ref().expect("end"));
        assert_eq!(begin["status"], "BEGIN");
        assert_eq!(end["status"], "END");
        assert_eq!(begin["id"], end["id"]);
        assert_eq!(mine[0].key, Some(json!({"id": begin["id"]})));
        let events: Vec<&&KRec> = data.iter().filter(|r| r.source("txId") == Some(&json!(txid))).collect();
        assert_eq!(end["event_count"], json!(events.len()), "transaction {txid}: {end}");
        let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
        for r in &events {
            *per_table.entry(format!("public.{}", r.source("table").and_then(Value::as_str).expect("table"))).or_default() += 1;
        }
        let listed: BTreeMap<String, u64> = end["data_collections"]
            .as_array()
            .expect("data_collections")
            .iter()
            .map(|c| (c["data_collection"].as_str().expect("name").to_string(), c["event_count"].as_u64().expect("count")))
            .collect();
        assert_eq!(listed, per_table, "transaction {txid}: {end}");
        // total_order runs 1..n over the transaction's events.
        let mut orders: Vec<u64> =
            events.iter().map(|r| r.value.as_ref().expect("v")["transaction"]["total_order"].as_u64().expect("order")).collect();
        orders.sort_unstable();
        assert_eq!(orders, (1..=events.len() as u64).collect::<Vec<_>>(), "transaction {txid}");
    }

    wc.stop().await;
    db.drop().await;
}

/// Rows that exist when walcast creates the slot are published first as Debezium snapshot
/// records: `op = "r"`, `source.snapshot = "true"`, no `before`, keyed like streamed rows, and no
/// transaction records for them; then streaming continues with ordinary events.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_are_read_events() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_snap").await;
    let sql = db.client().await;
    exec(
        &sql,
        "CREATE TABLE acct (id int PRIMARY KEY, balance int8 NOT NULL); INSERT INTO acct SELECT g, g * 10 FROM generate_series(1, 50) g;
         CREATE TABLE item (id int PRIMARY KEY); INSERT INTO item SELECT generate_series(1, 7)",
    )
    .await;
    db.create_publication(&["acct", "item"]).await;
    let prefix = db.name.clone();
    let (topic, tx_topic, item_topic) = (format!("{prefix}.public.acct"), format!("{prefix}.transaction"), format!("{prefix}.public.item"));
    // 50 rows in chunks of 25: the table ends exactly at a chunk's end.
    let state = tempfile::tempdir().expect("state dir");
    let extra = format!(
        "[snapshot]\nchunk_rows = 25\nstate_dir = {}\n\n{}",
        toml_str(&state.path().to_string_lossy()),
        kafka_section(&bootstrap, &prefix, &format!("transaction_topic = \"{tx_topic}\"\n"))
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start(); // no slot yet: walcast creates it and snapshots
    wc.wait_lines(57, WAIT).await;
    exec(&sql, "UPDATE acct SET balance = 0 WHERE id = 7").await;
    wc.wait_lines(58, WAIT).await;

    let mut c = Collector::group(&bootstrap, &[&topic, &tx_topic, &item_topic]);
    c.wait_until("57 snapshot records and the update", WAIT, |r| {
        r.iter().filter(|r| r.topic == topic).count() >= 51 && r.iter().filter(|r| r.topic == item_topic).count() >= 7
    });
    // Debezium's markers: the snapshot's first and last rows, each other table's first and last.
    let markers =
        |t: &str| c.topic(t).iter().take_while(|r| r.op() == Some("r")).map(|r| r.source("snapshot").cloned()).collect::<Vec<_>>();
    let (acct, item) = (markers(&topic), markers(&item_topic));
    assert_eq!((acct.len(), item.len()), (50, 7));
    let ends = |m: &[Option<Value>]| (m[0].clone(), m[m.len() - 1].clone());
    let (first, last_in, first_in, last) =
        (Some(json!("first")), Some(json!("last_in_data_collection")), Some(json!("first_in_data_collection")), Some(json!("last")));
    assert!(
        (ends(&acct), ends(&item)) == ((first.clone(), last_in.clone()), (first_in.clone(), last.clone()))
            || (ends(&item), ends(&acct)) == ((first, last_in), (first_in, last)),
        "acct {:?}, item {:?}",
        ends(&acct),
        ends(&item)
    );
    assert!(acct[1..49].iter().chain(&item[1..6]).all(|m| m == &Some(json!("true"))), "{acct:?} {item:?}");
    let records = c.topic(&topic);
    let (reads, rest) = records.split_at(50);
    for r in reads {
        assert_eq!(r.op(), Some("r"), "{r:?}");
        let v = r.value.as_ref().expect("value");
        assert!(v["before"].is_null() && v["after"]["balance"].as_i64() == v["after"]["id"].as_i64().map(|i| i * 10));
        assert_eq!(r.key, Some(json!({"id": v["after"]["id"]})));
        check_debezium_envelope(v).unwrap_or_else(|e| panic!("{e}: {v}"));
    }
    assert_eq!((rest[0].op(), rest[0].source("snapshot")), (Some("u"), Some(&json!("false"))));
    // Transaction records only for the streamed update: one BEGIN and one END.
    let tx_records = c.topic(&tx_topic);
    assert_eq!(tx_records.len(), 2, "{tx_records:?}");
    wc.stop().await;
    db.drop().await;
}
