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
pub mod envelope;
mod tx;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientConfig;
use tokio::sync::watch;

pub use check::kafka_findings;

use self::client::{classify, Context, Failure, ADMIN_TIMEOUT};
use self::dead_letter::{truncated_document, DeadLetterFile, DeadRecord};
use self::envelope::{
    now_unix_micros, split_key_change, write_key, write_tx_begin, write_tx_end, write_tx_key, write_value, Event, SourceStatic, TxBlock,
};
use self::tx::{OpenTx, TxTracker};
use super::{Batch, Sink, SinkError};
use crate::config::KafkaSinkConfig;
use crate::decode::{Change, Datum, DecodeError, OldTupleKind, Op, Relation, ReplicaIdentity};
use crate::lsn::Lsn;
use crate::route::TopicRouter;

const NAME: &str = "kafka";

/// How long a topic found missing (or invalid) is believed missing before it is looked up again.
const MISSING_TOPIC_RECHECK: Duration = Duration::from_secs(30);

/// Header with the change's LSN (`X/Y`).
pub const HEADER_LSN: &str = "walcast.lsn";
/// Header with the transaction's commit LSN (`X/Y`).
pub const HEADER_COMMIT_LSN: &str = "walcast.commit_lsn";
/// Dead-letter header: why the record could not be written.
pub const HEADER_REASON: &str = "walcast.reason";
/// Dead-letter header: the topic the record was meant for.
pub const HEADER_TOPIC: &str = "walcast.topic";

type KafkaProducer = FutureProducer<Context>;

/// Where records that can never be written go.
enum DeadLetter {
    /// Nowhere: such a record stops walcast.
    None,
    /// A topic.
    Topic(Arc<str>),
    /// A JSON-lines file.
    File(DeadLetterFile),
}

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
    dead_letter: DeadLetter,
    dead_letters: Arc<AtomicU64>,
    /// `walcast_dead_letters_total{sink="kafka"}`, when the pipeline exports metrics.
    dead_letter_metric: Option<prometheus_client::metrics::counter::Counter>,
    /// Rendered keys and values of the current batch (reused).
    arena: Vec<u8>,
    /// How many times the producer was replaced since the sink was opened (logged).
    replacements: u64,
}

/// What a record of the batch is, for the dead-letter destination and for logs.
#[derive(Debug, Clone)]
struct Rec {
    topic: Arc<str>,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    lsn: Lsn,
    commit_lsn: Lsn,
    /// The change the record comes from (`None` for transaction records).
    change: Option<usize>,
}

