//! Entry encoding: a round trip over random changes and relation descriptions, and decode
//! errors (never panics) for cut or mangled payloads.

use proptest::prelude::*;

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// One value as (kind byte, bytes): 'n', 'u', 't' or 'b'.
fn datum() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        Just((b'n', Vec::new())),
        Just((b'u', Vec::new())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| (b't', b)),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| (b'b', b)),
    ]
}

/// `n` random values.
fn tuple(n: usize) -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(datum(), n..=n).prop_map(|values| {
        Tuple::from_datums(values.iter().map(|(kind, b)| match kind {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            b't' => Datum::Text(b),
            _ => Datum::Binary(b),
        }))
    })
}

fn relation(oid: u32) -> impl Strategy<Value = Relation> {
    let column = (any::<bool>(), "[a-zé\"_ ]{0,12}", any::<u32>(), any::<i32>()).prop_map(|(key, name, type_oid, type_modifier)| Column {
        key,
        name,
        type_oid,
        type_modifier,
    });
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index)
    ];
    ("[a-z_]{0,10}", "[A-Za-zß_.\"]{0,16}", identity, proptest::collection::vec(column, 0..6))
        .prop_map(move |(schema, table, replica_identity, columns)| Relation { oid, schema, table, replica_identity, columns })
}

/// A change of `rel` (its tuples as long as the relation's columns, as the decoder makes them).
fn change(rel: Arc<Relation>) -> impl Strategy<Value = Change> {
    let n = rel.columns.len();
    let op = prop_oneof![Just(Op::Insert), Just(Op::Update), Just(Op::Delete), Just(Op::Truncate), Just(Op::Read)];
    let kind = prop_oneof![Just(OldTupleKind::Key), Just(OldTupleKind::Full)];
    let old = proptest::option::of((kind, tuple(n)).prop_map(|(kind, values)| OldTuple { kind, values }));
    let new = proptest::option::of(tuple(n));
    let truncate = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(cascade, restart_identity, resync)| TruncateOptions {
        cascade,
        restart_identity,
        resync,
    });
    (any::<u64>(), 1..u64::MAX, any::<u32>(), any::<i64>(), any::<u64>(), op, old, new, truncate).prop_map(
        move |(lsn, commit, xid, commit_ts, seq, op, old, new, truncate)| Change {
            lsn: Lsn(lsn),
            commit_lsn: Lsn(commit),
            xid,
            commit_ts,
            seq,
            relation: Arc::clone(&rel),
            op,
            old,
            new,
            truncate,
        },
    )
}

/// Two descriptions of relation 1 (a schema change), one of relation 2, and changes of each in
/// the order given: `(which description, change)`.
fn block() -> impl Strategy<Value = (Vec<Arc<Relation>>, Vec<(usize, Change)>)> {
    (relation(1), relation(1), relation(2)).prop_flat_map(|(a, b, c)| {
        let rels: Vec<Arc<Relation>> = vec![Arc::new(a), Arc::new(b), Arc::new(c)];
        let pick = (0..3usize).prop_flat_map({
            let rels = rels.clone();
            move |i| change(Arc::clone(&rels[i])).prop_map(move |c| (i, c))
        });
        (Just(rels), proptest::collection::vec(pick, 0..12))
    })
}

pub(crate) fn assert_same(got: &Change, want: &Change) {
    assert_eq!(*got.relation, *want.relation);
    assert_eq!(
        (got.lsn, got.commit_lsn, got.xid, got.commit_ts, got.seq, got.op, &got.old, &got.new, got.truncate),
        (want.lsn, want.commit_lsn, want.xid, want.commit_ts, want.seq, want.op, &want.old, &want.new, want.truncate)
    );
}

