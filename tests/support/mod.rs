//! Shared test support: connects to the clusters `scripts/test-env` started (it starts nothing but
//! the throwaway clusters of `PrivateCluster`), gives each test its own database, slot and
//! publication, and runs the real `walcast` binary with a generated config, a JSON-lines file sink
//! and a debug log.
//!
//! Every test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

mod private_cluster;
#[allow(unused_imports)] // used by the tests that need a cluster of their own
pub use private_cluster::PrivateCluster;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use walcast::lsn::Lsn;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_walcast");

/// Generous default for "wait until walcast has written N lines".
pub const WAIT: Duration = Duration::from_secs(60);

const ENV_HINT: &str = "run `eval \"$(scripts/test-env)\"` first (or use scripts/test)";

/// A required environment variable set by `scripts/test-env`. Tests never skip silently.
pub fn env_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {ENV_HINT}"),
    }
}

/// The main logical cluster (`WALCAST_TEST_PG`).
pub fn pg_url() -> PgUrl {
    PgUrl::parse(&env_var("WALCAST_TEST_PG"))
}

/// The `wal_level = replica` cluster.
pub fn replica_url() -> PgUrl {
    pg_url(); // the same hint when the environment is missing altogether
    PgUrl::parse(&env_var("WALCAST_TEST_PG_REPLICA"))
}

/// The role without REPLICATION on the logical cluster.
pub fn norepl_url() -> PgUrl {
    pg_url();
    PgUrl::parse(&env_var("WALCAST_TEST_PG_NOREPL"))
}

/// Root of the crate (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Connection URLs

/// The parts of a `postgres://user@host:port/database` URL that the tests use.
#[derive(Debug, Clone)]
pub struct PgUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Self {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .unwrap_or_else(|| panic!("not a postgres:// URL: {url}"));
        let (user, rest) = rest.split_once('@').unwrap_or_else(|| panic!("no user in {url}"));
        let (hostport, database) = rest.split_once('/').unwrap_or((rest, "postgres"));
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
        let database = database.split('?').next().unwrap_or("postgres");
        Self {
            user: user.split(':').next().unwrap_or(user).to_string(),
            host: host.to_string(),
            port: port.parse().unwrap_or_else(|_| panic!("bad port in {url}")),
            database: if database.is_empty() { "postgres".into() } else { database.to_string() },
        }
    }

    pub fn with_database(&self, database: &str) -> Self {
        Self { database: database.to_string(), ..self.clone() }
    }

    pub fn with_user(&self, user: &str) -> Self {
        Self { user: user.to_string(), ..self.clone() }
    }

    pub fn to_url(&self) -> String {
        format!("postgres://{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

/// An ordinary SQL connection (session time zone UTC); its connection task runs in the background.
pub async fn connect(url: &PgUrl) -> Client {
    try_connect(url).await.unwrap_or_else(|e| panic!("cannot connect to {}: {e}", url.to_url()))
}

/// Like [`connect`], but returns the error (for tests that take the server down).
pub async fn try_connect(url: &PgUrl) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&url.host)
        .port(url.port)
        .user(&url.user)
        .dbname(&url.database)
        .application_name("walcast-tests")
        .connect_timeout(Duration::from_secs(10))
        .options("-c timezone=UTC -c datestyle=ISO,YMD");
    let (client, connection) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Run SQL (several statements allowed), panicking with the statement on error.
pub async fn exec(client: &Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql).await {
        panic!("SQL failed: {}\n--- SQL ---\n{sql}", describe(&e));
    }
}

/// The server's message for an error (tokio-postgres' Display hides it behind "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// One text column of one row.
pub async fn query_text(client: &Client, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{}: {sql}", describe(&e)));
    rows.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })?
}

/// The server's current WAL insert position.
pub async fn current_wal_lsn(client: &Client) -> Lsn {
    parse_lsn(&query_text(client, "SELECT pg_current_wal_lsn()::text").await.expect("an LSN"))
}

