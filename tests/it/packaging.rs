//! Packaging, checked without a container engine (none runs here): the Dockerfile builds with a
//! stripping profile and ships that binary, its health check passes against walcast's own
//! `/healthz` and fails when nothing listens, `rust-version` is what the locked dependencies
//! need, and the snapshot state file is private. (The dead-letter file's mode is unit-tested
//! beside it, in src/sink/line_file.rs: the type is crate-private.)

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_util::sync::CancellationToken;
use walcast::snapshot::{SnapshotState, Status};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo_toml() -> toml::Table {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("read Cargo.toml");
    text.parse().expect("Cargo.toml parses")
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_image_ships_a_binary_built_by_a_stripping_profile() {
    let instructions = dockerfile();
    let build = instructions.iter().find(|i| i.starts_with("RUN") && i.contains("cargo build")).expect("a RUN with cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    let profile = words.iter().position(|w| *w == "--profile").map(|i| words[i + 1]).expect("cargo build --profile NAME");
    let manifest = cargo_toml();
    let profiles = manifest["profile"].as_table().expect("[profile]");
    let dist = profiles[profile].as_table().expect("the image's profile is in Cargo.toml");
    assert_eq!(dist.get("inherits").and_then(|v| v.as_str()), Some("release"), "{profile} builds the release code");
    assert_eq!(dist.get("strip").and_then(|v| v.as_bool()), Some(true), "{profile} strips");
    assert!(profiles["release"].get("strip").is_none(), "the release profile keeps its symbols (tests and benches use them)");
    let built = format!("target/{profile}/walcast");
    assert!(build.contains(&built), "the stage installs {built}: {build}");
    // The final stage copies what the build stage installed.
    let installed = build.split_whitespace().last().expect("install destination");
    let last_from = instructions.iter().rposition(|i| i.starts_with("FROM")).expect("FROM");
    assert!(
        instructions[last_from..].iter().any(|i| i.starts_with("COPY --from=build") && i.contains(installed)),
        "the runtime stage copies {installed}"
    );
}

#[test]
fn rust_version_is_what_the_locked_dependencies_need() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().expect("numeric version")).collect() };
    let (needed, by) = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] != "walcast")
        .filter_map(|p| Some((parse(p["rust_version"].as_str()?), p["name"].as_str()?.to_string())))
        .max()
        .expect("some dependency declares rust_version");
    let manifest = cargo_toml();
    let ours = manifest["package"]["rust-version"].as_str().expect("package.rust-version");
    let mut ours = parse(ours);
    // "1.88" means 1.88.0.
    ours.resize(needed.len().max(ours.len()), 0);
    let mut needed_full = needed.clone();
    needed_full.resize(ours.len(), 0);
    assert_eq!(ours, needed_full, "rust-version must be the locked dependencies' maximum ({by} needs {needed:?})");
}

#[tokio::test]
async fn the_image_health_check_asks_healthz() {
    let instructions = dockerfile();
    let check = instructions.iter().find(|i| i.starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    let argv: Vec<String> = serde_json::from_str(&check[check.find('[').expect("exec form")..]).expect("exec form is a JSON array");
    let run = |port: u16| {
        let argv = argv.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(&argv[0]).args(&argv[1..]).env("WALCAST_HEALTH_PORT", port.to_string()).status().expect("run the health check")
        })
    };

    let listener = walcast::metrics::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(walcast::metrics::serve(listener, walcast::metrics::Metrics::new(), shutdown.clone()));
    assert!(run(port).await.expect("join").success(), "healthy while /healthz answers");
    shutdown.cancel();
    server.await.expect("join").expect("serve");
    assert!(!run(port).await.expect("join").success(), "unhealthy when nothing listens");
}

#[tokio::test]
async fn the_snapshot_state_file_and_its_new_directory_are_private() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("state");
    SnapshotState::new(&dir, "packaging", Status::Loading).save().await.expect("save");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&SnapshotState::path_for(&dir, "packaging")), 0o600);
    assert_eq!(mode(&dir), 0o700);
}
