//! Sinks: where batches of changes go, and the task that drives each one with retries.

pub(crate) mod changelog;
pub mod elasticsearch;
pub(crate) mod fanout;
mod jsonl;
pub mod kafka;
mod line_file;
mod memory;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use elasticsearch::ElasticsearchSink;
pub use jsonl::JsonlSink;
pub use kafka::KafkaSink;
pub use memory::MemorySink;

use crate::decode::{Change, DecodeError};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::retry::Backoff;

/// Changes handed to every sink together. Sinks see batches in stream order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The changes, in commit order (a large transaction spans several batches).
    pub changes: Vec<Change>,
    /// End LSN of the last transaction that commits inside this batch. Once a sink has made this
    /// batch (and all before it) durable, every transaction ending at or before it is durable.
    /// `None` when the batch ends mid-transaction and holds no commit.
    pub checkpoint: Option<Lsn>,
    /// Set when the batch holds rows read by a snapshot (then `checkpoint` is `None`).
    pub snapshot: Option<SnapshotPart>,
    /// Logical decoding messages read with the changes, in stream order; only carried when a
    /// sink publishes them (`sinks.kafka.messages`, Kafka heartbeat records), else empty.
    pub messages: Vec<crate::decode::MessageEvent>,
}

/// Which snapshot chunk a batch is.
#[derive(Debug, Clone)]
pub struct SnapshotPart {
    /// Chunk number, reported back with [`SinkReport::SnapshotChunk`] once the sink wrote it.
    pub chunk: u64,
    /// The exported snapshot the rows were read in, while it can still be imported: document
    /// rules build their documents inside it. `None` when resuming (a fresh snapshot is read).
    pub exported: Option<Arc<str>>,
    /// Where the chunk sits in the snapshot (Debezium's `source.snapshot` markers).
    pub place: ChunkPlace,
    /// Make this chunk and every batch before it durable before reporting it. When `false` a
    /// sink that syncs (the JSON-lines file) may only write it: the snapshot records no chunk
    /// until a later synced one is reported, so fsyncs are not paid per chunk.
    pub sync: bool,
}

/// Where a snapshot chunk sits: its table's first or last rows, the snapshot's first or last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The chunk starts its table (a resumed table has no first chunk).
    pub first_of_table: bool,
    /// The chunk ends its table.
    pub last_of_table: bool,
    /// The chunk starts with the snapshot's first row (its first table's first chunk).
    pub first_table: bool,
    /// The chunk's table is the snapshot's last.
    pub last_table: bool,
}

