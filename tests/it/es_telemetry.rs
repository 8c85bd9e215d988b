//! Telemetry into daily indexes: the worked example's schema (sql/telemetry/) streamed with a
//! time-based flat rule (`{column:ts:%Y.%m.%d}`) into one index per day, each created from the
//! example's mapping file. Readings over three simulated days: every daily index holds exactly
//! the readings Postgres has for that day (UTC), also after deletes and an update that moves a
//! reading to another day. `WALCAST_TELEMETRY_ROWS` sets the number of readings (default 30000,
//! to keep the suite short; the 1000000 over three days is run and checked the same way,
//! count per daily index = Postgres per day, by `scripts/bench-telemetry`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::es::*;
use crate::support::*;

fn rows() -> i64 {
    std::env::var("WALCAST_TELEMETRY_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000)
}

fn example(file: &str) -> String {
    let path = format!("{}/sql/telemetry/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Readings per UTC day in Postgres, keyed by the index name the day makes.
async fn pg_days(sql: &tokio_postgres::Client, index: &dyn Fn(&str) -> String) -> BTreeMap<String, i64> {
    let rows = sql
        .query("SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY.MM.DD'), count(*) FROM readings GROUP BY 1", &[])
        .await
        .expect("count per day");
    rows.iter().map(|r| (index(r.get::<_, &str>(0)), r.get::<_, i64>(1))).collect()
}

async fn es_count(es: &Es, index: &str) -> i64 {
    es.refresh(index).await;
    let (s, v) = es.request(reqwest::Method::GET, &format!("/{index}/_count"), None).await;
    if s == 404 {
        return 0;
    }
    assert_eq!(s, 200, "count {index}: {v}");
    v["count"].as_i64().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn readings_land_in_daily_indexes() {
    let _wal = wal_heavy().await;
    let n = rows();
    let es = Es::new(&es_url());
    es.drop_leftovers().await;
    let pid = std::process::id();
    let index = move |day: &str| format!("wc-tel-{day}-{pid}");
    let days = ["2026.03.01", "2026.03.02", "2026.03.03", "2026.03.04"].map(index);
    for d in &days {
        es.delete_index(d).await;
    }

    let db = TestDb::create("es_telemetry").await;
    let sql = db.client().await;
    exec(&sql, &example("schema.sql")).await;
    exec(&sql, &example("devices.sql")).await;
    db.create_publication(&["devices", "readings"]).await;
    db.create_slot().await;

    let mapping = format!("{}/sql/telemetry/readings-index.json", env!("CARGO_MANIFEST_DIR"));
    let pattern = format!("wc-tel-{{column:ts:%Y.%m.%d}}-{pid}");
    let extra = format!(
        "[pipeline]\nbatch_max_changes = 8192\n\n{}",
        es_section(
            &es_url(),
            &format!(
                "bulk_max_actions = 10000\n\n[sinks.elasticsearch.indexes.\"{pattern}\"]\nmapping_file = {mapping:?}\n\n\
                 [[sinks.elasticsearch.tables]]\ntable = \"public.readings\"\nindex = \"{pattern}\"\n"
            ),
        )
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    wc.wait_streaming_slot(&db).await;

    // The example's loader: n readings over three days from 2026-03-01 00:00 UTC.
    let load = example("readings.sql").replace(":start", "'2026-03-01'").replace(":days", "3").replace(":rows", &n.to_string());
    let started = Instant::now();
    exec(&sql, &load).await;
    // A late correction: a few readings deleted, one moved to the next day.
    exec(&sql, "DELETE FROM readings WHERE device_id = 7 AND ts < '2026-03-01 06:00+00'").await;
    exec(&sql, "UPDATE readings SET ts = ts + interval '1 day' WHERE (device_id, ts) = (SELECT device_id, ts FROM readings ORDER BY ts DESC LIMIT 1)").await;
    exec(&sql, "UPDATE readings SET status = 'warn' WHERE device_id = 3 AND ts < '2026-03-02 01:00+00' AND ts > '2026-03-02 00:00+00'")
        .await;

    let want = pg_days(&sql, &index).await;
    assert_eq!(want.keys().cloned().collect::<Vec<_>>(), days.to_vec(), "three days and the moved reading's fourth");
    let total: i64 = want.values().sum();
    let deadline = Instant::now() + Duration::from_secs(180) + Duration::from_millis(n as u64);
    let mut got = BTreeMap::new();
    loop {
        got.clear();
        for d in &days {
            got.insert(d.clone(), es_count(&es, d).await);
        }
        if got == want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(got, want, "readings per daily index = Postgres per UTC day\n{}", wc.log_tail(30));
    eprintln!(
        "es_telemetry: {total} readings into {} daily indexes in {:.1} s ({:.0} rows/s end to end)",
        days.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // Every daily index was created from the example's mapping file.
    for d in &days {
        let m = es.mapping(d).await;
        assert_eq!(m["properties"]["status"]["type"], "keyword", "{d}: {m}");
        assert_eq!(m["dynamic"].to_string().trim_matches('"'), "strict", "{d}: {m}");
    }
    // The update that moved the last reading: gone from its first day, present on the fourth.
    let moved = es.all(&days[3]).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].1["ts"].as_str().map(|t| t.starts_with("2026-03-04")), Some(true), "{moved:?}");
    let warn: i64 = sql
        .query_one(
            "SELECT count(*) FROM readings WHERE status = 'warn' AND to_char(ts AT TIME ZONE 'UTC', 'YYYY.MM.DD') = '2026.03.02'",
            &[],
        )
        .await
        .expect("warn readings")
        .get(0);
    let (s, v) =
        es.request(reqwest::Method::POST, &format!("/{}/_count", days[1]), Some(json!({"query": {"term": {"status": "warn"}}}))).await;
    assert_eq!((s, v["count"].as_i64()), (200, Some(warn)), "updates reach the index of the reading's day: {v}");
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter") && !log.contains("ERROR"), "{}", wc.log_tail(40));

    wc.stop().await;
    db.drop().await;
    for d in &days {
        es.delete_index(d).await;
    }
}
