//! The ordinary SQL connection: slot and publication management.

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls};

use super::tls::{client_config, MakeRustls};
use crate::config::SslMode;

use super::{find_cause, ConnParams, SourceError, Step, AUTH_FIX, SESSION_OPTIONS};
use crate::config::TableSelector;
use crate::lsn::Lsn;

/// Bytes a bulk session ([`connect_sql_bulk`]) reads from its socket at once.
const BULK_READ_BUFFER: usize = 256 * 1024;

/// Connect an ordinary SQL session; its connection task runs in the background.
pub async fn connect_sql(params: &ConnParams) -> Result<Client, SourceError> {
    let deadline = tokio::time::Instant::now() + params.connect_timeout;
    let mut cfg = session_config(params);
    if params.sslmode == SslMode::Disable {
        return finish_connect(cfg.connect(NoTls), params, deadline).await;
    }
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    finish_connect(cfg.connect(MakeRustls::new(tls_config(params)?)), params, deadline).await
}

/// [`connect_sql`] for a session that reads much (a snapshot's COPY), over TCP: its socket is
/// read through a buffer of [`BULK_READ_BUFFER`] bytes. tokio-postgres reads into an 8 KB buffer
/// that the rows received still point into, so on its own each read takes at most 8 KB: some
/// 60,000 reads, each through the TCP receive path, for a 5M-row table. A Unix socket (a host
/// that is a path) connects as [`connect_sql`] does.
pub async fn connect_sql_bulk(params: &ConnParams) -> Result<Client, SourceError> {
    if params.host.starts_with('/') {
        return connect_sql(params).await;
    }
    let unreachable = |reason: String| SourceError::Connection { target: params.display(), reason };
    // One deadline for the TCP connect and the handshake after it, as `connect_sql` has.
    let deadline = tokio::time::Instant::now() + params.connect_timeout;
    let tcp = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((params.host.as_str(), params.port)))
        .await
        .map_err(|_| no_answer(params))?
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true).map_err(|e| unreachable(e.to_string()))?;
    let mut cfg = session_config(params);
    // The TCP keepalive tokio-postgres sets on the sockets it connects itself (connect_sql's).
    if cfg.get_keepalives() {
        let keepalive = socket2::TcpKeepalive::new().with_time(cfg.get_keepalives_idle());
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive).map_err(|e| unreachable(e.to_string()))?;
    }
    let stream = tokio::io::BufReader::with_capacity(BULK_READ_BUFFER, tcp);
    if params.sslmode == SslMode::Disable {
        return finish_connect(cfg.connect_raw(stream, NoTls), params, deadline).await;
    }
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = MakeTlsConnect::<tokio::io::BufReader<tokio::net::TcpStream>>::make_tls_connect(
        &mut MakeRustls::new(tls_config(params)?),
        &params.host,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    finish_connect(cfg.connect_raw(stream, tls), params, deadline).await
}

/// The server did not answer within `connect_timeout`.
fn no_answer(params: &ConnParams) -> SourceError {
    SourceError::Connection { target: params.display(), reason: format!("no answer within {} ms", params.connect_timeout.as_millis()) }
}

/// The TLS settings of `source.sslmode` and `source.sslrootcert`.
fn tls_config(params: &ConnParams) -> Result<rustls::ClientConfig, SourceError> {
    client_config(params.sslmode, params.sslrootcert.as_deref())
        .map_err(|reason| SourceError::setup(format!("TLS setup failed: {reason}"), "check source.sslmode and source.sslrootcert"))
}

/// The session settings every SQL connection uses.
fn session_config(params: &ConnParams) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&params.host)
        .port(params.port)
        .dbname(&params.database)
        .user(&params.user)
        .application_name(&params.application_name)
        .connect_timeout(params.connect_timeout)
        .options(SESSION_OPTIONS);
    if let Some(pw) = &params.password {
        cfg.password(pw.expose());
    }
    cfg
}

/// Wait for `connecting` (until `deadline`: `connect_timeout` after the connection began), then
/// run its connection task in the background.
async fn finish_connect<S, T>(
    connecting: impl std::future::Future<Output = Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>>,
    params: &ConnParams,
    deadline: tokio::time::Instant,
) -> Result<Client, SourceError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = tokio::time::timeout_at(deadline, connecting)
        .await
        .map_err(|_| no_answer(params))?
        .map_err(|e| classify_at(&e, Step::Connect, &params.display(), &params.user))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "sql connection ended");
        }
    });
    Ok(client)
}

