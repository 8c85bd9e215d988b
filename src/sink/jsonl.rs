//! The JSON-lines sink: one change per line to standard output or a file. The embedded default
//! and the test oracle; its line format is documented in docs/events.md.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use super::{render_line, Batch, Sink, SinkError};

const NAME: &str = "jsonl";

/// Where lines go.
enum Target {
    Stdout,
    /// A regular file is fsynced before a batch counts as durable; other files (a pipe,
    /// `/dev/null`) are only flushed, since they cannot be synced.
    File { file: File, path: PathBuf, sync: bool },
}

/// Writes each batch as JSON lines, flushed (and fsynced for regular files) before it reports the
/// batch durable.
pub struct JsonlSink {
    /// `None` only while a write is running on the blocking pool.
    target: Option<Target>,
    buf: Vec<u8>,
}

impl JsonlSink {
    /// Open the sink: `-` is standard output, anything else a file opened for appending (created
    /// when missing).
    pub fn open(path: &str) -> Result<Self, SinkError> {
        let target = if path == "-" {
            Target::Stdout
        } else {
            let path = PathBuf::from(path);
            let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(|e| SinkError::Fatal {
                sink: NAME,
                reason: format!("cannot open {} for appending: {e}; check the path and its permissions", path.display()),
            })?;
            let sync = file.metadata().map(|m| m.is_file()).unwrap_or(false);
            if sync {
                cut_torn_line(&file).map_err(|e| SinkError::Fatal {
                    sink: NAME,
                    reason: format!("cannot repair the end of {}: {e}; check the file and its permissions", path.display()),
                })?;
            }
            Target::File { file, path, sync }
        };
        Ok(Self { target: Some(target), buf: Vec::with_capacity(1 << 20) })
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for change in &batch.changes {
            if let Err(e) = render_line(change, &mut buf) {
                self.buf = buf;
                return Err(e);
            }
        }
        let target = self
            .target
            .take()
            .ok_or_else(|| SinkError::Fatal { sink: NAME, reason: "output lost after an earlier failure".into() })?;
        // File and pipe writes block; keep them off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let result = write_durably(&target, &buf);
            (target, buf, result)
        })
        .await;
        let (target, buf, result) = joined.map_err(|e| SinkError::Fatal { sink: NAME, reason: format!("writer task failed: {e}") })?;
        self.target = Some(target);
        self.buf = buf;
        result
    }
}

/// A process killed in the middle of a write leaves a torn last line. Those bytes were never
/// reported durable, so they are streamed again; cut them off, or the next line would be glued
/// onto them and the file would no longer hold one JSON object per line.
fn cut_torn_line(file: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let mut f = file;
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(bytes = len - keep, "the output file ends in a torn line (an earlier run was killed while writing); removing it, its changes are sent again");
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Write all of `buf`, flush, and fsync regular files. A failed write to a file is rolled back to
/// the previous length so a retry never leaves half a line behind.
fn write_durably(target: &Target, buf: &[u8]) -> Result<(), SinkError> {
    match target {
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(buf).and_then(|()| out.flush()).map_err(|e| match e.kind() {
                ErrorKind::BrokenPipe => SinkError::Fatal {
                    sink: NAME,
                    reason: "standard output was closed by its reader; nothing after the last confirmed LSN is lost, restart walcast with a reader attached".into(),
                },
                _ => SinkError::Transient { sink: NAME, source: e },
            })
        }
        Target::File { file, path, sync } => {
            let before = file.metadata().map(|m| m.len()).ok();
            let mut f = file;
            if let Err(e) = f.write_all(buf).and_then(|()| f.flush()) {
                if let Some(len) = before.filter(|_| *sync) {
                    if let Err(trunc) = file.set_len(len) {
                        return Err(SinkError::Fatal {
                            sink: NAME,
                            reason: format!("write to {} failed ({e}) and rolling it back failed too ({trunc})", path.display()),
                        });
                    }
                }
                return Err(SinkError::Transient { sink: NAME, source: e });
            }
            if *sync {
                // A failed fsync may have dropped dirty pages: retrying could report data durable
                // that is not, so it is fatal.
                file.sync_data().map_err(|e| SinkError::Fatal {
                    sink: NAME,
                    reason: format!("fsync of {} failed: {e}; check the disk, then restart walcast (it resumes from the last confirmed LSN)", path.display()),
                })?;
            }
            Ok(())
        }
    }
}
