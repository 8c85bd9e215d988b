//! Opening the log for writing after a stop or a crash: every block checked, a torn last block
//! cut, a partial transaction at the end cut, the last segment sealed.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::record;
use super::segment::{self, BlockRead, Header, SegmentFile, SegmentName, HEADER_LEN};
use super::ChangelogError;
use crate::lsn::Lsn;

/// The log as [`recover`] left it.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Every segment, sealed, in log order.
    pub(super) segments: Vec<SegmentFile>,
    /// The last commit marker.
    pub(super) durable_end: Option<Lsn>,
    /// The sequence number of the next segment (never one used before, even by a segment cut).
    pub(super) next_seq: u64,
}

/// Checks and repairs the log in `dir` (the caller holds the writer's lock).
pub(super) fn recover(dir: &Path) -> Result<Recovered, ChangelogError> {
    let mut segs = segment::list(dir)?;
    let next_seq = segs.last().map_or(1, |s| s.name.seq + 1);
    let mut buf = vec![0u8; 64 * 1024];
    for s in segs.iter().take(segs.len().saturating_sub(1)) {
        check_whole(s, &mut buf)?;
    }
    if let Some(last) = segs.last() {
        if !cut_torn_tail(last, &mut buf)? {
            segs.pop();
        }
    }
    let mut durable_end = None;
    while let Some(last) = segs.last() {
        let scan = scan_commits(&last.path, true)?;
        match scan.last_commit {
            Some((end, lsn)) => {
                if end < file_len(&last.path)? {
                    tracing::warn!(segment = %last.path.display(), offset = end, "change log: cut a partial transaction at its end (the server sends it again whole)");
                    truncate(&last.path, end)?;
                }
                durable_end = Some(lsn);
                break;
            }
            None => {
                tracing::warn!(segment = %last.path.display(), "change log: removed a segment holding only a partial transaction (the server sends it again whole)");
                std::fs::remove_file(&last.path).map_err(|e| ChangelogError::io("remove", &last.path, e))?;
                segs.pop();
            }
        }
    }
    // Seal every segment under its final name (LAST: the largest commit LSN it holds now).
    let count = segs.len();
    for (i, s) in segs.iter().enumerate() {
        let last = if i + 1 == count {
            durable_end
        } else if s.name.last.is_none() {
            scan_commits(&s.path, true)?.max_commit
        } else {
            continue;
        };
        let Some(last) = last else { continue };
        let name = SegmentName { last: Some(last), ..s.name.clone() };
        if name != s.name {
            let to = s.path.with_file_name(name.file_name());
            std::fs::rename(&s.path, &to).map_err(|e| ChangelogError::io("rename", &s.path, e))?;
        }
    }
    segment::sync_dir(dir)?;
    Ok(Recovered { segments: segment::list(dir)?, durable_end, next_seq })
}

fn open(path: &Path) -> Result<File, ChangelogError> {
    File::open(path).map_err(|e| ChangelogError::io("open", path, e))
}

fn file_len(path: &Path) -> Result<u64, ChangelogError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| ChangelogError::io("stat", path, e))
}

fn truncate(path: &Path, len: u64) -> Result<(), ChangelogError> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| ChangelogError::io("open", path, e))?;
    f.set_len(len).and_then(|()| f.sync_all()).map_err(|e| ChangelogError::io("truncate", path, e))
}

/// A segment that is not the last: any fault is corruption.
fn check_whole(s: &SegmentFile, buf: &mut [u8]) -> Result<(), ChangelogError> {
    let file = open(&s.path)?;
    let len = file.metadata().map_err(|e| ChangelogError::io("stat", &s.path, e))?.len();
    match segment::read_header(&file).map_err(|e| ChangelogError::io("read", &s.path, e))? {
        Header::Base(_) => {}
        Header::Short | Header::Bad => return Err(ChangelogError::corrupt(&s.path, 0, "no valid segment header")),
    }
    let mut offset = HEADER_LEN;
    loop {
        match segment::check_block(&file, offset, len, buf).map_err(|e| ChangelogError::io("read", &s.path, e))? {
            BlockRead::Block { end, .. } => offset = end,
            BlockRead::End => return Ok(()),
            BlockRead::Incomplete => return Err(ChangelogError::corrupt(&s.path, offset, "a block cut short in a sealed segment")),
            BlockRead::Bad { .. } => return Err(ChangelogError::corrupt(&s.path, offset, "checksum mismatch")),
        }
    }
}