/// Turn a tokio-postgres error of a statement on a session to `params` into a [`SourceError`].
pub(crate) fn classify(e: &tokio_postgres::Error, params: &ConnParams) -> SourceError {
    classify_at(e, Step::Query, &params.display(), &params.user)
}

/// [`classify`] where the connection parameters are not at hand: `what` the statement was for
/// starts the message.
pub(crate) fn classify_query(e: &tokio_postgres::Error, what: &str) -> SourceError {
    classify_at(e, Step::Query, "postgres", "").in_context(what)
}

/// Classify by what the error is (a server error's SQLSTATE, a TLS error, an I/O error), never
/// by its text.
fn classify_at(e: &tokio_postgres::Error, step: Step, target: &str, user: &str) -> SourceError {
    if let Some(db) = e.as_db_error() {
        return SourceError::from_server(db.code().code(), db.message(), step, user);
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    // A certificate the configured CA does not vouch for will not change by retrying.
    if find_cause::<rustls::Error>(e).is_some() {
        return SourceError::setup(format!("TLS with {target} failed: {reason}"), TLS_FIX);
    }
    if e.is_closed() || find_cause::<std::io::Error>(e).is_some() {
        return SourceError::Connection { target: target.to_string(), reason };
    }
    // The client gave up without an I/O failure or a server error: the server does not offer
    // TLS, no password is configured, an authentication method it cannot do. The same again.
    if step == Step::Connect {
        return SourceError::setup(
            format!("cannot connect to {target}: {reason}"),
            format!("check source.sslmode (the server may not offer TLS) and source.sslrootcert; {AUTH_FIX}"),
        );
    }
    // A value of another type than the statement expects: the same statement fails again.
    if find_cause::<tokio_postgres::types::WrongType>(e).is_some() {
        return SourceError::Query(reason);
    }
    SourceError::Connection { target: target.to_string(), reason }
}

/// The fix for a TLS handshake the server's certificate failed.
const TLS_FIX: &str = "check source.sslmode and that source.sslrootcert is the CA that signed the server certificate (verify-full also needs the host name in the certificate)";

impl SourceError {
    /// The same error, its message starting with what the failed statement was for.
    pub(crate) fn in_context(self, what: &str) -> Self {
        match self {
            SourceError::Connection { target, reason } => SourceError::Connection { target, reason: format!("{what}: {reason}") },
            SourceError::Transient(reason) => SourceError::Transient(format!("{what}: {reason}")),
            SourceError::Setup { problem, fix } => SourceError::Setup { problem: format!("{what}: {problem}"), fix },
            SourceError::Server { code, message, step } => SourceError::Server { code, message: format!("{what}: {message}"), step },
            SourceError::Query(reason) => SourceError::Query(format!("{what}: {reason}")),
            other @ SourceError::Decode(_) => other,
        }
    }
}

/// `Some` with the fix when the server's `wal_level` cannot have logical slots. Asked before a
/// slot is created, so the refusal says what to change.
pub(crate) fn wal_level_problem(wal_level: &str) -> Option<SourceError> {
    (wal_level != "logical").then(|| {
        SourceError::setup(
            format!("wal_level is {wal_level:?}: logical replication slots need wal_level = logical"),
            "as a superuser: ALTER SYSTEM SET wal_level = logical; (or set it in postgresql.conf) and restart Postgres",
        )
    })
}

/// A row of `pg_replication_slots`, plus how much WAL it holds back.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (walcast needs `pgoutput`).
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Whether a walsender is streaming it now.
    pub active: bool,
    /// Pid of that walsender.
    pub active_pid: Option<i32>,
    /// Everything at or below this was confirmed by the consumer.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot still needs.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL between restart_lsn and the current write position.
    pub retained_wal_bytes: Option<i64>,
    /// Current WAL write position of the server.
    pub current_wal_lsn: Option<Lsn>,
    /// `safe_wal_size`: bytes that can still be written before the slot loses WAL it needs;
    /// `None` when unlimited (`max_slot_wal_keep_size = -1`).
    pub safe_wal_bytes: Option<i64>,
}

/// The fix for a slot whose changes are gone (dropped, lost, or never ours): what `walcast
/// resync` does is the only way back to sinks equal to Postgres.
pub const RESYNC_FIX: &str = "run `walcast resync --config FILE`, then start walcast again: it creates the slot anew and reloads every table, removing from the sinks what was deleted meanwhile (docs/snapshot.md, \"re-sync after a lost slot\")";

