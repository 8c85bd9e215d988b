//! The librdkafka side: client configuration from `[sinks.kafka]`, a context that turns
//! librdkafka's logs into tracing events and notices authentication failures, and the
//! classification of Kafka errors.

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::watch;

use crate::config::{ConfigError, KafkaSinkConfig};
use crate::retry::LogThrottle;

/// Build the client configuration shared by the producer and the admin client.
///
/// The result holds the SASL password: never print it (`ClientConfig` derives `Debug`).
pub(crate) fn client_config(cfg: &KafkaSinkConfig) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.bootstrap_servers.replace(' ', ""))
        .set("client.id", &cfg.client_id)
        // Topics are created explicitly (create_topics) or must exist; a produce must never
        // create one with the broker's defaults.
        .set("allow.auto.create.topics", "false")
        .set("socket.keepalive.enable", "true")
        .set("log.connection.close", "false");
    let protocol = match (cfg.sasl.is_some(), cfg.tls.is_some()) {
        (false, false) => "plaintext",
        (false, true) => "ssl",
        (true, false) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(sasl) = &cfg.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password()?.expose());
    }
    if let Some(tls) = &cfg.tls {
        match &tls.ca_file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Invalid {
                        field: "sinks.kafka.tls.ca_file".into(),
                        reason: format!("{} is not a readable file", path.display()),
                    });
                }
                c.set("ssl.ca.location", path.to_string_lossy());
            }
            None => {
                c.set("ssl.ca.location", "probe");
            }
        }
        c.set("ssl.endpoint.identification.algorithm", "https");
    }
    Ok(c)
}

/// The producer settings on top of [`client_config`]: idempotence (so retries neither reorder
/// nor duplicate within a producer session), acks from every in-sync replica, at most 5
/// requests in flight per connection (the most idempotence keeps in order), and the batching and
/// timeout settings of the config.
pub(crate) fn producer_config(cfg: &KafkaSinkConfig) -> Result<ClientConfig, ConfigError> {
    let mut c = client_config(cfg)?;
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("compression.type", cfg.compression.as_str())
        .set("linger.ms", cfg.linger_ms.to_string())
        .set("batch.num.messages", cfg.batch_num_messages.to_string())
        .set("batch.size", cfg.batch_size_bytes.to_string())
        .set("message.max.bytes", cfg.message_max_bytes.to_string())
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string())
        .set("request.timeout.ms", cfg.message_timeout_ms.min(30_000).to_string())
        .set("queue.buffering.max.kbytes", cfg.queue_max_kbytes.to_string())
        .set("queue.buffering.max.messages", "100000");
    if cfg.exactly_once {
        // A transactional producer (docs/kafka.md "Exactly-once"); a new one with the same id
        // fences the old and aborts its open transaction.
        c.set("transactional.id", cfg.transactional_id());
    }
    Ok(c)
}

/// What to do while the brokers cannot be reached: the fix of every outage line.
pub(crate) const UNREACHABLE_FIX: &str = "check that the brokers of sinks.kafka.bootstrap_servers are up and reachable from this host \
     (and, with TLS or SASL, that the handshake passes); walcast keeps the slot where it is and retries, nothing is lost";

/// How often a client writes one of its connection problems as a WARN line; the ones in between
/// are debug lines, counted in the next WARN (`suppressed`). During an outage librdkafka reports
/// every failed connection attempt, per broker and per connection, and the sink's own retry line
/// (one per backoff step, naming the brokers and the fix) is what an operator needs.
const CLIENT_WARN_EVERY: Duration = Duration::from_secs(60);

/// The client context: librdkafka's log lines and client errors become tracing events, at most
/// one WARN per [`CLIENT_WARN_EVERY`] (each naming the brokers and the fix), the rest at debug
/// level; an authentication or authorization failure reported by the client is published on a
/// watch channel so a waiting write can stop at once instead of retrying until the records time
/// out.
pub(crate) struct Context {
    fatal: watch::Sender<Option<String>>,
    /// `sinks.kafka.bootstrap_servers`, for the log lines.
    brokers: String,
    throttle: LogThrottle,
}

impl Context {
    /// A context for a client of `cfg`'s brokers and the receiver of its fatal-error notices.
    pub(crate) fn new(cfg: &KafkaSinkConfig) -> (Self, watch::Receiver<Option<String>>) {
        let (tx, rx) = watch::channel(None);
        (Self { fatal: tx, brokers: cfg.bootstrap_servers.clone(), throttle: LogThrottle::new(CLIENT_WARN_EVERY) }, rx)
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => match self.throttle.admit() {
                Some(suppressed) => tracing::warn!(
                    target: "librdkafka",
                    facility = fac,
                    message = log_message,
                    brokers = %self.brokers,
                    suppressed,
                    fix = UNREACHABLE_FIX,
                    "kafka client"
                ),
                None => tracing::debug!(target: "librdkafka", facility = fac, message = log_message, "kafka client"),
            },
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, message = log_message, "kafka client")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, message = log_message, "kafka client"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(is_auth_error) {
            tracing::error!(error = %error, reason, "kafka authentication or authorization failed");
            self.fatal.send_replace(Some(format!("{error}: {reason}")));
        } else if code == Some(RDKafkaErrorCode::Fatal) {
            // The idempotent producer hit an unrecoverable state; the sink replaces the producer.
            tracing::warn!(error = %error, reason, "kafka producer fatal error");
            self.fatal.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(format!("{error}: {reason}"));
                    true
                } else {
                    false
                }
            });
        } else if let Some(suppressed) = self.throttle.admit() {
            tracing::warn!(error = %error, reason, brokers = %self.brokers, suppressed, fix = UNREACHABLE_FIX, "kafka client error");
        } else {
            tracing::debug!(error = %error, reason, "kafka client error");
        }
    }
}

