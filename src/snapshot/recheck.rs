//! The recheck after an on-demand snapshot (docs/snapshot.md "On demand"): rows the load wrote
//! that a newer snapshot no longer has become deletes versioned with that snapshot's point.
//!
//! Why it is needed: `walcast snapshot` runs beside a streaming `walcast run`. A row the load
//! read at its point P and the stream deleted at D > P may reach a sink *after* the stream's
//! delete; on a server that keeps no delete tombstone (noida-db; Elasticsearch after
//! `index.gc_deletes`) the version-P write then creates the document again, for good.
//!
//! Why it is enough: the newer snapshot is taken (a second temporary slot, consistent point Q)
//! after every chunk of the load was written by every sink. A delete committed at D < Q is
//! absent from it, so the recheck deletes the row with version Q - 1 >= D; one committed at Q or after was
//! committed after the load's writes were acknowledged, so the stream applies it after them; a
//! row inserted again at Q or after carries a higher version and wins over the recheck's delete.
//!
//! Memory stays bounded: the load's rows are read again chunk by chunk, in the load's own
//! snapshot (held open in a transaction), and checked against the newer one a chunk at a time.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, UnwrittenChunk};
use super::reader::Reader;
use super::{dispatch, pg_now_micros, wait_written, Outcome, SinkHandles, SnapshotError, TableRef, NEXT_CHUNK};
use crate::config::Config;
use crate::decode::{Change, OldTuple, OldTupleKind, Op};
use crate::lsn::Lsn;
use crate::sink::ChunkPlace;
use crate::source::{connect_sql, ConnParams};

/// The load's snapshot, kept in an open transaction so that the slot that exported it can be
/// dropped before the newer one is created (one extra slot at a time).
pub struct HeldSnapshot {
    reader: Reader,
}

impl HeldSnapshot {
    /// Import the exported snapshot `name` into a new read transaction, which keeps reading it
    /// after the exporting session (and its slot) is gone.
    pub async fn hold(params: &ConnParams, name: &str) -> Result<Self, SnapshotError> {
        let client = connect_sql(params).await?;
        Ok(Self { reader: Reader::begin(client, Some(name)).await? })
    }
}

/// What to recheck.
pub struct RecheckPlan<'a> {
    /// The tables the load read, in order.
    pub tables: &'a [TableRef],
    /// The snapshot the load read.
    pub loaded: HeldSnapshot,
    /// The newer snapshot's name (exported by a slot created after the load was written).
    pub newer: &'a str,
    /// Its consistent point Q: every delete has version Q - 1.
    pub point: Lsn,
}

/// Read the load's rows again (in its snapshot), find those the newer snapshot no longer has,
/// and hand them to the sinks as deletes just below the newer point (with the whole row as it was
/// loaded, as a REPLICA IDENTITY FULL delete carries it). Tables without a primary key are
/// skipped with a warning.
pub async fn recheck(
    config: &Config,
    params: &ConnParams,
    plan: RecheckPlan<'_>,
    sinks: SinkHandles<'_>,
    shutdown: &CancellationToken,
) -> Result<Outcome, SnapshotError> {
    let mut sinks = sinks;
    let RecheckPlan { tables, loaded, newer, point } = plan;
    let mut loaded = loaded.reader;
    // Every transaction the newer snapshot sees has its commit record below Q; one whose commit
    // record starts exactly at Q is streamed, with version Q, and must win over these deletes.
    let version = Lsn(point.0.saturating_sub(1));
    let started = Instant::now();
    let mut current = Reader::begin(connect_sql(params).await?, Some(newer)).await?;
    let exported: Option<Arc<str>> = Some(Arc::from(newer));
    let commit_ts = pg_now_micros();
    let mut ledger = Ledger::new(None, sinks.queues.len());
    let mut next_chunk = NEXT_CHUNK.fetch_add(1 << 32, std::sync::atomic::Ordering::Relaxed);
    let (mut checked, mut deleted) = (0u64, 0u64);
    let mut outcome = Outcome::Done;
    tracing::info!(tables = tables.len(), %point, "snapshot recheck started");
    'tables: for (ti, table) in tables.iter().enumerate() {
        let mut tr = loaded.table(table, None).await?;
        if !tr.has_key() {
            tracing::warn!(table = %table, "table has no primary key: rows deleted while the snapshot ran are not rechecked and may stay in the sinks");
            continue;
        }
        let mut seq = 0u64;
        loop {
            if shutdown.is_cancelled() {
                outcome = Outcome::Interrupted;
                break 'tables;
            }
            let chunk = loaded.next_chunk(&mut tr, config.snapshot.chunk_rows, version, commit_ts).await?;
            let last_of_table = chunk.changes.len() < config.snapshot.chunk_rows;
            checked += chunk.changes.len() as u64;
            let gone = current.missing(&tr, &chunk.changes).await?;
            if !gone.is_empty() {
                let mut rows: Vec<Option<Change>> = chunk.changes.into_iter().map(Some).collect();
                let deletes: Vec<Change> = gone
                    .iter()
                    .filter_map(|&i| rows.get_mut(i).and_then(Option::take))
                    .map(|row| {
                        seq += 1;
                        Change {
                            op: Op::Delete,
                            old: row.new.map(|values| OldTuple { kind: OldTupleKind::Full, values }),
                            new: None,
                            seq: seq - 1,
                            ..row
                        }
                    })
                    .collect();
                deleted += deletes.len() as u64;
                tracing::debug!(table = %table, rows = deletes.len(), "rows gone since the snapshot: deleting");
                // Deletes, not reads: no snapshot markers.
                let part = UnwrittenChunk {
                    chunk: next_chunk,
                    table: Some(ti),
                    after: None,
                    rows: 0,
                    last_of_table,
                    acks: 0,
                    place: ChunkPlace::default(),
                    sync: true,
                };
                next_chunk += 1;
                if !dispatch(&mut sinks, deletes, part, exported.clone(), &mut ledger, tables, shutdown).await? {
                    outcome = Outcome::Interrupted;
                    break 'tables;
                }
            }
            if last_of_table {
                break;
            }
        }
    }
    drop(loaded);
    let outcome = wait_written(config, &mut sinks, outcome, &mut ledger, tables, shutdown).await?;
    drop(current);
    match outcome {
        Outcome::Done => {
            tracing::info!(rows = checked, deleted, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot recheck finished")
        }
        Outcome::Interrupted => tracing::warn!(rows = checked, deleted, "snapshot recheck interrupted; run the snapshot again"),
    }
    Ok(outcome)
}
