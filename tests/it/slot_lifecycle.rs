//! The slot's lifecycle around operator actions (docs/snapshot.md, "Re-sync"): a slot dropped
//! while walcast streams is never silently re-created (the changes made meanwhile would never
//! reach the sinks); `walcast check` and `walcast run` both refuse with the way back;
//! `walcast resync` then makes the sinks equal to the table again, rows deleted meanwhile
//! included. A publication dropped under a running walcast is reported with the same way back
//! (re-creating it cannot help: the slot cannot be decoded past the drop). A slot of the configured name that is not a logical pgoutput slot is refused and
//! left untouched.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::support::*;
use serde_json::Value;

/// The table as a consumer that applies every line in order sees it (by `id`).
fn applied(lines: &[Value]) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    for l in lines {
        match l["op"].as_str().unwrap_or_default() {
            "insert" | "update" | "read" => {
                rows.insert(l["after"]["id"].as_i64().expect("id"), l["after"].clone());
            }
            "delete" => {
                rows.remove(&l["key"]["id"].as_i64().expect("key id"));
            }
            "truncate" => rows.clear(),
            op => panic!("unexpected op {op:?} in {l}"),
        }
    }
    rows
}

/// The way back: `walcast resync`, start again, and wait for a marker row written after the
/// reload; returns every line so far, for the caller's comparison with the table.
async fn resync_and_restart(wc: &mut Walcast, sql: &tokio_postgres::Client) -> Vec<Value> {
    let config = wc.config_path.to_string_lossy().into_owned();
    let resync = walcast_cmd(&["resync", "--config", &config]).await;
    assert_eq!(resync.code, Some(0), "{resync}");
    wc.start();
    exec(sql, "INSERT INTO t VALUES (1000, 'marker')").await;
    wc.wait_for("the marker row", WAIT, |l| l["after"]["id"] == 1000).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_slot_is_refused_then_resync_removes_rows_deleted_meanwhile() {
    let db = TestDb::create("slot_dropped").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO t SELECT g, 'r' || g FROM generate_series(1, 50) g").await;
    db.create_publication(&["t"]).await;

    // Snapshot of 50 rows, then streaming.
    let mut wc = Walcast::new(&db);
    wc.start();
    wc.wait_lines(50, WAIT).await;
    exec(&sql, "INSERT INTO t VALUES (51, 'streamed')").await;
    wc.wait_for("row 51", WAIT, |l| l["after"]["id"] == 51).await;

    // The operator drops the slot under the running walcast: it stops with the setup exit code
    // and says what happened.
    drop_streaming_slot(&db.admin().await, &db.slot).await;
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "walcast must stop with exit 3 when its slot is dropped\n{}", wc.log_tail(30));
    let log = wc.log_tail(40);
    assert!(log.contains("walcast resync"), "the error must name the way back:\n{log}");

    // Changes while no slot records them: a delete, an update and an insert.
    exec(&sql, "DELETE FROM t WHERE id IN (7, 51)").await;
    exec(&sql, "UPDATE t SET v = 'changed' WHERE id = 8").await;
    exec(&sql, "INSERT INTO t VALUES (52, 'meanwhile')").await;

    // Starting again must not re-create the slot silently (the delete would never arrive).
    let before_restart = wc.lines().len();
    wc.start();
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "run must refuse a slot that vanished\n{}", wc.log_tail(30));
    let log = wc.log_tail(40);
    assert!(log.contains("no longer exists") && log.contains("walcast resync"), "refusal must explain and give the fix:\n{log}");
    assert!(db.slot_state(&db.slot).await.is_none(), "a refused start must not create the slot");
    assert_eq!(wc.lines().len(), before_restart, "a refused start writes nothing");

    // `check` agrees with `run`.
    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "{check}");
    assert!(check.stdout.contains("FAIL") && check.stdout.contains("walcast resync"), "{check}");

    // The way back.
    let lines = resync_and_restart(&mut wc, &sql).await;
    assert!(
        lines[before_restart..].iter().any(|l| l["op"] == "truncate" && l["truncate"]["resync"] == true),
        "the re-sync removes the table's rows before reloading them"
    );
    let expected = id_v_rows(&sql).await;
    assert!(!expected.contains_key(&7) && !expected.contains_key(&51));
    assert_eq!(applied(&lines), expected, "after the re-sync the sink equals the table (rows 7 and 51 deleted meanwhile)");
    wc.stop().await;

    // The re-sync is done: a normal restart resumes, nothing is refused or reloaded.
    let lines_before = wc.lines().len();
    wc.start();
    exec(&sql, "DELETE FROM t WHERE id = 1").await;
    let after = wc.wait_for("the delete of row 1", WAIT, |l| l["op"] == "delete" && l["key"]["id"] == 1).await;
    assert!(after[lines_before..].iter().all(|l| l["op"] != "read" && l["op"] != "truncate"), "no reload after the re-sync finished");
    assert_eq!(applied(&after), id_v_rows(&sql).await);
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_physical_slot_of_the_configured_name_is_refused_and_left_alone() {
    let db = TestDb::create("slot_physical").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    exec(&sql, &format!("SELECT pg_create_physical_replication_slot('{}', true)", db.slot)).await;
    let restart_before = db.slot_state(&db.slot).await.expect("slot").restart_lsn;

    let mut wc = Walcast::new(&db);
    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "{check}");
    assert!(check.stdout.contains("physical"), "{check}");

    wc.start();
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "run must refuse a physical slot like check does\n{}", wc.log_tail(30));
    let log = wc.log_tail(20);
    assert!(log.contains("physical") && log.contains("fix:"), "{log}");
    let resync = walcast_cmd(&["resync", "--config", &config]).await;
    assert_eq!(resync.code, Some(3), "resync never drops a slot that is not walcast's\n{resync}");
    let after = db.slot_state(&db.slot).await.expect("the physical slot is still there");
    assert_eq!(after.restart_lsn, restart_before, "walcast must not move a slot that is not its own");
    exec(&sql, &format!("SELECT pg_drop_replication_slot('{}')", db.slot)).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_publication_is_explained_and_resync_recovers() {
    let db = TestDb::create("pub_dropped").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO t SELECT g, 'r' || g FROM generate_series(1, 10) g").await;
    db.create_publication(&["t"]).await;
    let mut wc = Walcast::new(&db);
    wc.start();
    wc.wait_lines(10, WAIT).await;

    exec(&sql, &format!("DROP PUBLICATION {}", db.publication)).await;
    exec(&sql, "DELETE FROM t WHERE id = 3").await;
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "{}", wc.log_tail(30));
    let log = wc.log_tail(40);
    assert!(
        log.contains("was dropped") && log.contains("walcast resync"),
        "the error must say what happened and the fix that works:\n{log}"
    );

    // Restarting (walcast would create the publication again) must not loop on the same error.
    wc.start();
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "{}", wc.log_tail(30));
    assert!(wc.log_tail(20).contains("walcast resync"), "{}", wc.log_tail(20));

    let lines = resync_and_restart(&mut wc, &sql).await;
    assert_eq!(applied(&lines), id_v_rows(&sql).await, "after the re-sync the sink equals the table (row 3 deleted meanwhile)");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_streams_exactly_the_configured_tables_or_refuses() {
    let db = TestDb::create("pub_tables").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 'b1')").await;
    db.create_publication(&["b"]).await;
    let opts = Options { source: "tables = [\"public.a\"]".into(), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    let config = wc.config_path.to_string_lossy().into_owned();

    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "{check}");
    wc.start();
    let status = wc.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "run must refuse a publication that publishes other tables\n{}", wc.log_tail(30));
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot is left behind by a refused start");
    // The fix walcast prints works when pasted.
    let log = wc.log_tail(10);
    let fix = log
        .lines()
        .find_map(|l| l.split_once("make them agree: ").map(|(_, f)| f.to_string()))
        .unwrap_or_else(|| panic!("no fix in:\n{log}"));
    let sql_fix = fix.split(" (then").next().expect("fix SQL");
    exec(&sql, sql_fix).await;
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(0), "after the printed fix, check passes\n{check}");

    wc.start();
    exec(&sql, "INSERT INTO a VALUES (2, 'a2'); INSERT INTO b VALUES (2, 'b2')").await;
    let lines = wc.wait_for("row 2 of a", WAIT, |l| l["table"] == "a" && l["after"]["id"] == 2).await;
    assert!(lines.iter().all(|l| l["table"] == "a"), "only the configured table is streamed: {lines:?}");
    assert!(lines.iter().any(|l| l["op"] == "read" && l["after"]["id"] == 1), "and its existing rows are loaded");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_joining_the_publication_mid_stream_is_reported() {
    let db = TestDb::create("pub_joined").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY)").await;
    exec(&sql, "INSERT INTO c VALUES (1)").await;
    db.create_publication(&["a"]).await;
    let mut wc = Walcast::new(&db);
    wc.start();
    exec(&sql, "INSERT INTO a VALUES (1)").await;
    wc.wait_for("row of a", WAIT, |l| l["table"] == "a").await;
    exec(&sql, &format!("ALTER PUBLICATION {} ADD TABLE c", db.publication)).await;
    exec(&sql, "INSERT INTO c VALUES (2)").await;
    wc.wait_for("row 2 of c", WAIT, |l| l["table"] == "c" && l["after"]["id"] == 2).await;
    wc.wait_log("a table joined the publication while walcast streamed", WAIT).await;
    assert!(wc.log_tail(20).contains("walcast snapshot"), "the warning gives the fix");
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_finds_what_run_would_fail_on_before_any_slot_exists() {
    let db = TestDb::create("preflight_owner").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    // A role that may replicate, read and create in the database, but owns no table: it cannot
    // create a publication FOR TABLE t.
    let role = format!("wc_noowner_{}", std::process::id());
    let admin = db.admin().await;
    let _ = admin.execute(&format!("DROP ROLE IF EXISTS {role}"), &[]).await;
    exec(&admin, &format!("CREATE ROLE {role} LOGIN REPLICATION")).await;
    exec(&admin, &format!("GRANT CREATE, CONNECT ON DATABASE {} TO {role}", db.name)).await;
    exec(&sql, &format!("GRANT SELECT ON t TO {role}")).await;
    let opts = Options { source: "tables = [\"public.t\"]".into(), ..Options::default() };
    let mut wc = Walcast::with_options(&db, &opts);
    let text = std::fs::read_to_string(&wc.config_path).expect("config").replace("user = \"postgres\"", &format!("user = \"{role}\""));
    std::fs::write(&wc.config_path, text).expect("config");
    let config = wc.config_path.to_string_lossy().into_owned();

    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "check must see that the publication cannot be created\n{check}");
    assert!(check.stdout.contains("does not own"), "{check}");
    wc.start();
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(3), "{}", wc.log_tail(20));
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot is left behind");
    // The printed fix works when pasted (as the owner), and then check passes.
    let fix = check
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("fix: as the tables' owner or a superuser: "))
        .expect("fix line")
        .to_string();
    exec(&sql, &fix).await;
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(0), "{check}");
    drop(wc);

    // A secret a sink needs is missing: a config error (exit 2) from check and run, before any
    // slot or state exists.
    let opts = Options {
        extra: "[sinks.kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[sinks.kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"WALCAST_TEST_UNSET_SECRET\"\n".into(),
        ..Options::default()
    };
    let mut wc = Walcast::with_options(&db, &opts);
    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(2), "{check}");
    wc.start();
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(2), "{}", wc.log_tail(20));
    assert!(wc.log_tail(10).contains("WALCAST_TEST_UNSET_SECRET"), "the error names the variable: {}", wc.log_tail(10));
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot is left behind");
    let state = wc.out_path.parent().expect("dir").join("state");
    assert!(read_snapshot_state(&state, &db.slot).is_none(), "no state is left behind");
    drop(wc);

    // A JSON-lines file that cannot be opened: check fails, and run stops before any slot exists.
    let mut wc = Walcast::new(&db);
    let text = std::fs::read_to_string(&wc.config_path).expect("config");
    let out = toml_str(&wc.out_path.to_string_lossy());
    std::fs::write(&wc.config_path, text.replace(&format!("path = {out}"), "path = \"/proc/walcast-no-such-dir/changes.jsonl\""))
        .expect("config");
    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "{check}");
    assert!(check.stdout.contains("sinks.jsonl.path"), "{check}");
    wc.start();
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(4), "{}", wc.log_tail(20));
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot is left behind");
    drop(wc);
    db.drop().await;
    exec(&admin, &format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_is_refused_and_resync_recovers() {
    // A private cluster: the WAL limit that invalidates the slot must not touch other tests' slots.
    let cluster = PrivateCluster::start("slot_lost").await;
    let db = TestDb::create_on(&cluster.url, "slot_lost").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO t SELECT g, 'r' || g FROM generate_series(1, 20) g").await;
    db.create_publication(&["t"]).await;
    let mut wc = Walcast::new(&db);
    wc.start();
    wc.wait_lines(20, WAIT).await;
    wc.stop().await;

    // While walcast is stopped: a delete, then more WAL than max_slot_wal_keep_size allows.
    exec(&sql, "DELETE FROM t WHERE id = 5").await;
    let admin = db.admin().await;
    exec(&admin, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'").await;
    exec(&admin, "SELECT pg_reload_conf()").await;
    exec(&sql, "CREATE TABLE filler (b text)").await;
    let deadline = Instant::now() + WAIT;
    loop {
        exec(&sql, "INSERT INTO filler SELECT md5(g::text) FROM generate_series(1, 20000) g").await;
        exec(&sql, "SELECT pg_switch_wal()").await;
        exec(&sql, "CHECKPOINT").await;
        let status = query_text(&admin, &format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{}'", db.slot)).await;
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot did not become lost (wal_status {status:?})");
    }

    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(3), "{check}");
    assert!(check.stdout.contains("wal_status = lost") && check.stdout.contains("walcast resync"), "{check}");
    wc.start();
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(3), "{}", wc.log_tail(20));
    assert!(wc.log_tail(10).contains("wal_status = lost"), "{}", wc.log_tail(10));

    let lines = resync_and_restart(&mut wc, &sql).await;
    assert_eq!(
        applied(&lines),
        id_v_rows(&sql).await,
        "after the re-sync the sink equals the table (row 5 deleted while the slot was lost)"
    );
    wc.stop().await;
}

/// An operator loses `snapshot.state_dir` (a container restarted without its volume) while the
/// first load runs: the slot survives, the record of the unfinished load does not, and walcast
/// cannot tell that slot from one made by hand. `walcast check` and `walcast run` both say that
/// existing rows are not loaded and how to load them; the printed fix (`walcast snapshot
/// --table`, beside the running stream) makes the output equal to the table again.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_lost_during_the_load_is_reported_and_the_printed_fix_loads_the_rows() {
    let db = TestDb::create("slot_unrecorded").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20000) g").await;
    db.create_publication(&["t"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("state");
    let extra = format!("[snapshot]\nstate_dir = {}\nchunk_rows = 20\n", toml_str(&state_dir.to_string_lossy()));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    wait_load_in_flight(&wc, &state_dir, &db.slot, "public.t", 200).await;
    wc.kill().await;
    std::fs::remove_dir_all(&state_dir).expect("remove the state directory");

    let config = wc.config_path.to_string_lossy().into_owned();
    let check = walcast_cmd(&["check", "--config", &config]).await;
    assert_eq!(check.code, Some(0), "a slot made by hand is fine to stream\n{check}");
    assert!(check.stdout.contains("warn") && check.stdout.contains("holds no record of it"), "{check}");
    let fix = check.stdout.lines().find(|l| l.contains("walcast snapshot --config FILE --table SCHEMA.TABLE")).unwrap_or_default();
    assert!(!fix.is_empty(), "check names the way to load the rows\n{check}");
    wc.start();
    wc.wait_log("has no record of", WAIT).await;
    let log = wc.log_tail(40);
    assert!(log.contains("walcast snapshot --config FILE --table SCHEMA.TABLE"), "run says what check says\n{log}");
    exec(&sql, "UPDATE t SET v = 'streamed' WHERE id = 19999").await;
    wc.wait_for("the streamed update", WAIT, |l| l["op"] == "update").await;
    assert_ne!(applied(wc.lines()), id_v_rows(&sql).await, "rows were not loaded: that is what the warning is about");

    // The printed fix, pasted with the config and the table filled in.
    let snapshot = walcast_cmd(&["snapshot", "--config", &config, "--table", "public.t"]).await;
    assert_eq!(snapshot.code, Some(0), "{snapshot}");
    exec(&sql, "DELETE FROM t WHERE id = 1").await;
    let lines = wc.wait_for("the delete after the load", WAIT, |l| l["op"] == "delete").await;
    assert_eq!(applied(&lines), id_v_rows(&sql).await, "after the fix the output equals the table");
    wc.stop().await;
    db.drop().await;
}
