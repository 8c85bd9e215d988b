//! Dead letters: documents the cluster rejects for good (and changes no document can be built
//! from) are set aside with their reason, in a JSON-lines file or an index, and the stream goes on.

use std::io::Write as _;
use std::sync::Arc;

use super::bulk::{self, write_item, BulkKind, Item};
use super::coalesce::Entry;
use super::{fatal, Cluster, NAME};
use crate::config::ElasticsearchSinkConfig;
use crate::decode::{write_json_str, write_row_object, Change, UnchangedToast};
use crate::lsn::Lsn;
use crate::metrics::SinkLabel;
use crate::route::Rejected;
use crate::sink::line_file::{DeadLetterFile, LineFileError};
use crate::sink::SinkError;

/// The mapping of a dead-letter index walcast creates: nothing in it is parsed by the cluster
/// except the keyword fields, so a dead letter cannot itself be rejected.
pub const INDEX_BODY: &str = r#"{"mappings":{"dynamic":false,"properties":{
"lsn":{"type":"keyword"},"commit_lsn":{"type":"keyword"},"table":{"type":"keyword"},
"index":{"type":"keyword"},"id":{"type":"keyword"},"reason":{"type":"text"},
"key":{"type":"object","enabled":false},"document":{"type":"text","index":false}}}}"#;

/// One dead letter: the record written to the destination.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// LSN of the change.
    pub lsn: Lsn,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// `schema.table`.
    pub table: String,
    /// The replica identity key of the row, as a JSON object (or `null`).
    pub key: Vec<u8>,
    /// The index the document was meant for.
    pub index: String,
    /// The document id (empty when none could be built).
    pub id: String,
    /// Why it was set aside.
    pub reason: String,
    /// The document (JSON), if there was one.
    pub document: Option<Vec<u8>>,
}

