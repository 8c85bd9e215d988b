//! The configuration file: serde structs, defaults, and validation that names the offending field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// Elasticsearch sink settings (issue 3) live in their own file: src/config/elasticsearch.rs.
mod document;
mod elasticsearch;
pub use document::*;
pub use elasticsearch::*;

/// Default Postgres port.
pub const DEFAULT_PORT: u16 = 5432;
/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "walcast";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "walcast";
/// Default `application_name` shown in `pg_stat_activity` / `pg_stat_replication`.
pub const DEFAULT_APPLICATION_NAME: &str = "walcast";
/// Default interval between standby status updates while progress is made.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
/// Default connect timeout for the SQL connection.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default largest number of changes handed to the sinks in one batch.
pub const DEFAULT_BATCH_MAX_CHANGES: usize = 4_096;
/// Default number of batches that may wait for each sink (bounds memory).
pub const DEFAULT_SINK_QUEUE_BATCHES: usize = 4;
/// Default number of replication events buffered between the socket reader and the decoder.
pub const DEFAULT_SOURCE_BUFFER_EVENTS: usize = 8_192;
/// Default time a shutdown waits for the sinks to finish before giving up on the rest.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
/// Default first retry delay.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 200;
/// Default longest retry delay.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// Default JSON-lines destination (`-` is standard output).
pub const DEFAULT_JSONL_PATH: &str = "-";

/// A configuration problem, naming the field (dotted path) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown field, wrong type, ...).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message; it names the field and line.
        message: String,
    },
    /// A field has a value walcast cannot use.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `source.port`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl ConfigError {
    /// Config errors never fix themselves.
    pub fn is_retryable(&self) -> bool {
        false
    }

    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.to_string(), reason: reason.into() }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Postgres database to stream from.
    pub source: SourceConfig,
    /// Batching and memory bounds between decode and the sinks.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Retry policy for retryable errors (connection lost, sink unavailable).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Where changes go. At least one sink must be configured.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Periodic heartbeat written into the WAL so a quiet slot keeps advancing.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// High availability: stream only while holding a lease (src/source/lease.rs).
    #[serde(default)]
    pub ha: HaConfig,
    /// Loading existing rows before streaming (`[snapshot]`).
    #[serde(default)]
    pub snapshot: SnapshotConfig,
}

/// High-availability settings (`[ha]`). With `enabled`, several walcast processes may run with
/// the same slot: the one holding a Postgres advisory-lock lease streams, the others wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Take the lease before streaming. Default false: a single process needs no lease.
    #[serde(default)]
    pub enabled: bool,
    /// Milliseconds between attempts to take the lease (standby), and between checks that the
    /// lease connection is alive (active). Default 1000.
    #[serde(default = "default_ha_poll_ms")]
    pub poll_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self { enabled: false, poll_ms: DEFAULT_HA_POLL_MS }
    }
}

/// Default interval between lease attempts and lease checks.
pub const DEFAULT_HA_POLL_MS: u64 = 1_000;

fn default_ha_poll_ms() -> u64 {
    DEFAULT_HA_POLL_MS
}

/// The HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the endpoint at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on. Loopback by default: expose it on purpose, not by accident.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// Milliseconds between reads of pg_replication_slots (retained WAL, wal_status, server WAL
    /// position) on a side connection.
    #[serde(default = "default_slot_poll_ms")]
    pub slot_poll_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: default_metrics_listen(), slot_poll_ms: default_slot_poll_ms() }
    }
}

/// How the heartbeat is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatMode {
    /// `pg_logical_emit_message(true, 'walcast.heartbeat', ...)`: no table needed.
    #[default]
    Message,
    /// An UPDATE of a one-row table (which must be in the publication), for setups that
    /// want the heartbeat visible in the sinks.
    Table,
}

/// Heartbeat settings. With a heartbeat, a slot whose tables are quiet still advances while the
/// rest of the database writes, so it does not hold WAL back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Milliseconds between heartbeats; 0 (default) turns it off.
    #[serde(default)]
    pub interval_ms: u64,
    /// `message` (default) or `table`.
    #[serde(default)]
    pub mode: HeartbeatMode,
    /// For `table` mode: the table (`schema.table`), created when missing, one row with id 1.
    #[serde(default = "default_heartbeat_table")]
    pub table: String,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_ms: 0, mode: HeartbeatMode::Message, table: default_heartbeat_table() }
    }
}

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

/// Connection and replication settings.
#[derive(Clone, Deserialize)]
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
    #[serde(default)]
    pub tables: Vec<String>,
    /// `application_name` of walcast's connections.
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Milliseconds between standby status updates while the confirmed position moves.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Milliseconds to wait for a connection before treating the server as unreachable.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

