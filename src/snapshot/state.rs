//! Snapshot progress on disk: `STATE_DIR/snapshot-SLOT.json`, replaced atomically (write,
//! fsync, rename) after every chunk all sinks wrote. The file is also the slot's history: it
//! exists from the moment walcast created (or first streamed) the slot, so a slot that vanished
//! afterwards is noticed instead of silently re-created (the changes in between would be lost).
//! The file (it holds primary-key values) is written 0600; a missing state directory is created
//! 0700.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// Held while a progress file is replaced.
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The slot is being created: if it exists on restart, its snapshot was never loaded.
    Creating,
    /// Tables are being loaded.
    Loading,
    /// Every table was loaded; streaming owns the slot.
    Done,
}

/// Progress of one table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableProgress {
    /// Every row was written.
    pub done: bool,
    /// Primary-key values (text) of the last written row: the load resumes after it.
    pub after: Option<Vec<String>>,
    /// Rows written so far.
    pub rows: u64,
}

/// The progress file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The slot the snapshot belongs to.
    pub slot: String,
    /// Where it stands.
    pub status: Status,
    /// The slot's consistent point: the version of every snapshot write (as `X/Y`).
    pub point: Option<String>,
    /// Start of the latest load (the `commit_ts` of its rows, microseconds since 2000): the
    /// next load takes a later time.
    #[serde(default)]
    pub load_ts: Option<i64>,
    /// Per table `schema.table`.
    pub tables: BTreeMap<String, TableProgress>,
    /// This load is a re-sync (`walcast resync`): the tables' documents/rows in the sinks are
    /// removed (truncate events) before the first chunk, so rows deleted while no slot
    /// recorded changes disappear too.
    #[serde(default)]
    pub resync: bool,
    /// The re-sync's truncates were written by every sink (they are sent once, before any chunk).
    #[serde(default)]
    pub cleared: bool,
    /// Oid of the publication the slot was streamed with: one dropped (and maybe created again)
    /// since then has another or none, and the slot cannot be decoded past the drop.
    #[serde(default)]
    pub publication_oid: Option<u32>,
    #[serde(skip)]
    path: PathBuf,
}

impl SnapshotState {
    /// The progress file of `slot` in `dir`.
    pub fn path_for(dir: &Path, slot: &str) -> PathBuf {
        dir.join(format!("snapshot-{slot}.json"))
    }

