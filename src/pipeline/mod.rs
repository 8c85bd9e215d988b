//! `walcast run`: the HA lease, then slot preparation, the sinks, the snapshot, and the streaming
//! loop (source -> decode -> sinks -> checkpoint, with reconnects and a clean drain on shutdown).

mod ack;
mod follow;
mod session;
mod slot;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::session::SlotSessions;
use self::slot::{prepare_slot, SlotStart, SnapshotToLoad};
use self::stream::Streamer;
use crate::config::{Config, ConfigError};
use crate::lsn::Lsn;
use crate::metrics::{self, Metrics};
use crate::retry::Backoff;
use crate::sink::fanout::Sinks;
use crate::sink::SinkError;
use crate::snapshot::{self, SnapshotError};
use crate::source::{self, Catalog, ConnParams, SourceError};

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres: a setup problem, or a failure that is not retryable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The metrics endpoint cannot listen.
    #[error("cannot serve metrics on {addr}: {reason}\n  fix: set metrics.listen to a free address, or metrics.enabled = false")]
    MetricsListen {
        /// The configured address.
        addr: String,
        /// Why binding failed.
        reason: String,
    },
}

impl From<SnapshotError> for PipelineError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Config(e) => PipelineError::Config(e),
            SnapshotError::Source(e) => PipelineError::Source(e),
            SnapshotError::Sink(e) => PipelineError::Sink(e),
            // walcast's own state, not a sink: a setup problem (exit 3), like the slot history
            // kept beside it.
            SnapshotError::State { source } => PipelineError::Source(SourceError::setup(
                format!("cannot save snapshot progress: {source}"),
                "make snapshot.state_dir a writable directory (a persistent volume in containers)",
            )),
        }
    }
}

/// What a clean run ended with.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    /// The last LSN confirmed to the slot.
    pub confirmed: Lsn,
}

/// Run until `shutdown` is cancelled (then drain and return) or a permanent error.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<RunSummary, PipelineError> {
    config.read_secrets()?;
    let params = ConnParams::from_config(&config.source)?;
    let metrics = Metrics::new();

    // Background tasks (metrics endpoint, slot monitor, heartbeat) live until this returns, so the
    // endpoint still answers while the sinks drain.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    if config.metrics.enabled {
        let addr = config
            .metrics
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid { field: "metrics.listen".into(), reason: "must be an address with a port".into() })?;
        let listener = metrics::bind(addr)
            .await
            .map_err(|e| PipelineError::MetricsListen { addr: config.metrics.listen.clone(), reason: e.to_string() })?;
        let (m, token) = (Arc::clone(&metrics), background.clone());
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(listener, m, token).await {
                tracing::error!(%error, "metrics endpoint failed");
            }
        });
    }
    tokio::spawn(source::monitor_slot(
        params.clone(),
        config.source.slot.clone(),
        Duration::from_millis(config.metrics.slot_poll_ms),
        Arc::clone(&metrics),
        background.clone(),
    ));

    // High availability (README "Operations: high availability"). Without [ha], stream at once.
    // With it, take the lease first (a standby holds no replication connection and writes no
    // heartbeat) and stream only while holding it; losing the lease stops streaming like a
    // shutdown (what the sinks made durable is confirmed, nothing more) and goes back to
    // standby, since another process may hold the lease by then.
    if !config.ha.enabled {
        return stream_slot(config, &params, &metrics, &background, &shutdown).await;
    }
    let poll = Duration::from_millis(config.ha.poll_ms);
    loop {
        let Some(lease) = source::Lease::acquire(&params, &config.source.slot, poll, &shutdown).await? else {
            return Ok(RunSummary { confirmed: Lsn::ZERO });
        };
        metrics.ha_active.set(1);
        let active = shutdown.child_token();
        let watch = async {
            if lease.watch(poll, params.connect_timeout, &active).await == source::LeaseEnd::Lost {
                active.cancel();
            }
            // Keep the lease until the stream below has drained and stopped.
            std::future::pending::<std::convert::Infallible>().await
        };
        let result = tokio::select! {
            r = stream_slot(config, &params, &metrics, &background, &active) => r,
            never = watch => match never {},
        };
        drop(lease); // closes the session: Postgres releases the lock
        metrics.ha_active.set(0);
        if shutdown.is_cancelled() || result.is_err() {
            return result;
        }
        tracing::warn!("lease lost: streaming stopped, back to standby");
    }
}

