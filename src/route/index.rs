//! Flat mapping rules: one table's rows become one index's documents (`[[sinks.elasticsearch.tables]]`,
//! docs/elasticsearch.md). A rule picks the columns (include / exclude), renames fields, builds
//! the document id, and says which operations apply. Changes of tables no rule names produce
//! nothing. A time-based index (`telemetry-{column:ts:%Y.%m.%d}`) is named per row; a delete
//! goes to the index of its old row's time, an update that changes the day moves the document.

use std::collections::HashMap;
use std::sync::Arc;

use super::action::{ChangeOrigin, EsAction, EsOp, Rejected};
use super::index_time;
use crate::config::{DateParts, EsOpName, EsTableRule, EsTruncate, IndexPattern, TimeSource};
use crate::decode::{
    binary, write_json_binary, write_json_str, write_json_value, Change, Datum, OldTupleKind, Op, Relation, ReplicaIdentity, Tuple,
};

/// What one change turned into.
pub type Routed = Result<EsAction, Rejected>;

/// A rule as configured, keyed by table.
#[derive(Debug, Clone)]
struct Rule {
    /// Position among the rules (keys the cache of rendered names).
    n: usize,
    /// The index as configured (the name itself when it has no placeholder).
    index: Arc<str>,
    pattern: IndexPattern,
    id_columns: Option<Vec<String>>,
    include: Option<Vec<String>>,
    exclude: Vec<String>,
    rename: Vec<(String, String)>,
    insert: bool,
    update: bool,
    delete: bool,
    truncate: Option<EsTruncate>,
}

/// A rule applied to one relation description: column positions resolved.
#[derive(Debug)]
struct Plan {
    rule: Arc<Rule>,
    table: Arc<str>,
    /// Column index and its field name, pre-rendered as a JSON string followed by `:`.
    fields: Vec<(usize, Vec<u8>)>,
    /// Columns of the document id, or why there is no usable id.
    id: Result<Vec<usize>, String>,
    /// Every index of the rule: its name, or its pattern as a wildcard (`telemetry-*`).
    all: Arc<str>,
    /// Where the index name's time comes from, or why it cannot be had.
    time: Result<IndexTime, String>,
}

/// The time a plan's index name is made from.
#[derive(Debug, Clone, Copy)]
enum IndexTime {
    /// A fixed index name.
    Fixed,
    /// The commit timestamp.
    Commit,
    /// The column at this position.
    Column(usize),
}

/// Rendered time-based index names are cached; past this many (rules x hours or days) the
/// cache starts over.
const RENDERED_MAX: usize = 4096;

/// The flat rules of the Elasticsearch sink, with per-relation plans cached.
#[derive(Debug, Default)]
pub struct FlatRules {
    /// Rules by schema, then table (nested so a lookup borrows the names: unmapped tables,
    /// which get no cached plan, cost no allocation per change).
    rules: HashMap<String, HashMap<String, Vec<Arc<Rule>>>>,
    /// Plans per relation OID, for the relation description they were made from.
    plans: HashMap<u32, (Arc<Relation>, Arc<[Plan]>)>,
    /// Index names rendered from time-based patterns, by rule and date (one allocation per
    /// index, not per change).
    rendered: HashMap<(usize, DateParts), Arc<str>>,
}

impl FlatRules {
    /// Rules from the config (already validated).
    pub fn new(rules: &[EsTableRule]) -> Self {
        let mut map: HashMap<String, HashMap<String, Vec<Arc<Rule>>>> = HashMap::new();
        for (n, r) in rules.iter().enumerate() {
            let (schema, table) = (r.table.schema(), r.table.table());
            let rule = Rule {
                n,
                index: Arc::from(r.index.as_str()),
                pattern: r.index.clone(),
                id_columns: r.id_columns.clone(),
                include: r.include.clone(),
                exclude: r.exclude.clone(),
                rename: r.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
                insert: r.ops.contains(&EsOpName::Insert),
                update: r.ops.contains(&EsOpName::Update),
                delete: r.ops.contains(&EsOpName::Delete),
                truncate: r.ops.contains(&EsOpName::Truncate).then_some(r.truncate),
            };
            map.entry(schema.to_string()).or_default().entry(table.to_string()).or_default().push(Arc::new(rule));
        }
        Self { rules: map, plans: HashMap::new(), rendered: HashMap::new() }
    }

