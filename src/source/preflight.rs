//! `walcast check`: everything the server must provide, each failure with its fix, and the
//! replication connection itself opened as `run` opens it.

use tokio_postgres::Client;

use super::replication::probe_replication;
use super::sql::{classify, slot_info};
use super::{quote_ident, ConnParams, SourceError};
use crate::config::{Config, SnapshotMode, TableSelector};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The requirement holds.
    Ok,
    /// walcast can run, but something will not work as a user may expect.
    Warning,
    /// walcast cannot run until this is fixed.
    Failure,
}

/// One checked requirement.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Outcome.
    pub severity: Severity,
    /// What was checked and what was found.
    pub message: String,
    /// How to fix it (for warnings and failures).
    pub fix: Option<String>,
}

impl Finding {
    /// A requirement that holds.
    pub(crate) fn ok(message: impl Into<String>) -> Self {
        Self { severity: Severity::Ok, message: message.into(), fix: None }
    }
    /// Something that works but may surprise, with its fix.
    pub(crate) fn warn(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, message: message.into(), fix: Some(fix.into()) }
    }
    /// Something that must be fixed before walcast can run, with its fix.
    pub(crate) fn fail(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { severity: Severity::Failure, message: message.into(), fix: Some(fix.into()) }
    }
}

/// What walcast's state directory says of the configured slot, read as `run` reads it, so that
/// `walcast check` reports what `run` does with the slot.
pub enum SlotRecord {
    /// No record: a slot that exists was made by hand (or `state_dir` was lost or changed).
    Unrecorded,
    /// walcast created the slot, or already started on it.
    Recorded,
    /// The slot existed and is gone: the (problem, fix) `run` refuses with.
    Gone(String, String),
}

/// Run every preflight check against the server. Connection failures are findings too, so the
/// caller always gets a report.
pub async fn preflight(config: &Config, params: &ConnParams, record: SlotRecord) -> Vec<Finding> {
    let mut out = Vec::new();
    match super::connect_sql(params).await {
        Ok(client) => {
            out.push(Finding::ok(format!("connected to {} as {}", params.display(), params.user)));
            if let Err(e) = run_checks(&client, config, params, record, &mut out).await {
                out.push(Finding::fail(format!("a check query failed: {}", classify(&e, params)), "see the error above"));
            }
        }
        Err(e) => {
            out.push(Finding::fail(
                format!("cannot connect to {}: {e}", params.display()),
                "check source.host, source.port, source.database, the credentials and pg_hba.conf",
            ));
        }
    }
    out.push(replication_finding(config, params).await);
    out
}

/// The replication connection, opened as `run` opens it: pg_hba.conf has separate `replication`
/// lines, and authentication and TLS go through another client than the SQL connection's.
async fn replication_finding(config: &Config, params: &ConnParams) -> Finding {
    let src = &config.source;
    match probe_replication(params, &src.slot, &src.publication).await {
        Ok(p) => Finding::ok(format!(
            "replication connection to {} works (IDENTIFY_SYSTEM: system {}, timeline {}, WAL at {})",
            params.display(),
            p.system_id,
            p.timeline,
            p.xlogpos
        )),
        Err(SourceError::Setup { problem, fix }) => Finding::fail(format!("replication connection: {problem}"), fix),
        Err(e) => Finding::fail(
            format!("replication connection to {} failed: {e}", params.display()),
            "check source.host, source.port, the credentials, source.sslmode and source.sslrootcert; the error above says which",
        ),
    }
}

