//! The log end to end: appends, reopen after crashes (torn tails, partial transactions),
//! corruption, rotation, retention, compression, readers following the writer.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::segment::{self, HEADER_LEN};
use super::*;
use crate::config::{ChangelogConfig, Compression};
use crate::decode::{Column, Datum, OldTuple, OldTupleKind, Op, Relation, ReplicaIdentity, TruncateOptions, Tuple};

fn rel(oid: u32, cols: &[&str]) -> Arc<Relation> {
    Arc::new(Relation {
        oid,
        schema: "public".into(),
        table: format!("t{oid}"),
        replica_identity: ReplicaIdentity::Default,
        columns: cols.iter().enumerate().map(|(i, n)| Column { key: i == 0, name: (*n).into(), type_oid: 23, type_modifier: -1 }).collect(),
    })
}

fn text(s: &str) -> Datum<'_> {
    Datum::Text(s.as_bytes())
}

/// An insert of `rel` in the transaction committed at `commit`, at position `seq`.
fn ins(rel: &Arc<Relation>, commit: u64, seq: u64) -> Change {
    Change {
        lsn: Lsn(commit - 100 + seq),
        commit_lsn: Lsn(commit),
        xid: commit as u32,
        commit_ts: 1_000 + commit as i64,
        seq,
        relation: Arc::clone(rel),
        op: Op::Insert,
        old: None,
        new: Some((0..rel.columns.len()).map(|i| format!("{commit}:{seq}:{i}")).collect::<Vec<_>>().iter().map(|s| text(s)).collect()),
        truncate: TruncateOptions::default(),
    }
}

/// A transaction of `n` inserts.
fn tx(rel: &Arc<Relation>, commit: u64, n: u64) -> Vec<Change> {
    (0..n).map(|s| ins(rel, commit, s)).collect()
}

fn config() -> ChangelogConfig {
    ChangelogConfig {
        segment_bytes: ChangelogConfig::MIN_SEGMENT_BYTES,
        retention_bytes: 0,
        retention_hours: 0,
        ..ChangelogConfig::default()
    }
}

/// `(commit, seq)` of every change after `after`, and the last checkpoint seen.
fn read_all(dir: &Path, after: Lsn) -> (Vec<(u64, u64)>, Option<Lsn>) {
    let mut scan = LogReader::open(dir).expect("reader").scan_after(after).expect("scan");
    let mut out = Vec::new();
    let mut checkpoint = None;
    while let Some(b) = scan.next_batch(7).expect("batch") {
        out.extend(b.changes.iter().map(|c| (c.commit_lsn.0, c.seq)));
        checkpoint = b.checkpoint.or(checkpoint);
    }
    assert_eq!(Some(scan.position()).filter(|p| *p != after), checkpoint);
    (out, checkpoint)
}

fn ids(txs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    txs.iter().flat_map(|&(commit, n)| (0..n).map(move |s| (commit, s))).collect()
}

fn segments(dir: &Path) -> Vec<segment::SegmentFile> {
    segment::list(dir).expect("list")
}

/// Offsets of the blocks of a segment file.
fn blocks(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read");
    let mut at = HEADER_LEN as usize;
    let mut out = Vec::new();
    while at + 9 <= bytes.len() {
        out.push(at as u64);
        at += 9 + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
    }
    out
}

#[test]
fn every_kind_of_change_round_trips_through_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    let r = rel(7, &["id", "body"]);
    let base = ins(&r, 500, 0);
    let changes = vec![
        Change { new: Some(Tuple::from_datums([Datum::Null, Datum::Binary(b"\0\xff")])), ..base.clone() },
        Change {
            seq: 1,
            op: Op::Update,
            old: Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([text("1"), Datum::Null]) }),
            new: Some(Tuple::from_datums([text("1"), Datum::Unchanged])),
            ..base.clone()
        },
        Change {
            seq: 2,
            op: Op::Delete,
            old: Some(OldTuple { kind: OldTupleKind::Full, values: Tuple::from_datums([text("1"), text("x")]) }),
            new: None,
            ..base.clone()
        },
        Change {
            seq: 3,
            op: Op::Truncate,
            new: None,
            truncate: TruncateOptions { cascade: true, restart_identity: true, resync: false },
            ..base.clone()
        },
        Change {
            seq: 4,
            op: Op::Truncate,
            new: None,
            truncate: TruncateOptions { resync: true, ..TruncateOptions::default() },
            ..base.clone()
        },
    ];
    log.append(&changes, Some(Lsn(500))).expect("append");
    assert_eq!(log.durable_end(), Some(Lsn(500)));
    let mut scan = LogReader::open(dir.path()).expect("reader").scan_after(Lsn::ZERO).expect("scan");
    let batch = scan.next_batch(100).expect("read").expect("a batch");
    assert_eq!(batch.checkpoint, Some(Lsn(500)));
    assert_eq!(batch.changes.len(), changes.len());
    for (got, want) in batch.changes.iter().zip(&changes) {
        super::record::tests::assert_same(got, want);
    }
    // One Arc per relation description, as the decoder shares it.
    assert!(batch.changes.windows(2).all(|w| Arc::ptr_eq(&w[0].relation, &w[1].relation)));
    assert!(scan.next_batch(100).expect("read").is_none());
    assert_eq!(scan.position(), Lsn(500));
}

