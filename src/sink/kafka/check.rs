//! The Kafka part of `walcast check`: the brokers answer, and every topic walcast will write to
//! exists or can be created.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer as _};

use super::client::{self, Context};
use crate::config::{Config, KafkaSinkConfig, TableSelector};
use crate::route::TopicRouter;
use crate::source::{connect_sql, ConnParams, Finding};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Findings about `[sinks.kafka]` (none when it is not configured). The streamed tables are
/// read from the publication when it exists, otherwise from `source.tables`.
pub async fn kafka_findings(config: &Config, params: &ConnParams) -> Vec<Finding> {
    let Some(kafka) = &config.sinks.kafka else { return Vec::new() };
    let tables = streamed_tables(config, params).await;
    check(kafka, &config.source.database, &tables).await
}

/// The `(schema, table)` pairs walcast streams, as far as they can be known without streaming.
async fn streamed_tables(config: &Config, params: &ConnParams) -> Vec<(String, String)> {
    let mut out = BTreeSet::new();
    if let Ok(client) = connect_sql(params).await {
        if let Ok(rows) = client
            .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&config.source.publication])
            .await
        {
            out.extend(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))));
        }
        if out.is_empty() {
            for sel in config.source.table_selectors() {
                match sel {
                    TableSelector::Table { schema, table } => {
                        out.insert((schema, table));
                    }
                    TableSelector::Schema(schema) => {
                        if let Ok(rows) = client.query("SELECT tablename::text FROM pg_tables WHERE schemaname = $1", &[&schema]).await {
                            out.extend(rows.iter().map(|r| (schema.clone(), r.get::<_, String>(0))));
                        }
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Check the brokers and the topics of `tables`.
pub async fn check(kafka: &KafkaSinkConfig, database: &str, tables: &[(String, String)]) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match client::client_config(kafka) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail(format!("kafka: {e}"), "fix the [sinks.kafka] section"));
            return out;
        }
    };
    let (context, _) = Context::new(kafka);
    let producer: FutureProducer<Context> = match config.create_with_context(context) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::fail(format!("kafka: cannot create a client: {e}"), "fix the [sinks.kafka] section"));
            return out;
        }
    };
    let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, METADATA_TIMEOUT)).await;
    let metadata: Metadata = match metadata {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let fix = match e.rdkafka_error_code() {
                Some(c) if client::is_auth_error(c) => client::auth_message(&e.to_string()),
                _ => "check sinks.kafka.bootstrap_servers, that the brokers run, and the TLS / SASL settings".to_string(),
            };
            out.push(Finding::fail(format!("kafka: cannot reach the brokers at {}: {e}", kafka.bootstrap_servers), fix));
            return out;
        }
        Err(e) => {
            out.push(Finding::fail(format!("kafka: metadata task failed: {e}"), "run the check again"));
            return out;
        }
    };
    out.push(Finding::ok(format!(
        "kafka: brokers reachable at {} ({} broker(s), {} topic(s))",
        kafka.bootstrap_servers,
        metadata.brokers().len(),
        metadata.topics().len()
    )));

    let existing: BTreeSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().map(RDKafkaErrorCode::from) != Some(RDKafkaErrorCode::UnknownTopicOrPartition))
        .map(|t| t.name())
        .collect();
    let router = TopicRouter::new(kafka, database);
    let mut topics: Vec<(String, String)> =
        tables.iter().map(|(s, t)| (router.topic_for_name(s, t).to_string(), format!("table {s}.{t}"))).collect();
    if let Some(t) = &kafka.transaction_topic {
        topics.push((t.clone(), "transaction metadata".into()));
    }
    if let Some(t) = kafka.dead_letter.as_ref().and_then(|d| d.topic.as_ref()) {
        topics.push((t.clone(), "dead letters".into()));
    }
    if tables.is_empty() {
        out.push(Finding::warn(
            "kafka: no streamed tables are known yet (the publication does not exist or is empty), so no table topic was checked",
            "create the publication (walcast slot create) or list the tables in source.tables, then check again",
        ));
    }
    for (topic, what) in topics {
        if existing.contains(topic.as_str()) {
            out.push(Finding::ok(format!("kafka: topic {topic} exists ({what})")));
        } else if kafka.create_topics {
            out.push(Finding::ok(format!(
                "kafka: topic {topic} ({what}) does not exist yet; it is created before its first record \
                 ({} partition(s), replication factor {})",
                kafka.topic_partitions,
                if kafka.topic_replication_factor < 0 { "broker default".to_string() } else { kafka.topic_replication_factor.to_string() }
            )));
        } else {
            out.push(Finding::fail(
                format!("kafka: topic {topic} ({what}) does not exist and sinks.kafka.create_topics = false"),
                format!("create topic {topic}, or set sinks.kafka.create_topics = true"),
            ));
        }
    }
    out
}
