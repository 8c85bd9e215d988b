//! End-to-end replication benchmark against the real Postgres of `scripts/test-env`:
//!
//! 1. Throughput: one 1,000,000-row INSERT transaction on `bench_rows`, drained by
//!    `pg_recvlogical` (the baseline) and by the release `walcast run` with the JSON-lines sink
//!    writing to a file (its default config otherwise: the change log is on), each connected
//!    before the workload, alternating, on fresh slots. Times from the commit returned to the
//!    client: to the consumer's last bulk write of its output (wall time to the last row) and to
//!    the slot confirming the commit end LSN.
//! 2. Quiet-stream latency: single-row commits ~50 ms apart, each timed from the commit
//!    returning to the client to its JSON line read from walcast's standard output.
//! 3. CPU per row on 100,000 single-row transactions (`pgbench -c 4`), pg_recvlogical and
//!    walcast writing to a file (`many_tx.rs`).
//! 4. Commit -> slot confirmed with walcast's default status interval, and the standby status
//!    updates it sends per second idle, on spaced commits and under load (`many_tx.rs`, `wire.rs`).
//!
//! CPU is the consumer's utime + stime (its walsender's is printed beside it): on a shared
//! machine wall-clock figures are noisy, CPU seconds much less so. The ratios printed are
//! walcast / pg_recvlogical measured in the same run.
//!
//! Run it through `scripts/bench-replication` (starts the cluster, builds the release binary).
//! It is a measurement: it exits 0 when goals are missed (printing MISSED), non-zero only when
//! it could not measure. Knobs (environment):
//!   WALCAST_TEST_PG                 admin URL of the logical cluster (set by scripts/test-env)
//!   WALCAST_TEST_PG_BIN             Postgres binaries (pg_recvlogical), default /usr/lib/postgresql/15/bin
//!   WALCAST_BIN                     walcast binary, default target/release/walcast
//!   WALCAST_BENCH_ROWS              rows in the throughput transaction (1000000)
//!   WALCAST_BENCH_RUNS              runs per consumer (2, at least 1)
//!   WALCAST_BENCH_LATENCY_COMMITS   single-row commits in the latency test (200)
//!   WALCAST_BENCH_SINK_PATH         walcast's JSON-lines path in the throughput runs (a file in a
//!                                   temp dir; pg_recvlogical writes PATH.recv beside it); a regular
//!                                   file is fsynced per batch (removed after each run), /dev/null
//!                                   leaves the file system out
//!   WALCAST_BENCH_MANY_TX           single-row transactions of the pgbench part (100000)
//!   WALCAST_BENCH_CONFIRM_INTERVAL_MS  walcast's status_interval_ms in the confirm part (its default)
//!   WALCAST_BENCH_ONLY              `throughput`, `latency`, `pgbench` or `confirm` to run one
//!                                   part, or `walcast` / `pg_recvlogical` for the throughput
//!                                   and pgbench runs of one consumer

#[path = "replication/many_tx.rs"]
mod many_tx;
mod setup;
#[path = "replication/wire.rs"]
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use setup::{connect, create_bench_db, drop_bench_db, drop_slot, env_num, stop, wait_active, Target};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_postgres::Client;

