//! The change log's metrics (`walcast_log_*`).

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The change log's metrics, updated by the log sink after each append.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    /// `walcast_log_bytes`: bytes of the segment files.
    pub bytes: Gauge<i64, AtomicI64>,
    /// `walcast_log_segments`: segment files.
    pub segments: Gauge<i64, AtomicI64>,
    /// `walcast_log_oldest_lsn`: oldest commit end LSN the log holds (0 while empty).
    pub oldest_lsn: Gauge<i64, AtomicI64>,
    /// `walcast_log_durable_lsn`: highest commit end LSN durable in the log.
    pub durable_lsn: Gauge<i64, AtomicI64>,
    /// `walcast_log_append_seconds`: time per append (write + fdatasync).
    pub append_seconds: Histogram,
    /// `walcast_log_dropped_segments_total`: segments retention dropped although a sink cursor or
    /// a mark still needed them.
    pub dropped_segments: Counter,
}

impl LogMetrics {
    /// Create and register every `walcast_log_*` metric.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let log = Self {
            bytes: Gauge::default(),
            segments: Gauge::default(),
            oldest_lsn: Gauge::default(),
            durable_lsn: Gauge::default(),
            append_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            dropped_segments: Counter::default(),
        };
        registry.register("log_bytes", "Bytes of the change log's segment files on disk", log.bytes.clone());
        registry.register("log_segments", "Segment files of the change log", log.segments.clone());
        registry.register(
            "log_oldest_lsn",
            "Oldest commit end LSN the change log holds (as a number; 0 while empty)",
            log.oldest_lsn.clone(),
        );
        registry.register("log_durable_lsn", "Highest commit end LSN durable in the change log (as a number)", log.durable_lsn.clone());
        registry.register("log_append_seconds", "Time per change log append (write + fdatasync)", log.append_seconds.clone());
        registry.register(
            "log_dropped_segments",
            "Segments retention dropped although a sink cursor or a mark still needed them",
            log.dropped_segments.clone(),
        );
        log
    }
}
