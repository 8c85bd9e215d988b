//! Reading tables for a snapshot: one REPEATABLE READ transaction (inside the exported snapshot
//! when there is one), keyset chunks in primary-key order. Every column is read through its
//! type's output function, so a value's text is exactly what pgoutput would have streamed and
//! the decoder's text -> JSON rules apply unchanged.

use std::fmt;
use std::sync::Arc;

use std::pin::Pin;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_core::Stream;
use tokio_postgres::{Client, CopyOutStream};

use super::copy_binary::{self, Item};
use super::copy_text;

use crate::config::TableName;
use crate::decode::binary::{self, CopyForm};
use crate::decode::{Change, Column, Datum, Op, Relation, ReplicaIdentity, Slot, TruncateOptions, Tuple};
use crate::lsn::Lsn;
use crate::source::{classify_query, quote_ident, SourceError, TypeRules};

/// A table, `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRef {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
}

impl From<&TableName> for TableRef {
    fn from(name: &TableName) -> Self {
        Self { schema: name.schema().to_string(), table: name.table().to_string() }
    }
}

impl TableRef {
    fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// The read transaction.
pub(super) struct Reader {
    client: Client,
    cursors: usize,
    /// User-defined column types, looked up once per type for the whole snapshot.
    types: TypeRules,
    /// The database is UTF-8: tables are read by binary COPY (see `copy_binary`), which does
    /// not convert encodings.
    binary: bool,
}

/// One table being read.
pub(super) struct TableReader {
    relation: Arc<Relation>,
    /// Positions of the primary-key columns in key order (empty: no primary key).
    key: Vec<usize>,
    /// `SELECT <columns> FROM <table>` read by COPY. In text format COPY writes every value as
    /// its type's output function's text (what pgoutput streams) without the cast to `text` a
    /// query needs for text results; in binary format the columns `decode::binary` knows are
    /// selected as they are and every other one through its output function.
    copy_select: String,
    /// Per column, how a binary COPY sends it; `None`: the table is read in text format.
    binary: Option<Vec<CopyForm>>,
    /// The key columns qualified with the table: `ORDER BY` would take a bare name for an
    /// output column of that name, which may be another column's text.
    order_by: String,
    /// The key columns, `k1, k2`, and their types (`format_type`): the order and the bound.
    order: String,
    key_types: Vec<String>,
    after: Option<Vec<String>>,
    /// Cursor name, for a table without a primary key.
    cursor: Option<String>,
    /// The keyset query being read.
    window: Option<Window>,
    /// The last window ended short: the table has no row after `after`.
    exhausted: bool,
    seq: u64,
    /// Which of a chunk's keys (`$1..$k`: one text array per key column) have no row: the
    /// 1-based positions. `None` without a primary key.
    missing: Option<String>,
}

/// One keyset query: up to [`READ_AHEAD_CHUNKS`] chunks in one `COPY (SELECT ...) TO STDOUT`
/// whose rows the server sends while walcast renders the ones before (no round trip per chunk).
struct Window {
    stream: Pin<Box<CopyOutStream>>,
    /// Rows it may still send.
    left: u64,
    /// Data received and not read yet (whole rows, but for a row split across messages).
    rest: Bytes,
    /// A binary COPY's header is still to be read.
    header: bool,
}

impl TableReader {
    /// The COPY of the next `window` rows after `after` (all from the start without it).
    fn copy_query(&self, window: usize) -> String {
        let bound = match &self.after {
            None => String::new(),
            Some(after) => {
                let values: Vec<String> =
                    after.iter().zip(&self.key_types).map(|(v, ty)| format!("{}::text::{ty}", copy_text::literal(v))).collect();
                format!(" WHERE ({}) > ({})", self.order, values.join(", "))
            }
        };
        let format = if self.binary.is_some() { " (FORMAT binary)" } else { "" };
        format!("COPY ({}{bound} ORDER BY {} LIMIT {window}) TO STDOUT{format}", self.copy_select, self.order_by)
    }
}

/// Rows of one chunk as changes, and the key to resume after.
pub(super) struct Chunk {
    pub changes: Vec<Change>,
    pub after: Option<Vec<String>>,
}

/// The one Postgres classifier, with the statement named.
fn query_error(what: &str, e: &tokio_postgres::Error) -> SourceError {
    classify_query(e, &format!("snapshot: {what}"))
}

impl Reader {
    /// Open the read transaction on `client`, importing `exported` when given.
    pub(super) async fn begin(client: Client, exported: Option<&str>) -> Result<Self, SourceError> {
        let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
        if let Some(name) = exported {
            // A name Postgres made; checked since it is spliced.
            if !name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err(SourceError::Query(format!("snapshot: unexpected snapshot name {name:?}")));
            }
            sql.push_str(&format!("SET TRANSACTION SNAPSHOT '{name}';"));
        }
        client.batch_execute(&sql).await.map_err(|e| query_error("starting the read transaction", &e))?;
        let encoding = client
            .query_one("SELECT current_setting('server_encoding')", &[])
            .await
            .map_err(|e| query_error("reading the server encoding", &e))?;
        let binary = encoding.try_get::<_, String>(0).is_ok_and(|e| e == "UTF8");
        Ok(Self { client, cursors: 0, types: TypeRules::new(), binary })
    }

