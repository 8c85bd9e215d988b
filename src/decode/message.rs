//! A logical decoding message (`pg_logical_emit_message`) as it flows from the stream to the
//! sinks: the message with the transaction context it was read in.

use super::pgoutput::LogicalMessage;
use crate::lsn::Lsn;

/// Prefix of walcast's own heartbeat messages (`[heartbeat]`, message mode): never published as
/// a message event; the Kafka sink turns each into a heartbeat record.
pub const HEARTBEAT_PREFIX: &str = "walcast.heartbeat";

/// One logical decoding message handed to the sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEvent {
    /// The message as decoded (transactional flag, LSN, prefix, content).
    pub message: LogicalMessage,
    /// Its transaction's id; `None` for a non-transactional message.
    pub xid: Option<u32>,
    /// Transactional: its transaction's commit LSN (as [`Change::commit_lsn`](super::Change)).
    /// Non-transactional: the message's own LSN, the position confirmed once it is delivered.
    pub commit_lsn: Lsn,
    /// Transactional: the commit time; non-transactional: when walcast read it (the protocol
    /// carries no time). Microseconds since 2000-01-01 UTC.
    pub ts: i64,
    /// Position inside its transaction, in the numbering its changes share (0 when
    /// non-transactional): with [`commit_lsn`](Self::commit_lsn), where it sits in the stream.
    pub seq: u64,
}

impl MessageEvent {
    /// Where the message sits in the stream, comparable with a change's `(commit_lsn, seq)`:
    /// inside a transaction its commit LSN and number; outside one just before its own LSN
    /// (after every transaction that committed before it, before any that commits after it,
    /// whose commit record may start right where the message ends).
    pub fn position(&self) -> (u64, u64) {
        match self.xid {
            Some(_) => (self.commit_lsn.0, self.seq),
            None => (self.message.lsn.0.saturating_sub(1), u64::MAX),
        }
    }

    /// Whether this is walcast's own heartbeat.
    pub fn is_heartbeat(&self) -> bool {
        self.message.prefix == HEARTBEAT_PREFIX
    }
}

/// Now, in microseconds since 2000-01-01 UTC (Postgres's epoch, like commit times).
pub fn now_pg_micros() -> i64 {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    unix - PG_EPOCH_UNIX_MICROS
}
