//! Exponential backoff with full jitter, shared by every component that retries forever.

use std::time::Duration;

use crate::config::RetryConfig;

/// Delays for successive attempts: a random duration up to `initial * 2^attempt`, capped at `max`.
/// Jitter keeps many walcast processes (or sinks) from retrying in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A policy from the `[retry]` config section.
    pub fn new(cfg: &RetryConfig) -> Self {
        Self { initial: Duration::from_millis(cfg.initial_ms), max: Duration::from_millis(cfg.max_ms), attempt: 0 }
    }

    /// Attempts made since the last [`reset`](Self::reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // At least half the ceiling so a retry storm still spreads out but never spins.
        let half = ceiling / 2;
        half + Duration::from_micros(fastrand::u64(0..=half.as_micros() as u64))
    }

    /// Forget past failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut b = Backoff::new(&RetryConfig { initial_ms: 100, max_ms: 1_000 });
        let d0 = b.next_delay();
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(1_000), "{d:?}");
            assert!(d >= Duration::from_millis(50), "{d:?}");
        }
        assert!(b.attempt() > 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
