//! Metric definitions (names are part of the interface: docs/metrics.md lists them) and
//! the HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use self::changelog::LogMetrics;

mod changelog;

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// `{sink}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Sink name (`jsonl`, `elasticsearch`, `kafka`).
    pub sink: String,
}

/// `{sink, outcome}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkOutcome {
    /// Sink name.
    pub sink: String,
    /// `ok`, `retry` (retryable failure) or `error` (permanent failure).
    pub outcome: &'static str,
}

/// `{table, op}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableOp {
    /// `schema.table`.
    pub table: String,
    /// `insert`, `update`, `delete`, `truncate`.
    pub op: &'static str,
}

/// `{table}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `schema.table` (or a document rule name).
    pub table: String,
}

/// `{status}` labels of the slot's wal_status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WalStatusLabel {
    /// `reserved`, `extended`, `unreserved`, `lost`.
    pub status: &'static str,
}

/// The wal_status values Postgres reports (a fixed set, so the label stays small).
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Every metric walcast exports. Cheap to clone handles out of; one instance per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `walcast_changes_total{table,op}`: changes decoded from the stream.
    pub changes: Family<TableOp, Counter>,
    /// `walcast_sink_requests_total{sink,outcome}`: batch writes by outcome.
    pub sink_requests: Family<SinkOutcome, Counter>,
    /// `walcast_sink_request_duration_seconds{sink}`: time per batch write attempt.
    pub sink_request_duration: Family<SinkLabel, Histogram>,
    /// `walcast_sink_durable_lsn{sink}`: highest commit end LSN the sink made durable.
    pub sink_durable_lsn: Family<SinkLabel, Gauge<i64, AtomicI64>>,
    /// `walcast_dead_letters_total{sink}`: rows sent to the dead-letter destination.
    pub dead_letters: Family<SinkLabel, Counter>,
    /// `walcast_snapshot_rows_total{table}`: rows read by snapshots.
    pub snapshot_rows: Family<TableLabel, Counter>,
    /// `walcast_snapshot_rows_estimated{table}`: rows a snapshot expects to read per table.
    pub snapshot_rows_estimated: Family<TableLabel, Gauge<i64, AtomicI64>>,
    /// `walcast_reconnects_total`: replication (re)connection attempts after a failure.
    pub reconnects: Counter,
    /// `walcast_confirmed_lsn`: the LSN confirmed to the slot.
    pub confirmed_lsn: Gauge<i64, AtomicI64>,
    /// `walcast_server_wal_lsn`: the server's current WAL position, as last seen.
    pub server_wal_lsn: Gauge<i64, AtomicI64>,
    /// `walcast_slot_retained_wal_bytes`: WAL the slot holds back (pg_replication_slots).
    pub slot_retained_wal_bytes: Gauge<i64, AtomicI64>,
    /// `walcast_slot_wal_status{status}`: 1 for the slot's current wal_status, 0 for the others.
    pub slot_wal_status: Family<WalStatusLabel, Gauge>,
    /// `walcast_slot_active`: 1 while a walsender streams the slot.
    pub slot_active: Gauge,
    /// `walcast_streaming`: 1 while this process holds a replication session.
    pub streaming: Gauge,
    /// `walcast_snapshotting`: 1 while an initial snapshot or re-sync loads existing rows (no
    /// replication session is open then, so `walcast_streaming` is 0 without anything being wrong).
    pub snapshotting: Gauge,
    /// `walcast_slot_safe_wal_bytes`: `pg_replication_slots.safe_wal_size`; no sample while
    /// Postgres reports NULL (`max_slot_wal_keep_size = -1`: no limit, so no headroom to show).
    pub slot_safe_wal_bytes: Arc<OptionalGauge>,
    /// `walcast_ha_active`: 1 while this process holds the high-availability lease.
    pub ha_active: Gauge,
    /// The change log's size, span and appends (`walcast_log_*`).
    pub log: LogMetrics,
    /// `walcast_sink_cursor_lsn{sink}`: the sink's saved cursor (its durable position in the log).
    pub sink_cursor_lsn: Family<SinkLabel, Gauge<i64, AtomicI64>>,
    /// Lag state read at scrape time.
    pub lag: Arc<LagClock>,
    /// Set when a sink reports a write failure, cleared on its next success (for /readyz).
    sinks_failing: Arc<Mutex<Vec<String>>>,
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("walcast");
        let changes = Family::<TableOp, Counter>::default();
        registry.register("changes", "Row changes decoded from the replication stream", changes.clone());
        let sink_requests = Family::<SinkOutcome, Counter>::default();
        registry.register("sink_requests", "Batch writes per sink by outcome (ok, retry, error)", sink_requests.clone());
        let sink_request_duration =
            Family::<SinkLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_5, 2.0, 16)));
        registry.register("sink_request_duration_seconds", "Time per batch write attempt", sink_request_duration.clone());
        let sink_durable_lsn = Family::<SinkLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("sink_durable_lsn", "Highest commit end LSN the sink made durable (as a number)", sink_durable_lsn.clone());
        let dead_letters = Family::<SinkLabel, Counter>::default();
        // Declared even before their first series, so dashboards and alerts can rely on the names.
        registry.register_collector(Box::new(Declared {
            name: "dead_letters",
            help: "Rows sent to the dead-letter destination",
            metric: dead_letters.clone(),
        }));
        let snapshot_rows = Family::<TableLabel, Counter>::default();
        registry.register_collector(Box::new(Declared {
            name: "snapshot_rows",
            help: "Rows read by snapshots",
            metric: snapshot_rows.clone(),
        }));
        let snapshot_rows_estimated = Family::<TableLabel, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "snapshot_rows_estimated",
            "Rows a snapshot expects to read per table (reltuples, or counted when never analyzed)",
            snapshot_rows_estimated.clone(),
        );
        let reconnects = Counter::default();
        registry.register("reconnects", "Replication connection attempts after a failure", reconnects.clone());
        let confirmed_lsn = Gauge::<i64, AtomicI64>::default();
        registry.register("confirmed_lsn", "LSN confirmed to the replication slot (as a number)", confirmed_lsn.clone());
        let server_wal_lsn = Gauge::<i64, AtomicI64>::default();
        registry.register("server_wal_lsn", "Current WAL position of the server, as last seen (as a number)", server_wal_lsn.clone());
        let slot_retained_wal_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "slot_retained_wal_bytes",
            "WAL retained by the slot (current WAL LSN minus restart_lsn)",
            slot_retained_wal_bytes.clone(),
        );
        let slot_wal_status = Family::<WalStatusLabel, Gauge>::default();
        registry.register("slot_wal_status", "1 for the slot's current wal_status", slot_wal_status.clone());
        let slot_active = Gauge::default();
        registry.register("slot_active", "1 while a walsender streams the slot", slot_active.clone());
        let streaming = Gauge::default();
        registry.register("streaming", "1 while this process holds a replication session", streaming.clone());
        let snapshotting = Gauge::default();
        registry.register("snapshotting", "1 while a snapshot (initial load or re-sync) loads existing rows", snapshotting.clone());
        let slot_safe_wal_bytes = Arc::new(OptionalGauge::default());
        registry.register_collector(Box::new(OptionalGaugeCollector {
            name: "slot_safe_wal_bytes",
            help: "WAL that can still be written before the slot is invalidated (pg_replication_slots.safe_wal_size); no sample when unlimited",
            gauge: Arc::clone(&slot_safe_wal_bytes),
        }));
        let ha_active = Gauge::default();
        registry.register("ha_active", "1 while this process holds the high-availability lease ([ha] enabled)", ha_active.clone());
        let log = LogMetrics::register(&mut registry);
        let sink_cursor_lsn = Family::<SinkLabel, Gauge<i64, AtomicI64>>::default();
        registry.register_collector(Box::new(Declared {
            name: "sink_cursor_lsn",
            help: "The sink's cursor: highest commit end LSN it made durable, as recorded for the change log (as a number)",
            metric: sink_cursor_lsn.clone(),
        }));
        let lag = Arc::new(LagClock::default());
        registry.register_collector(Box::new(LagCollector {
            lag: Arc::clone(&lag),
            server_wal_lsn: server_wal_lsn.clone(),
            confirmed_lsn: confirmed_lsn.clone(),
        }));
        registry.register_collector(Box::new(ProcessCollector));
        Arc::new(Self {
            registry,
            changes,
            sink_requests,
            sink_request_duration,
            sink_durable_lsn,
            dead_letters,
            snapshot_rows,
            snapshot_rows_estimated,
            reconnects,
            confirmed_lsn,
            server_wal_lsn,
            slot_retained_wal_bytes,
            slot_wal_status,
            slot_active,
            streaming,
            snapshotting,
            slot_safe_wal_bytes,
            ha_active,
            log,
            sink_cursor_lsn,
            lag,
            sinks_failing: Arc::default(),
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Record the outcome of one batch write attempt.
    pub fn sink_attempt(&self, sink: &str, outcome: &'static str, seconds: f64) {
        self.sink_requests.get_or_create(&SinkOutcome { sink: sink.to_string(), outcome }).inc();
        self.sink_request_duration.get_or_create(&SinkLabel { sink: sink.to_string() }).observe(seconds);
        if let Ok(mut failing) = self.sinks_failing.lock() {
            failing.retain(|s| s != sink);
            if outcome != "ok" {
                failing.push(sink.to_string());
            }
        }
    }

    /// Record the slot's wal_status.
    pub fn set_wal_status(&self, status: Option<&str>) {
        for s in WAL_STATUSES {
            self.slot_wal_status.get_or_create(&WalStatusLabel { status: s }).set(i64::from(Some(s) == status));
        }
    }

    /// Ready: streaming and no sink failing its last write. A snapshot in progress is not ready
    /// either (nothing streams yet) but says so, so a probe's log tells loading from stuck.
    pub fn ready(&self) -> Result<(), String> {
        if self.streaming.get() != 1 && self.snapshotting.get() == 1 {
            return Err("snapshotting (loading existing rows; streaming starts when the snapshot is done)".into());
        }
        if self.streaming.get() != 1 {
            return Err("not streaming (connecting, reconnecting or stopped)".into());
        }
        match self.sinks_failing.lock() {
            Ok(f) if f.is_empty() => Ok(()),
            Ok(f) => Err(format!("sink(s) failing: {}", f.join(", "))),
            Err(_) => Err("state lock poisoned".into()),
        }
    }
}

/// Commit times of work not yet durable, for the lag-in-seconds gauges. Times are microseconds
/// since 2000-01-01 (Postgres's epoch); 0 means "nothing pending".
#[derive(Debug, Default)]
pub struct LagClock {
    /// Oldest commit time of a change read but not yet durable in every sink.
    oldest_pending: AtomicI64,
    /// Per sink: oldest commit time dispatched to it and not yet durable there.
    sinks: Mutex<Vec<(String, Arc<AtomicI64>)>>,
}

impl LagClock {
    /// Set (or clear with 0) the oldest pending commit time over all sinks.
    pub fn set_oldest_pending(&self, commit_ts: i64) {
        self.oldest_pending.store(commit_ts, Ordering::Relaxed);
    }

    /// The per-sink slot to update, created on first use.
    pub fn sink(&self, name: &str) -> Arc<AtomicI64> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, a)) = sinks.iter().find(|(n, _)| n == name) {
            return Arc::clone(a);
        }
        let a = Arc::new(AtomicI64::new(0));
        sinks.push((name.to_string(), Arc::clone(&a)));
        a
    }
}

