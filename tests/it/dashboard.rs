//! The shipped monitoring files are checked against the real thing:
//! - every PromQL expression of deploy/grafana/walcast.json (panel targets and template-variable
//!   queries, with Grafana's variables substituted) and of deploy/prometheus/alerts.yml (as
//!   loaded and parsed by Prometheus itself) is accepted by Prometheus's query API;
//! - every `walcast_*` metric name they use appears in the `/metrics` output of a running walcast;
//! - the alert rules load and evaluate without error in a Prometheus scraping walcast;
//! - `promtool check rules`, `promtool test rules` (deploy/prometheus/alerts_test.yml) and
//!   `promtool check config deploy/prometheus/prometheus.yml` pass.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::obs::*;
use crate::support::*;
use serde_json::Value;

#[test]
fn promtool_accepts_rules_rule_tests_and_config() {
    let rules = deploy_file("prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", &rules.to_string_lossy()]);
    assert!(ok, "promtool check rules failed:\n{out}");
    let rule_count = std::fs::read_to_string(&rules).expect("alerts.yml").matches("- alert:").count();
    assert!(out.contains(&format!("SUCCESS: {rule_count} rules found")), "{out}");

    let (ok, out) = promtool(&["test", "rules", &deploy_file("prometheus/alerts_test.yml").to_string_lossy()]);
    assert!(ok, "promtool test rules failed:\n{out}");

    let (ok, out) = promtool(&["check", "config", &deploy_file("prometheus/prometheus.yml").to_string_lossy()]);
    assert!(ok, "promtool check config failed:\n{out}");
    assert!(out.contains("1 rule files found"), "prometheus.yml must load alerts.yml:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_queries_are_valid_and_use_exported_metrics() {
    let started = Instant::now();
    let db = TestDb::create("dashboard").await;
    let client = db.client().await;
    exec(&client, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    let mut w = Walcast::with_options(&db, &Options { extra: "[heartbeat]\ninterval_ms = 500\n".into(), ..Options::default() });
    patch_config(&w, METRICS_SECTION, "[metrics]\nlisten = \"127.0.0.1:0\"\nslot_poll_ms = 200\n");
    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;
    exec(&client, "INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2").await;
    w.wait_lines(4, WAIT).await;
    let prom = Prometheus::start(&[&addr]).await;
    prom.wait_scraped(1, Duration::from_secs(30)).await;

    // The metric names walcast really exports (after some traffic, so label families have series).
    let (code, text) = http_get(&addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    let exposition = Exposition::parse(&text);
    assert!(exposition.samples.contains("walcast_changes_total"), "{text}");

    // Dashboard expressions.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(deploy_file("grafana/walcast.json")).expect("walcast.json"))
        .expect("walcast.json is JSON");
    assert_eq!(dashboard["uid"], "walcast");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    let panel_exprs = exprs.len();
    for var in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().or(var["query"].as_str()).expect("a variable query");
            exprs.push(label_values_selector(q));
        }
    }
    assert!(panel_exprs >= 20, "the dashboard should have its panels' queries ({panel_exprs})");

    // Alert expressions, as Prometheus parsed them from alerts.yml.
    let rules = wait_rules_evaluated(&prom, Duration::from_secs(20)).await;
    let alert_count = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).expect("alerts.yml").matches("- alert:").count();
    assert_eq!(rules.len(), alert_count, "Prometheus loaded every alert rule");
    for r in &rules {
        assert_eq!(r["health"], "ok", "alert {} does not evaluate: {}", r["name"], r["lastError"]);
        exprs.push(r["query"].as_str().expect("rule query").to_string());
    }

    // Every expression is valid PromQL (Prometheus answers 400 to a bad one) and uses only
    // exported metric names.
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for raw in &exprs {
        let expr = substitute_grafana_variables(raw);
        assert!(!expr.contains('$'), "an unsubstituted Grafana variable in {raw}");
        let (code, answer) = prom.query_raw(&expr);
        assert!(code == 200 && answer["status"] == "success", "Prometheus rejects {expr}: HTTP {code} {answer}");
        let names = metric_names(&expr);
        for n in &names {
            if !exposition.exports(n) {
                missing.push(format!("{n} (in {raw})"));
            }
        }
        used.extend(names);
    }
    assert!(missing.is_empty(), "metric names not in walcast's /metrics:\n{}\n--- /metrics ---\n{text}", missing.join("\n"));

    // The dashboard answers the questions it is for.
    let text_of_dashboard = dashboard.to_string();
    for needle in [
        "walcast_replication_lag_bytes",
        "walcast_replication_lag_seconds",
        "walcast_sink_lag_seconds",
        "walcast_sink_durable_lsn",
        "walcast_changes_total",
        "walcast_slot_retained_wal_bytes",
        "walcast_slot_wal_status",
        "walcast_slot_active",
        "walcast_sink_requests_total",
        "walcast_sink_request_duration_seconds_bucket",
        "walcast_dead_letters_total",
        "walcast_snapshot_rows_total",
        "walcast_reconnects_total",
        "walcast_process_resident_memory_bytes",
        "walcast_process_cpu_seconds_total",
        "walcast_streaming",
        "walcast_ha_active",
        "walcast_snapshotting",
        "walcast_slot_safe_wal_bytes",
    ] {
        assert!(text_of_dashboard.contains(needle), "the dashboard does not show {needle}");
    }
    // And the queries return data against the live walcast, where there is data to show.
    for expr in [
        "sum by (table, op) (walcast_changes_total)",
        "max(walcast_slot_active) == 1",
        "walcast_replication_lag_bytes",
        "walcast_dead_letters_total{sink=\"jsonl\"}",
    ] {
        assert!(!prom.query(expr).is_empty(), "{expr} returns nothing for a live walcast");
    }

    eprintln!(
        "figures: {panel_exprs} dashboard queries + {} variable queries + {} alert rules accepted by Prometheus; \
         {} distinct walcast metric names, all exported; test {:?}",
        exprs.len() - panel_exprs - rules.len(),
        rules.len(),
        used.len(),
        started.elapsed()
    );
    w.stop().await;
    drop(prom);
    db.drop().await;
}

