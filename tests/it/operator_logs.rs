//! What an operator reads in walcast's log, at the default level (`info`, as shipped):
//! - a walsender terminated while walcast streams: walcast reconnects, its log has walcast's own
//!   reconnect WARN (the cause and what to do) and no ERROR line (the replication crate's
//!   `replication worker terminated` is not shown);
//! - a Kafka broker killed for 30 s (a private tansu, never the shared one): the WARN/ERROR lines
//!   of the outage are at most one per backoff step plus a few, each naming the broker and the fix;
//! - the same for an Elasticsearch server stopped for 30 s (a private noida-db);
//! - ALTER TABLE ADD COLUMN / DROP COLUMN / ALTER TYPE mid-stream: one INFO line per change, naming
//!   the table and the columns added, removed or retyped.

use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::kafka::*;
use crate::support::obs::patch_config;
use crate::support::*;

const OUTAGE: Duration = Duration::from_secs(30);

/// `[retry]` of the outage tests: the backoff schedule the line bound is derived from.
const RETRY_INITIAL_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 4_000;

/// walcast for `db` with the log level of the shipped config (`info`: third-party lines show as
/// they would in production) and the retry schedule above.
fn walcast_at_info(db: &TestDb, extra: String) -> Walcast {
    let wc = Walcast::with_options(db, &Options { extra, ..Options::default() });
    patch_config(&wc, "level = \"walcast=debug\"", "level = \"info\"");
    patch_config(
        &wc,
        "[retry]\ninitial_ms = 50\nmax_ms = 1000\n",
        &format!("[retry]\ninitial_ms = {RETRY_INITIAL_MS}\nmax_ms = {RETRY_MAX_MS}\n"),
    );
    wc
}

/// The most retry lines one backoff loop can write in `window`: a line when each wait starts,
/// the waits as short as the jitter allows (half the ceiling `initial * 2^k`, capped at `max`),
/// plus the one whose wait began just before the window.
fn max_retry_lines(window: Duration) -> usize {
    let (mut lines, mut at, mut k) = (1, 0u64, 0u32);
    loop {
        let ceiling = (RETRY_INITIAL_MS << k.min(20)).min(RETRY_MAX_MS);
        at += ceiling / 2;
        if at > window.as_millis() as u64 {
            return lines + 1;
        }
        lines += 1;
        k += 1;
    }
}

