use super::*;
use crate::decode::fixtures::{change, relation, text};
use crate::decode::{Change, Op, ReplicaIdentity};

fn row(table: &str, commit: u64, seq: u64) -> Change {
    let rel = relation("public", table, ReplicaIdentity::Default, &[("id", true, 23)]);
    Change { commit_lsn: Lsn(commit), seq, ..change(rel, Op::Insert, None, Some(vec![text("1")])) }
}

fn commits(b: &Batch) -> Vec<(String, u64)> {
    b.changes.iter().map(|c| (c.relation.table.clone(), c.commit_lsn.0)).collect()
}

fn t(name: &str) -> TableName {
    TableName::parse(name).expect("table")
}

#[test]
fn a_batch_inside_the_range_passes_whole() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("b", 0x10, 1), row("a", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    let (b, done) = cut(batch, Lsn(0x100), &[]);
    assert_eq!(commits(&b), [("a".into(), 0x10), ("b".into(), 0x10), ("a".into(), 0x20)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)));
    assert!(!done);
    assert!(b.snapshot.is_none(), "replayed changes are streamed changes, versioned by their commit");
}

#[test]
fn the_range_ends_at_to_and_the_checkpoint_moves_back_with_it() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("a", 0x20, 0), row("a", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, done) = cut(batch, Lsn(0x20), &[]);
    assert_eq!(commits(&b), [("a".into(), 0x10), ("a".into(), 0x20)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)));
    assert!(done);
    // A batch that ends exactly at `to` ends the range too.
    let batch = LogBatch { changes: vec![row("a", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    assert!(cut(batch, Lsn(0x20), &[]).1);
    // Nothing of the batch inside the range: empty, done.
    let batch = LogBatch { changes: vec![row("a", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, done) = cut(batch, Lsn(0x20), &[]);
    assert!(b.changes.is_empty() && b.checkpoint.is_none() && done);
}

#[test]
fn the_table_filter_keeps_the_checkpoint() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("b", 0x10, 1), row("b", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    let (b, done) = cut(batch, Lsn(0x100), &[t("public.a")]);
    assert_eq!(commits(&b), [("a".into(), 0x10)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)), "transactions of other tables still ended");
    assert!(!done);
    let batch = LogBatch { changes: vec![row("b", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, _) = cut(batch, Lsn(0x100), &[t("public.a"), t("other.b")]);
    assert!(b.changes.is_empty());
    assert_eq!(b.checkpoint, Some(Lsn(0x30)));
    // A batch in the middle of a transaction has no checkpoint, filtered or not.
    let batch = LogBatch { changes: vec![row("a", 0x40, 0)], checkpoint: None };
    assert_eq!(cut(batch, Lsn(0x100), &[t("public.a")]).0.checkpoint, None);
}
