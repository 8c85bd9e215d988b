//! The Elasticsearch sink: row changes become document writes through the flat mapping rules
//! (`route::index`), or come ready-built from document rules ([`ElasticsearchSink::write_actions`]);
//! they are coalesced per document, versioned with the commit LSN and sent with `_bulk`.
//! docs/elasticsearch.md describes the guarantees.
//!
//! Per batch: route every change; cut the actions at each index-wide delete (a truncate,
//! `truncate`); per segment, coalesce the actions of each document into one (`coalesce`), turn
//! the remaining partial updates into full documents from the stored ones (`partial`), then
//! `_bulk` until every item is written, stale (a newer version is there) or rejected (`bulk`);
//! rejected items go to the dead-letter destination (`dead_letter`). Failed
//! requests and per-item 429/5xx are retried here with backoff, resending only what failed, and a
//! retry wait ends on shutdown. `write` returns (and the batch counts as durable) only when
//! nothing is left.

mod bulk;
mod check;
mod client;
mod coalesce;
mod dead_letter;
mod document;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing;
mod indexes;
mod partial;
mod truncate;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

pub use check::elasticsearch_findings;
pub use client::{EsClient, EsError};
pub(crate) use document::document_findings;

use self::bulk::{write_item, BulkKind, Item};
use self::coalesce::{coalesce, State};
use self::dead_letter::{DeadLetterDestination, DeadLetterRecord};
use self::document::{DocumentBuilder, WriteActions};
use self::indexes::{IndexSpec, PatternIndexes};
use super::{Batch, Sink, SinkError};
use crate::config::{ElasticsearchSinkConfig, EsRefresh, IndexPattern, RetryConfig};
use crate::decode::Change;
use crate::metrics::{Metrics, SinkLabel};
use crate::retry::Backoff;
use crate::route::index::Routed;
use crate::route::{DocumentRules, EsAction, EsOp, FlatRules, RuleWork};
use crate::source::ConnParams;

const NAME: &str = "elasticsearch";

fn fatal(reason: String) -> SinkError {
    SinkError::Fatal { sink: NAME, reason }
}

/// A 401/403 on a whole request: retrying cannot help, a person must fix the credentials.
fn auth_failure(e: &EsError) -> SinkError {
    fatal(format!("{e}\n  fix: {}", e.auth_fix()))
}

/// A retry wait ended by shutdown: the write stops unfinished and the batch is not durable, so
/// nothing is lost (it is offered again, or streamed again after the restart).
fn interrupted(what: &'static str) -> SinkError {
    SinkError::Interrupted { sink: NAME, what }
}

/// The cluster as every step of a write sees it: the client, the bulk limits and refresh
/// settings, the retry policy with the shutdown that ends its waits, and the metrics.
struct Cluster {
    client: EsClient,
    bulk_max_actions: usize,
    bulk_max_bytes: usize,
    /// `refresh` of the indexes that set their own; the others use `refresh_default`.
    refresh_by_index: HashMap<String, EsRefresh>,
    /// `refresh` of the time-based patterns that set their own, for the names they make.
    refresh_by_pattern: Vec<(IndexPattern, EsRefresh)>,
    refresh_default: EsRefresh,
    retry: RetryConfig,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The `refresh` of bulk writes to `index`.
    fn refresh_of(&self, index: &str) -> EsRefresh {
        match self.refresh_by_index.get(index) {
            Some(r) => *r,
            None => self.refresh_by_pattern.iter().find(|(p, _)| p.matches(index)).map_or(self.refresh_default, |(_, r)| *r),
        }
    }

    /// Wait the backoff before another attempt at `what`, which failed with `error`. On shutdown
    /// the write ends instead ([`interrupted`]).
    async fn wait(&self, backoff: &mut Backoff, what: &'static str, error: &(dyn fmt::Display + Sync)) -> Result<(), SinkError> {
        if backoff.wait(&self.shutdown, what, error).await {
            Ok(())
        } else {
            Err(interrupted(what))
        }
    }

    /// After a failed attempt at `what`: `Ok` (try again) once the backoff is waited when `e` may
    /// pass later, otherwise the error that ends the write: an authentication failure with its
    /// fix, or `permanent(e)`. `started` counts the attempt as a retried sink request.
    async fn retry_after(
        &self,
        backoff: &mut Backoff,
        what: &'static str,
        e: EsError,
        started: Option<Instant>,
        permanent: impl FnOnce(EsError) -> SinkError,
    ) -> Result<(), SinkError> {
        if e.is_auth() {
            return Err(auth_failure(&e));
        }
        if !e.is_retryable() {
            return Err(permanent(e));
        }
        if let Some(started) = started {
            self.metrics.sink_attempt(NAME, "retry", started.elapsed().as_secs_f64());
        }
        self.wait(backoff, what, &e).await
    }
}

/// The Elasticsearch sink. See the module documentation.
pub struct ElasticsearchSink {
    cluster: Cluster,
    rules: FlatRules,
    documents: DocumentRules,
    /// SQL side of the document rules (`None` until [`ElasticsearchSink::with_source`]).
    builder: Option<DocumentBuilder>,
    /// Document work of a transaction the last batch ended inside, rebuilt with its commit.
    deferred: Vec<RuleWork>,
    create_indexes: bool,
    specs: Vec<IndexSpec>,
    indexes_ready: bool,
    patterns: PatternIndexes,
    dead_letters: DeadLetterDestination,
}

