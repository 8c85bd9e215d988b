//! Command-line interface: the commands and their exit codes.

mod replay;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DeadLetterDestination, LogFormat, SnapshotMode, TableName};
use crate::lsn::Lsn;
use crate::pipeline::{self, PipelineError};
use crate::snapshot::SnapshotState;
use crate::source::{self, connect_sql, preflight, ConnParams, Severity, SlotRecord, SourceError};

pub use crate::policy::{EXIT_CONFIG, EXIT_FAILURE, EXIT_SETUP, EXIT_SINK};

/// Stream Postgres changes from a logical replication slot.
#[derive(Debug, Parser)]
#[command(name = "walcast", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format, overriding the config file (`text` or `json`).
    #[arg(long, global = true, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes until SIGINT/SIGTERM (then drain and confirm).
    Run {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config file, then check the server (wal_level, privileges, slot, publication, tables).
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a throwaway Postgres with a sample catalogue and a workload, stream it to stdout.
    Demo {
        /// Port for the throwaway cluster.
        #[arg(long, default_value_t = crate::demo::DEFAULT_PORT)]
        port: u16,
        /// Milliseconds between workload transactions.
        #[arg(long, default_value_t = crate::demo::DEFAULT_WORKLOAD_INTERVAL_MS)]
        interval_ms: u64,
    },
    /// Load one table (to every sink) or one document rule (to Elasticsearch) now, while `run`
    /// may be streaming: read in a temporary slot's exported snapshot, versioned with its
    /// consistent point, so newer streamed data is never overwritten.
    Snapshot {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The table, `schema.table`.
        #[arg(long, conflicts_with = "rule", required_unless_present = "rule")]
        table: Option<String>,
        /// The document rule's name (`sinks.elasticsearch.documents[].name`).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Recover from a lost slot (dropped, invalidated with wal_status = lost, or gone with a
    /// restored server): drop what is left of it and have the next `run` create it anew, remove
    /// the tables' data from every sink and reload it, so the sinks equal Postgres again.
    Resync {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a range of the change log again through the configured sinks (the same mapping
    /// rules), beside a running `walcast run`, idempotently; exits once every sink made it
    /// durable. Refused (exit 3) when the log no longer holds the start: `walcast snapshot`
    /// reloads tables then.
    Replay {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Send the transactions that commit after this LSN.
        #[arg(long, value_parser = replay::parse_lsn, conflicts_with = "from_mark", required_unless_present = "from_mark")]
        from: Option<Lsn>,
        /// Send the transactions that commit after this mark (`walcast mark NAME`).
        #[arg(long, value_name = "NAME")]
        from_mark: Option<String>,
        /// Stop after the transaction that commits at this LSN (default: the log's durable end
        /// when the replay starts).
        #[arg(long, value_parser = replay::parse_lsn)]
        to: Option<Lsn>,
        /// Only this table, `schema.table` (repeat for more).
        #[arg(long = "table", value_name = "SCHEMA.TABLE")]
        tables: Vec<TableName>,
        /// Only this sink: `jsonl`, `kafka` or `elasticsearch` (repeat for more).
        #[arg(long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
        /// Write the JSON lines here instead of `sinks.jsonl.path` (`-`: standard output).
        /// Needed while `walcast run` appends to that file.
        #[arg(long, value_name = "PATH")]
        jsonl_path: Option<String>,
    },
    /// Name the change log's durable end (before a deploy or a risky migration), so that
    /// `walcast replay --from-mark NAME` can send everything after it again; marks keep their
    /// log segments (within the retention limits).
    Mark {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The mark to set (an existing mark of that name moves).
        #[arg(required_unless_present_any = ["list", "delete"], conflicts_with_all = ["list", "delete"])]
        name: Option<String>,
        /// List the marks.
        #[arg(long, conflicts_with = "delete")]
        list: bool,
        /// Delete a mark.
        #[arg(long, value_name = "NAME")]
        delete: Option<String>,
        /// With --list: print one JSON array instead of text.
        #[arg(long, requires = "list")]
        json: bool,
    },
    /// Where walcast stands: the slot (as `slot status`), each sink's dead letters (where they
    /// are, how many), the change log (LSN range, size), each sink's cursor and lag, the
    /// snapshot state and the marks. Works with and without a running `walcast run`.
    Status {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or manage the replication slot.
    Slot {
        /// What to do with the slot.
        #[command(subcommand)]
        action: SlotAction,
    },
}

/// Slot actions.
#[derive(Debug, Subcommand)]
pub enum SlotAction {
    /// Show confirmed_flush_lsn, restart_lsn, active pid, retained WAL, wal_status, and each
    /// sink's dead letters.
    Status {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create the slot (pgoutput) and the publication if missing. Existing rows are not loaded:
    /// refused with `snapshot.mode = "initial"` unless `--no-snapshot` (`walcast run` creates the
    /// slot and loads them).
    Create {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Accept a new slot whose existing rows are not loaded.
        #[arg(long)]
        no_snapshot: bool,
    },
    /// Drop the slot (Postgres then stops retaining WAL for it; walcast loses its position).
    Drop {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".into()),
    }
}

/// Run a parsed command; `shutdown` is cancelled on SIGINT/SIGTERM.
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> ExitCode {
    match cli.command {
        Command::Run { config } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            match pipeline::run(&config, shutdown).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => report_pipeline_error(&e),
            }
        }
        Command::Check { config } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            check(&config).await
        }
        Command::Demo { port, interval_ms } => {
            crate::telemetry::init(cli.log_format.unwrap_or_default(), "info");
            match crate::demo::run(port, interval_ms, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walcast demo: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Snapshot { config, table, rule } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            let target = match (table, rule) {
                (Some(t), _) => crate::snapshot::SnapshotTarget::Table(t),
                (None, Some(r)) => crate::snapshot::SnapshotTarget::Rule(r),
                (None, None) => return ExitCode::from(EXIT_CONFIG), // clap requires one
            };
            match crate::snapshot::load_on_demand(&config, &target, shutdown).await {
                Ok(crate::snapshot::Outcome::Done) => ExitCode::SUCCESS,
                Ok(crate::snapshot::Outcome::Interrupted) => {
                    eprintln!("walcast snapshot: interrupted; run it again to load the rest");
                    ExitCode::from(EXIT_FAILURE)
                }
                Err(e) => report_pipeline_error(&e.into()),
            }
        }
        Command::Resync { config } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            match crate::snapshot::request_resync(&config).await {
                Ok(done) => {
                    println!("{done}");
                    println!("next: start `walcast run` (every replica, when [ha] is on): it creates the slot, removes the tables' data from the sinks and reloads it, then streams");
                    ExitCode::SUCCESS
                }
                Err(e) => report_pipeline_error(&e.into()),
            }
        }
        Command::Replay { config, from, from_mark, to, tables, sinks, jsonl_path } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            let from = match (from, from_mark) {
                (Some(lsn), _) => crate::replay::ReplayStart::Lsn(lsn),
                (None, Some(mark)) => crate::replay::ReplayStart::Mark(mark),
                (None, None) => return ExitCode::from(EXIT_CONFIG), // clap requires one
            };
            replay::replay(&config, crate::replay::ReplayRequest { from, to, tables, sinks, jsonl_path }, shutdown).await
        }
        Command::Mark { config, name, list, delete, json } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            let action = match (name, delete) {
                (_, Some(name)) => replay::MarkAction::Delete(name),
                (Some(name), None) if !list => replay::MarkAction::Set(name),
                _ => replay::MarkAction::List { json },
            };
            replay::mark(&config, action).await
        }
        Command::Status { config, json } => {
            let Some(config) = load(&config, cli.log_format) else { return ExitCode::from(EXIT_CONFIG) };
            status::status(&config, json).await
        }
        Command::Slot { action } => slot(action, cli.log_format).await,
    }
}

