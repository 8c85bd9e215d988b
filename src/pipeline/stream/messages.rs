//! Logical decoding messages in the streaming loop: where a message goes in the batch, and what
//! of the batch belongs to the open transaction (dropped on a lost connection, read again whole).

use super::Streamer;
use crate::decode::{self, LogicalMessage, MessageEvent};
use crate::pipeline::session::SessionSource;

impl<S: SessionSource> Streamer<'_, S> {
    /// Whether the batch holds changes or messages of the open transaction.
    pub(super) fn has_uncommitted(&self) -> bool {
        self.batch.changes.len() > self.committed_len || self.batch.messages.len() > self.committed_msgs
    }

    /// Drop what the open transaction put in the batch (it is read again whole).
    pub(super) fn drop_uncommitted(&mut self) {
        self.batch.changes.truncate(self.committed_len);
        self.batch.messages.truncate(self.committed_msgs);
    }

    /// A logical decoding message: into the batch when a sink publishes messages. A
    /// transactional one belongs to the open transaction (and is dropped with it); one outside
    /// any transaction is settled on its own: the batch's checkpoint becomes its LSN, confirmed
    /// only once every sink wrote it.
    pub(super) fn on_logical_message(&mut self, message: LogicalMessage) {
        tracing::debug!(prefix = %message.prefix, lsn = %message.lsn, transactional = message.transactional, "logical message");
        if !self.messages {
            return;
        }
        match (message.transactional, self.tx.as_mut()) {
            (true, Some(tx)) => {
                let seq = tx.next_seq;
                tx.next_seq += 1;
                let event = MessageEvent { message, xid: Some(tx.xid), commit_lsn: tx.commit_lsn, ts: tx.commit_ts, seq };
                self.batch_oldest_ts.get_or_insert(event.ts);
                self.batch.messages.push(event);
            }
            (false, None) => {
                let lsn = message.lsn;
                let ts = decode::now_pg_micros();
                self.batch_oldest_ts.get_or_insert(ts);
                self.batch.messages.push(MessageEvent { message, xid: None, commit_lsn: lsn, ts, seq: 0 });
                self.batch.checkpoint = Some(self.batch.checkpoint.map_or(lsn, |c| c.max(lsn)));
                self.committed_len = self.batch.changes.len();
                self.committed_msgs = self.batch.messages.len();
            }
            // pgoutput sends transactional messages inside their transaction and the others
            // between transactions; anything else is not a stream walcast can place.
            (transactional, open) => tracing::warn!(
                prefix = %message.prefix,
                lsn = %message.lsn,
                transactional,
                in_transaction = open.is_some(),
                "logical message out of place in the stream; skipped"
            ),
        }
    }
}
