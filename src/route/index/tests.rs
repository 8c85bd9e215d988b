//! Flat rules: rendering, ids, ops, key changes, time-based indexes.

use super::*;
use crate::decode::fixtures::{self, text};
use crate::decode::OldTuple;
use serde_json::{json, Value};

fn rel(identity: ReplicaIdentity) -> Arc<Relation> {
    let columns = [("id", true, 23), ("region", true, 25), ("body", false, 25), ("n", false, 23), ("secret", false, 25)];
    fixtures::relation("public", "orders", identity, &columns)
}

fn change(op: Op, old: Option<OldTuple>, new: Option<Tuple>) -> Change {
    fixtures::change(rel(ReplicaIdentity::Default), op, old, new)
}

fn rule(extra: &str) -> EsTableRule {
    let text = format!("table = \"public.orders\"\nindex = \"orders\"\n{extra}");
    toml::from_str(&text).expect("rule")
}

fn route(rules: &[EsTableRule], c: &Change) -> Vec<Routed> {
    let mut r = FlatRules::new(rules);
    let mut out = Vec::new();
    r.route(c, 3, &mut out);
    out
}

fn doc(a: &EsAction) -> Value {
    match &a.op {
        EsOp::Index(d) | EsOp::Update { fields: d, .. } => serde_json::from_slice(d).expect("json"),
        _ => Value::Null,
    }
}

fn row(id: &str) -> Tuple {
    Tuple::from_datums([text(id), text("eu"), text("hello"), text("5"), text("pw")])
}