#[test]
fn a_relation_described_again_mid_segment_is_written_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = ChangeLog::open(dir.path(), &ChangelogConfig { segment_bytes: 1 << 20, ..config() }).expect("open");
    let v1 = rel(7, &["id"]);
    let v2 = rel(7, &["id", "added"]);
    let same_as_v1 = rel(7, &["id"]); // another Arc, same content: not written again
    log.append(&tx(&v1, 200, 2), Some(Lsn(200))).expect("append");
    log.append(&tx(&same_as_v1, 300, 1), Some(Lsn(300))).expect("append");
    log.append(&tx(&v2, 400, 1), Some(Lsn(400))).expect("append");
    log.append(&tx(&v1, 500, 1), Some(Lsn(500))).expect("append");
    let mut scan = LogReader::open(dir.path()).expect("reader").scan_after(Lsn::ZERO).expect("scan");
    let b = scan.next_batch(100).expect("read").expect("batch");
    let cols: Vec<usize> = b.changes.iter().map(|c| c.relation.columns.len()).collect();
    assert_eq!(cols, [1, 1, 1, 2, 1]);
    assert!(Arc::ptr_eq(&b.changes[0].relation, &b.changes[2].relation), "same description, one Arc");
    let raw = std::fs::read(&segments(dir.path())[0].path).expect("read");
    let descriptions = raw.windows(3).filter(|w| w == b"t7\x00" || w == b"\x02t7").count();
    assert!(descriptions <= 3, "v1, v2, v1 again: {descriptions}");
}

#[test]
fn snapshot_rows_and_resent_transactions_are_not_logged_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    let read = Change { op: Op::Read, ..ins(&r, 150, 0) };
    log.append(&[read], None).expect("snapshot rows: nothing written");
    assert!(segments(dir.path()).is_empty());
    log.append(&tx(&r, 200, 3), Some(Lsn(200))).expect("append");
    // A big transaction's first part, then the connection drops: the server resends it whole.
    log.append(&tx(&r, 300, 4), None).expect("append");
    let mut resent = tx(&r, 200, 3);
    resent.extend(tx(&r, 300, 6));
    log.append(&resent, Some(Lsn(300))).expect("append");
    assert_eq!(log.durable_end(), Some(Lsn(300)));
    // Nothing new: no write at all.
    let before = log.stats();
    log.append(&tx(&r, 300, 6), Some(Lsn(300))).expect("append");
    assert_eq!(log.stats(), before);
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(200, 3), (300, 6)]), Some(Lsn(300))));
}

#[test]
fn a_checkpoint_without_changes_is_a_commit_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    log.append(&tx(&r, 200, 1), Some(Lsn(200))).expect("append");
    log.append(&[], Some(Lsn(250))).expect("append");
    assert_eq!(log.durable_end(), Some(Lsn(250)));
    let mut scan = LogReader::open(dir.path()).expect("reader").scan_after(Lsn(200)).expect("scan");
    let b = scan.next_batch(10).expect("read").expect("the marker");
    assert!(b.changes.is_empty());
    assert_eq!(b.checkpoint, Some(Lsn(250)));
}

