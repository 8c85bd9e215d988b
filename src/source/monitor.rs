//! Background tasks on side connections: the slot monitor (for metrics) and the heartbeat.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::sql::{connect_sql, slot_info};
use super::{quote_ident, ConnParams};
use crate::config::{HeartbeatConfig, HeartbeatMode, TableSelector};
use crate::decode::HEARTBEAT_PREFIX;
use crate::metrics::Metrics;

/// Run `work` every `every` on a side connection until `stop`, reconnecting whenever the
/// connection is gone. Failures are logged by `work` and retried at the next tick.
async fn every_tick<W>(params: &ConnParams, every: Duration, stop: &CancellationToken, what: &'static str, mut work: W)
where
    W: for<'c> FnMut(&'c tokio_postgres::Client) -> Pin<Box<dyn Future<Output = ()> + Send + 'c>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match connect_sql(params).await {
                Ok(c) => client = Some(c),
                Err(error) => {
                    tracing::warn!(%error, task = what, "side connection failed, retrying at the next tick");
                    continue;
                }
            }
        }
        if let Some(c) = &client {
            work(c).await;
        }
    }
}

/// Read `pg_replication_slots` every `every` and export retained WAL, wal_status, whether the slot
/// is active, and the server's WAL position. Runs on its own connection so it keeps reporting
/// while the stream is stuck or reconnecting.
pub async fn monitor_slot(params: ConnParams, slot: String, every: Duration, metrics: Arc<Metrics>, stop: CancellationToken) {
    every_tick(&params, every, &stop, "slot monitor", |c| {
        let (slot, metrics) = (slot.clone(), Arc::clone(&metrics));
        Box::pin(async move {
            match slot_info(c, &slot).await {
                Ok(Some(info)) => {
                    metrics.slot_retained_wal_bytes.set(info.retained_wal_bytes.unwrap_or(0));
                    metrics.set_wal_status(info.wal_status.as_deref());
                    metrics.slot_active.set(i64::from(info.active));
                    metrics.slot_safe_wal_bytes.set(info.safe_wal_bytes);
                    if let Some(lsn) = info.current_wal_lsn {
                        metrics.server_wal_lsn.set(lsn.0 as i64);
                    }
                    // Not streaming (an HA standby, or reconnecting): the slot's own confirmed
                    // position is the truth, so lag in bytes stays meaningful instead of counting
                    // from 0. While streaming, the pipeline's value is newer and is left alone.
                    if metrics.streaming.get() == 0 {
                        if let Some(lsn) = info.confirmed_flush_lsn {
                            metrics.confirmed_lsn.set(lsn.0 as i64);
                        }
                    }
                }
                Ok(None) => {
                    metrics.slot_active.set(0);
                    metrics.set_wal_status(None);
                    metrics.slot_safe_wal_bytes.set(None);
                }
                Err(error) => tracing::debug!(%error, "slot monitor query failed"),
            }
        })
    })
    .await;
}

/// Write a heartbeat into the WAL every `cfg.interval_ms`, so a slot whose tables are quiet still
/// gets a commit to confirm while other tables are written (and so holds no WAL back).
pub async fn heartbeat(params: ConnParams, cfg: HeartbeatConfig, stop: CancellationToken) {
    let Some(statement) = heartbeat_sql(&cfg) else {
        tracing::error!(table = %cfg.table, "heartbeat.table must be schema.table; heartbeat disabled");
        return;
    };
    every_tick(&params, Duration::from_millis(cfg.interval_ms), &stop, "heartbeat", |c| {
        let statement = statement.clone();
        Box::pin(async move {
            match c.batch_execute(&statement).await {
                Ok(()) => tracing::trace!("heartbeat"),
                Err(error) => tracing::warn!(%error, "heartbeat failed"),
            }
        })
    })
    .await;
}

/// The heartbeat statement. Message mode is transactional so it arrives inside a commit, which is
/// what walcast confirms.
fn heartbeat_sql(cfg: &HeartbeatConfig) -> Option<String> {
    match cfg.mode {
        HeartbeatMode::Message => Some(format!("SELECT pg_logical_emit_message(true, '{HEARTBEAT_PREFIX}', now()::text)")),
        HeartbeatMode::Table => {
            let TableSelector::Table { schema, table } = TableSelector::parse(&cfg.table).ok()? else { return None };
            let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
            Some(format!(
                "CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY, ts timestamptz NOT NULL); \
                 INSERT INTO {name} (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = excluded.ts"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_statements_quote_the_table() {
        let mut cfg = HeartbeatConfig { interval_ms: 1000, mode: HeartbeatMode::Message, table: "public.hb".into() };
        assert!(heartbeat_sql(&cfg).expect("sql").contains("pg_logical_emit_message(true"));
        cfg.mode = HeartbeatMode::Table;
        let sql = heartbeat_sql(&cfg).expect("sql");
        assert!(sql.contains(r#""public"."hb""#), "{sql}");
        cfg.table = "nodot".into();
        assert!(heartbeat_sql(&cfg).is_none());
    }
}
