//! `walcast replay`: read a range of the change log and send it again through the configured
//! sinks (the same mapping rules, the same fan-out), beside a running `walcast run`.
//!
//! Replaying is idempotent: Elasticsearch writes carry the commit LSN as an external version
//! (`external_gte`), so a replayed change never rolls a document back past what the stream wrote;
//! Kafka records carry `source.lsn`, JSON lines `commit_lsn`, for consumers to do the same.
//! Document rules rebuild the roots a change touches from the current rows.

mod progress;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::changelog::marks::{Marks, MarksError};
use crate::changelog::{ChangelogError, LogBatch, LogReader, LogScan};
use crate::config::{Config, ConfigError, LogFormat, TableName};
use crate::lsn::Lsn;
use crate::metrics::{Metrics, SinkLabel};
use crate::sink::fanout::{Fanout, Sinks};
use crate::sink::{Batch, ElasticsearchSink, JsonlSink, KafkaSink, Sink as _, SinkError, SinkReport};
use crate::source::{ConnParams, SourceError};

use progress::{Mode, Progress, Range};

/// Where a replay starts (exclusive: transactions that commit after it are sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// `--from LSN`.
    Lsn(Lsn),
    /// `--from-mark NAME`.
    Mark(String),
}

/// What `walcast replay` sends again.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Where to start.
    pub from: ReplayStart,
    /// The last commit LSN to send (inclusive); `None`: the log's durable end when the replay
    /// starts.
    pub to: Option<Lsn>,
    /// Only these tables (`--table`); empty: every table.
    pub tables: Vec<TableName>,
    /// Only these sinks by name (`--sink`); empty: every configured sink.
    pub sinks: Vec<String>,
    /// Where the JSON-lines sink writes instead of `sinks.jsonl.path` (`--jsonl-path`; `-` is
    /// standard output).
    pub jsonl_path: Option<String>,
}

/// What a finished replay did.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySummary {
    /// Start (exclusive).
    pub from: Lsn,
    /// The last commit LSN read (inclusive end of what was sent).
    pub reached: Lsn,
    /// Changes sent to the sinks.
    pub rows: u64,
    /// Changes read from the log (sent or filtered out).
    pub read: u64,
    /// Time the replay took.
    pub elapsed: std::time::Duration,
    /// Shutdown came first: not everything was sent.
    pub interrupted: bool,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The configuration or the command line cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres (document rules read the current rows).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The log cannot be read.
    #[error(transparent)]
    Log(ChangelogError),
    /// The log no longer holds (or never held) the start.
    #[error("the change log no longer holds the changes after {requested}: its oldest commit is {oldest}, and `--from {start}` replays every change it holds (older segments were dropped by retention, or the log started later)")]
    NotInLog {
        /// The start asked for.
        requested: Lsn,
        /// The oldest commit the log holds.
        oldest: Lsn,
        /// The `--from` that replays every change the log holds.
        start: Lsn,
    },
    /// `--from-mark` names no mark.
    #[error("there is no mark named {name:?} ({})", if known.is_empty() { "there are no marks".to_string() } else { format!("marks: {}", known.join(", ")) })]
    NoMark {
        /// The name given.
        name: String,
        /// The marks that exist.
        known: Vec<String>,
    },
    /// The marks file cannot be read.
    #[error(transparent)]
    Marks(#[from] MarksError),
    /// A task on the blocking pool (reading the log or the marks) ended without an answer.
    #[error("a task reading the change log failed: {0}")]
    Task(String),
}

impl From<ChangelogError> for ReplayError {
    fn from(e: ChangelogError) -> Self {
        match e {
            ChangelogError::NotInLog { requested, oldest, start } => ReplayError::NotInLog { requested, oldest, start },
            e => ReplayError::Log(e),
        }
    }
}

/// The way out when the log cannot serve a replay.
pub const SNAPSHOT_FIX: &str = "the change log cannot replay this range; reload the data instead: `walcast snapshot --config FILE --table SCHEMA.TABLE` (or `--rule NAME`) loads the current rows into every sink";

/// Changes read from the log per batch handed to the sinks.
const BATCH_CHANGES: usize = 4096;

