//! The error policy: what the process does about each kind of error. Retry loops ask an error's
//! `is_retryable()`, the command line asks its `action()` for the exit code, and both answers
//! come from here, so they cannot disagree. ARCHITECTURE.md ("Errors") shows the same table.
//!
//! Dead letters are decided per record inside a sink (an Elasticsearch bulk item the cluster
//! refuses for good, a Kafka record the broker never takes, a change a document rule cannot
//! route): such a record is set aside and the stream goes on, so no error of the enums below
//! reaches the process for it.

use crate::changelog::ChangelogError;
use crate::config::ConfigError;
use crate::decode::DecodeError;
use crate::pipeline::PipelineError;
use crate::replay::ReplayError;
use crate::sink::SinkError;
use crate::snapshot::SnapshotError;
use crate::source::{SourceError, Step};

/// Exit code: a runtime failure not covered below.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the config file is missing or invalid.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: the setup is wrong (wal_level, privileges, missing slot, an unwritable
/// `snapshot.state_dir`...); the message says how to fix it.
pub const EXIT_SETUP: u8 = 3;
/// Exit code: a sink failed for good.
pub const EXIT_SINK: u8 = 4;

/// What the process does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try again after a backoff delay (logged, counted; the stream reconnects from the slot's
    /// confirmed position, so nothing is lost).
    Retry,
    /// Set the record aside in the sink's dead-letter destination and go on.
    DeadLetter,
    /// Stop with this exit code, printing the error and its fix.
    Stop(u8),
}

impl Action {
    /// The exit code when an error with this action ends a command. A retryable error ends only
    /// a one-shot command (`slot`, `resync`, `snapshot` do not retry): a runtime failure.
    pub fn exit_code(self) -> u8 {
        match self {
            Action::Stop(code) => code,
            Action::Retry | Action::DeadLetter => EXIT_FAILURE,
        }
    }
}

/// One row of the SQLSTATE table.
pub(crate) struct SqlstateRule {
    /// A full SQLSTATE, or a class (its first two characters).
    pub(crate) code: &'static str,
    /// Only at this step (`None`: at any).
    pub(crate) step: Option<Step>,
    /// What the process does.
    pub(crate) action: Action,
    /// What it means, and the fix when it stops.
    pub(crate) fix: &'static str,
}

const fn rule(code: &'static str, step: Option<Step>, action: Action, fix: &'static str) -> SqlstateRule {
    SqlstateRule { code, step, action, fix }
}

/// Server errors walcast has no explanation of its own for, by SQLSTATE; the first row that
/// matches decides. A code in no row is retried ([`DEFAULT_SQLSTATE`]): a CDC process that stops
/// on an error that may pass leaves its slot retaining WAL until someone restarts it, while a
/// retry loses nothing and shows in the log and in `walcast_reconnects_total`. Stopped are the
/// classes a retry cannot change.
pub(crate) const SQLSTATE_RULES: &[SqlstateRule] = &[
    rule(
        "55000",
        Some(Step::Connect),
        Action::Retry,
        "the database does not accept connections now (ALTER DATABASE ... ALLOW_CONNECTIONS false, for maintenance): walcast connects again when it does",
    ),
    rule(
        "55006",
        None,
        Action::Retry,
        "another session holds the slot, often the walsender of a connection that died: it lets go within wal_sender_timeout",
    ),
    rule(
        "55000",
        None,
        Action::Stop(EXIT_SETUP),
        "the server is not in the state the command needs (the message says which: wal_level, an invalidated slot, ...): change that, then start walcast again (`walcast check` lists what walcast needs)",
    ),
    rule(
        "53400",
        None,
        Action::Stop(EXIT_SETUP),
        "raise max_replication_slots / max_wal_senders in postgresql.conf and restart Postgres, or drop unused slots",
    ),
    rule("28", None, Action::Stop(EXIT_SETUP), "check source.user, the password and pg_hba.conf for this role, database and address"),
    rule("3D", None, Action::Stop(EXIT_SETUP), "check source.database (names are case-sensitive), or create the database"),
    rule("3F", None, Action::Stop(EXIT_SETUP), "a schema the message names does not exist: check source.tables and the document rules' queries"),
    rule(
        "42",
        None,
        Action::Stop(EXIT_SETUP),
        "an object the message names is missing, or the role lacks a privilege on it: create it or grant it (`walcast check` lists what walcast needs)",
    ),
    rule(
        "0A",
        None,
        Action::Stop(EXIT_SETUP),
        "the server does not support what walcast asked (the message says what): check the server version and settings",
    ),
    rule(
        "22",
        None,
        Action::Stop(EXIT_FAILURE),
        "Postgres refused a value walcast read or sent: report it with the message (the same change fails the same way again)",
    ),
    rule(
        "23",
        None,
        Action::Stop(EXIT_FAILURE),
        "Postgres refused a statement of walcast for a constraint: report it with the message (it fails the same way again)",
    ),
];

