//! `walcast status`: the slot and each sink's dead letters (as `slot status`), then what walcast
//! keeps on local disk: the change log, each sink's cursor and lag, the snapshot state and the
//! marks. The local parts are read-only (the log through a `LogReader`), so this works while
//! `walcast run` runs and when it does not, and even when Postgres cannot be reached.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::replay::{age, marks_json, now_unix_s};
use super::{dead_letter_status, missing_slot_fix, print_slot_status, report_pipeline_error, slot_status_json};
use crate::changelog::marks::Marks;
use crate::changelog::{LogReader, LogStats, SinkCursors};
use crate::config::Config;
use crate::lsn::Lsn;
use crate::snapshot::SnapshotState;
use crate::source::{self, connect_sql, ConnParams, SlotInfo, SourceError};

/// What walcast keeps on local disk, each part read on its own (one unreadable part does not
/// hide the others).
struct Local {
    /// `None`: the log is disabled. With the stats, where `--from` gets everything it holds.
    log: Option<Result<(LogStats, Option<Lsn>), String>>,
    /// Each sink's durable position in the log (`STATE_DIR/cursors-SLOT.json`, written by
    /// `walcast run`); none until the run records them.
    cursors: Result<SinkCursors, String>,
    snapshot: Result<Option<SnapshotState>, String>,
    marks: Result<Marks, String>,
}

/// Read the local parts. Blocking.
fn read_local(config: &Config) -> Local {
    let (dir, slot) = (&config.snapshot.state_dir, &config.source.slot);
    let log = config.changelog.enabled.then(|| {
        let log_dir = crate::replay::log_dir(config);
        LogReader::open(&log_dir)
            .and_then(|r| Ok((r.stats()?, r.start()?)))
            .map_err(|e| format!("cannot read the change log in {}: {e}", log_dir.display()))
    });
    Local {
        log,
        cursors: SinkCursors::load(dir, slot).map_err(|e| e.to_string()),
        snapshot: SnapshotState::load(dir, slot).map_err(|e| format!("cannot read the snapshot state in {}: {e}", dir.display())),
        marks: Marks::load(dir, slot).map_err(|e| e.to_string()),
    }
}

/// `walcast status [--json]`.
pub(super) async fn status(config: &Config, json: bool) -> ExitCode {
    let local = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || read_local(&config)).await
    };
    let local = match local {
        Ok(l) => l,
        Err(e) => return super::report_error(&format!("the task reading the state failed: {e}"), None, super::EXIT_FAILURE),
    };
    let slot_name = &config.source.slot;
    let info: Result<Option<SlotInfo>, SourceError> = async {
        let params = ConnParams::from_config(&config.source).map_err(|e| SourceError::setup(e.to_string(), "fix the config file"))?;
        let client = connect_sql(&params).await?;
        source::slot_info(&client, slot_name).await.map_err(|e| source::classify(&e, &params))
    }
    .await;
    let dead = dead_letter_status(config);
    let current_wal = info.as_ref().ok().and_then(|i| i.as_ref()).and_then(|i| i.current_wal_lsn);
    if json {
        let mut value = match &info {
            Ok(i) => slot_status_json(slot_name, i.as_ref(), &dead),
            Err(e) => {
                let mut v = slot_status_json(slot_name, None, &dead);
                v["exists"] = Value::Null;
                v["error"] = json!(e.to_string());
                v
            }
        };
        value["log"] = log_json(&local.log);
        value["sinks"] = sinks_json(config, &local, current_wal);
        value["snapshot"] = match &local.snapshot {
            Ok(Some(s)) => {
                json!({"status": s.status, "point": s.point, "tables": s.tables.len(), "tables_done": s.tables.values().filter(|t| t.done).count()})
            }
            Ok(None) => Value::Null,
            Err(e) => json!({"error": e}),
        };
        value["marks"] = match &local.marks {
            Ok(m) => marks_json(m),
            Err(e) => json!({"error": e}),
        };
        println!("{value}");
    } else {
        match &info {
            Ok(i) => print_slot_status(slot_name, i.as_ref(), &dead, false),
            Err(e) => println!("slot                 {slot_name}: cannot read it: {e}"),
        }
        print_local(config, &local, current_wal);
    }
    match info {
        Ok(Some(_)) => ExitCode::SUCCESS,
        Ok(None) => {
            report_pipeline_error(&SourceError::setup(format!("slot {slot_name:?} does not exist"), missing_slot_fix(config)).into())
        }
        Err(e) => report_pipeline_error(&e.into()),
    }
}

