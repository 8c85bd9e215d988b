//! Decoupled mode: each sink is fed from the change log by a follower instead of the stream. A
//! follower reads the log after the sink's cursor on a blocking thread (`LogScan`), hands each
//! batch to the sink's `drive` task (the same retries as the stream's sinks), and sleeps at the
//! log's end until the log sink says it grew. The sink's cursor moves as its writes return.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::changelog::{ChangelogError, LogReader, LogScan};
use crate::checkpoint::Checkpoint;
use crate::lsn::Lsn;
use crate::metrics::{Metrics, SinkLabel};
use crate::sink::changelog::CursorBook;
use crate::sink::fanout::{InFlight, Sinks};
use crate::sink::{Batch, SinkReport};

/// The running followers and the sinks they feed.
pub(super) struct Followers {
    readers: Vec<JoinHandle<Result<(), ChangelogError>>>,
    router: JoinHandle<()>,
    tasks: JoinSet<()>,
    /// The first failure (a sink failing for good, the log unreadable); it also cancels the run.
    failure: Arc<Mutex<Option<PipelineError>>>,
    stop: CancellationToken,
}

/// What one sink owes, for its lag: batches handed to it and not yet durable there.
struct Owed {
    checkpoint: Mutex<Checkpoint>,
    lag: Arc<AtomicI64>,
    durable: prometheus_client::metrics::gauge::Gauge<i64, AtomicI64>,
}

impl Owed {
    fn update_lag(&self, checkpoint: &Checkpoint) {
        self.lag.store(checkpoint.oldest_pending(0).unwrap_or(0), Ordering::Relaxed);
    }
}

/// Where a follower starts: after the sink's cursor; a sink without one (added to the config)
/// at the log's start, or, while the log is empty, where this run's stream starts.
fn start_scan(reader: &LogReader, sink: &str, cursor: Option<Lsn>, start: Lsn) -> Result<LogScan, ChangelogError> {
    let after = match cursor {
        Some(c) => c,
        None => reader.stats()?.oldest.map_or(start, |oldest| Lsn(oldest.0.saturating_sub(1))),
    };
    match reader.scan_after(after) {
        Err(ChangelogError::NotInLog { requested, oldest, .. }) => {
            lost(sink, requested, oldest);
            reader.scan_after(Lsn(oldest.0.saturating_sub(1)))
        }
        other => other,
    }
}

/// The log no longer holds what the sink needs (retention had to drop it): said loudly, then the
/// sink continues from the log's start.
fn lost(sink: &str, requested: Lsn, oldest: Lsn) {
    tracing::error!(
        sink,
        cursor = %requested,
        %oldest,
        fix = "bring the sink up to date with `walcast resync` (or `walcast snapshot --table` per table)",
        "the change log no longer holds the changes the sink needs (retention dropped them): the sink misses them; it continues from the log's start"
    );
}

