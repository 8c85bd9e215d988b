//! The change log as a sink: each batch appended (write + fdatasync) on the blocking pool, then
//! retention and the `walcast_log_*` metrics; and the sink cursors: each sink's durable position,
//! recorded as its writes return and saved (throttled, atomically) by one task.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Batch, Sink, SinkError};
use crate::changelog::{ChangeLog, ChangelogError, SinkCursors};
use crate::lsn::Lsn;
use crate::metrics::{Metrics, SinkLabel};

/// The log sink's name in logs, metrics labels and `/readyz`.
pub(crate) const LOG_SINK: &str = "changelog";

/// How often retention runs at most (it reads the marks file and lists segments).
const RETENTION_EVERY: Duration = Duration::from_secs(5);

/// How often changed cursors are saved at most.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// The change log as a sink. Snapshot batches are not logged (the log holds the stream; a
/// snapshot's rows are in the sinks and its point is where the log starts for them).
pub(crate) struct ChangelogSink {
    /// `None` only while an append runs on the blocking pool, or after it panicked.
    log: Option<ChangeLog>,
    metrics: Arc<Metrics>,
    /// The log's durable end, for the followers of decoupled mode (woken when it grows).
    end: watch::Sender<Lsn>,
    /// What retention must keep.
    pins: Pins,
    last_retention: Option<Instant>,
    /// Where the stream starts (the slot's confirmed position), once the slot is prepared: an
    /// empty log holds every commit after it.
    start: Arc<OnceLock<Lsn>>,
}

/// Where the positions retention must keep come from.
#[derive(Clone)]
pub(crate) struct Pins {
    /// Sink cursors (decoupled mode: a sink behind still needs its segments).
    pub(crate) cursors: Option<CursorBook>,
    /// `snapshot.state_dir`, where the marks are.
    pub(crate) state_dir: PathBuf,
    /// The slot, which names the marks file.
    pub(crate) slot: String,
}

impl ChangelogSink {
    /// A sink appending to `log` (opened by the caller on the blocking pool).
    pub(crate) fn new(log: ChangeLog, pins: Pins, metrics: Arc<Metrics>) -> Self {
        let durable = log.durable_end().unwrap_or(Lsn::ZERO);
        let (end, _) = watch::channel(durable);
        let this = Self { log: Some(log), metrics, end, pins, last_retention: None, start: Arc::default() };
        if let Some(log) = &this.log {
            this.export(log);
        }
        this
    }

    /// Set once the slot is prepared: where the stream starts.
    pub(crate) fn start_handle(&self) -> Arc<OnceLock<Lsn>> {
        Arc::clone(&self.start)
    }

    /// Follow the log's durable end (it changes after every append that added a transaction).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.end.subscribe()
    }

    fn export(&self, log: &ChangeLog) {
        let stats = log.stats();
        let m = &self.metrics.log;
        m.bytes.set(stats.bytes as i64);
        m.segments.set(stats.segments as i64);
        m.oldest_lsn.set(stats.oldest.map_or(0, |l| l.0 as i64));
        m.durable_lsn.set(stats.durable_end.map_or(0, |l| l.0 as i64));
    }

    async fn append(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        if batch.snapshot.is_some() {
            return Ok(());
        }
        let mut log = self.log.take().ok_or_else(|| SinkError::Fatal {
            sink: LOG_SINK,
            reason: "the change log was lost by a failed append task; fix: restart walcast (the log is opened and checked again)".into(),
        })?;
        let retention = self.last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY).then(|| self.pins.clone());
        let span = tracing::Span::current();
        let start = self.start.get().copied();
        let task = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            if let Some(start) = start {
                log.set_start(start); // ignored once the log holds anything
            }
            let started = Instant::now();
            let result = log.append(&batch.changes, batch.checkpoint);
            let seconds = started.elapsed().as_secs_f64();
            // Retention only after a successful append: a full disk is freed by it too, but a
            // failed append is retried first, as it is what is owed.
            let retained = match (&result, retention) {
                (Ok(()), Some(pins)) => Some(enforce_retention(&mut log, &pins)),
                _ => None,
            };
            (log, result, seconds, retained)
        });
        let (log, result, seconds, retained) = task.await.map_err(|e| SinkError::Fatal {
            sink: LOG_SINK,
            reason: format!("the change log append task failed: {e}; fix: restart walcast"),
        })?;
        self.metrics.log.append_seconds.observe(seconds);
        if let Some(dropped) = retained {
            self.last_retention = Some(Instant::now());
            match dropped {
                Ok(forced) => {
                    self.metrics.log.dropped_segments.inc_by(forced);
                }
                Err(error) => tracing::warn!(%error, "change log retention failed; it is tried again after later appends"),
            }
        }
        self.export(&log);
        if let Some(end) = log.durable_end() {
            self.end.send_if_modified(|e| std::mem::replace(e, end) != end);
        }
        self.log = Some(log);
        result.map_err(log_error)
    }
}

