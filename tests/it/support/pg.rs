//! Postgres: the clusters of `scripts/test-env`, SQL helpers, and a database, slot and
//! publication of their own for each test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use walcast::lsn::Lsn;

use super::env_var;

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

    /// A database created with `options` after `CREATE DATABASE name` (an encoding, say).
    pub async fn create_with(test: &str, options: &str) -> Self {
        Self::create_full(&pg_url(), test, options).await
    }

    pub async fn create_on(server: &PgUrl, test: &str) -> Self {
        Self::create_full(server, test, "").await
    }

    async fn create_full(server: &PgUrl, test: &str, options: &str) -> Self {
        assert!(
            test.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') && test.len() <= 30,
            "test name {test:?}: lower-case letters, digits and _ only, at most 30 bytes"
        );
        let server = server.with_database("postgres");
        let name = format!("wc_{test}_{}", std::process::id());
        // All tests share one process (one pid): a name used twice would share a database.
        static USED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
        let fresh = USED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(format!("{}:{name}", server.port));
        assert!(fresh, "test name {test:?} is already used by another test of this binary: each test needs its own");
        let admin = connect(&server).await;
        drop_leftovers(&admin, test).await;
        drop_database(&admin, &name).await;
        exec(&admin, &format!("CREATE DATABASE {name} {options}")).await;
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

/// Held by the tests that write or measure hundreds of MB of WAL on the main cluster (a 200 MB
/// value, a million-row transaction), so that one's WAL never shows in another's figures: they
/// run one at a time, beside any other test.
pub async fn wal_heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static WAL_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    WAL_HEAVY.lock().await
}
