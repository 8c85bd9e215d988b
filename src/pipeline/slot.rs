//! Slot preparation: publication and slot checked (or created) before streaming, the slot's
//! history kept in the state file, and the snapshot to load first decided.

use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::config::{Config, SnapshotMode};
use crate::lsn::Lsn;
use crate::retry::Backoff;
use crate::snapshot::{tables_to_load, SnapshotState, Status as SnapshotStatus, TableRef};
use crate::source::{self, connect_sql, ConnParams, SourceError};

/// Where streaming starts, and the snapshot to load before it.
pub(super) struct SlotStart {
    /// The slot's confirmed position (its consistent point when just created).
    pub(super) lsn: Lsn,
    /// The snapshot to load first.
    pub(super) snapshot: Option<SnapshotToLoad>,
    /// What the publication published when streaming started.
    pub(super) published: source::Published,
}

/// A snapshot to load before streaming.
pub(super) struct SnapshotToLoad {
    /// The exported snapshot of a slot just created; `None` when resuming an interrupted load.
    pub(super) exported: Option<source::ExportedSnapshot>,
    /// Its progress file.
    pub(super) state: SnapshotState,
    /// The tables to load.
    pub(super) tables: Vec<TableRef>,
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
pub(super) async fn prepare_slot(
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
                        tables_to_load(config, client).await
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
                                Some(SnapshotToLoad { exported: None, state, tables })
                            }
                        }
                        // A file of an older walcast: learn the publication now.
                        Some(mut state) if state.publication_oid.is_none() => {
                            state.publication_oid = publication_oid;
                            save(&state).await?;
                            None
                        }
                        Some(_) => None,
                        // First start on a slot made by hand (`walcast slot create` records its
                        // slot): record that it exists, so losing it later is noticed.
                        None => {
                            if snapshots {
                                let (problem, fix) = source::unrecorded_slot(&src.slot, dir);
                                tracing::warn!(slot = %src.slot, %problem, %fix, "streaming a slot the state directory has no record of; existing rows are not loaded");
                            }
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
                            "set source.create_slot = true and start `walcast run` (it creates the slot and loads the existing rows), or `walcast slot create --no-snapshot --config FILE` (existing rows are not loaded)",
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
                        snapshot: Some(SnapshotToLoad { exported: Some(exported), state, tables }),
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
                if !backoff.wait(shutdown, "cannot prepare the slot", &e).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
