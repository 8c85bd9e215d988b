//! The entries inside a block: a relation description, a change, or a commit marker.
//!
//! Layout of one entry: `[tag u8][body length u32][body]`, the length letting a reader skip
//! what it does not need. Integers are little-endian (fixed width for LSNs and ids, LEB128
//! varints for lengths and counts). A change names its relation by OID; the relation's
//! description is an earlier entry of the same segment (the last one for that OID wins), so
//! every segment decodes on its own.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::{Change, Column, Datum, OldTuple, OldTupleKind, Op, Relation, ReplicaIdentity, Slot, TruncateOptions, Tuple};
use crate::lsn::Lsn;

const TAG_RELATION: u8 = b'R';
const TAG_CHANGE: u8 = b'C';
const TAG_COMMIT: u8 = b'K';

/// A decoded entry that the reader hands on (relation entries only update its table).
#[derive(Debug)]
pub(super) enum Entry {
    /// One row change.
    Change(Change),
    /// Every change with a commit LSN up to this one is in the log.
    Commit(Lsn),
}

/// Why an entry cannot be decoded (inside a block whose checksum matched: a bug or a
/// format from another version, reported as corruption by the caller).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct RecordError(pub(super) String);

fn bad(what: impl Into<String>) -> RecordError {
    RecordError(what.into())
}

// ---- encoding -------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes `[tag][len u32][body]`, the body written in place by `body` and its length patched
/// in after (no copy of the values).
fn put_entry(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    // An entry over 4 GiB cannot come from Postgres (a value is at most 1 GiB).
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends a relation description entry.
pub(super) fn put_relation(out: &mut Vec<u8>, rel: &Relation) {
    put_entry(out, TAG_RELATION, |b| {
        b.extend_from_slice(&rel.oid.to_le_bytes());
        put_bytes(b, rel.schema.as_bytes());
        put_bytes(b, rel.table.as_bytes());
        b.push(match rel.replica_identity {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        });
        put_varint(b, rel.columns.len() as u64);
        for c in &rel.columns {
            b.push(u8::from(c.key));
            put_bytes(b, c.name.as_bytes());
            b.extend_from_slice(&c.type_oid.to_le_bytes());
            b.extend_from_slice(&c.type_modifier.to_le_bytes());
        }
    });
}

fn put_datums(b: &mut Vec<u8>, datums: &Tuple) {
    put_varint(b, datums.len() as u64);
    for d in datums {
        match d {
            Datum::Null => b.push(b'n'),
            Datum::Unchanged => b.push(b'u'),
            Datum::Text(t) => {
                b.push(b't');
                put_bytes(b, t);
            }
            Datum::Binary(t) => {
                b.push(b'b');
                put_bytes(b, t);
            }
        }
    }
}

/// Appends a change entry (its relation must have been described earlier in the segment).
pub(super) fn put_change(out: &mut Vec<u8>, c: &Change) {
    put_entry(out, TAG_CHANGE, |b| {
        // commit_lsn first: a reader skipping what it already has reads only this.
        b.extend_from_slice(&c.commit_lsn.0.to_le_bytes());
        b.extend_from_slice(&c.lsn.0.to_le_bytes());
        b.extend_from_slice(&c.relation.oid.to_le_bytes());
        b.extend_from_slice(&c.xid.to_le_bytes());
        b.extend_from_slice(&c.commit_ts.to_le_bytes());
        put_varint(b, c.seq);
        b.push(match c.op {
            Op::Insert => b'I',
            Op::Update => b'U',
            Op::Delete => b'D',
            Op::Truncate => b'T',
            Op::Read => b'R',
        });
        let t = c.truncate;
        b.push(u8::from(t.cascade) | (u8::from(t.restart_identity) << 1) | (u8::from(t.resync) << 2));
        match &c.old {
            None => b.push(0),
            Some(old) => {
                b.push(match old.kind {
                    OldTupleKind::Key => b'K',
                    OldTupleKind::Full => b'O',
                });
                put_datums(b, &old.values);
            }
        }
        match &c.new {
            None => b.push(0),
            Some(new) => {
                b.push(b'N');
                put_datums(b, new);
            }
        }
    });
}

/// Appends a commit marker.
pub(super) fn put_commit(out: &mut Vec<u8>, lsn: Lsn) {
    put_entry(out, TAG_COMMIT, |b| b.extend_from_slice(&lsn.0.to_le_bytes()));
}

// ---- decoding -------------------------------------------------------------------------------

/// A bounds-checked cursor over a block payload; values are zero-copy slices of it.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a Bytes, pos: usize, end: usize) -> Self {
        Self { buf, pos, end }
    }

    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, RecordError> {
        if self.end - self.pos < n {
            return Err(bad(format!("entry ends {} bytes early at payload offset {}", n - (self.end - self.pos), self.pos)));
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let r = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(&self.buf[r]);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 64 bits"))
    }

    fn len(&mut self) -> Result<usize, RecordError> {
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|&n| n <= self.end - self.pos).ok_or_else(|| bad(format!("length {n} past the entry's end")))
    }

    /// An entry's tag and body length (checked against what is left).
    fn entry_header(&mut self) -> Result<(u8, usize), RecordError> {
        let tag = self.u8()?;
        let len = self.u32()? as usize;
        if len > self.end - self.pos {
            return Err(bad(format!("entry length {len} past the block's end")));
        }
        Ok((tag, len))
    }

    /// A length-prefixed byte string: where it lies in the payload.
    fn bytes_range(&mut self) -> Result<std::ops::Range<usize>, RecordError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let n = self.len()?;
        let r = self.take(n)?;
        String::from_utf8(self.buf[r].to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }

    fn datums(&mut self) -> Result<Tuple, RecordError> {
        let n = self.len()?; // at least one byte per datum: bounded by the entry
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            slots.push(match self.u8()? {
                b'n' => Slot::Null,
                b'u' => Slot::Unchanged,
                b't' => {
                    let r = self.bytes_range()?;
                    Slot::Text { start: r.start, end: r.end }
                }
                b'b' => {
                    let r = self.bytes_range()?;
                    Slot::Binary { start: r.start, end: r.end }
                }
                other => return Err(bad(format!("unknown datum kind {other}"))),
            });
        }
        // Every range was taken inside the payload.
        Tuple::from_slots(self.buf.clone(), slots).ok_or_else(|| bad("a value lies outside its block"))
    }
}

