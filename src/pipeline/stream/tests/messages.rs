//! Logical decoding messages in the loop: a transactional one rides with its transaction (and is
//! dropped with it when the connection is lost mid-transaction); one outside any transaction is
//! confirmed only once every sink wrote it; with no sink publishing messages they are dropped.

use super::*;
use crate::decode::LogicalMessage;

fn message(transactional: bool, lsn: u64, prefix: &str) -> SourceEvent {
    SourceEvent::Message(LogicalMessage { transactional, lsn: Lsn(lsn), prefix: prefix.into(), content: Bytes::from_static(b"hi") })
}

/// Transaction `xid` inserting `first`, emitting a message, inserting `second`.
fn tx_with_message(xid: u32, first: u32, second: u32, end: u64, describe: bool) -> Vec<SourceEvent> {
    let mut events = tx(xid, &[first, second], end, describe);
    let at = events.len() - 2; // before the second insert
    events.insert(at, message(true, end - 50, "audit"));
    events
}

#[tokio::test(start_paused = true)]
async fn a_transactional_message_rides_with_its_transaction_numbered_with_its_changes() {
    let (script, senders, record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone()).with_messages(true);
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx_with_message(7, 1, 2, 0x2000, true)).await;
        until("the commit is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    result.expect("clean stop");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!((m.xid, m.commit_lsn, m.seq, m.message.prefix.as_str()), (Some(7), Lsn(0x2000 - 8), 1, "audit"));
    let seqs: Vec<u64> = sink.events().iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [0, 2], "the message takes its place in the transaction's numbering");
}

#[tokio::test(start_paused = true)]
async fn a_message_outside_a_transaction_is_confirmed_only_once_written() {
    let (script, senders, record) = script(1);
    let (sink, gate) = MemorySink::gated();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone()).with_messages(true);
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
        gate.add_permits(1);
        until("transaction 1 is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        send(&senders[0], vec![message(false, 0x2100, "notice")]).await;
        until("the message is read", || read_all(&senders[0])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(record.confirmed_max(), Lsn(0x2000), "not confirmed while the sink has not written it");
        gate.add_permits(1);
        until("the message is confirmed", || record.confirmed_max() == Lsn(0x2100)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2100));
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!((messages[0].xid, messages[0].commit_lsn, messages[0].message.transactional), (None, Lsn(0x2100), false));
}

#[tokio::test(start_paused = true)]
async fn a_message_of_a_transaction_cut_by_a_lost_connection_is_written_once() {
    let (script, senders, record) = script(2);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone()).with_messages(true);
    let shutdown = CancellationToken::new();
    let driver = async {
        let mut cut = tx_with_message(2, 1, 2, 0x3000, true);
        cut.truncate(cut.len() - 2); // up to the message, without the second insert and the commit
        send(&senders[0], cut).await;
        let lost = SourceError::Connection { target: "scripted".into(), reason: "reset by peer".into() };
        senders[0].send(Err(lost)).await.expect("open");
        send(&senders[1], tx_with_message(2, 1, 2, 0x3000, true)).await;
        until("the transaction is confirmed", || record.confirmed_max() == Lsn(0x3000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    result.expect("clean stop");
    assert_eq!(sink.messages().len(), 1, "the cut transaction's message is dropped and read again once");
    assert_eq!(ids(&sink), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn without_a_sink_publishing_them_messages_are_dropped() {
    let (script, senders, record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx_with_message(7, 1, 2, 0x2000, true)).await;
        send(&senders[0], vec![message(false, 0x2100, "notice")]).await;
        until("the commit is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        until("the message is read", || read_all(&senders[0])).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000));
    assert!(sink.messages().is_empty());
    let seqs: Vec<u64> = sink.events().iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [0, 1], "change numbering is unchanged when messages are not carried");
}
