//! `walcast check` (preflight with fixes and exit codes), config errors (exit 2, naming the
//! field) and the `walcast slot` commands.

use std::path::PathBuf;

use crate::support::*;
use serde_json::Value;

/// Write a config file into `dir` and return its path.
fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn config_for(url: &PgUrl, slot: &str, publication: &str, source_extra: &str) -> String {
    let opts = Options { source: source_extra.to_string(), ..Options::default() };
    config_toml(url, slot, publication, std::path::Path::new("/dev/null"), &opts)
}

async fn check(config: &std::path::Path) -> CmdOutput {
    walcast_cmd(&["check", "--config", &config.to_string_lossy()]).await
}

/// Lines of `walcast check` output with the given tag (`ok`, `warn`, `FAIL`).
fn tagged<'a>(out: &'a CmdOutput, tag: &str) -> Vec<&'a str> {
    out.stdout.lines().filter(|l| l.split_whitespace().next() == Some(tag)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_replica_fails_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(&dir, "replica.toml", &config_for(&replica_url(), "wc_check_replica", "wc_check_replica", ""));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    let fails = tagged(&out, "FAIL");
    assert!(fails.iter().any(|l| l.contains("wal_level is replica")), "no wal_level FAIL line:\n{out}");
    let fix = out.stdout.lines().skip_while(|l| !l.contains("wal_level is replica")).nth(1).unwrap_or_default();
    assert!(fix.contains("fix:") && fix.contains("wal_level = logical") && fix.contains("restart"), "the fix line: {fix:?}\n{out}");
    assert!(out.stdout.contains("check failed"), "{out}");
    assert!(!out.stdout.contains("check passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn role_without_replication_fails_with_the_fix() {
    let db = TestDb::create("check_norepl").await;
    let url = norepl_url().with_database(&db.name);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(&dir, "norepl.toml", &config_for(&url, &db.slot, &db.publication, ""));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    let fails = tagged(&out, "FAIL");
    assert!(fails.iter().any(|l| l.contains("walcast_norepl") && l.contains("REPLICATION")), "no REPLICATION FAIL line:\n{out}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("fix:") && l.contains("ALTER ROLE") && l.contains("walcast_norepl") && l.contains("WITH REPLICATION")),
        "no `ALTER ROLE ... WITH REPLICATION` fix:\n{out}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config_for(&pg_url(), "wc_check_cfg", "wc_check_cfg", "");
    let cases = [
        ("unknown.toml", good.replace("[source]\n", "[source]\nslot_nmae = \"x\"\n"), "slot_nmae"),
        ("slot.toml", good.replace("slot = \"wc_check_cfg\"", "slot = \"Bad-Name\""), "source.slot"),
        ("port.toml", good.replacen(&format!("port = {}", pg_url().port), "port = 0", 1), "source.port"),
        ("type.toml", good.replacen(&format!("port = {}", pg_url().port), "port = \"x\"", 1), "port"),
        ("pipeline.toml", format!("{good}\n[pipeline]\nbatch_max_changes = 0\n"), "pipeline.batch_max_changes"),
    ];
    for (name, text, field) in cases {
        assert_ne!(text, good, "{name}: the replacement did not apply");
        let cfg = write_config(&dir, name, &text);
        for command in ["check", "run"] {
            let out = walcast_cmd(&[command, "--config", &cfg.to_string_lossy()]).await;
            assert_eq!(out.code, Some(2), "{command} {name}: {out}");
            assert!(out.stderr.contains(field), "{command} {name}: the message does not name {field}:\n{out}");
        }
    }
    let missing = dir.path().join("missing.toml");
    let out = walcast_cmd(&["check", "--config", &missing.to_string_lossy()]).await;
    assert_eq!(out.code, Some(2), "missing file: {out}");
    assert!(out.stderr.contains("missing.toml"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn table_without_primary_key_is_a_warning() {
    let db = TestDb::create("check_nopk").await;
    exec(&db.client().await, "CREATE TABLE nopk (a int, b text); CREATE TABLE withpk (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. Tables listed in the config, publication still to be created.
    let cfg =
        write_config(&dir, "listed.toml", &config_for(&db.url, &db.slot, &db.publication, "tables = [\"public.nopk\", \"public.withpk\"]"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(0), "warnings do not fail the check: {out}");
    assert!(
        tagged(&out, "warn").iter().any(|l| l.contains("public.nopk") && l.contains("no primary key")),
        "no warning for public.nopk:\n{out}"
    );
    assert!(tagged(&out, "ok").iter().any(|l| l.contains("public.withpk") && l.contains("streams with a key")), "{out}");
    assert!(out.stdout.contains("REPLICA IDENTITY FULL"), "the fix names REPLICA IDENTITY FULL:\n{out}");
    assert!(out.stdout.trim_end().ends_with("check passed"), "{out}");

    // 2. No table list: the publication walcast creates is FOR ALL TABLES, so both tables will
    //    be streamed and the table without a key must still be reported.
    let cfg = write_config(&dir, "all.toml", &config_for(&db.url, &db.slot, &db.publication, ""));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        tagged(&out, "warn").iter().any(|l| l.contains("public.nopk") && l.contains("no primary key")),
        "without source.tables walcast publishes FOR ALL TABLES; public.nopk is streamed and has no key:\n{out}"
    );
    assert!(!out.stdout.contains("no table will be streamed"), "every table will be streamed:\n{out}");

    // 3. An existing publication decides.
    db.create_publication(&["nopk"]).await;
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(tagged(&out, "warn").iter().any(|l| l.contains("public.nopk")), "{out}");
    assert!(!out.stdout.contains("public.withpk"), "withpk is not in the existing publication:\n{out}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn good_config_passes() {
    let db = TestDb::create("check_good").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(&dir, "good.toml", &config_for(&db.url, &db.slot, &db.publication, "tables = [\"public.t\"]"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(tagged(&out, "FAIL").is_empty(), "{out}");
    assert!(out.stdout.lines().next().is_some_and(|l| l.contains("config is valid")), "{out}");
    assert!(out.stdout.contains("wal_level = logical"), "{out}");
    assert!(out.stdout.trim_end().ends_with("check passed"), "{out}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slot_status_create_and_drop() {
    let db = TestDb::create("check_slot").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let mut wc = Walcast::with_options(&db, &Options { source: "tables = [\"public.t\"]".into(), ..Options::default() });
    let cfg = wc.config_path.to_string_lossy().into_owned();

    // Missing slot: status says so and exits 3.
    let out = walcast_cmd(&["slot", "status", "--config", &cfg]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("does not exist"), "{out}");
    let out = walcast_cmd(&["slot", "status", "--json", "--config", &cfg]).await;
    assert_eq!(out.code, Some(3), "{out}");
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["exists"], false, "{v}");

    // Create: slot and publication.
    let out = walcast_cmd(&["slot", "create", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("created slot"), "{out}");
    let state = db.slot_state(&db.slot).await.expect("the slot exists");
    assert!(query_text(&sql, &format!("SELECT pubname::text FROM pg_publication WHERE pubname = '{}'", db.publication)).await.is_some());
    let out = walcast_cmd(&["slot", "create", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "creating an existing slot is fine: {out}");
    assert!(out.stdout.contains("already exists"), "{out}");

    // Status while idle, text and JSON.
    let out = walcast_cmd(&["slot", "status", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let confirmed = state.confirmed_flush_lsn.expect("confirmed_flush_lsn").to_string();
    for (label, value) in [
        ("confirmed_flush_lsn", confirmed.as_str()),
        ("restart_lsn", &state.restart_lsn.expect("restart_lsn").to_string()),
        ("active pid", "- (not streaming)"),
        ("wal_status", "reserved"),
        ("plugin", "pgoutput"),
        ("database", db.name.as_str()),
    ] {
        let line = out.stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} line:\n{out}"));
        assert_eq!(line[label.len()..].trim(), value, "{label}:\n{out}");
    }
    let retained =
        out.stdout.lines().find(|l| l.starts_with("retained wal bytes")).unwrap_or_else(|| panic!("no retained wal bytes:\n{out}"));
    assert!(retained["retained wal bytes".len()..].trim().parse::<u64>().is_ok(), "{retained}");
    let json_status = |out: &CmdOutput| -> Value { serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}")) };
    let out = walcast_cmd(&["slot", "status", "--json", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let v = json_status(&out);
    assert_eq!(v["exists"], true, "{v}");
    assert_eq!(v["active"], false, "{v}");
    assert_eq!(v["active_pid"], Value::Null, "{v}");
    assert_eq!(v["confirmed_flush_lsn"], confirmed.as_str(), "{v}");
    assert!(v["restart_lsn"].as_str().is_some_and(|s| s.parse::<walcast::lsn::Lsn>().is_ok()), "{v}");
    assert!(v["retained_wal_bytes"].as_i64().is_some_and(|b| b >= 0), "{v}");
    assert_eq!(v["wal_status"], "reserved", "{v}");

    // Status while walcast streams: the walsender's pid.
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1)").await;
    wc.wait_lines(1, WAIT).await;
    let pid = db.slot_state(&db.slot).await.and_then(|s| s.active_pid).expect("the slot is active while walcast runs");
    let out = walcast_cmd(&["slot", "status", "--json", "--config", &cfg]).await;
    let v = json_status(&out);
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["active_pid"], pid, "{v}");
    let out = walcast_cmd(&["slot", "status", "--config", &cfg]).await;
    assert!(out.stdout.lines().any(|l| l.starts_with("active pid") && l.trim_end().ends_with(&pid.to_string())), "{out}");
    wc.stop().await;
    db.wait_slot_inactive(std::time::Duration::from_secs(10)).await;

    // Drop.
    let out = walcast_cmd(&["slot", "drop", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(db.slot_state(&db.slot).await.is_none(), "the slot is gone");
    let out = walcast_cmd(&["slot", "status", "--config", &cfg]).await;
    assert_eq!(out.code, Some(3), "{out}");
    db.drop().await;
}

/// `walcast run` stops at once with exit code 3 and a fix on setup errors (it does not retry
/// them forever).
#[tokio::test(flavor = "multi_thread")]
async fn run_stops_with_exit_3_on_setup_errors() {
    let db = TestDb::create("check_run").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("replica.toml", config_for(&replica_url(), "wc_check_run_replica", "wc_check_run_replica", ""), "wal_level"),
        ("noslot.toml", config_for(&db.url, &db.slot, &db.publication, "tables = [\"public.t\"]\ncreate_slot = false"), "does not exist"),
        (
            "norepl.toml",
            config_for(&norepl_url().with_database(&db.name), &db.slot, &db.publication, "tables = [\"public.t\"]"),
            "walcast_norepl",
        ),
    ];
    for (name, text, needle) in cases {
        let cfg = write_config(&dir, name, &text);
        let out = walcast_cmd(&["run", "--config", &cfg.to_string_lossy()]).await;
        assert_eq!(out.code, Some(3), "{name}: {out}");
        assert!(out.stderr.contains(needle) && out.stderr.contains("fix:"), "{name}: the message names the problem and its fix:\n{out}");
    }
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot was created");
    // `run` created its publication on the replica cluster before failing: remove it.
    exec(&connect(&replica_url()).await, "DROP PUBLICATION IF EXISTS wc_check_run_replica").await;
    db.drop().await;
}

/// `walcast slot create` on a server without logical decoding says why, with the fix (exit 3).
#[tokio::test(flavor = "multi_thread")]
async fn slot_create_on_a_replica_cluster_explains_wal_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(&dir, "replica.toml", &config_for(&replica_url(), "wc_check_slot_replica", "wc_check_slot_replica", ""));
    let out = walcast_cmd(&["slot", "create", "--config", &cfg.to_string_lossy()]).await;
    exec(&connect(&replica_url()).await, "DROP PUBLICATION IF EXISTS wc_check_slot_replica").await;
    assert_eq!(out.code, Some(3), "a setup problem: {out}");
    assert!(out.stderr.contains("wal_level") && out.stderr.contains("fix:"), "the message says wal_level and how to fix it:\n{out}");
}