/// What `walcast run` logs and `walcast check` warns when the slot exists, `snapshot.mode` is
/// `"initial"` and `state_dir` has no record of the slot: walcast streams it from its confirmed
/// position and loads no existing rows. Right for a slot made by hand; a `state_dir` lost or
/// changed while a load ran looks the same, and then rows are missing from the sinks.
pub fn unrecorded_slot(slot: &str, state_dir: &std::path::Path) -> (String, String) {
    (
        format!(
            "replication slot {slot:?} exists but {} holds no record of it: walcast streams it from its confirmed position and loads none of the existing rows (right for a slot made by hand)",
            state_dir.display()
        ),
        "if snapshot.state_dir was lost or changed while walcast used this slot, load each table again beside the stream: `walcast snapshot --config FILE --table SCHEMA.TABLE`".into(),
    )
}

impl SlotInfo {
    /// Why walcast cannot stream this slot for `database`, as (problem, fix); `None` when it can.
    /// `walcast check` and `walcast run` both ask this, so they agree.
    pub fn problem(&self, database: &str) -> Option<(String, String)> {
        if self.slot_type != "logical" || self.plugin.as_deref() != Some("pgoutput") {
            return Some((
                format!("slot {:?} exists but is a {} slot with plugin {:?}, not a logical pgoutput slot", self.name, self.slot_type, self.plugin.as_deref().unwrap_or("none")),
                "walcast needs a logical pgoutput slot of its own: set source.slot to another name (walcast never touches a slot it cannot stream)".into(),
            ));
        }
        if self.database.as_deref() != Some(database) {
            return Some((
                format!("slot {:?} belongs to database {:?}, not {:?}", self.name, self.database.as_deref().unwrap_or(""), database),
                "logical slots are per database: set source.slot to another name".into(),
            ));
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some((
                format!(
                    "slot {:?} was invalidated: it lost WAL it needed (wal_status = lost, max_slot_wal_keep_size exceeded), so changes after {} can no longer be streamed",
                    self.name,
                    self.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "its confirmed position".into())
                ),
                RESYNC_FIX.into(),
            ));
        }
        None
    }
}

fn parse_lsn(s: Option<String>) -> Option<Lsn> {
    s.and_then(|s| s.parse().ok())
}

/// Look a slot up; `None` when it does not exist.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, slot_type, database::text, active, active_pid, \
                    confirmed_flush_lsn::text, restart_lsn::text, wal_status, \
                    (pg_current_wal_lsn() - restart_lsn)::int8, pg_current_wal_lsn()::text, safe_wal_size \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        name: r.get(0),
        plugin: r.get(1),
        slot_type: r.get(2),
        database: r.get(3),
        active: r.get(4),
        active_pid: r.get(5),
        confirmed_flush_lsn: parse_lsn(r.get(6)),
        restart_lsn: parse_lsn(r.get(7)),
        wal_status: r.get(8),
        retained_wal_bytes: r.get(9),
        current_wal_lsn: parse_lsn(r.get(10)),
        safe_wal_bytes: r.get(11),
    }))
}

/// Create a logical slot with the pgoutput plugin; returns its consistent point.
pub async fn create_slot(client: &Client, params: &ConnParams, slot: &str) -> Result<Lsn, SourceError> {
    let wal_level = client.query_one("SHOW wal_level", &[]).await.map_err(|e| classify(&e, params))?;
    if let Some(problem) = wal_level_problem(wal_level.try_get(0).map_err(|e| classify(&e, params))?) {
        return Err(problem);
    }
    let row = client
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .map_err(|e| classify_at(&e, Step::CreateSlot, &params.display(), &params.user))?;
    let lsn: Option<String> = row.try_get(0).map_err(|e| classify(&e, params))?;
    consistent_point(slot, lsn.as_deref())
}

/// The consistent point Postgres answered for a new slot. One walcast cannot read is an error:
/// taken as 0/0 it would record a wrong start (and snapshot point) for the slot.
pub(crate) fn consistent_point(slot: &str, text: Option<&str>) -> Result<Lsn, SourceError> {
    let text = text.unwrap_or("");
    text.parse().map_err(|e| {
        SourceError::setup(
            format!("Postgres created slot {slot:?} but answered a consistent point walcast cannot read ({e})"),
            format!(
                "drop the slot (SELECT pg_drop_replication_slot('{slot}')) and run again; if it happens again, report the server version"
            ),
        )
    })
}

