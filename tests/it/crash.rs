//! walcast is killed with SIGKILL at random moments (20 times; `WALCAST_CRASH_KILLS` sets another
//! count, e.g. 100 for a long run) while a workload of inserts,
//! updates and deletes over three tables runs (many small transactions, some multi-row ones, a
//! few large ones), and restarted each time. Checks:
//! 1. no loss: replaying the output per key (a row's last event is its state) gives exactly the
//!    tables' contents;
//! 2. the confirmed LSN is never ahead of the sink: at each kill, every transaction whose commit
//!    ends at or before the slot's confirmed_flush_lsn is in the output as it was at that moment
//!    (transactions known from a second "oracle" slot created together with walcast's);
//! 3. within one run, transactions arrive in commit order; a restart never re-sends a
//!    transaction that was confirmed.
//!
//! The shared cluster is fine here: only walcast is killed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};
use walcast::lsn::Lsn;

const DEFAULT_KILLS: usize = 20;

fn kill_count_from_env() -> usize {
    std::env::var("WALCAST_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_KILLS)
}

const SCHEMA: &str = "
CREATE TABLE acct (id int PRIMARY KEY, balance int8 NOT NULL, note text);
CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL, label text);
CREATE TABLE event (id bigserial PRIMARY KEY, kind text NOT NULL, amount int);
CREATE TABLE marker (id int PRIMARY KEY);
";

/// One random statement of the workload.
fn statement(rng: &mut fastrand::Rng) -> String {
    let k = rng.u32(1..=100);
    let n = rng.i32(-50..=50);
    match rng.u32(0..100) {
        0..=29 => format!(
            "INSERT INTO acct VALUES ({k}, {n}, 'n{n}') ON CONFLICT (id) DO UPDATE SET balance = acct.balance + EXCLUDED.balance, note = EXCLUDED.note"
        ),
        30..=49 => format!(
            "INSERT INTO item VALUES ({k}, 1, 'l{n}') ON CONFLICT (id) DO UPDATE SET qty = item.qty + 1, label = EXCLUDED.label"
        ),
        50..=57 => format!("DELETE FROM acct WHERE id = {k}"),
        58..=64 => format!("DELETE FROM item WHERE id = {k}"),
        65..=89 => format!("INSERT INTO event (kind, amount) VALUES ('k{}', {n})", k % 7),
        90..=94 => "DELETE FROM event WHERE id IN (SELECT id FROM event ORDER BY id LIMIT 3)".to_string(),
        _ => format!("UPDATE event SET amount = amount + 1 WHERE id IN (SELECT id FROM event ORDER BY id DESC LIMIT {})", k % 5 + 1),
    }
}

/// One random transaction: mostly a single statement, sometimes several, rarely a large one.
fn transaction(rng: &mut fastrand::Rng) -> String {
    match rng.u32(0..1000) {
        0..=849 => statement(rng),
        850..=997 => {
            let mut sql = String::from("BEGIN;");
            for _ in 0..rng.usize(2..=20) {
                sql.push_str(&statement(rng));
                sql.push(';');
            }
            sql.push_str("COMMIT;");
            sql
        }
        _ => "BEGIN;
              INSERT INTO event (kind, amount) SELECT 'bulk', g FROM generate_series(1, 1000) g;
              UPDATE acct SET balance = balance + 1 WHERE id % 3 = 0;
              DELETE FROM event WHERE kind = 'bulk' AND amount % 2 = 0;
              COMMIT;"
            .to_string(),
    }
}

/// What the output looked like when walcast was killed.
struct Kill {
    /// confirmed_flush_lsn once the process was dead and the slot inactive.
    confirmed: Lsn,
    /// Complete lines in the output at that moment (a torn last line is not a line).
    lines: usize,
    /// Bytes of those lines, and their hash: the output as it was, which later runs may only
    /// append to.
    bytes: usize,
    hash: u64,
}

