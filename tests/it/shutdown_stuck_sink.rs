//! Shutdown never waits for a stuck sink beyond `pipeline.shutdown_timeout_ms`: an Elasticsearch
//! sink pointed at a port that accepts connections and never answers keeps its queue full. SIGTERM
//! must end walcast (bound far above the timeout, not a timing benchmark), and nothing the stuck
//! sink did not write may be confirmed.

use std::time::Duration;

use crate::support::es::*;
use crate::support::*;

/// A TCP port that accepts every connection and never answers (the sockets stay open).
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    url
}

/// Far above the 2 s timeout: walcast must exit, however slowly.
const EXIT_BOUND: Duration = Duration::from_secs(15);

fn stuck_es_config(url: &str, extra: &str) -> Options {
    let extra = format!(
        "{}\n[pipeline]\nbatch_max_changes = 10\nsink_queue_batches = 1\nshutdown_timeout_ms = 2000\n{extra}",
        es_section(url, "[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"stuck_t\"\n")
    );
    Options { extra, ..Options::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_full_sink_queue_ends_within_the_timeout() {
    let url = silent_server().await;
    let db = TestDb::create("stuckflush").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    let start = db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &stuck_es_config(&url, ""));
    wc.start();

    // Batches of 10, a queue of one batch, a sink that never answers: the pipeline blocks
    // handing a batch over.
    // One transaction per row: committed batches wait for the full queue.
    exec(&sql, "DO $$ BEGIN FOR i IN 1..500 LOOP INSERT INTO t VALUES (i, 'x'); COMMIT; END LOOP; END $$").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(wc.is_running(), "walcast must be streaming");

    wc.sigterm();
    wc.wait_exit(EXIT_BOUND).await;
    let confirmed = db.confirmed_flush_lsn().await;
    assert!(confirmed <= start, "the slot was confirmed past changes the stuck sink never wrote: {confirmed} > {start}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_snapshot_into_a_stuck_sink_ends_within_the_timeout() {
    let url = silent_server().await;
    let db = TestDb::create("stucksnap").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    // One transaction per row: committed batches wait for the full queue.
    exec(&sql, "DO $$ BEGIN FOR i IN 1..500 LOOP INSERT INTO t VALUES (i, 'x'); COMMIT; END LOOP; END $$").await;
    db.create_publication(&["t"]).await;
    // Small snapshot chunks (the config then holds its own [snapshot] section).
    let state = tempfile::tempdir().expect("tempdir");
    let opts =
        stuck_es_config(&url, &format!("\n[snapshot]\nstate_dir = {}\nchunk_rows = 10\n", toml_str(&state.path().to_string_lossy())));
    let mut wc = Walcast::with_options(&db, &opts);
    wc.start();
    wc.wait_log("snapshot table started", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(wc.is_running(), "walcast must be loading the snapshot");

    wc.sigterm();
    wc.wait_exit(EXIT_BOUND).await;
    let progress = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect::<String>();
    assert!(!progress.contains("\"done\""), "the snapshot cannot be done, its sink wrote nothing: {progress}");
    db.drop().await;
}
