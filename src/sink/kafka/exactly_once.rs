//! Exactly-once (`exactly_once = true`, docs/kafka.md "Exactly-once"): a transactional producer;
//! each batch's records and the sink's position (the last change written, with the transaction
//! metadata state) go into one Kafka transaction, the position as the last record on a compacted
//! offsets topic keyed by the `transactional.id`. Before the first batch, and after a transaction
//! whose outcome is unknown, the position is read back with a `read_committed` consumer; changes
//! at or below it are not written again, so a restart that re-reads WAL Kafka already holds
//! publishes nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client;
use super::render::{BatchWrite, Rec};
use super::tx::OpenTx;
use super::{fatal_err, transient, KafkaSink};
use crate::config::KafkaSinkConfig;
use crate::decode::{Change, MessageEvent};
use crate::lsn::Lsn;
use crate::sink::{Batch, SinkError};

/// Offsets records read back from at most this far before the end first (the topic is
/// compacted on real brokers; two offsets per transaction: the record and its marker).
const TAIL: i64 = 64;

/// The exactly-once state of the sink.
pub(super) struct ExactlyOnce {
    /// The offsets topic.
    pub(super) topic: Arc<str>,
    /// The `transactional.id`, also the key of the offsets records.
    pub(super) id: String,
    /// `init_transactions` ran on the current producer.
    pub(super) ready: bool,
    /// The position must be read back before the next batch (start, or a transaction whose
    /// outcome is not known).
    pub(super) stale: bool,
    /// The last committed position.
    pub(super) committed: Option<Position>,
}

/// The value of an offsets record: where the sink is in the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Position {
    /// Commit LSN of the transaction of the last change written.
    pub(super) commit_lsn: u64,
    /// That change's number in its transaction.
    pub(super) seq: u64,
    /// The transaction whose BEGIN was written and whose END was not (transaction metadata).
    pub(super) open_tx: Option<SavedTx>,
    /// The previous and current commit LSNs of `source.sequence` (`previous_commit` mode).
    pub(super) commits: (Option<u64>, Option<u64>),
}

/// [`OpenTx`] as stored in the offsets record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedTx {
    commit_lsn: u64,
    id: String,
    events: u64,
    collections: Vec<(String, String, u64)>,
}

impl From<&OpenTx> for SavedTx {
    fn from(o: &OpenTx) -> Self {
        Self { commit_lsn: o.commit_lsn.0, id: o.id.clone(), events: o.events, collections: o.collections.clone() }
    }
}

impl From<SavedTx> for OpenTx {
    fn from(s: SavedTx) -> Self {
        Self { commit_lsn: Lsn(s.commit_lsn), id: s.id, events: s.events, collections: s.collections }
    }
}

impl Position {
    /// Whether `change` is at or below this position (already in Kafka).
    pub(super) fn covers(&self, change: &Change) -> bool {
        (change.commit_lsn.0, change.seq) <= (self.commit_lsn, self.seq)
    }
}

impl ExactlyOnce {
    /// The state for `cfg`, `None` when exactly-once is off.
    pub(super) fn new(cfg: &KafkaSinkConfig) -> Option<Self> {
        cfg.exactly_once.then(|| Self {
            topic: Arc::from(cfg.offsets_topic().as_str()),
            id: cfg.transactional_id(),
            ready: false,
            stale: true,
            committed: None,
        })
    }

    /// Whether a message was committed before.
    pub(super) fn skips_message(&self, m: &MessageEvent) -> bool {
        self.committed.as_ref().is_some_and(|p| m.position() <= (p.commit_lsn, p.seq))
    }

    /// Whether a change of a streamed batch was committed before.
    pub(super) fn skips(&self, batch: &Batch, change: &Change) -> bool {
        batch.snapshot.is_none() && self.committed.as_ref().is_some_and(|p| p.covers(change))
    }
}

fn kafka_timeout(cfg: &KafkaSinkConfig) -> Duration {
    Duration::from_millis(cfg.message_timeout_ms)
}

impl KafkaSink {
    /// Before a batch: a transactional producer, the position read back when it is stale, and
    /// a transaction begun.
    pub(super) async fn eos_begin(&mut self) -> Result<(), SinkError> {
        let Some(eos) = &self.eos else { return Ok(()) };
        if !eos.ready {
            self.ensure_offsets_topic().await?;
            let producer = self.producer.clone();
            let timeout = kafka_timeout(&self.cfg);
            let r = tokio::task::spawn_blocking(move || producer.init_transactions(timeout))
                .await
                .map_err(|e| fatal_err(format!("kafka init_transactions task failed: {e}")))?;
            if let Err(e) = r {
                return Err(tx_error("initializing the transactional producer", &e));
            }
            if let Some(eos) = &mut self.eos {
                eos.ready = true;
                eos.stale = true;
            }
        }
        if self.eos.as_ref().is_some_and(|e| e.stale) {
            self.read_position().await?;
        }
        self.producer.begin_transaction().map_err(|e| {
            if let Some(eos) = &mut self.eos {
                eos.ready = false;
            }
            tx_error("beginning a transaction", &e)
        })
    }

