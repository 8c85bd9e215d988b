//! The relation cache: what each relation OID looks like on this connection right now.

use std::collections::HashMap;
use std::sync::Arc;

use super::pgoutput::{Column, RelationBody, ReplicaIdentity, TypeBody};
use super::DecodeError;

/// A relation as last described by the server. Shared by every change decoded against it, so a
/// schema change mid-stream affects only changes after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`, for logs and errors.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Indexes of the replica identity key columns.
    pub fn key_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i)
    }
}

/// Relation and type descriptions received on one replication connection. Postgres sends each
/// again on a new connection, so a reconnect starts with an empty cache.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeBody>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record (or replace, after ALTER TABLE) a relation description.
    pub fn apply_relation(&mut self, body: RelationBody) -> Arc<Relation> {
        let rel = Arc::new(Relation {
            oid: body.oid,
            schema: body.namespace,
            table: body.name,
            replica_identity: body.replica_identity,
            columns: body.columns,
        });
        self.relations.insert(rel.oid, Arc::clone(&rel));
        rel
    }

    /// Record a type description.
    pub fn apply_type(&mut self, body: TypeBody) {
        self.types.insert(body.oid, body);
    }

    /// The current description of a relation.
    pub fn get(&self, oid: u32) -> Result<&Arc<Relation>, DecodeError> {
        self.relations.get(&oid).ok_or(DecodeError::UnknownRelation(oid))
    }

    /// A non-built-in type's name, when a Type message described it.
    pub fn type_name(&self, oid: u32) -> Option<&TypeBody> {
        self.types.get(&oid)
    }

    /// Forget everything (on reconnect).
    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
    }
}
