//! `[sinks.elasticsearch]`: the Elasticsearch sink and its flat mapping rules (docs/elasticsearch.md).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{default_true, qualified_table, read_secret, ConfigError, EsDocumentRule};

/// Default timeout of one HTTP request to Elasticsearch.
pub const DEFAULT_ES_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default connect timeout to Elasticsearch.
pub const DEFAULT_ES_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default largest number of actions in one `_bulk` request.
pub const DEFAULT_ES_BULK_MAX_ACTIONS: usize = 5_000;
/// Default largest `_bulk` body (uncompressed), in bytes.
pub const DEFAULT_ES_BULK_MAX_BYTES: usize = 8 << 20;

/// Elasticsearch sink settings (`[sinks.elasticsearch]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkConfig {
    /// Base URL of the cluster, e.g. `http://127.0.0.1:9200` or `https://es.example:9200`.
    pub url: String,
    /// User name for HTTP basic authentication (with `password_env` or `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the basic-auth password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file whose content (trailing newline removed) is the basic-auth password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding an API key (the base64 `id:key` form Elasticsearch
    /// returns as `encoded`); sent as `Authorization: ApiKey ...`. Excludes basic auth.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Path of a file holding the API key (trailing newline removed).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// CA certificate file (PEM) for an `https` URL; when set, only this CA is trusted.
    /// Unset: the bundled Mozilla roots (webpki-roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`). Saves bandwidth to a remote
    /// cluster at some CPU cost; off by default.
    #[serde(default)]
    pub gzip: bool,
    /// Milliseconds one HTTP request may take before it is abandoned and retried.
    #[serde(default = "default_es_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Milliseconds to wait for a TCP (and TLS) connection.
    #[serde(default = "default_es_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Most actions in one `_bulk` request; a larger batch is sent as several requests, in order.
    #[serde(default = "default_es_bulk_max_actions")]
    pub bulk_max_actions: usize,
    /// Largest `_bulk` body in bytes (before compression); one larger document is sent alone.
    #[serde(default = "default_es_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
    /// Create indexes named in `indexes` from their mapping file when they do not exist (checked
    /// once at start). With false they must exist.
    #[serde(default = "default_true")]
    pub create_indexes: bool,
    /// Index settings, keyed by index name: the mapping/settings file each is created from.
    #[serde(default)]
    pub indexes: BTreeMap<String, EsIndexConfig>,
    /// Flat mapping rules: one table to one index (`[[sinks.elasticsearch.tables]]`). Changes of
    /// tables no rule names are ignored by this sink.
    #[serde(default)]
    pub tables: Vec<EsTableRule>,
    /// Nested document rules (`[[sinks.elasticsearch.documents]]`): a root table, a query that
    /// builds whole documents, and the dependent tables whose changes rebuild them.
    #[serde(default)]
    pub documents: Vec<EsDocumentRule>,
    /// Where documents the cluster rejects for good (mapping or parse errors) go; unset: such a
    /// document stops walcast.
    #[serde(default)]
    pub dead_letter: Option<EsDeadLetterConfig>,
}

// Hand-written: the sources of secrets are fine to show, nothing read from them is stored here.
impl fmt::Debug for ElasticsearchSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticsearchSinkConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_file", &self.api_key_file)
            .field("ca_file", &self.ca_file)
            .field("gzip", &self.gzip)
            .field("indexes", &self.indexes)
            .field("tables", &self.tables)
            .field("documents", &self.documents)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

/// One index walcast may create (`[sinks.elasticsearch.indexes.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsIndexConfig {
    /// JSON file with the index body (`{"settings": ..., "mappings": ...}`), sent as is with
    /// `PUT /NAME` when the index is missing. An existing index is never changed: when its live
    /// mapping lacks something the file has, walcast logs a warning and `walcast check` warns.
    pub mapping_file: PathBuf,
}

