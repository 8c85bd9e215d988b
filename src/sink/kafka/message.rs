//! Logical decoding messages and heartbeats as records (docs/kafka.md "Messages" and
//! "Heartbeats"): a published `pg_logical_emit_message` becomes Debezium's `op: "m"` event on
//! `<prefix>.message`, keyed by its prefix; each walcast heartbeat becomes a record on
//! `<heartbeat_topic_prefix>.<prefix>` keyed by the server name. With `schemas = true` each is
//! wrapped in the Connect schema Debezium names.

use std::io::Write as _;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::envelope::{now_unix_micros, pg_micros_to_unix_micros, SourceStatic, CONNECTOR};
use super::render::{append, BatchWrite, Rec};
use super::schema::{prefix_of, source_schema};
use super::KafkaSink;
use crate::decode::{write_json_str, MessageEvent};
use crate::lsn::Lsn;
use crate::sink::{Batch, SinkError};

/// Schema name of a message event's key.
const MESSAGE_KEY_NAME: &str = "io.debezium.connector.postgresql.MessageKey";
/// Schema name of a message event's value.
const MESSAGE_VALUE_NAME: &str = "io.debezium.connector.postgresql.MessageValue";
/// Schema name of the value's `message` block.
const MESSAGE_BLOCK_NAME: &str = "io.debezium.connector.postgresql.Message";
/// Schema name of a heartbeat record's key.
const HEARTBEAT_KEY_NAME: &str = "io.debezium.connector.common.ServerNameKey";
/// Schema name of a heartbeat record's value.
const HEARTBEAT_VALUE_NAME: &str = "io.debezium.connector.common.Heartbeat";

/// What the sink does with messages and heartbeats: topics and schema prefixes, set at open.
pub(super) struct MessageRecords {
    /// `<prefix>.message`.
    topic: Arc<str>,
    /// `<heartbeat_topic_prefix>.<prefix>`, when heartbeat records are on.
    heartbeat_topic: Option<Arc<str>>,
    /// Schemas on: the `{"schema":...,"payload":` prefixes of (message key, message value,
    /// heartbeat key, heartbeat value).
    schemas: Option<[Arc<[u8]>; 4]>,
}

impl MessageRecords {
    /// Topics and schemas for `cfg` (heartbeat records are turned on by the pipeline).
    pub(super) fn new(cfg: &crate::config::KafkaSinkConfig) -> Self {
        Self {
            topic: Arc::from(cfg.message_topic().as_str()),
            heartbeat_topic: None,
            schemas: cfg.schemas.then(|| {
                [
                    prefix_of(&message_key_schema()),
                    prefix_of(&message_value_schema()),
                    prefix_of(&heartbeat_key_schema()),
                    prefix_of(&heartbeat_value_schema()),
                ]
            }),
        }
    }
}

impl KafkaSink {
    /// Write a heartbeat record for each walcast heartbeat (`[heartbeat]` on in message mode
    /// and `heartbeat_records`): the pipeline decides, as it knows the heartbeat's settings.
    pub fn with_heartbeats(mut self, on: bool) -> Self {
        self.messages.heartbeat_topic = on.then(|| Arc::from(self.cfg.heartbeat_topic().as_str()));
        self
    }

    /// The message and heartbeat topics `batch` writes to.
    pub(super) fn message_topics(&self, batch: &Batch) -> Vec<Arc<str>> {
        let mut topics = Vec::new();
        if let Some(hb) = &self.messages.heartbeat_topic {
            if batch.messages.iter().any(MessageEvent::is_heartbeat) {
                topics.push(Arc::clone(hb));
            }
        }
        if batch.messages.iter().any(|m| !m.is_heartbeat() && self.cfg.publishes_message(&m.message.prefix)) {
            topics.push(Arc::clone(&self.messages.topic));
        }
        topics
    }