/// Send the log range of `request` again through the configured sinks and wait until every sink
/// made it durable. Returns early (with `interrupted`) on shutdown.
pub async fn replay(config: &Config, request: &ReplayRequest, shutdown: CancellationToken) -> Result<ReplaySummary, ReplayError> {
    config.read_secrets()?;
    let params = ConnParams::from_config(&config.source)?;
    let state_dir = config.snapshot.state_dir.clone();
    let slot = config.source.slot.clone();
    let dir = config.changelog.dir_for(&state_dir, &slot);

    let from = match &request.from {
        ReplayStart::Lsn(lsn) => *lsn,
        ReplayStart::Mark(name) => {
            let marks = blocking(move || Marks::load(&state_dir, &slot)).await??;
            match marks.get(name) {
                Some(mark) => mark.lsn,
                None => return Err(ReplayError::NoMark { name: name.clone(), known: marks.iter().map(|(n, _)| n.to_string()).collect() }),
            }
        }
    };
    if let Some(to) = request.to.filter(|to| *to < from) {
        return Err(ConfigError::Invalid { field: "--to".into(), reason: format!("{to} is before the start {from}") }.into());
    }
    let (scan, end) = blocking(move || open_scan(&dir, from)).await??;
    let to = request.to.unwrap_or(end.unwrap_or(from));
    let range = Range { from, to };
    tracing::info!(%from, %to, tables = request.tables.len(), "replay started");

    if let Some(path) = jsonl_conflict(config, request, &params).await? {
        return Err(ConfigError::Invalid {
            field: "--jsonl-path".into(),
            reason: format!(
                "`walcast run` is streaming slot {:?} and appends to {path}: a second writer would tear its lines; pass --jsonl-path OTHER_FILE (or - for standard output), or leave JSON lines out with --sink",
                config.source.slot
            ),
        }
        .into());
    }
    let metrics = Metrics::new();
    // Ends the sink tasks' retry waits: on shutdown, or when one sink failed for good.
    let sinks_stop = shutdown.child_token();
    let Sinks { queues, mut reports, mut tasks, in_flight, names } = start_sinks(config, &params, &metrics, request, &sinks_stop)?;
    tracing::info!(sinks = ?names, "replay sinks started");

    let format = if crate::telemetry::logs_json() { LogFormat::Json } else { LogFormat::Text };
    let mut progress = Progress::new(Mode::detect(format), range);
    let sent = async {
        let mut scan = scan;
        // A batch handed over without a checkpoint whose transaction has not ended yet: the
        // batch holding its commit is sent even when the filter leaves it empty.
        let mut open_tx = false;
        loop {
            let (back, next) = blocking(move || {
                let next = scan.next_batch(BATCH_CHANGES);
                (scan, next)
            })
            .await?;
            scan = back;
            let Some(batch) = next? else { break };
            let read = batch.changes.len() as u64;
            let (batch, done) = cut(batch, to, &request.tables);
            let reached = batch.checkpoint;
            let rows = batch.changes.len() as u64;
            if !batch.changes.is_empty() || (open_tx && batch.checkpoint.is_some()) {
                open_tx = batch.checkpoint.is_none();
                let batch = Arc::new(batch);
                for queue in &queues {
                    in_flight.add();
                    // A sink that stopped has dropped its queue: its report says why.
                    let sent = tokio::select! {
                        biased;
                        r = queue.send(Arc::clone(&batch)) => r,
                        _ = shutdown.cancelled() => return Ok(false),
                    };
                    if sent.is_err() {
                        return Err(failed_sink(&mut reports, &names));
                    }
                }
            }
            while let Ok(report) = reports.try_recv() {
                if let SinkReport::Failed { sink, error } = report {
                    tracing::error!(sink = names[sink], %error, "replay sink failed");
                    return Err(ReplayError::Sink(error));
                }
            }
            progress.advance(rows, read, reached);
            if done {
                break;
            }
        }
        Ok(true)
    }
    .await;
    // Closing the queues lets every sink task finish what it holds, then end.
    drop(queues);
    if sent.is_err() {
        sinks_stop.cancel();
    }
    while tasks.join_next().await.is_some() {}
    let mut failure = None;
    while let Ok(report) = reports.try_recv() {
        if let SinkReport::Failed { error, .. } = report {
            failure.get_or_insert(error);
        }
    }
    progress.show(true);
    let complete = sent?;
    if let Some(error) = failure {
        return Err(error.into());
    }
    let r = progress.reached();
    // A sink task that saw shutdown while retrying leaves its batches unwritten.
    let interrupted = !complete || shutdown.is_cancelled();
    let summary = ReplaySummary { from, reached: r.lsn, rows: r.rows, read: r.read, elapsed: r.elapsed, interrupted };
    tracing::info!(%from, reached = %summary.reached, rows = summary.rows, read = summary.read, interrupted, "replay finished");
    Ok(summary)
}

/// Open the log read-only and position a scan after `from`; also the log's durable end.
/// Blocking.
fn open_scan(dir: &std::path::Path, from: Lsn) -> Result<(LogScan, Option<Lsn>), ReplayError> {
    let reader = LogReader::open(dir)?;
    let end = reader.stats()?.durable_end;
    let scan = reader.scan_after(from)?;
    Ok((scan, end))
}

/// Keep the changes of `batch` that commit at or before `to` and belong to `tables` (every table
/// when empty); whether the range ends with this batch. The checkpoint survives the filter: it
/// says which transactions ended, kept or not.
fn cut(batch: LogBatch, to: Lsn, tables: &[TableName]) -> (Batch, bool) {
    let LogBatch { mut changes, mut checkpoint } = batch;
    let before = changes.len();
    changes.retain(|c| c.commit_lsn <= to);
    let done = changes.len() < before || checkpoint.is_some_and(|c| c >= to);
    if changes.len() < before {
        // Changes are in commit order and a transaction's changes are contiguous: the kept ones
        // belong to transactions that all ended inside this batch.
        checkpoint = changes.last().map(|c| c.commit_lsn).or(checkpoint.filter(|c| *c <= to));
    }
    if !tables.is_empty() {
        changes.retain(|c| tables.iter().any(|t| t.schema() == c.relation.schema && t.table() == c.relation.table));
    }
    (Batch { changes, checkpoint, ..Batch::default() }, done)
}