#[test]
fn a_torn_last_block_is_cut_at_every_byte() {
    let src = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    {
        let mut log = ChangeLog::open(src.path(), &ChangelogConfig { segment_bytes: 1 << 20, ..config() }).expect("open");
        log.append(&tx(&r, 200, 2), Some(Lsn(200))).expect("append");
        log.append(&tx(&r, 300, 3), Some(Lsn(300))).expect("append");
    }
    let seg = segments(src.path()).remove(0);
    let bytes = std::fs::read(&seg.path).expect("read");
    let last = *blocks(&seg.path).last().expect("blocks") as usize;
    for cut in last..bytes.len() {
        for flip in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(seg.path.file_name().expect("name"));
            let mut torn = bytes.clone();
            if flip {
                // A whole last block with a bad checksum: torn as well.
                torn[cut] ^= 0x40;
            } else {
                torn.truncate(cut);
            }
            std::fs::write(&path, &torn).expect("write");
            let log = ChangeLog::open(dir.path(), &config()).unwrap_or_else(|e| panic!("cut at {cut} (flip {flip}): {e}"));
            assert_eq!(log.durable_end(), Some(Lsn(200)), "cut at {cut} (flip {flip})");
            drop(log);
            let segs = segments(dir.path());
            assert_eq!(segs.len(), 1);
            assert_eq!(segs[0].bytes, last as u64, "cut at {cut}");
            assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(200, 2)]), Some(Lsn(200))));
        }
    }
}

#[test]
fn a_flipped_byte_in_a_middle_segment_is_corruption_naming_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    {
        let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
        for i in 1..=60 {
            log.append(&tx(&r, i * 1000, 5), Some(Lsn(i * 1000))).expect("append");
        }
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{} segments", segs.len());
    let victim = &segs[1].path;
    let offset = blocks(victim)[1];
    let f = OpenOptions::new().read(true).write(true).open(victim).expect("open");
    let mut byte = [0u8];
    use std::os::unix::fs::FileExt as _;
    f.read_exact_at(&mut byte, offset + 20).expect("read");
    f.write_all_at(&[byte[0] ^ 1], offset + 20).expect("write");
    drop(f);
    match ChangeLog::open(dir.path(), &config()) {
        Err(ChangelogError::Corrupt { segment, offset: at, .. }) => {
            assert_eq!((&segment, at), (victim, offset));
            let msg = ChangelogError::Corrupt { segment, offset: at, reason: "x".into() }.to_string();
            assert!(msg.contains(&offset.to_string()) && msg.contains("walcast snapshot") && msg.contains("aside"), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A reader stops there too, after what precedes it.
    let mut scan = LogReader::open(dir.path()).expect("reader").scan_after(Lsn::ZERO).expect("scan");
    let err = loop {
        match scan.next_batch(1000) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("read past the corruption"),
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, ChangelogError::Corrupt { segment, offset: at, .. } if segment == victim && *at == offset), "{err:?}");
}

#[test]
fn a_flipped_byte_before_the_last_block_of_the_last_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    {
        let mut log = ChangeLog::open(dir.path(), &ChangelogConfig { segment_bytes: 1 << 20, ..config() }).expect("open");
        for i in 1..=3 {
            log.append(&tx(&r, i * 1000, 2), Some(Lsn(i * 1000))).expect("append");
        }
    }
    let seg = segments(dir.path()).remove(0).path;
    let offset = blocks(&seg)[1];
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[offset as usize + 30] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write");
    let err = ChangeLog::open(dir.path(), &config()).expect_err("corrupt");
    assert!(matches!(&err, ChangelogError::Corrupt { segment, offset: at, .. } if *segment == seg && *at == offset), "{err:?}");
}

#[test]
fn a_zeroed_tail_after_a_power_loss_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    {
        let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
        log.append(&tx(&r, 1000, 2), Some(Lsn(1000))).expect("append");
    }
    let seg = segments(dir.path()).remove(0);
    let f = OpenOptions::new().write(true).open(&seg.path).expect("open");
    f.set_len(seg.bytes + 4096).expect("extend with zeros");
    drop(f);
    let log = ChangeLog::open(dir.path(), &config()).expect("open");
    assert_eq!(log.durable_end(), Some(Lsn(1000)));
    assert_eq!(segments(dir.path())[0].bytes, seg.bytes);
}

#[test]
fn a_partial_transaction_at_the_end_is_cut_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    let cfg = ChangelogConfig { segment_bytes: 1 << 20, ..config() };
    {
        let mut log = ChangeLog::open(dir.path(), &cfg).expect("open");
        // One batch: a whole transaction and the start of the next (the batch filled up).
        let mut batch = tx(&r, 200, 2);
        batch.extend(tx(&r, 300, 2));
        log.append(&batch, Some(Lsn(200))).expect("append");
        log.append(&tx(&r, 300, 4)[2..], None).expect("append");
    } // crash: 300 never committed in the log
    let mut log = ChangeLog::open(dir.path(), &cfg).expect("reopen");
    assert_eq!(log.durable_end(), Some(Lsn(200)));
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(200, 2)]), Some(Lsn(200))));
    // The server sends it again whole.
    log.append(&tx(&r, 300, 5), Some(Lsn(300))).expect("append");
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(200, 2), (300, 5)]), Some(Lsn(300))));
}

