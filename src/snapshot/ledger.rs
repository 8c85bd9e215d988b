//! Which snapshot chunks every sink has made durable, and the progress file that records them.
//! A chunk counts once every sink reported it written and it, or a later chunk every sink wrote,
//! asked the sinks to sync (sinks write in order, so one sync covers the chunks before it). The
//! file is saved in the background, one save at a time: the chunks finished while a save runs
//! go into the next one, so the chunk loop never waits for an fsync.

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use super::state::SnapshotState;
use super::{snapshot_state_error, SnapshotError, TableRef};
use crate::sink::{ChunkPlace, SinkReport};

/// One chunk handed to the sinks and not yet durable in all of them.
pub(super) struct UnwrittenChunk {
    pub(super) chunk: u64,
    /// The table the chunk belongs to (`None`: the re-sync's truncates).
    pub(super) table: Option<usize>,
    /// Key of the chunk's last row (resume after it), `None` for a table without a primary key.
    pub(super) after: Option<Vec<String>>,
    pub(super) rows: u64,
    pub(super) last_of_table: bool,
    pub(super) acks: usize,
    pub(super) place: ChunkPlace,
    /// The sinks make this chunk and every one before it durable before reporting it.
    pub(super) sync: bool,
}

/// The pending chunks and the progress file of one load.
pub(super) struct Ledger<'s> {
    pending: VecDeque<UnwrittenChunk>,
    state: Option<&'s mut SnapshotState>,
    /// The save in progress, on its own task.
    saving: Option<JoinHandle<std::io::Result<()>>>,
    /// Chunks were recorded since the last save started.
    dirty: bool,
    sinks: usize,
}

impl<'s> Ledger<'s> {
    /// A ledger for `sinks` sinks, recording into `state` (`None`: nothing is recorded).
    pub(super) fn new(state: Option<&'s mut SnapshotState>, sinks: usize) -> Self {
        Self { pending: VecDeque::new(), state, saving: None, dirty: false, sinks }
    }

    /// The progress, as recorded so far (maybe not saved yet).
    pub(super) fn state(&self) -> Option<&SnapshotState> {
        self.state.as_deref()
    }

    /// A chunk was handed to every sink.
    pub(super) fn push(&mut self, part: UnwrittenChunk) {
        self.pending.push_back(part);
    }

    /// Every chunk handed over was reported written by every sink (those after the last sync
    /// are written but not recorded: the next start reads them again).
    pub(super) fn all_written(&self) -> bool {
        self.pending.iter().all(|p| p.acks >= self.sinks)
    }

    /// Count one sink report; record the chunks every sink made durable, and start a save
    /// when none runs.
    pub(super) async fn absorb(&mut self, report: Option<SinkReport>, tables: &[TableRef]) -> Result<(), SnapshotError> {
        match report {
            Some(SinkReport::SnapshotChunk { chunk, .. }) => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.chunk == chunk) {
                    p.acks += 1;
                }
            }
            Some(SinkReport::Failed { error, .. }) => return Err(error.into()),
            Some(SinkReport::Durable { .. }) | None => {}
        }
        // Sinks write in order: a synced chunk every sink wrote makes the ones before it durable.
        if let Some(last) = self.pending.iter().rposition(|p| p.sync && p.acks >= self.sinks) {
            for p in self.pending.drain(..=last) {
                if let (Some(s), Some(table)) = (self.state.as_deref_mut(), p.table.and_then(|t| tables.get(t))) {
                    s.record(&table.to_string(), p.after, p.rows, p.last_of_table);
                    self.dirty = true;
                }
            }
        }
        self.save_in_background().await
    }

    /// Start a save of what was recorded, unless one is running (the next call starts it).
    async fn save_in_background(&mut self) -> Result<(), SnapshotError> {
        if self.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        if let Some(done) = self.saving.take() {
            joined(done.await)?;
        }
        if let (true, Some(s)) = (self.dirty, self.state.as_deref()) {
            self.dirty = false;
            self.saving = Some(tokio::spawn(s.save()));
        }
        Ok(())
    }

    /// Wait for the running save, then save what it did not hold: the file then records
    /// every durable chunk.
    pub(super) async fn flush(&mut self) -> Result<(), SnapshotError> {
        if let Some(running) = self.saving.take() {
            joined(running.await)?;
        }
        if let (true, Some(s)) = (self.dirty, self.state.as_deref()) {
            self.dirty = false;
            s.save().await.map_err(snapshot_state_error)?;
        }
        Ok(())
    }

    /// Change the state with `f` and save it now (after the running save).
    pub(super) async fn update(&mut self, f: impl FnOnce(&mut SnapshotState)) -> Result<(), SnapshotError> {
        if let Some(s) = self.state.as_deref_mut() {
            f(s);
            self.dirty = true;
        }
        self.flush().await
    }
}

fn joined(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), SnapshotError> {
    result
        .map_err(|e| snapshot_state_error(std::io::Error::other(format!("the task saving snapshot progress failed: {e}"))))?
        .map_err(snapshot_state_error)
}
