//! Test fixtures for code that consumes decoded changes: text values, relations and changes
//! built by hand (tests override the fields they assert on with struct update syntax).

use std::sync::Arc;

use super::{Change, Column, Datum, OldTuple, Op, Relation, ReplicaIdentity, TruncateOptions, Tuple};
use crate::lsn::Lsn;

/// A text value, as pgoutput sends it.
pub(crate) fn text(s: &str) -> Datum<'_> {
    Datum::Text(s.as_bytes())
}

/// Relation OID 16384 `schema.table` with `columns` as `(name, is key, type OID)`.
pub(crate) fn relation(schema: &str, table: &str, identity: ReplicaIdentity, columns: &[(&str, bool, u32)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16_384,
        schema: schema.into(),
        table: table.into(),
        replica_identity: identity,
        columns: columns.iter().map(|&(name, key, type_oid)| Column { key, name: name.into(), type_oid, type_modifier: -1 }).collect(),
    })
}

/// A change of `relation`: LSN 0/10, commit LSN 1/20, xid 7, commit time 0, position 0.
pub(crate) fn change(relation: Arc<Relation>, op: Op, old: Option<OldTuple>, new: Option<Tuple>) -> Change {
    Change {
        lsn: Lsn(0x10),
        commit_lsn: Lsn(0x1_0000_0020),
        xid: 7,
        commit_ts: 0,
        seq: 0,
        relation,
        op,
        old,
        new,
        truncate: TruncateOptions::default(),
    }
}