/// Load the config and install logging; prints the error (naming the field) on failure.
fn load(path: &Path, log_format: Option<LogFormat>) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => {
            crate::telemetry::init(log_format.unwrap_or(c.log.format), &c.log.level);
            Some(c)
        }
        Err(e) => {
            eprintln!("walcast: {e}");
            None
        }
    }
}

/// Print why the command stopped, once: as one log record with JSON logs (stderr is for a log
/// collector then), else as text with its fix. The exit code is the error policy's.
fn report_pipeline_error(e: &PipelineError) -> ExitCode {
    if crate::telemetry::logs_json() {
        tracing::error!(error = %e, fix = e.fix(), "stopped");
    } else {
        eprintln!("walcast: {e}");
        if let Some(fix) = e.fix() {
            eprintln!("  fix: {fix}");
        }
    }
    ExitCode::from(e.action().exit_code())
}

/// Print why a command stopped, once (as [`report_pipeline_error`] does), with `exit` as its
/// exit code.
fn report_error(e: &dyn std::fmt::Display, fix: Option<&str>, exit: u8) -> ExitCode {
    if crate::telemetry::logs_json() {
        tracing::error!(error = %e, fix, "stopped");
    } else {
        eprintln!("walcast: {e}");
        if let Some(fix) = fix {
            eprintln!("  fix: {fix}");
        }
    }
    ExitCode::from(exit)
}