/// The last segment: a torn last block (incomplete, or a bad checksum with no valid block
/// after it: the rest of an append that never finished) is cut; a bad block followed by a
/// valid one is corruption. `false`: the segment was
/// removed (created just before a crash, no header yet).
fn cut_torn_tail(s: &SegmentFile, buf: &mut [u8]) -> Result<bool, ChangelogError> {
    let file = open(&s.path)?;
    let len = file.metadata().map_err(|e| ChangelogError::io("stat", &s.path, e))?.len();
    match segment::read_header(&file).map_err(|e| ChangelogError::io("read", &s.path, e))? {
        Header::Base(_) => {}
        Header::Short => {
            tracing::warn!(segment = %s.path.display(), bytes = len, "change log: removed a segment cut before its header was written");
            std::fs::remove_file(&s.path).map_err(|e| ChangelogError::io("remove", &s.path, e))?;
            return Ok(false);
        }
        // The header is fsynced before any block is appended: an unsealed segment no longer than
        // a header whose header is not valid (zeros after a power loss) was cut while created.
        Header::Bad if s.name.last.is_none() && len <= HEADER_LEN => {
            tracing::warn!(segment = %s.path.display(), bytes = len, "change log: removed a segment whose header was never made durable");
            std::fs::remove_file(&s.path).map_err(|e| ChangelogError::io("remove", &s.path, e))?;
            return Ok(false);
        }
        Header::Bad => return Err(ChangelogError::corrupt(&s.path, 0, "no valid segment header")),
    }
    let mut offset = HEADER_LEN;
    loop {
        match segment::check_block(&file, offset, len, buf).map_err(|e| ChangelogError::io("read", &s.path, e))? {
            BlockRead::Block { end, .. } => offset = end,
            BlockRead::End => return Ok(true),
            BlockRead::Bad { end }
                if end < len && segment::valid_block_at(&file, end, len).map_err(|e| ChangelogError::io("read", &s.path, e))? =>
            {
                return Err(ChangelogError::corrupt(&s.path, offset, "checksum mismatch"))
            }
            BlockRead::Incomplete | BlockRead::Bad { .. } => {
                tracing::warn!(segment = %s.path.display(), offset, bytes = len - offset, "change log: cut a torn last block (a crash during an append that was never acknowledged)");
                truncate(&s.path, offset)?;
                return Ok(true);
            }
        }
    }
}

/// What [`scan_commits`] found in a segment.
#[derive(Debug, Default)]
pub(super) struct CommitScan {
    /// End offset and LSN of the last block ending with a commit marker.
    pub(super) last_commit: Option<(u64, Lsn)>,
    /// The largest commit LSN any entry mentions.
    pub(super) max_commit: Option<Lsn>,
}

/// Reads a segment's blocks (one at a time) for its commit markers. `strict`: a block that is
/// not whole is corruption (the writer's recovery cut the torn tail already); otherwise the
/// scan stops there (the writer's tail, seen from another process).
pub(super) fn scan_commits(path: &Path, strict: bool) -> Result<CommitScan, ChangelogError> {
    let file = open(path)?;
    let len = file.metadata().map_err(|e| ChangelogError::io("stat", path, e))?.len();
    let mut scan = CommitScan::default();
    if !matches!(segment::read_header(&file).map_err(|e| ChangelogError::io("read", path, e))?, Header::Base(_)) {
        return Ok(scan);
    }
    let mut offset = HEADER_LEN;
    loop {
        let (payload, end) = match segment::read_block(&file, offset, len).map_err(|e| ChangelogError::io("read", path, e))? {
            BlockRead::Block { payload, end } => (payload, end),
            BlockRead::End => break,
            BlockRead::Incomplete | BlockRead::Bad { .. } if !strict => break,
            BlockRead::Incomplete => return Err(ChangelogError::corrupt(path, offset, "a block cut short")),
            BlockRead::Bad { .. } => return Err(ChangelogError::corrupt(path, offset, "a block that does not decompress")),
        };
        let entries = record::commit_positions(&payload).map_err(|e| ChangelogError::corrupt(path, offset, e.0))?;
        if let Some((_, Some(lsn))) = entries.last() {
            scan.last_commit = Some((end, *lsn));
        }
        let max = record::max_commit(&payload).map_err(|e| ChangelogError::corrupt(path, offset, e.0))?;
        scan.max_commit = scan.max_commit.max(max);
        offset = end;
    }
    Ok(scan)
}
