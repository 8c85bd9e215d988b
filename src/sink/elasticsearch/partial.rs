//! Partial updates: a row update whose unchanged TOASTed columns did not come with it is merged
//! into the stored document (realtime `_mget`) and written whole, versioned like any write.

use std::time::Instant;

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::client::{self, EsError};
use super::coalesce::{merge_objects, Entry, State};
use super::dead_letter::DeadLetterRecord;
use super::{fatal, Cluster};
use crate::decode::Change;
use crate::retry::Backoff;
use crate::sink::SinkError;

#[derive(Debug, Deserialize)]
struct MgetAnswer {
    docs: Vec<MgetDoc>,
}

/// One document of an `_mget` answer.
#[derive(Debug, Deserialize)]
pub(super) struct MgetDoc {
    #[serde(default)]
    pub(super) found: Option<bool>,
    #[serde(default, rename = "_version")]
    pub(super) version: Option<u64>,
    #[serde(default, rename = "_source")]
    pub(super) source: Option<Box<RawValue>>,
}

/// The documents of a 2xx `_mget` answer, one per document asked for, in order.
pub(super) fn parse_answer(body: &[u8], asked: usize) -> Result<Vec<MgetDoc>, EsError> {
    let bad = |reason: String| EsError::BadResponse { path: "/_mget".into(), reason };
    let answer: MgetAnswer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if answer.docs.len() != asked {
        return Err(bad(format!("{} docs for {} asked", answer.docs.len(), asked)));
    }
    Ok(answer.docs)
}

/// Turn each partial update into a full document: the stored document (realtime `_mget`)
/// with the fields set. A stored version newer than the update means the update is stale; a
/// missing document cannot be completed (its unchanged TOASTed columns are unknown) and goes
/// to the dead-letter destination with the fix.
pub(super) async fn resolve(
    cluster: &Cluster,
    entries: &mut [Entry],
    changes: &[Change],
    letters: &mut Vec<DeadLetterRecord>,
) -> Result<(), SinkError> {
    let todo: Vec<usize> = entries.iter().enumerate().filter(|(_, e)| matches!(e.state, State::Partial { .. })).map(|(i, _)| i).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let docs = fetch(cluster, entries, &todo).await?;
    for (&i, doc) in todo.iter().zip(docs) {
        let e = &mut entries[i];
        let State::Partial { fields, base_id } = &e.state else { continue };
        match (doc.found, doc.version, doc.source) {
            (Some(true), Some(v), _) if v > e.version => {
                tracing::debug!(index = %e.index, id = %e.id, stored_version = v, version = e.version, "partial update is older than the stored document; skipped");
                e.state = State::Skip;
            }
            (Some(true), _, Some(source)) => match merge_objects(source.get().as_bytes(), fields) {
                Ok(doc) => e.state = State::Doc(doc),
                Err(reason) => {
                    let reason = format!("cannot merge the partial update into the stored document: {reason}");
                    letters.push(DeadLetterRecord::for_entry(e, reason, Some(fields.clone()), changes));
                    e.state = State::Skip;
                }
            },
            _ => {
                // Writing the fields alone would index a document without the row's unchanged
                // TOASTed columns; dropping it would lose the update. Set it aside instead.
                let reason = format!(
                    "partial update of document {base_id:?} that is not in index {}: the row's unchanged TOASTed columns are not known, so the document cannot be completed (the row was never loaded, or a later change deleted it); fix: if the row is still in Postgres, load the table with `walcast snapshot --config FILE --table {}`",
                    e.index, e.origin.table
                );
                letters.push(DeadLetterRecord::for_entry(e, reason, Some(fields.clone()), changes));
                e.state = State::Skip;
            }
        }
    }
    Ok(())
}

/// The stored documents of the partial updates `todo` (positions in `entries`), in order,
/// retrying until the cluster answers.
async fn fetch(cluster: &Cluster, entries: &[Entry], todo: &[usize]) -> Result<Vec<MgetDoc>, SinkError> {
    let mut body = Vec::with_capacity(todo.len() * 64);
    body.extend_from_slice(b"{\"docs\":[");
    for (n, &i) in todo.iter().enumerate() {
        let State::Partial { base_id, .. } = &entries[i].state else { continue };
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"_index\":");
        crate::decode::write_json_str(&mut body, &entries[i].index);
        body.extend_from_slice(b",\"_id\":");
        crate::decode::write_json_str(&mut body, base_id);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    let mut backoff = Backoff::new(&cluster.retry);
    loop {
        let started = Instant::now();
        let result = match cluster.client.send(Method::POST, "/_mget", Some((&body, "application/json"))).await {
            Ok(a) if (200..300).contains(&a.status) => parse_answer(&a.body, todo.len()),
            Ok(a) => Err(client::status_error("POST", "/_mget", &a)),
            Err(e) => Err(e),
        };
        match result {
            Ok(docs) => return Ok(docs),
            Err(e) => {
                cluster
                    .retry_after(&mut backoff, "cannot read the documents partial updates apply to", e, Some(started), |e| {
                        fatal(format!("cannot read the documents partial updates apply to: {e}"))
                    })
                    .await?
            }
        }
    }
}
