//! Two parts of the replication bench that need many small transactions:
//!
//! - CPU per row on single-row transactions: `pgbench -c 4` inserts one row per transaction,
//!   drained by pg_recvlogical and by walcast (JSON lines to a file), alternating, fresh slots;
//!   the consumer's utime + stime from the workload's start to its slot confirming the end.
//! - Commit -> slot confirmed with walcast's defaults (no `status_interval_ms` in its config):
//!   single-row commits spaced apart, each timed from the commit returning to the client to
//!   `confirmed_flush_lsn` reaching its LSN (polled every millisecond). walcast connects
//!   through a relay (`wire.rs`) that counts its standby status updates and the server's
//!   keepalives per second: idle, during the spaced commits, and under `pgbench -c 4` load.

use super::*;

/// One consumer draining the pgbench workload.
#[derive(Debug, Clone)]
pub(super) struct ManyRun {
    pub(super) kind: Kind,
    /// Workload start -> slot confirmed the end, seconds.
    pub(super) secs: f64,
    pub(super) cpu_secs: Option<f64>,
    pub(super) walsender_cpu_secs: Option<f64>,
    /// Workload start -> the consumer's output file stopped growing (its last row), seconds.
    pub(super) drained_secs: Option<f64>,
    pub(super) peak_rss_kb: Option<u64>,
}

/// Every run of the pgbench part.
pub(super) struct ManyTx {
    pub(super) transactions: u64,
    pub(super) runs: Vec<ManyRun>,
}

pub(super) async fn many_tx(env: &Env, admin: &Client, db: &Client) -> Result<ManyTx> {
    let pgbench = env.pg_bin.join("pgbench");
    if !pgbench.is_file() {
        bail!("{} not found: set WALCAST_TEST_PG_BIN", pgbench.display());
    }
    let script = env.tmp.path().join("insert.sql");
    std::fs::write(&script, "INSERT INTO bench_rows (a, b, d) VALUES (1, md5(random()::text), 1.5);\n")?;
    let mut runs = Vec::new();
    for round in 1..=env.runs {
        for &kind in &env.consumers {
            eprintln!("replication bench: pgbench -c 4, {} run {round}/{} ...", kind.label(), env.runs);
            let r = many_run(env, admin, db, kind, round, &pgbench, &script)
                .await
                .with_context(|| format!("{} pgbench run {round}", kind.label()))?;
            eprintln!(
                "replication bench: pgbench -c 4, {} run {round}: {} transactions in {:.2} s, consumer CPU {}, walsender CPU {}",
                kind.label(),
                thousands(env.many_tx),
                r.secs,
                opt_secs(r.cpu_secs),
                opt_secs(r.walsender_cpu_secs)
            );
            runs.push(r);
        }
    }
    Ok(ManyTx { transactions: env.many_tx, runs })
}

