//! A real Prometheus (Debian's, started by the test on a free port) scrapes walcast every second
//! during a workload. Asked through its HTTP API, it sees `walcast_replication_lag_bytes` and
//! `walcast_replication_lag_seconds` rise while the sink is slow and rows are committed, and
//! fall back near 0 (seconds: exactly 0) once walcast has caught up and the database is idle.
//!
//! The slow sink is deterministic: the JSON-lines sink writes into a FIFO that the test reads,
//! and the test stops reading while the load commits. walcast then cannot make anything durable,
//! applies backpressure and confirms nothing, so lag stays up until the test reads again.

use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::obs::*;
use crate::support::*;

const ROWS: i64 = 300_000;
const TXS: i64 = 10;
/// Lag that a 300k-row transaction (about 40 MB of WAL) must show at its peak.
const RISE_BYTES: f64 = 8.0 * 1024.0 * 1024.0;
/// "Near 0" once idle.
const IDLE_BYTES: f64 = 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_lag_rise_under_load_and_fall_when_idle() {
    let started = Instant::now();
    let db = TestDb::create("prom_lag").await;
    let client = db.client().await;
    exec(&client, "CREATE TABLE t (id bigserial PRIMARY KEY, a int, b text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;

    let mut w = Walcast::with_options(&db, &Options { extra: "[heartbeat]\ninterval_ms = 1000\n".into(), ..Options::default() });
    // Poll the slot often so the server's WAL position (and so lag) follows the write closely.
    patch_config(&w, METRICS_SECTION, "[metrics]\nlisten = \"127.0.0.1:0\"\nslot_poll_ms = 200\n");
    let reader = FifoReader::new(&w.out_path);
    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;

    let prom = Prometheus::start(&[&addr]).await;
    prom.wait_scraped(1, Duration::from_secs(30)).await;

    // A little traffic first, then idle: lag must already be near 0 before the load.
    exec(&client, "INSERT INTO t (a, b) SELECT g, md5(g::text) FROM generate_series(1, 100) g").await;
    reader.wait_lines(100, WAIT).await;
    let before = wait_value(&prom, "walcast_replication_lag_bytes", |v| v < IDLE_BYTES, Duration::from_secs(30)).await;

    // The load, with the sink stalled: ten transactions commit.
    reader.pause(true);
    let load_start = Instant::now();
    let wal_before = current_wal_lsn(&client).await;
    for i in 0..TXS {
        let (from, to) = (i * ROWS / TXS + 1, (i + 1) * ROWS / TXS);
        exec(&client, &format!("INSERT INTO t (a, b) SELECT g, md5(g::text) FROM generate_series({from}, {to}) g")).await;
    }
    let wal_after = current_wal_lsn(&client).await;
    let wal_written = wal_after.0 - wal_before.0;
    let committed = load_start.elapsed();

    // Prometheus sees the rise: most of the load's WAL, and commit times that keep aging.
    let peak = wait_value(&prom, "max_over_time(walcast_replication_lag_bytes[1m])", |v| v > RISE_BYTES, Duration::from_secs(30)).await;
    let peak_seconds = wait_value(&prom, "max_over_time(walcast_replication_lag_seconds[1m])", |v| v > 2.0, Duration::from_secs(30)).await;
    let sink_peak = prom.value("max_over_time(walcast_sink_lag_seconds{sink=\"jsonl\"}[1m])").unwrap_or(0.0);
    assert!(sink_peak > 1.0, "walcast_sink_lag_seconds{{sink=\"jsonl\"}} did not rise: {sink_peak}");

    // The sink reads again: every row arrives and is confirmed.
    reader.pause(false);
    let resumed = Instant::now();
    reader.wait_lines(100 + ROWS as u64, Duration::from_secs(60)).await;
    let confirmed = db.wait_confirmed_at_least(wal_after, Duration::from_secs(60)).await;
    assert!(confirmed >= wal_after, "walcast did not confirm the load: confirmed {confirmed}, WAL {wal_after}\n{}", w.log_tail(30));
    let caught_up = resumed.elapsed();

    // Idle again: the instant value falls back near 0 and lag in seconds is exactly 0.
    let idle = wait_value(&prom, "walcast_replication_lag_bytes", |v| v < IDLE_BYTES, Duration::from_secs(30)).await;
    let fell_after = resumed.elapsed();
    let idle_seconds = wait_value(&prom, "walcast_replication_lag_seconds", |v| v == 0.0, Duration::from_secs(15)).await;
    // In Prometheus's own data: a scrape above the threshold, and a scrape near 0 after it.
    let series = prom.query("walcast_replication_lag_bytes[2m]");
    let values: Vec<f64> =
        series[0]["values"].as_array().expect("a range vector").iter().filter_map(|p| p[1].as_str()?.parse().ok()).collect();
    let peak_at = values.iter().position(|&v| v > RISE_BYTES).expect("a scrape above the threshold");
    assert!(values[peak_at..].iter().any(|&v| v < IDLE_BYTES), "no scrape near 0 after the peak: {values:?}");

    eprintln!(
        "figures: load {ROWS} rows in {TXS} transactions, {:.1} MB of WAL, committed in {committed:?}; \
         Prometheus saw lag {before:.0} B before, peak {:.1} MB and {peak_seconds:.1} s (sink jsonl {sink_peak:.1} s) \
         while the sink was stalled, {idle:.0} B and {idle_seconds} s when idle; caught up {caught_up:?} after \
         the sink resumed, lag near 0 in Prometheus {fell_after:?} after; {} scrapes of lag in 2 min; test {:?}",
        wal_written as f64 / 1e6,
        peak / 1e6,
        values.len(),
        started.elapsed()
    );

    // The slot was created by the test, so no snapshot ran: walcast never reported snapshotting,
    // and the snapshot exception of WalcastNotStreaming had nothing to hide.
    assert_eq!(prom.value("max(max_over_time(walcast_snapshotting[10m]))"), Some(0.0));

    w.stop().await;
    drop(prom);
    db.drop().await;
}

/// Poll an instant query until its first value satisfies `ok`; returns that value.
async fn wait_value(prom: &Prometheus, expr: &str, ok: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(v) = prom.value(expr) {
            if ok(v) {
                return v;
            }
            last = Some(v);
        }
        assert!(Instant::now() < deadline, "{expr}: condition not met within {timeout:?}; last value {last:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the FIFO the JSON-lines sink writes to, counting lines; `pause(true)` stops reading, so
/// the sink blocks once the pipe is full.
struct FifoReader {
    paused: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
}

impl FifoReader {
    fn new(path: &Path) -> Self {
        let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
        assert!(status.success(), "mkfifo {} failed", path.display());
        let (paused, lines) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (p, l, path) = (Arc::clone(&paused), Arc::clone(&lines), path.to_path_buf());
        std::thread::spawn(move || {
            // Blocks until walcast opens the FIFO for writing; EOF when it closes it.
            let Ok(mut f) = std::fs::File::open(&path) else { return };
            let mut buf = vec![0u8; 1 << 16];
            loop {
                if p.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        l.fetch_add(buf[..n].iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        Self { paused, lines }
    }

    fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::Relaxed);
    }

    async fn wait_lines(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "{} of {n} lines within {timeout:?}", self.lines.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.lines.load(Ordering::Relaxed), n, "more lines than rows: duplicates without a restart");
    }
}