    /// Render and enqueue the records of `batch`'s messages: heartbeats, then published
    /// messages, in stream order (a different topic each, so no order with the changes).
    pub(super) async fn enqueue_messages(&mut self, batch: &Batch, p: &mut BatchWrite) -> Result<(), SinkError> {
        for m in &batch.messages {
            if self.eos.as_ref().is_some_and(|e| e.skips_message(m)) {
                continue;
            }
            let lsn = m.message.lsn;
            let (topic, key, value) = if m.is_heartbeat() {
                let Some(topic) = self.messages.heartbeat_topic.clone() else { continue };
                let s = self.messages.schemas.clone();
                let key = append(&mut p.arena, s.as_ref().map(|s| &s[2]), |b| write_heartbeat_key(b, &self.source.name));
                let value = append(&mut p.arena, s.as_ref().map(|s| &s[3]), |b| write_heartbeat_value(b, now_unix_micros()));
                (topic, key, value)
            } else if self.cfg.publishes_message(&m.message.prefix) {
                let s = self.messages.schemas.clone();
                let key = append(&mut p.arena, s.as_ref().map(|s| &s[0]), |b| write_message_key(b, &m.message.prefix));
                let value = append(&mut p.arena, s.as_ref().map(|s| &s[1]), |b| write_message_value(b, m, &self.source, now_unix_micros()));
                (Arc::clone(&self.messages.topic), key, value)
            } else {
                continue;
            };
            let rec = Rec { topic, key: Some(key), value: Some(value), lsn, commit_lsn: m.commit_lsn, change: None };
            self.send(p, rec, None).await?;
        }
        Ok(())
    }
}

/// Key of a message event: `{"prefix":"..."}`.
pub fn write_message_key(out: &mut Vec<u8>, prefix: &str) {
    out.extend_from_slice(b"{\"prefix\":");
    write_json_str(out, prefix);
    out.push(b'}');
}

/// Value of a message event: `op` `m`, `ts_ms` (when walcast made the record), `source` (no
/// table: `schema` and `table` empty; `txId` null for a non-transactional message) and
/// `message` with the content as base64 (Connect bytes). `processed_us`: microseconds since 1970.
pub fn write_message_value(out: &mut Vec<u8>, m: &MessageEvent, source: &SourceStatic, processed_us: i64) {
    let ts_us = pg_micros_to_unix_micros(m.ts);
    let lsn = m.message.lsn;
    let _ = write!(out, "{{\"op\":\"m\",\"ts_ms\":{},\"source\":{{\"version\":", processed_us.div_euclid(1000));
    write_json_str(out, &source.version);
    let _ = write!(out, ",\"connector\":\"{CONNECTOR}\",\"name\":");
    write_json_str(out, &source.name);
    let _ = write!(out, ",\"ts_ms\":{},\"snapshot\":\"false\",\"db\":", ts_us.div_euclid(1000));
    write_json_str(out, &source.db);
    // As for changes: a string holding a JSON array of two decimal LSN strings.
    let _ = write!(
        out,
        ",\"sequence\":\"[\\\"{}\\\",\\\"{}\\\"]\",\"ts_us\":{ts_us},\"ts_ns\":{},\"schema\":\"\",\"table\":\"\",\"txId\":",
        m.commit_lsn.0,
        lsn.0,
        ts_us.saturating_mul(1000)
    );
    match m.xid {
        Some(xid) => {
            let _ = write!(out, "{xid}");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"lsn\":{},\"xmin\":null,\"change_id\":", lsn.0);
    write_json_str(out, &message_id(m));
    out.extend_from_slice(b"},\"message\":{\"prefix\":");
    write_json_str(out, &m.message.prefix);
    out.extend_from_slice(b",\"content\":\"");
    out.extend_from_slice(BASE64.encode(&m.message.content).as_bytes());
    out.extend_from_slice(b"\"}}");
}

/// `source.change_id` of a message: `<commit LSN>:<seq>` inside a transaction (numbered with
/// its changes), `<LSN>:m` outside one.
fn message_id(m: &MessageEvent) -> String {
    match m.xid {
        Some(_) => format!("{}:{}", m.commit_lsn, m.seq),
        None => format!("{}:m", Lsn(m.message.lsn.0)),
    }
}

/// Key of a heartbeat record: `{"serverName":"..."}`.
pub fn write_heartbeat_key(out: &mut Vec<u8>, server_name: &str) {
    out.extend_from_slice(b"{\"serverName\":");
    write_json_str(out, server_name);
    out.push(b'}');
}

/// Value of a heartbeat record: `{"ts_ms":...}`, when walcast made it.
pub fn write_heartbeat_value(out: &mut Vec<u8>, processed_us: i64) {
    let _ = write!(out, "{{\"ts_ms\":{}}}", processed_us.div_euclid(1000));
}

fn message_key_schema() -> Value {
    json!({"type": "struct", "fields": [{"type": "string", "optional": true, "field": "prefix"}], "optional": false,
           "name": MESSAGE_KEY_NAME, "version": 1})
}

fn message_value_schema() -> Value {
    json!({"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"},
        source_schema(),
        {"type": "struct", "fields": [
            {"type": "string", "optional": true, "field": "prefix"},
            {"type": "bytes", "optional": true, "field": "content"}],
         "optional": false, "name": MESSAGE_BLOCK_NAME, "version": 1, "field": "message"}],
        "optional": false, "name": MESSAGE_VALUE_NAME, "version": 1})
}

