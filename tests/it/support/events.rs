//! Change events: the ordering contract of JSON lines (transactions, commit_lsn, seq) and JSON
//! comparison where numbers compare by value.

use serde_json::Value;
use walcast::lsn::Lsn;

use super::pg::parse_lsn;

/// A line's `commit_lsn`.
pub fn commit_lsn(v: &Value) -> Lsn {
    parse_lsn(v["commit_lsn"].as_str().unwrap_or_else(|| panic!("no commit_lsn in {v}")))
}

/// A line's `change_id`: the documented de-duplication identity (docs/events.md "Duplicates").
pub fn change_id(v: &Value) -> String {
    v["change_id"].as_str().unwrap_or_else(|| panic!("no change_id in {v}")).to_string()
}

/// `schema.table` of a line.
pub fn table_of(v: &Value) -> String {
    format!("{}.{}", v["schema"].as_str().unwrap_or("?"), v["table"].as_str().unwrap_or("?"))
}

/// Group lines by transaction (consecutive lines with the same commit_lsn), checking the
/// ordering contract on the way: commit_lsn never decreases, seq counts 0, 1, 2... within a
/// transaction and xid / commit_ts are the same throughout it.
pub fn transactions(lines: &[Value]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let lsn = commit_lsn(line);
        match out.last_mut() {
            Some(tx) if commit_lsn(&tx[0]) == lsn => {
                assert_eq!(line["xid"], tx[0]["xid"], "line {i}: xid changed inside a transaction: {line}");
                assert_eq!(line["commit_ts"], tx[0]["commit_ts"], "line {i}: commit_ts changed inside a transaction");
                assert_eq!(line["seq"].as_u64(), Some(tx.len() as u64), "line {i}: seq is not consecutive: {line}");
                tx.push(line.clone());
            }
            prev => {
                if let Some(tx) = prev {
                    assert!(commit_lsn(&tx[0]) < lsn, "line {i}: commit_lsn went backwards ({} then {lsn}): {line}", commit_lsn(&tx[0]));
                }
                assert_eq!(line["seq"].as_u64(), Some(0), "line {i}: a transaction must start at seq 0: {line}");
                out.push(vec![line.clone()]);
            }
        }
    }
    out
}

/// The fields of a line that describe the change itself (not its position).
pub fn change_part(v: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for k in ["schema", "table", "op", "key", "before", "after", "unchanged", "truncate"] {
        if let Some(x) = v.get(k) {
            m.insert(k.to_string(), x.clone());
        }
    }
    Value::Object(m)
}

/// JSON equality where numbers compare by value (`1.0 == 1`, `-0.0 == 0.0`), integers exactly.
/// Returns the path of the first difference.
pub fn json_diff(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => {
            let same = match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => a.as_f64() == b.as_f64() && a.as_f64().is_some(),
            };
            (!same).then(|| format!("{path}: expected {expected}, got {actual}"))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path}: expected {expected}, got {actual}"));
            }
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| json_diff(x, y, &format!("{path}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys()) {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = json_diff(x, y, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    (Some(x), None) => return Some(format!("{path}.{k}: expected {x}, key missing")),
                    (None, Some(y)) => return Some(format!("{path}.{k}: unexpected key with {y}")),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        _ => (expected != actual).then(|| format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Assert [`json_diff`] finds nothing.
#[track_caller]
pub fn assert_json_eq(expected: &Value, actual: &Value, what: &str) {
    if let Some(d) = json_diff(expected, actual, "$") {
        panic!("{what}: {d}\n  expected: {expected}\n  actual:   {actual}");
    }
}
