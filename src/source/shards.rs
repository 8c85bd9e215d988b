//! `walcast check`: shards of one database must stream disjoint tables. The other shards are
//! walcast's other logical pgoutput slots of this database (a slot or its walsender's
//! `application_name` starting with `walcast`). A slot does not record its publication: it is
//! named only in `START_REPLICATION`, which Postgres shows as the walsender's
//! `pg_stat_activity.query` while that shard streams (visible to the same role, or with
//! `pg_read_all_stats`). For a slot nobody streams, the publication named like the slot is
//! assumed (the convention docs/scaling.md recommends); otherwise the shard is reported as not
//! checkable.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::preflight::Finding;
use crate::config::{Config, TableSelector};

/// Tables of `publication` as `schema.table` (partitions as their root).
const PUBLISHED: &str = "SELECT DISTINCT rn.nspname::text || '.' || rc.relname::text \
     FROM pg_publication_tables pt \
     JOIN pg_namespace n ON n.nspname = pt.schemaname \
     JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
     JOIN pg_class rc ON rc.oid = COALESCE(pg_partition_root(c.oid), c.oid) \
     JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
     WHERE pt.pubname = ANY($1)";

/// Add a finding about the other walcast shards of this database.
pub(super) async fn check_shards(client: &Client, config: &Config, out: &mut Vec<Finding>) -> Result<(), tokio_postgres::Error> {
    let src = &config.source;
    let ours = our_tables(client, config).await?;
    let others = client
        .query(
            "SELECT s.slot_name::text, s.active_pid IS NOT NULL, a.application_name, a.query, \
                    EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = s.slot_name::text) \
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.database = current_database() AND s.slot_type = 'logical' AND s.plugin = 'pgoutput' \
               AND NOT s.temporary AND s.slot_name <> $1 \
             ORDER BY 1",
            &[&src.slot],
        )
        .await?;
    let mut checked = Vec::new();
    for row in &others {
        let (slot, active, app, query, same_named): (String, bool, Option<String>, Option<String>, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if !slot.starts_with("walcast") && !app.as_deref().is_some_and(|a| a.starts_with("walcast")) {
            continue;
        }
        let (publications, how) = match query.as_deref().and_then(publication_names) {
            Some(p) => (p, "streaming with"),
            None if same_named => (vec![slot.clone()], "not streaming; assumed to use the publication named like it,"),
            None => {
                out.push(Finding::warn(
                    format!(
                        "slot {slot:?} of this database looks like another walcast shard, but its publication cannot be seen ({})",
                        if active { "its walsender's command is not visible to this role" } else { "nobody streams it" }
                    ),
                    "run `walcast check` while that shard streams, as the same role (or one with pg_read_all_stats), or name each shard's publication like its slot",
                ));
                continue;
            }
        };
        let theirs: BTreeSet<String> = client.query(PUBLISHED, &[&publications]).await?.iter().map(|r| r.get(0)).collect();
        let shared: Vec<&String> = ours.intersection(&theirs).collect();
        if shared.is_empty() {
            checked.push(slot);
            continue;
        }
        let names = shared.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        out.push(Finding::fail(
            format!(
                "another walcast shard streams tables of this one: slot {slot:?} ({how} publication {}) also publishes {names}",
                publications.join(", ")
            ),
            format!(
                "shards must stream disjoint tables (each change would reach the sinks twice, from two processes in no common order): \
                 remove {names} from one of the publications and its source.tables; to move a table between shards, follow docs/scaling.md"
            ),
        ));
    }
    if !checked.is_empty() {
        out.push(Finding::ok(format!("no other walcast shard streams these tables (checked slots {})", checked.join(", "))));
    }
    Ok(())
}

/// This shard's tables: what its publication publishes, or (before it exists) `source.tables`.
async fn our_tables(client: &Client, config: &Config) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    let src = &config.source;
    let published: BTreeSet<String> = client.query(PUBLISHED, &[&vec![src.publication.clone()]]).await?.iter().map(|r| r.get(0)).collect();
    if !published.is_empty() {
        return Ok(published);
    }
    let mut out = BTreeSet::new();
    for sel in src.table_selectors() {
        match sel {
            TableSelector::Table { schema, table } => {
                out.insert(format!("{schema}.{table}"));
            }
            TableSelector::Schema(schema) => {
                let rows = client
                    .query("SELECT schemaname::text || '.' || tablename::text FROM pg_tables WHERE schemaname = $1", &[&schema])
                    .await?;
                out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
        }
    }
    Ok(out)
}

/// The publications of a `START_REPLICATION ... (proto_version '1', publication_names 'a,b')`
/// command as Postgres parses the list: comma-separated identifiers, lower-cased unless double
/// quoted; `''` is a quote inside the option's string.
fn publication_names(command: &str) -> Option<Vec<String>> {
    let at = command.find("publication_names")? + "publication_names".len();
    let rest = command[at..].trim_start().strip_prefix('\'')?;
    let mut value = String::new();
    let mut chars = rest.chars().peekable();
    loop {
        match chars.next()? {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                value.push('\'');
            }
            '\'' => break,
            c => value.push(c),
        }
    }
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| match n.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => n.to_lowercase(),
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_of_a_start_replication_command() {
        let cmd = "START_REPLICATION SLOT walcast_a LOGICAL 0/0 (proto_version '1', publication_names 'walcast_a', messages 'true')";
        assert_eq!(publication_names(cmd), Some(vec!["walcast_a".to_string()]));
        let cmd = "START_REPLICATION SLOT s LOGICAL 0/16B3748 (proto_version '1', publication_names 'One, \"Two\"\"\",it''s')";
        assert_eq!(publication_names(cmd), Some(vec!["one".to_string(), "Two\"".to_string(), "it's".to_string()]));
        assert_eq!(publication_names("<insufficient privilege>"), None);
        assert_eq!(publication_names("START_REPLICATION SLOT s LOGICAL 0/0 (publication_names '')"), None);
        assert_eq!(publication_names("START_REPLICATION SLOT s LOGICAL 0/0 (publication_names 'a"), None);
    }
}
