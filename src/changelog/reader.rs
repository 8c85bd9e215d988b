//! Readers: scan the log from an LSN, block by block, while a writer (perhaps in another
//! process) appends, rotates and drops segments.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, Entry};
use super::recover::scan_commits;
use super::segment::{self, BlockRead, Header, SegmentFile, HEADER_LEN};
use super::{ChangelogError, LogBatch, LogStats};
use crate::decode::Relation;
use crate::lsn::Lsn;

/// Read access to a change log directory; takes no lock.
#[derive(Debug, Clone)]
pub struct LogReader {
    dir: PathBuf,
}

/// A scan of the log after an LSN: batches in log order, following the writer's tail.
#[derive(Debug)]
pub struct LogScan {
    dir: PathBuf,
    after: Lsn,
    position: Lsn,
    /// The segment being read.
    seg: Option<Reading>,
    /// The last segment read to its end (the next one read has a larger number).
    done_seq: Option<u64>,
    /// The largest commit LSN seen: a next segment whose base is past it means segments were
    /// dropped under the scan.
    seen: Lsn,
    relations: HashMap<u32, Arc<Relation>>,
    pending: VecDeque<Entry>,
}

#[derive(Debug)]
struct Reading {
    seq: u64,
    path: PathBuf,
    file: File,
    offset: u64,
}

