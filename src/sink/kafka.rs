//! The Kafka sink: every change as a Debezium-compatible record on its table's topic, keyed by
//! the primary key; a batch counts as durable only when every record's delivery report is
//! positive (or the record was set aside in the dead-letter destination). docs/kafka.md
//! describes the records.
//!
//! Per batch: make sure the batch's topics exist, render and enqueue every record (a full
//! producer queue is waited out, never dropped), then await every delivery report. A retryable
//! failure fails the whole batch (`SinkError::Transient`), which `sink::drive` writes again;
//! duplicates are allowed (contract 2), loss and reordering per key are not: the producer is
//! idempotent with at most 5 requests in flight, and a retried batch re-sends every record after
//! the failed one too. A producer that can never deliver again (fenced after a broker stall, or
//! in a fatal idempotence state) is replaced by a new one before the batch is written again.

mod check;
mod client;
mod dead_letter;
mod decimal;
mod delivery;
mod encoding;
pub mod envelope;
mod exactly_once;
mod message;
mod producer;
mod render;
mod schema;
mod temporal;
mod topics;
mod tx;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::admin::AdminClient;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

pub use check::kafka_findings;

use self::client::Context;
use self::dead_letter::DeadLetterDestination;
use self::encoding::Encoder;
use self::envelope::SourceStatic;
use self::exactly_once::ExactlyOnce;
use self::message::MessageRecords;
use self::producer::new_producer;
use self::render::BatchWrite;
use self::schema::{prefix_of, tx_key_schema, tx_value_schema, RelationSchemas, SchemaCache};
use self::tx::TxTracker;
use super::line_file::DeadLetterFile;
use super::{Batch, Sink, SinkError};
use crate::config::{KafkaSinkConfig, SequenceMode, ValueEncoding};
use crate::decode::Relation;
use crate::lsn::Lsn;
use crate::route::TopicRouter;

const NAME: &str = "kafka";

/// Header with the change's LSN (`X/Y`).
pub const HEADER_LSN: &str = "walcast.lsn";
/// Header with the transaction's commit LSN (`X/Y`).
pub const HEADER_COMMIT_LSN: &str = "walcast.commit_lsn";
/// Dead-letter header: why the record could not be written.
pub const HEADER_REASON: &str = "walcast.reason";
/// Dead-letter header: the topic the record was meant for.
pub const HEADER_TOPIC: &str = "walcast.topic";

type KafkaProducer = FutureProducer<Context>;

/// The Kafka sink. See the module documentation.
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    producer: KafkaProducer,
    fatal: watch::Receiver<Option<String>>,
    admin: Option<AdminClient<Context>>,
    router: TopicRouter,
    source: SourceStatic,
    /// `schema.table` -> configured key columns.
    key_overrides: HashMap<String, Vec<String>>,
    /// Key column indexes per relation OID, for the relation description they were computed from.
    key_cache: HashMap<u32, (Arc<Relation>, Arc<[usize]>)>,
    known_topics: HashSet<Arc<str>>,
    /// Topics that cannot be written, with when that was found and why.
    missing_topics: HashMap<Arc<str>, (Instant, String)>,
    tx_topic: Option<Arc<str>>,
    tx: TxTracker,
    /// Values in the configured encodings; `None`: walcast's own (the JSON-lines values).
    encoder: Option<Encoder>,
    /// Connect schemas on: the rendered schemas per relation description.
    schema_cache: Option<SchemaCache>,
    /// Connect schemas on: the schema prefixes of transaction-topic records.
    tx_schemas: Option<RelationSchemas>,
    /// `source.sequence` starts with the previous transaction's commit LSN (Debezium's).
    previous_commit_sequence: bool,
    /// (previous, current) transaction commit LSNs seen, for that sequence.
    commits: (Option<Lsn>, Option<Lsn>),
    /// `exactly_once = true`: the transactional state.
    eos: Option<ExactlyOnce>,
    /// Topics and schemas of message events and heartbeat records.
    messages: MessageRecords,
    dead_letter: DeadLetterDestination,
    dead_letters: Arc<AtomicU64>,
    /// `walcast_dead_letters_total{sink="kafka"}`, when the pipeline exports metrics.
    dead_letter_metric: Option<prometheus_client::metrics::counter::Counter>,
    /// Rendered keys and values of the current batch (reused).
    arena: Vec<u8>,
    /// How many times the producer was replaced since the sink was opened (logged).
    replacements: u64,
}

