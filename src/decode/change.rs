//! The change event: one row change (or truncate) with its transaction context.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::pgoutput::{Datum, OldTuple, OldTupleKind};
use super::relation::Relation;
use super::value::write_json_value;
use super::DecodeError;
use crate::lsn::Lsn;

/// Kind of row change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE of the table.
    Truncate,
    /// A row read by a snapshot (insert-shaped: `new` only, `commit_lsn` = the snapshot's point).
    Read,
}

/// Options of a TRUNCATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TruncateOptions {
    /// TRUNCATE ... CASCADE.
    pub cascade: bool,
    /// TRUNCATE ... RESTART IDENTITY.
    pub restart_identity: bool,
    /// Not a TRUNCATE in Postgres: walcast empties the table's data in every sink before
    /// re-loading it in a re-sync (`walcast resync`), so rows deleted meanwhile go too.
    pub resync: bool,
}

/// One change as it flows from decode to the sinks.
#[derive(Clone, Debug)]
pub struct Change {
    /// LSN of the change's WAL record (several changes of one multi-insert share it).
    pub lsn: Lsn,
    /// End LSN of the transaction's commit record: unique per transaction, increasing in commit
    /// order, and the position walcast confirms once this transaction is durable.
    pub commit_lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// Commit timestamp, microseconds since 2000-01-01 UTC.
    pub commit_ts: i64,
    /// Position of this change inside its transaction, from 0.
    pub seq: u64,
    /// The relation as described when the change was decoded.
    pub relation: Arc<Relation>,
    /// Kind of change.
    pub op: Op,
    /// Old key or old row (updates and deletes, when the server sent one).
    pub old: Option<OldTuple>,
    /// New row (inserts and updates).
    pub new: Option<Vec<Datum>>,
    /// TRUNCATE options.
    pub truncate: TruncateOptions,
}

impl Op {
    /// Lower-case name used in change events (`insert`, `update`, `delete`, `truncate`, `read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

impl Change {
    /// Append this change as one JSON object (no trailing newline), in the line format documented
    /// in docs/events.md. Field order is fixed so lines diff and grep well.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        use std::io::Write as _;
        let rel = &*self.relation;
        // Writing into a Vec<u8> cannot fail.
        // The text of commit_lsn and seq is kept (as ranges of `out`): a streamed change's
        // change_id repeats it, copied rather than formatted again.
        let _ = write!(out, "{{\"lsn\":\"{}\",\"commit_lsn\":\"", self.lsn);
        let commit_lsn_at = out.len();
        let _ = write!(out, "{}", self.commit_lsn);
        let commit_lsn = commit_lsn_at..out.len();
        let _ = write!(out, "\",\"xid\":{},\"commit_ts\":\"", self.xid);
        write_pg_timestamp(out, self.commit_ts);
        out.extend_from_slice(b"\",\"seq\":");
        let seq_at = out.len();
        let _ = write!(out, "{}", self.seq);
        let seq = seq_at..out.len();
        out.extend_from_slice(b",\"schema\":");
        write_json_str(out, &rel.schema);
        out.extend_from_slice(b",\"table\":");
        write_json_str(out, &rel.table);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key\":");
        match self.key_source() {
            Some(values) if rel.key_columns().next().is_some() => {
                write_row_object(out, rel, values, |i| rel.columns[i].key, UnchangedToast::Omit)?
            }
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"before\":");
        match &self.old {
            Some(old) => {
                let key_only = old.kind == OldTupleKind::Key;
                write_row_object(out, rel, &old.values, |i| !key_only || rel.columns[i].key, UnchangedToast::Omit)?
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        match &self.new {
            Some(new) => write_row_object(out, rel, new, |_| true, UnchangedToast::Omit)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"unchanged\":[");
        if let Some(new) = &self.new {
            let mut first = true;
            for (col, datum) in rel.columns.iter().zip(new) {
                if matches!(datum, Datum::Unchanged) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_json_str(out, &col.name);
                }
            }
        }
        out.push(b']');
        if self.op == Op::Truncate {
            let _ = write!(
                out,
                ",\"truncate\":{{\"cascade\":{},\"restart_identity\":{}{}}}",
                self.truncate.cascade,
                self.truncate.restart_identity,
                if self.truncate.resync { ",\"resync\":true" } else { "" }
            );
        }
        out.extend_from_slice(b",\"change_id\":");
        if self.op == Op::Read {
            self.write_change_id(out)?;
        } else {
            // `<commit_lsn>:<seq>`, as write_change_id writes it.
            out.push(b'"');
            out.extend_from_within(commit_lsn);
            out.push(b':');
            out.extend_from_within(seq);
            out.push(b'"');
        }
        out.push(b'}');
        Ok(())
    }

