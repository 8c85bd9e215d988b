//! `[sinks.kafka]` record format: Connect schemas, value encodings and skipped operations
//! (docs/kafka.md "Values").

use serde::Deserialize;

use super::KafkaSinkConfig;
use crate::config::ConfigError;

/// Record format (`format`). There is one: Debezium's change event envelope as Kafka Connect's
/// JSON converter writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum KafkaFormat {
    /// `debezium-json`.
    #[default]
    #[serde(rename = "debezium-json")]
    DebeziumJson,
}

/// The starting point of the value encodings (`encoding`); each `*_mode` field overrides one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncodingPreset {
    /// walcast's own encoding (the JSON-lines value rules): exact and readable without a schema.
    #[default]
    Walcast,
    /// Debezium's defaults: `decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
    /// `interval.handling.mode=numeric`, JSON as strings, money as a decimal, `timetz` in UTC,
    /// bit strings as bytes, points as structs.
    Debezium,
}

/// `numeric`/`decimal` (and `money`) values, like Debezium's `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecimalHandling {
    /// Connect `Decimal` (base64 of the unscaled two's-complement value; scale in the schema),
    /// or `VariableScaleDecimal` for a column without a declared scale. NaN and infinities: null.
    Precise,
    /// A JSON number (an IEEE double: may round).
    Double,
    /// The exact text as a string.
    String,
}

/// `date`, `time`, `timestamp` values, like Debezium's `time.precision.mode` (plus walcast's ISO strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecision {
    /// Days since 1970 (`Date`); `time`/`timestamp` in milliseconds up to precision 3, else microseconds.
    Adaptive,
    /// As `adaptive`, but `time` always in microseconds.
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's logical types: days, milliseconds of the day, milliseconds since 1970.
    Connect,
    /// ISO 8601 strings (walcast's encoding).
    Iso,
}

/// `interval` values, like Debezium's `interval.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalHandling {
    /// Approximate microseconds (`MicroDuration`; a month is 365.25 / 12 days).
    Numeric,
    /// The ISO 8601 duration string.
    String,
}

/// `json`/`jsonb` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonHandling {
    /// The JSON itself, embedded in the record (walcast's encoding; no Connect schema can describe it).
    Embedded,
    /// A string holding the JSON text (Debezium's `io.debezium.data.Json`).
    String,
}

/// The first LSN of `source.sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceMode {
    /// The change's own transaction's commit LSN (walcast's: the same on every resend, no state).
    Commit,
    /// The commit LSN of the transaction before (Debezium's `lastCommitLsn`; null for the first
    /// transaction after walcast starts).
    PreviousCommit,
}

/// An operation that can be left out (Debezium's `skipped.operations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SkippedOperation {
    /// Inserts.
    #[serde(rename = "c")]
    Create,
    /// Updates.
    #[serde(rename = "u")]
    Update,
    /// Deletes (and their tombstones).
    #[serde(rename = "d")]
    Delete,
    /// Truncates.
    #[serde(rename = "t")]
    Truncate,
}

/// The encodings in effect, after the preset and the overrides are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueEncoding {
    /// Debezium's type mappings for the types no mode covers (money, timetz, bit, point, ...).
    pub debezium_types: bool,
    /// numeric / money.
    pub decimal: DecimalHandling,
    /// date / time / timestamp.
    pub time: TimePrecision,
    /// interval.
    pub interval: IntervalHandling,
    /// json / jsonb.
    pub json: JsonHandling,
}

impl ValueEncoding {
    /// walcast's own encoding, byte for byte the JSON-lines values.
    pub const WALCAST: ValueEncoding = ValueEncoding {
        debezium_types: false,
        decimal: DecimalHandling::String,
        time: TimePrecision::Iso,
        interval: IntervalHandling::String,
        json: JsonHandling::Embedded,
    };