#[test]
fn insert_renders_every_column_and_a_composite_id() {
    let out = route(&[rule("")], &change(Op::Insert, None, Some(row("1"))));
    assert_eq!(out.len(), 1);
    let a = out[0].as_ref().expect("action");
    assert_eq!(&*a.index, "orders");
    assert_eq!(a.id, r#"[1,"eu"]"#);
    assert_eq!(a.version, 0x1_0000_0020);
    assert_eq!(a.origin.change, Some(3));
    assert_eq!(&*a.origin.table, "public.orders");
    assert!(matches!(a.op, EsOp::Index(_)));
    assert_eq!(doc(a), json!({"id": 1, "region": "eu", "body": "hello", "n": 5, "secret": "pw"}));
}

#[test]
fn include_exclude_rename_and_id_columns() {
    let r = rule(
        "id_columns = [\"region\"]\ninclude = [\"id\", \"region\", \"n\", \"secret\"]\nexclude = [\"secret\"]\nrename = { n = \"count\" }",
    );
    let out = route(&[r], &change(Op::Insert, None, Some(row("1"))));
    let a = out[0].as_ref().expect("action");
    assert_eq!(a.id, "eu", "a single string id column is used unquoted");
    assert_eq!(doc(a), json!({"id": 1, "region": "eu", "count": 5}));
}

#[test]
fn single_column_ids() {
    let r = rule("id_columns = [\"id\"]");
    let out = route(std::slice::from_ref(&r), &change(Op::Insert, None, Some(row("42"))));
    assert_eq!(out[0].as_ref().expect("action").id, "42");
    // Strings with JSON specials come out unescaped.
    let r2 = rule("id_columns = [\"body\"]");
    let mut new = row("1");
    new = new.with(2, text("a\"b/é"));
    let out = route(&[r2], &change(Op::Insert, None, Some(new)));
    assert_eq!(out[0].as_ref().expect("action").id, "a\"b/é");
    // A null single id is rejected.
    let r3 = rule("id_columns = [\"body\"]");
    let mut new = row("1");
    new = new.with(2, Datum::Null);
    let out = route(&[r3], &change(Op::Insert, None, Some(new)));
    let rej = out[0].as_ref().expect_err("rejected");
    assert!(rej.reason.contains("is null"), "{}", rej.reason);
    assert_eq!(&*rej.index, "orders");
}

#[test]
fn unchanged_toast_makes_a_partial_update() {
    let mut new = row("1");
    new = new.with(2, Datum::Unchanged);
    let out = route(&[rule("")], &change(Op::Update, None, Some(new)));
    let a = out[0].as_ref().expect("action");
    match &a.op {
        EsOp::Update { base_id, .. } => assert_eq!(base_id, &None),
        other => panic!("expected a partial update, got {other:?}"),
    }
    assert_eq!(doc(a), json!({"id": 1, "region": "eu", "n": 5, "secret": "pw"}));
    // Excluded unchanged columns do not make the update partial.
    let out = route(&[rule("exclude = [\"body\"]")], &change(Op::Update, None, Some(row("1").with(2, Datum::Unchanged))));
    assert!(matches!(out[0].as_ref().expect("action").op, EsOp::Index(_)));
}

#[test]
fn delete_uses_the_old_key_and_key_change_moves_the_document() {
    let old =
        OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), text("eu"), Datum::Null, Datum::Null, Datum::Null]) };
    let out = route(&[rule("")], &change(Op::Delete, Some(old.clone()), None));
    let a = out[0].as_ref().expect("action");
    assert_eq!((a.id.as_str(), &a.op), (r#"[1,"eu"]"#, &EsOp::Delete));

    // Key change with an unchanged TOAST column: partial update based on the old id, then delete the old id.
    let mut new = row("2");
    new = new.with(2, Datum::Unchanged);
    let out = route(&[rule("")], &change(Op::Update, Some(old.clone()), Some(new)));
    assert_eq!(out.len(), 2);
    let (w, d) = (out[0].as_ref().expect("write"), out[1].as_ref().expect("delete"));
    assert_eq!(w.id, r#"[2,"eu"]"#);
    assert!(matches!(&w.op, EsOp::Update { base_id: Some(b), .. } if b == r#"[1,"eu"]"#));
    assert_eq!((d.id.as_str(), &d.op), (r#"[1,"eu"]"#, &EsOp::Delete));

    // A non-key id column cannot be read from a key-only old tuple.
    let out = route(&[rule("id_columns = [\"n\"]")], &change(Op::Delete, Some(old), None));
    let rej = out[0].as_ref().expect_err("rejected");
    assert!(rej.reason.contains("replica identity"), "{}", rej.reason);
}

#[test]
fn resync_truncate_empties_the_index_whatever_the_rule() {
    let mut c = change(Op::Truncate, None, None);
    c.truncate.resync = true;
    for r in [rule(""), rule("ops = [\"insert\"]")] {
        let out = route(&[r], &c);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().expect("action").op, EsOp::DeleteAll);
    }
}

#[test]
fn ops_filter_and_truncate() {
    let r = rule("ops = [\"insert\", \"delete\"]");
    assert!(route(std::slice::from_ref(&r), &change(Op::Update, None, Some(row("1")))).is_empty());
    assert_eq!(route(std::slice::from_ref(&r), &change(Op::Insert, None, Some(row("1")))).len(), 1);
    assert!(route(&[r], &change(Op::Truncate, None, None)).is_empty());
    assert!(route(&[rule("")], &change(Op::Truncate, None, None)).is_empty(), "ignore by default");
    let out = route(&[rule("truncate = \"delete_all\"")], &change(Op::Truncate, None, None));
    assert_eq!(out[0].as_ref().expect("action").op, EsOp::DeleteAll);
}

#[test]
fn unmapped_tables_produce_nothing_and_two_rules_both_apply() {
    let mut other = rule("");
    other.table = "public.other".parse().expect("table name");
    assert!(route(&[other], &change(Op::Insert, None, Some(row("1")))).is_empty());
    let mut second = rule("include = [\"id\"]");
    second.index = "orders_ids".parse().expect("index name");
    let out = route(&[rule(""), second], &change(Op::Insert, None, Some(row("1"))));
    assert_eq!(out.len(), 2);
    assert_eq!(doc(out[1].as_ref().expect("second")), json!({"id": 1}));
}

#[test]
fn table_without_key_needs_id_columns() {
    let mut c = change(Op::Insert, None, Some(row("1")));
    let mut r = (*c.relation).clone_for_test();
    for col in &mut r.columns {
        col.key = false;
    }
    c.relation = Arc::new(r);
    let out = route(&[rule("")], &c);
    assert!(out[0].as_ref().expect_err("rejected").reason.contains("id_columns"));
    let out = route(&[rule("id_columns = [\"id\"]")], &c);
    assert_eq!(out[0].as_ref().expect("action").id, "1");
}

trait CloneForTest {
    fn clone_for_test(&self) -> Relation;
}
impl CloneForTest for Relation {
    fn clone_for_test(&self) -> Relation {
        Relation {
            oid: self.oid + 1,
            schema: self.schema.clone(),
            table: self.table.clone(),
            replica_identity: self.replica_identity,
            columns: self.columns.clone(),
        }
    }
}

/// `public.readings (device_id int, ts timestamptz, temp float8)`, key `(device_id, ts)` when
/// `ts_in_key`, else `(device_id)`.
fn readings(ts_in_key: bool, identity: ReplicaIdentity) -> Arc<Relation> {
    fixtures::relation("public", "readings", identity, &[("device_id", true, 23), ("ts", ts_in_key, 1184), ("temp", false, 701)])
}

fn reading_rule(index: &str, extra: &str) -> EsTableRule {
    toml::from_str(&format!("table = \"public.readings\"\nindex = \"{index}\"\n{extra}")).expect("rule")
}

fn reading(device: &str, ts: &str) -> Tuple {
    Tuple::from_datums([text(device), text(ts), text("21.5")])
}

fn target(r: &Routed) -> (String, String, &'static str) {
    let a = r.as_ref().expect("action");
    (a.index.to_string(), a.id.clone(), a.op.as_str())
}

#[test]
fn a_timestamp_column_names_the_daily_index() {
    let rel = readings(true, ReplicaIdentity::Default);
    let r = reading_rule("telemetry-{column:ts:%Y.%m.%d}", "id_columns = [\"device_id\", \"ts\"]");
    let mut rules = FlatRules::new(std::slice::from_ref(&r));
    let mut out = Vec::new();
    for ts in ["2026-03-07 23:59:59.5+00", "2026-03-08 00:00:00+00", "2026-03-08 01:00:00+02"] {
        rules.route(&fixtures::change(Arc::clone(&rel), Op::Insert, None, Some(reading("1", ts))), 0, &mut out);
    }
    let names: Vec<_> = out.iter().map(|r| target(r).0).collect();
    assert_eq!(names, ["telemetry-2026.03.07", "telemetry-2026.03.08", "telemetry-2026.03.07"], "UTC days");
    // One allocation per index: the same day's actions share the name.
    let (a, c) = (out[0].as_ref().expect("a"), out[2].as_ref().expect("c"));
    assert!(Arc::ptr_eq(&a.index, &c.index));

    // A delete goes to the day of its old key; an update that changes the day moves the document.
    let old = |ts: &str| Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), text(ts), Datum::Null]) });
    let mut out = Vec::new();
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Delete, old("2026-03-07 10:00:00+00"), None), 0, &mut out);
    assert_eq!(target(&out[0]).0, "telemetry-2026.03.07");
    assert_eq!(target(&out[0]).2, "delete");
    let mut out = Vec::new();
    let moved = fixtures::change(Arc::clone(&rel), Op::Update, old("2026-03-07 10:00:00+00"), Some(reading("1", "2026-03-09 10:00:00+00")));
    rules.route(&moved, 0, &mut out);
    let got: Vec<_> = out.iter().map(target).collect();
    assert_eq!(got[0].0, "telemetry-2026.03.09");
    assert_eq!((got[1].0.as_str(), got[1].2), ("telemetry-2026.03.07", "delete"));

    // Truncate empties every index of the pattern.
    let mut out = Vec::new();
    let rules_t = reading_rule("telemetry-{column:ts:%Y.%m.%d}", "truncate = \"delete_all\"");
    FlatRules::new(&[rules_t]).route(&fixtures::change(Arc::clone(&rel), Op::Truncate, None, None), 0, &mut out);
    assert_eq!(target(&out[0]).0, "telemetry-*");
}