/// Drop what retention allows, keeping what the cursors and marks still need unless the size
/// limit forces it. Returns how many needed segments were dropped (each one warned about).
/// Blocking.
fn enforce_retention(log: &mut ChangeLog, pins: &Pins) -> Result<u64, ChangelogError> {
    let mut needed: Vec<Lsn> = pins.cursors.as_ref().map(CursorBook::saved).unwrap_or_default();
    needed.extend(mark_pins(&pins.state_dir, &pins.slot));
    let retention = log.enforce_retention(&needed)?;
    let forced = retention.forced_segments as u64;
    if forced > 0 {
        tracing::warn!(
            segments = forced,
            lost = ?retention.lost_pins,
            fix = "raise changelog.retention_bytes (or free the disk), and bring the sinks behind up to date with `walcast snapshot` or a resync",
            "change log retention dropped segments a sink cursor or a mark still needed: the size limit forced it"
        );
    }
    Ok(forced)
}

/// The LSNs of the marks in `STATE_DIR/marks-SLOT.json` (`walcast mark`); none when the file is
/// missing. An unreadable file pins nothing and is warned about: retention must not stop the log.
/// Blocking.
fn mark_pins(state_dir: &std::path::Path, slot: &str) -> Vec<Lsn> {
    let path = state_dir.join(format!("marks-{slot}.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the marks; retention keeps no segment for them");
            return Vec::new();
        }
    };
    let file: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let marks = file["marks"].as_object().map(|m| m.values().filter_map(|m| m["lsn"].as_str()?.parse::<Lsn>().ok()).collect());
    marks.unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "the marks file is not readable; retention keeps no segment for them");
        Vec::new()
    })
}

/// A storage error as a sink error: retried when it may pass (a full disk), fatal otherwise.
fn log_error(e: ChangelogError) -> SinkError {
    if e.is_retryable() {
        SinkError::Transient { sink: LOG_SINK, source: Box::new(e) }
    } else {
        SinkError::Fatal { sink: LOG_SINK, reason: e.to_string() }
    }
}

impl Sink for ChangelogSink {
    fn name(&self) -> &'static str {
        LOG_SINK
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        // Only reached without the shared batch (the pipeline always shares it): copy.
        let copy =
            Batch { changes: batch.changes.clone(), checkpoint: batch.checkpoint, snapshot: batch.snapshot.clone(), messages: Vec::new() };
        self.append(Arc::new(copy)).await
    }

    async fn write_shared(&mut self, batch: &Arc<Batch>) -> Result<(), SinkError> {
        self.append(Arc::clone(batch)).await
    }
}

// ---------------------------------------------------------------------------------------------
// Sink cursors

/// The sink cursors of a run, shared by the sink tasks (which record them) and the task saving
/// them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct CursorBook {
    inner: Arc<Mutex<Book>>,
    metrics: Arc<Metrics>,
}

struct Book {
    cursors: SinkCursors,
    /// What the file holds (retention pins these: after a crash, a follower resumes there).
    saved: SinkCursors,
    dirty: bool,
}

impl CursorBook {
    /// The cursors saved for `slot` in `state_dir`. Blocking (one small read).
    pub(crate) fn load(state_dir: &std::path::Path, slot: &str, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let cursors = SinkCursors::load(state_dir, slot)?;
        for (sink, lsn) in cursors.iter() {
            metrics.sink_cursor_lsn.get_or_create(&SinkLabel { sink: sink.to_string() }).set(lsn.0 as i64);
        }
        let book = Book { saved: cursors.clone(), cursors, dirty: false };
        Ok(Self { inner: Arc::new(Mutex::new(book)), metrics })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cursor of `sink`.
    pub(crate) fn get(&self, sink: &str) -> Option<Lsn> {
        self.lock().cursors.get(sink)
    }

    /// `sink` made everything up to `lsn` durable (never moves a cursor back).
    pub(crate) fn set(&self, sink: &str, lsn: Lsn) {
        let mut book = self.lock();
        if book.cursors.set(sink, lsn) {
            book.dirty = true;
            self.metrics.sink_cursor_lsn.get_or_create(&SinkLabel { sink: sink.to_string() }).set(lsn.0 as i64);
        }
    }

    /// The saved cursors.
    pub(crate) fn saved(&self) -> Vec<Lsn> {
        self.lock().saved.iter().map(|(_, l)| l).collect()
    }

    /// Save the cursors if they changed since the last save.
    pub(crate) async fn save(&self) -> std::io::Result<()> {
        let cursors = {
            let mut book = self.lock();
            if !std::mem::take(&mut book.dirty) {
                return Ok(());
            }
            book.cursors.clone()
        };
        let result = cursors.save().await;
        let mut book = self.lock();
        match &result {
            Ok(()) => book.saved = cursors,
            Err(_) => book.dirty = true,
        }
        result
    }

    /// Save changed cursors about every second until `stop`, then once more.
    pub(crate) fn spawn_saver(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let book = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let stopped = tokio::select! {
                    _ = stop.cancelled() => true,
                    _ = tokio::time::sleep(CURSOR_SAVE_EVERY) => false,
                };
                match book.save().await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, fix = "make snapshot.state_dir writable", "cannot save the sink cursors; sinks resume from older positions after a restart");
                    }
                    Err(_) => {}
                }
                if stopped {
                    return;
                }
            }
        })
    }
}

