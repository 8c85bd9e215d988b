//! The dead-letter destination: records that can never be written (too large, topic missing or
//! invalid) go here with their reason, and the stream goes on.

use std::io::Write as _;
use std::path::Path;

use crate::decode::write_json_str;
use crate::lsn::Lsn;
use crate::sink::line_file::{LineFile, LineFileError};

/// One record that could not be written.
#[derive(Debug)]
pub(crate) struct DeadRecord<'a> {
    /// The change's LSN.
    pub lsn: Lsn,
    /// Its transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// Schema of the table.
    pub schema: &'a str,
    /// Table.
    pub table: &'a str,
    /// The record key (JSON), if any.
    pub key: Option<&'a [u8]>,
    /// The record value (the envelope), if any (tombstones have none).
    pub value: Option<&'a [u8]>,
    /// The topic it was meant for.
    pub topic: &'a str,
    /// Why it cannot be written.
    pub reason: &'a str,
}

/// A JSON-lines file of dead letters, fsynced before the batch counts as durable.
pub(crate) struct DeadLetterFile {
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

    /// The file's path (logged with every dead letter).
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Cut off a line torn by a killed run.
    pub async fn repair(&mut self) -> Result<(), LineFileError> {
        self.file.repair().await
    }

    /// Queue one line `{lsn, commit_lsn, schema, table, key, reason, topic}`.
    pub fn push(&mut self, r: &DeadRecord<'_>) {
        let b = &mut self.buf;
        let _ = write!(b, "{{\"lsn\":\"{}\",\"commit_lsn\":\"{}\",\"schema\":", r.lsn, r.commit_lsn);
        write_json_str(b, r.schema);
        b.extend_from_slice(b",\"table\":");
        write_json_str(b, r.table);
        b.extend_from_slice(b",\"key\":");
        match r.key {
            // The key was rendered by walcast as a JSON object.
            Some(k) => b.extend_from_slice(k),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"reason\":");
        write_json_str(b, r.reason);
        b.extend_from_slice(b",\"topic\":");
        write_json_str(b, r.topic);
        b.extend_from_slice(b"}\n");
    }

    /// Write, flush and fsync what was queued (on the blocking pool).
    pub async fn sync(&mut self) -> Result<(), LineFileError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.append(&mut self.buf).await;
        crate::sink::release_output_buf(&mut self.buf);
        result
    }

    /// Drop what was queued (the batch failed and will be written again).
    pub fn discard(&mut self) {
        crate::sink::release_output_buf(&mut self.buf);
    }
}

/// The value of a dead-letter record whose envelope is itself too large: a small JSON document
/// that says what happened.
pub(crate) fn truncated_document(r: &DeadRecord<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b"{\"truncated\":true,\"value_bytes\":");
    let _ = write!(b, "{}", r.value.map_or(0, <[u8]>::len));
    let _ = write!(b, ",\"lsn\":\"{}\",\"commit_lsn\":\"{}\",\"schema\":", r.lsn, r.commit_lsn);
    write_json_str(&mut b, r.schema);
    b.extend_from_slice(b",\"table\":");
    write_json_str(&mut b, r.table);
    b.extend_from_slice(b",\"topic\":");
    write_json_str(&mut b, r.topic);
    b.extend_from_slice(b",\"reason\":");
    write_json_str(&mut b, r.reason);
    b.push(b'}');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>() -> DeadRecord<'a> {
        DeadRecord {
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            schema: "public",
            table: "big",
            key: Some(br#"{"id":1}"#),
            value: Some(b"{\"before\":null}"),
            topic: "walcast.public.big",
            reason: "record too large",
        }
    }

    #[tokio::test]
    async fn file_lines_are_json_with_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        f.push(&record());
        f.sync().await.expect("sync");
        let text = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"lsn": "0/10", "commit_lsn": "0/20", "schema": "public", "table": "big",
                "key": {"id": 1}, "reason": "record too large", "topic": "walcast.public.big"})
        );
    }

    #[tokio::test]
    async fn a_line_torn_by_a_kill_is_cut_before_the_next_dead_letter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.jsonl");
        let mut f = DeadLetterFile::open(&path).expect("open");
        f.push(&record());
        f.sync().await.expect("sync");
        drop(f);
        // Killed in the middle of the next line: whole lines, then partial JSON without newline.
        let whole = std::fs::read(&path).expect("read");
        std::fs::OpenOptions::new().append(true).open(&path).expect("reopen").write_all(&whole[..whole.len() / 2]).expect("torn");
        let mut f = DeadLetterFile::open(&path).expect("open");
        f.push(&record());
        f.sync().await.expect("sync");
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}):\n{text}"));
            assert_eq!(v["lsn"], "0/10");
        }
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn truncated_document_is_json() {
        let v: serde_json::Value = serde_json::from_slice(&truncated_document(&record())).expect("json");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["value_bytes"], 15);
        assert_eq!(v["reason"], "record too large");
    }
}
