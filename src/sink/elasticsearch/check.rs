//! The Elasticsearch part of `walcast check`: the cluster answers, the credentials are accepted,
//! every index walcast writes to exists or can be created, and no index written with
//! `refresh = "wait_for"` has its periodic refresh turned off.

use reqwest::Method;
use serde_json::Value;

use super::client::{status_error, EsClient};
use super::indexes::{self, IndexState};
use crate::config::{Config, EsRefresh};
use crate::source::Finding;

/// Findings about `[sinks.elasticsearch]` (none when it is not configured).
pub async fn elasticsearch_findings(config: &Config) -> Vec<Finding> {
    let Some(es) = &config.sinks.elasticsearch else { return Vec::new() };
    let mut out = Vec::new();
    let client = match EsClient::new(es) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail(format!("elasticsearch: {e}"), "fix the [sinks.elasticsearch] section"));
            return out;
        }
    };
    let url = client.base().to_string();
    let answer = match client.send(Method::GET, "/", None).await {
        Ok(a) => a,
        Err(e) => {
            out.push(Finding::fail(
                format!("elasticsearch: cannot reach {url}: {e}"),
                "check sinks.elasticsearch.url, that the cluster runs, and ca_file for https",
            ));
            return out;
        }
    };
    if !(200..300).contains(&answer.status) {
        let e = status_error("GET", "/", &answer);
        let fix = if e.is_auth() { e.auth_fix() } else { "check sinks.elasticsearch.url (it must be the cluster's REST endpoint)" };
        out.push(Finding::fail(format!("elasticsearch: {url} answered: {e}"), fix));
        return out;
    }
    let info: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let number = info["version"]["number"].as_str().unwrap_or("unknown version");
    let product = match info["version"]["distribution"].as_str() {
        Some("opensearch") => "OpenSearch",
        _ => "Elasticsearch",
    };
    let auth = match (&es.username, es.api_key_env.is_some() || es.api_key_file.is_some()) {
        (_, true) => "API key accepted",
        (Some(_), false) => "credentials accepted",
        (None, false) => "no authentication configured",
    };
    out.push(Finding::ok(format!("elasticsearch: {url} reachable ({product} {number}), {auth}")));

    let specs = match indexes::specs(es) {
        Ok(s) => s,
        Err(e) => {
            out.push(Finding::fail(format!("elasticsearch: {e}"), "fix the mapping file or its path"));
            return out;
        }
    };
    if es.tables.is_empty() && es.documents.is_empty() {
        out.push(Finding::warn(
            "elasticsearch: no [[sinks.elasticsearch.tables]] or [[sinks.elasticsearch.documents]] rule, so nothing is written",
            "add a rule: table = \"schema.table\", index = \"name\"",
        ));
    }
    for pattern in es.index_patterns() {
        let file = es.indexes.get(pattern).and_then(|i| i.mapping_file.as_ref());
        out.push(match file {
            Some(f) => Finding::ok(format!(
                "elasticsearch: indexes {} ({}) are created from {} when a write first names one",
                pattern,
                pattern.wildcard(),
                f.display()
            )),
            None => Finding::warn(
                format!("elasticsearch: indexes {pattern} have no mapping_file; the cluster creates each with dynamic mappings (or an index template of yours)"),
                format!("add [sinks.elasticsearch.indexes.\"{pattern}\"] mapping_file = \"...\", or install an index template for {}", pattern.wildcard()),
            ),
        });
    }
    for name in es.all_indexes() {
        let spec = specs.iter().find(|s| s.name == name);
        let probe = match spec {
            Some(s) => s.clone(),
            None => indexes::IndexSpec { name: name.clone(), body: Value::Null, source: String::new() },
        };
        let state = indexes::state(&client, &probe).await;
        if es.refresh_of(&name) == EsRefresh::WaitFor {
            let exists = matches!(state, Ok(IndexState::Exists(_)));
            if let Some(finding) = wait_for_without_refresh(&client, &name, spec.filter(|_| !exists), exists).await {
                out.push(finding);
            }
        }
        match (state, spec) {
            (Err(e), _) => {
                let fix = if e.is_auth() { e.auth_fix() } else { "check that the cluster is healthy" };
                out.push(Finding::fail(format!("elasticsearch: cannot look up index {name}: {e}"), fix));
            }
            (Ok(IndexState::Exists(None)), Some(s)) => out.push(Finding::ok(format!("elasticsearch: index {name} exists (its mapping has everything {} has)", s.source))),
            (Ok(IndexState::Exists(_)), None) => out.push(Finding::ok(format!("elasticsearch: index {name} exists"))),
            (Ok(IndexState::Exists(Some(diff))), Some(s)) => out.push(Finding::warn(
                format!("elasticsearch: index {name} exists but its mapping differs from {}: {diff}", s.source),
                format!("walcast never changes an existing mapping: reindex into a new index created from {}, or update the file to match", s.source),
            )),
            (Ok(IndexState::Missing), Some(s)) if es.create_indexes => {
                out.push(Finding::ok(format!("elasticsearch: index {name} does not exist yet; walcast creates it from {} before its first write", s.source)))
            }
            (Ok(IndexState::Missing), Some(s)) => out.push(Finding::fail(
                format!("elasticsearch: index {name} does not exist and sinks.elasticsearch.create_indexes = false"),
                format!("create it (PUT /{name} with {}), or set create_indexes = true", s.source),
            )),
            (Ok(IndexState::Missing), None) => out.push(Finding::warn(
                format!("elasticsearch: index {name} does not exist and has no mapping_file; the cluster creates it with dynamic mappings on the first write (if automatic index creation is allowed)"),
                format!("add [sinks.elasticsearch.indexes.{name}] mapping_file = \"...\", or create the index yourself"),
            )),
        }
    }
    out
}