    /// Append the change's identity as a JSON string (docs/events.md "Duplicates"): the same for
    /// every resend of this change, different for every other change.
    ///
    /// - streamed: `<commit_lsn>:<seq>`. The server resends a transaction whole and `seq`
    ///   counts from its first change, so a resend has the same pair.
    /// - snapshot row of a table with a primary key: `<P>:r<table oid>:<key>`. A resumed load
    ///   re-reads (in a fresh snapshot, at the same point P) the chunks written but not recorded:
    ///   the same row has the same key; every other row of the snapshot has another one.
    /// - snapshot row of a table without one: `<P>:r<table oid>:<load>:<n>`, the load's start
    ///   time (distinct per load of one snapshot, see `snapshot::load`) and the row's position
    ///   in it: an interrupted table is read again whole, in another order, so its rows cannot be
    ///   matched with an earlier load's and are never taken for them.
    ///
    /// Streamed changes are written without allocating (and `write_json` copies the text it
    /// already wrote instead of calling this for them).
    pub(crate) fn write_change_id(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        use std::io::Write as _;
        if self.op != Op::Read {
            let _ = write!(out, "\"{}:{}\"", self.commit_lsn, self.seq);
            return Ok(());
        }
        let rel = &*self.relation;
        match &self.new {
            Some(new) if rel.key_columns().next().is_some() => {
                let mut id = format!("{}:r{}:", self.commit_lsn, rel.oid).into_bytes();
                write_row_object(&mut id, rel, new, |i| rel.columns[i].key, UnchangedToast::Omit)?;
                // Built from a JSON rendering and an ASCII prefix: valid UTF-8.
                write_json_str(out, &String::from_utf8_lossy(&id));
            }
            _ => {
                let _ = write!(out, "\"{}:r{}:{}:{}\"", self.commit_lsn, rel.oid, self.commit_ts, self.seq);
            }
        }
        Ok(())
    }

    /// With REPLICA IDENTITY FULL the old tuple carries the whole old row (Postgres flattens
    /// its TOASTed values), so a TOASTed value the update left alone, which the new tuple does
    /// not carry, is known: take it from there. Without this the key of a table keyed by every
    /// column (FULL, no primary key) would lack the column, and `after` would be partial.
    pub(crate) fn fill_unchanged_from_old(&mut self) {
        let (Some(new), Some(old)) = (&mut self.new, &self.old) else { return };
        if old.kind != OldTupleKind::Full || old.values.len() != new.len() {
            return;
        }
        for (datum, before) in new.iter_mut().zip(&old.values) {
            if matches!(datum, Datum::Unchanged) && !matches!(before, Datum::Unchanged) {
                *datum = before.clone();
            }
        }
    }

    /// The tuple the primary key is read from: the new row, or for deletes the old key/row.
    pub(crate) fn key_source(&self) -> Option<&[Datum]> {
        match (&self.new, &self.old) {
            (Some(new), _) => Some(new),
            (None, Some(old)) => Some(&old.values),
            (None, None) => None,
        }
    }
}

/// How [`write_row_object`] renders a column whose TOASTed value did not change (and so was not
/// sent by the server).
#[derive(Clone, Copy, Debug)]
pub(crate) enum UnchangedToast<'a> {
    /// Leave the column out (the JSON-lines format lists it in `unchanged` instead).
    Omit,
    /// Write this string as the column's value (the Kafka envelope uses Debezium's placeholder).
    Placeholder(&'a str),
}

