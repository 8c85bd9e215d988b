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