async fn run_checks(
    client: &Client,
    config: &Config,
    params: &ConnParams,
    record: SlotRecord,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let src = &config.source;

    let version: i32 = client.query_one("SELECT current_setting('server_version_num')::int", &[]).await?.get(0);
    let has_schema_selector = src.table_selectors().iter().any(|t| matches!(t, TableSelector::Schema(_)));
    let shown = server_version(version);
    if version < 100_000 {
        out.push(Finding::fail(format!("server version {shown} has no pgoutput"), "walcast needs Postgres 10 or newer (15+ recommended)"));
    } else if version < 150_000 && has_schema_selector {
        out.push(Finding::fail(
            format!("server version {shown} cannot publish whole schemas (`schema.*` in source.tables)"),
            "list the tables one by one, or upgrade to Postgres 15+",
        ));
    } else {
        out.push(Finding::ok(format!("server version {shown}")));
    }

    let wal_level: String = client.query_one("SELECT current_setting('wal_level')", &[]).await?.get(0);
    if wal_level == "logical" {
        out.push(Finding::ok("wal_level = logical"));
    } else {
        out.push(Finding::fail(
            format!("wal_level is {wal_level}, logical decoding needs logical"),
            "run ALTER SYSTEM SET wal_level = logical; (or set it in postgresql.conf) and restart Postgres",
        ));
    }

    let role = client.query_one("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user", &[]).await?;
    let (replication, superuser): (bool, bool) = (role.get(0), role.get(1));
    if replication || superuser {
        out.push(Finding::ok(format!("role {} may replicate ({})", params.user, if superuser { "superuser" } else { "REPLICATION" })));
    } else {
        out.push(Finding::fail(
            format!("role {} lacks the REPLICATION attribute", params.user),
            format!("as a superuser: ALTER ROLE {} WITH REPLICATION;", quote_ident(&params.user)),
        ));
    }

    let slot = slot_info(client, &src.slot).await?;
    let limits = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int",
            &[],
        )
        .await?;
    let (max_slots, used_slots, max_senders, used_senders): (i32, i32, i32, i32) =
        (limits.get(0), limits.get(1), limits.get(2), limits.get(3));
    match &slot {
        Some(s) => match s.problem(&src.database) {
            Some((problem, fix)) => out.push(Finding::fail(problem, fix)),
            None => {
                let conf = s.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                out.push(Finding::ok(format!(
                    "slot {:?} exists (confirmed_flush_lsn {conf}, wal_status {})",
                    src.slot,
                    s.wal_status.as_deref().unwrap_or("-")
                )));
                if matches!(record, SlotRecord::Unrecorded) && config.snapshot.mode == SnapshotMode::Initial {
                    let (problem, fix) = super::unrecorded_slot(&src.slot, &config.snapshot.state_dir);
                    out.push(Finding::warn(problem, fix));
                }
                if s.active {
                    out.push(Finding::warn(
                        format!("slot {:?} is in use by process {}", src.slot, s.active_pid.unwrap_or_default()),
                        "only one consumer can stream a slot; stop the other one (or this is a running walcast)",
                    ));
                }
            }
        },
        None if matches!(record, SlotRecord::Gone(..)) => {
            if let SlotRecord::Gone(problem, fix) = record {
                out.push(Finding::fail(problem, fix));
            }
        }
        None if !src.create_slot => out.push(Finding::fail(
            format!("slot {:?} does not exist and source.create_slot is false", src.slot),
            "set source.create_slot = true and start `walcast run` (it creates the slot and loads the existing rows), or `walcast slot create --no-snapshot --config FILE` (existing rows are not loaded)",
        )),
        None if used_slots >= max_slots => out.push(Finding::fail(
            format!("slot {:?} must be created but all {max_slots} replication slots are used", src.slot),
            "raise max_replication_slots in postgresql.conf and restart, or drop an unused slot (see pg_replication_slots)",
        )),
        None => out.push(Finding::ok(format!("slot {:?} will be created ({used_slots} of {max_slots} slots used)", src.slot))),
    }
    if used_senders >= max_senders && !slot.as_ref().is_some_and(|s| s.active) {
        out.push(Finding::fail(
            format!("all {max_senders} WAL senders are busy"),
            "raise max_wal_senders in postgresql.conf and restart Postgres",
        ));
    } else {
        out.push(Finding::ok(format!("{used_senders} of {max_senders} WAL senders busy")));
    }

    check_publication(client, config, params, superuser, out).await?;
    super::shards::check_shards(client, config, out).await?;
    check_tables(client, config, params, out).await?;
    Ok(())
}

async fn check_publication(
    client: &Client,
    config: &Config,
    params: &ConnParams,
    superuser: bool,
    out: &mut Vec<Finding>,
) -> Result<(), tokio_postgres::Error> {
    let src = &config.source;
    let exists = client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&src.publication]).await?.is_some();
    if exists {
        let published = super::published_tables(client, &src.publication, &src.table_selectors()).await?.unwrap_or_default();
        match published.mismatch(&src.publication) {
            Some((problem, fix)) => out.push(Finding::fail(problem, fix)),
            None => out.push(Finding::ok(format!("publication {:?} exists", src.publication))),
        }
        return Ok(());
    }
    if !src.create_publication {
        out.push(Finding::fail(
            format!("publication {:?} does not exist and source.create_publication is false", src.publication),
            format!(
                "{}; (as the tables' owner or a superuser), or set source.create_publication = true",
                super::sql::create_publication_sql(&src.publication, &src.table_selectors())
            ),
        ));
        return Ok(());
    }
    let selectors = src.table_selectors();
    let needs_super = selectors.is_empty() || selectors.iter().any(|t| matches!(t, TableSelector::Schema(_)));
    if needs_super && !superuser {
        out.push(Finding::fail(
            format!(
                "publication {:?} must be created FOR {} which needs a superuser",
                src.publication,
                if selectors.is_empty() { "ALL TABLES" } else { "TABLES IN SCHEMA" }
            ),
            "create the publication once as a superuser (see sql/roles.sql), or list tables one by one that this role owns",
        ));
        return Ok(());
    }
    let can_create: bool = client.query_one("SELECT has_database_privilege(current_user, current_database(), 'CREATE')", &[]).await?.get(0);
    if !can_create && !superuser {
        out.push(Finding::fail(
            format!("publication {:?} must be created but the role lacks CREATE on the database", src.publication),
            format!(
                "GRANT CREATE ON DATABASE {} TO {}; (or create the publication yourself)",
                quote_ident(&src.database),
                quote_ident(&params.user)
            ),
        ));
        return Ok(());
    }
    // CREATE PUBLICATION ... FOR TABLE needs ownership of every table, which the CREATE
    // privilege does not give: find out now rather than when `run` tries.
    if !superuser {
        let (schemas, tables): (Vec<&str>, Vec<&str>) = selectors
            .iter()
            .filter_map(|t| match t {
                TableSelector::Table { schema, table } => Some((schema.as_str(), table.as_str())),
                TableSelector::Schema(_) => None,
            })
            .unzip();
        let not_owned: Vec<String> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE (n.nspname::text, c.relname::text) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                   AND NOT pg_has_role(current_user, c.relowner, 'USAGE')",
                &[&schemas, &tables],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !not_owned.is_empty() {
            out.push(Finding::fail(
                format!(
                    "publication {:?} must be created but role {} does not own {}",
                    src.publication,
                    params_user(client).await?,
                    not_owned.join(", ")
                ),
                format!("as the tables' owner or a superuser: {};", super::sql::create_publication_sql(&src.publication, &selectors)),
            ));
            return Ok(());
        }
    }
    out.push(Finding::ok(format!("publication {:?} will be created", src.publication)));
    Ok(())
}

