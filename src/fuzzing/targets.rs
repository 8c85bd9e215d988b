//! The properties the fuzz targets check, one function per target (`fuzz/fuzz_targets/NAME.rs`
//! calls `NAME`): each panics when walcast mishandles the input. The same functions replay the
//! committed corpus in `cargo test` (`fuzzing::tests`), so CI checks every seed and every past
//! crash without building libFuzzer.

use std::path::Path;

use bytes::Bytes;

use crate::config::Config;
use crate::decode::{parse, to_json_value, write_json_value, Change, Datum, Message, Op};
use crate::sink::kafka::envelope::{split_key_change, write_key, write_value, Event, SourceStatic, TxBlock};

/// A target: its name and its property.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, as `fuzz/Cargo.toml` names its binaries.
pub const TARGETS: &[Target] = &[
    ("pgoutput_parse", pgoutput_parse),
    ("stream_decode", stream_decode),
    ("value_json", value_json),
    ("config_toml", config_toml),
    ("es_bulk_answer", es_bulk_answer),
    ("es_mget_answer", es_mget_answer),
    ("kafka_envelope", kafka_envelope),
];

/// Split a fuzz input into pgoutput payloads: each is a 2-byte big-endian length and that many
/// bytes (the last one takes what is left when its length runs past the end). The seed corpus
/// is written in this framing (`fuzz/seeds.py`).
pub fn frames(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let take = len.min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..take]));
        rest = &rest[take..];
    }
    out
}

/// Panic unless `bytes` is one JSON value that serde_json reads (what a consumer of walcast's
/// output does with it). With `big_numbers`, a number past a double's range is let through
/// (`None`) when the rest is valid: json/jsonb values may hold one (`1e400` is valid in
/// Postgres) and walcast embeds them as they are. Nesting is not limited: Postgres stores
/// json/jsonb deeper than serde_json's default 128 levels, and walcast embeds them as they are.
/// Unpaired surrogate escapes are refused: Postgres refuses them in json and jsonb, and so does
/// walcast's json check.
pub fn check_json(what: &str, bytes: &[u8], big_numbers: bool) -> Option<serde_json::Value> {
    check(what, bytes, bytes, big_numbers)
}

/// [`check_json`] for a document Elasticsearch stored, copied as it was sent: numbers past a
/// double's range and unpaired surrogate escapes (`"\udbbb"`) are let through. The latter are in
/// RFC 8259's grammar (section 8.2: any four hex digits) and Elasticsearch keeps them, but
/// serde_json refuses them, naming no surrogate when a letter follows ("unexpected end of hex
/// escape"); so every surrogate escape inside a string is read as a space's (`\u0020`) and the
/// rest checked as usual. The value returned is of that reading.
pub fn check_stored_json(what: &str, bytes: &[u8]) -> Option<serde_json::Value> {
    check(what, &without_surrogate_escapes(bytes, true), bytes, true)
}

/// Check `bytes`, showing `shown` (the output as written) in the panic.
fn check(what: &str, bytes: &[u8], shown: &[u8], big_numbers: bool) -> Option<serde_json::Value> {
    fn read<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de.disable_recursion_limit();
        let value = T::deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
    let refused = |e: serde_json::Error| -> ! { panic!("{what} is not valid JSON ({e}): {}", String::from_utf8_lossy(shown)) };
    match read::<serde_json::Value>(bytes) {
        Ok(v) => Some(v),
        // serde's IgnoredAny checks the grammar without converting numbers.
        Err(e) if big_numbers && e.to_string().starts_with("number out of range") => match read::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => None,
            Err(e) => refused(e),
        },
        Err(e) => refused(e),
    }
}

