//! The Elasticsearch sink: row changes become document writes through the flat mapping rules
//! (`route::index`), or come ready-built from document rules ([`ElasticsearchSink::write_actions`]);
//! they are coalesced per document, versioned with the commit LSN and sent with `_bulk`.
//! docs/elasticsearch.md describes the guarantees.
//!
//! Per batch: route every change; cut the actions at each index-wide delete (a truncate); per
//! segment, coalesce the actions of each document into one (the last full document wins, later
//! partial updates are merged into it), turn the remaining partial updates into full documents
//! from the stored ones (`_mget`), then `_bulk` until every item is written, stale (a newer
//! version is there) or rejected. Failed requests and per-item 429/5xx are retried here with
//! backoff, resending only what failed; rejected items go to the dead-letter destination. `write`
//! returns (and the batch counts as durable) only when nothing is left.

mod bulk;
mod check;
mod client;
mod dead_letter;
mod document;
mod indexes;

use std::collections::HashMap;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

pub use check::elasticsearch_findings;
pub use client::{EsClient, EsError};
pub(crate) use document::document_findings;

use self::bulk::{classify, parse_answer, write_item, BulkKind, ItemOutcome};
use self::dead_letter::{DeadLetter, DeadLetterFile};
use self::document::{DocumentBuilder, WriteActions};
use self::indexes::{IndexSpec, IndexState};
use super::{Batch, Sink, SinkError};
use crate::config::{ElasticsearchSinkConfig, RetryConfig};
use crate::decode::{write_row_object, Change, UnchangedToast};
use crate::metrics::{Metrics, SinkLabel};
use crate::retry::Backoff;
use crate::route::index::Routed;
use crate::route::{DocumentRules, EsAction, EsOp, FlatRules, Origin, Rejected};
use crate::source::ConnParams;

const NAME: &str = "elasticsearch";

fn fatal(reason: String) -> SinkError {
    SinkError::Fatal { sink: NAME, reason }
}

/// Where rejected documents go.
enum DeadLetters {
    /// Nowhere: a rejected document stops walcast.
    None,
    /// A JSON-lines file.
    File(DeadLetterFile),
    /// An index.
    Index(Arc<str>),
}

/// The Elasticsearch sink. See the module documentation.
pub struct ElasticsearchSink {
    client: EsClient,
    rules: FlatRules,
    documents: DocumentRules,
    /// SQL side of the document rules (`None` until [`ElasticsearchSink::with_source`]).
    builder: Option<DocumentBuilder>,
    bulk_max_actions: usize,
    bulk_max_bytes: usize,
    create_indexes: bool,
    specs: Vec<IndexSpec>,
    indexes_ready: bool,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    dead_letters: DeadLetters,
}

/// One document's pending write after coalescing.
#[derive(Debug)]
struct Entry {
    index: Arc<str>,
    id: String,
    version: u64,
    state: State,
    origin: Origin,
}

#[derive(Debug)]
enum State {
    /// Index this whole document.
    Doc(Vec<u8>),
    /// Merge these fields into the stored document `base_id`, then index the result.
    Partial { fields: Vec<u8>, base_id: String },
    /// Delete the document.
    Deleted,
    /// Nothing to send.
    Skip,
}

/// One prepared bulk item: bytes in the arena, and the entry it writes.
#[derive(Debug, Clone)]
struct Item {
    kind: BulkKind,
    bytes: Range<usize>,
    entry: usize,
}

