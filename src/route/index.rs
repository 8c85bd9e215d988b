//! Flat mapping rules: one table's rows become one index's documents (`[[sinks.elasticsearch.tables]]`,
//! docs/elasticsearch.md). A rule picks the columns (include / exclude), renames fields, builds
//! the document id, and says which operations apply. Changes of tables no rule names produce
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::action::{ChangeOrigin, EsAction, EsOp, Rejected};
use crate::config::{EsOpName, EsTableRule, EsTruncate};
use crate::decode::{write_json_str, write_json_value, Change, Datum, OldTupleKind, Op, Relation, ReplicaIdentity};

/// What one change turned into.
pub type Routed = Result<EsAction, Rejected>;

/// A rule as configured, keyed by table.
#[derive(Debug, Clone)]
struct Rule {
    index: Arc<str>,
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
}

/// The flat rules of the Elasticsearch sink, with per-relation plans cached.
#[derive(Debug, Default)]
pub struct FlatRules {
    /// Rules by schema, then table (nested so a lookup borrows the names: unmapped tables,
    /// which get no cached plan, cost no allocation per change).
    rules: HashMap<String, HashMap<String, Vec<Arc<Rule>>>>,
    /// Plans per relation OID, for the relation description they were made from.
    plans: HashMap<u32, (Arc<Relation>, Arc<[Plan]>)>,
}