/// Drop a slot (fails while a walsender is streaming it).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map(|_| ())
}

/// The oid of a publication, `None` when it does not exist. A publication dropped and created
/// again gets a new oid, which is how walcast notices it (the slot cannot be decoded past the
/// drop, whatever exists now).
pub async fn publication_oid(client: &Client, publication: &str) -> Result<Option<u32>, tokio_postgres::Error> {
    let row = client.query_opt("SELECT oid FROM pg_publication WHERE pubname = $1", &[&publication]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// What a publication publishes, as walcast compares it with `source.tables`.
#[derive(Debug, Default)]
pub struct Published {
    /// The publication's oid (`None` when it does not exist).
    pub oid: Option<u32>,
    /// `FOR ALL TABLES`: tables created later join by design.
    pub all_tables: bool,
    /// Oids of the published tables (partitions as Postgres lists them).
    pub oids: std::collections::HashSet<u32>,
    /// Tables configured in `source.tables` that the publication lacks (`schema.table`).
    pub missing: Vec<(String, String)>,
    /// Published tables that `source.tables` does not select.
    pub extra: Vec<(String, String)>,
}

impl Published {
    /// When the publication does not publish exactly the configured tables: (problem, fix),
    /// the fix being SQL that works when pasted (as the tables' owner or a superuser).
    pub fn mismatch(&self, publication: &str) -> Option<(String, String)> {
        if self.missing.is_empty() && self.extra.is_empty() {
            return None;
        }
        let names =
            |v: &[(String, String)]| v.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect::<Vec<_>>().join(", ");
        let mut problem = format!("publication {publication:?} exists but does not publish exactly source.tables:");
        let mut fix = Vec::new();
        if !self.missing.is_empty() {
            problem.push_str(&format!(" missing {}", names(&self.missing)));
            fix.push(format!("ALTER PUBLICATION {} ADD TABLE {};", quote_ident(publication), names(&self.missing)));
        }
        if !self.extra.is_empty() {
            problem.push_str(&format!("{} not configured {}", if self.missing.is_empty() { "" } else { ";" }, names(&self.extra)));
            fix.push(format!("ALTER PUBLICATION {} DROP TABLE {};", quote_ident(publication), names(&self.extra)));
        }
        Some((
            problem,
            format!(
                "make them agree: {} (then `walcast snapshot --table` loads the rows an added table already had), or change source.tables",
                fix.join(" ")
            ),
        ))
    }
}

/// What `publication` publishes, compared with the configured `tables` (no comparison when
/// `tables` is empty: the publication decides). `None` when the publication does not exist.
pub async fn published_tables(
    client: &Client,
    publication: &str,
    tables: &[TableSelector],
) -> Result<Option<Published>, tokio_postgres::Error> {
    let Some(head) = client.query_opt("SELECT oid, puballtables FROM pg_publication WHERE pubname = $1", &[&publication]).await? else {
        return Ok(None);
    };
    // A partition counts as its partition root, which is what source.tables names.
    let rows = client
        .query(
            "SELECT c.oid, pt.schemaname::text, pt.tablename::text, rn.nspname::text, rc.relname::text              FROM pg_publication_tables pt              JOIN pg_namespace n ON n.nspname = pt.schemaname              JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename              JOIN pg_class rc ON rc.oid = COALESCE(pg_partition_root(c.oid), c.oid)              JOIN pg_namespace rn ON rn.oid = rc.relnamespace              WHERE pt.pubname = $1",
            &[&publication],
        )
        .await?;
    let mut out = Published { oid: Some(head.get(0)), all_tables: head.get(1), ..Published::default() };
    let selects = |schema: &str, table: &str| {
        tables.iter().any(|sel| match sel {
            TableSelector::Table { schema: s, table: t } => s == schema && t == table,
            TableSelector::Schema(s) => s == schema,
        })
    };
    let mut seen = Vec::new();
    for r in &rows {
        out.oids.insert(r.get(0));
        let (schema, table, root_schema, root_table): (String, String, String, String) = (r.get(1), r.get(2), r.get(3), r.get(4));
        if !tables.is_empty() && !selects(&schema, &table) && !selects(&root_schema, &root_table) {
            out.extra.push((schema.clone(), table.clone()));
        }
        seen.push((schema, table));
        seen.push((root_schema, root_table));
    }
    for sel in tables {
        if let TableSelector::Table { schema, table } = sel {
            if !seen.iter().any(|(s, t)| s == schema && t == table) {
                out.missing.push((schema.clone(), table.clone()));
            }
        }
    }
    Ok(Some(out))
}

/// `"name"` with embedded quotes doubled: an identifier safe to put in DDL, which cannot take
/// bind parameters.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Make sure the publication exists: create it for `tables` (or FOR ALL TABLES when the list is
/// empty) when `create` is set. An existing publication is left as it is. Returns whether it was
/// created.
pub async fn ensure_publication(
    client: &Client,
    params: &ConnParams,
    publication: &str,
    tables: &[TableSelector],
    create: bool,
) -> Result<bool, SourceError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| classify(&e, params))?
        .is_some();
    if exists {
        return Ok(false);
    }
    if !create {
        return Err(SourceError::setup(
            format!("publication {publication:?} does not exist"),
            format!(
                "{}; (as the tables' owner or a superuser), or set source.create_publication = true",
                create_publication_sql(publication, tables)
            ),
        ));
    }
    let sql = create_publication_sql(publication, tables);
    let created = client.batch_execute(&sql).await;
    if let Err(e) = &created {
        // Another walcast (or a person) created it between the check and here: that is fine.
        if matches!(e.as_db_error().map(|d| d.code().code()), Some("42710" | "23505")) {
            return Ok(false);
        }
    }
    created.map_err(|e| {
        let classified = classify(&e, params);
        match e.as_db_error() {
            Some(db) if db.code().code() == "42501" => SourceError::setup(
                format!("cannot create publication {publication:?}: {}", db.message()),
                "create it as a superuser or the tables' owner (see sql/roles.sql), or grant ownership; FOR TABLES IN SCHEMA and FOR ALL TABLES need a superuser",
            ),
            // A refusal that a retry cannot change (the server shutting down can).
            Some(db) if !classified.is_retryable() => SourceError::setup(
                format!("cannot create publication {publication:?}: {}", db.message()),
                "check source.tables: every entry must name an existing table or schema",
            ),
            _ => classified,
        }
    })?;
    tracing::info!(publication, "created publication");
    Ok(true)
}

