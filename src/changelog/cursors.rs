//! Sink cursors: each sink's durable position in the change log, kept in
//! `STATE_DIR/cursors-SLOT.json` (replaced atomically, 0600). A cursor is the highest commit end
//! LSN the sink made durable: every transaction ending at or before it is in the sink. In
//! decoupled mode a sink's follower resumes reading the log after its cursor, and cursors pin
//! the log's segments against retention.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// The cursors of one slot's sinks, as read from (and saved to) its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkCursors {
    slot: String,
    path: PathBuf,
    cursors: BTreeMap<String, Lsn>,
}

/// The file's layout: LSNs in Postgres's text form, so people can read it.
#[derive(Serialize, Deserialize)]
struct CursorFile {
    slot: String,
    cursors: BTreeMap<String, String>,
}

impl SinkCursors {
    /// The cursor file of `slot` in `state_dir`.
    pub fn path_for(state_dir: &Path, slot: &str) -> PathBuf {
        state_dir.join(format!("cursors-{slot}.json"))
    }

    /// Read the cursors of `slot` (none when the file does not exist yet). Blocking (a small
    /// read, done at start and by `walcast status`).
    pub fn load(state_dir: &Path, slot: &str) -> std::io::Result<Self> {
        let path = Self::path_for(state_dir, slot);
        let mut this = Self { slot: slot.to_string(), path, cursors: BTreeMap::new() };
        let text = match std::fs::read_to_string(&this.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(this),
            Err(e) => return Err(e),
        };
        let invalid = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a sink cursor file ({why}); fix: restore it from a backup, or remove it (each sink then reads the whole change log again)", this.path.display()),
            )
        };
        let file: CursorFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.slot != slot {
            return Err(invalid(format!("it belongs to slot {:?}, not {slot:?}", file.slot)));
        }
        for (sink, lsn) in file.cursors {
            let lsn = lsn.parse::<Lsn>().map_err(|e| invalid(format!("sink {sink}: {e}")))?;
            this.cursors.insert(sink, lsn);
        }
        Ok(this)
    }

    /// The cursor of `sink`, if it has one.
    pub fn get(&self, sink: &str) -> Option<Lsn> {
        self.cursors.get(sink).copied()
    }

    /// Move the cursor of `sink` to `lsn` (never backwards: a transaction the server sends again
    /// after a restart does not make the sink lose what it already had). Returns whether it moved.
    pub fn set(&mut self, sink: &str, lsn: Lsn) -> bool {
        match self.cursors.get_mut(sink) {
            Some(c) if *c >= lsn => false,
            Some(c) => {
                *c = lsn;
                true
            }
            None => {
                self.cursors.insert(sink.to_string(), lsn);
                true
            }
        }
    }

    /// Every sink and its cursor, by sink name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Lsn)> + '_ {
        self.cursors.iter().map(|(s, l)| (s.as_str(), *l))
    }

    /// Where the cursors are saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the file atomically (write a temporary file, fsync, rename, fsync the directory)
    /// on the blocking pool. What is saved is the cursors as they are when this is called.
    pub fn save(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        let content = self.content();
        let path = self.path.clone();
        async move {
            let content = content?;
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || crate::state_file::replace(&path, &path.with_extension("json.tmp"), &content))
                .await
                .map_err(|e| std::io::Error::other(format!("the task saving {shown} failed: {e}")))?
        }
    }

    /// [`save`](Self::save) for a caller already on the blocking pool (or a one-shot command).
    pub fn save_blocking(&self) -> std::io::Result<()> {
        crate::state_file::replace(&self.path, &self.path.with_extension("json.tmp"), &self.content()?)
    }

    fn content(&self) -> std::io::Result<Vec<u8>> {
        let file = CursorFile { slot: self.slot.clone(), cursors: self.cursors.iter().map(|(s, l)| (s.clone(), l.to_string())).collect() };
        serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn cursors_round_trip_never_move_back_and_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let mut c = SinkCursors::load(&state, "s1").expect("no file yet");
        assert_eq!(c.get("jsonl"), None);
        assert!(c.set("jsonl", Lsn(0x20)));
        assert!(c.set("elasticsearch", Lsn(0x10)));
        assert!(!c.set("jsonl", Lsn(0x18)), "a cursor never moves backwards");
        c.save().await.expect("save");
        let back = SinkCursors::load(&state, "s1").expect("load");
        assert_eq!(back, c);
        assert_eq!(back.iter().collect::<Vec<_>>(), [("elasticsearch", Lsn(0x10)), ("jsonl", Lsn(0x20))]);
        let text = std::fs::read_to_string(back.path()).expect("read");
        assert!(text.contains("\"jsonl\": \"0/20\""), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(back.path()), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert!(!back.path().with_extension("json.tmp").exists(), "the temporary file was renamed");
    }

    #[test]
    fn a_broken_or_foreign_file_is_refused_with_a_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = SinkCursors::load(dir.path(), "s2").expect("no file");
        c.set("kafka", Lsn(1));
        c.save_blocking().expect("save");
        std::fs::copy(c.path(), SinkCursors::path_for(dir.path(), "other")).expect("copy");
        let e = SinkCursors::load(dir.path(), "other").expect_err("another slot's file");
        assert!(e.to_string().contains("belongs to slot \"s2\""), "{e}");
        std::fs::write(c.path(), "{").expect("write");
        let e = SinkCursors::load(dir.path(), "s2").expect_err("not JSON");
        assert!(e.to_string().contains("fix:"), "{e}");
    }
}