// Hand-written so the resolved password can never reach a log line through `{:?}`.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("sslmode", &self.sslmode)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// Batching and bounded-memory settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Largest number of changes in one batch. A batch is handed over as soon as nothing more
    /// is ready to read, so this only bounds batches under load; it never adds latency.
    #[serde(default = "default_batch_max_changes")]
    pub batch_max_changes: usize,
    /// Batches that may queue for each sink before reading slows down (backpressure).
    #[serde(default = "default_sink_queue_batches")]
    pub sink_queue_batches: usize,
    /// Replication events buffered between the socket reader and the decoder.
    #[serde(default = "default_source_buffer_events")]
    pub source_buffer_events: usize,
    /// Milliseconds a shutdown (SIGINT/SIGTERM) waits for the sinks to make what was read durable.
    /// What is not durable by then is not confirmed and is streamed again on the next start.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max_changes: DEFAULT_BATCH_MAX_CHANGES,
            sink_queue_batches: DEFAULT_SINK_QUEUE_BATCHES,
            source_buffer_events: DEFAULT_SOURCE_BUFFER_EVENTS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
        }
    }
}

/// Exponential backoff with jitter for retryable errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay, in milliseconds.
    #[serde(default = "default_retry_initial_ms")]
    pub initial_ms: u64,
    /// Largest delay, in milliseconds. Retries go on forever.
    #[serde(default = "default_retry_max_ms")]
    pub max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { initial_ms: DEFAULT_RETRY_INITIAL_MS, max_ms: DEFAULT_RETRY_MAX_MS }
    }
}

/// The configured sinks.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// JSON lines, one change per line (stdout or a file).
    #[serde(default)]
    pub jsonl: Option<JsonlSinkConfig>,
    /// Kafka: Debezium-compatible change events, one topic per table (docs/kafka.md).
    #[serde(default)]
    pub kafka: Option<KafkaSinkConfig>,
    /// Elasticsearch: documents kept in step with tables (docs/elasticsearch.md).
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchSinkConfig>,
}

/// JSON-lines sink settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// `-` for standard output, otherwise a file appended to (and fsynced before a batch counts
    /// as durable).
    #[serde(default = "default_jsonl_path")]
    pub path: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings (logs go to standard error; `RUST_LOG` overrides the level).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Level filter, in `RUST_LOG` syntax (e.g. `info`, `walcast=debug`).
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_log_level() }
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_slot() -> String {
    DEFAULT_SLOT.to_string()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.to_string()
}
fn default_true() -> bool {
    true
}
fn default_application_name() -> String {
    DEFAULT_APPLICATION_NAME.to_string()
}
fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_batch_max_changes() -> usize {
    DEFAULT_BATCH_MAX_CHANGES
}
fn default_sink_queue_batches() -> usize {
    DEFAULT_SINK_QUEUE_BATCHES
}
fn default_source_buffer_events() -> usize {
    DEFAULT_SOURCE_BUFFER_EVENTS
}
fn default_shutdown_timeout_ms() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_MS
}
fn default_retry_initial_ms() -> u64 {
    DEFAULT_RETRY_INITIAL_MS
}
fn default_retry_max_ms() -> u64 {
    DEFAULT_RETRY_MAX_MS
}
fn default_jsonl_path() -> String {
    DEFAULT_JSONL_PATH.to_string()
}
/// Default metrics endpoint address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";
/// Default interval between slot polls.
pub const DEFAULT_SLOT_POLL_MS: u64 = 5_000;
/// Default heartbeat table for `table` mode.
pub const DEFAULT_HEARTBEAT_TABLE: &str = "public.walcast_heartbeat";

fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_string()
}
fn default_slot_poll_ms() -> u64 {
    DEFAULT_SLOT_POLL_MS
}
fn default_heartbeat_table() -> String {
    DEFAULT_HEARTBEAT_TABLE.to_string()
}
fn default_log_level() -> String {
    "info".to_string()
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim_end().to_string() })?;
        let mut config = config;
        config.validate()?;
        config.default_dead_letters();
        Ok(config)
    }

    /// A sink without a dead-letter destination sets rejected rows aside in a file of
    /// `snapshot.state_dir`: one poison change must never stop the whole stream for good (a
    /// restart would meet it again at the same LSN).
    fn default_dead_letters(&mut self) {
        let dir = &self.snapshot.state_dir;
        if let Some(es) = self.sinks.elasticsearch.as_mut().filter(|es| es.dead_letter.is_none()) {
            es.dead_letter = Some(EsDeadLetterConfig { index: None, path: Some(dir.join(DEFAULT_ES_DEAD_LETTER_FILE)) });
        }
        if let Some(k) = self.sinks.kafka.as_mut().filter(|k| k.dead_letter.is_none()) {
            k.dead_letter = Some(KafkaDeadLetterConfig { topic: None, path: Some(dir.join(DEFAULT_KAFKA_DEAD_LETTER_FILE)) });
        }
    }

    /// Where each sink sets its dead letters aside: `(sink, destination)`, the destination a
    /// file path or an index/topic name (after [`Config::parse`], every sink has one).
    pub fn dead_letter_destinations(&self) -> Vec<(&'static str, DeadLetterDestination)> {
        let mut out = Vec::new();
        if let Some(dl) = self.sinks.kafka.as_ref().and_then(|k| k.dead_letter.as_ref()) {
            match (&dl.topic, &dl.path) {
                (Some(t), _) => out.push(("kafka", DeadLetterDestination::Named(format!("topic {t}")))),
                (None, Some(p)) => out.push(("kafka", DeadLetterDestination::File(p.clone()))),
                (None, None) => {}
            }
        }
        if let Some(dl) = self.sinks.elasticsearch.as_ref().and_then(|k| k.dead_letter.as_ref()) {
            match (&dl.index, &dl.path) {
                (Some(i), _) => out.push(("elasticsearch", DeadLetterDestination::Named(format!("index {i}")))),
                (None, Some(p)) => out.push(("elasticsearch", DeadLetterDestination::File(p.clone()))),
                (None, None) => {}
            }
        }
        out
    }

    /// Read every secret the config names (environment variables, files), so a missing one
    /// stops `run` and `check` as a config error before any slot or state exists. The values
    /// are dropped; each sink reads its own again when it opens.
    pub fn read_secrets(&self) -> Result<(), ConfigError> {
        self.source.password()?;
        if let Some(sasl) = self.sinks.kafka.as_ref().and_then(|k| k.sasl.as_ref()) {
            sasl.password()?;
        }
        if let Some(es) = &self.sinks.elasticsearch {
            es.auth()?;
        }
        Ok(())
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.source;
        if s.host.trim().is_empty() {
            return Err(ConfigError::invalid("source.host", "must not be empty"));
        }
        if s.port == 0 {
            return Err(ConfigError::invalid("source.port", "must be between 1 and 65535"));
        }
        if s.database.trim().is_empty() {
            return Err(ConfigError::invalid("source.database", "must not be empty"));
        }
        if s.user.trim().is_empty() {
            return Err(ConfigError::invalid("source.user", "must not be empty"));
        }
        if s.password_env.is_some() && s.password_file.is_some() {
            return Err(ConfigError::invalid("source.password_file", "set either password_env or password_file, not both"));
        }
        validate_identifier("source.slot", &s.slot, true)?;
        validate_identifier("source.publication", &s.publication, false)?;
        for (i, t) in s.tables.iter().enumerate() {
            TableSelector::parse(t).map_err(|reason| ConfigError::invalid(&format!("source.tables[{i}]"), reason))?;
        }
        if matches!(s.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && s.sslrootcert.is_none() {
            return Err(ConfigError::invalid("source.sslrootcert", "verify-ca and verify-full need the CA certificate file of the server"));
        }
        if s.sslmode == SslMode::VerifyFull && s.host.parse::<std::net::IpAddr>().is_ok() {
            return Err(ConfigError::invalid(
                "source.host",
                "verify-full checks the host name in the server certificate: use the DNS name the certificate was issued for, not an IP address (or use verify-ca)",
            ));
        }
        if s.status_interval_ms == 0 || s.status_interval_ms > 30_000 {
            return Err(ConfigError::invalid(
                "source.status_interval_ms",
                "must be between 1 and 30000 (the server drops a silent client after wal_sender_timeout, 60 s by default)",
            ));
        }
        if s.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid("source.connect_timeout_ms", "must be positive"));
        }
        let p = &self.pipeline;
        if p.batch_max_changes == 0 || p.batch_max_changes > 1_000_000 {
            return Err(ConfigError::invalid("pipeline.batch_max_changes", "must be between 1 and 1000000"));
        }
        if p.sink_queue_batches == 0 || p.sink_queue_batches > 1_024 {
            return Err(ConfigError::invalid("pipeline.sink_queue_batches", "must be between 1 and 1024"));
        }
        if p.source_buffer_events == 0 || p.source_buffer_events > 1_000_000 {
            return Err(ConfigError::invalid("pipeline.source_buffer_events", "must be between 1 and 1000000"));
        }
        if self.retry.initial_ms == 0 {
            return Err(ConfigError::invalid("retry.initial_ms", "must be positive"));
        }
        if self.retry.max_ms < self.retry.initial_ms {
            return Err(ConfigError::invalid("retry.max_ms", "must be at least retry.initial_ms"));
        }
        match (&self.sinks.jsonl, &self.sinks.kafka) {
            (None, None) if self.sinks.elasticsearch.is_none() => {
                return Err(ConfigError::invalid("sinks", "configure at least one sink, e.g. [sinks.jsonl] path = \"-\""))
            }
            (Some(j), _) if j.path.trim().is_empty() => return Err(ConfigError::invalid("sinks.jsonl.path", "must be `-` or a file path")),
            _ => {}
        }
        if let Some(k) = &self.sinks.kafka {
            k.validate()?;
        }
        if let Some(es) = &self.sinks.elasticsearch {
            es.validate()?;
        }
        self.snapshot.validate()?;
        if self.metrics.enabled && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid("metrics.listen", "must be an address with a port, like 127.0.0.1:9187 or 0.0.0.0:9187"));
        }
        if self.metrics.slot_poll_ms < 100 {
            return Err(ConfigError::invalid("metrics.slot_poll_ms", "must be at least 100"));
        }
        if self.heartbeat.interval_ms != 0 && self.heartbeat.interval_ms < 100 {
            return Err(ConfigError::invalid("heartbeat.interval_ms", "must be 0 (off) or at least 100"));
        }
        if self.ha.poll_ms < 100 || self.ha.poll_ms > 60_000 {
            return Err(ConfigError::invalid("ha.poll_ms", "must be between 100 and 60000"));
        }
        if self.heartbeat.mode == HeartbeatMode::Table {
            qualified_table("heartbeat.table", &self.heartbeat.table)?;
        }
        self.log.level.parse::<tracing_subscriber::EnvFilter>().map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

