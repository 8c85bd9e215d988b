//! Dead letters: documents the cluster rejects for good (and changes no document can be built
//! from) are set aside with their reason, in a JSON-lines file or an index, and the stream goes on.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::decode::write_json_str;
use crate::lsn::Lsn;

/// The mapping of a dead-letter index walcast creates: nothing in it is parsed by the cluster
/// except the keyword fields, so a dead letter cannot itself be rejected.
pub const INDEX_BODY: &str = r#"{"mappings":{"dynamic":false,"properties":{
"lsn":{"type":"keyword"},"commit_lsn":{"type":"keyword"},"table":{"type":"keyword"},
"index":{"type":"keyword"},"id":{"type":"keyword"},"reason":{"type":"text"},
"key":{"type":"object","enabled":false},"document":{"type":"text","index":false}}}}"#;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
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

impl DeadLetter {
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

/// A JSON-lines file of dead letters, fsynced before the batch counts as durable.
pub struct DeadLetterFile {
    path: PathBuf,
    file: File,
}

impl DeadLetterFile {
    /// Open `path` for appending (created when missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append the letters as lines, flush and fsync.
    pub fn write(&mut self, letters: &[DeadLetter]) -> std::io::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(letters.len() * 256);
        for l in letters {
            l.render(&mut buf);
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.flush()?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter {
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

    #[test]
    fn file_lines_have_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        let mut second = letter();
        second.key = Vec::new();
        second.document = None;
        f.write(&[letter(), second]).expect("write");
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

    #[test]
    fn index_body_is_json() {
        let v: serde_json::Value = serde_json::from_str(INDEX_BODY).expect("json");
        assert_eq!(v["mappings"]["dynamic"], false);
    }
}