    /// Rows `table` holds, for progress. `reltuples` when the table was analyzed (or vacuumed).
    /// Without it (-1: never analyzed; 0: analyzed when empty, maybe filled since) the planner's
    /// guess from the table's current size in pages and its columns' widths is cheap but can be
    /// far off (text widths are guessed), so a table the planner thinks small is counted:
    /// `count(*)` in this transaction is exact, and below [`COUNT_BELOW`] rows it costs about a
    /// second at most; a bigger one keeps the planner's guess rather than scan it twice.
    pub(super) async fn estimate_rows(&mut self, table: &TableRef) -> Result<u64, SourceError> {
        let name = table.quoted();
        let what = || format!("estimating the rows of {table}");
        let row = self
            .client
            .query_opt("SELECT c.reltuples::int8 FROM pg_class c WHERE c.oid = $1::text::regclass", &[&name])
            .await
            .map_err(|e| query_error(&what(), &e))?
            .ok_or_else(|| SourceError::Query(format!("snapshot: table {table} not found")))?;
        let reltuples: i64 = row.get(0);
        if reltuples > 0 {
            return Ok(reltuples as u64);
        }
        let plan = self.client.query(&format!("EXPLAIN SELECT 1 FROM {name}"), &[]).await.map_err(|e| query_error(&what(), &e))?;
        let planned = plan.first().and_then(|r| r.try_get::<_, String>(0).ok()).as_deref().and_then(plan_rows);
        if planned.is_some_and(|n| n >= COUNT_BELOW) {
            return Ok(planned.unwrap_or_default());
        }
        let count = self.client.query_one(&format!("SELECT count(*) FROM {name}"), &[]).await.map_err(|e| query_error(&what(), &e))?;
        Ok(u64::try_from(count.get::<_, i64>(0)).unwrap_or_default())
    }

