//! `_bulk`: NDJSON bodies, per-item results, and the loop that sends items until each is
//! written, stale or rejected, resending only what failed.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::ops::Range;
use std::time::Instant;

use reqwest::Method;
use serde::Deserialize;

use super::client::AnswerText;
use super::{auth_failure, client, fatal, Cluster, NAME};
use crate::config::EsRefresh;
use crate::decode::write_json_str;
use crate::retry::Backoff;
use crate::sink::SinkError;

/// The action of one bulk item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkKind {
    /// `index` (create or replace).
    Index,
    /// `delete`.
    Delete,
}

/// Append one item: the action line and, for `index`, the source line. `version` adds
/// `version` + `version_type=external_gte`; `id` = `None` lets the server pick one.
pub fn write_item(out: &mut Vec<u8>, kind: BulkKind, index: &str, id: Option<&str>, version: Option<u64>, source: Option<&[u8]>) {
    out.extend_from_slice(match kind {
        BulkKind::Index => b"{\"index\":{\"_index\":",
        BulkKind::Delete => b"{\"delete\":{\"_index\":",
    });
    write_json_str(out, index);
    if let Some(id) = id {
        out.extend_from_slice(b",\"_id\":");
        write_json_str(out, id);
    }
    if let Some(v) = version {
        let _ = write!(out, ",\"version\":{v},\"version_type\":\"external_gte\"");
    }
    out.extend_from_slice(b"}}\n");
    if kind == BulkKind::Index {
        out.extend_from_slice(source.unwrap_or(b"{}"));
        out.push(b'\n');
    }
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Written (or nothing to do: a newer version is already there, the document to delete is
    /// not there).
    Done,
    /// A newer version was already there (409): the write is older and counts as done.
    Stale,
    /// May pass later (429, 5xx, blocked index): send it again.
    Retry(String),
    /// The cluster rejects it for good (mapping or parse error, ...): dead letter.
    Rejected(String),
    /// Retrying cannot help and it is not about this document (no privilege, missing index
    /// that may not be created): stop.
    Fatal(String),
}

/// One item of a bulk answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemResult {
    /// HTTP status of the item.
    pub status: u16,
    /// The error, if the item failed.
    #[serde(default)]
    pub error: Option<ItemError>,
}

/// `error` of a failed item.
#[derive(Debug, Clone, Deserialize)]
pub struct ItemError {
    /// `type`, e.g. `mapper_parsing_exception`.
    #[serde(rename = "type", default, deserialize_with = "answer_text")]
    pub kind: String,
    /// `reason`.
    #[serde(default, deserialize_with = "answer_text_opt")]
    pub reason: Option<String>,
    /// `caused_by`, for a more precise reason.
    #[serde(default)]
    pub caused_by: Option<Box<ItemError>>,
}

impl ItemError {
    /// `type: reason (caused by type: reason)`.
    pub fn describe(&self) -> String {
        let mut s = self.kind.clone();
        if let Some(r) = &self.reason {
            s.push_str(": ");
            s.push_str(r);
        }
        if let Some(c) = &self.caused_by {
            s.push_str(" (caused by ");
            s.push_str(&c.describe());
            s.push(')');
        }
        s
    }
}

/// An error's text, unpaired surrogate escapes and all (see [`AnswerText`]): one such item
/// must not make the whole answer unreadable, which would resend the batch for ever.
fn answer_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    AnswerText::deserialize(d).map(|t| t.0)
}

fn answer_text_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<AnswerText>::deserialize(d).map(|t| t.map(|t| t.0))
}

#[derive(Debug, Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    items: Vec<HashMap<String, ItemResult>>,
}

