//! The JSON-lines sink: one change per line to standard output or a file. The embedded default
//! and the test oracle; its line format is documented in docs/events.md.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::sync::Arc;

use super::line_file::LineFile;
use super::{release_output_buf, render_line, Batch, Sink, SinkError, OUTPUT_BUF_CAPACITY};

const NAME: &str = "jsonl";

/// Where lines go.
enum Target {
    /// Standard output: flushed, never synced.
    Stdout,
    /// A regular file is fsynced before a batch counts as durable; other files (a pipe,
    /// `/dev/null`) are only flushed, since they cannot be synced.
    File(LineFile),
}

/// Writes each batch as JSON lines, flushed (and fsynced for regular files) before it reports the
/// batch durable.
pub struct JsonlSink {
    target: Target,
    buf: Vec<u8>,
}

impl JsonlSink {
    /// Open the sink: `-` is standard output, anything else a file opened for appending (created
    /// when missing; a torn last line left by a killed run is cut off in `prepare`).
    pub fn open(path: &str) -> Result<Self, SinkError> {
        let target = if path == "-" {
            Target::Stdout
        } else {
            let path = Path::new(path);
            Target::File(LineFile::open(path).map_err(|e| SinkError::Fatal {
                sink: NAME,
                reason: format!("cannot open {} for appending: {e}; check the path and its permissions", path.display()),
            })?)
        };
        Ok(Self { target, buf: Vec::with_capacity(OUTPUT_BUF_CAPACITY) })
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            Target::Stdout => Ok(()),
            Target::File(file) => file.repair().await.map_err(|e| e.into_sink_error(NAME)),
        }
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        // Given only a borrowed batch, the lines are rendered here; the writer thread only writes.
        self.buf.clear();
        render_lines(&batch.changes, &mut self.buf)?;
        self.write_lines(needs_sync(batch), |_| Ok(())).await
    }

    /// The batch rendered and written on the blocking pool: a 4,096-change batch or a snapshot
    /// chunk costs the runtime thread (which reads the next one meanwhile) only the hand-over.
    async fn write_shared(&mut self, batch: &Arc<Batch>) -> Result<(), SinkError> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let shared = Arc::clone(batch);
        self.write_lines(needs_sync(batch), move |buf| {
            buf.clear();
            render_lines(&shared.changes, buf)
        })
        .await
    }
}

impl JsonlSink {
    /// On the blocking pool, `render` fills the sink's buffer (or leaves what was rendered into
    /// it), then the lines go to the target: a file written, flushed and fsynced when `sync`, or
    /// standard output (pipe writes block) written and flushed.
    async fn write_lines(
        &mut self,
        sync: bool,
        render: impl FnOnce(&mut Vec<u8>) -> Result<(), SinkError> + Send + 'static,
    ) -> Result<(), SinkError> {
        let result = match &mut self.target {
            Target::File(file) => match file.render_and_append(&mut self.buf, sync, render).await {
                Ok(written) => written.map_err(|e| e.into_sink_error(NAME)),
                Err(e) => Err(e),
            },
            Target::Stdout => {
                let mut buf = std::mem::take(&mut self.buf);
                let joined = tokio::task::spawn_blocking(move || {
                    let result = render(&mut buf).and_then(|()| write_stdout(&buf));
                    (buf, result)
                })
                .await;
                match joined {
                    Ok((buf, result)) => {
                        self.buf = buf;
                        result
                    }
                    Err(e) => Err(SinkError::Fatal { sink: NAME, reason: format!("writer task failed: {e}") }),
                }
            }
        };
        // The lines are written (or are rendered again on retry): no huge value's buffer stays.
        release_output_buf(&mut self.buf);
        result
    }
}

/// Every change as its JSON line, appended to `buf`.
fn render_lines(changes: &[crate::decode::Change], buf: &mut Vec<u8>) -> Result<(), SinkError> {
    changes.iter().try_for_each(|change| render_line(change, buf))
}

/// Whether the batch must be durable when written: a snapshot chunk may leave its fsync to a
/// later chunk (`SnapshotPart::sync`).
fn needs_sync(batch: &Batch) -> bool {
    batch.snapshot.as_ref().is_none_or(|part| part.sync)
}

/// Write all of `buf` to standard output and flush it.
fn write_stdout(buf: &[u8]) -> Result<(), SinkError> {
    let mut out = std::io::stdout().lock();
    out.write_all(buf).and_then(|()| out.flush()).map_err(|e| match e.kind() {
        ErrorKind::BrokenPipe => SinkError::Fatal {
            sink: NAME,
            reason: "standard output was closed by its reader; nothing after the last confirmed LSN is lost, restart walcast with a reader attached".into(),
        },
        _ => SinkError::Transient { sink: NAME, source: Box::new(e) },
    })
}
