//! The writer: appends changes (group commit: one write and one fdatasync per call), rotates
//! segments, enforces retention.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::record;
use super::recover::recover;
use super::segment::{self, SegmentFile, SegmentName, HEADER_LEN};
use super::{ChangelogError, LogStats, Retention};
use crate::config::{ChangelogConfig, Compression};
use crate::decode::{Change, Op, Relation};
use crate::lsn::Lsn;

/// The change log's one writer. Holds an exclusive lock on `DIR/LOCK` while it lives.
#[derive(Debug)]
pub struct ChangeLog {
    dir: PathBuf,
    config: ChangelogConfig,
    /// Held for the flock; released when dropped (also when the process dies).
    _lock: File,
    /// Sealed segments, oldest first.
    sealed: Vec<SegmentFile>,
    /// The segment appended to; `None` until the first append after open or a rotation.
    current: Option<Current>,
    durable_end: Option<Lsn>,
    /// The transaction the last append ended inside: its commit LSN and the last position
    /// written (a resend of it after a reconnect skips what the log has).
    open_tx: Option<(Lsn, u64)>,
    /// For an empty log: it holds every commit after this ([`ChangeLog::set_start`]).
    start_after: Option<Lsn>,
    next_seq: u64,
    /// A failed append left bytes after this offset of the current segment: cut before the
    /// next write.
    torn_at: Option<u64>,
    /// The blocks of an append (kept: its capacity is reused).
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Current {
    file: File,
    name: SegmentName,
    path: PathBuf,
    len: u64,
    /// The largest commit LSN written to it.
    last: Lsn,
    /// The relation descriptions written in this segment, by OID.
    described: HashMap<u32, Arc<Relation>>,
}

/// The append buffer keeps its capacity up to this size between appends.
const KEEP_BUFFER_BYTES: usize = 16 << 20;

/// One entry of an append, in order.
enum Item<'a> {
    Change(&'a Change),
    Commit(Lsn),
}

impl ChangeLog {
    /// Opens (creating it, 0700) the log in `dir` for writing: takes the lock (another writer:
    /// [`ChangelogError::Locked`]), checks every block, cuts a torn last block and a partial
    /// transaction at the end, and seals the last segment (appends go to a new one).
    pub fn open(dir: &Path, config: &ChangelogConfig) -> Result<ChangeLog, ChangelogError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| ChangelogError::io("create", dir, e))?;
        let lock = lock(dir)?;
        let r = recover(dir)?;
        tracing::debug!(dir = %dir.display(), segments = r.segments.len(), durable_end = ?r.durable_end, "change log opened");
        Ok(ChangeLog {
            dir: dir.to_path_buf(),
            config: config.clone(),
            _lock: lock,
            sealed: r.segments,
            current: None,
            durable_end: r.durable_end,
            open_tx: None,
            start_after: None,
            next_seq: r.next_seq,
            torn_at: None,
            buf: Vec::new(),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tells an empty log where the stream starts (the slot's confirmed position): it then
    /// holds every commit after `after`, and a scan from there is not refused. Ignored once
    /// the log holds anything.
    pub fn set_start(&mut self, after: Lsn) {
        if self.sealed.is_empty() && self.current.is_none() {
            self.start_after = Some(after);
        }
    }

    /// Appends a batch: changes in stream order and the end LSN of the last commit among them
    /// (`checkpoint`, as `sink::Batch`). Written and fdatasync'ed before it returns. Skipped:
    /// snapshot rows (`Op::Read`), changes of commits at or below [`Self::durable_end`] and
    /// the part of an unfinished transaction already appended (both sent again by the server
    /// after a reconnect). Nothing to write: no I/O.
    pub fn append(&mut self, changes: &[Change], checkpoint: Option<Lsn>) -> Result<(), ChangelogError> {
        self.cut_failed_append()?;
        let checkpoint = checkpoint.filter(|&k| Some(k) > self.durable_end);
        let durable = self.durable_end;
        let open_tx = self.open_tx;
        let logged = changes.iter().filter(|c| {
            c.op != Op::Read && Some(c.commit_lsn) > durable && !open_tx.is_some_and(|(lsn, seq)| c.commit_lsn == lsn && c.seq <= seq)
        });
        // Committed part (each transaction followed by its marker), then the open one.
        let mut committed: Vec<Item<'_>> = Vec::new();
        let mut partial: Vec<&Change> = Vec::new();
        let mut group: Option<Lsn> = None;
        for c in logged {
            if checkpoint.is_some_and(|k| c.commit_lsn <= k) && partial.is_empty() {
                if group.is_some_and(|g| g != c.commit_lsn) {
                    committed.extend(group.map(Item::Commit));
                }
                group = Some(c.commit_lsn);
                committed.push(Item::Change(c));
            } else {
                if partial.last().is_some_and(|p| p.commit_lsn != c.commit_lsn) {
                    tracing::warn!(commit_lsn = %c.commit_lsn, "change log: a transaction began before the previous one ended in the batch");
                }
                partial.push(c);
            }
        }
        if let Some(k) = checkpoint {
            if group.is_some_and(|g| g != k) {
                committed.extend(group.map(Item::Commit));
            }
            committed.push(Item::Commit(k));
        }
        if committed.is_empty() && partial.is_empty() {
            return Ok(());
        }
        if let (Some((lsn, _)), Some(first)) = (open_tx, partial.first().filter(|_| committed.is_empty())) {
            if first.commit_lsn != lsn {
                tracing::warn!(open = %lsn, next = %first.commit_lsn, "change log: an unfinished transaction was not continued; it stays partial in the log");
            }
        }
        let first_lsn = match (committed.first(), partial.first()) {
            (Some(Item::Change(c)), _) => c.commit_lsn,
            (Some(Item::Commit(k)), _) => *k,
            (None, Some(c)) => c.commit_lsn,
            (None, None) => return Ok(()),
        };
        self.rotate_if_full()?;
        if self.current.is_none() {
            self.current = Some(self.create_segment(first_lsn)?);
        }
        let zstd = self.config.compression == Compression::Zstd;
        let Some(cur) = self.current.as_mut() else { return Ok(()) };
        let max = committed
            .iter()
            .map(|i| match i {
                Item::Change(c) => c.commit_lsn,
                Item::Commit(k) => *k,
            })
            .chain(partial.iter().map(|c| c.commit_lsn))
            .fold(cur.last, Lsn::max);
        // Encode in place; relations described here join `cur.described` once written.
        let mut fresh: HashMap<u32, Arc<Relation>> = HashMap::new();
        let bytes = &mut self.buf;
        bytes.clear();
        let mut put_change = |out: &mut Vec<u8>, c: &Change| {
            let known = fresh.get(&c.relation.oid).or_else(|| cur.described.get(&c.relation.oid));
            if !known.is_some_and(|k| Arc::ptr_eq(k, &c.relation) || **k == *c.relation) {
                record::put_relation(out, &c.relation);
                fresh.insert(c.relation.oid, Arc::clone(&c.relation));
            }
            record::put_change(out, c);
        };
        if !committed.is_empty() {
            let at = segment::begin_block(bytes);
            for item in &committed {
                match item {
                    Item::Change(c) => put_change(bytes, c),
                    Item::Commit(k) => record::put_commit(bytes, *k),
                }
            }
            segment::finish_block(bytes, at, zstd).map_err(|e| ChangelogError::io("compress", &cur.path, e))?;
        }
        if !partial.is_empty() {
            let at = segment::begin_block(bytes);
            partial.iter().for_each(|c| put_change(bytes, c));
            segment::finish_block(bytes, at, zstd).map_err(|e| ChangelogError::io("compress", &cur.path, e))?;
        }
        let written = write_synced(&mut cur.file, bytes, &self.dir);
        if let Err(e) = written {
            // Cut what may have reached the file, now or before the next append.
            self.torn_at = Some(cur.len);
            let _ = self.cut_failed_append();
            let path = self.current.as_ref().map_or_else(|| self.dir.clone(), |c| c.path.clone());
            return Err(ChangelogError::io("write", &path, e));
        }
        cur.len += bytes.len() as u64;
        cur.last = max;
        for (oid, rel) in fresh {
            cur.described.insert(oid, rel);
        }
        if let Some(Item::Commit(k)) = committed.last() {
            self.durable_end = Some(*k);
            self.open_tx = None;
        }
        if let Some(c) = partial.last() {
            self.open_tx = Some((c.commit_lsn, c.seq));
        }
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new(); // a batch of huge values: do not hold its size for ever
        }
        Ok(())
    }

    /// The last commit durable in the log (`None`: none yet).
    pub fn durable_end(&self) -> Option<Lsn> {
        self.durable_end
    }

    /// Bytes, segments, oldest commit and durable end.
    pub fn stats(&self) -> LogStats {
        let current = self.current.as_ref();
        LogStats {
            bytes: self.sealed.iter().map(|s| s.bytes).sum::<u64>() + current.map_or(0, |c| c.len),
            segments: self.sealed.len() + usize::from(current.is_some()),
            oldest: self.sealed.first().map(|s| s.name.first).or(current.map(|c| c.name.first)),
            durable_end: self.durable_end,
        }
    }

    /// Drops the oldest sealed segments while the log is over `retention_bytes` or they are
    /// older than `retention_hours` (last written). A segment holding a commit after one of
    /// `pins` (marks, sink cursors: each needs the commits after it) is kept unless the size
    /// limit forces its drop, which the result reports (and a warning says).
    pub fn enforce_retention(&mut self, pins: &[Lsn]) -> Result<Retention, ChangelogError> {
        let mut r = Retention::default();
        let mut total = self.stats().bytes;
        let max_age = Duration::from_secs(self.config.retention_hours.saturating_mul(3600));
        let now = SystemTime::now();
        while let Some(oldest) = self.sealed.first() {
            let over_size = self.config.retention_bytes > 0 && total > self.config.retention_bytes;
            let too_old = self.config.retention_hours > 0 && now.duration_since(oldest.modified).is_ok_and(|age| age > max_age);
            if !over_size && !too_old {
                break;
            }
            let last = oldest.name.last.unwrap_or(Lsn(u64::MAX));
            let needed: Vec<Lsn> = pins.iter().copied().filter(|&p| p < last).collect();
            if !needed.is_empty() && !over_size {
                break;
            }
            std::fs::remove_file(&oldest.path).map_err(|e| ChangelogError::io("remove", &oldest.path, e))?;
            if !needed.is_empty() {
                tracing::warn!(segment = %oldest.path.display(), pins = ?needed, retention_bytes = self.config.retention_bytes, "change log over its size limit: dropped a segment that marks or sink cursors still needed; replay from them is no longer possible (raise changelog.retention_bytes)");
                r.forced_segments += 1;
                r.lost_pins.extend(needed);
            }
            total -= oldest.bytes.min(total);
            r.dropped_segments += 1;
            r.dropped_bytes += oldest.bytes;
            self.sealed.remove(0);
        }
        if r.dropped_segments > 0 {
            segment::sync_dir(&self.dir)?;
        }
        r.lost_pins.sort();
        r.lost_pins.dedup();
        Ok(r)
    }

    /// Cuts the bytes a failed append may have left (a full disk can fail mid-write).
    fn cut_failed_append(&mut self) -> Result<(), ChangelogError> {
        let (Some(at), Some(cur)) = (self.torn_at, self.current.as_ref()) else { return Ok(()) };
        cur.file.set_len(at).and_then(|()| cur.file.sync_data()).map_err(|e| ChangelogError::io("truncate", &cur.path, e))?;
        self.torn_at = None;
        Ok(())
    }

    /// Seals the current segment once it reached `segment_bytes` (the next block starts a new one).
    fn rotate_if_full(&mut self) -> Result<(), ChangelogError> {
        if self.current.as_ref().is_none_or(|c| c.len < self.config.segment_bytes) {
            return Ok(());
        }
        let Some(cur) = self.current.as_ref() else { return Ok(()) };
        let name = SegmentName { last: Some(cur.last), ..cur.name.clone() };
        let path = self.dir.join(name.file_name());
        std::fs::rename(&cur.path, &path).map_err(|e| ChangelogError::io("rename", &cur.path, e))?;
        segment::sync_dir(&self.dir)?;
        let len = cur.len;
        self.current = None;
        self.sealed.push(SegmentFile { name, path, bytes: len, modified: SystemTime::now() });
        Ok(())
    }

    /// A new segment (header written and durable) whose first commit LSN is `first`.
    fn create_segment(&mut self, first: Lsn) -> Result<Current, ChangelogError> {
        // The log holds every commit after `base` from this segment on: what was durable
        // before it, or, when a transaction continues into it, that transaction.
        let base = match (self.open_tx, self.durable_end) {
            (Some((tx, _)), _) => tx,
            (None, Some(end)) => end,
            (None, None) => self.start_after.unwrap_or(Lsn::ZERO),
        };
        let name = SegmentName { seq: self.next_seq, first, last: None };
        let path = self.dir.join(name.file_name());
        let created = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&segment::header(base)).and_then(|()| f.sync_data()).map(|()| f));
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(ChangelogError::io("create", &path, e));
            }
        };
        segment::sync_dir(&self.dir)?;
        self.next_seq += 1;
        Ok(Current { file, name, path, len: HEADER_LEN, last: first, described: HashMap::new() })
    }
}

