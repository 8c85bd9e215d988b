//! The one place that decides which LSN is confirmed to Postgres (DESIGN.md contract 1).
//!
//! Strict mode: the confirmed LSN is the minimum over all sinks of the highest commit end LSN each
//! has made durable. When nothing is in flight (no open transaction, every dispatched batch durable
//! everywhere) the server's reported WAL end may be confirmed too, so an idle slot holds no WAL.

use crate::lsn::Lsn;

/// Confirmation state for one pipeline.
#[derive(Debug, Clone)]
pub struct Checkpoint {
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
        Self { durable: vec![start; sinks], dispatched: start, confirmed: start }
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

    /// A batch whose last commit ends at `lsn` was handed to every sink.
    pub fn on_dispatched(&mut self, lsn: Lsn) {
        self.dispatched = self.dispatched.max(lsn);
    }

    /// Sink `sink` made everything up to `lsn` durable. Returns the new confirmed LSN when it moved.
    pub fn on_durable(&mut self, sink: usize, lsn: Lsn) -> Option<Lsn> {
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
        c.on_dispatched(Lsn(200));
        c.on_dispatched(Lsn(300));
        assert_eq!(c.on_durable(0, Lsn(300)), None, "sink 1 has nothing durable yet");
        assert_eq!(c.on_durable(1, Lsn(200)), Some(Lsn(200)));
        assert_eq!(c.on_durable(1, Lsn(300)), Some(Lsn(300)));
        assert_eq!(c.confirmed(), Lsn(300));
    }

    #[test]
    fn never_moves_backwards() {
        let mut c = Checkpoint::new(1, Lsn(500));
        // After a reconnect the server may resend an older transaction.
        c.on_dispatched(Lsn(400));
        assert_eq!(c.on_durable(0, Lsn(400)), None);
        assert_eq!(c.confirmed(), Lsn(500));
    }

    #[test]
    fn idle_confirms_wal_end_only_when_nothing_is_in_flight() {
        let mut c = Checkpoint::new(2, Lsn(100));
        assert_eq!(c.on_idle(Lsn(150), true, false), None, "open transaction");
        assert_eq!(c.on_idle(Lsn(150), false, true), None, "batch not yet dispatched");
        c.on_dispatched(Lsn(200));
        c.on_durable(0, Lsn(200));
        assert_eq!(c.on_idle(Lsn(250), false, false), None, "sink 1 still writing");
        assert_eq!(c.on_durable(1, Lsn(200)), Some(Lsn(200)));
        assert_eq!(c.on_idle(Lsn(250), false, false), Some(Lsn(250)));
        assert_eq!(c.on_idle(Lsn(240), false, false), None);
        assert_eq!(c.confirmed(), Lsn(250));
    }
}
