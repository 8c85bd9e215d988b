//! Entry points for the fuzz targets (`fuzz/`, re-exported by the top-level `fuzzing` module):
//! the parsers of what an Elasticsearch cluster answers, used as the sink uses them. Not an API.

use super::bulk::{self, BulkKind};
use super::{coalesce, partial};

/// Parse a `_bulk` answer for `sent` actions and classify every item as the answer to an
/// `index` and to a `delete` (as `bulk::send_until_done` does). Returns the outcomes, two per
/// item, in their `Debug` form; a typed error as its message.
pub fn bulk_answer(body: &[u8], sent: usize) -> Result<Vec<String>, String> {
    let items = bulk::parse_answer(body, sent).map_err(|e| e.to_string())?;
    let mut outcomes = Vec::with_capacity(items.len() * 2);
    for item in &items {
        for kind in [BulkKind::Index, BulkKind::Delete] {
            outcomes.push(format!("{:?}", bulk::classify(kind, item)));
        }
    }
    Ok(outcomes)
}

/// Parse an `_mget` answer for `asked` documents and merge `fields` (a JSON object) into each
/// stored document found, as a partial update is completed. Per document: the merged document,
/// `None` when it was not found or the merge failed (a dead letter in the sink).
pub fn mget_answer(body: &[u8], asked: usize, fields: &[u8]) -> Result<Vec<Option<Vec<u8>>>, String> {
    let docs = partial::parse_answer(body, asked).map_err(|e| e.to_string())?;
    Ok(docs
        .into_iter()
        .map(|doc| match (doc.found, doc.source) {
            (Some(true), Some(source)) => coalesce::merge_objects(source.get().as_bytes(), fields).ok(),
            _ => None,
        })
        .collect())
}
