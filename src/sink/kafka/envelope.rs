//! Record keys and values: the Debezium PostgreSQL connector's change event envelope as Kafka
//! Connect's JSON converter writes it with `schemas.enable=false` (docs/kafka.md, field by field).

use std::io::Write as _;

use super::encoding::Encoder;
use crate::decode::{write_json_str, write_row_object, Change, DecodeError, Op, Relation, Tuple, UnchangedToast};
use crate::lsn::Lsn;

/// Debezium's stand-in for a TOASTed value that did not change and was not sent by Postgres
/// (its `unavailable.value.placeholder` default).
pub const UNAVAILABLE_VALUE_PLACEHOLDER: &str = "__debezium_unavailable_value";

/// `source.connector`.
pub const CONNECTOR: &str = "postgresql";

/// Microseconds from 1970-01-01 to 2000-01-01 (Postgres's epoch).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The `op` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated (its key did not change).
    Update,
    /// `d`: a row was deleted (also the first half of a key change).
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
    /// `t`: the table was truncated.
    Truncate,
}

impl EventOp {
    /// The one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            EventOp::Create => "c",
            EventOp::Update => "u",
            EventOp::Delete => "d",
            EventOp::Read => "r",
            EventOp::Truncate => "t",
        }
    }

    /// The op of a streamed change.
    pub fn of(op: Op) -> Self {
        match op {
            Op::Insert => EventOp::Create,
            Op::Update => EventOp::Update,
            Op::Delete => EventOp::Delete,
            Op::Truncate => EventOp::Truncate,
            Op::Read => EventOp::Read,
        }
    }
}

/// `source.snapshot`: whether the event comes from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SnapshotMarker {
    /// `"false"`: a streamed change.
    #[default]
    False,
    /// `"first"`: the first row of a snapshot.
    First,
    /// `"first_in_data_collection"`: the first row of a table in a snapshot.
    FirstInDataCollection,
    /// `"true"`: a snapshot row.
    True,
    /// `"last_in_data_collection"`: the last row of a table in a snapshot.
    LastInDataCollection,
    /// `"last"`: the last row of a snapshot.
    Last,
}

impl SnapshotMarker {
    /// The string Debezium writes.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::First => "first",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::True => "true",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
        }
    }
}

/// The `transaction` block of an envelope (transaction metadata on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxBlock<'a> {
    /// Transaction id as on the transaction topic.
    pub id: &'a str,
    /// Position of the event among all events of the transaction, from 1.
    pub total_order: u64,
    /// Position of the event among the transaction's events of the same table, from 1.
    pub data_collection_order: u64,
}

/// The parts of `source` that are the same for every event of a sink.
#[derive(Clone, Debug)]
pub struct SourceStatic {
    /// `source.version`: walcast's version.
    pub version: String,
    /// `source.name`: the logical server name.
    pub name: String,
    /// `source.db`: the database.
    pub db: String,
}

/// One event to render: which op, which tuples.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// The change the event comes from (position, transaction, relation).
    pub change: &'a Change,
    /// `op`.
    pub op: EventOp,
    /// `source.snapshot`.
    pub snapshot: SnapshotMarker,
    /// Tuple for `before` (`None`: null).
    pub before: Option<&'a Tuple>,
    /// Tuple for `after` (`None`: null).
    pub after: Option<&'a Tuple>,
}

impl<'a> Event<'a> {
    /// The event a streamed change becomes when its key did not change (see [`split_key_change`]
    /// otherwise): insert -> `c` with `after`; update -> `u` with `before` (the old row when the
    /// server sent one) and `after`; delete -> `d` with `before`; truncate -> `t`.
    pub fn streamed(change: &'a Change) -> Self {
        let marker = if change.op == Op::Read { SnapshotMarker::True } else { SnapshotMarker::False };
        Self::with_op(change, EventOp::of(change.op), marker)
    }