/// Everything one follower thread needs.
struct Reader {
    sink: &'static str,
    dir: PathBuf,
    cursor: Option<Lsn>,
    start: Lsn,
    queue: mpsc::Sender<Arc<Batch>>,
    owed: Arc<Owed>,
    in_flight: Arc<InFlight>,
    end: watch::Receiver<Lsn>,
    max_changes: usize,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl Reader {
    /// Read the log and hand its batches to the sink until `stop`. Blocking (a thread of the
    /// blocking pool for the whole run: log reads are file I/O).
    fn run(mut self) -> Result<(), ChangelogError> {
        let reader = LogReader::open(&self.dir)?;
        let mut scan = start_scan(&reader, self.sink, self.cursor, self.start)?;
        tracing::info!(sink = self.sink, after = %scan.position(), "following the change log");
        loop {
            // Seen before reading: an append after this wakes the wait below.
            self.end.borrow_and_update();
            loop {
                let b = match scan.next_batch(self.max_changes) {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(ChangelogError::NotInLog { requested, oldest, .. }) => {
                        lost(self.sink, requested, oldest);
                        scan = reader.scan_after(Lsn(oldest.0.saturating_sub(1)))?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if self.stop.is_cancelled() {
                    return Ok(());
                }
                {
                    let mut c = self.owed.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
                    c.on_dispatched(b.checkpoint, b.changes.iter().map(|c| c.commit_ts).min());
                    self.owed.update_lag(&c);
                }
                self.in_flight.add();
                let batch = Arc::new(Batch { changes: b.changes, checkpoint: b.checkpoint, ..Batch::default() });
                let (queue, stop) = (&self.queue, &self.stop);
                // Waits while the sink's queue is full (the sink is slow or down): backpressure
                // on this follower only, never on the stream.
                let sent = self.runtime.block_on(async {
                    tokio::select! {
                        r = queue.send(batch) => r.is_ok(),
                        _ = stop.cancelled() => false,
                    }
                });
                if !sent {
                    return Ok(());
                }
            }
            let (end, stop) = (&mut self.end, &self.stop);
            let stopped = self.runtime.block_on(async {
                tokio::select! {
                    r = end.changed() => {
                        // The log sink ended: nothing more will be appended in this run.
                        if r.is_err() {
                            stop.cancelled().await;
                        }
                        stop.is_cancelled()
                    }
                    _ = stop.cancelled() => true,
                }
            });
            if stopped {
                return Ok(());
            }
        }
    }
}

impl Followers {
    /// Feed every sink of `sinks` from the log in `dir`, each after its cursor in `book` (see
    /// `start_scan`; `start`: where this run's stream starts); `end` wakes them when the log
    /// grows. A failure is kept and cancels `run`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        sinks: Sinks,
        dir: PathBuf,
        start: Lsn,
        end: &watch::Receiver<Lsn>,
        book: &CursorBook,
        max_changes: usize,
        metrics: &Arc<Metrics>,
        run: &CancellationToken,
    ) -> Self {
        let Sinks { queues, mut reports, tasks, in_flight, names } = sinks;
        let stop = run.child_token();
        let failure: Arc<Mutex<Option<PipelineError>>> = Arc::default();
        let mut owed_all = Vec::with_capacity(names.len());
        let mut readers = Vec::with_capacity(names.len());
        for (queue, sink) in queues.into_iter().zip(names.iter().copied()) {
            let cursor = book.get(sink);
            let label = SinkLabel { sink: sink.to_string() };
            let durable = metrics.sink_durable_lsn.get_or_create(&label).clone();
            durable.set(cursor.map_or(0, |c| c.0 as i64));
            metrics.dead_letters.get_or_create(&label).inc_by(0);
            let checkpoint = Mutex::new(Checkpoint::new(1, cursor.unwrap_or(Lsn::ZERO)));
            let owed = Arc::new(Owed { checkpoint, lag: metrics.lag.sink(sink), durable });
            owed_all.push(Arc::clone(&owed));
            let reader = Reader {
                sink,
                dir: dir.clone(),
                cursor,
                start,
                queue,
                owed,
                in_flight: Arc::clone(&in_flight),
                end: end.clone(),
                max_changes,
                stop: stop.clone(),
                runtime: tokio::runtime::Handle::current(),
            };
            let (failure, run) = (Arc::clone(&failure), run.clone());
            readers.push(tokio::task::spawn_blocking(move || {
                let result = reader.run();
                if let Err(e) = &result {
                    fail(&failure, &run, log_read_error(sink, e));
                }
                result
            }));
        }
        let router = {
            let (failure, run) = (Arc::clone(&failure), run.clone());
            tokio::spawn(async move {
                while let Some(report) = reports.recv().await {
                    match report {
                        SinkReport::Durable { sink, lsn } => {
                            let Some(owed) = owed_all.get(sink) else { continue };
                            owed.durable.set(lsn.0 as i64);
                            let mut c = owed.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
                            c.on_durable(0, lsn);
                            owed.update_lag(&c);
                        }
                        SinkReport::SnapshotChunk { .. } => {}
                        SinkReport::Failed { error, .. } => fail(&failure, &run, error.into()),
                    }
                }
            })
        };
        Self { readers, router, tasks, failure, stop }
    }

    /// Stop reading, let each sink write what it was handed (until `deadline`), and return the
    /// first failure.
    pub(super) async fn finish(mut self, deadline: tokio::time::Instant) -> Option<PipelineError> {
        self.stop.cancel();
        // A reader ends at its next batch or wait, dropping its queue: the sink then ends.
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        let drained = tokio::time::timeout_at(deadline, async { while self.tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("sinks did not finish in time; they resume from their cursors after the restart");
            self.tasks.abort_all();
        }
        let _ = self.router.await;
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Keep the first failure and stop the run.
fn fail(failure: &Mutex<Option<PipelineError>>, run: &CancellationToken, error: PipelineError) {
    failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(error);
    run.cancel();
}

/// A log that cannot be read back is walcast's own state: a setup problem (exit 3).
fn log_read_error(sink: &str, e: &ChangelogError) -> PipelineError {
    let fallback = "make changelog.dir readable, then start walcast again";
    super::ack::setup_error(&format!("the change log cannot be read for sink {sink}"), e, fallback)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::changelog::ChangeLog;
    use crate::config::{ChangelogConfig, PipelineConfig, RetryConfig};
    use crate::decode::fixtures::{change, relation, text};
    use crate::decode::{Change, Op, ReplicaIdentity};
    use crate::sink::fanout::Fanout;
    use crate::sink::MemorySink;

    /// Transaction `n`: one insert committing at `n * 0x100`.
    fn tx(n: u64) -> Vec<Change> {
        let rel = relation("public", "t", ReplicaIdentity::Default, &[("id", true, 23)]);
        let c = change(rel, Op::Insert, None, Some(crate::decode::Tuple::from_datums([text(&n.to_string())])));
        vec![Change { lsn: Lsn(n * 0x100 - 0x10), commit_lsn: Lsn(n * 0x100), xid: n as u32, ..c }]
    }

    async fn wait_for(sink: &MemorySink, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.events().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} changes", sink.events().len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_follower_resumes_after_the_cursor_and_follows_the_log_as_it_grows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("log");
        let mut log = ChangeLog::open(&log_dir, &ChangelogConfig::default()).expect("open");
        log.set_start(Lsn(0x50));
        for n in 1..=3 {
            log.append(&tx(n), Some(Lsn(n * 0x100))).expect("append");
        }
        let metrics = Metrics::new();
        let book = CursorBook::load(dir.path(), "s", Arc::clone(&metrics)).expect("cursors");
        book.set("memory", Lsn(0x100)); // the sink has transaction 1
        let (limits, retry) = (PipelineConfig::default(), RetryConfig { initial_ms: 10, max_ms: 10 });
        let run = CancellationToken::new();
        let sink = MemorySink::new();
        let mut fanout = Fanout::new(&limits, &retry, &metrics, &run).with_cursors(book.clone());
        fanout.spawn(sink.clone());
        let (end_tx, end) = watch::channel(Lsn(0x300));
        let followers = Followers::start(fanout.started(), log_dir.clone(), Lsn(0x50), &end, &book, 100, &metrics, &run);
        wait_for(&sink, 2).await;
        let ids: Vec<_> = sink.events().iter().map(|e| e["after"]["id"].clone()).collect();
        assert_eq!(ids, [serde_json::json!(2), serde_json::json!(3)], "after the cursor, in order");

        log.append(&tx(4), Some(Lsn(0x400))).expect("append");
        end_tx.send(Lsn(0x400)).expect("send");
        wait_for(&sink, 3).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while book.get("memory") != Some(Lsn(0x400)) {
            assert!(tokio::time::Instant::now() < deadline, "cursor {:?}", book.get("memory"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = metrics.encode();
        assert!(text.contains("walcast_sink_durable_lsn{sink=\"memory\"} 1024"), "{text}");
        assert!(text.contains("walcast_sink_cursor_lsn{sink=\"memory\"} 1024"), "{text}");
        run.cancel();
        assert!(followers.finish(tokio::time::Instant::now() + Duration::from_secs(5)).await.is_none());
        assert_eq!(sink.events().len(), 3, "nothing twice");
    }

    /// The value of `walcast_sink_lag_seconds{sink="memory"}`.
    fn memory_lag(metrics: &Metrics) -> f64 {
        let text = metrics.encode();
        let line = text.lines().find(|l| l.starts_with("walcast_sink_lag_seconds{sink=\"memory\"}")).unwrap_or_else(|| panic!("{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    #[tokio::test]
    async fn a_stuck_sink_shows_its_own_lag_from_the_log_and_none_once_caught_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("log");
        let mut log = ChangeLog::open(&log_dir, &ChangelogConfig::default()).expect("open");
        log.set_start(Lsn(0x50));
        // Committed a minute ago (microseconds since 2000-01-01, as Postgres sends them).
        let unix_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as i64;
        let minute_ago = unix_us - 946_684_800_000_000 - 60_000_000;
        for n in 1..=2 {
            let t: Vec<Change> = tx(n).into_iter().map(|c| Change { commit_ts: minute_ago, ..c }).collect();
            log.append(&t, Some(Lsn(n * 0x100))).expect("append");
        }
        let metrics = Metrics::new();
        let book = CursorBook::load(dir.path(), "s", Arc::clone(&metrics)).expect("cursors");
        let (limits, retry) = (PipelineConfig::default(), RetryConfig { initial_ms: 10, max_ms: 10 });
        let run = CancellationToken::new();
        let (sink, gate) = MemorySink::gated();
        let mut fanout = Fanout::new(&limits, &retry, &metrics, &run).with_cursors(book.clone());
        fanout.spawn(sink.clone());
        let (_end_tx, end) = watch::channel(Lsn(0x200));
        let followers = Followers::start(fanout.started(), log_dir, Lsn(0x50), &end, &book, 1, &metrics, &run);
        // The sink is stuck (its writes wait): its lag is the age of the oldest change it owes.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while memory_lag(&metrics) < 59.0 {
            assert!(tokio::time::Instant::now() < deadline, "lag {}", memory_lag(&metrics));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sink.events().is_empty());
        gate.add_permits(2);
        wait_for(&sink, 2).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while memory_lag(&metrics) != 0.0 || book.get("memory") != Some(Lsn(0x200)) {
            assert!(tokio::time::Instant::now() < deadline, "lag {} cursor {:?}", memory_lag(&metrics), book.get("memory"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.cancel();
        assert!(followers.finish(tokio::time::Instant::now() + Duration::from_secs(5)).await.is_none());
    }

    #[tokio::test]
    async fn a_sink_without_a_cursor_starts_at_the_log_start_and_a_failure_stops_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("log");
        let mut log = ChangeLog::open(&log_dir, &ChangelogConfig::default()).expect("open");
        log.set_start(Lsn(0x50));
        log.append(&tx(1), Some(Lsn(0x100))).expect("append");
        let metrics = Metrics::new();
        let book = CursorBook::load(dir.path(), "s", Arc::clone(&metrics)).expect("cursors");
        let (limits, retry) = (PipelineConfig::default(), RetryConfig { initial_ms: 10, max_ms: 10 });
        let run = CancellationToken::new();
        let sink = MemorySink::new();
        let mut fanout = Fanout::new(&limits, &retry, &metrics, &run).with_cursors(book.clone());
        fanout.spawn(sink.clone());
        let (_end_tx, end) = watch::channel(Lsn(0x100));
        let followers = Followers::start(fanout.started(), log_dir.clone(), Lsn(0x50), &end, &book, 100, &metrics, &run);
        wait_for(&sink, 1).await;
        run.cancel();
        assert!(followers.finish(tokio::time::Instant::now() + Duration::from_secs(5)).await.is_none());

        let run = CancellationToken::new();
        let mut fanout = Fanout::new(&limits, &retry, &metrics, &run);
        fanout.spawn(MemorySink::failing("gone"));
        let fresh = CursorBook::load(&dir.path().join("other"), "s", Arc::clone(&metrics)).expect("cursors");
        let followers = Followers::start(fanout.started(), log_dir, Lsn(0x50), &end, &fresh, 100, &metrics, &run);
        tokio::time::timeout(Duration::from_secs(10), run.cancelled()).await.expect("a failed sink cancels the run");
        let failure = followers.finish(tokio::time::Instant::now() + Duration::from_secs(5)).await;
        assert!(matches!(failure, Some(PipelineError::Sink(_))), "{failure:?}");
    }
}