/// The CREATE PUBLICATION statement for a table list (identifiers quoted).
pub(crate) fn create_publication_sql(publication: &str, tables: &[TableSelector]) -> String {
    if tables.is_empty() {
        return format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(publication));
    }
    let mut explicit = Vec::new();
    let mut schemas = Vec::new();
    for t in tables {
        match t {
            TableSelector::Table { schema, table } => explicit.push(format!("{}.{}", quote_ident(schema), quote_ident(table))),
            TableSelector::Schema(schema) => schemas.push(quote_ident(schema)),
        }
    }
    let mut parts = Vec::new();
    if !explicit.is_empty() {
        parts.push(format!("TABLE {}", explicit.join(", ")));
    }
    if !schemas.is_empty() {
        parts.push(format!("TABLES IN SCHEMA {}", schemas.join(", ")));
    }
    format!("CREATE PUBLICATION {} FOR {}", quote_ident(publication), parts.join(", "))
}

/// Test doubles: a "server" that speaks just enough of the protocol to fail the way a real
/// one fails, without a Postgres.
#[cfg(test)]
pub(crate) mod fake {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the fake server does.
    #[derive(Clone, Copy)]
    pub(crate) enum Behaviour {
        /// Log the client in, then close the connection at its first statement.
        DropAtFirstStatement,
        /// Answer the TLS request with `N` (no TLS here).
        RefuseTls,
    }

    /// Start a fake server for one connection; returns its port.
    pub(crate) async fn serve(behaviour: Behaviour) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut len = [0u8; 4];
            if socket.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            if socket.read_exact(&mut body).await.is_err() {
                return;
            }
            match behaviour {
                Behaviour::RefuseTls => {
                    let _ = socket.write_all(b"N").await;
                }
                Behaviour::DropAtFirstStatement => {
                    // AuthenticationOk, ReadyForQuery (idle).
                    let _ = socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I']).await;
                    let mut statement = [0u8; 1];
                    let _ = socket.read(&mut statement).await;
                }
            }
        });
        port
    }

    /// A client whose connection the server closes at its first statement.
    pub(crate) async fn client_dropped_at_first_statement() -> tokio_postgres::Client {
        let port = serve(Behaviour::DropAtFirstStatement).await;
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("walcast")
            .dbname("app")
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("the fake server logs anyone in");
        tokio::spawn(connection);
        client
    }
}

#[cfg(test)]
mod tests;
