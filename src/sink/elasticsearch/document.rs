//! Document rules, SQL side: look up root ids for dependent changes, then rebuild whole documents
//! with the rule's query, inside one read transaction per batch (optionally inside a snapshot
//! exported by the slot). Values go in as bound parameters; nothing is spliced into SQL except
//! identifiers from the config (quoted) and a snapshot name Postgres produced (checked).

use std::error::Error as StdError;

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::super::SinkError;
use super::{interrupted, NAME};
use crate::route::document::DocumentRule;
use crate::route::index::Routed;
use crate::route::{EsAction, EsOp, RuleWork};
use crate::source::{self, connect_sql, quote_ident, ConnParams};

/// A large rebuild is cut in about this many chunks, pipelined (see `rebuild_in`)...
const PIPELINE_DEPTH: usize = 4;
/// ...of at least this many root ids (smaller ones gain nothing from overlapping).
const PIPELINE_MIN_IDS: usize = 64;

/// What failed when `SET TRANSACTION SNAPSHOT` did.
const IMPORT: &str = "importing the exported snapshot";

/// Builds documents for the rules; holds one SQL connection, opened on first use and again
/// after it fails.
pub(super) struct DocumentBuilder {
    params: ConnParams,
    client: Option<Client>,
    /// The first connection, opened in the background.
    connecting: Option<tokio::task::JoinHandle<Result<Client, crate::source::SourceError>>>,
}

/// Root ids (text) bound as `$1`: encoded as the array type the query needs. Text-like, uuid and
/// integer element types are supported; other key types can be cast in the query.
#[derive(Debug)]
struct KeyArray<'a>(&'a [String]);

fn element_supported(ty: &Type) -> bool {
    [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME, Type::UUID, Type::INT2, Type::INT4, Type::INT8].contains(ty)
}

/// `uuid` for `uuid[]`, for messages.
fn element_name(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(e) => e.name().to_string(),
        _ => ty.name().to_string(),
    }
}

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    if hex.len() != 32 {
        return Err(format!("{s:?} is not a uuid"));
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).map_err(|_| format!("{s:?} is not a uuid"))?;
        out[i] = u8::from_str_radix(digits, 16).map_err(|_| format!("{s:?} is not a uuid"))?;
    }
    Ok(out)
}

impl ToSql for KeyArray<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let Kind::Array(elem) = ty.kind() else { return Err(format!("$1 must be an array, not {ty}").into()) };
        let dims = [postgres_protocol::types::ArrayDimension { len: i32::try_from(self.0.len())?, lower_bound: 1 }];
        postgres_protocol::types::array_to_sql(
            dims,
            elem.oid(),
            self.0.iter(),
            |v: &String, buf| {
                match *elem {
                    Type::UUID => postgres_protocol::types::uuid_to_sql(parse_uuid(v)?, buf),
                    Type::INT2 => postgres_protocol::types::int2_to_sql(v.parse()?, buf),
                    Type::INT4 => postgres_protocol::types::int4_to_sql(v.parse()?, buf),
                    Type::INT8 => postgres_protocol::types::int8_to_sql(v.parse()?, buf),
                    _ => postgres_protocol::types::text_to_sql(v, buf),
                }
                Ok(postgres_protocol::IsNull::No)
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(e) if element_supported(e))
    }

    to_sql_checked!();
}

/// The ids of one query run: document id (text) -> document JSON.
type Built = Vec<(String, String)>;

impl DocumentBuilder {
    /// A builder connecting with `params` when first needed.
    /// With `warm`, start connecting now (inside a runtime), so the first batch, often a
    /// snapshot's, does not wait for the connection.
    pub(super) fn new(params: ConnParams, warm: bool) -> Self {
        let connecting = warm.then(|| {
            let params = params.clone();
            tokio::spawn(async move { connect_sql(&params).await })
        });
        Self { params, client: None, connecting }
    }