/// `{"col": value, ...}` over the columns `include` selects; unchanged TOAST values are left out
/// or replaced by a placeholder, as `unchanged` says (never rendered as null).
pub(crate) fn write_row_object(
    out: &mut Vec<u8>,
    rel: &Relation,
    values: &[Datum],
    include: impl Fn(usize) -> bool,
    unchanged: UnchangedToast<'_>,
) -> Result<(), DecodeError> {
    if values.len() != rel.columns.len() {
        return Err(DecodeError::ColumnCount { relation: rel.qualified_name(), expected: rel.columns.len(), got: values.len() });
    }
    out.push(b'{');
    let mut first = true;
    for (i, (col, datum)) in rel.columns.iter().zip(values).enumerate() {
        if !include(i) || (matches!(datum, Datum::Unchanged) && matches!(unchanged, UnchangedToast::Omit)) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_str(out, &col.name);
        out.push(b':');
        match datum {
            Datum::Unchanged => match unchanged {
                UnchangedToast::Placeholder(text) => write_json_str(out, text),
                UnchangedToast::Omit => out.extend_from_slice(b"null"),
            },
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Text(text) => write_json_value(out, col.type_oid, text)?,
            // walcast never asks for binary output; keep the bytes rather than guess a format.
            Datum::Binary(bytes) => {
                out.push(b'"');
                out.extend_from_slice(BASE64.encode(bytes).as_bytes());
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string literal.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is correct and fast; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Microseconds since 2000-01-01 UTC (Postgres's epoch) as ISO 8601 with microseconds and `Z`.
pub fn write_pg_timestamp(out: &mut Vec<u8>, micros_since_2000: i64) {
    use std::io::Write as _;
    const UNIX_TO_PG_DAYS: i64 = 10_957;
    let secs = micros_since_2000.div_euclid(1_000_000);
    let micros = micros_since_2000.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400) + UNIX_TO_PG_DAYS;
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, (sod / 60) % 60, sod % 60);
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's public-domain civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
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

    fn change(op: Op, old: Option<OldTuple>, new: Option<Vec<Datum>>) -> Change {
        Change { seq: 3, ..fixtures::change(rel(), op, old, new) }
    }

    #[test]
    fn update_with_unchanged_toast_lists_it_and_omits_it() {
        let c = change(Op::Update, None, Some(vec![text("1"), Datum::Unchanged, Datum::Null]));
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
        let old = OldTuple { kind: OldTupleKind::Full, values: vec![text("long"), text("1")] };
        let mut c = fixtures::change(rel, Op::Update, Some(old), Some(vec![Datum::Unchanged, text("2")]));
        c.fill_unchanged_from_old();
        let v = render(&c);
        assert_eq!(v["key"], serde_json::json!({"big": "long", "n": 2}));
        assert_eq!(v["after"], serde_json::json!({"big": "long", "n": 2}));
        assert_eq!(v["unchanged"], serde_json::json!([]));
    }

    #[test]
    fn key_old_tuple_does_not_fill_unchanged() {
        let old = OldTuple { kind: OldTupleKind::Key, values: vec![text("1"), Datum::Null, Datum::Null] };
        let mut c = change(Op::Update, Some(old), Some(vec![text("1"), Datum::Unchanged, Datum::Null]));
        c.fill_unchanged_from_old();
        assert_eq!(render(&c)["unchanged"], serde_json::json!(["body"]));
    }

    #[test]
    fn delete_takes_key_from_old_key_tuple() {
        let old = OldTuple { kind: OldTupleKind::Key, values: vec![text("5"), Datum::Null, Datum::Null] };
        let v = render(&change(Op::Delete, Some(old), None));
        assert_eq!(v["key"], serde_json::json!({"id": 5}));
        assert_eq!(v["before"], serde_json::json!({"id": 5}));
        assert_eq!(v["after"], serde_json::Value::Null);
    }

    #[test]
    fn column_count_mismatch_is_an_error() {
        let c = change(Op::Insert, None, Some(vec![text("1")]));
        assert!(matches!(c.write_json(&mut Vec::new()), Err(DecodeError::ColumnCount { .. })));
    }

    #[test]
    fn change_id_is_position_for_streamed_changes_and_key_for_snapshot_rows() {
        let c = change(Op::Insert, None, Some(vec![text("1"), text("x"), Datum::Null]));
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
            ..fixtures::change(rel(), Op::Read, None, Some(vec![text(key), text(body), Datum::Null]))
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
            ..fixtures::change(Arc::clone(&nokey), Op::Read, None, Some(vec![text("1")]))
        };
        assert_eq!(render(&keyless(42, 3))["change_id"], "0/16B3748:r16384:42:3");
        assert_ne!(render(&keyless(43, 3))["change_id"], render(&keyless(42, 3))["change_id"]);
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
}
