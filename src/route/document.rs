//! Nested document rules (`[[sinks.elasticsearch.documents]]`, docs/elasticsearch.md "Document
//! rules"): which root documents a batch of changes affects. This part only reads the changes;
//! the Elasticsearch sink then resolves the lookups and rebuilds the documents with SQL
//! (src/sink/elasticsearch/document.rs).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::action::{ChangeOrigin, EsAction, EsOp, Rejected};
use crate::config::{EsDocumentRule, TableName};
use crate::decode::{binary, Change, Datum, OldTupleKind, Op};
use crate::lsn::Lsn;

/// A document rule as configured.
#[derive(Debug)]
pub struct DocumentRule {
    /// Rule name.
    pub name: Arc<str>,
    /// Target index.
    pub index: Arc<str>,
    /// Root table `(schema, table)`.
    pub table: (String, String),
    /// Root id column of the root table.
    pub root_key: String,
    /// The document query (`$1` = root ids).
    pub query: String,
    /// Result column holding the document id.
    pub document_id: String,
    /// Root ids per query run.
    pub max_ids: usize,
    /// `root_ids_query` of each dependent (`None` for column dependents), by dependent position.
    pub lookups: Vec<Option<String>>,
}

/// How a change of one table reaches a rule.
#[derive(Debug, Clone)]
enum Trigger {
    /// The rule's root table: the row's `root_key` is the root id.
    Root { rule: usize },
    /// A dependent whose column holds the root id.
    Column { rule: usize, column: String },
    /// A dependent whose `key_column` values are looked up with `root_ids_query`.
    Lookup { rule: usize, dependent: usize, key_column: String },
}

/// The document rules of the Elasticsearch sink.
#[derive(Debug, Default)]
pub struct DocumentRules {
    rules: Vec<Arc<DocumentRule>>,
    /// Triggers by schema, then table (nested so a lookup borrows the names, allocating nothing).
    by_table: HashMap<String, HashMap<String, Vec<Trigger>>>,
}

/// What one batch asks one rule to do.
#[derive(Debug, Default, Clone)]
pub struct RuleWork {
    /// Root ids to rebuild (de-duplicated, as text).
    pub roots: BTreeSet<String>,
    /// Keys to look up, per dependent position (only lookup dependents have entries).
    pub lookups: Vec<BTreeSet<String>>,
    /// The root table was truncated: delete every document first.
    pub delete_all: bool,
    /// A dependent table was truncated: rebuild every document.
    pub rebuild_all: bool,
    /// Highest commit LSN among the changes that touched the rule: the version of its writes.
    pub version: Lsn,
    /// Highest change LSN among them (for dead-letter records).
    pub lsn: Lsn,
    /// Changes whose root id could not be found, with the reason.
    pub rejected: Vec<Rejected>,
    /// Transactions of those changes: the rebuild must see every one of them committed.
    pub xids: BTreeSet<u32>,
}

impl RuleWork {
    /// Whether the batch touched the rule at all.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
            && self.lookups.iter().all(BTreeSet::is_empty)
            && !self.delete_all
            && !self.rebuild_all
            && self.rejected.is_empty()
    }

    /// Add `later`'s work (of changes after this work's) to this one.
    fn absorb(&mut self, later: RuleWork) {
        self.roots.extend(later.roots);
        for (mine, theirs) in self.lookups.iter_mut().zip(later.lookups) {
            mine.extend(theirs);
        }
        self.delete_all |= later.delete_all;
        self.rebuild_all |= later.rebuild_all;
        self.version = self.version.max(later.version);
        self.lsn = self.lsn.max(later.lsn);
        self.rejected.extend(later.rejected);
        self.xids.extend(later.xids);
    }

    /// Where rebuilt documents come from, for dead letters.
    pub fn origin(&self, rule: &DocumentRule) -> ChangeOrigin {
        ChangeOrigin { lsn: self.lsn, commit_lsn: self.version, table: Arc::clone(&rule.name), change: None }
    }

    /// The action writing (or deleting) root document `id` of `rule`, versioned by this work.
    pub fn action(&self, rule: &DocumentRule, id: String, op: EsOp) -> EsAction {
        EsAction { index: Arc::clone(&rule.index), id, version: self.version.0, op, origin: self.origin(rule) }
    }
}

