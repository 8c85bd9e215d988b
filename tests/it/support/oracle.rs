//! The pgoutput oracle: a second slot of the test's publication, read without consuming it and
//! decoded with walcast's own parser, says what the server streamed.

use tokio_postgres::Client;
use walcast::lsn::Lsn;

use super::pg::describe;

/// One transaction as a second pgoutput slot reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleTx {
    /// Begin's final_lsn = Commit's commit_lsn: the `commit_lsn` of the transaction's lines.
    pub commit_lsn: Lsn,
    /// End of the commit record: what a consumer confirms.
    pub end_lsn: Lsn,
    pub xid: u32,
    /// Row changes (and truncated relations) in the transaction.
    pub changes: usize,
}

/// Every transaction a pgoutput slot holds, read without consuming it
/// (`pg_logical_slot_peek_binary_changes`) and decoded with walcast's own pgoutput parser.
pub async fn oracle_transactions(client: &Client, slot: &str, publication: &str) -> Vec<OracleTx> {
    use walcast::decode::{parse, Message};
    let rows = client
        .query(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&slot, &publication],
        )
        .await
        .unwrap_or_else(|e| panic!("peek {slot}: {}", describe(&e)));
    let mut out = Vec::new();
    let mut open: Option<OracleTx> = None;
    for row in rows {
        let data: Vec<u8> = row.get(2);
        let message = parse(&bytes::Bytes::from(data)).unwrap_or_else(|e| panic!("oracle message: {e}"));
        match message {
            Message::Begin(b) => {
                assert!(open.is_none(), "oracle: Begin inside a transaction");
                open = Some(OracleTx { commit_lsn: b.final_lsn, end_lsn: Lsn::ZERO, xid: b.xid, changes: 0 });
            }
            Message::Commit(c) => {
                let mut tx = open.take().expect("oracle: Commit without Begin");
                assert_eq!(tx.commit_lsn, c.commit_lsn, "oracle: Begin.final_lsn != Commit.commit_lsn");
                tx.end_lsn = c.end_lsn;
                out.push(tx);
            }
            Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {
                open.as_mut().expect("oracle: change outside a transaction").changes += 1;
            }
            Message::Truncate { relations, .. } => {
                open.as_mut().expect("oracle: truncate outside a transaction").changes += relations.len();
            }
            _ => {}
        }
    }
    out
}

/// The LSNs of the logical decoding messages with `prefix` (`pg_logical_emit_message`) a pgoutput
/// slot holds, read without consuming it.
pub async fn oracle_messages(client: &Client, slot: &str, publication: &str, prefix: &str) -> Vec<Lsn> {
    use walcast::decode::{parse, Message};
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .unwrap_or_else(|e| panic!("peek {slot}: {}", describe(&e)));
    rows.iter()
        .filter_map(|row| {
            let data: Vec<u8> = row.get(0);
            match parse(&bytes::Bytes::from(data)).unwrap_or_else(|e| panic!("oracle message: {e}")) {
                Message::Message(m) if m.prefix == prefix => Some(m.lsn),
                _ => None,
            }
        })
        .collect()
}
