//! Marks: named positions in the change log (`walcast mark NAME`), taken before a deploy or a
//! risky migration so that `walcast replay --from-mark NAME` can send everything after it again.
//! A mark pins the log segments after it (within the retention limits).
//!
//! The file `STATE_DIR/marks-SLOT.json` is replaced atomically (write a temporary file, fsync,
//! rename, fsync the directory), created 0600 in a directory created 0700. Every call here is
//! blocking: async callers run it with `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// Longest mark name accepted.
const MAX_NAME_LEN: usize = 100;

/// What went wrong with the marks file or a mark name.
#[derive(Debug, thiserror::Error)]
pub enum MarksError {
    /// The file cannot be read or written.
    #[error("marks file {path}: {source}\n  fix: make snapshot.state_dir a writable directory (a persistent volume in containers)")]
    Io {
        /// The marks file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not a marks file this walcast can read.
    #[error("marks file {path} cannot be read: {reason}\n  fix: repair or remove the file (its marks are lost; the log itself is not)")]
    Corrupt {
        /// The marks file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A mark name walcast does not accept.
    #[error("invalid mark name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl MarksError {
    /// A busy or full disk may pass; a corrupt file or a bad name stays as it is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MarksError::Io { source, .. } if matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::StorageFull | std::io::ErrorKind::WouldBlock))
    }
}

/// One mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The log's durable end when the mark was taken: replaying from it sends every transaction
    /// that commits after it.
    pub lsn: Lsn,
    /// When the mark was taken, seconds since the Unix epoch.
    pub created_unix_s: u64,
}

/// The marks of one slot's log.
#[derive(Debug, Clone)]
pub struct Marks {
    path: PathBuf,
    slot: String,
    marks: BTreeMap<String, Mark>,
}

/// The file as stored (LSNs in Postgres's text form, readable by a person).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarksFile {
    slot: String,
    marks: BTreeMap<String, StoredMark>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredMark {
    lsn: String,
    created_unix_s: u64,
}

impl Marks {
    /// Where the marks of `slot` are kept.
    pub fn path_for(state_dir: &Path, slot: &str) -> PathBuf {
        state_dir.join(format!("marks-{slot}.json"))
    }

    /// The marks of `slot`; none when the file does not exist yet. Blocking.
    pub fn load(state_dir: &Path, slot: &str) -> Result<Marks, MarksError> {
        let path = Self::path_for(state_dir, slot);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Marks { path, slot: slot.to_string(), marks: BTreeMap::new() });
            }
            Err(source) => return Err(MarksError::Io { path, source }),
        };
        let corrupt = |reason: String| MarksError::Corrupt { path: path.clone(), reason };
        let file: MarksFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut marks = BTreeMap::new();
        for (name, m) in file.marks {
            let lsn = m.lsn.parse::<Lsn>().map_err(|e| corrupt(format!("mark {name:?}: {e}")))?;
            marks.insert(name, Mark { lsn, created_unix_s: m.created_unix_s });
        }
        Ok(Marks { path, slot: file.slot, marks })
    }

    /// The file these marks are kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store `lsn` under `name` (replacing a mark of that name), stamped with the current time.
    /// Only in memory until [`Marks::save`].
    pub fn set(&mut self, name: &str, lsn: Lsn) -> Result<(), MarksError> {
        validate_name(name)?;
        let created_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.marks.insert(name.to_string(), Mark { lsn, created_unix_s });
        Ok(())
    }

    /// Remove the mark `name`; returns it, `None` when there is none of that name.
    pub fn remove(&mut self, name: &str) -> Option<Mark> {
        self.marks.remove(name)
    }

    /// The mark `name`.
    pub fn get(&self, name: &str) -> Option<Mark> {
        self.marks.get(name).copied()
    }

    /// Every mark, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Mark)> + '_ {
        self.marks.iter().map(|(name, mark)| (name.as_str(), *mark))
    }

    /// The marks' LSNs (what they pin in the log).
    pub fn lsns(&self) -> Vec<Lsn> {
        self.marks.values().map(|m| m.lsn).collect()
    }

    /// Whether there is no mark.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Replace the file atomically; durable once this returns. Blocking.
    pub fn save(&self) -> Result<(), MarksError> {
        let file = MarksFile {
            slot: self.slot.clone(),
            marks: self
                .marks
                .iter()
                .map(|(name, m)| (name.clone(), StoredMark { lsn: m.lsn.to_string(), created_unix_s: m.created_unix_s }))
                .collect(),
        };
        let content =
            serde_json::to_vec_pretty(&file).map_err(|e| MarksError::Io { path: self.path.clone(), source: std::io::Error::other(e) })?;
        crate::state_file::replace(&self.path, &self.path.with_extension(format!("json.{}.tmp", std::process::id())), &content)
            .map_err(|source| MarksError::Io { path: self.path.clone(), source })
    }
}

/// Names a person types and a shell leaves alone: letters, digits, `.`, `_`, `-`, `:`.
fn validate_name(name: &str) -> Result<(), MarksError> {
    let invalid = |reason| Err(MarksError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("a mark needs a name");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("longer than 100 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')) {
        return invalid("use letters, digits, '.', '_', '-' and ':' only");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn marks_round_trip_through_a_private_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let mut marks = Marks::load(&dir, "s1").expect("no file yet");
        assert!(marks.is_empty());
        marks.set("before-deploy", Lsn(0x1_0000_0010)).expect("set");
        marks.set("v2.1:migration", Lsn(0x20)).expect("set");
        marks.save().expect("save");

        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&Marks::path_for(&dir, "s1")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let text = std::fs::read_to_string(Marks::path_for(&dir, "s1")).expect("read");
        assert!(text.contains("\"1/10\""), "LSNs are stored as Postgres writes them: {text}");

        let mut back = Marks::load(&dir, "s1").expect("load");
        assert_eq!(back.get("before-deploy").map(|m| m.lsn), Some(Lsn(0x1_0000_0010)));
        let names: Vec<_> = back.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["before-deploy", "v2.1:migration"]);
        assert_eq!(back.lsns(), [Lsn(0x1_0000_0010), Lsn(0x20)]);

        assert_eq!(back.remove("before-deploy").map(|m| m.lsn), Some(Lsn(0x1_0000_0010)));
        assert_eq!(back.remove("before-deploy"), None);
        back.save().expect("save");
        assert_eq!(Marks::load(&dir, "s1").expect("load").lsns(), [Lsn(0x20)]);
        // Another slot's marks are another file.
        assert!(Marks::load(&dir, "s2").expect("load").is_empty());
    }

    #[test]
    fn names_and_files_walcast_cannot_use_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut marks = Marks::load(tmp.path(), "s").expect("load");
        for bad in ["", "a b", "x/y", "ü", &"n".repeat(101)] {
            assert!(matches!(marks.set(bad, Lsn(1)), Err(MarksError::InvalidName { .. })), "{bad:?}");
        }
        std::fs::write(Marks::path_for(tmp.path(), "s"), b"{\"slot\":\"s\",\"marks\":{\"m\":{\"lsn\":\"zz\",\"created_unix_s\":0}}}")
            .expect("write");
        let e = Marks::load(tmp.path(), "s").expect_err("a bad LSN");
        assert!(matches!(e, MarksError::Corrupt { .. }) && e.to_string().contains("mark \"m\""), "{e}");
        assert!(!e.is_retryable());
    }
}
