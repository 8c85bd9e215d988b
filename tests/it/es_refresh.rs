//! `refresh` per index end to end, on noida-db (it honours `refresh_interval: -1` and the
//! `refresh` parameter of `_bulk`; osmem-server makes every write searchable at once, so it
//! cannot tell them apart). Both indexes have refreshes disabled, so only walcast's
//! `refresh=wait_for` can make a document searchable: the index with it returns a row from
//! `_search` (no refresh by the reader) as soon as the slot confirmed the row; the index left at
//! the default does not, until someone refreshes it.

use crate::support::es::*;
use crate::support::*;
use serde_json::{json, Value};

/// `_source`s of every hit of `index`, searched WITHOUT a refresh first (unlike `Es::all`).
async fn search_now(es: &Es, index: &str) -> Vec<Value> {
    let (status, body) = es.request(reqwest::Method::GET, &format!("/{index}/_search"), None).await;
    assert_eq!(status, 200, "search {index}: {body}");
    body["hits"]["hits"].as_array().map(|h| h.iter().map(|h| h["_source"].clone()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_for_makes_a_confirmed_row_searchable() {
    let es = Es::new(&noida_url());
    let (live, lazy) = (index_name("refresh-live"), index_name("refresh-lazy"));
    es.delete_index(&live).await;
    es.delete_index(&lazy).await;

    let db = TestDb::create("es_refresh").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE live (id int PRIMARY KEY, v text); CREATE TABLE lazy (id int PRIMARY KEY, v text);").await;
    db.create_publication(&["live", "lazy"]).await;
    db.create_slot().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("no-refresh.json");
    std::fs::write(&mapping, r#"{"settings":{"index":{"refresh_interval":"-1","number_of_shards":1}}}"#).expect("mapping file");
    let mapping = mapping.display().to_string();
    let extra = es_section(
        &noida_url(),
        &format!(
            "[sinks.elasticsearch.indexes.{live:?}]\nmapping_file = {mapping:?}\nrefresh = \"wait_for\"\n\n\
             [sinks.elasticsearch.indexes.{lazy:?}]\nmapping_file = {mapping:?}\n\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.live\"\nindex = \"{live}\"\n\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.lazy\"\nindex = \"{lazy}\"\n"
        ),
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    // One transaction, so one batch writes both indexes (one request per refresh value).
    exec(&sql, "BEGIN; INSERT INTO live VALUES (1, 'first'); INSERT INTO lazy VALUES (1, 'first'); COMMIT;").await;
    let lines = wc.wait_lines(2, WAIT).await;
    let confirmed = db.wait_confirmed_at_least(commit_lsn(&lines[1]), WAIT).await;
    assert!(confirmed >= commit_lsn(&lines[1]), "the slot did not confirm the insert: {confirmed}");
    assert_eq!(search_now(&es, &live).await, vec![json!({"id": 1, "v": "first"})], "confirmed with wait_for: searchable");
    assert_eq!(search_now(&es, &lazy).await, Vec::<Value>::new(), "default refresh: not searchable before a refresh");
    es.refresh(&lazy).await;
    assert_eq!(search_now(&es, &lazy).await, vec![json!({"id": 1, "v": "first"})], "but written");

    // An update is searchable as soon as it is confirmed, too.
    exec(&sql, "UPDATE live SET v = 'second' WHERE id = 1").await;
    let lines = wc.wait_lines(3, WAIT).await;
    let target = commit_lsn(&lines[2]);
    let confirmed = db.wait_confirmed_at_least(target, WAIT).await;
    assert!(confirmed >= target, "the slot did not confirm the update: {confirmed}");
    assert_eq!(search_now(&es, &live).await, vec![json!({"id": 1, "v": "second"})]);

    wc.stop().await;
    db.drop().await;
    es.delete_index(&live).await;
    es.delete_index(&lazy).await;
}
