//! Segment files: their names, header, and the checksummed blocks inside them.
//!
//! A segment is `[header][block]...`. The header is `WALCLOG1`, the base LSN (the log holds
//! every commit after it from this segment on) and a CRC32C of both. A block is
//! `[len u32][crc32c u32][flags u8][payload len bytes]`, little-endian, the CRC over flags and
//! payload. Flag bit 0: the payload is `[raw length u32][zstd frame]`.
//!
//! Names: `SEQ-FIRST.open` while written, `SEQ-FIRST-LAST.seg` once sealed; SEQ orders the
//! segments (decimal, 10 digits), FIRST and LAST are the smallest and largest commit LSN the
//! segment mentions (16 hex digits: an LSN's `/` cannot be in a file name).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

use super::ChangelogError;
use crate::lsn::Lsn;

const MAGIC: &[u8; 8] = b"WALCLOG1";
/// Bytes of a segment header.
pub(super) const HEADER_LEN: u64 = 20;
/// Bytes of a block header (`len`, `crc`, `flags`).
pub(super) const BLOCK_HEADER_LEN: u64 = 9;
/// Block flag: the payload is zstd-compressed.
pub(super) const FLAG_ZSTD: u8 = 1;
/// zstd level: the library's default, fast enough to compress on every append.
const ZSTD_LEVEL: zstd_safe::CompressionLevel = 3;

/// What a segment's file name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SegmentName {
    /// Position in the log (segments are read in this order).
    pub(super) seq: u64,
    /// Smallest commit LSN in the segment.
    pub(super) first: Lsn,
    /// Largest commit LSN in the segment once sealed; `None` while it is written.
    pub(super) last: Option<Lsn>,
}

impl SegmentName {
    /// The file name.
    pub(super) fn file_name(&self) -> String {
        match self.last {
            Some(last) => format!("{:010}-{:016X}-{:016X}.seg", self.seq, self.first.0, last.0),
            None => format!("{:010}-{:016X}.open", self.seq, self.first.0),
        }
    }

    /// Parses a file name; `None` for any other file of the directory.
    pub(super) fn parse(name: &str) -> Option<Self> {
        let hex = |s: &str| (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten().map(Lsn);
        let (stem, sealed) = match (name.strip_suffix(".seg"), name.strip_suffix(".open")) {
            (Some(stem), _) => (stem, true),
            (None, Some(stem)) => (stem, false),
            (None, None) => return None,
        };
        let mut parts = stem.split('-');
        let seq = parts.next().filter(|s| s.len() == 10)?.parse().ok()?;
        let first = hex(parts.next()?)?;
        let last = if sealed { Some(hex(parts.next()?)?) } else { None };
        parts.next().is_none().then_some(Self { seq, first, last })
    }
}

/// A segment file found in the directory.
#[derive(Clone, Debug)]
pub(super) struct SegmentFile {
    /// Its name, parsed.
    pub(super) name: SegmentName,
    /// Its path.
    pub(super) path: PathBuf,
    /// Its size.
    pub(super) bytes: u64,
    /// When it was last written.
    pub(super) modified: SystemTime,
}

/// The segments of `dir`, in log order. A file that vanishes while listing (retention, a
/// rename) is left out.
pub(super) fn list(dir: &Path) -> Result<Vec<SegmentFile>, ChangelogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ChangelogError::io("list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ChangelogError::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) else { continue };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ChangelogError::io("stat", &entry.path(), e)),
        };
        out.push(SegmentFile { name, path: entry.path(), bytes: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
    }
    out.sort_by_key(|s| s.name.seq);
    Ok(out)
}

/// The header of a new segment whose log holds every commit after `base`.
pub(super) fn header(base: Lsn) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&base.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A segment's header as read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// Valid: the base LSN.
    Base(Lsn),
    /// The file is shorter than a header (a segment created just before a crash).
    Short,
    /// Not a segment header.
    Bad,
}

