//! Append-only files of JSON lines: the JSON-lines sink's output file and the Kafka and
//! Elasticsearch dead-letter files. A line torn by a kill is cut off before anything else is
//! appended (the sinks do it in `prepare`); appends are written, flushed and fsynced on the
//! blocking pool, never on the runtime thread; a failed write is rolled back so that a retry
//! never leaves half a line behind. Dead-letter files hold rows' data and are created 0600 in a
//! directory created 0700; the output file keeps the umask (it is the user's output).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;

use super::SinkError;

/// What went wrong with a line file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineFileError {
    /// The torn end could not be cut off.
    #[error("cannot repair the torn end of {}: {source}; fix: check the file and its permissions", path.display())]
    Repair {
        /// The file.
        path: Arc<Path>,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing failed and was rolled back: writing again may pass (disk full, quota).
    #[error("cannot write to {}: {source}", path.display())]
    Write {
        /// The file.
        path: Arc<Path>,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing failed and the file could not be cut back to its previous length.
    #[error("write to {} failed ({source}) and rolling it back failed too ({rollback}); fix: check the disk, then restart walcast (a torn end is cut off at start)", path.display())]
    Rollback {
        /// The file.
        path: Arc<Path>,
        /// The write error.
        source: std::io::Error,
        /// The truncate error.
        rollback: std::io::Error,
    },
    /// A failed fsync may have dropped dirty pages: writing again could report lines durable
    /// that are not.
    #[error("fsync of {} failed: {source}; fix: check the disk, then restart walcast (it resumes from the last confirmed LSN)", path.display())]
    Sync {
        /// The file.
        path: Arc<Path>,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The blocking task holding the file panicked; the file is gone with it.
    #[error("the writer task of {} failed: {reason}; fix: restart walcast (it resumes from the last confirmed LSN)", path.display())]
    Lost {
        /// The file.
        path: Arc<Path>,
        /// What happened to the task.
        reason: String,
    },
}

impl LineFileError {
    /// Whether writing the same lines again may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Self::Write { .. })
    }

    /// The error as sink `sink` reports it: retryable errors are transient, the others fatal.
    pub(crate) fn into_sink_error(self, sink: &'static str) -> SinkError {
        if !self.is_retryable() {
            return SinkError::Fatal { sink, reason: self.to_string() };
        }
        SinkError::Transient { sink, source: Box::new(self) }
    }
}

/// A JSON-lines file of dead letters (either sink's): the batch's lines are queued, then written,
/// flushed and fsynced together before the batch counts as durable.
pub(crate) struct DeadLetterFile {
    file: LineFile,
    queued: Vec<u8>,
}

impl DeadLetterFile {
    /// Open `path` for appending (created 0600 when missing, with its directory 0700: the
    /// default file lives in `snapshot.state_dir`, which may not exist yet). Modes of an
    /// existing file or directory are left as they are.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        Ok(Self { file: LineFile::open_with_mode(path, 0o600)?, queued: Vec::new() })
    }

    /// The file's path (logged with every dead letter).
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Cut off a line torn by a killed run.
    pub(crate) async fn repair(&mut self) -> Result<(), LineFileError> {
        self.file.repair().await
    }

    /// Where the next line is rendered (ending with `\n`).
    pub(crate) fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.queued
    }

    /// Write, flush and fsync what was queued (on the blocking pool).
    pub(crate) async fn sync(&mut self) -> Result<(), LineFileError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let result = self.file.append(&mut self.queued).await;
        super::release_output_buf(&mut self.queued);
        result
    }

    /// Drop what was queued (the batch failed and will be written again).
    pub(crate) fn discard(&mut self) {
        super::release_output_buf(&mut self.queued);
    }
}

/// An append-only file of lines. See the module documentation.
pub(crate) struct LineFile {
    path: Arc<Path>,
    /// `None` only while a write runs on the blocking pool (or after that task panicked).
    file: Option<File>,
    /// A regular file is repaired and fsynced; a pipe or `/dev/null` cannot be, and is only
    /// written and flushed.
    regular: bool,
    /// Whether the end of the file was checked for a torn line since it was opened.
    repaired: bool,
}

