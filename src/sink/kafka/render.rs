//! A batch rendered into Kafka records: per change its event (a key change becomes a delete and
//! a create), tombstones after deletes, and the transaction BEGIN/END records; keys and values
//! are written into one arena per batch and enqueued as they are rendered.

use std::ops::Range;
use std::sync::Arc;

use rdkafka::producer::DeliveryFuture;

use super::envelope::{
    now_unix_micros, split_key_change, write_key_with, write_tx_begin, write_tx_end, write_tx_key, write_value_with, Event, EventOp,
    SequenceFirst, SnapshotMarker, TxBlock,
};
use super::schema::RelationSchemas;
use super::tx::OpenTx;
use super::KafkaSink;
use crate::config::SkippedOperation;
use crate::decode::{Change, Datum, DecodeError, OldTupleKind, Op, Relation, ReplicaIdentity, Tuple};
use crate::lsn::Lsn;
use crate::sink::{Batch, ChunkPlace, SinkError};

/// What a record of the batch is, for the dead-letter destination and for logs.
#[derive(Debug, Clone)]
pub(super) struct Rec {
    /// The topic it is meant for.
    pub(super) topic: Arc<str>,
    /// The key in the batch's arena (none for a truncate).
    pub(super) key: Option<Range<usize>>,
    /// The value in the batch's arena (none for a tombstone).
    pub(super) value: Option<Range<usize>>,
    /// The change's LSN (the commit LSN for transaction records).
    pub(super) lsn: Lsn,
    /// Its transaction's commit LSN.
    pub(super) commit_lsn: Lsn,
    /// The change the record comes from (`None` for transaction records).
    pub(super) change: Option<usize>,
}

/// One batch being written: its rendered records, their delivery futures, and what went wrong.
#[derive(Default)]
pub(super) struct BatchWrite {
    /// Rendered keys and values of every record.
    pub(super) arena: Vec<u8>,
    /// The records, in the order they were enqueued.
    pub(super) recs: Vec<Rec>,
    /// Delivery reports still awaited (index in `recs`).
    pub(super) futures: Vec<(usize, DeliveryFuture)>,
    /// Records (index in `recs`) that can never be written, with the reason.
    pub(super) dead: Vec<(usize, String)>,
    /// Why the batch must be written again, if it must.
    pub(super) retry: Option<String>,
    /// Why the producer must be replaced before the batch is written again, if it must.
    pub(super) replace: Option<String>,
}

impl KafkaSink {
    /// Key column indexes of a relation: the configured `key_columns`, or the replica identity key.
    fn key_columns(&mut self, rel: &Arc<Relation>) -> Arc<[usize]> {
        if let Some((cached, cols)) = self.key_cache.get(&rel.oid) {
            if Arc::ptr_eq(cached, rel) {
                return Arc::clone(cols);
            }
        }
        let name = rel.qualified_name();
        let cols: Vec<usize> = match self.key_overrides.get(&name) {
            Some(names) => {
                let found: Option<Vec<usize>> = names.iter().map(|n| rel.columns.iter().position(|c| &c.name == n)).collect();
                match found {
                    Some(cols) => cols,
                    None => {
                        tracing::warn!(table = %name, key_columns = ?names, "configured key_columns are not all columns of the table; using its replica identity key");
                        rel.key_columns().collect()
                    }
                }
            }
            None => {
                // For REPLICA IDENTITY FULL the pipeline flags the primary key; a table without
                // one keeps every column flagged, which makes each row version a new key.
                if rel.replica_identity == ReplicaIdentity::Full && rel.columns.len() > 1 && rel.columns.iter().all(|c| c.key) {
                    tracing::warn!(table = %name, "table has REPLICA IDENTITY FULL and no primary key, so every column is the record key; set sinks.kafka.tables.\"{name}\".key_columns");
                }
                rel.key_columns().collect()
            }
        };
        let cols: Arc<[usize]> = Arc::from(cols);
        self.key_cache.insert(rel.oid, (Arc::clone(rel), Arc::clone(&cols)));
        cols
    }

