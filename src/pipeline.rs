//! The streaming loop: source -> decode -> sinks -> checkpoint, with reconnects and a clean drain
//! on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::config::{Config, ConfigError, SnapshotMode};
use crate::decode::{self, Change, DecodeError, Message, Op, RelationCache, ReplicaIdentity, TruncateOptions};
use crate::lsn::Lsn;
use crate::metrics::{self, Metrics, SinkLabel, TableOp};
use crate::retry::Backoff;
use crate::sink::{self, Batch, JsonlSink, Sink, SinkError, SinkReport};
use crate::snapshot::{SnapshotState, Status as SnapshotStatus};
use crate::source::{self, connect_sql, ConnParams, ReplicationStream, SourceError, SourceEvent, StreamSettings, TypeRules};

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

impl PipelineError {
    /// Errors that reach the caller were already retried where retrying made sense.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Config(e) => e.is_retryable(),
            PipelineError::Source(e) => e.is_retryable(),
            PipelineError::Sink(e) => e.is_retryable(),
            PipelineError::MetricsListen { .. } => false,
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

    // ---- High availability (issue 5; src/source/lease.rs, README "Operations: high availability").
    // Without [ha], stream at once. With it, take the lease first (a standby holds no replication
    // connection and writes no heartbeat) and stream only while holding it; losing the lease
    // stops streaming like a shutdown (what the sinks made durable is confirmed, nothing more)
    // and goes back to standby, since another process may hold the lease by then.
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
    // ---- end of high availability
}

