//! The ack modes, with the change log (`[changelog]`):
//! - no log (`enabled = false`): the stream's fan-out holds the sinks, as before the log existed;
//! - strict (default): the log is the first sink of the fan-out, so the slot is confirmed at
//!   min(log durable, every sink durable); each sink's durable position is saved as its cursor;
//! - decoupled: the fan-out holds only the log, so the slot is confirmed once a change is durable
//!   there; each sink is fed from the log by a follower (`follow.rs`) after its cursor.
//!
//! Snapshot batches go straight to the sinks in every mode (the log sink reports their chunks
//! written without logging them); in decoupled mode the followers start only once the snapshot
//! is loaded, and every cursor is moved to at least the snapshot's point first.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::follow::Followers;
use super::PipelineError;
use crate::changelog::{ChangeLog, ChangelogError};
use crate::config::{AckMode, Config};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::sink::changelog::{ChangelogSink, CursorBook, Pins};
use crate::sink::fanout::{Fanout, Sinks};
use crate::source::{ConnParams, SourceError};

/// The sinks of one run, as the ack mode arranges them.
pub(super) struct Wiring {
    /// What the streaming loop writes to.
    pub(super) stream: Sinks,
    /// Decoupled mode: the sinks the followers feed (the snapshot writes to them directly).
    followed: Option<Followed>,
    /// Where the stream starts, for an empty log (set once the slot is prepared).
    start: Option<Arc<OnceLock<Lsn>>>,
    /// Sink cursors (with a log) and the task saving them.
    cursors: Option<(CursorBook, DropGuard, tokio::task::JoinHandle<()>)>,
}

struct Followed {
    sinks: Sinks,
    dir: PathBuf,
    end: watch::Receiver<Lsn>,
}

/// Open the log (if enabled) and start the sinks for the configured ack mode. `run` ends the
/// sinks' retry waits (and is cancelled by a failed follower).
pub(super) async fn start(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    run: &CancellationToken,
) -> Result<Wiring, PipelineError> {
    let mut stream = Fanout::new(&config.pipeline, &config.retry, metrics, run);
    if !config.changelog.enabled {
        stream.open_configured(config, params, false)?;
        return Ok(Wiring { stream: stream.started(), followed: None, start: None, cursors: None });
    }
    let (state_dir, slot) = (config.snapshot.state_dir.clone(), config.source.slot.clone());
    let dir = config.changelog.dir_for(&state_dir, &slot);
    let (log, book) = {
        let (at, cfg, m, state_dir, slot) = (dir.clone(), config.changelog.clone(), Arc::clone(metrics), state_dir.clone(), slot.clone());
        let opened = tokio::task::spawn_blocking(move || {
            let book = CursorBook::load(&state_dir, &slot, m);
            (ChangeLog::open(&at, &cfg), book)
        })
        .await
        .map_err(|e| SourceError::setup(format!("opening the change log failed: {e}"), "start walcast again"))?;
        let log = opened.0.map_err(|e| open_error(&dir, &e))?;
        let book = opened.1.map_err(|e| {
            SourceError::setup(format!("cannot read the sink cursors: {e}"), "make snapshot.state_dir a readable directory")
        })?;
        (log, book)
    };
    let saver_stop = CancellationToken::new();
    let saver = book.spawn_saver(saver_stop.clone());
    let decoupled = config.changelog.ack == AckMode::Decoupled;
    let pins = Pins { cursors: decoupled.then(|| book.clone()), state_dir, slot };
    let log = ChangelogSink::new(log, pins, Arc::clone(metrics));
    let start = Some(log.start_handle());
    tracing::info!(dir = %dir.display(), durable = %Lsn(metrics.log.durable_lsn.get() as u64), decoupled, "change log open");
    let cursors = Some((book.clone(), saver_stop.drop_guard(), saver));
    if !decoupled {
        // First, so that when the log fails, its error is the one seen.
        stream.spawn_log(log);
        let mut stream = stream.with_cursors(book);
        stream.open_configured(config, params, false)?;
        return Ok(Wiring { stream: stream.started(), followed: None, start, cursors });
    }
    let end = log.subscribe();
    stream.spawn_log(log);
    let mut followed = Fanout::new(&config.pipeline, &config.retry, metrics, run).with_cursors(book);
    followed.open_configured(config, params, false)?;
    Ok(Wiring { stream: stream.started(), followed: Some(Followed { sinks: followed.started(), dir, end }), start, cursors })
}

/// Opening the log failed: walcast's own state, a setup problem (exit 3), whatever the cause (a
/// damaged segment, named with its offset; another writer; an unusable directory).
fn open_error(dir: &std::path::Path, e: &ChangelogError) -> PipelineError {
    let fallback = "make changelog.dir a writable directory on a persistent volume, and run one walcast per slot";
    setup_error(&format!("cannot open the change log in {}", dir.display()), e, fallback)
}

/// `e` (whose message ends with its own `; fix: ...`) as a setup problem with that fix.
pub(super) fn setup_error(context: &str, e: &ChangelogError, fallback: &str) -> PipelineError {
    let text = e.to_string();
    let (problem, fix) = text.split_once("; fix: ").unwrap_or((&text, fallback));
    SourceError::setup(format!("{context}: {problem}"), fix).into()
}

impl Wiring {
    /// The slot is prepared: the stream starts after `lsn` (an empty log holds every commit
    /// after it, so a follower or a replay from there is not refused).
    pub(super) fn slot_start(&self, lsn: Lsn) {
        if let Some(start) = &self.start {
            let _ = start.set(lsn);
        }
    }

    /// Where a snapshot writes: the real sinks (decoupled: not through the log).
    pub(super) fn snapshot_sinks(&mut self) -> &mut Sinks {
        match &mut self.followed {
            Some(f) => &mut f.sinks,
            None => &mut self.stream,
        }
    }

    /// A snapshot loaded the rows as of `point`: in decoupled mode every sink's cursor moves to at
    /// least `point` (the rows include every change before it), saved before any follower reads.
    pub(super) async fn snapshot_loaded(&self, point: Lsn) -> Result<(), PipelineError> {
        let (Some(f), Some((book, ..))) = (&self.followed, &self.cursors) else { return Ok(()) };
        for name in &f.sinks.names {
            book.set(name, point);
        }
        book.save().await.map_err(|e| {
            SourceError::setup(format!("cannot save the sink cursors: {e}"), "make snapshot.state_dir a writable directory").into()
        })
    }

    /// Start the followers (decoupled mode); the stream's sinks are returned for the loop.
    pub(super) fn into_stream(self, start: Lsn, limits: usize, metrics: &Arc<Metrics>, run: &CancellationToken) -> (Sinks, Running) {
        let followers = match (self.followed, &self.cursors) {
            (Some(f), Some((book, ..))) => Some(Followers::start(f.sinks, f.dir, start, &f.end, book, limits, metrics, run)),
            _ => None,
        };
        (self.stream, Running { followers, cursors: self.cursors })
    }
}

/// What runs beside the streaming loop: followers and the cursor saver.
pub(super) struct Running {
    followers: Option<Followers>,
    cursors: Option<(CursorBook, DropGuard, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// After the streaming loop ended: stop the followers (each sink writes what it was handed,
    /// by the shutdown timeout), save the cursors a last time; a follower's failure is returned.
    pub(super) async fn finish(self, timeout: std::time::Duration) -> Option<PipelineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let failure = match self.followers {
            Some(f) => f.finish(deadline).await,
            None => None,
        };
        if let Some((_, stop, saver)) = self.cursors {
            drop(stop);
            let _ = saver.await;
        }
        failure
    }
}