/// Seconds from a Postgres commit timestamp to now; 0 for "nothing pending", never negative.
fn seconds_since(commit_ts: i64) -> f64 {
    if commit_ts == 0 {
        return 0.0;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0) - PG_EPOCH_OFFSET_MICROS;
    ((now - commit_ts) as f64 / 1e6).max(0.0)
}

#[derive(Debug)]
struct LagCollector {
    lag: Arc<LagClock>,
    server_wal_lsn: Gauge<i64, AtomicI64>,
    confirmed_lsn: Gauge<i64, AtomicI64>,
}

impl Collector for LagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let bytes = (self.server_wal_lsn.get() - self.confirmed_lsn.get()).max(0);
        let g = ConstGauge::new(bytes);
        g.encode(encoder.encode_descriptor(
            "replication_lag_bytes",
            "Server WAL position minus the confirmed LSN",
            None,
            g.metric_type(),
        )?)?;
        let secs = seconds_since(self.lag.oldest_pending.load(Ordering::Relaxed));
        let g = ConstGauge::new(secs);
        g.encode(encoder.encode_descriptor(
            "replication_lag_seconds",
            "Now minus the commit time of the oldest change not yet durable in every sink; 0 when caught up",
            None,
            g.metric_type(),
        )?)?;
        let sinks = self.lag.sinks.lock().map(|s| s.clone()).unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "sink_lag_seconds",
            "Now minus the commit time of the oldest change handed to the sink and not yet durable there; 0 when caught up",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, ts) in sinks {
            let g = ConstGauge::new(seconds_since(ts.load(Ordering::Relaxed)));
            g.encode(family.encode_family(&SinkLabel { sink: name })?)?;
        }
        Ok(())
    }
}