    /// Debezium's defaults.
    pub const DEBEZIUM: ValueEncoding = ValueEncoding {
        debezium_types: true,
        decimal: DecimalHandling::Precise,
        time: TimePrecision::Adaptive,
        interval: IntervalHandling::Numeric,
        json: JsonHandling::String,
    };
}

impl KafkaSinkConfig {
    /// The encodings in effect.
    pub fn value_encoding(&self) -> ValueEncoding {
        let base = match self.encoding {
            EncodingPreset::Walcast => ValueEncoding::WALCAST,
            EncodingPreset::Debezium => ValueEncoding::DEBEZIUM,
        };
        let json_default = if self.schemas { JsonHandling::String } else { base.json };
        ValueEncoding {
            debezium_types: base.debezium_types,
            decimal: self.decimal_handling_mode.unwrap_or(base.decimal),
            time: self.time_precision_mode.unwrap_or(base.time),
            interval: self.interval_handling_mode.unwrap_or(base.interval),
            json: self.json_handling_mode.unwrap_or(json_default),
        }
    }

    /// What `source.sequence` starts with.
    pub fn sequence_mode(&self) -> SequenceMode {
        self.sequence.unwrap_or(match self.encoding {
            EncodingPreset::Walcast => SequenceMode::Commit,
            EncodingPreset::Debezium => SequenceMode::PreviousCommit,
        })
    }

    /// The producer's `transactional.id` with `exactly_once`.
    pub fn transactional_id(&self) -> String {
        self.transactional_id.clone().unwrap_or_else(|| format!("walcast-{}", self.server_name()))
    }

    /// The topic of the committed position with `exactly_once`.
    pub fn offsets_topic(&self) -> String {
        self.offsets_topic.clone().unwrap_or_else(|| format!("{}.walcast_offsets", self.server_name()))
    }

    /// The topic of message events: `<prefix>.message`.
    pub fn message_topic(&self) -> String {
        format!("{}.message", self.prefix)
    }

    /// The topic of heartbeat records: `<heartbeat_topic_prefix>.<prefix>`.
    pub fn heartbeat_topic(&self) -> String {
        format!("{}.{}", self.heartbeat_topic_prefix, self.prefix)
    }

    /// Whether a message with `prefix` is published (`messages` on, and the prefix lists).
    pub fn publishes_message(&self, prefix: &str) -> bool {
        let matches = |pattern: &String| match pattern.strip_suffix('*') {
            Some(start) => prefix.starts_with(start),
            None => prefix == pattern,
        };
        self.messages
            && (self.message_prefix_include.is_empty() || self.message_prefix_include.iter().any(matches))
            && !self.message_prefix_exclude.iter().any(matches)
    }

    /// Whether `op` is left out.
    pub fn skips(&self, op: SkippedOperation) -> bool {
        self.skipped_operations.contains(&op)
    }