/// Stream the slot until `shutdown` (drain, confirm, return) or a permanent error. The heartbeat
/// runs while this does.
async fn stream_slot(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    background: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<RunSummary, PipelineError> {
    let (params, metrics, shutdown) = (params.clone(), Arc::clone(metrics), shutdown.clone());
    let heartbeat_stop = background.child_token();
    let _stop_heartbeat = heartbeat_stop.clone().drop_guard();
    if config.heartbeat.interval_ms > 0 {
        tokio::spawn(source::heartbeat(params.clone(), config.heartbeat.clone(), heartbeat_stop));
    }
    let mut backoff = Backoff::new(&config.retry);

    // Sinks first: a sink that cannot open (a secret missing, a read-only path) must fail before
    // any slot or state exists, or the slot would hold WAL for a process that never runs.
    let Sinks { queues, mut reports, tasks, in_flight, names: sink_names } = start_sinks(config, &params, &metrics, false, &shutdown)?;
    let Some(start) = prepare_slot(config, &params, &mut backoff, &shutdown).await? else {
        return Ok(RunSummary { confirmed: Lsn::ZERO });
    };

    // ---- Snapshot (issue 3; src/snapshot.rs): existing rows first, then the stream from the
    // slot's consistent point. Interrupted: progress is saved, the next start resumes.
    if let Some(mut snap) = start.snapshot {
        let on_dispatch = || in_flight.add();
        let outcome = loop {
            let handles = crate::snapshot::SinkHandles { queues: &queues, reports: &mut reports, on_dispatch: &on_dispatch };
            let exported = snap.exported.as_ref().map(|e| e.name.as_str());
            let plan = crate::snapshot::LoadPlan { tables: &snap.tables, point: start.lsn, exported, state: Some(&mut snap.state) };
            match crate::snapshot::load(config, &params, plan, handles, &metrics, &shutdown).await {
                Ok(outcome) => break outcome,
                // Postgres went away: resume from the last recorded chunk in a fresh snapshot
                // (the exported one died with its session).
                Err(e) if e.is_retryable() => {
                    snap.exported = None;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "snapshot interrupted by an error, resuming");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(RunSummary { confirmed: start.lsn }),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        backoff.reset();
        // Ends the exporting session; the snapshot is no longer needed.
        drop(snap.exported);
        if outcome == crate::snapshot::Outcome::Interrupted {
            return Ok(RunSummary { confirmed: start.lsn });
        }
    }
    let (start, published) = (start.lsn, start.published);
    let mut sink_gauges = Vec::with_capacity(sink_names.len());
    for name in &sink_names {
        let label = SinkLabel { sink: name.to_string() };
        let durable = metrics.sink_durable_lsn.get_or_create(&label).clone();
        durable.set(start.0 as i64);
        sink_gauges.push(SinkGauges { durable, lag: metrics.lag.sink(name) });
        // A counter that exists at 0 lets increase() see the first dead letter (alerts.yml).
        metrics.dead_letters.get_or_create(&label).inc_by(0);
    }
    metrics.confirmed_lsn.set(start.0 as i64);

    let mut stream = Streamer {
        config,
        params,
        checkpoint: Checkpoint::new(queues.len(), start),
        queues,
        reports,
        tasks,
        in_flight,
        relations: RelationCache::new(),
        tx: None,
        batch: Batch::default(),
        committed_len: 0,
        backoff,
        catalog: None,
        type_rules: TypeRules::new(),
        metrics,
        sink_gauges,
        batch_oldest_ts: None,
        change_counters: HashMap::new(),
        published,
    };
    stream.run(&shutdown).await
}

/// Where streaming starts, and the snapshot to load before it.
struct SlotStart {
    /// The slot's confirmed position (its consistent point when just created).
    lsn: Lsn,
    snapshot: Option<PendingSnapshot>,
    /// What the publication published when streaming started.
    published: source::Published,
}

/// A snapshot to load before streaming.
struct PendingSnapshot {
    /// The exported snapshot of a slot just created; `None` when resuming an interrupted load.
    exported: Option<source::ExportedSnapshot>,
    state: SnapshotState,
    tables: Vec<crate::snapshot::TableRef>,
}

fn state_error(e: std::io::Error, config: &Config) -> SourceError {
    SourceError::setup(
        format!("cannot use the snapshot progress file in {}: {e}", config.snapshot.state_dir.display()),
        "make snapshot.state_dir a writable directory (a persistent volume in containers)",
    )
}

/// Refuse, before any slot exists, document rules `walcast check` already knows will fail (a
/// dependent whose `root_id_column` a DELETE does not carry, a query that does not prepare):
/// otherwise the first such change stops the sink, or is set aside, at the same LSN on every
/// restart.
async fn document_rules_ready(config: &Config, client: &tokio_postgres::Client) -> Result<(), SourceError> {
    let Some(es) = config.sinks.elasticsearch.as_ref().filter(|es| !es.documents.is_empty()) else { return Ok(()) };
    let failed: Vec<_> = crate::sink::elasticsearch::document_findings(&es.documents, client)
        .await
        .into_iter()
        .filter(|f| f.severity == source::Severity::Failure)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let problem = failed.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ");
    let fix = failed.iter().filter_map(|f| f.fix.as_deref()).collect::<Vec<_>>().join("; ");
    Err(SourceError::setup(problem, format!("{fix} (`walcast check` lists every finding)")))
}

/// Make sure the publication and slot exist; returns where to start (and the snapshot to load
/// first), or `None` when shutdown was requested while waiting for the server.
async fn prepare_slot(
    config: &Config,
    params: &ConnParams,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Option<SlotStart>, PipelineError> {
    let src = &config.source;
    let snapshots = config.snapshot.mode == SnapshotMode::Initial;
    let dir = &config.snapshot.state_dir;
    let save = |state: &SnapshotState| {
        let saving = state.save();
        async move { saving.await.map_err(|e| state_error(e, config)) }
    };
    loop {
        let attempt = async {
            let client = connect_sql(params).await?;
            document_rules_ready(config, &client).await?;
            let query_error = |e: tokio_postgres::Error| source::classify(&e, params);
            let slot = source::slot_info(&client, &src.slot).await.map_err(query_error)?;
            let state = SnapshotState::load(dir, &src.slot).map_err(|e| state_error(e, config))?;
            // Re-creating a dropped publication cannot help a slot that streamed with the old
            // one: check before `ensure_publication` would create it again.
            if let (Some(_), Some(state)) = (&slot, &state) {
                let now = source::publication_oid(&client, &src.publication).await.map_err(query_error)?;
                if let Some((problem, fix)) = state.replaced_publication(&src.publication, now) {
                    return Err(SourceError::setup(problem, fix));
                }
            }
            source::ensure_publication(&client, params, &src.publication, &src.table_selectors(), src.create_publication).await?;
            // Stream exactly the configured tables, or refuse (as `check` does).
            let published =
                source::published_tables(&client, &src.publication, &src.table_selectors()).await.map_err(query_error)?.unwrap_or_default();
            if let Some((problem, fix)) = published.mismatch(&src.publication) {
                return Err(SourceError::setup(problem, fix));
            }
            let publication_oid = published.oid;
            // The tables a load reads: every mapped one for a snapshot or a re-sync, none otherwise.
            let tables_for = |resync: bool| {
                let client = &client;
                async move {
                    if snapshots || resync {
                        crate::snapshot::tables_to_load(config, client).await
                    } else {
                        Ok(Vec::new())
                    }
                }
            };
            match slot {
                Some(s) => {
                    // Never stream (or later advance) a slot that is not a live logical slot of ours.
                    if let Some((problem, fix)) = s.problem(&src.database) {
                        return Err(SourceError::setup(problem, fix));
                    }
                    let lsn = s.confirmed_flush_lsn.ok_or_else(|| {
                        SourceError::setup(
                            format!("slot {:?} has no confirmed_flush_lsn", src.slot),
                            "the slot is not usable: check pg_replication_slots",
                        )
                    })?;
                    let snapshot = match state {
                        // Created by walcast, not (fully) loaded: resume. A slot found while
                        // still "creating" was never read, so its confirmed position is its
                        // consistent point.
                        Some(mut state) if state.status != SnapshotStatus::Done => {
                            state.publication_oid = state.publication_oid.or(publication_oid);
                            let point = state.point().unwrap_or(lsn);
                            let tables = tables_for(state.resync).await?;
                            state.status = if tables.is_empty() { SnapshotStatus::Done } else { SnapshotStatus::Loading };
                            state.point = Some(point.to_string());
                            save(&state).await?;
                            if tables.is_empty() {
                                None
                            } else {
                                tracing::info!(slot = %src.slot, %point, resync = state.resync, "resuming the interrupted snapshot");
                                Some(PendingSnapshot { exported: None, state, tables })
                            }
                        }
                        // A file of an older walcast: learn the publication now.
                        Some(mut state) if state.publication_oid.is_none() => {
                            state.publication_oid = publication_oid;
                            save(&state).await?;
                            None
                        }
                        Some(_) => None,
                        // First start on a slot made by `walcast slot create` or by hand: record
                        // that it exists, so losing it later is noticed.
                        None => {
                            let mut state = SnapshotState::new(dir, &src.slot, SnapshotStatus::Done);
                            state.point = Some(lsn.to_string());
                            state.publication_oid = publication_oid;
                            save(&state).await?;
                            None
                        }
                    };
                    Ok::<SlotStart, SourceError>(SlotStart { lsn, snapshot, published })
                }
                None => {
                    // The slot existed and is gone: creating it anew would skip every change in
                    // between (deletes never reach the sinks). Only a re-sync can repair that.
                    if let Some((problem, fix)) = state.as_ref().and_then(SnapshotState::gone_slot) {
                        return Err(SourceError::setup(problem, fix));
                    }
                    let resync = state.as_ref().is_some_and(|s| s.resync);
                    if !src.create_slot && !resync {
                        return Err(SourceError::setup(
                            format!("replication slot {:?} does not exist", src.slot),
                            "create it with `walcast slot create --config FILE`, or set source.create_slot = true",
                        ));
                    }
                    let tables = tables_for(resync).await?;
                    // Recorded before the slot exists: a crash between the two must not leave
                    // a slot whose snapshot nobody loads (or whose history nobody knows).
                    let mut state = SnapshotState::new(dir, &src.slot, SnapshotStatus::Creating);
                    state.resync = resync;
                    state.publication_oid = publication_oid;
                    save(&state).await?;
                    if tables.is_empty() {
                        let lsn = source::create_slot(&client, params, &src.slot).await?;
                        state.status = SnapshotStatus::Done;
                        state.point = Some(lsn.to_string());
                        save(&state).await?;
                        tracing::info!(slot = %src.slot, consistent_point = %lsn, "created replication slot");
                        return Ok(SlotStart { lsn, snapshot: None, published });
                    }
                    let exported = source::create_slot_exporting(params, &src.slot, &src.publication, false).await?;
                    state.status = SnapshotStatus::Loading;
                    state.point = Some(exported.point.to_string());
                    save(&state).await?;
                    tracing::info!(slot = %src.slot, consistent_point = %exported.point, tables = tables.len(), resync, "created replication slot with an exported snapshot");
                    Ok(SlotStart {
                        lsn: exported.point,
                        snapshot: Some(PendingSnapshot { exported: Some(exported), state, tables }),
                        published,
                    })
                }
            }
        };
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            r = attempt => r,
        };
        match result {
            Ok(start) => {
                backoff.reset();
                return Ok(Some(start));
            }
            Err(e) if e.is_retryable() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "cannot prepare the slot, retrying");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The running sink tasks.
struct Sinks {
    queues: Vec<mpsc::Sender<Arc<Batch>>>,
    reports: mpsc::UnboundedReceiver<SinkReport>,
    tasks: JoinSet<()>,
    in_flight: Arc<InFlight>,
    names: Vec<&'static str>,
}

/// Open every configured sink (only Elasticsearch with `elasticsearch_only`) and start a task
/// driving each behind a bounded queue.
fn start_sinks(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    elasticsearch_only: bool,
    shutdown: &CancellationToken,
) -> Result<Sinks, PipelineError> {
    let (report_tx, reports) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let mut queues = Vec::new();
    let in_flight = Arc::new(InFlight::default());
    let mut names = Vec::new();
    if let (Some(j), false) = (&config.sinks.jsonl, elasticsearch_only) {
        let sink = JsonlSink::open(&j.path)?;
        names.push(sink.name());
        queues.push(spawn_sink(sink, queues.len(), config, &report_tx, &in_flight, metrics, &mut tasks, shutdown));
    }
    if let (Some(k), false) = (&config.sinks.kafka, elasticsearch_only) {
        let mut sink = crate::sink::KafkaSink::open(k, &config.source.database)?;
        sink.count_dead_letters_in(metrics.dead_letters.get_or_create(&SinkLabel { sink: sink.name().to_string() }).clone());
        names.push(sink.name());
        queues.push(spawn_sink(sink, queues.len(), config, &report_tx, &in_flight, metrics, &mut tasks, shutdown));
    }
    if let Some(es) = &config.sinks.elasticsearch {
        let sink = crate::sink::ElasticsearchSink::open(es, &config.retry, Arc::clone(metrics))?
            .with_source(params.clone())
            .with_shutdown(shutdown.clone());
        names.push(sink.name());
        queues.push(spawn_sink(sink, queues.len(), config, &report_tx, &in_flight, metrics, &mut tasks, shutdown));
    }
    Ok(Sinks { queues, reports, tasks, in_flight, names })
}

/// What `walcast snapshot` loads.
#[derive(Debug, Clone)]
pub enum SnapshotTarget {
    /// One table (`schema.table`), to every sink.
    Table(String),
    /// One document rule (by name): its root table, to the Elasticsearch sink.
    Rule(String),
}

/// `walcast snapshot`: load one table or document rule now, while streaming may go on in
/// another process. The rows are read in the exported snapshot of a temporary slot and written
/// with its consistent point as their version, so a newer streamed write is never overwritten;
/// then the rows deleted meanwhile are deleted again at a newer point (`snapshot::recheck`).
pub async fn snapshot_on_demand(
    config: &Config,
    target: &SnapshotTarget,
    shutdown: CancellationToken,
) -> Result<crate::snapshot::Outcome, PipelineError> {
    let params = ConnParams::from_config(&config.source)?;
    let metrics = Metrics::new();
    let (table, elasticsearch_only) = match target {
        SnapshotTarget::Table(t) => (t.clone(), false),
        SnapshotTarget::Rule(name) => {
            let rule = config.sinks.elasticsearch.iter().flat_map(|es| &es.documents).find(|d| &d.name == name);
            let Some(rule) = rule else {
                return Err(ConfigError::Invalid {
                    field: "--rule".into(),
                    reason: format!("no document rule is named {name:?} in sinks.elasticsearch.documents"),
                }
                .into());
            };
            (rule.table.to_string(), true)
        }
    };
    let Some(table) = crate::snapshot::TableRef::parse(&table) else {
        return Err(ConfigError::Invalid { field: "--table".into(), reason: "must be `schema.table`".into() }.into());
    };
    let Sinks { queues, mut reports, mut tasks, in_flight, .. } = start_sinks(config, &params, &metrics, elasticsearch_only, &shutdown)?;
    // Temporary slots: they disappear with their session, even if this process is killed. The
    // base is cut so that the two names stay distinct within Postgres's 63 bytes.
    let base: String = config.source.slot.chars().take(40).collect();
    let slot = format!("{base}_snapshot_{}", std::process::id());
    let on_dispatch = || in_flight.add();
    let tables = [table];
    let outcome = async {
        let exported = source::create_slot_exporting(&params, &slot, &config.source.publication, true).await?;
        tracing::info!(table = %tables[0], point = %exported.point, "snapshot on demand");
        let handles = crate::snapshot::SinkHandles { queues: &queues, reports: &mut reports, on_dispatch: &on_dispatch };
        let plan = crate::snapshot::LoadPlan { tables: &tables, point: exported.point, exported: Some(&exported.name), state: None };
        if crate::snapshot::load(config, &params, plan, handles, &metrics, &shutdown).await? == crate::snapshot::Outcome::Interrupted {
            return Ok(crate::snapshot::Outcome::Interrupted);
        }
        // The stream may have deleted rows after the load read them; written after its delete,
        // a row would come back on a sink that keeps no tombstone. Recheck in a snapshot taken
        // now that every sink has written the load (src/snapshot/recheck.rs).
        let loaded = crate::snapshot::HeldSnapshot::hold(&params, &exported.name).await?;
        drop(exported);
        let newer = source::create_slot_exporting(&params, &format!("{slot}_2"), &config.source.publication, true).await?;
        let handles = crate::snapshot::SinkHandles { queues: &queues, reports: &mut reports, on_dispatch: &on_dispatch };
        let plan = crate::snapshot::RecheckPlan { tables: &tables, loaded, newer: &newer.name, point: newer.point };
        let outcome = crate::snapshot::recheck(config, &params, plan, handles, &shutdown).await;
        drop(newer);
        outcome
    }
    .await;
    drop(queues);
    while tasks.join_next().await.is_some() {}
    wait_slots_dropped(&params, &[&slot, &format!("{slot}_2")]).await;
    outcome
}

/// Postgres drops a temporary slot when the backend of its session exits, a moment after the
/// connection closed: wait for that (at most 5 s), so that `walcast snapshot` ends with none of
/// its slots left.
async fn wait_slots_dropped(params: &ConnParams, slots: &[&str]) {
    let Ok(client) = connect_sql(params).await else { return };
    for _ in 0..250 {
        let mut left = false;
        for slot in slots {
            match source::slot_info(&client, slot).await {
                Ok(Some(_)) => left = true,
                Ok(None) => {}
                Err(_) => return,
            }
        }
        if !left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(?slots, "temporary slots still exist after 5 s; Postgres drops them when their sessions end");
}

#[allow(clippy::too_many_arguments)]
fn spawn_sink<S: Sink>(
    sink: S,
    index: usize,
    config: &Config,
    reports: &mpsc::UnboundedSender<SinkReport>,
    in_flight: &Arc<InFlight>,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> mpsc::Sender<Arc<Batch>> {
    let (tx, rx) = mpsc::channel(config.pipeline.sink_queue_batches);
    let sink = Tracked { inner: sink, in_flight: Arc::clone(in_flight) };
    tasks.spawn(sink::drive(sink, index, rx, reports.clone(), Backoff::new(&config.retry), Arc::clone(metrics), shutdown.clone()));
    tx
}

/// Batches handed to a sink and not yet written by it (one count per batch and sink).
///
/// While a sink is busy, handing it another small batch does not get that batch out any sooner;
/// it only adds a per-batch cost (a queue hand-off, a write call, an fsync, a report), and under
/// load the stream then turns into a flood of few-change batches whose overhead starves the
/// walsender of CPU. So while a sink writes, the loop reads what is ready into the next batch,
/// then parks until every sink is idle (changes arriving meanwhile wait in the source buffer),
/// reads what accumulated and hands it over: group commit, with no timer involved. A quiet
/// stream finds the sinks idle, so its changes go out at once.
#[derive(Debug, Default)]
struct InFlight {
    batches: AtomicUsize,
    /// Signalled when `batches` drops to zero.
    idle: Notify,
}

impl InFlight {
    /// One more batch handed to one sink (the sink's `Tracked` wrapper takes it off).
    fn add(&self) {
        self.batches.fetch_add(1, Ordering::AcqRel);
    }

    fn is_idle(&self) -> bool {
        self.batches.load(Ordering::Acquire) == 0
    }
}

/// A sink that tells [`InFlight`] when it has written a batch.
struct Tracked<S> {
    inner: S,
    in_flight: Arc<InFlight>,
}

impl<S: Sink> Sink for Tracked<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.inner.prepare().await
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let result = self.inner.write(batch).await;
        // A failed batch is offered again (or the pipeline stops): it stays in flight.
        if result.is_ok() && self.in_flight.batches.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.idle.notify_one();
        }
        result
    }
}

/// Metric handles of one sink.
struct SinkGauges {
    /// `walcast_sink_durable_lsn{sink}`.
    durable: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Oldest commit time the sink still owes (`walcast_sink_lag_seconds{sink}`).
    lag: Arc<std::sync::atomic::AtomicI64>,
}

/// The transaction being read.
#[derive(Debug, Clone, Copy)]
struct OpenTx {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    next_seq: u64,
    /// Some of its changes were already handed to the sinks (it spans batches).
    partly_dispatched: bool,
}

/// How one replication session ended.
enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// The connection failed in a retryable way.
    Lost(SourceError),
}

struct Streamer<'a> {
    config: &'a Config,
    params: ConnParams,
    checkpoint: Checkpoint,
    queues: Vec<mpsc::Sender<Arc<Batch>>>,
    reports: mpsc::UnboundedReceiver<SinkReport>,
    tasks: JoinSet<()>,
    in_flight: Arc<InFlight>,
    relations: RelationCache,
    tx: Option<OpenTx>,
    batch: Batch,
    /// Changes of `batch` that belong to committed transactions.
    committed_len: usize,
    backoff: Backoff,
    /// SQL connection for catalog lookups, opened on first use.
    catalog: Option<tokio_postgres::Client>,
    /// User-defined column types seen on this replication connection.
    type_rules: TypeRules,
    metrics: Arc<Metrics>,
    /// Per-sink metric handles, by sink index (looked up once, not per batch).
    sink_gauges: Vec<SinkGauges>,
    /// Commit time of the oldest change (or commit) in `batch`, for lag in seconds.
    batch_oldest_ts: Option<i64>,
    /// `walcast_changes_total` handles per (relation, op), so counting costs no label allocation.
    change_counters: HashMap<(u32, Op), prometheus_client::metrics::counter::Counter>,
    /// The publication's tables at start: a table that joins later is streamed from then on,
    /// without the rows it had before, which the log says.
    published: source::Published,
}

impl Streamer<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary, PipelineError> {
        let mut stream: Option<ReplicationStream> = None;
        let result = loop {
            let session = match stream.as_mut() {
                Some(s) => self.session(s, shutdown).await,
                None => match self.connect(shutdown).await {
                    Ok(Some(s)) => {
                        stream = Some(s);
                        continue;
                    }
                    Ok(None) => Ok(SessionEnd::Shutdown),
                    Err(e) => Err(e),
                },
            };
            match session {
                Ok(SessionEnd::Shutdown) => break Ok(()),
                Ok(SessionEnd::Lost(error)) => {
                    self.metrics.streaming.set(0);
                    self.metrics.reconnects.inc();
                    // The server resends every transaction after the confirmed LSN, so the
                    // unfinished one is dropped here and read again in full.
                    self.batch.changes.truncate(self.committed_len);
                    self.tx = None;
                    self.relations.clear();
                    self.type_rules = TypeRules::new();
                    let flushed = tokio::select! {
                        biased;
                        r = self.flush() => r,
                        _ = shutdown.cancelled() => break Ok(()),
                    };
                    if let Err(e) = flushed {
                        break Err(e);
                    }
                    if let Some(s) = stream.take() {
                        drop(s);
                    }
                    let delay = self.backoff.next_delay();
                    tracing::warn!(%error, attempt = self.backoff.attempt(), delay_ms = delay.as_millis() as u64, "replication connection lost, reconnecting");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let drained = self.drain(stream).await;
        let result = match result {
            Err(PipelineError::Source(e)) => Err(self.explain_slot_failure(e).await.into()),
            other => other,
        };
        result.and(drained)?;
        Ok(RunSummary { confirmed: self.checkpoint.confirmed() })
    }

    /// A replication error that is not retryable may mean the slot was dropped or invalidated
    /// while streaming: then say so, with the way back, instead of the server's bare message.
    async fn explain_slot_failure(&self, error: SourceError) -> SourceError {
        let src = &self.config.source;
        let Ok(client) = connect_sql(&self.params).await else { return error };
        match source::slot_info(&client, &src.slot).await {
            Ok(None) => {
                let state = SnapshotState::load(&self.config.snapshot.state_dir, &src.slot).ok().flatten();
                match state.as_ref().and_then(SnapshotState::gone_slot) {
                    Some((problem, fix)) => SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix),
                    None => error,
                }
            }
            Ok(Some(slot)) => {
                if let Some((problem, fix)) = slot.problem(&src.database) {
                    return SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix);
                }
                let state = SnapshotState::load(&self.config.snapshot.state_dir, &src.slot).ok().flatten();
                let Ok(now) = source::publication_oid(&client, &src.publication).await else { return error };
                match state.as_ref().and_then(|s| s.replaced_publication(&src.publication, now)) {
                    Some((problem, fix)) => SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix),
                    None => error,
                }
            }
            Err(_) => error,
        }
    }

    /// Open a replication session, retrying retryable failures. `None` on shutdown.
    async fn connect(&mut self, shutdown: &CancellationToken) -> Result<Option<ReplicationStream>, PipelineError> {
        let src = &self.config.source;
        loop {
            let settings = StreamSettings {
                slot: src.slot.clone(),
                publication: src.publication.clone(),
                start: self.checkpoint.confirmed(),
                status_interval: src.status_interval(),
                buffer_events: self.config.pipeline.source_buffer_events,
            };
            let attempt = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(None),
                r = ReplicationStream::start(&self.params, &settings) => r,
            };
            match attempt {
                Ok(s) => {
                    self.backoff.reset();
                    self.metrics.streaming.set(1);
                    tracing::info!(slot = %src.slot, publication = %src.publication, start = %settings.start, "streaming");
                    return Ok(Some(s));
                }
                Err(e) if e.is_retryable() => {
                    self.metrics.reconnects.inc();
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, attempt = self.backoff.attempt(), delay_ms = delay.as_millis() as u64, "cannot start replication, retrying");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stream until shutdown or a lost connection.
    async fn session(&mut self, stream: &mut ReplicationStream, shutdown: &CancellationToken) -> Result<SessionEnd, PipelineError> {
        let max = self.config.pipeline.batch_max_changes;
        // Set when shutdown comes while the sinks already hold the first part of the open
        // transaction: reading goes on until its commit (or this deadline), so a clean stop
        // leaves no partial transaction behind that a restart would send again.
        let mut finish_by: Option<tokio::time::Instant> = None;
        // A sink is writing, the next batch holds what was ready to read, and nothing more was:
        // sleep until the sink is done instead of waking for every change that trickles in.
        let mut parked = false;
        loop {
            let sinks_idle = self.in_flight.is_idle();
            parked &= !sinks_idle;
            let room = self.batch.changes.len() < max;
            tokio::select! {
                biased;
                // 1. Shutdown: stop reading; drain() writes out what was read.
                _ = shutdown.cancelled(), if finish_by.is_none() => {
                    if !self.tx.is_some_and(|tx| tx.partly_dispatched) {
                        return Ok(SessionEnd::Shutdown);
                    }
                    tracing::info!("shutdown: finishing the transaction being written first");
                    finish_by = Some(tokio::time::Instant::now() + Duration::from_millis(self.config.pipeline.shutdown_timeout_ms));
                }
                _ = tokio::time::sleep_until(finish_by.unwrap_or_else(tokio::time::Instant::now)), if finish_by.is_some() => {
                    tracing::warn!("the open transaction did not finish before the shutdown timeout; its changes will be sent again on restart");
                    return Ok(SessionEnd::Shutdown);
                }
                // 2. Sink reports: durable positions move the confirmed LSN; a failed sink stops all.
                Some(report) = self.reports.recv() => self.on_report(report, Some(stream))?,
                // 3. The replication stream, while the batch has room (and not parked).
                event = stream.recv(), if room && !parked => match event {
                    Ok(Some(event)) => {
                        match self.on_event(event, stream).await {
                            Ok(()) => {}
                            // A catalog lookup (primary key, types) that may work on a new
                            // connection: read the transaction again on a new session.
                            Err(PipelineError::Source(e)) if e.is_retryable() => return Ok(SessionEnd::Lost(e)),
                            Err(e) => return Err(e),
                        }
                        if finish_by.is_some() && self.tx.is_none() {
                            return Ok(SessionEnd::Shutdown);
                        }
                    }
                    Ok(None) => return Ok(SessionEnd::Lost(SourceError::Connection {
                        target: self.params.display(),
                        reason: "the server ended the replication stream".into(),
                    })),
                    Err(e) if e.is_retryable() => return Ok(SessionEnd::Lost(e)),
                    Err(e) => return Err(e.into()),
                },
                // 4. Nothing more is ready to read (or the batch is full) and every sink is idle:
                //    hand the batch over now rather than wait for a timer, so a quiet stream has
                //    no batching delay. A full batch is handed over regardless (backpressure).
                _ = std::future::ready(()), if self.has_batch() && (sinks_idle || !room) => {
                    parked = false;
                    // A stuck sink keeps its queue full: the hand-over must not outlast shutdown
                    // (what was not handed to every sink is not confirmed, and is sent again).
                    let stop_at = finish_by;
                    let flushed = tokio::select! {
                        biased;
                        r = self.flush() => Some(r),
                        _ = shutdown.cancelled(), if stop_at.is_none() => None,
                        _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => None,
                    };
                    match flushed {
                        Some(r) => r?,
                        None => {
                            tracing::warn!("shutdown while a sink queue was full; what was not handed over will be sent again on restart");
                            return Ok(SessionEnd::Shutdown);
                        }
                    }
                }
                // 5. Nothing more is ready but a sink is still writing: park (see `InFlight`).
                //    What arrives meanwhile waits in the source buffer and joins this batch.
                _ = std::future::ready(()), if self.has_batch() && !parked => parked = true,
                // 6. The sinks finished: read what accumulated, then hand it over (3, 4).
                _ = self.in_flight.idle.notified(), if parked => parked = false,
            }
        }
    }

    fn has_batch(&self) -> bool {
        !self.batch.changes.is_empty() || self.batch.checkpoint.is_some()
    }

    async fn on_event(&mut self, event: SourceEvent, stream: &ReplicationStream) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Begin(b) => {
                self.tx =
                    Some(OpenTx { xid: b.xid, commit_lsn: b.final_lsn, commit_ts: b.commit_ts, next_seq: 0, partly_dispatched: false });
            }
            SourceEvent::Data { wal_start, payload } => {
                let mut message = decode::parse(&payload).map_err(SourceError::from)?;
                if let Message::Relation(body) = &mut message {
                    if body.replica_identity == ReplicaIdentity::Full {
                        self.key_by_primary_key(body).await?;
                    }
                    if TypeRules::needed(&body.columns) {
                        self.resolve_types(body).await?;
                    }
                }
                self.on_message(message, wal_start)?;
            }
            SourceEvent::Commit(c) => {
                self.batch_oldest_ts.get_or_insert(c.commit_ts);
                self.tx = None;
                self.batch.checkpoint = Some(c.end_lsn);
                self.committed_len = self.batch.changes.len();
            }
            SourceEvent::Message(m) => {
                tracing::debug!(prefix = %m.prefix, lsn = %m.lsn, transactional = m.transactional, "logical message");
            }
            SourceEvent::KeepAlive { wal_end } => {
                if (wal_end.0 as i64) > self.metrics.server_wal_lsn.get() {
                    self.metrics.server_wal_lsn.set(wal_end.0 as i64);
                }
                if let Some(lsn) = self.checkpoint.on_idle(wal_end, self.tx.is_some(), self.has_batch()) {
                    tracing::debug!(confirmed = %lsn, "idle: confirming server position");
                    self.confirm(Some(stream), lsn);
                }
            }
        }
        Ok(())
    }

    /// With REPLICA IDENTITY FULL, Postgres flags every column as key, which would make each
    /// version of a row a different key (and break per-key ordering downstream). Flag the
    /// table's primary key instead, looked up once per Relation message. Without a primary key
    /// the flags stay as sent. A lookup that fails is a lost connection, never "no primary key":
    /// keying by every column would silently change Kafka keys and Elasticsearch ids, so the
    /// session is ended and the server sends the Relation message again on reconnect.
    async fn key_by_primary_key(&mut self, body: &mut decode::RelationBody) -> Result<(), SourceError> {
        if self.catalog.as_ref().is_none_or(|c| c.is_closed()) {
            self.catalog = None;
            let client = connect_sql(&self.params).await.map_err(|error| SourceError::Connection {
                target: self.params.display(),
                reason: format!("cannot look up the primary key of {}.{}: {error}", body.namespace, body.name),
            })?;
            self.catalog = Some(client);
        }
        let Some(client) = &self.catalog else { return Ok(()) };
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::oid AND i.indisprimary",
                &[&body.oid],
            )
            .await;
        match rows {
            Ok(rows) => {
                if !rows.is_empty() {
                    let pk: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    for col in &mut body.columns {
                        col.key = pk.contains(&col.name);
                    }
                }
                Ok(())
            }
            Err(error) => {
                // Whatever broke, the next lookup starts from a new connection.
                self.catalog = None;
                Err(SourceError::Connection {
                    target: self.params.display(),
                    reason: format!("cannot look up the primary key of {}.{}: {error}", body.namespace, body.name),
                })
            }
        }
    }

    /// Columns of user-defined types take a built-in type's value rule (`TypeRules`). A failed
    /// lookup ends the session (a retryable one reconnects and looks up again): guessing would
    /// write such values in another shape.
    async fn resolve_types(&mut self, body: &mut decode::RelationBody) -> Result<(), SourceError> {
        if self.catalog.as_ref().is_none_or(|c| c.is_closed()) {
            self.catalog = Some(connect_sql(&self.params).await?);
        }
        let Some(client) = &self.catalog else { return Ok(()) };
        self.type_rules.resolve(client, &mut body.columns).await.map_err(|e| source::classify(&e, &self.params))
    }

    fn on_message(&mut self, message: Message, lsn: Lsn) -> Result<(), PipelineError> {
        let (relation, op, old, new) = match message {
            Message::Relation(body) => {
                // A renamed table must count under its new name.
                self.change_counters.retain(|(oid, _), _| *oid != body.oid);
                if !self.published.all_tables && self.published.oids.insert(body.oid) {
                    tracing::warn!(
                        schema = %body.namespace,
                        table = %body.name,
                        fix = "if it had rows before, load them with `walcast snapshot --config FILE --table SCHEMA.TABLE`",
                        "a table joined the publication while walcast streamed: its changes are streamed from now on, the rows it had before are not in the sinks"
                    );
                }
                let rel = self.relations.apply_relation(body);
                tracing::debug!(relation = %rel.qualified_name(), columns = rel.columns.len(), "relation described");
                return Ok(());
            }
            Message::Type(body) => {
                self.relations.apply_type(body);
                return Ok(());
            }
            Message::Insert { relation, new } => (relation, Op::Insert, None, Some(new)),
            Message::Update { relation, old, new } => (relation, Op::Update, old, Some(new)),
            Message::Delete { relation, old } => (relation, Op::Delete, Some(old), None),
            Message::Truncate { relations, cascade, restart_identity } => {
                for oid in relations {
                    let change = self.change(oid, lsn, Op::Truncate, None, None)?;
                    self.push(Change { truncate: TruncateOptions { cascade, restart_identity, resync: false }, ..change });
                }
                return Ok(());
            }
            // Begin/Commit/Message arrive as their own events; Origin needs no action.
            Message::Begin(_) | Message::Commit(_) | Message::Origin(_) | Message::Message(_) => return Ok(()),
        };
        let mut change = self.change(relation, lsn, op, old, new)?;
        change.fill_unchanged_from_old();
        self.push(change);
        Ok(())
    }

    /// Add a change to the current batch, counting it.
    fn push(&mut self, change: Change) {
        let metrics = &self.metrics;
        self.change_counters
            .entry((change.relation.oid, change.op))
            .or_insert_with(|| {
                metrics.changes.get_or_create(&TableOp { table: change.relation.qualified_name(), op: change.op.as_str() }).clone()
            })
            .inc();
        self.batch_oldest_ts.get_or_insert(change.commit_ts);
        self.batch.changes.push(change);
    }

    /// Confirm `lsn` to the slot (when a session is open) and export it.
    fn confirm(&self, stream: Option<&ReplicationStream>, lsn: Lsn) {
        self.metrics.confirmed_lsn.set(lsn.0 as i64);
        if let Some(s) = stream {
            s.confirm(lsn);
        }
    }

    /// Export the commit times still owed, for the lag-in-seconds gauges.
    fn update_lag(&self) {
        for (i, gauges) in self.sink_gauges.iter().enumerate() {
            gauges.lag.store(self.checkpoint.oldest_pending(i).unwrap_or(0), Ordering::Relaxed);
        }
        let oldest = [self.checkpoint.oldest_pending_any(), self.batch_oldest_ts].into_iter().flatten().min();
        self.metrics.lag.set_oldest_pending(oldest.unwrap_or(0));
    }

    fn change(
        &mut self,
        oid: u32,
        lsn: Lsn,
        op: Op,
        old: Option<decode::OldTuple>,
        new: Option<Vec<decode::Datum>>,
    ) -> Result<Change, PipelineError> {
        let relation = Arc::clone(self.relations.get(oid).map_err(SourceError::from)?);
        let tx = self.tx.as_mut().ok_or_else(|| {
            SourceError::from(DecodeError::Malformed {
                tag: op.as_str().chars().next().unwrap_or('?'),
                reason: "row change outside a transaction".into(),
            })
        })?;
        let seq = tx.next_seq;
        tx.next_seq += 1;
        Ok(Change {
            lsn,
            commit_lsn: tx.commit_lsn,
            xid: tx.xid,
            commit_ts: tx.commit_ts,
            seq,
            relation,
            op,
            old,
            new,
            truncate: TruncateOptions::default(),
        })
    }

    fn on_report(&mut self, report: SinkReport, stream: Option<&ReplicationStream>) -> Result<(), PipelineError> {
        match report {
            SinkReport::Durable { sink, lsn } => {
                if let Some(gauges) = self.sink_gauges.get(sink) {
                    gauges.durable.set(lsn.0 as i64);
                }
                if let Some(confirmed) = self.checkpoint.on_durable(sink, lsn) {
                    tracing::trace!(%confirmed, "confirming");
                    self.confirm(stream, confirmed);
                }
                self.update_lag();
                Ok(())
            }
            // Snapshot chunks are acknowledged to the snapshot loader, which runs before streaming.
            SinkReport::SnapshotChunk { .. } => Ok(()),
            SinkReport::Failed { error, .. } => Err(error.into()),
        }
    }

    /// Hand the current batch to every sink (waits while a sink's queue is full: backpressure).
    async fn flush(&mut self) -> Result<(), PipelineError> {
        if !self.has_batch() {
            return Ok(());
        }
        if self.batch.changes.len() > self.committed_len {
            if let Some(tx) = self.tx.as_mut() {
                tx.partly_dispatched = true;
            }
        }
        let capacity = self.config.pipeline.batch_max_changes.min(1024);
        let batch = Arc::new(std::mem::replace(&mut self.batch, Batch { changes: Vec::with_capacity(capacity), ..Batch::default() }));
        self.committed_len = 0;
        self.checkpoint.on_dispatched(batch.checkpoint, self.batch_oldest_ts.take());
        self.update_lag();
        for queue in &self.queues {
            self.in_flight.add();
            if queue.send(Arc::clone(&batch)).await.is_err() {
                // The sink task ended, and sent its report before it dropped its queue: the
                // report is either waiting here or was handled already (then the caller holds the
                // error). Never wait for the channel to close: the other sinks' tasks keep it open.
                while let Ok(report) = self.reports.try_recv() {
                    self.on_report(report, None)?;
                }
                return Err(SinkError::Fatal {
                    sink: "pipeline",
                    reason: "a sink stopped (see the error reported before this one)".into(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Write out what was read, wait (bounded) for the sinks, confirm the final position.
    async fn drain(&mut self, stream: Option<ReplicationStream>) -> Result<(), PipelineError> {
        // An unfinished transaction is resent after restart anyway; keep whole ones only.
        self.batch.changes.truncate(self.committed_len);
        // One deadline for the whole drain: handing the last batch to a sink whose queue is full
        // counts against it too, then the sink tasks are aborted wherever they are (a request,
        // a retry sleep, index creation).
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.pipeline.shutdown_timeout_ms);
        let flushed = match tokio::time::timeout_at(deadline, self.flush()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("a sink queue stayed full until the shutdown timeout; the last batch will be sent again on restart");
                Ok(())
            }
        };
        self.queues.clear();
        let mut failure = flushed.err();
        loop {
            let report = tokio::select! {
                r = self.reports.recv() => r,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(dispatched = %self.checkpoint.dispatched(), confirmed = %self.checkpoint.confirmed(), "sinks did not finish in time; unconfirmed changes will be sent again on restart");
                    break;
                }
            };
            match report {
                Some(r) => {
                    if let Err(e) = self.on_report(r, stream.as_ref()) {
                        failure.get_or_insert(e);
                    }
                }
                None => break,
            }
        }
        self.tasks.abort_all();
        self.metrics.streaming.set(0);
        let confirmed = self.checkpoint.confirmed();
        if let Some(s) = stream {
            self.confirm(Some(&s), confirmed);
            if let Err(error) = s.stop().await {
                tracing::debug!(%error, "replication stream did not end cleanly");
            }
        }
        // The stream may close before its last status update went out; advancing the slot over
        // SQL makes the final position stick either way.
        if let Err(error) = self.final_confirm(confirmed).await {
            tracing::warn!(%error, %confirmed, "could not record the final position; changes after the last status update will be sent again");
        }
        tracing::info!(%confirmed, "stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn final_confirm(&self, confirmed: Lsn) -> Result<(), SourceError> {
        let slot = &self.config.source.slot;
        let client = connect_sql(&self.params).await?;
        for _ in 0..20 {
            let info = source::slot_info(&client, slot).await.map_err(|e| source::classify(&e, &self.params))?;
            let Some(info) = info else { return Ok(()) };
            // Never advance what is not a logical slot of ours (someone replaced it meanwhile).
            if info.problem(&self.config.source.database).is_some() {
                return Ok(());
            }
            if info.confirmed_flush_lsn.is_some_and(|c| c >= confirmed) {
                return Ok(());
            }
            if !info.active {
                client
                    .execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[slot, &confirmed.to_string()])
                    .await
                    .map_err(|e| source::classify(&e, &self.params))?;
                return Ok(());
            }
            // The walsender is still exiting.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(SourceError::Transient("the slot stayed active after the stream ended".into()))
    }
}
