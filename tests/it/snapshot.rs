//! The snapshot with the JSON-lines sink as oracle (docs/snapshot.md): rows that exist when walcast
//! creates the slot arrive first as `read` lines, rendered exactly like streamed inserts of the
//! same values; an interrupted snapshot (SIGKILL) resumes and, with the stream after it, ends
//! equal to the table; `mode = "never"` streams only; `walcast snapshot --table` loads one table
//! through a temporary slot that disappears afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::obs::{metrics_addr, wait_metric};
use crate::support::*;
use serde_json::Value;

const COLUMNS: &str = "id int PRIMARY KEY, i8 bigint, n numeric(10,3), t text, c char(5), b bool, ip inet, net cidr, \
     ts timestamptz, d date, j jsonb, ia int[], ta text[], by bytea, u uuid, iv interval, f float8";
const ROWS: &str = "(1, 9007199254740993, 12.5, 'héllo \"q\"', 'ab', true, '10.0.0.1', '10.0.0.0/8', '2026-11-22 10:00:00+01', \
     '2026-11-22', '{\"a\": [1, 2]}', '{1,NULL,3}', '{\"x y\",z}', '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 2 hours', 'NaN'), \
     (2, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '-Infinity'), \
     (3, -1, -0.001, '', 'abcde', NULL, '::1', '::/0', 'infinity', '-infinity', 'null', '{}', '{}', '', \
      '00000000-0000-0000-0000-000000000000', '-3 mons', 1.5e300)";

fn state_dir_section(dir: &std::path::Path, extra: &str) -> String {
    format!("[snapshot]\nstate_dir = {}\n{extra}", toml_str(&dir.join("state").to_string_lossy()))
}

fn by_id(lines: &[Value], op: &str, table: &str) -> BTreeMap<i64, Value> {
    lines
        .iter()
        .filter(|l| l["op"] == op && l["table"] == table)
        .map(|l| (l["after"]["id"].as_i64().expect("id"), l["after"].clone()))
        .collect()
}

fn state_file(dir: &std::path::Path, slot: &str) -> Option<Value> {
    read_snapshot_state(&dir.join("state"), slot)
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_render_like_streamed_inserts() {
    // A UTF-8 database: the snapshot reads by binary COPY.
    rows_render_like_streamed_inserts(TestDb::create("snap_types").await).await;
}

/// Another encoding: binary COPY would skip the conversion to UTF-8, so the snapshot reads in
/// text format, and reads the same.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_of_a_latin1_database_render_like_streamed_inserts() {
    let db = TestDb::create_with("snap_latin1", "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").await;
    rows_render_like_streamed_inserts(db).await;
}

