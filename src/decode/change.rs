//! The change event: one row change (or truncate) with its transaction context.

use std::sync::Arc;

use super::pgoutput::{Column, OldTuple, OldTupleKind};
use super::relation::Relation;
use super::tuple::{Datum, Tuple};
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
    pub new: Option<Tuple>,
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
    ///
    /// What is constant per transaction (commit LSN, xid, commit time) is rendered once per
    /// transaction and copied for each of its changes (see [`TxText`]); numbers are written
    /// without `core::fmt`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        LINE_TEXT.with_borrow_mut(|cache| self.write_json_with(out, cache))
    }

    /// [`Change::write_json`] with the thread's cached text.
    fn write_json_with(&self, out: &mut Vec<u8>, cache: &mut LineText) -> Result<(), DecodeError> {
        let rel = &*self.relation;
        out.extend_from_slice(b"{\"lsn\":\"");
        write_lsn(out, self.lsn);
        // `","commit_lsn":"…","xid":…,"commit_ts":"…","seq":`, and where commit_lsn's text is
        // in `out` (a streamed change's change_id repeats it).
        let commit_lsn = cache.tx.append(out, self);
        let seq_at = out.len();
        write_u64(out, self.seq);
        let seq = seq_at..out.len();
        // `,"schema":…,"table":…,"op":"` and the column names, rendered once per relation.
        let names = cache.relation(&self.relation);
        out.extend_from_slice(&names.head);
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key\":");
        let key_at = out.len();
        match self.key_source() {
            Some(values) if !names.key.is_empty() => write_key(out, rel, values, names)?,
            _ => out.extend_from_slice(b"null"),
        }
        let key = key_at..out.len();
        out.extend_from_slice(b",\"before\":");
        match &self.old {
            Some(old) => {
                let key_only = old.kind == OldTupleKind::Key;
                write_row(out, rel, &old.values, |i| !key_only || rel.columns[i].key, UnchangedToast::Omit, Some(names))?;
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        // Whether `after` left out unchanged TOAST values: only then is the list walked again.
        let any_unchanged = match &self.new {
            Some(new) => write_row(out, rel, new, |_| true, UnchangedToast::Omit, Some(names))?,
            None => {
                out.extend_from_slice(b"null");
                false
            }
        };
        out.extend_from_slice(b",\"unchanged\":[");
        if let Some(new) = self.new.as_ref().filter(|_| any_unchanged) {
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
            let t = &self.truncate;
            out.extend_from_slice(b",\"truncate\":{\"cascade\":");
            out.extend_from_slice(if t.cascade { b"true" } else { b"false" });
            out.extend_from_slice(b",\"restart_identity\":");
            out.extend_from_slice(if t.restart_identity { b"true" } else { b"false" });
            if t.resync {
                out.extend_from_slice(b",\"resync\":true");
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"change_id\":");
        if self.op == Op::Read {
            match &self.new {
                // `<P>:r<oid>:<key>` with the key as rendered above (`key` renders the new row's
                // key columns for a read, as write_change_id does).
                Some(_) if !names.key.is_empty() => {
                    out.push(b'"');
                    out.extend_from_within(commit_lsn);
                    out.extend_from_slice(b":r");
                    write_u64(out, u64::from(rel.oid));
                    out.push(b':');
                    escape_within(out, key);
                    out.push(b'"');
                }
                _ => self.write_change_id(out)?,
            }
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
            out.push(b'"');
            write_lsn(out, self.commit_lsn);
            out.push(b':');
            write_u64(out, self.seq);
            out.push(b'"');
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
        if !new.iter().zip(&old.values).any(|(d, before)| d == Datum::Unchanged && before != Datum::Unchanged) {
            return;
        }
        // The values come from two payloads: the filled tuple is a copy (a rare path).
        *new = new.iter().zip(&old.values).map(|(d, before)| if d == Datum::Unchanged { before } else { d }).collect();
    }

    /// The tuple the primary key is read from: the new row, or for deletes the old key/row.
    pub(crate) fn key_source(&self) -> Option<&Tuple> {
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
    values: &Tuple,
    include: impl Fn(usize) -> bool,
    unchanged: UnchangedToast<'_>,
) -> Result<(), DecodeError> {
    write_row(out, rel, values, include, unchanged, None).map(|_| ())
}

/// [`write_row_object`], copying the column names from `names` (rendered for `rel`) if given;
/// whether a value of the row is an unchanged TOAST value (the `unchanged` list has members).
fn write_row(
    out: &mut Vec<u8>,
    rel: &Relation,
    values: &Tuple,
    include: impl Fn(usize) -> bool,
    unchanged: UnchangedToast<'_>,
    names: Option<&RelationText>,
) -> Result<bool, DecodeError> {
    same_columns(rel, values)?;
    out.push(b'{');
    let (mut first, mut any_unchanged) = (true, false);
    for (i, (col, datum)) in rel.columns.iter().zip(values).enumerate() {
        let is_unchanged = matches!(datum, Datum::Unchanged);
        any_unchanged |= is_unchanged;
        if !include(i) || (is_unchanged && matches!(unchanged, UnchangedToast::Omit)) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match names {
            Some(names) => out.extend_from_slice(names.column(i)),
            None => {
                write_json_str(out, &col.name);
                out.push(b':');
            }
        }
        write_member_value(out, col, datum, &unchanged)?;
    }
    out.push(b'}');
    Ok(any_unchanged)
}

/// The key object of a change, `{"k": value, ...}`, as [`write_row`] writes it for the key
/// columns (table order, unchanged TOAST values left out), reading only those columns.
fn write_key(out: &mut Vec<u8>, rel: &Relation, values: &Tuple, names: &RelationText) -> Result<(), DecodeError> {
    same_columns(rel, values)?;
    out.push(b'{');
    let mut first = true;
    for &i in &names.key {
        let (Some(col), Some(datum)) = (rel.columns.get(i), values.get(i)) else { continue };
        if matches!(datum, Datum::Unchanged) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(names.column(i));
        write_member_value(out, col, datum, &UnchangedToast::Omit)?;
    }
    out.push(b'}');
    Ok(())
}

/// A row must have a value per column of its relation.
fn same_columns(rel: &Relation, values: &Tuple) -> Result<(), DecodeError> {
    if values.len() != rel.columns.len() {
        return Err(DecodeError::ColumnCount { relation: rel.qualified_name(), expected: rel.columns.len(), got: values.len() });
    }
    Ok(())
}

/// One column's value in a row object.
#[inline]
fn write_member_value(out: &mut Vec<u8>, col: &Column, datum: Datum<'_>, unchanged: &UnchangedToast<'_>) -> Result<(), DecodeError> {
    match datum {
        Datum::Unchanged => match unchanged {
            UnchangedToast::Placeholder(text) => write_json_str(out, text),
            UnchangedToast::Omit => out.extend_from_slice(b"null"),
        },
        Datum::Null => out.extend_from_slice(b"null"),
        Datum::Text(text) => write_json_value(out, col.type_oid, text)?,
        // A snapshot reads common built-in types in their send format (`decode::binary`).
        Datum::Binary(bytes) => super::binary::write_json_binary(out, col.type_oid, bytes)?,
    }
    Ok(())
}

/// A JSON string literal.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Names (schema, table, column) almost never need escaping: copy them as they are. JSON
    // escapes only control characters, '"' and '\\', exactly what serde_json escapes.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's escaping is correct; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Append `out[range]`, JSON text written by this module, escaped as the inside of a JSON string:
/// what `write_json_str` does to it. Such text holds no raw control character (its strings
/// escape them), so only '"' and '\\' need escaping.
fn escape_within(out: &mut Vec<u8>, range: std::ops::Range<usize>) {
    out.reserve(range.len() + 8);
    for i in range {
        let b = out[i];
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Microseconds since 2000-01-01 UTC (Postgres's epoch) as ISO 8601 with microseconds and `Z`.
pub fn write_pg_timestamp(out: &mut Vec<u8>, micros_since_2000: i64) {
    let secs = micros_since_2000.div_euclid(1_000_000);
    let micros = micros_since_2000.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400) + UNIX_TO_PG_DAYS;
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        // Years a commit never has; `{y:04}` pads a negative year to 4 characters, sign included.
        use std::io::Write as _;
        let _ = write!(out, "{y:04}");
    } else {
        write_digits(out, y as u64, 4);
    }
    out.push(b'-');
    write_digits(out, u64::from(m), 2);
    out.push(b'-');
    write_digits(out, u64::from(d), 2);
    out.push(b'T');
    write_digits(out, (sod / 3600) as u64, 2);
    out.push(b':');
    write_digits(out, ((sod / 60) % 60) as u64, 2);
    out.push(b':');
    write_digits(out, (sod % 60) as u64, 2);
    out.push(b'.');
    write_digits(out, micros as u64, 6);
    out.push(b'Z');
}

/// `v` in exactly `width` decimal digits, zero-padded (`v` must fit).
fn write_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// An unsigned integer in decimal, as `Display` writes it.
pub(crate) fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// An LSN as `Display` writes it (`16/B374D848`: upper-case hex halves, no leading zeros).
pub(crate) fn write_lsn(out: &mut Vec<u8>, lsn: Lsn) {
    write_hex(out, (lsn.0 >> 32) as u32);
    out.push(b'/');
    write_hex(out, lsn.0 as u32);
}

/// Upper-case hexadecimal without leading zeros (`0` for zero), as `{:X}` writes it.
fn write_hex(out: &mut Vec<u8>, v: u32) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // All eight digits into a buffer, then one copy of the significant ones.
    let mut text = [0u8; 8];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((v >> (28 - 4 * i)) & 0xF) as usize];
    }
    let digits = (8 - v.leading_zeros() / 4).max(1) as usize;
    out.extend_from_slice(&text[8 - digits..]);
}

/// The text of a line that is the same for every change of a transaction, from `"commit_lsn"` up
/// to the value of `"seq"`, rendered once per transaction. Lines are rendered transaction after
/// transaction, so one entry per thread hits for all but the first change of each.
#[derive(Default)]
struct TxText {
    /// (commit_lsn, xid, commit_ts) the text was rendered for.
    key: Option<(Lsn, u32, i64)>,
    /// `","commit_lsn":"…","xid":…,"commit_ts":"…","seq":`.
    text: Vec<u8>,
    /// Where the commit LSN's text is in `text`.
    commit_lsn: std::ops::Range<usize>,
}

impl TxText {
    /// Append the transaction's text for `change` to `out`; returns where its commit LSN text
    /// landed in `out`.
    fn append(&mut self, out: &mut Vec<u8>, change: &Change) -> std::ops::Range<usize> {
        let key = (change.commit_lsn, change.xid, change.commit_ts);
        if self.key != Some(key) {
            let text = &mut self.text;
            text.clear();
            text.extend_from_slice(b"\",\"commit_lsn\":\"");
            let at = text.len();
            write_lsn(text, change.commit_lsn);
            self.commit_lsn = at..text.len();
            text.extend_from_slice(b"\",\"xid\":");
            write_u64(text, u64::from(change.xid));
            text.extend_from_slice(b",\"commit_ts\":\"");
            write_pg_timestamp(text, change.commit_ts);
            text.extend_from_slice(b"\",\"seq\":");
            self.key = Some(key);
        }
        let base = out.len();
        out.extend_from_slice(&self.text);
        base + self.commit_lsn.start..base + self.commit_lsn.end
    }
}

/// The text of a line that is the same for every change of a relation: `,"schema":…,"table":…,
/// "op":"` and each column's `"name":`.
struct RelationText {
    /// The relation it was rendered for, held so that no other relation can take its address.
    relation: Arc<Relation>,
    /// `,"schema":…,"table":…,"op":"`.
    head: Vec<u8>,
    /// `"name":` of every column, back to back; column `i`'s ends at `ends[i]`.
    names: Vec<u8>,
    ends: Vec<usize>,
    /// The replica identity key columns, in table order (empty: none).
    key: Vec<usize>,
}

impl RelationText {
    fn new(relation: &Arc<Relation>) -> Self {
        let mut head = Vec::with_capacity(relation.schema.len() + relation.table.len() + 32);
        head.extend_from_slice(b",\"schema\":");
        write_json_str(&mut head, &relation.schema);
        head.extend_from_slice(b",\"table\":");
        write_json_str(&mut head, &relation.table);
        head.extend_from_slice(b",\"op\":\"");
        let mut names = Vec::new();
        let mut ends = Vec::with_capacity(relation.columns.len());
        for col in &relation.columns {
            write_json_str(&mut names, &col.name);
            names.push(b':');
            ends.push(names.len());
        }
        let key = relation.key_columns().collect();
        Self { relation: Arc::clone(relation), head, names, ends, key }
    }

    /// `"name":` of column `i`.
    fn column(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.names[start..self.ends[i]]
    }
}

/// Relations whose text a thread keeps: a transaction's changes usually touch a few tables.
const RELATION_TEXTS: usize = 4;

/// What [`Change::write_json`] renders once and copies: the open transaction's text and the text
/// of the last relations seen (replaced oldest first).
#[derive(Default)]
struct LineText {
    tx: TxText,
    relations: Vec<RelationText>,
    /// The entry of `relations` the next new relation replaces.
    next: usize,
}

impl LineText {
    /// The text of `relation` (the same `Arc`: a relation described again is a new one).
    fn relation(&mut self, relation: &Arc<Relation>) -> &RelationText {
        let at = match self.relations.iter().position(|r| Arc::ptr_eq(&r.relation, relation)) {
            Some(at) => at,
            None if self.relations.len() < RELATION_TEXTS => {
                self.relations.push(RelationText::new(relation));
                self.relations.len() - 1
            }
            None => {
                let at = self.next;
                self.next = (at + 1) % RELATION_TEXTS;
                self.relations[at] = RelationText::new(relation);
                at
            }
        };
        &self.relations[at]
    }
}

thread_local! {
    /// See [`LineText`].
    static LINE_TEXT: std::cell::RefCell<LineText> = std::cell::RefCell::new(LineText::default());
}

/// Days from 1970-01-01 to 2000-01-01, Postgres's epoch for dates and timestamps.
pub(crate) const UNIX_TO_PG_DAYS: i64 = 10_957;

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's public-domain civil-from-days algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
mod tests;