/// Rows of the tests' `t (id int, v text)` table by id, as JSON objects (what a JSON-lines
/// `after` or an Elasticsearch document of the row holds).
pub async fn id_v_rows(client: &tokio_postgres::Client) -> BTreeMap<i64, Value> {
    client
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let v: Option<String> = r.get(1);
            (i64::from(id), serde_json::json!({ "id": id, "v": v }))
        })
        .collect()
}

/// Drop `slot` although a walsender streams it: end the walsender, then drop before walcast
/// reconnects (retrying the race).
pub async fn drop_streaming_slot(admin: &tokio_postgres::Client, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await;
        if admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "could not drop slot {slot}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn parse_lsn(s: &str) -> Lsn {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// A database, slot and publication per test

/// A fresh database `wc_<test>_<pid>` with a slot and a publication of the same name. Leftovers
/// of earlier runs of the same test (whose process is gone) are dropped first.
pub struct TestDb {
    /// The cluster's maintenance database.
    pub server: PgUrl,
    /// The test database.
    pub url: PgUrl,
    pub name: String,
    pub slot: String,
    pub publication: String,
}

impl TestDb {
    /// On the main logical cluster.
    pub async fn create(test: &str) -> Self {
        Self::create_on(&pg_url(), test).await
    }

    pub async fn create_on(server: &PgUrl, test: &str) -> Self {
        assert!(
            test.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') && test.len() <= 30,
            "test name {test:?}: lower-case letters, digits and _ only, at most 30 bytes"
        );
        let server = server.with_database("postgres");
        let name = format!("wc_{test}_{}", std::process::id());
        let admin = connect(&server).await;
        drop_leftovers(&admin, test).await;
        drop_database(&admin, &name).await;
        exec(&admin, &format!("CREATE DATABASE {name}")).await;
        Self { url: server.with_database(&name), server, slot: name.clone(), publication: name.clone(), name }
    }

    /// A connection to the test database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A connection to the cluster's `postgres` database.
    pub async fn admin(&self) -> Client {
        connect(&self.server).await
    }

    /// `CREATE PUBLICATION` for the given tables (`FOR ALL TABLES` when empty).
    pub async fn create_publication(&self, tables: &[&str]) {
        let target = if tables.is_empty() { "ALL TABLES".to_string() } else { format!("TABLE {}", tables.join(", ")) };
        exec(&self.client().await, &format!("CREATE PUBLICATION {} FOR {target}", self.publication)).await;
    }

    /// Create walcast's slot (pgoutput) now, so every later change is streamed whenever walcast starts.
    pub async fn create_slot(&self) -> Lsn {
        self.create_named_slot(&self.slot).await
    }

    pub async fn create_named_slot(&self, slot: &str) -> Lsn {
        let client = self.client().await;
        let lsn = query_text(&client, &format!("SELECT lsn::text FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"))
            .await
            .expect("slot created");
        parse_lsn(&lsn)
    }

    /// A row of `pg_replication_slots` for `slot`.
    pub async fn slot_state(&self, slot: &str) -> Option<SlotState> {
        let client = self.admin().await;
        let row = client
            .query_opt(
                "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap_or_else(|e| panic!("{}", describe(&e)))?;
        Some(SlotState {
            active: row.get(0),
            active_pid: row.get(1),
            confirmed_flush_lsn: row.get::<_, Option<String>>(2).map(|s| parse_lsn(&s)),
            restart_lsn: row.get::<_, Option<String>>(3).map(|s| parse_lsn(&s)),
        })
    }

    /// The confirmed_flush_lsn of walcast's slot.
    pub async fn confirmed_flush_lsn(&self) -> Lsn {
        self.slot_state(&self.slot)
            .await
            .unwrap_or_else(|| panic!("slot {} does not exist", self.slot))
            .confirmed_flush_lsn
            .unwrap_or_default()
    }

    /// Wait until no walsender holds walcast's slot (after the walcast process is gone).
    pub async fn wait_slot_inactive(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.slot_state(&self.slot).await {
                Some(s) if s.active => {}
                _ => return,
            }
            assert!(Instant::now() < deadline, "slot {} still active after {timeout:?}", self.slot);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll until walcast's confirmed_flush_lsn reaches `target`; returns the last value seen.
    pub async fn wait_confirmed_at_least(&self, target: Lsn, timeout: Duration) -> Lsn {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.confirmed_flush_lsn().await;
            if c >= target || Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drop the slots of this database and the database. Call after walcast has exited.
    pub async fn drop(self) {
        let admin = self.admin().await;
        drop_database(&admin, &self.name).await;
    }
}

/// State of a replication slot.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
}

/// Drop databases `wc_<test>_<pid>` left by runs whose process is gone (a failed test cannot
/// clean up after itself: a panic skips the async cleanup).
async fn drop_leftovers(admin: &Client, test: &str) {
    let prefix = format!("wc_{test}_");
    let rows = admin
        .query("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)", &[&prefix])
        .await
        .unwrap_or_else(|e| panic!("{}", describe(&e)));
    for row in rows {
        let name: String = row.get(0);
        let Ok(pid) = name[prefix.len()..].parse::<u32>() else { continue };
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            continue; // another test process is using it right now
        }
        drop_database(admin, &name).await;
    }
}

/// Drop every slot of `name` (ending walsenders that still hold one), then the database.
async fn drop_database(admin: &Client, name: &str) {
    for _ in 0..100 {
        let slots = admin
            .query("SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1", &[&name])
            .await
            .unwrap_or_else(|e| panic!("{}", describe(&e)));
        if slots.is_empty() {
            break;
        }
        for s in slots {
            let (slot, pid): (String, Option<i32>) = (s.get(0), s.get(1));
            if let Some(pid) = pid {
                let _ = admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await;
                continue;
            }
            let _ = admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec(admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

// ---------------------------------------------------------------------------------------------
// The walcast process

/// Settings of one generated config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra lines inside `[source]`, e.g. `tables = ["public.t"]`.
    pub source: String,
    /// Extra sections appended at the end, e.g. `[pipeline]\nbatch_max_changes = 100`.
    pub extra: String,
}

/// The walcast binary running `walcast run` against a [`TestDb`], writing JSON lines to a file in
/// its own temporary directory and its log (`walcast=debug`) to another.
pub struct Walcast {
    pub dir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub out_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// How many times the process was started.
    pub starts: u32,
    /// Complete lines read so far, parsed, and the byte offset after them.
    parsed: Vec<Value>,
    offset: u64,
}

/// TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A config file for `db` (slot, publication and database of the test) writing to `out`.
pub fn config_toml(url: &PgUrl, slot: &str, publication: &str, out: &Path, opts: &Options) -> String {
    // Snapshot progress beside the output, never in the working directory.
    let snapshot = if opts.extra.contains("[snapshot]") {
        String::new()
    } else {
        let state = out.parent().unwrap_or(Path::new(".")).join("state");
        format!("[snapshot]\nstate_dir = {}\n", toml_str(&state.to_string_lossy()))
    };
    format!(
        "[source]\nhost = {host}\nport = {port}\ndatabase = {db}\nuser = {user}\nslot = {slot}\npublication = {publication}\n\
         status_interval_ms = 200\n{source}\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 1000\n\n\
         [sinks.jsonl]\npath = {out}\n\n\
         [log]\nlevel = \"walcast=debug\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n{snapshot}{extra}\n",
        host = toml_str(&url.host),
        port = url.port,
        db = toml_str(&url.database),
        user = toml_str(&url.user),
        slot = toml_str(slot),
        publication = toml_str(publication),
        source = opts.source,
        out = toml_str(&out.to_string_lossy()),
        extra = opts.extra,
    )
}

impl Walcast {
    /// Prepare (not start) walcast for `db` with default options.
    pub fn new(db: &TestDb) -> Self {
        Self::with_options(db, &Options::default())
    }

    pub fn with_options(db: &TestDb, opts: &Options) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("{}-", db.name)).tempdir().expect("tempdir");
        let out_path = dir.path().join("changes.jsonl");
        let log_path = dir.path().join("walcast.log");
        let config_path = dir.path().join("walcast.toml");
        std::fs::write(&config_path, config_toml(&db.url, &db.slot, &db.publication, &out_path, opts)).expect("write config");
        Self { dir: Some(dir), config_path, out_path, log_path, child: None, starts: 0, parsed: Vec::new(), offset: 0 }
    }

    /// Start `walcast run`; stdout and stderr are appended to the log file.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "walcast is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut log_for_banner = log.try_clone().expect("log");
        self.starts += 1;
        let _ = std::io::Write::write_all(&mut log_for_banner, format!("===== test harness: start #{} =====\n", self.starts).as_bytes());
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn walcast");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("walcast is not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    pub fn sigkill(&self) {
        signal(self.pid(), "KILL");
    }

    /// Wait for the process to exit (it was signalled or is expected to stop by itself).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("walcast is not running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("walcast did not exit within {timeout:?}\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> ExitStatus {
        self.sigkill();
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// SIGTERM and wait for the drain; asserts a clean exit (code 0).
    pub async fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(status.code(), Some(0), "walcast should drain and exit 0 on SIGTERM\n{}", self.log_tail(40));
    }

    /// The whole output file.
    pub fn raw_output(&self) -> Vec<u8> {
        match std::fs::read(&self.out_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", self.out_path.display()),
        }
    }

    /// Every complete line written so far, parsed (each line must be one JSON object).
    pub fn lines(&mut self) -> &[Value] {
        let Ok(mut file) = std::fs::File::open(&self.out_path) else { return &self.parsed };
        file.seek(SeekFrom::Start(self.offset)).expect("seek");
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).expect("read output");
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else { return &self.parsed };
        for (i, line) in buf[..last_nl].split(|&b| b == b'\n').enumerate() {
            let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "output line {} is not valid JSON ({e}): {}",
                    self.parsed.len() + i + 1,
                    String::from_utf8_lossy(&line[..line.len().min(500)])
                )
            });
            assert!(v.is_object(), "output line is not a JSON object: {v}");
            self.parsed.push(v);
        }
        self.offset += last_nl as u64 + 1;
        &self.parsed
    }

    /// Wait until at least `n` lines were written; returns all lines. Panics (with the log tail)
    /// on timeout or when walcast exits first.
    pub async fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().len() >= n {
                return self.parsed.clone();
            }
            if !self.is_running() {
                panic!("walcast exited with {:?} after {} of {n} lines\n{}", self.child_status(), self.parsed.len(), self.log_tail(60));
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} with {} of {n} lines\n{}", self.parsed.len(), self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until a line satisfies `pred`; returns all lines.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            let lines = self.lines();
            if lines[checked..].iter().any(&pred) {
                return self.parsed.clone();
            }
            checked = lines.len();
            if !self.is_running() {
                panic!("walcast exited with {:?} before {what}\n{}", self.child_status(), self.log_tail(60));
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what} ({checked} lines)\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the log contains `text` (e.g. "streaming").
    pub async fn wait_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).contains(text)).unwrap_or(false) {
            if !self.is_running() {
                panic!("walcast exited with {:?} before logging {text:?}\n{}", self.child_status(), self.log_tail(60));
            }
            assert!(Instant::now() < deadline, "walcast did not log {text:?} within {timeout:?}\n{}", self.log_tail(60));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn child_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()?;
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Peak resident set size (VmHWM) of the running process, in kB.
    pub fn vm_hwm_kb(&self) -> u64 {
        proc_status_kb(self.pid(), "VmHWM")
    }

    /// Current resident set size (VmRSS), in kB.
    pub fn vm_rss_kb(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS")
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- walcast log tail ({}) ---\n{tail}\n--- end of log ---", self.log_path.display())
    }

    /// Keep the temporary directory (config, output, log) for inspection.
    pub fn keep_files(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }
}

