//! Sinks: where batches of changes go, and the task that drives each one with retries.

pub mod elasticsearch;
pub(crate) mod fanout;
mod jsonl;
pub mod kafka;
mod line_file;
mod memory;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

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
}

/// Which snapshot chunk a batch is.
#[derive(Debug, Clone)]
pub struct SnapshotPart {
    /// Chunk number, reported back with [`SinkReport::SnapshotChunk`] once the sink wrote it.
    pub chunk: u64,
    /// The exported snapshot the rows were read in, while it can still be imported: document
    /// rules build their documents inside it. `None` when resuming (a fresh snapshot is read).
    pub exported: Option<Arc<str>>,
}

/// A destination for changes.
pub trait Sink: Send + 'static {
    /// Short name used in logs and metrics labels (`jsonl`, `elasticsearch`, `kafka`).
    fn name(&self) -> &'static str;

    /// Make every change of `batch` durable, or fail without having lost anything: after an error
    /// the same batch is offered again (so a sink must tolerate seeing changes twice).
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Get ready before the first batch (create indexes, connect), overlapping the source's own
    /// setup. Retried like `write`. Default: nothing to do.
    fn prepare(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// What went wrong in a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed in a way that may pass (disk full, destination briefly unavailable).
    #[error("{sink}: write failed, will retry: {source}")]
    Transient {
        /// Sink name.
        sink: &'static str,
        /// The I/O error.
        source: std::io::Error,
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

impl SinkError {
    /// Whether retrying the same batch may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }
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

/// Drive one sink: take batches in order, retry retryable failures forever with backoff, report
/// durable positions. Returns when the batch channel closes and every batch was written.
pub async fn drive<S: Sink>(
    mut sink: S,
    index: usize,
    mut batches: mpsc::Receiver<Arc<Batch>>,
    reports: mpsc::UnboundedSender<SinkReport>,
    mut backoff: Backoff,
    metrics: Arc<Metrics>,
) {
    loop {
        match sink.prepare().await {
            Ok(()) => break,
            Err(error) if error.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = sink.name(), %error, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "sink not ready, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                let _ = reports.send(SinkReport::Failed { sink: index, error });
                return;
            }
        }
    }
    backoff.reset();
    while let Some(batch) = batches.recv().await {
        loop {
            let started = std::time::Instant::now();
            let result = sink.write(&batch).await;
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
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = sink.name(), %error, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "sink write failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    let _ = reports.send(SinkReport::Failed { sink: index, error });
                    return;
                }
            }
        }
        if let Some(lsn) = batch.checkpoint {
            let _ = reports.send(SinkReport::Durable { sink: index, lsn });
        }
        if let Some(part) = &batch.snapshot {
            let _ = reports.send(SinkReport::SnapshotChunk { sink: index, chunk: part.chunk });
        }
    }
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
    use super::*;

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
}