    /// Map a SQL error to a sink error: connection trouble is retried; a query the server
    /// refuses stops walcast with the rule named.
    fn sql_error(&mut self, rule: &DocumentRule, what: &str, e: &tokio_postgres::Error) -> SinkError {
        let classified = source::classify(e, &self.params);
        if classified.is_retryable() || self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            return SinkError::Transient {
                sink: NAME,
                source: Box::new(classified.in_context(&format!("document rule {:?}: {what}", rule.name))),
            };
        }
        let mut reason = format!("document rule {:?}: {what} failed: {classified}", rule.name);
        if source::find_cause::<tokio_postgres::types::WrongType>(e).is_some() {
            reason.push_str(
                "\n  fix: walcast binds $1 as an array of text, varchar, uuid, smallint, integer or bigint; for other key types cast in the query, e.g. `WHERE t.id::text = ANY($1::text[])`",
            );
        } else {
            reason.push_str("\n  fix: correct the query in the config (run it in psql with an array of ids to see the error)");
        }
        SinkError::Fatal { sink: NAME, reason }
    }

    async fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let connected = match self.connecting.take() {
                Some(task) => match task.await {
                    Ok(result) => result,
                    Err(_) => connect_sql(&self.params).await,
                },
                None => connect_sql(&self.params).await,
            };
            let client = connected.map_err(|e| {
                if e.is_retryable() {
                    SinkError::Transient { sink: NAME, source: Box::new(e.in_context("document rules")) }
                } else {
                    SinkError::Fatal { sink: NAME, reason: format!("document rules cannot read from Postgres: {e}") }
                }
            })?;
            self.client = Some(client);
        }
        // Just set when it was missing.
        self.client.as_mut().ok_or_else(|| SinkError::Fatal { sink: NAME, reason: "no SQL connection".into() })
    }

    /// Rebuild what `work` asks of `rule`, handing each chunk of actions to `out` (which sends
    /// them before the next chunk is built, so memory stays bounded by `max_ids`). Everything is
    /// read in one REPEATABLE READ transaction, inside `exported` when given.
    /// Returns how many root documents were rebuilt (or deleted). Waiting for the batch's
    /// transactions to become visible ends on `shutdown`.
    pub(super) async fn rebuild<W: WriteActions>(
        &mut self,
        rule: &DocumentRule,
        work: &RuleWork,
        exported: Option<&str>,
        shutdown: &CancellationToken,
        out: &mut W,
    ) -> Result<usize, SinkError> {
        let action = |id: String, op: EsOp| work.action(rule, id, op);
        if !work.rejected.is_empty() {
            out.write_actions(work.rejected.iter().cloned().map(Err).collect()).await?;
        }
        if work.delete_all {
            out.write_actions(vec![Ok(action(String::new(), EsOp::DeleteAll))]).await?;
        }
        if work.roots.is_empty() && work.lookups.iter().all(|l| l.is_empty()) && !work.rebuild_all {
            return Ok(0);
        }
        self.read_and_write(rule, work, exported, shutdown, out).await
    }

    /// The read transaction of [`Self::rebuild`]: lookups, then documents chunk by chunk.
    async fn read_and_write<W: WriteActions>(
        &mut self,
        rule: &DocumentRule,
        work: &RuleWork,
        exported: Option<&str>,
        shutdown: &CancellationToken,
        out: &mut W,
    ) -> Result<usize, SinkError> {
        let action = |id: String, op: EsOp| work.action(rule, id, op);
        let mut waited = std::time::Duration::ZERO;
        loop {
            match self.read_once(rule, work, exported, shutdown, out, &action).await {
                Err(ReadOutcome::NotVisible) => {
                    // Commits become visible microseconds after they are flushed (a synchronous
                    // standby round trip with synchronous replication): poll briefly.
                    let pause = std::time::Duration::from_millis(if waited.as_millis() < 20 { 1 } else { 10 });
                    waited += pause;
                    if waited.as_millis() % 10_000 < pause.as_millis() && waited.as_secs() >= 10 {
                        tracing::warn!(rule = %rule.name, waited_s = waited.as_secs(), "a streamed transaction is still not visible to other sessions (synchronous standby not answering?)");
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Err(interrupted("waiting for the batch's transactions to become visible")),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(ReadOutcome::Failed(e)) => return Err(e),
                Ok(n) => return Ok(n),
            }
        }
    }

    /// One attempt of [`Self::read_and_write`].
    async fn read_once<W: WriteActions>(
        &mut self,
        rule: &DocumentRule,
        work: &RuleWork,
        exported: Option<&str>,
        shutdown: &CancellationToken,
        out: &mut W,
        action: &impl Fn(String, EsOp) -> EsAction,
    ) -> Result<usize, ReadOutcome> {
        let outcome = {
            let client = self.client().await.map_err(ReadOutcome::Failed)?;
            match client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await {
                Err(e) => Err(("starting the read transaction".to_string(), Failure::Sql(e))),
                Ok(tx) => match Self::rebuild_in(&tx, rule, work, exported, action, out).await {
                    Ok(n) => tx.commit().await.map(|()| n).map_err(|e| ("committing the read transaction".to_string(), Failure::Sql(e))),
                    // Dropping the transaction rolls it back.
                    Err(e) => Err(e),
                },
            }
        };
        match outcome {
            Ok(n) => Ok(n),
            Err((_, Failure::NotVisible)) => Err(ReadOutcome::NotVisible),
            Err((_, Failure::Sink(e))) => Err(ReadOutcome::Failed(e)),
            // The exporting session ended (its snapshot can no longer be imported): read the
            // current rows instead, which is safe since the stream replays every later change.
            Err((_, Failure::Import(e))) if exported.is_some() && !self.client.as_ref().is_none_or(Client::is_closed) => {
                tracing::warn!(rule = %rule.name, error = %sql_message(&e), "exported snapshot gone; building from the current rows");
                Box::pin(self.read_and_write(rule, work, None, shutdown, out)).await.map_err(ReadOutcome::Failed)
            }
            Err((what, Failure::Sql(e) | Failure::Import(e))) => Err(ReadOutcome::Failed(self.sql_error(rule, &what, &e))),
        }
    }

    async fn rebuild_in<W: WriteActions>(
        tx: &Transaction<'_>,
        rule: &DocumentRule,
        work: &RuleWork,
        exported: Option<&str>,
        action: &impl Fn(String, EsOp) -> EsAction,
        out: &mut W,
    ) -> Result<usize, (String, Failure)> {
        let sql = |what: &str| {
            let what = what.to_string();
            move |e: tokio_postgres::Error| (what, Failure::Sql(e))
        };
        let sink = |e: SinkError| (String::new(), Failure::Sink(e));
        if let Some(name) = exported {
            // A name Postgres made (hex digits and dashes); checked since it is spliced.
            if name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{name}'"))
                    .await
                    .map_err(|e| (IMPORT.to_string(), Failure::Import(e)))?;
            }
        }
        // The walsender can send a transaction before other sessions see it committed (between
        // its WAL flush and its ProcArray removal, or while a synchronous standby is awaited).
        // Built from a snapshot that misses it, a document would carry the new version with old
        // rows for good; so check first and let the caller retry with a new snapshot.
        if exported.is_none() && !work.xids.is_empty() {
            let xids: Vec<i64> = work.xids.iter().map(|&x| i64::from(x)).collect();
            let visible: bool = tx
                .query_one(VISIBLE_SQL, &[&xids])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(sql("checking that the batch's transactions are visible"))?;
            if !visible {
                return Err((String::new(), Failure::NotVisible));
            }
        }
        let mut roots = work.roots.clone();
        for (dep, keys) in work.lookups.iter().enumerate() {
            let (Some(query), false) = (rule.lookups.get(dep).and_then(Option::as_ref), keys.is_empty()) else { continue };
            let what = format!("root_ids_query of dependent {dep}");
            let stmt = tx.prepare(&format!("SELECT r.root_id::text FROM ({query}) AS r(root_id)")).await.map_err(sql(&what))?;
            let keys: Vec<String> = keys.iter().cloned().collect();
            for chunk in keys.chunks(rule.max_ids) {
                for row in tx.query(&stmt, &[&KeyArray(chunk)]).await.map_err(sql(&what))? {
                    if let Ok(Some(id)) = row.try_get::<_, Option<String>>(0) {
                        roots.insert(id);
                    }
                }
            }
        }
        let query = format!("SELECT (d.{})::text, row_to_json(d)::text FROM ({}) AS d", quote_ident(&rule.document_id), rule.query);
        let stmt = tx.prepare(&query).await.map_err(sql("preparing the document query"))?;
        let mut rebuilt_all = 0;
        if work.rebuild_all {
            // A dependent table was truncated: every document may have changed.
            let (schema, table) = &rule.table;
            let declare = format!(
                "DECLARE walcast_roots NO SCROLL CURSOR FOR SELECT ({})::text FROM {}.{}",
                quote_ident(&rule.root_key),
                quote_ident(schema),
                quote_ident(table)
            );
            tx.batch_execute(&declare).await.map_err(sql("listing every root id"))?;
            loop {
                let rows =
                    tx.query(&format!("FETCH {} FROM walcast_roots", rule.max_ids), &[]).await.map_err(sql("listing every root id"))?;
                if rows.is_empty() {
                    break;
                }
                let ids: Vec<String> = rows.iter().filter_map(|r| r.try_get::<_, Option<String>>(0).ok().flatten()).collect();
                rebuilt_all += ids.len();
                let built = Self::build(tx, &stmt, &ids).await?;
                out.write_actions(actions(&ids, built, action)).await.map_err(sink)?;
            }
            tx.batch_execute("CLOSE walcast_roots").await.map_err(sql("listing every root id"))?;
        }
        let roots: Vec<String> = roots.into_iter().collect();
        let rebuilt = roots.len() + rebuilt_all;
        // A large rebuild goes in a few chunks so that building one overlaps sending the one
        // before (the query and `_bulk` then cost about the longer of the two, not the sum).
        let per = roots.len().div_ceil(PIPELINE_DEPTH).max(PIPELINE_MIN_IDS).min(rule.max_ids);
        // A small first chunk gets the first `_bulk` going sooner.
        let first = roots.len().min(PIPELINE_MIN_IDS).min(per);
        let (head, tail) = roots.split_at(first);
        let mut ready: Option<Vec<Routed>> = None;
        for ids in std::iter::once(head).filter(|h| !h.is_empty()).chain(tail.chunks(per)) {
            let send = async {
                match ready.take() {
                    Some(a) => out.write_actions(a).await,
                    None => Ok(()),
                }
            };
            let (built, sent) = tokio::join!(Self::build(tx, &stmt, ids), send);
            sent.map_err(sink)?;
            ready = Some(actions(ids, built?, action));
        }
        if let Some(a) = ready {
            out.write_actions(a).await.map_err(sink)?;
        }
        Ok(rebuilt)
    }

    async fn build(tx: &Transaction<'_>, stmt: &tokio_postgres::Statement, ids: &[String]) -> Result<Built, (String, Failure)> {
        let rows = tx.query(stmt, &[&KeyArray(ids)]).await.map_err(|e| ("running the document query".to_string(), Failure::Sql(e)))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Option<String> = row.try_get(0).map_err(|e| ("reading the document id".to_string(), Failure::Sql(e)))?;
            let doc: String = row.try_get(1).map_err(|e| ("reading the document".to_string(), Failure::Sql(e)))?;
            if let Some(id) = id {
                out.push((id, doc));
            }
        }
        Ok(out)
    }
}