/// The records of one batch write.
#[derive(Default)]
struct Pending {
    arena: Vec<u8>,
    recs: Vec<Rec>,
    futures: Vec<(usize, DeliveryFuture)>,
    /// Records (index in `recs`) that can never be written, with the reason.
    dead: Vec<(usize, String)>,
    /// Why the batch must be written again, if it must.
    retry: Option<String>,
    /// Why the producer must be replaced before the batch is written again, if it must.
    replace: Option<String>,
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
                (Some(topic), _) => DeadLetter::Topic(Arc::from(topic.as_str())),
                (None, Some(path)) => DeadLetter::File(DeadLetterFile::open(path).map_err(|e| {
                    fatal_err(format!(
                        "cannot open the dead-letter file {} for appending: {e}; check sinks.kafka.dead_letter.path and its permissions",
                        path.display()
                    ))
                })?),
                (None, None) => DeadLetter::None,
            },
            None => DeadLetter::None,
        };
        tracing::info!(
            bootstrap_servers = %cfg.bootstrap_servers,
            create_topics = cfg.create_topics,
            transaction_topic = cfg.transaction_topic.as_deref().unwrap_or("-"),
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
    async fn check_producer(&mut self) -> Result<(), SinkError> {
        match self.producer.client().fatal_error() {
            Some((code, reason)) if client::is_auth_error(code) => Err(fatal_err(client::auth_message(&reason))),
            Some((code, reason)) => {
                let reason = format!("{code:?}: {reason}");
                self.replace_producer(&reason).await?;
                Err(transient(format!("the producer failed for good and was replaced: {reason}")))
            }
            None => match self.fatal.borrow().clone() {
                Some(notice) => Err(fatal_err(client::auth_message(&notice))),
                None => Ok(()),
            },
        }
    }

    /// Replace the producer with a new one (a new producer id): a fenced or failed idempotent
    /// producer never delivers again, however often the batch is retried. The caller then fails
    /// the batch, which is written again whole by the new producer (at-least-once: records the
    /// old one did deliver are duplicated, as after a crash). The old producer is destroyed
    /// first, purging what it still holds and closing its connections, so nothing it had in
    /// flight can land after the new producer's records of the same keys.
    async fn replace_producer(&mut self, reason: &str) -> Result<(), SinkError> {
        let (producer, fatal) = new_producer(&self.cfg)?;
        let old = std::mem::replace(&mut self.producer, producer);
        self.fatal = fatal;
        self.replacements += 1;
        tracing::warn!(
            reason,
            replacements = self.replacements,
            "replacing the kafka producer (fenced or failed for good); the batch is written again"
        );
        // Destroying a producer purges and waits for its threads: not on the runtime thread.
        tokio::task::spawn_blocking(move || drop(old))
            .await
            .map_err(|e| fatal_err(format!("destroying the replaced Kafka producer failed: {e}")))
    }

    fn admin(&mut self) -> Result<&AdminClient<Context>, SinkError> {
        if self.admin.is_none() {
            let config = client::client_config(&self.cfg).map_err(|e| fatal_err(e.to_string()))?;
            let (context, _) = Context::new();
            let admin = config.create_with_context(context).map_err(|e| fatal_err(format!("cannot create the Kafka admin client: {e}")))?;
            self.admin = Some(admin);
        }
        self.admin.as_ref().ok_or_else(|| fatal_err("admin client missing".into()))
    }

    /// Make sure every topic the batch writes to exists (created, or looked up when creation is
    /// off). Topics that cannot exist are remembered in `missing_topics`.
    async fn ensure_topics(&mut self, topics: Vec<Arc<str>>) -> Result<(), SinkError> {
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

    /// Key column indexes of a relation: the configured `key_columns`, or the replica identity key.
    fn key_columns(&mut self, rel: &Arc<Relation>) -> Arc<[usize]> {
        if let Some((cached, cols)) = self.key_cache.get(&rel.oid) {
            if Arc::ptr_eq(cached, rel) {
                return Arc::clone(cols);
            }
        }
        let name = rel.qualified_name();
        let cols: Vec<usize> = match self.key_overrides.get(&name) {
            Some(names) => {
                let found: Option<Vec<usize>> = names.iter().map(|n| rel.columns.iter().position(|c| &c.name == n)).collect();
                match found {
                    Some(cols) => cols,
                    None => {
                        tracing::warn!(table = %name, key_columns = ?names, "configured key_columns are not all columns of the table; using its replica identity key");
                        rel.key_columns().collect()
                    }
                }
            }
            None => {
                // For REPLICA IDENTITY FULL the pipeline flags the primary key; a table without
                // one keeps every column flagged, which makes each row version a new key.
                if rel.replica_identity == ReplicaIdentity::Full && rel.columns.len() > 1 && rel.columns.iter().all(|c| c.key) {
                    tracing::warn!(table = %name, "table has REPLICA IDENTITY FULL and no primary key, so every column is the record key; set sinks.kafka.tables.\"{name}\".key_columns");
                }
                rel.key_columns().collect()
            }
        };
        let cols: Arc<[usize]> = Arc::from(cols);
        self.key_cache.insert(rel.oid, (Arc::clone(rel), Arc::clone(&cols)));
        cols
    }

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
        for extra in [self.tx_topic.clone(), self.dead_letter_topic()].into_iter().flatten() {
            if !self.known_topics.contains(&extra) && !topics.contains(&extra) && (!batch.changes.is_empty() || self.tx.open().is_some()) {
                topics.push(extra);
            }
        }
        self.ensure_topics(topics).await?;

        // 2. Render and enqueue.
        let mut p = Pending { arena: std::mem::take(&mut self.arena), ..Pending::default() };
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

    fn dead_letter_topic(&self) -> Option<Arc<str>> {
        match &self.dead_letter {
            DeadLetter::Topic(t) => Some(Arc::clone(t)),
            _ => None,
        }
    }

    async fn enqueue_all(&mut self, batch: &Batch, p: &mut Pending) -> Result<(), SinkError> {
        // Snapshot rows belong to no transaction: no BEGIN/END records for them.
        let tx_on = self.tx_topic.is_some() && batch.snapshot.is_none();
        for (idx, change) in batch.changes.iter().enumerate() {
            if tx_on {
                let b = self.tx.on_change(change);
                if let Some(ended) = b.ended {
                    self.emit_tx_end(p, &ended).await?;
                }
                if b.begin {
                    self.emit_tx_begin(p, change).await?;
                }
            }
            self.emit_change(p, idx, change).await?;
        }
        if tx_on {
            if let Some(ended) = self.tx.on_batch_end(batch.checkpoint) {
                self.emit_tx_end(p, &ended).await?;
            }
        }
        Ok(())
    }

    async fn emit_tx_begin(&mut self, p: &mut Pending, change: &Change) -> Result<(), SinkError> {
        let (Some(topic), Some(open)) = (self.tx_topic.clone(), self.tx.open()) else { return Ok(()) };
        let id = open.id.clone();
        let key = append(&mut p.arena, |b| write_tx_key(b, &id));
        let value = append(&mut p.arena, |b| write_tx_begin(b, &id, now_unix_micros()));
        let rec = Rec { topic, key: Some(key), value: Some(value), lsn: change.commit_lsn, commit_lsn: change.commit_lsn, change: None };
        self.send(p, rec, None).await
    }

    async fn emit_tx_end(&mut self, p: &mut Pending, ended: &OpenTx) -> Result<(), SinkError> {
        let Some(topic) = self.tx_topic.clone() else { return Ok(()) };
        let key = append(&mut p.arena, |b| write_tx_key(b, &ended.id));
        let collections: Vec<(String, u64)> = ended.collections.iter().map(|(s, t, n)| (format!("{s}.{t}"), *n)).collect();
        let value = append(&mut p.arena, |b| {
            write_tx_end(b, &ended.id, ended.events, collections.iter().map(|(n, c)| (n.as_str(), *c)), now_unix_micros())
        });
        let rec = Rec { topic, key: Some(key), value: Some(value), lsn: ended.commit_lsn, commit_lsn: ended.commit_lsn, change: None };
        self.send(p, rec, None).await
    }

    /// The records of one change: its event (two for a key change), and tombstones after deletes.
    async fn emit_change(&mut self, p: &mut Pending, idx: usize, change: &Change) -> Result<(), SinkError> {
        let rel = &change.relation;
        let topic = self.router.topic(rel);
        let key_cols = self.key_columns(rel);
        let render_err = |source: DecodeError| SinkError::Render { lsn: change.lsn, table: rel.qualified_name(), source };
        let rec = |key: Option<Range<usize>>, value: Option<Range<usize>>| Rec {
            topic: Arc::clone(&topic),
            key,
            value,
            lsn: change.lsn,
            commit_lsn: change.commit_lsn,
            change: Some(idx),
        };
        match change.op {
            Op::Update if key_changed(change, &key_cols) => {
                let (delete, create) = split_key_change(change);
                let old_key = render_key(&mut p.arena, rel, delete.before, &key_cols).map_err(render_err)?;
                let new_key = render_key(&mut p.arena, rel, create.after, &key_cols).map_err(render_err)?;
                let value = self.render_event(&mut p.arena, &delete).map_err(render_err)?;
                let header = new_key.clone().map(|k| ("__debezium.newkey", k));
                self.send(p, rec(old_key.clone(), Some(value)), header).await?;
                if self.cfg.tombstones_on_delete && old_key.is_some() {
                    self.send(p, rec(old_key.clone(), None), None).await?;
                }
                let value = self.render_event(&mut p.arena, &create).map_err(render_err)?;
                let header = old_key.map(|k| ("__debezium.oldkey", k));
                self.send(p, rec(new_key, Some(value)), header).await
            }
            op => {
                let event = Event::streamed(change);
                let key = match op {
                    Op::Truncate => None,
                    _ => render_key(&mut p.arena, rel, change.key_source(), &key_cols).map_err(render_err)?,
                };
                let value = self.render_event(&mut p.arena, &event).map_err(render_err)?;
                self.send(p, rec(key.clone(), Some(value)), None).await?;
                if op == Op::Delete && self.cfg.tombstones_on_delete && key.is_some() {
                    self.send(p, rec(key, None), None).await?;
                }
                Ok(())
            }
        }
    }

    fn render_event(&mut self, arena: &mut Vec<u8>, event: &Event<'_>) -> Result<Range<usize>, DecodeError> {
        let start = arena.len();
        let block = if self.tx_topic.is_some() {
            let (total_order, data_collection_order) = self.tx.count_event(&event.change.relation.schema, &event.change.relation.table);
            self.tx.open().map(|o| (o.id.clone(), total_order, data_collection_order))
        } else {
            None
        };
        let tx = block.as_ref().map(|(id, total_order, data_collection_order)| TxBlock {
            id,
            total_order: *total_order,
            data_collection_order: *data_collection_order,
        });
        write_value(arena, event, &self.source, now_unix_micros(), tx)?;
        Ok(start..arena.len())
    }

    /// Enqueue one record; waits while the producer's queue is full. `extra` is an additional
    /// header whose value is a range of the arena.
    async fn send(&mut self, p: &mut Pending, rec: Rec, extra: Option<(&str, Range<usize>)>) -> Result<(), SinkError> {
        let index = p.recs.len();
        if let Some((_, reason)) = self.missing_topics.get(&rec.topic) {
            p.dead.push((index, reason.clone()));
            p.recs.push(rec);
            return Ok(());
        }
        let lsn = rec.lsn.to_string();
        let commit_lsn = rec.commit_lsn.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: HEADER_LSN, value: Some(lsn.as_str()) })
            .insert(Header { key: HEADER_COMMIT_LSN, value: Some(commit_lsn.as_str()) });
        if let Some((name, range)) = extra {
            headers = headers.insert(Header { key: name, value: Some(&p.arena[range]) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&rec.topic).headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(&p.arena[k.clone()]);
        }
        if let Some(v) = &rec.value {
            record = record.payload(&p.arena[v.clone()]);
        }
        let outcome = loop {
            match self.producer.send_result(record) {
                Ok(future) => break Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure: the producer buffers as much as queue_max_kbytes allows.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => break Err(e),
            }
        };
        match outcome {
            Ok(future) => p.futures.push((index, future)),
            Err(e) => match classify(&e, self.cfg.create_topics, &rec.topic, self.cfg.message_max_bytes) {
                Failure::DeadLetter(reason) => p.dead.push((index, reason)),
                Failure::Fatal(reason) => return Err(fatal_err(reason)),
                Failure::Replace(reason) => {
                    p.replace.get_or_insert(reason);
                }
                Failure::Retry(reason) => {
                    self.known_topics.remove(&rec.topic);
                    p.retry.get_or_insert(reason);
                }
            },
        }
        p.recs.push(rec);
        Ok(())
    }

    /// Wait for every delivery report of the batch.
    async fn await_deliveries(&mut self, p: &mut Pending) -> Result<(), SinkError> {
        let futures = std::mem::take(&mut p.futures);
        let mut fatal = self.fatal.clone();
        let all = async {
            let mut failed = Vec::new();
            for (index, future) in futures {
                match future.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => failed.push((index, Some(error))),
                    Err(_canceled) => failed.push((index, None)),
                }
            }
            failed
        };
        let failed = tokio::select! {
            failed = all => failed,
            () = wait_fatal(&mut fatal) => {
                self.check_producer().await?;
                return Err(transient("the producer reported an error".into()));
            }
        };
        for (index, error) in failed {
            let topic = &p.recs[index].topic;
            let failure = match &error {
                Some(e) => classify(e, self.cfg.create_topics, topic, self.cfg.message_max_bytes),
                None => Failure::Retry("the producer was closed".into()),
            };
            match failure {
                Failure::DeadLetter(reason) => p.dead.push((index, reason)),
                Failure::Fatal(reason) => return Err(fatal_err(reason)),
                Failure::Replace(reason) => {
                    p.replace.get_or_insert(reason);
                }
                Failure::Retry(reason) => {
                    if matches!(
                        error.as_ref().and_then(KafkaError::rdkafka_error_code),
                        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
                    ) {
                        // Created again (or looked up) before the retry.
                        let topic = Arc::clone(topic);
                        self.known_topics.remove(&topic);
                    }
                    p.retry.get_or_insert(reason);
                }
            }
        }
        let undelivered = p.recs.len() - p.dead.len();
        if let Some(reason) = p.replace.take() {
            self.replace_producer(&reason).await?;
            return Err(transient(format!("{undelivered} of {} records not delivered, the producer was replaced: {reason}", p.recs.len())));
        }
        match p.retry.take() {
            Some(reason) => {
                self.check_producer().await?;
                Err(transient(format!("{undelivered} of {} records not delivered: {reason}", p.recs.len())))
            }
            None => Ok(()),
        }
    }

    /// Set aside the records that can never be written; they count as durable once the
    /// dead-letter destination has them.
    async fn dead_letter_all(&mut self, p: &Pending, batch: &Batch) -> Result<(), SinkError> {
        if p.dead.is_empty() {
            return Ok(());
        }
        let records: Vec<(DeadRecord<'_>, &str)> = p
            .dead
            .iter()
            .map(|(index, reason)| {
                let rec = &p.recs[*index];
                let (schema, table) = match rec.change.and_then(|i| batch.changes.get(i)) {
                    Some(c) => (c.relation.schema.as_str(), c.relation.table.as_str()),
                    None => ("", ""),
                };
                let dead = DeadRecord {
                    lsn: rec.lsn,
                    commit_lsn: rec.commit_lsn,
                    schema,
                    table,
                    key: rec.key.clone().map(|r| &p.arena[r]),
                    value: rec.value.clone().map(|r| &p.arena[r]),
                    topic: &rec.topic,
                    reason,
                };
                (dead, reason.as_str())
            })
            .collect();
        let destination = match &mut self.dead_letter {
            DeadLetter::None => {
                let (first, reason) = &records[0];
                return Err(fatal_err(format!(
                    "a record for topic {} (lsn {}) can never be written: {reason}; fix the cause, or configure \
                     [sinks.kafka.dead_letter] (topic or path) to set such records aside and go on",
                    first.topic, first.lsn
                )));
            }
            DeadLetter::File(file) => {
                for (r, _) in &records {
                    file.push(r);
                }
                file.sync().await.map_err(|e| e.into_sink_error(NAME))?;
                file.path().display().to_string()
            }
            DeadLetter::Topic(topic) => {
                let topic = Arc::clone(topic);
                self.dead_letter_to_topic(&topic, &records).await?;
                format!("topic {topic}")
            }
        };
        for (r, reason) in &records {
            tracing::warn!(topic = %r.topic, lsn = %r.lsn, commit_lsn = %r.commit_lsn, table = %format!("{}.{}", r.schema, r.table), reason, destination = %destination, "record sent to the dead-letter destination");
        }
        self.dead_letters.fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some(metric) = &self.dead_letter_metric {
            metric.inc_by(records.len() as u64);
        }
        Ok(())
    }

    async fn dead_letter_to_topic(&mut self, topic: &str, records: &[(DeadRecord<'_>, &str)]) -> Result<(), SinkError> {
        for (r, reason) in records {
            let mut truncated = false;
            loop {
                let doc;
                let value: Option<&[u8]> = if truncated {
                    doc = truncated_document(r);
                    Some(&doc)
                } else {
                    r.value
                };
                let lsn = r.lsn.to_string();
                let commit_lsn = r.commit_lsn.to_string();
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header { key: HEADER_LSN, value: Some(lsn.as_str()) })
                    .insert(Header { key: HEADER_COMMIT_LSN, value: Some(commit_lsn.as_str()) })
                    .insert(Header { key: HEADER_REASON, value: Some(*reason) })
                    .insert(Header { key: HEADER_TOPIC, value: Some(r.topic) });
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
                if let Some(k) = r.key {
                    record = record.key(k);
                }
                if let Some(v) = value {
                    record = record.payload(v);
                }
                let result = match self.producer.send_result(record) {
                    Ok(future) => match future.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(Some(e)),
                        Err(_) => Err(None),
                    },
                    Err((e, _)) => Err(Some(e)),
                };
                match result {
                    Ok(()) => break,
                    Err(None) => return Err(transient("the producer was closed".into())),
                    Err(Some(e)) => match classify(&e, self.cfg.create_topics, topic, self.cfg.message_max_bytes) {
                        Failure::DeadLetter(_) if !truncated && e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                            truncated = true;
                        }
                        Failure::DeadLetter(why) => {
                            return Err(fatal_err(format!(
                                "the dead-letter topic {topic} cannot take a record: {why}; fix sinks.kafka.dead_letter"
                            )))
                        }
                        Failure::Fatal(why) => return Err(fatal_err(why)),
                        Failure::Replace(why) => {
                            self.replace_producer(&why).await?;
                            return Err(transient(format!("dead-letter topic {topic}: {why}; the producer was replaced")));
                        }
                        Failure::Retry(why) => return Err(transient(format!("dead-letter topic {topic}: {why}"))),
                    },
                }
            }
        }
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        if let DeadLetter::File(file) = &mut self.dead_letter {
            file.repair().await.map_err(|e| e.into_sink_error(NAME))?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.check_producer().await?;
        if batch.changes.is_empty() && self.tx.open().is_none() {
            return Ok(());
        }
        let saved = self.tx.clone();
        let result = self.write_batch(batch).await;
        if result.is_err() {
            // The same batch is offered again: start it from the same transaction state.
            self.tx = saved;
            if let DeadLetter::File(f) = &mut self.dead_letter {
                f.discard();
            }
        }
        result
    }
}

