//! Catalog lookups the stream needs on a Relation message, over one SQL connection opened on
//! first use: the primary key of a REPLICA IDENTITY FULL table, and the value rules of
//! user-defined column types.

use tokio_postgres::Client;

use super::{classify, connect_sql, ConnParams, SourceError, TypeRules};
use crate::decode::{RelationBody, ReplicaIdentity};

/// The lazily opened catalog connection of a streaming session, and what it learned.
pub(crate) struct Catalog {
    params: ConnParams,
    client: Option<Client>,
    /// User-defined column types seen on this replication connection.
    type_rules: TypeRules,
}

impl Catalog {
    /// Nothing opened yet.
    pub(crate) fn new(params: ConnParams) -> Self {
        Self { params, client: None, type_rules: TypeRules::new() }
    }

    /// A new replication connection: types are looked up again (they may have changed).
    pub(crate) fn forget_types(&mut self) {
        self.type_rules = TypeRules::new();
    }

    /// Complete a Relation message before it is cached: the primary key for REPLICA IDENTITY
    /// FULL, built-in value rules for user-defined types. A failed lookup is a lost connection
    /// (retryable), never a guess.
    pub(crate) async fn describe(&mut self, body: &mut RelationBody) -> Result<(), SourceError> {
        if body.replica_identity == ReplicaIdentity::Full {
            self.key_by_primary_key(body).await?;
        }
        if TypeRules::needed(&body.columns) {
            self.resolve_types(body).await?;
        }
        Ok(())
    }

    /// With REPLICA IDENTITY FULL, Postgres flags every column as key, which would make each
    /// version of a row a different key (and break per-key ordering downstream). Flag the
    /// table's primary key instead, looked up once per Relation message. Without a primary key
    /// the flags stay as sent. A lookup that fails is a lost connection, never "no primary key":
    /// keying by every column would silently change Kafka keys and Elasticsearch ids, so the
    /// session is ended and the server sends the Relation message again on reconnect.
    async fn key_by_primary_key(&mut self, body: &mut RelationBody) -> Result<(), SourceError> {
        let table = format!("{}.{}", body.namespace, body.name);
        let lost = |params: &ConnParams, error: &dyn std::fmt::Display| SourceError::Connection {
            target: params.display(),
            reason: format!("cannot look up the primary key of {table}: {error}"),
        };
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            self.client = Some(connect_sql(&self.params).await.map_err(|error| lost(&self.params, &error))?);
        }
        let Some(client) = &self.client else { return Ok(()) };
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::oid AND i.indisprimary",
                &[&body.oid],
            )
            .await;
        match rows {
            Ok(rows) => {
                if !rows.is_empty() {
                    let pk: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    for col in &mut body.columns {
                        col.key = pk.contains(&col.name);
                    }
                }
                Ok(())
            }
            Err(error) => {
                // Whatever broke, the next lookup starts from a new connection.
                self.client = None;
                Err(lost(&self.params, &error))
            }
        }
    }

    /// Columns of user-defined types take a built-in type's value rule (`TypeRules`). A failed
    /// lookup ends the session (a retryable one reconnects and looks up again): guessing would
    /// write such values in another shape.
    async fn resolve_types(&mut self, body: &mut RelationBody) -> Result<(), SourceError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect_sql(&self.params).await?);
        }
        let Some(client) = &self.client else { return Ok(()) };
        self.type_rules.resolve(client, &mut body.columns).await.map_err(|e| classify(&e, &self.params))
    }
}