impl FlatRules {
    /// Rules from the config (already validated).
    pub fn new(rules: &[EsTableRule]) -> Self {
        let mut map: HashMap<String, HashMap<String, Vec<Arc<Rule>>>> = HashMap::new();
        for r in rules {
            let (schema, table) = (r.table.schema(), r.table.table());
            let rule = Rule {
                index: Arc::from(r.index.as_str()),
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
        Self { rules: map, plans: HashMap::new() }
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
            let action = |id: String, op: EsOp| EsAction {
                index: Arc::clone(&plan.rule.index),
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
                    let id = match document_id(&change.relation, &plan.id, new, None) {
                        Ok(id) => id,
                        Err(e) => {
                            out.push(Err(reject(e)));
                            continue;
                        }
                    };
                    // A key change: the document moves to a new id, the old one is deleted.
                    let old_id = match &change.old {
                        Some(old) if change.op == Op::Update => {
                            match document_id(&change.relation, &plan.id, &old.values, Some(old.kind)) {
                                Ok(old_id) if old_id != id => Some(old_id),
                                Ok(_) => None,
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
                    let op = if partial { EsOp::Update { fields: doc, base_id: old_id.clone() } } else { EsOp::Index(doc) };
                    out.push(Ok(action(id, op)));
                    if let Some(old_id) = old_id {
                        out.push(Ok(action(old_id, EsOp::Delete)));
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
                    match document_id(&change.relation, &plan.id, &old.values, Some(old.kind)) {
                        Ok(id) => out.push(Ok(action(id, EsOp::Delete))),
                        Err(e) => out.push(Err(reject(e))),
                    }
                }
                // A re-sync empties the index whatever the rule says about truncates: the rows
                // loaded next are all that may remain.
                Op::Truncate if change.truncate.resync => out.push(Ok(action(String::new(), EsOp::DeleteAll))),
                Op::Truncate => match plan.rule.truncate {
                    None => {}
                    Some(EsTruncate::Ignore) => tracing::warn!(
                        table = %plan.table,
                        index = %plan.rule.index,
                        lsn = %change.lsn,
                        "truncate ignored: the index keeps its documents (set truncate = \"delete_all\" to empty it, or leave truncate out of ops to silence this)"
                    ),
                    Some(EsTruncate::DeleteAll) => out.push(Ok(action(String::new(), EsOp::DeleteAll))),
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
    Plan { rule: Arc::clone(rule), table, fields, id }
}

/// The document id from `values`. One column: its JSON value, unquoted when it is a string
/// (`42`, `abc`); several: a JSON array of the values (`[42,"abc"]`). `old_kind` is set when
/// `values` is an old tuple (only key columns are present in a `Key` tuple).
pub fn document_id(
    rel: &Relation,
    id: &Result<Vec<usize>, String>,
    values: &[Datum],
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
        match &values[i] {
            Datum::Null if cols.len() == 1 => return Err(format!("id column {:?} is null", col.name)),
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Unchanged => return Err(format!("id column {:?} is an unchanged TOASTed value the server did not send", col.name)),
            Datum::Text(text) => write_json_value(&mut out, col.type_oid, text).map_err(|e| format!("id column {:?}: {e}", col.name))?,
            Datum::Binary(bytes) => {
                out.push(b'"');
                out.extend_from_slice(BASE64.encode(bytes).as_bytes());
                out.push(b'"');
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
fn render_document(rel: &Relation, fields: &[(usize, Vec<u8>)], values: &[Datum], out: &mut Vec<u8>) -> Result<bool, String> {
    if values.len() != rel.columns.len() {
        return Err(format!("{} has {} columns but the tuple carried {}", rel.qualified_name(), rel.columns.len(), values.len()));
    }
    let mut partial = false;
    out.push(b'{');
    let mut first = true;
    for (i, key) in fields {
        let datum = &values[*i];
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
                out.push(b'"');
                out.extend_from_slice(BASE64.encode(bytes).as_bytes());
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
    Ok(partial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::{self, text};
    use crate::decode::OldTuple;
    use serde_json::{json, Value};

    fn rel(identity: ReplicaIdentity) -> Arc<Relation> {
        let columns = [("id", true, 23), ("region", true, 25), ("body", false, 25), ("n", false, 23), ("secret", false, 25)];
        fixtures::relation("public", "orders", identity, &columns)
    }

    fn change(op: Op, old: Option<OldTuple>, new: Option<Vec<Datum>>) -> Change {
        fixtures::change(rel(ReplicaIdentity::Default), op, old, new)
    }

    fn rule(extra: &str) -> EsTableRule {
        let text = format!("table = \"public.orders\"\nindex = \"orders\"\n{extra}");
        toml::from_str(&text).expect("rule")
    }

    fn route(rules: &[EsTableRule], c: &Change) -> Vec<Routed> {
        let mut r = FlatRules::new(rules);
        let mut out = Vec::new();
        r.route(c, 3, &mut out);
        out
    }

    fn doc(a: &EsAction) -> Value {
        match &a.op {
            EsOp::Index(d) | EsOp::Update { fields: d, .. } => serde_json::from_slice(d).expect("json"),
            _ => Value::Null,
        }
    }

    fn row(id: &str) -> Vec<Datum> {
        vec![text(id), text("eu"), text("hello"), text("5"), text("pw")]
    }

    #[test]
    fn insert_renders_every_column_and_a_composite_id() {
        let out = route(&[rule("")], &change(Op::Insert, None, Some(row("1"))));
        assert_eq!(out.len(), 1);
        let a = out[0].as_ref().expect("action");
        assert_eq!(&*a.index, "orders");
        assert_eq!(a.id, r#"[1,"eu"]"#);
        assert_eq!(a.version, 0x1_0000_0020);
        assert_eq!(a.origin.change, Some(3));
        assert_eq!(&*a.origin.table, "public.orders");
        assert!(matches!(a.op, EsOp::Index(_)));
        assert_eq!(doc(a), json!({"id": 1, "region": "eu", "body": "hello", "n": 5, "secret": "pw"}));
    }

    #[test]
    fn include_exclude_rename_and_id_columns() {
        let r = rule("id_columns = [\"region\"]\ninclude = [\"id\", \"region\", \"n\", \"secret\"]\nexclude = [\"secret\"]\nrename = { n = \"count\" }");
        let out = route(&[r], &change(Op::Insert, None, Some(row("1"))));
        let a = out[0].as_ref().expect("action");
        assert_eq!(a.id, "eu", "a single string id column is used unquoted");
        assert_eq!(doc(a), json!({"id": 1, "region": "eu", "count": 5}));
    }

    #[test]
    fn single_column_ids() {
        let r = rule("id_columns = [\"id\"]");
        let out = route(std::slice::from_ref(&r), &change(Op::Insert, None, Some(row("42"))));
        assert_eq!(out[0].as_ref().expect("action").id, "42");
        // Strings with JSON specials come out unescaped.
        let r2 = rule("id_columns = [\"body\"]");
        let mut new = row("1");
        new[2] = text("a\"b/é");
        let out = route(&[r2], &change(Op::Insert, None, Some(new)));
        assert_eq!(out[0].as_ref().expect("action").id, "a\"b/é");
        // A null single id is rejected.
        let r3 = rule("id_columns = [\"body\"]");
        let mut new = row("1");
        new[2] = Datum::Null;
        let out = route(&[r3], &change(Op::Insert, None, Some(new)));
        let rej = out[0].as_ref().expect_err("rejected");
        assert!(rej.reason.contains("is null"), "{}", rej.reason);
        assert_eq!(&*rej.index, "orders");
    }

    #[test]
    fn unchanged_toast_makes_a_partial_update() {
        let mut new = row("1");
        new[2] = Datum::Unchanged;
        let out = route(&[rule("")], &change(Op::Update, None, Some(new)));
        let a = out[0].as_ref().expect("action");
        match &a.op {
            EsOp::Update { base_id, .. } => assert_eq!(base_id, &None),
            other => panic!("expected a partial update, got {other:?}"),
        }
        assert_eq!(doc(a), json!({"id": 1, "region": "eu", "n": 5, "secret": "pw"}));
        // Excluded unchanged columns do not make the update partial.
        let out = route(
            &[rule("exclude = [\"body\"]")],
            &change(
                Op::Update,
                None,
                Some({
                    let mut n = row("1");
                    n[2] = Datum::Unchanged;
                    n
                }),
            ),
        );
        assert!(matches!(out[0].as_ref().expect("action").op, EsOp::Index(_)));
    }

    #[test]
    fn delete_uses_the_old_key_and_key_change_moves_the_document() {
        let old = OldTuple { kind: OldTupleKind::Key, values: vec![text("1"), text("eu"), Datum::Null, Datum::Null, Datum::Null] };
        let out = route(&[rule("")], &change(Op::Delete, Some(old.clone()), None));
        let a = out[0].as_ref().expect("action");
        assert_eq!((a.id.as_str(), &a.op), (r#"[1,"eu"]"#, &EsOp::Delete));

        // Key change with an unchanged TOAST column: partial update based on the old id, then delete the old id.
        let mut new = row("2");
        new[2] = Datum::Unchanged;
        let out = route(&[rule("")], &change(Op::Update, Some(old.clone()), Some(new)));
        assert_eq!(out.len(), 2);
        let (w, d) = (out[0].as_ref().expect("write"), out[1].as_ref().expect("delete"));
        assert_eq!(w.id, r#"[2,"eu"]"#);
        assert!(matches!(&w.op, EsOp::Update { base_id: Some(b), .. } if b == r#"[1,"eu"]"#));
        assert_eq!((d.id.as_str(), &d.op), (r#"[1,"eu"]"#, &EsOp::Delete));

        // A non-key id column cannot be read from a key-only old tuple.
        let out = route(&[rule("id_columns = [\"n\"]")], &change(Op::Delete, Some(old), None));
        let rej = out[0].as_ref().expect_err("rejected");
        assert!(rej.reason.contains("replica identity"), "{}", rej.reason);
    }

    #[test]
    fn resync_truncate_empties_the_index_whatever_the_rule() {
        let mut c = change(Op::Truncate, None, None);
        c.truncate.resync = true;
        for r in [rule(""), rule("ops = [\"insert\"]")] {
            let out = route(&[r], &c);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].as_ref().expect("action").op, EsOp::DeleteAll);
        }
    }

    #[test]
    fn ops_filter_and_truncate() {
        let r = rule("ops = [\"insert\", \"delete\"]");
        assert!(route(std::slice::from_ref(&r), &change(Op::Update, None, Some(row("1")))).is_empty());
        assert_eq!(route(std::slice::from_ref(&r), &change(Op::Insert, None, Some(row("1")))).len(), 1);
        assert!(route(&[r], &change(Op::Truncate, None, None)).is_empty());
        assert!(route(&[rule("")], &change(Op::Truncate, None, None)).is_empty(), "ignore by default");
        let out = route(&[rule("truncate = \"delete_all\"")], &change(Op::Truncate, None, None));
        assert_eq!(out[0].as_ref().expect("action").op, EsOp::DeleteAll);
    }

    #[test]
    fn unmapped_tables_produce_nothing_and_two_rules_both_apply() {
        let mut other = rule("");
        other.table = "public.other".parse().expect("table name");
        assert!(route(&[other], &change(Op::Insert, None, Some(row("1")))).is_empty());
        let mut second = rule("include = [\"id\"]");
        second.index = "orders_ids".parse().expect("index name");
        let out = route(&[rule(""), second], &change(Op::Insert, None, Some(row("1"))));
        assert_eq!(out.len(), 2);
        assert_eq!(doc(out[1].as_ref().expect("second")), json!({"id": 1}));
    }

    #[test]
    fn table_without_key_needs_id_columns() {
        let mut c = change(Op::Insert, None, Some(row("1")));
        let mut r = (*c.relation).clone_for_test();
        for col in &mut r.columns {
            col.key = false;
        }
        c.relation = Arc::new(r);
        let out = route(&[rule("")], &c);
        assert!(out[0].as_ref().expect_err("rejected").reason.contains("id_columns"));
        let out = route(&[rule("id_columns = [\"id\"]")], &c);
        assert_eq!(out[0].as_ref().expect("action").id, "1");
    }

    trait CloneForTest {
        fn clone_for_test(&self) -> Relation;
    }
    impl CloneForTest for Relation {
        fn clone_for_test(&self) -> Relation {
            Relation {
                oid: self.oid + 1,
                schema: self.schema.clone(),
                table: self.table.clone(),
                replica_identity: self.replica_identity,
                columns: self.columns.clone(),
            }
        }
    }
}