const DB: &str = "walcast_bench";
const PUBLICATION: &str = "bench_pub";
const SLOT_PREFIX: &str = "bench_";
/// Standby status interval given to walcast in the throughput, latency and pgbench parts: the
/// same as pg_recvlogical's `-s 1`, so that CPU is compared at the same status chatter (walcast's
/// default is measured in the confirm part).
const STATUS_INTERVAL_MS: u64 = 1000;
const POLL: Duration = Duration::from_millis(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
const LATENCY_SPACING: Duration = Duration::from_millis(50);

const GOAL_RSS_MB: f64 = 40.0;
const GOAL_P50_MS: f64 = 50.0;
/// walcast's CPU per row at most this times pg_recvlogical's, one big transaction.
const GOAL_CPU_BIG_TX: f64 = 1.1;
/// The same on single-row transactions.
const GOAL_CPU_MANY_TX: f64 = 1.5;
/// Wall time to the last row at most this times pg_recvlogical's (both are bound by the
/// walsender's decoding).
const GOAL_DRAINED: f64 = 1.1;
/// Commit -> confirmed with the defaults.
const GOAL_CONFIRM_P50_MS: f64 = 50.0;
const GOAL_CONFIRM_P99_MS: f64 = 150.0;

fn main() -> ExitCode {
    setup::run("replication", bench)
}

/// Settings read from the environment.
struct Env {
    pg: Target,
    pg_bin: PathBuf,

    rows: u64,
    runs: usize,
    latency_commits: usize,
    many_tx: u64,
    throughput: bool,
    latency: bool,
    pgbench: bool,
    confirm: bool,
    consumers: Vec<Kind>,
    sink_path: String,
    clk_tck: f64,
    tmp: tempfile::TempDir,
}

impl Env {
    fn load() -> Result<Self> {
        let pg = Target::from_env("scripts/bench-replication")?;
        let pg_bin = PathBuf::from(std::env::var("WALCAST_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()));
        if !pg_bin.join("pg_recvlogical").is_file() {
            bail!("{} not found: set WALCAST_TEST_PG_BIN", pg_bin.join("pg_recvlogical").display());
        }
        let only = std::env::var("WALCAST_BENCH_ONLY").unwrap_or_default();
        let tmp = tempfile::Builder::new().prefix("walcast-bench").tempdir().context("temp dir")?;
        let clk_tck = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Ok(Self {
            pg,
            pg_bin,
            rows: env_num("WALCAST_BENCH_ROWS", 1_000_000)?.max(1),
            runs: env_num("WALCAST_BENCH_RUNS", 2)?.max(1) as usize,
            latency_commits: env_num("WALCAST_BENCH_LATENCY_COMMITS", 200)?.max(1) as usize,
            many_tx: env_num("WALCAST_BENCH_MANY_TX", 100_000)?.max(4),
            throughput: matches!(only.as_str(), "" | "throughput" | "walcast" | "pg_recvlogical"),
            latency: matches!(only.as_str(), "" | "latency"),
            pgbench: matches!(only.as_str(), "" | "pgbench" | "walcast" | "pg_recvlogical"),
            confirm: matches!(only.as_str(), "" | "confirm"),
            consumers: match only.as_str() {
                "walcast" => vec![Kind::Walcast],
                "pg_recvlogical" => vec![Kind::Recvlogical],
                _ => vec![Kind::Recvlogical, Kind::Walcast],
            },
            sink_path: match std::env::var("WALCAST_BENCH_SINK_PATH") {
                Ok(path) => path,
                Err(_) => tmp.path().join("throughput.jsonl").to_str().ok_or_else(|| anyhow!("temp path is not UTF-8"))?.to_string(),
            },
            clk_tck,
            tmp,
        })
    }
}

async fn bench() -> Result<()> {
    let env = Env::load()?;
    let admin = connect(&env.pg.admin_url).await?;
    let server_version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    drop_bench_db(&admin, DB, None).await.context("remove what an earlier run left")?;
    let result = async {
        let db = create_bench_db(&admin, &env.pg, DB, PUBLICATION).await?;

        let throughput = if env.throughput { Some(throughput(&env, &admin, &db).await?) } else { None };
        let latency = if env.latency { Some(latency(&env, &admin, &db).await?) } else { None };
        let many = if env.pgbench { Some(many_tx::many_tx(&env, &admin, &db).await?) } else { None };
        let confirm = if env.confirm { Some(many_tx::confirm(&env, &admin, &db).await?) } else { None };
        Ok::<_, anyhow::Error>((throughput, latency, many, confirm))
    }
    .await;
    let cleaned = drop_bench_db(&admin, DB, None).await;
    let (throughput, latency, many, confirm) = result?;
    cleaned.context("clean up slots and the bench database")?;

    summary(&env, &server_version, cores, throughput.as_ref(), latency.as_ref());
    if let Some(m) = &many {
        many_summary(m);
    }
    if let Some(c) = &confirm {
        confirm_summary(c);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Throughput

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Recvlogical,
    Walcast,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Recvlogical => "pg_recvlogical",
            Kind::Walcast => "walcast",
        }
    }
}

/// One drained transaction.
#[derive(Debug, Clone)]
struct RunResult {
    kind: Kind,
    insert_secs: f64,
    /// Commit returned -> slot confirmed_flush_lsn >= commit end.
    confirmed_secs: f64,
    /// Commit returned -> the consumer's last bulk write to its output (its write(2) byte count
    /// stops growing); free of the consumer's status-report interval.
    drained_secs: Option<f64>,
    consumer_cpu_secs: Option<f64>,
    walsender_cpu_secs: Option<f64>,
    /// CPU used on the machine after the commit by everything but the consumer and its walsender
    /// (other tests, builds...): the measurement is noisy when this is large.
    background_cpu_secs: Option<f64>,
    /// Context switches of all the consumer's threads after the commit: each is a thread
    /// going to sleep or being preempted, the cost of hand-offs between threads.
    consumer_switches: Option<u64>,
    peak_rss_kb: Option<u64>,
}

struct Throughput {
    rows: u64,
    runs: Vec<RunResult>,
}

async fn throughput(env: &Env, admin: &Client, db: &Client) -> Result<Throughput> {
    let mut runs = Vec::new();
    for round in 1..=env.runs {
        for &kind in &env.consumers {
            eprintln!("replication bench: {} run {round}/{} ...", kind.label(), env.runs);
            let r = throughput_run(env, admin, db, kind, round).await.with_context(|| format!("{} run {round}", kind.label()))?;
            eprintln!(
                "replication bench: {} run {round}: insert {:.2} s, commit -> confirmed {:.2} s ({} rows/s), drained {}, consumer CPU {} ({} context switches), walsender CPU {}, background CPU {}{}",
                kind.label(),
                r.insert_secs,
                r.confirmed_secs,
                thousands((env.rows as f64 / r.confirmed_secs) as u64),
                opt_secs(r.drained_secs),
                opt_secs(r.consumer_cpu_secs),
                r.consumer_switches.map(thousands).unwrap_or_else(|| "?".into()),
                opt_secs(r.walsender_cpu_secs),
                opt_secs(r.background_cpu_secs),
                r.peak_rss_kb.map(|kb| format!(", peak RSS {:.1} MB", kb as f64 / 1024.0)).unwrap_or_default(),
            );
            runs.push(r);
        }
    }
    Ok(Throughput { rows: env.rows, runs })
}

async fn throughput_run(env: &Env, admin: &Client, db: &Client, kind: Kind, round: usize) -> Result<RunResult> {
    // Same WAL for every run: an empty table (new relfilenode) and a checkpoint just before.
    db.batch_execute("TRUNCATE bench_rows RESTART IDENTITY").await?;
    admin.batch_execute("CHECKPOINT").await?;

    let slot = format!("{SLOT_PREFIX}{}_{round}", if kind == Kind::Walcast { "walcast" } else { "recv" });
    // pg_recvlogical writes where walcast does (a regular file: its own file beside it).
    let recv_path = if Path::new(&env.sink_path).is_file() || !env.sink_path.starts_with("/dev/") {
        format!("{}.recv", env.sink_path)
    } else {
        env.sink_path.clone()
    };
    let mut child = match kind {
        Kind::Recvlogical => {
            db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.context("create slot")?;
            spawn_recvlogical(env, &slot, &recv_path)?
        }
        Kind::Walcast => spawn_walcast(env, &slot, &env.sink_path, Stdio::null(), Some(STATUS_INTERVAL_MS))?,
    };
    let outcome = measure_drain(env, admin, db, &slot, &mut child, kind).await;
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    for path in [&env.sink_path, &recv_path] {
        if Path::new(path).is_file() {
            let _ = std::fs::remove_file(path);
        }
    }
    outcome
}

async fn measure_drain(env: &Env, admin: &Client, db: &Client, slot: &str, child: &mut Child, kind: Kind) -> Result<RunResult> {
    let pid = child.id().ok_or_else(|| anyhow!("consumer exited at once"))?;
    let walsender = wait_active(admin, slot, child).await?;

    let insert_start = Instant::now();
    db.execute(&format!("INSERT INTO bench_rows (a, b, d) SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, {}) g", env.rows), &[])
        .await
        .context("workload insert")?;
    let commit = Instant::now();
    let target: String = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let insert_secs = commit.duration_since(insert_start).as_secs_f64();

    let cpu0 = proc_cpu_secs(pid, env.clk_tck);
    let ws_cpu0 = walsender.and_then(|p| proc_cpu_secs(p, env.clk_tck));
    let busy0 = machine_busy_secs(env.clk_tck);
    let switches0 = proc_switches(pid);
    let mut last_wchar = proc_io(pid, "wchar");
    let mut last_bulk_write: Option<Instant> = None;
    let confirmed = loop {
        if let Some(status) = child.try_wait()? {
            bail!("{} exited early ({status}) before confirming {target}", kind.label());
        }
        let row = admin
            .query_opt("SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot, &target])
            .await?
            .ok_or_else(|| anyhow!("slot {slot} disappeared"))?;
        let now = Instant::now();
        // Status updates and log lines are small; the output (≥ a pgoutput message per row, or
        // a JSON batch) is not. The last poll that saw bulk writes ends the drain, ±1 poll.
        if let Some(w) = proc_io(pid, "wchar") {
            if last_wchar.is_some_and(|l| w > l + 4096) {
                last_bulk_write = Some(now);
            }
            last_wchar = Some(w);
        }
        if row.get::<_, Option<bool>>(0) == Some(true) {
            break now;
        }
        if now.duration_since(commit) > DRAIN_TIMEOUT {
            bail!("{} did not confirm {target} within {} s", kind.label(), DRAIN_TIMEOUT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    };
    let consumer_cpu = proc_cpu_secs(pid, env.clk_tck).zip(cpu0).map(|(b, a)| b - a);
    let walsender_cpu = walsender.and_then(|p| proc_cpu_secs(p, env.clk_tck)).zip(ws_cpu0).map(|(b, a)| b - a);
    let busy = machine_busy_secs(env.clk_tck).zip(busy0).map(|(b, a)| b - a);
    let consumer_switches = proc_switches(pid).zip(switches0).map(|(b, a)| b.saturating_sub(a));
    let background_cpu = busy.map(|b| (b - consumer_cpu.unwrap_or(0.0) - walsender_cpu.unwrap_or(0.0)).max(0.0));
    let peak_rss_kb = proc_status_kb(pid, "VmHWM");
    Ok(RunResult {
        kind,
        insert_secs,
        confirmed_secs: confirmed.duration_since(commit).as_secs_f64(),
        drained_secs: last_bulk_write.map(|t| t.duration_since(commit).as_secs_f64()),
        consumer_cpu_secs: consumer_cpu,
        walsender_cpu_secs: walsender_cpu,
        background_cpu_secs: background_cpu,
        consumer_switches,
        peak_rss_kb,
    })
}

fn spawn_recvlogical(env: &Env, slot: &str, path: &str) -> Result<Child> {
    Command::new(env.pg_bin.join("pg_recvlogical"))
        .args(["-h", &env.pg.host, "-p", &env.pg.port.to_string(), "-U", &env.pg.user, "-d", DB])
        .args(["--slot", slot, "--start", "-P", "pgoutput"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={PUBLICATION}")])
        // -F 0: no fsync (/dev/null cannot be synced anyway) and the flush position it reports
        // is always its write position; -s 1: report it every second (its smallest interval).
        .args(["-F", "0", "-s", "1", "-f", path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn pg_recvlogical")
}

/// walcast on `slot` writing JSON lines to `path`; `status_interval_ms` as given, or walcast's
/// default with `None`.
fn spawn_walcast(env: &Env, slot: &str, path: &str, stdout: Stdio, status_interval_ms: Option<u64>) -> Result<Child> {
    spawn_walcast_via(env, slot, path, stdout, status_interval_ms, None)
}

/// [`spawn_walcast`] connecting to Postgres through `port` on the same host when given (the
/// counting relay of `wire.rs`).
fn spawn_walcast_via(
    env: &Env,
    slot: &str,
    path: &str,
    stdout: Stdio,
    status_interval_ms: Option<u64>,
    port: Option<u16>,
) -> Result<Child> {
    let config = env.tmp.path().join(format!("{slot}.toml"));
    let mut source = "tables = [\"public.bench_rows\"]\ncreate_slot = true\ncreate_publication = false\n".to_string();
    if let Some(ms) = status_interval_ms {
        source.push_str(&format!("status_interval_ms = {ms}\n"));
    }
    // The state file in the run's temp dir: slot names repeat from run to run, and a state file
    // left by an earlier run would make walcast refuse the new slot of the same name.
    let state_dir = env.tmp.path().join("state");
    let sink = format!("[sinks.jsonl]\npath = \"{path}\"\n\n[snapshot]\nstate_dir = \"{}\"\n", state_dir.display());
    let mut target = env.pg.clone();
    if let Some(port) = port {
        target.port = port;
    }
    std::fs::write(&config, target.walcast_config(DB, slot, PUBLICATION, &source, &sink)).context("write walcast config")?;
    target.spawn_walcast(&config, stdout, Stdio::inherit())
}

// ---------------------------------------------------------------------------------------------
// Quiet-stream latency

struct Latency {
    /// Commit returned -> line read, milliseconds.
    client_ms: Vec<f64>,
    /// Server commit timestamp -> line read (wall clock), milliseconds.
    commit_ts_ms: Vec<f64>,
}

async fn latency(env: &Env, admin: &Client, db: &Client) -> Result<Latency> {
    eprintln!("replication bench: quiet-stream latency, {} single-row commits ...", env.latency_commits);
    let slot = format!("{SLOT_PREFIX}latency");
    let mut child = spawn_walcast(env, &slot, "-", Stdio::piped(), Some(STATUS_INTERVAL_MS))?;
    let outcome = measure_latency(env, admin, db, &slot, &mut child).await;
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    outcome
}

async fn measure_latency(env: &Env, admin: &Client, db: &Client, slot: &str, child: &mut Child) -> Result<Latency> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("walcast stdout not piped"))?;
    // Timestamp lines as soon as they are read, independent of the commit loop.
    let (tx, lines) = mpsc::unbounded_channel::<(Instant, SystemTime, String)>();
    let reader = tokio::spawn(async move {
        let mut stdout = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = stdout.next_line().await {
            if tx.send((Instant::now(), SystemTime::now(), line)).is_err() {
                break;
            }
        }
    });
    wait_active(admin, slot, child).await?;

    let insert = db.prepare("INSERT INTO bench_rows (a, b, d) VALUES (0, $1, 0)").await?;
    let mut waiter = LineWaiter { lines, early: HashMap::new() };

    // Warm-up: the first change of a session also carries the Relation message.
    for i in 0..5 {
        let marker = format!("warm-{i}");
        db.execute(&insert, &[&marker]).await?;
        waiter.wait(marker).await?;
    }

    let mut client_ms = Vec::with_capacity(env.latency_commits);
    let mut commit_ts_ms = Vec::with_capacity(env.latency_commits);
    for i in 0..env.latency_commits {
        let started = Instant::now();
        let marker = format!("lat-{i}");
        db.execute(&insert, &[&marker]).await?;
        let committed = Instant::now();
        let (read_at, read_wall, line) = waiter.wait(marker).await?;
        // Signed: the walsender may beat the commit acknowledgement to the client.
        client_ms.push(signed_ms(read_at, committed));
        if let Some(ts) = commit_ts_micros(&line) {
            let read_micros = read_wall.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
            commit_ts_ms.push((read_micros - ts) as f64 / 1000.0);
        }
        if let Some(rest) = LATENCY_SPACING.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    reader.abort();
    Ok(Latency { client_ms, commit_ts_ms })
}

/// Lines read from walcast's stdout, matched to the commit that produced them by its marker
/// (the `b` column).
struct LineWaiter {
    lines: mpsc::UnboundedReceiver<(Instant, SystemTime, String)>,
    /// Lines read while waiting for another marker.
    early: HashMap<String, (Instant, SystemTime, String)>,
}

impl LineWaiter {
    async fn wait(&mut self, marker: String) -> Result<(Instant, SystemTime, String)> {
        if let Some(hit) = self.early.remove(&marker) {
            return Ok(hit);
        }
        loop {
            let (at, wall, line) = tokio::time::timeout(Duration::from_secs(10), self.lines.recv())
                .await
                .map_err(|_| anyhow!("no line for {marker} within 10 s"))?
                .ok_or_else(|| anyhow!("walcast closed its standard output"))?;
            match line.split("\"b\":\"").nth(1).and_then(|r| r.split('"').next()) {
                Some(b) if b == marker => return Ok((at, wall, line)),
                Some(b) => {
                    self.early.insert(b.to_string(), (at, wall, line));
                }
                None => {}
            }
        }
    }
}

fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        a.duration_since(b).as_secs_f64() * 1000.0
    } else {
        -(b.duration_since(a).as_secs_f64() * 1000.0)
    }
}

/// `"commit_ts":"2026-11-22T16:44:52.342014Z"` -> microseconds since the Unix epoch.
fn commit_ts_micros(line: &str) -> Option<i64> {
    let ts = line.split("\"commit_ts\":\"").nth(1)?.get(..27)?;
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// utime + stime of a process, seconds.
fn proc_cpu_secs(pid: u32, clk_tck: f64) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck)
}

/// Voluntary plus involuntary context switches, summed over the threads of a process (threads
/// that already exited are not counted).
fn proc_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:").or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:")) {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// CPU time spent by the whole machine (all cores, not idle or iowait), seconds.
fn machine_busy_secs(clk_tck: f64) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).copied().unwrap_or(0);
    Some(busy as f64 / clk_tck)
}

/// A counter of /proc/PID/io: `wchar` (bytes passed to write(2) and friends, on files, pipes
/// and sockets alike), `syscw` (such calls).
fn proc_io(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':'))).and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `/dev/null`, or `file` for a path in the temp dir.
fn short_path(path: &str) -> &str {
    if path.starts_with("/dev/") {
        path
    } else {
        "file"
    }
}