/// `value` must name one table, `schema.table` (no wildcard); the error names `field`.
pub(crate) fn qualified_table(field: &str, value: &str) -> Result<(), ConfigError> {
    match TableSelector::parse(value) {
        Ok(TableSelector::Table { .. }) => Ok(()),
        _ => Err(ConfigError::invalid(field, "must be `schema.table`")),
    }
}

/// A secret from the environment variable `env` or the file `file` (trailing newline removed),
/// whichever is set; `None` when neither is. Errors name the field `{field}_env` / `{field}_file`
/// (e.g. `source.password_env`) and never contain the secret.
pub(crate) fn read_secret(field: &str, env: Option<&String>, file: Option<&PathBuf>) -> Result<Option<String>, ConfigError> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(ConfigError::invalid(&format!("{field}_env"), format!("environment variable {var} is not set (or not UTF-8)"))),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) => Ok(Some(v.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(ConfigError::invalid(&format!("{field}_file"), format!("cannot read {}: {e}", path.display()))),
        };
    }
    Ok(None)
}

impl SourceConfig {
    /// The password, read from the environment variable or file named in the config.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        read_secret("source.password", self.password_env.as_ref(), self.password_file.as_ref())
    }

    /// Standby status update interval.
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Parsed `tables` entries (validated by [`Config::validate`]).
    pub fn table_selectors(&self) -> Vec<TableSelector> {
        self.tables.iter().filter_map(|t| TableSelector::parse(t).ok()).collect()
    }
}

/// One `tables` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSelector {
    /// `schema.table`.
    Table {
        /// Schema name.
        schema: String,
        /// Table name.
        table: String,
    },
    /// `schema.*`.
    Schema(String),
}

impl TableSelector {
    /// Parse `schema.table` or `schema.*`. Names are taken literally (case-sensitive, as stored
    /// in the catalog), never spliced into SQL unquoted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (schema, table) = s.split_once('.').ok_or_else(|| format!("{s:?} must be `schema.table` or `schema.*`"))?;
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(format!("{s:?} must be `schema.table` or `schema.*`"));
        }
        if table == "*" {
            Ok(TableSelector::Schema(schema.to_string()))
        } else {
            Ok(TableSelector::Table { schema: schema.to_string(), table: table.to_string() })
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Kafka sink (issue 4)

/// Default topic prefix (`{prefix}` in the template), also the default `server_name`.
pub const DEFAULT_KAFKA_PREFIX: &str = "walcast";
/// Dead-letter file of the Kafka sink in `snapshot.state_dir` when `[sinks.kafka.dead_letter]`
/// is not configured.
pub const DEFAULT_KAFKA_DEAD_LETTER_FILE: &str = "dead-letters-kafka.jsonl";
/// Dead-letter file of the Elasticsearch sink in `snapshot.state_dir` when
/// `[sinks.elasticsearch.dead_letter]` is not configured.
pub const DEFAULT_ES_DEAD_LETTER_FILE: &str = "dead-letters-elasticsearch.jsonl";

/// Where a sink's dead letters go ([`Config::dead_letter_destinations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterDestination {
    /// A JSON-lines file, one dead letter a line.
    File(PathBuf),
    /// A topic or index, e.g. `topic walcast.dead_letters`.
    Named(String),
}
/// Default topic template: Debezium's naming, `<prefix>.<schema>.<table>`.
pub const DEFAULT_KAFKA_TOPIC_TEMPLATE: &str = "{prefix}.{schema}.{table}";
/// Default Kafka `client.id`.
pub const DEFAULT_KAFKA_CLIENT_ID: &str = "walcast";
/// Default partition count of topics walcast creates.
pub const DEFAULT_KAFKA_TOPIC_PARTITIONS: i32 = 1;
/// Default replication factor of topics walcast creates (-1: the broker's `default.replication.factor`).
pub const DEFAULT_KAFKA_TOPIC_REPLICATION_FACTOR: i32 = -1;
/// Default producer `linger.ms`: how long records wait to fill a request while more arrive.
pub const DEFAULT_KAFKA_LINGER_MS: u64 = 5;
/// Default producer `batch.num.messages`.
pub const DEFAULT_KAFKA_BATCH_NUM_MESSAGES: u32 = 10_000;
/// Default producer `batch.size` in bytes.
pub const DEFAULT_KAFKA_BATCH_SIZE_BYTES: u32 = 1_000_000;
/// Default producer `message.max.bytes`: larger records go to the dead-letter destination.
pub const DEFAULT_KAFKA_MESSAGE_MAX_BYTES: u32 = 1_000_000;
/// Default producer `message.timeout.ms` (= `delivery.timeout.ms`): a record not delivered by
/// then fails, and the batch is retried.
pub const DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// Default producer `queue.buffering.max.kbytes`: memory for records waiting for the broker.
pub const DEFAULT_KAFKA_QUEUE_MAX_KBYTES: u32 = 65_536;