/// Decodes a block payload in order: relation entries update `relations` (one `Arc` per
/// description, shared by the changes after it), changes with a commit LSN at or below `skip_to`
/// and commit markers at or below it are left out, the rest returned.
pub(super) fn decode_block(payload: &Bytes, relations: &mut HashMap<u32, Arc<Relation>>, skip_to: Lsn) -> Result<Vec<Entry>, RecordError> {
    let mut out = Vec::new();
    let mut cur = Cursor::new(payload, 0, payload.len());
    while cur.pos < cur.end {
        let (tag, len) = cur.entry_header()?;
        let body_end = cur.pos + len;
        let mut body = Cursor::new(payload, cur.pos, body_end);
        match tag {
            TAG_RELATION => {
                let rel = relation(&mut body)?;
                relations.insert(rel.oid, Arc::new(rel));
            }
            TAG_CHANGE => {
                let commit_lsn = Lsn(body.u64()?);
                if commit_lsn > skip_to {
                    out.push(Entry::Change(change(&mut body, commit_lsn, relations)?));
                }
            }
            TAG_COMMIT => {
                let lsn = Lsn(body.u64()?);
                if lsn > skip_to {
                    out.push(Entry::Commit(lsn));
                }
            }
            other => return Err(bad(format!("unknown entry tag {other}"))),
        }
        cur.pos = body_end;
    }
    Ok(out)
}