fn opt_secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into())
}

fn goal(met: bool) -> &'static str {
    if met {
        "ok"
    } else {
        "MISSED"
    }
}

/// Medians over the runs of one consumer.
struct KindStats {
    secs: f64,
    runs: Vec<f64>,
    drained: Option<f64>,
    cpu: Option<f64>,
    walsender_cpu: Option<f64>,
    background_cpu: Option<f64>,
    switches: Option<f64>,
    peak_rss_kb: Option<u64>,
}

impl KindStats {
    fn of(t: &Throughput, kind: Kind) -> Option<Self> {
        let runs: Vec<&RunResult> = t.runs.iter().filter(|r| r.kind == kind).collect();
        let med = |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(|r| f(r)).collect());
        Some(Self {
            secs: med(&|r| Some(r.confirmed_secs))?,
            runs: runs.iter().map(|r| r.confirmed_secs).collect(),
            drained: med(&|r| r.drained_secs),
            cpu: med(&|r| r.consumer_cpu_secs),
            walsender_cpu: med(&|r| r.walsender_cpu_secs),
            background_cpu: med(&|r| r.background_cpu_secs),
            switches: med(&|r| r.consumer_switches.map(|s| s as f64)),
            peak_rss_kb: runs.iter().filter_map(|r| r.peak_rss_kb).max(),
        })
    }

    fn line(&self, label: &str, rows: u64) -> String {
        let runs: Vec<String> = self.runs.iter().map(|s| format!("{s:.2}")).collect();
        format!(
            "  {label:<52} {} rows  {:6.2} s  {:>5}k rows/s   (runs: {} s)",
            thousands(rows),
            self.secs,
            thousands((rows as f64 / self.secs / 1000.0).round() as u64),
            runs.join(", ")
        )
    }

    fn cpu(&self) -> String {
        format!(
            "{} (+ its walsender {}), {} context switches",
            opt_secs(self.cpu),
            opt_secs(self.walsender_cpu),
            self.switches.map(|s| thousands(s as u64)).unwrap_or_else(|| "?".into())
        )
    }
}