/// A row operation a flat rule can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EsOpName {
    /// INSERT -> index the row's document.
    Insert,
    /// UPDATE -> index the new document (or a partial update, see docs/elasticsearch.md).
    Update,
    /// DELETE -> delete the document.
    Delete,
    /// TRUNCATE -> what `truncate` says.
    Truncate,
}

/// What a TRUNCATE of a mapped table does to its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EsTruncate {
    /// Leave the documents; log a warning (remove `truncate` from `ops` to silence it).
    #[default]
    Ignore,
    /// Delete every document of the index (`_delete_by_query` with `match_all`), in stream order.
    DeleteAll,
}

/// One flat mapping rule (`[[sinks.elasticsearch.tables]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsTableRule {
    /// The table, `schema.table`.
    pub table: String,
    /// The index its rows go to.
    pub index: String,
    /// Columns whose values form the document id instead of the replica identity key (needed
    /// for tables without a primary key or with REPLICA IDENTITY FULL). One column: its value;
    /// several: a JSON array of the values (docs/elasticsearch.md "Document ids").
    #[serde(default)]
    pub id_columns: Option<Vec<String>>,
    /// Only these columns go into the document (before `rename`). Unset: every column.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// These columns are left out of the document.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field names for columns: `{ column = "field" }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Operations that apply; the others are ignored. Default: all four.
    #[serde(default = "default_es_ops")]
    pub ops: Vec<EsOpName>,
    /// What a TRUNCATE does (when `truncate` is in `ops`): `ignore` (default) or `delete_all`.
    #[serde(default)]
    pub truncate: EsTruncate,
}

/// Dead-letter destination (`[sinks.elasticsearch.dead_letter]`): exactly one of `index`, `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsDeadLetterConfig {
    /// An index receiving `{lsn, commit_lsn, table, key, index, id, reason, document}` documents
    /// (`document` as a string); created with a fixed mapping when missing.
    #[serde(default)]
    pub index: Option<String>,
    /// A file of JSON lines with the same fields, fsynced before the batch counts as durable.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_es_request_timeout_ms() -> u64 {
    DEFAULT_ES_REQUEST_TIMEOUT_MS
}
fn default_es_connect_timeout_ms() -> u64 {
    DEFAULT_ES_CONNECT_TIMEOUT_MS
}
fn default_es_bulk_max_actions() -> usize {
    DEFAULT_ES_BULK_MAX_ACTIONS
}
fn default_es_bulk_max_bytes() -> usize {
    DEFAULT_ES_BULK_MAX_BYTES
}
fn default_es_ops() -> Vec<EsOpName> {
    vec![EsOpName::Insert, EsOpName::Update, EsOpName::Delete, EsOpName::Truncate]
}