fn split(table: &TableName) -> (String, String) {
    (table.schema().to_string(), table.table().to_string())
}

impl DocumentRules {
    /// Rules from the config (already validated).
    pub fn new(rules: &[EsDocumentRule]) -> Self {
        let mut out = Self::default();
        for (i, r) in rules.iter().enumerate() {
            out.add_trigger(&r.table, Trigger::Root { rule: i });
            for (j, d) in r.dependents.iter().enumerate() {
                let trigger = match (&d.root_id_column, &d.key_column) {
                    (Some(column), _) => Trigger::Column { rule: i, column: column.clone() },
                    (None, Some(key)) => Trigger::Lookup { rule: i, dependent: j, key_column: key.clone() },
                    (None, None) => continue, // refused by validation
                };
                out.add_trigger(&d.table, trigger);
            }
            out.rules.push(Arc::new(DocumentRule {
                name: Arc::from(r.name.as_str()),
                index: Arc::from(r.index.as_str()),
                table: split(&r.table),
                root_key: r.root_key.clone(),
                query: r.query.clone(),
                document_id: r.document_id.clone(),
                max_ids: r.max_ids,
                lookups: r.dependents.iter().map(|d| d.root_ids_query.clone()).collect(),
            }));
        }
        out
    }

    fn add_trigger(&mut self, table: &TableName, trigger: Trigger) {
        let (schema, table) = split(table);
        self.by_table.entry(schema).or_default().entry(table).or_default().push(trigger);
    }

    /// The rules, by position.
    pub fn rules(&self) -> &[Arc<DocumentRule>] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Gather what `changes` ask of each rule (one [`RuleWork`] per rule, by position).
    pub fn collect(&self, changes: &[Change]) -> Vec<RuleWork> {
        self.collect_at(changes, 0)
    }

    /// What a batch asks of each rule now, and what waits for a later batch (one [`RuleWork`]
    /// per rule in each). The changes of a transaction still open at the batch's end (after its
    /// last commit, `checkpoint`) only join `deferred`, which is rebuilt with the batch holding
    /// their commit: a transaction spanning batches rebuilds each document once, after all of
    /// it was read. Rejected changes stay with their batch (they are dead-lettered with it).
    /// Returns (now, the new deferred work); the caller keeps the old one until `now` is done,
    /// so a batch written again plans the same.
    pub fn plan(
        &self,
        changes: &[Change],
        checkpoint: Option<Lsn>,
        snapshot: bool,
        deferred: &[RuleWork],
    ) -> (Vec<RuleWork>, Vec<RuleWork>) {
        // Commit records follow each other in the WAL: a transaction after the last commit has
        // its commit LSN at or past that commit's end.
        let open_from = match (snapshot, checkpoint) {
            (true, _) => changes.len(),
            (false, None) => 0,
            (false, Some(cp)) => changes.iter().position(|c| c.commit_lsn >= cp).unwrap_or(changes.len()),
        };
        let mut now = self.collect_at(&changes[..open_from], 0);
        let mut open = self.collect_at(&changes[open_from..], open_from);
        for (n, o) in now.iter_mut().zip(&mut open) {
            n.rejected.append(&mut o.rejected);
        }
        let mut held = if deferred.len() == self.rules.len() { deferred.to_vec() } else { self.collect_at(&[], 0) };
        if snapshot || checkpoint.is_some() {
            // The deferred transaction committed in this batch (transactions arrive whole, one
            // after the other): its work comes first.
            for (h, n) in held.iter_mut().zip(now) {
                h.absorb(n);
            }
            (held, open)
        } else {
            for (h, o) in held.iter_mut().zip(open) {
                h.absorb(o);
            }
            (now, held)
        }
    }