/// A destination for changes.
pub trait Sink: Send + 'static {
    /// Short name used in logs and metrics labels (`jsonl`, `elasticsearch`, `kafka`).
    fn name(&self) -> &'static str;

    /// Make every change of `batch` durable, or fail without having lost anything: after an error
    /// the same batch is offered again (so a sink must tolerate seeing changes twice).
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// [`write`](Self::write) given the batch as shared by the pipeline: a sink that hands it to
    /// another thread (the change log appends on the blocking pool) keeps a reference instead of
    /// copying it. Default: `write`.
    fn write_shared(&mut self, batch: &Arc<Batch>) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.write(batch)
    }

    /// Get ready before the first batch (create indexes, connect), overlapping the source's own
    /// setup. Retried like `write`. Default: nothing to do.
    fn prepare(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// What went wrong in a sink. The error policy decides what each variant means for the process.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed in a way that may pass (disk full, destination briefly unavailable).
    #[error("{sink}: write failed, will retry: {source}")]
    Transient {
        /// Sink name.
        sink: &'static str,
        /// What failed, as the layer below reported it (an I/O error, a `SourceError`, ...).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Shutdown came while the sink waited to retry: the batch is not written, nor reported
    /// durable, so it is offered again after the restart.
    #[error("{sink}: {what}; interrupted by shutdown")]
    Interrupted {
        /// Sink name.
        sink: &'static str,
        /// The step that was waiting to retry.
        what: &'static str,
    },
    /// The destination is gone for good (closed pipe, fsync failure, unwritable path).
    #[error("{sink}: {reason}")]
    Fatal {
        /// Sink name.
        sink: &'static str,
        /// What failed and what to do about it.
        reason: String,
    },
    /// A change could not be rendered (a value Postgres sent is not valid for its type).
    #[error("cannot render change at {lsn} for {table}: {source}")]
    Render {
        /// The change's LSN.
        lsn: Lsn,
        /// `schema.table`.
        table: String,
        /// The decoding error.
        source: DecodeError,
    },
}

/// What a sink task tells the pipeline.
#[derive(Debug)]
pub enum SinkReport {
    /// Sink `sink` made everything up to `lsn` durable.
    Durable {
        /// Index of the sink in the pipeline.
        sink: usize,
        /// Highest durable commit end LSN.
        lsn: Lsn,
    },
    /// Sink `sink` wrote snapshot chunk `chunk` (and every batch before it).
    SnapshotChunk {
        /// Index of the sink.
        sink: usize,
        /// The chunk number.
        chunk: u64,
    },
    /// Sink `sink` hit an error retrying cannot fix; the pipeline must stop.
    Failed {
        /// Index of the sink.
        sink: usize,
        /// The error.
        error: SinkError,
    },
}

/// Drive one sink: prepare it, take batches in order, retry retryable failures with backoff,
/// report durable positions and written snapshot chunks. Returns when the batch channel closes,
/// or after a permanent failure (reported as [`SinkReport::Failed`]).
///
/// Once `shutdown` is cancelled a failure is no longer retried: the failed batch and every later
/// one are dropped unwritten and never reported, so the slot is not advanced past them and a
/// restart sends them again. The queue is still taken from until the pipeline closes it, so that
/// handing over the last batches during the drain does not look like a failed sink.
pub async fn drive<S: Sink>(
    mut sink: S,
    index: usize,
    mut batches: mpsc::Receiver<Arc<Batch>>,
    reports: mpsc::UnboundedSender<SinkReport>,
    mut backoff: Backoff,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Backoff::wait logs the retry; the span says which sink it is.
    let span = tracing::warn_span!("sink", sink = sink.name());
    let end = async {
        loop {
            match sink.prepare().await {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    if !backoff.wait(&shutdown, "sink not ready", &error).instrument(span.clone()).await {
                        return DriveEnd::Shutdown;
                    }
                }
                Err(error) => return DriveEnd::Failed(error),
            }
        }
        backoff.reset();
        while let Some(batch) = batches.recv().await {
            loop {
                let started = std::time::Instant::now();
                let result = sink.write_shared(&batch).await;
                let outcome = match &result {
                    Ok(()) => "ok",
                    Err(e) if e.is_retryable() => "retry",
                    Err(_) => "error",
                };
                metrics.sink_attempt(sink.name(), outcome, started.elapsed().as_secs_f64());
                match result {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(error) if error.is_retryable() => {
                        if !backoff.wait(&shutdown, "sink write failed", &error).instrument(span.clone()).await {
                            return DriveEnd::Shutdown;
                        }
                    }
                    Err(error) => return DriveEnd::Failed(error),
                }
            }
            if let Some(lsn) = batch.checkpoint {
                let _ = reports.send(SinkReport::Durable { sink: index, lsn });
            }
            if let Some(part) = &batch.snapshot {
                let _ = reports.send(SinkReport::SnapshotChunk { sink: index, chunk: part.chunk });
            }
        }
        DriveEnd::Closed
    }
    .await;
    match end {
        DriveEnd::Closed => {}
        DriveEnd::Failed(error) => {
            let _ = reports.send(SinkReport::Failed { sink: index, error });
        }
        DriveEnd::Shutdown => {
            tracing::warn!(
                sink = sink.name(),
                "shutdown while retrying: the sink writes nothing more; unconfirmed changes are sent again on restart"
            );
            while batches.recv().await.is_some() {}
        }
    }
}

/// Why [`drive`] stopped writing.
enum DriveEnd {
    /// The batch channel closed after every batch was written.
    Closed,
    /// Shutdown came while a failure waited to be retried.
    Shutdown,
    /// A failure retrying cannot fix.
    Failed(SinkError),
}