fn throughput_summary(env: &Env, cores: usize, t: &Throughput) {
    let recv = KindStats::of(t, Kind::Recvlogical);
    let wal = KindStats::of(t, Kind::Walcast);
    println!(
        "  workload: one INSERT of {} rows into bench_rows, consumers connected before it; median of {} run(s) each, alternating, fresh slots",
        thousands(t.rows),
        env.runs
    );
    println!("  time = commit returned to the client -> the consumer's slot confirmed_flush_lsn >= the commit's end LSN");
    if let Some(r) = &recv {
        println!("{}", r.line(&format!("pg_recvlogical (-F 0 -s 1 -f {})", short_path(&env.sink_path)), t.rows));
    }
    if let Some(w) = &wal {
        println!(
            "{}",
            w.line(&format!("walcast (jsonl -> {}, status_interval_ms {STATUS_INTERVAL_MS})", short_path(&env.sink_path)), t.rows)
        );
    }
    println!("    (the confirmed time includes up to two status intervals of each consumer: compare the drained time and CPU)");
    if let Some(w) = &wal {
        match w.peak_rss_kb {
            Some(kb) => {
                let mb = kb as f64 / 1024.0;
                let recv = recv.as_ref().and_then(|r| r.peak_rss_kb).map(|r| r as f64 / 1024.0);
                println!(
                    "    peak RSS (VmHWM): pg_recvlogical {}, walcast {mb:.1} MB{} (goal < {GOAL_RSS_MB} MB) {}",
                    recv.map(|r| format!("{r:.1} MB")).unwrap_or_else(|| "?".into()),
                    recv.map(|r| format!(": walcast/pg_recvlogical {:.1}x", mb / r)).unwrap_or_default(),
                    goal(mb < GOAL_RSS_MB)
                );
            }
            None => println!("    walcast peak RSS unknown (/proc/PID/status unreadable)"),
        }
    }
    if let (Some(rd), Some(wd)) = (recv.as_ref().and_then(|r| r.drained), wal.as_ref().and_then(|w| w.drained)) {
        let ratio = wd / rd;
        println!("    wall time to the last row (commit -> last bulk write of the output, free of status-report lag):");
        println!(
            "      pg_recvlogical {rd:.2} s, walcast {wd:.2} s: walcast/pg_recvlogical {ratio:.2}x (goal <= {GOAL_DRAINED}x) {}",
            goal(ratio <= GOAL_DRAINED)
        );
    }
    if let Some(r) = &recv {
        println!("    CPU after commit, pg_recvlogical: {}", r.cpu());
    }
    if let Some(w) = &wal {
        println!("    CPU after commit, walcast:        {}", w.cpu());
    }
    if let (Some(rc), Some(wc)) = (recv.as_ref().and_then(|r| r.cpu), wal.as_ref().and_then(|w| w.cpu)) {
        let per_m = |cpu: f64| cpu / t.rows as f64 * 1e6;
        let ratio = wc / rc;
        println!(
            "    CPU per 1M rows: pg_recvlogical {:.2} s, walcast {:.2} s: walcast/pg_recvlogical {ratio:.2}x (goal <= {GOAL_CPU_BIG_TX}x) {}",
            per_m(rc),
            per_m(wc),
            goal(ratio <= GOAL_CPU_BIG_TX)
        );
    }
    // Other processes (builds, tests) compete for the same cores and distort both consumers.
    let busy = [&recv, &wal]
        .iter()
        .filter_map(|k| k.as_ref())
        .filter_map(|k| k.background_cpu.map(|b| b / (k.secs * cores as f64)))
        .fold(0.0_f64, f64::max);
    if busy > 0.10 {
        println!(
            "    WARNING: other processes used up to {:.0}% of the machine's CPU during the runs; these numbers are noisy",
            busy * 100.0
        );
    }
}