    fn collect_at(&self, changes: &[Change], offset: usize) -> Vec<RuleWork> {
        let mut work: Vec<RuleWork> =
            self.rules.iter().map(|r| RuleWork { lookups: vec![BTreeSet::new(); r.lookups.len()], ..RuleWork::default() }).collect();
        if self.rules.is_empty() {
            return work;
        }
        for (pos, change) in changes.iter().enumerate() {
            let rel = &change.relation;
            // Cheap check first: most tables of a busy database have no rule.
            let Some(triggers) = self.by_table.get(&rel.schema).and_then(|t| t.get(&rel.table)) else { continue };
            for trigger in triggers {
                let (rule, column) = match trigger {
                    Trigger::Root { rule } => (*rule, self.rules[*rule].root_key.as_str()),
                    // A snapshot loads root tables; rows of dependents read by it add nothing,
                    // nor does a re-sync's truncate of a dependent (the roots are reloaded).
                    _ if change.op == Op::Read || change.truncate.resync => continue,
                    Trigger::Column { rule, column } => (*rule, column.as_str()),
                    Trigger::Lookup { rule, key_column, .. } => (*rule, key_column.as_str()),
                };
                let w = &mut work[rule];
                if change.op != Op::Read {
                    w.xids.insert(change.xid);
                }
                w.version = w.version.max(change.commit_lsn);
                w.lsn = w.lsn.max(change.lsn);
                if change.op == Op::Truncate {
                    match trigger {
                        Trigger::Root { .. } => w.delete_all = true,
                        _ => w.rebuild_all = true,
                    }
                    continue;
                }
                let values = match row_values(change, column) {
                    Ok(v) => v,
                    Err(reason) => {
                        let r = &self.rules[rule];
                        w.rejected.push(Rejected {
                            index: Arc::clone(&r.index),
                            origin: ChangeOrigin {
                                lsn: change.lsn,
                                commit_lsn: change.commit_lsn,
                                table: Arc::from(rel.qualified_name()),
                                change: Some(offset + pos),
                            },
                            reason: format!("document rule {:?}: {reason}", r.name),
                        });
                        continue;
                    }
                };
                match trigger {
                    Trigger::Lookup { dependent, .. } => w.lookups[*dependent].extend(values),
                    _ => w.roots.extend(values),
                }
            }
        }
        work
    }
}

