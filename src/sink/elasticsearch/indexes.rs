//! Indexes: created from their mapping/settings file when missing; an existing index is never
//! changed, only compared with its file (a difference is reported, not applied). An index of a
//! time-based pattern is created from the pattern's file when a write first names it
//! ([`PatternIndexes`]).

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::Method;
use serde_json::Value;

use super::client::{status_error, EsClient, EsError};
use super::{dead_letter, fatal, Cluster};
use crate::config::{ElasticsearchSinkConfig, IndexPattern};
use crate::retry::Backoff;
use crate::route::index::Routed;
use crate::route::EsOp;
use crate::sink::SinkError;

/// An index walcast may create, with the body to create it from.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// Index name.
    pub name: String,
    /// `{"settings": ..., "mappings": ...}`.
    pub body: Value,
    /// Where the body comes from, for messages (a file path or "the dead-letter mapping").
    pub source: String,
}

/// The specs of every fixed-name index with a mapping file, and of the dead-letter index.
/// Errors name the field and file.
pub fn specs(cfg: &ElasticsearchSinkConfig) -> Result<Vec<IndexSpec>, String> {
    let mut out: Vec<IndexSpec> = all_specs(cfg)?.into_iter().filter(|(p, _)| p.fixed().is_some()).map(|(_, s)| s).collect();
    if let Some(index) = cfg.dead_letter.as_ref().and_then(|d| d.index.clone()) {
        if cfg.indexes.get(&IndexPattern::from(index.clone())).is_none_or(|i| i.mapping_file.is_none()) {
            let body = serde_json::from_str(dead_letter::INDEX_BODY).map_err(|e| e.to_string())?;
            out.push(IndexSpec { name: index.to_string(), body, source: "walcast's dead-letter mapping".into() });
        }
    }
    Ok(out)
}

/// The time-based patterns with a mapping file, each with the spec its indexes are created
/// from (named by the pattern).
pub fn pattern_specs(cfg: &ElasticsearchSinkConfig) -> Result<Vec<(IndexPattern, IndexSpec)>, String> {
    Ok(all_specs(cfg)?.into_iter().filter(|(p, _)| p.fixed().is_none()).collect())
}

fn all_specs(cfg: &ElasticsearchSinkConfig) -> Result<Vec<(IndexPattern, IndexSpec)>, String> {
    let mut out = Vec::new();
    for (name, idx) in &cfg.indexes {
        // An entry without a mapping file only sets `refresh`: nothing to create.
        let Some(path) = &idx.mapping_file else { continue };
        let text = std::fs::read(path)
            .map_err(|e| format!("sinks.elasticsearch.indexes.{name:?}.mapping_file: cannot read {}: {e}", path.display()))?;
        let body: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("sinks.elasticsearch.indexes.{name:?}.mapping_file: {} is not valid JSON: {e}", path.display()))?;
        if !body.is_object()
            || body.as_object().is_some_and(|o| o.keys().any(|k| !matches!(k.as_str(), "settings" | "mappings" | "aliases")))
        {
            return Err(format!(
                "sinks.elasticsearch.indexes.{name:?}.mapping_file: {} must be an object with `settings`, `mappings` and/or `aliases` (the body of PUT /{name})",
                path.display()
            ));
        }
        out.push((name.clone(), IndexSpec { name: name.to_string(), body, source: path.display().to_string() }));
    }
    Ok(out)
}

/// The indexes of time-based patterns: each new name a write brings is created from its
/// pattern's file (or checked against it) before the write, once per process.
#[derive(Debug, Default)]
pub(super) struct PatternIndexes {
    specs: Vec<(IndexPattern, IndexSpec)>,
    /// Names already ensured, or seen without a pattern to create them from.
    seen: HashSet<Arc<str>>,
}

impl PatternIndexes {
    /// For the patterns of `specs` ([`pattern_specs`]).
    pub(super) fn new(specs: Vec<(IndexPattern, IndexSpec)>) -> Self {
        Self { specs, seen: HashSet::new() }
    }

    /// Create (or check) the indexes `routed` writes to that no write named before.
    pub(super) async fn ensure_new(&mut self, cluster: &Cluster, routed: &[Routed], create: bool) -> Result<(), SinkError> {
        if self.specs.is_empty() {
            return Ok(());
        }
        for action in routed.iter().flatten() {
            if action.op == EsOp::DeleteAll || self.seen.contains(&action.index) {
                continue;
            }
            if let Some((_, spec)) = self.specs.iter().find(|(p, _)| p.matches(&action.index)) {
                let spec = IndexSpec { name: action.index.to_string(), ..spec.clone() };
                ensure(cluster, std::slice::from_ref(&spec), create).await?;
            }
            self.seen.insert(Arc::clone(&action.index));
        }
        Ok(())
    }
}

/// What the cluster has for an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    /// It exists; `Some(path)` names the first place its mapping lacks or differs from the file.
    Exists(Option<String>),
    /// It does not exist.
    Missing,
}

/// Look the index up and compare its mapping with the spec's.
pub async fn state(client: &EsClient, spec: &IndexSpec) -> Result<IndexState, EsError> {
    let path = format!("/{}/_mapping", spec.name);
    let answer = client.send(Method::GET, &path, None).await?;
    match answer.status {
        200 => {
            let live: Value = serde_json::from_slice(&answer.body).map_err(|e| EsError::BadResponse { path, reason: e.to_string() })?;
            // The answer is keyed by the concrete index name (which differs for an alias).
            let live_mappings =
                live.as_object().and_then(|o| o.values().next()).and_then(|v| v.get("mappings")).cloned().unwrap_or(Value::Null);
            let wanted = spec.body.get("mappings").cloned().unwrap_or(Value::Null);
            Ok(IndexState::Exists(subset_diff(&wanted, &live_mappings, "mappings")))
        }
        404 => Ok(IndexState::Missing),
        _ => Err(status_error("GET", &path, &answer)),
    }
}