impl ElasticsearchSink {
    /// Build the client, read the mapping files and open the dead-letter file. Nothing is sent
    /// until the first write (which creates the missing indexes).
    pub fn open(cfg: &ElasticsearchSinkConfig, retry: &RetryConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let client = EsClient::new(cfg).map_err(|e| fatal(e.to_string()))?;
        let specs = indexes::specs(cfg).map_err(fatal)?;
        let dead_letters = match &cfg.dead_letter {
            Some(d) => match (&d.index, &d.path) {
                (Some(index), _) => DeadLetters::Index(Arc::from(index.as_str())),
                (None, Some(path)) => DeadLetters::File(DeadLetterFile::open(path).map_err(|e| {
                    fatal(format!(
                        "cannot open the dead-letter file {} for appending: {e}; check sinks.elasticsearch.dead_letter.path and its permissions",
                        path.display()
                    ))
                })?),
                (None, None) => DeadLetters::None,
            },
            None => DeadLetters::None,
        };
        metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).inc_by(0);
        tracing::info!(url = %client.base(), rules = cfg.tables.len(), document_rules = cfg.documents.len(), gzip = cfg.gzip, "elasticsearch sink ready");
        Ok(Self {
            client,
            rules: FlatRules::new(&cfg.tables),
            documents: DocumentRules::new(&cfg.documents),
            builder: None,
            bulk_max_actions: cfg.bulk_max_actions,
            bulk_max_bytes: cfg.bulk_max_bytes,
            create_indexes: cfg.create_indexes,
            specs,
            indexes_ready: false,
            retry: retry.clone(),
            metrics,
            dead_letters,
        })
    }

    /// Give the document rules their Postgres connection settings (they read documents with SQL).
    pub fn with_source(mut self, params: ConnParams) -> Self {
        self.builder = Some(DocumentBuilder::new(params, !self.documents.is_empty()));
        self
    }

    /// Rebuild the documents the batch affects, rule by rule, after its flat writes.
    async fn write_documents(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.documents.is_empty() {
            return Ok(());
        }
        let work = self.documents.collect(&batch.changes);
        if work.iter().all(|w| w.is_empty()) {
            return Ok(());
        }
        let Some(mut builder) = self.builder.take() else {
            return Err(fatal("document rules need the source connection (ElasticsearchSink::with_source)".into()));
        };
        let rules: Vec<_> = self.documents.rules().to_vec();
        let exported = batch.snapshot.as_ref().and_then(|s| s.exported.clone());
        let mut result = Ok(());
        for (rule, work) in rules.iter().zip(&work) {
            if work.is_empty() {
                continue;
            }
            let started = Instant::now();
            let mut out = ChangesWriter { sink: self, changes: &batch.changes };
            let documents = match builder.rebuild(rule, work, exported.as_deref(), &mut out).await {
                Ok(n) => n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            tracing::debug!(rule = %rule.name, documents, version = %work.version, elapsed_ms = started.elapsed().as_millis() as u64, "documents rebuilt");
        }
        self.builder = Some(builder);
        result
    }

    /// Write ready-made actions (and set rejected ones aside) until all are done. `changes` are
    /// the changes the actions' `origin.change` positions refer to (for dead-letter keys).
    /// This is what `write` does after routing, and what document rules call with the documents
    /// they rebuilt.
    pub async fn write_actions(&mut self, routed: Vec<Routed>, changes: &[Change]) -> Result<(), SinkError> {
        if routed.is_empty() {
            return Ok(());
        }
        self.ensure_indexes().await?;
        let mut letters = Vec::new();
        let mut segment = Vec::new();
        for r in routed {
            match r {
                Err(rejected) => letters.push(letter_from_rejected(rejected, changes)),
                Ok(a) if a.op == EsOp::DeleteAll => {
                    self.write_segment(std::mem::take(&mut segment), changes, &mut letters).await?;
                    self.delete_all(&a).await?;
                }
                Ok(a) => segment.push(a),
            }
        }
        self.write_segment(segment, changes, &mut letters).await?;
        self.set_aside(letters).await
    }

    /// Create the configured indexes that are missing (once), report mapping differences.
    async fn ensure_indexes(&mut self) -> Result<(), SinkError> {
        if self.indexes_ready {
            return Ok(());
        }
        let mut backoff = Backoff::new(&self.retry);
        for spec in &self.specs {
            loop {
                let result = match indexes::state(&self.client, spec).await {
                    Ok(IndexState::Exists(None)) => Ok(()),
                    Ok(IndexState::Exists(Some(diff))) => {
                        tracing::warn!(index = %spec.name, file = %spec.source, difference = %diff, "index exists with a mapping that differs from its file; walcast never changes an existing mapping");
                        Ok(())
                    }
                    Ok(IndexState::Missing) if !self.create_indexes => {
                        return Err(fatal(format!(
                            "index {} does not exist and sinks.elasticsearch.create_indexes = false; create it (from {}) or set create_indexes = true",
                            spec.name, spec.source
                        )))
                    }
                    Ok(IndexState::Missing) => match indexes::create(&self.client, spec).await {
                        Ok(created) => {
                            if created {
                                tracing::info!(index = %spec.name, file = %spec.source, "created index");
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => break,
                    Err(e) if e.is_auth() => return Err(fatal(format!("{e}\n  fix: {}", e.auth_fix()))),
                    Err(e) if e.is_retryable() => {
                        let delay = backoff.next_delay();
                        tracing::warn!(index = %spec.name, error = %e, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "cannot look up or create index, retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        return Err(fatal(format!(
                            "cannot create index {} from {}: {e}; fix the file or create the index yourself",
                            spec.name, spec.source
                        )))
                    }
                }
            }
        }
        self.indexes_ready = true;
        Ok(())
    }

    /// Coalesce, resolve partial updates, bulk until done.
    async fn write_segment(&mut self, actions: Vec<EsAction>, changes: &[Change], letters: &mut Vec<DeadLetter>) -> Result<(), SinkError> {
        if actions.is_empty() {
            return Ok(());
        }
        let mut entries = coalesce(actions, |e, reason| letters.push(letter_for_entry(e, reason, None, changes)));
        self.resolve_partials(&mut entries, changes, letters).await?;

        let mut arena = Vec::with_capacity(entries.len() * 256);
        let mut items = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let start = arena.len();
            let kind = match &e.state {
                State::Doc(doc) => {
                    write_item(&mut arena, BulkKind::Index, &e.index, Some(&e.id), Some(e.version), Some(doc));
                    BulkKind::Index
                }
                State::Deleted => {
                    write_item(&mut arena, BulkKind::Delete, &e.index, Some(&e.id), Some(e.version), None);
                    BulkKind::Delete
                }
                State::Partial { .. } | State::Skip => continue,
            };
            items.push(Item { kind, bytes: start..arena.len(), entry: i });
        }
        let rejected = self.bulk_until_done(&arena, &items, "documents").await?;
        for (item, reason) in rejected {
            let e = &entries[items[item].entry];
            let document = match &e.state {
                State::Doc(d) => Some(d.clone()),
                _ => None,
            };
            letters.push(letter_for_entry(e, reason, document, changes));
        }
        Ok(())
    }

    /// Turn each partial update into a full document: the stored document (realtime `_mget`)
    /// with the fields set. A stored version newer than the update means the update is stale; a
    /// missing document cannot be completed (its unchanged TOASTed columns are unknown) and goes
    /// to the dead-letter destination with the fix.
    async fn resolve_partials(
        &mut self,
        entries: &mut [Entry],
        changes: &[Change],
        letters: &mut Vec<DeadLetter>,
    ) -> Result<(), SinkError> {
        let todo: Vec<usize> =
            entries.iter().enumerate().filter(|(_, e)| matches!(e.state, State::Partial { .. })).map(|(i, _)| i).collect();
        if todo.is_empty() {
            return Ok(());
        }
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
        let mut backoff = Backoff::new(&self.retry);
        let docs = loop {
            let started = Instant::now();
            let result = match self.client.send(Method::POST, "/_mget", Some((&body, "application/json"))).await {
                Ok(a) if (200..300).contains(&a.status) => serde_json::from_slice::<MgetAnswer>(&a.body)
                    .map_err(|e| EsError::BadResponse { path: "/_mget".into(), reason: e.to_string() })
                    .and_then(|m| {
                        if m.docs.len() == todo.len() {
                            Ok(m.docs)
                        } else {
                            Err(EsError::BadResponse {
                                path: "/_mget".into(),
                                reason: format!("{} docs for {} asked", m.docs.len(), todo.len()),
                            })
                        }
                    }),
                Ok(a) => Err(client::status_error("POST", "/_mget", &a)),
                Err(e) => Err(e),
            };
            match result {
                Ok(docs) => break docs,
                Err(e) if e.is_auth() => return Err(fatal(format!("{e}\n  fix: {}", e.auth_fix()))),
                Err(e) if e.is_retryable() => {
                    self.metrics.sink_attempt(NAME, "retry", started.elapsed().as_secs_f64());
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, partial_updates = todo.len(), attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "cannot read the documents partial updates apply to, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(fatal(format!("cannot read the documents partial updates apply to: {e}"))),
            }
        };
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
                        letters.push(letter_for_entry(e, reason, Some(fields.clone()), changes));
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
                    letters.push(letter_for_entry(e, reason, Some(fields.clone()), changes));
                    e.state = State::Skip;
                }
            }
        }
        Ok(())
    }

    /// Send `items` (slices of `arena`) with `_bulk` until each is written, stale or rejected.
    /// Retries failed requests and retryable items with backoff, resending only those. Returns
    /// the rejected items with their reasons.
    async fn bulk_until_done(&self, arena: &[u8], items: &[Item], what: &str) -> Result<Vec<(usize, String)>, SinkError> {
        let mut rejected = Vec::new();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut backoff = Backoff::new(&self.retry);
        let mut stale = 0usize;
        while !pending.is_empty() {
            let started = Instant::now();
            let mut todo: VecDeque<Vec<usize>> = self.chunks(&pending, items).into();
            let mut retry = Vec::new();
            let mut reason = String::new();
            while let Some(chunk) = todo.pop_front() {
                let mut body = Vec::with_capacity(chunk.iter().map(|&i| items[i].bytes.len()).sum());
                for &i in &chunk {
                    body.extend_from_slice(&arena[items[i].bytes.clone()]);
                }
                let answer = match self.client.send(Method::POST, "/_bulk", Some((&body, "application/x-ndjson"))).await {
                    Ok(a) => a,
                    Err(e) => {
                        reason = e.to_string();
                        retry.extend_from_slice(&chunk);
                        continue;
                    }
                };
                if !(200..300).contains(&answer.status) {
                    let e = client::status_error("POST", "/_bulk", &answer);
                    if e.is_auth() {
                        return Err(fatal(format!("{e}\n  fix: {}", e.auth_fix())));
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
                    Err(e) if chunk.len() > 1 && e.contains("items for") => {
                        // Some servers answer a body they could not parse with 200 and fewer
                        // items: halve it to find the item at fault.
                        tracing::warn!(error = %e, items = chunk.len(), "the _bulk answer does not match the request; splitting it");
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        todo.push_front(b.to_vec());
                        todo.push_front(a.to_vec());
                        continue;
                    }
                    Err(e) => {
                        reason = e;
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
            self.metrics.sink_attempt(NAME, "retry", started.elapsed().as_secs_f64());
            let delay = backoff.next_delay();
            tracing::warn!(
                what, failed = retry.len(), of = pending.len(), error = %reason, attempt = backoff.attempt(),
                delay_ms = delay.as_millis() as u64, "elasticsearch write failed, retrying the failed items"
            );
            tokio::time::sleep(delay).await;
            pending = retry;
        }
        if stale > 0 {
            tracing::debug!(what, stale, "writes older than the stored documents counted as done");
        }
        Ok(rejected)
    }

    /// Cut `pending` into requests of at most `bulk_max_actions` items and `bulk_max_bytes`
    /// bytes (a single larger item goes alone).
    fn chunks(&self, pending: &[usize], items: &[Item]) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut bytes = 0;
        for &i in pending {
            let len = items[i].bytes.len();
            if !cur.is_empty() && (cur.len() >= self.bulk_max_actions || bytes + len > self.bulk_max_bytes) {
                out.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            cur.push(i);
            bytes += len;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Delete every document of an index (truncate), retrying until done. Documents written
    /// before it in the batch are made searchable first so the query sees them.
    async fn delete_all(&self, action: &EsAction) -> Result<(), SinkError> {
        let index = &action.index;
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let started = Instant::now();
            let result = async {
                let refresh = self.client.send(Method::POST, &format!("/{index}/_refresh"), None).await?;
                if refresh.status == 404 {
                    return Ok(0);
                }
                if !(200..300).contains(&refresh.status) {
                    return Err(client::status_error("POST", &format!("/{index}/_refresh"), &refresh));
                }
                let path = format!("/{index}/_delete_by_query?conflicts=proceed&refresh=true");
                let answer = self.client.send(Method::POST, &path, Some((br#"{"query":{"match_all":{}}}"#, "application/json"))).await?;
                if answer.status == 404 {
                    return Ok(0);
                }
                if !(200..300).contains(&answer.status) {
                    return Err(client::status_error("POST", &path, &answer));
                }
                let parsed: DeleteByQueryAnswer =
                    serde_json::from_slice(&answer.body).map_err(|e| EsError::BadResponse { path: path.clone(), reason: e.to_string() })?;
                if !parsed.failures.is_empty() {
                    return Err(EsError::BadResponse {
                        path,
                        reason: format!("{} failures: {}", parsed.failures.len(), parsed.failures[0]),
                    });
                }
                Ok(parsed.deleted)
            }
            .await;
            match result {
                Ok(deleted) => {
                    tracing::info!(index = %index, table = %action.origin.table, lsn = %action.origin.lsn, deleted, "truncate: deleted every document of the index");
                    return Ok(());
                }
                Err(e) if e.is_auth() => return Err(fatal(format!("{e}\n  fix: {}", e.auth_fix()))),
                Err(e) if e.is_retryable() => {
                    self.metrics.sink_attempt(NAME, "retry", started.elapsed().as_secs_f64());
                    let delay = backoff.next_delay();
                    tracing::warn!(index = %index, error = %e, attempt = backoff.attempt(), delay_ms = delay.as_millis() as u64, "truncate: delete_by_query failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(fatal(format!("truncate of index {index} failed: {e}"))),
            }
        }
    }

    /// Make the dead letters durable in their destination and count them.
    async fn set_aside(&mut self, letters: Vec<DeadLetter>) -> Result<(), SinkError> {
        if letters.is_empty() {
            return Ok(());
        }
        let destination = match &mut self.dead_letters {
            DeadLetters::None => {
                let l = &letters[0];
                return Err(fatal(format!(
                    "a document for index {} (table {}, id {:?}, lsn {}) cannot be written: {}\n  fix: fix the mapping or the data, \
                     or configure [sinks.elasticsearch.dead_letter] (index or path) to set such documents aside and go on",
                    l.index, l.table, l.id, l.lsn, l.reason
                )));
            }
            DeadLetters::File(file) => {
                if let Err(e) = file.write(&letters).await {
                    tracing::warn!(path = %file.path().display(), error = %e, "cannot write the dead-letter file");
                    return Err(e.into_sink_error(NAME));
                }
                file.path().display().to_string()
            }
            DeadLetters::Index(index) => {
                let index = Arc::clone(index);
                let mut arena = Vec::with_capacity(letters.len() * 512);
                let mut items = Vec::with_capacity(letters.len());
                let mut doc = Vec::new();
                for (i, l) in letters.iter().enumerate() {
                    doc.clear();
                    l.render(&mut doc);
                    let start = arena.len();
                    write_item(&mut arena, BulkKind::Index, &index, None, None, Some(&doc));
                    items.push(Item { kind: BulkKind::Index, bytes: start..arena.len(), entry: i });
                }
                let rejected = self.bulk_until_done(&arena, &items, "dead letters").await?;
                if let Some((_, reason)) = rejected.first() {
                    return Err(fatal(format!(
                        "the dead-letter index {index} rejects dead letters: {reason}\n  fix: let walcast create it (drop it), or give it a mapping that accepts them"
                    )));
                }
                format!("index {index}")
            }
        };
        // Logged once they are durable there: the log never claims what did not happen.
        for l in &letters {
            tracing::warn!(table = %l.table, index = %l.index, id = %l.id, lsn = %l.lsn, reason = %l.reason, destination = %destination, "document rejected, set aside as a dead letter");
        }
        self.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).inc_by(letters.len() as u64);
        Ok(())
    }
}

impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        if let DeadLetters::File(file) = &mut self.dead_letters {
            file.repair().await.map_err(|e| e.into_sink_error(NAME))?;
        }
        self.ensure_indexes().await
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut routed = Vec::new();
        for (pos, change) in batch.changes.iter().enumerate() {
            self.rules.route(change, pos, &mut routed);
        }
        let actions = routed.len();
        self.write_actions(routed, &batch.changes).await?;
        self.write_documents(batch).await?;
        if actions > 0 {
            tracing::debug!(
                changes = batch.changes.len(),
                actions,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "elasticsearch batch written"
            );
        }
        Ok(())
    }
}

/// The sink writing rebuilt documents for one batch (rejections name the batch's changes).
struct ChangesWriter<'a> {
    sink: &'a mut ElasticsearchSink,
    changes: &'a [Change],
}

impl WriteActions for ChangesWriter<'_> {
    async fn write_actions(&mut self, routed: Vec<Routed>) -> Result<(), SinkError> {
        self.sink.write_actions(routed, self.changes).await
    }
}

#[derive(Debug, Deserialize)]
struct MgetAnswer {
    docs: Vec<MgetDoc>,
}

#[derive(Debug, Deserialize)]
struct MgetDoc {
    #[serde(default)]
    found: Option<bool>,
    #[serde(default, rename = "_version")]
    version: Option<u64>,
    #[serde(default, rename = "_source")]
    source: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
struct DeleteByQueryAnswer {
    #[serde(default)]
    deleted: u64,
    #[serde(default)]
    failures: Vec<serde_json::Value>,
}

/// One entry per document, in order of first appearance: the last full document wins, later
/// partial updates are merged into it, a delete replaces everything before it. `reject` gets
/// entries whose merge failed.
fn coalesce(actions: Vec<EsAction>, mut reject: impl FnMut(&Entry, String)) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::with_capacity(actions.len());
    let mut at: HashMap<(Arc<str>, String), usize> = HashMap::with_capacity(actions.len());
    for a in actions {
        let state = match a.op {
            EsOp::Index(doc) => State::Doc(doc),
            EsOp::Delete => State::Deleted,
            EsOp::DeleteAll => continue,
            EsOp::Update { fields, base_id } => {
                let base = base_id.unwrap_or_else(|| a.id.clone());
                match at.get(&(Arc::clone(&a.index), base.clone())).map(|&i| &entries[i]) {
                    Some(Entry { state: State::Doc(doc), .. }) => match merge_objects(doc, &fields) {
                        Ok(merged) => State::Doc(merged),
                        Err(reason) => {
                            let e = Entry { index: a.index, id: a.id, version: a.version, state: State::Skip, origin: a.origin };
                            reject(&e, format!("cannot merge a partial update: {reason}"));
                            continue;
                        }
                    },
                    Some(Entry { state: State::Partial { fields: f0, base_id: b0 }, .. }) => match merge_objects(f0, &fields) {
                        Ok(merged) => State::Partial { fields: merged, base_id: b0.clone() },
                        Err(reason) => {
                            let e = Entry { index: a.index, id: a.id, version: a.version, state: State::Skip, origin: a.origin };
                            reject(&e, format!("cannot merge a partial update: {reason}"));
                            continue;
                        }
                    },
                    Some(Entry { state: State::Deleted | State::Skip, .. }) => {
                        tracing::warn!(index = %a.index, id = %a.id, lsn = %a.origin.lsn, "partial update of a document deleted earlier in the batch: skipped");
                        State::Skip
                    }
                    None => State::Partial { fields, base_id: base },
                }
            }
        };
        let key = (Arc::clone(&a.index), a.id);
        match at.get(&key) {
            Some(&i) => {
                let e = &mut entries[i];
                e.state = state;
                e.version = e.version.max(a.version);
                e.origin = a.origin;
            }
            None => {
                at.insert(key.clone(), entries.len());
                entries.push(Entry { index: key.0, id: key.1, version: a.version, state, origin: a.origin });
            }
        }
    }
    entries
}

/// `base` with every field of `fields` set (both JSON objects). Values are kept as raw JSON, so
/// nothing is lost (big numbers, key order within values).
fn merge_objects(base: &[u8], fields: &[u8]) -> Result<Vec<u8>, String> {
    let mut merged: Vec<(String, Box<RawValue>)> = Vec::new();
    let base: RawObject = serde_json::from_slice(base).map_err(|e| format!("stored document: {e}"))?;
    let fields: RawObject = serde_json::from_slice(fields).map_err(|e| format!("fields: {e}"))?;
    merged.extend(base.0);
    for (k, v) in fields.0 {
        match merged.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
    }
    let mut out = Vec::with_capacity(base_len_hint(&merged));
    out.push(b'{');
    for (n, (k, v)) in merged.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        crate::decode::write_json_str(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

fn base_len_hint(fields: &[(String, Box<RawValue>)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 2
}

/// A JSON object as (key, raw value) pairs in document order.
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The row key (replica identity) of change `pos`, as a JSON object, or empty.
fn key_json(changes: &[Change], pos: Option<usize>) -> Vec<u8> {
    let Some(change) = pos.and_then(|p| changes.get(p)) else { return Vec::new() };
    let rel = &change.relation;
    if rel.key_columns().next().is_none() {
        return Vec::new();
    }
    let Some(values) = change.key_source() else { return Vec::new() };
    let mut out = Vec::new();
    match write_row_object(&mut out, rel, values, |i| rel.columns[i].key, UnchangedToast::Omit) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

fn letter_from_rejected(r: Rejected, changes: &[Change]) -> DeadLetter {
    DeadLetter {
        lsn: r.origin.lsn,
        commit_lsn: r.origin.commit_lsn,
        table: r.origin.table.to_string(),
        key: key_json(changes, r.origin.change),
        index: r.index.to_string(),
        id: String::new(),
        reason: r.reason,
        document: None,
    }
}

fn letter_for_entry(e: &Entry, reason: String, document: Option<Vec<u8>>, changes: &[Change]) -> DeadLetter {
    DeadLetter {
        lsn: e.origin.lsn,
        commit_lsn: e.origin.commit_lsn,
        table: e.origin.table.to_string(),
        key: key_json(changes, e.origin.change),
        index: e.index.to_string(),
        id: e.id.clone(),
        reason,
        document,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use serde_json::{json, Value};

    fn origin(lsn: u64) -> Origin {
        Origin { lsn: Lsn(lsn), commit_lsn: Lsn(lsn), table: Arc::from("public.t"), change: None }
    }

    fn act(id: &str, version: u64, op: EsOp) -> EsAction {
        EsAction { index: Arc::from("t"), id: id.into(), version, op, origin: origin(version) }
    }

    fn index(doc: Value) -> EsOp {
        EsOp::Index(serde_json::to_vec(&doc).expect("json"))
    }

    fn update(fields: Value, base: Option<&str>) -> EsOp {
        EsOp::Update { fields: serde_json::to_vec(&fields).expect("json"), base_id: base.map(str::to_string) }
    }

    fn doc_of(e: &Entry) -> Value {
        match &e.state {
            State::Doc(d) | State::Partial { fields: d, .. } => serde_json::from_slice(d).expect("json"),
            _ => Value::Null,
        }
    }

    /// A scripted HTTP/1.1 server: `answer(n, request)` gives the status and body of the n-th
    /// request. Records every request.
    mod fake {
        use std::sync::{Arc, Mutex};

        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        #[derive(Debug, Clone)]
        pub struct Req {
            pub method: String,
            pub path: String,
            pub headers: Vec<(String, String)>,
            pub body: Vec<u8>,
        }

        impl Req {
            pub fn header(&self, name: &str) -> Option<&str> {
                self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
            }
        }

        pub type Answer = Arc<dyn Fn(usize, &Req) -> (u16, String) + Send + Sync>;

        pub async fn serve(answer: Answer) -> (String, Arc<Mutex<Vec<Req>>>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let log: Arc<Mutex<Vec<Req>>> = Arc::default();
            let seen = Arc::clone(&log);
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    let (answer, seen) = (Arc::clone(&answer), Arc::clone(&seen));
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        loop {
                            let head_end = loop {
                                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                    break p + 4;
                                }
                                let mut chunk = [0u8; 8192];
                                match sock.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            };
                            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                            let mut lines = head.split("\r\n");
                            let mut first = lines.next().unwrap_or("").split(' ');
                            let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
                            let headers: Vec<(String, String)> = lines
                                .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                                .collect();
                            let len: usize = headers
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                                .and_then(|(_, v)| v.parse().ok())
                                .unwrap_or(0);
                            while buf.len() < head_end + len {
                                let mut chunk = [0u8; 8192];
                                match sock.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let req = Req { method, path, headers, body: buf[head_end..head_end + len].to_vec() };
                            buf.drain(..head_end + len);
                            let n = {
                                let mut s = seen.lock().expect("lock");
                                s.push(req.clone());
                                s.len() - 1
                            };
                            let (status, body) = answer(n, &req);
                            let resp = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            (url, log)
        }
    }

    fn test_sink(url: &str, extra: &str) -> ElasticsearchSink {
        let cfg: ElasticsearchSinkConfig = toml::from_str(&format!("url = \"{url}\"\n{extra}")).expect("config");
        ElasticsearchSink::open(&cfg, &RetryConfig { initial_ms: 1, max_ms: 5 }, Metrics::new()).expect("sink")
    }

    fn item(status: u16, kind: &str) -> String {
        if status < 300 {
            format!(r#"{{"index":{{"_index":"t","_id":"x","status":{status},"result":"created"}}}}"#)
        } else {
            format!(r#"{{"index":{{"_index":"t","_id":"x","status":{status},"error":{{"type":"{kind}","reason":"r"}}}}}}"#)
        }
    }

    fn bulk_ids(body: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("index").and_then(|a| a.get("_id")).and_then(|i| i.as_str()).map(str::to_string))
            .collect()
    }

    #[tokio::test]
    async fn retries_resend_only_the_failed_items() {
        let answer: fake::Answer = Arc::new(|n, _req| match n {
            0 => (503, r#"{"error":{"type":"unavailable_shards_exception","reason":"not ready"},"status":503}"#.into()),
            1 => (
                200,
                format!(
                    r#"{{"errors":true,"items":[{},{},{}]}}"#,
                    item(201, ""),
                    item(429, "es_rejected_execution_exception"),
                    item(201, "")
                ),
            ),
            2 => (200, format!(r#"{{"errors":true,"items":[{}]}}"#, item(500, "internal"))),
            _ => (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, ""))),
        });
        let (url, seen) = fake::serve(answer).await;
        let mut sink = test_sink(&url, "");
        let actions = (1..=3).map(|i| Ok(act(&i.to_string(), 10, index(json!({"i": i}))))).collect();
        sink.write_actions(actions, &[]).await.expect("written in the end");
        let reqs = seen.lock().expect("lock").clone();
        let ids: Vec<Vec<String>> = reqs.iter().map(|r| bulk_ids(&r.body)).collect();
        assert_eq!(ids, vec![vec!["1", "2", "3"], vec!["1", "2", "3"], vec!["2"], vec!["2"]], "only the failed item is sent again");
        assert!(reqs.iter().all(|r| r.method == "POST" && r.path == "/_bulk"));
        assert_eq!(sink.metrics.sink_requests.get_or_create(&crate::metrics::SinkOutcome { sink: NAME.into(), outcome: "retry" }).get(), 3);
    }

    #[tokio::test]
    async fn authentication_failure_is_fatal_with_a_fix() {
        let answer: fake::Answer = Arc::new(|_, _| {
            (401, r#"{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#.into())
        });
        let (url, seen) = fake::serve(answer).await;
        let mut sink = test_sink(&url, "");
        let err = sink.write_actions(vec![Ok(act("1", 10, index(json!({}))))], &[]).await.expect_err("fatal");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("HTTP 401") && text.contains("fix: check sinks.elasticsearch.username"), "{text}");
        assert_eq!(seen.lock().expect("lock").len(), 1, "no retry of an authentication failure");
    }

    #[tokio::test]
    async fn gzip_bodies_and_basic_auth() {
        let answer: fake::Answer = Arc::new(|_, _| (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, ""))));
        let (url, seen) = fake::serve(answer).await;
        std::env::set_var("WALCAST_TEST_ES_FAKE_PW", "s3cret");
        let mut sink = test_sink(&url, "gzip = true\nusername = \"writer\"\npassword_env = \"WALCAST_TEST_ES_FAKE_PW\"\n");
        let big = "x".repeat(4_000);
        sink.write_actions(vec![Ok(act("1", 10, index(json!({"big": big}))))], &[]).await.expect("written");
        let req = seen.lock().expect("lock")[0].clone();
        assert_eq!(req.header("content-encoding"), Some("gzip"));
        assert_eq!(req.header("content-type"), Some("application/x-ndjson"));
        use base64::Engine as _;
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("writer:s3cret"));
        assert_eq!(req.header("authorization"), Some(expected.as_str()));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&req.body[..]), &mut text).expect("gunzip");
        assert!(req.body.len() < 500, "compressed: {} bytes", req.body.len());
        assert_eq!(bulk_ids(text.as_bytes()), ["1"]);
        assert!(text.contains(&big));
    }

    #[tokio::test]
    async fn a_request_the_server_refuses_is_halved_to_find_the_bad_item() {
        // 413 for any request of more than one item, a mapping error for item 2, success otherwise.
        let answer: fake::Answer = Arc::new(|_, req| {
            let ids = bulk_ids(&req.body);
            if ids.len() > 1 {
                (413, r#"{"error":{"type":"http_error","reason":"too large"}}"#.into())
            } else if ids == ["2"] {
                (200, format!(r#"{{"errors":true,"items":[{}]}}"#, item(400, "mapper_parsing_exception")))
            } else {
                (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, "")))
            }
        });
        let (url, seen) = fake::serve(answer).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dlq = dir.path().join("dlq.jsonl");
        let mut sink = test_sink(&url, &format!("[dead_letter]\npath = {:?}\n", dlq.display().to_string()));
        let actions = (1..=4).map(|i| Ok(act(&i.to_string(), 10, index(json!({"i": i}))))).collect();
        sink.write_actions(actions, &[]).await.expect("done");
        let singles: Vec<Vec<String>> = seen.lock().expect("lock").iter().map(|r| bulk_ids(&r.body)).filter(|i| i.len() == 1).collect();
        assert_eq!(singles, [["1"], ["2"], ["3"], ["4"]]);
        let letters = std::fs::read_to_string(&dlq).expect("dlq");
        assert_eq!(letters.lines().count(), 1);
        assert!(letters.contains("mapper_parsing_exception") && letters.contains("\"id\":\"2\""), "{letters}");
        assert_eq!(sink.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).get(), 1);
    }

    #[tokio::test]
    async fn partial_update_of_a_missing_document_is_a_dead_letter() {
        // The stored document is not there: the update cannot be completed (its unchanged TOASTed
        // columns are unknown), so it must be set aside with its LSN and the fix, not dropped.
        let answer: fake::Answer = Arc::new(|_, req| {
            if req.path.starts_with("/_mget") {
                (200, r#"{"docs":[{"_index":"t","_id":"7","found":false}]}"#.into())
            } else {
                let items: Vec<String> = bulk_ids(&req.body).iter().map(|_| item(201, "")).collect();
                (200, format!(r#"{{"errors":false,"items":[{}]}}"#, items.join(",")))
            }
        });
        let (url, seen) = fake::serve(answer).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dlq = dir.path().join("dlq.jsonl");
        let mut sink = test_sink(&url, &format!("[dead_letter]\npath = {:?}\n", dlq.display().to_string()));
        sink.write_actions(vec![Ok(act("7", 42, update(json!({"n": 2}), None)))], &[]).await.expect("done");
        assert!(seen.lock().expect("lock").iter().all(|r| !bulk_ids(&r.body).contains(&"7".to_string())), "nothing of id 7 is written");
        let letters = std::fs::read_to_string(&dlq).unwrap_or_default();
        assert_eq!(letters.lines().count(), 1, "one dead letter: {letters}");
        let letter: Value = serde_json::from_str(letters.trim()).expect("json");
        assert_eq!(letter["id"], "7", "{letter}");
        assert_eq!(letter["lsn"], "0/2A", "{letter}");
        assert!(letter["reason"].as_str().is_some_and(|r| r.contains("walcast snapshot") && r.contains("--table")), "{letter}");
        assert_eq!(sink.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).get(), 1);
    }

    #[test]
    fn merge_keeps_raw_values_and_order() {
        let merged =
            merge_objects(br#"{"id":1,"big":"xxx","n":123456789012345678901234567890}"#, br#"{"n":2,"new":[1,2]}"#).expect("merge");
        assert_eq!(String::from_utf8(merged).expect("utf8"), r#"{"id":1,"big":"xxx","n":2,"new":[1,2]}"#);
        let merged = merge_objects(br#"{"n":1.000000000000000000001}"#, br#"{}"#).expect("merge");
        assert_eq!(String::from_utf8(merged).expect("utf8"), r#"{"n":1.000000000000000000001}"#);
        assert!(merge_objects(b"[1]", b"{}").is_err());
    }

    #[test]
    fn coalesce_per_document() {
        let entries = coalesce(
            vec![
                act("1", 10, index(json!({"id": 1, "big": "B", "n": 1}))),
                act("1", 10, update(json!({"id": 1, "n": 2}), None)),
                act("2", 10, update(json!({"n": 5}), None)),
                act("2", 11, update(json!({"m": 6}), None)),
                act("3", 11, index(json!({"id": 3}))),
                act("3", 12, EsOp::Delete),
                act("4", 12, EsOp::Delete),
                act("4", 13, index(json!({"id": 4}))),
                act("5", 13, update(json!({"id": 5, "n": 1}), Some("1"))),
                act("1", 13, EsOp::Delete),
                act("6", 14, EsOp::Delete),
                act("6", 14, update(json!({"n": 1}), None)),
            ],
            |_, r| panic!("{r}"),
        );
        let by_id: HashMap<&str, &Entry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
        assert_eq!(entries.len(), 6);
        // The delete of 1 (a key change to 5) comes after 5 took 1's document as its base.
        assert!(matches!(by_id["1"].state, State::Deleted));
        assert_eq!(by_id["1"].version, 13);
        assert_eq!(doc_of(by_id["5"]), json!({"id": 5, "big": "B", "n": 1}));
        assert!(matches!(by_id["5"].state, State::Doc(_)));
        // Two partial updates of a document not in the batch stay partial, merged, newest version.
        assert!(matches!(&by_id["2"].state, State::Partial { base_id, .. } if base_id == "2"));
        assert_eq!(doc_of(by_id["2"]), json!({"n": 5, "m": 6}));
        assert_eq!(by_id["2"].version, 11);
        assert!(matches!(by_id["3"].state, State::Deleted));
        assert_eq!(doc_of(by_id["4"]), json!({"id": 4}));
        assert!(matches!(by_id["6"].state, State::Skip));
        // Order of first appearance is kept.
        assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6"]);
    }
}
