//! The one retry layer: exponential backoff with "equal jitter" (half the ceiling fixed, half
//! random), and a wait that ends early on shutdown. Every loop that retries forever uses it. Also
//! `LogThrottle`: one log line per period for the noise a client library makes during an outage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;

/// Delays for successive attempts: the ceiling `initial * 2^attempt`, capped at `max`; a delay is
/// half the ceiling plus a random part up to the other half ("equal jitter"). The random half
/// keeps many walcast processes (or sinks) from retrying in lock-step; the fixed half keeps a
/// retry storm from spinning.
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

    /// Wait the next delay, logging `what` failed with `error` and when the next attempt comes.
    /// Returns `false` at once when `shutdown` is cancelled first: the caller stops retrying.
    pub async fn wait(&mut self, shutdown: &CancellationToken, what: &'static str, error: &(dyn std::fmt::Display + Sync)) -> bool {
        let delay = self.next_delay();
        tracing::warn!(%error, attempt = self.attempt, delay_ms = delay.as_millis() as u64, "{what}, retrying");
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Forget past failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// At most one log line per period for a condition that repeats on its own (a client library
/// reporting each failed connection attempt during an outage): the first one is written, then
/// one per period; the lines in between go to debug level and are counted. Used from client
/// library callbacks on their own threads, hence the lock.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: Duration,
    /// When a line was last admitted, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    /// A throttle admitting one line per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed)`: write this line at its level, with how many were held back since the
    /// last one; `None`: write it at debug level.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a logging call panicked: keep logging.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, held) = &mut *state;
        match *last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
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

    #[test]
    fn throttle_admits_one_line_per_period_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.admit_at(start), Some(0), "the first line is written");
        for s in 1..=59 {
            assert_eq!(t.admit_at(start + Duration::from_secs(s)), None, "{s} s");
        }
        assert_eq!(t.admit_at(start + Duration::from_secs(60)), Some(59), "the next period's line counts the held-back ones");
        assert_eq!(t.admit_at(start + Duration::from_secs(61)), None);
        assert_eq!(t.admit_at(start + Duration::from_secs(200)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ends_on_shutdown_without_sleeping_the_delay() {
        let mut b = Backoff::new(&RetryConfig { initial_ms: 3_600_000, max_ms: 3_600_000 });
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let waiter = {
            let shutdown = shutdown.clone();
            async move { b.wait(&shutdown, "test step failed", &"boom").await }
        };
        let cancel = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            shutdown.cancel();
        };
        let (retry, ()) = tokio::join!(waiter, cancel);
        assert!(!retry, "a cancelled wait says stop");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_then_says_retry() {
        let mut b = Backoff::new(&RetryConfig { initial_ms: 1_000, max_ms: 1_000 });
        let started = tokio::time::Instant::now();
        assert!(b.wait(&CancellationToken::new(), "test step failed", &"boom").await);
        assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
        assert_eq!(b.attempt(), 1);
    }
}
