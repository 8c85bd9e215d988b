//! `walcast replay` and `walcast mark`: the commands over the change log.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::{report_error, EXIT_FAILURE, EXIT_SETUP};
use crate::changelog::marks::Marks;
use crate::changelog::LogReader;
use crate::config::Config;
use crate::lsn::Lsn;
use crate::replay::{self, ReplayError, ReplayRequest};

/// `walcast replay`: send the range again; exit 0 once every sink made it durable.
pub(super) async fn replay(config: &Config, request: ReplayRequest, shutdown: CancellationToken) -> ExitCode {
    match replay::replay(config, &request, shutdown).await {
        Ok(s) if s.interrupted => {
            eprintln!(
                "walcast replay: interrupted at {} ({} rows sent); what was sent is idempotent: run the same replay again",
                s.reached, s.rows
            );
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(s) => {
            let secs = s.elapsed.as_secs_f64();
            let rate = if secs > 0.0 { s.rows as f64 / secs } else { 0.0 };
            println!(
                "replayed {} changes ({} read) from {} to {} in {secs:.1} s ({rate:.0} rows/s); every sink made them durable",
                s.rows, s.read, s.from, s.reached
            );
            ExitCode::SUCCESS
        }
        Err(e) => report_replay_error(&e),
    }
}

fn report_replay_error(e: &ReplayError) -> ExitCode {
    report_error(e, e.fix(), e.action().exit_code())
}

/// What `walcast mark` does.
pub(super) enum MarkAction {
    /// Store the log's durable end under a name.
    Set(String),
    /// Print every mark.
    List {
        /// One JSON object instead of text.
        json: bool,
    },
    /// Remove a mark.
    Delete(String),
}

/// `walcast mark NAME | --list | --delete NAME`.
pub(super) async fn mark(config: &Config, action: MarkAction) -> ExitCode {
    let state_dir = config.snapshot.state_dir.clone();
    let slot = config.source.slot.clone();
    let dir = replay::log_dir(config);
    let enabled = config.changelog.enabled;
    let result = tokio::task::spawn_blocking(move || -> Result<(), MarkError> {
        let mut marks = Marks::load(&state_dir, &slot)?;
        match action {
            MarkAction::Set(name) => {
                if !enabled {
                    return Err(MarkError::Setup(
                        "the change log is disabled (changelog.enabled = false): a mark is a position in it".into(),
                        "enable [changelog] and start `walcast run`; until the log holds what you want to replay, `walcast snapshot` reloads tables".into(),
                    ));
                }
                let end = LogReader::open(&dir).and_then(|r| r.stats()).map(|s| s.durable_end).map_err(|e| {
                    MarkError::Setup(format!("cannot read the change log in {}: {e}", dir.display()), "start `walcast run` with [changelog] enabled: it creates the log".into())
                })?;
                let Some(lsn) = end else {
                    return Err(MarkError::Setup(
                        format!("the change log in {} holds no transaction yet", dir.display()),
                        "take the mark once `walcast run` has logged a transaction (any write to a published table)".into(),
                    ));
                };
                let replaced = marks.get(&name);
                marks.set(&name, lsn)?;
                marks.save()?;
                match replaced {
                    Some(old) => println!("mark {name:?} moved from {} to {lsn} (the log's durable end)", old.lsn),
                    None => println!("mark {name:?} set at {lsn} (the log's durable end)"),
                }
            }
            MarkAction::Delete(name) => match marks.remove(&name) {
                Some(m) => {
                    marks.save()?;
                    println!("mark {name:?} at {} deleted (its log segments are no longer pinned)", m.lsn);
                }
                None => {
                    return Err(MarkError::Setup(format!("there is no mark named {name:?}"), "`walcast mark --list --config FILE` shows the marks".into()));
                }
            },
            MarkAction::List { json } => print_marks(&marks, json),
        }
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(MarkError::Setup(message, fix))) => report_error(&message, Some(&fix), EXIT_SETUP),
        Ok(Err(MarkError::Marks(e))) => report_error(&e, None, if e.is_retryable() { EXIT_FAILURE } else { EXIT_SETUP }),
        Err(e) => report_error(&format!("the mark task failed: {e}"), None, EXIT_FAILURE),
    }
}

/// Why `walcast mark` refused.
enum MarkError {
    /// Message and fix.
    Setup(String, String),
    /// The marks file.
    Marks(crate::changelog::marks::MarksError),
}

impl From<crate::changelog::marks::MarksError> for MarkError {
    fn from(e: crate::changelog::marks::MarksError) -> Self {
        MarkError::Marks(e)
    }
}

fn print_marks(marks: &Marks, json: bool) {
    if json {
        println!("{}", marks_json(marks));
        return;
    }
    if marks.is_empty() {
        println!("no marks (take one with `walcast mark NAME --config FILE`)");
        return;
    }
    let now = now_unix_s();
    println!("{:<30} {:<20} taken", "mark", "lsn");
    for (name, m) in marks.iter() {
        println!("{name:<30} {:<20} {} ago", m.lsn.to_string(), age(now.saturating_sub(m.created_unix_s)));
    }
}

/// The marks as JSON (`mark --list --json`, `status --json`).
pub(super) fn marks_json(marks: &Marks) -> serde_json::Value {
    marks.iter().map(|(name, m)| serde_json::json!({"name": name, "lsn": m.lsn.to_string(), "created_unix_s": m.created_unix_s})).collect()
}

pub(super) fn now_unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `45s`, `12m`, `3h05m`, `2d04h`.
pub(super) fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `--from` / `--to` on the command line.
pub(super) fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_short() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(12 * 60 + 5), "12m");
        assert_eq!(age(3 * 3600 + 5 * 60), "3h05m");
        assert_eq!(age(2 * 86_400 + 4 * 3600), "2d04h");
    }
}
