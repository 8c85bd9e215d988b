//! The relation cache: what each relation OID looks like on this connection right now.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

/// What a new description of a relation changed in its columns (for the schema-change log line).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ColumnChanges {
    /// Columns only in the new description.
    pub added: Vec<String>,
    /// Columns only in the old description.
    pub removed: Vec<String>,
    /// Columns of both whose type or type modifier changed: `name: type OLD -> NEW` (type OIDs,
    /// the modifier in parentheses when there is one).
    pub retyped: Vec<String>,
}

impl ColumnChanges {
    /// No column was added, removed or retyped (the server also describes a relation again
    /// after changes that leave its columns alone).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.retyped.is_empty()
    }
}

impl Relation {
    /// The column changes from `self` (the cached description) to `new`, matched by name.
    pub fn column_changes(&self, new: &Relation) -> ColumnChanges {
        let find = |cols: &[Column], name: &str| cols.iter().find(|c| c.name == name).map(|c| (c.type_oid, c.type_modifier));
        let typ = |(oid, modifier): (u32, i32)| if modifier == -1 { oid.to_string() } else { format!("{oid}({modifier})") };
        let mut changes = ColumnChanges::default();
        for c in &new.columns {
            match find(&self.columns, &c.name) {
                None => changes.added.push(c.name.clone()),
                Some(old) if old != (c.type_oid, c.type_modifier) => {
                    changes.retyped.push(format!("{}: type {} -> {}", c.name, typ(old), typ((c.type_oid, c.type_modifier))))
                }
                Some(_) => {}
            }
        }
        changes.removed = self.columns.iter().filter(|c| find(&new.columns, &c.name).is_none()).map(|c| c.name.clone()).collect();
        changes
    }
}

/// Relation and type descriptions received on one replication connection. Postgres sends each
/// again on a new connection, so a reconnect starts with an empty cache.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>, OidHash>,
    types: HashMap<u32, TypeBody, OidHash>,
}

/// Hashes OID keys with one multiply instead of SipHash: every change looks its relation up,
/// and the keys are the server's own OIDs, not input chosen to collide.
type OidHash = BuildHasherDefault<OidHasher>;

/// See [`OidHash`].
#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    #[inline]
    fn write_u32(&mut self, oid: u32) {
        // Fibonacci hashing; the high half folded down, since the table takes its bucket from
        // the low bits and its tag from the high ones.
        let h = (self.0 ^ u64::from(oid)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(columns: &[(&str, u32, i32)]) -> Relation {
        Relation {
            oid: 1,
            schema: "public".into(),
            table: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|&(name, type_oid, type_modifier)| Column { key: name == "id", name: name.into(), type_oid, type_modifier })
                .collect(),
        }
    }

    #[test]
    fn every_cached_relation_and_type_is_found_by_its_oid() {
        let mut cache = RelationCache::new();
        let oids: Vec<u32> = (16_384..17_384).chain((0..64).map(|i| 1 << (i % 32) | i)).chain([0, u32::MAX]).collect();
        for &oid in &oids {
            let body = RelationBody {
                oid,
                namespace: "s".into(),
                name: format!("t{oid}"),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![],
            };
            cache.apply_relation(body);
            cache.apply_type(TypeBody { oid, namespace: "s".into(), name: format!("y{oid}") });
        }
        for &oid in &oids {
            assert_eq!(cache.get(oid).map(|r| r.table.clone()).ok(), Some(format!("t{oid}")));
            assert_eq!(cache.type_name(oid).map(|t| t.name.clone()), Some(format!("y{oid}")));
        }
        assert!(cache.get(17_384).is_err());
        cache.clear();
        assert!(cache.get(16_384).is_err());
    }

    #[test]
    fn column_changes_name_added_removed_and_retyped_columns() {
        let old = relation(&[("id", 23, -1), ("gone", 25, -1), ("price", 23, -1), ("code", 1043, 14), ("same", 25, -1)]);
        let new = relation(&[("id", 23, -1), ("price", 1700, -1), ("code", 1043, 24), ("same", 25, -1), ("fresh", 16, -1)]);
        let changes = old.column_changes(&new);
        assert_eq!(
            changes,
            ColumnChanges {
                added: vec!["fresh".into()],
                removed: vec!["gone".into()],
                retyped: vec!["price: type 23 -> 1700".into(), "code: type 1043(14) -> 1043(24)".into()],
            }
        );
        assert!(!changes.is_empty());
        // Described again with the same columns (e.g. after an index change): nothing to report.
        assert!(old
            .column_changes(&relation(&[("id", 23, -1), ("gone", 25, -1), ("price", 23, -1), ("code", 1043, 14), ("same", 25, -1)]))
            .is_empty());
    }
}