/// Open the configured sinks (only those named in `only`, when given) behind the fan-out.
fn start_sinks(
    config: &Config,
    params: &ConnParams,
    metrics: &Arc<Metrics>,
    request: &ReplayRequest,
    shutdown: &CancellationToken,
) -> Result<Sinks, ReplayError> {
    let only = &request.sinks;
    let configured = configured_sinks(config);
    if let Some(unknown) = only.iter().find(|n| !configured.contains(&n.as_str())) {
        return Err(ConfigError::Invalid {
            field: "--sink".into(),
            reason: format!("no sink named {unknown:?} is configured (configured: {})", configured.join(", ")),
        }
        .into());
    }
    if configured.is_empty() {
        return Err(
            ConfigError::Invalid { field: "sinks".into(), reason: "no sink is configured: replay has nowhere to send".into() }.into()
        );
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|n| n == name);
    let mut fanout = Fanout::new(&config.pipeline, &config.retry, metrics, shutdown);
    if let Some(j) = config.sinks.jsonl.as_ref().filter(|_| wanted(JSONL)) {
        fanout.spawn(JsonlSink::open(request.jsonl_path.as_deref().unwrap_or(&j.path))?);
    }
    if let Some(k) = config.sinks.kafka.as_ref().filter(|_| wanted(KAFKA)) {
        let mut sink = KafkaSink::open(k, &config.source.database)?;
        sink.count_dead_letters_in(metrics.dead_letters.get_or_create(&SinkLabel { sink: sink.name().to_string() }).clone());
        fanout.spawn(sink);
    }
    if let Some(es) = config.sinks.elasticsearch.as_ref().filter(|_| wanted(ELASTICSEARCH)) {
        fanout.spawn(
            ElasticsearchSink::open(es, &config.retry, Arc::clone(metrics))?.with_source(params.clone()).with_shutdown(shutdown.clone()),
        );
    }
    Ok(fanout.started())
}

const JSONL: &str = "jsonl";
const KAFKA: &str = "kafka";
const ELASTICSEARCH: &str = "elasticsearch";

/// The JSON-lines file of the config when the replay would append to it while `walcast run`
/// (streaming the slot) does too: both cut what looks like a torn last line and roll back failed
/// writes by length, so two writers can destroy each other's lines.
async fn jsonl_conflict(config: &Config, request: &ReplayRequest, params: &ConnParams) -> Result<Option<String>, ReplayError> {
    let Some(jsonl) = &config.sinks.jsonl else { return Ok(None) };
    let selected = request.sinks.is_empty() || request.sinks.iter().any(|s| s == JSONL);
    if !selected || request.jsonl_path.is_some() || jsonl.path == "-" {
        return Ok(None);
    }
    let path = jsonl.path.clone();
    // Only a regular file is appended to (a pipe or /dev/null is not shared that way).
    let regular = blocking(move || std::fs::metadata(&path).is_ok_and(|m| m.is_file())).await?;
    if !regular {
        return Ok(None);
    }
    let client = crate::source::connect_sql(params).await?;
    let info = crate::source::slot_info(&client, &config.source.slot).await.map_err(|e| crate::source::classify(&e, params))?;
    Ok(info.is_some_and(|i| i.active).then(|| jsonl.path.clone()))
}

/// The names of the configured sinks, as `--sink` takes them.
pub fn configured_sinks(config: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    if config.sinks.jsonl.is_some() {
        names.push(JSONL);
    }
    if config.sinks.kafka.is_some() {
        names.push(KAFKA);
    }
    if config.sinks.elasticsearch.is_some() {
        names.push(ELASTICSEARCH);
    }
    names
}

/// The error of a sink that stopped taking batches (its task reported why before it ended).
fn failed_sink(reports: &mut tokio::sync::mpsc::UnboundedReceiver<SinkReport>, names: &[&'static str]) -> ReplayError {
    while let Ok(report) = reports.try_recv() {
        if let SinkReport::Failed { error, .. } = report {
            return error.into();
        }
    }
    let sink = names.first().copied().unwrap_or("sink");
    SinkError::Fatal { sink, reason: "the sink task stopped without a report".into() }.into()
}

/// Run blocking log or file work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ReplayError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ReplayError::Task(e.to_string()))
}

/// The directory of this config's change log.
pub fn log_dir(config: &Config) -> PathBuf {
    config.changelog.dir_for(&config.snapshot.state_dir, &config.source.slot)
}

#[cfg(test)]
mod tests;
