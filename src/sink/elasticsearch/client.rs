//! A thin HTTP client for the Elasticsearch REST API on reqwest: base URL, authentication
//! (basic or API key, never logged), TLS with an optional CA file, gzip request bodies, and the
//! classification of failures into retry / permanent / authentication.

use std::fmt;
use std::io::Write as _;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{ElasticsearchSinkConfig, EsAuth};

/// Bodies smaller than this are sent uncompressed even with `gzip = true`.
const GZIP_MIN_BYTES: usize = 1_024;

/// Bodies at least this large are compressed on the blocking pool: gzip of a multi-megabyte
/// `_bulk` body takes milliseconds that the runtime thread (replication reads, the other sinks,
/// /metrics) cannot give; below it, handing the body over costs more than compressing it.
const GZIP_BLOCKING_MIN_BYTES: usize = 256 * 1024;

/// What went wrong talking to Elasticsearch.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// The request did not get an answer (connection refused or reset, timeout, TLS failure).
    #[error(
        "request to {url} failed: {reason}; fix: check that Elasticsearch is up and reachable at this address \
         (sinks.elasticsearch.url) and, with TLS, that its certificate is trusted (sinks.elasticsearch.ca_file)"
    )]
    Transport {
        /// The URL (no credentials are ever part of it).
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: HTTP {status}: {kind}: {reason}")]
    Status {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// `error.type` (or `http_error` when the body had none).
        kind: String,
        /// `error.reason` (or the start of the body).
        reason: String,
    },
    /// A 2xx answer whose body is not what the API promises.
    #[error("unexpected answer to {path}: {reason}")]
    BadResponse {
        /// Request path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The client could not be built (bad CA file, bad credentials for a header).
    #[error("{0}")]
    Setup(String),
}

impl EsError {
    /// 401 or 403 on the whole request: retrying will not help, a person must fix credentials
    /// or privileges.
    pub fn is_auth(&self) -> bool {
        matches!(self, EsError::Status { status: 401 | 403, kind, .. } if kind != "cluster_block_exception")
    }

    /// Whether the same request may succeed later: no answer, 408, 429, 5xx, a blocked cluster,
    /// or a garbled answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            EsError::Transport { .. } | EsError::BadResponse { .. } => true,
            EsError::Status { status, kind, .. } => *status == 408 || *status == 429 || *status >= 500 || kind == "cluster_block_exception",
            EsError::Setup(_) => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            EsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The fix to print for an authentication failure.
    pub fn auth_fix(&self) -> &'static str {
        match self.status() {
            Some(403) => "the user or API key lacks a privilege: it needs `index`, `delete`, `read` and `create_index` (or `manage`) on the mapped indexes and `monitor` on the cluster",
            _ => "check sinks.elasticsearch.username and password_env/password_file, or api_key_env/api_key_file (the API key is the base64 `encoded` value)",
        }
    }
}

/// `{"error": {"type": ..., "reason": ...}}` (or `{"error": "text"}` on some servers). Kept raw
/// so that a string serde_json would refuse in a `String` (see [`AnswerText`]) does not lose the
/// whole body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<Box<RawValue>>,
    reason: Option<Box<RawValue>>,
}

/// `error.type` and `error.reason` of an error answer, with fallbacks for bodies in other shapes.
pub fn error_parts(body: &[u8]) -> (String, String) {
    let text = |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<AnswerText>(r.get()).ok()).map(|t| t.0);
    if let Some(error) = serde_json::from_slice::<ErrorBody>(body).ok().and_then(|b| b.error) {
        if let Ok(e) = serde_json::from_str::<ErrorObject>(error.get()) {
            return (text(e.kind.as_deref()).unwrap_or_else(|| "unknown".into()), text(e.reason.as_deref()).unwrap_or_default());
        }
        if let Some(s) = text(Some(&error)) {
            return ("http_error".into(), s);
        }
    }
    ("http_error".into(), String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

/// A string of an Elasticsearch answer (an error's type or reason). Jackson writes each UTF-16
/// surrogate of a Java string as a `\u` escape, an unpaired one too (a value echoed in a reason,
/// a preview cut between the two halves of a pair); serde_json refuses an unpaired one in a
/// `String`, which would lose the whole answer, so it is read as U+FFFD instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnswerText(pub(super) String);

impl<'de> Deserialize<'de> for AnswerText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AnswerText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, s: &str) -> Result<AnswerText, E> {
                Ok(AnswerText(s.to_owned()))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<AnswerText, E> {
                Ok(AnswerText(lossy_wtf8(b)))
            }
        }
        // serde_json hands a string over as bytes without pairing its surrogate escapes: WTF-8.
        d.deserialize_bytes(V)
    }
}

