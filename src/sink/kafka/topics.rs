//! Topics a batch writes to: created (or looked up when `create_topics` is off) before its
//! records are enqueued; a topic that cannot exist is remembered for a while, and its records go
//! to the dead-letter destination.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;

use super::client::{self, Context, ADMIN_TIMEOUT};
use super::{fatal_err, transient, KafkaSink};
use crate::sink::SinkError;

/// How long a topic found missing (or invalid) is believed missing before it is looked up again.
const MISSING_TOPIC_RECHECK: Duration = Duration::from_secs(30);

impl KafkaSink {
    /// Make sure every topic the batch writes to exists (created, or looked up when creation is
    /// off). Topics that cannot exist are remembered in `missing_topics`.
    pub(super) async fn ensure_topics(&mut self, topics: Vec<Arc<str>>) -> Result<(), SinkError> {
        let now = Instant::now();
        let todo: Vec<Arc<str>> = topics
            .into_iter()
            .filter(|t| !self.known_topics.contains(t))
            .filter(|t| self.missing_topics.get(t).is_none_or(|(at, _)| now.duration_since(*at) >= MISSING_TOPIC_RECHECK))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        if self.cfg.create_topics {
            self.create_topics(&todo).await
        } else {
            self.lookup_topics(todo).await
        }
    }

    /// The admin client (creating topics), created on first use.
    pub(super) fn admin(&mut self) -> Result<&AdminClient<Context>, SinkError> {
        if self.admin.is_none() {
            let config = client::client_config(&self.cfg).map_err(|e| fatal_err(e.to_string()))?;
            let (context, _) = Context::new(&self.cfg);
            let admin = config.create_with_context(context).map_err(|e| fatal_err(format!("cannot create the Kafka admin client: {e}")))?;
            self.admin = Some(admin);
        }
        self.admin.as_ref().ok_or_else(|| fatal_err("admin client missing".into()))
    }

    async fn create_topics(&mut self, todo: &[Arc<str>]) -> Result<(), SinkError> {
        let (partitions, replication) = (self.cfg.topic_partitions, self.cfg.topic_replication_factor);
        let new: Vec<NewTopic<'_>> = todo.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
        let results = match self.admin()?.create_topics(&new, &opts).await {
            Ok(r) => r,
            Err(e) => {
                return match e.rdkafka_error_code() {
                    Some(c) if client::is_auth_error(c) => Err(fatal_err(client::auth_message(&e.to_string()))),
                    _ => Err(transient(format!("cannot create topics: {e}"))),
                }
            }
        };
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions, replication_factor = replication, "created topic");
                    self.mark_known(&name);
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => self.mark_known(&name),
                Err((name, code)) if client::is_auth_error(code) => {
                    return Err(fatal_err(client::auth_message(&format!("creating topic {name}: {code}"))))
                }
                Err((name, code @ (RDKafkaErrorCode::InvalidReplicationFactor | RDKafkaErrorCode::InvalidPartitions | RDKafkaErrorCode::InvalidConfig))) => {
                    return Err(fatal_err(format!(
                        "cannot create topic {name}: {code}; fix sinks.kafka.topic_partitions / topic_replication_factor \
                         (the cluster may have fewer brokers than the replication factor), or create the topics yourself and set create_topics = false"
                    )))
                }
                Err((name, code @ (RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::PolicyViolation))) => {
                    let reason = format!("topic {name} cannot be created: {code}");
                    tracing::warn!(topic = %name, %code, "topic cannot be created; its records go to the dead-letter destination");
                    self.missing_topics.insert(Arc::from(name.as_str()), (Instant::now(), reason));
                }
                Err((name, code)) => return Err(transient(format!("cannot create topic {name}: {code}"))),
            }
        }
        Ok(())
    }

    async fn lookup_topics(&mut self, todo: Vec<Arc<str>>) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        let names: Vec<String> = todo.iter().map(|t| t.to_string()).collect();
        let found = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| {
                    let md = producer.client().fetch_metadata(Some(&name), ADMIN_TIMEOUT)?;
                    let err = md.topics().iter().find(|t| t.name() == name).and_then(|t| t.error());
                    Ok((name, err.map(RDKafkaErrorCode::from)))
                })
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await
        .map_err(|e| fatal_err(format!("topic lookup task failed: {e}")))?;
        let found = found.map_err(|e| match e.rdkafka_error_code() {
            Some(c) if client::is_auth_error(c) => fatal_err(client::auth_message(&e.to_string())),
            _ => transient(format!("cannot read topic metadata: {e}")),
        })?;
        for (name, err) in found {
            match err {
                None => self.mark_known(&name),
                Some(c) if client::is_auth_error(c) => return Err(fatal_err(client::auth_message(&format!("topic {name}: {c}")))),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::InvalidTopic) => {
                    let reason = format!("topic {name} does not exist and sinks.kafka.create_topics = false");
                    tracing::warn!(topic = %name, "topic does not exist and create_topics is off; its records go to the dead-letter destination");
                    self.missing_topics.insert(Arc::from(name.as_str()), (Instant::now(), reason));
                }
                Some(c) => return Err(transient(format!("topic {name}: {c}"))),
            }
        }
        Ok(())
    }

    fn mark_known(&mut self, name: &str) {
        let topic: Arc<str> = Arc::from(name);
        self.missing_topics.remove(&topic);
        self.known_topics.insert(topic);
    }
}
