//! High-availability lease: a Postgres session-level advisory lock, so that of several walcast
//! processes configured with the same slot exactly one streams and the others wait.
//!
//! - The key is a stable 64-bit FNV-1a hash of `walcast:<database>:<slot>` ([`lease_key`]), the
//!   same in every build and process (Rust's `DefaultHasher` is seeded per process).
//! - A standby asks `pg_try_advisory_lock(key)` every `ha.poll_ms` on an ordinary SQL connection;
//!   it holds no replication connection, so it never competes for the slot's single walsender.
//! - The active process keeps that connection for as long as it streams. Postgres releases a
//!   session lock when the session ends, including when the holder is SIGKILLed or its host
//!   vanishes (once the server notices the dead TCP connection), so a standby takes over then.
//! - The active process checks the lease connection every `ha.poll_ms`; when it is lost (closed,
//!   or no answer within the connect timeout) streaming stops like a shutdown (what the sinks
//!   made durable is confirmed, nothing else) and the process goes back to standby, because
//!   another process may now hold the lease.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::sql::connect_sql;
use super::{ConnParams, SourceError};

/// The advisory-lock key of a slot: FNV-1a (64 bit) of `walcast:<database>:<slot>`, as a bigint.
pub fn lease_key(database: &str, slot: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in "walcast:".bytes().chain(database.bytes()).chain(":".bytes()).chain(slot.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h as i64
}

/// The lease, held: the SQL session that owns the advisory lock. Dropping it closes the session,
/// which releases the lock.
pub struct Lease {
    client: Client,
    key: i64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish_non_exhaustive()
    }
}

/// How holding the lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// `stop` was cancelled by the caller.
    Stopped,
    /// The lease connection was lost: another process may hold the lease now.
    Lost,
}

impl Lease {
    /// Wait until this process holds the lease for `slot`; `None` when `shutdown` comes first.
    /// Connection failures are retried at the next poll; setup errors (authentication,
    /// permissions, a missing database) are returned.
    pub async fn acquire(
        params: &ConnParams,
        slot: &str,
        poll: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Lease>, SourceError> {
        let key = lease_key(&params.database, slot);
        let mut client: Option<Client> = None;
        let mut waiting_logged = false;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(None),
                _ = tick.tick() => {}
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                match connect_sql(params).await {
                    Ok(c) => client = Some(c),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "standby: cannot connect to take the lease, retrying");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(c) = client.take() else { continue };
            match c.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await {
                Ok(row) => match row.try_get::<_, bool>(0) {
                    Ok(true) => {
                        tracing::info!(slot, key, "lease acquired: this process streams");
                        return Ok(Some(Lease { client: c, key }));
                    }
                    Ok(false) => {
                        if !waiting_logged {
                            tracing::info!(slot, key, "standby: waiting for the lease (another walcast streams this slot)");
                            waiting_logged = true;
                        }
                        client = Some(c);
                    }
                    Err(error) => tracing::warn!(%error, "standby: unexpected answer to pg_try_advisory_lock"),
                },
                Err(error) => {
                    let message = error.as_db_error().map_or_else(|| error.to_string(), |d| d.message().to_string());
                    tracing::warn!(error = %message, "standby: lease query failed, reconnecting");
                }
            }
        }
    }

    /// Hold the lease, checking every `poll` that its session is alive (a `SELECT 1` answered
    /// within `timeout`). Returns [`LeaseEnd::Lost`] as soon as it is not, and
    /// [`LeaseEnd::Stopped`] when `stop` is cancelled. The lease itself is released when `self`
    /// is dropped, which the caller does only once streaming has stopped.
    pub async fn watch(&self, poll: Duration, timeout: Duration, stop: &CancellationToken) -> LeaseEnd {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return LeaseEnd::Stopped,
                _ = tick.tick() => {}
            }
            if self.client.is_closed() {
                tracing::warn!(key = self.key, "lease connection closed");
                return LeaseEnd::Lost;
            }
            match tokio::time::timeout(timeout, self.client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, key = self.key, "lease check failed");
                    return LeaseEnd::Lost;
                }
                Err(_) => {
                    tracing::warn!(key = self.key, timeout_ms = timeout.as_millis() as u64, "lease check got no answer");
                    return LeaseEnd::Lost;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_depends_on_database_and_slot() {
        let k = lease_key("app", "walcast");
        assert_ne!(k, lease_key("app2", "walcast"));
        assert_ne!(k, lease_key("app", "walcast2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(lease_key("ab", "c"), lease_key("a", "bc"));
        // Pinned (FNV-1a 64 of "walcast:app:walcast", computed independently): changing the hash
        // would let an old and a new version stream the same slot at once during an upgrade.
        assert_eq!(k, 7_413_802_999_645_788_552);
    }
}
