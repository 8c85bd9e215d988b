//! A change log whose disk fills: the loop confirms nothing the log does not hold, in strict
//! mode (the log beside the sinks) and in decoupled mode (the log alone in the fan-out), not even
//! the server's position on a keepalive; once the disk has room the same batch is appended and
//! confirmed.

use super::*;
use crate::changelog::{full_disk, ChangeLog, LogReader};
use crate::config::ChangelogConfig;
use crate::sink::changelog::{ChangelogSink, Pins};

async fn a_full_log_disk_stops_confirming(decoupled: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let log = ChangeLog::open(&log_dir, &ChangelogConfig::default()).expect("open the log");
    let (script, senders, record) = script(1);
    let limits = limits(100, 1_000);
    let config = Config::parse(
        "[source]\nhost = \"127.0.0.1\"\nport = 1\ndatabase = \"app\"\nuser = \"walcast\"\ntables = [\"public.t\"]\n\n[sinks.jsonl]\npath = \"-\"\n",
        Path::new("test.toml"),
    )
    .expect("test config");
    let params = ConnParams::from_config(&config.source).expect("test params");
    let metrics = Metrics::new();
    let sinks_shutdown = CancellationToken::new();
    let mut fanout = Fanout::new(&limits, &RETRY, &metrics, &sinks_shutdown);
    let pins = Pins { cursors: None, state_dir: dir.path().to_path_buf(), slot: "s".into() };
    fanout.spawn_log(ChangelogSink::new(log, pins, Arc::clone(&metrics)));
    let sink = MemorySink::new();
    if !decoupled {
        fanout.spawn(sink.clone());
    }
    let published = source::Published { all_tables: true, ..Default::default() };
    let sinks = fanout.started();
    let mut streamer = Streamer::new(&limits, script, Catalog::new(params), sinks, START, published, metrics, Backoff::new(&RETRY));

    full_disk::set(&log_dir, Some(12));
    let shutdown = CancellationToken::new();
    let driver = async {
        send(&senders[0], tx(1, &[1, 2], 0x2000, true)).await;
        until_real("the log failed for want of room three times", || full_disk::failures(&log_dir) >= 3).await;
        // An idle stream: the server's position is not confirmed while the log owes a batch.
        send(&senders[0], vec![SourceEvent::KeepAlive { wal_end: Lsn(0x5000) }]).await;
        until_real("the keepalive was read", || read_all(&senders[0])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let confirmed = record.confirmed_max();
        assert!(confirmed <= START, "confirmed {confirmed} while the log's disk is full");
        if !decoupled {
            assert_eq!(ids(&sink), [1, 2], "strict: the sink has the batch, yet it is not confirmed");
        }
        full_disk::set(&log_dir, None);
        until_real("the commit is confirmed once the disk has room", || record.confirmed_max() == Lsn(0x2000)).await;
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(streamer.run(&shutdown), driver);
    assert_eq!(result.expect("clean stop").confirmed, Lsn(0x2000));
    let mut scan = LogReader::open(&log_dir).expect("reader").scan_after(Lsn::ZERO).expect("scan");
    let batch = scan.next_batch(100).expect("read").expect("a batch");
    let logged: Vec<String> = batch.changes.iter().filter_map(|c| c.new.as_ref()?.get(0).map(|d| format!("{d:?}"))).collect();
    assert_eq!((logged.len(), batch.checkpoint), (2, Some(Lsn(0x2000))), "the transaction is in the log once: {logged:?}");
    assert!(scan.next_batch(100).expect("read").is_none());
}

/// Wait (on the real clock: the log appends on the blocking pool) until `cond` holds.
async fn until_real(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn strict_a_full_log_disk_stops_confirming() {
    a_full_log_disk_stops_confirming(false).await;
}

#[tokio::test]
async fn decoupled_a_full_log_disk_stops_confirming() {
    a_full_log_disk_stops_confirming(true).await;
}
