//! Decode throughput on the bench_rows workload: pgoutput parsing alone, parsing plus rendering
//! every inserted value to JSON, and parsing plus the whole JSON line of each change (what the
//! JSON-lines sink writes: `Change::write_json`).
//!
//! `cargo bench --bench decode` (set `WALCAST_BENCH_MESSAGES` to change the message count,
//! `WALCAST_BENCH_ROUNDS` the rounds, median printed). Rates are per core: rows over the
//! thread's own CPU time (/proc/thread-self/schedstat), so that other processes on a shared
//! machine do not lower them; the wall-clock rate is printed beside.
//! Payloads are built byte for byte as the walsender sends them for
//! `bench_rows (id bigint, a int, b text, c timestamptz, d numeric)`: a Relation message, then
//! transactions of Begin, 100 text-format Inserts, Commit.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::sync::Arc;

use walcast::decode::{parse, write_json_value, Change, Datum, Message, Op, RelationCache, TruncateOptions};
use walcast::lsn::Lsn;

/// Messages decoded per measurement, unless `WALCAST_BENCH_MESSAGES` says otherwise.
const DEFAULT_MESSAGES: usize = 2_000_000;
/// Distinct payloads, cycled through; about 15 MB, beyond the CPU caches like a real stream.
const POOL_TRANSACTIONS: usize = 1_000;
const ROWS_PER_TRANSACTION: usize = 100;
const RELATION_OID: u32 = 16_385;
/// bench_rows columns: name, type OID (int8, int4, text, timestamptz, numeric).
const COLUMNS: [(&str, u32); 5] = [("id", 20), ("a", 23), ("b", 25), ("c", 1184), ("d", 1700)];

/// Appends pgoutput fields the way the server's `pq_send*` calls do.
struct Payload(Vec<u8>);