/// Complete lines of a snapshot of the output: their byte length and hash.
fn complete_prefix(raw: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let len = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    raw[..len].hash(&mut h);
    (len, h.finish())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_loss_and_confirmed_never_ahead_of_the_sink() {
    let db = TestDb::create("crash").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&["acct", "item", "event", "marker"]).await;
    db.create_slot().await;
    let oracle = format!("{}_oracle", db.slot);
    db.create_named_slot(&oracle).await;

    let seed = crash_seed("crash");
    let mut rng = fastrand::Rng::with_seed(seed);

    let workload = Workload::start(&db, seed, transaction).await;

    let started = Instant::now();
    // Small batches, so a kill also lands between two batches of one transaction.
    let mut wc = Walcast::with_options(&db, &Options { extra: "[pipeline]\nbatch_max_changes = 256\n".into(), ..Options::default() });
    let mut kills = Vec::new();
    let mut run_starts = Vec::new(); // line count when each run started
    let kill_count = kill_count_from_env();
    for _ in 0..kill_count {
        run_starts.push(wc.lines().len());
        wc.start();
        tokio::time::sleep(Duration::from_millis(rng.u64(200..=1500))).await;
        assert!(wc.is_running(), "walcast stopped by itself\n{}", wc.log_tail(40));
        wc.kill().await;
        db.wait_slot_inactive(Duration::from_secs(10)).await;
        let confirmed = db.confirmed_flush_lsn().await;
        let (bytes, hash) = complete_prefix(&wc.raw_output());
        let lines = wc.lines().len();
        kills.push(Kill { confirmed, lines, bytes, hash });
    }
    let killing = started.elapsed();

    // Stop the workload, then let walcast catch up to a marker and stop cleanly.
    let committed = workload.stop().await;
    exec(&sql, "INSERT INTO marker VALUES (1)").await;
    run_starts.push(wc.lines().len());
    wc.start();
    let catch_up = Instant::now();
    wc.wait_for("the marker", Duration::from_secs(120), |l| l["table"] == "marker").await;
    let catch_up = catch_up.elapsed();
    wc.stop().await;
    let lines = wc.lines().to_vec();

    // --- 1. No loss: the replayed state equals the tables.
    let mut state: BTreeMap<(String, String), Option<Value>> = BTreeMap::new();
    for l in &lines {
        let key = (l["table"].as_str().expect("table").to_string(), l["key"].to_string());
        match l["op"].as_str() {
            Some("insert" | "update") => {
                assert_eq!(l["unchanged"], json!([]), "no TOAST here: {l}");
                state.insert(key, Some(l["after"].clone()));
            }
            Some("delete") => {
                state.insert(key, None);
            }
            _ => panic!("unexpected line {l}"),
        }
    }
    let mut mismatches = Vec::new();
    for table in ["acct", "item", "event", "marker"] {
        let rows = sql.query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[]).await.expect("select");
        let mut actual: BTreeMap<String, Value> = BTreeMap::new();
        for r in rows {
            let v: Value = serde_json::from_str(r.get::<_, &str>(0)).expect("json");
            actual.insert(json!({"id": v["id"]}).to_string(), v);
        }
        let replayed: BTreeMap<String, Value> = state
            .iter()
            .filter(|((t, _), v)| t == table && v.is_some())
            .map(|((_, k), v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect();
        for (k, v) in &actual {
            match replayed.get(k) {
                None => mismatches.push(format!("{table} {k}: in the table, missing from the output (lost): {v}")),
                Some(r) => {
                    if let Some(d) = json_diff(v, r, &format!("{table} {k}")) {
                        mismatches.push(format!("stale row: {d}"));
                    }
                }
            }
        }
        for (k, v) in &replayed {
            if !actual.contains_key(k) {
                mismatches.push(format!("{table} {k}: in the output but deleted in the table: {v}"));
            }
        }
        eprintln!("crash: {table}: {} rows", actual.len());
    }
    assert!(
        mismatches.is_empty(),
        "{} differences between the replayed output and the tables:\n  {}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n  ")
    );

    // --- 2. The confirmed LSN was never ahead of what the sink had written.
    let txs = oracle_transactions(&sql, &oracle, &db.publication).await;
    let end_of: HashMap<Lsn, Lsn> = txs.iter().map(|t| (t.commit_lsn, t.end_lsn)).collect();
    let mut first_line: HashMap<Lsn, usize> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        let c = commit_lsn(l);
        assert!(end_of.contains_key(&c), "line {i} has a commit_lsn the server never committed: {l}");
        first_line.entry(c).or_insert(i);
    }
    for tx in &txs {
        assert!(first_line.contains_key(&tx.commit_lsn), "transaction {tx:?} never reached the output");
    }
    let raw = wc.raw_output();
    let mut max_confirmed = Lsn::ZERO;
    for (k, kill) in kills.iter().enumerate() {
        assert_eq!(
            complete_prefix(&raw[..kill.bytes]),
            (kill.bytes, kill.hash),
            "kill {k}: what was written before the kill changed later"
        );
        let owed: Vec<&OracleTx> = txs.iter().filter(|t| t.end_lsn <= kill.confirmed).collect();
        let missing: Vec<&&OracleTx> = owed.iter().filter(|t| first_line.get(&t.commit_lsn).is_none_or(|&i| i >= kill.lines)).collect();
        assert!(
            missing.is_empty(),
            "kill {k}: the slot was confirmed at {} but {} transaction(s) ending at or before it were not in the output yet, first: {:?}",
            kill.confirmed,
            missing.len(),
            missing[0]
        );
        assert!(kill.confirmed >= max_confirmed, "kill {k}: the confirmed LSN went backwards");
        max_confirmed = kill.confirmed;
    }

    // --- 3. Per run: commit order, whole transactions, and nothing confirmed is sent again.
    let mut duplicates = 0;
    let mut seen = std::collections::HashSet::new();
    for (run, w) in run_starts.windows(2).chain(std::iter::once(&[*run_starts.last().expect("runs"), lines.len()][..])).enumerate() {
        let segment = &lines[w[0]..w[1]];
        transactions(segment);
        if run > 0 {
            let confirmed = kills[run - 1].confirmed;
            for l in segment {
                let c = commit_lsn(l);
                assert!(end_of[&c] > confirmed, "run {run} re-sent a transaction confirmed before it started: {l}");
            }
        }
        for l in segment {
            if !seen.insert(change_id(l)) {
                duplicates += 1;
            }
        }
    }

    let changes: usize = txs.iter().map(|t| t.changes).sum();
    eprintln!(
        "crash: {kill_count} kills in {killing:?}; {} workload transactions ({} published, {changes} changes); \
         {} lines ({duplicates} sent again after kills); final catch-up {catch_up:?}; \
         confirmed at the kills lagged the output by {} transactions on average",
        committed,
        txs.len(),
        lines.len(),
        kills
            .iter()
            .map(|k| {
                let written: std::collections::HashSet<Lsn> = lines[..k.lines].iter().map(commit_lsn).collect();
                written.iter().filter(|c| end_of[c] > k.confirmed).count()
            })
            .sum::<usize>()
            / kill_count,
    );
    db.drop().await;
}

