//! What the Elasticsearch sink is asked to do: one write per document, already fully built.
//! Flat rules ([`super::index`]) produce these from row changes; document rules produce them
//! from rebuilt root documents. The sink coalesces, versions and sends them (docs/elasticsearch.md).

use std::sync::Arc;

use crate::lsn::Lsn;

/// One document write (or an index-wide delete) for the Elasticsearch sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsAction {
    /// Target index.
    pub index: Arc<str>,
    /// Document id (empty for [`EsOp::DeleteAll`]).
    pub id: String,
    /// External version: the commit LSN of the change (or the highest commit LSN of the changes
    /// a rebuilt document reflects). Written with `version_type=external_gte`.
    pub version: u64,
    /// What to do.
    pub op: EsOp,
    /// Where it came from, for the dead-letter destination and logs.
    pub origin: ChangeOrigin,
}

/// The operation of an [`EsAction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsOp {
    /// Replace the whole document with this JSON object.
    Index(Vec<u8>),
    /// Set these fields (a JSON object) on the existing document, keeping its other fields. The
    /// document the fields are merged into is `base_id` (the old id after a key change) or `id`.
    /// The sink turns this into a versioned full write (docs/elasticsearch.md "Partial updates").
    Update {
        /// The fields to set.
        fields: Vec<u8>,
        /// Document to start from when it is not `id` (a key change).
        base_id: Option<String>,
    },
    /// Delete the document.
    Delete,
    /// Delete every document of the index (a TRUNCATE with `truncate = "delete_all"`).
    DeleteAll,
}

impl EsOp {
    /// `index`, `update`, `delete` or `delete_all`, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            EsOp::Index(_) => "index",
            EsOp::Update { .. } => "update",
            EsOp::Delete => "delete",
            EsOp::DeleteAll => "delete_all",
        }
    }
}

/// The change an action comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOrigin {
    /// LSN of the change's WAL record.
    pub lsn: Lsn,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// `schema.table` (or a document rule's name).
    pub table: Arc<str>,
    /// Position of the change in the batch being written, when there is one (its key is then
    /// rendered into the dead-letter record).
    pub change: Option<usize>,
}

/// A change a rule could not turn into a write (no usable id, an invalid value): it goes to the
/// dead-letter destination with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The index it was meant for.
    pub index: Arc<str>,
    /// Where it came from.
    pub origin: ChangeOrigin,
    /// Why it cannot be written.
    pub reason: String,
}