async fn check(config: &Config) -> ExitCode {
    let params = match config.read_secrets().and_then(|()| ConnParams::from_config(&config.source)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("walcast: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("ok    config is valid");
    // What `run` refuses when the slot is gone (the state dir remembers it existed), and warns
    // of when it has no record of a slot that exists.
    let record = match SnapshotState::load(&config.snapshot.state_dir, &config.source.slot) {
        Ok(None) => SlotRecord::Unrecorded,
        Ok(Some(state)) => state.gone_slot().map_or(SlotRecord::Recorded, |(problem, fix)| SlotRecord::Gone(problem, fix)),
        Err(e) => {
            eprintln!("walcast: cannot read the state in {}: {e}", config.snapshot.state_dir.display());
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let mut findings = preflight(config, &params, record).await;
    // Kafka sink: brokers reachable, topics exist or can be created.
    findings.extend(crate::sink::kafka::kafka_findings(config, &params).await);
    // Elasticsearch sink: cluster reachable, credentials accepted, indexes exist or can be created.
    findings.extend(crate::sink::elasticsearch::elasticsearch_findings(config).await);
    // Document rules: queries prepare, root id columns exist and survive deletes.
    if let Some(es) = config.sinks.elasticsearch.as_ref().filter(|es| !es.documents.is_empty()) {
        match connect_sql(&params).await {
            Ok(client) => findings.extend(crate::sink::elasticsearch::document_findings(&es.documents, &client).await),
            Err(e) => findings.push(crate::source::Finding::fail(
                format!("document rules: cannot connect to Postgres: {e}"),
                "see the source findings above",
            )),
        }
    }
    // The slot's history and snapshot progress must be writable where they are kept.
    findings.push(snapshot_dir_finding(&config.snapshot.state_dir));
    // The JSON-lines file must open for appending, as `run` opens it before the slot exists.
    if let Some(path) = config.sinks.jsonl.as_ref().map(|j| j.path.as_str()).filter(|p| *p != "-") {
        findings.push(jsonl_path_finding(Path::new(path)));
    }
    let mut failed = false;
    for f in &findings {
        let tag = match f.severity {
            Severity::Ok => "ok  ",
            Severity::Warning => "warn",
            Severity::Failure => {
                failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {}", f.message);
        if let Some(fix) = &f.fix {
            println!("      fix: {fix}");
        }
    }
    if failed {
        println!("check failed: fix the FAIL lines above and run `walcast check` again");
        ExitCode::from(EXIT_SETUP)
    } else {
        println!("check passed");
        ExitCode::SUCCESS
    }
}

fn jsonl_path_finding(path: &Path) -> crate::source::Finding {
    let existed = path.exists();
    let opened = std::fs::OpenOptions::new().create(true).append(true).open(path);
    // Leave no trace of the check: a file it created is removed again.
    if opened.is_ok() && !existed {
        let _ = std::fs::remove_file(path);
    }
    match opened {
        Ok(_) => crate::source::Finding::ok(format!("sinks.jsonl.path {} can be appended to", path.display())),
        Err(e) => crate::source::Finding::fail(
            format!("sinks.jsonl.path {} cannot be opened for appending: {e}", path.display()),
            "point sinks.jsonl.path at a writable file (its directory must exist), or use \"-\" for standard output",
        ),
    }
}

fn snapshot_dir_finding(dir: &Path) -> crate::source::Finding {
    let probe = dir.join(".walcast-check");
    let writable = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"ok")).and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => crate::source::Finding::ok(format!("snapshot.state_dir {} is writable", dir.display())),
        Err(e) => crate::source::Finding::fail(
            format!("snapshot.state_dir {} is not writable: {e}", dir.display()),
            "point snapshot.state_dir at a writable directory that survives restarts (a persistent volume in containers)",
        ),
    }
}

async fn slot(action: SlotAction, log_format: Option<LogFormat>) -> ExitCode {
    let path = match &action {
        SlotAction::Status { config, .. } | SlotAction::Create { config, .. } | SlotAction::Drop { config } => config.clone(),
    };
    let Some(config) = load(&path, log_format) else { return ExitCode::from(EXIT_CONFIG) };
    let slot_name = config.source.slot.clone();
    let result: Result<(), SourceError> = async {
        let params = ConnParams::from_config(&config.source).map_err(|e| SourceError::setup(e.to_string(), "fix the config file"))?;
        let client = connect_sql(&params).await?;
        let query_err = |e: tokio_postgres::Error| source::classify(&e, &params);
        match action {
            SlotAction::Status { json, .. } => {
                let info = source::slot_info(&client, &slot_name).await.map_err(query_err)?;
                print_slot_status(&slot_name, info.as_ref(), &dead_letter_status(&config), json);
                if info.is_none() {
                    return Err(SourceError::setup(format!("slot {slot_name:?} does not exist"), missing_slot_fix(&config)));
                }
            }
            SlotAction::Create { no_snapshot, .. } => {
                let src = &config.source;
                let exists = source::slot_info(&client, &slot_name).await.map_err(query_err)?.is_some();
                if !exists && !no_snapshot && config.snapshot.mode == SnapshotMode::Initial {
                    return Err(SourceError::setup(
                        "`walcast slot create` makes a slot whose existing rows are not loaded (snapshot.mode = \"initial\" wants them loaded)",
                        "run `walcast run --config FILE` (with source.create_slot = true it creates the slot and loads the snapshot), or pass --no-snapshot to accept that",
                    ));
                }
                source::ensure_publication(&client, &params, &src.publication, &src.table_selectors(), true).await?;
                match source::slot_info(&client, &slot_name).await.map_err(query_err)? {
                    Some(_) => println!("slot {slot_name:?} already exists"),
                    None => {
                        let lsn = source::create_slot(&client, &params, &slot_name).await?;
                        // Remember the slot, so that losing it later is noticed by `run`.
                        let mut state = SnapshotState::new(&config.snapshot.state_dir, &slot_name, crate::snapshot::Status::Done);
                        state.point = Some(lsn.to_string());
                        state.publication_oid = source::publication_oid(&client, &src.publication).await.map_err(query_err)?;
                        state.save().await.map_err(|e| {
                            SourceError::setup(
                                format!("created slot {slot_name:?} at {lsn}, but cannot record it in {}: {e}", config.snapshot.state_dir.display()),
                                "make snapshot.state_dir a writable directory",
                            )
                        })?;
                        println!("created slot {slot_name:?} at {lsn} (no snapshot: existing rows are not loaded; `walcast snapshot --table` loads them)");
                    }
                }
            }
            SlotAction::Drop { .. } => {
                source::drop_slot(&client, &slot_name).await.map_err(query_err)?;
                println!("dropped slot {slot_name:?}");
                if SnapshotState::load(&config.snapshot.state_dir, &slot_name).ok().flatten().is_some() {
                    println!(
                        "note: changes committed from now on are not recorded; `walcast run` refuses to start until you run `walcast resync --config FILE` (reload, removing rows deleted meanwhile) or remove {}",
                        SnapshotState::path_for(&config.snapshot.state_dir, &slot_name).display()
                    );
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report_pipeline_error(&e.into()),
    }
}

/// What to do about a slot that does not exist: `run` creates it with a snapshot, `slot create`
/// only without one.
fn missing_slot_fix(config: &Config) -> String {
    let run = if config.source.create_slot {
        "start `walcast run --config FILE`: it creates the slot"
    } else {
        "set source.create_slot = true and start `walcast run --config FILE`: it creates the slot"
    };
    match config.snapshot.mode {
        SnapshotMode::Initial => {
            format!("{run} and loads the existing rows (`walcast slot create --no-snapshot --config FILE` makes one without loading them)")
        }
        SnapshotMode::Never => {
            format!("{run} (snapshot.mode = \"never\": existing rows are not loaded), or `walcast slot create --config FILE`")
        }
    }
}

/// One sink's dead letters: where they go and, for a file, how many it holds.
struct DeadLetterStatus {
    sink: &'static str,
    destination: DeadLetterDestination,
    /// Lines in the file (`None`: not a file, or unreadable, see `error`).
    count: Option<u64>,
    error: Option<String>,
}

/// What an operator needs at 3 a.m.: where each sink's dead letters are and how many.
fn dead_letter_status(config: &Config) -> Vec<DeadLetterStatus> {
    config
        .dead_letter_destinations()
        .into_iter()
        .map(|(sink, destination)| {
            let (count, error) = match &destination {
                DeadLetterDestination::File(path) => match std::fs::read(path) {
                    Ok(bytes) => (Some(bytes.iter().filter(|&&b| b == b'\n').count() as u64), None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Some(0), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                DeadLetterDestination::Named(_) => (None, None),
            };
            DeadLetterStatus { sink, destination, count, error }
        })
        .collect()
}

/// The slot and the dead letters as one JSON object (`slot status --json`; `status --json` adds
/// its parts to it).
fn slot_status_json(name: &str, info: Option<&source::SlotInfo>, dead: &[DeadLetterStatus]) -> serde_json::Value {
    let lsn = |l: Option<crate::lsn::Lsn>| l.map(|l| l.to_string());
    let dead: Vec<_> = dead
        .iter()
        .map(|d| match &d.destination {
            DeadLetterDestination::File(p) => {
                serde_json::json!({"sink": d.sink, "path": p.display().to_string(), "count": d.count, "error": d.error})
            }
            DeadLetterDestination::Named(n) => serde_json::json!({"sink": d.sink, "destination": n}),
        })
        .collect();
    let mut value = match info {
        None => serde_json::json!({ "slot": name, "exists": false }),
        Some(i) => serde_json::json!({
            "slot": name,
            "exists": true,
            "plugin": i.plugin,
            "database": i.database,
            "active": i.active,
            "active_pid": i.active_pid,
            "confirmed_flush_lsn": lsn(i.confirmed_flush_lsn),
            "restart_lsn": lsn(i.restart_lsn),
            "current_wal_lsn": lsn(i.current_wal_lsn),
            "retained_wal_bytes": i.retained_wal_bytes,
            "wal_status": i.wal_status,
        }),
    };
    value["dead_letters"] = serde_json::Value::Array(dead);
    value
}

fn print_slot_status(name: &str, info: Option<&source::SlotInfo>, dead: &[DeadLetterStatus], json: bool) {
    if json {
        println!("{}", slot_status_json(name, info, dead));
        return;
    }
    print_slot_info(name, info);
    for d in dead {
        let what = match (&d.destination, d.count, &d.error) {
            (DeadLetterDestination::File(p), Some(n), _) => format!("{n} in {}", p.display()),
            (DeadLetterDestination::File(p), None, e) => format!("cannot read {}: {}", p.display(), e.as_deref().unwrap_or("?")),
            (DeadLetterDestination::Named(n), _, _) => format!("in {n} (see walcast_dead_letters_total)"),
        };
        println!("{:<20} {what}", format!("dead letters ({})", d.sink));
    }
}

fn print_slot_info(name: &str, info: Option<&source::SlotInfo>) {
    let lsn = |l: Option<crate::lsn::Lsn>| l.map(|l| l.to_string());
    let Some(i) = info else {
        println!("slot {name}: does not exist");
        return;
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("slot                 {name}");
    println!("plugin               {}", show(i.plugin.clone()));
    println!("database             {}", show(i.database.clone()));
    println!("active pid           {}", i.active_pid.map(|p| p.to_string()).unwrap_or_else(|| "- (not streaming)".into()));
    println!("confirmed_flush_lsn  {}", show(lsn(i.confirmed_flush_lsn)));
    println!("restart_lsn          {}", show(lsn(i.restart_lsn)));
    println!("current wal lsn      {}", show(lsn(i.current_wal_lsn)));
    println!("retained wal bytes   {}", i.retained_wal_bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()));
    println!("wal_status           {}", show(i.wal_status.clone()));
}
