//! `walcast demo`: a throwaway Postgres with a sample catalogue, a workload, and the stream on
//! stdout. Needs nothing but Debian's postgresql package, which it installs when it can.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Default port of the demo cluster (non-default, so it never meets a real server on 5432).
pub const DEFAULT_PORT: u16 = 54_400;
/// Default pause between workload transactions.
pub const DEFAULT_WORKLOAD_INTERVAL_MS: u64 = 500;

const SCHEMA_SQL: &str = include_str!("../sql/movies/schema.sql");
const DATA_SQL: &str = include_str!("../sql/demo/data.sql");
const WORKLOAD_SQL: &str = include_str!("../sql/demo/workload.sql");
const DEMO_DB: &str = "walcast_demo";
const PG_PACKAGE: &str = "postgresql-15";

/// Run the demo until `shutdown`, then stop and delete the cluster.
pub async fn run(port: u16, interval_ms: u64, shutdown: CancellationToken) -> anyhow::Result<()> {
    let bin = find_or_install_postgres()?;
    let dir = std::env::temp_dir().join(format!("walcast-demo-{}", std::process::id()));
    let cluster = Cluster::start(&bin, &dir, port)?;
    eprintln!("walcast demo: postgres running on 127.0.0.1:{port} (data in {}), loading the sample catalogue", dir.display());

    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let admin = connect(&url).await?;
    // Two statements: CREATE DATABASE cannot share a transaction with anything.
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DEMO_DB}")).await?;
    admin.batch_execute(&format!("CREATE DATABASE {DEMO_DB}")).await?;
    let db = connect(&format!("host=127.0.0.1 port={port} user=postgres dbname={DEMO_DB}")).await?;
    db.batch_execute(SCHEMA_SQL).await.context("loading sql/movies/schema.sql")?;
    db.batch_execute(DATA_SQL).await.context("loading sql/demo/data.sql")?;

    let state_dir = dir.join("walcast-state").display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let config = Config::parse(
        &format!(
            r#"
[source]
host = "127.0.0.1"
port = {port}
database = "{DEMO_DB}"
user = "postgres"
slot = "walcast_demo"
publication = "walcast_demo"
tables = ["content.*"]

[sinks.jsonl]
path = "-"

[snapshot]
# The sample rows come first (op "read"), then the workload's changes.
state_dir = "{state_dir}"

[metrics]
# Any free port: the demo must start even where 9187 is taken (the log line names the port).
listen = "127.0.0.1:0"
"#
        ),
        Path::new("<demo>"),
    )?;
    // (state_dir is inside the throwaway cluster's directory, removed with it.)
    eprintln!("walcast demo: streaming changes of schema content as JSON lines; Ctrl-C stops and cleans up");

    let workload = tokio::spawn(run_workload(db, Duration::from_millis(interval_ms.max(1)), shutdown.clone()));
    let result = crate::pipeline::run(&config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = workload.await;
    drop(admin);
    drop(cluster);
    result.map(|_| ()).map_err(Into::into)
}

async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(conn, tokio_postgres::NoTls).await.with_context(|| format!("connecting to the demo cluster ({conn})"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Insert, update and delete catalogue rows until shutdown.
async fn run_workload(db: tokio_postgres::Client, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = db.batch_execute(WORKLOAD_SQL).await {
            tracing::warn!(%error, "demo workload transaction failed");
        }
    }
}

/// The directory of `initdb` and `pg_ctl`; installs Debian's package when missing and allowed.
fn find_or_install_postgres() -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_postgres_bin() {
        return Ok(bin);
    }
    if !is_root() {
        bail!("postgres server binaries not found; install them first (Debian/Ubuntu: sudo apt-get install -y {PG_PACKAGE}) and run the demo again");
    }
    eprintln!("walcast demo: installing {PG_PACKAGE} with apt-get (one time)");
    for args in [vec!["update", "-q"], vec!["install", "-y", "-q", "--no-install-recommends", PG_PACKAGE]] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed; install {PG_PACKAGE} by hand and run the demo again", args.join(" "));
        }
    }
    find_postgres_bin().context("postgresql was installed but initdb is still missing")
}

fn find_postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    // Newest major version first.
    found.sort_by_key(|p| {
        std::cmp::Reverse(p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
    });
    found.into_iter().next()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A running throwaway cluster, stopped and deleted on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl Cluster {
    fn start(bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Self> {
        // Postgres refuses to run as root: run it as the postgres user then.
        let as_postgres = is_root();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = Cluster { bin: bin.to_path_buf(), dir: dir.to_path_buf(), as_postgres };
        if as_postgres {
            run_checked(Command::new("chown").arg("-R").arg("postgres:").arg(dir), "chown of the demo directory")?;
        }
        let data = dir.join("data");
        let mut initdb = cluster.pg_command("initdb");
        initdb.arg("-D").arg(&data).args(["--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-U", "postgres"]);
        run_checked(&mut initdb, "initdb")?;
        let conf = format!(
            "\nwal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n",
            dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        append(&data.join("pg_hba.conf"), "\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")?;
        let mut start = cluster.pg_command("pg_ctl");
        start.arg("-D").arg(&data).arg("-l").arg(dir.join("postgres.log")).args(["-w", "start"]);
        if let Err(e) = run_checked(&mut start, "pg_ctl start") {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "{e:#}\npostgres log:\n{}\n(is port {port} in use? pick another with --port)",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(cluster)
    }

    fn pg_command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be able to enter the caller's directory.
        cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.pg_command("pg_ctl").arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("walcast demo: stopped postgres and removed {}", self.dir.display());
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.stderr(Stdio::piped()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
