//! One 200 MB value passes through (JSON-lines sink); after it, and a few small rows, walcast's
//! RSS drops back under 64 MB: no reused buffer keeps the capacity the huge value made it grow
//! to. The figures (idle, peak and final RSS) are printed.

use std::time::{Duration, Instant};

use crate::support::*;

/// 6,250,000 md5 hex digests: 200 MB of text.
const DIGESTS: u64 = 6_250_000;
const VALUE_BYTES: u64 = DIGESTS * 32;
/// Well above walcast's idle RSS (a few MB), far below the size of the value.
const RSS_AFTER_LIMIT_KB: u64 = 64 * 1024;

async fn wait_lines(wc: &mut Walcast, counter: &mut LineCounter, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = counter.update(&wc.out_path);
        if got >= n {
            return;
        }
        assert!(wc.is_running(), "walcast exited after {got} lines\n{}", wc.log_tail(40));
        assert!(Instant::now() < deadline, "only {got} of {n} lines\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_is_given_back_after_a_huge_value() {
    let _wal = wal_heavy().await;
    let db = TestDb::create("huge_value").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE blobs (id int PRIMARY KEY, v text)").await;
    // Stored out of line uncompressed: the WAL and the replication message carry all 200 MB.
    exec(&sql, "ALTER TABLE blobs ALTER COLUMN v SET STORAGE EXTERNAL").await;
    db.create_publication(&["blobs"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();
    wc.wait_streaming_slot(&db).await;
    let idle_kb = wc.vm_rss_kb();

    exec(&sql, &format!("INSERT INTO blobs SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, {DIGESTS}) g")).await;
    let mut counter = LineCounter::default();
    wait_lines(&mut wc, &mut counter, 1, Duration::from_secs(600)).await;
    assert!(counter.bytes() > VALUE_BYTES, "the line holds the whole value: {} bytes", counter.bytes());
    let peak_kb = wc.vm_hwm_kb();

    // Small rows in their own transactions: every reused buffer is used again for a normal row.
    for id in 2..=6 {
        exec(&sql, &format!("INSERT INTO blobs VALUES ({id}, 'small')")).await;
    }
    wait_lines(&mut wc, &mut counter, 6, WAIT).await;

    // Freed memory leaves the RSS at once; give the runtime a moment to drop what it still holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rss_kb = wc.vm_rss_kb();
    while rss_kb >= RSS_AFTER_LIMIT_KB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_kb = wc.vm_rss_kb();
    }
    eprintln!(
        "huge_value: walcast RSS idle {:.1} MB, peak (VmHWM) {:.1} MB, after the huge value and {} small rows {:.1} MB",
        idle_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0,
        counter.lines() - 1,
        rss_kb as f64 / 1024.0,
    );
    assert!(
        rss_kb < RSS_AFTER_LIMIT_KB,
        "walcast still holds {rss_kb} kB after the huge value went through (bound {RSS_AFTER_LIMIT_KB} kB): a reused buffer kept its capacity"
    );
    wc.stop().await;
    db.drop().await;
}