/// A 2xx `_bulk` answer that is not what was asked for. Every kind is worth a resend (a garbled
/// answer may come out right); [`AnswerError::ItemCount`] on several items is split first.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The body is not a bulk answer.
    #[error("the _bulk answer is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A different number of items than actions sent: some servers answer a body they could
    /// not parse with 200 and fewer items.
    #[error("the _bulk answer has {answered} items for {sent} actions sent")]
    ItemCount {
        /// Items in the answer.
        answered: usize,
        /// Actions in the request.
        sent: usize,
    },
    /// An item without its action key.
    #[error("an item of the _bulk answer is empty")]
    EmptyItem,
}

/// The per-item results of a bulk answer, in request order. Errors when the body is not a bulk
/// answer or holds a different number of items than were sent (a server that answers a malformed
/// request with 200 must not make walcast believe anything was written).
pub fn parse_answer(body: &[u8], sent: usize) -> Result<Vec<ItemResult>, AnswerError> {
    let answer: BulkAnswer = serde_json::from_slice(body)?;
    if answer.items.len() != sent {
        return Err(AnswerError::ItemCount { answered: answer.items.len(), sent });
    }
    answer.items.into_iter().map(|m| m.into_values().next().ok_or(AnswerError::EmptyItem)).collect()
}

/// Classify one item's result.
pub fn classify(kind: BulkKind, item: &ItemResult) -> ItemOutcome {
    let reason = || item.error.as_ref().map_or_else(|| format!("HTTP {}", item.status), ItemError::describe);
    let error_kind = item.error.as_ref().map_or("", |e| e.kind.as_str());
    match item.status {
        200..=299 => ItemOutcome::Done,
        409 if error_kind == "version_conflict_engine_exception" || error_kind.is_empty() => ItemOutcome::Stale,
        404 if kind == BulkKind::Delete => ItemOutcome::Done,
        404 if error_kind == "index_not_found_exception" => ItemOutcome::Fatal(format!(
            "{}; create the index, give it a mapping_file in [sinks.elasticsearch.indexes], or allow automatic index creation",
            reason()
        )),
        401 => ItemOutcome::Fatal(reason()),
        403 if error_kind == "cluster_block_exception" => ItemOutcome::Retry(reason()),
        403 => ItemOutcome::Fatal(reason()),
        408 | 429 => ItemOutcome::Retry(reason()),
        s if s >= 500 => ItemOutcome::Retry(reason()),
        _ => ItemOutcome::Rejected(reason()),
    }
}

/// One prepared bulk item: its bytes in the caller's arena, and the entry it writes.
#[derive(Debug, Clone)]
pub(super) struct Item {
    /// Its action.
    pub(super) kind: BulkKind,
    /// Its lines in the arena.
    pub(super) bytes: Range<usize>,
    /// The caller's entry (document or dead letter) it writes.
    pub(super) entry: usize,
    /// The `refresh` its index asks for.
    pub(super) refresh: EsRefresh,
}

/// The `_bulk` path with its `refresh` parameter (none for `false`, the server's default).
pub(super) fn bulk_path(refresh: EsRefresh) -> &'static str {
    match refresh {
        EsRefresh::False => "/_bulk",
        EsRefresh::WaitFor => "/_bulk?refresh=wait_for",
        EsRefresh::True => "/_bulk?refresh=true",
    }
}