fn summary(env: &Env, version: &str, cores: usize, throughput: Option<&Throughput>, latency: Option<&Latency>) {
    let version = version.split_whitespace().next().unwrap_or(version);
    println!();
    println!("replication bench (Postgres {version} local, {cores} cores)");
    if let Some(t) = throughput {
        throughput_summary(env, cores, t);
    }
    if let Some(l) = latency {
        let p50 = percentile(&l.client_ms, 50.0).unwrap_or(f64::NAN);
        let p99 = percentile(&l.client_ms, 99.0).unwrap_or(f64::NAN);
        println!(
            "  quiet-stream latency, walcast (jsonl -> stdout pipe): {} single-row commits {} ms apart, commit returned -> line read",
            l.client_ms.len(),
            LATENCY_SPACING.as_millis()
        );
        println!(
            "    p50 {p50:.1} ms  p99 {p99:.1} ms  max {:.1} ms (goal p50 < {GOAL_P50_MS} ms) {}",
            percentile(&l.client_ms, 100.0).unwrap_or(f64::NAN),
            goal(p50 < GOAL_P50_MS)
        );
        if !l.commit_ts_ms.is_empty() {
            println!(
                "    from the server's commit_ts: p50 {:.1} ms  p99 {:.1} ms",
                percentile(&l.commit_ts_ms, 50.0).unwrap_or(f64::NAN),
                percentile(&l.commit_ts_ms, 99.0).unwrap_or(f64::NAN)
            );
        }
    }
}

