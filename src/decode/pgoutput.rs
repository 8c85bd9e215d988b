//! The pgoutput protocol-1 message set, parsed from an `XLogData` payload.

use bytes::Bytes;

use super::tuple::Tuple;
use crate::lsn::Lsn;

mod parse;
#[cfg(test)]
mod tests;

pub use parse::parse;

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
        new: Tuple,
    },
    /// 'U': a row was updated.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old key ('K') or the whole old row ('O'), when the server sent one.
        old: Option<OldTuple>,
        /// The new row; unchanged TOASTed columns are [`Datum::Unchanged`](super::Datum::Unchanged).
        new: Tuple,
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
    pub values: Tuple,
}
