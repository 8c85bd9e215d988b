//! pgoutput (protocol version 1) decoding: wire messages, the relation cache, and text values -> JSON.
//!
//! Column values are not copied one by one: a [`Tuple`] holds its row's bytes once (a small row
//! copied out of the `XLogData` payload, a large one sharing it) and where each value lies in
//! them, so nothing is allocated per value until a sink renders it.

pub(crate) mod binary;
mod change;
#[cfg(test)]
pub(crate) mod fixtures;
mod message;
mod pgoutput;
#[cfg(test)]
mod proptests;
mod relation;
mod tuple;
mod value;

pub use binary::write_json_binary;
pub(crate) use change::{civil_from_days, write_json_str, write_row_object, UnchangedToast, UNIX_TO_PG_DAYS};
pub use change::{Change, Op, TruncateOptions};
pub use message::{now_pg_micros, MessageEvent, HEARTBEAT_PREFIX};
pub use pgoutput::{
    parse, Begin, Column, Commit, LogicalMessage, Message, OldTuple, OldTupleKind, Origin, RelationBody, ReplicaIdentity, TypeBody,
};
pub use relation::{ColumnChanges, Relation, RelationCache};
pub use tuple::{Datum, Iter as TupleIter, Slot, Tuple};
pub(crate) use value::array_element;
pub use value::{to_json_value, value_rule, write_json_value, UserType, FIRST_USER_OID};

/// What can go wrong while decoding. The same bytes decode the same way; only a change for a
/// relation not yet described is cured by reading the stream again (see the error policy).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field it announces.
    #[error("pgoutput message {tag:?} truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Message tag byte, as a char.
        tag: char,
        /// Offset in the message where the read started.
        offset: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// An unknown message tag (not part of protocol version 1).
    #[error("unknown pgoutput message tag {0:?}: walcast speaks pgoutput proto_version 1")]
    UnknownTag(u8),
    /// A field held a value the protocol does not allow.
    #[error("malformed pgoutput message {tag:?}: {reason}")]
    Malformed {
        /// Message tag byte, as a char.
        tag: char,
        /// What was wrong.
        reason: String,
    },
    /// A change referred to a relation OID no Relation message has described on this connection.
    #[error("change for relation oid {0} arrived before its Relation message; the stream is out of sync, reconnect")]
    UnknownRelation(u32),
    /// A tuple has a different number of columns than its relation.
    #[error("relation {relation} has {expected} columns but a tuple carried {got}")]
    ColumnCount {
        /// Qualified relation name.
        relation: String,
        /// Columns in the cached relation.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// A text value was not valid for its type (or not UTF-8).
    #[error("value of type oid {type_oid} is not valid: {reason}")]
    Value {
        /// The column's type OID.
        type_oid: u32,
        /// What was wrong.
        reason: String,
    },
}