    /// The index of a row under `plan`: `values` is the new row, or the old one (`old_kind` set).
    fn index_of(&mut self, plan: &Plan, change: &Change, values: &Tuple, old_kind: Option<OldTupleKind>) -> Result<Arc<str>, String> {
        let date = match plan.time.as_ref().map_err(Clone::clone)? {
            IndexTime::Fixed => return Ok(Arc::clone(&plan.rule.index)),
            IndexTime::Commit => index_time::from_pg_micros(change.commit_ts),
            IndexTime::Column(i) => {
                let col = &change.relation.columns[*i];
                if old_kind == Some(OldTupleKind::Key) && !col.key {
                    return Err(format!(
                        "column {:?} names the index {} but is not part of the replica identity, so deletes and key changes do not carry it; \
                         add it to the primary key or set REPLICA IDENTITY FULL",
                        col.name, plan.rule.index
                    ));
                }
                match values.get(*i) {
                    Some(Datum::Text(text)) => {
                        let text = std::str::from_utf8(text).map_err(|e| format!("column {:?}: {e}", col.name))?;
                        index_time::from_text(text).map_err(|e| format!("column {:?} names the index: {e}", col.name))?
                    }
                    Some(Datum::Binary(bytes)) => binary::with_text(col.type_oid, bytes, |text| {
                        let text = std::str::from_utf8(text).map_err(|e| format!("column {:?}: {e}", col.name))?;
                        index_time::from_text(text).map_err(|e| format!("column {:?} names the index: {e}", col.name))
                    })
                    .map_err(|e| format!("column {:?}: {e}", col.name))??,
                    _ => return Err(format!("column {:?} names the index {} but the row has no value for it", col.name, plan.rule.index)),
                }
            }
        };
        if self.rendered.len() >= RENDERED_MAX {
            self.rendered.clear();
        }
        let rendered = self.rendered.entry((plan.rule.n, date)).or_insert_with(|| Arc::from(plan.rule.pattern.render(date)));
        Ok(Arc::clone(rendered))
    }

    fn plans(&mut self, rel: &Arc<Relation>) -> Option<Arc<[Plan]>> {
        if let Some((cached, plans)) = self.plans.get(&rel.oid) {
            if Arc::ptr_eq(cached, rel) || **cached == **rel {
                return Some(Arc::clone(plans));
            }
        }
        let rules = self.rules.get(&rel.schema).and_then(|t| t.get(&rel.table))?;
        let plans: Arc<[Plan]> = rules.iter().map(|r| plan(r, rel)).collect();
        self.plans.insert(rel.oid, (Arc::clone(rel), Arc::clone(&plans)));
        Some(plans)
    }

