//! The committed fuzz inputs replayed through their targets by `cargo test`: the seeds
//! (`fuzz/corpus/TARGET/`) and every crash or hang a run found (`fuzz/regressions/TARGET/`,
//! each fixed, each also a unit test beside its fix). This is CI's fuzz step; the coverage-guided
//! runs are `scripts/fuzz`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::targets::TARGETS;

/// An input slower than this is a hang (libFuzzer's `-timeout` in scripts/fuzz is 10 s on an
/// optimized build; an unoptimized test build is far slower, hence the margin).
const HANG: Duration = Duration::from_secs(60);

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