/// Reads a segment's header.
pub(super) fn read_header(file: &File) -> io::Result<Header> {
    let mut h = [0u8; HEADER_LEN as usize];
    if read_full_at(file, &mut h, 0)? < h.len() {
        return Ok(Header::Short);
    }
    let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if &h[..8] != MAGIC || crc32c::crc32c(&h[..16]) != crc {
        return Ok(Header::Bad);
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&h[8..16]);
    Ok(Header::Base(Lsn(u64::from_le_bytes(base))))
}

/// Starts a block at the end of `out`: room for its header, the payload to be encoded after it
/// in place; returns where the block starts (for [`finish_block`]).
pub(super) fn begin_block(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; BLOCK_HEADER_LEN as usize]);
    at
}

/// Finishes the block begun at `at` (its payload is the rest of `out`): compressed when `zstd`,
/// then its header written.
pub(super) fn finish_block(out: &mut Vec<u8>, at: usize, zstd: bool) -> io::Result<()> {
    let body = at + BLOCK_HEADER_LEN as usize;
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "a block over 4 GiB");
    let flags = if zstd {
        let raw_len = u32::try_from(out.len() - body).map_err(|_| too_big())?;
        let mut p = vec![0u8; 4 + zstd_safe::compress_bound(out.len() - body)];
        p[..4].copy_from_slice(&raw_len.to_le_bytes());
        let n = zstd_safe::compress(&mut p[4..], &out[body..], ZSTD_LEVEL)
            .map_err(|code| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code))))?;
        out.truncate(body);
        out.extend_from_slice(&p[..4 + n]);
        FLAG_ZSTD
    } else {
        0
    };
    let len = u32::try_from(out.len() - body).map_err(|_| too_big())?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[flags]), &out[body..]);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    out[at + 8] = flags;
    Ok(())
}

/// The bytes of one block holding `raw`.
#[cfg(test)]
pub(super) fn frame(raw: &[u8], zstd: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let at = begin_block(&mut out);
    out.extend_from_slice(raw);
    finish_block(&mut out, at, zstd)?;
    Ok(out)
}

/// One block read at an offset.
#[derive(Debug)]
pub(super) enum BlockRead {
    /// A complete block with a matching checksum: its decoded payload and where the next starts.
    Block {
        /// The payload, decompressed.
        payload: Bytes,
        /// Offset of the next block.
        end: u64,
    },
    /// The file ends exactly here.
    End,
    /// The file ends inside the block (a torn write, or one not finished yet).
    Incomplete,
    /// A complete block whose checksum does not match (or whose payload does not decompress).
    Bad {
        /// Where the block would end.
        end: u64,
    },
}

/// Reads the block at `offset` of `file` (whose length is `file_len`). Memory: the block only.
pub(super) fn read_block(file: &File, offset: u64, file_len: u64) -> io::Result<BlockRead> {
    let Some((len, crc, flags)) = block_header(file, offset, file_len)? else {
        return Ok(if offset >= file_len { BlockRead::End } else { BlockRead::Incomplete });
    };
    let end = offset + BLOCK_HEADER_LEN + u64::from(len);
    if end > file_len {
        return Ok(BlockRead::Incomplete);
    }
    let mut payload = vec![0u8; len as usize];
    if read_full_at(file, &mut payload, offset + BLOCK_HEADER_LEN)? < payload.len() {
        return Ok(BlockRead::Incomplete); // the file shrank meanwhile
    }
    if crc32c::crc32c_append(crc32c::crc32c(&[flags]), &payload) != crc {
        return Ok(BlockRead::Bad { end });
    }
    if flags & FLAG_ZSTD == 0 {
        return Ok(BlockRead::Block { payload: Bytes::from(payload), end });
    }
    // The raw length comes from a block whose checksum matched: the allocation is what the
    // writer had in memory.
    let Some(raw_len) = payload.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return Ok(BlockRead::Bad { end });
    };
    let mut raw = vec![0u8; raw_len];
    match zstd_safe::decompress(&mut raw[..], &payload[4..]) {
        Ok(n) if n == raw_len => Ok(BlockRead::Block { payload: Bytes::from(raw), end }),
        _ => Ok(BlockRead::Bad { end }),
    }
}