/// Capacity a sink's reused output buffer starts with: a normal batch fits, so rendering it
/// allocates nothing.
const OUTPUT_BUF_CAPACITY: usize = 1 << 20;

/// Largest capacity a reused output buffer keeps between batches. One huge value (a 200 MB text
/// column) grows the buffer to its size, and a kept buffer keeps those pages resident for the
/// rest of the run; above this it is dropped (its memory goes back to the OS) and a small one
/// takes its place. 8 MB leaves ordinary large batches their buffer.
const OUTPUT_BUF_KEEP_MAX: usize = 8 << 20;

/// Empty `buf` after use, for the next batch; a buffer grown beyond [`OUTPUT_BUF_KEEP_MAX`] is
/// replaced by one of [`OUTPUT_BUF_CAPACITY`].
fn release_output_buf(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > OUTPUT_BUF_KEEP_MAX {
        *buf = Vec::with_capacity(OUTPUT_BUF_CAPACITY);
    }
}

/// Render `change` as one JSON line (with `\n`) into `out`.
pub(crate) fn render_line(change: &Change, out: &mut Vec<u8>) -> Result<(), SinkError> {
    change.write_json(out).map_err(|source| SinkError::Render { lsn: change.lsn, table: change.relation.qualified_name(), source })?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::config::RetryConfig;

    /// What a [`Scripted`] sink does on one call.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Ok,
        Retry,
        Fail,
    }

    /// A sink that answers `prepare` and `write` calls from a script (then succeeds), and tells
    /// the test about every write attempt.
    struct Scripted {
        prepare: VecDeque<Step>,
        write: VecDeque<Step>,
        attempts: mpsc::UnboundedSender<u64>,
    }

    impl Scripted {
        fn answer(step: Option<Step>) -> Result<(), SinkError> {
            match step.unwrap_or(Step::Ok) {
                Step::Ok => Ok(()),
                Step::Retry => Err(SinkError::Transient { sink: "scripted", source: "briefly unavailable".into() }),
                Step::Fail => Err(SinkError::Fatal { sink: "scripted", reason: "gone for good".into() }),
            }
        }
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        async fn prepare(&mut self) -> Result<(), SinkError> {
            Self::answer(self.prepare.pop_front())
        }

        async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
            let _ = self.attempts.send(batch.checkpoint.map_or(0, |l| l.0));
            Self::answer(self.write.pop_front())
        }
    }

    struct Driven {
        batches: mpsc::Sender<Arc<Batch>>,
        reports: mpsc::UnboundedReceiver<SinkReport>,
        attempts: mpsc::UnboundedReceiver<u64>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    /// `drive` a scripted sink with a backoff of `delay_ms` in a task of its own.
    fn start(prepare: &[Step], write: &[Step], delay_ms: u64) -> Driven {
        let (attempts_tx, attempts) = mpsc::unbounded_channel();
        let sink = Scripted { prepare: prepare.iter().copied().collect(), write: write.iter().copied().collect(), attempts: attempts_tx };
        let (batches, rx) = mpsc::channel(8);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let backoff = Backoff::new(&RetryConfig { initial_ms: delay_ms, max_ms: delay_ms });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(drive(sink, 3, rx, reports_tx, backoff, Metrics::new(), shutdown.clone()));
        Driven { batches, reports, attempts, shutdown, task }
    }

    fn batch(lsn: u64) -> Arc<Batch> {
        Arc::new(Batch { checkpoint: Some(Lsn(lsn)), ..Batch::default() })
    }

    fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_error_is_retried_until_the_batch_is_written() {
        let mut d = start(&[Step::Retry], &[Step::Retry, Step::Retry], 100);
        d.batches.send(batch(0x10)).await.expect("queue");
        d.batches
            .send(Arc::new(Batch {
                snapshot: Some(SnapshotPart { chunk: 7, exported: None, place: ChunkPlace::default(), sync: true }),
                ..Batch::default()
            }))
            .await
            .expect("queue");
        drop(d.batches);
        d.task.await.expect("drive ends when the queue closes");
        assert_eq!(drain(&mut d.attempts), [0x10, 0x10, 0x10, 0], "the failed batch is written again, then the next one");
        let reports = drain(&mut d.reports);
        assert!(
            matches!(reports[..], [SinkReport::Durable { sink: 3, lsn: Lsn(0x10) }, SinkReport::SnapshotChunk { sink: 3, chunk: 7 }]),
            "{reports:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_reported_as_failed() {
        let mut d = start(&[], &[Step::Ok, Step::Fail], 100);
        for lsn in [0x10, 0x20, 0x30] {
            d.batches.send(batch(lsn)).await.expect("queue");
        }
        d.task.await.expect("drive ends at the failure, with the queue still open");
        assert_eq!(drain(&mut d.attempts), [0x10, 0x20], "nothing is written after the failure");
        let reports = drain(&mut d.reports);
        assert!(
            matches!(
                reports[..],
                [SinkReport::Durable { sink: 3, lsn: Lsn(0x10) }, SinkReport::Failed { sink: 3, error: SinkError::Fatal { .. } }]
            ),
            "{reports:?}"
        );
        // A permanent error in prepare too, before any batch.
        let mut d = start(&[Step::Fail], &[], 100);
        d.task.await.expect("drive ends");
        assert!(matches!(drain(&mut d.reports)[..], [SinkReport::Failed { sink: 3, .. }]));
        assert!(drain(&mut d.attempts).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_retry_wait_and_nothing_more_is_written_or_reported() {
        let hour = 3_600_000;
        let mut d = start(&[], &[Step::Retry, Step::Retry], hour);
        let started = tokio::time::Instant::now();
        d.batches.send(batch(0x10)).await.expect("queue");
        assert_eq!(d.attempts.recv().await, Some(0x10));
        // drive now waits an hour before the next attempt.
        d.shutdown.cancel();
        // The drain can still hand over its last batch: the queue is taken from, not closed.
        d.batches.send(batch(0x20)).await.expect("the queue still takes batches after shutdown");
        drop(d.batches);
        d.task.await.expect("drive ends");
        assert!(started.elapsed() < Duration::from_secs(60), "the retry wait ended on shutdown: {:?}", started.elapsed());
        assert!(drain(&mut d.attempts).is_empty(), "no batch is written after shutdown");
        let reports = drain(&mut d.reports);
        assert!(reports.is_empty(), "nothing is reported durable (or failed): {reports:?}");

        // A sink that never gets ready stops retrying on shutdown too.
        let mut d = start(&[Step::Retry; 100], &[], hour);
        d.batches.send(batch(0x10)).await.expect("queue");
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.shutdown.cancel();
        drop(d.batches);
        d.task.await.expect("drive ends");
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        assert!(drain(&mut d.attempts).is_empty() && drain(&mut d.reports).is_empty());
    }

    #[test]
    fn an_output_buffer_keeps_a_normal_capacity_and_gives_back_a_huge_one() {
        let mut buf = Vec::with_capacity(OUTPUT_BUF_KEEP_MAX);
        buf.resize(OUTPUT_BUF_KEEP_MAX, b'x');
        let kept = buf.as_ptr();
        release_output_buf(&mut buf);
        assert!(buf.is_empty());
        assert_eq!(buf.as_ptr(), kept, "a buffer up to the bound is reused, not reallocated");

        buf.reserve_exact(OUTPUT_BUF_KEEP_MAX + 1);
        buf.resize(OUTPUT_BUF_KEEP_MAX + 1, b'x');
        release_output_buf(&mut buf);
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), OUTPUT_BUF_CAPACITY, "a huge buffer is replaced by a small one");
    }

    #[test]
    fn a_transient_error_carries_its_real_cause() {
        let cause = line_file::LineFileError::Write {
            path: Arc::from(std::path::Path::new("/x/dead-letters.jsonl")),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let e = cause.into_sink_error("kafka");
        assert!(e.is_retryable(), "{e}");
        let source = std::error::Error::source(&e).expect("a cause");
        let cause = source.downcast_ref::<line_file::LineFileError>().expect("the line file's own error, not a made-up io::Error");
        assert!(matches!(cause, line_file::LineFileError::Write { source, .. } if source.kind() == std::io::ErrorKind::StorageFull));
    }
}
