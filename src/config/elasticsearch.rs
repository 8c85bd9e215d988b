//! `[sinks.elasticsearch]`: the Elasticsearch sink and its flat mapping rules (docs/elasticsearch.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{default_true, read_secret, ConfigError, EsDocumentRule, IndexName, IndexPattern, Secret, TableName, TimeSource};

/// Elasticsearch sink settings (`[sinks.elasticsearch]`). `Debug` shows where secrets come
/// from; the secrets themselves are read only by [`ElasticsearchSinkConfig::auth`].
#[derive(Debug, Clone, Deserialize)]
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
    /// When the documents of a `_bulk` request become searchable (`refresh` of `_bulk`), for
    /// every index without its own `refresh` in `indexes`. Default `"false"`: at the index's next
    /// refresh (`refresh_interval`, 1 s by default).
    #[serde(default)]
    pub refresh: EsRefresh,
    /// Index settings, keyed by index name or by a rule's time-based pattern (then they apply
    /// to every index the pattern makes): the mapping/settings file each is created from and
    /// its `refresh`.
    #[serde(default)]
    pub indexes: BTreeMap<IndexPattern, EsIndexConfig>,
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

/// One index walcast writes to (`[sinks.elasticsearch.indexes.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsIndexConfig {
    /// JSON file with the index body (`{"settings": ..., "mappings": ...}`), sent as is with
    /// `PUT /NAME` when the index is missing. An existing index is never changed: when its live
    /// mapping lacks something the file has, walcast logs a warning and `walcast check` warns.
    /// Unset: walcast does not create the index (an entry may only set `refresh`).
    #[serde(default)]
    pub mapping_file: Option<PathBuf>,
    /// `refresh` of the writes to this index; unset: the sink-wide `refresh`.
    #[serde(default)]
    pub refresh: Option<EsRefresh>,
}

/// When written documents become searchable: the `refresh` parameter of `_bulk`
/// (docs/elasticsearch.md "Refresh"). Ordered by cost: a stronger value makes the request wait
/// (`wait_for`) or forces a refresh (`true`).
///
/// Written as the strings `"false"`, `"wait_for"`, `"true"`; the TOML booleans `false` and
/// `true` are accepted too, because Elasticsearch spells the parameter that way and an operator
/// writing `refresh = true` means exactly `"true"` (there is no other reading to guard against).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum EsRefresh {
    /// `refresh=false`: visible after the index's next periodic refresh; no extra cost.
    #[default]
    False,
    /// `refresh=wait_for`: the request returns once a refresh made the writes visible; adds up
    /// to one refresh interval of latency per request.
    WaitFor,
    /// `refresh=true`: the touched shards are refreshed right after the request; costly
    /// (small segments, merges), for small indexes only.
    True,
}

impl EsRefresh {
    /// The value of the `refresh` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::False => "false",
            Self::WaitFor => "wait_for",
            Self::True => "true",
        }
    }
}