    /// Render and enqueue every record of `batch` into `p`, with the transaction records around
    /// its changes when a transaction topic is set.
    pub(super) async fn enqueue_all(&mut self, batch: &Batch, p: &mut BatchWrite) -> Result<(), SinkError> {
        // Snapshot rows belong to no transaction: no BEGIN/END records for them.
        let tx_on = self.tx_topic.is_some() && batch.snapshot.is_none();
        for (idx, change) in batch.changes.iter().enumerate() {
            if self.eos.as_ref().is_some_and(|e| e.skips(batch, change)) {
                continue;
            }
            if tx_on {
                let b = self.tx.on_change(change);
                if let Some(ended) = b.ended {
                    self.emit_tx_end(p, &ended).await?;
                }
                if b.begin {
                    self.emit_tx_begin(p, change).await?;
                }
            }
            let marker = batch.snapshot.as_ref().map_or(SnapshotMarker::True, |s| snapshot_marker(s.place, idx, batch.changes.len()));
            self.emit_change(p, idx, change, marker).await?;
        }
        if tx_on {
            if let Some(ended) = self.tx.on_batch_end(batch.checkpoint) {
                self.emit_tx_end(p, &ended).await?;
            }
        }
        self.enqueue_messages(batch, p).await
    }

    async fn emit_tx_begin(&mut self, p: &mut BatchWrite, change: &Change) -> Result<(), SinkError> {
        let (Some(topic), Some(open)) = (self.tx_topic.clone(), self.tx.open()) else { return Ok(()) };
        let id = open.id.clone();
        let wrap = self.tx_schemas.clone();
        let key = append(&mut p.arena, wrap.as_ref().map(|w| &w.key), |b| write_tx_key(b, &id));
        let value = append(&mut p.arena, wrap.as_ref().map(|w| &w.value), |b| write_tx_begin(b, &id, now_unix_micros()));
        let rec = Rec { topic, key: Some(key), value: Some(value), lsn: change.commit_lsn, commit_lsn: change.commit_lsn, change: None };
        self.send(p, rec, None).await
    }

    async fn emit_tx_end(&mut self, p: &mut BatchWrite, ended: &OpenTx) -> Result<(), SinkError> {
        let Some(topic) = self.tx_topic.clone() else { return Ok(()) };
        let wrap = self.tx_schemas.clone();
        let key = append(&mut p.arena, wrap.as_ref().map(|w| &w.key), |b| write_tx_key(b, &ended.id));
        let collections: Vec<(String, u64)> = ended.collections.iter().map(|(s, t, n)| (format!("{s}.{t}"), *n)).collect();
        let value = append(&mut p.arena, wrap.as_ref().map(|w| &w.value), |b| {
            write_tx_end(b, &ended.id, ended.events, collections.iter().map(|(n, c)| (n.as_str(), *c)), now_unix_micros())
        });
        let rec = Rec { topic, key: Some(key), value: Some(value), lsn: ended.commit_lsn, commit_lsn: ended.commit_lsn, change: None };
        self.send(p, rec, None).await
    }

    /// The records of one change: its event (two for a key change), and tombstones after deletes.
    async fn emit_change(&mut self, p: &mut BatchWrite, idx: usize, change: &Change, marker: SnapshotMarker) -> Result<(), SinkError> {
        let skipped = match change.op {
            Op::Insert => Some(SkippedOperation::Create),
            Op::Update => Some(SkippedOperation::Update),
            Op::Delete => Some(SkippedOperation::Delete),
            Op::Truncate => Some(SkippedOperation::Truncate),
            Op::Read => None,
        };
        if skipped.is_some_and(|op| self.cfg.skips(op)) {
            return Ok(());
        }
        let rel = &change.relation;
        let topic = self.router.topic(rel);
        let key_cols = self.key_columns(rel);
        let schemas = self.schemas_of(rel, &key_cols);
        let schemas = schemas.as_ref();
        let render_err = |source: DecodeError| SinkError::Render { lsn: change.lsn, table: rel.qualified_name(), source };
        let rec = |key: Option<Range<usize>>, value: Option<Range<usize>>| Rec {
            topic: Arc::clone(&topic),
            key,
            value,
            lsn: change.lsn,
            commit_lsn: change.commit_lsn,
            change: Some(idx),
        };
        match change.op {
            Op::Update if key_changed(change, &key_cols) => {
                let (delete, create) = split_key_change(change);
                let old_key = self.render_key(&mut p.arena, rel, delete.before, &key_cols, schemas).map_err(render_err)?;
                let new_key = self.render_key(&mut p.arena, rel, create.after, &key_cols, schemas).map_err(render_err)?;
                let value = self.render_event(&mut p.arena, &delete, schemas).map_err(render_err)?;
                let header = new_key.clone().map(|k| ("__debezium.newkey", k));
                self.send(p, rec(old_key.clone(), Some(value)), header).await?;
                if self.cfg.tombstones_on_delete && old_key.is_some() {
                    self.send(p, rec(old_key.clone(), None), None).await?;
                }
                let value = self.render_event(&mut p.arena, &create, schemas).map_err(render_err)?;
                let header = old_key.map(|k| ("__debezium.oldkey", k));
                self.send(p, rec(new_key, Some(value)), header).await
            }
            op => {
                let event = match op {
                    Op::Read => Event::with_op(change, EventOp::Read, marker),
                    _ => Event::streamed(change),
                };
                let key = match op {
                    Op::Truncate => None,
                    _ => self.render_key(&mut p.arena, rel, change.key_source(), &key_cols, schemas).map_err(render_err)?,
                };
                let value = self.render_event(&mut p.arena, &event, schemas).map_err(render_err)?;
                self.send(p, rec(key.clone(), Some(value)), None).await?;
                if op == Op::Delete && self.cfg.tombstones_on_delete && key.is_some() {
                    self.send(p, rec(key, None), None).await?;
                }
                Ok(())
            }
        }
    }

