//! The pgoutput protocol-1 message set, parsed from an `XLogData` payload.

use bytes::Bytes;

use super::DecodeError;
use crate::lsn::Lsn;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// 'B': a transaction starts.
    Begin(Begin),
    /// 'C': a transaction committed.
    Commit(Commit),
    /// 'O': the transaction came from another origin (replicated into this server).
    Origin(Origin),
    /// 'R': describes a relation; sent before its first change and after every schema change.
    Relation(RelationBody),
    /// 'Y': describes a non-built-in data type used by a following Relation.
    Type(TypeBody),
    /// 'I': a row was inserted.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The new row.
        new: Vec<Datum>,
    },
    /// 'U': a row was updated.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old key ('K') or the whole old row ('O'), when the server sent one.
        old: Option<OldTuple>,
        /// The new row; unchanged TOASTed columns are [`Datum::Unchanged`].
        new: Vec<Datum>,
    },
    /// 'D': a row was deleted.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old key ('K') or the whole old row ('O').
        old: OldTuple,
    },
    /// 'T': one or more relations were truncated.
    Truncate {
        /// Relation OIDs, in the order the server sent them.
        relations: Vec<u32>,
        /// TRUNCATE ... CASCADE.
        cascade: bool,
        /// TRUNCATE ... RESTART IDENTITY.
        restart_identity: bool,
    },
    /// 'M': a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

/// Begin message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (the transaction's final LSN).
    pub final_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 UTC.
    pub commit_ts: i64,
    /// Transaction id.
    pub xid: u32,
}

/// Commit message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused by the protocol, always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit record: the position to confirm once this transaction is durable.
    pub end_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01 UTC.
    pub commit_ts: i64,
}

/// Origin message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// Replica identity setting of a relation (`pg_class.relreplident`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': primary key.
    Default,
    /// 'n': nothing; updates and deletes carry no old key.
    Nothing,
    /// 'f': every column.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

/// One column of a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key (flag bit 1).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID. For a user-defined type, walcast replaces it with the built-in type whose
    /// value rule converts the column (`source::TypeRules`) before the relation is used.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// Relation message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationBody {
    /// Relation OID.
    pub oid: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order (dropped columns are not sent).
    pub columns: Vec<Column>,
}

/// Type message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeBody {
    /// Type OID.
    pub oid: u32,
    /// Schema of the type.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// A logical decoding message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (delivered with it) or not (delivered at once).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Application prefix.
    pub prefix: String,
    /// Raw content.
    pub content: Bytes,
}

/// Whether an old tuple holds only the key columns or the whole row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldTupleKind {
    /// 'K': replica identity key columns only (others are Null).
    Key,
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// An old tuple in an Update or Delete.
#[derive(Clone, Debug, PartialEq)]
pub struct OldTuple {
    /// Key or full row.
    pub kind: OldTupleKind,
    /// Column values, one per relation column.
    pub values: Vec<Datum>,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    /// 'n': SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value the server did not send.
    Unchanged,
    /// 't': the value in the type's text output format (a slice of the received payload).
    Text(Bytes),
    /// 'b': the value in binary format (only with the `binary` option, which walcast does not use).
    Binary(Bytes),
}

