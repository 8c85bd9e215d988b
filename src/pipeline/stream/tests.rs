//! Unit tests of the streaming loop: a scripted server (one channel of events per session) and
//! the in-memory sink, on a paused clock. Each test names the `select!` arm it exercises.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::session::{ReplicationSession, SessionSource};
use super::*;
use crate::config::{Config, RetryConfig};
use crate::decode::{Begin, Commit};
use crate::sink::fanout::Fanout;
use crate::sink::MemorySink;
use crate::source::ConnParams;

mod full_log;
mod messages;

const START: Lsn = Lsn(0x1000);
const TABLE_OID: u32 = 16_384;
/// Events a scripted session holds before the test's send waits.
const SESSION_BUFFER: usize = 64;

type Step = Result<SourceEvent, SourceError>;

/// What the loop did to the scripted server.
#[derive(Debug, Default)]
struct Record {
    /// Start LSN of every session opened.
    opened: Vec<Lsn>,
    /// Every LSN confirmed on a session.
    confirmed: Vec<Lsn>,
    /// Sessions stopped cleanly.
    stopped: usize,
    /// The final position recorded on the slot.
    settled: Option<Lsn>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Record>>);

impl Shared {
    fn get(&self) -> MutexGuard<'_, Record> {
        self.0.lock().expect("record lock")
    }

    fn confirmed_max(&self) -> Lsn {
        self.get().confirmed.iter().copied().max().unwrap_or(Lsn::ZERO)
    }
}

struct ScriptedSession {
    events: mpsc::Receiver<Step>,
    record: Shared,
}

impl ReplicationSession for ScriptedSession {
    async fn recv(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        match self.events.recv().await {
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(error)) => Err(error),
            // The test dropped the sender: the server ended the stream.
            None => Ok(None),
        }
    }

    fn confirm(&self, lsn: Lsn) {
        self.record.get().confirmed.push(lsn);
    }

    async fn stop(self) -> Result<(), SourceError> {
        self.record.get().stopped += 1;
        Ok(())
    }
}

/// The scripted slot: hands out the prepared sessions in order, then never answers.
struct Script {
    sessions: VecDeque<mpsc::Receiver<Step>>,
    record: Shared,
}

impl SessionSource for Script {
    type Session = ScriptedSession;

    fn target(&self) -> String {
        "scripted".into()
    }

    async fn open(&mut self, start: Lsn) -> Result<ScriptedSession, SourceError> {
        self.record.get().opened.push(start);
        match self.sessions.pop_front() {
            Some(events) => Ok(ScriptedSession { events, record: self.record.clone() }),
            None => std::future::pending().await,
        }
    }

    async fn settle(&mut self, confirmed: Lsn) -> Result<(), SourceError> {
        self.record.get().settled = Some(confirmed);
        Ok(())
    }

    async fn explain(&mut self, error: SourceError) -> SourceError {
        error
    }
}

/// `sessions` scripted sessions: the loop's source, the senders feeding each, the record.
fn script(sessions: usize) -> (Script, Vec<mpsc::Sender<Step>>, Shared) {
    let record = Shared::default();
    let (senders, receivers): (Vec<_>, VecDeque<_>) = (0..sessions).map(|_| mpsc::channel(SESSION_BUFFER)).unzip();
    (Script { sessions: receivers, record: record.clone() }, senders, record)
}

fn limits(batch_max_changes: usize, shutdown_timeout_ms: u64) -> PipelineConfig {
    PipelineConfig { batch_max_changes, sink_queue_batches: 4, source_buffer_events: 16, shutdown_timeout_ms }
}

const RETRY: RetryConfig = RetryConfig { initial_ms: 10, max_ms: 100 };

/// A loop streaming from `START` into `sink`, with catalog lookups pointed nowhere (the scripted
/// tables need none).
fn streamer(limits: &PipelineConfig, script: Script, sink: MemorySink) -> Streamer<'_, Script> {
    let config = Config::parse(
        "[source]\nhost = \"127.0.0.1\"\nport = 1\ndatabase = \"app\"\nuser = \"walcast\"\ntables = [\"public.t\"]\n\n[sinks.jsonl]\npath = \"-\"\n",
        Path::new("test.toml"),
    )
    .expect("test config");
    let params = ConnParams::from_config(&config.source).expect("test params");
    let metrics = Metrics::new();
    let sinks_shutdown = tokio_util::sync::CancellationToken::new();
    let mut fanout = Fanout::new(limits, &RETRY, &metrics, &sinks_shutdown);
    fanout.spawn(sink);
    let published = source::Published { all_tables: true, ..Default::default() };
    Streamer::new(limits, script, Catalog::new(params), fanout.started(), START, published, metrics, Backoff::new(&RETRY))
}

