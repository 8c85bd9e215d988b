//! Unit tests of the pgoutput parser: payloads built field by field, as the server sends them.

use super::*;
use crate::decode::fixtures::text;
use crate::decode::{Datum, DecodeError, Tuple};

/// Builds payloads field by field, as the server's `pq_send*` calls do.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn new(tag: u8) -> Self {
        W(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn text(self, v: &[u8]) -> Self {
        self.u8(b't').i32(v.len() as i32).raw(v)
    }
    fn done(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn ok(w: W) -> Message {
    let b = w.done();
    parse(&b).unwrap_or_else(|e| panic!("{e} for {b:?}"))
}

fn fails(w: W) -> DecodeError {
    let b = w.done();
    match parse(&b) {
        Ok(m) => panic!("{b:?} parsed as {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn begin() {
    let m = ok(W::new(b'B').i64(0x16_B374_D848).i64(-5).i32(-1));
    assert_eq!(m, Message::Begin(Begin { final_lsn: Lsn(0x16_B374_D848), commit_ts: -5, xid: u32::MAX }));
}

#[test]
fn commit() {
    let m = ok(W::new(b'C').u8(0).i64(10).i64(20).i64(30));
    assert_eq!(m, Message::Commit(Commit { flags: 0, commit_lsn: Lsn(10), end_lsn: Lsn(20), commit_ts: 30 }));
    // LSNs are unsigned on the server.
    let m = ok(W::new(b'C').u8(0).i64(-1).i64(-1).i64(0));
    assert!(matches!(m, Message::Commit(Commit { end_lsn: Lsn(u64::MAX), .. })));
}

#[test]
fn origin() {
    let m = ok(W::new(b'O').i64(7).s("node_a"));
    assert_eq!(m, Message::Origin(Origin { commit_lsn: Lsn(7), name: "node_a".into() }));
}

#[test]
fn relation() {
    let w = W::new(b'R')
        .i32(16384)
        .s("public")
        .s("bench_rows")
        .u8(b'd')
        .i16(3)
        .u8(1)
        .s("id")
        .i32(20)
        .i32(-1)
        .u8(0)
        .s("b")
        .i32(1043)
        .i32(36)
        .u8(0)
        .s("ünï")
        .i32(25)
        .i32(-1);
    let expect = RelationBody {
        oid: 16384,
        namespace: "public".into(),
        name: "bench_rows".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column { key: true, name: "id".into(), type_oid: 20, type_modifier: -1 },
            Column { key: false, name: "b".into(), type_oid: 1043, type_modifier: 36 },
            Column { key: false, name: "ünï".into(), type_oid: 25, type_modifier: -1 },
        ],
    };
    assert_eq!(ok(w), Message::Relation(expect));
    for (byte, ri) in
        [(b'd', ReplicaIdentity::Default), (b'n', ReplicaIdentity::Nothing), (b'f', ReplicaIdentity::Full), (b'i', ReplicaIdentity::Index)]
    {
        let m = ok(W::new(b'R').i32(1).s("").s("pg_class").u8(byte).i16(0));
        let Message::Relation(r) = m else { panic!() };
        assert_eq!(r.replica_identity, ri);
        assert_eq!(r.namespace, "pg_catalog", "empty namespace means pg_catalog");
        assert!(r.columns.is_empty());
    }
    let e = fails(W::new(b'R').i32(1).s("s").s("t").u8(b'x').i16(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'R', .. }), "{e}");
    let e = fails(W::new(b'R').i32(1).s("s").s("t").u8(b'd').i16(-1));
    assert!(matches!(e, DecodeError::Malformed { tag: 'R', .. }), "{e}");
    let e = fails(W::new(b'R').i32(1).s("s").s("t").u8(b'd').i16(1).u8(2).s("c").i32(23).i32(-1));
    assert!(matches!(e, DecodeError::Malformed { tag: 'R', .. }), "{e}");
    // A huge column count with no columns behind it is a truncation, not an allocation.
    let e = fails(W::new(b'R').i32(1).s("s").s("t").u8(b'd').i16(i16::MAX));
    assert!(matches!(e, DecodeError::Truncated { tag: 'R', .. }), "{e}");
    let e = fails(W::new(b'R').i32(1).s("s").raw(b"t\xff\0").u8(b'd').i16(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'R', .. }), "{e}");
    let e = fails(W::new(b'R').i32(1).s("s").raw(b"no terminator"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'R', needed: 1, .. }), "{e}");
}

#[test]
fn type_message() {
    let m = ok(W::new(b'Y').i32(70000).s("public").s("mood"));
    assert_eq!(m, Message::Type(TypeBody { oid: 70000, namespace: "public".into(), name: "mood".into() }));
    let m = ok(W::new(b'Y').i32(16).s("").s("bool"));
    assert_eq!(m, Message::Type(TypeBody { oid: 16, namespace: "pg_catalog".into(), name: "bool".into() }));
}