/// `bytes` with the four hex digits of every surrogate escape inside a JSON string value (and
/// with `names`, a member name) (`\uD800` to `\uDFFF`) replaced by a space's (`0020`). Escapes
/// are read as JSON reads them (`\\udbbb` is a backslash and text); anything else, broken
/// escapes included, stays as it is.
fn without_surrogate_escapes(bytes: &[u8], names: bool) -> std::borrow::Cow<'_, [u8]> {
    let mut out = std::borrow::Cow::Borrowed(bytes);
    let mut escapes = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' if in_string => {
                in_string = false;
                // A name is followed by ':'.
                let next = bytes[i + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if names || next != Some(&b':') {
                    for &at in &escapes {
                        out.to_mut()[at..at + 4].copy_from_slice(b"0020");
                    }
                }
            }
            b'"' => {
                in_string = true;
                escapes.clear();
            }
            b'\\' if in_string => {
                let hex = bytes.get(i + 2..i + 6).filter(|h| bytes[i + 1] == b'u' && h.iter().all(u8::is_ascii_hexdigit));
                let unit = hex.and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u16::from_str_radix(h, 16).ok());
                if unit.is_some_and(|u| (0xd800..=0xdfff).contains(&u)) {
                    escapes.push(i + 2);
                }
                // The escaped byte is not a quote or a backslash of its own.
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// One pgoutput message: `decode::parse` returns a message or a `DecodeError`, never panics, and
/// reads no further than the payload.
pub fn pgoutput_parse(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let Ok(message) = parse(&payload) else { return };
    // Every value slice lies inside the payload: the decoder is zero-copy.
    let inside = |d: Datum<'_>| match d {
        Datum::Text(b) | Datum::Binary(b) => b.len() <= data.len(),
        Datum::Null | Datum::Unchanged => true,
    };
    match &message {
        Message::Insert { new, .. } => assert!(new.iter().all(inside)),
        Message::Update { old, new, .. } => {
            assert!(new.iter().all(inside));
            assert!(old.iter().flat_map(|o| &o.values).all(inside));
        }
        Message::Delete { old, .. } => assert!(old.values.iter().all(inside)),
        _ => {}
    }
}

/// A sequence of pgoutput messages (framed, see `frames`) through the relation cache as the
/// stream decodes them; every change renders to a JSON line serde_json reads, or to a typed
/// error (a value invalid for its type, a tuple of another width than its relation). Numbers
/// past a double's range are let through (json/jsonb values may hold them; floats are checked
/// strictly by `value_json`).
pub fn stream_decode(data: &[u8]) {
    for change in super::decode_stream(frames(data)) {
        let mut line = b"prefix".to_vec();
        if change.write_json(&mut line).is_ok() {
            check_json("a change line", &line[6..], true);
        }
        // The same row as a snapshot read: its change_id is built from the key.
        let read = Change { op: Op::Read, ..change.clone() };
        let mut id = Vec::new();
        if read.write_change_id(&mut id).is_ok() {
            assert!(check_json("a change_id", &id, true).is_none_or(|v| v.is_string()));
        }
        let mut line = Vec::new();
        if read.write_json(&mut line).is_ok() {
            check_json("a read line", &line, true);
        }
    }
}

/// Scalars with their own rule, then types rendered as strings (text, name, interval, inet,
/// money, point, box, ...), then every built-in array type.
const OIDS: &[u32] = &[
    16, 17, 20, 21, 23, 26, 114, 700, 701, 1082, 1083, 1114, 1184, 1266, 1700, 2950, 3802, // own rules
    18, 19, 25, 1043, 1042, 1186, 869, 650, 790, 600, 603, 3904, 142, 1560, 3614, 0, 16_384, // strings
    1000, 1001, 1002, 1003, 1016, 1005, 1006, 1007, 1008, 1009, 1028, 1010, 1011, 1012, 1013, 210, 270, 272, 273, 199, 143, 271, 1017,
    1018, 1019, 1020, 1027, 629, 1021, 1022, 719, 791, 1040, 1041, 651, 775, 1034, 1014, 1015, 1182, 1183, 1115, 1185, 1187, 1270, 1561,
    1563, 1231, 2201, 2207, 2208, 2209, 2210, 4192, 2211, 4097, 4090, 2951, 3221, 3643, 3644, 3645, 3735, 3770, 3807, 4073, 2949, 5039,
    3905, 3907, 3909, 3911, 3913, 3927, 6150, 6151, 6152, 6153, 6155, 6157, 2287, 1263,
];