/// Text of WTF-8 bytes (UTF-8 that may hold surrogates, ED A0..BF 80..BF): each surrogate, and
/// each byte that is not UTF-8, becomes one U+FFFD.
fn lossy_wtf8(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                out.push_str(&String::from_utf8_lossy(good));
                out.push(char::REPLACEMENT_CHARACTER);
                let skip = match bad {
                    [0xed, 0xa0..=0xbf, 0x80..=0xbf, ..] => 3,
                    _ => e.error_len().unwrap_or(bad.len()),
                };
                bytes = &bad[skip..];
            }
        }
    }
}

/// A client for one cluster. `Debug` never shows the credentials.
#[derive(Clone)]
pub struct EsClient {
    http: reqwest::Client,
    base: String,
    gzip: bool,
}

impl fmt::Debug for EsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsClient").field("base", &self.base).field("gzip", &self.gzip).finish_non_exhaustive()
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: bytes::Bytes,
}

impl EsClient {
    /// Build the client from the config, reading the credentials and the CA file.
    pub fn new(cfg: &ElasticsearchSinkConfig) -> Result<Self, EsError> {
        let auth = cfg.auth().map_err(|e| EsError::Setup(e.to_string()))?;
        let mut headers = HeaderMap::new();
        let value = match &auth {
            EsAuth::None => None,
            EsAuth::Basic { username, password } => {
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                Some(format!("Basic {token}"))
            }
            EsAuth::ApiKey(key) => Some(format!("ApiKey {}", key.expose().trim())),
        };
        if let Some(v) = value {
            let mut v = HeaderValue::from_str(&v)
                .map_err(|_| EsError::Setup("the Elasticsearch credentials contain characters an HTTP header cannot carry".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.request_timeout())
            .connect_timeout(cfg.connect_timeout())
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("walcast/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| EsError::Setup(format!("cannot read sinks.elasticsearch.ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| EsError::Setup(format!("sinks.elasticsearch.ca_file {} is not a PEM certificate: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(EsError::Setup(format!("sinks.elasticsearch.ca_file {} holds no certificate", path.display())));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| EsError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base: cfg.url.trim().trim_end_matches('/').to_string(), gzip: cfg.gzip })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request; any answer (even 4xx/5xx) is `Ok`, no answer is [`EsError::Transport`].
    pub async fn send(&self, method: Method, path: &str, body: Option<(&[u8], &'static str)>) -> Result<Answer, EsError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some((bytes, content_type)) = body {
            req = req.header(CONTENT_TYPE, content_type);
            if self.gzip && bytes.len() >= GZIP_MIN_BYTES {
                match gzip(bytes).await {
                    Ok(c) => req = req.header(CONTENT_ENCODING, "gzip").body(c),
                    Err(_) => req = req.body(bytes.to_vec()),
                }
            } else {
                req = req.body(bytes.to_vec());
            }
        }
        let transport = |e: reqwest::Error| EsError::Transport { url: url.clone(), reason: describe(&e) };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        Ok(Answer { status, body })
    }

    /// Send a request and require a 2xx answer.
    pub async fn ok(&self, method: Method, path: &str, body: Option<(&[u8], &'static str)>) -> Result<Answer, EsError> {
        let m = method_name(&method);
        let answer = self.send(method, path, body).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(status_error(m, path, &answer))
        }
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, EsError> {
        let answer = self.ok(Method::GET, path, None).await?;
        serde_json::from_slice(&answer.body).map_err(|e| EsError::BadResponse { path: path.to_string(), reason: e.to_string() })
    }
}

/// `bytes` gzipped (fast level); a large body on the blocking pool.
async fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    if bytes.len() < GZIP_BLOCKING_MIN_BYTES {
        return gzip_blocking(bytes);
    }
    let owned = bytes.to_vec();
    tokio::task::spawn_blocking(move || gzip_blocking(&owned)).await.map_err(std::io::Error::other)?
}

fn gzip_blocking(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}

/// The error for a non-2xx answer.
pub fn status_error(method: &'static str, path: &str, answer: &Answer) -> EsError {
    let (kind, reason) = error_parts(&answer.body);
    EsError::Status { method, path: path.to_string(), status: answer.status, kind, reason }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "HTTP",
    }
}

/// reqwest's error with its sources (the top level alone says only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gzip_of_a_large_body_round_trips() {
        let body: Vec<u8> = (0..GZIP_BLOCKING_MIN_BYTES * 2).map(|i| b"abcdefgh"[i % 7]).collect();
        for len in [GZIP_MIN_BYTES, GZIP_BLOCKING_MIN_BYTES * 2] {
            let compressed = gzip(&body[..len]).await.expect("gzip");
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut back).expect("gunzip");
            assert_eq!(back, &body[..len]);
        }
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let (k, r) = error_parts(br#"{"error":{"type":"index_not_found_exception","reason":"no such index [x]"},"status":404}"#);
        assert_eq!((k.as_str(), r.as_str()), ("index_not_found_exception", "no such index [x]"));
        let (k, r) = error_parts(br#"{"error":"no handler found"}"#);
        assert_eq!((k.as_str(), r.as_str()), ("http_error", "no handler found"));
        let (k, r) = error_parts(b"<html>bad gateway</html>");
        assert_eq!((k.as_str(), r.as_str()), ("http_error", "<html>bad gateway</html>"));
        let (k, r) = error_parts(br#"{"error":{"type":5,"reason":["x"]}}"#);
        assert_eq!((k.as_str(), r.as_str()), ("unknown", ""));
        // Unpaired surrogate escapes (Jackson writes them) cost the text they are in, not the type.
        let (k, r) =
            error_parts(br#"{"error":{"type":"cluster_block_exception","reason":"index [\udbbbx] \ud83d\ude00 \udc00"},"status":403}"#);
        assert_eq!((k.as_str(), r.as_str()), ("cluster_block_exception", "index [\u{fffd}x] \u{1f600} \u{fffd}"));
        assert_eq!(lossy_wtf8(b"a\xed\xa0\x80b\xffc\xe2\x82"), "a\u{fffd}b\u{fffd}c\u{fffd}");
    }

    #[test]
    fn classification() {
        let st = |status: u16, kind: &str| EsError::Status {
            method: "POST",
            path: "/_bulk".into(),
            status,
            kind: kind.into(),
            reason: String::new(),
        };
        assert!(st(401, "security_exception").is_auth());
        assert!(st(403, "security_exception").is_auth());
        assert!(!st(403, "cluster_block_exception").is_auth());
        assert!(st(403, "cluster_block_exception").is_retryable());
        assert!(st(429, "es_rejected_execution_exception").is_retryable());
        assert!(st(503, "unavailable_shards_exception").is_retryable());
        assert!(!st(400, "mapper_parsing_exception").is_retryable());
        assert!(EsError::Transport { url: "u".into(), reason: "refused".into() }.is_retryable());
    }

    #[test]
    fn debug_hides_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = dir.path().join("password");
        std::fs::write(&password, "client-hunter2\n").expect("password file");
        let cfg: ElasticsearchSinkConfig = toml::from_str(&format!(
            "url = \"http://127.0.0.1:9200\"\nusername = \"elastic\"\npassword_file = {:?}\n",
            password.display().to_string()
        ))
        .expect("config");
        let client = EsClient::new(&cfg).expect("client");
        let shown = format!("{client:?}");
        assert!(!shown.contains("client-hunter2") && !shown.contains("ZWxhc3RpYzpjbGllbnQtaHVudGVyMg"), "{shown}");
    }
}