impl Drop for Walcast {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "KILL");
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
            if let Some(dir) = self.keep_files() {
                eprintln!("walcast files kept in {}", dir.display());
            }
        }
    }
}

/// The snapshot progress file of `slot` in `state_dir` (`snapshot-SLOT.json`), parsed, if it
/// exists (walcast replaces it atomically, so a read never sees half a file).
pub fn read_snapshot_state(state_dir: &Path, slot: &str) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir.join(format!("snapshot-{slot}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// The seed of a randomized crash test: `WALCAST_CRASH_SEED`, or else the clock. Printed, so a
/// failing run can be repeated.
pub fn crash_seed(test: &str) -> u64 {
    let seed = std::env::var("WALCAST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    eprintln!("{test}: seed {seed} (set WALCAST_CRASH_SEED to repeat)");
    seed
}

/// A background workload on its own connection: one `transaction(rng)` about every millisecond
/// (a few hundred per second: plenty, and a bounded output) until [`Workload::stop`].
pub struct Workload {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    /// Start committing transactions on `db` with an RNG derived from `seed`.
    pub async fn start(db: &TestDb, seed: u64, transaction: fn(&mut fastrand::Rng) -> String) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client = db.client().await;
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let task = tokio::spawn({
            let (stop, committed) = (stop.clone(), committed.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    exec(&client, &transaction(&mut rng)).await;
                    committed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        Self { stop, committed, task }
    }

    /// Stop after the transaction in progress; returns how many were committed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("workload");
        self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Send a signal with the `kill` command (no libc binding needed).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A `kB` field of /proc/PID/status.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let f = std::fs::File::open(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    for line in BufReader::new(f).lines() {
        let line = line.expect("read status");
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return rest.trim().trim_end_matches("kB").trim().parse().expect("kB value");
        }
    }
    panic!("{field} not in /proc/{pid}/status")
}

/// Run a walcast command other than `run` to completion (with a timeout).
pub async fn walcast_cmd(args: &[&str]) -> CmdOutput {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("walcast {args:?} did not finish within 60 s"))
        .expect("run walcast");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

// ---------------------------------------------------------------------------------------------
// Change events

/// A line's `commit_lsn`.
pub fn commit_lsn(v: &Value) -> Lsn {
    parse_lsn(v["commit_lsn"].as_str().unwrap_or_else(|| panic!("no commit_lsn in {v}")))
}

/// A line's `change_id`: the documented de-duplication identity (docs/events.md "Duplicates").
pub fn change_id(v: &Value) -> String {
    v["change_id"].as_str().unwrap_or_else(|| panic!("no change_id in {v}")).to_string()
}

/// `schema.table` of a line.
pub fn table_of(v: &Value) -> String {
    format!("{}.{}", v["schema"].as_str().unwrap_or("?"), v["table"].as_str().unwrap_or("?"))
}

/// Group lines by transaction (consecutive lines with the same commit_lsn), checking the
/// ordering contract on the way: commit_lsn never decreases, seq counts 0, 1, 2... within a
/// transaction and xid / commit_ts are the same throughout it.
pub fn transactions(lines: &[Value]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let lsn = commit_lsn(line);
        match out.last_mut() {
            Some(tx) if commit_lsn(&tx[0]) == lsn => {
                assert_eq!(line["xid"], tx[0]["xid"], "line {i}: xid changed inside a transaction: {line}");
                assert_eq!(line["commit_ts"], tx[0]["commit_ts"], "line {i}: commit_ts changed inside a transaction");
                assert_eq!(line["seq"].as_u64(), Some(tx.len() as u64), "line {i}: seq is not consecutive: {line}");
                tx.push(line.clone());
            }
            prev => {
                if let Some(tx) = prev {
                    assert!(commit_lsn(&tx[0]) < lsn, "line {i}: commit_lsn went backwards ({} then {lsn}): {line}", commit_lsn(&tx[0]));
                }
                assert_eq!(line["seq"].as_u64(), Some(0), "line {i}: a transaction must start at seq 0: {line}");
                out.push(vec![line.clone()]);
            }
        }
    }
    out
}

/// The commit_lsn values present in some lines.
pub fn commit_lsns(lines: &[Value]) -> BTreeSet<Lsn> {
    lines.iter().map(commit_lsn).collect()
}

/// The fields of a line that describe the change itself (not its position).
pub fn change_part(v: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for k in ["schema", "table", "op", "key", "before", "after", "unchanged", "truncate"] {
        if let Some(x) = v.get(k) {
            m.insert(k.to_string(), x.clone());
        }
    }
    Value::Object(m)
}

/// JSON equality where numbers compare by value (`1.0 == 1`, `-0.0 == 0.0`), integers exactly.
/// Returns the path of the first difference.
pub fn json_diff(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => {
            let same = match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => a.as_f64() == b.as_f64() && a.as_f64().is_some(),
            };
            (!same).then(|| format!("{path}: expected {expected}, got {actual}"))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path}: expected {expected}, got {actual}"));
            }
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| json_diff(x, y, &format!("{path}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys()) {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = json_diff(x, y, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    (Some(x), None) => return Some(format!("{path}.{k}: expected {x}, key missing")),
                    (None, Some(y)) => return Some(format!("{path}.{k}: unexpected key with {y}")),
                    (None, None) => unreachable!(),
                }
            }
            None
        }
        _ => (expected != actual).then(|| format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Assert [`json_diff`] finds nothing.
#[track_caller]
pub fn assert_json_eq(expected: &Value, actual: &Value, what: &str) {
    if let Some(d) = json_diff(expected, actual, "$") {
        panic!("{what}: {d}\n  expected: {expected}\n  actual:   {actual}");
    }
}

// ---------------------------------------------------------------------------------------------
// The pgoutput oracle: what the server says the transactions were

/// One transaction as a second pgoutput slot reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleTx {
    /// Begin's final_lsn = Commit's commit_lsn: the `commit_lsn` of the transaction's lines.
    pub commit_lsn: Lsn,
    /// End of the commit record: what a consumer confirms.
    pub end_lsn: Lsn,
    pub xid: u32,
    /// Row changes (and truncated relations) in the transaction.
    pub changes: usize,
}

/// Every transaction a pgoutput slot holds, read without consuming it
/// (`pg_logical_slot_peek_binary_changes`) and decoded with walcast's own pgoutput parser.
pub async fn oracle_transactions(client: &Client, slot: &str, publication: &str) -> Vec<OracleTx> {
    use walcast::decode::{parse, Message};
    let rows = client
        .query(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await
        .unwrap_or_else(|e| panic!("peek {slot}: {}", describe(&e)));
    let mut out = Vec::new();
    let mut open: Option<OracleTx> = None;
    for row in rows {
        let data: Vec<u8> = row.get(2);
        let message = parse(&bytes::Bytes::from(data)).unwrap_or_else(|e| panic!("oracle message: {e}"));
        match message {
            Message::Begin(b) => {
                assert!(open.is_none(), "oracle: Begin inside a transaction");
                open = Some(OracleTx { commit_lsn: b.final_lsn, end_lsn: Lsn::ZERO, xid: b.xid, changes: 0 });
            }
            Message::Commit(c) => {
                let mut tx = open.take().expect("oracle: Commit without Begin");
                assert_eq!(tx.commit_lsn, c.commit_lsn, "oracle: Begin.final_lsn != Commit.commit_lsn");
                tx.end_lsn = c.end_lsn;
                out.push(tx);
            }
            Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {
                open.as_mut().expect("oracle: change outside a transaction").changes += 1;
            }
            Message::Truncate { relations, .. } => {
                open.as_mut().expect("oracle: truncate outside a transaction").changes += relations.len();
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The chaos cluster

/// Exclusive use of the chaos cluster (`WALCAST_TEST_PG_CHAOS`), which tests may restart or
/// crash. Holds an `flock` on `.walcast-state/pg-chaos.lock` through a helper process, so the
/// lock is released when this guard is dropped or when the test process dies, and it excludes
/// other test processes (a concurrent `scripts/test`) too.
pub struct ChaosCluster {
    pub url: PgUrl,
    pub dir: PathBuf,
    holder: Child,
    stdin: Option<ChildStdin>,
}

impl ChaosCluster {
    /// Take the lock (waiting for other users) and make sure the cluster runs.
    pub async fn acquire() -> Self {
        pg_url();
        let url = PgUrl::parse(&env_var("WALCAST_TEST_PG_CHAOS"));
        let dir = PathBuf::from(env_var("WALCAST_TEST_PG_CHAOS_DIR"));
        let lock = dir.with_file_name("pg-chaos.lock");
        let mut holder = Command::new("flock")
            .arg("--exclusive")
            .arg(&lock)
            .args(["sh", "-c", "echo locked; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run flock");
        let stdout = holder.stdout.take().expect("stdout");
        let waited = Instant::now();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("read flock output");
            line
        })
        .await
        .expect("join");
        assert_eq!(line.trim(), "locked", "could not lock {}", lock.display());
        if waited.elapsed() > Duration::from_secs(1) {
            eprintln!("waited {:?} for the chaos cluster lock", waited.elapsed());
        }
        let stdin = holder.stdin.take();
        let this = Self { url, dir, holder, stdin };
        // A previous test may have left it stopped.
        this.pg_cluster(&["start", &this.dir.to_string_lossy(), &this.url.port.to_string(), "logical"]);
        this
    }

    /// `scripts/pg-cluster ARGS...`
    pub fn pg_cluster(&self, args: &[&str]) {
        let out = Command::new("bash").arg(repo_root().join("scripts/pg-cluster")).args(args).output().expect("run scripts/pg-cluster");
        assert!(
            out.status.success(),
            "scripts/pg-cluster {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restart the server: `fast` (clean shutdown) or `immediate` (a crash, then recovery).
    pub async fn restart(&self, mode: &str) {
        let dir = self.dir.to_string_lossy().into_owned();
        let mode = mode.to_string();
        let script = repo_root().join("scripts/pg-cluster");
        let out = tokio::task::spawn_blocking(move || Command::new("bash").arg(script).args(["restart", &dir, &mode]).output())
            .await
            .expect("join")
            .expect("run scripts/pg-cluster");
        assert!(out.status.success(), "pg-cluster restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        // Closing stdin ends `read`, so flock exits and releases the lock.
        drop(self.stdin.take());
        let _ = self.holder.wait();
    }
}

/// Percent-encode a URL path segment or query value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------------------
// Snapshot identity (issue 10 item 3): a snapshot interrupted while chunks are in flight

/// Tables of the scenario: keys overlapping between tables, a composite key, and a table without
/// a primary key holding identical rows (7,000 keyed rows, 1,050 without a key).
pub const SNAPSHOT_ID_SCHEMA: &str = "CREATE TABLE a (id int PRIMARY KEY, v text); \
     INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 3000) g; \
     CREATE TABLE b (k text, n int, v text, PRIMARY KEY (k, n)); \
     INSERT INTO b SELECT 'k' || (g % 7), g, 'b' || g FROM generate_series(1, 2000) g; \
     CREATE TABLE c (id bigint PRIMARY KEY, v text); \
     INSERT INTO c SELECT g, 'c' FROM generate_series(1, 2000) g; \
     CREATE TABLE nopk (id int, v text); \
     INSERT INTO nopk SELECT g, 'n' || g FROM generate_series(1, 1000) g; \
     INSERT INTO nopk SELECT g, 'n' || g FROM generate_series(1, 50) g; \
     ALTER TABLE nopk REPLICA IDENTITY FULL";

/// The scenario's tables (publication order).
pub const SNAPSHOT_ID_TABLES: [&str; 4] = ["a", "b", "c", "nopk"];

/// The scenario's tables with a primary key.
pub const SNAPSHOT_ID_KEYED: [&str; 3] = ["a", "b", "c"];

/// One streamed transaction after the snapshot: three inserts, the last into `nopk`.
pub const SNAPSHOT_ID_STREAMED: &str = "BEGIN; INSERT INTO a VALUES (3001, 's'); INSERT INTO c VALUES (3001, 's'); \
     INSERT INTO nopk VALUES (1, 'n1'); COMMIT";

/// Rows recorded as written in a progress file, over the keyed tables.
fn recorded_keyed_rows(st: &Value) -> u64 {
    SNAPSHOT_ID_KEYED.iter().map(|t| st["tables"][format!("public.{t}")]["rows"].as_u64().unwrap_or(0)).sum()
}

/// Start `wc` (which must create the slot and snapshot with a small `chunk_rows`, progress in
/// `state_dir`) and SIGKILL it each time 300 more keyed rows are recorded, until at least two kills
/// caught rows written to the JSON-lines output but not recorded (a resumed load sends those again),
/// then once more while `nopk` is read (it is read again whole, in a new load).
/// Returns the number of kills and of such rows, with walcast running again and the snapshot done.
pub async fn interrupt_snapshot_in_flight(wc: &mut Walcast, state_dir: &Path, slot: &str) -> (u32, u64) {
    let key_of = |l: &Value| format!("{}:{}", l["table"], l["key"]);
    let (mut kills, mut resent, mut last_recorded) = (0u32, 0u64, 0u64);
    wc.start();
    while kills < 10 && (kills < 2 || resent == 0) {
        let deadline = Instant::now() + WAIT;
        let finished = loop {
            let st = read_snapshot_state(state_dir, slot);
            if st.as_ref().is_some_and(|s| s["status"] == "done") {
                break true;
            }
            if st.as_ref().map_or(0, recorded_keyed_rows) >= last_recorded + 300 {
                break false;
            }
            assert!(Instant::now() < deadline, "no snapshot progress\n{}", wc.log_tail(40));
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if finished {
            break;
        }
        wc.kill().await;
        kills += 1;
        last_recorded = read_snapshot_state(state_dir, slot).as_ref().map_or(0, recorded_keyed_rows);
        let written: BTreeSet<String> = wc.lines().iter().filter(|l| l["op"] == "read" && l["table"] != "nopk").map(key_of).collect();
        // Written but not recorded: the resumed load reads these again.
        resent += (written.len() as u64).saturating_sub(last_recorded);
        wc.start();
    }
    assert!(resent > 0, "no kill caught a chunk written but not recorded ({kills} kills); make the snapshot slower");
    let deadline = Instant::now() + WAIT;
    loop {
        let st = read_snapshot_state(state_dir, slot);
        assert!(st.as_ref().is_none_or(|s| s["status"] != "done"), "nopk was loaded before it could be interrupted; make it bigger");
        if st.as_ref().and_then(|s| s["tables"]["public.nopk"]["rows"].as_u64()).is_some_and(|rows| rows >= 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot progress on nopk\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wc.kill().await;
    kills += 1;
    wc.start();
    let deadline = Instant::now() + WAIT;
    while read_snapshot_state(state_dir, slot).is_none_or(|s| s["status"] != "done") {
        assert!(Instant::now() < deadline, "the snapshot did not finish\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (kills, resent)
}

/// The scenario's tables as they are after the snapshot.
pub struct SnapshotIdExpectation {
    /// Rows per keyed table.
    pub keyed: BTreeMap<&'static str, u64>,
    /// `nopk`'s rows as sorted JSON texts.
    nopk: Vec<String>,
}

impl SnapshotIdExpectation {
    /// Read them from Postgres.
    pub async fn read(sql: &Client) -> Self {
        let mut keyed = BTreeMap::new();
        for table in SNAPSHOT_ID_KEYED {
            let rows = sql.query(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count");
            keyed.insert(table, u64::try_from(rows[0].get::<_, i64>(0)).expect("count"));
        }
        let rows = sql.query("SELECT json_build_object('id', id, 'v', v)::text FROM nopk", &[]).await.expect("select");
        let mut nopk: Vec<String> = rows.iter().map(|r| serde_json::from_str::<Value>(r.get(0)).expect("json").to_string()).collect();
        nopk.sort();
        Self { keyed, nopk }
    }

    /// Rows of `nopk`.
    pub fn nopk_rows(&self) -> usize {
        self.nopk.len()
    }

    /// `rows` (the `after` of one load of `nopk`) are exactly `nopk`'s rows, identical ones included.
    pub fn assert_nopk<'a>(&self, rows: impl Iterator<Item = &'a Value>) {
        let mut got: Vec<String> = rows.map(Value::to_string).collect();
        got.sort();
        assert_eq!(got.len(), self.nopk.len(), "rows in the last load of the table without a primary key");
        assert!(got == self.nopk, "the last load of the table without a primary key is the table");
    }
}
