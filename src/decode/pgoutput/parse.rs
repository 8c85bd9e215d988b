//! Parsing one pgoutput message from its bytes: a bounds-checked cursor over the payload.

use bytes::Bytes;

use super::{Begin, Column, Commit, LogicalMessage, Message, OldTuple, OldTupleKind, Origin, RelationBody, ReplicaIdentity, TypeBody};
// A tuple up to WIRE_MAX bytes is copied out of its message rather than sharing it: the copy
// costs about what the shared reference count's round trip (an atomic add and subtract on a
// line other threads may hold) does, leaves the values hot for rendering, and never keeps a
// whole receive buffer alive for one small row waiting in a batch.
use crate::decode::tuple::{Tuple, WIRE_MAX};
use crate::decode::DecodeError;
use crate::lsn::Lsn;

/// Parse one pgoutput message. `payload` is the `XLogData` data.
///
/// A large tuple ([`Tuple`]) and [`LogicalMessage::content`] share `payload`; a small tuple is
/// a copy. Every malformed input — truncation, negative or oversized
/// lengths, unknown kinds or flags, non-UTF-8 names, trailing bytes — is a [`DecodeError`];
/// announced counts are checked against the bytes actually present before anything is
/// allocated for them.
///
/// A Relation or Type message's empty namespace is reported as `"pg_catalog"`, which is what
/// the server means by it.
///
/// Inlined for inserts (most of a stream) and the Begin and Commit around them: the message is
/// then built where the caller uses it, instead of in memory the caller reads back at once,
/// which stalls on the stores still in flight. Every other message is parsed out of line.
#[inline(always)]
pub fn parse(payload: &Bytes) -> Result<Message, DecodeError> {
    match payload.first() {
        Some(b'I') => insert(payload),
        Some(b'B') => begin(payload),
        Some(b'C') => commit(payload),
        _ => parse_other(payload),
    }
}

/// An Insert message ('I'); `payload` starts with its tag.
#[inline(always)]
fn insert(payload: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: payload, pos: 1, tag: 'I' };
    let relation = r.u32()?;
    match r.u8()? {
        b'N' => {
            let new = r.tuple(payload)?;
            r.at_end()?;
            Ok(Message::Insert { relation, new })
        }
        other => Err(r.malformed_at(1, format!("expected 'N' before the new tuple, got {:?}", other as char))),
    }
}

/// A Begin message ('B'); `payload` starts with its tag.
#[inline(always)]
fn begin(payload: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: payload, pos: 1, tag: 'B' };
    let msg = Message::Begin(Begin { final_lsn: Lsn(r.u64()?), commit_ts: r.i64()?, xid: r.u32()? });
    r.at_end()?;
    Ok(msg)
}

/// A Commit message ('C'); `payload` starts with its tag.
#[inline(always)]
fn commit(payload: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: payload, pos: 1, tag: 'C' };
    let msg = Message::Commit(Commit { flags: r.u8()?, commit_lsn: Lsn(r.u64()?), end_lsn: Lsn(r.u64()?), commit_ts: r.i64()? });
    r.at_end()?;
    Ok(msg)
}

/// [`parse`] for every message.
fn parse_other(payload: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = payload.first() else {
        return Err(DecodeError::Truncated { tag: '\0', offset: 0, needed: 1 });
    };
    let mut r = Reader { buf: payload, pos: 1, tag: tag as char };
    let msg = match tag {
        b'B' => return begin(payload),
        b'C' => return commit(payload),
        b'O' => Message::Origin(Origin { commit_lsn: Lsn(r.u64()?), name: r.string()? }),
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type(TypeBody { oid: r.u32()?, namespace: r.namespace()?, name: r.string()? }),
        b'I' => return insert(payload),
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'N' => None,
                kind @ (b'K' | b'O') => {
                    let old = OldTuple { kind: old_kind(kind), values: r.tuple(payload)? };
                    let marker = r.u8()?;
                    if marker != b'N' {
                        return Err(r.malformed_at(1, format!("expected 'N' after the old tuple, got {:?}", marker as char)));
                    }
                    Some(old)
                }
                other => return Err(r.malformed_at(1, format!("expected 'K', 'O' or 'N', got {:?}", other as char))),
            };
            Message::Update { relation, old, new: r.tuple(payload)? }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                kind @ (b'K' | b'O') => Message::Delete { relation, old: OldTuple { kind: old_kind(kind), values: r.tuple(payload)? } },
                other => return Err(r.malformed_at(1, format!("expected 'K' or 'O', got {:?}", other as char))),
            }
        }
        b'T' => r.truncate()?,
        b'M' => Message::Message(r.logical_message(payload)?),
        other => return Err(DecodeError::UnknownTag(other)),
    };
    r.at_end()?;
    Ok(msg)
}

