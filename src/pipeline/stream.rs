//! The streaming loop: one biased `select!` over shutdown, sink reports, the replication stream
//! and the hand-over to the sinks (group commit while a sink writes), with reconnects and a
//! drain on shutdown. Generic over its event source (`SessionSource`), so its unit tests script
//! the server.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::session::{ReplicationSession, SessionSource};
use super::{PipelineError, RunSummary};
use crate::checkpoint::Checkpoint;
use crate::config::PipelineConfig;
use crate::decode::{self, Change, DecodeError, Message, Op, RelationCache, TruncateOptions};
use crate::lsn::Lsn;
use crate::metrics::{Metrics, SinkLabel, TableOp};
use crate::retry::Backoff;
use crate::sink::fanout::{InFlight, Sinks};
use crate::sink::{Batch, SinkError, SinkReport};
use crate::source::{self, Catalog, SourceError, SourceEvent};
use pacing::Pacing;

mod messages;
mod pacing;
#[cfg(test)]
mod tests;

/// Metric handles of one sink.
struct SinkGauges {
    /// `walcast_sink_durable_lsn{sink}`.
    durable: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Oldest commit time the sink still owes (`walcast_sink_lag_seconds{sink}`).
    lag: Arc<std::sync::atomic::AtomicI64>,
}

/// The transaction being read.
#[derive(Debug, Clone, Copy)]
struct OpenTx {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    next_seq: u64,
    /// Some of its changes were already handed to the sinks (it spans batches).
    partly_dispatched: bool,
}

/// How one replication session ended.
enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// The connection failed in a retryable way.
    Lost(SourceError),
}

/// The streaming loop's state: the batch being filled, the open transaction, what each sink
/// made durable.
pub(super) struct Streamer<'a, S: SessionSource> {
    limits: &'a PipelineConfig,
    sessions: S,
    /// Primary keys and user-defined types, looked up on Relation messages.
    catalog: Catalog,
    checkpoint: Checkpoint,
    queues: Vec<mpsc::Sender<Arc<Batch>>>,
    reports: mpsc::UnboundedReceiver<SinkReport>,
    tasks: JoinSet<()>,
    in_flight: Arc<InFlight>,
    relations: RelationCache,
    tx: Option<OpenTx>,
    batch: Batch,
    /// Changes of `batch` that belong to committed transactions.
    committed_len: usize,
    /// Messages of `batch` that belong to committed transactions (or to none).
    committed_msgs: usize,
    /// Logical decoding messages go into batches (a sink publishes them); else they are dropped.
    messages: bool,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    /// Per-sink metric handles, by sink index (looked up once, not per batch).
    sink_gauges: Vec<SinkGauges>,
    /// Commit time of the oldest change (or commit) in `batch`, for lag in seconds.
    batch_oldest_ts: Option<i64>,
    /// `walcast_changes_total` handles per (relation, op), so counting costs no label allocation.
    change_counters: HashMap<(u32, Op), prometheus_client::metrics::counter::Counter>,
    /// The publication's tables at start: a table that joins later is streamed from then on,
    /// without the rows it had before, which the log says.
    published: source::Published,
}