fn lsn_text(l: Option<Lsn>) -> Value {
    l.map_or(Value::Null, |l| json!(l.to_string()))
}

fn log_json(log: &Option<Result<(LogStats, Option<Lsn>), String>>) -> Value {
    match log {
        None => json!({"enabled": false}),
        Some(Err(e)) => json!({"enabled": true, "error": e}),
        Some(Ok((s, start))) => json!({
            "enabled": true,
            "start_lsn": lsn_text(*start),
            "oldest_lsn": lsn_text(s.oldest),
            "durable_lsn": lsn_text(s.durable_end),
            "bytes": s.bytes,
            "segments": s.segments,
        }),
    }
}

/// Bytes from `cursor` to `end`; `None` when either is unknown.
fn lag(end: Option<Lsn>, cursor: Option<Lsn>) -> Option<u64> {
    Some(end?.0.saturating_sub(cursor?.0))
}

/// Where one sink stands.
struct SinkRow {
    sink: &'static str,
    /// Its durable position in the log.
    cursor: Option<Lsn>,
    /// Bytes behind the log's durable end.
    log_lag: Option<u64>,
    /// Bytes behind the server's WAL.
    wal_lag: Option<u64>,
}

/// One row per configured sink: its cursor, how far behind the log's durable end and the
/// server's WAL it is.
fn sink_rows(config: &Config, local: &Local, current_wal: Option<Lsn>) -> Vec<SinkRow> {
    let log_end = match &local.log {
        Some(Ok((s, _))) => s.durable_end,
        _ => None,
    };
    crate::replay::configured_sinks(config)
        .into_iter()
        .map(|sink| {
            let cursor = local.cursors.as_ref().ok().and_then(|c| c.get(sink));
            SinkRow { sink, cursor, log_lag: lag(log_end, cursor), wal_lag: lag(current_wal, cursor) }
        })
        .collect()
}

fn sinks_json(config: &Config, local: &Local, current_wal: Option<Lsn>) -> Value {
    let rows = sink_rows(config, local, current_wal);
    let mut out: Vec<Value> = rows
        .into_iter()
        .map(|r| json!({"sink": r.sink, "cursor": lsn_text(r.cursor), "log_lag_bytes": r.log_lag, "wal_lag_bytes": r.wal_lag}))
        .collect();
    if let Err(e) = &local.cursors {
        out.push(json!({"error": e}));
    }
    Value::Array(out)
}

fn print_local(config: &Config, local: &Local, current_wal: Option<Lsn>) {
    let show = |l: Option<Lsn>| l.map_or_else(|| "-".to_string(), |l| l.to_string());
    match &local.log {
        None => println!("{:<20} disabled (changelog.enabled = false)", "change log"),
        Some(Err(e)) => println!("{:<20} {e}", "change log"),
        Some(Ok((s, start))) => println!(
            "{:<20} commits {} .. {} (replay all: --from {}; {} segments, {} bytes) in {}",
            "change log",
            show(s.oldest),
            show(s.durable_end),
            show(*start),
            s.segments,
            s.bytes,
            crate::replay::log_dir(config).display()
        ),
    }
    if let Err(e) = &local.cursors {
        println!("{:<20} {e}", "sink cursors");
    }
    for r in sink_rows(config, local, current_wal) {
        let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_string(), |b| format!("{b} bytes"));
        println!(
            "{:<20} cursor {}, behind the log {}, behind the server {}",
            format!("sink {}", r.sink),
            show(r.cursor),
            bytes(r.log_lag),
            bytes(r.wal_lag)
        );
    }
    match &local.snapshot {
        Ok(Some(s)) => println!(
            "{:<20} {:?} at {} ({} of {} tables done)",
            "snapshot",
            s.status,
            s.point.as_deref().unwrap_or("-"),
            s.tables.values().filter(|t| t.done).count(),
            s.tables.len()
        ),
        Ok(None) => println!("{:<20} none recorded", "snapshot"),
        Err(e) => println!("{:<20} {e}", "snapshot"),
    }
    match &local.marks {
        Ok(m) if m.is_empty() => println!("{:<20} none", "marks"),
        Ok(m) => {
            let now = now_unix_s();
            for (name, mark) in m.iter() {
                println!("{:<20} {} ({} ago)", format!("mark {name}"), mark.lsn, age(now.saturating_sub(mark.created_unix_s)));
            }
        }
        Err(e) => println!("{:<20} {e}", "marks"),
    }
}