/// A gauge that may have no value (`set(None)`): then its family is declared without a sample,
/// rather than exporting a made-up 0 that alerts would read as "no headroom".
#[derive(Debug)]
pub struct OptionalGauge(AtomicI64);

impl Default for OptionalGauge {
    fn default() -> Self {
        Self(AtomicI64::new(i64::MIN))
    }
}

impl OptionalGauge {
    /// Set the value, or clear it with `None`.
    pub fn set(&self, value: Option<i64>) {
        // i64::MIN is the "unset" marker; no byte count gets near it.
        self.0.store(value.map_or(i64::MIN, |v| v.max(i64::MIN + 1)), Ordering::Relaxed);
    }

    /// The value, if set.
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v != i64::MIN)
    }
}

#[derive(Debug)]
struct OptionalGaugeCollector {
    name: &'static str,
    help: &'static str,
    gauge: Arc<OptionalGauge>,
}

impl Collector for OptionalGaugeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric_encoder = encoder.encode_descriptor(self.name, self.help, None, prometheus_client::metrics::MetricType::Gauge)?;
        if let Some(v) = self.gauge.get() {
            ConstGauge::new(v).encode(metric_encoder)?;
        }
        Ok(())
    }
}

/// A metric whose `# HELP` / `# TYPE` lines are written even while it has no series (a plain
/// registration omits an empty family), so its name is visible in `/metrics` from the start.
#[derive(Debug)]
struct Declared<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Declared<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric_encoder = encoder.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(metric_encoder)
    }
}