impl DeadLetterRecord {
    /// The record of a change a rule could not turn into a write.
    pub(super) fn from_rejected(r: Rejected, changes: &[Change]) -> Self {
        Self {
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

    /// The record of a coalesced write the cluster (or the merge) refused.
    pub(super) fn for_entry(e: &Entry, reason: String, document: Option<Vec<u8>>, changes: &[Change]) -> Self {
        Self {
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

    /// `{lsn, commit_lsn, table, key, index, id, reason, document}` with `document` as a string.
    pub fn render(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "{{\"lsn\":\"{}\",\"commit_lsn\":\"{}\",\"table\":", self.lsn, self.commit_lsn);
        write_json_str(out, &self.table);
        out.extend_from_slice(b",\"key\":");
        if self.key.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.extend_from_slice(&self.key);
        }
        out.extend_from_slice(b",\"index\":");
        write_json_str(out, &self.index);
        out.extend_from_slice(b",\"id\":");
        write_json_str(out, &self.id);
        out.extend_from_slice(b",\"reason\":");
        write_json_str(out, &self.reason);
        out.extend_from_slice(b",\"document\":");
        match &self.document {
            Some(d) => write_json_str(out, &String::from_utf8_lossy(d)),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
}

/// Append the letters to `file` as lines, flush and fsync (on the blocking pool).
pub(crate) async fn write_records(file: &mut DeadLetterFile, letters: &[DeadLetterRecord]) -> Result<(), LineFileError> {
    for l in letters {
        let line = file.queue();
        l.render(line);
        line.push(b'\n');
    }
    file.sync().await
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

/// Where rejected documents go.
pub(super) enum DeadLetterDestination {
    /// Nowhere: a rejected document stops walcast.
    None,
    /// A JSON-lines file.
    File(DeadLetterFile),
    /// An index.
    Index(Arc<str>),
}

impl DeadLetterDestination {
    /// The destination `[sinks.elasticsearch.dead_letter]` names (an index wins over a path).
    pub(super) fn open(cfg: &ElasticsearchSinkConfig) -> Result<Self, SinkError> {
        let Some(d) = &cfg.dead_letter else { return Ok(Self::None) };
        Ok(match (&d.index, &d.path) {
            (Some(index), _) => Self::Index(Arc::from(index.as_str())),
            (None, Some(path)) => Self::File(DeadLetterFile::open(path).map_err(|e| {
                fatal(format!(
                    "cannot open the dead-letter file {} for appending: {e}; check sinks.elasticsearch.dead_letter.path and its permissions",
                    path.display()
                ))
            })?),
            (None, None) => Self::None,
        })
    }

    /// Cut off a line of the dead-letter file torn by a killed run.
    pub(super) async fn repair(&mut self) -> Result<(), SinkError> {
        match self {
            Self::File(file) => file.repair().await.map_err(|e| e.into_sink_error(NAME)),
            Self::None | Self::Index(_) => Ok(()),
        }
    }

    /// Make the dead letters durable here and count them; without a destination, the first one
    /// stops walcast with the fix.
    pub(super) async fn set_aside(&mut self, cluster: &Cluster, letters: Vec<DeadLetterRecord>) -> Result<(), SinkError> {
        if letters.is_empty() {
            return Ok(());
        }
        let destination = match self {
            Self::None => {
                let l = &letters[0];
                return Err(fatal(format!(
                    "a document for index {} (table {}, id {:?}, lsn {}) cannot be written: {}\n  fix: fix the mapping or the data, \
                     or configure [sinks.elasticsearch.dead_letter] (index or path) to set such documents aside and go on",
                    l.index, l.table, l.id, l.lsn, l.reason
                )));
            }
            Self::File(file) => {
                if let Err(e) = write_records(file, &letters).await {
                    tracing::warn!(path = %file.path().display(), error = %e, "cannot write the dead-letter file");
                    return Err(e.into_sink_error(NAME));
                }
                file.path().display().to_string()
            }
            Self::Index(index) => {
                let index = Arc::clone(index);
                let mut arena = Vec::with_capacity(letters.len() * 512);
                let mut items = Vec::with_capacity(letters.len());
                let mut doc = Vec::new();
                let refresh = cluster.refresh_of(&index);
                for (i, l) in letters.iter().enumerate() {
                    doc.clear();
                    l.render(&mut doc);
                    let start = arena.len();
                    write_item(&mut arena, BulkKind::Index, &index, None, None, Some(&doc));
                    items.push(Item { kind: BulkKind::Index, bytes: start..arena.len(), entry: i, refresh });
                }
                let rejected = bulk::send_until_done(cluster, &arena, &items, "dead letters").await?;
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
        cluster.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).inc_by(letters.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetterRecord {
        DeadLetterRecord {
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            table: "public.t".into(),
            key: br#"{"id":1}"#.to_vec(),
            index: "t".into(),
            id: "1".into(),
            reason: "mapper_parsing_exception: failed to parse field [n]".into(),
            document: Some(br#"{"id":1,"n":"x"}"#.to_vec()),
        }
    }

    #[tokio::test]
    async fn file_lines_have_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        let mut second = letter();
        second.key = Vec::new();
        second.document = None;
        write_records(&mut f, &[letter(), second]).await.expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"lsn": "0/10", "commit_lsn": "0/20", "table": "public.t", "key": {"id": 1}, "index": "t", "id": "1",
                "reason": "mapper_parsing_exception: failed to parse field [n]", "document": "{\"id\":1,\"n\":\"x\"}"})
        );
        assert_eq!(lines[1]["key"], serde_json::Value::Null);
        assert_eq!(lines[1]["document"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_line_torn_by_a_kill_is_cut_before_the_next_letter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        write_records(&mut f, &[letter()]).await.expect("write");
        drop(f);
        // Killed in the middle of the next line: whole lines, then partial JSON without newline.
        let whole = std::fs::read(&path).expect("read");
        std::fs::OpenOptions::new().append(true).open(&path).expect("reopen").write_all(&whole[..whole.len() / 2]).expect("torn");
        let mut f = DeadLetterFile::open(&path).expect("open");
        write_records(&mut f, &[letter()]).await.expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}):\n{text}"));
            assert_eq!(v["id"], "1");
        }
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn index_body_is_json() {
        let v: serde_json::Value = serde_json::from_str(INDEX_BODY).expect("json");
        assert_eq!(v["mappings"]["dynamic"], false);
    }
}
