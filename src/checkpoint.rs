//! The one place that decides which LSN is confirmed to Postgres (the ack rule).
//!
//! The confirmed LSN is the minimum over the fan-out's sinks of the highest commit end LSN each
//! has made durable. With the change log on, the log is one of them: in strict mode beside every
//! sink, in decoupled mode alone (the sinks follow the log, each with a `Checkpoint` of its own
//! for its lag). When nothing is in flight (no open transaction, every dispatched batch durable
//! everywhere) the server's reported WAL end may be confirmed too, so an idle slot holds no WAL.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// A dispatched batch a sink has not yet made durable: the commit end LSN that settles it (filled
/// in later for a batch that ends inside a transaction) and the commit time of its oldest change.
#[derive(Debug, Clone, Copy)]
struct OwedBatch {
    settled_by: Option<Lsn>,
    commit_ts: i64,
}

/// Confirmation state for one pipeline.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Per sink, batches handed over and not yet durable there (for lag in seconds).
    pending: Vec<VecDeque<OwedBatch>>,
    /// Highest commit end LSN each sink made durable.
    durable: Vec<Lsn>,
    /// Highest commit end LSN handed to the sinks.
    dispatched: Lsn,
    /// What walcast has told (or will tell) Postgres. Never moves backwards.
    confirmed: Lsn,
}

impl Checkpoint {
    /// State for `sinks` sinks resuming at `start` (the slot's confirmed_flush_lsn: everything at
    /// or below it was durable before this process started).
    pub fn new(sinks: usize, start: Lsn) -> Self {
        Self { pending: vec![VecDeque::new(); sinks], durable: vec![start; sinks], dispatched: start, confirmed: start }
    }

    /// The position to report as flushed.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Highest commit end LSN handed to the sinks.
    pub fn dispatched(&self) -> Lsn {
        self.dispatched
    }

    /// Highest durable LSN of one sink.
    pub fn durable(&self, sink: usize) -> Lsn {
        self.durable.get(sink).copied().unwrap_or_default()
    }

    /// A batch was handed to every sink: `checkpoint` is the end LSN of its last commit (`None`
    /// when it ends inside a transaction), `oldest_commit_ts` the commit time of its oldest change
    /// (`None` for an empty batch).
    pub fn on_dispatched(&mut self, checkpoint: Option<Lsn>, oldest_commit_ts: Option<i64>) {
        if let Some(lsn) = checkpoint {
            self.dispatched = self.dispatched.max(lsn);
        }
        for queue in &mut self.pending {
            // Earlier batches of the transaction that commits here are settled by its commit.
            if let Some(lsn) = checkpoint {
                for p in queue.iter_mut().rev().take_while(|p| p.settled_by.is_none()) {
                    p.settled_by = Some(lsn);
                }
            }
            if let Some(commit_ts) = oldest_commit_ts {
                queue.push_back(OwedBatch { settled_by: checkpoint, commit_ts });
            }
        }
    }

    /// Commit time of the oldest change handed to `sink` and not yet durable there.
    pub fn oldest_pending(&self, sink: usize) -> Option<i64> {
        self.pending.get(sink)?.front().map(|p| p.commit_ts)
    }

    /// Commit time of the oldest change handed over and not yet durable in every sink.
    pub fn oldest_pending_any(&self) -> Option<i64> {
        (0..self.pending.len()).filter_map(|s| self.oldest_pending(s)).min()
    }

    /// Number of sinks.
    pub fn sinks(&self) -> usize {
        self.durable.len()
    }

    /// Sink `sink` made everything up to `lsn` durable. Returns the new confirmed LSN when it moved.
    pub fn on_durable(&mut self, sink: usize, lsn: Lsn) -> Option<Lsn> {
        if let Some(queue) = self.pending.get_mut(sink) {
            while queue.front().is_some_and(|p| p.settled_by.is_some_and(|l| l <= lsn)) {
                queue.pop_front();
            }
        }
        let slot = self.durable.get_mut(sink)?;
        *slot = (*slot).max(lsn);
        let min = self.durable.iter().copied().min().unwrap_or(lsn);
        self.advance(min)
    }