fn log_text(wc: &Walcast) -> String {
    std::fs::read(&wc.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// WARN and ERROR lines of the text log (`<time>  WARN target: message fields`).
fn warn_or_error(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_walsender_is_one_walcast_warn_and_no_error() {
    let db = TestDb::create("reconnect_log").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = walcast_at_info(&db, String::new());
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1)").await;
    wc.wait_lines(1, WAIT).await;

    let admin = db.admin().await;
    let slot = db.slot.clone();
    let row = admin
        .query_one("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
        .await
        .expect("terminate the walsender");
    assert!(row.get::<_, bool>(0), "the walsender was terminated");
    exec(&sql, "INSERT INTO t VALUES (2)").await;
    wc.wait_lines(2, WAIT).await;

    let text = log_text(&wc);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "no ERROR line for a routine reconnect: {errors:#?}");
    let lost: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") && l.contains("replication connection lost")).collect();
    assert_eq!(lost.len(), 1, "one reconnect WARN\n{}", wc.log_tail(40));
    assert!(lost[0].contains("terminating connection due to administrator command") && lost[0].contains("57P01"), "the cause: {}", lost[0]);
    assert!(lost[0].contains("fix:"), "what to do: {}", lost[0]);
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_outage_logs_one_line_per_backoff_step_naming_the_broker() {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let broker = PrivateBroker::start(broker_dir.path());
    let bootstrap = broker.bootstrap();
    let db = TestDb::create("kafka_outage_log").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let topic = format!("{}.public.t", db.name);
    let mut wc = walcast_at_info(&db, kafka_section(&bootstrap, &db.name, "message_timeout_ms = 5000\ntopic_partitions = 2\n"));
    wc.start();
    let workload = RowWorkload::start(&db, Duration::from_millis(20)).await;
    let mut consumer = Collector::assigned(&bootstrap, &[&topic], 2);
    tokio::task::block_in_place(|| consumer.wait_until("first records", Duration::from_secs(60), |r| r.len() >= 20));
    drop(consumer);

    // The outage: the broker is killed (connections refused), the workload goes on.
    let before = log_text(&wc).len();
    drop(broker);
    let started = Instant::now();
    while started.elapsed() < OUTAGE {
        assert!(wc.is_running(), "walcast keeps running during the outage\n{}", wc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = log_text(&wc);
    let outage = warn_or_error(&text[before..]);
    let bound = max_retry_lines(OUTAGE) + 3;
    eprintln!("{} WARN/ERROR lines in the {OUTAGE:?} outage (bound {bound})", outage.len());
    assert!(!outage.is_empty(), "the outage is logged\n{}", wc.log_tail(30));
    assert!(outage.len() <= bound, "{} WARN/ERROR lines in {OUTAGE:?}, more than {bound}:\n{}", outage.len(), outage.join("\n"));
    for line in &outage {
        assert!(line.contains(&bootstrap) && line.contains("fix"), "a line that does not name the broker and the fix: {line}");
        assert!(!line.contains(" ERROR "), "an outage is retried, not an error: {line}");
    }
    workload.stop().await;
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_elasticsearch_outage_logs_one_line_per_backoff_step_naming_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = PrivateNoida::start(dir.path()).await;
    let es = Es::new(&server.url());
    let index = index_name("outage-log");
    let db = TestDb::create("es_outage_log").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let extra = es_section(
        &server.url(),
        &format!("request_timeout_ms = 2000\nconnect_timeout_ms = 500\n\n[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n"),
    );
    let mut wc = walcast_at_info(&db, extra);
    wc.start();
    let workload = RowWorkload::start(&db, Duration::from_millis(20)).await;
    es.wait_doc(&index, "10", Duration::from_secs(60), |d| d.is_some()).await;

    let before = log_text(&wc).len();
    server.stop().await;
    let started = Instant::now();
    while started.elapsed() < OUTAGE {
        assert!(wc.is_running(), "walcast keeps running during the outage\n{}", wc.log_tail(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = log_text(&wc);
    let outage = warn_or_error(&text[before..]);
    let bound = max_retry_lines(OUTAGE) + 3;
    eprintln!("{} WARN/ERROR lines in the {OUTAGE:?} outage (bound {bound})", outage.len());
    assert!(!outage.is_empty(), "the outage is logged\n{}", wc.log_tail(30));
    assert!(outage.len() <= bound, "{} WARN/ERROR lines in {OUTAGE:?}, more than {bound}:\n{}", outage.len(), outage.join("\n"));
    let host = server.url().trim_start_matches("http://").to_string();
    for line in &outage {
        assert!(line.contains(&host) && line.contains("fix:"), "a line that does not name the host and the fix: {line}");
        assert!(!line.contains(" ERROR "), "an outage is retried, not an error: {line}");
    }
    workload.stop().await;
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_change_mid_stream_is_one_info_line_naming_the_columns() {
    let db = TestDb::create("schema_log").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, a int, b text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1, 1, 'x')").await;
    wc.wait_lines(1, WAIT).await;

    let changed = |text: &str| {
        text.lines().filter(|l| l.contains(" INFO ") && l.contains("table schema changed")).map(str::to_string).collect::<Vec<_>>()
    };
    let steps: [(&str, &str, &str); 3] = [
        ("ALTER TABLE t ADD COLUMN c text", "INSERT INTO t VALUES (2, 2, 'y', 'z')", r#"added=["c"] removed=[] retyped=[]"#),
        ("ALTER TABLE t DROP COLUMN b", "INSERT INTO t VALUES (3, 3, 'w')", r#"added=[] removed=["b"] retyped=[]"#),
        // int4 (OID 23) -> int8 (OID 20).
        (
            "ALTER TABLE t ALTER COLUMN a TYPE bigint",
            "INSERT INTO t VALUES (4, 4, 'v')",
            r#"added=[] removed=[] retyped=["a: type 23 -> 20"]"#,
        ),
    ];
    for (n, (alter, insert, columns)) in steps.iter().enumerate() {
        exec(&sql, alter).await;
        exec(&sql, insert).await;
        wc.wait_lines(n + 2, WAIT).await;
        let lines = changed(&log_text(&wc));
        assert_eq!(lines.len(), n + 1, "one line per schema change ({alter})\n{}", wc.log_tail(20));
        let line = &lines[n];
        assert!(line.contains("relation=public.t") && line.contains(columns), "{alter}: {line}");
    }
    // Changes that alter no column (an index, a comment) and plain writes: no more lines.
    exec(&sql, "CREATE INDEX ON t (a); COMMENT ON TABLE t IS 'x'; UPDATE t SET a = 5 WHERE id = 1").await;
    wc.wait_lines(5, WAIT).await;
    assert_eq!(changed(&log_text(&wc)).len(), 3, "\n{}", wc.log_tail(20));
    wc.stop().await;
    db.drop().await;
}