/// Compression codec of produced record batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl KafkaCompression {
    /// librdkafka's name for the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KafkaSaslMechanism {
    /// `PLAIN` (use it with TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaSaslMechanism {
    /// librdkafka's name for the mechanism.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaSaslMechanism::Plain => "PLAIN",
            KafkaSaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            KafkaSaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Kafka sink settings (`[sinks.kafka]`); docs/kafka.md describes the records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// `client.id` shown in broker logs and quotas.
    #[serde(default = "default_kafka_client_id")]
    pub client_id: String,
    /// `{prefix}` of the topic template; also the default `server_name`.
    #[serde(default = "default_kafka_prefix")]
    pub prefix: String,
    /// `source.name` in every envelope (Debezium's logical server name). Defaults to `prefix`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Topic of each table; placeholders `{prefix}`, `{database}`, `{schema}`, `{table}`.
    #[serde(default = "default_kafka_topic_template")]
    pub topic_template: String,
    /// Per-table settings, keyed by `schema.table`.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, KafkaTableConfig>,
    /// Create missing topics (with `topic_partitions` and `topic_replication_factor`) before the
    /// first record goes to them. With false, every topic must exist (`walcast check` verifies);
    /// records for a missing topic go to the dead-letter destination.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics walcast creates.
    #[serde(default = "default_kafka_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of topics walcast creates; -1 uses the broker's default.
    #[serde(default = "default_kafka_topic_replication_factor")]
    pub topic_replication_factor: i32,
    /// Follow each delete with a tombstone (same key, null value) so compacted topics drop the key.
    #[serde(default = "default_true")]
    pub tombstones_on_delete: bool,
    /// Topic for transaction BEGIN/END records (Debezium's transaction metadata); also adds the
    /// `transaction` block to every envelope. Unset (default): off.
    #[serde(default)]
    pub transaction_topic: Option<String>,
    /// Compression of record batches: `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Milliseconds records may wait to fill a request while more are coming (`linger.ms`).
    #[serde(default = "default_kafka_linger_ms")]
    pub linger_ms: u64,
    /// Most records in one request batch (`batch.num.messages`).
    #[serde(default = "default_kafka_batch_num_messages")]
    pub batch_num_messages: u32,
    /// Largest request batch in bytes (`batch.size`).
    #[serde(default = "default_kafka_batch_size_bytes")]
    pub batch_size_bytes: u32,
    /// Largest record in bytes (`message.max.bytes`); keep it at or below the broker's and the
    /// topic's limit. Larger records go to the dead-letter destination.
    #[serde(default = "default_kafka_message_max_bytes")]
    pub message_max_bytes: u32,
    /// Milliseconds a record may take to be delivered, retries included (`message.timeout.ms`).
    /// Past it the batch fails and is retried from its first record.
    #[serde(default = "default_kafka_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Kilobytes of records the producer may buffer (`queue.buffering.max.kbytes`); a full
    /// buffer slows the stream down, it never drops a record.
    #[serde(default = "default_kafka_queue_max_kbytes")]
    pub queue_max_kbytes: u32,
    /// SASL authentication; unset: none.
    #[serde(default)]
    pub sasl: Option<KafkaSaslConfig>,
    /// TLS to the brokers; unset: plain TCP.
    #[serde(default)]
    pub tls: Option<KafkaTlsConfig>,
    /// Where records that can never be written (too large, topic missing) go; unset: such a
    /// record stops walcast.
    #[serde(default)]
    pub dead_letter: Option<KafkaDeadLetterConfig>,
}

/// Settings for one table (`[sinks.kafka.tables."schema.table"]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaTableConfig {
    /// Topic for this table instead of the template's.
    #[serde(default)]
    pub topic: Option<String>,
    /// Columns that form the record key instead of the row's key (Debezium's
    /// `message.key.columns`); useful for REPLICA IDENTITY FULL tables without a primary key,
    /// whose key is otherwise every column.
    #[serde(default)]
    pub key_columns: Option<Vec<String>>,
}

