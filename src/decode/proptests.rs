//! Property tests for the pgoutput parser and the value renderer.
//!
//! The parser is checked against an independent test-only encoder (round trip), against random
//! and mutated bytes (no panics), and against truncation (always an error). The renderer is
//! checked to emit valid JSON or an error for any text, and to round-trip the values whose JSON
//! form is exact.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::pgoutput::{
    parse, Begin, Column, Commit, LogicalMessage, Message, OldTuple, OldTupleKind, Origin, RelationBody, ReplicaIdentity, TypeBody,
};
use super::tuple::{Datum, Tuple};
use super::value::{array_element, write_json_value};
use crate::lsn::Lsn;

/// Default case count; failures are reported (with the shrunk input) but not persisted to a
/// `proptest-regressions/` file, so test runs never write into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Encoder: writes messages the way the server's logicalrep_write_* functions do.

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// The server sends pg_catalog as the empty string.
fn put_namespace(out: &mut Vec<u8>, s: &str) {
    put_str(out, if s == "pg_catalog" { "" } else { s });
}

fn put_tuple(out: &mut Vec<u8>, values: &Tuple) {
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Datum::Null => out.push(b'n'),
            Datum::Unchanged => out.push(b'u'),
            Datum::Text(b) | Datum::Binary(b) => {
                out.push(if matches!(v, Datum::Text(_)) { b't' } else { b'b' });
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

fn put_old(out: &mut Vec<u8>, old: &OldTuple) {
    out.push(match old.kind {
        OldTupleKind::Key => b'K',
        OldTupleKind::Full => b'O',
    });
    put_tuple(out, &old.values);
}

fn encode(m: &Message) -> Vec<u8> {
    let mut o = Vec::new();
    match m {
        Message::Begin(b) => {
            o.push(b'B');
            o.extend_from_slice(&b.final_lsn.0.to_be_bytes());
            o.extend_from_slice(&b.commit_ts.to_be_bytes());
            o.extend_from_slice(&b.xid.to_be_bytes());
        }
        Message::Commit(c) => {
            o.push(b'C');
            o.push(c.flags);
            o.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
            o.extend_from_slice(&c.end_lsn.0.to_be_bytes());
            o.extend_from_slice(&c.commit_ts.to_be_bytes());
        }
        Message::Origin(x) => {
            o.push(b'O');
            o.extend_from_slice(&x.commit_lsn.0.to_be_bytes());
            put_str(&mut o, &x.name);
        }
        Message::Relation(r) => {
            o.push(b'R');
            o.extend_from_slice(&r.oid.to_be_bytes());
            put_namespace(&mut o, &r.namespace);
            put_str(&mut o, &r.name);
            o.push(match r.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            o.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                o.push(u8::from(c.key));
                put_str(&mut o, &c.name);
                o.extend_from_slice(&c.type_oid.to_be_bytes());
                o.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        Message::Type(t) => {
            o.push(b'Y');
            o.extend_from_slice(&t.oid.to_be_bytes());
            put_namespace(&mut o, &t.namespace);
            put_str(&mut o, &t.name);
        }
        Message::Insert { relation, new } => {
            o.push(b'I');
            o.extend_from_slice(&relation.to_be_bytes());
            o.push(b'N');
            put_tuple(&mut o, new);
        }
        Message::Update { relation, old, new } => {
            o.push(b'U');
            o.extend_from_slice(&relation.to_be_bytes());
            if let Some(old) = old {
                put_old(&mut o, old);
            }
            o.push(b'N');
            put_tuple(&mut o, new);
        }
        Message::Delete { relation, old } => {
            o.push(b'D');
            o.extend_from_slice(&relation.to_be_bytes());
            put_old(&mut o, old);
        }
        Message::Truncate { relations, cascade, restart_identity } => {
            o.push(b'T');
            o.extend_from_slice(&(relations.len() as i32).to_be_bytes());
            o.push(u8::from(*cascade) | (u8::from(*restart_identity) << 1));
            for r in relations {
                o.extend_from_slice(&r.to_be_bytes());
            }
        }
        Message::Message(m) => {
            o.push(b'M');
            o.push(u8::from(m.transactional));
            o.extend_from_slice(&m.lsn.0.to_be_bytes());
            put_str(&mut o, &m.prefix);
            o.extend_from_slice(&(m.content.len() as i32).to_be_bytes());
            o.extend_from_slice(&m.content);
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Names: any text without NUL (the wire terminator).
fn name() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

/// A namespace as the decoder reports it: never empty (the wire's "" is pg_catalog).
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just("pg_catalog".to_owned()), "[^\\x00]{1,12}"]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// One value as (kind byte, bytes): 'n', 'u', 't' or 'b'.
fn datum() -> impl Strategy<Value = (u8, Bytes)> {
    // Now and then a long value, so that rows on both sides of the copy limit are drawn.
    prop_oneof![
        3 => Just((b'n', Bytes::new())),
        3 => Just((b'u', Bytes::new())),
        3 => bytes(24).prop_map(|b| (b't', b)),
        3 => bytes(24).prop_map(|b| (b'b', b)),
        1 => bytes(300).prop_map(|b| (b't', b)),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(datum(), 0..8).prop_map(|values| {
        Tuple::from_datums(values.iter().map(|(kind, b)| match kind {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => Datum::Text(b),
            _ => Datum::Binary(b),
        }))
    })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    (prop_oneof![Just(OldTupleKind::Key), Just(OldTupleKind::Full)], tuple()).prop_map(|(kind, values)| OldTuple { kind, values })
}

fn message() -> impl Strategy<Value = Message> {
    let replica_identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(|(key, name, type_oid, type_modifier)| Column {
        key,
        name,
        type_oid,
        type_modifier,
    });
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, ts, xid)| Message::Begin(Begin { final_lsn: Lsn(l), commit_ts: ts, xid })),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>())
            .prop_map(|(flags, c, e, ts)| { Message::Commit(Commit { flags, commit_lsn: Lsn(c), end_lsn: Lsn(e), commit_ts: ts }) }),
        (any::<u64>(), name()).prop_map(|(l, name)| Message::Origin(Origin { commit_lsn: Lsn(l), name })),
        (any::<u32>(), namespace(), name(), replica_identity, proptest::collection::vec(column, 0..6)).prop_map(
            |(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(RelationBody { oid, namespace, name, replica_identity, columns })
            }
        ),
        (any::<u32>(), namespace(), name()).prop_map(|(oid, namespace, name)| Message::Type(TypeBody { oid, namespace, name })),
        (any::<u32>(), tuple()).prop_map(|(relation, new)| Message::Insert { relation, new }),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(|(relation, old, new)| Message::Update { relation, old, new }),
        (any::<u32>(), old_tuple()).prop_map(|(relation, old)| Message::Delete { relation, old }),
        (proptest::collection::vec(any::<u32>(), 0..6), any::<bool>(), any::<bool>())
            .prop_map(|(relations, cascade, restart_identity)| Message::Truncate { relations, cascade, restart_identity }),
        (any::<bool>(), any::<u64>(), name(), bytes(32)).prop_map(|(transactional, l, prefix, content)| {
            Message::Message(LogicalMessage { transactional, lsn: Lsn(l), prefix, content })
        }),
    ]
}

const TAGS: &[u8] = b"BCORYIUDTM";

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&Bytes::from(data));
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(TAGS),
        data in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![tag];
        payload.extend(data);
        let _ = parse(&Bytes::from(payload));
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), at in any::<Index>(), byte in any::<u8>(), extra in any::<Index>()) {
        let mut payload = encode(&m);
        let i = at.index(payload.len());
        payload[i] = byte;
        // Also try a large length-like value straddling the mutated byte.
        let _ = parse(&Bytes::from(payload.clone()));
        let j = extra.index(payload.len());
        for b in payload.iter_mut().skip(j).take(4) {
            *b = 0x7f;
        }
        let _ = parse(&Bytes::from(payload));
    }

    #[test]
    fn round_trip(m in message()) {
        let payload = Bytes::from(encode(&m));
        prop_assert_eq!(parse(&payload).map_err(|e| e.to_string()), Ok(m));
    }

    #[test]
    fn truncations_are_errors(m in message(), cut in any::<Index>()) {
        let payload = encode(&m);
        let cut = cut.index(payload.len());
        prop_assert!(parse(&Bytes::copy_from_slice(&payload[..cut])).is_err());
    }

    #[test]
    fn trailing_bytes_are_errors(m in message(), extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let mut payload = encode(&m);
        payload.extend(extra);
        prop_assert!(parse(&Bytes::from(payload)).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Every OID with its own rule, every built-in array type, and two unknown ones.
fn value_oids() -> Vec<u32> {
    let mut oids = vec![16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184];
    oids.extend([1186, 1266, 1700, 2950, 3802, 142, 869, 3904, 4451, 0, 999_999]);
    oids.extend((0..7000).filter(|&o| array_element(o).is_some()));
    oids
}

/// Well-formed samples to mutate, so the checks reach past the first character.
const SAMPLES: &[&str] = &[
    "t",
    "-9223372036854775808",
    "1.5e-07",
    "-Infinity",
    "123.4500",
    "{\"a\": [1, 2.5, true, null, \"x\\u00e9\\ud83d\\ude00\"]}",
    "\\x0a0bff",
    "0044-03-15 BC",
    "2026-11-22 16:33:20.123456+05:30",
    "2026-11-22 16:33:20 BC",
    "16:33:20-03",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "{{1,2},{3,NULL}}",
    "{\"a,b\",\"c\\\"d\",NULL,\"NULL\"}",
    "{(1,1),(0,0);(2,2),(1,1)}",
    "[0:1]={1,2}",
    "{\"{\\\"k\\\": 1}\",\"\\\\x00\"}",
    "{\"2026-11-22 16:33:20+00\",infinity}",
];

fn value_text() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (proptest::sample::select(SAMPLES), any::<Index>(), 0usize..3, "[-0-9a-fA-Z:.+ {}\",;\\\\\\[\\]=\\x00-\\x1f\u{e9}]{0,3}")
        .prop_map(|(s, at, del, ins)| {
            let mut v = s.as_bytes().to_vec();
            let i = at.index(v.len() + 1);
            let del = del.min(v.len() - i);
            v.splice(i..i + del, ins.into_bytes());
            v
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        "[-0-9a-fA-Z:.+ {}\",;\\\\\\[\\]=]{0,32}".prop_map(String::into_bytes),
        proptest::sample::select(SAMPLES).prop_map(|s| s.as_bytes().to_vec()),
        mutated,
    ]
}

/// `array_out`'s quoting: what the server prints for a one-dimensional text array.
fn pg_text_array(items: &[Option<String>]) -> String {
    let mut s = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match item {
            None => s.push_str("NULL"),
            Some(v) => {
                let quote = v.is_empty()
                    || v.eq_ignore_ascii_case("NULL")
                    || v.chars().any(|c| matches!(c, '"' | '\\' | '{' | '}' | ',' | ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
                if quote {
                    s.push('"');
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            s.push('\\');
                        }
                        s.push(c);
                    }
                    s.push('"');
                } else {
                    s.push_str(v);
                }
            }
        }
    }
    s.push('}');
    s
}

fn render(oid: u32, text: &[u8]) -> Result<Value, String> {
    let mut out = Vec::new();
    write_json_value(&mut out, oid, text).map_err(|e| e.to_string())?;
    serde_json::from_slice(&out).map_err(|e| format!("invalid JSON {:?}: {e}", String::from_utf8_lossy(&out)))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn values_render_valid_json_or_error(text in value_text()) {
        for oid in value_oids() {
            let mut out = b"[".to_vec();
            match write_json_value(&mut out, oid, &text) {
                Ok(()) => {
                    out.push(b']');
                    let parsed = serde_json::from_slice::<Value>(&out);
                    prop_assert!(
                        parsed.as_ref().map_or_else(serde_out_of_range, |_| true),
                        "oid {} text {:?} gave invalid JSON {:?}",
                        oid,
                        String::from_utf8_lossy(&text),
                        String::from_utf8_lossy(&out)
                    );
                }
                Err(_) => prop_assert_eq!(&out, b"["),
            }
        }
    }

    #[test]
    fn integers_round_trip(v in any::<i64>(), w in any::<i32>(), x in any::<i16>(), o in any::<u32>()) {
        prop_assert_eq!(render(20, v.to_string().as_bytes()), Ok(Value::from(v)));
        prop_assert_eq!(render(23, w.to_string().as_bytes()), Ok(Value::from(w)));
        prop_assert_eq!(render(21, x.to_string().as_bytes()), Ok(Value::from(x)));
        prop_assert_eq!(render(26, o.to_string().as_bytes()), Ok(Value::from(o)));
        // Out of range for the narrower types: an error, never a silently wrapped number.
        prop_assert_eq!(render(23, v.to_string().as_bytes()).is_ok(), i32::try_from(v).is_ok());
        prop_assert_eq!(render(21, w.to_string().as_bytes()).is_ok(), i16::try_from(w).is_ok());
    }

    #[test]
    fn floats_are_copied_exactly(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
        let text = format!("{v:?}");
        let mut out = Vec::new();
        write_json_value(&mut out, 701, text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out, text.into_bytes());
    }

    #[test]
    fn text_round_trips(s in any::<String>()) {
        for oid in [25, 1043, 1042, 19, 424_242] {
            prop_assert_eq!(render(oid, s.as_bytes()), Ok(Value::String(s.clone())));
        }
    }

    #[test]
    fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(any::<String>()), 0..8)) {
        let expect = Value::Array(items.iter().map(|i| i.clone().map_or(Value::Null, Value::String)).collect());
        prop_assert_eq!(render(1009, pg_text_array(&items).as_bytes()), Ok(expect));
    }

    #[test]
    fn two_dimensional_text_arrays_round_trip(rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of("[^\\x00]{0,6}"), 2), 1..4)) {
        let text = format!("{{{}}}", rows.iter().map(|r| pg_text_array(r)).collect::<Vec<_>>().join(","));
        let expect = Value::Array(
            rows.iter().map(|r| Value::Array(r.iter().map(|i| i.clone().map_or(Value::Null, Value::String)).collect())).collect(),
        );
        prop_assert_eq!(render(1015, text.as_bytes()), Ok(expect));
    }

    #[test]
    fn bytea_round_trips(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        use base64::Engine as _;
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let Ok(Value::String(b64)) = render(17, format!("\\x{hex}").as_bytes()) else {
            return Err(TestCaseError::fail("bytea did not render to a string"));
        };
        prop_assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64).ok(), Some(data));
    }
}

