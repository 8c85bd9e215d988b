//! How often the loop hands a batch to idle sinks (`HANDOVER_GAP`).

use std::time::Duration;
use tokio::time::Instant;

/// Least time between two hand-overs to idle sinks. A batch costs each sink a write, an fsync and
/// thread hand-offs whatever its size: single-row transactions would otherwise go out one batch
/// each, and that cost would dominate the CPU per row. After a quiet spell a change goes out at
/// once; under load a batch waits at most this long, well inside the status interval.
pub(super) const HANDOVER_GAP: Duration = Duration::from_millis(20);

/// When the last hand-over to idle sinks was, as far as the gap still matters.
#[derive(Default)]
pub(super) struct Pacing {
    /// Until when a batch for idle sinks waits; `None` once that time has passed.
    until: Option<Instant>,
}

impl Pacing {
    /// Whether a batch for idle sinks should still wait for the gap to pass.
    pub(super) fn waits(&mut self) -> bool {
        match self.until {
            Some(t) if Instant::now() < t => true,
            _ => {
                self.until = None;
                false
            }
        }
    }

    /// A batch was handed over now: the next one waits until the returned time.
    pub(super) fn handed_over(&mut self) -> Instant {
        let next = Instant::now() + HANDOVER_GAP;
        self.until = Some(next);
        next
    }

    /// The gap's timer fired.
    pub(super) fn passed(&mut self) {
        self.until = None;
    }
}