    /// Like [`Event::streamed`] with an explicit op and snapshot marker (a snapshot row is an
    /// insert-shaped change rendered with [`EventOp::Read`]).
    pub fn with_op(change: &'a Change, op: EventOp, snapshot: SnapshotMarker) -> Self {
        let old = change.old.as_ref().map(|o| &o.values);
        let new = change.new.as_ref();
        let (before, after) = match op {
            EventOp::Create | EventOp::Read => (None, new),
            EventOp::Update => (old, new),
            EventOp::Delete => (old, None),
            EventOp::Truncate => (None, None),
        };
        Self { change, op, snapshot, before, after }
    }
}

/// An update that changed the row's key becomes, as in Debezium, a delete of the old key
/// (followed by its tombstone) and a create under the new key. Returns `(delete, create)`.
pub fn split_key_change(change: &Change) -> (Event<'_>, Event<'_>) {
    let old = change.old.as_ref().map(|o| &o.values);
    let new = change.new.as_ref();
    (
        Event { change, op: EventOp::Delete, snapshot: SnapshotMarker::False, before: old, after: None },
        Event { change, op: EventOp::Create, snapshot: SnapshotMarker::False, before: None, after: new },
    )
}

/// The first LSN of `source.sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceFirst {
    /// The change's own transaction's commit LSN (walcast's default: needs no state).
    OwnCommit,
    /// Debezium's: the commit LSN of the transaction before (null when none was seen since start).
    PreviousCommit(Option<Lsn>),
}

