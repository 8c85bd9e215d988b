//! The source: Postgres connections. A replication connection streams the slot; an ordinary SQL
//! connection runs preflight checks and slot/publication management.

mod catalog;
mod lease;
mod monitor;
mod preflight;
mod replication;
mod shards;
mod sql;
mod tls;
mod types;

pub(crate) use catalog::Catalog;
pub use lease::{lease_key, Lease, LeaseEnd};
pub use monitor::{heartbeat, monitor_slot};
pub use preflight::{preflight, Finding, Severity, SlotRecord};
pub use replication::{create_slot_exporting, ExportedSnapshot, ReplicationStream, SourceEvent, StreamSettings};
#[cfg(test)]
pub(crate) use sql::fake;
pub(crate) use sql::{classify, classify_query};
pub use sql::{
    connect_sql, connect_sql_bulk, create_slot, drop_slot, ensure_publication, publication_oid, published_tables, quote_ident, slot_info,
    unrecorded_slot, Published, SlotInfo, RESYNC_FIX,
};
pub use types::TypeRules;

use crate::config::{ConfigError, Secret, SourceConfig, SslMode};

/// Session settings pinned on walcast's connections so text values arrive in one known format
/// (the decoder's value rules assume these).
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,YMD -c intervalstyle=iso_8601 -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// Resolved connection parameters (the password already read from its source).
#[derive(Clone, Debug)]
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
    password: Option<Secret>,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA certificate for verify-ca / verify-full.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// `application_name`.
    pub application_name: String,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
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

/// Which command was running when Postgres answered with an error. One SQLSTATE means
/// different things at different steps: 42704 names the slot at START_REPLICATION and the
/// publication while streaming; 55000 while connecting is a database closed for maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connecting and authenticating (an SQL or a replication session).
    Connect,
    /// START_REPLICATION on the slot.
    StartReplication,
    /// Reading the replication stream.
    Streaming,
    /// Creating the replication slot.
    CreateSlot,
    /// Any other statement on an open session.
    Query,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Connect => "the connection",
            Step::StartReplication => "START_REPLICATION",
            Step::Streaming => "the replication stream",
            Step::CreateSlot => "creating the slot",
            Step::Query => "a query",
        })
    }
}

/// What can go wrong talking to Postgres. Whether the process retries, and with which exit code
/// it stops otherwise, is the error policy's decision (`is_retryable`, `action`).
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
    /// A state walcast knows passes (a slot creation waiting for old transactions, a slot still
    /// held by its exiting walsender).
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
    /// Postgres refused a command with an error walcast has no explanation of its own for: the
    /// error policy decides by its SQLSTATE (and step) whether a retry can help.
    #[error("postgres refused {step}: {message} (SQLSTATE {code})")]
    Server {
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// What was running.
        step: Step,
    },
    /// An answer walcast cannot use (not about the connection, not a server error).
    #[error("query failed: {0}")]
    Query(String),
    /// The stream carried bytes walcast cannot decode.
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
}

impl SourceError {
    pub(crate) fn setup(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        SourceError::Setup { problem: problem.into(), fix: fix.into() }
    }

    /// A server error (SQLSTATE `code`) at `step`, explained with its fix where walcast knows
    /// what it means; otherwise kept as [`SourceError::Server`] for the policy's SQLSTATE table.
    /// Decided by the code and the step, never by the message text. `user`: the role, for fixes.
    pub(crate) fn from_server(code: &str, message: &str, step: Step, user: &str) -> Self {
        let role = if user.is_empty() { "<source.user>".to_string() } else { quote_ident(user) };
        match (code, step) {
            // invalid_authorization_specification, invalid_password
            ("28000" | "28P01", _) => SourceError::setup(format!("postgres refused the login of role {user:?}: {message}"), AUTH_FIX),
            // invalid_catalog_name: the database does not exist
            ("3D000", _) => {
                SourceError::setup(message.to_string(), "check source.database (names are case-sensitive), or create the database")
            }
            // insufficient_privilege
            ("42501", _) => SourceError::setup(
                format!("permission denied: {message}"),
                format!("grant the role what walcast needs: ALTER ROLE {role} WITH REPLICATION; and SELECT on the published tables"),
            ),
            // undefined_object: START_REPLICATION names one object, the slot.
            ("42704", Step::StartReplication) => SourceError::setup(
                format!("the replication slot does not exist: {message}"),
                "set source.create_slot = true and start `walcast run` (it creates the slot and loads the existing rows), or `walcast slot create --no-snapshot --config FILE` (existing rows are not loaded)",
            ),
            // undefined_object while streaming: pgoutput looks the publication up.
            ("42704", Step::Streaming) => SourceError::setup(
                format!("the publication does not exist: {message}"),
                "create the publication (or set source.create_publication = true) and check source.tables",
            ),
            // configuration_limit_exceeded: no free slot or walsender
            ("53400", _) => SourceError::setup(
                message.to_string(),
                "raise max_replication_slots / max_wal_senders in postgresql.conf and restart Postgres, or drop unused slots",
            ),
            _ => SourceError::Server { code: code.to_string(), message: message.to_string(), step },
        }
    }
}

/// The fix for a login Postgres refused (either connection).
const AUTH_FIX: &str = "check source.user and the password (source.password_env / source.password_file), and that pg_hba.conf lets this role into source.database from this address with a method walcast speaks (trust, password, md5, scram-sha-256; walcast's replication connection is a logical one: it matches the same lines as an SQL session, never the `replication` lines, which are for physical replication)";

/// The first error of type `T` in `error`'s chain. An `io::Error`'s `source()` skips the error it
/// wraps (a TLS handshake's `rustls::Error`), so wrapped errors are looked into as well.
pub(crate) fn find_cause<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        let wrapped = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if let Some(found) = wrapped.and_then(|inner| find_cause::<T>(inner)) {
            return Some(found);
        }
        next = e.source();
    }
    None
}