impl<'a, S: SessionSource> Streamer<'a, S> {
    /// A loop that streams from `start` (the slot's confirmed position) into `sinks`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        limits: &'a PipelineConfig,
        sessions: S,
        catalog: Catalog,
        sinks: Sinks,
        start: Lsn,
        published: source::Published,
        metrics: Arc<Metrics>,
        backoff: Backoff,
    ) -> Self {
        let Sinks { queues, reports, tasks, in_flight, names } = sinks;
        let mut sink_gauges = Vec::with_capacity(names.len());
        for name in &names {
            let label = SinkLabel { sink: name.to_string() };
            let durable = metrics.sink_durable_lsn.get_or_create(&label).clone();
            durable.set(start.0 as i64);
            sink_gauges.push(SinkGauges { durable, lag: metrics.lag.sink(name) });
            // A counter that exists at 0 lets increase() see the first dead letter (alerts.yml).
            metrics.dead_letters.get_or_create(&label).inc_by(0);
        }
        metrics.confirmed_lsn.set(start.0 as i64);
        Self {
            limits,
            sessions,
            catalog,
            checkpoint: Checkpoint::new(queues.len(), start),
            queues,
            reports,
            tasks,
            in_flight,
            relations: RelationCache::new(),
            tx: None,
            batch: Batch::default(),
            committed_len: 0,
            committed_msgs: 0,
            messages: false,
            backoff,
            metrics,
            sink_gauges,
            batch_oldest_ts: None,
            change_counters: HashMap::new(),
            published,
        }
    }

    /// Hand logical decoding messages to the sinks (`true`: a sink publishes them) instead of
    /// dropping them.
    pub(super) fn with_messages(mut self, on: bool) -> Self {
        self.messages = on;
        self
    }

    /// Stream until shutdown (then drain) or a permanent error.
    pub(super) async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary, PipelineError> {
        let mut stream: Option<S::Session> = None;
        let result = loop {
            let session = match stream.as_mut() {
                Some(s) => self.session(s, shutdown).await,
                None => match self.connect(shutdown).await {
                    Ok(Some(s)) => {
                        stream = Some(s);
                        continue;
                    }
                    Ok(None) => Ok(SessionEnd::Shutdown),
                    Err(e) => Err(e),
                },
            };
            match session {
                Ok(SessionEnd::Shutdown) => break Ok(()),
                Ok(SessionEnd::Lost(error)) => {
                    self.metrics.streaming.set(0);
                    self.metrics.reconnects.inc();
                    // The server resends every transaction after the confirmed LSN, so the
                    // unfinished one is dropped here and read again in full.
                    self.drop_uncommitted();
                    self.tx = None;
                    self.relations.clear();
                    self.catalog.forget_types();
                    let flushed = tokio::select! {
                        biased;
                        r = self.flush() => r,
                        _ = shutdown.cancelled() => break Ok(()),
                    };
                    if let Err(e) = flushed {
                        break Err(e);
                    }
                    drop(stream.take());
                    // The line an operator reads for a reconnect: the cause is in `error`.
                    let what = "replication connection lost, resuming from the last confirmed position (fix: nothing when rare; \
                                if it repeats, the server's log says why the connection ended)";
                    if !self.backoff.wait(shutdown, what, &error).await {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let drained = self.drain(stream).await;
        let result = match result {
            Err(PipelineError::Source(e)) => Err(self.sessions.explain(e).await.into()),
            other => other,
        };
        result.and(drained)?;
        Ok(RunSummary { confirmed: self.checkpoint.confirmed() })
    }

    /// Open a replication session, retrying retryable failures. `None` on shutdown.
    async fn connect(&mut self, shutdown: &CancellationToken) -> Result<Option<S::Session>, PipelineError> {
        loop {
            let start = self.checkpoint.confirmed();
            let attempt = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(None),
                r = self.sessions.open(start) => r,
            };
            match attempt {
                Ok(s) => {
                    self.backoff.reset();
                    self.metrics.streaming.set(1);
                    return Ok(Some(s));
                }
                Err(e) if e.is_retryable() => {
                    self.metrics.reconnects.inc();
                    if !self.backoff.wait(shutdown, "cannot start replication", &e).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stream until shutdown or a lost connection.
    async fn session(&mut self, stream: &mut S::Session, shutdown: &CancellationToken) -> Result<SessionEnd, PipelineError> {
        let max = self.limits.batch_max_changes;
        // Set when shutdown comes while the sinks already hold the first part of the open
        // transaction: reading goes on until its commit (or this deadline), so a clean stop
        // leaves no partial transaction behind that a restart would send again.
        let mut finish_by: Option<tokio::time::Instant> = None;
        // A sink is writing, the next batch holds what was ready to read, and nothing more was:
        // sleep until the sink is done instead of waking for every change that trickles in.
        let mut parked = false;
        // Built once: polling a fresh `cancelled()` every pass would register (and unregister)
        // a waiter with the token on every event.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut pace = Pacing::default();
        let gap = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(gap);
        loop {
            let sinks_idle = self.in_flight.is_idle();
            parked &= !sinks_idle;
            let room = self.batch.changes.len() + self.batch.messages.len() < max;
            let waits_for_gap = sinks_idle && room && self.has_batch() && pace.waits();
            tokio::select! {
                biased;
                // 1. Shutdown: stop reading; drain() writes out what was read.
                _ = &mut cancelled, if finish_by.is_none() => {
                    if !self.tx.is_some_and(|tx| tx.partly_dispatched) {
                        return Ok(SessionEnd::Shutdown);
                    }
                    tracing::info!("shutdown: finishing the transaction being written first");
                    finish_by = Some(tokio::time::Instant::now() + Duration::from_millis(self.limits.shutdown_timeout_ms));
                }
                _ = until(finish_by), if finish_by.is_some() => {
                    tracing::warn!("the open transaction did not finish before the shutdown timeout; its changes will be sent again on restart");
                    return Ok(SessionEnd::Shutdown);
                }
                // 2. Sink reports: durable positions move the confirmed LSN; a failed sink stops all.
                Some(report) = self.reports.recv() => self.on_report(report, Some(stream))?,
                // 3. The replication stream, while the batch has room (and not parked).
                event = stream.recv(), if room && !parked => match event {
                    Ok(Some(event)) => {
                        match self.on_event(event, stream).await {
                            Ok(()) => {}
                            // A catalog lookup (primary key, types) that may work on a new
                            // connection: read the transaction again on a new session.
                            Err(PipelineError::Source(e)) if e.is_retryable() => return Ok(SessionEnd::Lost(e)),
                            Err(e) => return Err(e),
                        }
                        if finish_by.is_some() && self.tx.is_none() {
                            return Ok(SessionEnd::Shutdown);
                        }
                    }
                    Ok(None) => return Ok(SessionEnd::Lost(SourceError::Connection {
                        target: self.sessions.target(),
                        reason: "the server ended the replication stream".into(),
                    })),
                    Err(e) if e.is_retryable() => return Ok(SessionEnd::Lost(e)),
                    Err(e) => return Err(e.into()),
                },
                // 4. Nothing more is ready to read (or the batch is full) and every sink is idle:
                //    hand the batch over now rather than wait for a timer, so a quiet stream has
                //    no batching delay. A full batch is handed over regardless (backpressure).
                _ = std::future::ready(()), if self.has_batch() && ((sinks_idle && !waits_for_gap) || !room) => {
                    parked = false;
                    gap.as_mut().reset(pace.handed_over());
                    // A stuck sink keeps its queue full: the hand-over must not outlast shutdown
                    // (what was not handed to every sink is not confirmed, and is sent again).
                    // But a transaction the sinks hold part of (or get part of now) is finished
                    // first, by the deadline, as in arm 1: stopping here would leave that part
                    // written and unconfirmed, sent twice after a clean stop.
                    let spans = self.tx.is_some_and(|tx| tx.partly_dispatched)
                        || (self.tx.is_some() && self.has_uncommitted());
                    let timeout = Duration::from_millis(self.limits.shutdown_timeout_ms);
                    let flush = self.flush();
                    tokio::pin!(flush);
                    let flushed = loop {
                        tokio::select! {
                            biased;
                            r = &mut flush => break Some(r),
                            _ = &mut cancelled, if finish_by.is_none() => {
                                if !spans {
                                    break None;
                                }
                                tracing::info!("shutdown: finishing the transaction being written first");
                                finish_by = Some(tokio::time::Instant::now() + timeout);
                            }
                            _ = until(finish_by), if finish_by.is_some() => break None,
                        }
                    };
                    match flushed {
                        Some(r) => r?,
                        None => {
                            tracing::warn!("shutdown while a sink queue was full; what was not handed over will be sent again on restart");
                            return Ok(SessionEnd::Shutdown);
                        }
                    }
                }
                // 4b. The sinks are idle but took the last batch less than HANDOVER_GAP ago: read
                //     what arrives into this batch until then.
                _ = &mut gap, if waits_for_gap => pace.passed(),
                // 5. Nothing more is ready but a sink is still writing: park (see `InFlight`).
                //    What arrives meanwhile waits in the source buffer and joins this batch.
                _ = std::future::ready(()), if self.has_batch() && !parked && !sinks_idle => parked = true,
                // 6. The sinks finished: read what accumulated, then hand it over (3, 4).
                _ = self.in_flight.idle(), if parked => parked = false,
            }
        }
    }

    fn has_batch(&self) -> bool {
        !self.batch.changes.is_empty() || self.batch.checkpoint.is_some()
    }

    async fn on_event(&mut self, event: SourceEvent, stream: &S::Session) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Begin(b) => {
                self.tx =
                    Some(OpenTx { xid: b.xid, commit_lsn: b.final_lsn, commit_ts: b.commit_ts, next_seq: 0, partly_dispatched: false });
            }
            SourceEvent::Data { wal_start, payload } => {
                let mut message = decode::parse(&payload).map_err(SourceError::from)?;
                if let Message::Relation(body) = &mut message {
                    self.catalog.describe(body).await?;
                }
                self.on_message(message, wal_start)?;
            }
            SourceEvent::Commit(c) => {
                self.batch_oldest_ts.get_or_insert(c.commit_ts);
                self.tx = None;
                self.batch.checkpoint = Some(c.end_lsn);
                self.committed_len = self.batch.changes.len();
                self.committed_msgs = self.batch.messages.len();
            }
            SourceEvent::Message(m) => self.on_logical_message(m),
            SourceEvent::KeepAlive { wal_end } => {
                if (wal_end.0 as i64) > self.metrics.server_wal_lsn.get() {
                    self.metrics.server_wal_lsn.set(wal_end.0 as i64);
                }
                if let Some(lsn) = self.checkpoint.on_idle(wal_end, self.tx.is_some(), self.has_batch()) {
                    tracing::debug!(confirmed = %lsn, "idle: confirming server position");
                    self.confirm(Some(stream), lsn);
                }
            }
        }
        Ok(())
    }

    fn on_message(&mut self, message: Message, lsn: Lsn) -> Result<(), PipelineError> {
        let (relation, op, old, new) = match message {
            Message::Relation(body) => {
                // A renamed table must count under its new name.
                self.change_counters.retain(|(oid, _), _| *oid != body.oid);
                if !self.published.all_tables && self.published.oids.insert(body.oid) {
                    tracing::warn!(
                        schema = %body.namespace,
                        table = %body.name,
                        fix = "if it had rows before, load them with `walcast snapshot --config FILE --table SCHEMA.TABLE`",
                        "a table joined the publication while walcast streamed: its changes are streamed from now on, the rows it had before are not in the sinks"
                    );
                }
                let previous = self.relations.get(body.oid).ok().cloned();
                let rel = self.relations.apply_relation(body);
                if let Some(c) = previous.map(|p| p.column_changes(&rel)).filter(|c| !c.is_empty()) {
                    tracing::info!(relation = %rel.qualified_name(), added = ?c.added, removed = ?c.removed, retyped = ?c.retyped, "table schema changed");
                }
                tracing::debug!(relation = %rel.qualified_name(), columns = rel.columns.len(), "relation described");
                return Ok(());
            }
            Message::Type(body) => {
                self.relations.apply_type(body);
                return Ok(());
            }
            Message::Insert { relation, new } => (relation, Op::Insert, None, Some(new)),
            Message::Update { relation, old, new } => (relation, Op::Update, old, Some(new)),
            Message::Delete { relation, old } => (relation, Op::Delete, Some(old), None),
            Message::Truncate { relations, cascade, restart_identity } => {
                for oid in relations {
                    let change = self.change(oid, lsn, Op::Truncate, None, None)?;
                    self.push(Change { truncate: TruncateOptions { cascade, restart_identity, resync: false }, ..change });
                }
                return Ok(());
            }
            // Begin/Commit/Message arrive as their own events; Origin needs no action.
            Message::Begin(_) | Message::Commit(_) | Message::Origin(_) | Message::Message(_) => return Ok(()),
        };
        let mut change = self.change(relation, lsn, op, old, new)?;
        change.fill_unchanged_from_old();
        self.push(change);
        Ok(())
    }

    /// Add a change to the current batch, counting it.
    fn push(&mut self, change: Change) {
        let metrics = &self.metrics;
        self.change_counters
            .entry((change.relation.oid, change.op))
            .or_insert_with(|| {
                metrics.changes.get_or_create(&TableOp { table: change.relation.qualified_name(), op: change.op.as_str() }).clone()
            })
            .inc();
        self.batch_oldest_ts.get_or_insert(change.commit_ts);
        self.batch.changes.push(change);
    }

    /// Confirm `lsn` to the slot (when a session is open) and export it.
    fn confirm(&self, stream: Option<&S::Session>, lsn: Lsn) {
        self.metrics.confirmed_lsn.set(lsn.0 as i64);
        if let Some(s) = stream {
            s.confirm(lsn);
        }
    }

    /// Export the commit times still owed, for the lag-in-seconds gauges.
    fn update_lag(&self) {
        for (i, gauges) in self.sink_gauges.iter().enumerate() {
            gauges.lag.store(self.checkpoint.oldest_pending(i).unwrap_or(0), Ordering::Relaxed);
        }
        let oldest = [self.checkpoint.oldest_pending_any(), self.batch_oldest_ts].into_iter().flatten().min();
        self.metrics.lag.set_oldest_pending(oldest.unwrap_or(0));
    }

    fn change(
        &mut self,
        oid: u32,
        lsn: Lsn,
        op: Op,
        old: Option<decode::OldTuple>,
        new: Option<decode::Tuple>,
    ) -> Result<Change, PipelineError> {
        let relation = Arc::clone(self.relations.get(oid).map_err(SourceError::from)?);
        let tx = self.tx.as_mut().ok_or_else(|| {
            SourceError::from(DecodeError::Malformed {
                tag: op.as_str().chars().next().unwrap_or('?'),
                reason: "row change outside a transaction".into(),
            })
        })?;
        let seq = tx.next_seq;
        tx.next_seq += 1;
        Ok(Change {
            lsn,
            commit_lsn: tx.commit_lsn,
            xid: tx.xid,
            commit_ts: tx.commit_ts,
            seq,
            relation,
            op,
            old,
            new,
            truncate: TruncateOptions::default(),
        })
    }

    fn on_report(&mut self, report: SinkReport, stream: Option<&S::Session>) -> Result<(), PipelineError> {
        match report {
            SinkReport::Durable { sink, lsn } => {
                if let Some(gauges) = self.sink_gauges.get(sink) {
                    gauges.durable.set(lsn.0 as i64);
                }
                if let Some(confirmed) = self.checkpoint.on_durable(sink, lsn) {
                    tracing::trace!(%confirmed, "confirming");
                    self.confirm(stream, confirmed);
                }
                self.update_lag();
                Ok(())
            }
            // Snapshot chunks are acknowledged to the snapshot loader, which runs before streaming.
            SinkReport::SnapshotChunk { .. } => Ok(()),
            SinkReport::Failed { error, .. } => Err(error.into()),
        }
    }

    /// Hand the current batch to every sink (waits while a sink's queue is full: backpressure).
    async fn flush(&mut self) -> Result<(), PipelineError> {
        if !self.has_batch() {
            return Ok(());
        }
        if self.has_uncommitted() {
            if let Some(tx) = self.tx.as_mut() {
                tx.partly_dispatched = true;
            }
        }
        let capacity = self.limits.batch_max_changes.min(1024);
        let batch = Arc::new(std::mem::replace(&mut self.batch, Batch { changes: Vec::with_capacity(capacity), ..Batch::default() }));
        self.committed_len = 0;
        self.committed_msgs = 0;
        self.checkpoint.on_dispatched(batch.checkpoint, self.batch_oldest_ts.take());
        self.update_lag();
        for queue in &self.queues {
            self.in_flight.add();
            if queue.send(Arc::clone(&batch)).await.is_err() {
                // The sink task ended, and sent its report before it dropped its queue: the
                // report is either waiting here or was handled already (then the caller holds the
                // error). Never wait for the channel to close: the other sinks' tasks keep it open.
                while let Ok(report) = self.reports.try_recv() {
                    self.on_report(report, None)?;
                }
                return Err(SinkError::Fatal {
                    sink: "pipeline",
                    reason: "a sink stopped (see the error reported before this one)".into(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Write out what was read, wait (bounded) for the sinks, confirm the final position.
    async fn drain(&mut self, stream: Option<S::Session>) -> Result<(), PipelineError> {
        // An unfinished transaction is resent after restart anyway; keep whole ones only.
        self.drop_uncommitted();
        // One deadline for the whole drain: handing the last batch to a sink whose queue is full
        // counts against it too, then the sink tasks are aborted wherever they are (a request,
        // a retry sleep, index creation).
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.limits.shutdown_timeout_ms);
        let flushed = match tokio::time::timeout_at(deadline, self.flush()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("a sink queue stayed full until the shutdown timeout; the last batch will be sent again on restart");
                Ok(())
            }
        };
        self.queues.clear();
        let mut failure = flushed.err();
        loop {
            let report = tokio::select! {
                r = self.reports.recv() => r,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(dispatched = %self.checkpoint.dispatched(), confirmed = %self.checkpoint.confirmed(), "sinks did not finish in time; unconfirmed changes will be sent again on restart");
                    break;
                }
            };
            match report {
                Some(r) => {
                    if let Err(e) = self.on_report(r, stream.as_ref()) {
                        failure.get_or_insert(e);
                    }
                }
                None => break,
            }
        }
        self.tasks.abort_all();
        self.metrics.streaming.set(0);
        let confirmed = self.checkpoint.confirmed();
        if let Some(s) = stream {
            self.confirm(Some(&s), confirmed);
            if let Err(error) = s.stop().await {
                tracing::debug!(%error, "replication stream did not end cleanly");
            }
        }
        // The stream may close before its last status update went out.
        if let Err(error) = self.sessions.settle(confirmed).await {
            tracing::warn!(%error, %confirmed, "could not record the final position; changes after the last status update will be sent again");
        }
        tracing::info!(%confirmed, "stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sleep until `deadline`; never with `None`. Lazy, unlike `sleep_until`: `select!` builds every
/// arm's future on every pass, and a timer entry per event costs more than the event.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