/// `walcast check` for document rules: each query prepares (so `$1` gets a type walcast can
/// bind), the root key and `root_id_column`s exist, and a `root_id_column` survives a DELETE
/// (REPLICA IDENTITY FULL, or part of the primary key).
pub(crate) async fn document_findings(rules: &[crate::config::EsDocumentRule], client: &Client) -> Vec<crate::source::Finding> {
    use crate::source::Finding;
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("sinks.elasticsearch.documents[{i}]");
        let wrapped = format!("SELECT (d.{})::text, row_to_json(d)::text FROM ({}) AS d", quote_ident(&rule.document_id), rule.query);
        match client.prepare(&wrapped).await {
            Ok(stmt) => match stmt.params().first() {
                Some(ty) if <KeyArray<'_> as ToSql>::accepts(ty) => {
                    out.push(Finding::ok(format!("document rule {:?}: query prepares ($1 is {}[])", rule.name, element_name(ty))))
                }
                other => out.push(Finding::fail(
                    format!("document rule {:?}: $1 of {field}.query is {}", rule.name, other.map_or("missing".to_string(), Type::to_string)),
                    "walcast binds $1 as an array of text, varchar, uuid, smallint, integer or bigint; cast in the query, e.g. `WHERE t.id::text = ANY($1::text[])`",
                )),
            },
            Err(e) => out.push(Finding::fail(
                format!("document rule {:?}: {field}.query does not prepare (it must return a `{}` column): {}", rule.name, rule.document_id, sql_message(&e)),
                "fix the query; try it in psql with PREPARE q(uuid[]) AS ... ; EXECUTE q(ARRAY[...])",
            )),
        }
        out.extend(column_finding(client, &rule.name, &rule.table, &rule.root_key, false).await);
        for (j, d) in rule.dependents.iter().enumerate() {
            if let Some(column) = &d.root_id_column {
                out.extend(column_finding(client, &rule.name, &d.table, column, true).await);
            }
            if let Some(query) = &d.root_ids_query {
                let wrapped = format!("SELECT r.root_id::text FROM ({query}) AS r(root_id)");
                match client.prepare(&wrapped).await {
                    Ok(_) => {}
                    Err(e) => out.push(Finding::fail(
                        format!(
                            "document rule {:?}: {field}.dependents[{j}].root_ids_query does not prepare: {}",
                            rule.name,
                            sql_message(&e)
                        ),
                        "fix the query; it gets the changed rows' key_column values in $1 and returns root ids in its first column",
                    )),
                }
                if let Some(key) = &d.key_column {
                    out.extend(column_finding(client, &rule.name, &d.table, key, false).await);
                }
            }
        }
    }
    out
}