/// pgoutput Relation message of `public.t (id int4 key)`.
fn relation() -> SourceEvent {
    let mut b = vec![b'R'];
    b.extend_from_slice(&TABLE_OID.to_be_bytes());
    b.extend_from_slice(b"public\0t\0d");
    b.extend_from_slice(&1i16.to_be_bytes());
    b.push(1);
    b.extend_from_slice(b"id\0");
    b.extend_from_slice(&23i32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    SourceEvent::Data { wal_start: START, payload: Bytes::from(b) }
}

/// pgoutput Insert of row `id` into `public.t`, at `lsn`.
fn insert(id: u32, lsn: u64) -> SourceEvent {
    let text = id.to_string();
    let mut b = vec![b'I'];
    b.extend_from_slice(&TABLE_OID.to_be_bytes());
    b.push(b'N');
    b.extend_from_slice(&1i16.to_be_bytes());
    b.push(b't');
    b.extend_from_slice(&(text.len() as i32).to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    SourceEvent::Data { wal_start: Lsn(lsn), payload: Bytes::from(b) }
}

fn begin(xid: u32, end: u64) -> SourceEvent {
    SourceEvent::Begin(Begin { final_lsn: Lsn(end - 8), commit_ts: 1, xid })
}

fn commit(end: u64) -> SourceEvent {
    SourceEvent::Commit(Commit { flags: 0, commit_lsn: Lsn(end - 8), end_lsn: Lsn(end), commit_ts: 1 })
}

/// Transaction `xid` inserting `ids`, its commit ending at `end` (the relation described first
/// when `describe`).
fn tx(xid: u32, ids: &[u32], end: u64, describe: bool) -> Vec<SourceEvent> {
    let mut events = vec![begin(xid, end)];
    if describe {
        events.push(relation());
    }
    events.extend(ids.iter().enumerate().map(|(i, &id)| insert(id, end - 100 + i as u64)));
    events.push(commit(end));
    events
}

async fn send(to: &mpsc::Sender<Step>, events: Vec<SourceEvent>) {
    for event in events {
        to.send(Ok(event)).await.expect("the session is open");
    }
}

/// Send what the loop may never read (it stops meanwhile and drops the session).
async fn send_late(to: &mpsc::Sender<Step>, events: Vec<SourceEvent>) {
    for event in events {
        let _ = to.send(Ok(event)).await;
    }
}

/// Wait (on the paused clock) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Every event of the session was read by the loop.
fn read_all(to: &mpsc::Sender<Step>) -> bool {
    to.capacity() == SESSION_BUFFER
}

/// The `id` of every change the sink wrote, in order.
fn ids(sink: &MemorySink) -> Vec<u64> {
    sink.events().iter().filter_map(|e| e["after"]["id"].as_u64()).collect()
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_reading_and_the_drain_confirms_what_the_sinks_wrote() {
    let (script, senders, record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1, 2], 0x2000, true)).await;
        // Arm 2: the sink's durable report moves the confirmed LSN, on the session.
        until("the commit is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        shutdown.cancel();
        // Arm 1: nothing is read after shutdown.
        send_late(&senders[0], tx(2, &[3], 0x3000, false)).await;
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000));
    assert_eq!(ids(&sink), [1, 2]);
    let record = record.get();
    assert_eq!((record.settled, record.stopped), (Some(Lsn(0x2000)), 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_a_partly_dispatched_transaction_first() {
    let (script, senders, record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(2, 60_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        let mut events = tx(1, &[1, 2, 3], 0x2000, true);
        let last = events.split_off(events.len() - 2); // insert 3 and the commit
        send(&senders[0], events).await;
        until("the first part is written", || ids(&sink) == [1, 2]).await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        send_late(&senders[0], last).await;
        send_late(&senders[0], tx(2, &[4], 0x3000, false)).await;
    };
    let started = tokio::time::Instant::now();
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000), "the open transaction is finished, the next not read");
    assert_eq!(ids(&sink), [1, 2, 3]);
    assert_eq!(record.get().settled, Some(Lsn(0x2000)));
    assert!(started.elapsed() < Duration::from_secs(60), "no wait for the deadline: {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_transaction_is_given_up_at_the_shutdown_deadline() {
    let (script, senders, record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(2, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let cancelled_at = Arc::new(Mutex::new(None));
    let driver = async {
        let mut events = tx(1, &[1, 2, 3], 0x2000, true);
        events.truncate(events.len() - 2); // never committed
        send(&senders[0], events).await;
        until("the first part is written", || ids(&sink) == [1, 2]).await;
        *cancelled_at.lock().expect("lock") = Some(tokio::time::Instant::now());
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    let waited = cancelled_at.lock().expect("lock").expect("cancelled").elapsed();
    assert_eq!(result.expect("clean stop").confirmed, START, "nothing of the open transaction is confirmed");
    assert!(waited >= Duration::from_millis(1_000) && waited < Duration::from_millis(1_500), "{waited:?}");
    assert_eq!(record.get().settled, Some(START));
}

#[tokio::test(start_paused = true)]
async fn a_failed_sink_stops_the_loop_without_confirming() {
    let (script, senders, record) = script(1);
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, MemorySink::failing("disk gone"));
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    match result {
        Err(PipelineError::Sink(SinkError::Fatal { reason, .. })) => assert_eq!(reason, "disk gone"),
        other => panic!("expected the sink's failure, got {other:?}"),
    }
    assert_eq!(record.confirmed_max(), START);
}

#[tokio::test(start_paused = true)]
async fn the_stream_is_read_until_the_batch_is_full_then_handed_over() {
    let (script, senders, _record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(3, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    // Ready before the loop starts: arm 3 reads while the batch has room, arm 4 hands a full
    // batch over whether or not the sink is idle.
    send(&senders[0], tx(1, &[1, 2, 3, 4, 5, 6, 7], 0x2000, true)).await;
    let driver = async {
        until("every change is written", || ids(&sink).len() == 7).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000));
    assert_eq!(sink.writes(), [3, 3, 1]);
    assert_eq!(ids(&sink), [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test(start_paused = true)]
async fn what_is_ready_goes_out_in_one_batch_and_a_quiet_stream_at_once() {
    let (script, senders, _record) = script(1);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let mut ready = tx(1, &[1, 2], 0x2000, true);
    ready.extend(tx(2, &[3, 4], 0x3000, false));
    send(&senders[0], ready).await;
    let driver = async {
        until("the ready transactions are written", || ids(&sink).len() == 4).await;
        // Arm 4: the sink is idle and nothing more is ready, so one change goes out alone.
        send(&senders[0], tx(3, &[5], 0x4000, false)).await;
        until("the quiet change is written", || ids(&sink).len() == 5).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x4000));
    assert_eq!(sink.writes(), [4, 1]);
}

#[tokio::test(start_paused = true)]
async fn while_a_sink_writes_the_loop_parks_then_sends_what_arrived_as_one_batch() {
    let (script, senders, record) = script(1);
    let (sink, gate) = MemorySink::gated();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
        until("the first batch is read", || read_all(&senders[0])).await;
        // The sink is held in its write of transaction 1: transaction 2 is read into the next
        // batch, then the loop parks (arm 5).
        send(&senders[0], tx(2, &[2], 0x3000, false)).await;
        until("transaction 2 is read", || read_all(&senders[0])).await;
        send(&senders[0], tx(3, &[3], 0x4000, false)).await;
        send(&senders[0], tx(4, &[4], 0x5000, false)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(senders[0].capacity(), SESSION_BUFFER - 6, "parked: transactions 3 and 4 wait in the source buffer");
        assert_eq!(sink.writes(), Vec::<usize>::new());
        // Arm 6: the sink finishes, the loop reads what accumulated and hands it over at once.
        gate.add_permits(10);
        until("everything is written", || ids(&sink).len() == 4).await;
        until("everything is confirmed", || record.confirmed_max() == Lsn(0x5000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x5000));
    assert_eq!(sink.writes(), [1, 3], "group commit: transactions 2 to 4 in one batch");
    assert_eq!(ids(&sink), [1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_transaction_cut_by_a_lost_connection_is_dropped_and_read_again_whole() {
    let (script, senders, record) = script(2);
    let sink = MemorySink::new();
    let limits = limits(100, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
        until("transaction 1 is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        let mut cut = tx(2, &[2, 3], 0x3000, false);
        cut.truncate(2); // begin, insert 2
        send(&senders[0], cut).await;
        let lost = SourceError::Connection { target: "scripted".into(), reason: "reset by peer".into() };
        senders[0].send(Err(lost)).await.expect("open");
        // The server resends from the confirmed position, describing the table again.
        send(&senders[1], tx(2, &[2, 3], 0x3000, true)).await;
        until("transaction 2 is confirmed", || record.confirmed_max() == Lsn(0x3000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x3000));
    assert_eq!(ids(&sink), [1, 2, 3], "the cut transaction is written once, whole");
    assert_eq!(sink.writes(), [1, 2]);
    assert_eq!(record.get().opened, [START, Lsn(0x2000)]);
    assert_eq!(streamer.metrics.reconnects.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_partly_dispatched_transaction_is_resent_whole_after_the_server_ends_the_stream() {
    let (script, senders, record) = script(2);
    let mut senders = senders.into_iter();
    let (first, second) = (senders.next().expect("session 1"), senders.next().expect("session 2"));
    let sink = MemorySink::new();
    let limits = limits(1, 1_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&first, tx(1, &[1], 0x2000, true)).await;
        until("transaction 1 is confirmed", || record.confirmed_max() == Lsn(0x2000)).await;
        let mut cut = tx(2, &[2, 3], 0x3000, false);
        cut.truncate(3); // begin, inserts 2 and 3: each handed over alone (batches of one)
        send(&first, cut).await;
        until("the first part is written", || ids(&sink).len() == 3).await;
        drop(first); // the server ends the stream
        send(&second, tx(2, &[2, 3], 0x3000, true)).await;
        until("transaction 2 is confirmed", || record.confirmed_max() == Lsn(0x3000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x3000));
    // At least once: only the changes of the transaction that was partly handed over come
    // twice, and identical (same LSN, xid and position), so a consumer can tell them apart.
    assert_eq!(ids(&sink), [1, 2, 3, 2, 3]);
    let events = sink.events();
    let identity = |e: &serde_json::Value| (e["lsn"].clone(), e["xid"].clone(), e["seq"].clone());
    assert_eq!(identity(&events[1]), identity(&events[3]));
    assert_eq!(identity(&events[2]), identity(&events[4]));
    let record = record.get();
    assert_eq!(record.opened, [START, Lsn(0x2000)]);
    assert!(record.confirmed.iter().all(|&c| c == START || c == Lsn(0x2000) || c == Lsn(0x3000)), "{:?}", record.confirmed);
}

#[tokio::test(start_paused = true)]
async fn the_drain_writes_whole_transactions_only_and_confirms_them() {
    let (script, senders, record) = script(1);
    let (sink, gate) = MemorySink::gated();
    let limits = limits(100, 60_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
        until("transaction 1 is read", || read_all(&senders[0])).await;
        // The sink holds transaction 1; transaction 2 and the start of 3 wait in the next batch.
        let mut open = tx(3, &[3], 0x4000, false);
        open.truncate(2);
        send(&senders[0], tx(2, &[2], 0x3000, false)).await;
        send(&senders[0], open).await;
        until("everything is read", || read_all(&senders[0])).await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.add_permits(10);
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x3000));
    assert_eq!(ids(&sink), [1, 2], "the unfinished transaction 3 is left for the restart");
    assert_eq!(sink.writes(), [1, 1]);
    let record = record.get();
    assert_eq!((record.settled, record.stopped), (Some(Lsn(0x3000)), 1));
    assert_eq!(record.confirmed.last(), Some(&Lsn(0x3000)));
}

#[tokio::test(start_paused = true)]
async fn the_drain_gives_up_on_a_stuck_sink_at_the_deadline_confirming_nothing_unwritten() {
    let (script, senders, record) = script(1);
    let (sink, _gate) = MemorySink::gated();
    let limits = limits(100, 2_000);
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1], 0x2000, true)).await;
        until("transaction 1 is read", || read_all(&senders[0])).await;
        shutdown.cancel();
    };
    let started = tokio::time::Instant::now();
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    let took = started.elapsed();
    assert_eq!(result.expect("clean stop").confirmed, START);
    assert!(took >= Duration::from_millis(2_000) && took < Duration::from_millis(3_000), "{took:?}");
    assert_eq!(record.get().settled, Some(START));
    assert!(sink.events().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_blocked_hand_over_still_finishes_the_partly_dispatched_transaction() {
    let (script, senders, record) = script(1);
    let (sink, gate) = MemorySink::gated();
    let limits = PipelineConfig { sink_queue_batches: 1, ..limits(1, 60_000) };
    let mut streamer = streamer(&limits, script, sink.clone());
    let shutdown = CancellationToken::new();
    let driver = async {
        // Batches of one change, a queue of one batch, the sink held in its first write: insert 1
        // is being written, insert 2 queued, and the hand-over of insert 3 waits for room (arm 4)
        // when shutdown comes.
        let mut events = tx(1, &[1, 2, 3, 4], 0x2000, true);
        let rest = events.split_off(events.len() - 2); // insert 4 and the commit
        send(&senders[0], events).await;
        until("insert 3 is read", || read_all(&senders[0])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.add_permits(100);
        send_late(&senders[0], rest).await;
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    // Stopping here would leave inserts 1 and 2 written and unconfirmed: sent twice on restart.
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000), "the open transaction is finished first");
    assert_eq!(ids(&sink), [1, 2, 3, 4]);
    assert_eq!(record.get().settled, Some(Lsn(0x2000)));
}