/// A warning when `name` is written with `refresh = "wait_for"` but its `refresh_interval` is
/// `-1` (periodic refresh off): each write would wait for a refresh nobody makes (Elasticsearch
/// forces one only once `index.max_refresh_listeners` requests wait). The interval is read from
/// the index when it `exists`, else from the settings of the mapping file `spec` creates it
/// with. An index whose settings cannot be read is left to the other findings.
async fn wait_for_without_refresh(client: &EsClient, name: &str, spec: Option<&indexes::IndexSpec>, exists: bool) -> Option<Finding> {
    let (interval, whence) = if exists {
        let answer = client.send(Method::GET, &format!("/{name}/_settings?flat_settings=true"), None).await.ok()?;
        let body: Value = serde_json::from_slice(&answer.body).ok()?;
        // Keyed by the concrete index name (an alias resolves to it): take the first.
        let settings = body.as_object()?.values().next()?.get("settings")?.clone();
        (settings.get("index.refresh_interval").cloned(), "its settings".to_string())
    } else {
        let settings = spec?.body.get("settings")?;
        let interval = settings
            .get("index.refresh_interval")
            .or_else(|| settings.get("index").and_then(|i| i.get("refresh_interval")))
            .or_else(|| settings.get("refresh_interval"))
            .cloned();
        (interval, format!("the settings of {}", spec?.source))
    };
    let disabled = match interval? {
        Value::String(s) => s.trim() == "-1",
        Value::Number(n) => n.as_i64() == Some(-1),
        _ => false,
    };
    disabled.then(|| {
        Finding::warn(
            format!(
                "elasticsearch: index {name} is written with refresh = \"wait_for\" but {whence} set refresh_interval = -1 (no periodic refresh): \
                 every write would wait for a refresh that does not come"
            ),
            format!(
                "give the index a refresh interval (PUT /{name}/_settings {{\"index\": {{\"refresh_interval\": \"1s\"}}}}), or set refresh = \"true\" \
                 (or \"false\") for it in [sinks.elasticsearch.indexes.{name}]"
            ),
        )
    })
}