// ---------------------------------------------------------------------------------------------
// Differential checks: the hand-written validators against independent implementations.

const JSON_SAMPLES: &[&str] = &[
    r#"{"a": 1, "b": [true, false, null], "c": {"d": "e\"\\\/\b\f\n\r\t"}}"#,
    r#"["\ud83d\ude00", "\u00e9", -0.5e+10, 0, 1E-2, ""]"#,
    "{\n\t\"a\" :\r\n [ 1 , 2 ]\n}\n",
    r#"{"k":{"k":{"k":[1,[2,[3]]]}}}"#,
    "[1]",
    "[[],{}]",
    r#"{"a":{}}"#,
    r#""\ud83d\ude00""#,
    r#""\udbff\udfff\u0041""#,
];

/// Text near the JSON grammar: its alphabet, and samples with a few random edits.
fn json_text() -> impl Strategy<Value = Vec<u8>> {
    const CHARS: &str = "[\\[\\]{}:,\" \\\\/u0-9a-fA-FtrlsnE.+\\-\\x00-\\x1f\u{e9}]";
    let regex = |n: &str| proptest::string::string_regex(&format!("{CHARS}{{0,{n}}}")).expect("valid regex");
    let edit = (any::<Index>(), 0usize..3, regex("2"));
    let edited = (proptest::sample::select(JSON_SAMPLES), proptest::collection::vec(edit, 1..4)).prop_map(|(s, edits)| {
        let mut v = s.as_bytes().to_vec();
        for (at, del, ins) in edits {
            let i = at.index(v.len() + 1);
            let del = del.min(v.len() - i);
            v.splice(i..i + del, ins.into_bytes());
        }
        v
    });
    prop_oneof![regex("24").prop_map(String::into_bytes), edited]
}

