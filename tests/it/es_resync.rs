//! The slot-dropped scenario with an Elasticsearch flat index, on both Elasticsearch-API servers
//! (osmem keeps delete tombstones, noida keeps none): the slot is dropped under a running
//! walcast, rows are deleted and updated while no slot records them, `run` refuses, and after
//! `walcast resync` the index equals the table, the rows deleted meanwhile gone, although the
//! rule leaves truncates at their default (`ignore`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::*;
use serde_json::Value;

/// The table by document id (the id column as text).
async fn table_rows(client: &tokio_postgres::Client) -> BTreeMap<String, Value> {
    id_v_rows(client).await.into_iter().map(|(id, row)| (id.to_string(), row)).collect()
}

async fn index_rows(es: &Es, index: &str) -> BTreeMap<String, Value> {
    es.all(index).await.into_iter().collect()
}

/// Poll until the index holds exactly the table's rows.
async fn wait_equal(es: &Es, index: &str, sql: &tokio_postgres::Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, have) = (table_rows(sql).await, index_rows(es, index).await);
        if want == have {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the index does not equal the table\nwant {want:?}\nhave {have:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dropped_slot_resync(url: &str, test: &str) {
    let es = Es::new(url);
    es.drop_leftovers().await;
    let index = index_name(&format!("{test}-t"));
    es.delete_index(&index).await;
    let db = TestDb::create(test).await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO t SELECT g, 'r' || g FROM generate_series(1, 30) g").await;
    db.create_publication(&["t"]).await;
    let extra = es_section(url, &format!("[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    wait_equal(&es, &index, &sql, "after the snapshot").await;

    drop_streaming_slot(&db.admin().await, &db.slot).await;
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(3), "{}", wc.log_tail(30));
    exec(&sql, "DELETE FROM t WHERE id IN (3, 4, 30)").await;
    exec(&sql, "UPDATE t SET v = 'changed' WHERE id = 5").await;
    exec(&sql, "INSERT INTO t VALUES (31, 'meanwhile')").await;
    wc.start();
    assert_eq!(wc.wait_exit(WAIT).await.code(), Some(3), "run refuses the vanished slot\n{}", wc.log_tail(30));
    assert!(es.doc(&index, "3").await.is_some(), "nothing was written by the refused start");

    let config = wc.config_path.to_string_lossy().into_owned();
    let resync = walcast_cmd(&["resync", "--config", &config]).await;
    assert_eq!(resync.code, Some(0), "{resync}");
    wc.start();
    exec(&sql, "INSERT INTO t VALUES (1000, 'marker')").await;
    es.wait_doc(&index, "1000", Duration::from_secs(60), |d| d.is_some()).await;
    wait_equal(&es, &index, &sql, "after the re-sync (rows 3, 4 and 30 deleted meanwhile)").await;
    // Streaming goes on after the re-sync, with versions above the reload's.
    exec(&sql, "DELETE FROM t WHERE id = 1; UPDATE t SET v = 'later' WHERE id = 2").await;
    wait_equal(&es, &index, &sql, "streaming after the re-sync").await;
    wc.stop().await;
    es.delete_index(&index).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_slot_resync_osmem() {
    dropped_slot_resync(&es_url(), "es_resync_osmem").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_slot_resync_noida() {
    dropped_slot_resync(&noida_url(), "es_resync_noida").await;
}
