//! A real Prometheus (Debian's, started by the test on a free port) scrapes walcast every second
//! during a workload. Asked through its HTTP API, it sees `walcast_replication_lag_bytes` rise
//! while a 300k-row transaction is written and streamed, and fall back near 0 once walcast has
//! caught up and the database is idle; `walcast_replication_lag_seconds` is 0 then.

mod obs_support;
mod support;

use std::time::{Duration, Instant};

use obs_support::*;
use support::*;

const ROWS: i64 = 300_000;
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
    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;

    let prom = Prometheus::start(&[&addr]).await;
    prom.wait_scraped(1, Duration::from_secs(30)).await;

    // A little traffic first, then idle: lag must already be near 0 before the load.
    exec(&client, "INSERT INTO t (a, b) SELECT g, md5(g::text) FROM generate_series(1, 100) g").await;
    w.wait_lines(100, WAIT).await;
    let before = wait_value(&prom, "walcast_replication_lag_bytes", |v| v < IDLE_BYTES, Duration::from_secs(30)).await;

    // The load: one big transaction. Its WAL is written (and seen by the slot monitor) before
    // the commit; walcast confirms only once every row is in the sink.
    let load_start = Instant::now();
    let wal_before = current_wal_lsn(&client).await;
    exec(&client, &format!("INSERT INTO t (a, b) SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g")).await;
    let wal_after = current_wal_lsn(&client).await;
    let wal_written = wal_after.0 - wal_before.0;
    let committed = Instant::now();

    // Prometheus has seen the rise (a range query over the last minute of scrapes).
    let peak = wait_value(&prom, "max_over_time(walcast_replication_lag_bytes[1m])", |v| v > RISE_BYTES, Duration::from_secs(30)).await;
    let peak_seconds = prom.value("max_over_time(walcast_replication_lag_seconds[1m])").unwrap_or(0.0);

    // Every row reached the sink and was confirmed.
    let confirmed = db.wait_confirmed_at_least(wal_after, Duration::from_secs(60)).await;
    assert!(confirmed >= wal_after, "walcast did not confirm the big transaction: confirmed {confirmed}, WAL {wal_after}\n{}", w.log_tail(30));
    let caught_up = Instant::now();
    let lines = w.raw_output().iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines as i64, 100 + ROWS, "every row of the load is in the sink");

    // Idle again: the instant value falls back near 0 and lag in seconds is exactly 0.
    let idle = wait_value(&prom, "walcast_replication_lag_bytes", |v| v < IDLE_BYTES, Duration::from_secs(30)).await;
    let fell_after = caught_up.elapsed();
    let idle_seconds = wait_value(&prom, "walcast_replication_lag_seconds", |v| v == 0.0, Duration::from_secs(15)).await;
    // The rise happened after the baseline and the fall after the rise, in Prometheus's own data.
    let series = prom.query("walcast_replication_lag_bytes[2m]");
    let values: Vec<f64> = series[0]["values"]
        .as_array()
        .expect("a range vector")
        .iter()
        .filter_map(|p| p[1].as_str()?.parse().ok())
        .collect();
    let peak_at = values.iter().position(|&v| v > RISE_BYTES).expect("a scrape above the threshold");
    assert!(values[peak_at..].iter().any(|&v| v < IDLE_BYTES), "no scrape near 0 after the peak: {values:?}");

    eprintln!(
        "figures: WAL written by the load {:.1} MB; Prometheus saw lag {:.0} B before, peak {:.1} MB \
         (lag seconds peak {peak_seconds:.2} s), {:.0} B when idle ({fell_after:?} after the slot caught up), \
         lag seconds idle {idle_seconds}; commit took {:?}, catch-up {:?} after commit; {} scrapes in 2 min; test {:?}",
        wal_written as f64 / 1e6,
        before,
        peak / 1e6,
        idle,
        committed - load_start,
        caught_up - committed,
        values.len(),
        started.elapsed()
    );

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
