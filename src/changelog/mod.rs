//! The change log: every streamed change appended to a local directory of checksummed,
//! fsynced segment files, in commit order, so sinks can be fed again from a saved LSN after
//! the slot moved on (replay, marks, decoupled sinks).
//!
//! One writer ([`ChangeLog`], holding an exclusive lock on `DIR/LOCK`) appends one group of
//! blocks per call; any number of readers ([`LogReader`], also in other processes) scan
//! while it appends. Every call here is blocking (std::fs, fsync): async callers run it with
//! `spawn_blocking`.
//!
//! Durability: an append is written and fdatasync'ed before it returns. What an append holds
//! up to its checkpoint (the end of the last commit in the batch) goes in one block ending
//! with a commit marker; the changes of a transaction still open at the batch's end go in a
//! second block after it (same write, same fsync). So everything after the last commit
//! marker is whole blocks: on open, a torn last block and a partial transaction are cut by
//! truncating the file, never by rewriting a block that holds acknowledged data.

pub mod cursors;
pub mod marks;
mod reader;
mod record;
mod recover;
mod segment;
mod writer;

use std::path::{Path, PathBuf};

pub use cursors::SinkCursors;
pub use reader::{LogReader, LogScan};
#[cfg(test)]
pub(crate) use writer::full_disk;
pub use writer::ChangeLog;

use crate::decode::Change;
use crate::lsn::Lsn;

/// What the change log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// A file operation failed (a full disk, permissions, a vanished directory): retried.
    #[error(
        "change log: cannot {op} {path}: {source}; fix: free disk space or fix the permissions of the change log directory (walcast retries and confirms nothing the log does not hold)",
        path = path.display()
    )]
    Io {
        /// What walcast was doing (`write`, `fsync`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checksum or format failure anywhere but a torn last block: never skipped.
    #[error(
        "change log segment {segment} is corrupt at byte offset {offset} ({reason}); fix: stop walcast, move the change log directory aside (keep it for a bug report) and start walcast again: a new log begins. Replay cannot go back before it; sinks that were behind the log (ack = \"decoupled\") need `walcast snapshot` to re-sync",
        segment = segment.display()
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad block (or header) in it.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Another process holds the writer's lock.
    #[error(
        "another walcast run writes the change log in {dir}; fix: stop the other `walcast run` of this slot (only one may run: see [ha]), or give this one its own changelog.dir",
        dir = dir.display()
    )]
    Locked {
        /// The log's directory.
        dir: PathBuf,
    },
    /// A scan was asked to start before what the log still holds.
    #[error(
        "the change log no longer holds the changes after {requested} (its oldest commit is {oldest}: older segments were dropped by retention, or the log started later); fix: `walcast snapshot` loads the tables again, or replay from a later LSN or mark (`--from {start}` sends every change the log holds)"
    )]
    NotInLog {
        /// The LSN asked for (changes after it).
        requested: Lsn,
        /// The oldest commit LSN the log holds.
        oldest: Lsn,
        /// The start that gets every change the log holds (`--from` is exclusive: below `oldest`).
        start: Lsn,
    },
}

impl ChangelogError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        ChangelogError::Io { op, path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(segment: &Path, offset: u64, reason: impl Into<String>) -> Self {
        ChangelogError::Corrupt { segment: segment.to_path_buf(), offset, reason: reason.into() }
    }
}

/// Changes read from the log, as the streaming loop batches them for sinks.
#[derive(Debug, Default)]
pub struct LogBatch {
    /// Changes in log order (commit order, then position in the transaction).
    pub changes: Vec<Change>,
    /// The end LSN of the last commit inside the batch (as `sink::Batch::checkpoint`): every
    /// change up to it has been returned. `None` when the batch ends inside a transaction.
    pub checkpoint: Option<Lsn>,
}

/// Size and range of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// The oldest commit LSN the log holds (`None`: empty).
    pub oldest: Option<Lsn>,
    /// The last commit durable in the log (`None`: none yet).
    pub durable_end: Option<Lsn>,
}

/// What [`ChangeLog::enforce_retention`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Segments deleted.
    pub dropped_segments: usize,
    /// Their bytes.
    pub dropped_bytes: u64,
    /// Of those, segments a pin still needed, dropped because the log was over
    /// `retention_bytes` (for `walcast_log_dropped_segments_total`).
    pub forced_segments: usize,
    /// The pins (marks, sink cursors) that lost changes they needed, ascending, each once.
    pub lost_pins: Vec<Lsn>,
}

#[cfg(test)]
mod tests;