/// Parse one pgoutput message. `payload` is the `XLogData` data; values borrow from it.
///
/// Column values ([`Datum::Text`], [`Datum::Binary`]) and [`LogicalMessage::content`] are
/// slices of `payload` (no copy). Every malformed input — truncation, negative or oversized
/// lengths, unknown kinds or flags, non-UTF-8 names, trailing bytes — is a [`DecodeError`];
/// announced counts are checked against the bytes actually present before anything is
/// allocated for them.
///
/// A Relation or Type message's empty namespace is reported as `"pg_catalog"`, which is what
/// the server means by it.
pub fn parse(payload: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = payload.first() else {
        return Err(DecodeError::Truncated { tag: '\0', offset: 0, needed: 1 });
    };
    let mut r = Reader { buf: payload, pos: 1, tag: tag as char };
    let msg = match tag {
        b'B' => Message::Begin(Begin { final_lsn: Lsn(r.u64()?), commit_ts: r.i64()?, xid: r.u32()? }),
        b'C' => Message::Commit(Commit { flags: r.u8()?, commit_lsn: Lsn(r.u64()?), end_lsn: Lsn(r.u64()?), commit_ts: r.i64()? }),
        b'O' => Message::Origin(Origin { commit_lsn: Lsn(r.u64()?), name: r.string()? }),
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type(TypeBody { oid: r.u32()?, namespace: r.namespace()?, name: r.string()? }),
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert { relation, new: r.tuple(payload)? },
                other => return Err(r.malformed_at(1, format!("expected 'N' before the new tuple, got {:?}", other as char))),
            }
        }
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
    if r.pos != payload.len() {
        return Err(r.malformed(format!("{} trailing bytes after the message", payload.len() - r.pos)));
    }
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

    /// TupleData: Int16 column count, then one kind byte (and maybe a value) per column.
    fn tuple(&mut self, payload: &Bytes) -> Result<Vec<Datum>, DecodeError> {
        let ncols = self.len_i16("column count")?;
        // Every column takes at least its kind byte, so this bounds the allocation.
        let mut values = Vec::with_capacity(ncols.min(self.remaining()));
        for _ in 0..ncols {
            let datum = match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => Datum::Text(self.value(payload)?),
                b'b' => Datum::Binary(self.value(payload)?),
                other => return Err(self.malformed_at(1, format!("unknown tuple column kind {:?}", other as char))),
            };
            values.push(datum);
        }
        Ok(values)
    }

    /// Int32 length + bytes, as a zero-copy slice of the payload.
    #[inline]
    fn value(&mut self, payload: &Bytes) -> Result<Bytes, DecodeError> {
        let len = self.len_i32("value length")?;
        let start = self.take(len)?;
        Ok(payload.slice(start..start + len))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::text;

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
        for (byte, ri) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
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
            new: vec![text("42"), Datum::Null, Datum::Unchanged, Datum::Binary(Bytes::from_static(&[0, 1])), text("")],
        };
        assert_eq!(ok(w), expect);
        assert_eq!(ok(W::new(b'I').i32(1).u8(b'N').i16(0)), Message::Insert { relation: 1, new: vec![] });
    }

    #[test]
    fn values_are_slices_of_the_payload() {
        let b = W::new(b'I').i32(1).u8(b'N').i16(1).text(b"hello").done();
        let Ok(Message::Insert { new, .. }) = parse(&b) else { panic!() };
        let Datum::Text(v) = &new[0] else { panic!() };
        assert_eq!(v.as_ptr(), b[b.len() - 5..].as_ptr());
    }

    #[test]
    fn update_variants() {
        let new = W::new(b'U').i32(9).u8(b'N').i16(1).text(b"x");
        assert_eq!(ok(new), Message::Update { relation: 9, old: None, new: vec![text("x")] });
        let key = W::new(b'U').i32(9).u8(b'K').i16(2).text(b"1").u8(b'n').u8(b'N').i16(2).text(b"1").u8(b'u');
        assert_eq!(
            ok(key),
            Message::Update {
                relation: 9,
                old: Some(OldTuple { kind: OldTupleKind::Key, values: vec![text("1"), Datum::Null] }),
                new: vec![text("1"), Datum::Unchanged],
            }
        );
        let full = W::new(b'U').i32(9).u8(b'O').i16(1).text(b"a").u8(b'N').i16(1).text(b"b");
        assert_eq!(
            ok(full),
            Message::Update {
                relation: 9,
                old: Some(OldTuple { kind: OldTupleKind::Full, values: vec![text("a")] }),
                new: vec![text("b")],
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
        assert_eq!(ok(key), Message::Delete { relation: 3, old: OldTuple { kind: OldTupleKind::Key, values: vec![text("7")] } });
        let full = W::new(b'D').i32(3).u8(b'O').i16(2).text(b"7").u8(b'n');
        assert_eq!(
            ok(full),
            Message::Delete { relation: 3, old: OldTuple { kind: OldTupleKind::Full, values: vec![text("7"), Datum::Null] } }
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
}