/// serde_json rejects numbers beyond `f64` range, which RFC 8259 allows (and Postgres `json`
/// keeps); that is the one disagreement tolerated.
fn serde_out_of_range(e: &serde_json::Error) -> bool {
    e.to_string().contains("number out of range")
}

proptest! {
    // Cheap cases, and the interesting inputs are sparse: run more of them.
    #![proptest_config(config(2048))]

    #[test]
    fn json_agrees_with_serde_json(text in json_text()) {
        for oid in [114, 3802] {
            let mut out = Vec::new();
            let ours = write_json_value(&mut out, oid, &text);
            match serde_json::from_slice::<Value>(&text) {
                Ok(v) => {
                    prop_assert!(ours.is_ok(), "rejected valid JSON {:?}: {:?}", String::from_utf8_lossy(&text), ours);
                    prop_assert_eq!(serde_json::from_slice::<Value>(&out).ok(), Some(v));
                    prop_assert!(!out.iter().any(|b| matches!(b, b'\n' | b'\r')), "output is not one line");
                }
                Err(e) if serde_out_of_range(&e) => {}
                Err(e) => prop_assert!(
                    ours.is_err(),
                    "accepted invalid JSON {:?} ({}) as {:?}",
                    String::from_utf8_lossy(&text),
                    e,
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }

    #[test]
    fn integers_agree_with_std(text in prop_oneof!["[-+]?0?[0-9]{0,20}", "[-+0-9]{0,6}"]) {
        let canonical = {
            let digits = text.strip_prefix('-').unwrap_or(&text);
            let leading_zero = digits.len() > 1 && digits.starts_with('0');
            !text.starts_with('+') && !leading_zero
        };
        let cases: [(u32, bool); 4] = [
            (21, text.parse::<i16>().is_ok()),
            (23, text.parse::<i32>().is_ok()),
            (20, text.parse::<i64>().is_ok()),
            (26, text.parse::<u32>().is_ok() && !text.starts_with('-')),
        ];
        for (oid, parses) in cases {
            let ours = render(oid, text.as_bytes());
            prop_assert_eq!(ours.is_ok(), parses && canonical, "oid {} text {:?}: {:?}", oid, text, ours);
        }
    }

    #[test]
    fn floats_agree_with_serde_json(text in prop_oneof![
        "-?[0-9]{0,3}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{0,3})?",
        "[-+0-9.eE]{0,8}",
        proptest::sample::select(&["NaN", "Infinity", "-Infinity", "nan", "inf", "1e999"][..]).prop_map(str::to_owned),
    ]) {
        let expect = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v.is_number(),
            // serde_json stops at the overflow, before checking the rest: no verdict.
            Err(e) if serde_out_of_range(&e) => return Ok(()),
            Err(_) => matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity"),
        };
        for oid in [700, 701] {
            let ours = write_json_value(&mut Vec::new(), oid, text.as_bytes());
            prop_assert_eq!(ours.is_ok(), expect, "oid {} text {:?}", oid, text);
        }
    }
}