/// SASL settings. The password is read from the environment or a file when the producer starts
/// and is never logged; this struct holds only where it comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: KafkaSaslMechanism,
    /// User name.
    pub username: String,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl KafkaSaslConfig {
    /// The password, read from the environment variable or file named in the config.
    pub fn password(&self) -> Result<String, ConfigError> {
        read_secret("sinks.kafka.sasl.password", self.password_env.as_ref(), self.password_file.as_ref())?
            .ok_or_else(|| ConfigError::invalid("sinks.kafka.sasl", "set password_env or password_file"))
    }
}

/// TLS settings (`[sinks.kafka.tls]`; the section's presence turns TLS on).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaTlsConfig {
    /// CA certificate file (PEM) that signed the brokers' certificates; unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Dead-letter destination (`[sinks.kafka.dead_letter]`): exactly one of `topic` and `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// A topic: the record with its original key and the reason in headers.
    #[serde(default)]
    pub topic: Option<String>,
    /// A file of JSON lines `{lsn, commit_lsn, schema, table, key, reason, topic}`, fsynced
    /// before the batch counts as durable.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_kafka_client_id() -> String {
    DEFAULT_KAFKA_CLIENT_ID.to_string()
}
fn default_kafka_prefix() -> String {
    DEFAULT_KAFKA_PREFIX.to_string()
}
fn default_kafka_topic_template() -> String {
    DEFAULT_KAFKA_TOPIC_TEMPLATE.to_string()
}
fn default_kafka_topic_partitions() -> i32 {
    DEFAULT_KAFKA_TOPIC_PARTITIONS
}
fn default_kafka_topic_replication_factor() -> i32 {
    DEFAULT_KAFKA_TOPIC_REPLICATION_FACTOR
}
fn default_kafka_linger_ms() -> u64 {
    DEFAULT_KAFKA_LINGER_MS
}
fn default_kafka_batch_num_messages() -> u32 {
    DEFAULT_KAFKA_BATCH_NUM_MESSAGES
}
fn default_kafka_batch_size_bytes() -> u32 {
    DEFAULT_KAFKA_BATCH_SIZE_BYTES
}
fn default_kafka_message_max_bytes() -> u32 {
    DEFAULT_KAFKA_MESSAGE_MAX_BYTES
}
fn default_kafka_message_timeout_ms() -> u64 {
    DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS
}
fn default_kafka_queue_max_kbytes() -> u32 {
    DEFAULT_KAFKA_QUEUE_MAX_KBYTES
}