fn heartbeat_key_schema() -> Value {
    json!({"type": "struct", "fields": [{"type": "string", "optional": false, "field": "serverName"}], "optional": false,
           "name": HEARTBEAT_KEY_NAME, "version": 1})
}

fn heartbeat_value_schema() -> Value {
    json!({"type": "struct", "fields": [{"type": "int64", "optional": false, "field": "ts_ms"}], "optional": false,
           "name": HEARTBEAT_VALUE_NAME, "version": 1})
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::LogicalMessage;

    fn event(transactional: bool) -> MessageEvent {
        let message =
            LogicalMessage { transactional, lsn: Lsn(0x200), prefix: "audit \"x\"".into(), content: Bytes::from_static(b"a\0\xff") };
        let xid = transactional.then_some(7);
        let commit_lsn = if transactional { Lsn(0x300) } else { Lsn(0x200) };
        MessageEvent { message, xid, commit_lsn, ts: 1_000_000, seq: 2 }
    }

    fn source() -> SourceStatic {
        SourceStatic { version: "1.0".into(), name: "srv".into(), db: "app".into() }
    }

    fn parse(f: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = Vec::new();
        f(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn message_records_are_debeziums() {
        assert_eq!(parse(|b| write_message_key(b, "audit \"x\"")), json!({"prefix": "audit \"x\""}));
        let v = parse(|b| write_message_value(b, &event(true), &source(), 1_700_000_000_123_456));
        assert_eq!(v["op"], "m");
        assert_eq!(v["ts_ms"], 1_700_000_000_123i64);
        assert_eq!(v["message"], json!({"prefix": "audit \"x\"", "content": "YQD/"}));
        let s = &v["source"];
        assert_eq!((s["txId"].as_i64(), s["lsn"].as_i64(), s["table"].as_str()), (Some(7), Some(0x200), Some("")));
        assert_eq!(s["ts_ms"], 946_684_801_000i64, "the commit time");
        assert_eq!((s["sequence"].as_str(), s["change_id"].as_str()), (Some("[\"768\",\"512\"]"), Some("0/300:2")));
        let v = parse(|b| write_message_value(b, &event(false), &source(), 0));
        assert!(v["source"]["txId"].is_null(), "a message outside a transaction has no txId");
        assert_eq!(v["source"]["change_id"], "0/200:m");
        // Every field of the value is in its schema, in order.
        let schema = message_value_schema();
        let fields: Vec<&str> = schema["fields"].as_array().expect("fields").iter().filter_map(|f| f["field"].as_str()).collect();
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        let mut sorted_fields = fields.clone();
        sorted_fields.sort_unstable();
        assert_eq!(keys, sorted_fields);
    }

    #[test]
    fn heartbeat_records_are_debeziums() {
        assert_eq!(parse(|b| write_heartbeat_key(b, "srv")), json!({"serverName": "srv"}));
        assert_eq!(parse(|b| write_heartbeat_value(b, 1_700_000_000_123_456)), json!({"ts_ms": 1_700_000_000_123i64}));
        assert_eq!(heartbeat_key_schema()["name"], HEARTBEAT_KEY_NAME);
        assert_eq!(heartbeat_value_schema()["fields"][0]["field"], "ts_ms");
    }
}
