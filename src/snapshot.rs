//! Snapshot: load the rows that exist before streaming starts (docs/snapshot.md). Rows are read chunk by chunk in primary-key order inside the slot's
//! exported snapshot, turned into [`Op::Read`] changes with `commit_lsn` = the consistent point,
//! and handed to the sinks like streamed batches. Progress records the chunks every sink made
//! durable (saved in the background), so an interrupted snapshot resumes from the last of them.

mod copy_binary;
mod copy_text;
mod ledger;
mod on_demand;
mod progress;
mod reader;
mod recheck;
mod resync;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::ledger::{Ledger, UnwrittenChunk};
pub use self::on_demand::{load_on_demand, SnapshotTarget};
use self::progress::{Mode, Progress};
pub use self::reader::TableRef;
use self::reader::{Reader, TableReader};
pub use self::recheck::{recheck, HeldSnapshot, RecheckPlan};
pub use self::resync::request_resync;
pub use self::state::{SnapshotState, Status};
use crate::config::{Config, ConfigError};
use crate::decode::Change;
use crate::lsn::Lsn;
use crate::metrics::{Metrics, TableLabel};
use crate::sink::{Batch, ChunkPlace, SinkError, SinkReport, SnapshotPart};
use crate::source::{connect_sql_bulk, ConnParams, SourceError};

/// How often the sinks sync a snapshot's chunks (and every table's last chunk): what a crash
/// can make the next start read again. At most this long apart...
const SYNC_EVERY: Duration = Duration::from_millis(250);

/// ...and at most this many chunks apart (small chunks record progress as often as before).
const SYNC_EVERY_CHUNKS: u32 = 8;

/// First chunk number of the next load (each load takes a range of 2^32).
static NEXT_CHUNK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why a snapshot load (or its recheck) stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// What to load cannot be used (`walcast snapshot --table/--rule`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres: reading the rows, or creating the snapshot's temporary slots.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The progress file cannot be written.
    #[error("snapshot: cannot save snapshot progress: {source}; check snapshot.state_dir is writable")]
    State {
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How a load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every table was loaded and written by every sink.
    Done,
    /// Shutdown was requested: what the sinks wrote is recorded; the next run resumes.
    Interrupted,
}

/// The sinks a snapshot writes to: their queues, and the reports coming back.
pub struct SinkHandles<'a> {
    /// One queue per sink.
    pub queues: &'a [mpsc::Sender<Arc<Batch>>],
    /// Reports of every sink.
    pub reports: &'a mut mpsc::UnboundedReceiver<SinkReport>,
    /// Called before each batch is queued (the pipeline counts batches in flight).
    pub on_dispatch: &'a (dyn Fn() + Sync),
}

/// The tables a snapshot loads for this config: every table of the publication when a sink
/// takes every table (JSON lines, Kafka); otherwise the tables the Elasticsearch rules read
/// (flat tables and document root tables). Sorted, without duplicates.
pub async fn tables_to_load(config: &Config, client: &tokio_postgres::Client) -> Result<Vec<TableRef>, SourceError> {
    let mut out = Vec::new();
    if config.sinks.jsonl.is_some() || config.sinks.kafka.is_some() {
        let rows = client
            .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&config.source.publication])
            .await
            .map_err(|e| crate::source::classify_query(&e, "listing the publication's tables"))?;
        for row in rows {
            out.push(TableRef { schema: row.get(0), table: row.get(1) });
        }
    }
    if let Some(es) = &config.sinks.elasticsearch {
        let names = es.tables.iter().map(|t| &t.table).chain(es.documents.iter().map(|d| &d.table));
        out.extend(names.map(TableRef::from));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What to load, and where progress goes.
pub struct LoadPlan<'a> {
    /// The tables, in order.
    pub tables: &'a [TableRef],
    /// The version of every write: the slot's consistent point.
    pub point: Lsn,
    /// The slot's exported snapshot while its session lives; without it (resuming) a fresh
    /// snapshot is read, which is safe because streaming then replays every change after
    /// `point` over it.
    pub exported: Option<&'a str>,
    /// Progress after each finished chunk, and where to resume (`None`: not recorded).
    pub state: Option<&'a mut SnapshotState>,
}