/// Stream the slot until `shutdown` (drain, confirm, return) or a permanent error: sinks, slot,
/// snapshot, stream. The heartbeat runs while this does.
async fn stream_slot(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    background: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<RunSummary, PipelineError> {
    let heartbeat_stop = background.child_token();
    let _stop_heartbeat = heartbeat_stop.clone().drop_guard();
    if config.heartbeat.interval_ms > 0 {
        tokio::spawn(source::heartbeat(params.clone(), config.heartbeat.clone(), heartbeat_stop));
    }
    let mut backoff = Backoff::new(&config.retry);

    // Sinks first: a sink that cannot open (a secret missing, a read-only path, a damaged change
    // log) must fail before any slot or state exists, or the slot would hold WAL for a process
    // that never runs. `run` also ends when a follower of decoupled mode fails.
    let run = shutdown.child_token();
    let mut wiring = ack::start(config, params, metrics, &run).await?;
    let Some(SlotStart { lsn: start, snapshot, published }) = prepare_slot(config, params, &mut backoff, shutdown).await? else {
        return Ok(RunSummary { confirmed: Lsn::ZERO });
    };
    wiring.slot_start(start);
    if let Some(snap) = snapshot {
        let sinks = wiring.snapshot_sinks();
        if load_snapshot(config, params, snap, start, sinks, &mut backoff, metrics, shutdown).await? == snapshot::Outcome::Interrupted {
            return Ok(RunSummary { confirmed: start });
        }
        wiring.snapshot_loaded(start).await?;
    }

    let (sinks, beside) = wiring.into_stream(start, config.pipeline.batch_max_changes, metrics, &run);
    let sessions = SlotSessions::new(config, params.clone());
    let catalog = Catalog::new(params.clone());
    let mut stream = Streamer::new(&config.pipeline, sessions, catalog, sinks, start, published, Arc::clone(metrics), backoff)
        .with_messages(config.carries_messages());
    let result = stream.run(&run).await;
    let failure = beside.finish(Duration::from_millis(config.pipeline.shutdown_timeout_ms)).await;
    match (result, failure) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(summary), None) => Ok(summary),
    }
}

/// Existing rows first, then the stream from the slot's consistent point. Interrupted (by
/// shutdown): progress is saved, the next start resumes.
#[allow(clippy::too_many_arguments)]
async fn load_snapshot(
    config: &Config,
    params: &ConnParams,
    mut snap: SnapshotToLoad,
    point: Lsn,
    sinks: &mut Sinks,
    backoff: &mut Backoff,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<snapshot::Outcome, PipelineError> {
    // Snapshotting is not "not streaming": alerts and /readyz tell the two apart.
    metrics.snapshotting.set(1);
    let _snapshotting = SnapshottingFlag(&metrics.snapshotting);
    let in_flight = Arc::clone(&sinks.in_flight);
    let on_dispatch = || in_flight.add();
    let outcome = loop {
        let handles = snapshot::SinkHandles { queues: &sinks.queues, reports: &mut sinks.reports, on_dispatch: &on_dispatch };
        let exported = snap.exported.as_ref().map(|e| e.name.as_str());
        let plan = snapshot::LoadPlan { tables: &snap.tables, point, exported, state: Some(&mut snap.state) };
        match snapshot::load(config, params, plan, handles, metrics, shutdown).await {
            Ok(outcome) => break outcome,
            // Postgres went away: resume from the last recorded chunk in a fresh snapshot (the
            // exported one died with its session).
            Err(e) if e.is_retryable() => {
                snap.exported = None;
                if !backoff.wait(shutdown, "snapshot interrupted by an error", &e).await {
                    return Ok(snapshot::Outcome::Interrupted);
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    backoff.reset();
    // Ends the exporting session; the snapshot is no longer needed.
    drop(snap.exported);
    Ok(outcome)
}

/// Clears `walcast_snapshotting` however the load ends (done, interrupted or failed).
struct SnapshottingFlag<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for SnapshottingFlag<'_> {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_progress_file_failure_stops_the_run_as_a_setup_problem() {
        let e: PipelineError = SnapshotError::State { source: std::io::Error::other("read-only file system") }.into();
        assert!(!e.is_retryable());
        match &e {
            PipelineError::Source(SourceError::Setup { problem, fix }) => {
                assert_eq!(problem, "cannot save snapshot progress: read-only file system");
                assert!(fix.contains("snapshot.state_dir"), "{fix}");
            }
            other => panic!("{other:?}"),
        }
        let source = SnapshotError::Source(SourceError::Transient("restarting".into()));
        assert!(source.is_retryable(), "a snapshot interrupted by Postgres resumes");
        assert!(PipelineError::from(source).is_retryable());
    }
}