impl LogReader {
    /// A reader of the log in `dir` (which must exist: the writer creates it).
    pub fn open(dir: &Path) -> Result<LogReader, ChangelogError> {
        let meta = std::fs::metadata(dir).map_err(|e| ChangelogError::io("open", dir, e))?;
        if !meta.is_dir() {
            return Err(ChangelogError::io("open", dir, io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
        }
        Ok(LogReader { dir: dir.to_path_buf() })
    }

    /// Bytes, segments, oldest commit and durable end, read from the files (works while a
    /// writer appends, and without one).
    pub fn stats(&self) -> Result<LogStats, ChangelogError> {
        let segs = segment::list(&self.dir)?;
        let mut durable_end = None;
        for s in segs.iter().rev() {
            match scan_commits(&s.path, false) {
                Ok(scan) => durable_end = scan.last_commit.map(|(_, lsn)| lsn),
                Err(ChangelogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            if durable_end.is_some() {
                break;
            }
        }
        Ok(LogStats {
            bytes: segs.iter().map(|s| s.bytes).sum(),
            segments: segs.len(),
            oldest: segs.first().map(|s| s.name.first),
            durable_end,
        })
    }

    /// The LSN from which a scan gets every change the log holds (`scan_after(start)`, `walcast
    /// replay --from START`): what its oldest segment starts after. Below the oldest commit,
    /// which `--from` (exclusive) would skip. `None` while the log is empty.
    pub fn start(&self) -> Result<Option<Lsn>, ChangelogError> {
        for _ in 0..RACE_RETRIES {
            let Some(s) = segment::list(&self.dir)?.into_iter().next() else { return Ok(None) };
            match open_with_base(&s)? {
                // Dropped by retention meanwhile: the next one is the oldest now.
                None => continue,
                // Being created (`None`): it holds nothing yet.
                Some((_, base)) => return Ok(base),
            }
        }
        Ok(None)
    }

    /// A scan returning the changes with a commit LSN after `after`.
    /// [`ChangelogError::NotInLog`] when the log no longer holds all of them.
    pub fn scan_after(&self, after: Lsn) -> Result<LogScan, ChangelogError> {
        let mut scan = LogScan {
            dir: self.dir.clone(),
            after,
            position: after,
            seg: None,
            done_seq: None,
            seen: after,
            relations: HashMap::new(),
            pending: VecDeque::new(),
        };
        // Segments that end at or before `after` are not read.
        for _ in 0..RACE_RETRIES {
            let segs = segment::list(&self.dir)?;
            let Some(start) = segs.iter().position(|s| s.name.last.is_none_or(|last| last > after)) else {
                scan.done_seq = segs.last().map(|s| s.name.seq);
                return Ok(scan);
            };
            match scan.open_segment(&segs[start], after, after)? {
                Opened::Reading(reading) => {
                    scan.seg = Some(reading);
                    return Ok(scan);
                }
                Opened::NotYet => {
                    scan.done_seq = start.checked_sub(1).map(|i| segs[i].name.seq);
                    return Ok(scan);
                }
                Opened::Vanished => continue,
            }
        }
        Err(ChangelogError::io("open", &self.dir, io::Error::other("segments keep changing under the reader")))
    }
}

/// What opening a segment found.
#[derive(Debug)]
enum Opened {
    /// Ready to read its first block.
    Reading(Reading),
    /// Renamed (sealed) or dropped between the listing and the open: list again.
    Vanished,
    /// Created this instant: its header is not written yet.
    NotYet,
}

/// How often a scan lists the directory again when a segment vanished between the listing and
/// its open (renamed when sealed, or dropped).
const RACE_RETRIES: usize = 5;

impl LogScan {
    /// Up to `max_changes` changes after the scan's LSN, in log order (a following commit
    /// marker is taken along). `Ok(None)` at the log's current end; call again later to
    /// continue from there (the writer may have appended meanwhile).
    pub fn next_batch(&mut self, max_changes: usize) -> Result<Option<LogBatch>, ChangelogError> {
        let max = max_changes.max(1);
        let mut batch = LogBatch::default();
        loop {
            while let Some(entry) = self.pending.pop_front() {
                match entry {
                    Entry::Change(c) => batch.changes.push(c),
                    Entry::Commit(lsn) => {
                        batch.checkpoint = Some(lsn);
                        self.position = lsn;
                    }
                }
                if batch.changes.len() >= max {
                    if let Some(Entry::Commit(lsn)) = self.pending.front() {
                        batch.checkpoint = Some(*lsn);
                        self.position = *lsn;
                        self.pending.pop_front();
                    }
                    return Ok(Some(batch));
                }
            }
            if !self.read_block()? {
                break;
            }
        }
        Ok((!batch.changes.is_empty() || batch.checkpoint.is_some()).then_some(batch))
    }

    /// The LSN of the last commit fully returned (the scan's start before any).
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Decodes the next block into `pending`; `false` at the log's current end.
    fn read_block(&mut self) -> Result<bool, ChangelogError> {
        loop {
            let Some(reading) = self.seg.as_mut() else {
                if !self.open_next()? {
                    return Ok(false);
                }
                continue;
            };
            let len = reading.file.metadata().map_err(|e| ChangelogError::io("stat", &reading.path, e))?.len();
            let read = segment::read_block(&reading.file, reading.offset, len).map_err(|e| ChangelogError::io("read", &reading.path, e))?;
            let read = match read {
                BlockRead::Block { .. } => read,
                BlockRead::Bad { end }
                    if end < len
                        && segment::valid_block_at(&reading.file, end, len)
                            .map_err(|e| ChangelogError::io("read", &reading.path, e))? =>
                {
                    return Err(ChangelogError::corrupt(&reading.path, reading.offset, "checksum mismatch"))
                }
                _ => {
                    // The end of what is written. A later segment means this one is sealed:
                    // read once more (it may have grown before the rotation), then move on.
                    let seq = reading.seq;
                    if !self.later_segment_exists(seq)? {
                        return Ok(false);
                    }
                    let Some(reading) = self.seg.as_mut() else { return Ok(false) };
                    let len = reading.file.metadata().map_err(|e| ChangelogError::io("stat", &reading.path, e))?.len();
                    match segment::read_block(&reading.file, reading.offset, len)
                        .map_err(|e| ChangelogError::io("read", &reading.path, e))?
                    {
                        BlockRead::End => {
                            self.done_seq = Some(seq);
                            self.seg = None;
                            self.relations.clear();
                            continue;
                        }
                        BlockRead::Incomplete => {
                            return Err(ChangelogError::corrupt(&reading.path, reading.offset, "a block cut short in a sealed segment"))
                        }
                        BlockRead::Bad { .. } => return Err(ChangelogError::corrupt(&reading.path, reading.offset, "checksum mismatch")),
                        read @ BlockRead::Block { .. } => read,
                    }
                }
            };
            let Some(reading) = self.seg.as_mut() else { return Ok(false) };
            let BlockRead::Block { payload, end } = read else { return Ok(false) };
            let max = record::max_commit(&payload).map_err(|e| ChangelogError::corrupt(&reading.path, reading.offset, e.0))?;
            let entries = record::decode_block(&payload, &mut self.relations, self.after)
                .map_err(|e| ChangelogError::corrupt(&reading.path, reading.offset, e.0))?;
            self.seen = self.seen.max(max.unwrap_or(Lsn::ZERO));
            self.pending.extend(entries);
            reading.offset = end;
            return Ok(true);
        }
    }

    fn later_segment_exists(&self, seq: u64) -> Result<bool, ChangelogError> {
        Ok(segment::list(&self.dir)?.iter().any(|s| s.name.seq > seq))
    }

    /// Opens the segment after the last one read; `false` when there is none yet.
    fn open_next(&mut self) -> Result<bool, ChangelogError> {
        for _ in 0..RACE_RETRIES {
            let segs = segment::list(&self.dir)?;
            let Some(next) = segs.iter().find(|s| self.done_seq.is_none_or(|done| s.name.seq > done)) else { return Ok(false) };
            match self.open_segment(next, self.seen, self.position)? {
                Opened::Reading(reading) => {
                    self.seg = Some(reading);
                    return Ok(true);
                }
                Opened::NotYet => return Ok(false),
                Opened::Vanished => continue,
            }
        }
        Ok(false)
    }

    /// Opens a segment to read from its first block, after checking that the log holds every
    /// commit after `need` from it on (else [`ChangelogError::NotInLog`] for `requested`).
    fn open_segment(&self, s: &SegmentFile, need: Lsn, requested: Lsn) -> Result<Opened, ChangelogError> {
        match open_with_base(s)? {
            None => Ok(Opened::Vanished),
            Some((_, None)) => Ok(Opened::NotYet),
            Some((_, Some(base))) if base > need => Err(ChangelogError::NotInLog { requested, oldest: s.name.first, start: base }),
            Some((file, Some(_))) => Ok(Opened::Reading(Reading { seq: s.name.seq, path: s.path.clone(), file, offset: HEADER_LEN })),
        }
    }
}

/// Segment `s` opened, with the base its header records (the log holds every commit after it
/// from this segment on); the base is `None` while the segment is being created (its header not
/// written yet). `None` when the segment is gone (retention dropped it meanwhile).
fn open_with_base(s: &SegmentFile) -> Result<Option<(File, Option<Lsn>)>, ChangelogError> {
    let file = match File::open(&s.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ChangelogError::io("open", &s.path, e)),
    };
    let base = match segment::read_header(&file).map_err(|e| ChangelogError::io("read", &s.path, e))? {
        Header::Base(base) => Some(base),
        Header::Short if s.name.last.is_none() => None,
        Header::Short | Header::Bad => return Err(ChangelogError::corrupt(&s.path, 0, "no valid segment header")),
    };
    Ok(Some((file, base)))
}