/// A kill in the middle of a write leaves a torn last line; the next run must not glue its first
/// line onto it (a JSON-lines file must stay one JSON object per line). The torn bytes were never
/// reported durable, so they are sent again anyway.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_last_line_is_not_glued_to_the_next_run() {
    let db = TestDb::create("crash_torn").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);

    // A first run writes one line.
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1)").await;
    wc.wait_lines(1, WAIT).await;
    wc.kill().await;
    db.wait_slot_inactive(Duration::from_secs(10)).await;
    // What a kill in the middle of writing the next batch leaves behind.
    let mut raw = wc.raw_output();
    assert!(raw.ends_with(b"\n"));
    let complete = raw.len();
    raw.extend_from_slice(br#"{"lsn":"0/1","commit_lsn":"0/2","xid":7,"commit_ts":"2026-01-01T00:00:0"#);
    std::fs::write(&wc.out_path, &raw).expect("write");

    wc.start();
    exec(&sql, "INSERT INTO t VALUES (2)").await;
    let lines = wc.wait_for("row 2", WAIT, |l| l["after"]["id"] == 2).await; // panics on a glued line
    assert_eq!(lines[0]["after"], json!({"id": 1}));
    let raw = wc.raw_output();
    assert!(raw.ends_with(b"\n"));
    let fragment = br#""commit_lsn":"0/2","xid":7"#;
    assert!(!raw.windows(fragment.len()).any(|w| w == fragment), "the torn fragment is still in the file");
    assert!(raw.len() > complete);
    wc.stop().await;
    db.drop().await;
}