    /// After the batch's records are acknowledged: the position record, last in the transaction.
    pub(super) async fn eos_send_position(&mut self, p: &mut BatchWrite, batch: &Batch) -> Result<Option<Position>, SinkError> {
        let Some(eos) = &self.eos else { return Ok(None) };
        // The last change or message of the batch, whichever is later in the stream.
        let last_change = batch.changes.last().filter(|_| batch.snapshot.is_none()).map(|c| (c.commit_lsn.0, c.seq));
        let last = last_change.max(batch.messages.last().map(MessageEvent::position));
        let (commit_lsn, seq) = match (last, &eos.committed) {
            (Some(l), Some(p)) if l <= (p.commit_lsn, p.seq) => (p.commit_lsn, p.seq),
            (Some(l), _) => l,
            (None, Some(p)) => (p.commit_lsn, p.seq),
            (None, None) => (0, 0),
        };
        let pos = Position {
            commit_lsn,
            seq,
            open_tx: self.tx.open().map(SavedTx::from),
            commits: (self.commits.0.map(|l| l.0), self.commits.1.map(|l| l.0)),
        };
        let value = serde_json::to_vec(&pos).map_err(|e| fatal_err(format!("cannot encode the offsets record: {e}")))?;
        let key = append_raw(&mut p.arena, eos.id.as_bytes());
        let value = append_raw(&mut p.arena, &value);
        let rec = Rec {
            topic: Arc::clone(&eos.topic),
            key: Some(key),
            value: Some(value),
            lsn: Lsn(commit_lsn),
            commit_lsn: Lsn(commit_lsn),
            change: None,
        };
        self.send(p, rec, None).await?;
        self.await_deliveries(p).await?;
        Ok(Some(pos))
    }

    /// Commit the transaction; on success the position is the committed one.
    pub(super) async fn eos_commit(&mut self, pos: Option<Position>) -> Result<(), SinkError> {
        if self.eos.is_none() {
            return Ok(());
        }
        let timeout = kafka_timeout(&self.cfg);
        let mut attempts = 0;
        loop {
            let producer = self.producer.clone();
            let r = tokio::task::spawn_blocking(move || producer.commit_transaction(timeout))
                .await
                .map_err(|e| fatal_err(format!("kafka commit_transaction task failed: {e}")))?;
            match r {
                Ok(()) => {
                    if let Some(eos) = &mut self.eos {
                        if pos.is_some() {
                            eos.committed = pos;
                        }
                    }
                    return Ok(());
                }
                // A timed-out commit may still complete: calling it again resumes it.
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => attempts += 1,
                Err(e) => {
                    self.eos_abort().await?;
                    return Err(tx_error("committing the transaction", &e));
                }
            }
        }
    }

    /// After a failed batch: abort the transaction (a producer that cannot abort is replaced)
    /// and read the position back before the next batch, since a commit may have landed.
    pub(super) async fn eos_abort(&mut self) -> Result<(), SinkError> {
        let Some(eos) = &mut self.eos else { return Ok(()) };
        eos.stale = true;
        if !eos.ready {
            return Ok(());
        }
        let producer = self.producer.clone();
        let timeout = kafka_timeout(&self.cfg);
        let r = tokio::task::spawn_blocking(move || producer.abort_transaction(timeout))
            .await
            .map_err(|e| fatal_err(format!("kafka abort_transaction task failed: {e}")))?;
        if let Err(e) = r {
            // Not in a transaction (it never began) is fine; anything else: a new producer,
            // whose init_transactions aborts what this one left open.
            if !matches!(&e, KafkaError::Transaction(t) if t.code() == RDKafkaErrorCode::State) {
                self.replace_producer(&format!("the transaction could not be aborted: {e}")).await?;
            }
        }
        Ok(())
    }

