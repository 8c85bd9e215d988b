//! CI's bounded fuzz pass: every target's property (`targets::TARGETS`) fed mutants of its
//! committed inputs (`fuzz/corpus/TARGET/` and `fuzz/regressions/TARGET/`) for a fixed time.
//! libFuzzer does not fit CI's 5-minute step (installing cargo-fuzz and its instrumented build
//! took over 12 minutes here), so this pass mutates blindly, without coverage feedback: it finds
//! shallow faults next to the seeds, on every change; `scripts/fuzz` runs the coverage-guided
//! fuzzers for the deep ones.
//!
//! The run is `#[ignore]`d in a plain `cargo test` (it takes minutes); scripts/test runs it as
//! its `fuzz` step:
//!   cargo test --release --lib fuzzing::mutation -- --ignored --nocapture
//! Environment: `WALCAST_FUZZ_SEED` replays a run (each run prints its seed; by default it is
//! taken from the clock), `WALCAST_FUZZ_SECONDS` per target (default 20) or
//! `WALCAST_FUZZ_ITERATIONS` per target (exactly that many, whatever the time),
//! `WALCAST_FUZZ_TARGETS` a comma-separated subset. An input that fails its property is written
//! to `fuzz/artifacts/TARGET/` (where scripts/fuzz leaves its crashes) and printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::targets::{Target, TARGETS};

/// Seconds per target when `WALCAST_FUZZ_SECONDS` is not set: 7 targets take 140 s.
const DEFAULT_SECONDS: u64 = 20;

/// Mutants grow no larger than this (the largest seed is 16 KB): a blind mutator that only
/// inserts would otherwise spend the budget copying bytes.
const MAX_LEN: usize = 64 * 1024;

/// Bytes with a meaning in some format a target reads (JSON, TOML, pgoutput, array text).
const BYTES: &[u8] = b"\x00\x01\x7f\x80\xff\"\\{}[],:\n\r\t '=.-+09eEuNT#$";

/// Integers at the edges of the widths pgoutput and the value types use.
const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    16,
    64,
    127,
    128,
    255,
    256,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    -0x8000_0000,
    0xffff_ffff,
    i64::MAX,
    i64::MIN,
];

/// Tokens of the formats the targets read: JSON escapes (surrogates paired, unpaired and
/// truncated), numbers past a double's range, literals, TOML syntax, Postgres text forms and
/// bytes that are not UTF-8.
const TOKENS: &[&[u8]] = &[
    br"\u",
    br"\ud800",
    br"\udbbb",
    br"\udc00",
    br"\ud83d\ude00",
    br"\u0000",
    br"\u00",
    br#"\""#,
    br"\\",
    b"1e400",
    b"-1e-400",
    b"-0",
    b"123456789012345678901234567890",
    b"0.000000000000000000001",
    b"null",
    b"true",
    b"{}",
    b"[]",
    b"{\"a\":",
    b"[[[[[[[[",
    b"]]]]]]]]",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"NULL",
    b"\"\"",
    b"'''",
    b"\"\"\"",
    b"[[",
    b"\n[",
    b" = ",
    b"{a,\"b\\\"\"}",
    b"[0:1]=",
    b"infinity",
    b"9999-12-31 23:59:59.999999+14:59",
    b"24:00:00",
    b" BC",
    b"\xe2\x82\xac",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98",
    b"\xff\xfe",
];

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A range of `data` of at most `max` bytes (empty for empty data).
    fn range(&mut self, len: usize, max: usize) -> std::ops::Range<usize> {
        if len == 0 {
            return 0..0;
        }
        let start = self.below(len);
        start..start + 1 + self.below((len - start).min(max))
    }
}

/// An integer's bytes as pgoutput (big-endian) or a little-endian reader would see it, or as
/// decimal text.
fn int_bytes(rng: &mut Rng) -> Vec<u8> {
    let v = *rng.pick(INTS);
    match rng.below(6) {
        0 => vec![v as u8],
        1 => (v as u16).to_be_bytes().to_vec(),
        2 => (v as u32).to_be_bytes().to_vec(),
        3 => v.to_be_bytes().to_vec(),
        4 => (v as u32).to_le_bytes().to_vec(),
        _ => v.to_string().into_bytes(),
    }
}

