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

/// The SQL statements in the `fix:` lines of `out`: each starts at an upper-case GRANT, ALTER,
/// CREATE or DROP and ends at its `;`.
fn sql_fixes(out: &CmdOutput) -> Vec<String> {
    let mut found = Vec::new();
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        let Some((_, mut rest)) = line.split_once("fix: ") else { continue };
        loop {
            let start = ["GRANT ", "ALTER ", "CREATE ", "DROP "].iter().filter_map(|k| rest.find(k)).min();
            let Some(start) = start else { break };
            let Some(len) = rest[start..].find(';') else { panic!("a SQL fix without its `;`: {line:?}") };
            found.push(rest[start..start + len + 1].to_string());
            rest = &rest[start + len + 1..];
        }
    }
    found
}

/// Run every SQL fix of `out` as a superuser on `url`, each in a transaction rolled back (ALTER
/// SYSTEM cannot run in one: those are returned, not run). Panics naming a statement that fails.
async fn run_sql_fixes(out: &CmdOutput, url: &PgUrl) -> (usize, Vec<String>) {
    let client = connect(url).await;
    let (mut ran, mut skipped) = (0, Vec::new());
    for stmt in sql_fixes(out) {
        if stmt.starts_with("ALTER SYSTEM") {
            skipped.push(stmt);
            continue;
        }
        if let Err(e) = client.batch_execute(&format!("BEGIN; {stmt} ROLLBACK;")).await {
            panic!("the fix `{stmt}` fails when pasted: {e:?}\n{out}");
        }
        // A failed statement leaves the transaction aborted; a passed one ends rolled back.
        let _ = client.batch_execute("ROLLBACK").await;
        ran += 1;
    }
    (ran, skipped)
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
    // ALTER SYSTEM cannot run in a transaction and the replica cluster is shared: only its form
    // is checked here.
    assert_eq!(sql_fixes(&out), ["ALTER SYSTEM SET wal_level = logical;"], "{out}");
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
    let (ran, _) = run_sql_fixes(&out, &db.url).await;
    assert!(ran >= 1, "the ALTER ROLE fix ran:\n{out}");
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
    assert_eq!(run_sql_fixes(&out, &db.url).await.0, 1, "the REPLICA IDENTITY FULL fix ran:\n{out}");
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
    let version = tagged(&out, "ok").into_iter().find_map(|l| l.split("server version ").nth(1)).unwrap_or_default().to_string();
    let parts: Vec<&str> = version.split('.').collect();
    assert!(parts.len() == 2 && parts.iter().all(|p| p.parse::<u32>().is_ok()), "server version as 15.18: {version:?}\n{out}");
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

    // The advice for a missing slot: `run` creates it and loads the rows; `slot create` alone
    // refuses, since the slot it makes gets no snapshot.
    assert!(out.stderr.contains("walcast run") && out.stderr.contains("loads the existing rows"), "{out}");
    let out = walcast_cmd(&["slot", "create", "--config", &cfg]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("not loaded") && out.stderr.contains("--no-snapshot") && out.stderr.contains("walcast run"), "{out}");
    assert!(db.slot_state(&db.slot).await.is_none(), "no slot was created: {out}");

    // Create: slot and publication.
    let out = walcast_cmd(&["slot", "create", "--no-snapshot", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("created slot"), "{out}");
    let state = db.slot_state(&db.slot).await.expect("the slot exists");
    assert!(query_text(&sql, &format!("SELECT pubname::text FROM pg_publication WHERE pubname = '{}'", db.publication)).await.is_some());
    let out = walcast_cmd(&["slot", "create", "--config", &cfg]).await;
    assert_eq!(out.code, Some(0), "creating an existing slot is fine (no --no-snapshot needed): {out}");
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
        // Every SQL fix runs when pasted (the replica's ALTER SYSTEM: see
        // `alter_system_fix_makes_wal_level_logical`); the role's is the 42501 fix.
        let (ran, skipped) = run_sql_fixes(&out, &db.url).await;
        let expected = if name == "norepl.toml" {
            (1, 0)
        } else if name == "replica.toml" {
            (0, 1)
        } else {
            (0, 0)
        };
        assert_eq!((ran, skipped.len()), expected, "{name}: SQL fixes run / skipped {skipped:?}:\n{out}");
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
    let out = walcast_cmd(&["slot", "create", "--no-snapshot", "--config", &cfg.to_string_lossy()]).await;
    exec(&connect(&replica_url()).await, "DROP PUBLICATION IF EXISTS wc_check_slot_replica").await;
    assert_eq!(out.code, Some(3), "a setup problem: {out}");
    assert!(out.stderr.contains("wal_level") && out.stderr.contains("fix:"), "the message says wal_level and how to fix it:\n{out}");
    // The statement is run on a private cluster by `alter_system_fix_makes_wal_level_logical`.
    assert_eq!(sql_fixes(&out), ["ALTER SYSTEM SET wal_level = logical;"], "{out}");
}

/// The ALTER SYSTEM fix of a cluster with wal_level = replica (printed by `check`, `run` and
/// `slot create`) works when pasted: it cannot run in a transaction, nor on the shared replica
/// cluster, so it runs on a private cluster, which is restarted; `check` then passes the
/// wal_level line.
#[tokio::test(flavor = "multi_thread")]
async fn alter_system_fix_makes_wal_level_logical() {
    let pg = PrivateCluster::start_with_wal_level("check_walfix", "replica").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(&dir, "replica.toml", &config_for(&pg.url, "wc_walfix", "wc_walfix", ""));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    let fixes = sql_fixes(&out);
    assert_eq!(fixes, ["ALTER SYSTEM SET wal_level = logical;"], "{out}");
    let admin = connect(&pg.url).await;
    for stmt in &fixes {
        admin.batch_execute(stmt).await.unwrap_or_else(|e| panic!("the fix `{stmt}` fails when pasted: {e:?}"));
    }
    drop(admin);
    pg.restart().await;
    let out = check(&cfg).await;
    assert!(tagged(&out, "ok").iter().any(|l| l.contains("wal_level = logical")), "after the fix and a restart:\n{out}");
    assert!(!out.stdout.contains("wal_level is replica"), "{out}");
}

/// Every SQL fix `check` prints for a role that owns nothing and may select nothing works when
/// pasted: the GRANT with the real role name, the CREATE PUBLICATION, and (for a publication
/// that does not match source.tables) the ALTER PUBLICATION lines.
#[tokio::test(flavor = "multi_thread")]
async fn sql_fix_lines_run_when_pasted() {
    let db = TestDb::create("check_sqlfix").await;
    exec(&db.client().await, "CREATE TABLE secrets (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = norepl_url().with_database(&db.name);
    let cfg = write_config(&dir, "norepl.toml", &config_for(&url, &db.slot, &db.publication, "tables = [\"public.secrets\"]"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(
        out.stdout.contains(r#"GRANT SELECT ON "public"."secrets" TO "walcast_norepl";"#),
        "the GRANT names the real role, quoted:\n{out}"
    );
    let fixes = sql_fixes(&out);
    for expected in [
        r#"ALTER ROLE "walcast_norepl" WITH REPLICATION;"#,
        r#"GRANT SELECT ON "public"."secrets" TO "walcast_norepl";"#,
        &format!(r#"GRANT CREATE ON DATABASE "{}" TO "walcast_norepl";"#, db.name),
    ] {
        assert!(fixes.iter().any(|f| f == expected), "{expected} among the fixes {fixes:?}:\n{out}");
    }
    let (ran, skipped) = run_sql_fixes(&out, &db.url).await;
    assert!(ran == fixes.len() && skipped.is_empty(), "ran {ran} of {fixes:?}, skipped {skipped:?}:\n{out}");

    // A publication publishing another table than source.tables.
    db.create_publication(&["other"]).await;
    let cfg = write_config(&dir, "mismatch.toml", &config_for(&db.url, &db.slot, &db.publication, "tables = [\"public.secrets\"]"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    let fixes = sql_fixes(&out);
    assert!(fixes.iter().any(|f| f.contains("ADD TABLE")) && fixes.iter().any(|f| f.contains("DROP TABLE")), "{fixes:?}\n{out}");
    assert_eq!(run_sql_fixes(&out, &db.url).await, (2, vec![]), "{out}");
    db.drop().await;
}

/// `walcast run` prints its fatal error once, with its fix (it was printed as a log line and
/// again as text).
#[tokio::test(flavor = "multi_thread")]
async fn run_prints_its_fatal_error_once() {
    let db = TestDb::create("check_once").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg =
        write_config(&dir, "noslot.toml", &config_for(&db.url, &db.slot, &db.publication, "tables = [\"public.t\"]\ncreate_slot = false"));
    let out = walcast_cmd(&["run", "--config", &cfg.to_string_lossy()]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(out.stderr.matches("does not exist").count(), 1, "the error once:\n{out}");
    assert_eq!(out.stderr.matches("fix:").count(), 1, "its fix once:\n{out}");
    db.drop().await;
}

/// `check` warns about an index written with `refresh = "wait_for"` whose refresh_interval is
/// -1 (each write would wait for a refresh that does not come): read from an existing index's
/// settings on the shared Elasticsearch-API server, and from the mapping file of one not yet
/// created. With a refresh interval (or another `refresh`) there is no warning.
#[tokio::test(flavor = "multi_thread")]
async fn wait_for_on_an_index_without_refresh_is_a_warning() {
    use crate::support::es::*;
    let es = Es::new(&es_url());
    let (existing, missing) = (index_name("waitfor-existing"), index_name("waitfor-missing"));
    es.delete_index(&existing).await;
    es.delete_index(&missing).await;
    es.create_index(&existing, serde_json::json!({"settings": {"index": {"refresh_interval": "-1"}}})).await;
    let db = TestDb::create("check_waitfor").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("m.json");
    std::fs::write(&mapping, r#"{"settings":{"refresh_interval":"-1"},"mappings":{"properties":{"id":{"type":"integer"}}}}"#)
        .expect("write");
    let config = |refresh: &str| {
        let rule = |index: &str| format!("[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n");
        let extra = es_section(
            &es_url(),
            &format!(
                "[sinks.elasticsearch.indexes.{existing:?}]\nrefresh = \"{refresh}\"\n\
                 [sinks.elasticsearch.indexes.{missing:?}]\nmapping_file = {:?}\nrefresh = \"{refresh}\"\n{}{}",
                mapping.display().to_string(),
                rule(&existing),
                rule(&missing),
            ),
        );
        let opts = Options { extra, ..Options::default() };
        write_config(
            &dir,
            &format!("{refresh}.toml"),
            &config_toml(&db.url, &db.slot, &db.publication, std::path::Path::new("/dev/null"), &opts),
        )
    };
    let warned = |out: &CmdOutput, index: &str| {
        tagged(out, "warn")
            .iter()
            .any(|l| l.contains(&format!("index {index} is written with refresh = \"wait_for\"")) && l.contains("refresh_interval = -1"))
    };

    let out = check(&config("wait_for")).await;
    assert_eq!(out.code, Some(0), "a warning, not a failure:\n{out}");
    assert!(warned(&out, &existing), "the existing index's settings:\n{out}");
    assert!(warned(&out, &missing) && out.stdout.contains("the settings of"), "the mapping file's settings:\n{out}");
    assert!(out.stdout.contains(&format!("fix: give the index a refresh interval (PUT /{existing}/_settings")), "{out}");

    // Another refresh, or an interval: no warning.
    let out = check(&config("true")).await;
    assert!(!out.stdout.contains("refresh_interval = -1"), "{out}");
    let (status, _) = es
        .request(reqwest::Method::PUT, &format!("/{existing}/_settings"), Some(serde_json::json!({"index": {"refresh_interval": "1s"}})))
        .await;
    assert_eq!(status, 200);
    let out = check(&config("wait_for")).await;
    assert!(!warned(&out, &existing) && warned(&out, &missing), "{out}");
    es.delete_index(&existing).await;
    db.drop().await;
}
