//! Postgres restarts mid-stream (a clean `fast` restart, then an `immediate` one: a crash with
//! recovery) while a workload inserts numbered rows, one transaction each, ~200 per second,
//! retrying through the outages. walcast reconnects by itself (`walcast_reconnects_total` rises
//! at each restart, and it streams again); at the end every committed row is in the output
//! (duplicates allowed: at-least-once). Uses the chaos cluster, under its lock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::obs::{metric, metrics_addr};
use crate::support::*;
use serde_json::Value;

/// Ids of the inserted rows in some lines.
fn ids(lines: &[Value]) -> BTreeSet<i32> {
    lines.iter().filter(|l| l["op"] == "insert").filter_map(|l| l["after"]["id"].as_i64()).map(|i| i32::try_from(i).expect("id")).collect()
}

struct Workload {
    stop: Arc<AtomicBool>,
    /// The id the workload is inserting now (everything below it committed).
    next: Arc<AtomicI32>,
    committed: Arc<Mutex<Vec<i32>>>,
    errors: Arc<AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

fn start_workload(url: PgUrl) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI32::new(1));
    let committed = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicI32::new(0));
    let task = tokio::spawn({
        let (stop, next, committed, errors) = (stop.clone(), next.clone(), committed.clone(), errors.clone());
        async move {
            let mut client = None;
            while !stop.load(Ordering::SeqCst) {
                let c = match &client {
                    Some(c) => c,
                    None => match try_connect(&url).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let id = next.load(Ordering::SeqCst);
                let payload = format!("row {id}");
                // A retry after an error whose outcome is unknown (the commit may have happened)
                // must not fail: ON CONFLICT makes it a no-op, and the row counts as committed.
                let r = c.execute("INSERT INTO seq_rows VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", &[&id, &payload]).await;
                match r {
                    Ok(_) => {
                        committed.lock().expect("lock").push(id);
                        next.store(id + 1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    Workload { stop, next, committed, errors, task }
}

/// Wait until the row the workload inserts now (after an outage) is streamed.
async fn wait_for_progress(wc: &mut Walcast, w: &Workload, what: &str) {
    // Make sure the workload got through the outage first.
    let before = w.next.load(Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    while w.next.load(Ordering::SeqCst) < before + 50 {
        assert!(Instant::now() < deadline, "the workload made no progress after {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = w.next.load(Ordering::SeqCst) - 1;
    wc.wait_for(&format!("row {id} after {what}"), WAIT, |l| l["after"]["id"] == id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_committed_row_survives_postgres_restarts() {
    let chaos = ChaosCluster::acquire().await;
    let db = TestDb::create_on(&chaos.url, "pgrestart").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE seq_rows (id int PRIMARY KEY, payload text)").await;
    db.create_publication(&["seq_rows"]).await;
    db.create_slot().await;
    drop(sql);

    let mut wc = Walcast::new(&db);
    wc.start();
    let addr = metrics_addr(&mut wc, Duration::from_secs(30)).await;
    let w = start_workload(db.url.clone());
    let started = Instant::now();
    wc.wait_lines(200, WAIT).await;
    let mut reconnects = metric(&addr, "walcast_reconnects_total");

    for mode in ["fast", "immediate", "fast"] {
        // Stream for a while, then take the server down.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t = Instant::now();
        chaos.restart(mode).await;
        eprintln!("pg_restart: `{mode}` restart took {:?}", t.elapsed());
        wait_for_progress(&mut wc, &w, &format!("the {mode} restart")).await;
        let now = metric(&addr, "walcast_reconnects_total");
        assert!(now > reconnects, "walcast_reconnects_total must rise with the {mode} restart: {reconnects} -> {now}");
        assert_eq!(metric(&addr, "walcast_streaming"), 1.0, "streaming again after the {mode} restart");
        reconnects = now;
    }

    w.stop.store(true, Ordering::SeqCst);
    w.task.await.expect("workload task");
    let committed: Vec<i32> = w.committed.lock().expect("lock").clone();
    let last = *committed.last().expect("rows committed");
    wc.wait_for(&format!("the last committed row {last}"), WAIT, |l| l["after"]["id"] == last).await;
    // Rows that are in the table are the ground truth of what committed (including any commit
    // whose acknowledgement was lost in an outage).
    let sql = db.client().await;
    let in_table: BTreeSet<i32> =
        sql.query("SELECT id FROM seq_rows", &[]).await.expect("query").iter().map(|r| r.get::<_, i32>(0)).collect();
    let lines = wc.lines().to_vec();
    let streamed = ids(&lines);
    let missing_committed: Vec<i32> = committed.iter().copied().filter(|i| !streamed.contains(i)).collect();
    let missing_in_table: Vec<i32> = in_table.iter().copied().filter(|i| !streamed.contains(i)).collect();
    eprintln!(
        "pg_restart: {} rows committed in {:?} ({} errors retried), {} lines streamed, {} duplicates, {} reconnects",
        committed.len(),
        started.elapsed(),
        w.errors.load(Ordering::SeqCst),
        lines.len(),
        lines.len() - streamed.len(),
        reconnects,
    );
    assert!(missing_committed.is_empty(), "committed rows missing from the output: {missing_committed:?}");
    assert!(missing_in_table.is_empty(), "rows in the table missing from the output: {missing_in_table:?}");
    assert_eq!(in_table.len(), committed.len(), "the workload's record matches the table");
    assert!(streamed.iter().all(|i| in_table.contains(i)), "nothing was streamed that did not commit");

    wc.stop().await;
    db.drop().await;
    drop(chaos);
}
