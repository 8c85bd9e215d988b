//! The fuzz targets' properties (`targets`, called by the binaries in `fuzz/`) and what they
//! drive: what walcast does with bytes from outside, reachable where the code itself is private.
//! Only with the `fuzzing` feature (fuzz/Cargo.toml enables it) or in unit tests, which replay
//! the committed corpus. Not an API: hidden from the docs, no stability promise.

use bytes::Bytes;

use crate::decode::{self, Change, Message, Op, RelationCache, TruncateOptions};
use crate::lsn::Lsn;

pub use crate::sink::elasticsearch::fuzzing::{bulk_answer, mget_answer};
pub use targets::*;

#[cfg(test)]
mod mutation;
mod targets;
#[cfg(test)]
mod tests;

/// The transaction a change belongs to (what the streaming loop keeps from Begin).
struct Tx {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    next_seq: u64,
}

/// Decode pgoutput payloads as the streaming loop does: Relation and Type messages into the
/// cache (comparing a relation with its previous description), row changes against it inside the
/// transaction of the last Begin, unchanged TOASTed values of an update filled from a full old
/// row. A message that does not decode and a change the loop would refuse (unknown relation, no
/// transaction) are skipped where the loop would stop, so one input covers more.
pub fn decode_stream(messages: impl IntoIterator<Item = Bytes>) -> Vec<Change> {
    let mut relations = RelationCache::new();
    let mut tx: Option<Tx> = None;
    let mut changes = Vec::new();
    for (n, payload) in messages.into_iter().enumerate() {
        let Ok(message) = decode::parse(&payload) else { continue };
        let lsn = Lsn(n as u64);
        let (oid, op, old, new, truncate) = match message {
            Message::Begin(b) => {
                tx = Some(Tx { xid: b.xid, commit_lsn: b.final_lsn, commit_ts: b.commit_ts, next_seq: 0 });
                continue;
            }
            Message::Commit(_) => {
                tx = None;
                continue;
            }
            Message::Relation(body) => {
                let previous = relations.get(body.oid).ok().cloned();
                let rel = relations.apply_relation(body);
                // The schema-change log line the loop writes.
                std::hint::black_box(previous.map(|p| p.column_changes(&rel)));
                continue;
            }
            Message::Type(body) => {
                relations.apply_type(body);
                continue;
            }
            Message::Origin(_) | Message::Message(_) => continue,
            Message::Insert { relation, new } => (vec![relation], Op::Insert, None, Some(new), TruncateOptions::default()),
            Message::Update { relation, old, new } => (vec![relation], Op::Update, old, Some(new), TruncateOptions::default()),
            Message::Delete { relation, old } => (vec![relation], Op::Delete, Some(old), None, TruncateOptions::default()),
            Message::Truncate { relations: oids, cascade, restart_identity } => {
                (oids, Op::Truncate, None, None, TruncateOptions { cascade, restart_identity, resync: false })
            }
        };
        let Some(t) = tx.as_mut() else { continue };
        for oid in oid {
            let Ok(relation) = relations.get(oid) else { continue };
            let mut change = Change {
                lsn,
                commit_lsn: t.commit_lsn,
                xid: t.xid,
                commit_ts: t.commit_ts,
                seq: t.next_seq,
                relation: relation.clone(),
                op,
                old: old.clone(),
                new: new.clone(),
                truncate,
            };
            t.next_seq += 1;
            change.fill_unchanged_from_old();
            changes.push(change);
        }
    }
    changes
}