/// The server's message for a failed statement (or the connection error).
fn sql_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// Whether `table.column` exists; with `on_delete`, whether a DELETE's old row carries it.
async fn column_finding(
    client: &Client,
    rule: &str,
    table: &crate::config::TableName,
    column: &str,
    on_delete: bool,
) -> Option<crate::source::Finding> {
    use crate::source::Finding;
    let qualified = format!("{}.{}", quote_ident(table.schema()), quote_ident(table.table()));
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey)) \
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped \
             WHERE c.oid = to_regclass($1)",
            &[&qualified, &column],
        )
        .await;
    match row {
        Err(e) => Some(Finding::fail(
            format!("document rule {rule:?}: cannot inspect {table}: {e}"),
            "grant SELECT on the table and USAGE on its schema to the walcast role",
        )),
        Ok(None) => Some(Finding::fail(
            format!("document rule {rule:?}: {table} has no column {column:?} (or the table does not exist)"),
            "fix the table or column name in the rule",
        )),
        Ok(Some(r)) => {
            let identity: String = r.get(0);
            let in_key: bool = r.get(1);
            (on_delete && identity != "f" && !in_key).then(|| {
                Finding::fail(
                    format!("document rule {rule:?}: a DELETE on {table} does not carry {column:?} (REPLICA IDENTITY is not FULL), so the affected document would not be rebuilt"),
                    format!("ALTER TABLE {qualified} REPLICA IDENTITY FULL"),
                )
            })
        }
    }
}