    /// Create the offsets topic (one partition, compacted) unless it exists.
    async fn ensure_offsets_topic(&mut self) -> Result<(), SinkError> {
        let Some(topic) = self.eos.as_ref().map(|e| Arc::clone(&e.topic)) else { return Ok(()) };
        if self.known_topics.contains(&topic) || !self.cfg.create_topics {
            return Ok(());
        }
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(self.cfg.topic_replication_factor)).set("cleanup.policy", "compact");
        let timeout = Some(Duration::from_secs(30));
        let opts = AdminOptions::new().operation_timeout(timeout).request_timeout(timeout);
        let results = self
            .admin()?
            .create_topics([&new], &opts)
            .await
            .map_err(|e| transient(format!("cannot create the offsets topic {topic}: {e}")))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic = %topic, "created the exactly-once offsets topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(transient(format!(
                        "cannot create the offsets topic {topic}: {code:?}; fix: create it (1 partition, cleanup.policy=compact) or set sinks.kafka.offsets_topic"
                    )))
                }
            }
        }
        self.known_topics.insert(topic);
        Ok(())
    }

    /// Read the last committed position back and restore the transaction metadata state.
    async fn read_position(&mut self) -> Result<(), SinkError> {
        let Some(eos) = &self.eos else { return Ok(()) };
        let (topic, id, cfg) = (eos.topic.to_string(), eos.id.clone(), self.cfg.clone());
        let found = tokio::task::spawn_blocking(move || last_position(&cfg, &topic, &id))
            .await
            .map_err(|e| fatal_err(format!("reading the offsets topic failed: {e}")))?
            .map_err(transient)?;
        tracing::info!(
            commit_lsn = %found.as_ref().map_or(Lsn(0), |p| Lsn(p.commit_lsn)),
            seq = found.as_ref().map_or(0, |p| p.seq),
            "kafka exactly-once position read back; changes at or below it are not written again"
        );
        if let Some(p) = &found {
            self.tx.restore(p.open_tx.clone().map(OpenTx::from));
            self.commits = (p.commits.0.map(Lsn), p.commits.1.map(Lsn));
        }
        if let Some(eos) = &mut self.eos {
            eos.committed = found.filter(|p| p.commit_lsn > 0);
            eos.stale = false;
        }
        Ok(())
    }
}

/// The value of the last committed offsets record keyed `id` (blocking).
fn last_position(cfg: &KafkaSinkConfig, topic: &str, id: &str) -> Result<Option<Position>, String> {
    let mut c = client::client_config(cfg).map_err(|e| e.to_string())?;
    c.set("group.id", format!("{id}.offsets-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = c.create().map_err(|e| format!("cannot create the offsets reader: {e}"))?;
    let timeout = kafka_timeout(cfg);
    let (low, high) = consumer.fetch_watermarks(topic, 0, timeout).map_err(|e| {
        format!("cannot read the offsets topic {topic}: {e}; fix: check that it exists with 1 partition (sinks.kafka.offsets_topic)")
    })?;
    for start in [(high - TAIL).max(low), low] {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(start)).map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| format!("cannot read the offsets topic {topic}: {e}"))?;
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() > deadline {
                return Err(format!("reading the offsets topic {topic} did not reach its end within {timeout:?}; the batch is retried"));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None if start >= high => break,
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(format!("reading the offsets topic {topic}: {e}")),
                Some(Ok(m)) if m.key() == Some(id.as_bytes()) => {
                    let value = m.payload().unwrap_or_default();
                    let pos: Position = serde_json::from_slice(value).map_err(|e| {
                        format!("the offsets record at offset {} of {topic} is not walcast's: {e}; fix: point sinks.kafka.offsets_topic at a topic of its own", m.offset())
                    })?;
                    last = Some(pos);
                }
                Some(Ok(_)) => {}
            }
        }
        if last.is_some() || start == low {
            return Ok(last);
        }
    }
    Ok(None)
}

/// Append raw bytes to the arena; their range.
fn append_raw(arena: &mut Vec<u8>, bytes: &[u8]) -> std::ops::Range<usize> {
    let start = arena.len();
    arena.extend_from_slice(bytes);
    start..arena.len()
}

/// A transaction API failure: fatal for authorization, else the batch is retried.
fn tx_error(what: &str, e: &KafkaError) -> SinkError {
    match e.rdkafka_error_code() {
        Some(c) if client::is_auth_error(c) => fatal_err(format!(
            "{what} failed: {e}; fix: allow the principal to write transactional id (ACL on TransactionalId) and the offsets topic"
        )),
        _ => transient(format!("{what} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures;
    use crate::decode::{Op, ReplicaIdentity};

    fn change(commit_lsn: u64, seq: u64) -> Change {
        Change {
            commit_lsn: Lsn(commit_lsn),
            seq,
            ..fixtures::change(
                fixtures::relation("s", "t", ReplicaIdentity::Default, &[]),
                Op::Insert,
                None,
                Some(crate::decode::Tuple::default()),
            )
        }
    }

    #[test]
    fn position_covers_changes_at_or_below_it_in_commit_order() {
        let p = Position { commit_lsn: 1000, seq: 3, open_tx: None, commits: (None, None) };
        assert!(p.covers(&change(900, 50)));
        assert!(p.covers(&change(1000, 0)) && p.covers(&change(1000, 3)));
        assert!(!p.covers(&change(1000, 4)));
        assert!(!p.covers(&change(1001, 0)));
    }

    #[test]
    fn offsets_record_round_trips_with_the_open_transaction() {
        let open = OpenTx { commit_lsn: Lsn(7), id: "5:7".into(), events: 2, collections: vec![("s".into(), "t".into(), 2)] };
        let p = Position { commit_lsn: 7, seq: 1, open_tx: Some(SavedTx::from(&open)), commits: (Some(3), Some(7)) };
        let back: Position = serde_json::from_slice(&serde_json::to_vec(&p).expect("encodes")).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(OpenTx::from(back.open_tx.expect("open tx")), open);
    }
}
