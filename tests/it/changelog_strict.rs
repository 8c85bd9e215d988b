//! The change log in strict mode (the default): the log holds every streamed transaction, each
//! change as the JSON-lines sink wrote it; each sink's cursor is saved in
//! `STATE_DIR/cursors-SLOT.json`; the slot is confirmed past the last commit after a clean stop.
//! With `[changelog] enabled = false` no log and no cursor file are written.
//! Also the helpers the other `changelog_*` modules share (where the log is, reading it back).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use walcast::changelog::{ChangelogError, LogReader};
use walcast::lsn::Lsn;

/// The state directory of a test walcast (`Options` put it beside the output).
pub fn state_dir(w: &Walcast) -> PathBuf {
    w.out_path.parent().expect("output dir").join("state")
}

/// The default log directory of a test walcast: `STATE_DIR/changelog-SLOT`.
pub fn log_dir(w: &Walcast, db: &TestDb) -> PathBuf {
    state_dir(w).join(format!("changelog-{}", db.slot))
}

/// Every change the log in `dir` holds, from its start, as JSON lines (`Change::write_json`).
/// Panics when the log cannot be read.
pub fn log_lines(dir: &std::path::Path) -> Vec<Value> {
    let reader = LogReader::open(dir).unwrap_or_else(|e| panic!("open the log {}: {e}", dir.display()));
    let mut scan = match reader.scan_after(Lsn::ZERO) {
        Err(ChangelogError::NotInLog { oldest, .. }) => reader.scan_after(Lsn(oldest.0.saturating_sub(1))),
        other => other,
    }
    .unwrap_or_else(|e| panic!("scan the log {}: {e}", dir.display()));
    let mut out = Vec::new();
    while let Some(batch) = scan.next_batch(1000).unwrap_or_else(|e| panic!("read the log {}: {e}", dir.display())) {
        for change in batch.changes {
            let mut line = Vec::new();
            change.write_json(&mut line).expect("render a logged change");
            out.push(serde_json::from_slice(&line).expect("a logged change renders as JSON"));
        }
    }
    out
}

/// The saved cursors of `w`'s sinks, if the file exists.
pub fn cursors(w: &Walcast, db: &TestDb) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir(w).join(format!("cursors-{}.json", db.slot))).ok()?;
    Some(serde_json::from_str(&text).expect("the cursor file is JSON"))
}

/// `change_id`s of `lines`, a set.
pub fn ids(lines: &[Value]) -> BTreeSet<String> {
    lines.iter().map(change_id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_holds_every_streamed_transaction_and_cursors_are_saved() {
    let db = TestDb::create("changelog_strict").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (k text PRIMARY KEY, n int)").await;
    db.create_publication(&["t", "u"]).await;
    db.create_slot().await;
    // Small segments: the transactions span several, each readable on its own.
    let mut wc = Walcast::with_options(&db, &Options { extra: "[changelog]\nsegment_bytes = 4096\n".into(), ..Options::default() });
    wc.start();
    // Rounds, each streamed before the next: on a loaded server all 60 transactions could
    // otherwise arrive in one batch, one append, one segment.
    for round in 0..6 {
        for i in round * 10 + 1..=round * 10 + 10 {
            exec(&sql, &format!("BEGIN; INSERT INTO t VALUES ({i}, md5('{i}')); INSERT INTO u VALUES ('k{i}', {i}); COMMIT")).await;
        }
        let last = round * 10 + 10;
        wc.wait_for("the round's last row", WAIT, move |l| l["table"] == "u" && l["after"]["n"] == last).await;
    }
    exec(&sql, "UPDATE t SET v = 'x' WHERE id % 3 = 0; DELETE FROM u WHERE n % 4 = 0; TRUNCATE u").await;
    exec(&sql, "INSERT INTO t VALUES (1000, 'marker')").await;
    wc.wait_for("the marker", WAIT, |l| l["after"]["id"] == 1000).await;
    wc.stop().await;
    let lines = wc.lines().to_vec();

    let dir = log_dir(&wc, &db);
    let segments = std::fs::read_dir(&dir).expect("the log directory exists").count();
    assert!(segments >= 3, "4 KiB segments: {segments} files in {}", dir.display());
    let logged = log_lines(&dir);
    assert_eq!(ids(&logged), ids(&lines), "the log holds exactly the streamed changes");
    for (l, j) in logged.iter().zip(&lines) {
        assert_json_eq(j, l, "a logged change renders as the JSON-lines sink wrote it");
    }

    let last_commit = lines.iter().map(commit_lsn).max().expect("lines");
    let c = cursors(&wc, &db).expect("the cursor file is written");
    assert_eq!(c["slot"], db.slot.as_str());
    let jsonl = parse_lsn(c["cursors"]["jsonl"].as_str().unwrap_or_else(|| panic!("no jsonl cursor: {c}")));
    assert!(jsonl >= last_commit, "the jsonl cursor {jsonl} is at the last commit {last_commit}");
    let confirmed = db.confirmed_flush_lsn().await;
    assert!(confirmed >= last_commit, "strict: confirmed {confirmed} after a clean stop");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_log_writes_no_log_and_no_cursors() {
    let db = TestDb::create("changelog_off").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &Options { extra: "[changelog]\nenabled = false\n".into(), ..Options::default() });
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1, 'a'), (2, 'b')").await;
    wc.wait_lines(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a cursor save would have happened
    wc.stop().await;
    assert!(!log_dir(&wc, &db).exists(), "no log directory");
    assert!(cursors(&wc, &db).is_none(), "no cursor file");
    let left: Vec<String> = std::fs::read_dir(state_dir(&wc))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|f| f.starts_with("snapshot-")), "only the slot's history in the state dir: {left:?}");
    db.drop().await;
}