async fn rows_render_like_streamed_inserts(db: TestDb) {
    let sql = db.client().await;
    exec(&sql, &format!("CREATE TABLE t ({COLUMNS}); CREATE TABLE t2 ({COLUMNS})")).await;
    exec(&sql, &format!("INSERT INTO t VALUES {ROWS}")).await;
    db.create_publication(&["t", "t2"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    // Two rows per chunk: the three rows span two chunks.
    let opts = Options { extra: state_dir_section(state.path(), "chunk_rows = 2\n"), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start(); // creates the slot, so it snapshots
    let lines = wc.wait_lines(3, WAIT).await;
    let read = by_id(&lines, "read", "t");
    assert_eq!(read.len(), 3, "three read lines for t: {lines:?}");
    let point = lines[0]["commit_lsn"].clone();
    assert!(lines[..3].iter().all(|l| l["commit_lsn"] == point && l["op"] == "read" && l["before"].is_null()), "{lines:?}");

    exec(&sql, "INSERT INTO t2 SELECT * FROM t").await;
    let lines = wc.wait_for("the streamed inserts", WAIT, |l| l["table"] == "t2").await;
    let lines = if by_id(&lines, "insert", "t2").len() < 3 { wc.wait_lines(6, WAIT).await } else { lines };
    let streamed = by_id(&lines, "insert", "t2");
    assert_eq!(read, streamed, "a snapshot row renders exactly like a streamed insert of the same values");
    let inserted = lines.iter().find(|l| l["table"] == "t2").expect("insert");
    assert!(parse_lsn(inserted["commit_lsn"].as_str().expect("lsn")) > parse_lsn(point.as_str().expect("lsn")));
    let st = state_file(state.path(), &db.slot).expect("progress file");
    assert_eq!(st["status"], "done", "{st}");
    assert_eq!(st["tables"]["public.t"]["rows"], 3, "{st}");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_snapshot_resumes_and_ends_equal_to_the_tables() {
    let db = TestDb::create("snap_resume").await;
    let sql = db.client().await;
    exec(
        &sql,
        "CREATE TABLE big (id int PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 60000) g; \
         CREATE TABLE nopk (id int, v text); \
         INSERT INTO nopk SELECT g, 'n' || g FROM generate_series(1, 300) g",
    )
    .await;
    db.create_publication(&["big", "nopk"]).await;
    exec(&sql, "ALTER TABLE nopk REPLICA IDENTITY FULL").await;
    let state = tempfile::tempdir().expect("tempdir");
    let opts = Options { extra: state_dir_section(state.path(), "chunk_rows = 50\n"), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    // Kill once some chunks of `big` are recorded but not all.
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = state_file(state.path(), &db.slot).and_then(|s| s["tables"]["public.big"]["rows"].as_u64()).unwrap_or(0);
        if rows >= 500 {
            assert!(rows < 60000, "the snapshot finished before it could be interrupted; make it slower");
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot progress\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wc.kill().await;
    let st = state_file(state.path(), &db.slot).expect("progress file");
    assert_eq!(st["status"], "loading", "{st}");
    // Changes while walcast is down: some in the loaded part, some in the rest.
    exec(
        &sql,
        "UPDATE big SET v = 'changed' WHERE id % 1000 = 0; DELETE FROM big WHERE id % 997 = 0; \
         INSERT INTO big VALUES (60001, 'new'); UPDATE nopk SET v = 'changed' WHERE id = 7",
    )
    .await;
    wc.start();
    wc.wait_for("the insert made while down", WAIT, |l| l["op"] == "insert" && l["after"]["id"] == 60001).await;
    exec(&sql, "INSERT INTO big VALUES (60002, 'marker')").await;
    let lines = wc.wait_for("the marker", WAIT, |l| l["after"]["id"] == 60002).await;
    wc.stop().await;

    // Apply the lines in order: the result must be the table.
    let mut big: BTreeMap<i64, String> = BTreeMap::new();
    let mut nopk_reads: BTreeMap<i64, String> = BTreeMap::new();
    for l in &lines {
        let row = if l["after"].is_null() { &l["before"] } else { &l["after"] };
        let id = row["id"].as_i64().expect("id");
        let v = row["v"].as_str().unwrap_or_default().to_string();
        match (l["table"].as_str(), l["op"].as_str()) {
            (Some("big"), Some("delete")) => {
                big.remove(&id);
            }
            (Some("big"), _) => {
                big.insert(id, v);
            }
            (Some("nopk"), _) => {
                nopk_reads.insert(id, v);
            }
            _ => {}
        }
    }
    let rows = sql.query("SELECT id, v FROM big ORDER BY id", &[]).await.expect("select");
    let expected: BTreeMap<i64, String> = rows.iter().map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1))).collect();
    assert_eq!(big.len(), expected.len());
    assert!(big == expected, "applying the JSON lines in order gives the table");
    assert_eq!(nopk_reads.len(), 300, "the table without a primary key is loaded whole");
    assert_eq!(nopk_reads.get(&7).map(String::as_str), Some("changed"));
    let st = state_file(state.path(), &db.slot).expect("progress file");
    assert_eq!(st["status"], "done", "{st}");
    assert!(wc.log_tail(400).contains("resuming the interrupted snapshot"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_never_streams_only_and_on_demand_loads_one_table() {
    let db = TestDb::create("snap_never").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g").await;
    db.create_publication(&["t"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let opts = Options { extra: state_dir_section(state.path(), "mode = \"never\"\n"), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    // The slot is created by walcast: changes count from then on.
    let addr = metrics_addr(&mut wc, WAIT).await;
    wait_metric(&mut wc, &addr, "walcast_streaming", WAIT, |v| v == 1.0).await;
    exec(&sql, "INSERT INTO t VALUES (1001, 'streamed')").await;
    let lines = wc.wait_lines(1, WAIT).await;
    assert_eq!(lines[0]["op"], "insert", "mode = never loads nothing: {:?}", lines[0]);

    // `walcast snapshot --table` beside the running stream, into its own output file.
    let out = state.path().join("snapshot.jsonl");
    let config = std::fs::read_to_string(&wc.config_path)
        .expect("config")
        .replace(&toml_str(&wc.out_path.to_string_lossy()), &toml_str(&out.to_string_lossy()));
    let config_path = state.path().join("snapshot.toml");
    std::fs::write(&config_path, config).expect("write config");
    let run = walcast_cmd(&["snapshot", "--config", &config_path.to_string_lossy(), "--table", "public.t"]).await;
    assert_eq!(run.code, Some(0), "walcast snapshot: {run:?}");
    let text = std::fs::read_to_string(&out).expect("snapshot output");
    let read: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(read.len(), 1001);
    assert!(read.iter().all(|l| l["op"] == "read"));
    let temp_slots =
        query_text(&sql, &format!("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '{}_snapshot_%'", db.slot)).await;
    assert_eq!(temp_slots.as_deref(), Some("0"), "the temporary slot is gone");
    // The stream went on meanwhile.
    exec(&sql, "INSERT INTO t VALUES (1002, 'after')").await;
    wc.wait_for("a change after the on-demand snapshot", WAIT, |l| l["after"]["id"] == 1002).await;
    wc.stop().await;

    let bad = walcast_cmd(&["snapshot", "--config", &config_path.to_string_lossy(), "--rule", "nope"]).await;
    assert_eq!(bad.code, Some(2), "an unknown rule is a config error: {bad:?}");
    db.drop().await;
}

/// A snapshot over several tables (keys overlapping between tables, a composite
/// key, a table without a primary key holding identical rows) is SIGKILLed while chunks are in
/// flight and resumed, more than once (`interrupt_snapshot_in_flight`). De-duplicating the output
/// by the documented identity, `change_id` (docs/events.md "Duplicates"), must keep every row of
/// every table (no two different rows share it) and drop the rows a resumed load sent again (they
/// share it). The old rule, `(commit_lsn, seq)`, collapsed rows of different tables and loads.
#[tokio::test(flavor = "multi_thread")]
async fn resumed_snapshot_rows_deduplicate_by_change_id() {
    let db = TestDb::create("snap_ids").await;
    let sql = db.client().await;
    exec(&sql, SNAPSHOT_ID_SCHEMA).await;
    db.create_publication(&SNAPSHOT_ID_TABLES).await;
    let state = tempfile::tempdir().expect("tempdir");
    let opts = Options { extra: state_dir_section(state.path(), "chunk_rows = 20\n"), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    let (kills, resent) = interrupt_snapshot_in_flight(&mut wc, &state.path().join("state"), &db.slot).await;
    let expected = SnapshotIdExpectation::read(&sql).await;
    // Streamed changes after it: their identities must not meet the snapshot's either.
    exec(&sql, SNAPSHOT_ID_STREAMED).await;
    let lines = wc.wait_for("the streamed transaction", WAIT, |l| l["op"] == "insert" && l["table"] == "nopk").await;
    wc.stop().await;

    // De-duplicate as a consumer would: keep the first line of each identity.
    let mut seen = std::collections::HashSet::new();
    let kept: Vec<&Value> = lines.iter().filter(|l| seen.insert(change_id(l))).collect();
    let dropped = lines.len() - kept.len();

    let key_of = |l: &Value| format!("{}:{}", l["table"], l["key"]);
    // Every row of every keyed table, exactly once.
    for table in SNAPSHOT_ID_KEYED {
        let reads: Vec<String> = kept.iter().filter(|l| l["op"] == "read" && l["table"] == table).map(|l| key_of(l)).collect();
        let distinct: std::collections::HashSet<&String> = reads.iter().collect();
        assert_eq!(distinct.len() as u64, expected.keyed[table], "{table}: rows lost by de-duplication");
        assert_eq!(reads.len(), distinct.len(), "{table}: a row sent again was not recognised as a duplicate");
    }
    // Rows sent again were dropped: at least those caught in flight by the kills.
    let keyed_total: u64 = expected.keyed.values().sum();
    let raw_keyed = lines.iter().filter(|l| l["op"] == "read" && l["table"] != "nopk").count() as u64;
    assert!(raw_keyed.saturating_sub(keyed_total) >= resent, "{raw_keyed} keyed read lines, {resent} expected to be sent again");
    // Without a primary key nothing identifies a row across loads: the last load is whole (the
    // identical rows included) and no row of any load was dropped.
    let nopk: Vec<&Value> = kept.iter().copied().filter(|l| l["op"] == "read" && l["table"] == "nopk").collect();
    let raw_nopk = lines.iter().filter(|l| l["op"] == "read" && l["table"] == "nopk").count();
    assert_eq!(nopk.len(), raw_nopk, "rows of a table without a primary key were taken for one another");
    let loads: std::collections::BTreeSet<&str> = nopk.iter().map(|l| l["commit_ts"].as_str().expect("commit_ts")).collect();
    assert!(loads.len() >= 2, "nopk was loaded once: the test did not interrupt it");
    let last_load = *loads.last().expect("nopk rows");
    expected.assert_nopk(nopk.iter().filter(|l| l["commit_ts"] == last_load).map(|l| &l["after"]));
    // The streamed transaction: three changes, each kept.
    assert_eq!(kept.iter().filter(|l| l["op"] == "insert").count(), 3);
    eprintln!(
        "snapshot ids: {kills} kills, {} lines, {dropped} dropped as duplicates ({resent} caught in flight at the kills)",
        lines.len()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_restart_exactly_after_keys_with_quotes_backslashes_and_control_characters() {
    // The COPY read splices the last key of a chunk into the next query as literals: every
    // character COPY or SQL escapes appears in a key, and one row per chunk makes each a restart.
    let db = TestDb::create("snap_odd_keys").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE k (name text, n numeric, id int, v text, PRIMARY KEY (name, n, id))").await;
    exec(
        &sql,
        r#"INSERT INTO k SELECT s.name, x.n, i.id, s.name || '|' || x.n::text || '|' || i.id
           FROM unnest(ARRAY['', 'a''b', 'back\slash', E'tab\there', E'new\nline', '\N', 'NULL', 'héllo',
                             '"dq"', E'\\\\', 'x y', E'cr\rlf']) AS s(name),
                unnest(ARRAY[-1.5, 0, 12345678901234567890.123]::numeric[]) AS x(n),
                generate_series(1, 2) AS i(id)"#,
    )
    .await;
    db.create_publication(&["k"]).await;
    let expected: Vec<String> =
        sql.query("SELECT v FROM k ORDER BY v", &[]).await.expect("select").iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(expected.len(), 72);
    let state = tempfile::tempdir().expect("tempdir");
    let opts = Options { extra: state_dir_section(state.path(), "chunk_rows = 1\n"), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    let lines = wc.wait_lines(expected.len(), WAIT).await;
    let mut read: Vec<String> =
        lines.iter().filter(|l| l["op"] == "read" && l["table"] == "k").map(|l| l["after"]["v"].as_str().expect("v").to_string()).collect();
    read.sort();
    assert_eq!(read, expected, "every row read exactly once, none skipped or repeated at a chunk restart");
    wc.stop().await;
    db.drop().await;
}