/// Load the plan's tables and hand them to the sinks.
pub async fn load(
    config: &Config,
    params: &ConnParams,
    plan: LoadPlan<'_>,
    sinks: SinkHandles<'_>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Outcome, SnapshotError> {
    let mut sinks = sinks;
    let LoadPlan { tables, point, exported, state } = plan;
    let started = Instant::now();
    let client = connect_sql_bulk(params).await?;
    let mut reader = Reader::begin(client, exported).await?;
    let exported: Option<Arc<str>> = exported.map(Arc::from);
    let mut commit_ts = pg_now_micros();
    let mut ledger = Ledger::new(state, sinks.queues.len());
    // Every load of one snapshot gets its own time, even if the clock went back: the rows of a
    // table without a primary key are identified by it (`Change::write_change_id`).
    if let Some(previous) = ledger.state().and_then(|s| s.load_ts) {
        commit_ts = commit_ts.max(previous.saturating_add(1));
    }
    ledger.update(|s| s.load_ts = Some(commit_ts)).await?;
    // Unique across attempts: reports of an abandoned attempt's chunks may still arrive.
    let mut next_chunk = NEXT_CHUNK.fetch_add(1 << 32, std::sync::atomic::Ordering::Relaxed);
    let mut total_rows = 0u64;
    let mut outcome = Outcome::Done;
    tracing::info!(tables = tables.len(), %point, exported = exported.is_some(), "snapshot started");

    // A re-sync first empties what the sinks hold of every table (all before any load: tables
    // may share an index), once: the state records it before the first chunk is read.
    if ledger.state().is_some_and(|s| s.resync && !s.cleared) {
        let mut changes = Vec::with_capacity(tables.len());
        for table in tables {
            changes.push(reader.table(table, None).await?.resync_truncate(point, commit_ts));
        }
        let part = UnwrittenChunk {
            chunk: next_chunk,
            table: None,
            after: None,
            rows: 0,
            last_of_table: false,
            acks: 0,
            place: ChunkPlace::default(),
            sync: true,
        };
        next_chunk += 1;
        if !dispatch(&mut sinks, changes, part, exported.clone(), &mut ledger, tables, shutdown).await? {
            return Ok(Outcome::Interrupted);
        }
        if wait_written(config, &mut sinks, Outcome::Done, &mut ledger, tables, shutdown).await? == Outcome::Interrupted {
            return Ok(Outcome::Interrupted);
        }
        ledger.update(|s| s.cleared = true).await?;
        tracing::info!(tables = tables.len(), "re-sync: removed the tables' data from the sinks before reloading them");
    }

    // Every table's size first, so the overall percent and time left hold from the first line.
    let mut estimates = Vec::with_capacity(tables.len());
    let mut resumed_rows = 0u64;
    for table in tables {
        let name = table.to_string();
        let resume = ledger.state().and_then(|s| s.table(&name).cloned()).unwrap_or_default();
        let estimate = if resume.done { resume.rows } else { reader.estimate_rows(table).await? };
        metrics.snapshot_rows_estimated.get_or_create(&TableLabel { table: name }).set(i64::try_from(estimate).unwrap_or(i64::MAX));
        resumed_rows += resume.rows;
        estimates.push(estimate);
    }
    let mut progress = Progress::new(Mode::detect(config.log.format), estimates.iter().sum(), resumed_rows);
    let (mut last_sync, mut unsynced) = (Instant::now(), 0u32);

    'tables: for (ti, table) in tables.iter().enumerate() {
        let name = table.to_string();
        let resume = ledger.state().and_then(|s| s.table(&name).cloned()).unwrap_or_default();
        if resume.done {
            tracing::info!(table = %name, rows = resume.rows, "snapshot table already loaded");
            continue;
        }
        let mut tr: TableReader = reader.table(table, resume.after.clone()).await?;
        let counter = metrics.snapshot_rows.get_or_create(&TableLabel { table: name.clone() }).clone();
        let mut rows_done = resume.rows;
        let estimate = estimates.get(ti).copied().unwrap_or_default();
        progress.start_table(&name, estimate, resume.rows);
        tracing::info!(table = %name, estimated_rows = estimate, resumed_after_rows = resume.rows, "snapshot table started");
        let chunk_rows = config.snapshot.chunk_rows as u64;
        let mut chunk = reader.next_chunk(&mut tr, config.snapshot.chunk_rows, point, commit_ts).await?;
        // One chunk read ahead: a full chunk may still be the table's last, and then its last row
        // carries the table's last-row marker (source.snapshot in Kafka records).
        let mut ahead = if chunk.changes.len() as u64 >= chunk_rows {
            Some(reader.next_chunk(&mut tr, config.snapshot.chunk_rows, point, commit_ts).await?)
        } else {
            None
        };
        let mut first_of_table = resume.rows == 0 && resume.after.is_none();
        loop {
            if shutdown.is_cancelled() {
                outcome = Outcome::Interrupted;
                break 'tables;
            }
            let rows = chunk.changes.len() as u64;
            let last_of_table = ahead.as_ref().is_none_or(|n| n.changes.is_empty());
            counter.inc_by(rows);
            rows_done += rows;
            total_rows += rows;
            let place = ChunkPlace { first_of_table, last_of_table, first_table: ti == 0, last_table: ti + 1 == tables.len() };
            first_of_table = false;
            // The sinks sync now and then and at each table's end, not after every chunk.
            unsynced += 1;
            let sync = last_of_table || unsynced >= SYNC_EVERY_CHUNKS || last_sync.elapsed() >= SYNC_EVERY;
            if sync {
                (last_sync, unsynced) = (Instant::now(), 0);
            }
            let part = UnwrittenChunk {
                chunk: next_chunk,
                table: Some(ti),
                after: chunk.after,
                rows: rows_done,
                last_of_table,
                acks: 0,
                place,
                sync,
            };
            next_chunk += 1;
            let handed = dispatch(&mut sinks, chunk.changes, part, exported.clone(), &mut ledger, tables, shutdown);
            // The chunk after the one read ahead is queried on the server while this one waits
            // for room in a sink's queue (and the sinks render and write it).
            let read_more = !last_of_table && ahead.as_ref().is_some_and(|n| n.changes.len() as u64 >= chunk_rows);
            let (handed, further) = if read_more {
                let (handed, further) = tokio::join!(handed, reader.next_chunk(&mut tr, config.snapshot.chunk_rows, point, commit_ts));
                (handed, Some(further))
            } else {
                (handed.await, None)
            };
            if !handed? {
                outcome = Outcome::Interrupted;
                break 'tables;
            }
            progress.advance(rows, last_of_table);
            match ahead.take() {
                Some(n) if !last_of_table => {
                    chunk = n;
                    ahead = further.transpose()?;
                }
                _ => break,
            }
        }
    }
    drop(reader);
    drop(progress);
    let outcome = wait_written(config, &mut sinks, outcome, &mut ledger, tables, shutdown).await?;
    ledger.flush().await?;
    match outcome {
        Outcome::Done => {
            ledger.update(|s| s.status = Status::Done).await?;
            tracing::info!(
                rows = total_rows,
                tables = tables.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot finished"
            );
        }
        Outcome::Interrupted => {
            tracing::warn!(rows = total_rows, "snapshot interrupted; the next start resumes after the last chunk every sink wrote");
        }
    }
    Ok(outcome)
}