    /// Read the progress of `slot`, if a file exists.
    pub fn load(dir: &Path, slot: &str) -> std::io::Result<Option<Self>> {
        let path = Self::path_for(dir, slot);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut state: SnapshotState = serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not a snapshot progress file: {e}", path.display()))
        })?;
        state.path = path;
        Ok((state.slot == slot).then_some(state))
    }

    /// A fresh state for `slot` (not yet saved).
    pub fn new(dir: &Path, slot: &str, status: Status) -> Self {
        Self {
            slot: slot.to_string(),
            status,
            point: None,
            load_ts: None,
            tables: BTreeMap::new(),
            resync: false,
            cleared: false,
            publication_oid: None,
            path: Self::path_for(dir, slot),
        }
    }

    /// When the publication the slot was streamed with was dropped since (`now`: its oid today,
    /// `None` when missing): what happened, and the fix.
    pub fn replaced_publication(&self, publication: &str, now: Option<u32>) -> Option<(String, String)> {
        let recorded = self.publication_oid?;
        if now == Some(recorded) {
            return None;
        }
        let what = if now.is_some() { "was dropped and created again" } else { "was dropped" };
        Some((
            format!(
                "publication {publication:?} {what} after walcast streamed with it: Postgres cannot decode the slot past the drop (it fails with `publication does not exist` whatever exists now), and the changes made while it was missing were never published"
            ),
            format!("create the publication again if it is missing (or keep source.create_publication = true), then {}", crate::source::RESYNC_FIX),
        ))
    }

    /// When the slot this file belongs to no longer exists: what happened, and the fix. `None`
    /// while the file only says the slot is about to be created (then creating it is right).
    pub fn gone_slot(&self) -> Option<(String, String)> {
        if self.status == Status::Creating {
            return None;
        }
        let since = self.point.as_deref().map(|p| format!(" (consistent point {p})")).unwrap_or_default();
        Some((
            format!(
                "replication slot {:?} no longer exists, but walcast streamed from it before{since}, as {} records: it was dropped, or the server was restored or failed over without it. Changes committed since then cannot be read, so the sinks would miss deletes and updates",
                self.slot,
                self.path.display()
            ),
            format!(
                "{}; or, if the sinks may stay as they are (e.g. you dropped the slot on purpose and nothing changed), remove {} and start again",
                crate::source::RESYNC_FIX,
                self.path.display()
            ),
        ))
    }

    /// The consistent point, when recorded.
    pub fn point(&self) -> Option<Lsn> {
        self.point.as_deref().and_then(|p| p.parse().ok())
    }

    /// Progress of `table`.
    pub fn table(&self, table: &str) -> Option<&TableProgress> {
        self.tables.get(table)
    }

    /// Record a finished chunk of `table`.
    pub fn record(&mut self, table: &str, after: Option<Vec<String>>, rows: u64, done: bool) {
        let t = self.tables.entry(table.to_string()).or_default();
        // A table without a primary key has no resume point: it restarts unless done.
        t.after = after;
        t.rows = rows;
        t.done = done;
    }

    /// Replace the file atomically (write, fsync, rename, fsync the directory) on the blocking
    /// pool: an fsync can take long, and the runtime thread also reads the stream, drives the
    /// sinks and serves /metrics. What is saved is the state as it is when this is called.
    pub fn save(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        let content = serde_json::to_vec_pretty(self).map_err(std::io::Error::other);
        let path = self.path.clone();
        async move {
            let content = content?;
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || {
                // One save at a time: saves share the temporary file (a save left running by a
                // failed load may meet the next attempt's).
                let _one = SAVING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                crate::state_file::replace(&path, &path.with_extension("json.tmp"), &content)
            })
            .await
            .map_err(|e| std::io::Error::other(format!("the task saving {shown} failed: {e}")))?
        }
    }

    /// Remove the file (the slot is gone, so is its snapshot).
    pub fn remove(dir: &Path, slot: &str) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path_for(dir, slot)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn round_trip_and_resume_point() {
        let dir = std::env::temp_dir().join(format!("walcast-state-test-{}", std::process::id()));
        let mut s = SnapshotState::new(&dir, "slot_a", Status::Loading);
        s.point = Some("0/16B3748".into());
        s.record("public.t", Some(vec!["42".into()]), 5000, false);
        s.save().await.expect("save");
        let back = SnapshotState::load(&dir, "slot_a").expect("load").expect("exists");
        assert_eq!(back.status, Status::Loading);
        assert_eq!(back.point(), Some(Lsn(0x16B_3748)));
        let t = back.table("public.t").expect("table");
        assert_eq!((t.after.as_deref(), t.rows, t.done), (Some(&["42".to_string()][..]), 5000, false));
        assert!(SnapshotState::load(&dir, "other").expect("load").is_none());
        SnapshotState::remove(&dir, "slot_a").expect("remove");
        assert!(SnapshotState::load(&dir, "slot_a").expect("load").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn save_writes_the_state_as_it_was_when_called() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = SnapshotState::new(dir.path(), "slot_b", Status::Loading);
        let saving = s.save();
        // The chunk loop goes on while the file is written on the blocking pool.
        s.status = Status::Done;
        saving.await.expect("save");
        let back = SnapshotState::load(dir.path(), "slot_b").expect("load").expect("exists");
        assert_eq!(back.status, Status::Loading);
        assert!(!SnapshotState::path_for(dir.path(), "slot_b").with_extension("json.tmp").exists(), "the temporary file was renamed");
    }

    #[tokio::test]
    async fn the_state_file_is_private_and_its_missing_directory_too() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        SnapshotState::new(&dir, "slot_c", Status::Loading).save().await.expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&SnapshotState::path_for(&dir, "slot_c")), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
}
