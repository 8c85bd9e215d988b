//! The envelope walcast writes against the field list of Debezium's documentation for the
//! PostgreSQL connector (written down in support::kafka: envelope fields before, after,
//! source, op, ts_ms, transaction; source fields version, connector, name, ts_ms, snapshot, db,
//! sequence, schema, table, txId, lsn, xmin). Every op is rendered, with and without the
//! transaction block; a missing, renamed or mistyped field fails. Needs no server.
//! (tests/kafka_ops.rs checks every record consumed from the broker the same way.)

use std::sync::Arc;

use crate::support::kafka::*;
use serde_json::Value;
use walcast::decode::{Change, Column, Datum, OldTuple, OldTupleKind, Op, Relation, ReplicaIdentity, TruncateOptions, Tuple};
use walcast::lsn::Lsn;
use walcast::sink::kafka::envelope::{
    split_key_change, transaction_id, write_value, Event, EventOp, SnapshotMarker, SourceStatic, TxBlock,
};

fn rel() -> Arc<Relation> {
    let col = |name: &str, key, type_oid| Column { key, name: name.into(), type_oid, type_modifier: -1 };
    Arc::new(Relation {
        oid: 42,
        schema: "inventory".into(),
        table: "customers".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", true, 23), col("first_name", false, 25), col("email", false, 25)],
    })
}

fn text(s: &str) -> Datum<'_> {
    Datum::Text(s.as_bytes())
}

fn change(op: Op, old: Option<OldTuple>, new: Option<Tuple>) -> Change {
    Change {
        lsn: Lsn(24_023_128),
        commit_lsn: Lsn(24_023_200),
        xid: 555,
        commit_ts: 800_000_000_000_000,
        seq: 0,
        relation: rel(),
        op,
        old,
        new,
        truncate: TruncateOptions::default(),
    }
}

fn render(event: &Event<'_>, tx: Option<TxBlock<'_>>) -> Value {
    let source = SourceStatic { version: "0.1.0".into(), name: "PostgreSQL_server".into(), db: "postgres".into() };
    let mut out = Vec::new();
    write_value(&mut out, event, &source, 1_559_033_904_863_000, tx).expect("renders");
    serde_json::from_slice(&out).expect("valid JSON")
}

#[test]
fn every_op_has_the_documented_fields_with_the_documented_types() {
    let row = || Some(Tuple::from_datums([text("1"), text("Anne"), text("annek@noanswer.org")]));
    let key_only = || Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), Datum::Null, Datum::Null]) });
    let insert = change(Op::Insert, None, row());
    let update = change(Op::Update, None, row());
    let update_full = change(Op::Update, Some(OldTuple { kind: OldTupleKind::Full, values: row().expect("row") }), row());
    let delete = change(Op::Delete, key_only(), None);
    let truncate = change(Op::Truncate, None, None);
    let key_change = change(Op::Update, key_only(), Some(Tuple::from_datums([text("2"), text("Anne"), text("a@b")])));
    let (kc_delete, kc_create) = split_key_change(&key_change);
    let events = [
        ("c", Event::streamed(&insert)),
        ("u", Event::streamed(&update)),
        ("u", Event::streamed(&update_full)),
        ("d", Event::streamed(&delete)),
        ("t", Event::streamed(&truncate)),
        ("d", kc_delete),
        ("c", kc_create),
        ("r", Event::with_op(&insert, EventOp::Read, SnapshotMarker::True)),
        ("r", Event::with_op(&insert, EventOp::Read, SnapshotMarker::Last)),
    ];
    let id = transaction_id(555, Lsn(24_023_200));
    for (op, event) in events {
        for tx in [None, Some(TxBlock { id: &id, total_order: 1, data_collection_order: 1 })] {
            let v = render(&event, tx);
            if let Err(e) = check_debezium_envelope(&v) {
                panic!("op {op} (transaction block: {}): {e}\n{v}", tx.is_some());
            }
            assert_eq!(v["op"], op);
            assert_eq!(v["source"]["txId"], 555);
            assert_eq!(v["source"]["lsn"], 24_023_128);
            assert_eq!(v["source"]["sequence"], "[\"24023200\",\"24023128\"]");
        }
    }
}

/// The checker itself must catch what it is for.
#[test]
fn the_checker_rejects_missing_renamed_and_mistyped_fields() {
    let insert = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("a"), text("b")])));
    let good = render(&Event::streamed(&insert), None);
    assert!(check_debezium_envelope(&good).is_ok());
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("missing source.xmin", Box::new(|v| drop(v["source"].as_object_mut().map(|m| m.remove("xmin"))))),
        (
            "renamed txId",
            Box::new(|v| {
                let m = v["source"].as_object_mut().expect("object");
                let x = m.remove("txId").expect("txId");
                m.insert("txid".into(), x);
            }),
        ),
        ("lsn as string", Box::new(|v| v["source"]["lsn"] = Value::String("0/16E7F10".into()))),
        ("sequence as array", Box::new(|v| v["source"]["sequence"] = serde_json::json!(["1", "2"]))),
        ("snapshot as bool", Box::new(|v| v["source"]["snapshot"] = Value::Bool(false))),
        ("missing ts_ms", Box::new(|v| drop(v.as_object_mut().map(|m| m.remove("ts_ms"))))),
        ("missing transaction", Box::new(|v| drop(v.as_object_mut().map(|m| m.remove("transaction"))))),
        ("op long form", Box::new(|v| v["op"] = Value::String("create".into()))),
    ];
    for (what, mutate) in mutations {
        let mut v = good.clone();
        mutate(&mut v);
        assert!(check_debezium_envelope(&v).is_err(), "{what} was not caught: {v}");
    }
}
