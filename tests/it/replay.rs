//! `walcast replay`, `walcast mark` and `walcast status` on a flat Elasticsearch index (osmem),
//! beside a running `walcast run` that writes the change log:
//! - mark M, a workload (inserts, updates, a key change, deletes, multi-row transactions), the
//!   index deleted, `walcast replay --from-mark M` -> the index equals Postgres document by
//!   document, with the versions the stream wrote (commit LSNs); the same replay again -> the
//!   same index;
//! - a replay stopping halfway (`--to`) over the complete index rolls nothing back: external
//!   versions refuse the older writes;
//! - `--from` an LSN older than the log -> exit 3 and a message naming `walcast snapshot`; an
//!   unknown mark too;
//! - `mark --list` and `status --json` show the log, the sinks' cursors and the marks, with
//!   and without a running walcast;
//! - progress on standard error (not a terminal: plain log lines with rows, rate and LSN);
//! - a range holding a TRUNCATE (`truncate = "delete_all"`) replayed twice over the complete
//!   index: the replayed TRUNCATE deletes only the documents older than it, the index stays
//!   equal to Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::es::*;
use crate::support::*;
use serde_json::{json, Value};
use walcast::lsn::Lsn;

const ES_WAIT: Duration = Duration::from_secs(60);

/// Every row of `items` as the flat rule writes it (all columns), by document id.
async fn expected(sql: &tokio_postgres::Client) -> BTreeMap<String, Value> {
    let rows = sql.query("SELECT id, v, n FROM items ORDER BY id", &[]).await.expect("select items");
    rows.iter()
        .map(|r| {
            let (id, v, n): (i32, Option<String>, Option<i32>) = (r.get(0), r.get(1), r.get(2));
            (id.to_string(), json!({"id": id, "v": v, "n": n}))
        })
        .collect()
}

/// Every document of the index with its version.
async fn index_docs(es: &Es, index: &str) -> BTreeMap<String, (Value, u64)> {
    let mut out = BTreeMap::new();
    for (id, _) in es.all(index).await {
        if let Some(dv) = es.doc_with_version(index, &id).await {
            out.insert(id, dv);
        }
    }
    out
}

fn sources(docs: &BTreeMap<String, (Value, u64)>) -> BTreeMap<String, Value> {
    docs.iter().map(|(id, (d, _))| (id.clone(), d.clone())).collect()
}