/// Process memory and CPU from /proc (Linux).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = read_rss_bytes() {
            let g = ConstGauge::new(rss);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the walcast process",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(cpu) = read_cpu_seconds() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time (user + system) of the walcast process",
                None,
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn read_rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn read_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform walcast targets.
    Some((utime + stime) / 100.0)
}

/// Bind the metrics endpoint (binding first, so a taken port is reported before streaming starts).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "metrics endpoint listening (/metrics, /healthz, /readyz)");
    }
    Ok(listener)
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let m = Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&m);
                async move { ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = Arc::clone(&metrics);
                async move {
                    match m.ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_design_names() {
        let m = Metrics::new();
        m.changes.get_or_create(&TableOp { table: "public.t".into(), op: "insert" }).inc();
        m.sink_attempt("jsonl", "ok", 0.01);
        m.sink_durable_lsn.get_or_create(&SinkLabel { sink: "jsonl".into() }).set(42);
        m.dead_letters.get_or_create(&SinkLabel { sink: "jsonl".into() }).inc_by(0);
        m.snapshot_rows.get_or_create(&TableLabel { table: "public.t".into() }).inc_by(0);
        m.lag.sink("jsonl");
        m.set_wal_status(Some("reserved"));
        let text = m.encode();
        for name in [
            "walcast_replication_lag_bytes",
            "replication_lag_seconds",
            "walcast_sink_durable_lsn{sink=\"jsonl\"} 42",
            "walcast_sink_lag_seconds{sink=\"jsonl\"} 0",
            "walcast_sink_requests_total{sink=\"jsonl\",outcome=\"ok\"} 1",
            "walcast_sink_request_duration_seconds_bucket",
            "walcast_changes_total{table=\"public.t\",op=\"insert\"} 1",
            "walcast_dead_letters_total{sink=\"jsonl\"} 0",
            "walcast_slot_retained_wal_bytes",
            "walcast_slot_wal_status{status=\"reserved\"} 1",
            "walcast_snapshot_rows_total{table=\"public.t\"} 0",
            "walcast_reconnects_total",
            "walcast_process_resident_memory_bytes",
            "walcast_process_cpu_seconds_total",
            "walcast_ha_active 0",
            "walcast_log_bytes 0",
            "walcast_log_segments 0",
            "walcast_log_oldest_lsn 0",
            "walcast_log_durable_lsn 0",
            "walcast_log_append_seconds_bucket",
            "walcast_log_dropped_segments_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
        // Families without a series yet are still declared.
        let text = Metrics::new().encode();
        for name in ["# TYPE walcast_dead_letters counter", "# TYPE walcast_snapshot_rows counter", "# TYPE walcast_sink_cursor_lsn gauge"]
        {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
    }

    #[test]
    fn lag_is_zero_when_nothing_is_pending_and_grows_when_stuck() {
        assert_eq!(seconds_since(0), 0.0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as i64 - PG_EPOCH_OFFSET_MICROS;
        let lag = seconds_since(now - 5_000_000);
        assert!((4.9..10.0).contains(&lag), "{lag}");
    }

    #[test]
    fn readiness_follows_streaming_and_sink_failures() {
        let m = Metrics::new();
        assert!(m.ready().is_err());
        m.streaming.set(1);
        assert!(m.ready().is_ok());
        m.sink_attempt("kafka", "retry", 0.1);
        assert!(m.ready().unwrap_err().contains("kafka"));
        m.sink_attempt("kafka", "ok", 0.1);
        assert!(m.ready().is_ok());
    }

    #[test]
    fn snapshotting_is_its_own_state_and_safe_wal_is_absent_while_unlimited() {
        let m = Metrics::new();
        m.snapshotting.set(1);
        let reason = m.ready().unwrap_err();
        assert!(reason.starts_with("snapshotting"), "{reason}");
        let text = m.encode();
        assert!(text.contains("walcast_snapshotting 1"), "{text}");
        assert!(text.contains("# TYPE walcast_slot_safe_wal_bytes gauge"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("walcast_slot_safe_wal_bytes")), "NULL safe_wal_size exports no sample:\n{text}");
        m.slot_safe_wal_bytes.set(Some(123_456));
        assert!(m.encode().contains("walcast_slot_safe_wal_bytes 123456"));
        m.slot_safe_wal_bytes.set(Some(-5));
        assert!(m.encode().contains("walcast_slot_safe_wal_bytes -5"), "negative headroom (past the limit) is shown");
        m.slot_safe_wal_bytes.set(None);
        assert_eq!(m.slot_safe_wal_bytes.get(), None);
    }
}
