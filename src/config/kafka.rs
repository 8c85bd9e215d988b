//! `[sinks.kafka]`: the Kafka sink (docs/kafka.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

mod format;

pub use format::*;

use super::topic::validate_topic_name;
use super::{default_true, read_secret, ConfigError, Secret, TableName, TopicTemplate};

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
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// `{prefix}` of the topic template; also the default `server_name`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `source.name` in every envelope (Debezium's logical server name). Defaults to `prefix`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Topic of each table; placeholders `{prefix}`, `{database}`, `{schema}`, `{table}`.
    #[serde(default = "default_topic_template")]
    pub topic_template: TopicTemplate,
    /// Record format; only `debezium-json` (docs/kafka.md "Records").
    #[serde(default)]
    pub format: KafkaFormat,
    /// Wrap every key and value in Connect's `{"schema": ..., "payload": ...}` (the JSON
    /// converter's `schemas.enable=true`). Default false.
    #[serde(default)]
    pub schemas: bool,
    /// `walcast` (default) or `debezium`: the value encodings the `*_mode` fields start from.
    #[serde(default)]
    pub encoding: EncodingPreset,
    /// `precise`, `double` or `string`; unset: from `encoding` (walcast: `string`).
    #[serde(default)]
    pub decimal_handling_mode: Option<DecimalHandling>,
    /// `adaptive`, `adaptive_time_microseconds`, `connect` or `iso`; unset: from `encoding`
    /// (walcast: `iso`).
    #[serde(default)]
    pub time_precision_mode: Option<TimePrecision>,
    /// `numeric` or `string`; unset: from `encoding` (walcast: `string`).
    #[serde(default)]
    pub interval_handling_mode: Option<IntervalHandling>,
    /// `embedded` or `string`; unset: `string` with `schemas = true` or `encoding = "debezium"`,
    /// else `embedded`.
    #[serde(default)]
    pub json_handling_mode: Option<JsonHandling>,
    /// Operations not published: any of `"c"`, `"u"`, `"d"`, `"t"` (Debezium's default is
    /// `["t"]`). Default: none.
    #[serde(default)]
    pub skipped_operations: Vec<SkippedOperation>,
    /// First LSN of `source.sequence`: `commit` (this transaction's commit LSN) or
    /// `previous_commit` (Debezium's); unset: from `encoding` (walcast: `commit`).
    #[serde(default)]
    pub sequence: Option<SequenceMode>,
    /// Exactly-once delivery (docs/kafka.md "Exactly-once"): each batch's records and its
    /// position commit in one Kafka transaction; changes at or below the committed position are
    /// skipped after a restart. Default: false (at-least-once).
    #[serde(default)]
    pub exactly_once: bool,
    /// With `exactly_once`: the producer's `transactional.id` (one walcast per id; a second one
    /// fences the first). Default: `walcast-<server_name>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// With `exactly_once`: the compacted topic holding the committed position. Default:
    /// `<server_name>.walcast_offsets`.
    #[serde(default)]
    pub offsets_topic: Option<String>,
    /// Publish `pg_logical_emit_message` messages as `op: "m"` events on `<prefix>.message`
    /// (docs/kafka.md "Messages"). Default: false.
    #[serde(default)]
    pub messages: bool,
    /// With `messages`: only these prefixes (exact, or ending in `*` for a prefix match). Empty
    /// (default): every prefix. Exclusive with `message_prefix_exclude`.
    #[serde(default)]
    pub message_prefix_include: Vec<String>,
    /// With `messages`: not these prefixes (exact, or ending in `*`). Default: none.
    #[serde(default)]
    pub message_prefix_exclude: Vec<String>,
    /// A record on `<heartbeat_topic_prefix>.<prefix>` for each heartbeat walcast writes
    /// (`[heartbeat]` in message mode). Default: true.
    #[serde(default = "default_true")]
    pub heartbeat_records: bool,
    /// Start of the heartbeat topic's name (Debezium's `topic.heartbeat.prefix`).
    #[serde(default = "default_heartbeat_topic_prefix")]
    pub heartbeat_topic_prefix: String,
    /// Per-table settings, keyed by `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<TableName, KafkaTableConfig>,
    /// Create missing topics (with `topic_partitions` and `topic_replication_factor`) before the
    /// first record goes to them. With false, every topic must exist (`walcast check` verifies);
    /// records for a missing topic go to the dead-letter destination.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics walcast creates.
    #[serde(default = "default_topic_partitions")]
    pub topic_partitions: i32,
    /// Replication factor of topics walcast creates; -1 uses the broker's default.
    #[serde(default = "default_topic_replication_factor")]
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
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Most records in one request batch (`batch.num.messages`).
    #[serde(default = "default_batch_num_messages")]
    pub batch_num_messages: u32,
    /// Largest request batch in bytes (`batch.size`).
    #[serde(default = "default_batch_size_bytes")]
    pub batch_size_bytes: u32,
    /// Largest record in bytes (`message.max.bytes`); keep it at or below the broker's and the
    /// topic's limit. Larger records go to the dead-letter destination.
    #[serde(default = "default_message_max_bytes")]
    pub message_max_bytes: u32,
    /// Milliseconds a record may take to be delivered, retries included (`message.timeout.ms`).
    /// Past it the batch fails and is retried from its first record.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Kilobytes of records the producer may buffer (`queue.buffering.max.kbytes`); a full
    /// buffer slows the stream down, it never drops a record.
    #[serde(default = "default_queue_max_kbytes")]
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
    pub fn password(&self) -> Result<Secret, ConfigError> {
        read_secret("sinks.kafka.sasl.password", self.password_env.as_deref(), self.password_file.as_deref())?
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

fn default_client_id() -> String {
    KafkaSinkConfig::DEFAULT_CLIENT_ID.to_string()
}
fn default_prefix() -> String {
    KafkaSinkConfig::DEFAULT_PREFIX.to_string()
}
fn default_topic_template() -> TopicTemplate {
    TopicTemplate::parse(KafkaSinkConfig::DEFAULT_TOPIC_TEMPLATE).expect("the default topic template is valid")
}
fn default_heartbeat_topic_prefix() -> String {
    KafkaSinkConfig::DEFAULT_HEARTBEAT_TOPIC_PREFIX.to_string()
}
fn default_topic_partitions() -> i32 {
    KafkaSinkConfig::DEFAULT_TOPIC_PARTITIONS
}
fn default_topic_replication_factor() -> i32 {
    KafkaSinkConfig::DEFAULT_TOPIC_REPLICATION_FACTOR
}
fn default_linger_ms() -> u64 {
    KafkaSinkConfig::DEFAULT_LINGER_MS
}
fn default_batch_num_messages() -> u32 {
    KafkaSinkConfig::DEFAULT_BATCH_NUM_MESSAGES
}
fn default_batch_size_bytes() -> u32 {
    KafkaSinkConfig::DEFAULT_BATCH_SIZE_BYTES
}
fn default_message_max_bytes() -> u32 {
    KafkaSinkConfig::DEFAULT_MESSAGE_MAX_BYTES
}
fn default_message_timeout_ms() -> u64 {
    KafkaSinkConfig::DEFAULT_MESSAGE_TIMEOUT_MS
}
fn default_queue_max_kbytes() -> u32 {
    KafkaSinkConfig::DEFAULT_QUEUE_MAX_KBYTES
}

impl KafkaSinkConfig {
    /// Default topic prefix (`{prefix}` in the template), also the default `server_name`.
    pub const DEFAULT_PREFIX: &str = "walcast";
    /// Dead-letter file in `snapshot.state_dir` when `[sinks.kafka.dead_letter]` is not configured.
    pub const DEFAULT_DEAD_LETTER_FILE: &str = "dead-letters-kafka.jsonl";
    /// Default topic template: Debezium's naming, `<prefix>.<schema>.<table>`.
    pub const DEFAULT_TOPIC_TEMPLATE: &str = "{prefix}.{schema}.{table}";
    /// Default start of the heartbeat topic's name (Debezium's).
    pub const DEFAULT_HEARTBEAT_TOPIC_PREFIX: &str = "__debezium-heartbeat";
    /// Default Kafka `client.id`.
    pub const DEFAULT_CLIENT_ID: &str = "walcast";
    /// Default partition count of topics walcast creates.
    pub const DEFAULT_TOPIC_PARTITIONS: i32 = 1;
    /// Default replication factor of topics walcast creates (-1: the broker's `default.replication.factor`).
    pub const DEFAULT_TOPIC_REPLICATION_FACTOR: i32 = -1;
    /// Default producer `linger.ms`: how long records wait to fill a request while more arrive.
    pub const DEFAULT_LINGER_MS: u64 = 5;
    /// Default producer `batch.num.messages`.
    pub const DEFAULT_BATCH_NUM_MESSAGES: u32 = 10_000;
    /// Default producer `batch.size` in bytes.
    pub const DEFAULT_BATCH_SIZE_BYTES: u32 = 1_000_000;
    /// Default producer `message.max.bytes`: larger records go to the dead-letter destination.
    pub const DEFAULT_MESSAGE_MAX_BYTES: u32 = 1_000_000;
    /// Default producer `message.timeout.ms` (= `delivery.timeout.ms`): a record not delivered by
    /// then fails, and the batch is retried.
    pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;
    /// Default producer `queue.buffering.max.kbytes`: memory for records waiting for the broker.
    pub const DEFAULT_QUEUE_MAX_KBYTES: u32 = 65_536;

    /// `source.name` of the envelopes.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.prefix)
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        validate_topic_name(&self.topic_template.render(&self.prefix, "db", "schema", "table"))
            .map_err(|e| ConfigError::invalid(&f("topic_template"), e))?;
        for (name, table) in &self.tables {
            let field = format!("sinks.kafka.tables.\"{name}\"");
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
        self.validate_format()?;
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
mod tests {
    use std::path::Path;

    use super::super::{Config, DeadLetterDestination};
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
        assert_eq!(k.prefix, KafkaSinkConfig::DEFAULT_PREFIX);
        assert_eq!(k.server_name(), KafkaSinkConfig::DEFAULT_PREFIX);
        assert_eq!(k.topic_template.as_str(), KafkaSinkConfig::DEFAULT_TOPIC_TEMPLATE);
        assert!(k.create_topics && k.tombstones_on_delete);
        assert_eq!(k.linger_ms, KafkaSinkConfig::DEFAULT_LINGER_MS);
        assert_eq!(k.message_timeout_ms, KafkaSinkConfig::DEFAULT_MESSAGE_TIMEOUT_MS);
        assert_eq!(k.compression, KafkaCompression::None);
        assert!(k.transaction_topic.is_none() && k.sasl.is_none() && k.tls.is_none());
        // Today's records unless asked otherwise: walcast's values, no schemas, every operation.
        assert_eq!((k.format, k.schemas, k.value_encoding()), (KafkaFormat::DebeziumJson, false, ValueEncoding::WALCAST));
        assert!(k.skipped_operations.is_empty());
        // No dead-letter section: a file in the state dir, so one poison record never stops the stream.
        let dl = k.dead_letter.as_ref().expect("a default dead-letter destination");
        let file = c.snapshot.state_dir.join(KafkaSinkConfig::DEFAULT_DEAD_LETTER_FILE);
        assert_eq!((dl.topic.as_deref(), dl.path.clone()), (None, Some(file.clone())));
        assert_eq!(c.dead_letter_destinations(), vec![("kafka", DeadLetterDestination::File(file))]);
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
            ("schemas = true\njson_handling_mode = \"embedded\"", "sinks.kafka.json_handling_mode"),
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
        for bad in ["format = \"avro\"", "encoding = \"connect\"", "time_precision_mode = \"nanos\"", "skipped_operations = [\"r\"]"] {
            let field = bad.split(' ').next().unwrap_or_default();
            let err = parse(&format!("{KAFKA_ONLY}{bad}\n")).expect_err(bad).to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
        let err = parse(&format!("{KAFKA_ONLY}linger = 5\n")).expect_err("unknown field").to_string();
        assert!(err.contains("linger"), "{err}");
    }

    #[test]
    fn sasl_password_never_in_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kafka-pw");
        std::fs::write(&file, "kafka-hunter2\n").expect("write");
        let text = format!(
            "{KAFKA_ONLY}[sinks.kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let c = parse(&text).expect("valid");
        let sasl = c.sinks.kafka.as_ref().and_then(|k| k.sasl.as_ref()).expect("sasl");
        let password = sasl.password().expect("set");
        assert_eq!(password.expose(), "kafka-hunter2");
        assert!(!format!("{c:?}").contains("kafka-hunter2"));
        assert!(!format!("{password:?}").contains("kafka-hunter2"));
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
        let c = Config::parse(&out, &path).expect("uncommented example is valid");
        let k = c.sinks.kafka.expect("kafka section");
        assert_eq!(k.bootstrap_servers, "127.0.0.1:9092");
        let orders = TableName::parse("public.orders").expect("table name");
        assert!(k.sasl.is_some() && k.tls.is_some() && k.dead_letter.is_some() && k.tables.contains_key(&orders));
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
            "format",
            "schemas",
            "encoding",
            "decimal_handling_mode",
            "time_precision_mode",
            "interval_handling_mode",
            "json_handling_mode",
            "skipped_operations",
            "sequence",
            "exactly_once",
            "transactional_id",
            "offsets_topic",
        ] {
            assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.kafka.{field}");
        }
    }
}
