//! Logging setup: `tracing` to standard error, text or JSON, level from config or `RUST_LOG`.
//!
//! One third-party line is dropped whatever the level: the ERROR that the replication crate
//! writes each time its connection ends (`replication worker terminated with error`). The same
//! error is returned to walcast, which logs it once with its decision (a WARN naming the cause
//! and the next attempt for a routine reconnect, the fatal error and its fix otherwise), so an
//! operator never reads an ERROR for a reconnect that needs nothing from them.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Whether the installed subscriber writes JSON (stderr is then for machines).
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether logs are JSON lines: a fatal error then goes out as one log record, not as text.
pub(crate) fn logs_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The target prefix of the replication crate's events.
const REPLICATION_CRATE: &str = "pgwire_replication";

/// Whether an event is written at all: everything but the replication crate's ERROR events (see
/// the module documentation). Its debug events stay, for `RUST_LOG=pgwire_replication=debug`.
fn shown(meta: &Metadata<'_>) -> bool {
    !(*meta.level() == Level::ERROR && meta.target().starts_with(REPLICATION_CRATE))
}

/// Install the global subscriber. `RUST_LOG`, when set, wins over `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    JSON.store(matches!(format, LogFormat::Json), Ordering::Relaxed);
    let third_party = filter_fn(shown);
    // A second init (tests) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.finish().with(third_party).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).finish().with(third_party).try_init(),
    };
}

/// How a long command (a snapshot load, a replay) shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    /// A line on standard error rewritten with `\r`.
    Terminal,
    /// Log records with fields.
    Log,
}

impl ProgressMode {
    /// A rewritten line only where a person watches it: text logs to a TTY. JSON logs and
    /// files get log records (a `\r` line would corrupt them).
    pub(crate) fn detect(format: LogFormat) -> Self {
        if format == LogFormat::Text && std::io::stderr().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Log
        }
    }

    /// How often progress is shown: every second on a terminal, `log_every` as log records.
    pub(crate) fn every(self, log_every: Duration) -> Duration {
        match self {
            ProgressMode::Terminal => Duration::from_secs(1),
            ProgressMode::Log => log_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callsite's metadata at `level` and `target` (the test only reads those two).
    macro_rules! meta {
        ($level:expr, $target:expr) => {{
            struct Cs;
            impl tracing::callsite::Callsite for Cs {
                fn set_interest(&self, _: tracing::subscriber::Interest) {}
                fn metadata(&self) -> &Metadata<'_> {
                    &META
                }
            }
            static CS: Cs = Cs;
            static META: Metadata<'static> = Metadata::new(
                "event",
                $target,
                $level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
                tracing::metadata::Kind::EVENT,
            );
            &META
        }};
    }

    #[test]
    fn the_replication_crates_error_lines_are_dropped_and_nothing_else() {
        assert!(!shown(meta!(Level::ERROR, "pgwire_replication::client::tokio_client")));
        assert!(shown(meta!(Level::DEBUG, "pgwire_replication::client::worker")));
        assert!(shown(meta!(Level::ERROR, "walcast::cli")));
        assert!(shown(meta!(Level::ERROR, "librdkafka")));
        assert!(shown(meta!(Level::WARN, "walcast::retry")));
    }
}