/// The values of `column` in the change's old and new rows (both: a row that moved from one root
/// to another affects both). NULLs are skipped (they point at no root).
fn row_values(change: &Change, column: &str) -> Result<Vec<String>, String> {
    let rel = &change.relation;
    let Some(i) = rel.columns.iter().position(|c| c.name == column) else {
        return Err(format!("table {} has no column {column:?}", rel.qualified_name()));
    };
    let type_oid = rel.columns[i].type_oid;
    let mut out = Vec::with_capacity(2);
    let text = |d: Datum<'_>| -> Result<Option<String>, String> {
        match d {
            Datum::Text(b) => std::str::from_utf8(b).map(|s| Some(s.to_string())).map_err(|_| format!("column {column:?} is not UTF-8")),
            Datum::Null => Ok(None),
            Datum::Unchanged => Err(format!("column {column:?} is an unchanged TOASTed value; a root id column cannot be TOASTed")),
            Datum::Binary(b) => binary::with_text(type_oid, b, |t| {
                std::str::from_utf8(t).map(|s| Some(s.to_string())).map_err(|_| format!("column {column:?} is not UTF-8"))
            })
            .map_err(|e| format!("column {column:?}: {e}"))?,
        }
    };
    if let Some(new) = &change.new {
        if let Some(v) = new.get(i).map(text).transpose()?.flatten() {
            out.push(v);
        }
    }
    if let Some(old) = &change.old {
        let carried = old.kind == OldTupleKind::Full || rel.columns[i].key;
        match old.values.get(i).map(text).transpose()?.flatten() {
            Some(v) => out.push(v),
            // An update without a key change carries only the new row: that is enough. A delete
            // must say which root it leaves.
            None if !carried && change.op == Op::Delete => {
                return Err(format!(
                    "the deleted row of {} does not carry column {column:?}: run ALTER TABLE {} REPLICA IDENTITY FULL (or make {column:?} part of its primary key)",
                    rel.qualified_name(),
                    rel.qualified_name()
                ))
            }
            None => {}
        }
    } else if change.op == Op::Delete {
        return Err(format!(
            "the delete of {} carries no old row (REPLICA IDENTITY NOTHING?); run ALTER TABLE {} REPLICA IDENTITY FULL",
            rel.qualified_name(),
            rel.qualified_name()
        ));
    }
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::fixtures::{self, text as t};
    use crate::decode::{OldTuple, Relation, ReplicaIdentity, Tuple};

    fn rules() -> DocumentRules {
        let cfg: crate::config::ElasticsearchSinkConfig = toml::from_str(
            r#"
url = "http://127.0.0.1:9200"
[[documents]]
name = "films"
index = "films"
table = "content.film"
root_key = "id"
query = "SELECT id FROM content.film WHERE id = ANY($1)"
[[documents.dependents]]
table = "content.link"
root_id_column = "film_id"
[[documents.dependents]]
table = "content.person"
key_column = "id"
root_ids_query = "SELECT film_id FROM content.link WHERE person_id = ANY($1)"
"#,
        )
        .expect("config parses");
        DocumentRules::new(&cfg.documents)
    }

    fn rel(table: &str, cols: &[(&str, bool)], identity: ReplicaIdentity) -> Arc<Relation> {
        let columns: Vec<(&str, bool, u32)> = cols.iter().map(|&(name, key)| (name, key, 25)).collect();
        fixtures::relation("content", table, identity, &columns)
    }

    fn change(relation: Arc<Relation>, op: Op, old: Option<OldTuple>, new: Option<Tuple>, commit: u64) -> Change {
        Change { lsn: Lsn(commit - 1), commit_lsn: Lsn(commit), ..fixtures::change(relation, op, old, new) }
    }

    #[test]
    fn roots_from_root_rows_columns_and_lookups() {
        let r = rules();
        let film = rel("film", &[("id", true), ("title", false)], ReplicaIdentity::Default);
        let link = rel("link", &[("id", true), ("film_id", false), ("person_id", false)], ReplicaIdentity::Full);
        let person = rel("person", &[("id", true), ("name", false)], ReplicaIdentity::Default);
        let changes = vec![
            change(film.clone(), Op::Update, None, Some(Tuple::from_datums([t("f1"), t("x")])), 10),
            change(
                film,
                Op::Delete,
                Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([t("f2"), Datum::Null]) }),
                None,
                11,
            ),
            // A link moved from f3 to f4: both rebuild.
            change(
                link.clone(),
                Op::Update,
                Some(OldTuple { kind: OldTupleKind::Full, values: Tuple::from_datums([t("l1"), t("f3"), t("p1")]) }),
                Some(Tuple::from_datums([t("l1"), t("f4"), t("p1")])),
                12,
            ),
            change(person, Op::Update, None, Some(Tuple::from_datums([t("p9"), t("new name")])), 13),
            change(link, Op::Insert, None, Some(Tuple::from_datums([t("l2"), t("f1"), t("p9")])), 14),
        ];
        let work = r.collect(&changes);
        assert_eq!(work.len(), 1);
        let w = &work[0];
        assert_eq!(w.roots.iter().map(String::as_str).collect::<Vec<_>>(), ["f1", "f2", "f3", "f4"]);
        assert!(w.lookups[0].is_empty());
        assert_eq!(w.lookups[1].iter().map(String::as_str).collect::<Vec<_>>(), ["p9"]);
        assert_eq!(w.version, Lsn(14));
        assert!(w.rejected.is_empty());
    }

    #[test]
    fn a_link_delete_without_the_column_is_rejected_with_the_fix() {
        let r = rules();
        let link = rel("link", &[("id", true), ("film_id", false)], ReplicaIdentity::Default);
        let del = change(
            link,
            Op::Delete,
            Some(OldTuple { kind: OldTupleKind::Key, values: Tuple::from_datums([t("l1"), Datum::Null]) }),
            None,
            5,
        );
        let w = &r.collect(&[del])[0];
        assert!(w.roots.is_empty());
        assert_eq!(w.rejected.len(), 1);
        assert!(w.rejected[0].reason.contains("REPLICA IDENTITY FULL"), "{}", w.rejected[0].reason);
    }

    #[test]
    fn truncates_and_snapshot_reads() {
        let r = rules();
        let film = rel("film", &[("id", true)], ReplicaIdentity::Default);
        let person = rel("person", &[("id", true)], ReplicaIdentity::Default);
        let w = &r.collect(&[change(film.clone(), Op::Truncate, None, None, 3)])[0];
        assert!(w.delete_all && !w.rebuild_all);
        let w = &r.collect(&[change(person.clone(), Op::Truncate, None, None, 3)])[0];
        assert!(w.rebuild_all && !w.delete_all);
        // A snapshot reads roots; a dependent's rows read by a snapshot do nothing.
        let w = &r.collect(&[
            change(film, Op::Read, None, Some(Tuple::from_datums([t("f1")])), 3),
            change(person, Op::Read, None, Some(Tuple::from_datums([t("p1")])), 3),
        ])[0];
        assert_eq!(w.roots.len(), 1);
        assert!(w.lookups[1].is_empty());
    }

    /// 6,000 films and 12,000 links (two per film, the second far from the first) inserted in one
    /// transaction arrive in batches of 4,096 changes: each film is rebuilt once, with the batch
    /// holding the commit (batch by batch, most films would be rebuilt two or three times).
    #[test]
    fn a_transaction_spanning_batches_rebuilds_each_document_once() {
        let r = rules();
        let film = rel("film", &[("id", true)], ReplicaIdentity::Default);
        let link = rel("link", &[("id", true), ("film_id", false)], ReplicaIdentity::Full);
        let commit = 1_000;
        let mut changes: Vec<Change> =
            (0..6_000).map(|f| change(film.clone(), Op::Insert, None, Some(Tuple::from_datums([t(&format!("f{f}"))])), commit)).collect();
        for l in 0..12_000 {
            let f = if l < 6_000 { l } else { (l * 7) % 6_000 };
            changes.push(change(
                link.clone(),
                Op::Insert,
                None,
                Some(Tuple::from_datums([t(&format!("l{l}")), t(&format!("f{f}"))])),
                commit,
            ));
        }
        // The commit's end LSN, after the transaction's commit LSN; then a small transaction
        // that is still open at the end of the last batch.
        let end = Lsn(commit + 8);
        changes.push(change(film.clone(), Op::Insert, None, Some(Tuple::from_datums([t("next")])), commit + 100));
        let batches: Vec<&[Change]> = changes.chunks(4_096).collect();
        let mut rebuilt: HashMap<String, usize> = HashMap::new();
        let mut old_rebuilt: HashMap<String, usize> = HashMap::new();
        let mut deferred = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            let checkpoint = (i == batches.len() - 1).then_some(end);
            let (now, later) = r.plan(batch, checkpoint, false, &deferred);
            // Planning again (a batch written again after a failure) gives the same.
            let again = r.plan(batch, checkpoint, false, &deferred);
            assert!(format!("{again:?}") == format!("{:?}", (&now, &later)), "planned again the same");
            deferred = later;
            for id in &now[0].roots {
                *rebuilt.entry(id.clone()).or_default() += 1;
            }
            for id in &r.collect(batch)[0].roots {
                *old_rebuilt.entry(id.clone()).or_default() += 1;
            }
        }
        assert_eq!(rebuilt.len(), 6_000);
        assert!(rebuilt.values().all(|&n| n == 1), "every film rebuilt once");
        assert!(!rebuilt.contains_key("next"));
        assert_eq!(deferred[0].roots.iter().map(String::as_str).collect::<Vec<_>>(), ["next"]);
        assert!(old_rebuilt.values().filter(|&&n| n > 1).count() > 3_000, "batch by batch rebuilds most films again");
        // The next batch, holding that commit, rebuilds it.
        let (now, later) = r.plan(&[], Some(Lsn(commit + 108)), false, &deferred);
        assert_eq!(now[0].roots.iter().map(String::as_str).collect::<Vec<_>>(), ["next"]);
        assert!(later[0].is_empty());
    }
}