/// Create the index from its spec. `Ok(false)` when it already existed (another process won).
pub async fn create(client: &EsClient, spec: &IndexSpec) -> Result<bool, EsError> {
    let path = format!("/{}", spec.name);
    let body = serde_json::to_vec(&spec.body).map_err(|e| EsError::Setup(e.to_string()))?;
    let answer = client.send(Method::PUT, &path, Some((&body, "application/json"))).await?;
    if (200..300).contains(&answer.status) {
        return Ok(true);
    }
    match status_error("PUT", &path, &answer) {
        EsError::Status { kind, .. } if kind == "resource_already_exists_exception" => Ok(false),
        e => Err(e),
    }
}

/// Create the indexes of `specs` that are missing (only with `create`: otherwise a missing one
/// stops walcast with the fix), report mapping differences; retry until the cluster answers.
pub(super) async fn ensure(cluster: &Cluster, specs: &[IndexSpec], create: bool) -> Result<(), SinkError> {
    let mut backoff = Backoff::new(&cluster.retry);
    for spec in specs {
        loop {
            let result = match state(&cluster.client, spec).await {
                Ok(IndexState::Exists(None)) => Ok(()),
                Ok(IndexState::Exists(Some(diff))) => {
                    tracing::warn!(index = %spec.name, file = %spec.source, difference = %diff, "index exists with a mapping that differs from its file; walcast never changes an existing mapping");
                    Ok(())
                }
                Ok(IndexState::Missing) if !create => {
                    return Err(fatal(format!(
                        "index {} does not exist and sinks.elasticsearch.create_indexes = false; create it (from {}) or set create_indexes = true",
                        spec.name, spec.source
                    )))
                }
                Ok(IndexState::Missing) => self::create(&cluster.client, spec).await.map(|created| {
                    if created {
                        tracing::info!(index = %spec.name, file = %spec.source, "created index");
                    }
                }),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    cluster
                        .retry_after(&mut backoff, "cannot look up or create index", e, None, |e| {
                            fatal(format!(
                                "cannot create index {} from {}: {e}; fix the file or create the index yourself",
                                spec.name, spec.source
                            ))
                        })
                        .await?
                }
            }
        }
    }
    Ok(())
}

/// The first path where `wanted` is not contained in `live` (objects: every key of `wanted` is
/// in `live` with a contained value; scalars: equal, comparing `"true"` and `true` alike since
/// servers normalise some settings). `None` when contained.
pub fn subset_diff(wanted: &Value, live: &Value, path: &str) -> Option<String> {
    match (wanted, live) {
        (Value::Null, _) => None,
        (Value::Object(w), Value::Object(l)) => w.iter().find_map(|(k, v)| match l.get(k) {
            Some(lv) => subset_diff(v, lv, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k} is missing")),
        }),
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => {
            w.iter().zip(l).enumerate().find_map(|(i, (a, b))| subset_diff(a, b, &format!("{path}[{i}]")))
        }
        (Value::Object(_), _) => Some(format!("{path} is not an object")),
        (a, b) => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (text(a) != text(b)).then(|| format!("{path} is {b}, the file says {a}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapping_subset() {
        let wanted = json!({"dynamic": "strict", "properties": {"id": {"type": "integer"}, "n": {"type": "long"}}});
        let live =
            json!({"dynamic": "strict", "properties": {"id": {"type": "integer"}, "n": {"type": "long"}, "extra": {"type": "text"}}});
        assert_eq!(subset_diff(&wanted, &live, "mappings"), None);
        let changed = json!({"dynamic": "strict", "properties": {"id": {"type": "integer"}, "n": {"type": "integer"}}});
        assert_eq!(
            subset_diff(&wanted, &changed, "mappings").as_deref(),
            Some("mappings.properties.n.type is \"integer\", the file says \"long\"")
        );
        let missing = json!({"properties": {"id": {"type": "integer"}}});
        assert!(subset_diff(&wanted, &missing, "mappings").expect("diff").contains("mappings.dynamic is missing"));
        // Servers answer some values as strings.
        assert_eq!(subset_diff(&json!({"dynamic": false}), &json!({"dynamic": "false"}), "m"), None);
    }

    #[test]
    fn specs_read_files_and_add_the_dead_letter_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("orders.json");
        std::fs::write(&good, r#"{"settings":{"number_of_shards":1},"mappings":{"properties":{"id":{"type":"integer"}}}}"#).expect("write");
        let text = format!(
            "url = \"http://h:9200\"\n[indexes.orders]\nmapping_file = {:?}\n[dead_letter]\nindex = \"dlq\"\n",
            good.display().to_string()
        );
        let cfg: ElasticsearchSinkConfig = toml::from_str(&text).expect("config");
        let s = specs(&cfg).expect("specs");
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["orders", "dlq"]);
        assert_eq!(s[0].body["settings"]["number_of_shards"], 1);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"properties":{}}"#).expect("write");
        let cfg: ElasticsearchSinkConfig =
            toml::from_str(&format!("url = \"http://h:9200\"\n[indexes.x]\nmapping_file = {:?}\n", bad.display().to_string()))
                .expect("config");
        assert!(specs(&cfg).expect_err("bad").contains("must be an object with `settings`"));
        let cfg: ElasticsearchSinkConfig =
            toml::from_str("url = \"http://h:9200\"\n[indexes.x]\nmapping_file = \"/nonexistent/m.json\"\n").expect("config");
        assert!(specs(&cfg).expect_err("missing").contains("cannot read /nonexistent/m.json"));
    }
}