async fn many_run(env: &Env, admin: &Client, db: &Client, kind: Kind, round: usize, pgbench: &Path, script: &Path) -> Result<ManyRun> {
    db.batch_execute("TRUNCATE bench_rows RESTART IDENTITY").await?;
    admin.batch_execute("CHECKPOINT").await?;
    let slot = format!("{SLOT_PREFIX}many_{}_{round}", if kind == Kind::Walcast { "walcast" } else { "recv" });
    let output = env.tmp.path().join(format!("{slot}.out"));
    let output = output.to_str().ok_or_else(|| anyhow!("temp path is not UTF-8"))?;
    let mut child = match kind {
        Kind::Recvlogical => {
            db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.context("create slot")?;
            spawn_recvlogical(env, &slot, output)?
        }
        Kind::Walcast => spawn_walcast(env, &slot, output, Stdio::null(), Some(STATUS_INTERVAL_MS))?,
    };
    let outcome = async {
        let pid = child.id().ok_or_else(|| anyhow!("consumer exited at once"))?;
        let walsender = wait_active(admin, &slot, &mut child).await?;
        let cpu0 = proc_cpu_secs(pid, env.clk_tck);
        let ws_cpu0 = walsender.and_then(|p| proc_cpu_secs(p, env.clk_tck));
        let start = Instant::now();
        let per_client = (env.many_tx / 4).max(1);
        pgbench_four_clients(env, pgbench, script, ["-t", &per_client.to_string()]).await?;
        let target: String = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
        let last_row = wait_confirmed(admin, &slot, &target, &mut child, kind, Some(Path::new(output))).await?;
        Ok(ManyRun {
            kind,
            secs: start.elapsed().as_secs_f64(),
            cpu_secs: proc_cpu_secs(pid, env.clk_tck).zip(cpu0).map(|(b, a)| b - a),
            walsender_cpu_secs: walsender.and_then(|p| proc_cpu_secs(p, env.clk_tck)).zip(ws_cpu0).map(|(b, a)| b - a),
            drained_secs: last_row.map(|t| t.duration_since(start).as_secs_f64()),
            peak_rss_kb: proc_status_kb(pid, "VmHWM"),
        })
    }
    .await;
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    let _ = std::fs::remove_file(output);
    outcome
}

/// The single-row `script` from 4 clients on 2 threads; `limit` is pgbench's `-t N` (transactions
/// per client) or `-T SECS`.
async fn pgbench_four_clients(env: &Env, pgbench: &Path, script: &Path, limit: [&str; 2]) -> Result<()> {
    let status = Command::new(pgbench)
        .args(["-n", "-c", "4", "-j", "2"])
        .args(limit)
        .arg("-f")
        .arg(script)
        .args(["-h", &env.pg.host, "-p", &env.pg.port.to_string(), "-U", &env.pg.user, DB])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("run pgbench")?;
    if !status.success() {
        bail!("pgbench failed ({status})");
    }
    Ok(())
}