fn many_summary(m: &many_tx::ManyTx) {
    println!(
        "  single-row transactions: pgbench -c 4 -j 2, {} INSERTs of one row, consumers writing to a file; medians",
        thousands(m.transactions)
    );
    let med =
        |kind: Kind, f: &dyn Fn(&many_tx::ManyRun) -> Option<f64>| median(m.runs.iter().filter(|r| r.kind == kind).filter_map(f).collect());
    let per_m = |cpu: f64| cpu / m.transactions as f64 * 1e6;
    for kind in [Kind::Recvlogical, Kind::Walcast] {
        if let Some(secs) = med(kind, &|r| Some(r.secs)) {
            println!(
                "    {:<15} workload start -> last row {}, -> confirmed {secs:.2} s; CPU per 1M rows {} (+ its walsender {}); peak RSS {}",
                kind.label(),
                opt_secs(med(kind, &|r| r.drained_secs)),
                opt_secs(med(kind, &|r| r.cpu_secs).map(per_m)),
                opt_secs(med(kind, &|r| r.walsender_cpu_secs).map(per_m)),
                m.runs
                    .iter()
                    .filter(|r| r.kind == kind)
                    .filter_map(|r| r.peak_rss_kb)
                    .max()
                    .map(|kb| format!("{:.1} MB", kb as f64 / 1024.0))
                    .unwrap_or_else(|| "?".into())
            );
        }
    }
    if let (Some(rd), Some(wd)) = (med(Kind::Recvlogical, &|r| r.drained_secs), med(Kind::Walcast, &|r| r.drained_secs)) {
        println!("    wall time to the last row walcast/pg_recvlogical {:.2}x", wd / rd);
    }
    if let (Some(rc), Some(wc)) = (med(Kind::Recvlogical, &|r| r.cpu_secs), med(Kind::Walcast, &|r| r.cpu_secs)) {
        let ratio = wc / rc;
        println!("    CPU per row walcast/pg_recvlogical {ratio:.2}x (goal <= {GOAL_CPU_MANY_TX}x) {}", goal(ratio <= GOAL_CPU_MANY_TX));
    }
}

