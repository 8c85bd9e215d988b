//! walcast is SIGKILLed 50 times (`WALCAST_LOG_CRASH_KILLS` sets another count) while a steady
//! workload commits one row per transaction, and restarted each time. Every fifth kill also
//! leaves a torn block at the end of the last segment (what a crash mid-write leaves on disk).
//! Checks:
//! 1. the log opens every time (walcast keeps running after each restart; a torn tail is cut
//!    and logged);
//! 2. the slot is never confirmed past the log: at each kill every transaction at or below
//!    confirmed_flush_lsn is in the log;
//! 3. at the end every row Postgres committed is in the log and in the JSON-lines output.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use crate::changelog_strict::{log_dir, log_lines};
use crate::support::*;

const DEFAULT_KILLS: usize = 50;

/// The `id`s of inserts into `t` among `lines`.
fn inserted_ids(lines: &[serde_json::Value]) -> BTreeSet<i64> {
    lines.iter().filter(|l| l["table"] == "t" && l["op"] == "insert").filter_map(|l| l["after"]["id"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_appends_loses_nothing_and_the_log_always_opens() {
    let kills: usize = std::env::var("WALCAST_LOG_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_KILLS);
    let db = TestDb::create("changelog_crash").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE marker (id int PRIMARY KEY)").await;
    db.create_publication(&["t", "marker"]).await;
    db.create_slot().await;
    let seed = crash_seed("changelog_crash");
    let mut rng = fastrand::Rng::with_seed(seed);
    let workload = RowWorkload::start(&db, Duration::from_millis(2)).await;
    // Small segments rotate often, so kills also land around a rotation.
    let extra = "[pipeline]\nbatch_max_changes = 64\n\n[changelog]\nsegment_bytes = 65536\n".to_string();
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let dir = log_dir(&wc, &db);
    let mut torn = 0;
    for k in 0..kills {
        let before = wc.lines().len();
        wc.start();
        // Kill while changes stream: under a loaded server the walsender may take seconds to
        // send its first change (it decodes every database's WAL), and a kill before that
        // would test nothing (and leave no segment to tear).
        wc.wait_lines(before + 1, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(300..=1200))).await;
        assert!(wc.is_running(), "walcast stopped by itself after kill {k} (the log must open)\n{}", wc.log_tail(40));
        wc.kill().await;
        db.wait_slot_inactive(Duration::from_secs(10)).await;
        if k % 10 == 0 {
            // 2. Nothing confirmed that the log does not hold (checked every tenth kill: the
            // whole log is read each time).
            let confirmed = db.confirmed_flush_lsn().await;
            let in_log: BTreeSet<_> = log_lines(&dir).iter().map(commit_lsn).collect();
            let in_output: BTreeSet<_> = wc.lines().iter().map(commit_lsn).filter(|l| *l <= confirmed).collect();
            let missing: Vec<_> = in_output.difference(&in_log).collect();
            assert!(missing.is_empty(), "kill {k}: confirmed {confirmed}, but commits {missing:?} are not in the log");
        }
        if k % 5 == 4 {
            // A torn write: half a block header and some payload at the end of the last segment.
            let mut segments: Vec<_> = std::fs::read_dir(&dir)
                .expect("log dir")
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| !p.ends_with("LOCK"))
                .collect();
            segments.sort();
            let last = segments.last().expect("a segment");
            let mut f = std::fs::OpenOptions::new().append(true).open(last).expect("open the last segment");
            let garbage: Vec<u8> = (0..rng.usize(1..=40)).map(|_| rng.u8(..)).collect();
            f.write_all(&[0xff, 0x00, 0x10]).and_then(|_| f.write_all(&garbage)).expect("tear the tail");
            torn += 1;
        }
    }

    let committed = workload.stop().await;
    exec(&sql, "INSERT INTO marker VALUES (1)").await;
    wc.start();
    wc.wait_for("the marker", Duration::from_secs(120), |l| l["table"] == "marker").await;
    wc.stop().await;

    let output = inserted_ids(wc.lines());
    let missing: Vec<_> = committed.difference(&output).take(20).collect();
    assert!(missing.is_empty(), "committed rows missing from the JSON-lines output: {missing:?}");
    let logged = inserted_ids(&log_lines(&dir));
    let missing: Vec<_> = committed.difference(&logged).take(20).collect();
    assert!(missing.is_empty(), "committed rows missing from the log: {missing:?}");
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    let cut = log.lines().filter(|l| l.contains("torn")).count();
    assert!(cut >= torn, "every torn tail was cut and logged ({cut} of {torn})");
    eprintln!("changelog_crash: {kills} kills, {torn} torn tails, {} rows committed, all in the log and the output", committed.len());
    db.drop().await;
}