#[test]
fn a_partial_transaction_spanning_segments_is_cut_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    {
        let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
        log.append(&tx(&r, 200, 1), Some(Lsn(200))).expect("append");
        let big = tx(&r, 900, 400);
        for part in big.chunks(40) {
            log.append(part, None).expect("append");
        }
        assert!(log.stats().segments >= 3, "{:?}", log.stats());
    }
    let log = ChangeLog::open(dir.path(), &config()).expect("reopen");
    assert_eq!(log.durable_end(), Some(Lsn(200)));
    assert_eq!(log.stats().segments, 1);
    drop(log);
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(200, 1)]), Some(Lsn(200))));
}

#[test]
fn rotation_keeps_every_segment_readable_and_scans_span_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = rel(1, &["id", "v"]);
    let b = rel(2, &["k"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    let mut want = Vec::new();
    for i in 1..=80u64 {
        let r = if i % 3 == 0 { &b } else { &a };
        log.append(&tx(r, i * 1000, i % 4 + 1), Some(Lsn(i * 1000))).expect("append");
        want.push((i * 1000, i % 4 + 1));
    }
    let stats = log.stats();
    assert!(stats.segments >= 4, "{stats:?}");
    assert_eq!((stats.oldest, stats.durable_end), (Some(Lsn(1000)), Some(Lsn(80_000))));
    assert_eq!(stats.bytes, segments(dir.path()).iter().map(|s| s.bytes).sum::<u64>());
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&want), Some(Lsn(80_000))));
    // From the middle: starts in a later segment, which describes its relations itself.
    let (got, _) = read_all(dir.path(), Lsn(55_000));
    assert_eq!(got, ids(&want[55..]));
    // Sealed names carry the LSN range; a reopen seals the open segment.
    drop(log);
    let log = ChangeLog::open(dir.path(), &config()).expect("reopen");
    let segs = segments(dir.path());
    assert!(segs.iter().all(|s| s.name.last.is_some()), "{segs:?}");
    assert_eq!(segs.last().and_then(|s| s.name.last), Some(Lsn(80_000)));
    assert_eq!(LogReader::open(dir.path()).expect("reader").stats().expect("stats"), log.stats());
}

#[test]
fn zstd_blocks_round_trip_and_are_smaller() {
    let mut sizes = Vec::new();
    for compression in [Compression::None, Compression::Zstd] {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = rel(1, &["id", "a", "b", "c"]);
        let mut log = ChangeLog::open(dir.path(), &ChangelogConfig { compression, segment_bytes: 1 << 20, ..config() }).expect("open");
        for i in 1..=20 {
            log.append(&tx(&r, i * 1000, 50), Some(Lsn(i * 1000))).expect("append");
        }
        sizes.push(log.stats().bytes);
        let want: Vec<(u64, u64)> = (1..=20).map(|i| (i * 1000, 50)).collect();
        assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&want), Some(Lsn(20_000))));
        // Reopen: recovery reads compressed blocks too.
        drop(log);
        assert_eq!(ChangeLog::open(dir.path(), &config()).expect("reopen").durable_end(), Some(Lsn(20_000)));
    }
    assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
}

fn age(path: &Path, hours: u64) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(hours * 3600)).expect("set mtime");
}