/// Hand one chunk's changes to every sink (waiting while a queue is full), as chunk `part`;
/// count the reports that came back meanwhile. `false` when shutdown came while a sink's queue
/// was full: a stuck sink must not hold the shutdown, and the chunk is not recorded as written,
/// so the next start reads it again.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    sinks: &mut SinkHandles<'_>,
    changes: Vec<Change>,
    part: UnwrittenChunk,
    exported: Option<Arc<str>>,
    ledger: &mut Ledger<'_>,
    tables: &[TableRef],
    shutdown: &CancellationToken,
) -> Result<bool, SnapshotError> {
    let snapshot = SnapshotPart { chunk: part.chunk, exported, place: part.place, sync: part.sync };
    let batch = Arc::new(Batch { changes, checkpoint: None, snapshot: Some(snapshot), messages: Vec::new() });
    ledger.push(part);
    for queue in sinks.queues {
        (sinks.on_dispatch)();
        // A sink that stopped has dropped its queue: the send fails, its report says why.
        let sent = tokio::select! {
            biased;
            r = queue.send(Arc::clone(&batch)) => r,
            _ = shutdown.cancelled() => return Ok(false),
        };
        if sent.is_err() {
            return Err(stopped_sink(sinks.reports));
        }
    }
    while let Ok(report) = sinks.reports.try_recv() {
        ledger.absorb(Some(report), tables).await?;
    }
    Ok(true)
}

/// Wait until the sinks have written every pending chunk. A shutdown turns the outcome into
/// `Interrupted` and then waits at most `shutdown_timeout_ms`.
async fn wait_written(
    config: &Config,
    sinks: &mut SinkHandles<'_>,
    mut outcome: Outcome,
    ledger: &mut Ledger<'_>,
    tables: &[TableRef],
    shutdown: &CancellationToken,
) -> Result<Outcome, SnapshotError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.pipeline.shutdown_timeout_ms);
    while !ledger.all_written() {
        let report = if outcome == Outcome::Interrupted {
            tokio::select! {
                r = sinks.reports.recv() => r,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if outcome == Outcome::Done => { outcome = Outcome::Interrupted; continue; }
                r = sinks.reports.recv() => r,
            }
        };
        if report.is_none() {
            return Err(stopped_sink(sinks.reports));
        }
        ledger.absorb(report, tables).await?;
    }
    Ok(outcome)
}

fn stopped_sink(reports: &mut mpsc::UnboundedReceiver<SinkReport>) -> SnapshotError {
    while let Ok(report) = reports.try_recv() {
        if let SinkReport::Failed { error, .. } = report {
            return error.into();
        }
    }
    SinkError::Fatal { sink: "snapshot", reason: "a sink stopped (see the error reported before this one)".into() }.into()
}

fn snapshot_state_error(source: std::io::Error) -> SnapshotError {
    SnapshotError::State { source }
}

/// Now, in Postgres's timestamp unit (microseconds since 2000-01-01 UTC): the commit time of
/// snapshot rows.
fn pg_now_micros() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_UNIX_SECS * 1_000_000
}