/// The row for every code in no other row.
pub(crate) const DEFAULT_SQLSTATE: SqlstateRule = rule(
    "",
    None,
    Action::Retry,
    "any other server error may pass (connection exception 08, shutdown 57P, query canceled 57014, lock not available 55P03, too many connections 53300, serialization 40, internal XX): retried with backoff",
);

/// The row deciding a server error with SQLSTATE `code` at `step`.
pub(crate) fn sqlstate_rule(code: &str, step: Step) -> &'static SqlstateRule {
    let matches = |r: &&SqlstateRule| {
        let code_matches = if r.code.len() == 2 { code.starts_with(r.code) } else { code == r.code };
        code_matches && r.step.is_none_or(|s| s == step)
    };
    SQLSTATE_RULES.iter().find(matches).unwrap_or(&DEFAULT_SQLSTATE)
}

impl SourceError {
    /// What the process does about this error.
    pub fn action(&self) -> Action {
        match self {
            SourceError::Connection { .. } | SourceError::Transient(_) => Action::Retry,
            SourceError::Setup { .. } => Action::Stop(EXIT_SETUP),
            SourceError::Server { code, step, .. } => sqlstate_rule(code, *step).action,
            SourceError::Query(_) => Action::Stop(EXIT_FAILURE),
            SourceError::Decode(e) => e.action(),
        }
    }

    /// Connection problems and states that pass are retried; setup problems are not.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }

    /// The fix the policy adds to a server error it stops on (a [`SourceError::Setup`] carries
    /// its own).
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            SourceError::Server { code, step, .. } => Some(sqlstate_rule(code, *step).fix),
            _ => None,
        }
    }
}

impl DecodeError {
    /// A change for a relation not described on this connection is cured by reading the stream
    /// again on a new one (the server sends the Relation message first); any other error comes
    /// from the same bytes the same way.
    pub fn action(&self) -> Action {
        match self {
            DecodeError::UnknownRelation(_) => Action::Retry,
            _ => Action::Stop(EXIT_FAILURE),
        }
    }

    /// Whether reading the stream again (a new session) may help.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }
}

impl SinkError {
    /// What the process does about this error.
    pub fn action(&self) -> Action {
        match self {
            SinkError::Transient { .. } => Action::Retry,
            // The retry loop that was waiting sees the shutdown and stops; nothing was written.
            SinkError::Interrupted { .. } => Action::Retry,
            SinkError::Fatal { .. } => Action::Stop(EXIT_SINK),
            // Rendering the same change again renders it the same way.
            SinkError::Render { .. } => Action::Stop(EXIT_FAILURE),
        }
    }

    /// Whether retrying the same batch may succeed.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }
}

impl ConfigError {
    /// A config file never fixes itself.
    pub fn action(&self) -> Action {
        Action::Stop(EXIT_CONFIG)
    }

    /// Never: the same file fails the same way.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }
}

impl ChangelogError {
    /// A file operation (a full disk, permissions) may pass: retried, and nothing the log does
    /// not hold is confirmed meanwhile. Corruption, a second writer and a start the log no
    /// longer holds need a person (the message says what to do).
    pub fn action(&self) -> Action {
        match self {
            ChangelogError::Io { .. } => Action::Retry,
            ChangelogError::Corrupt { .. } | ChangelogError::Locked { .. } | ChangelogError::NotInLog { .. } => Action::Stop(EXIT_SETUP),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }
}

impl SnapshotError {
    /// What the process does about this error: a load interrupted by a retryable error resumes
    /// from its last recorded chunk.
    pub fn action(&self) -> Action {
        match self {
            SnapshotError::Config(e) => e.action(),
            SnapshotError::Source(e) => e.action(),
            SnapshotError::Sink(e) => e.action(),
            // walcast's own state, not a sink.
            SnapshotError::State { .. } => Action::Stop(EXIT_SETUP),
        }
    }

    /// Whether loading again (resuming from the last recorded chunk) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }
}

impl PipelineError {
    /// What the process does about this error.
    pub fn action(&self) -> Action {
        match self {
            PipelineError::Config(e) => e.action(),
            PipelineError::Source(e) => e.action(),
            PipelineError::Sink(e) => e.action(),
            PipelineError::MetricsListen { .. } => Action::Stop(EXIT_SETUP),
        }
    }