impl<'de> Deserialize<'de> for EsRefresh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EsRefresh;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one of \"false\", \"wait_for\", \"true\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EsRefresh, E> {
                Ok(if v { EsRefresh::True } else { EsRefresh::False })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EsRefresh, E> {
                match v {
                    "false" => Ok(EsRefresh::False),
                    "wait_for" => Ok(EsRefresh::WaitFor),
                    "true" => Ok(EsRefresh::True),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
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
    pub table: TableName,
    /// The index its rows go to: a name, or a time-based pattern with one placeholder,
    /// `{commit_date:FMT}` (append-only rules) or `{column:NAME:FMT}` (docs/elasticsearch.md
    /// "Time-based indexes").
    pub index: IndexPattern,
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
    pub index: Option<IndexName>,
    /// A file of JSON lines with the same fields, fsynced before the batch counts as durable.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn default_es_request_timeout_ms() -> u64 {
    ElasticsearchSinkConfig::DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_es_connect_timeout_ms() -> u64 {
    ElasticsearchSinkConfig::DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_es_bulk_max_actions() -> usize {
    ElasticsearchSinkConfig::DEFAULT_BULK_MAX_ACTIONS
}
fn default_es_bulk_max_bytes() -> usize {
    ElasticsearchSinkConfig::DEFAULT_BULK_MAX_BYTES
}
fn default_es_ops() -> Vec<EsOpName> {
    vec![EsOpName::Insert, EsOpName::Update, EsOpName::Delete, EsOpName::Truncate]
}

/// Credentials read from the environment or a file. `Debug` never shows them (they are
/// [`Secret`]s); nothing here is `Serialize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsAuth {
    /// No `Authorization` header.
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: ApiKey <key>`.
    ApiKey(Secret),
}

impl ElasticsearchSinkConfig {
    /// Default timeout of one HTTP request to Elasticsearch.
    pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
    /// Default connect timeout to Elasticsearch.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// Default largest number of actions in one `_bulk` request.
    pub const DEFAULT_BULK_MAX_ACTIONS: usize = 5_000;
    /// Default largest `_bulk` body (uncompressed), in bytes.
    pub const DEFAULT_BULK_MAX_BYTES: usize = 8 << 20;
    /// Dead-letter file in `snapshot.state_dir` when `[sinks.elasticsearch.dead_letter]` is not
    /// configured.
    pub const DEFAULT_DEAD_LETTER_FILE: &str = "dead-letters-elasticsearch.jsonl";

    /// The credentials, read from the environment variables or files named in the config.
    pub fn auth(&self) -> Result<EsAuth, ConfigError> {
        if let Some(key) = read_secret("sinks.elasticsearch.api_key", self.api_key_env.as_deref(), self.api_key_file.as_deref())? {
            return Ok(EsAuth::ApiKey(key));
        }
        match &self.username {
            Some(username) => {
                let password = read_secret("sinks.elasticsearch.password", self.password_env.as_deref(), self.password_file.as_deref())?
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

    /// The `refresh` of writes to `index`: its own setting (or its pattern's), else the
    /// sink-wide one.
    pub fn refresh_of(&self, index: &str) -> EsRefresh {
        let own = |fixed: bool| self.indexes.iter().find(|(p, _)| p.fixed().is_some() == fixed && p.matches(index));
        own(true).or_else(|| own(false)).and_then(|(_, i)| i.refresh).unwrap_or(self.refresh)
    }

    /// Every index with a fixed name walcast writes to or creates: the rules' indexes, the
    /// configured ones and the dead-letter index, sorted and without duplicates (time-based
    /// patterns: [`Self::index_patterns`]).
    pub fn all_indexes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.tables.iter().filter_map(|t| t.index.fixed().map(str::to_string)).collect();
        out.extend(self.documents.iter().map(|d| d.index.to_string()));
        out.extend(self.indexes.keys().filter_map(|p| p.fixed().map(str::to_string)));
        if let Some(i) = self.dead_letter.as_ref().and_then(|d| d.index.as_ref()) {
            out.push(i.to_string());
        }
        out.sort();
        out.dedup();
        out
    }

    /// The time-based patterns of the rules and of `indexes`, sorted and without duplicates.
    pub fn index_patterns(&self) -> Vec<&IndexPattern> {
        let mut out: Vec<&IndexPattern> =
            self.tables.iter().map(|t| &t.index).chain(self.indexes.keys()).filter(|p| p.fixed().is_none()).collect();
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
        for (name, idx) in &self.indexes {
            if idx.mapping_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::invalid(&format!("sinks.elasticsearch.indexes.\"{name}\".mapping_file"), "must not be empty"));
            }
            if idx.mapping_file.is_none() && idx.refresh.is_none() {
                return Err(ConfigError::invalid(
                    &format!("sinks.elasticsearch.indexes.\"{name}\""),
                    "set mapping_file (to create the index) and/or refresh, or remove the entry",
                ));
            }
        }
        for (i, rule) in self.tables.iter().enumerate() {
            let field = |name: &str| format!("sinks.elasticsearch.tables[{i}].{name}");
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
            // An update or delete commits after the insert, often on another day: its commit
            // date would name an index the document is not in.
            if rule.index.time_source() == Some(&TimeSource::CommitDate)
                && rule.ops.iter().any(|o| matches!(o, EsOpName::Update | EsOpName::Delete))
            {
                return Err(ConfigError::invalid(
                    &field("ops"),
                    format!(
                        "index {} is named by the commit date, which is only stable for append-only tables; set ops = [\"insert\"] (or [\"insert\", \"truncate\"]), or name the index by a timestamp column that never changes: {{column:NAME:FORMAT}}",
                        rule.index
                    ),
                ));
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
            if self.tables.iter().any(|t| t.index.matches(rule.index.as_str())) {
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
                (Some(index), None)
                    if self.tables.iter().any(|t| t.index.matches(index.as_str())) || self.documents.iter().any(|d| &d.index == index) =>
                {
                    return Err(ConfigError::invalid(&f("dead_letter.index"), "must not be an index a table rule writes to"));
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

#[cfg(test)]
mod tests;