fn old_kind(kind: u8) -> OldTupleKind {
    if kind == b'K' {
        OldTupleKind::Key
    } else {
        OldTupleKind::Full
    }
}

/// TRUNCATE option bits (`TRUNCATE_CASCADE`, `TRUNCATE_RESTART_SEQS` in the server).
const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_SEQS: u8 = 2;
/// Relation column flag: part of the replica identity key.
const COLUMN_KEY: u8 = 1;
/// Logical message flag: transactional.
const MESSAGE_TRANSACTIONAL: u8 = 1;
/// Smallest encoding of one Relation column: flags, empty name's NUL, type oid, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// A cursor over one message. `pos` never exceeds `buf.len()`: every read checks first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Consume `n` bytes and return where they start.
    #[inline]
    fn take(&mut self, n: usize) -> Result<usize, DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(self.truncated(n - remaining));
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let start = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[start..start + N]);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.truncated(1)),
        }
    }

    #[inline]
    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    /// An Int32 the server sends as a C `uint32`/`Oid`/`TransactionId` (same bits).
    #[inline]
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    #[inline]
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An Int64 the server sends as an `XLogRecPtr` (unsigned, same bits).
    #[inline]
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A length that must be non-negative (Int16 counts, Int32 byte lengths).
    #[inline]
    fn len_i32(&mut self, what: &str) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.malformed_at(4, format!("negative {what} {n}")))
    }

    #[inline]
    fn len_i16(&mut self, what: &str) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.malformed_at(2, format!("negative {what} {n}")))
    }

    /// A NUL-terminated UTF-8 string, borrowed.
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            // The terminator is the least that is missing.
            return Err(self.truncated(1));
        };
        let s =
            std::str::from_utf8(&rest[..nul]).map_err(|e| self.malformed(format!("string at offset {} is not UTF-8: {e}", self.pos)))?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// A namespace field: the server sends "" for pg_catalog to save bytes.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let s = self.str()?;
        Ok(if s.is_empty() { "pg_catalog".to_owned() } else { s.to_owned() })
    }

    fn relation(&mut self) -> Result<RelationBody, DecodeError> {
        let oid = self.u32()?;
        let namespace = self.namespace()?;
        let name = self.string()?;
        let replica_identity = match self.u8()? {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => return Err(self.malformed_at(1, format!("unknown replica identity {:?}", other as char))),
        };
        let ncols = self.len_i16("column count")?;
        // Bound the allocation by what the remaining bytes can actually hold.
        let mut columns = Vec::with_capacity(ncols.min(self.remaining() / MIN_COLUMN_LEN));
        for _ in 0..ncols {
            let flags = self.u8()?;
            if flags & !COLUMN_KEY != 0 {
                return Err(self.malformed_at(1, format!("unknown column flags {flags:#04x}")));
            }
            columns.push(Column { key: flags & COLUMN_KEY != 0, name: self.string()?, type_oid: self.u32()?, type_modifier: self.i32()? });
        }
        Ok(RelationBody { oid, namespace, name, replica_identity, columns })
    }

    /// TupleData: Int16 column count, then one kind byte (and maybe a value) per column. A
    /// row up to [`WIRE_MAX`] bytes is copied with where each column starts (one allocation, and
    /// the values hot for rendering); a longer one shares `payload`. Inlined: returned through
    /// memory, the tuple would be copied (and stalled on) twice per row.
    #[inline(always)]
    fn tuple(&mut self, payload: &Bytes) -> Result<Tuple, DecodeError> {
        let ncols = self.len_i16("column count")?;
        // Offsets count from here: the tuple's bytes start at its first column.
        let base = self.pos;
        // Where each column's kind byte lies, while that fits a byte; a row whose offsets do
        // not fit is longer than WIRE_MAX and not copied, so later entries are never needed.
        let mut kinds = [0u8; WIRE_MAX];
        for i in 0..ncols {
            if let Some(k) = kinds.get_mut(i) {
                *k = (self.pos - base) as u8;
            }
            match self.u8()? {
                b'n' | b'u' => {}
                b't' | b'b' => {
                    let len = self.len_i32("value length")?;
                    self.take(len)?;
                }
                other => return Err(self.malformed_at(1, format!("unknown tuple column kind {:?}", other as char))),
            }
        }
        let row = &self.buf[base..self.pos];
        // Each column took at least its kind byte, so a short row's offsets all fit.
        let small = kinds.get(..ncols).and_then(|kinds| Tuple::from_wire(kinds, row));
        Ok(small.unwrap_or_else(|| Tuple::from_shared_wire(payload.slice(base..self.pos), ncols)))
    }

    /// Int32 length + bytes: where they lie.
    #[inline]
    fn value_range(&mut self) -> Result<(usize, usize), DecodeError> {
        let len = self.len_i32("value length")?;
        let start = self.take(len)?;
        Ok((start, start + len))
    }

    /// Int32 length + bytes, as a zero-copy slice of the payload.
    fn value(&mut self, payload: &Bytes) -> Result<Bytes, DecodeError> {
        let (start, end) = self.value_range()?;
        Ok(payload.slice(start..end))
    }

    fn truncate(&mut self) -> Result<Message, DecodeError> {
        let nrels = self.len_i32("relation count")?;
        let options = self.u8()?;
        if options & !(TRUNCATE_CASCADE | TRUNCATE_RESTART_SEQS) != 0 {
            return Err(self.malformed_at(1, format!("unknown truncate options {options:#04x}")));
        }
        // Check the whole OID list is present before allocating for it.
        let bytes = nrels.checked_mul(4).ok_or_else(|| self.truncated(usize::MAX))?;
        if bytes > self.remaining() {
            return Err(self.truncated(bytes - self.remaining()));
        }
        let mut relations = Vec::with_capacity(nrels);
        for _ in 0..nrels {
            relations.push(self.u32()?);
        }
        Ok(Message::Truncate {
            relations,
            cascade: options & TRUNCATE_CASCADE != 0,
            restart_identity: options & TRUNCATE_RESTART_SEQS != 0,
        })
    }

    fn logical_message(&mut self, payload: &Bytes) -> Result<LogicalMessage, DecodeError> {
        let flags = self.u8()?;
        if flags & !MESSAGE_TRANSACTIONAL != 0 {
            return Err(self.malformed_at(1, format!("unknown message flags {flags:#04x}")));
        }
        let lsn = Lsn(self.u64()?);
        let prefix = self.string()?;
        let content = self.value(payload)?;
        Ok(LogicalMessage { transactional: flags & MESSAGE_TRANSACTIONAL != 0, lsn, prefix, content })
    }

    /// The message must end where its last field did.
    #[inline]
    fn at_end(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(self.malformed(format!("{} trailing bytes after the message", self.buf.len() - self.pos)));
        }
        Ok(())
    }

    #[cold]
    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated { tag: self.tag, offset: self.pos, needed }
    }

    #[cold]
    fn malformed(&self, reason: String) -> DecodeError {
        DecodeError::Malformed { tag: self.tag, reason }
    }

    /// A malformed field that was `width` bytes wide and has just been consumed.
    #[cold]
    fn malformed_at(&self, width: usize, reason: String) -> DecodeError {
        let offset = self.pos.saturating_sub(width);
        DecodeError::Malformed { tag: self.tag, reason: format!("{reason} at offset {offset}") }
    }
}
