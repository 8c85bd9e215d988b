//! `walcast resync`: the way back after the slot was lost. Postgres cannot give back the changes
//! made while no slot recorded them, so the sinks can only be made equal to Postgres again by
//! removing what they hold of the tables and loading the tables anew. This step prepares that
//! (drops what is left of the slot, records a pending re-sync); the next `walcast run` creates
//! the slot with an exported snapshot, sends a re-sync truncate per table, reloads, then streams.

use super::state::{SnapshotState, Status};
use crate::config::Config;
use crate::source::{self, connect_sql, ConnParams, SourceError};

/// Prepare a re-sync; returns what was done, for the operator.
pub async fn request_resync(config: &Config) -> Result<String, SourceError> {
    let src = &config.source;
    let params = ConnParams::from_config(src).map_err(|e| SourceError::setup(e.to_string(), "fix the config file"))?;
    let client = connect_sql(&params).await?;
    let classify = |e: tokio_postgres::Error| source::classify(&e, &params);
    let mut done = Vec::new();
    if let Some(slot) = source::slot_info(&client, &src.slot).await.map_err(classify)? {
        // Never drop a slot that is not a logical slot of this database: it is someone else's.
        if slot.slot_type != "logical"
            || slot.plugin.as_deref() != Some("pgoutput")
            || slot.database.as_deref() != Some(src.database.as_str())
        {
            let (problem, fix) = slot.problem(&src.database).unwrap_or_default();
            return Err(SourceError::setup(format!("{problem}; walcast resync leaves it alone"), fix));
        }
        if slot.active {
            return Err(SourceError::setup(
                format!("slot {:?} is being streamed by process {}", src.slot, slot.active_pid.unwrap_or_default()),
                "stop every `walcast run` of this config (all replicas with [ha]) and run `walcast resync` again",
            ));
        }
        source::drop_slot(&client, &src.slot).await.map_err(classify)?;
        let at = slot.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        tracing::info!(slot = %src.slot, confirmed_flush_lsn = %at, wal_status = slot.wal_status.as_deref().unwrap_or("-"), "re-sync: dropped the slot");
        done.push(format!(
            "dropped slot {:?} (confirmed_flush_lsn {at}, wal_status {})",
            src.slot,
            slot.wal_status.as_deref().unwrap_or("-")
        ));
    }
    // "creating" + resync: `run` creates the slot and loads every table, truncates first.
    let mut state = SnapshotState::new(&config.snapshot.state_dir, &src.slot, Status::Creating);
    state.resync = true;
    state.save().await.map_err(|e| {
        SourceError::setup(
            format!("cannot record the re-sync in {}: {e}", config.snapshot.state_dir.display()),
            "make snapshot.state_dir a writable directory (the one `walcast run` uses)",
        )
    })?;
    done.push(format!("re-sync recorded in {}", SnapshotState::path_for(&config.snapshot.state_dir, &src.slot).display()));
    Ok(done.join("\n"))
}
