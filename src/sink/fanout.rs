//! The sink fan-out: one task per sink behind a bounded queue, the reports coming back, and the
//! count of batches handed over and not yet written (which the streaming loop parks on). Both the
//! streaming loop and the snapshot loads write through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::changelog::{ChangelogSink, CursorBook, Cursored};
use super::{drive, Batch, ElasticsearchSink, JsonlSink, KafkaSink, Sink, SinkError, SinkReport};
use crate::config::{Config, PipelineConfig, RetryConfig};
use crate::metrics::{Metrics, SinkLabel};
use crate::retry::Backoff;
use crate::source::ConnParams;

/// The running sink tasks.
pub(crate) struct Sinks {
    /// One queue per sink, by sink index.
    pub(crate) queues: Vec<mpsc::Sender<Arc<Batch>>>,
    /// Reports of every sink; closes once every task has ended.
    pub(crate) reports: mpsc::UnboundedReceiver<SinkReport>,
    /// The sink tasks.
    pub(crate) tasks: JoinSet<()>,
    /// Batches handed over and not yet written.
    pub(crate) in_flight: Arc<InFlight>,
    /// Sink names, by sink index.
    pub(crate) names: Vec<&'static str>,
}

/// Open every configured sink (only Elasticsearch with `elasticsearch_only`) and start a task
/// driving each behind a bounded queue.
pub(crate) fn start_sinks(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    elasticsearch_only: bool,
    shutdown: &CancellationToken,
) -> Result<Sinks, SinkError> {
    let mut fanout = Fanout::new(&config.pipeline, &config.retry, metrics, shutdown);
    fanout.open_configured(config, params, elasticsearch_only)?;
    Ok(fanout.started())
}

/// Sinks being started, one task each.
pub(crate) struct Fanout<'a> {
    sinks: Sinks,
    report_tx: mpsc::UnboundedSender<SinkReport>,
    limits: &'a PipelineConfig,
    retry: &'a RetryConfig,
    metrics: &'a Arc<Metrics>,
    /// Ends the sinks' retry waits.
    shutdown: &'a CancellationToken,
    /// When set, each sink's durable position is recorded as its cursor.
    cursors: Option<CursorBook>,
}

impl<'a> Fanout<'a> {
    /// No sink yet.
    pub(crate) fn new(
        limits: &'a PipelineConfig,
        retry: &'a RetryConfig,
        metrics: &'a Arc<Metrics>,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let (report_tx, reports) = mpsc::unbounded_channel();
        let sinks =
            Sinks { queues: Vec::new(), reports, tasks: JoinSet::new(), in_flight: Arc::new(InFlight::default()), names: Vec::new() };
        Self { sinks, report_tx, limits, retry, metrics, shutdown, cursors: None }
    }

    /// Record the durable position of every sink spawned from now on as its cursor in `book`.
    pub(crate) fn with_cursors(mut self, book: CursorBook) -> Self {
        self.cursors = Some(book);
        self
    }

    /// Open every configured sink (only Elasticsearch with `elasticsearch_only`) and start a task
    /// driving each.
    pub(crate) fn open_configured(&mut self, config: &Config, params: &ConnParams, elasticsearch_only: bool) -> Result<(), SinkError> {
        let metrics = self.metrics;
        if let (Some(j), false) = (&config.sinks.jsonl, elasticsearch_only) {
            self.spawn(JsonlSink::open(&j.path)?);
        }
        if let (Some(k), false) = (&config.sinks.kafka, elasticsearch_only) {
            let mut sink = KafkaSink::open(k, &config.source.database)?;
            sink.count_dead_letters_in(metrics.dead_letters.get_or_create(&SinkLabel { sink: sink.name().to_string() }).clone());
            self.spawn(sink.with_heartbeats(config.kafka_heartbeat_records()));
        }
        if let Some(es) = &config.sinks.elasticsearch {
            let sink = ElasticsearchSink::open(es, &config.retry, Arc::clone(metrics))?;
            self.spawn(sink.with_source(params.clone()).with_shutdown(self.shutdown.clone()));
        }
        Ok(())
    }

    /// Start a task driving `sink` (the next sink index) behind a queue of
    /// `pipeline.sink_queue_batches`.
    pub(crate) fn spawn<S: Sink>(&mut self, sink: S) {
        match self.cursors.clone() {
            Some(book) => self.spawn_tracked(Cursored { inner: sink, book }),
            None => self.spawn_tracked(sink),
        }
    }

    /// Start the change log's task (its position is the log's own durable end, not a cursor).
    pub(crate) fn spawn_log(&mut self, sink: ChangelogSink) {
        self.spawn_tracked(sink);
    }

    fn spawn_tracked<S: Sink>(&mut self, sink: S) {
        let (tx, rx) = mpsc::channel(self.limits.sink_queue_batches);
        let index = self.sinks.queues.len();
        self.sinks.names.push(sink.name());
        let sink = Tracked { inner: sink, in_flight: Arc::clone(&self.sinks.in_flight) };
        let backoff = Backoff::new(self.retry);
        self.sinks.tasks.spawn(drive(sink, index, rx, self.report_tx.clone(), backoff, Arc::clone(self.metrics), self.shutdown.clone()));
        self.sinks.queues.push(tx);
    }

    /// Every sink started. The report channel closes once every task has ended.
    pub(crate) fn started(self) -> Sinks {
        self.sinks
    }
}

/// Batches handed to a sink and not yet written by it (one count per batch and sink).
///
/// While a sink is busy, handing it another small batch does not get that batch out any sooner;
/// it only adds a per-batch cost (a queue hand-off, a write call, an fsync, a report), and under
/// load the stream then turns into a flood of few-change batches whose overhead starves the
/// walsender of CPU. So while a sink writes, the streaming loop reads what is ready into the next
/// batch, then parks until every sink is idle (changes arriving meanwhile wait in the source
/// buffer), reads what accumulated and hands it over: group commit, with no timer involved. A
/// quiet stream finds the sinks idle, so its changes go out at once.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    batches: AtomicUsize,
    /// Signalled when `batches` drops to zero.
    idle: Notify,
}

impl InFlight {
    /// One more batch handed to one sink (the sink's `Tracked` wrapper takes it off).
    pub(crate) fn add(&self) {
        self.batches.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every batch handed over was written.
    pub(crate) fn is_idle(&self) -> bool {
        self.batches.load(Ordering::Acquire) == 0
    }

    /// Resolves once the count drops to zero (a permit is kept if that happened meanwhile).
    pub(crate) async fn idle(&self) {
        self.idle.notified().await
    }
}

/// A sink that tells [`InFlight`] when it has written a batch.
struct Tracked<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S: Sink> Sink for Tracked<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.inner.prepare().await
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let result = self.inner.write(batch).await;
        self.written(&result);
        result
    }

    async fn write_shared(&mut self, batch: &Arc<Batch>) -> Result<(), SinkError> {
        let result = self.inner.write_shared(batch).await;
        self.written(&result);
        result
    }
}

impl<S> Tracked<S> {
    fn written(&self, result: &Result<(), SinkError>) {
        // A failed batch is offered again (or the pipeline stops): it stays in flight.
        if result.is_ok() && self.in_flight.batches.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.idle.notify_one();
        }
    }
}