/// Apply one random mutation to `data`; `other` is another input of the same target.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    let at = rng.below(len + 1);
    match rng.below(14) {
        0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => data[at.min(len - 1)] = rng.next() as u8,
        2 if len > 0 => data[at.min(len - 1)] = *rng.pick(BYTES),
        3 if len > 0 => {
            let b = &mut data[at.min(len - 1)];
            *b = b.wrapping_add(rng.below(33) as u8).wrapping_sub(16);
        }
        4 => {
            // Overwrite with an integer (lengths, counts, OIDs in pgoutput), or insert it.
            let int = int_bytes(rng);
            let end = (at + int.len()).min(len);
            data.splice(at..end, int);
        }
        5 | 6 => {
            let token = *rng.pick(TOKENS);
            data.splice(at..at, token.iter().copied());
        }
        7 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        8 => {
            let r = rng.range(len, 64);
            data.drain(r);
        }
        9 => data.truncate(at),
        10 => {
            // Duplicate a chunk (a repeated message, field or array element).
            let r = rng.range(len, 256);
            let chunk = data[r].to_vec();
            data.splice(at..at, chunk);
        }
        11 => {
            // Overwrite a chunk with another from the same input.
            let r = rng.range(len, 64);
            let chunk = data[r].to_vec();
            let end = (at + chunk.len()).min(len);
            data.splice(at..end, chunk);
        }
        12 => {
            // Splice: this input's head, the other's tail.
            let from = rng.below(other.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let r = rng.range(other.len(), 256);
            data.splice(at..at, other[r].iter().copied());
        }
    }
    data.truncate(MAX_LEN);
}

/// A mutant of `base`: one to sixteen mutations stacked, few more often than many.
fn mutant(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = base.to_vec();
    let most = 1 << rng.below(5);
    let rounds = 1 + rng.below(most);
    for _ in 0..rounds {
        mutate_once(rng, &mut data, other);
    }
    data
}

/// The committed inputs of `target`: its seeds and past crashes.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("a readable corpus directory").path()).collect();
        // Sorted: the same seed gives the same run on every file system.
        paths.sort();
        out.extend(paths.iter().map(|p| std::fs::read(p).expect("a readable corpus file")));
    }
    out
}

/// What one target's run came to.
struct Outcome {
    iterations: u64,
    /// The failing input, where it was written and the iteration that made it.
    failure: Option<(Vec<u8>, PathBuf, u64)>,
}

/// How long each target runs.
#[derive(Clone, Copy)]
enum Budget {
    Seconds(u64),
    Iterations(u64),
}

/// Feed `target` mutants of its committed inputs until the budget is spent or the property
/// fails (panics or takes over a minute: a hang).
fn run(target: &Target, seed: u64, budget: Budget) -> Outcome {
    let (name, check) = *target;
    let pool = inputs(name);
    assert!(!pool.is_empty(), "{name} has no committed inputs under fuzz/corpus/{name}/");
    // Each target its own sequence: a failure replays whatever the other targets' budgets.
    let mut rng = Rng(seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)));
    let start = Instant::now();
    let mut last = Vec::new();
    let mut iterations = 0;
    loop {
        match budget {
            Budget::Seconds(s) if start.elapsed() >= Duration::from_secs(s) => break,
            Budget::Iterations(n) if iterations >= n => break,
            _ => {}
        }
        // A third of the time the last mutant goes on mutating: a random walk away from the
        // seeds reaches what one to sixteen mutations do not.
        let base = if !last.is_empty() && rng.below(3) == 0 { std::mem::take(&mut last) } else { rng.pick(&pool).clone() };
        let other = rng.pick(&pool).clone();
        let data = mutant(&mut rng, &base, &other);
        iterations += 1;
        let started = Instant::now();
        let passed = std::panic::catch_unwind(|| check(&data)).is_ok();
        if !passed || started.elapsed() > super::tests::HANG {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts").join(name);
            let path = dir.join(format!("mutation-{seed}-{iterations}"));
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &data)).expect("a writable fuzz/artifacts/");
            return Outcome { iterations, failure: Some((data, path, iterations)) };
        }
        last = data;
    }
    Outcome { iterations, failure: None }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

