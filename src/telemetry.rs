//! Logging setup: `tracing` to standard error, text or JSON, level from config or `RUST_LOG`.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Whether the installed subscriber writes JSON (stderr is then for machines).
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether logs are JSON lines: a fatal error then goes out as one log record, not as text.
pub(crate) fn logs_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Install the global subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    JSON.store(matches!(format, LogFormat::Json), Ordering::Relaxed);
    // A second init (tests) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
