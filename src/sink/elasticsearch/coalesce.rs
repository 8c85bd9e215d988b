//! Coalescing: the actions of a batch segment become one pending write per document, in order of
//! first appearance. Partial updates are merged as raw JSON, so nothing of a value is lost.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::route::{ChangeOrigin, EsAction, EsOp};

/// One document's pending write after coalescing.
#[derive(Debug)]
pub(super) struct Entry {
    /// Target index.
    pub(super) index: Arc<str>,
    /// Document id.
    pub(super) id: String,
    /// External version: the newest of the coalesced actions.
    pub(super) version: u64,
    /// What to send.
    pub(super) state: State,
    /// The change of the last coalesced action (for dead letters and logs).
    pub(super) origin: ChangeOrigin,
}

/// What an [`Entry`] sends.
#[derive(Debug)]
pub(super) enum State {
    /// Index this whole document.
    Doc(Vec<u8>),
    /// Merge these fields into the stored document `base_id`, then index the result.
    Partial { fields: Vec<u8>, base_id: String },
    /// Delete the document.
    Deleted,
    /// Nothing to send.
    Skip,
}

/// One entry per document, in order of first appearance: the last full document wins, later
/// partial updates are merged into it, a delete replaces everything before it. `reject` gets
/// entries whose merge failed.
pub(super) fn coalesce(actions: Vec<EsAction>, mut reject: impl FnMut(&Entry, String)) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::with_capacity(actions.len());
    let mut at: HashMap<(Arc<str>, String), usize> = HashMap::with_capacity(actions.len());
    for a in actions {
        let state = match a.op {
            EsOp::Index(doc) => State::Doc(doc),
            EsOp::Delete => State::Deleted,
            EsOp::DeleteAll => continue,
            EsOp::Update { fields, base_id } => {
                let base = base_id.unwrap_or_else(|| a.id.clone());
                match at.get(&(Arc::clone(&a.index), base.clone())).map(|&i| &entries[i]) {
                    Some(Entry { state: State::Doc(doc), .. }) => match merge_objects(doc, &fields) {
                        Ok(merged) => State::Doc(merged),
                        Err(reason) => {
                            let e = Entry { index: a.index, id: a.id, version: a.version, state: State::Skip, origin: a.origin };
                            reject(&e, format!("cannot merge a partial update: {reason}"));
                            continue;
                        }
                    },
                    Some(Entry { state: State::Partial { fields: f0, base_id: b0 }, .. }) => match merge_objects(f0, &fields) {
                        Ok(merged) => State::Partial { fields: merged, base_id: b0.clone() },
                        Err(reason) => {
                            let e = Entry { index: a.index, id: a.id, version: a.version, state: State::Skip, origin: a.origin };
                            reject(&e, format!("cannot merge a partial update: {reason}"));
                            continue;
                        }
                    },
                    Some(Entry { state: State::Deleted | State::Skip, .. }) => {
                        tracing::warn!(index = %a.index, id = %a.id, lsn = %a.origin.lsn, "partial update of a document deleted earlier in the batch: skipped");
                        State::Skip
                    }
                    None => State::Partial { fields, base_id: base },
                }
            }
        };
        let key = (Arc::clone(&a.index), a.id);
        match at.get(&key) {
            Some(&i) => {
                let e = &mut entries[i];
                e.state = state;
                e.version = e.version.max(a.version);
                e.origin = a.origin;
            }
            None => {
                at.insert(key.clone(), entries.len());
                entries.push(Entry { index: key.0, id: key.1, version: a.version, state, origin: a.origin });
            }
        }
    }
    entries
}