    /// Append what `change` (at position `pos` of its batch) becomes under every rule for its
    /// table. Nothing for unmapped tables or operations a rule leaves out.
    pub fn route(&mut self, change: &Change, pos: usize, out: &mut Vec<Routed>) {
        let Some(plans) = self.plans(&change.relation) else { return };
        for plan in plans.iter() {
            let origin = ChangeOrigin { lsn: change.lsn, commit_lsn: change.commit_lsn, table: Arc::clone(&plan.table), change: Some(pos) };
            let reject = |reason: String| Rejected { index: Arc::clone(&plan.rule.index), origin: origin.clone(), reason };
            let action = |index: &Arc<str>, id: String, op: EsOp| EsAction {
                index: Arc::clone(index),
                id,
                version: change.commit_lsn.0,
                op,
                origin: origin.clone(),
            };
            match change.op {
                Op::Insert | Op::Update | Op::Read => {
                    if (matches!(change.op, Op::Insert | Op::Read) && !plan.rule.insert) || (change.op == Op::Update && !plan.rule.update) {
                        continue;
                    }
                    let Some(new) = &change.new else {
                        out.push(Err(reject("the change carries no new row".into())));
                        continue;
                    };
                    let (id, index) = match document_id(&change.relation, &plan.id, new, None)
                        .and_then(|id| Ok((id, self.index_of(plan, change, new, None)?)))
                    {
                        Ok(found) => found,
                        Err(e) => {
                            out.push(Err(reject(e)));
                            continue;
                        }
                    };
                    // A key change (or, in a time-based index, a change of the day): the
                    // document moves to a new id or index, the old one is deleted.
                    let old_doc = match &change.old {
                        Some(old) if change.op == Op::Update => {
                            match document_id(&change.relation, &plan.id, &old.values, Some(old.kind)) {
                                Ok(old_id) => {
                                    // An old key without the time column: the time did not change (the
                                    // documented rule for time-based indexes), so neither did the index.
                                    let old_index =
                                        self.index_of(plan, change, &old.values, Some(old.kind)).unwrap_or_else(|_| Arc::clone(&index));
                                    (old_id != id || old_index != index).then_some((old_index, old_id))
                                }
                                Err(e) => {
                                    out.push(Err(reject(format!("cannot build the old document id of a key change: {e}"))));
                                    continue;
                                }
                            }
                        }
                        _ => None,
                    };
                    let mut doc = Vec::with_capacity(256);
                    let partial = match render_document(&change.relation, &plan.fields, new, &mut doc) {
                        Ok(p) => p,
                        Err(e) => {
                            out.push(Err(reject(e)));
                            continue;
                        }
                    };
                    let op = match (&old_doc, partial) {
                        (_, false) => EsOp::Index(doc),
                        (None, true) => EsOp::Update { fields: doc, base_id: None },
                        (Some((old_index, old_id)), true) if *old_index == index => {
                            EsOp::Update { fields: doc, base_id: Some(old_id.clone()) }
                        }
                        (Some(_), true) => {
                            out.push(Err(reject(format!(
                                "the update moves the document to index {index} but leaves TOASTed values out, and the stored document is in another index; set REPLICA IDENTITY FULL on {}",
                                plan.table
                            ))));
                            continue;
                        }
                    };
                    out.push(Ok(action(&index, id, op)));
                    if let Some((old_index, old_id)) = old_doc {
                        out.push(Ok(action(&old_index, old_id, EsOp::Delete)));
                    }
                }
                Op::Delete => {
                    if !plan.rule.delete {
                        continue;
                    }
                    let Some(old) = &change.old else {
                        out.push(Err(reject(
                            "the delete carries no old key (REPLICA IDENTITY NOTHING?); set REPLICA IDENTITY DEFAULT or FULL".into(),
                        )));
                        continue;
                    };
                    match document_id(&change.relation, &plan.id, &old.values, Some(old.kind))
                        .and_then(|id| Ok((id, self.index_of(plan, change, &old.values, Some(old.kind))?)))
                    {
                        Ok((id, index)) => out.push(Ok(action(&index, id, EsOp::Delete))),
                        Err(e) => out.push(Err(reject(e))),
                    }
                }
                // A re-sync empties the index whatever the rule says about truncates: the rows
                // loaded next are all that may remain.
                // A time-based rule empties every index its pattern makes.
                Op::Truncate if change.truncate.resync => out.push(Ok(action(&plan.all, String::new(), EsOp::DeleteAll))),
                Op::Truncate => match plan.rule.truncate {
                    None => {}
                    Some(EsTruncate::Ignore) => tracing::warn!(
                        table = %plan.table,
                        index = %plan.rule.index,
                        lsn = %change.lsn,
                        "truncate ignored: the index keeps its documents (set truncate = \"delete_all\" to empty it, or leave truncate out of ops to silence this)"
                    ),
                    Some(EsTruncate::DeleteAll) => out.push(Ok(action(&plan.all, String::new(), EsOp::DeleteAll))),
                },
            }
        }
    }
}

fn plan(rule: &Arc<Rule>, rel: &Relation) -> Plan {
    let table: Arc<str> = Arc::from(rel.qualified_name());
    let position = |name: &str| rel.columns.iter().position(|c| c.name == name);
    for name in rule.include.iter().flatten().chain(&rule.exclude).chain(rule.rename.iter().map(|(a, _)| a)) {
        if position(name).is_none() {
            tracing::warn!(table = %table, index = %rule.index, column = %name, "a flat rule names a column the table does not have");
        }
    }
    let mut fields = Vec::new();
    for (i, col) in rel.columns.iter().enumerate() {
        let included = rule.include.as_ref().is_none_or(|inc| inc.contains(&col.name));
        if !included || rule.exclude.contains(&col.name) {
            continue;
        }
        let name = rule.rename.iter().find(|(from, _)| *from == col.name).map_or(col.name.as_str(), |(_, to)| to.as_str());
        let mut key = Vec::with_capacity(name.len() + 3);
        write_json_str(&mut key, name);
        key.push(b':');
        fields.push((i, key));
    }
    let id = match &rule.id_columns {
        Some(names) => names
            .iter()
            .map(|n| position(n).ok_or_else(|| format!("id column {n:?} is not a column of {table}")))
            .collect::<Result<Vec<_>, _>>(),
        None => {
            let key: Vec<usize> = rel.key_columns().collect();
            if key.is_empty() {
                Err(format!("{table} has no primary key (replica identity key); set id_columns for index {}", rule.index))
            } else {
                if rel.replica_identity == ReplicaIdentity::Full {
                    tracing::warn!(table = %table, index = %rule.index, "table has REPLICA IDENTITY FULL, so every column is part of the document id; set id_columns to the primary key");
                }
                Ok(key)
            }
        }
    };
    let time = match rule.pattern.time_source() {
        None => Ok(IndexTime::Fixed),
        Some(TimeSource::CommitDate) => Ok(IndexTime::Commit),
        Some(TimeSource::Column(name)) => match position(name) {
            Some(i) if index_time::is_time_type(rel.columns[i].type_oid) => Ok(IndexTime::Column(i)),
            Some(_) => Err(format!("column {name:?} names index {} but is not a timestamptz, timestamp or date column", rule.index)),
            None => Err(format!("column {name:?} names index {} but is not a column of {table}", rule.index)),
        },
    };
    if let Err(problem) = &time {
        tracing::warn!(table = %table, index = %rule.index, problem = %problem, "a time-based index cannot be named; every change of the table is set aside");
    }
    let all = Arc::from(rule.pattern.wildcard());
    Plan { rule: Arc::clone(rule), table, fields, id, all, time }
}