    /// The rendered schemas of a relation description, when Connect schemas are on.
    fn schemas_of(&mut self, rel: &Arc<Relation>, key_cols: &Arc<[usize]>) -> Option<RelationSchemas> {
        let cache = self.schema_cache.as_mut()?;
        let enc = self.encoder.map(|e| e.enc)?;
        Some(cache.get(rel, key_cols, self.cfg.server_name(), &enc))
    }

    /// The record key (`None`: no key), inside `{"schema":...,"payload":...}` with schemas on.
    fn render_key(
        &self,
        arena: &mut Vec<u8>,
        rel: &Relation,
        values: Option<&Tuple>,
        key_cols: &[usize],
        schemas: Option<&RelationSchemas>,
    ) -> Result<Option<Range<usize>>, DecodeError> {
        let start = arena.len();
        if let Some(s) = schemas {
            arena.extend_from_slice(&s.key);
        }
        if !write_key_with(arena, rel, values, key_cols, self.encoder.as_ref())? {
            arena.truncate(start);
            return Ok(None);
        }
        if schemas.is_some() {
            arena.push(b'}');
        }
        Ok(Some(start..arena.len()))
    }

    fn render_event(
        &mut self,
        arena: &mut Vec<u8>,
        event: &Event<'_>,
        schemas: Option<&RelationSchemas>,
    ) -> Result<Range<usize>, DecodeError> {
        let start = arena.len();
        if let Some(s) = schemas {
            arena.extend_from_slice(&s.value);
        }
        let block = if self.tx_topic.is_some() {
            let (total_order, data_collection_order) = self.tx.count_event(&event.change.relation.schema, &event.change.relation.table);
            self.tx.open().map(|o| (o.id.clone(), total_order, data_collection_order))
        } else {
            None
        };
        let tx = block.as_ref().map(|(id, total_order, data_collection_order)| TxBlock {
            id,
            total_order: *total_order,
            data_collection_order: *data_collection_order,
        });
        let seq = if self.previous_commit_sequence && event.change.op != Op::Read {
            let commit = event.change.commit_lsn;
            if self.commits.1 != Some(commit) {
                self.commits = (self.commits.1, Some(commit));
            }
            SequenceFirst::PreviousCommit(self.commits.0)
        } else {
            SequenceFirst::OwnCommit
        };
        write_value_with(arena, event, &self.source, now_unix_micros(), tx, self.encoder.as_ref(), seq)?;
        if schemas.is_some() {
            arena.push(b'}');
        }
        Ok(start..arena.len())
    }
}