/// Writes `bytes` at the end of `file` and fdatasyncs it (`dir`: the log's, for the tests'
/// full disk).
fn write_synced(file: &mut File, bytes: &[u8], dir: &Path) -> std::io::Result<()> {
    full_disk_fault(file, bytes, dir)?;
    file.write_all(bytes).and_then(|()| file.sync_data())
}

#[cfg(not(test))]
fn full_disk_fault(_: &mut File, _: &[u8], _: &Path) -> std::io::Result<()> {
    Ok(())
}

/// What a full disk does to a write: part of it lands, then ENOSPC.
#[cfg(test)]
fn full_disk_fault(file: &mut File, bytes: &[u8], dir: &Path) -> std::io::Result<()> {
    match full_disk::room(dir) {
        Some(room) => {
            file.write_all(&bytes[..room.min(bytes.len())])?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        None => Ok(()),
    }
}

/// Takes the writer's exclusive lock (flock on `DIR/LOCK`, released by the kernel when the
/// process ends, so a crash never leaves it held).
fn lock(dir: &Path) -> Result<File, ChangelogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ChangelogError::io("open", &path, e))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(ChangelogError::Locked { dir: dir.to_path_buf() });
        }
        return Err(ChangelogError::io("lock", &path, e));
    }
    Ok(file)
}