/// Send `items` (slices of `arena`) with `_bulk` until each is written, stale or rejected.
/// Retries failed requests and retryable items with backoff, resending only those. Returns
/// the rejected items with their reasons.
pub(super) async fn send_until_done(
    cluster: &Cluster,
    arena: &[u8],
    items: &[Item],
    what: &str,
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut rejected = Vec::new();
    let mut pending: Vec<usize> = (0..items.len()).collect();
    let mut backoff = Backoff::new(&cluster.retry);
    let mut stale = 0usize;
    while !pending.is_empty() {
        let started = Instant::now();
        let mut todo: VecDeque<Vec<usize>> = chunks(&pending, items, cluster.bulk_max_actions, cluster.bulk_max_bytes).into();
        let mut retry = Vec::new();
        let mut reason = String::new();
        while let Some(chunk) = todo.pop_front() {
            let mut body = Vec::with_capacity(chunk.iter().map(|&i| items[i].bytes.len()).sum());
            for &i in &chunk {
                body.extend_from_slice(&arena[items[i].bytes.clone()]);
            }
            // Every item of a chunk has the same refresh (see `chunks`).
            let path = bulk_path(items[chunk[0]].refresh);
            let answer = match cluster.client.send(Method::POST, path, Some((&body, "application/x-ndjson"))).await {
                Ok(a) => a,
                Err(e) => {
                    reason = e.to_string();
                    retry.extend_from_slice(&chunk);
                    continue;
                }
            };
            if !(200..300).contains(&answer.status) {
                let e = client::status_error("POST", path, &answer);
                if e.is_auth() {
                    return Err(auth_failure(&e));
                }
                if e.is_retryable() {
                    reason = e.to_string();
                    retry.extend_from_slice(&chunk);
                } else if chunk.len() > 1 {
                    // The request as a whole is refused (too large, unparsable): halve it to
                    // find the item at fault.
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push_front(b.to_vec());
                    todo.push_front(a.to_vec());
                } else {
                    rejected.push((chunk[0], e.to_string()));
                }
                continue;
            }
            let results = match parse_answer(&answer.body, chunk.len()) {
                Ok(r) => r,
                Err(e @ AnswerError::ItemCount { .. }) if chunk.len() > 1 => {
                    // A body the server could not parse: halve it to find the item at fault.
                    tracing::warn!(error = %e, items = chunk.len(), "the _bulk answer does not match the request; splitting it");
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push_front(b.to_vec());
                    todo.push_front(a.to_vec());
                    continue;
                }
                Err(e) => {
                    reason = e.to_string();
                    retry.extend_from_slice(&chunk);
                    continue;
                }
            };
            for (&i, result) in chunk.iter().zip(&results) {
                match classify(items[i].kind, result) {
                    ItemOutcome::Done => {}
                    ItemOutcome::Stale => stale += 1,
                    ItemOutcome::Retry(r) => {
                        reason = r;
                        retry.push(i);
                    }
                    ItemOutcome::Rejected(r) => rejected.push((i, r)),
                    ItemOutcome::Fatal(r) => {
                        return Err(fatal(format!(
                            "the cluster refuses a write for a reason retrying cannot fix: {r}\n  fix: check the privileges of the configured user or API key on the index, and that the index exists or may be created"
                        )))
                    }
                }
            }
        }
        if retry.is_empty() {
            break;
        }
        cluster.metrics.sink_attempt(NAME, "retry", started.elapsed().as_secs_f64());
        let error = format!("{} of {} {what} not written: {reason}", retry.len(), pending.len());
        cluster.wait(&mut backoff, "elasticsearch write failed", &error).await?;
        pending = retry;
    }
    if stale > 0 {
        tracing::debug!(what, stale, "writes older than the stored documents counted as done");
    }
    Ok(rejected)
}