impl KafkaSink {
    /// Create the producer (it connects in the background; nothing is sent yet). `database` is
    /// `source.db` of the envelopes.
    pub fn open(cfg: &KafkaSinkConfig, database: &str) -> Result<Self, SinkError> {
        let (producer, fatal) = new_producer(cfg)?;
        let router = TopicRouter::new(cfg, database);
        let key_overrides = cfg.tables.iter().filter_map(|(name, t)| Some((name.to_string(), t.key_columns.clone()?))).collect();
        let dead_letter = match &cfg.dead_letter {
            Some(d) => match (&d.topic, &d.path) {
                (Some(topic), _) => DeadLetterDestination::Topic(Arc::from(topic.as_str())),
                (None, Some(path)) => DeadLetterDestination::File(DeadLetterFile::open(path).map_err(|e| {
                    fatal_err(format!(
                        "cannot open the dead-letter file {} for appending: {e}; check sinks.kafka.dead_letter.path and its permissions",
                        path.display()
                    ))
                })?),
                (None, None) => DeadLetterDestination::None,
            },
            None => DeadLetterDestination::None,
        };
        let enc = cfg.value_encoding();
        let encoder = (enc != ValueEncoding::WALCAST || cfg.schemas).then_some(Encoder { enc, flat_arrays: cfg.schemas });
        tracing::info!(
            bootstrap_servers = %cfg.bootstrap_servers,
            schemas = cfg.schemas,
            create_topics = cfg.create_topics,
            transaction_topic = cfg.transaction_topic.as_deref().unwrap_or("-"),
            exactly_once = cfg.exactly_once,
            "kafka sink ready"
        );
        Ok(Self {
            cfg: cfg.clone(),
            producer,
            fatal,
            admin: None,
            router,
            source: SourceStatic {
                version: env!("CARGO_PKG_VERSION").to_string(),
                name: cfg.server_name().to_string(),
                db: database.to_string(),
            },
            key_overrides,
            key_cache: HashMap::new(),
            known_topics: HashSet::new(),
            missing_topics: HashMap::new(),
            tx_topic: cfg.transaction_topic.as_deref().map(Arc::from),
            tx: TxTracker::default(),
            encoder,
            schema_cache: cfg.schemas.then(SchemaCache::default),
            previous_commit_sequence: cfg.sequence_mode() == SequenceMode::PreviousCommit,
            commits: (None, None),
            eos: ExactlyOnce::new(cfg),
            messages: MessageRecords::new(cfg),
            tx_schemas: cfg.schemas.then(|| RelationSchemas { key: prefix_of(&tx_key_schema()), value: prefix_of(&tx_value_schema()) }),
            dead_letter,
            dead_letters: Arc::new(AtomicU64::new(0)),
            dead_letter_metric: None,
            arena: Vec::with_capacity(super::OUTPUT_BUF_CAPACITY),
            replacements: 0,
        })
    }

    /// Records set aside in the dead-letter destination since the sink was opened.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Also count dead letters in this metric (`walcast_dead_letters_total{sink="kafka"}`).
    pub fn count_dead_letters_in(&mut self, counter: prometheus_client::metrics::counter::Counter) {
        self.dead_letter_metric = Some(counter);
    }

    /// The counter behind [`KafkaSink::dead_letters`], to read it after the sink was handed to
    /// its task.
    pub fn dead_letter_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dead_letters)
    }

    /// Stop on an authentication failure; replace a producer in a fatal state (asked directly:
    /// the notice of the client context only wakes a waiting write up sooner).
    async fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let started = Instant::now();
        // 1. Topics.
        let mut topics: Vec<Arc<str>> = Vec::new();
        let mut last_oid = None;
        for change in &batch.changes {
            if last_oid == Some(change.relation.oid) {
                continue;
            }
            last_oid = Some(change.relation.oid);
            let t = self.router.topic(&change.relation);
            if !self.known_topics.contains(&t) && !topics.contains(&t) {
                topics.push(t);
            }
        }
        for t in self.message_topics(batch) {
            if !self.known_topics.contains(&t) && !topics.contains(&t) {
                topics.push(t);
            }
        }
        for extra in [self.tx_topic.clone(), self.dead_letter_topic()].into_iter().flatten() {
            if !self.known_topics.contains(&extra) && !topics.contains(&extra) && (!batch.changes.is_empty() || self.tx.open().is_some()) {
                topics.push(extra);
            }
        }
        self.ensure_topics(topics).await?;
        // Exactly-once: every record below goes into one transaction.
        self.eos_begin().await?;

        // 2. Render and enqueue.
        let mut p = BatchWrite { arena: std::mem::take(&mut self.arena), ..BatchWrite::default() };
        p.arena.clear();
        let result = self.enqueue_all(batch, &mut p).await;
        let records = p.recs.len();
        let outcome = match result {
            Ok(()) => self.await_deliveries(&mut p).await,
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(()) => self.dead_letter_all(&p, batch).await,
            Err(e) => Err(e),
        };
        // Exactly-once: the position goes last, once every record of the batch is acknowledged.
        let outcome = match outcome {
            Ok(()) => self.eos_send_position(&mut p, batch).await,
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(position) => self.eos_commit(position).await,
            Err(e) => {
                self.eos_abort().await?;
                Err(e)
            }
        };
        // Keep the arena for the next batch unless a huge value grew it (see OUTPUT_BUF_KEEP_MAX).
        self.arena = std::mem::take(&mut p.arena);
        super::release_output_buf(&mut self.arena);
        if outcome.is_ok() {
            tracing::debug!(
                changes = batch.changes.len(),
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "kafka batch delivered"
            );
        }
        outcome
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        if let DeadLetterDestination::File(file) = &mut self.dead_letter {
            file.repair().await.map_err(|e| e.into_sink_error(NAME))?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.check_producer().await?;
        if batch.changes.is_empty() && self.tx.open().is_none() && self.message_topics(batch).is_empty() {
            return Ok(());
        }
        let saved = (self.tx.clone(), self.commits);
        let result = self.write_batch(batch).await;
        if result.is_err() {
            // The same batch is offered again: start it from the same transaction state.
            (self.tx, self.commits) = saved;
            if let DeadLetterDestination::File(f) = &mut self.dead_letter {
                f.discard();
            }
        }
        result.map_err(|e| name_the_brokers(e, &self.cfg.bootstrap_servers))
    }
}

/// A retryable failure names the brokers and what to do: it is the one line per backoff step an
/// operator reads during an outage (the client's own lines are throttled).
fn name_the_brokers(error: SinkError, brokers: &str) -> SinkError {
    match error {
        SinkError::Transient { sink, source } => {
            SinkError::Transient { sink, source: format!("{source} (brokers {brokers}); fix: {}", client::UNREACHABLE_FIX).into() }
        }
        other => other,
    }
}

fn fatal_err(reason: String) -> SinkError {
    SinkError::Fatal { sink: NAME, reason }
}

fn transient(reason: String) -> SinkError {
    SinkError::Transient { sink: NAME, source: reason.into() }
}
