//! Setup the Postgres benchmarks share (`benches/replication.rs`, `benches/kafka.rs`; each
//! includes it with `mod setup;`): the runner and its exit status, the logical cluster of
//! `scripts/test-env` and the walcast binary, the bench database with its `bench_rows` table and
//! publication, walcast's config and process, waiting for a walsender, stopping a consumer and
//! dropping slots.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

/// How often the slot is polled while waiting for a walsender.
const POLL: Duration = Duration::from_millis(20);

/// Run `bench` on a multi-threaded runtime. A benchmark is a measurement: it exits 0 when goals
/// are missed (printing MISSED), non-zero only when it could not measure.
pub fn run<F: Future<Output = Result<()>>>(name: &str, bench: impl FnOnce() -> F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The logical cluster of `scripts/test-env` (`WALCAST_TEST_PG`) and the walcast binary under test
/// (`WALCAST_BIN`, default target/release/walcast).
#[derive(Clone)]
pub struct Target {
    /// Admin URL of the cluster.
    pub admin_url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub walcast_bin: PathBuf,
}

impl Target {
    /// From the environment; `script` (e.g. `scripts/bench-kafka`) is named in the fixes.
    pub fn from_env(script: &str) -> Result<Self> {
        let admin_url = std::env::var("WALCAST_TEST_PG")
            .map_err(|_| anyhow!("WALCAST_TEST_PG is not set: run {script}, or eval \"$(scripts/test-env)\" first"))?;
        let cfg = tokio_postgres::Config::from_str(&admin_url).context("parse WALCAST_TEST_PG")?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_string(),
        };
        let walcast_bin = std::env::var_os("WALCAST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/walcast"));
        if !walcast_bin.is_file() {
            bail!("{} not found: build it with `cargo build --release` ({script} does)", walcast_bin.display());
        }
        Ok(Self {
            admin_url,
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_string(),
            walcast_bin,
        })
    }

    /// Connection string of database `db` on the cluster.
    pub fn db_url(&self, db: &str) -> String {
        format!("host={} port={} user={} dbname={db}", self.host, self.port, self.user)
    }

    /// A walcast config: `[source]` on `db` (`slot`, `publication`, then `source_lines`), then
    /// `sinks`, a warn-level log and metrics on a free port.
    pub fn walcast_config(&self, db: &str, slot: &str, publication: &str, source_lines: &str, sinks: &str) -> String {
        format!(
            "[source]\nhost = \"{}\"\nport = {}\ndatabase = \"{db}\"\nuser = \"{}\"\nslot = \"{slot}\"\npublication = \"{publication}\"\n\
             {source_lines}\n{sinks}\n[log]\nlevel = \"warn\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            self.host, self.port, self.user
        )
    }

    /// Start `walcast run --config CONFIG` (its log level from the config, not RUST_LOG).
    pub fn spawn_walcast(&self, config: &Path, stdout: Stdio, stderr: Stdio) -> Result<Child> {
        Command::new(&self.walcast_bin)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", self.walcast_bin.display()))
    }
}

/// A number from the environment variable `name` (`_` separators allowed), `default` when unset.
pub fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().replace('_', "").parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// A SQL connection; its connection task runs in the background.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Create the bench database `db` with the table `bench_rows` and `publication` for it; returns
/// a connection to it. Autovacuum is off on the table so no vacuum competes for the cores
/// mid-measurement.
pub async fn create_bench_db(admin: &Client, target: &Target, db: &str, publication: &str) -> Result<Client> {
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.context("create database")?;
    let client = connect(&target.db_url(db)).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, a int, b text, c timestamptz DEFAULT now(), d numeric) \
                 WITH (autovacuum_enabled = false);
             CREATE PUBLICATION {publication} FOR TABLE bench_rows;"
        ))
        .await
        .context("create table and publication")?;
    Ok(client)
}

/// Drop every slot of database `db` and, with `slot_prefix`, every slot whose name starts with
/// it (ending the walsenders that hold them first), then the database: what this or an earlier
/// run left.
pub async fn drop_bench_db(admin: &Client, db: &str, slot_prefix: Option<&str>) -> Result<()> {
    for _ in 0..100 {
        let rows = admin
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots \
                 WHERE database = $1 OR ($2::text IS NOT NULL AND starts_with(slot_name::text, $2))",
                &[&db, &slot_prefix],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let slot: String = row.get(0);
            let pid: Option<i32> = row.get(1);
            if let Some(pid) = pid {
                admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
            } else {
                // May race with a walsender that just took it; the next round retries.
                let _ = admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
    Ok(())
}

/// Wait until a walsender streams `slot` (START_REPLICATION accepted); returns its pid.
pub async fn wait_active(admin: &Client, slot: &str, child: &mut Child) -> Result<Option<u32>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("consumer exited ({status}) before streaming slot {slot}");
        }
        // A walsender that streams, not the SQL backend or the replication session that creates
        // the slot (each holds it briefly, walcast's in state `startup`).
        let row = admin
            .query_opt(
                "SELECT s.active_pid FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1 AND r.state IN ('catchup', 'streaming')",
                &[&slot],
            )
            .await?;
        if let Some(row) = row {
            return Ok(row.get::<_, Option<i32>>(0).map(|p| p as u32));
        }
        if Instant::now() > deadline {
            bail!("slot {slot} not streamed within 30 s");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SIGTERM (walcast and pg_recvlogical stop cleanly on it), then SIGKILL after 30 s.
pub async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_ok() {
            return;
        }
        eprintln!("bench: pid {pid} ignored SIGTERM for 30 s, killing it");
    }
    let _ = child.kill().await;
}

/// Drop a slot, ending a walsender that still holds it (the consumer was stopped or killed).
pub async fn drop_slot(admin: &Client, slot: &str) -> Result<()> {
    for _ in 0..600 {
        let row = admin.query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await?;
        match row.map(|r| r.get::<_, Option<i32>>(0)) {
            None => return Ok(()),
            Some(Some(pid)) => {
                admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
            }
            Some(None) => {
                let _ = admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("cannot drop slot {slot}")
}
