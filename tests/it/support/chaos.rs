//! Chaos: the chaos cluster (restarted or crashed by tests, under a lock), randomized crash seeds,
//! a background workload, and a snapshot SIGKILLed while chunks are in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use super::pg::{current_wal_lsn, exec, pg_url, PgUrl, TestDb};
use super::process::{read_snapshot_state, wait_load_in_flight, Walcast, WAIT};
use super::{env_var, repo_root};
use walcast::lsn::Lsn;

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

/// A background workload on its own connection: one row per transaction into the test table
/// `t (id int, v text)`, ids 1, 2, 3..., a transaction every `every` until [`RowWorkload::stop`];
/// the ids whose commit returned are recorded.
pub struct RowWorkload {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    committed: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RowWorkload {
    /// Start inserting into `t` of `db`.
    pub async fn start(db: &TestDb, every: Duration) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = db.client().await;
        let task = tokio::spawn({
            let (stop, committed) = (stop.clone(), committed.clone());
            async move {
                let mut id = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    exec(&client, &format!("INSERT INTO t VALUES ({id}, md5('{id}'))")).await;
                    committed.lock().expect("lock").push(id);
                    tokio::time::sleep(every).await;
                }
            }
        });
        Self { stop, committed, task }
    }

    /// How many transactions committed so far.
    pub fn committed(&self) -> usize {
        self.committed.lock().expect("lock").len()
    }

    /// Called once a sink's destination went away: waits for two more commits (the second one
    /// began after that moment, so no sink can have it), then returns the WAL position, which is
    /// past that commit. A slot confirmed beyond it confirmed a transaction not delivered. (The
    /// WAL position of the moment itself is no bound: WAL of other databases after it, with none
    /// of this workload's commits in between, is rightly confirmed.)
    pub async fn bound_of_undelivered(&self, client: &Client) -> Lsn {
        let before = self.committed();
        while self.committed() < before + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        current_wal_lsn(client).await
    }

    /// Stop after the transaction in progress; returns the committed ids.
    pub async fn stop(self) -> BTreeSet<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("workload");
        let ids = self.committed.lock().expect("lock");
        ids.iter().copied().collect()
    }
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

// ---------------------------------------------------------------------------------------------
// Snapshot identity: a snapshot interrupted while chunks are in flight

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
    wait_load_in_flight(wc, state_dir, slot, "public.nopk", 200).await;
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
