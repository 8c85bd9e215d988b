use super::*;
use crate::decode::fixtures::{self, text};
use crate::decode::ReplicaIdentity;

fn rel() -> Arc<Relation> {
    fixtures::relation("public", "t\"q", ReplicaIdentity::Default, &[("id", true, 23), ("body", false, 25), ("n", false, 23)])
}

fn render(c: &Change) -> serde_json::Value {
    let mut out = Vec::new();
    c.write_json(&mut out).expect("renders");
    serde_json::from_slice(&out).expect("valid json")
}

fn change(op: Op, old: Option<OldTuple>, new: Option<Tuple>) -> Change {
    Change { seq: 3, ..fixtures::change(rel(), op, old, new) }
}

#[test]
fn update_with_unchanged_toast_lists_it_and_omits_it() {
    let c = change(Op::Update, None, Some(Tuple::from_datums([text("1"), Datum::Unchanged, Datum::Null])));
    let v = render(&c);
    assert_eq!(v["lsn"], "0/10");
    assert_eq!(v["commit_lsn"], "1/20");
    assert_eq!(v["commit_ts"], "2000-01-01T00:00:00.000000Z");
    assert_eq!(v["table"], "t\"q");
    assert_eq!(v["op"], "update");
    assert_eq!(v["key"], serde_json::json!({"id": 1}));
    assert_eq!(v["after"], serde_json::json!({"id": 1, "n": null}));
    assert_eq!(v["unchanged"], serde_json::json!(["body"]));
    assert!(v.get("truncate").is_none());
}

#[test]
fn full_old_row_completes_unchanged_toast_in_key_and_after() {
    // REPLICA IDENTITY FULL without a primary key: every column is key.
    let rel = fixtures::relation("public", "t", ReplicaIdentity::Full, &[("big", true, 25), ("n", true, 23)]);
    let old = OldTuple { kind: OldTupleKind::Full, values: Tuple::from_datums([text("long"), text("1")]) };
    let mut c = fixtures::change(rel, Op::Update, Some(old), Some(Tuple::from_datums([Datum::Unchanged, text("2")])));
    c.fill_unchanged_from_old();
    let v = render(&c);
    assert_eq!(v["key"], serde_json::json!({"big": "long", "n": 2}));
    assert_eq!(v["after"], serde_json::json!({"big": "long", "n": 2}));
    assert_eq!(v["unchanged"], serde_json::json!([]));
}

#[test]
fn key_old_tuple_does_not_fill_unchanged() {
    let old = OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), Datum::Null, Datum::Null]) };
    let mut c = change(Op::Update, Some(old), Some(Tuple::from_datums([text("1"), Datum::Unchanged, Datum::Null])));
    c.fill_unchanged_from_old();
    assert_eq!(render(&c)["unchanged"], serde_json::json!(["body"]));
}

#[test]
fn delete_takes_key_from_old_key_tuple() {
    let old = OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("5"), Datum::Null, Datum::Null]) };
    let v = render(&change(Op::Delete, Some(old), None));
    assert_eq!(v["key"], serde_json::json!({"id": 5}));
    assert_eq!(v["before"], serde_json::json!({"id": 5}));
    assert_eq!(v["after"], serde_json::Value::Null);
}

#[test]
fn column_count_mismatch_is_an_error() {
    let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1")])));
    assert!(matches!(c.write_json(&mut Vec::new()), Err(DecodeError::ColumnCount { .. })));
}

#[test]
fn change_id_is_position_for_streamed_changes_and_key_for_snapshot_rows() {
    let c = change(Op::Insert, None, Some(Tuple::from_datums([text("1"), text("x"), Datum::Null])));
    let v = render(&c);
    assert_eq!(v["change_id"], "1/20:3");
    // write_json copies the text; the Kafka envelope calls write_change_id: the same id.
    let mut id = Vec::new();
    c.write_change_id(&mut id).expect("renders");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&id).expect("json"), v["change_id"]);
    // Snapshot rows: the point, the table and the key; not the position (which a resumed load
    // does not reproduce) nor the row's other values (which it may read newer).
    let read = |key: &str, body: &str, seq: u64| Change {
        lsn: Lsn(0x16B_3748),
        commit_lsn: Lsn(0x16B_3748),
        seq,
        ..fixtures::change(rel(), Op::Read, None, Some(Tuple::from_datums([text(key), text(body), Datum::Null])))
    };
    let a = render(&read("5", "old", 0));
    assert_eq!(a["change_id"], "0/16B3748:r16384:{\"id\":5}");
    assert_eq!(render(&read("5", "new", 7))["change_id"], a["change_id"]);
    assert_ne!(render(&read("6", "old", 0))["change_id"], a["change_id"]);
    // Without a primary key: the load (its start time) and the position in it.
    let nokey = fixtures::relation("public", "n", ReplicaIdentity::Full, &[("id", false, 23)]);
    let keyless = |commit_ts: i64, seq: u64| Change {
        commit_lsn: Lsn(0x16B_3748),
        commit_ts,
        seq,
        ..fixtures::change(Arc::clone(&nokey), Op::Read, None, Some(Tuple::from_datums([text("1")])))
    };
    assert_eq!(render(&keyless(42, 3))["change_id"], "0/16B3748:r16384:42:3");
    assert_ne!(render(&keyless(43, 3))["change_id"], render(&keyless(42, 3))["change_id"]);
}