    /// Errors that reach the caller were already retried where retrying made sense.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }

    /// The fix the policy adds when it stops on this error (see [`SourceError::fix`]).
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            PipelineError::Source(e) => e.fix(),
            _ => None,
        }
    }
}

impl ReplayError {
    /// What `walcast replay` does about this error. A range the log no longer holds and an
    /// unknown mark are walcast's own state (setup, exit 3; the fix names `walcast snapshot`).
    pub fn action(&self) -> Action {
        match self {
            ReplayError::Config(e) => e.action(),
            ReplayError::Source(e) => e.action(),
            ReplayError::Sink(e) => e.action(),
            ReplayError::Log(e) => e.action(),
            ReplayError::NotInLog { .. } | ReplayError::NoMark { .. } | ReplayError::Marks(_) => Action::Stop(EXIT_SETUP),
            ReplayError::Task(_) => Action::Stop(EXIT_FAILURE),
        }
    }

    /// Errors that reach the caller were already retried where retrying made sense.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }

    /// The fix printed under the error.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            ReplayError::NotInLog { .. } => Some(crate::replay::SNAPSHOT_FIX),
            ReplayError::NoMark { .. } => Some(
                "`walcast mark --list --config FILE` shows the marks; replay `--from LSN` instead, or reload the tables with `walcast snapshot --config FILE --table SCHEMA.TABLE`",
            ),
            ReplayError::Source(e) => e.fix(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn server(code: &str, step: Step) -> SourceError {
        SourceError::from_server(code, "boom", step, "walcast")
    }

    #[test]
    fn sqlstate_table_stops_only_what_a_retry_cannot_change() {
        let cases = [
            // Unlisted codes: retried (the default).
            ("57014", Step::Query, Action::Retry),
            ("55P03", Step::Query, Action::Retry),
            ("XX000", Step::Streaming, Action::Retry),
            ("40001", Step::Query, Action::Retry),
            ("25006", Step::Query, Action::Retry),
            ("08006", Step::Connect, Action::Retry),
            ("57P01", Step::Streaming, Action::Retry),
            ("57P03", Step::Connect, Action::Retry),
            ("53300", Step::Connect, Action::Retry),
            ("53100", Step::Query, Action::Retry),
            ("58030", Step::Query, Action::Retry),
            // Listed.
            ("55006", Step::StartReplication, Action::Retry),
            ("55000", Step::Connect, Action::Retry),
            ("55000", Step::StartReplication, Action::Stop(EXIT_SETUP)),
            ("55000", Step::CreateSlot, Action::Stop(EXIT_SETUP)),
            ("53400", Step::CreateSlot, Action::Stop(EXIT_SETUP)),
            ("28P01", Step::Connect, Action::Stop(EXIT_SETUP)),
            ("3D000", Step::Connect, Action::Stop(EXIT_SETUP)),
            ("3F000", Step::Query, Action::Stop(EXIT_SETUP)),
            ("42P01", Step::Query, Action::Stop(EXIT_SETUP)),
            ("42704", Step::Query, Action::Stop(EXIT_SETUP)),
            ("0A000", Step::Query, Action::Stop(EXIT_SETUP)),
            ("22P02", Step::Query, Action::Stop(EXIT_FAILURE)),
            ("23505", Step::Query, Action::Stop(EXIT_FAILURE)),
        ];
        for (code, step, action) in cases {
            assert_eq!(sqlstate_rule(code, step).action, action, "{code} at {step}");
            let e = server(code, step);
            assert_eq!(e.action(), action, "{code} at {step}: {e}");
            assert_eq!(e.is_retryable(), action == Action::Retry, "{code} at {step}");
        }
    }

    #[test]
    fn an_unlisted_server_error_is_retried_and_says_so() {
        let e = server("57014", Step::Query);
        assert!(matches!(e, SourceError::Server { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert_eq!(e.fix(), Some(DEFAULT_SQLSTATE.fix));
        assert!(e.to_string().contains("57014"), "{e}");
    }

    #[test]
    fn explained_server_errors_agree_with_the_table() {
        // from_server explains these with their own fix; the table must stop on them too.
        let explained = [
            ("28000", Step::Connect),
            ("28P01", Step::Connect),
            ("3D000", Step::Connect),
            ("42501", Step::Query),
            ("42704", Step::StartReplication),
            ("42704", Step::Streaming),
            ("53400", Step::CreateSlot),
        ];
        for (code, step) in explained {
            let e = server(code, step);
            assert!(matches!(e, SourceError::Setup { .. }), "{code} at {step} is explained: {e:?}");
            assert_eq!(sqlstate_rule(code, step).action, Action::Stop(EXIT_SETUP), "{code} at {step}");
        }
        // The same code at another step means something else: no slot fix for a query's 42704.
        assert!(matches!(server("42704", Step::Query), SourceError::Server { .. }));
        assert!(server("42704", Step::StartReplication).to_string().contains("walcast slot create"));
        assert!(server("42704", Step::Streaming).to_string().contains("source.create_publication"));
    }

    #[test]
    fn every_enum_agrees_with_the_policy() {
        let decode = || DecodeError::UnknownTag(b'?');
        let source = [
            SourceError::Connection { target: "t".into(), reason: "r".into() },
            SourceError::Transient("t".into()),
            SourceError::setup("p", "f"),
            server("57014", Step::Query),
            server("42P01", Step::Query),
            SourceError::Query("q".into()),
            SourceError::Decode(DecodeError::UnknownRelation(7)),
            SourceError::Decode(decode()),
        ];
        for e in &source {
            assert_eq!(e.is_retryable(), e.action() == Action::Retry, "{e:?}");
        }
        let sink = [
            SinkError::Transient { sink: "s", source: "x".into() },
            SinkError::Interrupted { sink: "s", what: "w" },
            SinkError::Fatal { sink: "s", reason: "r".into() },
            SinkError::Render { lsn: Lsn(1), table: "t".into(), source: decode() },
        ];
        for e in &sink {
            assert_eq!(e.is_retryable(), e.action() == Action::Retry, "{e:?}");
        }
        let config = ConfigError::Invalid { field: "f".into(), reason: "r".into() };
        assert_eq!(config.is_retryable(), config.action() == Action::Retry);
        let pipeline = source
            .into_iter()
            .map(PipelineError::from)
            .chain(sink.into_iter().map(PipelineError::from))
            .chain([PipelineError::from(config), PipelineError::MetricsListen { addr: "a".into(), reason: "r".into() }]);
        for e in pipeline {
            assert_eq!(e.is_retryable(), e.action() == Action::Retry, "{e:?}");
        }
    }

    #[test]
    fn exit_codes_mean_what_the_readme_says() {
        let code = |e: PipelineError| e.action().exit_code();
        assert_eq!(code(ConfigError::Invalid { field: "f".into(), reason: "r".into() }.into()), EXIT_CONFIG);
        assert_eq!(code(SourceError::setup("p", "f").into()), EXIT_SETUP);
        assert_eq!(code(SinkError::Fatal { sink: "kafka", reason: "r".into() }.into()), EXIT_SINK);
        assert_eq!(code(SourceError::Query("q".into()).into()), EXIT_FAILURE);
        // Snapshot progress is walcast's own state, not a sink: a setup problem.
        let state = SnapshotError::State { source: std::io::Error::from(std::io::ErrorKind::PermissionDenied) };
        assert_eq!(state.action(), Action::Stop(EXIT_SETUP));
        assert_eq!(code(state.into()), EXIT_SETUP);
    }

    #[test]
    fn the_change_log_retries_io_and_stops_on_corruption_a_second_writer_and_a_lost_start() {
        let io = ChangelogError::Io { op: "write", path: "/x".into(), source: std::io::Error::from(std::io::ErrorKind::StorageFull) };
        assert_eq!(io.action(), Action::Retry);
        assert!(io.is_retryable());
        for stop in [
            ChangelogError::Corrupt { segment: "/x".into(), offset: 1, reason: "x".into() },
            ChangelogError::Locked { dir: "/x".into() },
            ChangelogError::NotInLog { requested: Lsn(1), oldest: Lsn(2), start: Lsn(1) },
        ] {
            assert_eq!(stop.action(), Action::Stop(EXIT_SETUP), "{stop}");
            assert!(!stop.is_retryable());
            assert!(stop.to_string().contains("fix:"), "{stop}");
        }
    }

    #[test]
    fn a_change_for_an_unknown_relation_reconnects_instead_of_exit_1() {
        let e = PipelineError::from(SourceError::from(DecodeError::UnknownRelation(16384)));
        assert_eq!(e.action(), Action::Retry);
        assert!(e.is_retryable());
        assert_eq!(DecodeError::Truncated { tag: 'I', offset: 0, needed: 1 }.action(), Action::Stop(EXIT_FAILURE));
    }
}
