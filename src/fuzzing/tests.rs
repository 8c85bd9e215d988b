//! The committed fuzz inputs replayed through their targets by `cargo test`: the seeds
//! (`fuzz/corpus/TARGET/`) and every crash or hang a run found (`fuzz/regressions/TARGET/`,
//! each fixed, each also a unit test beside its fix). This is CI's fuzz step; the coverage-guided
//! runs are `scripts/fuzz`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::targets::TARGETS;

/// An input slower than this is a hang (libFuzzer's `-timeout` in scripts/fuzz is 10 s on an
/// optimized build; an unoptimized test build is far slower, hence the margin).
pub(super) const HANG: Duration = Duration::from_secs(60);

fn replay(dir: &str) -> usize {
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a readable corpus directory").path();
            let data = std::fs::read(&path).expect("a readable corpus file");
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target} fails on {}: see the panic above", path.display());
            assert!(start.elapsed() < HANG, "{target} hangs on {}", path.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_seed_passes_its_target() {
    let replayed = replay("corpus");
    // Every target has seeds (fuzz/seeds.py): a missing corpus would make this test vacuous.
    assert!(replayed >= TARGETS.len() * 2, "only {replayed} seeds found under fuzz/corpus/");
}

#[test]
fn every_past_crash_passes_its_target() {
    replay("regressions");
}

#[test]
fn every_fuzz_binary_has_its_target() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
    let bins = manifest.lines().filter(|l| l.starts_with("name = \"") && !l.contains("walcast-fuzz")).count();
    assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml and fuzzing::targets::TARGETS list different targets");
    for (target, _) in TARGETS {
        assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} has no binary in fuzz/Cargo.toml");
    }
}

/// Found by es_mget_answer (round 2): a stored document holding `"...\udBBBrm"`, a high surrogate
/// escape followed by a letter. That is a complete escape (RFC 8259's grammar takes any four hex
/// digits) that Elasticsearch stores and returns as it was sent, and the merge copies it as it is;
/// serde_json refuses it as "unexpected end of hex escape", which the check took for a broken
/// document because it let through only errors that name a surrogate.
#[test]
fn a_lone_high_surrogate_before_a_letter_is_copied_as_stored() {
    let input = include_bytes!("../../fuzz/regressions/es_mget_answer/lone-high-surrogate-escape-before-a-letter-in-stored-document");
    super::targets::es_mget_answer(input);
    // The smallest form: the merged document keeps the escape, byte for byte.
    let doc = br#"{"docs":[{"found":true,"_source":{"a":"x\udBBBrm","b":["\udc00",1]}}]}"#;
    let merged = super::mget_answer(doc, 1, br#"{"c":1}"#).expect("an _mget answer");
    assert_eq!(merged, [Some(br#"{"a":"x\udBBBrm","b":["\udc00",1],"c":1}"#.to_vec())]);
    super::targets::es_mget_answer(&[b"\x01", &doc[..]].concat());
}

#[test]
fn the_json_checks_read_the_grammar() {
    use super::targets::{check_json, check_stored_json};
    let refused = |check: fn(&[u8]) -> Option<serde_json::Value>, bytes: &[u8]| std::panic::catch_unwind(|| check(bytes)).is_err();
    let strict: fn(&[u8]) -> _ = |b| check_json("strict", b, true);
    let stored: fn(&[u8]) -> _ = |b| check_stored_json("stored", b);
    for ok in [&br#"{"a":"\ud83d\ude00","b":1e400}"#[..], br#""\\udbbb""#, br#"["\\","\"\\u"]"#] {
        assert!(!refused(strict, ok) && !refused(stored, ok), "{}", String::from_utf8_lossy(ok));
    }
    // Unpaired surrogates: in the grammar, kept by Elasticsearch; never out of Postgres.
    for lone in [&br#"{"a":"\udbbbrm"}"#[..], br#""\udbbb""#, br#""\udc00\ud800""#, br#"{"\udBBB":"x"}"#, br#""\\\udbbb""#] {
        assert!(refused(strict, lone), "{}", String::from_utf8_lossy(lone));
        assert!(stored(lone).is_some(), "{}", String::from_utf8_lossy(lone));
    }
    // Broken escapes and JSON that is not, either way.
    for bad in [&br#""\udbb""#[..], br#""\udbbg""#, br#""\udbbb"#, br#""\x""#, br#"{"a":1,}"#, b"\"\xff\"", br#"\udbbb"#, br#""a"1"#] {
        assert!(refused(strict, bad) && refused(stored, bad), "{}", String::from_utf8_lossy(bad));
    }
}

/// The property es_bulk_answer gained with the fix of bulk::tests::a_reason_with_a_lone_surrogate_escape_is_read:
/// an unpaired surrogate escape in a reason is text Elasticsearch writes, not a reason to refuse
/// the answer; in a name (none of Elasticsearch's) the answer may be refused.
#[test]
fn a_bulk_answer_is_not_refused_for_its_unpaired_surrogate_escapes() {
    let reason = br#"{"items":[{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"'x\udbbbrm'","caused_by":{"type":"\udc00"}}}}]}"#;
    super::targets::es_bulk_answer(&[b"\x01", &reason[..]].concat());
    let name = br#"{"items":[{"\udbbb":{"status":200}}]}"#;
    assert!(super::bulk_answer(name, 1).is_err());
    super::targets::es_bulk_answer(&[b"\x01", &name[..]].concat());
    // Found by es_bulk_answer when its property first asked this of every answer serde_json
    // refuses for its syntax: a body that is a string, not an answer, is refused for its shape
    // (serde_json reads the string to name it in the error, and says "unexpected end of hex
    // escape"). The input is in fuzz/regressions/es_bulk_answer/.
    super::targets::es_bulk_answer(b"\x01\"\\udbcby\"");
}