/// Encodes as the writer does: a relation entry before a change whose description differs from
/// the last one written for its OID, a commit marker after each change.
fn encode(changes: &[(usize, Change)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut described: HashMap<u32, Arc<Relation>> = HashMap::new();
    for (_, c) in changes {
        if described.get(&c.relation.oid).is_none_or(|d| **d != *c.relation) {
            put_relation(&mut out, &c.relation);
            described.insert(c.relation.oid, Arc::clone(&c.relation));
        }
        put_change(&mut out, c);
        put_commit(&mut out, c.commit_lsn);
    }
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn changes_and_relations_round_trip((_rels, changes) in block()) {
        let payload = Bytes::from(encode(&changes));
        let mut relations = HashMap::new();
        let entries = decode_block(&payload, &mut relations, Lsn::ZERO).expect("decodes");
        prop_assert_eq!(entries.len(), changes.len() * 2);
        let mut decoded = Vec::new();
        for (entry, (_, want)) in entries.chunks(2).zip(&changes) {
            let [Entry::Change(got), Entry::Commit(k)] = entry else { panic!("change then commit: {entry:?}") };
            assert_same(got, want);
            prop_assert_eq!(*k, want.commit_lsn);
            decoded.push(got);
        }
        // One Arc per description: consecutive changes of one description share it.
        for (pair, orig) in decoded.windows(2).zip(changes.windows(2)) {
            if orig[0].0 == orig[1].0 {
                prop_assert!(Arc::ptr_eq(&pair[0].relation, &pair[1].relation));
            }
        }
        let max = changes.iter().map(|(_, c)| c.commit_lsn).max();
        prop_assert_eq!(max_commit(&payload).expect("walks"), max);
        let commits = commit_positions(&payload).expect("walks");
        prop_assert_eq!(commits.iter().filter(|(_, k)| k.is_some()).count(), changes.len());
    }

    #[test]
    fn cut_or_mangled_payloads_are_errors_not_panics((_rels, changes) in block(), cut in any::<proptest::sample::Index>(), flip in any::<u8>()) {
        let bytes = encode(&changes);
        prop_assume!(!bytes.is_empty());
        let at = cut.index(bytes.len());
        let mut relations = HashMap::new();
        // A cut payload: an error unless the cut falls between entries.
        let _ = decode_block(&Bytes::copy_from_slice(&bytes[..at]), &mut relations, Lsn::ZERO);
        let mut mangled = bytes.clone();
        mangled[at] ^= flip | 1;
        let _ = decode_block(&Bytes::from(mangled.clone()), &mut HashMap::new(), Lsn::ZERO);
        let _ = commit_positions(&Bytes::from(mangled.clone()));
        let _ = max_commit(&Bytes::from(mangled));
    }
}

#[test]
fn skipped_changes_and_commits_are_left_out() {
    let rel =
        Arc::new(Relation { oid: 9, schema: "s".into(), table: "t".into(), replica_identity: ReplicaIdentity::Default, columns: vec![] });
    let c = |commit: u64| Change {
        lsn: Lsn(1),
        commit_lsn: Lsn(commit),
        xid: 1,
        commit_ts: 0,
        seq: 0,
        relation: Arc::clone(&rel),
        op: Op::Insert,
        old: None,
        new: Some(Tuple::from_datums([])),
        truncate: TruncateOptions::default(),
    };
    let payload = Bytes::from(encode(&[(0, c(10)), (0, c(20))]));
    let entries = decode_block(&payload, &mut HashMap::new(), Lsn(10)).expect("decodes");
    assert!(matches!(&entries[..], [Entry::Change(c), Entry::Commit(Lsn(20))] if c.commit_lsn == Lsn(20)), "{entries:?}");
}

#[test]
fn a_change_before_its_relation_is_an_error() {
    let rel =
        Arc::new(Relation { oid: 9, schema: "s".into(), table: "t".into(), replica_identity: ReplicaIdentity::Full, columns: vec![] });
    let c = Change {
        lsn: Lsn(1),
        commit_lsn: Lsn(2),
        xid: 1,
        commit_ts: 0,
        seq: 0,
        relation: rel,
        op: Op::Delete,
        old: None,
        new: None,
        truncate: TruncateOptions::default(),
    };
    let mut out = Vec::new();
    put_change(&mut out, &c);
    let err = decode_block(&Bytes::from(out), &mut HashMap::new(), Lsn::ZERO).expect_err("no relation");
    assert!(err.0.contains("before its description"), "{err}");
}