impl ElasticsearchSink {
    /// Build the client, read the mapping files and open the dead-letter file. Nothing is sent
    /// until the first write (which creates the missing indexes).
    pub fn open(cfg: &ElasticsearchSinkConfig, retry: &RetryConfig, metrics: Arc<Metrics>) -> Result<Self, SinkError> {
        let client = EsClient::new(cfg).map_err(|e| fatal(e.to_string()))?;
        let specs = indexes::specs(cfg).map_err(fatal)?;
        let patterns = PatternIndexes::new(indexes::pattern_specs(cfg).map_err(fatal)?);
        let dead_letters = DeadLetterDestination::open(cfg)?;
        metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).inc_by(0);
        tracing::info!(url = %client.base(), rules = cfg.tables.len(), document_rules = cfg.documents.len(), gzip = cfg.gzip, refresh = cfg.refresh.as_str(), "elasticsearch sink ready");
        Ok(Self {
            cluster: Cluster {
                client,
                bulk_max_actions: cfg.bulk_max_actions,
                bulk_max_bytes: cfg.bulk_max_bytes,
                refresh_by_index: cfg.indexes.iter().filter_map(|(p, i)| Some((p.fixed()?.to_string(), i.refresh?))).collect(),
                refresh_by_pattern: cfg
                    .indexes
                    .iter()
                    .filter(|(p, _)| p.fixed().is_none())
                    .filter_map(|(p, i)| Some((p.clone(), i.refresh?)))
                    .collect(),
                refresh_default: cfg.refresh,
                retry: retry.clone(),
                shutdown: CancellationToken::new(),
                metrics,
            },
            rules: FlatRules::new(&cfg.tables),
            documents: DocumentRules::new(&cfg.documents),
            builder: None,
            deferred: Vec::new(),
            create_indexes: cfg.create_indexes,
            specs,
            indexes_ready: false,
            patterns,
            dead_letters,
        })
    }

    /// Give the document rules their Postgres connection settings (they read documents with SQL).
    pub fn with_source(mut self, params: ConnParams) -> Self {
        self.builder = Some(DocumentBuilder::new(params, !self.documents.is_empty()));
        self
    }

    /// End every retry wait when `shutdown` is cancelled (the write then fails as retryable,
    /// unfinished). Without it the sink retries until its task is dropped.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.cluster.shutdown = shutdown;
        self
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
        self.patterns.ensure_new(&self.cluster, &routed, self.create_indexes).await?;
        let mut letters = Vec::new();
        let mut segment = Vec::new();
        for r in routed {
            match r {
                Err(rejected) => letters.push(DeadLetterRecord::from_rejected(rejected, changes)),
                Ok(a) if a.op == EsOp::DeleteAll => {
                    self.write_segment(std::mem::take(&mut segment), changes, &mut letters).await?;
                    truncate::delete_all(&self.cluster, &a).await?;
                }
                Ok(a) => segment.push(a),
            }
        }
        self.write_segment(segment, changes, &mut letters).await?;
        self.dead_letters.set_aside(&self.cluster, letters).await
    }

    /// Create the configured indexes that are missing (once), report mapping differences.
    async fn ensure_indexes(&mut self) -> Result<(), SinkError> {
        if !self.indexes_ready {
            indexes::ensure(&self.cluster, &self.specs, self.create_indexes).await?;
            self.indexes_ready = true;
        }
        Ok(())
    }

    /// Coalesce, resolve partial updates, bulk until done; what the cluster rejects joins
    /// `letters`.
    async fn write_segment(
        &self,
        actions: Vec<EsAction>,
        changes: &[Change],
        letters: &mut Vec<DeadLetterRecord>,
    ) -> Result<(), SinkError> {
        if actions.is_empty() {
            return Ok(());
        }
        let mut entries = coalesce(actions, |e, reason| letters.push(DeadLetterRecord::for_entry(e, reason, None, changes)));
        partial::resolve(&self.cluster, &mut entries, changes, letters).await?;

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
            items.push(Item { kind, bytes: start..arena.len(), entry: i, refresh: self.cluster.refresh_of(&e.index) });
        }
        let rejected = bulk::send_until_done(&self.cluster, &arena, &items, "documents").await?;
        for (item, reason) in rejected {
            let e = &entries[items[item].entry];
            let document = match &e.state {
                State::Doc(d) => Some(d.clone()),
                _ => None,
            };
            letters.push(DeadLetterRecord::for_entry(e, reason, document, changes));
        }
        Ok(())
    }

    /// Rebuild the documents the batch affects, rule by rule, after its flat writes.
    async fn write_documents(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.documents.is_empty() {
            return Ok(());
        }
        let (work, later) = self.documents.plan(&batch.changes, batch.checkpoint, batch.snapshot.is_some(), &self.deferred);
        if work.iter().all(|w| w.is_empty()) {
            self.deferred = later;
            return Ok(());
        }
        let Some(mut builder) = self.builder.take() else {
            return Err(fatal("document rules need the source connection (ElasticsearchSink::with_source)".into()));
        };
        let rules: Vec<_> = self.documents.rules().to_vec();
        let exported = batch.snapshot.as_ref().and_then(|s| s.exported.clone());
        let shutdown = self.cluster.shutdown.clone();
        let mut result = Ok(());
        for (rule, work) in rules.iter().zip(&work) {
            if work.is_empty() {
                continue;
            }
            let started = Instant::now();
            let mut out = ChangesWriter { sink: self, changes: &batch.changes };
            let documents = match builder.rebuild(rule, work, exported.as_deref(), &shutdown, &mut out).await {
                Ok(n) => n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            tracing::debug!(rule = %rule.name, documents, version = %work.version, elapsed_ms = started.elapsed().as_millis() as u64, "documents rebuilt");
        }
        self.builder = Some(builder);
        if result.is_ok() {
            self.deferred = later;
        }
        result
    }
}

impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.dead_letters.repair().await?;
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
