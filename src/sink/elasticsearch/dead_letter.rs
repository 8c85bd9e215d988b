//! Dead letters: documents the cluster rejects for good (and changes no document can be built
//! from) are set aside with their reason, in a JSON-lines file or an index, and the stream goes on.

use std::io::Write as _;
use std::path::Path;

use crate::decode::write_json_str;
use crate::lsn::Lsn;
use crate::sink::line_file::{LineFile, LineFileError};

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
    file: LineFile,
    buf: Vec<u8>,
}

impl DeadLetterFile {
    /// Open `path` for appending (created when missing, with its directory: the default file
    /// lives in `snapshot.state_dir`, which may not exist yet).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { file: LineFile::open(path)?, buf: Vec::new() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Cut off a line torn by a killed run.
    pub(crate) async fn repair(&mut self) -> Result<(), LineFileError> {
        self.file.repair().await
    }

    /// Append the letters as lines, flush and fsync (on the blocking pool).
    pub(crate) async fn write(&mut self, letters: &[DeadLetter]) -> Result<(), LineFileError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for l in letters {
            l.render(&mut self.buf);
            self.buf.push(b'\n');
        }
        let result = self.file.append(&mut self.buf).await;
        crate::sink::release_output_buf(&mut self.buf);
        result
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

    #[tokio::test]
    async fn file_lines_have_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        let mut second = letter();
        second.key = Vec::new();
        second.document = None;
        f.write(&[letter(), second]).await.expect("write");
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
        f.write(&[letter()]).await.expect("write");
        drop(f);
        // Killed in the middle of the next line: whole lines, then partial JSON without newline.
        let whole = std::fs::read(&path).expect("read");
        std::fs::OpenOptions::new().append(true).open(&path).expect("reopen").write_all(&whole[..whole.len() / 2]).expect("torn");
        let mut f = DeadLetterFile::open(&path).expect("open");
        f.write(&[letter()]).await.expect("write");
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
