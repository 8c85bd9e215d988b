//! Truncate: every document of an index is deleted with `_delete_by_query`, after a refresh so
//! the query sees the documents written before it in the batch.

use std::time::Instant;

use reqwest::Method;
use serde::Deserialize;

use super::client::{status_error, EsError};
use super::{fatal, Cluster};
use crate::retry::Backoff;
use crate::route::EsAction;
use crate::sink::SinkError;

#[derive(Debug, Deserialize)]
struct DeleteByQueryAnswer {
    #[serde(default)]
    deleted: u64,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

/// Delete every document of the action's index, retrying until done. A missing index has
/// nothing to delete.
pub(super) async fn delete_all(cluster: &Cluster, action: &EsAction) -> Result<(), SinkError> {
    let index = &action.index;
    let mut backoff = Backoff::new(&cluster.retry);
    loop {
        let started = Instant::now();
        match attempt(cluster, index).await {
            Ok(deleted) => {
                tracing::info!(index = %index, table = %action.origin.table, lsn = %action.origin.lsn, deleted, "truncate: deleted every document of the index");
                return Ok(());
            }
            Err(e) => {
                cluster
                    .retry_after(&mut backoff, "truncate: delete_by_query failed", e, Some(started), |e| {
                        fatal(format!("truncate of index {index} failed: {e}"))
                    })
                    .await?
            }
        }
    }
}

/// One refresh and `_delete_by_query`: how many documents it deleted.
async fn attempt(cluster: &Cluster, index: &str) -> Result<u64, EsError> {
    let refresh = cluster.client.send(Method::POST, &format!("/{index}/_refresh"), None).await?;
    if refresh.status == 404 {
        return Ok(0);
    }
    if !(200..300).contains(&refresh.status) {
        return Err(status_error("POST", &format!("/{index}/_refresh"), &refresh));
    }
    let path = format!("/{index}/_delete_by_query?conflicts=proceed&refresh=true");
    let answer = cluster.client.send(Method::POST, &path, Some((br#"{"query":{"match_all":{}}}"#, "application/json"))).await?;
    if answer.status == 404 {
        return Ok(0);
    }
    if !(200..300).contains(&answer.status) {
        return Err(status_error("POST", &path, &answer));
    }
    let parsed: DeleteByQueryAnswer =
        serde_json::from_slice(&answer.body).map_err(|e| EsError::BadResponse { path: path.clone(), reason: e.to_string() })?;
    if !parsed.failures.is_empty() {
        return Err(EsError::BadResponse { path, reason: format!("{} failures: {}", parsed.failures.len(), parsed.failures[0]) });
    }
    Ok(parsed.deleted)
}
