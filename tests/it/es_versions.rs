//! Versions (contract 2): every write carries the commit LSN as an external version, so writing an
//! older change after a newer one never rolls a document back, and the conflict counts as done.
//! The sink is driven directly (its `write_actions` entry point, which flat and document rules
//! both feed) against osmem-server, which keeps delete tombstones like Elasticsearch.

use std::sync::Arc;

use crate::support::es::*;
use serde_json::{json, Value};
use walcast::config::{ElasticsearchSinkConfig, RetryConfig};
use walcast::lsn::Lsn;
use walcast::metrics::Metrics;
use walcast::route::{ChangeOrigin, EsAction, EsOp};
use walcast::sink::ElasticsearchSink;

fn sink(url: &str) -> ElasticsearchSink {
    let cfg: ElasticsearchSinkConfig = toml::from_str(&format!("url = \"{url}\"\n")).expect("config");
    ElasticsearchSink::open(&cfg, &RetryConfig { initial_ms: 50, max_ms: 500 }, Metrics::new()).expect("sink")
}

fn act(index: &str, id: &str, version: u64, op: EsOp) -> Result<EsAction, walcast::route::Rejected> {
    Ok(EsAction {
        index: Arc::from(index),
        id: id.into(),
        version,
        op,
        origin: ChangeOrigin { lsn: Lsn(version), commit_lsn: Lsn(version), table: Arc::from("public.t"), change: None },
    })
}

fn index(doc: Value) -> EsOp {
    EsOp::Index(serde_json::to_vec(&doc).expect("json"))
}

fn update(fields: Value) -> EsOp {
    EsOp::Update { fields: serde_json::to_vec(&fields).expect("json"), base_id: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn older_writes_never_roll_a_document_back() {
    let url = es_url();
    let es = Es::new(&url);
    let idx = index_name("versions");
    es.delete_index(&idx).await;
    let mut s = sink(&url);

    // B2 (newer) first, then B1 (older): the document keeps B2's content; B1 still succeeds.
    s.write_actions(vec![act(&idx, "1", 200, index(json!({"v": "B2"})))], &[]).await.expect("B2");
    s.write_actions(vec![act(&idx, "1", 100, index(json!({"v": "B1"})))], &[]).await.expect("B1 counts as done");
    assert_eq!(es.doc_with_version(&idx, "1").await, Some((json!({"v": "B2"}), 200)));

    // The same batch written twice (a replay after a crash) changes nothing.
    s.write_actions(vec![act(&idx, "1", 200, index(json!({"v": "B2"})))], &[]).await.expect("replay");
    assert_eq!(es.doc_with_version(&idx, "1").await, Some((json!({"v": "B2"}), 200)));

    // An older delete does not remove a newer document; a newer one does, and an older write
    // after it does not bring it back (the tombstone carries the version).
    s.write_actions(vec![act(&idx, "1", 150, EsOp::Delete)], &[]).await.expect("old delete");
    assert_eq!(es.doc_with_version(&idx, "1").await.map(|d| d.1), Some(200));
    s.write_actions(vec![act(&idx, "1", 300, EsOp::Delete)], &[]).await.expect("delete");
    assert_eq!(es.doc(&idx, "1").await, None);
    s.write_actions(vec![act(&idx, "1", 250, index(json!({"v": "between"})))], &[]).await.expect("stale write");
    assert_eq!(es.doc(&idx, "1").await, None, "a write older than the delete must not resurrect the document");
    // Deleting a document that is not there is done too.
    s.write_actions(vec![act(&idx, "nope", 300, EsOp::Delete)], &[]).await.expect("delete missing");

    // Partial updates (unchanged TOASTed columns) are versioned too: an older one is skipped, a
    // newer one is merged into the stored document and written with its version.
    s.write_actions(vec![act(&idx, "2", 200, index(json!({"a": 1, "big": "B"})))], &[]).await.expect("doc 2");
    s.write_actions(vec![act(&idx, "2", 100, update(json!({"a": 0})))], &[]).await.expect("old partial");
    assert_eq!(es.doc_with_version(&idx, "2").await, Some((json!({"a": 1, "big": "B"}), 200)));
    s.write_actions(vec![act(&idx, "2", 300, update(json!({"a": 2})))], &[]).await.expect("new partial");
    assert_eq!(es.doc_with_version(&idx, "2").await, Some((json!({"a": 2, "big": "B"}), 300)));
    // ... and replaying the older full write after it changes nothing.
    s.write_actions(vec![act(&idx, "2", 200, index(json!({"a": 1, "big": "B"})))], &[]).await.expect("replay");
    assert_eq!(es.doc_with_version(&idx, "2").await, Some((json!({"a": 2, "big": "B"}), 300)));

    // A partial update of a document that is not in the index cannot be completed: it goes to
    // the dead-letter destination with the fix (never dropped with only a warning).
    let dir = tempfile::tempdir().expect("tempdir");
    let letters = dir.path().join("dead-letters.jsonl");
    let cfg: ElasticsearchSinkConfig =
        toml::from_str(&format!("url = \"{url}\"\n[dead_letter]\npath = {:?}\n", letters.display().to_string())).expect("config");
    let mut with_letters = ElasticsearchSink::open(&cfg, &RetryConfig { initial_ms: 50, max_ms: 500 }, Metrics::new()).expect("sink");
    with_letters.write_actions(vec![act(&idx, "3", 400, update(json!({"a": 3})))], &[]).await.expect("partial of missing");
    assert_eq!(es.doc(&idx, "3").await, None);
    let written = std::fs::read_to_string(&letters).expect("dead-letter file");
    assert!(written.contains("\"id\":\"3\"") && written.contains("walcast snapshot"), "{written}");

    // Within one batch the last write of each document wins, whatever the order of versions.
    s.write_actions(
        vec![
            act(&idx, "4", 500, index(json!({"n": 1}))),
            act(&idx, "4", 500, update(json!({"n": 2}))),
            act(&idx, "5", 500, index(json!({"n": 1}))),
            act(&idx, "5", 501, EsOp::Delete),
            act(&idx, "5", 502, index(json!({"n": 3}))),
        ],
        &[],
    )
    .await
    .expect("batch");
    assert_eq!(es.doc_with_version(&idx, "4").await, Some((json!({"n": 2}), 500)));
    assert_eq!(es.doc_with_version(&idx, "5").await, Some((json!({"n": 3}), 502)));
    es.delete_index(&idx).await;
}