/// The document id from `values`. One column: its JSON value, unquoted when it is a string
/// (`42`, `abc`); several: a JSON array of the values (`[42,"abc"]`). `old_kind` is set when
/// `values` is an old tuple (only key columns are present in a `Key` tuple).
pub fn document_id(
    rel: &Relation,
    id: &Result<Vec<usize>, String>,
    values: &Tuple,
    old_kind: Option<OldTupleKind>,
) -> Result<String, String> {
    let cols = id.as_ref().map_err(Clone::clone)?;
    if values.len() != rel.columns.len() {
        return Err(format!("{} has {} columns but the tuple carried {}", rel.qualified_name(), rel.columns.len(), values.len()));
    }
    let mut out = Vec::with_capacity(16);
    if cols.len() > 1 {
        out.push(b'[');
    }
    for (n, &i) in cols.iter().enumerate() {
        let col = &rel.columns[i];
        if n > 0 {
            out.push(b',');
        }
        if old_kind == Some(OldTupleKind::Key) && !col.key {
            return Err(format!(
                "id column {:?} is not part of the replica identity, so deletes and key changes do not carry it; \
                 use key columns as id_columns or set REPLICA IDENTITY FULL",
                col.name
            ));
        }
        match values.get(i).unwrap_or(Datum::Null) {
            Datum::Null if cols.len() == 1 => return Err(format!("id column {:?} is null", col.name)),
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Unchanged => return Err(format!("id column {:?} is an unchanged TOASTed value the server did not send", col.name)),
            Datum::Text(text) => write_json_value(&mut out, col.type_oid, text).map_err(|e| format!("id column {:?}: {e}", col.name))?,
            Datum::Binary(bytes) => {
                write_json_binary(&mut out, col.type_oid, bytes).map_err(|e| format!("id column {:?}: {e}", col.name))?
            }
        }
    }
    if cols.len() > 1 {
        out.push(b']');
        return String::from_utf8(out).map_err(|e| e.to_string());
    }
    if out.first() == Some(&b'"') {
        serde_json::from_slice::<String>(&out).map_err(|e| format!("id: {e}"))
    } else {
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// `{"field": value, ...}` over the plan's fields into `out`. Unchanged TOASTed values are left
/// out; returns whether there was one (then the object is a partial document).
fn render_document(rel: &Relation, fields: &[(usize, Vec<u8>)], values: &Tuple, out: &mut Vec<u8>) -> Result<bool, String> {
    if values.len() != rel.columns.len() {
        return Err(format!("{} has {} columns but the tuple carried {}", rel.qualified_name(), rel.columns.len(), values.len()));
    }
    let mut partial = false;
    out.push(b'{');
    let mut first = true;
    for (i, key) in fields {
        let datum = values.get(*i).unwrap_or(Datum::Null);
        if matches!(datum, Datum::Unchanged) {
            partial = true;
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(key);
        match datum {
            Datum::Null | Datum::Unchanged => out.extend_from_slice(b"null"),
            Datum::Text(text) => {
                let col = &rel.columns[*i];
                write_json_value(out, col.type_oid, text).map_err(|e| format!("column {:?}: {e}", col.name))?
            }
            Datum::Binary(bytes) => {
                let col = &rel.columns[*i];
                write_json_binary(out, col.type_oid, bytes).map_err(|e| format!("column {:?}: {e}", col.name))?
            }
        }
    }
    out.push(b'}');
    Ok(partial)
}

#[cfg(test)]
mod tests;