fn confirm_summary(c: &many_tx::Confirm) {
    let p50 = percentile(&c.ms, 50.0).unwrap_or(f64::NAN);
    let p99 = percentile(&c.ms, 99.0).unwrap_or(f64::NAN);
    let settings = c.interval_ms.map_or_else(|| "its defaults".to_string(), |ms| format!("status_interval_ms {ms}"));
    println!(
        "  commit -> slot confirmed, walcast with {settings} (jsonl -> file): {} single-row commits {} ms apart",
        c.ms.len(),
        LATENCY_SPACING.as_millis()
    );
    println!(
        "    p50 {p50:.1} ms  p99 {p99:.1} ms  max {:.1} ms (goal p50 < {GOAL_CONFIRM_P50_MS} ms, p99 < {GOAL_CONFIRM_P99_MS} ms) {}",
        percentile(&c.ms, 100.0).unwrap_or(f64::NAN),
        goal(p50 < GOAL_CONFIRM_P50_MS && p99 < GOAL_CONFIRM_P99_MS)
    );
    println!("    messages per second on walcast's replication connection (counted by a relay on the wire):");
    let line = |what: &str, (status, keepalives, replies): (f64, f64, f64)| {
        println!("      {what:<44} status updates {status:6.1}/s, server keepalives {keepalives:6.1}/s ({replies:.1}/s asking a reply)");
    };
    line("idle (nothing committed)", c.idle);
    line(&format!("spaced commits ({} ms apart)", LATENCY_SPACING.as_millis()), c.spaced);
    line(&format!("pgbench -c 4 load (to confirmed, {:.1} s)", c.load_secs), c.load);
}
