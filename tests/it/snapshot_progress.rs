//! Snapshot progress a person can read (docs/snapshot.md "Progress"): a 2M-row table that was
//! never analyzed (`reltuples` = -1) is snapshotted with JSON logs; the very first `snapshot
//! progress` line already carries a percent and a time left, and
//! `walcast_snapshot_rows_estimated` holds the table's row count.

use std::time::{Duration, Instant};

use crate::support::obs::{metric, patch_config};
use crate::support::*;
use serde_json::Value;

const ROWS: i64 = 2_000_000;

/// walcast's JSON log lines (the harness's banners are skipped).
fn log_lines(wc: &Walcast) -> Vec<Value> {
    let text = std::fs::read_to_string(&wc.log_path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

/// Wait for the first log line with `message`.
async fn wait_message(wc: &mut Walcast, message: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = log_lines(wc).into_iter().find(|l| l["message"] == message) {
            return line;
        }
        assert!(wc.is_running(), "walcast exited before logging {message:?}\n{}", wc.log_tail(40));
        assert!(Instant::now() < deadline, "no {message:?} within {timeout:?}\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_progress_line_of_a_never_analyzed_table_has_percent_and_time_left() {
    let db = TestDb::create("snap_progress").await;
    let sql = db.client().await;
    // Autovacuum off: it would analyze the table and set reltuples behind the test's back.
    exec(
        &sql,
        &format!(
            "CREATE TABLE big (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = false); \
             INSERT INTO big SELECT g, g FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    let reltuples = query_text(&sql, "SELECT reltuples::int8::text FROM pg_class WHERE oid = 'big'::regclass").await;
    assert_eq!(reltuples.as_deref(), Some("-1"), "the table must look never analyzed");
    db.create_publication(&["big"]).await;

    let mut wc = Walcast::new(&db);
    // Rows go nowhere (only the log matters); logs as JSON, as in production.
    patch_config(&wc, &format!("path = {}", toml_str(&wc.out_path.to_string_lossy())), "path = \"/dev/null\"");
    patch_config(&wc, "[log]\n", "[log]\nformat = \"json\"\n");
    wc.start();

    let listening = wait_message(&mut wc, "metrics endpoint listening (/metrics, /healthz, /readyz)", WAIT).await;
    let addr = listening["addr"].as_str().expect("addr").to_string();
    let first = wait_message(&mut wc, "snapshot progress", Duration::from_secs(120)).await;
    assert_eq!(first["table"], "public.big", "{first}");
    let percent = first["percent"].as_f64().expect("percent");
    assert!(percent > 0.0 && percent <= 100.0, "percent from the first line: {first}");
    let eta = first["eta_s"].as_i64().expect("eta_s");
    assert!(eta >= 0, "time left from the first line, not unknown: {first}");
    assert!(first["all_eta_s"].as_i64().expect("all_eta_s") >= 0, "{first}");
    assert!(first["rows_per_s"].as_u64().expect("rows_per_s") > 0, "{first}");
    let estimated = first["estimated_rows"].as_i64().expect("estimated_rows");
    assert!((ROWS * 9 / 10..=ROWS * 11 / 10).contains(&estimated), "estimate near 2M: {first}");

    let total = metric(&addr, "walcast_snapshot_rows_estimated{table=\"public.big\"}");
    assert!((1_900_000.0..=2_100_000.0).contains(&total), "walcast_snapshot_rows_estimated = {total}");

    let done = wait_message(&mut wc, "snapshot finished", Duration::from_secs(300)).await;
    assert_eq!(done["rows"], ROWS, "{done}");
    let last = log_lines(&wc).into_iter().rev().find(|l| l["message"] == "snapshot progress").expect("a last line");
    assert_eq!((last["percent"].as_f64(), last["eta_s"].as_i64()), (Some(100.0), Some(0)), "{last}");
    wc.stop().await;
    db.drop().await;
}
