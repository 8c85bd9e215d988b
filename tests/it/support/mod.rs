//! Shared test support, one module per concern: `pg` (the clusters `scripts/test-env` started, a
//! database, slot and publication per test), `process` (the real `walcast` binary with a
//! generated config, a JSON-lines file sink and a debug log), `events` (the ordering contract and
//! JSON comparison of its lines), `oracle` (what the server says the transactions were), `chaos`
//! (the chaos cluster, kills, background workloads), `private_cluster` (a throwaway cluster of
//! one test), and per sink or tool `kafka`, `es`, `movies`, `obs`. Nothing here starts the
//! shared servers; tests never skip silently when they are missing.

pub mod chaos;
pub mod es;
pub mod events;
pub mod kafka;
pub mod movies;
pub mod obs;
pub mod oracle;
pub mod pg;
mod private_cluster;
pub mod process;

use std::path::PathBuf;

pub use chaos::*;
pub use events::*;
pub use oracle::*;
pub use pg::*;
pub use private_cluster::PrivateCluster;
pub use process::*;

const ENV_HINT: &str = "run `eval \"$(scripts/test-env)\"` first (or use scripts/test)";

/// A required environment variable set by `scripts/test-env`. Tests never skip silently.
pub fn env_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {ENV_HINT}"),
    }
}

/// Root of the crate (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Percent-encode a URL path segment or query value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}
