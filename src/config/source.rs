//! `[source]`: the Postgres database, its slot and publication, and the connection settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{default_true, read_secret, ConfigError, Secret, TableSelector};

/// TLS mode for both the SQL and the replication connection (libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS, without verifying the server certificate.
    Require,
    /// TLS, verifying the certificate chain but not the host name.
    VerifyCa,
    /// TLS, verifying the chain and that the certificate names the host.
    VerifyFull,
}

/// Connection and replication settings. `Debug` shows where the password comes from, never the
/// password: it is read only by [`SourceConfig::password`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Host name or IP address of the Postgres server (a path starting with `/` is a socket directory).
    pub host: String,
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database to stream from (logical slots belong to one database).
    pub database: String,
    /// Role to connect as; needs REPLICATION (or superuser) and SELECT on the published tables.
    pub user: String,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS mode: `disable`, `require`, `verify-ca`, `verify-full`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate file (PEM) for `verify-ca` / `verify-full`; system roots are not used.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Logical replication slot walcast reads from.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication that selects the streamed tables.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the slot when it does not exist (otherwise a missing slot stops walcast).
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create the publication when it does not exist (otherwise a missing one stops walcast).
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// Tables to stream: `schema.table`, or `schema.*` for every table of a schema. Used to
    /// create the publication and by `walcast check`; an existing publication is not altered.
    #[serde(default, deserialize_with = "table_selectors")]
    pub tables: Vec<TableSelector>,
    /// `application_name` of walcast's connections.
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Milliseconds between standby status updates, at least: a confirmed position that moved
    /// is sent at most this long after the last update (raises in between coalesce into one).
    /// While messages arrive the replication client also sends one every this many milliseconds
    /// whether or not the position moved; an idle stream sends one only when the position
    /// moves, every 10 s, and when the server asks (keepalive reply).
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Milliseconds to wait for a connection before treating the server as unreachable.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl SourceConfig {
    /// Default Postgres port.
    pub const DEFAULT_PORT: u16 = 5432;
    /// Default replication slot name.
    pub const DEFAULT_SLOT: &str = "walcast";
    /// Default publication name.
    pub const DEFAULT_PUBLICATION: &str = "walcast";
    /// Default `application_name` shown in `pg_stat_activity` / `pg_stat_replication`.
    pub const DEFAULT_APPLICATION_NAME: &str = "walcast";
    /// Default interval between standby status updates: 25 ms. A commit is confirmed to the
    /// slot within about this long after every sink made it durable (commit -> confirmed p50
    /// under 50 ms, p99 under 150 ms), while the updates stay at most 40 small messages a second
    /// under load (the walsender handles each in microseconds) and none on an idle stream but
    /// the 10 s wakeup and keepalive replies. Lower confirms sooner at more messages; 1000 is
    /// pg_recvlogical's `-s 1`.
    pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 25;
    /// Default connect timeout for the SQL connection.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

    /// The password, read from the environment variable or file named in the config.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret("source.password", self.password_env.as_deref(), self.password_file.as_deref())
    }

    /// Standby status update interval.
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The `tables` entries (parsed when the config was read).
    pub fn table_selectors(&self) -> Vec<TableSelector> {
        self.tables.clone()
    }

    /// Check every value; the error names the first bad field.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::invalid("source.host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(ConfigError::invalid("source.port", "must be between 1 and 65535"));
        }
        if self.database.trim().is_empty() {
            return Err(ConfigError::invalid("source.database", "must not be empty"));
        }
        if self.user.trim().is_empty() {
            return Err(ConfigError::invalid("source.user", "must not be empty"));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err(ConfigError::invalid("source.password_file", "set either password_env or password_file, not both"));
        }
        validate_identifier("source.slot", &self.slot, true)?;
        validate_identifier("source.publication", &self.publication, false)?;
        if matches!(self.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && self.sslrootcert.is_none() {
            return Err(ConfigError::invalid("source.sslrootcert", "verify-ca and verify-full need the CA certificate file of the server"));
        }
        if self.sslmode == SslMode::VerifyFull && self.host.parse::<std::net::IpAddr>().is_ok() {
            return Err(ConfigError::invalid(
                "source.host",
                "verify-full checks the host name in the server certificate: use the DNS name the certificate was issued for, not an IP address (or use verify-ca)",
            ));
        }
        if self.status_interval_ms == 0 || self.status_interval_ms > 30_000 {
            return Err(ConfigError::invalid(
                "source.status_interval_ms",
                "must be between 1 and 30000 (the server drops a silent client after wal_sender_timeout, 60 s by default)",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid("source.connect_timeout_ms", "must be positive"));
        }
        Ok(())
    }
}

/// `source.tables`, each entry parsed; the error names the entry (`source.tables[1]`).
fn table_selectors<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TableSelector>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    let parsed = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| TableSelector::parse(entry).map_err(|reason| D::Error::custom(format!("`source.tables[{i}]`: {reason}"))));
    parsed.collect()
}

/// Slot names are restricted by Postgres to lower-case letters, digits and underscores; other
/// identifiers only need to be non-empty and short enough.
fn validate_identifier(field: &str, value: &str, slot_rules: bool) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 63 {
        return Err(ConfigError::invalid(field, "must be 1 to 63 characters"));
    }
    if slot_rules && !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(ConfigError::invalid(
            field,
            "may contain only lower-case letters, digits and underscores (a Postgres rule for slot names)",
        ));
    }
    if value.contains('\'') || value.contains('"') || value.contains('\0') {
        return Err(ConfigError::invalid(field, "must not contain quotes"));
    }
    Ok(())
}

fn default_port() -> u16 {
    SourceConfig::DEFAULT_PORT
}
fn default_slot() -> String {
    SourceConfig::DEFAULT_SLOT.to_string()
}
fn default_publication() -> String {
    SourceConfig::DEFAULT_PUBLICATION.to_string()
}
fn default_application_name() -> String {
    SourceConfig::DEFAULT_APPLICATION_NAME.to_string()
}
fn default_status_interval_ms() -> u64 {
    SourceConfig::DEFAULT_STATUS_INTERVAL_MS
}
fn default_connect_timeout_ms() -> u64 {
    SourceConfig::DEFAULT_CONNECT_TIMEOUT_MS
}