/// Walks the entries of a payload without decoding changes: `(end of entry, commit marker
/// LSN if it is one)` for each, relations ignored. The writer uses it to find the last commit.
pub(super) fn commit_positions(payload: &Bytes) -> Result<Vec<(usize, Option<Lsn>)>, RecordError> {
    let mut out = Vec::new();
    let mut cur = Cursor::new(payload, 0, payload.len());
    while cur.pos < cur.end {
        let (tag, len) = cur.entry_header()?;
        let body_end = cur.pos + len;
        let mut body = Cursor::new(payload, cur.pos, body_end);
        let commit = match tag {
            TAG_COMMIT => Some(Lsn(body.u64()?)),
            TAG_RELATION | TAG_CHANGE => None,
            other => return Err(bad(format!("unknown entry tag {other}"))),
        };
        cur.pos = body_end;
        out.push((body_end, commit));
    }
    Ok(out)
}

/// The largest commit LSN an entry mentions (a change's commit LSN or a marker), for the
/// segment's name. Relations mention none.
pub(super) fn max_commit(payload: &Bytes) -> Result<Option<Lsn>, RecordError> {
    let mut max = None;
    let mut cur = Cursor::new(payload, 0, payload.len());
    while cur.pos < cur.end {
        let (tag, len) = cur.entry_header()?;
        let body_end = cur.pos + len;
        if tag == TAG_CHANGE || tag == TAG_COMMIT {
            let lsn = Lsn(Cursor::new(payload, cur.pos, body_end).u64()?);
            max = max.max(Some(lsn));
        }
        cur.pos = body_end;
    }
    Ok(max)
}

fn relation(c: &mut Cursor<'_>) -> Result<Relation, RecordError> {
    let oid = c.u32()?;
    let schema = c.string()?;
    let table = c.string()?;
    let replica_identity = match c.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(bad(format!("unknown replica identity {other}"))),
    };
    let n = c.len()?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let key = c.u8()? != 0;
        let name = c.string()?;
        let type_oid = c.u32()?;
        let type_modifier = c.u32()? as i32;
        columns.push(Column { key, name, type_oid, type_modifier });
    }
    Ok(Relation { oid, schema, table, replica_identity, columns })
}

fn change(c: &mut Cursor<'_>, commit_lsn: Lsn, relations: &HashMap<u32, Arc<Relation>>) -> Result<Change, RecordError> {
    let lsn = Lsn(c.u64()?);
    let oid = c.u32()?;
    let relation = relations.get(&oid).cloned().ok_or_else(|| bad(format!("change of relation {oid} before its description")))?;
    let xid = c.u32()?;
    let commit_ts = c.u64()? as i64;
    let seq = c.varint()?;
    let op = match c.u8()? {
        b'I' => Op::Insert,
        b'U' => Op::Update,
        b'D' => Op::Delete,
        b'T' => Op::Truncate,
        b'R' => Op::Read,
        other => return Err(bad(format!("unknown op {other}"))),
    };
    let t = c.u8()?;
    let truncate = TruncateOptions { cascade: t & 1 != 0, restart_identity: t & 2 != 0, resync: t & 4 != 0 };
    let old = match c.u8()? {
        0 => None,
        b'K' => Some(OldTuple { kind: OldTupleKind::Key, values: c.datums()? }),
        b'O' => Some(OldTuple { kind: OldTupleKind::Full, values: c.datums()? }),
        other => return Err(bad(format!("unknown old tuple kind {other}"))),
    };
    let new = match c.u8()? {
        0 => None,
        b'N' => Some(c.datums()?),
        other => return Err(bad(format!("unknown new tuple marker {other}"))),
    };
    Ok(Change { lsn, commit_lsn, xid, commit_ts, seq, relation, op, old, new, truncate })
}

#[cfg(test)]
pub(super) mod tests;