/// Poll until the slot's confirmed_flush_lsn reaches `target`; returns when `output` (if given)
/// last grew, ±1 poll: the consumer's last row.
async fn wait_confirmed(
    admin: &Client,
    slot: &str,
    target: &str,
    child: &mut Child,
    kind: Kind,
    output: Option<&Path>,
) -> Result<Option<Instant>> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last_len: Option<u64> = None;
    let mut last_growth: Option<Instant> = None;
    loop {
        if let Some(len) = output.and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()) {
            if last_len.is_none_or(|l| len > l) {
                last_growth = Some(Instant::now());
            }
            last_len = Some(len);
        }
        if let Some(status) = child.try_wait()? {
            bail!("{} exited early ({status}) before confirming {target}", kind.label());
        }
        let row = admin
            .query_opt("SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot, &target])
            .await?
            .ok_or_else(|| anyhow!("slot {slot} disappeared"))?;
        if row.get::<_, Option<bool>>(0) == Some(true) {
            return Ok(last_growth);
        }
        if Instant::now() > deadline {
            bail!("{} did not confirm {target} within {} s", kind.label(), DRAIN_TIMEOUT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Commit -> confirmed, milliseconds, one per commit, and the standby status updates walcast
/// sent meanwhile (counted on the wire).
pub(super) struct Confirm {
    pub(super) ms: Vec<f64>,
    /// `status_interval_ms` given to walcast; `None`: its default.
    pub(super) interval_ms: Option<u64>,
    /// Messages per second (status updates, keepalives, keepalives asking a reply), idle.
    pub(super) idle: (f64, f64, f64),
    /// The same during the spaced commits.
    pub(super) spaced: (f64, f64, f64),
    /// The same under `pgbench -c 4` load, from its start to the slot confirming its end.
    pub(super) load: (f64, f64, f64),
    pub(super) load_secs: f64,
}

/// Seconds of the idle phase and of the pgbench load.
const IDLE: Duration = Duration::from_secs(10);
const LOAD_SECS: u32 = 5;

pub(super) async fn confirm(env: &Env, admin: &Client, db: &Client) -> Result<Confirm> {
    let interval_ms = match std::env::var("WALCAST_BENCH_CONFIRM_INTERVAL_MS") {
        Ok(v) => Some(v.trim().parse().with_context(|| format!("WALCAST_BENCH_CONFIRM_INTERVAL_MS={v:?} is not a number"))?),
        Err(_) => None,
    };
    let label = interval_ms.map_or_else(|| "the default status interval".to_string(), |ms| format!("status_interval_ms {ms}"));
    eprintln!(
        "replication bench: commit -> confirmed with {label}, {} s idle, {} single-row commits, {LOAD_SECS} s of pgbench -c 4 ...",
        IDLE.as_secs(),
        env.latency_commits
    );
    let pgbench = env.pg_bin.join("pgbench");
    let script = env.tmp.path().join("confirm-load.sql");
    std::fs::write(&script, "INSERT INTO bench_rows (a, b, d) VALUES (2, md5(random()::text), 1.5);\n")?;
    let (port, counts) = super::wire::relay(&env.pg.host, env.pg.port).await?;
    let slot = format!("{SLOT_PREFIX}confirm");
    let output = env.tmp.path().join("confirm.jsonl");
    let output = output.to_str().ok_or_else(|| anyhow!("temp path is not UTF-8"))?.to_string();
    let mut child = super::spawn_walcast_via(env, &slot, &output, Stdio::null(), interval_ms, Some(port))?;
    let outcome = async {
        wait_active(admin, &slot, &mut child).await?;
        // Idle: nothing committed, the slot confirmed; the counts are walcast's idle chatter.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (t0, r0) = (Instant::now(), counts.read());
        tokio::time::sleep(IDLE).await;
        let (t1, r1) = (Instant::now(), counts.read());
        let idle = r1.rates_since(&r0, t1.duration_since(t0).as_secs_f64());

        let insert = db.prepare("INSERT INTO bench_rows (a, b, d) VALUES (0, 'confirm', 0)").await?;
        let confirmed =
            admin.prepare("SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1").await?;
        let mut ms = Vec::with_capacity(env.latency_commits);
        let (t1, r1) = (Instant::now(), counts.read());
        for i in 0..env.latency_commits + 5 {
            let started = Instant::now();
            // A position inside the transaction, after every earlier commit: confirmed reaches
            // it exactly when this commit is confirmed.
            db.batch_execute("BEGIN").await?;
            db.execute(&insert, &[]).await?;
            let target: String = db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
            db.batch_execute("COMMIT").await?;
            let committed = Instant::now();
            loop {
                let row = admin.query_opt(&confirmed, &[&slot, &target]).await?.ok_or_else(|| anyhow!("slot {slot} disappeared"))?;
                if row.get::<_, Option<bool>>(0) == Some(true) {
                    break;
                }
                if committed.elapsed() > Duration::from_secs(30) {
                    bail!("commit {i} not confirmed within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The first commits also carry the Relation message and warm the connection.
            if i >= 5 {
                ms.push(committed.elapsed().as_secs_f64() * 1000.0);
            }
            if let Some(rest) = LATENCY_SPACING.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        let (t2, r2) = (Instant::now(), counts.read());
        let spaced = r2.rates_since(&r1, t2.duration_since(t1).as_secs_f64());

        // Under load: single-row transactions as fast as 4 clients go.
        pgbench_four_clients(env, &pgbench, &script, ["-T", &LOAD_SECS.to_string()]).await?;
        let target: String = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
        wait_confirmed(admin, &slot, &target, &mut child, Kind::Walcast, None).await?;
        let (t3, r3) = (Instant::now(), counts.read());
        let load_secs = t3.duration_since(t2).as_secs_f64();
        let load = r3.rates_since(&r2, load_secs);
        Ok(Confirm { ms, interval_ms, idle, spaced, load, load_secs })
    }
    .await;
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    let _ = std::fs::remove_file(&output);
    outcome
}