    /// Describe `table` and prepare its chunk queries; resume after `after` when given.
    pub(super) async fn table(&mut self, table: &TableRef, after: Option<Vec<String>>) -> Result<TableReader, SourceError> {
        let name = table.quoted();
        let rel = self
            .client
            .query_opt("SELECT c.oid::int8, c.relreplident::text FROM pg_class c WHERE c.oid = $1::text::regclass", &[&name])
            .await
            .map_err(|e| query_error(&format!("describing {table}"), &e))?
            .ok_or_else(|| SourceError::Query(format!("snapshot: table {table} not found")))?;
        let oid = u32::try_from(rel.get::<_, i64>(0)).unwrap_or_default();
        let identity = match rel.get::<_, String>(1).as_str() {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        };
        let cols = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid::int8, a.atttypmod, \
                        quote_ident(pn.nspname) || '.' || quote_ident(p.proname), \
                        pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        COALESCE(array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) + 1, 0) \
                 FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_proc p ON p.oid = t.typoutput \
                 JOIN pg_namespace pn ON pn.oid = p.pronamespace \
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY a.attnum",
                &[&name],
            )
            .await
            .map_err(|e| query_error(&format!("describing the columns of {table}"), &e))?;
        let mut columns = Vec::with_capacity(cols.len());
        let mut outputs = Vec::with_capacity(cols.len());
        let mut keyed: Vec<(i32, usize, String)> = Vec::new();
        for (i, c) in cols.iter().enumerate() {
            let col_name: String = c.get(0);
            let key_pos: i32 = c.get(5);
            if key_pos > 0 {
                keyed.push((key_pos, i, c.get(4)));
            }
            outputs.push(format!("{}({})::text", c.get::<_, String>(3), quote_ident(&col_name)));
            columns.push(Column {
                key: key_pos > 0,
                name: col_name,
                type_oid: u32::try_from(c.get::<_, i64>(1)).unwrap_or_default(),
                type_modifier: c.get(2),
            });
        }
        // The same value rules as the stream's (a user-defined type's text by its built-in rule).
        if TypeRules::needed(&columns) {
            self.types
                .resolve(&self.client, &mut columns)
                .await
                .map_err(|e| query_error(&format!("describing the column types of {table}"), &e))?;
        }
        keyed.sort();
        let key: Vec<usize> = keyed.iter().map(|(_, i, _)| *i).collect();
        let key_cols: Vec<String> = key.iter().map(|&i| quote_ident(&columns[i].name)).collect();
        let select = format!("SELECT {} FROM {name}", outputs.join(", "));
        let plain: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
        let (copy_select, binary) = if self.binary {
            // By the column's own type: a user-defined type (a domain, an enum) is read as text.
            let forms: Vec<Option<CopyForm>> =
                cols.iter().map(|c| u32::try_from(c.get::<_, i64>(1)).ok().and_then(binary::copy_form)).collect();
            let selected: Vec<&str> =
                forms.iter().zip(plain.iter().zip(&outputs)).map(|(f, (p, o))| if f.is_some() { p.as_str() } else { o.as_str() }).collect();
            // A column selected through its output function arrives as its text.
            (format!("SELECT {} FROM {name}", selected.join(", ")), Some(forms.into_iter().map(|f| f.unwrap_or(CopyForm::Text)).collect()))
        } else {
            (format!("SELECT {} FROM {name}", plain.join(", ")), None)
        };
        let order = key_cols.join(", ");
        let order_by = key_cols.iter().map(|c| format!("{name}.{c}")).collect::<Vec<_>>().join(", ");
        let key_types: Vec<String> = keyed.iter().map(|(_, _, ty)| ty.clone()).collect();
        // The chunk's first and last keys bound the lookup (`$k+1..$2k`, `$2k+1..$3k`), so the
        // planner can read that key range once (hash anti join) instead of probing every key.
        let missing = (!key.is_empty()).then(|| {
            let k = key.len();
            let arrays: Vec<String> = (1..=k).map(|n| format!("${n}::text[]")).collect();
            let names: Vec<String> = (1..=k).map(|n| format!("c{n}")).collect();
            let equal: Vec<String> = keyed
                .iter()
                .enumerate()
                .map(|(n, (_, i, ty))| format!("t.{} = (k.c{})::{ty}", quote_ident(&columns[*i].name), n + 1))
                .collect();
            let bound = |first: usize| -> Vec<String> {
                keyed.iter().enumerate().map(|(n, (_, _, ty))| format!("${}::text::{ty}", first + n)).collect()
            };
            let tcols: Vec<String> = key.iter().map(|&i| format!("t.{}", quote_ident(&columns[i].name))).collect();
            format!(
                "SELECT k.i::int8 FROM unnest({}) WITH ORDINALITY AS k({}, i) WHERE NOT EXISTS \
                 (SELECT 1 FROM {name} t WHERE {} AND ({tc}) >= ({}) AND ({tc}) <= ({}))",
                arrays.join(", "),
                names.join(", "),
                equal.join(" AND "),
                bound(k + 1).join(", "),
                bound(2 * k + 1).join(", "),
                tc = tcols.join(", "),
            )
        });
        let relation =
            Arc::new(Relation { oid, schema: table.schema.clone(), table: table.table.clone(), replica_identity: identity, columns });
        let cursor = if key.is_empty() {
            tracing::warn!(table = %table, "table has no primary key: its snapshot is read with a cursor and restarts from the beginning if interrupted");
            self.cursors += 1;
            let cursor = format!("walcast_snapshot_{}", self.cursors);
            self.client
                .batch_execute(&format!("DECLARE {cursor} NO SCROLL CURSOR FOR {select}"))
                .await
                .map_err(|e| query_error(&format!("reading {table}"), &e))?;
            Some(cursor)
        } else {
            None
        };
        Ok(TableReader {
            relation,
            key,
            copy_select,
            binary,
            order_by,
            order,
            key_types,
            after: if cursor.is_some() { None } else { after },
            cursor,
            window: None,
            exhausted: false,
            seq: 0,
            missing,
        })
    }

    /// Read the next chunk of at most `limit` rows as [`Op::Read`] changes at `point`. A table
    /// with a primary key is read in windows of [`READ_AHEAD_CHUNKS`] chunks, each one keyset
    /// query streamed; a chunk ends at `limit` rows whatever the window, so progress (`after`)
    /// is recorded per chunk as before.
    pub(super) async fn next_chunk(&mut self, t: &mut TableReader, limit: usize, point: Lsn, commit_ts: i64) -> Result<Chunk, SourceError> {
        let rel = Arc::clone(&t.relation);
        let what = || format!("reading {}.{}", rel.schema, rel.table);
        let columns = t.relation.columns.len();
        let mut changes = Vec::with_capacity(limit.min(MAX_PREALLOCATED_ROWS));
        if let Some(cursor) = &t.cursor {
            let fetched = self.client.query(&format!("FETCH {limit} FROM {cursor}"), &[]).await.map_err(|e| query_error(&what(), &e))?;
            // Every value of the chunk in one buffer, each a slice of it: one allocation per
            // chunk instead of one per value.
            let mut text = BytesMut::new();
            let mut spans = Vec::with_capacity(fetched.len() * columns);
            for row in &fetched {
                for i in 0..columns {
                    let v: Option<&str> = row.try_get(i).map_err(|e| query_error(&what(), &e))?;
                    spans.push(v.map(|s| {
                        let at = text.len();
                        text.extend_from_slice(s.as_bytes());
                        at..text.len()
                    }));
                }
            }
            let text = text.freeze();
            for row in spans.chunks(columns) {
                let slots = row.iter().map(|span| span.clone().map_or(Slot::Null, |r| Slot::Text { start: r.start, end: r.end })).collect();
                let values = Tuple::from_slots(text.clone(), slots)
                    .ok_or_else(|| SourceError::Query(format!("snapshot: {}: a value lies outside the rows read", what())))?;
                changes.push(t.read_change(values, point, commit_ts));
            }
        } else {
            let bad = |e: String| SourceError::Query(format!("snapshot: {}: {e}", what()));
            while changes.len() < limit && !t.exhausted {
                if t.window.is_none() {
                    // The next window starts after the last row read.
                    if let Some(last) = changes.last() {
                        t.after = Some(key_texts(last, &t.key).map_err(bad)?);
                    }
                    let window = limit.saturating_mul(READ_AHEAD_CHUNKS);
                    let stream = self.client.copy_out(t.copy_query(window).as_str()).await.map_err(|e| query_error(&what(), &e))?;
                    t.window = Some(Window { stream: Box::pin(stream), left: window as u64, rest: Bytes::new(), header: true });
                }
                let Some(w) = t.window.as_mut() else { continue };
                // Values are slices of the received message: no copy.
                let item = match &t.binary {
                    Some(forms) => copy_binary::next_row(&w.rest, forms, &mut w.header).map_err(bad)?,
                    None => copy_text::next_row(&w.rest, columns).map_err(bad)?.map(|(values, used)| Item::Row(values, used)),
                };
                match item {
                    Some(Item::Row(values, used)) => {
                        w.rest.advance(used);
                        w.left = w.left.saturating_sub(1);
                        changes.push(t.read_change(values, point, commit_ts));
                        continue;
                    }
                    // The trailer: the stream ends next.
                    Some(Item::End(used)) => {
                        w.rest.advance(used);
                        continue;
                    }
                    None => {}
                }
                match std::future::poll_fn(|cx| w.stream.as_mut().poll_next(cx)).await {
                    Some(data) => {
                        let data = data.map_err(|e| query_error(&what(), &e))?;
                        w.rest = if w.rest.is_empty() {
                            data
                        } else {
                            // A row split across messages (the server sends one per row).
                            let mut joined = BytesMut::from(&w.rest[..]);
                            joined.extend_from_slice(&data);
                            joined.freeze()
                        };
                    }
                    None if !w.rest.is_empty() => return Err(bad("COPY ended inside a row".into())),
                    None => {
                        t.exhausted = w.left > 0;
                        t.window = None;
                    }
                }
            }
            if let Some(last) = changes.last() {
                t.after = Some(key_texts(last, &t.key).map_err(bad)?);
            }
        }
        Ok(Chunk { changes, after: t.after.clone() })
    }
}

