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

/// `base` with every field of `fields` set (both JSON objects). Values are kept as raw JSON, so
/// nothing is lost (big numbers, key order within values).
pub(super) fn merge_objects(base: &[u8], fields: &[u8]) -> Result<Vec<u8>, String> {
    let mut merged: Vec<(String, Box<RawValue>)> = Vec::new();
    let base: RawObject = serde_json::from_slice(base).map_err(|e| format!("stored document: {e}"))?;
    let fields: RawObject = serde_json::from_slice(fields).map_err(|e| format!("fields: {e}"))?;
    merged.extend(base.0);
    for (k, v) in fields.0 {
        match merged.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
    }
    let mut out = Vec::with_capacity(base_len_hint(&merged));
    out.push(b'{');
    for (n, (k, v)) in merged.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        crate::decode::write_json_str(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

fn base_len_hint(fields: &[(String, Box<RawValue>)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 2
}

/// A JSON object as (key, raw value) pairs in document order.
struct RawObject(Vec<(String, Box<RawValue>)>);

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
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
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