/// Milliseconds since 1970 of a Postgres timestamp (microseconds since 2000).
pub fn pg_micros_to_unix_micros(micros_since_2000: i64) -> i64 {
    micros_since_2000.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// Now, in microseconds since 1970.
pub fn now_unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Append the record key: `{"col": value, ...}` over `key_columns` of `values`. Returns false
/// (and writes nothing) when there is no key (no key columns or no tuple): the record key is
/// then null.
pub fn write_key(out: &mut Vec<u8>, rel: &Relation, values: Option<&Tuple>, key_columns: &[usize]) -> Result<bool, DecodeError> {
    write_key_with(out, rel, values, key_columns, None)
}

/// [`write_key`] with values in `enc`'s encodings (`None`: walcast's).
pub(crate) fn write_key_with(
    out: &mut Vec<u8>,
    rel: &Relation,
    values: Option<&Tuple>,
    key_columns: &[usize],
    enc: Option<&Encoder>,
) -> Result<bool, DecodeError> {
    let Some(values) = values else { return Ok(false) };
    if key_columns.is_empty() {
        return Ok(false);
    }
    let include = |i| key_columns.contains(&i);
    match enc {
        Some(e) => e.write_row(out, rel, values, include, UNAVAILABLE_VALUE_PLACEHOLDER)?,
        None => write_row_object(out, rel, values, include, UnchangedToast::Placeholder(UNAVAILABLE_VALUE_PLACEHOLDER))?,
    }
    Ok(true)
}

/// Append the value of `event`: the envelope. `processed_us` is when walcast made the record
/// (microseconds since 1970): the envelope's `ts_ms`/`ts_us`/`ts_ns`.
pub fn write_value(
    out: &mut Vec<u8>,
    event: &Event<'_>,
    source: &SourceStatic,
    processed_us: i64,
    tx: Option<TxBlock<'_>>,
) -> Result<(), DecodeError> {
    write_value_with(out, event, source, processed_us, tx, None, SequenceFirst::OwnCommit)
}

/// [`write_value`] with row values in `enc`'s encodings (`None`: walcast's).
pub(crate) fn write_value_with(
    out: &mut Vec<u8>,
    event: &Event<'_>,
    source: &SourceStatic,
    processed_us: i64,
    tx: Option<TxBlock<'_>>,
    enc: Option<&Encoder>,
    seq: SequenceFirst,
) -> Result<(), DecodeError> {
    let change = event.change;
    let rel = &*change.relation;
    out.extend_from_slice(b"{\"before\":");
    write_row(out, rel, event.before, enc)?;
    out.extend_from_slice(b",\"after\":");
    write_row(out, rel, event.after, enc)?;
    write_source(out, change, event.snapshot, source, seq)?;
    out.extend_from_slice(b",\"transaction\":");
    match tx {
        Some(t) => {
            out.extend_from_slice(b"{\"id\":");
            write_json_str(out, t.id);
            let _ = write!(out, ",\"total_order\":{},\"data_collection_order\":{}}}", t.total_order, t.data_collection_order);
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"op\":\"{}\",\"ts_ms\":{},\"ts_us\":{},\"ts_ns\":{}}}",
        event.op.code(),
        processed_us.div_euclid(1000),
        processed_us,
        processed_us.saturating_mul(1000)
    );
    Ok(())
}

fn write_row(out: &mut Vec<u8>, rel: &Relation, values: Option<&Tuple>, enc: Option<&Encoder>) -> Result<(), DecodeError> {
    match values {
        Some(values) => match enc {
            Some(e) => e.write_row(out, rel, values, |_| true, UNAVAILABLE_VALUE_PLACEHOLDER),
            None => write_row_object(out, rel, values, |_| true, UnchangedToast::Placeholder(UNAVAILABLE_VALUE_PLACEHOLDER)),
        },
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// `,"source":{...}`: Debezium's fields, then walcast's `change_id` (docs/kafka.md "Delivery").
fn write_source(
    out: &mut Vec<u8>,
    change: &Change,
    snapshot: SnapshotMarker,
    source: &SourceStatic,
    seq: SequenceFirst,
) -> Result<(), DecodeError> {
    let commit_us = pg_micros_to_unix_micros(change.commit_ts);
    out.extend_from_slice(b",\"source\":{\"version\":");
    write_json_str(out, &source.version);
    out.extend_from_slice(b",\"connector\":\"");
    out.extend_from_slice(CONNECTOR.as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    write_json_str(out, &source.name);
    let _ = write!(out, ",\"ts_ms\":{},\"snapshot\":\"{}\",\"db\":", commit_us.div_euclid(1000), snapshot.as_str());
    write_json_str(out, &source.db);
    // Debezium's `sequence` is a string holding a JSON array of two decimal LSN strings.
    match seq {
        SequenceFirst::OwnCommit => {
            let _ = write!(out, ",\"sequence\":\"[\\\"{}\\\",", change.commit_lsn.0);
        }
        SequenceFirst::PreviousCommit(Some(prev)) => {
            let _ = write!(out, ",\"sequence\":\"[\\\"{}\\\",", prev.0);
        }
        SequenceFirst::PreviousCommit(None) => out.extend_from_slice(b",\"sequence\":\"[null,"),
    }
    let _ = write!(out, "\\\"{}\\\"]\",\"ts_us\":{},\"ts_ns\":{},\"schema\":", change.lsn.0, commit_us, commit_us.saturating_mul(1000));
    write_json_str(out, &change.relation.schema);
    out.extend_from_slice(b",\"table\":");
    write_json_str(out, &change.relation.table);
    let _ = write!(out, ",\"txId\":{},\"lsn\":{},\"xmin\":null,\"change_id\":", change.xid, change.lsn.0);
    change.write_change_id(out)?;
    out.push(b'}');
    Ok(())
}

/// The id of a transaction on the transaction topic and in `transaction.id`:
/// `"<xid>:<commit LSN as a decimal number>"`, Debezium's PostgreSQL form.
pub fn transaction_id(xid: u32, commit_lsn: Lsn) -> String {
    format!("{xid}:{}", commit_lsn.0)
}

/// Key of a transaction-topic record: `{"id":"..."}`.
pub fn write_tx_key(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"{\"id\":");
    write_json_str(out, id);
    out.push(b'}');
}

/// Value of a BEGIN record.
pub fn write_tx_begin(out: &mut Vec<u8>, id: &str, processed_us: i64) {
    out.extend_from_slice(b"{\"status\":\"BEGIN\",\"id\":");
    write_json_str(out, id);
    let _ = write!(out, ",\"event_count\":null,\"data_collections\":null,\"ts_ms\":{}}}", processed_us.div_euclid(1000));
}

/// Value of an END record; `collections` are `(schema.table, events)` in first-seen order.
pub fn write_tx_end<'a>(
    out: &mut Vec<u8>,
    id: &str,
    event_count: u64,
    collections: impl IntoIterator<Item = (&'a str, u64)>,
    processed_us: i64,
) {
    out.extend_from_slice(b"{\"status\":\"END\",\"id\":");
    write_json_str(out, id);
    let _ = write!(out, ",\"event_count\":{event_count},\"data_collections\":[");
    for (i, (name, count)) in collections.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"data_collection\":");
        write_json_str(out, name);
        let _ = write!(out, ",\"event_count\":{count}}}");
    }
    let _ = write!(out, "],\"ts_ms\":{}}}", processed_us.div_euclid(1000));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::decode::fixtures::{self, text};
    use crate::decode::{Datum, OldTuple, OldTupleKind, ReplicaIdentity, Tuple};

    fn rel() -> Arc<Relation> {
        fixtures::relation("public", "orders", ReplicaIdentity::Default, &[("id", true, 23), ("body", false, 25), ("amount", false, 1700)])
    }

    fn change(op: Op, old: Option<OldTuple>, new: Option<Tuple>) -> Change {
        Change {
            lsn: Lsn(0x1_0000_0010),
            commit_lsn: Lsn(0x1_0000_0200),
            xid: 771,
            // 2026-11-22T16:33:20.123456Z
            commit_ts: 848_680_400_123_456,
            ..fixtures::change(rel(), op, old, new)
        }
    }

    fn source() -> SourceStatic {
        SourceStatic { version: "0.1.0".into(), name: "walcast".into(), db: "app".into() }
    }

    fn value(event: &Event<'_>, tx: Option<TxBlock<'_>>) -> Value {
        let mut out = Vec::new();
        write_value(&mut out, event, &source(), 1_700_000_000_123_456, tx).expect("renders");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn insert_envelope_has_every_field() {
        let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("hello"), text("12.50")])));
        let v = value(&Event::streamed(&c), None);
        assert_eq!(
            v,
            json!({
                "before": null,
                "after": {"id": 1, "body": "hello", "amount": "12.50"},
                "source": {
                    "version": "0.1.0", "connector": "postgresql", "name": "walcast",
                    "ts_ms": 1_795_365_200_123i64, "snapshot": "false", "db": "app",
                    "sequence": format!("[\"{}\",\"{}\"]", 0x1_0000_0200u64, 0x1_0000_0010u64),
                    "ts_us": 1_795_365_200_123_456i64, "ts_ns": 1_795_365_200_123_456_000i64,
                    "schema": "public", "table": "orders", "txId": 771, "lsn": 0x1_0000_0010u64, "xmin": null,
                    "change_id": "1/200:0"
                },
                "transaction": null,
                "op": "c",
                "ts_ms": 1_700_000_000_123i64, "ts_us": 1_700_000_000_123_456i64, "ts_ns": 1_700_000_000_123_456_000i64
            })
        );
    }

    #[test]
    fn sequence_starts_with_the_previous_commit_in_debeziums_mode() {
        let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("a"), text("1")])));
        let seq = |first| {
            let mut out = Vec::new();
            write_value_with(&mut out, &Event::streamed(&c), &source(), 0, None, None, first).expect("renders");
            serde_json::from_slice::<Value>(&out).expect("json")["source"]["sequence"].clone()
        };
        assert_eq!(seq(SequenceFirst::PreviousCommit(Some(Lsn(77)))), json!(format!("[\"77\",\"{}\"]", 0x1_0000_0010u64)));
        assert_eq!(seq(SequenceFirst::PreviousCommit(None)), json!(format!("[null,\"{}\"]", 0x1_0000_0010u64)));
        assert_eq!(seq(SequenceFirst::OwnCommit), json!(format!("[\"{}\",\"{}\"]", 0x1_0000_0200u64, 0x1_0000_0010u64)));
    }

    #[test]
    fn unchanged_toast_gets_debeziums_placeholder() {
        let c = change(Op::Update, None, Some(Tuple::from_datums([text("1"), Datum::Unchanged, Datum::Null])));
        let v = value(&Event::streamed(&c), None);
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"], Value::Null);
        assert_eq!(v["after"], json!({"id": 1, "body": UNAVAILABLE_VALUE_PLACEHOLDER, "amount": null}));
    }

    #[test]
    fn delete_before_has_key_and_nulls() {
        let old = OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("5"), Datum::Null, Datum::Null]) };
        let c = change(Op::Delete, Some(old), None);
        let v = value(&Event::streamed(&c), None);
        assert_eq!(v["op"], "d");
        assert_eq!(v["before"], json!({"id": 5, "body": null, "amount": null}));
        assert_eq!(v["after"], Value::Null);
        let mut key = Vec::new();
        assert!(write_key(&mut key, &c.relation, c.key_source(), &[0]).expect("key"));
        assert_eq!(serde_json::from_slice::<Value>(&key).expect("json"), json!({"id": 5}));
        assert!(!write_key(&mut Vec::new(), &c.relation, c.key_source(), &[]).expect("no key"));
    }

    #[test]
    fn key_change_splits_into_delete_and_create() {
        let old = OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("5"), Datum::Null, Datum::Null]) };
        let c = change(Op::Update, Some(old), Some(Tuple::from_datums([text("6"), text("x"), Datum::Null])));
        let (d, cr) = split_key_change(&c);
        let (d, cr) = (value(&d, None), value(&cr, None));
        // One change, two events: (change_id, op) tells them apart.
        assert_eq!(d["source"]["change_id"], cr["source"]["change_id"]);
        assert_eq!((d["op"].clone(), d["before"]["id"].clone(), d["after"].clone()), (json!("d"), json!(5), Value::Null));
        assert_eq!((cr["op"].clone(), cr["before"].clone(), cr["after"]["id"].clone()), (json!("c"), Value::Null, json!(6)));
    }

    #[test]
    fn truncate_has_no_rows() {
        let c = change(Op::Truncate, None, None);
        let v = value(&Event::streamed(&c), None);
        assert_eq!((v["op"].clone(), v["before"].clone(), v["after"].clone()), (json!("t"), Value::Null, Value::Null));
        assert_eq!(v["source"]["table"], "orders");
    }

    /// A snapshot row (`Op::Read`) is `r` with `source.snapshot = "true"`; the marker is also a
    /// parameter so "last" can be emitted.
    #[test]
    fn snapshot_rows_are_op_r_with_snapshot_marker() {
        let read = change(Op::Read, None, Some(Tuple::from_datums([text("1"), text("a"), text("1")])));
        let v = value(&Event::streamed(&read), None);
        assert_eq!((v["op"].clone(), v["source"]["snapshot"].clone(), v["before"].clone()), (json!("r"), json!("true"), Value::Null));
        assert_eq!(v["source"]["change_id"], "1/200:r16384:{\"id\":1}", "a snapshot row is identified by its key");
        let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("a"), text("1")])));
        for (marker, expected) in [(SnapshotMarker::True, "true"), (SnapshotMarker::Last, "last")] {
            let v = value(&Event::with_op(&c, EventOp::Read, marker), None);
            assert_eq!(v["op"], "r");
            assert_eq!(v["source"]["snapshot"], expected);
            assert_eq!(v["before"], Value::Null);
            assert_eq!(v["after"]["id"], 1);
        }
    }

    #[test]
    fn transaction_block_and_records() {
        let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("a"), text("1")])));
        let id = transaction_id(c.xid, c.commit_lsn);
        let v = value(&Event::streamed(&c), Some(TxBlock { id: &id, total_order: 3, data_collection_order: 2 }));
        assert_eq!(v["transaction"], json!({"id": id, "total_order": 3, "data_collection_order": 2}));

        let mut out = Vec::new();
        write_tx_begin(&mut out, &id, 1_000_000);
        let begin: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(begin, json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null, "ts_ms": 1000}));
        out.clear();
        write_tx_end(&mut out, &id, 3, [("public.a", 2), ("s.b", 1)], 2_000_000);
        let end: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            end,
            json!({"status": "END", "id": id, "event_count": 3, "data_collections": [
                {"data_collection": "public.a", "event_count": 2}, {"data_collection": "s.b", "event_count": 1}], "ts_ms": 2000})
        );
        out.clear();
        write_tx_key(&mut out, &id);
        assert_eq!(serde_json::from_slice::<Value>(&out).expect("json"), json!({"id": id}));
    }
}
