//! One transaction of 1,000,000 rows streams through completely, in order, while walcast's peak
//! RSS stays under 100 MB (bounded memory: nothing buffers a whole transaction). The figures
//! (elapsed, rows/s, peak RSS) are printed; there is no assertion on speed.

use std::time::{Duration, Instant};

use crate::support::*;

const ROWS: u64 = 1_000_000;
const RSS_LIMIT_KB: u64 = 100 * 1024;

#[derive(serde::Deserialize)]
struct Line {
    commit_lsn: String,
    seq: u64,
    op: String,
    table: String,
    after: Row,
}

#[derive(serde::Deserialize)]
struct Row {
    id: i64,
    a: i64,
    b: String,
    c: String,
    d: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_row_transaction_streams_in_bounded_memory() {
    let _wal = wal_heavy().await;
    let db = TestDb::create("big_tx").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, a int, b text, c timestamptz DEFAULT now(), d numeric)").await;
    db.create_publication(&["bench_rows"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();
    // Connected and streaming before the workload starts.
    wc.wait_streaming_slot(&db).await;

    let t0 = Instant::now();
    exec(&sql, "INSERT INTO bench_rows (a, b, d) SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 1000000) g").await;
    let committed = Instant::now();
    let insert_time = committed - t0;

    let mut counter = LineCounter::default();
    let deadline = committed + Duration::from_secs(600);
    let mut first_line_at = None;
    loop {
        let n = counter.update(&wc.out_path);
        if n > 0 && first_line_at.is_none() {
            first_line_at = Some(committed.elapsed());
        }
        if n >= ROWS {
            break;
        }
        assert!(wc.is_running(), "walcast exited after {n} lines\n{}", wc.log_tail(40));
        assert!(Instant::now() < deadline, "only {n} of {ROWS} lines after {:?}\n{}", committed.elapsed(), wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = committed.elapsed();
    // Peak RSS, read just before stopping.
    let peak_kb = wc.vm_hwm_kb();
    let rss_kb = wc.vm_rss_kb();
    wc.stop().await;
    eprintln!(
        "big_tx: INSERT of {ROWS} rows took {insert_time:?}; first line {:?} after commit; all {ROWS} lines {elapsed:?} after commit \
         ({:.0} rows/s); walcast peak RSS (VmHWM) {:.1} MB, RSS at the end {:.1} MB; output {:.0} MB",
        first_line_at.unwrap_or_default(),
        ROWS as f64 / elapsed.as_secs_f64(),
        peak_kb as f64 / 1024.0,
        rss_kb as f64 / 1024.0,
        counter.bytes() as f64 / 1e6,
    );

    // Every row exactly once, in order, with its values.
    let check = Instant::now();
    let text = std::fs::read(&wc.out_path).expect("read output");
    let mut count = 0u64;
    let mut commit = None;
    for (i, raw) in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let line: Line = serde_json::from_slice(raw).unwrap_or_else(|e| panic!("line {i}: {e}: {}", String::from_utf8_lossy(raw)));
        let i = i as u64;
        let id = (i + 1) as i64;
        assert_eq!((line.op.as_str(), line.table.as_str(), line.seq, line.after.id), ("insert", "bench_rows", i, id), "line {i}");
        assert_eq!(line.after.a, id, "line {i}");
        assert_eq!(line.after.b.len(), 32, "line {i}: md5");
        let d = if id % 2 == 0 { format!("{}.0", id * 3 / 2) } else { format!("{}.5", id * 3 / 2) };
        assert_eq!(line.after.d, d, "line {i}: numeric");
        assert!(line.after.c.ends_with('Z'), "line {i}: timestamptz");
        match &commit {
            None => commit = Some(line.commit_lsn),
            Some(c) => assert_eq!(c, &line.commit_lsn, "line {i}: one transaction"),
        }
        count += 1;
    }
    assert_eq!(count, ROWS, "every row exactly once");
    eprintln!("big_tx: output verified in {:?}", check.elapsed());

    assert!(peak_kb < RSS_LIMIT_KB, "walcast's peak RSS {peak_kb} kB is over the {RSS_LIMIT_KB} kB bound");
    db.drop().await;
}