/// Fault injection for unit tests: a disk that fills. Appends to a log in a listed directory
/// write at most `room` bytes, then fail with ENOSPC (as `write(2)` does on a full disk).
#[cfg(test)]
pub(crate) mod full_disk {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// `(log dir, room, failures so far)`.
    static FULL: Mutex<Vec<(PathBuf, usize, usize)>> = Mutex::new(Vec::new());

    fn full() -> std::sync::MutexGuard<'static, Vec<(PathBuf, usize, usize)>> {
        FULL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on the disk of the log in `dir` has `room` bytes left for each append
    /// (`None`: free again; the failure count is kept).
    pub(crate) fn set(dir: &Path, room: Option<usize>) {
        let mut full = full();
        match (full.iter_mut().find(|(d, ..)| d == dir), room) {
            (Some(entry), Some(room)) => entry.1 = room,
            (Some(entry), None) => entry.1 = usize::MAX,
            (None, Some(room)) => full.push((dir.to_path_buf(), room, 0)),
            (None, None) => {}
        }
    }

    /// Appends that failed for want of room in `dir`.
    pub(crate) fn failures(dir: &Path) -> usize {
        full().iter().find(|(d, ..)| d == dir).map_or(0, |e| e.2)
    }

    /// The room left for this append, counting it as a failure (`None`: not full).
    pub(super) fn room(dir: &Path) -> Option<usize> {
        let mut full = full();
        let entry = full.iter_mut().find(|(d, room, _)| d == dir && *room != usize::MAX)?;
        entry.2 += 1;
        Some(entry.1)
    }
}