/// Every `expr` string in the dashboard (panel targets, nested rows included).
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Grafana's `label_values(selector, label)` -> the selector (what Prometheus evaluates).
fn label_values_selector(q: &str) -> String {
    let inner =
        q.trim().strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("unexpected variable query {q}"));
    let (selector, _label) = inner.rsplit_once(',').unwrap_or_else(|| panic!("no label in {q}"));
    selector.trim().to_string()
}

/// Grafana's built-in and dashboard variables -> values Prometheus accepts.
fn substitute_grafana_variables(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
        ("${job}", ".*"),
        ("${instance}", ".*"),
        ("$job", ".*"),
        ("$instance", ".*"),
    ] {
        s = s.replace(var, value);
    }
    s
}

/// The alerting rules of the loaded rule files, once each has been evaluated at least once.
async fn wait_rules_evaluated(prom: &Prometheus, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = prom.api("rules?type=alert");
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown") {
            return rules;
        }
        assert!(Instant::now() < deadline, "alert rules not evaluated within {timeout:?}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The walcast configurations shipped for docker-compose and Kubernetes parse and validate with
/// this build (unknown keys are errors, so a renamed option would fail here first).
#[test]
fn shipped_walcast_configs_are_valid() {
    let compose = repo_root().join("deploy/walcast.compose.toml");
    let config = walcast::config::Config::load(&compose).unwrap_or_else(|e| panic!("{}: {e}", compose.display()));
    assert!(config.sinks.jsonl.is_some() && config.sinks.kafka.is_some(), "the compose config streams to stdout and Kafka");
    assert_eq!(config.metrics.listen, "0.0.0.0:9187", "Prometheus scrapes it from another container");

    // The TOML inside deploy/k8s/configmap.yaml (the block scalar under `walcast.toml: |`).
    let configmap = std::fs::read_to_string(deploy_file("k8s/configmap.yaml")).expect("configmap.yaml");
    let block: String = configmap
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("walcast.toml: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(block.contains("[source]"), "no walcast.toml block in configmap.yaml");
    let config = walcast::config::Config::parse(&block, std::path::Path::new("deploy/k8s/configmap.yaml"))
        .unwrap_or_else(|e| panic!("deploy/k8s/configmap.yaml: {e}"));
    assert!(config.ha.enabled);
    assert_eq!(config.source.password_env.as_deref(), Some("WALCAST_PG_PASSWORD"), "the password comes from the Secret via env");
}

// ---------------------------------------------------------------------------------------------
// Snapshotting, WAL-status colours, the Postgres-side slot alerts

/// The dashboard as JSON.
fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy_file("grafana/walcast.json")).expect("walcast.json"))
        .expect("walcast.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

/// The WAL-status stat's query, evaluated by promtool on a slot in each wal_status (and on no
/// slot at all), gives the value whose mapping has that status's colour: lost is red.
#[test]
fn wal_status_stat_colours_each_status() {
    let dashboard = dashboard();
    let stat =
        panels(&dashboard).into_iter().find(|p| p["type"] == "stat" && p["title"] == "WAL status").expect("a WAL status stat").clone();
    let expr = substitute_grafana_variables(stat["targets"][0]["expr"].as_str().expect("expr"));
    assert!(!expr.contains('\''), "the query goes into a single-quoted YAML string: {expr}");
    let mappings = &stat["fieldConfig"]["defaults"]["mappings"][0]["options"];
    let code_of = |text: &str| -> (String, String) {
        let (code, m) = mappings
            .as_object()
            .expect("value mappings")
            .iter()
            .find(|(_, m)| m["text"] == text)
            .unwrap_or_else(|| panic!("no mapping with text {text}: {mappings}"));
        (code.clone(), m["color"].as_str().expect("color").to_string())
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (current, text, colour) in [
        (Some("reserved"), "reserved", "green"),
        (Some("extended"), "extended", "green"),
        (Some("unreserved"), "unreserved", "orange"),
        (Some("lost"), "lost", "red"),
        (None, "no slot", "red"),
    ] {
        let (code, mapped) = code_of(text);
        assert_eq!(mapped, colour, "wal_status {text} is shown in {mapped}");
        // What walcast exports: 1 for the current status, 0 for the others (all 0 without a slot).
        let series: String = walcast::metrics::WAL_STATUSES
            .iter()
            .map(|s| {
                format!(
                    "      - series: 'walcast_slot_wal_status{{job=\"walcast\", instance=\"a:9187\", status=\"{s}\"}}'\n        values: '{}'\n",
                    u8::from(Some(*s) == current)
                )
            })
            .collect();
        let test = format!(
            "evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    promql_expr_test:\n      - expr: '{expr}'\n        eval_time: 0m\n        exp_samples:\n          - labels: '{{}}'\n            value: {code}\n"
        );
        let path = dir.path().join(format!("wal_status_{code}.yml"));
        std::fs::write(&path, &test).expect("write promtool test");
        let (ok, out) = promtool(&["test", "rules", &path.to_string_lossy()]);
        assert!(ok, "the WAL-status query on wal_status {text} is not {code} ({colour}):\n{out}\n{test}");
    }
}

/// `pg_walcast_*` names of deploy/postgres-exporter/queries.yaml: `<query key>_<GAUGE column>`.
fn postgres_exporter_names(yaml: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut key, mut column) = (String::new(), String::new());
    for line in yaml.lines() {
        if !line.starts_with([' ', '#']) && line.ends_with(':') {
            key = line.trim_end_matches(':').to_string();
        } else if let Some(c) = line.strip_prefix("    - ").and_then(|l| l.strip_suffix(':')) {
            column = c.to_string();
        } else if line.trim() == "usage: \"GAUGE\"" {
            names.insert(format!("{key}_{column}"));
        }
    }
    names
}

/// The SQL of one query of deploy/postgres-exporter/queries.yaml (its `query: |` block).
fn postgres_exporter_sql(yaml: &str, key: &str) -> String {
    yaml.lines()
        .skip_while(|l| *l != format!("{key}:"))
        .skip_while(|l| l.trim() != "query: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect()
}

/// The Postgres-side rules load and pass their unit tests, and use only names the query file
/// exports.
#[test]
fn postgres_side_slot_rules_pass_promtool_and_use_the_query_file_names() {
    let rules = deploy_file("postgres-exporter/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", &rules.to_string_lossy()]);
    assert!(ok, "promtool check rules failed:\n{out}");
    let (ok, out) = promtool(&["test", "rules", &deploy_file("postgres-exporter/alerts_test.yml").to_string_lossy()]);
    assert!(ok, "promtool test rules failed:\n{out}");

    let yaml = std::fs::read_to_string(deploy_file("postgres-exporter/queries.yaml")).expect("queries.yaml");
    let exported = postgres_exporter_names(&yaml);
    for name in ["active", "retained_bytes", "confirmed_lag_bytes", "safe_wal_bytes", "server_wal_lsn"] {
        assert!(exported.contains(&format!("pg_walcast_slot_{name}")), "{exported:?}");
    }
    assert!(exported.contains("pg_walcast_slot_wal_status_current"), "{exported:?}");
    let text = std::fs::read_to_string(&rules).expect("alerts.yml");
    let used: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("pg_walcast_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "names not in queries.yaml: {unknown:?}");
    // Same thresholds as walcast's own rules.
    let walcast_rules = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).expect("alerts.yml");
    for threshold in ["> 1073741824", "> 5368709120", "< 0.2 *"] {
        assert!(text.contains(threshold) && walcast_rules.contains(threshold), "threshold {threshold} differs");
    }
}

fn lsn_number(text: &str) -> f64 {
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("not an LSN: {text}"));
    ((u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")) as f64
}

/// With walcast stopped, the Postgres-side query (the SQL of queries.yaml, run as is) gives the
/// slot's lag as walcast computes it: server WAL position minus the position walcast confirmed
/// last (its final `stopped confirmed=` and, before that, `walcast_confirmed_lsn`), and the
/// retained WAL and safe_wal_size walcast exports.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_side_slot_query_matches_walcast_with_walcast_stopped() {
    let db = TestDb::create("pg_slot_query").await;
    let client = db.client().await;
    exec(&client, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    let mut w = Walcast::with_options(&db, &Options::default());
    patch_config(&w, METRICS_SECTION, "[metrics]\nlisten = \"127.0.0.1:0\"\nslot_poll_ms = 200\n");
    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;
    exec(&client, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g").await;
    w.wait_lines(100, WAIT).await;
    wait_metric(&mut w, &addr, "walcast_slot_retained_wal_bytes", WAIT, |v| v > 0.0).await;
    let (_, text) = http_get(&addr, "/metrics").expect("GET /metrics");
    let last_confirmed = sample(&text, "walcast_confirmed_lsn").expect("walcast_confirmed_lsn");
    let walcast_safe = sample(&text, "walcast_slot_safe_wal_bytes");
    w.stop().await;
    let log = std::fs::read_to_string(&w.log_path).expect("log");
    let stopped =
        log.lines().rev().find(|l| l.contains("stopped") && l.contains("confirmed=")).unwrap_or_else(|| panic!("no stop line\n{log}"));
    let final_lsn = stopped[stopped.find("confirmed=").expect("confirmed=") + 10..]
        .split(|c: char| c.is_whitespace() || c == '\u{1b}')
        .next()
        .expect("lsn")
        .to_string();
    let walcast_final = lsn_number(&final_lsn);
    assert!(walcast_final >= last_confirmed, "the final confirmed position {final_lsn} is behind the metric {last_confirmed}");

    let yaml = std::fs::read_to_string(deploy_file("postgres-exporter/queries.yaml")).expect("queries.yaml");
    let sql = postgres_exporter_sql(&yaml, "pg_walcast_slot");
    assert!(sql.contains("pg_replication_slots"), "{sql}");
    let rows =
        client.query(&format!("SELECT * FROM ({sql}) q WHERE slot_name = $1"), &[&db.slot]).await.expect("the queries.yaml SQL runs");
    assert_eq!(rows.len(), 1, "one row for slot {}", db.slot);
    let r = &rows[0];
    let (active, server, lag, retained): (i32, f64, f64, f64) =
        (r.get("active"), r.get("server_wal_lsn"), r.get("confirmed_lag_bytes"), r.get("retained_bytes"));
    let safe: Option<f64> = r.get("safe_wal_bytes");
    let slot = client
        .query_one("SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&db.slot])
        .await
        .expect("slot row");
    let (confirmed_flush, restart): (String, String) = (slot.get(0), slot.get(1));

    assert_eq!(active, 0, "walcast is stopped: the slot is inactive");
    assert_eq!(server - lag, walcast_final, "the query's lag counts from walcast's last confirmed position ({final_lsn})");
    assert_eq!(lsn_number(&confirmed_flush), walcast_final, "confirmed_flush_lsn is walcast's last confirmed position");
    assert_eq!(server - retained, lsn_number(&restart), "retained = server WAL position minus restart_lsn");
    assert!(lag >= 0.0 && retained >= lag, "lag {lag}, retained {retained}");
    // safe_wal_size: NULL (no sample from walcast) exactly when unlimited.
    assert_eq!(safe.is_some(), walcast_safe.is_some(), "safe_wal_size {safe:?} vs walcast_slot_safe_wal_bytes {walcast_safe:?}");

    // The wal_status query gives one current status, the one walcast exported.
    let sql = postgres_exporter_sql(&yaml, "pg_walcast_slot_wal");
    let rows = client
        .query(&format!("SELECT status FROM ({sql}) q WHERE slot_name = $1 AND status_current = 1"), &[&db.slot])
        .await
        .expect("wal query");
    let status: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(sample(&text, &format!("walcast_slot_wal_status{{status=\"{}\"}}", status[0])), Some(1.0), "{text}");
    eprintln!("figures: server {server} lag {lag} retained {retained} safe {safe:?}; walcast final {final_lsn}, metric {last_confirmed}");
    db.drop().await;
}

/// An initial snapshot longer than the `for:` of every rule (scaled down: a copy of alerts.yml
/// with `for: 2s`) raises no critical alert. The snapshot is held as long as the test wants: the
/// JSON-lines sink writes into a FIFO nobody reads until the watch is over. A control rule on
/// `walcast_snapshotting` with the same `for:` must fire, so the snapshot outlasted the `for:`.
#[tokio::test(flavor = "multi_thread")]
async fn an_initial_snapshot_longer_than_for_raises_no_critical_alert() {
    const ROWS: usize = 20_000;
    let db = TestDb::create("snapshot_alerts").await;
    let client = db.client().await;
    exec(&client, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&client, &format!("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g")).await;
    db.create_publication(&["t"]).await;
    let state = tempfile::tempdir().expect("tempdir");
    let extra = format!("[snapshot]\nstate_dir = {}\nchunk_rows = 200\n", toml_str(&state.path().join("state").to_string_lossy()));
    let mut w = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    patch_config(&w, METRICS_SECTION, "[metrics]\nlisten = \"127.0.0.1:0\"\nslot_poll_ms = 200\n");

    let rules_dir = tempfile::tempdir().expect("tempdir");
    let mut rules = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).expect("alerts.yml");
    for d in ["1m", "2m", "5m", "10m"] {
        rules = rules.replace(&format!("for: {d}\n"), "for: 2s\n");
    }
    assert!(!rules.contains("for: 1") && !rules.contains("for: 5"), "a `for:` left unscaled");
    rules.push_str(
        "\n  - name: test-control\n    rules:\n      - alert: TestSnapshotOutlastsFor\n        expr: max by (job) (walcast_snapshotting) == 1\n        for: 2s\n        labels:\n          severity: info\n",
    );
    let rules_path = rules_dir.path().join("alerts.yml");
    std::fs::write(&rules_path, &rules).expect("write rules");

    // The sink's output is a FIFO read only once `release` is set: until then the snapshot blocks.
    let status = std::process::Command::new("mkfifo").arg(&w.out_path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (release, path) = (std::sync::Arc::clone(&release), w.out_path.clone());
        std::thread::spawn(move || {
            // Opened at once (walcast's open for writing waits for a reader), read only later.
            let mut fifo = std::fs::File::open(&path).expect("open fifo");
            while !release.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut fifo, &mut text);
            text.lines().count()
        })
    };

    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_metric(&mut w, &addr, "walcast_snapshotting", WAIT, |v| v == 1.0).await;
    let (code, reason) = http_get(&addr, "/readyz").expect("GET /readyz");
    assert!(code == 503 && reason.contains("snapshotting"), "/readyz during a snapshot: {code} {reason}");
    let prom = Prometheus::start_with_rules(&[&addr], &rules_path).await;
    prom.wait_scraped(1, Duration::from_secs(30)).await;
    // WalcastAbsent fires before the first scrape of a fresh Prometheus (not about the snapshot):
    // watch once the evaluations after the first scrape have resolved it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !prom.query("ALERTS{alertname=\"WalcastAbsent\"}").is_empty() {
        assert!(Instant::now() < deadline, "WalcastAbsent does not resolve once walcast is scraped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let watch = Instant::now();
    let mut control_fired = false;
    let mut critical_seen = Vec::new();
    while watch.elapsed() < Duration::from_secs(8) || !control_fired && watch.elapsed() < Duration::from_secs(30) {
        control_fired |= !prom.query("ALERTS{alertname=\"TestSnapshotOutlastsFor\", alertstate=\"firing\"}").is_empty();
        critical_seen.extend(prom.query("ALERTS{severity=\"critical\"}"));
        assert_eq!(metric(&addr, "walcast_snapshotting"), 1.0, "the snapshot is held until the FIFO is read");
        assert!(w.is_running(), "walcast exited during the snapshot\n{}", w.log_tail(40));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(control_fired, "the control rule (walcast_snapshotting, for: 2s) never fired:\n{}", prom.log_tail());
    assert!(critical_seen.is_empty(), "critical alerts (pending or firing) during the snapshot: {critical_seen:?}");
    // With the old expression WalcastNotStreaming would have fired by now.
    assert_eq!(prom.value("max by (job) (walcast_streaming)"), Some(0.0));

    release.store(true, std::sync::atomic::Ordering::Relaxed);
    wait_metric(&mut w, &addr, "walcast_streaming", WAIT, |v| v == 1.0).await;
    assert_eq!(metric(&addr, "walcast_snapshotting"), 0.0);
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;
    w.stop().await;
    let lines = reader.join().expect("reader");
    assert!(lines >= ROWS, "{lines} lines for {ROWS} rows");
    drop(prom);
    db.drop().await;
}