#[test]
fn insert_with_every_column_kind() {
    let w = W::new(b'I').i32(16384).u8(b'N').i16(5).text(b"42").u8(b'n').u8(b'u').u8(b'b').i32(2).raw(&[0, 1]).text(b"");
    let expect = Message::Insert {
        relation: 16384,
        new: Tuple::from_datums([text("42"), Datum::Null, Datum::Unchanged, Datum::Binary(&[0, 1]), text("")]),
    };
    assert_eq!(ok(w), expect);
    assert_eq!(ok(W::new(b'I').i32(1).u8(b'N').i16(0)), Message::Insert { relation: 1, new: Tuple::from_datums([]) });
}

#[test]
fn large_tuples_share_the_payload_and_small_ones_are_copied() {
    let long = vec![b'x'; 300];
    let b = W::new(b'I').i32(1).u8(b'N').i16(2).text(b"hello").text(&long).done();
    let Ok(Message::Insert { new, .. }) = parse(&b) else { panic!() };
    let Some(Datum::Text(v)) = new.get(1) else { panic!() };
    assert_eq!(v.as_ptr(), b[b.len() - 300..].as_ptr(), "a large tuple is not copied");
    assert_eq!(new.get(0), Some(Datum::Text(b"hello")));
    let b = W::new(b'I').i32(1).u8(b'N').i16(2).text(b"hello").u8(b'n').done();
    let Ok(Message::Insert { new, .. }) = parse(&b) else { panic!() };
    let Some(Datum::Text(v)) = new.get(0) else { panic!() };
    assert_eq!(v, b"hello");
    assert!(!b.as_ptr_range().contains(&v.as_ptr()), "a small tuple holds its own copy");
    assert_eq!(new.get(1), Some(Datum::Null));
}

#[test]
fn rows_at_the_copy_limit_read_the_same_copied_or_shared() {
    // Column 1 is 'n', 'u', 't' of `n` bytes and the last column starts at offset 255 or
    // later: every kind offset a byte can hold, and the first row that no longer fits.
    for n in 240..=252 {
        let value = vec![b'v'; n];
        let b = W::new(b'I').i32(1).u8(b'N').i16(4).u8(b'n').text(&value).u8(b'u').text(b"end").done();
        let Ok(Message::Insert { new, .. }) = parse(&b) else { panic!("{n}") };
        let expected = [Datum::Null, Datum::Text(&value), Datum::Unchanged, Datum::Text(b"end")];
        assert_eq!(new.len(), 4);
        assert!(new.iter().eq(expected), "{n}");
        assert!((0..4).map(|i| new.get(i).unwrap()).eq(expected), "{n}");
        assert_eq!(new.get(4), None);
        assert_eq!(new, Tuple::from_datums(expected));
        let Some(Datum::Text(v)) = new.get(1) else { panic!() };
        // 1 + (5 + n) + 1 + (5 + 3) row bytes.
        assert_eq!(b.as_ptr_range().contains(&v.as_ptr()), 15 + n > 256, "{n}");
    }
}

#[test]
fn update_variants() {
    let new = W::new(b'U').i32(9).u8(b'N').i16(1).text(b"x");
    assert_eq!(ok(new), Message::Update { relation: 9, old: None, new: Tuple::from_datums([text("x")]) });
    let key = W::new(b'U').i32(9).u8(b'K').i16(2).text(b"1").u8(b'n').u8(b'N').i16(2).text(b"1").u8(b'u');
    assert_eq!(
        ok(key),
        Message::Update {
            relation: 9,
            old: Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), Datum::Null]) }),
            new: Tuple::from_datums([text("1"), Datum::Unchanged]),
        }
    );
    let full = W::new(b'U').i32(9).u8(b'O').i16(1).text(b"a").u8(b'N').i16(1).text(b"b");
    assert_eq!(
        ok(full),
        Message::Update {
            relation: 9,
            old: Some(OldTuple { kind: OldTupleKind::Full, values: Tuple::from_datums([text("a")]) }),
            new: Tuple::from_datums([text("b")])
        }
    );
    let e = fails(W::new(b'U').i32(9).u8(b'K').i16(1).text(b"a").u8(b'K').i16(1).text(b"b"));
    assert!(matches!(e, DecodeError::Malformed { tag: 'U', .. }), "{e}");
    let e = fails(W::new(b'U').i32(9).u8(b'X').i16(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'U', .. }), "{e}");
    let e = fails(W::new(b'U').i32(9).u8(b'K').i16(1).text(b"a"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'U', .. }), "{e}");
}