/// Whether an update moved the row to another key (then it becomes a delete and a create).
fn key_changed(change: &Change, key_cols: &[usize]) -> bool {
    let (Some(old), Some(new)) = (&change.old, &change.new) else { return false };
    key_cols.iter().any(|&i| {
        // A key-only old tuple carries the replica identity columns only.
        if old.kind == OldTupleKind::Key && !change.relation.columns.get(i).is_some_and(|c| c.key) {
            return false;
        }
        match (old.values.get(i), new.get(i)) {
            (Some(Datum::Unchanged), _) | (_, Some(Datum::Unchanged)) | (None, _) | (_, None) => false,
            (Some(a), Some(b)) => a != b,
        }
    })
}

/// Append what `f` writes, inside `{"schema":...,"payload":...}` when `wrap` is the schema prefix.
pub(super) fn append(arena: &mut Vec<u8>, wrap: Option<&Arc<[u8]>>, f: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = arena.len();
    if let Some(w) = wrap {
        arena.extend_from_slice(w);
    }
    f(arena);
    if wrap.is_some() {
        arena.push(b'}');
    }
    start..arena.len()
}

/// Debezium's `source.snapshot` of row `idx` of a snapshot chunk of `len` rows, by precedence:
/// the snapshot's last row `last`, its first row `first`, a table's last row
/// `last_in_data_collection`, a table's first row `first_in_data_collection`, else `true`. An
/// empty last table leaves the snapshot without a `last` row (as in Debezium).
fn snapshot_marker(place: ChunkPlace, idx: usize, len: usize) -> SnapshotMarker {
    let last_row = place.last_of_table && idx + 1 == len;
    let first_row = place.first_of_table && idx == 0;
    match (last_row, first_row) {
        (true, _) if place.last_table => SnapshotMarker::Last,
        (_, true) if place.first_table => SnapshotMarker::First,
        (true, _) => SnapshotMarker::LastInDataCollection,
        (_, true) => SnapshotMarker::FirstInDataCollection,
        _ => SnapshotMarker::True,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::{self, text};
    use crate::decode::{OldTuple, Tuple};

    fn update(old: Option<OldTuple>, new: Tuple) -> Change {
        let rel = fixtures::relation("s", "t", ReplicaIdentity::Default, &[("id", true, 23), ("v", false, 23)]);
        fixtures::change(rel, Op::Update, old, Some(new))
    }

    #[test]
    fn key_change_is_detected_from_the_old_key() {
        let old = |id: &str, kind| {
            Some(OldTuple { kind, values: Tuple::from_datums([text(id), if kind == OldTupleKind::Key { Datum::Null } else { text("9") }]) })
        };
        assert!(key_changed(&update(old("1", OldTupleKind::Key), Tuple::from_datums([text("2"), text("x")])), &[0]));
        assert!(!key_changed(&update(old("1", OldTupleKind::Full), Tuple::from_datums([text("1"), text("x")])), &[0]));
        assert!(key_changed(&update(old("1", OldTupleKind::Full), Tuple::from_datums([text("3"), text("x")])), &[0]));
        assert!(!key_changed(&update(None, Tuple::from_datums([text("1"), text("x")])), &[0]));
        // A key-only old tuple says nothing about a non-identity column used as key.
        assert!(!key_changed(&update(old("1", OldTupleKind::Key), Tuple::from_datums([text("1"), text("x")])), &[1]));
    }

    #[test]
    fn snapshot_markers_follow_debeziums_precedence() {
        let place =
            |first_of_table, last_of_table, first_table, last_table| ChunkPlace { first_of_table, last_of_table, first_table, last_table };
        let marks = |p: ChunkPlace, len: usize| (0..len).map(|i| snapshot_marker(p, i, len).as_str()).collect::<Vec<_>>();
        // Two tables of three rows, one chunk each.
        assert_eq!(marks(place(true, true, true, false), 3), ["first", "true", "last_in_data_collection"]);
        assert_eq!(marks(place(true, true, false, true), 3), ["first_in_data_collection", "true", "last"]);
        // A table over two chunks: first in the first, last in the second.
        assert_eq!(marks(place(true, false, false, false), 2), ["first_in_data_collection", "true"]);
        assert_eq!(marks(place(false, true, false, false), 2), ["true", "last_in_data_collection"]);
        // One-row tables: first beats last-in-table; last beats first.
        assert_eq!(marks(place(true, true, true, false), 1), ["first"]);
        assert_eq!(marks(place(true, true, true, true), 1), ["last"]);
        assert_eq!(marks(place(true, true, false, false), 1), ["last_in_data_collection"]);
    }
}