#[test]
fn retention_by_age_honours_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    let cfg = ChangelogConfig { retention_hours: 24, ..config() };
    let mut log = ChangeLog::open(dir.path(), &cfg).expect("open");
    for i in 1..=60 {
        log.append(&tx(&r, i * 1000, 5), Some(Lsn(i * 1000))).expect("append");
    }
    drop(log);
    let segs = segments(dir.path());
    for s in &segs {
        age(&s.path, 48);
    }
    let mut log = ChangeLog::open(dir.path(), &cfg).expect("reopen");
    // A pin inside the third segment keeps it and everything after.
    let pin = Lsn(segs[2].name.first.0);
    let kept = log.enforce_retention(&[pin, Lsn(59_000)]).expect("retention");
    assert_eq!((kept.dropped_segments, kept.forced_segments, kept.lost_pins.len()), (2, 0, 0), "{kept:?}");
    assert_eq!(log.stats().oldest, Some(segs[2].name.first));
    // Unpinned: every old sealed segment goes.
    let all = log.enforce_retention(&[]).expect("retention");
    assert_eq!(all.dropped_segments, segs.len() - 2, "{all:?}");
    assert!(log.stats().segments == 0);
    // Scanning from before what is left: refused.
    log.append(&tx(&r, 70_000, 1), Some(Lsn(70_000))).expect("append");
    match LogReader::open(dir.path()).expect("reader").scan_after(Lsn(1000)) {
        Err(ChangelogError::NotInLog { requested, oldest, start }) => {
            assert_eq!((requested, oldest), (Lsn(1000), Lsn(70_000)));
            // What the log starts after: the pasted start gets everything it holds.
            assert_eq!(LogReader::open(dir.path()).expect("reader").start().expect("start"), Some(start));
            assert!(start < oldest);
            assert_eq!(read_all(dir.path(), start), (ids(&[(70_000, 1)]), Some(Lsn(70_000))));
        }
        other => panic!("expected NotInLog, got {other:?}"),
    }
    assert_eq!(read_all(dir.path(), Lsn(60_000)), (ids(&[(70_000, 1)]), Some(Lsn(70_000))));
}

#[test]
fn retention_by_size_drops_pinned_segments_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    let cfg = ChangelogConfig { retention_bytes: 3 * ChangelogConfig::MIN_SEGMENT_BYTES, ..config() };
    let mut log = ChangeLog::open(dir.path(), &cfg).expect("open");
    for i in 1..=60 {
        log.append(&tx(&r, i * 1000, 5), Some(Lsn(i * 1000))).expect("append");
    }
    let before = log.stats();
    let r1 = log.enforce_retention(&[Lsn(500), Lsn(2000), Lsn(60_000)]).expect("retention");
    let after = log.stats();
    assert!(after.bytes <= cfg.retention_bytes, "{after:?}");
    assert_eq!(r1.dropped_segments, before.segments - after.segments);
    assert_eq!(r1.dropped_bytes, before.bytes - after.bytes);
    assert_eq!(r1.forced_segments, r1.dropped_segments, "every dropped segment was pinned by 0/1F4");
    assert_eq!(r1.lost_pins, [Lsn(500), Lsn(2000)]);
    let oldest = after.oldest.expect("oldest");
    assert!(matches!(LogReader::open(dir.path()).expect("r").scan_after(Lsn(500)), Err(ChangelogError::NotInLog { .. })));
    // The reported start loses nothing: the scan from it begins with the oldest commit.
    let start = LogReader::open(dir.path()).expect("r").start().expect("start").expect("not empty");
    assert_eq!(read_all(dir.path(), start).0.first(), Some(&(oldest.0, 0)));
    // From the commit before the oldest kept segment on, nothing is missing.
    let (got, _) = read_all(dir.path(), Lsn(oldest.0 - 1000));
    assert_eq!(got.first(), Some(&(oldest.0, 0)));
}

#[test]
fn a_started_log_refuses_scans_from_before_its_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    log.set_start(Lsn(150));
    log.append(&tx(&r, 200, 1), Some(Lsn(200))).expect("append");
    log.set_start(Lsn(9999)); // ignored: the log holds something
    let reader = LogReader::open(dir.path()).expect("reader");
    assert!(matches!(
        reader.scan_after(Lsn(100)),
        Err(ChangelogError::NotInLog { requested: Lsn(100), oldest: Lsn(200), start: Lsn(150) })
    ));
    assert_eq!(reader.start().expect("start"), Some(Lsn(150)), "--from the log's start replays its first commit");
    assert_eq!(read_all(dir.path(), Lsn(150)), (ids(&[(200, 1)]), Some(Lsn(200))));
}