/// Whether an update moved the row to another key (then it becomes a delete and a create).
fn key_changed(change: &Change, key_cols: &[usize]) -> bool {
    let (Some(old), Some(new)) = (&change.old, &change.new) else { return false };
    key_cols.iter().any(|&i| {
        // A key-only old tuple carries the replica identity columns only.
        if old.kind == OldTupleKind::Key && !change.relation.columns.get(i).is_some_and(|c| c.key) {
            return false;
        }
        match (old.values.get(i), new.get(i)) {
            (Some(Datum::Unchanged), _) | (_, Some(Datum::Unchanged)) | (None, _) | (_, None) => false,
            (Some(a), Some(b)) => a != b,
        }
    })
}

fn render_key(
    arena: &mut Vec<u8>,
    rel: &Relation,
    values: Option<&[Datum]>,
    key_cols: &[usize],
) -> Result<Option<Range<usize>>, DecodeError> {
    let start = arena.len();
    Ok(write_key(arena, rel, values, key_cols)?.then_some(start..arena.len()))
}

fn append(arena: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = arena.len();
    f(arena);
    start..arena.len()
}

async fn wait_fatal(rx: &mut watch::Receiver<Option<String>>) {
    loop {
        if rx.borrow_and_update().is_some() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn new_producer(cfg: &KafkaSinkConfig) -> Result<(KafkaProducer, watch::Receiver<Option<String>>), SinkError> {
    let config: ClientConfig = client::producer_config(cfg).map_err(|e| fatal_err(e.to_string()))?;
    let (context, fatal) = Context::new();
    let producer = config
        .create_with_context(context)
        .map_err(|e| fatal_err(format!("cannot create the Kafka producer: {e}; check the [sinks.kafka] settings")))?;
    Ok((producer, fatal))
}

fn fatal_err(reason: String) -> SinkError {
    SinkError::Fatal { sink: NAME, reason }
}

fn transient(reason: String) -> SinkError {
    SinkError::Transient { sink: NAME, source: std::io::Error::other(reason) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::{self, text};
    use crate::decode::OldTuple;

    fn update(old: Option<OldTuple>, new: Vec<Datum>) -> Change {
        let rel = fixtures::relation("s", "t", ReplicaIdentity::Default, &[("id", true, 23), ("v", false, 23)]);
        fixtures::change(rel, Op::Update, old, Some(new))
    }

    #[test]
    fn key_change_is_detected_from_the_old_key() {
        let old = |id: &str, kind| {
            Some(OldTuple { kind, values: vec![text(id), if kind == OldTupleKind::Key { Datum::Null } else { text("9") }] })
        };
        assert!(key_changed(&update(old("1", OldTupleKind::Key), vec![text("2"), text("x")]), &[0]));
        assert!(!key_changed(&update(old("1", OldTupleKind::Full), vec![text("1"), text("x")]), &[0]));
        assert!(key_changed(&update(old("1", OldTupleKind::Full), vec![text("3"), text("x")]), &[0]));
        assert!(!key_changed(&update(None, vec![text("1"), text("x")]), &[0]));
        // A key-only old tuple says nothing about a non-identity column used as key.
        assert!(!key_changed(&update(old("1", OldTupleKind::Key), vec![text("1"), text("x")]), &[1]));
    }
}