/// A sink whose durable position is recorded as its cursor when a write returns.
pub(crate) struct Cursored<S> {
    pub(crate) inner: S,
    pub(crate) book: CursorBook,
}

impl<S: Sink> Sink for Cursored<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.inner.prepare().await
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.inner.write(batch).await?;
        self.record(batch);
        Ok(())
    }

    async fn write_shared(&mut self, batch: &Arc<Batch>) -> Result<(), SinkError> {
        self.inner.write_shared(batch).await?;
        self.record(batch);
        Ok(())
    }
}

impl<S: Sink> Cursored<S> {
    fn record(&self, batch: &Batch) {
        if let Some(lsn) = batch.checkpoint {
            self.book.set(self.inner.name(), lsn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;

    fn batch(lsn: Option<u64>) -> Arc<Batch> {
        Arc::new(Batch { checkpoint: lsn.map(Lsn), ..Batch::default() })
    }

    #[tokio::test]
    async fn a_cursor_moves_only_when_a_write_returned_and_is_saved_on_demand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = CursorBook::load(dir.path(), "s", Metrics::new()).expect("load");
        let mut sink = Cursored { inner: MemorySink::new(), book: book.clone() };
        sink.write_shared(&batch(Some(0x20))).await.expect("write");
        sink.write_shared(&batch(None)).await.expect("a batch ending inside a transaction");
        assert_eq!(book.get("memory"), Some(Lsn(0x20)));
        assert!(book.saved().is_empty(), "not saved yet: retention pins only what a restart resumes from");
        book.save().await.expect("save");
        assert_eq!(book.saved(), [Lsn(0x20)]);
        assert_eq!(SinkCursors::load(dir.path(), "s").expect("file").get("memory"), Some(Lsn(0x20)));

        let mut failing = Cursored { inner: MemorySink::failing("down"), book: book.clone() };
        failing.write_shared(&batch(Some(0x30))).await.expect_err("fails");
        assert_eq!(book.get("memory"), Some(Lsn(0x20)), "a failed write moves no cursor");
        let reloaded = CursorBook::load(dir.path(), "s", Metrics::new()).expect("reload");
        assert_eq!(reloaded.get("memory"), Some(Lsn(0x20)));
    }

    #[test]
    fn marks_pin_their_lsns_and_a_broken_marks_file_pins_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(mark_pins(dir.path(), "s").is_empty(), "no file");
        let marks = r#"{"slot":"s","marks":{"before-deploy":{"lsn":"0/10","created_unix_s":1},"b":{"lsn":"1/0","created_unix_s":2}}}"#;
        std::fs::write(dir.path().join("marks-s.json"), marks).expect("write");
        let mut pins = mark_pins(dir.path(), "s");
        pins.sort();
        assert_eq!(pins, [Lsn(0x10), Lsn(1 << 32)]);
        std::fs::write(dir.path().join("marks-s.json"), "{").expect("write");
        assert!(mark_pins(dir.path(), "s").is_empty());
    }

    #[tokio::test]
    async fn retention_forced_past_a_mark_by_the_size_limit_counts_the_dropped_segments() {
        use crate::decode::fixtures::{change, relation, text};
        use crate::decode::{Op, ReplicaIdentity};

        let dir = tempfile::tempdir().expect("tempdir");
        let segment = crate::config::ChangelogConfig::MIN_SEGMENT_BYTES;
        let cfg = crate::config::ChangelogConfig { segment_bytes: segment, retention_bytes: 3 * segment, ..Default::default() };
        let log = ChangeLog::open(&dir.path().join("log"), &cfg).expect("open");
        let marks = r#"{"slot":"s","marks":{"before-deploy":{"lsn":"0/150","created_unix_s":1}}}"#;
        std::fs::write(dir.path().join("marks-s.json"), marks).expect("write marks");
        let metrics = Metrics::new();
        let pins = Pins { cursors: None, state_dir: dir.path().to_path_buf(), slot: "s".into() };
        let mut sink = ChangelogSink::new(log, pins, Arc::clone(&metrics));
        let rel = relation("public", "t", ReplicaIdentity::Default, &[("id", true, 23), ("v", false, 25)]);
        for n in 1..=40u64 {
            let row = change(
                Arc::clone(&rel),
                Op::Insert,
                None,
                Some(crate::decode::Tuple::from_datums([text(&n.to_string()), text(&"x".repeat(400))])),
            );
            let c = crate::decode::Change { commit_lsn: Lsn(n * 0x100), ..row };
            sink.write_shared(&Arc::new(Batch {
                changes: vec![c],
                checkpoint: Some(Lsn(n * 0x100)),
                snapshot: None,
                messages: Vec::new(),
            }))
            .await
            .expect("append");
        }
        assert!(metrics.encode().contains("walcast_log_dropped_segments_total 0"), "retention ran at the first append only");
        sink.last_retention = None; // due now
        let row = change(rel, Op::Insert, None, Some(crate::decode::Tuple::from_datums([text("41"), text("y")])));
        let c = crate::decode::Change { commit_lsn: Lsn(41 * 0x100), ..row };
        sink.write_shared(&Arc::new(Batch { changes: vec![c], checkpoint: Some(Lsn(41 * 0x100)), snapshot: None, messages: Vec::new() }))
            .await
            .expect("append");
        let stats = crate::changelog::LogReader::open(&dir.path().join("log")).expect("reader").stats().expect("stats");
        assert!(stats.bytes <= 3 * segment, "{stats:?}");
        let text = metrics.encode();
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("walcast_log_dropped_segments_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        assert!(dropped > 0, "every dropped segment held commits after the mark 0/150: {text}");
        assert!(text.contains(&format!("walcast_log_bytes {}", stats.bytes)), "{text}");
    }

    #[tokio::test]
    async fn the_log_sink_appends_stream_batches_skips_snapshot_rows_and_wakes_followers() {
        use crate::decode::fixtures::{change, relation, text};
        use crate::decode::{Op, ReplicaIdentity};
        use crate::sink::SnapshotPart;

        let dir = tempfile::tempdir().expect("tempdir");
        let log = ChangeLog::open(&dir.path().join("log"), &crate::config::ChangelogConfig::default()).expect("open");
        let metrics = Metrics::new();
        let pins = Pins { cursors: None, state_dir: dir.path().to_path_buf(), slot: "s".into() };
        let mut sink = ChangelogSink::new(log, pins, Arc::clone(&metrics));
        let _ = sink.start_handle().set(Lsn(0x50));
        let mut end = sink.subscribe();
        let rel = relation("public", "t", ReplicaIdentity::Default, &[("id", true, 23)]);
        let row = change(rel, Op::Insert, None, Some(crate::decode::Tuple::from_datums([text("1")])));
        let c = crate::decode::Change { commit_lsn: Lsn(0x100), ..row.clone() };
        let snapshot_row = crate::decode::Change { op: Op::Read, ..row };
        let snapshot = Batch {
            changes: vec![snapshot_row],
            checkpoint: None,
            snapshot: Some(SnapshotPart { chunk: 1, exported: None, place: Default::default(), sync: true }),
            messages: Vec::new(),
        };
        sink.write_shared(&Arc::new(snapshot)).await.expect("a snapshot chunk is reported written");
        assert!(!end.has_changed().expect("open"), "nothing appended");
        sink.write_shared(&Arc::new(Batch { changes: vec![c], checkpoint: Some(Lsn(0x100)), snapshot: None, messages: Vec::new() }))
            .await
            .expect("append");
        assert!(end.has_changed().expect("open"));
        assert_eq!(*end.borrow_and_update(), Lsn(0x100));
        let text = metrics.encode();
        assert!(text.contains("walcast_log_durable_lsn 256"), "{text}");
        assert!(text.contains("walcast_log_append_seconds_count 1"), "{text}");
        let logged = crate::changelog::LogReader::open(&dir.path().join("log")).expect("reader").stats().expect("stats");
        assert_eq!(logged.durable_end, Some(Lsn(0x100)));
    }
}