    /// Check the combination; the error names the field.
    pub(super) fn validate_format(&self) -> Result<(), ConfigError> {
        if self.schemas && self.json_handling_mode == Some(JsonHandling::Embedded) {
            return Err(ConfigError::invalid(
                "sinks.kafka.json_handling_mode",
                "embedded JSON has no Connect schema; with schemas = true set it to \"string\" (or leave it unset)",
            ));
        }
        if let Some(id) = &self.transactional_id {
            if id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "sinks.kafka.transactional_id",
                    "must not be empty; remove it to use walcast-<server_name>",
                ));
            }
        }
        if let Some(topic) = &self.offsets_topic {
            super::validate_topic_name(topic).map_err(|e| ConfigError::invalid("sinks.kafka.offsets_topic", e))?;
        }
        for (field, list) in
            [("message_prefix_include", &self.message_prefix_include), ("message_prefix_exclude", &self.message_prefix_exclude)]
        {
            let field = format!("sinks.kafka.{field}");
            if !list.is_empty() && !self.messages {
                return Err(ConfigError::invalid(
                    &field,
                    "only applies with messages = true; set sinks.kafka.messages = true or remove it",
                ));
            }
            if list.iter().any(|p| p.is_empty() || p == "*") {
                return Err(ConfigError::invalid(&field, "list message prefixes (exact, or ending in `*`); leave it out for every prefix"));
            }
        }
        if !self.message_prefix_include.is_empty() && !self.message_prefix_exclude.is_empty() {
            return Err(ConfigError::invalid(
                "sinks.kafka.message_prefix_exclude",
                "set either message_prefix_include or message_prefix_exclude, not both",
            ));
        }
        super::validate_topic_name(&self.heartbeat_topic()).map_err(|e| ConfigError::invalid("sinks.kafka.heartbeat_topic_prefix", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> KafkaSinkConfig {
        toml::from_str(&format!("bootstrap_servers = \"a:9092\"\n{extra}")).expect("valid kafka config")
    }

    #[test]
    fn preset_then_overrides() {
        assert_eq!(cfg("encoding = \"debezium\"").value_encoding(), ValueEncoding::DEBEZIUM);
        assert_eq!(cfg("encoding = \"debezium\"").sequence_mode(), SequenceMode::PreviousCommit);
        assert_eq!(cfg("").sequence_mode(), SequenceMode::Commit);
        // Schemas need JSON as a string; the other walcast encodings stay.
        let e = cfg("schemas = true").value_encoding();
        assert_eq!(e, ValueEncoding { json: JsonHandling::String, ..ValueEncoding::WALCAST });
        let e = cfg("encoding = \"debezium\"\ndecimal_handling_mode = \"string\"\ntime_precision_mode = \"connect\"").value_encoding();
        assert_eq!((e.decimal, e.time, e.interval), (DecimalHandling::String, TimePrecision::Connect, IntervalHandling::Numeric));
        let c = cfg("exactly_once = true\nserver_name = \"inv\"");
        assert!(c.exactly_once && !cfg("").exactly_once);
        assert_eq!((c.transactional_id(), c.offsets_topic()), ("walcast-inv".to_string(), "inv.walcast_offsets".to_string()));
        let c = cfg("skipped_operations = [\"t\", \"d\"]");
        assert!(c.skips(SkippedOperation::Truncate) && c.skips(SkippedOperation::Delete) && !c.skips(SkippedOperation::Create));
    }

    #[test]
    fn message_prefixes_and_topics() {
        assert!(!cfg("").publishes_message("a"), "messages are opt-in");
        assert!(cfg("messages = true").publishes_message("anything"));
        let c = cfg(r#"messages = true
message_prefix_include = ["audit", "app.*"]"#);
        assert!(c.publishes_message("audit") && c.publishes_message("app.x") && c.publishes_message("app."));
        assert!(!c.publishes_message("audit2") && !c.publishes_message("ap"));
        let c = cfg(r#"messages = true
message_prefix_exclude = ["noise*"]"#);
        assert!(!c.publishes_message("noise.1") && c.publishes_message("audit"));
        let c = cfg(r#"prefix = "inv"
heartbeat_topic_prefix = "hb""#);
        assert_eq!((c.message_topic(), c.heartbeat_topic()), ("inv.message".to_string(), "hb.inv".to_string()));
        assert_eq!(cfg("").heartbeat_topic(), "__debezium-heartbeat.walcast");

        let field = |extra: &str| match cfg(extra).validate_format() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{extra}: expected an invalid field, got {other:?}"),
        };
        assert_eq!(field(r#"message_prefix_include = ["a"]"#), "sinks.kafka.message_prefix_include");
        assert_eq!(field("messages = true\nmessage_prefix_exclude = [\"\"]"), "sinks.kafka.message_prefix_exclude");
        assert_eq!(
            field("messages = true\nmessage_prefix_include = [\"a\"]\nmessage_prefix_exclude = [\"b\"]"),
            "sinks.kafka.message_prefix_exclude"
        );
        assert_eq!(field(r#"heartbeat_topic_prefix = "bad name""#), "sinks.kafka.heartbeat_topic_prefix");
    }
}
