//! The configuration file: serde structs, defaults (associated `DEFAULT_*` consts of each
//! section), names parsed once at load ([`TableName`], [`IndexName`], [`TopicTemplate`]),
//! secrets ([`Secret`]), and validation that names the offending field.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

mod changelog;
mod document;
mod elasticsearch;
mod index_pattern;
mod kafka;
mod names;
mod runtime;
mod secret;
mod source;
mod topic;

pub use changelog::{AckMode, ChangelogConfig, Compression};
pub use document::*;
pub use elasticsearch::*;
pub use index_pattern::{DateParts, IndexPattern, TimeSource};
pub use kafka::*;
pub use names::{IndexName, TableName, TableSelector};
pub use runtime::*;
use secret::read_secret;
pub use secret::Secret;
pub use source::{SourceConfig, SslMode};
pub use topic::{TopicTemplate, MAX_TOPIC_LEN};

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
    /// The file is not valid TOML for this schema (unknown field, wrong type, a name that breaks
    /// its rules, ...).
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
    /// The durable local change log (`[changelog]`): replay, marks, decoupled sinks.
    #[serde(default)]
    pub changelog: ChangelogConfig,
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

impl JsonlSinkConfig {
    /// Default JSON-lines destination (`-` is standard output).
    pub const DEFAULT_PATH: &str = "-";
}

fn default_jsonl_path() -> String {
    JsonlSinkConfig::DEFAULT_PATH.to_string()
}

fn default_true() -> bool {
    true
}

/// Where a sink's dead letters go ([`Config::dead_letter_destinations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterDestination {
    /// A JSON-lines file, one dead letter a line.
    File(PathBuf),
    /// A topic or index, e.g. `topic walcast.dead_letters`.
    Named(String),
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            let message = match e.span().and_then(|span| field_at(text, span.start)) {
                Some(field) => format!("field `{field}`: {message}"),
                None => message,
            };
            ConfigError::Parse { path: path.to_path_buf(), message }
        })?;
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
            es.dead_letter =
                Some(EsDeadLetterConfig { index: None, path: Some(dir.join(ElasticsearchSinkConfig::DEFAULT_DEAD_LETTER_FILE)) });
        }
        if let Some(k) = self.sinks.kafka.as_mut().filter(|k| k.dead_letter.is_none()) {
            k.dead_letter = Some(KafkaDeadLetterConfig { topic: None, path: Some(dir.join(KafkaSinkConfig::DEFAULT_DEAD_LETTER_FILE)) });
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

    /// Whether logical decoding messages go to the sinks: the Kafka sink publishes messages or
    /// heartbeat records (walcast's own heartbeat messages). Other sinks ignore them.
    pub fn carries_messages(&self) -> bool {
        self.sinks.kafka.as_ref().is_some_and(|k| k.messages) || self.kafka_heartbeat_records()
    }

    /// Whether the Kafka sink writes heartbeat records: `[heartbeat]` on in message mode and
    /// `sinks.kafka.heartbeat_records`.
    pub fn kafka_heartbeat_records(&self) -> bool {
        self.heartbeat.interval_ms > 0
            && self.heartbeat.mode == HeartbeatMode::Message
            && self.sinks.kafka.as_ref().is_some_and(|k| k.heartbeat_records)
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
        self.source.validate()?;
        self.pipeline.validate()?;
        self.retry.validate()?;
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
        self.changelog.validate()?;
        if self.sinks.kafka.as_ref().is_some_and(|k| k.messages) && self.changelog.enabled && self.changelog.ack == AckMode::Decoupled {
            return Err(ConfigError::invalid(
                "sinks.kafka.messages",
                "messages are not kept in the change log, so a decoupled sink never sees them; use changelog.ack = \"strict\"",
            ));
        }
        runtime::validate_observability(&self.metrics, &self.heartbeat, &self.ha, &self.log)
    }
}

/// Map-valued fields: their keys are data (table and index names), quoted in field paths as the
/// file writes them (`sinks.kafka.tables."public.orders"`).
const MAP_FIELDS: [&str; 3] = ["sinks.kafka.tables", "sinks.elasticsearch.indexes", ".rename"];

/// The dotted path of the field a TOML error at byte `at` is about, e.g.
/// `sinks.elasticsearch.tables[1].index`: the last key on the error's line at or before it.
/// `None` when no key is there (an error reported at a table header, such as a missing field).
fn field_at(text: &str, at: usize) -> Option<String> {
    let mut keys = Vec::new();
    KeyPaths { path: String::new(), keys: &mut keys }.deserialize(toml::Deserializer::new(text)).ok()?;
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    keys.into_iter().filter(|(start, _)| (line_start..=at).contains(start)).max_by_key(|(start, _)| *start).map(|(_, path)| path)
}

/// Collects every key of a TOML document with its byte offset and dotted path.
struct KeyPaths<'a> {
    path: String,
    keys: &'a mut Vec<(usize, String)>,
}

impl<'de> DeserializeSeed<'de> for KeyPaths<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyPaths<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let quoted = MAP_FIELDS.iter().any(|m| if m.starts_with('.') { self.path.ends_with(m) } else { self.path == *m });
        while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
            let path = match (self.path.is_empty(), quoted) {
                (true, _) => key.get_ref().clone(),
                (false, true) => format!("{}.{:?}", self.path, key.get_ref()),
                (false, false) => format!("{}.{}", self.path, key.get_ref()),
            };
            self.keys.push((key.span().start, path.clone()));
            map.next_value_seed(KeyPaths { path, keys: &mut *self.keys })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq.next_element_seed(KeyPaths { path: format!("{}[{i}]", self.path), keys: &mut *self.keys })?.is_some() {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