/// A failure inside the read transaction: from SQL (to classify), importing the exported
/// snapshot (gone with its session: read the current rows), or from writing (as is), or a
/// snapshot that does not yet see every transaction of the batch (retry).
#[derive(Debug)]
enum Failure {
    Sql(tokio_postgres::Error),
    Import(tokio_postgres::Error),
    Sink(SinkError),
    NotVisible,
}

/// Whether every xid in `$1` (32-bit, as bigint) is visible in the transaction's snapshot. The
/// xids are widened with the snapshot's epoch: an xid above the low half of xmax belongs to the
/// previous epoch. (`txid_*`: available on every supported Postgres.)
const VISIBLE_SQL: &str = "SELECT coalesce(bool_and(txid_visible_in_snapshot(\
    CASE WHEN (x.hi | v.xid) >= x.xmax THEN (x.hi | v.xid) - 4294967296 ELSE x.hi | v.xid END, x.snap)), true) \
    FROM (SELECT s AS snap, txid_snapshot_xmax(s) AS xmax, txid_snapshot_xmax(s) & ~4294967295::int8 AS hi \
          FROM txid_current_snapshot() s) x, unnest($1::int8[]) AS v(xid)";

/// How one read attempt ended, when not in success.
enum ReadOutcome {
    /// The snapshot missed a transaction of the batch: try again.
    NotVisible,
    /// A failure to report.
    Failed(SinkError),
}