impl LineFile {
    /// Open `path` for appending (created when missing). Nothing is read or synced yet: the torn
    /// end is cut off by [`LineFile::repair`] or before the first append, on the blocking pool.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with_mode(path, 0o666)
    }

    /// [`LineFile::open`], creating a missing file with `mode` (less the umask).
    fn open_with_mode(path: &Path, mode: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).read(true).append(true).mode(mode).open(path)?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(Self { path: Arc::from(path), file: Some(file), regular, repaired: !regular })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Cut off a torn last line left by a killed run (once; later calls do nothing).
    pub(crate) async fn repair(&mut self) -> Result<(), LineFileError> {
        self.append(&mut Vec::new()).await
    }

    /// Append `buf` (whole lines), flush, and fsync a regular file: when this returns `Ok` the
    /// lines are durable. `buf` is handed back unchanged (the caller reuses it). A torn end is
    /// cut off first if that was not done yet.
    pub(crate) async fn append(&mut self, buf: &mut Vec<u8>) -> Result<(), LineFileError> {
        self.append_with(buf, true).await
    }

    /// [`LineFile::append`], without the fsync when `sync` is `false`: the lines are written
    /// (a kill keeps them, a power loss may not) and the next synced append makes them durable.
    pub(crate) async fn append_with(&mut self, buf: &mut Vec<u8>, sync: bool) -> Result<(), LineFileError> {
        if self.repaired && buf.is_empty() {
            return Ok(());
        }
        match self.render_and_append(buf, sync, |_| Ok::<(), std::convert::Infallible>(())).await {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// [`LineFile::append_with`] of the lines `render` writes into the emptied `buf`, rendered
    /// on the blocking thread that then writes them: a large batch's rendering does not hold up
    /// the runtime thread (the snapshot's reads, the stream). When `render` fails nothing is
    /// written and its error is the outer one; the inner one is the file's.
    pub(crate) async fn render_and_append<E: Send + 'static>(
        &mut self,
        buf: &mut Vec<u8>,
        sync: bool,
        render: impl FnOnce(&mut Vec<u8>) -> Result<(), E> + Send + 'static,
    ) -> Result<Result<(), LineFileError>, E> {
        let lost = |reason: String| LineFileError::Lost { path: Arc::clone(&self.path), reason };
        let Some(file) = self.file.take() else { return Ok(Err(lost("lost after an earlier failure".into()))) };
        let mut data = std::mem::take(buf);
        let (path, repair, regular) = (Arc::clone(&self.path), !self.repaired, self.regular);
        let joined = tokio::task::spawn_blocking(move || {
            if let Err(e) = render(&mut data) {
                return (file, data, Err(e));
            }
            let repaired = if repair {
                cut_torn_line(&file, &path).map_err(|source| LineFileError::Repair { path: Arc::clone(&path), source })
            } else {
                Ok(())
            };
            let result = repaired.and_then(|()| append_blocking(&file, &path, &data, regular, sync));
            (file, data, Ok(result))
        })
        .await;
        let (file, data, result) = match joined {
            Ok(done) => done,
            Err(e) => return Ok(Err(lost(e.to_string()))),
        };
        self.file = Some(file);
        *buf = data;
        // Unless rendering failed first or the cut itself failed, the torn end is gone.
        if matches!(&result, Ok(r) if !matches!(r, Err(LineFileError::Repair { .. }))) {
            self.repaired = true;
        }
        result
    }
}

/// A process killed in the middle of a write leaves a torn last line. Those bytes were never
/// reported durable, so they are written again; cut them off, or the next line would be glued
/// onto them and the file would no longer hold one JSON object per line. Blocking.
fn cut_torn_line(file: &File, path: &Path) -> std::io::Result<()> {
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
        tracing::warn!(path = %path.display(), bytes = len - keep, "the file ends in a torn line (an earlier run was killed while writing); removing it, what it held is written again");
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Write all of `data`, flush, and fsync a `regular` file when `sync`. A failed write to a
/// regular file is rolled back to the previous length. Blocking.
fn append_blocking(file: &File, path: &Arc<Path>, data: &[u8], regular: bool, sync: bool) -> Result<(), LineFileError> {
    if data.is_empty() {
        return Ok(());
    }
    let before = file.metadata().map(|m| m.len()).ok();
    let mut f = file;
    if let Err(source) = f.write_all(data).and_then(|()| f.flush()) {
        if let Some(len) = before.filter(|_| regular) {
            if let Err(rollback) = file.set_len(len) {
                return Err(LineFileError::Rollback { path: Arc::clone(path), source, rollback });
            }
        }
        return Err(LineFileError::Write { path: Arc::clone(path), source });
    }
    if regular && sync {
        file.sync_data().map_err(|source| LineFileError::Sync { path: Arc::clone(path), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as a SIGKILL in the middle of a write leaves it: whole lines, then part of one.
    fn torn(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("lines.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":3,\"b\":\"par").expect("write");
        path
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = torn(dir.path());
        let mut f = LineFile::open(&path).expect("open");
        let mut buf = b"{\"a\":4}\n".to_vec();
        f.append(&mut buf).await.expect("append");
        assert_eq!(buf, b"{\"a\":4}\n", "the buffer is handed back");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n{\"a\":2}\n{\"a\":4}\n");
    }

    #[tokio::test]
    async fn repair_cuts_a_torn_line_without_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = torn(dir.path());
        let mut f = LineFile::open(&path).expect("open");
        f.repair().await.expect("repair");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n{\"a\":2}\n");
        // A file holding only a torn line ends up empty; a whole file is left alone.
        std::fs::write(&path, b"{\"a\":").expect("write");
        LineFile::open(&path).expect("open").repair().await.expect("repair");
        assert_eq!(std::fs::read(&path).expect("read"), b"");
        std::fs::write(&path, b"{\"a\":1}\n").expect("write");
        LineFile::open(&path).expect("open").repair().await.expect("repair");
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"a\":1}\n");
    }

    #[tokio::test]
    async fn a_torn_line_longer_than_the_read_chunk_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long.jsonl");
        let mut text = b"{\"a\":1}\n{\"big\":\"".to_vec();
        text.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&path, &text).expect("write");
        let mut f = LineFile::open(&path).expect("open");
        f.append(&mut b"{\"a\":2}\n".to_vec()).await.expect("append");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n{\"a\":2}\n");
    }

    #[tokio::test]
    async fn a_pipe_like_file_is_written_without_repair() {
        let mut f = LineFile::open(Path::new("/dev/null")).expect("open");
        f.repair().await.expect("nothing to repair");
        f.append(&mut b"{}\n".to_vec()).await.expect("append");
    }

    #[test]
    fn a_dead_letter_file_is_private_and_the_output_file_keeps_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let dead = root.path().join("state").join("dead.jsonl");
        DeadLetterFile::open(&dead).expect("open");
        assert_eq!(mode(&dead), 0o600);
        assert_eq!(mode(dead.parent().expect("dir")), 0o700);
        // The output file is created as any file the user's umask governs.
        let (out, plain) = (root.path().join("out.jsonl"), root.path().join("plain"));
        LineFile::open(&out).expect("open");
        File::create(&plain).expect("create");
        assert_eq!(mode(&out), mode(&plain));
    }
}