    /// Whether every dispatched transaction is durable in every sink.
    pub fn all_durable(&self) -> bool {
        self.durable.iter().all(|d| *d >= self.dispatched)
    }

    /// The server says it has sent everything up to `wal_end`. If no transaction is open on the
    /// stream, no batch is waiting to be dispatched and every sink caught up, nothing at or below
    /// `wal_end` is owed to any sink, so it may be confirmed. Returns the new confirmed LSN when it
    /// moved.
    pub fn on_idle(&mut self, wal_end: Lsn, in_transaction: bool, undispatched: bool) -> Option<Lsn> {
        if in_transaction || undispatched || !self.all_durable() {
            return None;
        }
        self.advance(wal_end)
    }

    fn advance(&mut self, lsn: Lsn) -> Option<Lsn> {
        (lsn > self.confirmed).then(|| {
            self.confirmed = lsn;
            lsn
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_the_minimum_over_sinks() {
        let mut c = Checkpoint::new(2, Lsn(100));
        c.on_dispatched(Some(Lsn(200)), Some(1));
        c.on_dispatched(Some(Lsn(300)), Some(2));
        assert_eq!(c.on_durable(0, Lsn(300)), None, "sink 1 has nothing durable yet");
        assert_eq!(c.on_durable(1, Lsn(200)), Some(Lsn(200)));
        assert_eq!(c.on_durable(1, Lsn(300)), Some(Lsn(300)));
        assert_eq!(c.confirmed(), Lsn(300));
    }

    #[test]
    fn never_moves_backwards() {
        let mut c = Checkpoint::new(1, Lsn(500));
        // After a reconnect the server may resend an older transaction.
        c.on_dispatched(Some(Lsn(400)), Some(1));
        assert_eq!(c.on_durable(0, Lsn(400)), None);
        assert_eq!(c.confirmed(), Lsn(500));
    }

    #[test]
    fn idle_confirms_wal_end_only_when_nothing_is_in_flight() {
        let mut c = Checkpoint::new(2, Lsn(100));
        assert_eq!(c.on_idle(Lsn(150), true, false), None, "open transaction");
        assert_eq!(c.on_idle(Lsn(150), false, true), None, "batch not yet dispatched");
        c.on_dispatched(Some(Lsn(200)), Some(1));
        c.on_durable(0, Lsn(200));
        assert_eq!(c.on_idle(Lsn(250), false, false), None, "sink 1 still writing");
        assert_eq!(c.on_durable(1, Lsn(200)), Some(Lsn(200)));
        assert_eq!(c.on_idle(Lsn(250), false, false), Some(Lsn(250)));
        assert_eq!(c.on_idle(Lsn(240), false, false), None);
        assert_eq!(c.confirmed(), Lsn(250));
    }

    #[test]
    fn pending_commit_times_follow_durability_per_sink() {
        let mut c = Checkpoint::new(2, Lsn(100));
        assert_eq!(c.oldest_pending_any(), None);
        // A large transaction (commit time 10) split over two batches, then one more (time 20).
        c.on_dispatched(None, Some(10));
        c.on_dispatched(Some(Lsn(200)), Some(10));
        c.on_dispatched(Some(Lsn(300)), Some(20));
        assert_eq!(c.oldest_pending(0), Some(10));
        c.on_durable(0, Lsn(200));
        assert_eq!(c.oldest_pending(0), Some(20), "both batches of the first transaction settled");
        assert_eq!(c.oldest_pending_any(), Some(10), "sink 1 still owes them");
        c.on_durable(1, Lsn(300));
        c.on_durable(0, Lsn(300));
        assert_eq!(c.oldest_pending_any(), None);
    }
}