/// Where rebuilt documents are sent (the sink's `write_actions`).
pub(super) trait WriteActions: Send {
    /// Write these actions (and dead-letter the rejected ones) until all are done.
    fn write_actions(&mut self, routed: Vec<Routed>) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
}

/// Index every built document; delete the root ids the query returned nothing for.
fn actions(ids: &[String], built: Built, action: &impl Fn(String, EsOp) -> EsAction) -> Vec<Routed> {
    let mut out = Vec::with_capacity(ids.len());
    let mut found = std::collections::HashSet::with_capacity(built.len());
    for (id, doc) in built {
        found.insert(id.clone());
        out.push(Ok(action(id, EsOp::Index(doc.into_bytes()))));
    }
    for id in ids {
        if !found.contains(id) {
            out.push(Ok(action(id.clone(), EsOp::Delete)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn uuid_text_parses() {
        let u = parse_uuid("3d825f60-9fff-4dfe-b294-1a45fa1e115d").expect("valid");
        assert_eq!(u[0], 0x3d);
        assert_eq!(u[15], 0x5d);
        assert!(parse_uuid("nope").is_err());
        assert!(parse_uuid("3d825f60-9fff-4dfe-b294-1a45fa1e11zz").is_err());
    }

    #[test]
    fn missing_roots_become_deletes() {
        let origin =
            crate::route::ChangeOrigin { lsn: crate::lsn::Lsn(1), commit_lsn: crate::lsn::Lsn(2), table: Arc::from("r"), change: None };
        let act = |id: String, op: EsOp| EsAction { index: Arc::from("i"), id, version: 2, op, origin: origin.clone() };
        let out = actions(&["a".into(), "b".into()], vec![("a".into(), "{}".into())], &act);
        let ops: Vec<(String, &str)> = out.iter().map(|r| r.as_ref().map(|a| (a.id.clone(), a.op.as_str())).expect("ok")).collect();
        assert_eq!(ops, [("a".to_string(), "index"), ("b".to_string(), "delete")]);
    }
}