#[test]
fn delete_variants() {
    let key = W::new(b'D').i32(3).u8(b'K').i16(1).text(b"7");
    assert_eq!(
        ok(key),
        Message::Delete { relation: 3, old: OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("7")]) } }
    );
    let full = W::new(b'D').i32(3).u8(b'O').i16(2).text(b"7").u8(b'n');
    assert_eq!(
        ok(full),
        Message::Delete { relation: 3, old: OldTuple { kind: OldTupleKind::Full, values: Tuple::from_datums([text("7"), Datum::Null]) } }
    );
    let e = fails(W::new(b'D').i32(3).u8(b'N').i16(1).text(b"7"));
    assert!(matches!(e, DecodeError::Malformed { tag: 'D', .. }), "{e}");
}

#[test]
fn truncate() {
    for (opts, cascade, restart_identity) in [(0, false, false), (1, true, false), (2, false, true), (3, true, true)] {
        let m = ok(W::new(b'T').i32(2).u8(opts).i32(100).i32(-2));
        assert_eq!(m, Message::Truncate { relations: vec![100, u32::MAX - 1], cascade, restart_identity });
    }
    let e = fails(W::new(b'T').i32(1).u8(4).i32(100));
    assert!(matches!(e, DecodeError::Malformed { tag: 'T', .. }), "{e}");
    let e = fails(W::new(b'T').i32(-1).u8(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'T', .. }), "{e}");
    // An announced count far beyond the payload fails before allocating.
    let e = fails(W::new(b'T').i32(i32::MAX).u8(0).i32(1));
    assert!(matches!(e, DecodeError::Truncated { tag: 'T', offset: 6, needed } if needed == i32::MAX as usize * 4 - 4), "{e}");
}

#[test]
fn logical_message() {
    let m = ok(W::new(b'M').u8(1).i64(99).s("walcast").i32(3).raw(b"a\0b"));
    assert_eq!(
        m,
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(99),
            prefix: "walcast".into(),
            content: Bytes::from_static(b"a\0b"),
        })
    );
    let m = ok(W::new(b'M').u8(0).i64(1).s("").i32(0));
    assert!(matches!(m, Message::Message(LogicalMessage { transactional: false, ref content, .. }) if content.is_empty()));
    let e = fails(W::new(b'M').u8(2).i64(1).s("p").i32(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'M', .. }), "{e}");
    let e = fails(W::new(b'M').u8(0).i64(1).s("p").i32(-1));
    assert!(matches!(e, DecodeError::Malformed { tag: 'M', .. }), "{e}");
    let e = fails(W::new(b'M').u8(0).i64(1).s("p").i32(10).raw(b"short"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'M', needed: 5, .. }), "{e}");
    // Each field cut short: flags, LSN, the prefix's terminator, the content length.
    let e = fails(W::new(b'M'));
    assert!(matches!(e, DecodeError::Truncated { tag: 'M', offset: 1, needed: 1 }), "{e}");
    let e = fails(W::new(b'M').u8(1).raw(&[0, 0, 0]));
    assert!(matches!(e, DecodeError::Truncated { tag: 'M', offset: 2, needed: 5 }), "{e}");
    let e = fails(W::new(b'M').u8(1).i64(1).raw(b"no-terminator"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'M', offset: 10, needed: 1 }), "{e}");
    let e = fails(W::new(b'M').u8(1).i64(1).s("p").raw(&[0, 0]));
    assert!(matches!(e, DecodeError::Truncated { tag: 'M', offset: 12, needed: 2 }), "{e}");
    let e = fails(W::new(b'M').u8(1).i64(1).raw(b"\xff\0").i32(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'M', .. }), "a prefix that is not UTF-8: {e}");
}

#[test]
fn tuple_errors() {
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(1).u8(b'x'));
    assert!(matches!(e, DecodeError::Malformed { tag: 'I', .. }), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(-3));
    assert!(matches!(e, DecodeError::Malformed { tag: 'I', .. }), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(-1));
    assert!(matches!(e, DecodeError::Malformed { tag: 'I', .. }), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(i32::MAX).raw(b"abc"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'I', offset: 13, needed } if needed == i32::MAX as usize - 3), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(3).text(b"a"));
    assert!(matches!(e, DecodeError::Truncated { tag: 'I', needed: 1, .. }), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'K').i16(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'I', .. }), "{e}");
}

#[test]
fn framing_errors() {
    assert!(matches!(parse(&Bytes::new()), Err(DecodeError::Truncated { offset: 0, needed: 1, .. })));
    for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', b'x', 0, 0xff] {
        assert!(matches!(parse(&Bytes::from(vec![tag, 0, 0])), Err(DecodeError::UnknownTag(t)) if t == tag));
    }
    let e = fails(W::new(b'B').i64(1).i64(2));
    assert!(matches!(e, DecodeError::Truncated { tag: 'B', offset: 17, needed: 4 }), "{e}");
    let e = fails(W::new(b'B').i64(1).i64(2).i32(3).u8(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'B', .. }), "{e}");
    let e = fails(W::new(b'I').i32(1).u8(b'N').i16(0).u8(0));
    assert!(matches!(e, DecodeError::Malformed { tag: 'I', .. }), "{e}");
    assert!(!e.is_retryable());
}