#[test]
fn a_snapshot_rows_change_id_in_its_line_is_write_change_id_byte_for_byte() {
    // A text key that needs escaping twice: in the key object, then inside the id string.
    let rel = fixtures::relation("public", "t", ReplicaIdentity::Default, &[("k", true, 25), ("n", true, 23), ("v", false, 25)]);
    for key in ["plain", "q\"uote", "back\\slash", "tab\tnl\n\u{1}", "ünï\u{2028}", ""] {
        let c = Change {
            commit_lsn: Lsn(0xA_0000_16B0),
            ..fixtures::change(Arc::clone(&rel), Op::Read, None, Some(Tuple::from_datums([text(key), text("7"), text("x")])))
        };
        let mut line = Vec::new();
        c.write_json(&mut line).expect("renders");
        let mut id = Vec::new();
        c.write_change_id(&mut id).expect("renders");
        let tail = [b",\"change_id\":".as_slice(), &id, b"}"].concat();
        assert!(line.ends_with(&tail), "{key:?}: {} does not end with {}", String::from_utf8_lossy(&line), String::from_utf8_lossy(&tail));
    }
}

#[test]
fn timestamps_render_in_utc() {
    let mut out = Vec::new();
    // 2026-11-22 16:33:20.123456 UTC
    write_pg_timestamp(&mut out, 848_680_400_123_456);
    assert_eq!(String::from_utf8(out).expect("ascii"), "2026-11-22T16:33:20.123456Z");
    let mut out = Vec::new();
    write_pg_timestamp(&mut out, -1);
    assert_eq!(String::from_utf8(out).expect("ascii"), "1999-12-31T23:59:59.999999Z");
}

/// The old `core::fmt` rendering of a commit time, the reference of the fast one.
fn fmt_timestamp(micros_since_2000: i64) -> String {
    let secs = micros_since_2000.div_euclid(1_000_000);
    let micros = micros_since_2000.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400) + 10_957);
    let sod = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

#[test]
fn fast_writers_match_core_fmt_and_serde() {
    let mut rng = fastrand::Rng::with_seed(12);
    let mut lsns = vec![0, 1, 0xF, 0x10, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX];
    let mut stamps = vec![0, -1, 1, i64::MAX, i64::MIN, -63_000_000_000_000_000, 300_000_000_000_000_000];
    for _ in 0..2_000 {
        lsns.push(rng.u64(..) >> rng.u32(0..64));
        stamps.push(rng.i64(..) >> rng.u32(0..64));
    }
    for lsn in lsns {
        let mut out = Vec::new();
        write_lsn(&mut out, Lsn(lsn));
        assert_eq!(String::from_utf8(out).expect("ascii"), Lsn(lsn).to_string());
    }
    for ts in stamps {
        let mut out = Vec::new();
        write_pg_timestamp(&mut out, ts);
        assert_eq!(String::from_utf8(out).expect("ascii"), fmt_timestamp(ts), "{ts}");
    }
    for s in ["", "plain", "t\"q", "back\\slash", "tab\there", "\u{1}\u{1f}", "\u{7f}ünï ✓", "new\nline"] {
        let mut out = Vec::new();
        write_json_str(&mut out, s);
        assert_eq!(String::from_utf8(out).expect("utf-8"), serde_json::to_string(s).expect("json"));
    }
}

#[test]
fn transaction_text_follows_each_change_across_interleaved_transactions() {
    let row = || Some(Tuple::from_datums([text("1"), text("x"), Datum::Null]));
    let tx = |commit_lsn: u64, xid: u32, commit_ts: i64, seq: u64| Change {
        commit_lsn: Lsn(commit_lsn),
        xid,
        commit_ts,
        seq,
        ..fixtures::change(rel(), Op::Insert, None, row())
    };
    // The same commit LSN with another xid or time (snapshot loads share their point).
    let changes = [tx(0x20, 7, 0, 0), tx(0x20, 7, 0, 1), tx(0x1_0000_0030, 8, 1_000_001, 0), tx(0x20, 7, 0, 2), tx(0x20, 9, 5, 0)];
    let mut out = Vec::new();
    for c in &changes {
        out.clear();
        c.write_json(&mut out).expect("renders");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["commit_lsn"], c.commit_lsn.to_string());
        assert_eq!(v["xid"], c.xid);
        assert_eq!(v["commit_ts"], fmt_timestamp(c.commit_ts));
        assert_eq!(v["seq"], c.seq);
        assert_eq!(v["change_id"], format!("{}:{}", c.commit_lsn, c.seq));
    }
}
