//! Elasticsearch: the Elasticsearch-API servers `scripts/test-env` started (`WALCAST_TEST_ES`:
//! osmem-server, `WALCAST_TEST_ES_NOIDA`: noida-db), a small REST client that always `_refresh`es
//! before reading, private server instances for tests that stop them, and the
//! `[sinks.elasticsearch]` config section.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{env_var, free_port, percent_encode};

/// osmem-server (refresh visibility, tombstones): the default test server.
pub fn es_url() -> String {
    env_var("WALCAST_TEST_ES")
}

/// noida-db (realistic queries, no tombstones, persists its data).
pub fn noida_url() -> String {
    env_var("WALCAST_TEST_ES_NOIDA")
}

/// An index name for this test process: `wc-<name>-<pid>`.
pub fn index_name(name: &str) -> String {
    format!("wc-{name}-{}", std::process::id())
}

/// A `[sinks.elasticsearch]` section (for `Options.extra`) with `extra` lines inside it (and
/// after it: subsections and `[[sinks.elasticsearch.tables]]` go in `extra` too).
pub fn es_section(url: &str, extra: &str) -> String {
    format!("[sinks.elasticsearch]\nurl = \"{url}\"\n{extra}\n")
}

/// A minimal REST client for assertions.
#[derive(Clone)]
pub struct Es {
    pub url: String,
    http: reqwest::Client,
}

impl Es {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
        }
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).expect("json"));
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Delete the index if it exists.
    pub async fn delete_index(&self, index: &str) {
        let (s, v) = self.request(reqwest::Method::DELETE, &format!("/{index}"), None).await;
        assert!(s == 200 || s == 404, "delete index {index}: {s} {v}");
    }

    /// Delete `wc-*-<pid>` indexes of test processes that are gone (a failed test cannot clean
    /// up, and noida-db keeps its data across restarts).
    pub async fn drop_leftovers(&self) {
        let (s, v) = self.request(reqwest::Method::GET, "/_mapping", None).await;
        if s != 200 {
            return;
        }
        for name in v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let Some(pid) = name.strip_prefix("wc-").and_then(|n| n.rsplit('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                self.delete_index(&name).await;
            }
        }
    }

    /// Create an index with this body.
    pub async fn create_index(&self, index: &str, body: Value) {
        let (s, v) = self.request(reqwest::Method::PUT, &format!("/{index}"), Some(body)).await;
        assert_eq!(s, 200, "create index {index}: {v}");
    }

    pub async fn mapping(&self, index: &str) -> Value {
        let (s, v) = self.request(reqwest::Method::GET, &format!("/{index}/_mapping"), None).await;
        assert_eq!(s, 200, "mapping of {index}: {v}");
        v.as_object().and_then(|o| o.values().next()).map(|m| m["mappings"].clone()).unwrap_or(Value::Null)
    }

    pub async fn refresh(&self, index: &str) {
        let (s, v) = self.request(reqwest::Method::POST, &format!("/{index}/_refresh"), None).await;
        assert!(s == 200 || s == 404, "refresh {index}: {s} {v}");
    }

    /// `_source` of a document (after `_refresh`), or `None`.
    pub async fn doc(&self, index: &str, id: &str) -> Option<Value> {
        self.refresh(index).await;
        self.doc_with_version(index, id).await.map(|(d, _)| d)
    }

    /// `_source` and `_version` (realtime GET, no refresh).
    pub async fn doc_with_version(&self, index: &str, id: &str) -> Option<(Value, u64)> {
        let path = format!("/{index}/_doc/{}", percent_encode(id));
        let (s, v) = self.request(reqwest::Method::GET, &path, None).await;
        match s {
            200 if v["found"] == json!(true) => Some((v["_source"].clone(), v["_version"].as_u64().unwrap_or(0))),
            200 | 404 => None,
            _ => panic!("GET {path}: {s} {v}"),
        }
    }

    /// Every document of the index as (id, source), after `_refresh`.
    pub async fn all(&self, index: &str) -> Vec<(String, Value)> {
        self.refresh(index).await;
        // Scrolled: one search returns at most 10,000 hits, and load tests write more rows.
        let (s, mut v) = self
            .request(reqwest::Method::POST, &format!("/{index}/_search?scroll=1m"), Some(json!({"size": 5000, "query": {"match_all": {}}})))
            .await;
        if s == 404 {
            return Vec::new();
        }
        assert_eq!(s, 200, "search {index}: {v}");
        let mut out: Vec<(String, Value)> = Vec::new();
        loop {
            let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            out.extend(hits.iter().map(|h| (h["_id"].as_str().unwrap_or("").to_string(), h["_source"].clone())));
            let Some(scroll_id) = v["_scroll_id"].as_str().map(str::to_string) else { break };
            let (s, next) =
                self.request(reqwest::Method::POST, "/_search/scroll", Some(json!({"scroll": "1m", "scroll_id": scroll_id}))).await;
            assert_eq!(s, 200, "scroll {index}: {next}");
            v = next;
        }
        if let Some(scroll_id) = v["_scroll_id"].as_str() {
            self.request(reqwest::Method::DELETE, "/_search/scroll", Some(json!({"scroll_id": scroll_id}))).await;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Poll until `pred` holds for the document (`None`: absent), after `_refresh` each time.
    pub async fn wait_doc(&self, index: &str, id: &str, timeout: Duration, pred: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.doc(index, id).await;
            if pred(d.as_ref()) {
                return d;
            }
            assert!(Instant::now() < deadline, "document {index}/{id} did not reach the expected state in {timeout:?}; last: {d:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A private noida-db instance (data persisted in `dir` across restarts), for tests that stop
/// the server. Killed when dropped.
pub struct PrivateNoida {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl PrivateNoida {
    pub async fn start(dir: &Path) -> Self {
        let mut this = Self { port: free_port(), dir: dir.join("noida-data"), child: None, log: dir.join("noida.log") };
        std::fs::create_dir_all(&this.dir).expect("data dir");
        this.spawn().await;
        this
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let child = Command::new(env_var("WALCAST_TEST_NOIDA_BIN"))
            .args(["start", "--only", "elasticsearch", "--host", "127.0.0.1", "--elasticsearch-port"])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start noida-db");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private noida-db did not start on {}: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (it saves its data) and wait for the process to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) {
                assert!(Instant::now() < deadline, "noida-db did not stop");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Start again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for PrivateNoida {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
