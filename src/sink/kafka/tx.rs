//! Transaction metadata: which transaction is open, how many events it produced per table, and
//! when its BEGIN and END records are due (Debezium's `provide.transaction.metadata`).

use crate::decode::Change;
use crate::lsn::Lsn;

use super::envelope::transaction_id;

/// A transaction whose BEGIN was emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OpenTx {
    /// Commit LSN (Begin's `final_lsn`): identifies the transaction in the stream.
    pub commit_lsn: Lsn,
    /// `"<xid>:<commit lsn>"`.
    pub id: String,
    /// Events emitted so far.
    pub events: u64,
    /// `(schema, table, events)` in first-seen order.
    pub collections: Vec<(String, String, u64)>,
}

/// What to emit before a change's events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Boundary {
    /// A transaction that this change shows has ended: emit its END first.
    pub ended: Option<OpenTx>,
    /// Emit a BEGIN for the change's transaction.
    pub begin: bool,
}

/// Follows transaction boundaries through the batches. Cloned at the start of each batch so a
/// failed batch can be written again from the same state.
#[derive(Clone, Debug, Default)]
pub(super) struct TxTracker {
    open: Option<OpenTx>,
}

impl TxTracker {
    /// The open transaction.
    pub fn open(&self) -> Option<&OpenTx> {
        self.open.as_ref()
    }

    /// Continue from a state read back (exactly-once restart).
    pub fn restore(&mut self, open: Option<OpenTx>) {
        self.open = open;
    }

    /// Called for each change before its events are emitted.
    pub fn on_change(&mut self, change: &Change) -> Boundary {
        match &mut self.open {
            // A transaction is resent from its first change after a lost connection: start over.
            Some(o) if o.commit_lsn == change.commit_lsn && change.seq == 0 => {
                o.events = 0;
                o.collections.clear();
                Boundary { ended: None, begin: true }
            }
            Some(o) if o.commit_lsn == change.commit_lsn => Boundary::default(),
            _ => {
                let ended = self.open.replace(OpenTx {
                    commit_lsn: change.commit_lsn,
                    id: transaction_id(change.xid, change.commit_lsn),
                    events: 0,
                    collections: Vec::new(),
                });
                Boundary { ended, begin: true }
            }
        }
    }

    /// Count one event of `schema.table`; returns `(total_order, data_collection_order)`.
    pub fn count_event(&mut self, schema: &str, table: &str) -> (u64, u64) {
        let Some(o) = &mut self.open else { return (0, 0) };
        o.events += 1;
        let per_table = match o.collections.iter_mut().find(|(s, t, _)| s == schema && t == table) {
            Some((_, _, n)) => {
                *n += 1;
                *n
            }
            None => {
                o.collections.push((schema.to_string(), table.to_string(), 1));
                1
            }
        };
        (o.events, per_table)
    }

    /// At the end of a batch: the open transaction has committed when its commit LSN is below the
    /// end LSN of the batch's last commit (a later transaction's commit record comes after it).
    pub fn on_batch_end(&mut self, checkpoint: Option<Lsn>) -> Option<OpenTx> {
        match (&self.open, checkpoint) {
            (Some(o), Some(cp)) if o.commit_lsn < cp => self.open.take(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures;
    use crate::decode::{Op, ReplicaIdentity};

    fn change(commit_lsn: u64, seq: u64) -> Change {
        Change {
            lsn: Lsn(commit_lsn - 10 + seq),
            commit_lsn: Lsn(commit_lsn),
            xid: (commit_lsn / 100) as u32,
            seq,
            ..fixtures::change(
                fixtures::relation("s", "t", ReplicaIdentity::Default, &[]),
                Op::Insert,
                None,
                Some(crate::decode::Tuple::default()),
            )
        }
    }

    #[test]
    fn begin_counts_and_end_at_checkpoint() {
        let mut t = TxTracker::default();
        let b = t.on_change(&change(1000, 0));
        assert!(b.begin && b.ended.is_none());
        assert_eq!(t.count_event("s", "t"), (1, 1));
        assert_eq!(t.on_change(&change(1000, 1)), Boundary::default());
        assert_eq!(t.count_event("s", "u"), (2, 1));
        assert_eq!(t.count_event("s", "t"), (3, 2));
        // The batch ends before the commit: nothing ends.
        assert_eq!(t.on_batch_end(None), None);
        assert_eq!(t.on_batch_end(Some(Lsn(900))), None);
        // The next batch holds only the commit.
        let ended = t.on_batch_end(Some(Lsn(1010))).expect("ended");
        assert_eq!(ended.events, 3);
        assert_eq!(ended.collections, vec![("s".into(), "t".into(), 2), ("s".into(), "u".into(), 1)]);
        assert!(t.open().is_none());
    }

    #[test]
    fn resent_transaction_starts_over_and_a_new_one_ends_the_old() {
        let mut t = TxTracker::default();
        t.on_change(&change(1000, 0));
        t.count_event("s", "t");
        t.on_change(&change(1000, 1));
        t.count_event("s", "t");
        // Connection lost, the transaction comes again from seq 0.
        let b = t.on_change(&change(1000, 0));
        assert!(b.begin && b.ended.is_none());
        assert_eq!(t.count_event("s", "t"), (1, 1));
        // A different transaction without a checkpoint in between: the old one is ended first.
        let b = t.on_change(&change(2000, 0));
        assert!(b.begin);
        assert_eq!(b.ended.map(|o| o.commit_lsn), Some(Lsn(1000)));
    }
}
