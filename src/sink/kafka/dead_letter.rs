//! The dead-letter destination: records that can never be written (too large, topic missing or
//! invalid) go to a topic or a JSON-lines file with their reason, and the stream goes on; with
//! no destination configured such a record stops walcast.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::client::{classify, Failure};
use super::render::BatchWrite;
use super::{fatal_err, transient, KafkaSink, HEADER_COMMIT_LSN, HEADER_LSN, HEADER_REASON, HEADER_TOPIC, NAME};
use crate::decode::write_json_str;
use crate::lsn::Lsn;
use crate::sink::line_file::DeadLetterFile;
use crate::sink::{Batch, SinkError};

/// Where records that can never be written go.
pub(super) enum DeadLetterDestination {
    /// Nowhere: such a record stops walcast.
    None,
    /// A topic.
    Topic(Arc<str>),
    /// A JSON-lines file.
    File(DeadLetterFile),
}

impl KafkaSink {
    /// The dead-letter topic, when dead letters go to one (it is ensured like the batch's topics).
    pub(super) fn dead_letter_topic(&self) -> Option<Arc<str>> {
        match &self.dead_letter {
            DeadLetterDestination::Topic(t) => Some(Arc::clone(t)),
            _ => None,
        }
    }

    /// Set aside the records that can never be written; they count as durable once the
    /// dead-letter destination has them.
    pub(super) async fn dead_letter_all(&mut self, p: &BatchWrite, batch: &Batch) -> Result<(), SinkError> {
        if p.dead.is_empty() {
            return Ok(());
        }
        let records: Vec<(DeadLetterRecord<'_>, &str)> = p
            .dead
            .iter()
            .map(|(index, reason)| {
                let rec = &p.recs[*index];
                let (schema, table) = match rec.change.and_then(|i| batch.changes.get(i)) {
                    Some(c) => (c.relation.schema.as_str(), c.relation.table.as_str()),
                    None => ("", ""),
                };
                let dead = DeadLetterRecord {
                    lsn: rec.lsn,
                    commit_lsn: rec.commit_lsn,
                    schema,
                    table,
                    key: rec.key.clone().map(|r| &p.arena[r]),
                    value: rec.value.clone().map(|r| &p.arena[r]),
                    topic: &rec.topic,
                    reason,
                };
                (dead, reason.as_str())
            })
            .collect();
        let destination = match &mut self.dead_letter {
            DeadLetterDestination::None => {
                let (first, reason) = &records[0];
                return Err(fatal_err(format!(
                    "a record for topic {} (lsn {}) can never be written: {reason}; fix the cause, or configure \
                     [sinks.kafka.dead_letter] (topic or path) to set such records aside and go on",
                    first.topic, first.lsn
                )));
            }
            DeadLetterDestination::File(file) => {
                for (r, _) in &records {
                    r.queue_in(file);
                }
                file.sync().await.map_err(|e| e.into_sink_error(NAME))?;
                file.path().display().to_string()
            }
            DeadLetterDestination::Topic(topic) => {
                let topic = Arc::clone(topic);
                self.dead_letter_to_topic(&topic, &records).await?;
                format!("topic {topic}")
            }
        };
        for (r, reason) in &records {
            tracing::warn!(topic = %r.topic, lsn = %r.lsn, commit_lsn = %r.commit_lsn, table = %format!("{}.{}", r.schema, r.table), reason, destination = %destination, "record sent to the dead-letter destination");
        }
        self.dead_letters.fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some(metric) = &self.dead_letter_metric {
            metric.inc_by(records.len() as u64);
        }
        Ok(())
    }

    async fn dead_letter_to_topic(&mut self, topic: &str, records: &[(DeadLetterRecord<'_>, &str)]) -> Result<(), SinkError> {
        for (r, reason) in records {
            let mut truncated = false;
            loop {
                let doc;
                let value: Option<&[u8]> = if truncated {
                    doc = truncated_document(r);
                    Some(&doc)
                } else {
                    r.value
                };
                let lsn = r.lsn.to_string();
                let commit_lsn = r.commit_lsn.to_string();
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header { key: HEADER_LSN, value: Some(lsn.as_str()) })
                    .insert(Header { key: HEADER_COMMIT_LSN, value: Some(commit_lsn.as_str()) })
                    .insert(Header { key: HEADER_REASON, value: Some(*reason) })
                    .insert(Header { key: HEADER_TOPIC, value: Some(r.topic) });
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
                if let Some(k) = r.key {
                    record = record.key(k);
                }
                if let Some(v) = value {
                    record = record.payload(v);
                }
                let result = match self.producer.send_result(record) {
                    Ok(future) => match future.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(Some(e)),
                        Err(_) => Err(None),
                    },
                    Err((e, _)) => Err(Some(e)),
                };
                match result {
                    Ok(()) => break,
                    Err(None) => return Err(transient("the producer was closed".into())),
                    Err(Some(e)) => match classify(&e, self.cfg.create_topics, topic, self.cfg.message_max_bytes) {
                        Failure::DeadLetter(_) if !truncated && e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                            truncated = true;
                        }
                        Failure::DeadLetter(why) => {
                            return Err(fatal_err(format!(
                                "the dead-letter topic {topic} cannot take a record: {why}; fix sinks.kafka.dead_letter"
                            )))
                        }
                        Failure::Fatal(why) => return Err(fatal_err(why)),
                        Failure::Replace(why) => {
                            self.replace_producer(&why).await?;
                            return Err(transient(format!("dead-letter topic {topic}: {why}; the producer was replaced")));
                        }
                        Failure::Retry(why) => return Err(transient(format!("dead-letter topic {topic}: {why}"))),
                    },
                }
            }
        }
        Ok(())
    }
}

/// One record that could not be written, as the dead-letter destination gets it.
#[derive(Debug)]
pub(crate) struct DeadLetterRecord<'a> {
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

impl DeadLetterRecord<'_> {
    /// Queue its line in `file`: `{lsn, commit_lsn, schema, table, key, reason, topic}`.
    pub(crate) fn queue_in(&self, file: &mut DeadLetterFile) {
        let (r, b) = (self, file.queue());
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
}

/// The value of a dead-letter record whose envelope is itself too large: a small JSON document
/// that says what happened.
pub(crate) fn truncated_document(r: &DeadLetterRecord<'_>) -> Vec<u8> {
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

    fn record<'a>() -> DeadLetterRecord<'a> {
        DeadLetterRecord {
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
        record().queue_in(&mut f);
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
        record().queue_in(&mut f);
        f.sync().await.expect("sync");
        drop(f);
        // Killed in the middle of the next line: whole lines, then partial JSON without newline.
        let whole = std::fs::read(&path).expect("read");
        std::fs::OpenOptions::new().append(true).open(&path).expect("reopen").write_all(&whole[..whole.len() / 2]).expect("torn");
        let mut f = DeadLetterFile::open(&path).expect("open");
        record().queue_in(&mut f);
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
