//! The source: Postgres connections. A replication connection streams the slot; an ordinary SQL
//! connection runs preflight checks and slot/publication management.

mod catalog;
mod lease;
mod monitor;
mod preflight;
mod replication;
mod sql;
mod tls;
mod types;

pub(crate) use catalog::Catalog;
pub use lease::{lease_key, Lease, LeaseEnd};
pub use monitor::{heartbeat, monitor_slot};
pub use preflight::{preflight, Finding, Severity};
pub use replication::{create_slot_exporting, ExportedSnapshot, ReplicationStream, SourceEvent, StreamSettings};
pub(crate) use sql::classify;
pub use sql::{
    connect_sql, create_slot, drop_slot, ensure_publication, publication_oid, published_tables, quote_ident, slot_info, Published,
    SlotInfo, RESYNC_FIX,
};
pub use types::TypeRules;

use crate::config::{ConfigError, SourceConfig, SslMode};

/// Session settings pinned on walcast's connections so text values arrive in one known format
/// (the decoder's value rules assume these).
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,YMD -c intervalstyle=iso_8601 -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// Resolved connection parameters (the password already read from its source).
#[derive(Clone)]
pub struct ConnParams {
    /// Host or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// Role.
    pub user: String,
    /// Password, if any. Never logged.
    password: Option<String>,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA certificate for verify-ca / verify-full.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// `application_name`.
    pub application_name: String,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ConnParams {
    /// Parameters from the `[source]` section, reading the password from the environment or file.
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, ConfigError> {
        if cfg.sslmode != SslMode::Disable {
            // Fail at startup, naming the field, rather than at the first connection.
            tls::client_config(cfg.sslmode, cfg.sslrootcert.as_deref())
                .map_err(|reason| ConfigError::Invalid { field: "source.sslrootcert".into(), reason })?;
        }
        Ok(Self {
            host: cfg.host.clone(),
            port: cfg.port,
            database: cfg.database.clone(),
            user: cfg.user.clone(),
            password: cfg.password()?,
            sslmode: cfg.sslmode,
            sslrootcert: cfg.sslrootcert.clone(),
            application_name: cfg.application_name.clone(),
            connect_timeout: cfg.connect_timeout(),
        })
    }

    /// `host:port/database` for logs (no credentials).
    pub fn display(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

/// What can go wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached or the connection dropped.
    #[error("connection to {target} lost or refused: {reason}")]
    Connection {
        /// `host:port/database`.
        target: String,
        /// Underlying error text.
        reason: String,
    },
    /// Postgres answered with an error that a retry may clear (server shutting down, slot briefly
    /// held by a walsender that is exiting, serialization failure, ...).
    #[error("postgres error (will retry): {0}")]
    Transient(String),
    /// A problem with the setup that retrying cannot fix; the message says how to fix it.
    #[error("{problem}\n  fix: {fix}")]
    Setup {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// A query failed in a way that is not about the connection.
    #[error("query failed: {0}")]
    Query(String),
    /// The stream carried bytes walcast cannot decode.
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
}

impl SourceError {
    /// Connection problems and transient server states are retried; setup problems are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Connection { .. } | SourceError::Transient(_) => true,
            SourceError::Setup { .. } | SourceError::Query(_) => false,
            SourceError::Decode(e) => e.is_retryable(),
        }
    }

    pub(crate) fn setup(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        SourceError::Setup { problem: problem.into(), fix: fix.into() }
    }

    /// Classify a server error by its SQLSTATE (`code`) and message.
    pub(crate) fn from_server(code: Option<&str>, message: &str, params: &ConnParams, slot: &str) -> Self {
        let code = code.unwrap_or("");
        match code {
            // invalid_authorization_specification, invalid_password
            "28000" | "28P01" => SourceError::setup(
                format!("postgres refused the login of role {:?}: {message}", params.user),
                "check source.user and the password (source.password_env / source.password_file), and that pg_hba.conf lets this role into source.database from this address (walcast's replication connection is a logical one: it matches the same lines as an SQL session, never the `replication` lines, which are for physical replication)",
            ),
            // invalid_catalog_name: the database does not exist
            "3D000" => SourceError::setup(message.to_string(), "check source.database (names are case-sensitive), or create the database"),
            // insufficient_privilege
            "42501" => SourceError::setup(
                format!("permission denied: {message}"),
                format!("grant the role what walcast needs: ALTER ROLE {} WITH REPLICATION; and SELECT on the published tables", quote_ident(&params.user)),
            ),
            // undefined_object: slot or publication missing
            "42704" if message.contains("replication slot") => SourceError::setup(
                format!("replication slot {slot:?} does not exist: {message}"),
                "create it with `walcast slot create --config FILE`, or set source.create_slot = true",
            ),
            "42704" => SourceError::setup(
                message.to_string(),
                "create the publication (or set source.create_publication = true) and check source.tables",
            ),
            // invalid_database_definition etc. from a wrong wal_level
            "55000" if message.contains("wal_level") => SourceError::setup(
                message.to_string(),
                "set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart Postgres",
            ),
            // ALTER DATABASE ... ALLOW_CONNECTIONS false, for maintenance: it passes.
            "55000" if message.contains("not currently accepting connections") => {
                SourceError::Transient(format!("{message} (waiting for ALLOW_CONNECTIONS true)"))
            }
            // object_in_use: another walsender holds the slot (maybe the one of a dead connection)
            "55006" => SourceError::Transient(format!("{message} (another process is streaming this slot)")),
            // too_many_connections, admin/crash shutdown, cannot_connect_now, connection exceptions
            c if c == "53300" || c.starts_with("57P") || c.starts_with("08") || c == "40001" || c == "40P01" => {
                SourceError::Transient(message.to_string())
            }
            "53400" => SourceError::setup(
                message.to_string(),
                "raise max_replication_slots / max_wal_senders in postgresql.conf and restart Postgres, or drop unused slots",
            ),
            _ => SourceError::Query(if code.is_empty() { message.to_string() } else { format!("{message} (SQLSTATE {code})") }),
        }
    }
}
