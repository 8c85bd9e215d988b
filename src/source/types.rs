//! Columns of user-defined types (enums, domains, composites, their arrays, extension types):
//! which built-in type's value rule converts them (`decode::value_rule`). pgoutput's Relation
//! and Type messages carry a type's OID and name but not what it is made of, so that is read
//! from `pg_type` on an SQL connection, once per type and connection, never per change.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::decode::{value_rule, Column, UserType, FIRST_USER_OID};

/// Domains over arrays of domains ...: each round of lookups reads one level deeper.
const MAX_ROUNDS: usize = 8;

/// What `pg_type` said about the user-defined types met on one connection (`None`: no such
/// type any more).
#[derive(Debug, Default)]
pub struct TypeRules {
    types: HashMap<u32, Option<UserType>>,
}

impl TypeRules {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a column has a user-defined type (only then does [`resolve`](Self::resolve)
    /// have anything to do).
    pub fn needed(columns: &[Column]) -> bool {
        columns.iter().any(|c| c.type_oid >= FIRST_USER_OID)
    }

    /// Give each column of a user-defined type the OID of the built-in type whose value rule
    /// applies (an enum array becomes `text[]`, a domain over int4 `int4`, ...), reading from
    /// `pg_type` the types not seen before and what they are made of.
    pub async fn resolve(&mut self, client: &Client, columns: &mut [Column]) -> Result<(), tokio_postgres::Error> {
        let mut want: Vec<u32> = columns.iter().map(|c| c.type_oid).filter(|&oid| self.unknown(oid)).collect();
        for _ in 0..MAX_ROUNDS {
            want.sort_unstable();
            want.dedup();
            if want.is_empty() {
                break;
            }
            let rows = client
                .query(
                    "SELECT oid, typtype, typcategory, typelem, typbasetype, typdelim FROM pg_catalog.pg_type WHERE oid = ANY($1)",
                    &[&want],
                )
                .await?;
            for &oid in &want {
                self.types.insert(oid, None);
            }
            let mut next = Vec::new();
            for row in rows {
                // "char" columns arrive as i8; the values are ASCII letters.
                let t = UserType {
                    typtype: row.get::<_, i8>(1) as u8,
                    category: row.get::<_, i8>(2) as u8,
                    elem: row.get(3),
                    base: row.get(4),
                    delim: row.get::<_, i8>(5) as u8,
                };
                self.types.insert(row.get(0), Some(t));
                next.extend([t.elem, t.base].into_iter().filter(|&oid| self.unknown(oid)));
            }
            want = next;
        }
        for col in columns.iter_mut().filter(|c| c.type_oid >= FIRST_USER_OID) {
            let rule = value_rule(col.type_oid, &|oid| self.types.get(&oid).copied().flatten());
            tracing::debug!(column = %col.name, type_oid = col.type_oid, rule, "user-defined type takes a built-in value rule");
            col.type_oid = rule;
        }
        Ok(())
    }

    fn unknown(&self, oid: u32) -> bool {
        oid >= FIRST_USER_OID && !self.types.contains_key(&oid)
    }
}
