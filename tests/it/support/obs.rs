//! Observability: plain HTTP GET over a std `TcpStream` (no HTTP client dependency), walcast's
//! metrics address from its log, samples of `/metrics` (what tests assert on instead of log
//! wording), and a throwaway Debian `prometheus` scraping it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, percent_encode, repo_root, Walcast};

/// `GET path` (with query) from `addr` (`host:port`); returns the status code and the body.
/// HTTP/1.0 with `Connection: close`, so the body is simply everything after the headers.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Replace `from` by `to` in walcast's config file (before it starts), e.g. to add keys to the
/// `[metrics]` section that tests/support writes.
pub fn patch_config(w: &Walcast, from: &str, to: &str) {
    let text = std::fs::read_to_string(&w.config_path).expect("read config");
    assert!(text.contains(from), "{from:?} not in the generated config:\n{text}");
    std::fs::write(&w.config_path, text.replacen(from, to, 1)).expect("write config");
}

/// The `[metrics]` section tests/support writes.
pub const METRICS_SECTION: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// The metrics endpoint's address, from the log line "metrics endpoint listening ... addr=...".
pub async fn metrics_addr(w: &mut Walcast, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(&w.log_path).unwrap_or_default();
        let found = log.lines().rev().find(|l| l.contains("metrics endpoint listening")).and_then(|l| {
            let rest = &l[l.find("addr=")? + 5..];
            Some(rest.split(|c: char| c.is_whitespace() || c == '\u{1b}').next()?.to_string())
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(w.is_running(), "walcast exited before serving metrics\n{}", w.log_tail(40));
        assert!(Instant::now() < deadline, "no metrics endpoint after {timeout:?}\n{}", w.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `path` on `addr` until it answers `want`; returns the body.
pub async fn wait_http(addr: &str, path: &str, want: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let last = http_get(addr, path);
        if let Ok((code, body)) = &last {
            if *code == want {
                return body.clone();
            }
        }
        assert!(Instant::now() < deadline, "GET {addr}{path} did not answer {want} within {timeout:?}: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a metric sample (exact name and label text, e.g. `walcast_streaming` or
/// `walcast_sink_lag_seconds{sink="jsonl"}`) in a text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The value of one sample (as [`sample`]) on `/metrics` at `addr`, 0 when absent.
pub fn metric(addr: &str, series: &str) -> f64 {
    let (code, text) = http_get(addr, "/metrics").unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(code, 200, "GET {addr}/metrics: {text}");
    sample(&text, series).unwrap_or(0.0)
}

/// Poll `/metrics` at `addr` until `pred` holds for the value of `series` (0 when absent);
/// returns that value. Panics after `timeout` with the last value and `w`'s log tail.
pub async fn wait_metric(w: &mut Walcast, addr: &str, series: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = metric(addr, series);
        if pred(value) {
            return value;
        }
        assert!(w.is_running(), "walcast exited while waiting for {series} (last {value})\n{}", w.log_tail(40));
        assert!(Instant::now() < deadline, "{series} did not reach the expected value in {timeout:?} (last {value})\n{}", w.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sample names (`walcast_changes_total`, `..._bucket`) and declared families (`# TYPE name
/// type`) of a text exposition.
pub struct Exposition {
    pub samples: std::collections::BTreeSet<String>,
    pub families: std::collections::BTreeMap<String, String>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut samples = std::collections::BTreeSet::new();
        let mut families = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Self { samples, families }
    }

    /// Whether a series name used in a query is exported: as a sample, or as a declared family
    /// that has no series yet, with the suffixes its type implies (counter `X` -> `X_total`,
    /// histogram `X` -> `X_bucket`, `X_sum`, `X_count`, gauge `X` -> `X`).
    pub fn exports(&self, name: &str) -> bool {
        if self.samples.contains(name) {
            return true;
        }
        let family = |base: &str, kinds: &[&str]| self.families.get(base).is_some_and(|k| kinds.contains(&k.as_str()));
        if family(name, &["gauge", "unknown"]) {
            return true;
        }
        if let Some(base) = name.strip_suffix("_total") {
            if family(base, &["counter"]) {
                return true;
            }
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if family(base, &["histogram"]) {
                    return true;
                }
            }
        }
        false
    }
}

/// Every `walcast_...` identifier in a PromQL expression.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("walcast_") {
        let start = i + pos;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':') {
            end += 1;
        }
        // Inside a string ("job=\"walcast_x\"") it would be a label value, not a metric name.
        let in_string = expr[..start].matches('"').count() % 2 == 1;
        if !preceded && !in_string {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A throwaway Prometheus

/// Debian's `prometheus`, started for one test on a free port with its own storage directory,
/// scraping `targets` as job `walcast` every second. Killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    pub addr: String,
    /// Config and storage; removed on drop.
    _dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

/// Path of a file of the repository's deploy/ directory.
pub fn deploy_file(rel: &str) -> PathBuf {
    repo_root().join("deploy").join(rel)
}

fn which(bin: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("{bin} not found: scripts/test-env installs Debian's prometheus package (run it as root, or apt-get install prometheus)");
}

impl Prometheus {
    /// Start scraping `targets` (`host:port`) with the repository's alert rules loaded.
    pub async fn start(targets: &[&str]) -> Self {
        Self::start_with_rules(targets, &deploy_file("prometheus/alerts.yml")).await
    }

    /// Start scraping `targets` with the rule file `rules` (e.g. a test copy with short `for:`).
    pub async fn start_with_rules(targets: &[&str], rules: &Path) -> Self {
        let dir = tempfile::Builder::new().prefix("walcast-prometheus-").tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{}\"\n\
             scrape_configs:\n  - job_name: walcast\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(which("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child: Some(child), addr, _dir: dir, log_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&p.addr, "/-/ready") {
                break;
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("prometheus exited with {status}\n{}", p.log_tail());
            }
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s\n{}", p.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- prometheus log tail ---\n{}\n---", lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    /// `GET /api/v1/query?query=expr`: the status code and the parsed JSON answer.
    pub fn query_raw(&self, expr: &str) -> (u16, Value) {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", percent_encode(expr)))
            .unwrap_or_else(|e| panic!("prometheus query failed: {e}\n{}", self.log_tail()));
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus answered non-JSON ({e}): {body}"));
        (code, v)
    }

    /// The vector result of an instant query (panics unless the query succeeded).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let (code, v) = self.query_raw(expr);
        assert!(code == 200 && v["status"] == "success", "query {expr} failed: HTTP {code} {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the first sample of an instant query, if any.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// `GET /api/v1/<path>` parsed.
    pub fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/{path}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code, 200, "GET /api/v1/{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Wait until Prometheus has scraped the walcast job successfully (`up == 1` for every target).
    pub async fn wait_scraped(&self, targets: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.query("up{job=\"walcast\"} == 1");
            if up.len() >= targets {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus has not scraped walcast within {timeout:?}: {:?}\n{}",
                self.api("targets"),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Run `promtool ARGS` and return (success, combined output).
pub fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(which("promtool")).args(args).output().expect("run promtool");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
