//! Truncate: every document of an index written before the TRUNCATE is deleted with a versioned
//! `_bulk` delete. The documents are listed page by page with a scroll (after a refresh, so the
//! listing sees the documents written before it in the batch); each is deleted with the
//! TRUNCATE's commit LSN as its external version. A document written after the TRUNCATE (a
//! higher version, as when `walcast replay` re-sends an older range) answers 409 and stays: a
//! replayed TRUNCATE never rolls a document back past what the stream wrote.

use std::time::Instant;

use reqwest::Method;
use serde::Deserialize;

use super::bulk::{self, write_item, BulkKind, Item};
use super::client::{status_error, EsError};
use super::{fatal, Cluster};
use crate::config::EsRefresh;
use crate::retry::Backoff;
use crate::route::EsAction;
use crate::sink::SinkError;

/// How long the server keeps a scroll between two pages.
const SCROLL_KEEP: &str = "2m";
/// Most documents listed per page (the servers' default `max_result_window`).
const MAX_PAGE: usize = 10_000;

#[derive(Debug, Deserialize)]
struct SearchAnswer {
    #[serde(rename = "_scroll_id", default)]
    scroll_id: Option<String>,
    hits: Hits,
}

#[derive(Debug, Deserialize)]
struct Hits {
    #[serde(default)]
    hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
struct Hit {
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_id")]
    id: String,
    /// Absent on servers that ignore `"version": true`: the delete is then sent and the server
    /// decides.
    #[serde(rename = "_version", default)]
    version: Option<u64>,
}

/// What one truncate did.
#[derive(Debug, Default)]
struct Outcome {
    /// Documents a delete was sent for (stale ones included).
    deleted: u64,
    /// Documents listed with a version above the TRUNCATE's: written after it, kept.
    newer: u64,
}

/// Delete every document of the action's index older than the action's version, retrying until
/// done. A missing index has nothing to delete. The index may be a pattern: the hits name their
/// concrete index.
pub(super) async fn delete_all(cluster: &Cluster, action: &EsAction) -> Result<(), SinkError> {
    let index = &action.index;
    let mut backoff = Backoff::new(&cluster.retry);
    loop {
        let started = Instant::now();
        match attempt(cluster, index, action.version).await? {
            Ok(done) => {
                tracing::info!(
                    index = %index,
                    table = %action.origin.table,
                    lsn = %action.origin.lsn,
                    deleted = done.deleted,
                    newer_kept = done.newer,
                    "truncate: deleted every document of the index older than the truncate"
                );
                return Ok(());
            }
            Err(e) => {
                cluster
                    .retry_after(&mut backoff, "truncate: listing the documents failed", e, Some(started), |e| {
                        fatal(format!("truncate of index {index} failed: {e}"))
                    })
                    .await?
            }
        }
    }
}

/// One refresh and scroll over the index, deleting page by page. The outer error stops the sink
/// (a delete the cluster refuses for good); the inner one is a failed listing, worth a new
/// attempt from the start (deleting again is harmless).
async fn attempt(cluster: &Cluster, index: &str, version: u64) -> Result<Result<Outcome, EsError>, SinkError> {
    let refresh_path = format!("/{index}/_refresh");
    let refresh = match cluster.client.send(Method::POST, &refresh_path, None).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    if refresh.status == 404 {
        return Ok(Ok(Outcome::default()));
    }
    if !(200..300).contains(&refresh.status) {
        return Ok(Err(status_error("POST", &refresh_path, &refresh)));
    }
    let size = cluster.bulk_max_actions.clamp(1, MAX_PAGE);
    let first_path = format!("/{index}/_search?scroll={SCROLL_KEEP}");
    let query = serde_json::json!({"size": size, "version": true, "_source": false, "sort": ["_doc"], "query": {"match_all": {}}});
    let mut page = match search(cluster, &first_path, &query).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Ok(Outcome::default())),
        Err(e) => return Ok(Err(e)),
    };
    let mut done = Outcome::default();
    let listed = loop {
        if page.hits.hits.is_empty() {
            break Ok(());
        }
        delete_page(cluster, &page.hits.hits, version, &mut done).await?;
        let Some(scroll_id) = page.scroll_id.clone() else {
            break Ok(());
        };
        let next = serde_json::json!({"scroll": SCROLL_KEEP, "scroll_id": scroll_id});
        page = match search(cluster, "/_search/scroll", &next).await {
            Ok(Some(p)) => p,
            Ok(None) => break Err(EsError::BadResponse { path: "/_search/scroll".into(), reason: "the scroll expired".into() }),
            Err(e) => break Err(e),
        };
    };
    if let Some(scroll_id) = &page.scroll_id {
        // Frees the server's scroll early; it expires on its own when this fails.
        let body = serde_json::json!({"scroll_id": scroll_id}).to_string();
        let _ = cluster.client.send(Method::DELETE, "/_search/scroll", Some((body.as_bytes(), "application/json"))).await;
    }
    if let Err(e) = listed {
        return Ok(Err(e));
    }
    if done.deleted > 0 {
        // Readers see the index empty right after the truncate, as with a refreshing write.
        let answer = match cluster.client.send(Method::POST, &refresh_path, None).await {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if !(200..300).contains(&answer.status) && answer.status != 404 {
            return Ok(Err(status_error("POST", &refresh_path, &answer)));
        }
    }
    Ok(Ok(done))
}

/// One page of a search or scroll; `None` when the index or scroll is gone (404).
async fn search(cluster: &Cluster, path: &str, body: &serde_json::Value) -> Result<Option<SearchAnswer>, EsError> {
    let body = body.to_string();
    let answer = cluster.client.send(Method::POST, path, Some((body.as_bytes(), "application/json"))).await?;
    if answer.status == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&answer.status) {
        return Err(status_error("POST", path, &answer));
    }
    serde_json::from_slice(&answer.body).map(Some).map_err(|e| EsError::BadResponse { path: path.to_string(), reason: e.to_string() })
}

/// Delete the listed documents not newer than `version`, each with `version` as its external
/// version: one written after the listing (a higher version) answers 409 and stays.
async fn delete_page(cluster: &Cluster, hits: &[Hit], version: u64, done: &mut Outcome) -> Result<(), SinkError> {
    let mut arena = Vec::with_capacity(hits.len() * 96);
    let mut items = Vec::with_capacity(hits.len());
    for hit in hits {
        if hit.version.is_some_and(|v| v > version) {
            done.newer += 1;
            continue;
        }
        let start = arena.len();
        write_item(&mut arena, BulkKind::Delete, &hit.index, Some(&hit.id), Some(version), None);
        items.push(Item { kind: BulkKind::Delete, bytes: start..arena.len(), entry: items.len(), refresh: EsRefresh::False });
    }
    if items.is_empty() {
        return Ok(());
    }
    let rejected = bulk::send_until_done(cluster, &arena, &items, "truncate deletes").await?;
    if let Some((_, reason)) = rejected.first() {
        return Err(fatal(format!(
            "truncate: the cluster refuses to delete {} documents: {reason}\n  fix: check the privileges of the configured user or API key on the index",
            rejected.len()
        )));
    }
    done.deleted += items.len() as u64;
    Ok(())
}