/// One text value of one type: `write_json_value` appends JSON that serde_json reads, or returns
/// a typed error and leaves the output as it was; never a panic. The first byte picks the type
/// OID from every OID with its own rule (scalars, every built-in array type) and a few that take
/// the string rule; 0xff takes the next four bytes as any OID.
pub fn value_json(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (oid, text) = if pick == 0xff && rest.len() >= 4 {
        (u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]), &rest[4..])
    } else {
        (OIDS[usize::from(pick) % OIDS.len()], rest)
    };
    let mut out = b"[1,".to_vec();
    match write_json_value(&mut out, oid, text) {
        Ok(()) => {
            // Numbers past a double's range only inside json/jsonb (and their arrays), which
            // are embedded as they are; a float must be in range.
            let big_numbers = matches!(oid, 114 | 3802 | 199 | 3807);
            if let Some(value) = check_json("a rendered value", &out[3..], big_numbers) {
                // The serde_json form is the same value (when within serde_json's default
                // nesting limit, which check_json lifts).
                match to_json_value(oid, text) {
                    Ok(again) => assert_eq!(again, value),
                    Err(e) => assert!(e.to_string().contains("recursion limit"), "rendered, then refused: {e}"),
                }
            }
        }
        Err(_) => assert_eq!(out, b"[1,", "a failed value left output behind"),
    }
}

/// Config text: `Config::parse` (TOML, then `validate`) returns a config or a `ConfigError`,
/// never panics; a valid config answers its dead-letter destinations.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            std::hint::black_box(config.dead_letter_destinations());
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

/// A `_bulk` answer: parsed for N actions sent (the first byte) and every item classified, or a
/// typed `AnswerError`; never a panic. Unpaired surrogate escapes in string values (Jackson
/// writes one for an unpaired surrogate of a Java string, e.g. in a reason quoting a value) do
/// not make an answer unreadable: an answer refused is refused with them read as spaces too.
pub fn es_bulk_answer(data: &[u8]) {
    let Some((&sent, body)) = data.split_first() else { return };
    match super::bulk_answer(body, usize::from(sent)) {
        Ok(outcomes) => assert_eq!(outcomes.len(), 2 * usize::from(sent)),
        Err(e) => {
            let plain = without_surrogate_escapes(body, false);
            let again = super::bulk_answer(&plain, usize::from(sent));
            assert!(
                again.is_err(),
                "a _bulk answer refused ({e}) only for its unpaired surrogate escapes: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// The fields of a partial update merged into every document an `_mget` answer holds.
const MGET_FIELDS: &[u8] = br#"{"title":"new \"title\"","n":12345678901234567890123,"tags":["a",null],"nested":{"x":1.5e300}}"#;

/// An `_mget` answer: parsed for N documents asked (the first byte), each stored document found
/// merged with a partial update's fields; the merged document is a JSON object serde_json
/// reads, but for what Elasticsearch keeps of a document as sent (see `check_stored_json`).
/// Never a panic.
pub fn es_mget_answer(data: &[u8]) {
    let Some((&asked, body)) = data.split_first() else { return };
    let Ok(docs) = super::mget_answer(body, usize::from(asked), MGET_FIELDS) else { return };
    assert_eq!(docs.len(), usize::from(asked));
    for merged in docs.into_iter().flatten() {
        // The stored document's numbers and escapes are copied as they are.
        if let Some(doc) = check_stored_json("a merged document", &merged) {
            assert!(doc.is_object());
        }
    }
}

/// A sequence of pgoutput messages (framed, see `frames`) decoded as the stream does, every
/// change rendered as the Kafka sink renders it: the record key and the Debezium envelope, for
/// the change as streamed and split into delete + create (a key change), with and without a
/// transaction block. Each is JSON serde_json reads, or a typed error.
pub fn kafka_envelope(data: &[u8]) {
    let source = SourceStatic { version: "0.1.0".into(), name: "fuzz\"server".into(), db: "db".into() };
    for change in super::decode_stream(frames(data)) {
        let rel = &change.relation;
        let key_cols: Vec<usize> = rel.key_columns().collect();
        let (delete, create) = split_key_change(&change);
        for event in [Event::streamed(&change), delete, create] {
            for tx in [None, Some(TxBlock { id: "7:42", total_order: 1, data_collection_order: u64::MAX })] {
                let mut out = Vec::new();
                if write_value(&mut out, &event, &source, i64::MIN, tx).is_ok() {
                    assert!(check_json("an envelope", &out, true).is_none_or(|v| v.is_object()));
                }
            }
            for tuple in [event.before, event.after] {
                let mut out = Vec::new();
                if let Ok(true) = write_key(&mut out, rel, tuple, &key_cols) {
                    assert!(check_json("a record key", &out, true).is_none_or(|v| v.is_object()));
                }
            }
        }
    }
}