/// Cut `pending` into requests of one `refresh` value each, of at most `max_actions` items and
/// `max_bytes` bytes (a single larger item goes alone).
///
/// A request carries one `refresh` for all its items, so items of indexes with different
/// settings go in separate requests rather than all taking the strongest: `true` on a small
/// index must not force refreshes of a large one written in the same batch, and `wait_for`
/// must not wait on an index whose refresh is disabled (`refresh_interval: -1`), which could
/// stall the batch. The cost is at most one extra request per distinct value in a batch. Order
/// across the groups does not matter: within one call each document appears once (coalesced),
/// and index-wide deletes fall between calls.
fn chunks(pending: &[usize], items: &[Item], max_actions: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for refresh in [EsRefresh::False, EsRefresh::WaitFor, EsRefresh::True] {
        let mut cur = Vec::new();
        let mut bytes = 0;
        for &i in pending.iter().filter(|&&i| items[i].refresh == refresh) {
            let len = items[i].bytes.len();
            if !cur.is_empty() && (cur.len() >= max_actions || bytes + len > max_bytes) {
                out.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            cur.push(i);
            bytes += len;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_lines() {
        let mut out = Vec::new();
        write_item(&mut out, BulkKind::Index, "orders", Some("[1,\"a\"]"), Some(42), Some(br#"{"id":1}"#));
        write_item(&mut out, BulkKind::Delete, "orders", Some("7"), Some(43), None);
        write_item(&mut out, BulkKind::Index, "dlq", None, None, Some(br#"{"reason":"x"}"#));
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert!(text.ends_with('\n'));
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[0],
            serde_json::json!({"index": {"_index": "orders", "_id": "[1,\"a\"]", "version": 42, "version_type": "external_gte"}})
        );
        assert_eq!(lines[1], serde_json::json!({"id": 1}));
        assert_eq!(
            lines[2],
            serde_json::json!({"delete": {"_index": "orders", "_id": "7", "version": 43, "version_type": "external_gte"}})
        );
        assert_eq!(lines[3], serde_json::json!({"index": {"_index": "dlq"}}));
    }

    /// A real answer (osmem-server / Elasticsearch shape) with every kind of outcome.
    const ANSWER: &str = r#"{"errors":true,"took":1,"items":[
      {"index":{"_id":"1","_index":"t","_version":100,"result":"created","status":201}},
      {"index":{"_id":"1","_index":"t","error":{"reason":"[1]: version conflict, current version [100] is higher than the one provided [50]","type":"version_conflict_engine_exception"},"status":409}},
      {"index":{"_id":"2","_index":"t","error":{"reason":"mapping set to strict, dynamic introduction of [extra] within [_doc] is not allowed","type":"strict_dynamic_mapping_exception"},"status":400}},
      {"index":{"_id":"3","_index":"t","error":{"caused_by":{"reason":"For input string: \"x\"","type":"number_format_exception"},"reason":"failed to parse field [n] of type [integer]","type":"mapper_parsing_exception"},"status":400}},
      {"index":{"_id":"4","_index":"t","error":{"reason":"rejected execution","type":"es_rejected_execution_exception"},"status":429}},
      {"delete":{"_id":"77","_index":"t","_version":20,"result":"not_found","status":404}},
      {"delete":{"_id":"1","_index":"t","error":{"type":"version_conflict_engine_exception","reason":"conflict"},"status":409}},
      {"index":{"_id":"5","_index":"t","error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"},"status":503}},
      {"index":{"_id":"6","_index":"t","error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized"},"status":403}},
      {"index":{"_id":"7","_index":"t","error":{"type":"cluster_block_exception","reason":"index [t] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark]"},"status":429}}
    ]}"#;

    #[test]
    fn answer_items_are_classified() {
        let items = parse_answer(ANSWER.as_bytes(), 10).expect("parsed");
        let kinds = [
            BulkKind::Index,
            BulkKind::Index,
            BulkKind::Index,
            BulkKind::Index,
            BulkKind::Index,
            BulkKind::Delete,
            BulkKind::Delete,
            BulkKind::Index,
            BulkKind::Index,
            BulkKind::Index,
        ];
        let outcomes: Vec<ItemOutcome> = items.iter().zip(kinds).map(|(i, k)| classify(k, i)).collect();
        assert_eq!(outcomes[0], ItemOutcome::Done);
        assert_eq!(outcomes[1], ItemOutcome::Stale);
        assert!(
            matches!(&outcomes[2], ItemOutcome::Rejected(r) if r.starts_with("strict_dynamic_mapping_exception: mapping set to strict"))
        );
        assert!(
            matches!(&outcomes[3], ItemOutcome::Rejected(r) if r.contains("mapper_parsing_exception") && r.contains("caused by number_format_exception"))
        );
        assert!(matches!(&outcomes[4], ItemOutcome::Retry(_)));
        assert_eq!(outcomes[5], ItemOutcome::Done);
        assert_eq!(outcomes[6], ItemOutcome::Stale);
        assert!(matches!(&outcomes[7], ItemOutcome::Retry(_)));
        assert!(matches!(&outcomes[8], ItemOutcome::Fatal(r) if r.contains("security_exception")));
        assert!(matches!(&outcomes[9], ItemOutcome::Retry(_)));
    }

    #[test]
    fn bulk_path_per_refresh() {
        assert_eq!(bulk_path(EsRefresh::False), "/_bulk");
        assert_eq!(bulk_path(EsRefresh::WaitFor), "/_bulk?refresh=wait_for");
        assert_eq!(bulk_path(EsRefresh::True), "/_bulk?refresh=true");
    }

    #[test]
    fn chunks_hold_one_refresh_each() {
        let refresh = [EsRefresh::WaitFor, EsRefresh::False, EsRefresh::WaitFor, EsRefresh::True, EsRefresh::False];
        let items: Vec<Item> = refresh
            .iter()
            .enumerate()
            .map(|(i, &refresh)| Item { kind: BulkKind::Index, bytes: i * 10..i * 10 + 10, entry: i, refresh })
            .collect();
        let pending: Vec<usize> = (0..items.len()).collect();
        assert_eq!(chunks(&pending, &items, 100, 1 << 20), vec![vec![1, 4], vec![0, 2], vec![3]]);
        // The limits still apply within a group.
        assert_eq!(chunks(&pending, &items, 1, 1 << 20), vec![vec![1], vec![4], vec![0], vec![2], vec![3]]);
        assert_eq!(chunks(&[2, 0], &items, 100, 1 << 20), vec![vec![2, 0]]);
    }

    #[test]
    fn item_count_must_match() {
        // noida-db answers a malformed body with 200 and a single error item.
        let body = br#"{"errors":true,"items":[{"index":{"error":{"type":"parse_exception","reason":"malformed action/metadata line"},"status":400}}],"took":0}"#;
        let err = parse_answer(body, 3).expect_err("count");
        assert!(matches!(err, AnswerError::ItemCount { answered: 1, sent: 3 }), "{err:?}");
        assert!(err.to_string().contains("1 items for 3"));
        assert!(parse_answer(b"<html>", 1).is_err());
        // Items without an id (auto-id dead letters) parse.
        let ok = br#"{"errors":false,"items":[{"index":{"_index":"dlq","_id":"x","status":201,"result":"created"}}]}"#;
        assert_eq!(parse_answer(ok, 1).expect("ok")[0].status, 201);
    }
    #[test]
    fn a_reason_with_a_lone_surrogate_escape_is_read() {
        // Jackson writes every surrogate of a Java string as a \u escape, an unpaired one too:
        // Elasticsearch answers so when a rejected value held one (a stored document's, copied
        // by a partial update). The item is still rejected for its own reason, not the whole
        // answer refused and resent.
        let body = br#"{"errors":true,"items":[{"index":{"_id":"1","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] of type [long]. Preview of field's value: 'x\udbbbrm'","caused_by":{"type":"illegal_argument_exception","reason":"\udc00\ud83d\ude00"}}}},{"delete":{"_id":"\udbbb","status":200}}]}"#;
        let items = parse_answer(body, 2).expect("an answer with lone surrogate escapes");
        assert_eq!(
            classify(BulkKind::Index, &items[0]),
            ItemOutcome::Rejected(
                "mapper_parsing_exception: failed to parse field [n] of type [long]. Preview of field's value: 'x\u{fffd}rm' (caused by illegal_argument_exception: \u{fffd}\u{1f600})".into()
            )
        );
        assert_eq!(classify(BulkKind::Delete, &items[1]), ItemOutcome::Done);
        // Broken escapes are still refused.
        assert!(parse_answer(br#"{"items":[{"index":{"status":400,"error":{"type":"x","reason":"\udbb"}}}]}"#, 1).is_err());
    }
}