/// Authentication and authorization failures: they stop walcast.
pub(crate) fn is_auth_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// What to do about a record that was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The broker or the network may recover: write the batch again.
    Retry(String),
    /// This record can never be written: dead-letter it, with this reason.
    DeadLetter(String),
    /// A setup problem (authentication, authorization): stop walcast with this message.
    Fatal(String),
    /// The idempotent producer itself is broken (fenced, epoch or sequence out of step with the
    /// broker, fatal state): no retry by this producer can pass. Replace the producer, then write
    /// the batch again.
    Replace(String),
}

/// Classify a produce or delivery error. `create_topics` says whether a missing topic is
/// expected to appear (it was just created) or cannot exist.
pub(crate) fn classify(error: &KafkaError, create_topics: bool, topic: &str, max_bytes: u32) -> Failure {
    let Some(code) = error.rdkafka_error_code() else {
        return Failure::Retry(error.to_string());
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => Failure::DeadLetter(format!(
            "record too large for topic {topic} (sinks.kafka.message_max_bytes = {max_bytes}, or the broker's limit): {error}"
        )),
        RDKafkaErrorCode::InvalidTopic => Failure::DeadLetter(format!("topic {topic} is not a valid topic name: {error}")),
        RDKafkaErrorCode::InvalidRecord => {
            Failure::DeadLetter(format!("the broker rejected the record for topic {topic} (a compacted topic needs a key): {error}"))
        }
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownPartition
            if !create_topics =>
        {
            Failure::DeadLetter(format!("topic {topic} does not exist and sinks.kafka.create_topics = false: {error}"))
        }
        c if is_auth_error(c) => Failure::Fatal(auth_message(&error.to_string())),
        c if breaks_the_producer(c) => Failure::Replace(error.to_string()),
        _ => Failure::Retry(error.to_string()),
    }
}

/// Errors after which an idempotent producer never delivers again. After a long broker stall
/// (records timed out in flight) the broker answers every produce of the old producer id with
/// `ProducerFenced`, without librdkafka raising a fatal error: only a new producer (a new
/// producer id) gets through.
fn breaks_the_producer(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::GaplessGuarantee
    )
}

/// The message for an authentication or authorization failure, with what to fix.
pub(crate) fn auth_message(detail: &str) -> String {
    format!(
        "Kafka authentication or authorization failed ({detail}); fix: check sinks.kafka.sasl (mechanism, username, \
         the password in password_env / password_file), sinks.kafka.tls (the CA file) and the broker's ACLs: walcast's \
         principal needs WRITE and DESCRIBE on its topics, CREATE when create_topics = true, and IDEMPOTENT_WRITE on the cluster"
    )
}

/// Timeout for one metadata or admin request.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> KafkaSinkConfig {
        let text = format!("bootstrap_servers = \"a:9092, b:9092\"\n{extra}");
        toml::from_str(&text).expect("valid kafka config")
    }

    #[test]
    fn producer_is_idempotent_and_acks_all() {
        let c = producer_config(&cfg("compression = \"zstd\"\nlinger_ms = 7")).expect("config");
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("5"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("linger.ms"), Some("7"));
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
    }

    #[test]
    fn sasl_and_tls_set_the_protocol_and_read_the_secret() {
        // A password file, not an environment variable: tests run in parallel threads.
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("kafka-password");
        std::fs::write(&secret, "s3cret-pw\n").expect("write the password file");
        let sasl = |mechanism: &str, user: &str| {
            format!("[sasl]\nmechanism = \"{mechanism}\"\nusername = \"{user}\"\npassword_file = {:?}\n", secret.display().to_string())
        };
        let c = client_config(&cfg(&format!("{}[tls]\n", sasl("SCRAM-SHA-512", "walcast")))).expect("config");
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret-pw"));
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        let k = cfg(&sasl("PLAIN", "u"));
        assert!(!format!("{k:?}").contains("s3cret-pw"));
    }

    #[test]
    fn errors_are_classified() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(classify(&e(RDKafkaErrorCode::MessageSizeTooLarge), true, "t", 1000), Failure::DeadLetter(_)));
        assert!(matches!(classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition), true, "t", 1000), Failure::Retry(_)));
        assert!(matches!(classify(&e(RDKafkaErrorCode::UnknownTopicOrPartition), false, "t", 1000), Failure::DeadLetter(_)));
        assert!(matches!(classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed), true, "t", 1000), Failure::Fatal(_)));
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            assert!(matches!(classify(&e(c), true, "t", 1000), Failure::Retry(_)), "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
        ] {
            assert!(matches!(classify(&e(c), true, "t", 1000), Failure::Replace(_)), "{c:?}");
        }
    }
}
