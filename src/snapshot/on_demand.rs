//! `walcast snapshot`: load one table or document rule now, beside a streaming `walcast run`,
//! through temporary slots that disappear with their sessions.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{load, recheck, HeldSnapshot, LoadPlan, Outcome, RecheckPlan, SinkHandles, SnapshotError, TableRef};
use crate::config::{Config, ConfigError, TableName};
use crate::metrics::Metrics;
use crate::sink::fanout::{start_sinks, Sinks};
use crate::source::{self, connect_sql, ConnParams};

/// What `walcast snapshot` loads.
#[derive(Debug, Clone)]
pub enum SnapshotTarget {
    /// One table (`schema.table`), to every sink.
    Table(String),
    /// One document rule (by name): its root table, to the Elasticsearch sink.
    Rule(String),
}

impl SnapshotTarget {
    /// The table to load, and whether only the Elasticsearch sink takes it.
    fn resolve(&self, config: &Config) -> Result<(TableRef, bool), ConfigError> {
        let (table, elasticsearch_only) = match self {
            SnapshotTarget::Table(t) => {
                let table = TableName::parse(t).map_err(|reason| ConfigError::Invalid { field: "--table".into(), reason })?;
                (table, false)
            }
            SnapshotTarget::Rule(name) => {
                let rule = config.sinks.elasticsearch.iter().flat_map(|es| &es.documents).find(|d| &d.name == name);
                let Some(rule) = rule else {
                    return Err(ConfigError::Invalid {
                        field: "--rule".into(),
                        reason: format!("no document rule is named {name:?} in sinks.elasticsearch.documents"),
                    });
                };
                (rule.table.clone(), true)
            }
        };
        Ok((TableRef::from(&table), elasticsearch_only))
    }
}

/// Load one table or document rule now, while streaming may go on in another process. The rows
/// are read in the exported snapshot of a temporary slot and written with its consistent point as
/// their version, so a newer streamed write is never overwritten; then the rows deleted meanwhile
/// are deleted again at a newer point (`recheck`).
pub async fn load_on_demand(config: &Config, target: &SnapshotTarget, shutdown: CancellationToken) -> Result<Outcome, SnapshotError> {
    let params = ConnParams::from_config(&config.source)?;
    let metrics = Metrics::new();
    let (table, elasticsearch_only) = target.resolve(config)?;
    let Sinks { queues, mut reports, mut tasks, in_flight, .. } = start_sinks(config, &params, &metrics, elasticsearch_only, &shutdown)?;
    // Temporary slots: they disappear with their session, even if this process is killed. The
    // base is cut so that the two names stay distinct within Postgres's 63 bytes.
    let base: String = config.source.slot.chars().take(40).collect();
    let slot = format!("{base}_snapshot_{}", std::process::id());
    let on_dispatch = || in_flight.add();
    let tables = [table];
    let outcome = async {
        let exported = source::create_slot_exporting(&params, &slot, &config.source.publication, true).await?;
        tracing::info!(table = %tables[0], point = %exported.point, "snapshot on demand");
        let handles = SinkHandles { queues: &queues, reports: &mut reports, on_dispatch: &on_dispatch };
        let plan = LoadPlan { tables: &tables, point: exported.point, exported: Some(&exported.name), state: None };
        if load(config, &params, plan, handles, &metrics, &shutdown).await? == Outcome::Interrupted {
            return Ok(Outcome::Interrupted);
        }
        // The stream may have deleted rows after the load read them; written after its delete,
        // a row would come back on a sink that keeps no tombstone. Recheck in a snapshot taken
        // now that every sink has written the load.
        let loaded = HeldSnapshot::hold(&params, &exported.name).await?;
        drop(exported);
        let newer = source::create_slot_exporting(&params, &format!("{slot}_2"), &config.source.publication, true).await?;
        let handles = SinkHandles { queues: &queues, reports: &mut reports, on_dispatch: &on_dispatch };
        let plan = RecheckPlan { tables: &tables, loaded, newer: &newer.name, point: newer.point };
        let outcome = recheck(config, &params, plan, handles, &shutdown).await;
        drop(newer);
        outcome
    }
    .await;
    drop(queues);
    while tasks.join_next().await.is_some() {}
    wait_slots_dropped(&params, &[&slot, &format!("{slot}_2")]).await;
    outcome
}

/// Postgres drops a temporary slot when the backend of its session exits, a moment after the
/// connection closed: wait for that (at most 5 s), so that `walcast snapshot` ends with none of
/// its slots left.
async fn wait_slots_dropped(params: &ConnParams, slots: &[&str]) {
    let Ok(client) = connect_sql(params).await else { return };
    for _ in 0..250 {
        let mut left = false;
        for slot in slots {
            match source::slot_info(&client, slot).await {
                Ok(Some(_)) => left = true,
                Ok(None) => {}
                Err(_) => return,
            }
        }
        if !left {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(?slots, "temporary slots still exist after 5 s; Postgres drops them when their sessions end");
}