impl Reader {
    /// Which of `rows` (read from `t`, possibly in another snapshot) have no row with the same
    /// primary key in this transaction's snapshot: their positions in `rows`. Nothing for a
    /// table without a primary key.
    pub(super) async fn missing(&mut self, t: &TableReader, rows: &[Change]) -> Result<Vec<usize>, SourceError> {
        let Some(sql) = &t.missing else { return Ok(Vec::new()) };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let what = || format!("checking which rows of {}.{} still exist", t.relation.schema, t.relation.table);
        let mut arrays: Vec<Vec<String>> = vec![Vec::with_capacity(rows.len()); t.key.len()];
        for row in rows {
            let keys = key_texts(row, &t.key).map_err(|e| SourceError::Query(format!("snapshot: {}: {e}", what())))?;
            for (array, text) in arrays.iter_mut().zip(keys) {
                array.push(text);
            }
        }
        // Rows come in key order: the first and last keys bound the range.
        let first: Vec<&str> = arrays.iter().map(|a| a.first().map_or("", String::as_str)).collect();
        let last: Vec<&str> = arrays.iter().map(|a| a.last().map_or("", String::as_str)).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .chain(first.iter().chain(&last).map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)))
            .collect();
        let found = self.client.query(sql.as_str(), &params).await.map_err(|e| query_error(&what(), &e))?;
        let mut out = Vec::with_capacity(found.len());
        for row in found {
            let position: i64 = row.try_get(0).map_err(|e| query_error(&what(), &e))?;
            if let Some(p) = usize::try_from(position).ok().and_then(|p| p.checked_sub(1)) {
                out.push(p);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl TableReader {
    /// The next row of the table as an [`Op::Read`] change at `point`.
    fn read_change(&mut self, values: Tuple, point: Lsn, commit_ts: i64) -> Change {
        self.seq += 1;
        Change {
            lsn: point,
            commit_lsn: point,
            xid: 0,
            commit_ts,
            seq: self.seq - 1,
            relation: Arc::clone(&self.relation),
            op: Op::Read,
            old: None,
            new: Some(values),
            truncate: TruncateOptions::default(),
        }
    }

    /// The truncate a re-sync sends before the table's first chunk: every sink drops what it
    /// holds of the table, then the chunks load what exists now.
    pub(super) fn resync_truncate(&self, point: Lsn, commit_ts: i64) -> Change {
        Change {
            lsn: point,
            commit_lsn: point,
            xid: 0,
            commit_ts,
            seq: 0,
            relation: Arc::clone(&self.relation),
            op: Op::Truncate,
            old: None,
            new: None,
            truncate: TruncateOptions { resync: true, ..TruncateOptions::default() },
        }
    }

    /// Whether the table has a primary key (keyset chunks, and [`Reader::missing`] works).
    pub(super) fn has_key(&self) -> bool {
        self.missing.is_some()
    }
}

/// Chunks one keyset query reads: a round trip per this many chunks, and the server sends the
/// rows of the next chunk while walcast renders the current one.
const READ_AHEAD_CHUNKS: usize = 64;

/// Rows a chunk's buffers are sized for up front (`chunk_rows` may be large; buffers grow).
const MAX_PREALLOCATED_ROWS: usize = 10_000;

/// Tables the planner guesses at this many rows or more are not counted (see
/// [`Reader::estimate_rows`]).
const COUNT_BELOW: u64 = 10_000_000;

/// The row count of the top node of a text `EXPLAIN` line (`... rows=2550 width=4)`).
fn plan_rows(line: &str) -> Option<u64> {
    let rest = &line[line.find(" rows=")? + 6..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// The text of the `key` columns of a row read by [`Reader::next_chunk`] (key columns are never
/// NULL), as their output function writes it.
fn key_texts(row: &Change, key: &[usize]) -> Result<Vec<String>, String> {
    let values = row.new.as_ref().ok_or("a row without its values")?;
    let utf8 = |text: &[u8]| std::str::from_utf8(text).map(str::to_string).map_err(|_| "a key value is not valid UTF-8".to_string());
    key.iter()
        .map(|&i| match values.get(i) {
            Some(Datum::Text(text)) => utf8(text),
            Some(Datum::Binary(bytes)) => {
                let type_oid = row.relation.columns.get(i).map_or(0, |c| c.type_oid);
                binary::with_text(type_oid, bytes, utf8)?
            }
            _ => Err("a row without its key".to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn plan_rows_reads_the_top_node() {
        assert_eq!(super::plan_rows("Seq Scan on big  (cost=0.00..28850.00 rows=2000000 width=0)"), Some(2_000_000));
        assert_eq!(super::plan_rows("Result  (cost=0.00..0.01 rows=1 width=4)"), Some(1));
        assert_eq!(super::plan_rows("Seq Scan on t"), None);
    }

    use crate::config::Config;

    #[tokio::test]
    async fn a_connection_lost_while_listing_tables_is_retried() {
        let config = Config::parse(
            "[source]\nhost = \"127.0.0.1\"\ndatabase = \"app\"\nuser = \"walcast\"\n\n[sinks.jsonl]\npath = \"-\"\n",
            Path::new("test.toml"),
        )
        .expect("valid");
        let client = crate::source::fake::client_dropped_at_first_statement().await;
        let e = super::super::tables_to_load(&config, &client).await.expect_err("the server hung up");
        assert!(e.is_retryable(), "{e}");
    }
}