impl KafkaSinkConfig {
    /// `source.name` of the envelopes.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.prefix)
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::route::topic::{validate_topic_name, TopicTemplate};
        let f = |name: &str| format!("sinks.kafka.{name}");
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty() || !s.contains(':')) {
            return Err(ConfigError::invalid(&f("bootstrap_servers"), "must be a comma-separated list of host:port"));
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::invalid(&f("client_id"), "must not be empty"));
        }
        validate_topic_name(&self.prefix).map_err(|e| ConfigError::invalid(&f("prefix"), e))?;
        if self.server_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ConfigError::invalid(&f("server_name"), "must not be empty"));
        }
        let template = TopicTemplate::parse(&self.topic_template).map_err(|e| ConfigError::invalid(&f("topic_template"), e))?;
        validate_topic_name(&template.render(&self.prefix, "db", "schema", "table"))
            .map_err(|e| ConfigError::invalid(&f("topic_template"), e))?;
        for (name, table) in &self.tables {
            let field = format!("sinks.kafka.tables.{name:?}");
            match TableSelector::parse(name) {
                Ok(TableSelector::Table { .. }) => {}
                _ => return Err(ConfigError::invalid(&field, "the key must be `schema.table`")),
            }
            if let Some(topic) = &table.topic {
                validate_topic_name(topic).map_err(|e| ConfigError::invalid(&format!("{field}.topic"), e))?;
            }
            if let Some(cols) = &table.key_columns {
                if cols.is_empty() || cols.iter().any(|c| c.is_empty()) {
                    return Err(ConfigError::invalid(&format!("{field}.key_columns"), "list at least one column name"));
                }
            }
        }
        if !(1..=100_000).contains(&self.topic_partitions) {
            return Err(ConfigError::invalid(&f("topic_partitions"), "must be between 1 and 100000"));
        }
        if self.topic_replication_factor != -1 && !(1..=32).contains(&self.topic_replication_factor) {
            return Err(ConfigError::invalid(&f("topic_replication_factor"), "must be -1 (the broker's default) or between 1 and 32"));
        }
        if let Some(topic) = &self.transaction_topic {
            validate_topic_name(topic).map_err(|e| ConfigError::invalid(&f("transaction_topic"), e))?;
        }
        if self.linger_ms > 60_000 {
            return Err(ConfigError::invalid(&f("linger_ms"), "must be at most 60000"));
        }
        if !(1..=1_000_000).contains(&self.batch_num_messages) {
            return Err(ConfigError::invalid(&f("batch_num_messages"), "must be between 1 and 1000000"));
        }
        if !(1..=i32::MAX as u32).contains(&self.batch_size_bytes) {
            return Err(ConfigError::invalid(&f("batch_size_bytes"), "must be positive"));
        }
        if !(1_000..=1_000_000_000).contains(&self.message_max_bytes) {
            return Err(ConfigError::invalid(&f("message_max_bytes"), "must be between 1000 and 1000000000"));
        }
        if self.message_timeout_ms < 1_000 || self.message_timeout_ms > 3_600_000 || self.message_timeout_ms <= self.linger_ms {
            return Err(ConfigError::invalid(&f("message_timeout_ms"), "must be between 1000 and 3600000 and greater than linger_ms"));
        }
        if !(1..=2_097_151).contains(&self.queue_max_kbytes) {
            return Err(ConfigError::invalid(&f("queue_max_kbytes"), "must be between 1 and 2097151"));
        }
        if let Some(sasl) = &self.sasl {
            if sasl.username.trim().is_empty() {
                return Err(ConfigError::invalid(&f("sasl.username"), "must not be empty"));
            }
            match (&sasl.password_env, &sasl.password_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(&f("sasl.password_file"), "set either password_env or password_file, not both"))
                }
                (None, None) => return Err(ConfigError::invalid(&f("sasl.password_env"), "set password_env or password_file")),
                _ => {}
            }
        }
        if let Some(dl) = &self.dead_letter {
            match (&dl.topic, &dl.path) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::invalid(&f("dead_letter"), "set exactly one of `topic` and `path`"))
                }
                (Some(topic), None) => validate_topic_name(topic).map_err(|e| ConfigError::invalid(&f("dead_letter.topic"), e))?,
                (None, Some(path)) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::invalid(&f("dead_letter.path"), "must not be empty"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod kafka_config_tests {
    use super::*;

    const KAFKA_ONLY: &str = r#"
[source]
host = "127.0.0.1"
database = "app"
user = "walcast"

[sinks.kafka]
bootstrap_servers = "127.0.0.1:9092"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn kafka_alone_is_a_sink_and_gets_defaults() {
        let c = parse(KAFKA_ONLY).expect("valid");
        assert!(c.sinks.jsonl.is_none());
        let k = c.sinks.kafka.clone().expect("kafka");
        assert_eq!(k.prefix, DEFAULT_KAFKA_PREFIX);
        assert_eq!(k.server_name(), DEFAULT_KAFKA_PREFIX);
        assert_eq!(k.topic_template, DEFAULT_KAFKA_TOPIC_TEMPLATE);
        assert!(k.create_topics && k.tombstones_on_delete);
        assert_eq!(k.linger_ms, DEFAULT_KAFKA_LINGER_MS);
        assert_eq!(k.message_timeout_ms, DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS);
        assert_eq!(k.compression, KafkaCompression::None);
        assert!(k.transaction_topic.is_none() && k.sasl.is_none() && k.tls.is_none());
        // No dead-letter section: a file in the state dir, so one poison record never stops the stream.
        let dl = k.dead_letter.as_ref().expect("a default dead-letter destination");
        assert_eq!((dl.topic.as_deref(), dl.path.clone()), (None, Some(c.snapshot.state_dir.join(DEFAULT_KAFKA_DEAD_LETTER_FILE))));
        assert_eq!(
            c.dead_letter_destinations(),
            vec![("kafka", DeadLetterDestination::File(c.snapshot.state_dir.join(DEFAULT_KAFKA_DEAD_LETTER_FILE)))]
        );
    }

    #[test]
    fn invalid_kafka_values_name_their_field() {
        let cases = [
            ("bootstrap_servers = \"\"", "sinks.kafka.bootstrap_servers"),
            ("bootstrap_servers = \"nohost\"", "sinks.kafka.bootstrap_servers"),
            ("topic_template = \"{prefix}.{tabel}\"", "sinks.kafka.topic_template"),
            ("prefix = \"a b\"", "sinks.kafka.prefix"),
            ("topic_partitions = 0", "sinks.kafka.topic_partitions"),
            ("topic_replication_factor = 0", "sinks.kafka.topic_replication_factor"),
            ("transaction_topic = \"a/b\"", "sinks.kafka.transaction_topic"),
            ("message_timeout_ms = 10", "sinks.kafka.message_timeout_ms"),
            ("message_max_bytes = 10", "sinks.kafka.message_max_bytes"),
            ("[sinks.kafka.dead_letter]\ntopic = \"d\"\npath = \"d.jsonl\"", "sinks.kafka.dead_letter"),
            ("[sinks.kafka.dead_letter]", "sinks.kafka.dead_letter"),
            ("[sinks.kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"", "sinks.kafka.sasl.password_env"),
            ("[sinks.kafka.tables.\"orders\"]\ntopic = \"x\"", "sinks.kafka.tables.\"orders\""),
            ("[sinks.kafka.tables.\"public.orders\"]\nkey_columns = []", "sinks.kafka.tables.\"public.orders\".key_columns"),
        ];
        for (extra, field) in cases {
            let text = if extra.starts_with("bootstrap_servers") {
                KAFKA_ONLY.replace("bootstrap_servers = \"127.0.0.1:9092\"", extra)
            } else {
                format!("{KAFKA_ONLY}{extra}\n")
            };
            let err = parse(&text).expect_err(field).to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        let err = parse(&format!("{KAFKA_ONLY}compression = \"brotli\"\n")).expect_err("unknown codec").to_string();
        assert!(err.contains("compression"), "{err}");
        let err = parse(&format!("{KAFKA_ONLY}linger = 5\n")).expect_err("unknown field").to_string();
        assert!(err.contains("linger"), "{err}");
    }

    #[test]
    fn sasl_password_never_in_debug() {
        std::env::set_var("WALCAST_TEST_KAFKA_CFG_PW", "kafka-hunter2");
        let text = format!(
            "{KAFKA_ONLY}[sinks.kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword_env = \"WALCAST_TEST_KAFKA_CFG_PW\"\n"
        );
        let c = parse(&text).expect("valid");
        let sasl = c.sinks.kafka.as_ref().and_then(|k| k.sasl.as_ref()).expect("sasl");
        assert_eq!(sasl.password().expect("set"), "kafka-hunter2");
        assert!(!format!("{c:?}").contains("kafka-hunter2"));
    }

    /// The commented `[sinks.kafka]` section of the shipped example, uncommented, is valid and
    /// names every field of the Kafka config.
    #[test]
    fn example_kafka_section_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walcast.example.toml");
        let text = std::fs::read_to_string(&path).expect("example config");
        let mut out = String::new();
        let mut in_kafka = false;
        for line in text.lines() {
            if line.starts_with("#[sinks.kafka]") {
                in_kafka = true;
            } else if line.starts_with('[') {
                in_kafka = false;
            }
            match line.strip_prefix('#') {
                Some(rest) if in_kafka && !rest.starts_with('#') => out.push_str(rest),
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        std::env::set_var("WALCAST_KAFKA_PASSWORD", "x");
        let c = Config::parse(&out, &path).expect("uncommented example is valid");
        let k = c.sinks.kafka.expect("kafka section");
        assert_eq!(k.bootstrap_servers, "127.0.0.1:9092");
        assert!(k.sasl.is_some() && k.tls.is_some() && k.dead_letter.is_some() && k.tables.contains_key("public.orders"));
        for field in [
            "bootstrap_servers",
            "client_id",
            "prefix",
            "server_name",
            "topic_template",
            "create_topics",
            "topic_partitions",
            "topic_replication_factor",
            "tombstones_on_delete",
            "transaction_topic",
            "compression",
            "linger_ms",
            "batch_num_messages",
            "batch_size_bytes",
            "message_max_bytes",
            "message_timeout_ms",
            "queue_max_kbytes",
        ] {
            assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.kafka.{field}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
host = "127.0.0.1"
database = "app"
user = "walcast"
tables = ["public.orders", "shop.*"]

[sinks.jsonl]
path = "-"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.source.port, DEFAULT_PORT);
        assert_eq!(c.source.slot, DEFAULT_SLOT);
        assert_eq!(c.pipeline.batch_max_changes, DEFAULT_BATCH_MAX_CHANGES);
        assert_eq!(
            c.source.table_selectors(),
            vec![TableSelector::Table { schema: "public".into(), table: "orders".into() }, TableSelector::Schema("shop".into())]
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("user = \"walcast\"", "user = \"walcast\"\nslot_nmae = \"x\"");
        let err = parse(&text).expect_err("unknown field").to_string();
        assert!(err.contains("slot_nmae"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (MINIMAL.replace("host = \"127.0.0.1\"", "host = \"\""), "source.host"),
            (MINIMAL.replace("database = \"app\"", "database = \"app\"\nslot = \"Bad-Name\""), "source.slot"),
            (MINIMAL.replace("\"shop.*\"", "\"shop\""), "source.tables[1]"),
            (format!("{MINIMAL}\n[pipeline]\nbatch_max_changes = 0\n"), "pipeline.batch_max_changes"),
            (MINIMAL.replace("[sinks.jsonl]\npath = \"-\"", ""), "sinks"),
            (format!("{MINIMAL}\n[retry]\ninitial_ms = 500\nmax_ms = 100\n"), "retry.max_ms"),
        ];
        for (text, field) in cases {
            let err = parse(&text).expect_err(field).to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = \"h\"\nport = \"x\"");
        let err = parse(&text).expect_err("wrong type").to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn password_never_in_debug() {
        std::env::set_var("WALCAST_TEST_SECRET_PW", "hunter2");
        let text = MINIMAL.replace("user = \"walcast\"", "user = \"walcast\"\npassword_env = \"WALCAST_TEST_SECRET_PW\"");
        let c = parse(&text).expect("valid");
        assert_eq!(c.source.password().expect("set").as_deref(), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example must stay a valid, complete config.
    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walcast.example.toml");
        let c = Config::load(&path).expect("config/walcast.example.toml is valid");
        assert_eq!(c.source.tables.len(), 3);
        assert!(c.sinks.jsonl.is_some());
    }
}