/// `base` with every field of `fields` set (both JSON objects). Names and values are kept as raw
/// JSON, so nothing is lost (big numbers, key order within values, escapes); a name is matched
/// by the text it stands for, as JSON defines it (`"a\u0062"` is `"ab"`).
pub(super) fn merge_objects(base: &[u8], fields: &[u8]) -> Result<Vec<u8>, String> {
    let base: RawObject = serde_json::from_slice(base).map_err(|e| format!("stored document: {e}"))?;
    let fields: RawObject = serde_json::from_slice(fields).map_err(|e| format!("fields: {e}"))?;
    let mut merged = base.0;
    for field in fields.0 {
        match merged.iter_mut().find(|m| m.name == field.name) {
            Some(slot) => slot.value = field.value,
            None => merged.push(field),
        }
    }
    let mut out = Vec::with_capacity(merged.iter().map(|m| m.raw_name.get().len() + m.value.get().len() + 1).sum::<usize>() + 2);
    out.push(b'{');
    for (n, m) in merged.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.raw_name.get().as_bytes());
        out.push(b':');
        out.extend_from_slice(m.value.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// One member of a [`RawObject`].
struct Member {
    /// The name as written (a JSON string, escapes and all).
    raw_name: Box<RawValue>,
    /// The bytes the name stands for: WTF-8, so an unpaired surrogate escape (which
    /// Elasticsearch stores and returns as sent; serde_json refuses it in a `String`) is kept
    /// and told apart from any other.
    name: Vec<u8>,
    /// The value as written.
    value: Box<RawValue>,
}

/// A JSON object as its members in document order.
struct RawObject(Vec<Member>);

/// A JSON string's bytes, surrogate escapes unpaired or not.
struct NameBytes(Vec<u8>);

impl<'de> Deserialize<'de> for NameBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NameBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON string")
            }
            fn visit_str<E>(self, s: &str) -> Result<NameBytes, E> {
                Ok(NameBytes(s.as_bytes().to_vec()))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<NameBytes, E> {
                Ok(NameBytes(b.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut out = Vec::new();
                while let Some((raw_name, value)) = map.next_entry::<Box<RawValue>, Box<RawValue>>()? {
                    let NameBytes(name) = serde_json::from_str(raw_name.get()).map_err(serde::de::Error::custom)?;
                    out.push(Member { raw_name, name, value });
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::elasticsearch::tests::{act, index, update};
    use serde_json::{json, Value};

    fn doc_of(e: &Entry) -> Value {
        match &e.state {
            State::Doc(d) | State::Partial { fields: d, .. } => serde_json::from_slice(d).expect("json"),
            _ => Value::Null,
        }
    }

    #[test]
    fn merge_keeps_raw_values_and_order() {
        let merged =
            merge_objects(br#"{"id":1,"big":"xxx","n":123456789012345678901234567890}"#, br#"{"n":2,"new":[1,2]}"#).expect("merge");
        assert_eq!(String::from_utf8(merged).expect("utf8"), r#"{"id":1,"big":"xxx","n":2,"new":[1,2]}"#);
        let merged = merge_objects(br#"{"n":1.000000000000000000001}"#, br#"{}"#).expect("merge");
        assert_eq!(String::from_utf8(merged).expect("utf8"), r#"{"n":1.000000000000000000001}"#);
        assert!(merge_objects(b"[1]", b"{}").is_err());
    }

    #[test]
    fn merge_keeps_names_as_written() {
        // Elasticsearch returns a stored document as it was sent: unpaired surrogate escapes
        // (RFC 8259 grammar, refused by serde_json in a `String`) and escaped names stay as they
        // are; a name is matched by what it stands for.
        let merged =
            merge_objects(br#"{"\udbbb":1,"a\u0062":2,"x\udBBBrm":"v\udc00","\udbbc":3}"#, br#"{"ab":3,"c":4,"\udbbc":5}"#).expect("merge");
        assert_eq!(String::from_utf8(merged).expect("utf8"), r#"{"\udbbb":1,"a\u0062":3,"x\udBBBrm":"v\udc00","\udbbc":5,"c":4}"#);
        assert!(merge_objects(br#"{"\udbb":1}"#, b"{}").is_err());
        assert!(merge_objects(br#"{"a":1,}"#, b"{}").is_err());
    }

    #[test]
    fn coalesce_per_document() {
        let entries = coalesce(
            vec![
                act("1", 10, index(json!({"id": 1, "big": "B", "n": 1}))),
                act("1", 10, update(json!({"id": 1, "n": 2}), None)),
                act("2", 10, update(json!({"n": 5}), None)),
                act("2", 11, update(json!({"m": 6}), None)),
                act("3", 11, index(json!({"id": 3}))),
                act("3", 12, EsOp::Delete),
                act("4", 12, EsOp::Delete),
                act("4", 13, index(json!({"id": 4}))),
                act("5", 13, update(json!({"id": 5, "n": 1}), Some("1"))),
                act("1", 13, EsOp::Delete),
                act("6", 14, EsOp::Delete),
                act("6", 14, update(json!({"n": 1}), None)),
            ],
            |_, r| panic!("{r}"),
        );
        let by_id: HashMap<&str, &Entry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
        assert_eq!(entries.len(), 6);
        // The delete of 1 (a key change to 5) comes after 5 took 1's document as its base.
        assert!(matches!(by_id["1"].state, State::Deleted));
        assert_eq!(by_id["1"].version, 13);
        assert_eq!(doc_of(by_id["5"]), json!({"id": 5, "big": "B", "n": 1}));
        assert!(matches!(by_id["5"].state, State::Doc(_)));
        // Two partial updates of a document not in the batch stay partial, merged, newest version.
        assert!(matches!(&by_id["2"].state, State::Partial { base_id, .. } if base_id == "2"));
        assert_eq!(doc_of(by_id["2"]), json!({"n": 5, "m": 6}));
        assert_eq!(by_id["2"].version, 11);
        assert!(matches!(by_id["3"].state, State::Deleted));
        assert_eq!(doc_of(by_id["4"]), json!({"id": 4}));
        assert!(matches!(by_id["6"].state, State::Skip));
        // Order of first appearance is kept.
        assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6"]);
    }
}