impl Payload {
    fn new(tag: u8) -> Self {
        Payload(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn text(mut self, v: &str) -> Self {
        self.0.push(b't');
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    fn done(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// A small deterministic generator (xorshift64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn relation() -> Bytes {
    let mut p = Payload::new(b'R').u32(RELATION_OID).str("public").str("bench_rows").u8(b'd');
    p = p.i16(COLUMNS.len() as i16);
    for (i, (name, oid)) in COLUMNS.iter().enumerate() {
        p = p.u8(u8::from(i == 0)).str(name).u32(*oid).i32(-1);
    }
    p.done()
}

/// The captured stream: one Relation, then `POOL_TRANSACTIONS` transactions.
fn build_stream() -> Vec<Bytes> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut stream = vec![relation()];
    let mut lsn: u64 = 0x16_B374_D848;
    let mut id: u64 = 1;
    // 2026-11-22 16:33:20 UTC, in microseconds since 2000-01-01.
    let mut ts: i64 = 848_680_400_000_000;
    for xid in 0..POOL_TRANSACTIONS as u32 {
        let begin_lsn = lsn;
        lsn += (ROWS_PER_TRANSACTION as u64 + 2) * 120;
        stream.push(Payload::new(b'B').u64(lsn).u64(ts as u64).u32(1_000 + xid).done());
        for _ in 0..ROWS_PER_TRANSACTION {
            let r = rng.next();
            let micros = ts.rem_euclid(1_000_000);
            let secs = ts.div_euclid(1_000_000) % 60;
            let row = Payload::new(b'I')
                .u32(RELATION_OID)
                .u8(b'N')
                .i16(COLUMNS.len() as i16)
                .text(&id.to_string())
                .text(&((r >> 32) as i32).to_string())
                .text(&format!("{:016x}{:016x}", rng.next(), rng.next()))
                .text(&format!("2026-11-22 16:33:{secs:02}.{micros:06}+00"))
                .text(&format!("{}.{:02}", r % 1_000_000, r % 100));
            stream.push(row.done());
            id += 1;
            ts += 1_371;
        }
        stream.push(Payload::new(b'C').u8(0).u64(begin_lsn).u64(lsn).u64(ts as u64).done());
    }
    stream
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64() / 1e6
}

/// CPU time this thread has run, from the scheduler's accounting (nanoseconds, first field of
/// /proc/thread-self/schedstat).
fn thread_cpu() -> Result<Duration, Box<dyn Error>> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = text.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// Wall and CPU time of one measurement.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// Starts a measurement; [`Clock::stop`] ends it.
struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Result<Self, Box<dyn Error>> {
        Ok(Clock { cpu: thread_cpu()?, wall: Instant::now() })
    }
    fn stop(self) -> Result<Timing, Box<dyn Error>> {
        let wall = self.wall.elapsed();
        Ok(Timing { wall, cpu: thread_cpu()?.saturating_sub(self.cpu) })
    }
}

/// Median of the per-core (CPU time) and wall-clock rates over the rounds, M per second.
fn medians(count: usize, timings: &[Timing]) -> (f64, f64) {
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (med(timings.iter().map(|t| rate(count, t.cpu)).collect()), med(timings.iter().map(|t| rate(count, t.wall)).collect()))
}

/// Parses `n` messages, cycling through the stream.
fn parse_only(stream: &[Bytes], n: usize) -> Result<Timing, Box<dyn Error>> {
    let clock = Clock::start()?;
    for payload in stream.iter().cycle().take(n) {
        black_box(parse(black_box(payload))?);
    }
    clock.stop()
}

/// Parses `n` messages and renders every inserted value; returns the time and the row count.
fn parse_and_render(stream: &[Bytes], n: usize) -> Result<(Timing, usize), Box<dyn Error>> {
    let mut types: Vec<u32> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut rows = 0;
    let clock = Clock::start()?;
    for payload in stream.iter().cycle().take(n) {
        match parse(payload)? {
            // What the relation cache would hold: the column types, by position.
            Message::Relation(r) => types = r.columns.iter().map(|c| c.type_oid).collect(),
            Message::Insert { new, .. } => {
                out.clear();
                for (datum, &oid) in new.iter().zip(&types) {
                    match datum {
                        Datum::Text(text) => write_json_value(&mut out, oid, text)?,
                        _ => out.extend_from_slice(b"null"),
                    }
                    out.push(b',');
                }
                black_box(&out);
                rows += 1;
            }
            other => {
                black_box(other);
            }
        }
    }
    Ok((clock.stop()?, rows))
}

/// Parses `n` messages and renders each insert as its whole JSON line, as the streaming loop and
/// the JSON-lines sink do (transaction context from Begin, one `Change` per row); returns the
/// time and the row count.
fn parse_and_line(stream: &[Bytes], n: usize) -> Result<(Timing, usize), Box<dyn Error>> {
    let mut relations = RelationCache::new();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let (mut xid, mut commit_lsn, mut commit_ts, mut seq) = (0, Lsn(0), 0, 0);
    let mut rows = 0;
    let clock = Clock::start()?;
    for payload in stream.iter().cycle().take(n) {
        match parse(payload)? {
            Message::Relation(body) => {
                relations.apply_relation(body);
            }
            Message::Begin(b) => {
                (xid, commit_lsn, commit_ts, seq) = (b.xid, b.final_lsn, b.commit_ts, 0);
            }
            Message::Insert { relation, new } => {
                let change = Change {
                    lsn: Lsn(commit_lsn.0 - 64),
                    commit_lsn,
                    xid,
                    commit_ts,
                    seq,
                    relation: Arc::clone(relations.get(relation)?),
                    op: Op::Insert,
                    old: None,
                    new: Some(new),
                    truncate: TruncateOptions::default(),
                };
                seq += 1;
                change.write_json(&mut out)?;
                out.push(b'\n');
                if out.len() > 60 * 1024 {
                    black_box(&out);
                    out.clear();
                }
                rows += 1;
            }
            other => {
                black_box(other);
            }
        }
    }
    Ok((clock.stop()?, rows))
}

fn main() -> Result<(), Box<dyn Error>> {
    let n = match std::env::var("WALCAST_BENCH_MESSAGES") {
        Ok(v) => v.parse()?,
        Err(_) => DEFAULT_MESSAGES,
    };
    let rounds: usize = match std::env::var("WALCAST_BENCH_ROUNDS") {
        Ok(v) => v.parse::<usize>()?.max(1),
        Err(_) => 5,
    };
    let stream = build_stream();
    let bytes: usize = stream.iter().map(Bytes::len).sum();
    // Warm up caches and the allocator.
    parse_only(&stream, stream.len())?;
    parse_and_render(&stream, stream.len())?;
    parse_and_line(&stream, stream.len())?;

    let (mut parse_t, mut render_t, mut line_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rows, mut line_rows) = (0, 0);
    for _ in 0..rounds {
        parse_t.push(parse_only(&stream, n)?);
        let (t, r) = parse_and_render(&stream, n)?;
        render_t.push(t);
        rows = r;
        let (t, r) = parse_and_line(&stream, n)?;
        line_t.push(t);
        line_rows = r;
    }
    let (parse_cpu, parse_wall) = medians(n, &parse_t);
    let (render_cpu, render_wall) = medians(rows, &render_t);
    let (line_cpu, line_wall) = medians(line_rows, &line_t);
    println!(
        "decode, per core (CPU time), median of {rounds}: parse {parse_cpu:.1}M msgs/s; parse+json {render_cpu:.2}M rows/s (goal >= 8M rows/s/core) {}; parse+line {line_cpu:.2}M rows/s",
        if render_cpu >= 8.0 { "ok" } else { "MISSED" },
    );
    println!(
        "decode, wall clock:                parse {parse_wall:.1}M msgs/s; parse+json {render_wall:.2}M rows/s; parse+line {line_wall:.2}M rows/s ({} messages, {} inserts per round; {} distinct payloads, {:.0} bytes avg)",
        n,
        rows,
        stream.len(),
        bytes as f64 / stream.len() as f64,
    );
    Ok(())
}