async fn params_user(client: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one("SELECT current_user::text", &[]).await?.get(0))
}

async fn check_tables(client: &Client, config: &Config, params: &ConnParams, out: &mut Vec<Finding>) -> Result<(), tokio_postgres::Error> {
    // The tables that will be streamed: the publication's when it exists, else the configured
    // ones, else (no `tables`: walcast creates the publication FOR ALL TABLES) every table such a
    // publication covers: permanent user tables outside the system schemas.
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                    has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND ( \
                   (EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) \
                      AND (n.nspname, c.relname) IN (SELECT schemaname::name, tablename::name FROM pg_publication_tables WHERE pubname = $1)) \
                OR (NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) \
                      AND ((n.nspname || '.' || c.relname) = ANY($2::text[]) OR n.nspname = ANY($3::text[]))) \
                OR (NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) \
                      AND cardinality($2::text[]) = 0 AND cardinality($3::text[]) = 0 \
                      AND c.relpersistence = 'p' AND c.oid >= 16384 \
                      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%')) \
             ORDER BY 1, 2",
            &[&config.source.publication, &explicit_tables(config), &schemas(config)],
        )
        .await?;
    for sel in config.source.table_selectors() {
        let found = rows.iter().any(|r| match &sel {
            TableSelector::Table { schema, table } => r.get::<_, String>(0) == *schema && r.get::<_, String>(1) == *table,
            TableSelector::Schema(schema) => r.get::<_, String>(0) == *schema,
        });
        if !found {
            let name = match &sel {
                TableSelector::Table { schema, table } => format!("table {schema}.{table}"),
                TableSelector::Schema(schema) => format!("schema {schema} (or any table in it)"),
            };
            out.push(Finding::fail(
                format!("{name} from source.tables does not exist or is not in the publication"),
                "fix the name in source.tables (names are case-sensitive), or add it to the publication",
            ));
        }
    }
    if rows.is_empty() {
        out.push(Finding::warn("no table will be streamed", "list tables in source.tables, or add tables to the publication"));
    }
    for r in &rows {
        let (schema, table, ident, has_pk, can_select): (String, String, String, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let name = format!("{schema}.{table}");
        if ident == "n" || (ident == "d" && !has_pk) {
            out.push(Finding::warn(
                format!("{name} has no primary key and REPLICA IDENTITY {}: its updates and deletes carry no key (Postgres rejects them while it is published)", if ident == "n" { "NOTHING" } else { "DEFAULT" }),
                format!("add a primary key, or ALTER TABLE {}.{} REPLICA IDENTITY FULL;", quote_ident(&schema), quote_ident(&table)),
            ));
        } else {
            out.push(Finding::ok(format!("{name} streams with a key")));
        }
        if !can_select {
            out.push(Finding::fail(
                format!("role cannot SELECT from {name} (needed for snapshots)"),
                format!("GRANT SELECT ON {}.{} TO {};", quote_ident(&schema), quote_ident(&table), quote_ident(&params.user)),
            ));
        }
    }
    Ok(())
}

/// `server_version_num` as people write it: 150018 -> "15.18", 90624 -> "9.6.24".
fn server_version(num: i32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

fn explicit_tables(config: &Config) -> Vec<String> {
    config
        .source
        .table_selectors()
        .into_iter()
        .filter_map(|t| match t {
            TableSelector::Table { schema, table } => Some(format!("{schema}.{table}")),
            TableSelector::Schema(_) => None,
        })
        .collect()
}

fn schemas(config: &Config) -> Vec<String> {
    config
        .source
        .table_selectors()
        .into_iter()
        .filter_map(|t| match t {
            TableSelector::Schema(s) => Some(s),
            TableSelector::Table { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::server_version;

    #[test]
    fn server_version_reads_as_released() {
        assert_eq!(server_version(150_018), "15.18");
        assert_eq!(server_version(170_000), "17.0");
        assert_eq!(server_version(100_023), "10.23");
        assert_eq!(server_version(90_624), "9.6.24");
        assert_eq!(server_version(90_500), "9.5.0");
    }
}