#[test]
fn a_reader_follows_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    let reader = LogReader::open(dir.path()).expect("reader");
    let mut scan = reader.scan_after(Lsn::ZERO).expect("scan of an empty log");
    assert!(scan.next_batch(10).expect("read").is_none());
    let mut got = Vec::new();
    for i in 1..=50u64 {
        // Half the transactions arrive in two appends (a batch ending inside one).
        let t = tx(&r, i * 1000, 4);
        if i % 2 == 0 {
            log.append(&t[..2], None).expect("append");
            while let Some(b) = scan.next_batch(3).expect("read") {
                got.extend(b.changes.iter().map(|c| (c.commit_lsn.0, c.seq)));
            }
            log.append(&t[2..], Some(Lsn(i * 1000))).expect("append");
        } else {
            log.append(&t, Some(Lsn(i * 1000))).expect("append");
        }
        while let Some(b) = scan.next_batch(3).expect("read") {
            got.extend(b.changes.iter().map(|c| (c.commit_lsn.0, c.seq)));
        }
        assert!(scan.next_batch(3).expect("read").is_none());
        assert_eq!(scan.position(), Lsn(i * 1000));
    }
    assert!(log.stats().segments >= 3, "the reader crossed rotations");
    let want: Vec<(u64, u64)> = (1..=50).map(|i| (i * 1000, 4)).collect();
    assert_eq!(got, ids(&want));
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = ChangeLog::open(dir.path(), &config()).expect("open");
    let err = ChangeLog::open(dir.path(), &config()).expect_err("second writer");
    assert!(matches!(err, ChangelogError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another walcast run writes"), "{err}");
    drop(log);
    ChangeLog::open(dir.path(), &config()).expect("the lock went with the first writer");
}

#[test]
fn a_full_disk_fails_the_append_durably_nothing_and_the_log_continues_whole_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id", "v"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    log.append(&tx(&r, 1000, 3), Some(Lsn(1000))).expect("append");
    let on_disk = || -> u64 { segments(dir.path()).iter().map(|s| std::fs::metadata(&s.path).expect("stat").len()).sum() };
    let before = on_disk();
    // Room for part of a block header, then for part of the payload: each append fails.
    for room in [5, 40] {
        full_disk::set(dir.path(), Some(room));
        let err = log.append(&tx(&r, 2000, 3), Some(Lsn(2000))).expect_err("no room");
        assert!(matches!(err, ChangelogError::Io { op: "write", .. }), "{err:?}");
        assert!(err.is_retryable(), "a full disk may pass: retried");
        assert!(err.to_string().contains("fix: free disk space"), "{err}");
        assert_eq!(log.durable_end(), Some(Lsn(1000)), "nothing of the failed append is durable");
        assert_eq!((log.stats().bytes, on_disk()), (before, before), "the torn bytes were cut");
        assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(1000, 3)]), Some(Lsn(1000))), "readers see no torn bytes");
    }
    assert_eq!(full_disk::failures(dir.path()), 2);
    full_disk::set(dir.path(), None);
    log.append(&tx(&r, 2000, 3), Some(Lsn(2000))).expect("room again: the same batch is appended");
    log.append(&tx(&r, 3000, 1), Some(Lsn(3000))).expect("append");
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(1000, 3), (2000, 3), (3000, 1)]), Some(Lsn(3000))));
    // A failed append, then a stop: the log reopens at its last durable commit.
    full_disk::set(dir.path(), Some(30));
    log.append(&tx(&r, 4000, 2), Some(Lsn(4000))).expect_err("no room");
    drop(log);
    let log = ChangeLog::open(dir.path(), &config()).expect("reopen");
    assert_eq!(log.durable_end(), Some(Lsn(3000)));
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(1000, 3), (2000, 3), (3000, 1)]), Some(Lsn(3000))));
}

#[test]
fn a_new_segment_whose_header_never_became_durable_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rel(1, &["id"]);
    let mut log = ChangeLog::open(dir.path(), &config()).expect("open");
    log.append(&tx(&r, 1000, 2), Some(Lsn(1000))).expect("append");
    drop(log);
    let next = segments(dir.path()).last().expect("a segment").name.seq + 1;
    // A power loss after the file's size reached the disk but not its header: zeros.
    let cut = dir.path().join(format!("{next:010}-{:016X}.open", 2000));
    std::fs::write(&cut, [0u8; HEADER_LEN as usize]).expect("write");
    let log = ChangeLog::open(dir.path(), &config()).expect("the log opens");
    assert_eq!(log.durable_end(), Some(Lsn(1000)));
    assert!(!cut.exists(), "the cut segment is removed");
    assert_eq!(read_all(dir.path(), Lsn::ZERO), (ids(&[(1000, 2)]), Some(Lsn(1000))));
    drop(log);
    // A sealed segment, or one longer than a header, with a bad header is corruption.
    let seg = segments(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg.path).expect("read");
    bytes[0] ^= 0xff;
    std::fs::write(&seg.path, &bytes).expect("write");
    let err = ChangeLog::open(dir.path(), &config()).expect_err("a damaged header");
    assert!(matches!(err, ChangelogError::Corrupt { offset: 0, .. }), "{err:?}");
}
