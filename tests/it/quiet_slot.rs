//! A quiet slot: walcast streams a publication whose table nobody writes, while another (not
//! published) table of the same database takes many MB of WAL. With the heartbeat on
//! (`[heartbeat] interval_ms = 500`), the slot's confirmed_flush_lsn keeps advancing and the WAL
//! it retains (current WAL LSN minus restart_lsn) stays far below the WAL written.
//!
//! walcast's own figures come from /metrics (`walcast_confirmed_lsn`), the heartbeats from a
//! second ("oracle") slot of the publication that decodes the logical messages walcast wrote.
//!
//! Each run has a cluster of its own: retained WAL is a figure of the whole cluster, and another
//! test's open transaction (an exported snapshot, a big transaction) holds every slot's
//! restart_lsn back while it lasts.
//!
//! restart_lsn moves only at a running-xacts record (a checkpoint, or the bgwriter every ~15 s),
//! so the test issues CHECKPOINT before each sample to make the figure deterministic.
//! The same run with the heartbeat off is measured for comparison (figures only: Postgres 15's
//! walsender pings a caught-up client with its position, which walcast confirms when idle, so
//! the slot may advance without a heartbeat too).

use std::time::{Duration, Instant};

use crate::support::obs::*;
use crate::support::*;
use walcast::lsn::Lsn;

/// How long the unpublished table is written (at least).
const WRITE_FOR: Duration = Duration::from_secs(8);
/// Samples taken while writing.
const SAMPLES: usize = 4;

struct Run {
    wal_written: u64,
    confirmed: Vec<Lsn>,
    /// `walcast_confirmed_lsn` on /metrics at each sample.
    confirmed_metric: Vec<Lsn>,
    retained: Vec<u64>,
    heartbeat_lines: usize,
    /// Heartbeat messages in the WAL of the test database that walcast confirmed (their LSN at
    /// or below its last `walcast_confirmed_lsn`): received and acknowledged.
    heartbeats_seen: usize,
}

async fn quiet_run(test: &str, heartbeat_ms: u64) -> Run {
    let cluster = PrivateCluster::start(test).await;
    let db = TestDb::create_on(&cluster.url, test).await;
    let client = db.client().await;
    exec(&client, "CREATE TABLE quiet (id int PRIMARY KEY, v text); CREATE TABLE noise (id bigserial PRIMARY KEY, b text)").await;
    db.create_publication(&["quiet"]).await;
    db.create_slot().await;
    let oracle = format!("{}_oracle", db.slot);
    db.create_named_slot(&oracle).await;
    let extra = format!("[heartbeat]\ninterval_ms = {heartbeat_ms}\n");
    let mut w = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    w.start();
    let addr = metrics_addr(&mut w, Duration::from_secs(30)).await;
    wait_http(&addr, "/readyz", 200, Duration::from_secs(30)).await;

    let wal_start = current_wal_lsn(&client).await;
    let mut confirmed = Vec::new();
    let mut confirmed_metric = Vec::new();
    let mut retained = Vec::new();
    let begin = Instant::now();
    let mut next_sample = begin + WRITE_FOR / SAMPLES as u32;
    // Until both the time has passed and every sample is taken (a CHECKPOINT is slow on a busy
    // machine, and a late sample would fall out of the window).
    while begin.elapsed() < WRITE_FOR || confirmed.len() < SAMPLES {
        exec(&client, "INSERT INTO noise (b) SELECT md5(g::text) FROM generate_series(1, 1000) g").await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        if Instant::now() >= next_sample {
            next_sample += WRITE_FOR / SAMPLES as u32;
            let (c, r) = sample_slot(&db, &client).await;
            confirmed.push(c);
            confirmed_metric.push(confirmed_metric_of(&addr));
            retained.push(r);
        }
    }
    let wal_written = current_wal_lsn(&client).await.0 - wal_start.0;
    // Once the writes stop, one more sample.
    let (c, r) = sample_slot(&db, &client).await;
    confirmed.push(c);
    let last_confirmed = confirmed_metric_of(&addr);
    confirmed_metric.push(last_confirmed);
    retained.push(r);
    let heartbeat_lines = w.lines().len();
    w.stop().await;
    let heartbeats = oracle_messages(&client, &oracle, &db.publication, "walcast.heartbeat").await;
    let heartbeats_seen = heartbeats.iter().filter(|&&lsn| lsn <= last_confirmed).count();
    db.drop().await;
    drop(cluster);
    Run { wal_written, confirmed, confirmed_metric, retained, heartbeat_lines, heartbeats_seen }
}

/// `walcast_confirmed_lsn` of the walcast whose metrics are at `addr`.
fn confirmed_metric_of(addr: &str) -> Lsn {
    Lsn(metric(addr, "walcast_confirmed_lsn") as u64)
}

/// CHECKPOINT (so restart_lsn can move), give walcast a heartbeat's time to confirm, then read
/// the slot: (confirmed_flush_lsn, current WAL LSN - restart_lsn).
async fn sample_slot(db: &TestDb, client: &tokio_postgres::Client) -> (Lsn, u64) {
    exec(client, "CHECKPOINT").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text, (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .expect("slot row");
    (parse_lsn(row.get::<_, &str>(0)), row.get::<_, i64>(1) as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_keeps_a_quiet_slot_advancing_and_its_retained_wal_bounded() {
    let started = Instant::now();
    let on = quiet_run("quiet_slot_hb", 500).await;
    let mb = |b: u64| b as f64 / 1e6;

    assert!(on.wal_written > 10_000_000, "the workload should write over 10 MB of WAL, wrote {:.1} MB", mb(on.wal_written));
    assert_eq!(on.heartbeat_lines, 0, "the unpublished table and the heartbeat must not reach the sink");
    assert!(on.heartbeats_seen >= 8, "walcast should have received a heartbeat every 500 ms, saw {}", on.heartbeats_seen);
    assert!(on.confirmed.len() > SAMPLES, "{:?}", on.confirmed);
    for pair in on.confirmed.windows(2) {
        assert!(pair[1] > pair[0], "confirmed_flush_lsn must keep advancing: {:?}", on.confirmed);
    }
    for pair in on.confirmed_metric.windows(2) {
        assert!(pair[1] > pair[0], "walcast_confirmed_lsn must keep advancing: {:?}", on.confirmed_metric);
    }
    let max_retained = *on.retained.iter().max().expect("samples");
    assert!(
        max_retained < on.wal_written / 4,
        "retained WAL must stay bounded: up to {:.1} MB retained of {:.1} MB written ({:?})",
        mb(max_retained),
        mb(on.wal_written),
        on.retained
    );

    let off = quiet_run("quiet_slot_nohb", 0).await;
    assert_eq!(off.heartbeats_seen, 0);
    eprintln!(
        "figures: heartbeat 500 ms: {:.1} MB of WAL written to an unpublished table in {WRITE_FOR:?}; \
         {} heartbeats received; confirmed_flush_lsn {:?}; retained WAL (MB) {:?}. Heartbeat off, same workload: {:.1} MB written; \
         confirmed_flush_lsn {:?}; retained WAL (MB) {:?}; test {:?}",
        mb(on.wal_written),
        on.heartbeats_seen,
        on.confirmed.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        on.retained.iter().map(|&r| (mb(r) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        mb(off.wal_written),
        off.confirmed.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        off.retained.iter().map(|&r| (mb(r) * 10.0).round() / 10.0).collect::<Vec<_>>(),
        started.elapsed()
    );
}