#[test]
fn the_time_column_must_reach_deletes_and_be_a_time() {
    // Not in the key: inserts route, deletes cannot know their index.
    let rel = readings(false, ReplicaIdentity::Default);
    let r = reading_rule("t-{column:ts:%Y.%m.%d}", "");
    let mut rules = FlatRules::new(std::slice::from_ref(&r));
    let mut out = Vec::new();
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Insert, None, Some(reading("1", "2026-03-07 10:00:00+00"))), 0, &mut out);
    let old = OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), Datum::Null, Datum::Null]) };
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Delete, Some(old.clone()), None), 0, &mut out);
    assert_eq!(target(&out[0]).0, "t-2026.03.07");
    let rej = out[1].as_ref().expect_err("delete without the time");
    assert!(rej.reason.contains("REPLICA IDENTITY FULL"), "{}", rej.reason);
    assert_eq!(&*rej.index, "t-{column:ts:%Y.%m.%d}");
    // A key change whose old key lacks the time: the time did not change, the index neither.
    let mut out = Vec::new();
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Update, Some(old), Some(reading("2", "2026-03-07 10:00:00+00"))), 0, &mut out);
    let got: Vec<_> = out.iter().map(target).collect();
    assert_eq!(got, [("t-2026.03.07".into(), "2".into(), "index"), ("t-2026.03.07".into(), "1".into(), "delete")]);
    // REPLICA IDENTITY FULL carries it.
    let full = readings(false, ReplicaIdentity::Full);
    let old = OldTuple { kind: OldTupleKind::Full, values: reading("1", "2026-03-06 10:00:00+00") };
    let mut out = Vec::new();
    let r_full = reading_rule("t-{column:ts:%Y.%m.%d}", "id_columns = [\"device_id\"]");
    FlatRules::new(&[r_full]).route(&fixtures::change(full, Op::Delete, Some(old), None), 0, &mut out);
    assert_eq!(target(&out[0]).0, "t-2026.03.06");
    // Null, unparsable, a missing column, a column that is not a time.
    for (rule, ts, says) in [
        ("t-{column:ts:%Y}", Datum::Null, "no value"),
        ("t-{column:ts:%Y}", text("infinity"), "infinity"),
        ("t-{column:nope:%Y}", text("2026-03-07"), "not a column"),
        ("t-{column:temp:%Y}", text("2026-03-07"), "not a timestamptz"),
    ] {
        let mut row = reading("1", "");
        row = row.with(1, ts);
        let out = route_rel(&reading_rule(rule, ""), &rel, row);
        let rej = out[0].as_ref().expect_err(rule);
        assert!(rej.reason.contains(says), "{rule}: {}", rej.reason);
    }
}