/// Wait until the index holds exactly `want`.
async fn wait_index(es: &Es, index: &str, want: &BTreeMap<String, Value>, wc: &Walcast, what: &str) {
    let deadline = std::time::Instant::now() + ES_WAIT;
    loop {
        let got: BTreeMap<String, Value> = es.all(index).await.into_iter().collect();
        if &got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: index {index}\n got {got:?}\nwant {want:?}\n{}", wc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The workload after the mark: 60 single-row inserts, 10 multi-row transactions, updates, a
/// key change and deletes. Returns the commit LSN of its last transaction.
async fn workload(sql: &tokio_postgres::Client, wc: &mut Walcast, lines_before: usize) -> Lsn {
    for i in 1..=60 {
        exec(sql, &format!("INSERT INTO items VALUES ({i}, 'v{i}', {i})")).await;
    }
    for t in 0..10 {
        exec(
            sql,
            &format!("BEGIN; UPDATE items SET n = n + 100 WHERE id % 10 = {t}; UPDATE items SET v = 'w{t}' WHERE id = {}; COMMIT", t + 1),
        )
        .await;
    }
    exec(sql, "UPDATE items SET id = 1000 WHERE id = 5").await;
    exec(sql, "DELETE FROM items WHERE id BETWEEN 20 AND 29").await;
    exec(sql, "BEGIN; INSERT INTO items VALUES (2000, NULL, NULL); DELETE FROM items WHERE id = 30; UPDATE items SET v = 'last' WHERE id = 1; COMMIT")
        .await;
    // 60 + 10 * (6 + 1) + 1 key change + 10 + 3 = 144 changes in the JSON lines.
    let n = lines_before + 144;
    let lines = wc.wait_lines(n, WAIT).await;
    commit_lsn(&lines[n - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_deleted_flat_index_and_rolls_nothing_back() {
    let es = Es::new(&es_url());
    es.drop_leftovers().await;
    let index = index_name("replay-items");
    es.delete_index(&index).await;
    let db = TestDb::create("replay_flat").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE items (id int PRIMARY KEY, v text, n int); CREATE TABLE warmup (id int PRIMARY KEY)").await;
    db.create_publication(&["items", "warmup"]).await;
    db.create_slot().await;
    let extra = es_section(&es_url(), &format!("[[sinks.elasticsearch.tables]]\ntable = \"public.items\"\nindex = \"{index}\"\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let config = wc.config_path.to_string_lossy().into_owned();
    wc.start();

    // Nothing is logged yet: a mark is refused, and says what to do.
    wc.wait_streaming_slot(&db).await;
    let out = walcast_cmd(&["mark", "m", "--config", &config]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("holds no transaction yet"), "{out}");

    // A first transaction (not in the index) gives the log an end to mark.
    exec(&sql, "INSERT INTO warmup VALUES (1)").await;
    let warm = commit_lsn(&wc.wait_lines(1, WAIT).await[0]);
    db.wait_confirmed_at_least(warm, WAIT).await;
    let out = walcast_cmd(&["mark", "before-workload", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let out = walcast_cmd(&["mark", "--list", "--json", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let marks: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mark = parse_lsn(marks[0]["lsn"].as_str().unwrap_or_else(|| panic!("{marks}")));
    assert_eq!(marks[0]["name"], "before-workload");
    assert!(mark >= warm, "the mark {mark} is the log's durable end, at or after the warm-up commit {warm}");

    let end = workload(&sql, &mut wc, 1).await;
    db.wait_confirmed_at_least(end, WAIT).await;
    let want = expected(&sql).await;
    wait_index(&es, &index, &want, &wc, "streamed").await;
    let streamed = index_docs(&es, &index).await;
    assert_eq!(sources(&streamed), want);

    // status --json while walcast runs: the log, the sinks' cursors, the mark.
    let status = status_json(&config).await;
    assert_eq!(status["log"]["enabled"], json!(true), "{status}");
    let durable = parse_lsn(status["log"]["durable_lsn"].as_str().unwrap_or_else(|| panic!("{status}")));
    assert!(durable >= end, "{status}");
    assert!(status["log"]["bytes"].as_u64().unwrap_or(0) > 0 && status["log"]["segments"].as_u64().unwrap_or(0) >= 1, "{status}");
    let sinks = status["sinks"].as_array().unwrap_or_else(|| panic!("{status}"));
    let names: Vec<_> = sinks.iter().map(|s| s["sink"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["jsonl", "elasticsearch"], "{status}");
    assert_eq!(status["marks"][0]["name"], "before-workload", "{status}");
    assert_eq!(status["active"], json!(true), "{status}");

    // The running walcast appends to the JSON-lines file: a replay must not write there too.
    let out = walcast_cmd(&["replay", "--from-mark", "before-workload", "--config", &config]).await;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--jsonl-path"), "{out}");

    // The index is lost; the replay from the mark (beside the running walcast) rebuilds it.
    es.delete_index(&index).await;
    let replayed_lines = wc.dir.as_ref().expect("dir").path().join("replayed.jsonl");
    let jsonl_arg = replayed_lines.to_string_lossy().into_owned();
    let out = walcast_cmd(&["replay", "--from-mark", "before-workload", "--jsonl-path", &jsonl_arg, "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("replayed 144 changes"), "{out}");
    // Not a terminal: progress as plain log lines on standard error, the last one at the end.
    let progress = out.stderr.lines().rfind(|l| l.contains("replay progress")).unwrap_or_else(|| panic!("no progress line: {out}"));
    assert!(progress.contains("rows=144") && progress.contains("percent=100") && progress.contains("rows_per_s="), "{out}");
    let replayed = index_docs(&es, &index).await;
    assert_eq!(sources(&replayed), want, "the replayed index equals Postgres\n{out}");
    assert_eq!(replayed, streamed, "and carries the versions the stream wrote (commit LSNs)");
    // The JSON lines of the replay are the streamed lines after the mark, line for line.
    let streamed_lines: Vec<Value> = wc.lines().iter().filter(|l| commit_lsn(l) > mark).cloned().collect();
    let text = std::fs::read_to_string(&replayed_lines).expect("replayed lines");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 144);
    assert_eq!(lines, streamed_lines, "replayed JSON lines = streamed JSON lines after the mark");

    // The same range again: the same index.
    let out = walcast_cmd(&["replay", "--from-mark", "before-workload", "--sink", "elasticsearch", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(index_docs(&es, &index).await, streamed, "replaying twice gives the same index");

    // Half the range over the complete index: every write is older than what the index holds,
    // so nothing goes back (the deleted rows stay deleted: their tombstones are newer).
    let half = Lsn(mark.0 + (end.0 - mark.0) / 2);
    let out =
        walcast_cmd(&["replay", "--from", &mark.to_string(), "--to", &half.to_string(), "--sink", "elasticsearch", "--config", &config])
            .await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(index_docs(&es, &index).await, streamed, "a partial replay rolls no document back");

    // The log does not hold what happened before it started: refused, naming the way out.
    let out = walcast_cmd(&["replay", "--from", "0/1", "--config", &config]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("walcast snapshot"), "{out}");
    // It names the start that replays everything the log holds, as status does; pasted, the
    // replay begins with the log's oldest commit (the warm-up), which `--from OLDEST` would skip.
    let start = status["log"]["start_lsn"].as_str().unwrap_or_else(|| panic!("{status}")).to_string();
    assert!(out.stderr.contains(&format!("--from {start}")), "{out}");
    let all_lines = wc.dir.as_ref().expect("dir").path().join("all.jsonl");
    let all_arg = all_lines.to_string_lossy().into_owned();
    let out = walcast_cmd(&["replay", "--from", &start, "--jsonl-path", &all_arg, "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let text = std::fs::read_to_string(&all_lines).expect("replayed lines");
    let first: Value = serde_json::from_str(text.lines().next().unwrap_or_else(|| panic!("nothing replayed: {out}"))).expect("a JSON line");
    assert_eq!(commit_lsn(&first), warm, "the replay from the log's start begins with its oldest commit");
    assert_eq!(status["log"]["oldest_lsn"], json!(warm.to_string()), "{status}");
    let out = walcast_cmd(&["replay", "--from-mark", "nope", "--config", &config]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("before-workload") && out.stderr.contains("walcast snapshot"), "{out}");
    // An unknown sink is a command-line mistake.
    let out = walcast_cmd(&["replay", "--from-mark", "before-workload", "--sink", "kafka", "--config", &config]).await;
    assert_eq!(out.code, Some(2), "{out}");

    // Without a running walcast: status and the marks still read.
    wc.stop().await;
    let stopped = status_json(&config).await;
    assert_eq!(stopped["log"]["durable_lsn"], status["log"]["durable_lsn"], "{stopped}");
    assert_eq!(stopped["active"], json!(false), "{stopped}");
    assert_eq!(stopped["marks"], status["marks"], "{stopped}");
    // Each sink's cursor (saved by the run as its writes returned, a last time at its stop):
    // everything the stream wrote, nothing behind the log.
    for sink in stopped["sinks"].as_array().unwrap_or_else(|| panic!("{stopped}")) {
        let cursor = parse_lsn(sink["cursor"].as_str().unwrap_or_else(|| panic!("no cursor: {stopped}")));
        assert!(cursor >= end, "{sink}: {stopped}");
        assert_eq!(sink["log_lag_bytes"], json!(0), "{stopped}");
    }
    let out = walcast_cmd(&["mark", "--list", "--config", &config]).await;
    assert!(out.code == Some(0) && out.stdout.contains("before-workload") && out.stdout.contains(&mark.to_string()), "{out}");
    let out = walcast_cmd(&["mark", "--delete", "before-workload", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let out = walcast_cmd(&["mark", "--list", "--json", "--config", &config]).await;
    assert_eq!(out.stdout.trim(), "[]", "{out}");

    db.drop().await;
    es.delete_index(&index).await;
}

/// A TRUNCATE inside the range, replayed over the index the stream wrote: the documents the
/// stream wrote after it (higher versions) stay. Before versioned truncates, the replayed
/// TRUNCATE deleted them and their tombstones made the index refuse the replayed inserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_truncate_keeps_the_documents_written_after_it() {
    let es = Es::new(&es_url());
    let index = index_name("replay-truncate");
    es.delete_index(&index).await;
    let db = TestDb::create("replay_truncate").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE items (id int PRIMARY KEY, v text, n int); CREATE TABLE warmup (id int PRIMARY KEY)").await;
    db.create_publication(&["items", "warmup"]).await;
    db.create_slot().await;
    let rule = format!("[[sinks.elasticsearch.tables]]\ntable = \"public.items\"\nindex = \"{index}\"\ntruncate = \"delete_all\"\n");
    let extra = es_section(&es_url(), &rule);
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let config = wc.config_path.to_string_lossy().into_owned();
    wc.start();
    wc.wait_streaming_slot(&db).await;
    exec(&sql, "INSERT INTO warmup VALUES (1)").await;
    let warm = commit_lsn(&wc.wait_lines(1, WAIT).await[0]);
    db.wait_confirmed_at_least(warm, WAIT).await;
    let out = walcast_cmd(&["mark", "before-truncate", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");

    // Rows before the TRUNCATE, one transaction with rows on both sides of a TRUNCATE (the same
    // commit LSN), then a TRUNCATE followed by the rows that remain and edits of them.
    for i in 1..=20 {
        exec(&sql, &format!("INSERT INTO items VALUES ({i}, 'v{i}', {i})")).await;
    }
    exec(&sql, "BEGIN; INSERT INTO items VALUES (50, 'before', 0); TRUNCATE items; INSERT INTO items VALUES (51, 'after', 1); COMMIT")
        .await;
    exec(&sql, "INSERT INTO items VALUES (52, 'next', 2)").await;
    exec(&sql, "TRUNCATE items").await;
    for i in 100..=130 {
        exec(&sql, &format!("INSERT INTO items VALUES ({i}, 'v{i}', {i})")).await;
    }
    exec(&sql, "UPDATE items SET n = -n WHERE id % 3 = 0").await;
    exec(&sql, "DELETE FROM items WHERE id BETWEEN 110 AND 114").await;
    let end = current_wal_lsn(&sql).await;
    db.wait_confirmed_at_least(end, WAIT).await;
    let want = expected(&sql).await;
    assert_eq!(want.len(), 26);
    wait_index(&es, &index, &want, &wc, "streamed").await;
    let streamed = index_docs(&es, &index).await;
    assert_eq!(sources(&streamed), want);

    for round in ["first", "second"] {
        let out = walcast_cmd(&["replay", "--from-mark", "before-truncate", "--sink", "elasticsearch", "--config", &config]).await;
        assert_eq!(out.code, Some(0), "{out}");
        let replayed = index_docs(&es, &index).await;
        assert_eq!(sources(&replayed), want, "{round} replay: the index equals Postgres\n{out}\n{}", wc.log_tail(20));
        assert_eq!(replayed, streamed, "{round} replay: with the versions the stream wrote");
    }

    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter"), "no document may be rejected\n{}", wc.log_tail(40));
    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}

/// `walcast status --json`, parsed (exit 0 expected).
async fn status_json(config: &str) -> Value {
    let out = walcast_cmd(&["status", "--json", "--config", config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}