/// Credentials read from the environment or a file. `Debug` never shows them; nothing here is
/// `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub enum EsAuth {
    /// No `Authorization` header.
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: ApiKey <key>`.
    ApiKey(String),
}

impl fmt::Debug for EsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EsAuth::None => f.write_str("None"),
            EsAuth::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, password: <redacted> }}"),
            EsAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

impl ElasticsearchSinkConfig {
    /// The credentials, read from the environment variables or files named in the config.
    pub fn auth(&self) -> Result<EsAuth, ConfigError> {
        if let Some(key) = read_secret("sinks.elasticsearch.api_key", self.api_key_env.as_ref(), self.api_key_file.as_ref())? {
            return Ok(EsAuth::ApiKey(key));
        }
        match &self.username {
            Some(username) => {
                let password = read_secret("sinks.elasticsearch.password", self.password_env.as_ref(), self.password_file.as_ref())?
                    .ok_or_else(|| ConfigError::invalid("sinks.elasticsearch.password_env", "set password_env or password_file"))?;
                Ok(EsAuth::Basic { username: username.clone(), password })
            }
            None => Ok(EsAuth::None),
        }
    }

    /// Request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Every index walcast writes to or creates: the rules' indexes, the configured ones and the
    /// dead-letter index, sorted and without duplicates.
    pub fn all_indexes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.tables.iter().map(|t| t.index.clone()).collect();
        out.extend(self.documents.iter().map(|d| d.index.clone()));
        out.extend(self.indexes.keys().cloned());
        if let Some(i) = self.dead_letter.as_ref().and_then(|d| d.index.clone()) {
            out.push(i);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = |name: &str| format!("sinks.elasticsearch.{name}");
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len() {
            return Err(ConfigError::invalid(&f("url"), "must be an http:// or https:// URL, like http://127.0.0.1:9200"));
        }
        if url.contains('@') {
            return Err(ConfigError::invalid(
                &f("url"),
                "must not carry credentials; use username + password_env/password_file, or api_key_env/api_key_file",
            ));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err(ConfigError::invalid(&f("password_file"), "set either password_env or password_file, not both"));
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return Err(ConfigError::invalid(&f("api_key_file"), "set either api_key_env or api_key_file, not both"));
        }
        let api_key = self.api_key_env.is_some() || self.api_key_file.is_some();
        let password = self.password_env.is_some() || self.password_file.is_some();
        if api_key && (self.username.is_some() || password) {
            return Err(ConfigError::invalid(&f("api_key_env"), "use either an API key or username + password, not both"));
        }
        if password && self.username.is_none() {
            return Err(ConfigError::invalid(&f("username"), "a password needs a username"));
        }
        if self.username.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(ConfigError::invalid(&f("username"), "must not be empty"));
        }
        if self.username.is_some() && !password {
            return Err(ConfigError::invalid(&f("password_env"), "set password_env or password_file for the username"));
        }
        if self.ca_file.is_some() && !url.starts_with("https://") {
            return Err(ConfigError::invalid(&f("ca_file"), "is only used with an https:// url"));
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError::invalid(&f("request_timeout_ms"), "must be between 100 and 600000"));
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return Err(ConfigError::invalid(&f("connect_timeout_ms"), "must be between 100 and 600000"));
        }
        if !(1..=100_000).contains(&self.bulk_max_actions) {
            return Err(ConfigError::invalid(&f("bulk_max_actions"), "must be between 1 and 100000"));
        }
        if !(1_024..=1 << 30).contains(&self.bulk_max_bytes) {
            return Err(ConfigError::invalid(&f("bulk_max_bytes"), "must be between 1024 and 1073741824"));
        }
        for name in self.indexes.keys() {
            validate_index_name(name).map_err(|e| ConfigError::invalid(&format!("sinks.elasticsearch.indexes.{name:?}"), e))?;
        }
        for (name, idx) in &self.indexes {
            if idx.mapping_file.as_os_str().is_empty() {
                return Err(ConfigError::invalid(&format!("sinks.elasticsearch.indexes.{name:?}.mapping_file"), "must not be empty"));
            }
        }
        for (i, rule) in self.tables.iter().enumerate() {
            let field = |name: &str| format!("sinks.elasticsearch.tables[{i}].{name}");
            qualified_table(&field("table"), &rule.table)?;
            validate_index_name(&rule.index).map_err(|e| ConfigError::invalid(&field("index"), e))?;
            if let Some(cols) = &rule.id_columns {
                if cols.is_empty() || cols.iter().any(|c| c.is_empty()) {
                    return Err(ConfigError::invalid(&field("id_columns"), "list at least one column name"));
                }
            }
            if rule.include.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(ConfigError::invalid(
                    &field("include"),
                    "an empty list leaves nothing to index; remove it to include every column",
                ));
            }
            if let Some(inc) = &rule.include {
                if let Some(c) = rule.exclude.iter().find(|c| inc.contains(c)) {
                    return Err(ConfigError::invalid(&field("exclude"), format!("column {c:?} is both included and excluded")));
                }
            }
            let mut targets = std::collections::BTreeSet::new();
            for (from, to) in &rule.rename {
                if to.is_empty() || to.starts_with('_') {
                    return Err(ConfigError::invalid(
                        &format!("sinks.elasticsearch.tables[{i}].rename.{from:?}"),
                        "the field name must not be empty or start with `_` (reserved by Elasticsearch)",
                    ));
                }
                if !targets.insert(to) {
                    return Err(ConfigError::invalid(
                        &format!("sinks.elasticsearch.tables[{i}].rename.{from:?}"),
                        format!("two columns are renamed to {to:?}"),
                    ));
                }
            }
            if rule.ops.is_empty() {
                return Err(ConfigError::invalid(&field("ops"), "list at least one of insert, update, delete, truncate"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.documents.iter().enumerate() {
            rule.validate(i)?;
            if !names.insert(rule.name.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("sinks.elasticsearch.documents[{i}].name"),
                    "another document rule has this name",
                ));
            }
            if self.tables.iter().any(|t| t.index == rule.index) {
                return Err(ConfigError::invalid(
                    &format!("sinks.elasticsearch.documents[{i}].index"),
                    "a table rule writes to this index too; give each rule its own index",
                ));
            }
        }
        if let Some(dl) = &self.dead_letter {
            match (&dl.index, &dl.path) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::invalid(&f("dead_letter"), "set exactly one of `index` and `path`"))
                }
                (Some(index), None) => {
                    validate_index_name(index).map_err(|e| ConfigError::invalid(&f("dead_letter.index"), e))?;
                    if self.tables.iter().any(|t| &t.index == index) || self.documents.iter().any(|d| &d.index == index) {
                        return Err(ConfigError::invalid(&f("dead_letter.index"), "must not be an index a table rule writes to"));
                    }
                }
                (None, Some(path)) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::invalid(&f("dead_letter.path"), "must not be empty"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Elasticsearch's rules for index names: lower case, no `\ / * ? " < > | space , #`, not