fn route_rel(r: &EsTableRule, rel: &Arc<Relation>, row: Tuple) -> Vec<Routed> {
    let mut out = Vec::new();
    FlatRules::new(std::slice::from_ref(r)).route(&fixtures::change(Arc::clone(rel), Op::Insert, None, Some(row)), 0, &mut out);
    out
}

#[test]
fn the_commit_date_names_append_only_indexes() {
    let rel = readings(true, ReplicaIdentity::Default);
    let r = reading_rule("telemetry-{commit_date:%Y.%m.%d-%H}", "ops = [\"insert\"]");
    let mut c = fixtures::change(Arc::clone(&rel), Op::Insert, None, Some(reading("1", "1999-01-01 00:00:00+00")));
    c.commit_ts = 762_526_800_000_000; // 2024-02-29 13:00 UTC
    let mut out = Vec::new();
    FlatRules::new(&[r]).route(&c, 0, &mut out);
    assert_eq!(target(&out[0]).0, "telemetry-2024.02.29-13");
}

/// A snapshot row read by binary COPY (integers and timestamps in their send format) names the
/// same index and document id as the same row in text.
#[test]
fn a_binary_snapshot_row_routes_like_its_text() {
    let rel = readings(true, ReplicaIdentity::Default);
    let r = reading_rule("telemetry-{column:ts:%Y.%m.%d}", "id_columns = [\"device_id\", \"ts\"]");
    let mut rules = FlatRules::new(std::slice::from_ref(&r));
    // 2026-03-07 23:59:59.5 UTC: 9,562 days after 2000-01-01, then 86,399.5 s.
    let micros: i64 = 9_562 * 86_400_000_000 + 86_399_500_000;
    let device = 1i32.to_be_bytes();
    let ts = micros.to_be_bytes();
    let binary = Tuple::from_datums([Datum::Binary(&device), Datum::Binary(&ts), text("21.5")]);
    let mut out = Vec::new();
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Read, None, Some(binary)), 0, &mut out);
    rules.route(&fixtures::change(Arc::clone(&rel), Op::Read, None, Some(reading("1", "2026-03-07 23:59:59.5+00"))), 0, &mut out);
    let (from_binary, from_text) = (target(&out[0]), target(&out[1]));
    assert_eq!(from_binary.0, "telemetry-2026.03.07");
    assert_eq!(from_binary, from_text);
}
