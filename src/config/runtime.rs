//! The small sections about how the process runs: `[pipeline]` (batching and memory bounds),
//! `[retry]`, `[log]`, `[metrics]`, `[heartbeat]`, `[ha]`.

use serde::Deserialize;

use super::{default_true, ConfigError, TableName};

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

impl PipelineConfig {
    /// Default largest number of changes handed to the sinks in one batch.
    pub const DEFAULT_BATCH_MAX_CHANGES: usize = 4_096;
    /// Default number of batches that may wait for each sink (bounds memory).
    pub const DEFAULT_SINK_QUEUE_BATCHES: usize = 4;
    /// Default number of replication events buffered between the socket reader and the decoder.
    pub const DEFAULT_SOURCE_BUFFER_EVENTS: usize = 8_192;
    /// Default time a shutdown waits for the sinks to finish before giving up on the rest.
    pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 30_000;

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_max_changes == 0 || self.batch_max_changes > 1_000_000 {
            return Err(ConfigError::invalid("pipeline.batch_max_changes", "must be between 1 and 1000000"));
        }
        if self.sink_queue_batches == 0 || self.sink_queue_batches > 1_024 {
            return Err(ConfigError::invalid("pipeline.sink_queue_batches", "must be between 1 and 1024"));
        }
        if self.source_buffer_events == 0 || self.source_buffer_events > 1_000_000 {
            return Err(ConfigError::invalid("pipeline.source_buffer_events", "must be between 1 and 1000000"));
        }
        Ok(())
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max_changes: Self::DEFAULT_BATCH_MAX_CHANGES,
            sink_queue_batches: Self::DEFAULT_SINK_QUEUE_BATCHES,
            source_buffer_events: Self::DEFAULT_SOURCE_BUFFER_EVENTS,
            shutdown_timeout_ms: Self::DEFAULT_SHUTDOWN_TIMEOUT_MS,
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

impl RetryConfig {
    /// Default first retry delay.
    pub const DEFAULT_INITIAL_MS: u64 = 200;
    /// Default longest retry delay.
    pub const DEFAULT_MAX_MS: u64 = 30_000;

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_ms == 0 {
            return Err(ConfigError::invalid("retry.initial_ms", "must be positive"));
        }
        if self.max_ms < self.initial_ms {
            return Err(ConfigError::invalid("retry.max_ms", "must be at least retry.initial_ms"));
        }
        Ok(())
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { initial_ms: Self::DEFAULT_INITIAL_MS, max_ms: Self::DEFAULT_MAX_MS }
    }
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

impl LogConfig {
    /// Default level filter.
    pub const DEFAULT_LEVEL: &str = "info";
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_log_level() }
    }
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

impl MetricsConfig {
    /// Default metrics endpoint address.
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";
    /// Default interval between slot polls.
    pub const DEFAULT_SLOT_POLL_MS: u64 = 5_000;

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid("metrics.listen", "must be an address with a port, like 127.0.0.1:9187 or 0.0.0.0:9187"));
        }
        if self.slot_poll_ms < 100 {
            return Err(ConfigError::invalid("metrics.slot_poll_ms", "must be at least 100"));
        }
        Ok(())
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: default_metrics_listen(), slot_poll_ms: Self::DEFAULT_SLOT_POLL_MS }
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
    /// Kept as written: in `message` mode it is not used, and not checked.
    #[serde(default = "default_heartbeat_table")]
    pub table: String,
}

impl HeartbeatConfig {
    /// Default heartbeat table for `table` mode.
    pub const DEFAULT_TABLE: &str = "public.walcast_heartbeat";

    fn validate_interval(&self) -> Result<(), ConfigError> {
        if self.interval_ms != 0 && self.interval_ms < 100 {
            return Err(ConfigError::invalid("heartbeat.interval_ms", "must be 0 (off) or at least 100"));
        }
        Ok(())
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_ms: 0, mode: HeartbeatMode::Message, table: default_heartbeat_table() }
    }
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

impl HaConfig {
    /// Default interval between lease attempts and lease checks.
    pub const DEFAULT_POLL_MS: u64 = 1_000;
}

impl Default for HaConfig {
    fn default() -> Self {
        Self { enabled: false, poll_ms: Self::DEFAULT_POLL_MS }
    }
}

/// `[metrics]`, `[heartbeat]`, `[ha]` and `[log]`, in the order their errors are reported.
pub(super) fn validate_observability(
    metrics: &MetricsConfig,
    heartbeat: &HeartbeatConfig,
    ha: &HaConfig,
    log: &LogConfig,
) -> Result<(), ConfigError> {
    metrics.validate()?;
    heartbeat.validate_interval()?;
    if ha.poll_ms < 100 || ha.poll_ms > 60_000 {
        return Err(ConfigError::invalid("ha.poll_ms", "must be between 100 and 60000"));
    }
    if heartbeat.mode == HeartbeatMode::Table {
        TableName::parse(&heartbeat.table).map_err(|_| ConfigError::invalid("heartbeat.table", "must be `schema.table`"))?;
    }
    log.level.parse::<tracing_subscriber::EnvFilter>().map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
    Ok(())
}

fn default_batch_max_changes() -> usize {
    PipelineConfig::DEFAULT_BATCH_MAX_CHANGES
}
fn default_sink_queue_batches() -> usize {
    PipelineConfig::DEFAULT_SINK_QUEUE_BATCHES
}
fn default_source_buffer_events() -> usize {
    PipelineConfig::DEFAULT_SOURCE_BUFFER_EVENTS
}
fn default_shutdown_timeout_ms() -> u64 {
    PipelineConfig::DEFAULT_SHUTDOWN_TIMEOUT_MS
}
fn default_retry_initial_ms() -> u64 {
    RetryConfig::DEFAULT_INITIAL_MS
}
fn default_retry_max_ms() -> u64 {
    RetryConfig::DEFAULT_MAX_MS
}
fn default_log_level() -> String {
    LogConfig::DEFAULT_LEVEL.to_string()
}
fn default_metrics_listen() -> String {
    MetricsConfig::DEFAULT_LISTEN.to_string()
}
fn default_slot_poll_ms() -> u64 {
    MetricsConfig::DEFAULT_SLOT_POLL_MS
}
fn default_heartbeat_table() -> String {
    HeartbeatConfig::DEFAULT_TABLE.to_string()
}
fn default_ha_poll_ms() -> u64 {
    HaConfig::DEFAULT_POLL_MS
}