#[test]
#[ignore = "minutes of fuzzing: scripts/test's fuzz step runs it (see the module doc)"]
fn mutants_of_the_committed_inputs_pass_their_targets() {
    let seed =
        env_u64("WALCAST_FUZZ_SEED").unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let budget = match (env_u64("WALCAST_FUZZ_ITERATIONS"), env_u64("WALCAST_FUZZ_SECONDS")) {
        (Some(n), _) => Budget::Iterations(n),
        (None, s) => Budget::Seconds(s.unwrap_or(DEFAULT_SECONDS)),
    };
    let only = std::env::var("WALCAST_FUZZ_TARGETS").unwrap_or_default();
    let only: Vec<&str> = only.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    for t in &only {
        assert!(TARGETS.iter().any(|(name, _)| name == t), "WALCAST_FUZZ_TARGETS names {t:?}, not a target");
    }
    // A line of its own: libtest has just printed the test's name without a newline.
    println!("\nfuzz: mutation pass, WALCAST_FUZZ_SEED={seed}");
    let mut failures = Vec::new();
    for target in TARGETS.iter().filter(|(name, _)| only.is_empty() || only.contains(name)) {
        let start = Instant::now();
        let outcome = run(target, seed, budget);
        let secs = start.elapsed().as_secs_f64();
        match outcome.failure {
            None => println!("fuzz: {} ok ({} inputs in {secs:.0}s)", target.0, outcome.iterations),
            Some((data, path, iteration)) => {
                let shown: String = data.escape_ascii().to_string().chars().take(2000).collect();
                println!("fuzz: {} FAILED at input {iteration} (see the panic above): {}\n  input: b\"{shown}\"", target.0, path.display());
                failures.push(format!(
                    "{} fails on {} (WALCAST_FUZZ_SEED={seed} WALCAST_FUZZ_TARGETS={} WALCAST_FUZZ_ITERATIONS={iteration} replays it; once fixed, move the file to fuzz/regressions/{}/ and add a unit test beside the fix)",
                    target.0,
                    path.display(),
                    target.0,
                    target.0
                ));
            }
        }
    }
    assert!(failures.is_empty(), "mutation pass failed:\n{}", failures.join("\n"));
}

#[test]
fn mutants_are_deterministic_and_bounded() {
    let pool = inputs("es_mget_answer");
    let walk = |seed| {
        let mut rng = Rng(seed);
        (0..500).map(|_| mutant(&mut rng, &pool[0], &pool[1])).collect::<Vec<_>>()
    };
    let a = walk(7);
    assert_eq!(a, walk(7), "one seed, one sequence");
    assert_ne!(a, walk(8));
    assert!(a.iter().all(|m| m.len() <= MAX_LEN));
    // Every kind of change happens: shorter, longer, same length but different.
    assert!(a.iter().any(|m| m.len() < pool[0].len()) && a.iter().any(|m| m.len() > pool[0].len()));
    assert!(a.iter().any(|m| m.len() == pool[0].len() && m != &pool[0]));
}

/// The pass must be able to fail: a property that refuses one byte the mutator inserts is
/// caught, its input written out.
#[test]
fn a_failing_property_is_caught_and_its_input_written() {
    fn no_quote_before_brace(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == b"\"{"), "a quote before a brace");
    }
    let outcome = run(&("es_mget_answer", no_quote_before_brace), 1, Budget::Iterations(100_000));
    let (data, path, iteration) = outcome.failure.expect("the mutator makes a quote before a brace");
    assert_eq!(std::fs::read(&path).expect("the failing input written"), data);
    assert!(data.windows(2).any(|w| w == b"\"{"));
    assert_eq!(iteration, outcome.iterations);
    std::fs::remove_file(path).expect("removed");
}