/// starting with `-`, `_` or `+`, not `.` or `..`, at most 255 bytes.
pub fn validate_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("an index name must be 1 to 255 bytes".into());
    }
    if name == "." || name == ".." || name.starts_with(['-', '_', '+']) {
        return Err(format!("{name:?} is not a valid index name (it must not start with -, _ or +)"));
    }
    if name.chars().any(|c| c.is_uppercase() || "\\/*?\"<>| ,#:".contains(c)) {
        return Err(format!("{name:?} is not a valid index name: use lower case, without \\ / * ? \" < > | space , # :"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const ES_ONLY: &str = r#"
[source]
host = "127.0.0.1"
database = "app"
user = "walcast"

[sinks.elasticsearch]
url = "http://127.0.0.1:9200"

[[sinks.elasticsearch.tables]]
table = "public.orders"
index = "orders"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn elasticsearch_alone_is_a_sink_and_gets_defaults() {
        let c = parse(ES_ONLY).expect("valid");
        let es = c.sinks.elasticsearch.expect("es");
        assert_eq!(es.request_timeout_ms, DEFAULT_ES_REQUEST_TIMEOUT_MS);
        assert_eq!(es.bulk_max_actions, DEFAULT_ES_BULK_MAX_ACTIONS);
        assert!(es.create_indexes && !es.gzip);
        let rule = &es.tables[0];
        assert_eq!(rule.ops, default_es_ops());
        assert_eq!(rule.truncate, EsTruncate::Ignore);
        assert!(rule.include.is_none() && rule.exclude.is_empty() && rule.rename.is_empty());
        assert_eq!(es.auth().expect("auth"), EsAuth::None);
        assert_eq!(es.all_indexes(), vec!["orders".to_string()]);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            ("url = \"localhost:9200\"", "sinks.elasticsearch.url"),
            ("url = \"http://u:p@h:9200\"", "sinks.elasticsearch.url"),
            ("username = \"u\"", "sinks.elasticsearch.password_env"),
            ("password_env = \"X\"", "sinks.elasticsearch.username"),
            ("api_key_env = \"K\"\nusername = \"u\"\npassword_env = \"X\"", "sinks.elasticsearch.api_key_env"),
            ("ca_file = \"ca.pem\"", "sinks.elasticsearch.ca_file"),
            ("bulk_max_actions = 0", "sinks.elasticsearch.bulk_max_actions"),
            ("request_timeout_ms = 1", "sinks.elasticsearch.request_timeout_ms"),
            ("[sinks.elasticsearch.dead_letter]", "sinks.elasticsearch.dead_letter"),
            ("[sinks.elasticsearch.dead_letter]\nindex = \"orders\"", "sinks.elasticsearch.dead_letter.index"),
            ("[sinks.elasticsearch.dead_letter]\nindex = \"Bad\"", "sinks.elasticsearch.dead_letter.index"),
            ("[sinks.elasticsearch.indexes.\"_x\"]\nmapping_file = \"m.json\"", "sinks.elasticsearch.indexes.\"_x\""),
            ("[[sinks.elasticsearch.tables]]\ntable = \"orders\"\nindex = \"o\"", "sinks.elasticsearch.tables[1].table"),
            ("[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"O\"", "sinks.elasticsearch.tables[1].index"),
            (
                "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nid_columns = []",
                "sinks.elasticsearch.tables[1].id_columns",
            ),
            ("[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nops = []", "sinks.elasticsearch.tables[1].ops"),
            (
                "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\ninclude = [\"a\"]\nexclude = [\"a\"]",
                "sinks.elasticsearch.tables[1].exclude",
            ),
            (
                "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nrename = { a = \"x\", b = \"x\" }",
                "sinks.elasticsearch.tables[1].rename.\"b\"",
            ),
            (
                "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nrename = { a = \"_id\" }",
                "sinks.elasticsearch.tables[1].rename.\"a\"",
            ),
        ];
        for (extra, field) in cases {
            let text = if extra.starts_with('[') {
                format!("{ES_ONLY}{extra}\n")
            } else if extra.starts_with("url") {
                ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", extra)
            } else {
                ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", &format!("url = \"http://127.0.0.1:9200\"\n{extra}"))
            };
            let err = parse(&text).expect_err(field).to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        let err = parse(&ES_ONLY.replace("index = \"orders\"", "index = \"orders\"\nops = [\"upsert\"]")).expect_err("op").to_string();
        assert!(err.contains("upsert"), "{err}");
        let err =
            parse(&ES_ONLY.replace("index = \"orders\"", "index = \"orders\"\ntruncate = \"drop\"")).expect_err("truncate").to_string();
        assert!(err.contains("drop"), "{err}");
    }

    #[test]
    fn secrets_never_in_debug() {
        std::env::set_var("WALCAST_TEST_ES_CFG_PW", "es-hunter2");
        let text = ES_ONLY.replace(
            "url = \"http://127.0.0.1:9200\"",
            "url = \"http://127.0.0.1:9200\"\nusername = \"elastic\"\npassword_env = \"WALCAST_TEST_ES_CFG_PW\"",
        );
        let c = parse(&text).expect("valid");
        let es = c.sinks.elasticsearch.as_ref().expect("es");
        let auth = es.auth().expect("auth");
        assert_eq!(auth, EsAuth::Basic { username: "elastic".into(), password: "es-hunter2".into() });
        assert!(!format!("{auth:?}").contains("es-hunter2"));
        assert!(!format!("{c:?}").contains("es-hunter2"));
        std::env::set_var("WALCAST_TEST_ES_CFG_KEY", "key-hunter3");
        let text = ES_ONLY
            .replace("url = \"http://127.0.0.1:9200\"", "url = \"http://127.0.0.1:9200\"\napi_key_env = \"WALCAST_TEST_ES_CFG_KEY\"");
        let c = parse(&text).expect("valid");
        let auth = c.sinks.elasticsearch.as_ref().expect("es").auth().expect("auth");
        assert_eq!(auth, EsAuth::ApiKey("key-hunter3".into()));
        assert!(!format!("{auth:?}").contains("key-hunter3"));
    }

    /// The commented `[sinks.elasticsearch]` block of the shipped example, uncommented, is valid
    /// and shows every field of the Elasticsearch config.
    #[test]
    fn example_elasticsearch_section_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walcast.example.toml");
        let text = std::fs::read_to_string(&path).expect("example config");
        let mut out = String::new();
        let mut in_es = false;
        for line in text.lines() {
            if line.starts_with("#[sinks.elasticsearch]") {
                in_es = true;
            } else if line.trim().is_empty() {
                in_es = false;
            }
            match line.strip_prefix('#') {
                Some(rest) if in_es && !rest.starts_with('#') => out.push_str(rest),
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        std::env::set_var("WALCAST_ES_PASSWORD", "x");
        let c = Config::parse(&out, &path).expect("uncommented example is valid");
        let es = c.sinks.elasticsearch.expect("elasticsearch section");
        assert_eq!(es.url, "https://es.example.internal:9200");
        assert!(es.indexes.contains_key("orders") && es.dead_letter.is_some() && es.tables.len() == 1);
        let rule = &es.tables[0];
        assert_eq!(rule.rename.get("total").map(String::as_str), Some("amount"));
        let doc = es.documents.first().expect("a document rule");
        assert_eq!((doc.name.as_str(), doc.dependents.len()), ("orders_with_lines", 2));
        assert!(doc.query.contains("ANY($1)"));
        for field in ["name", "root_key", "document_id", "max_ids", "query", "root_id_column", "key_column", "root_ids_query"] {
            assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.elasticsearch.documents[].{field}");
        }
        for field in [
            "url",
            "username",
            "password_env",
            "ca_file",
            "gzip",
            "request_timeout_ms",
            "connect_timeout_ms",
            "bulk_max_actions",
            "bulk_max_bytes",
            "create_indexes",
            "mapping_file",
            "table",
            "index",
            "id_columns",
            "include",
            "exclude",
            "rename",
            "ops",
            "truncate",
            "path",
        ] {
            assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.elasticsearch.{field}");
        }
        for field in ["password_file", "api_key_env"] {
            assert!(text.contains(&format!("\n## {field} = ")), "the example does not mention sinks.elasticsearch.{field}");
        }
    }

    #[test]
    fn invalid_document_rules_name_their_field() {
        const DOC_RULE: &str = "[[sinks.elasticsearch.documents]]\nname = \"films\"\nindex = \"films\"\ntable = \"public.f\"\nroot_key = \"id\"\nquery = \"SELECT id FROM public.f WHERE id = ANY($1)\"\n";
        assert!(parse(&format!("{ES_ONLY}{DOC_RULE}")).is_ok());
        let cases: Vec<(String, &str)> = vec![
            (DOC_RULE.replace("ANY($1)", "ANY($2)"), "sinks.elasticsearch.documents[0].query"),
            (DOC_RULE.replace("name = \"films\"", "name = \"\""), "sinks.elasticsearch.documents[0].name"),
            (DOC_RULE.replace("index = \"films\"", "index = \"orders\""), "sinks.elasticsearch.documents[0].index"),
            (format!("{DOC_RULE}[[sinks.elasticsearch.documents.dependents]]\ntable = \"public.l\"\n"), "sinks.elasticsearch.documents[0].dependents[0].root_id_column"),
            (
                format!("{DOC_RULE}[[sinks.elasticsearch.documents.dependents]]\ntable = \"public.p\"\nroot_ids_query = \"SELECT 1 WHERE 2 = ANY($1)\"\n"),
                "sinks.elasticsearch.documents[0].dependents[0].key_column",
            ),
            (format!("{DOC_RULE}max_ids = 0\n"), "sinks.elasticsearch.documents[0].max_ids"),
        ];
        for (extra, field) in cases {
            let err = parse(&format!("{ES_ONLY}{extra}")).expect_err(field).to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn index_names() {
        assert!(validate_index_name("orders-2024.v1").is_ok());
        for bad in ["", "Orders", "a b", "_x", "-x", "a/b", "a,b", "a#b", "..", "a:b"] {
            assert!(validate_index_name(bad).is_err(), "{bad:?}");
        }
    }
}