/// Checks the block at `offset` without keeping it (streamed checksum, no decompression):
/// the open of the writer checks every segment this way.
pub(super) fn check_block(file: &File, offset: u64, file_len: u64, buf: &mut [u8]) -> io::Result<BlockRead> {
    let Some((len, crc, flags)) = block_header(file, offset, file_len)? else {
        return Ok(if offset >= file_len { BlockRead::End } else { BlockRead::Incomplete });
    };
    let end = offset + BLOCK_HEADER_LEN + u64::from(len);
    if end > file_len {
        return Ok(BlockRead::Incomplete);
    }
    let mut sum = crc32c::crc32c(&[flags]);
    let mut at = offset + BLOCK_HEADER_LEN;
    while at < end {
        let n = buf.len().min((end - at) as usize);
        if read_full_at(file, &mut buf[..n], at)? < n {
            return Ok(BlockRead::Incomplete);
        }
        sum = crc32c::crc32c_append(sum, &buf[..n]);
        at += n as u64;
    }
    Ok(if sum == crc { BlockRead::Block { payload: Bytes::new(), end } } else { BlockRead::Bad { end } })
}

/// Whether a whole, valid block starts at `offset`: after a bad block, it tells damage in the
/// middle of the data (corruption) from a torn tail (zeros or garbage after a crash, where no
/// valid block follows).
pub(super) fn valid_block_at(file: &File, offset: u64, file_len: u64) -> io::Result<bool> {
    Ok(matches!(check_block(file, offset, file_len, &mut [0u8; 8192])?, BlockRead::Block { .. }))
}

fn block_header(file: &File, offset: u64, file_len: u64) -> io::Result<Option<(u32, u32, u8)>> {
    if file_len < offset + BLOCK_HEADER_LEN {
        return Ok(None);
    }
    let mut h = [0u8; BLOCK_HEADER_LEN as usize];
    if read_full_at(file, &mut h, offset)? < h.len() {
        return Ok(None);
    }
    Ok(Some((u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u32::from_le_bytes([h[4], h[5], h[6], h[7]]), h[8])))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// fsync of a directory: makes a create, rename or delete in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), ChangelogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ChangelogError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        let open = SegmentName { seq: 7, first: Lsn(0x1_0000_0020), last: None };
        assert_eq!(open.file_name(), "0000000007-0000000100000020.open");
        assert_eq!(SegmentName::parse(&open.file_name()), Some(open.clone()));
        let sealed = SegmentName { last: Some(Lsn(0x1_0000_0900)), ..open };
        assert_eq!(sealed.file_name(), "0000000007-0000000100000020-0000000100000900.seg");
        assert_eq!(SegmentName::parse(&sealed.file_name()), Some(sealed));
        for other in ["LOCK", "7-0000000100000020.open", "0000000007-00000001.seg", "0000000007-0000000100000020.seg", "x.tmp"] {
            assert_eq!(SegmentName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn blocks_frame_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let mut bytes = header(Lsn(5)).to_vec();
        bytes.extend(frame(b"hello", false).expect("frame"));
        bytes.extend(frame(&b"compressible ".repeat(100), true).expect("frame"));
        std::fs::write(&path, &bytes).expect("write");
        let file = File::open(&path).expect("open");
        let len = bytes.len() as u64;
        assert_eq!(read_header(&file).expect("header"), Header::Base(Lsn(5)));
        let BlockRead::Block { payload, end } = read_block(&file, HEADER_LEN, len).expect("read") else { panic!("block") };
        assert_eq!(&payload[..], b"hello");
        let BlockRead::Block { payload, end: last } = read_block(&file, end, len).expect("read") else { panic!("block") };
        assert_eq!(payload.len(), 1300);
        assert!(last - end < 1300, "compressed");
        assert!(matches!(read_block(&file, last, len).expect("read"), BlockRead::End));
        assert!(matches!(read_block(&file, end, len - 1).expect("read"), BlockRead::Incomplete));
        assert!(matches!(check_block(&file, end, len, &mut [0; 7]).expect("check"), BlockRead::Block { .. }));
    }
}
