//! The sink against a scripted server (`test_server`): retries, authentication, gzip,
//! splitting a refused request, partial updates of missing documents, shutdown, versioned
//! truncates.

use std::sync::Arc;

use serde_json::{json, Value};

use super::test_server::{self as fake};
use super::*;
use crate::lsn::Lsn;
use crate::route::ChangeOrigin;

fn origin(lsn: u64) -> ChangeOrigin {
    ChangeOrigin { lsn: Lsn(lsn), commit_lsn: Lsn(lsn), table: Arc::from("public.t"), change: None }
}

pub(super) fn act(id: &str, version: u64, op: EsOp) -> EsAction {
    EsAction { index: Arc::from("t"), id: id.into(), version, op, origin: origin(version) }
}

pub(super) fn index(doc: Value) -> EsOp {
    EsOp::Index(serde_json::to_vec(&doc).expect("json"))
}

pub(super) fn update(fields: Value, base: Option<&str>) -> EsOp {
    EsOp::Update { fields: serde_json::to_vec(&fields).expect("json"), base_id: base.map(str::to_string) }
}

fn test_sink(url: &str, extra: &str) -> ElasticsearchSink {
    let cfg: ElasticsearchSinkConfig = toml::from_str(&format!("url = \"{url}\"\n{extra}")).expect("config");
    ElasticsearchSink::open(&cfg, &RetryConfig { initial_ms: 1, max_ms: 5 }, Metrics::new()).expect("sink")
}

fn item(status: u16, kind: &str) -> String {
    if status < 300 {
        format!(r#"{{"index":{{"_index":"t","_id":"x","status":{status},"result":"created"}}}}"#)
    } else {
        format!(r#"{{"index":{{"_index":"t","_id":"x","status":{status},"error":{{"type":"{kind}","reason":"r"}}}}}}"#)
    }
}

fn bulk_ids(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("index").and_then(|a| a.get("_id")).and_then(|i| i.as_str()).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn retries_resend_only_the_failed_items() {
    let answer: fake::Answer = Arc::new(|n, _req| match n {
        0 => (503, r#"{"error":{"type":"unavailable_shards_exception","reason":"not ready"},"status":503}"#.into()),
        1 => (
            200,
            format!(r#"{{"errors":true,"items":[{},{},{}]}}"#, item(201, ""), item(429, "es_rejected_execution_exception"), item(201, "")),
        ),
        2 => (200, format!(r#"{{"errors":true,"items":[{}]}}"#, item(500, "internal"))),
        _ => (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, ""))),
    });
    let (url, seen) = fake::serve(answer).await;
    let mut sink = test_sink(&url, "");
    let actions = (1..=3).map(|i| Ok(act(&i.to_string(), 10, index(json!({"i": i}))))).collect();
    sink.write_actions(actions, &[]).await.expect("written in the end");
    let reqs = seen.lock().expect("lock").clone();
    let ids: Vec<Vec<String>> = reqs.iter().map(|r| bulk_ids(&r.body)).collect();
    assert_eq!(ids, vec![vec!["1", "2", "3"], vec!["1", "2", "3"], vec!["2"], vec!["2"]], "only the failed item is sent again");
    assert!(reqs.iter().all(|r| r.method == "POST" && r.path == "/_bulk"));
    assert_eq!(
        sink.cluster.metrics.sink_requests.get_or_create(&crate::metrics::SinkOutcome { sink: NAME.into(), outcome: "retry" }).get(),
        3
    );
}

#[tokio::test]
async fn authentication_failure_is_fatal_with_a_fix() {
    let answer: fake::Answer = Arc::new(|_, _| {
        (401, r#"{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":401}"#.into())
    });
    let (url, seen) = fake::serve(answer).await;
    let mut sink = test_sink(&url, "");
    let err = sink.write_actions(vec![Ok(act("1", 10, index(json!({}))))], &[]).await.expect_err("fatal");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("HTTP 401") && text.contains("fix: check sinks.elasticsearch.username"), "{text}");
    assert_eq!(seen.lock().expect("lock").len(), 1, "no retry of an authentication failure");
}

#[tokio::test]
async fn gzip_bodies_and_basic_auth() {
    let answer: fake::Answer = Arc::new(|_, _| (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, ""))));
    let (url, seen) = fake::serve(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").expect("password file");
    let mut sink = test_sink(&url, &format!("gzip = true\nusername = \"writer\"\npassword_file = {:?}\n", password.display().to_string()));
    let big = "x".repeat(4_000);
    sink.write_actions(vec![Ok(act("1", 10, index(json!({"big": big}))))], &[]).await.expect("written");
    let req = seen.lock().expect("lock")[0].clone();
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    assert_eq!(req.header("content-type"), Some("application/x-ndjson"));
    use base64::Engine as _;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("writer:s3cret"));
    assert_eq!(req.header("authorization"), Some(expected.as_str()));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&req.body[..]), &mut text).expect("gunzip");
    assert!(req.body.len() < 500, "compressed: {} bytes", req.body.len());
    assert_eq!(bulk_ids(text.as_bytes()), ["1"]);
    assert!(text.contains(&big));
}

#[tokio::test]
async fn a_request_the_server_refuses_is_halved_to_find_the_bad_item() {
    // 413 for any request of more than one item, a mapping error for item 2, success otherwise.
    let answer: fake::Answer = Arc::new(|_, req| {
        let ids = bulk_ids(&req.body);
        if ids.len() > 1 {
            (413, r#"{"error":{"type":"http_error","reason":"too large"}}"#.into())
        } else if ids == ["2"] {
            (200, format!(r#"{{"errors":true,"items":[{}]}}"#, item(400, "mapper_parsing_exception")))
        } else {
            (200, format!(r#"{{"errors":false,"items":[{}]}}"#, item(201, "")))
        }
    });
    let (url, seen) = fake::serve(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dlq = dir.path().join("dlq.jsonl");
    let mut sink = test_sink(&url, &format!("[dead_letter]\npath = {:?}\n", dlq.display().to_string()));
    let actions = (1..=4).map(|i| Ok(act(&i.to_string(), 10, index(json!({"i": i}))))).collect();
    sink.write_actions(actions, &[]).await.expect("done");
    let singles: Vec<Vec<String>> = seen.lock().expect("lock").iter().map(|r| bulk_ids(&r.body)).filter(|i| i.len() == 1).collect();
    assert_eq!(singles, [["1"], ["2"], ["3"], ["4"]]);
    let letters = std::fs::read_to_string(&dlq).expect("dlq");
    assert_eq!(letters.lines().count(), 1);
    assert!(letters.contains("mapper_parsing_exception") && letters.contains("\"id\":\"2\""), "{letters}");
    assert_eq!(sink.cluster.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).get(), 1);
}

#[tokio::test]
async fn partial_update_of_a_missing_document_is_a_dead_letter() {
    // The stored document is not there: the update cannot be completed (its unchanged TOASTed
    // columns are unknown), so it must be set aside with its LSN and the fix, not dropped.
    let answer: fake::Answer = Arc::new(|_, req| {
        if req.path.starts_with("/_mget") {
            (200, r#"{"docs":[{"_index":"t","_id":"7","found":false}]}"#.into())
        } else {
            let items: Vec<String> = bulk_ids(&req.body).iter().map(|_| item(201, "")).collect();
            (200, format!(r#"{{"errors":false,"items":[{}]}}"#, items.join(",")))
        }
    });
    let (url, seen) = fake::serve(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dlq = dir.path().join("dlq.jsonl");
    let mut sink = test_sink(&url, &format!("[dead_letter]\npath = {:?}\n", dlq.display().to_string()));
    sink.write_actions(vec![Ok(act("7", 42, update(json!({"n": 2}), None)))], &[]).await.expect("done");
    assert!(seen.lock().expect("lock").iter().all(|r| !bulk_ids(&r.body).contains(&"7".to_string())), "nothing of id 7 is written");
    let letters = std::fs::read_to_string(&dlq).unwrap_or_default();
    assert_eq!(letters.lines().count(), 1, "one dead letter: {letters}");
    let letter: Value = serde_json::from_str(letters.trim()).expect("json");
    assert_eq!(letter["id"], "7", "{letter}");
    assert_eq!(letter["lsn"], "0/2A", "{letter}");
    assert!(letter["reason"].as_str().is_some_and(|r| r.contains("walcast snapshot") && r.contains("--table")), "{letter}");
    assert_eq!(sink.cluster.metrics.dead_letters.get_or_create(&SinkLabel { sink: NAME.into() }).get(), 1);
}

#[tokio::test]
async fn an_answer_with_fewer_items_than_sent_is_halved_to_find_the_bad_item() {
    // Like noida-db: a body it cannot parse is answered 200 with a single error item. Item 3 is
    // the one it cannot parse.
    let answer: fake::Answer = Arc::new(|_, req| {
        let ids = bulk_ids(&req.body);
        if ids.contains(&"3".to_string()) {
            let error = r#"{"index":{"error":{"type":"parse_exception","reason":"malformed action/metadata line"},"status":400}}"#;
            (200, format!(r#"{{"errors":true,"items":[{error}]}}"#))
        } else {
            let items: Vec<String> = ids.iter().map(|_| item(201, "")).collect();
            (200, format!(r#"{{"errors":false,"items":[{}]}}"#, items.join(",")))
        }
    });
    let (url, seen) = fake::serve(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dlq = dir.path().join("dlq.jsonl");
    let mut sink = test_sink(&url, &format!("[dead_letter]\npath = {:?}\n", dlq.display().to_string()));
    let actions = (1..=4).map(|i| Ok(act(&i.to_string(), 10, index(json!({"i": i}))))).collect();
    sink.write_actions(actions, &[]).await.expect("done");
    let sent: Vec<Vec<String>> = seen.lock().expect("lock").iter().map(|r| bulk_ids(&r.body)).collect();
    assert_eq!(sent, [vec!["1", "2", "3", "4"], vec!["1", "2"], vec!["3", "4"], vec!["3"], vec!["4"]], "split in halves down to item 3");
    let letters = std::fs::read_to_string(&dlq).expect("dlq");
    assert_eq!(letters.lines().count(), 1, "{letters}");
    assert!(letters.contains("parse_exception") && letters.contains("\"id\":\"3\""), "{letters}");
}

#[tokio::test]
async fn a_large_gzip_body_is_compressed_whole() {
    // Above the size compressed on the blocking pool: the body the server gets is the same.
    let answer: fake::Answer = Arc::new(|_, req| {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&req.body[..]), &mut text);
        let items: Vec<String> = bulk_ids(&text).iter().map(|_| item(201, "")).collect();
        (200, format!(r#"{{"errors":false,"items":[{}]}}"#, items.join(",")))
    });
    let (url, seen) = fake::serve(answer).await;
    let mut sink = test_sink(&url, "gzip = true\n");
    let actions = (1..=100).map(|i| Ok(act(&i.to_string(), 10, index(json!({"v": format!("{i}-").repeat(2_000)}))))).collect();
    sink.write_actions(actions, &[]).await.expect("written");
    let reqs = seen.lock().expect("lock").clone();
    assert_eq!(reqs.len(), 1, "one request, answered in full");
    let req = &reqs[0];
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&req.body[..]), &mut text).expect("gunzip");
    assert!(text.len() > 256 * 1024, "{} bytes", text.len());
    assert_eq!(bulk_ids(text.as_bytes()).len(), 100);
}

/// A server that is never ready, and a backoff of an hour: every retry loop of the sink must end
/// at shutdown, not after the delay.
#[tokio::test]
async fn shutdown_ends_every_retry_wait() {
    let answer: fake::Answer =
        Arc::new(|_, _| (503, r#"{"error":{"type":"unavailable_shards_exception","reason":"not ready"},"status":503}"#.into()));
    let (url, _seen) = fake::serve(answer).await;
    let cfg: ElasticsearchSinkConfig = toml::from_str(&format!("url = \"{url}\"\n")).expect("config");
    let hour = RetryConfig { initial_ms: 3_600_000, max_ms: 3_600_000 };
    let batches: [Vec<Routed>; 3] = [
        vec![Ok(act("1", 10, index(json!({}))))],
        vec![Ok(act("1", 10, update(json!({"n": 1}), None)))],
        vec![Ok(EsAction { op: EsOp::DeleteAll, ..act("", 10, EsOp::Delete) })],
    ];
    for (n, routed) in batches.into_iter().enumerate() {
        let shutdown = CancellationToken::new();
        let mut sink = ElasticsearchSink::open(&cfg, &hour, Metrics::new()).expect("sink").with_shutdown(shutdown.clone());
        // Past the index check (no index specs): the first wait is the one of this step.
        let write = tokio::spawn(async move { sink.write_actions(routed, &[]).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        shutdown.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), write).await;
        let err =
            result.unwrap_or_else(|_| panic!("step {n}: the retry wait did not end on shutdown")).expect("task").expect_err("unfinished");
        assert!(err.is_retryable(), "step {n}: an interrupted write is offered again: {err}");
    }
}

#[tokio::test]
async fn shutdown_ends_the_wait_for_an_index() {
    let answer: fake::Answer =
        Arc::new(|_, _| (503, r#"{"error":{"type":"unavailable_shards_exception","reason":"not ready"},"status":503}"#.into()));
    let (url, _seen) = fake::serve(answer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("t.json");
    std::fs::write(&mapping, r#"{"mappings":{}}"#).expect("mapping");
    let cfg: ElasticsearchSinkConfig =
        toml::from_str(&format!("url = \"{url}\"\n[indexes.t]\nmapping_file = {:?}\n", mapping.display().to_string())).expect("config");
    let shutdown = CancellationToken::new();
    let mut sink = ElasticsearchSink::open(&cfg, &RetryConfig { initial_ms: 3_600_000, max_ms: 3_600_000 }, Metrics::new())
        .expect("sink")
        .with_shutdown(shutdown.clone());
    let prepare = tokio::spawn(async move { sink.prepare().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), prepare).await;
    let err = result.expect("the index wait did not end on shutdown").expect("task").expect_err("unfinished");
    assert!(err.is_retryable(), "{err}");
}

/// Each index's `refresh` reaches the server: one `_bulk` request per distinct value in a
/// batch, each carrying only the items of the indexes with that value.
#[tokio::test]
async fn refresh_per_index_splits_the_bulk_request() {
    let answer: fake::Answer = Arc::new(|_, req| {
        let n = bulk_ids(&req.body).len();
        (200, format!(r#"{{"errors":false,"items":[{}]}}"#, vec![item(201, ""); n].join(",")))
    });
    let (url, seen) = fake::serve(answer).await;
    let mut sink = test_sink(&url, "[indexes.live]\nrefresh = \"wait_for\"\n[indexes.tiny]\nrefresh = true\n");
    let to = |index: &str, id: &str| Ok(EsAction { index: Arc::from(index), ..act(id, 10, index_op(id)) });
    fn index_op(id: &str) -> EsOp {
        index(json!({ "id": id }))
    }
    let actions = vec![to("bulk", "b1"), to("live", "l1"), to("tiny", "t1"), to("bulk", "b2"), to("live", "l2")];
    sink.write_actions(actions, &[]).await.expect("written");
    let reqs = seen.lock().expect("lock").clone();
    let sent: Vec<(String, Vec<String>)> = reqs.iter().map(|r| (r.path.clone(), bulk_ids(&r.body))).collect();
    assert_eq!(
        sent,
        vec![
            ("/_bulk".to_string(), vec!["b1".to_string(), "b2".into()]),
            ("/_bulk?refresh=wait_for".to_string(), vec!["l1".to_string(), "l2".into()]),
            ("/_bulk?refresh=true".to_string(), vec!["t1".to_string()]),
        ]
    );
}

/// A truncate at version 10: the listed documents are deleted page by page with version 10; one
/// listed with a higher version is not sent, one answering 409 stays, the scroll is freed.
#[tokio::test]
async fn truncate_deletes_with_its_version_and_keeps_newer_documents() {
    let hits = |docs: &[(&str, u64)], scroll: &str| {
        let hits: Vec<Value> = docs.iter().map(|(id, v)| json!({"_index": "t-1", "_id": id, "_version": v})).collect();
        json!({"_scroll_id": scroll, "hits": {"hits": hits}}).to_string()
    };
    let answer: fake::Answer = Arc::new(move |_, r| {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/t/_refresh") => (200, "{}".into()),
            ("POST", "/t/_search?scroll=2m") => (200, hits(&[("a", 5), ("b", 20)], "s1")),
            ("POST", "/_search/scroll") if body.contains("s1") => (200, hits(&[("c", 10), ("d", 3)], "s2")),
            ("POST", "/_search/scroll") => (200, hits(&[], "s2")),
            ("DELETE", "/_search/scroll") => (200, r#"{"succeeded":true}"#.into()),
            ("POST", "/_bulk") => {
                let items: Vec<String> = body
                    .lines()
                    .map(|l| {
                        if l.contains(r#""_id":"d""#) {
                            r#"{"delete":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"newer"}}}"#.into()
                        } else {
                            r#"{"delete":{"status":200,"result":"deleted"}}"#.into()
                        }
                    })
                    .collect();
                (200, format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(",")))
            }
            _ => (400, r#"{"error":{"type":"unexpected","reason":"not scripted"},"status":400}"#.into()),
        }
    });
    let (url, seen) = fake::serve(answer).await;
    let mut sink = test_sink(&url, "");
    sink.write_actions(vec![Ok(EsAction { op: EsOp::DeleteAll, ..act("", 10, EsOp::Delete) })], &[]).await.expect("truncated");
    let reqs = seen.lock().expect("lock").clone();
    let deletes: Vec<Value> = reqs
        .iter()
        .filter(|r| r.path == "/_bulk")
        .flat_map(|r| String::from_utf8_lossy(&r.body).lines().map(|l| serde_json::from_str::<Value>(l).expect("json")).collect::<Vec<_>>())
        .collect();
    let want: Vec<Value> = ["a", "c", "d"]
        .iter()
        .map(|id| json!({"delete": {"_index": "t-1", "_id": id, "version": 10, "version_type": "external_gte"}}))
        .collect();
    assert_eq!(deletes, want, "b (version 20) was written after the truncate: not sent");
    let last = reqs.last().expect("requests");
    assert!(last.method == "POST" && last.path == "/t/_refresh", "refreshed after the deletes: {reqs:?}");
    assert!(reqs.iter().any(|r| r.method == "DELETE" && r.path == "/_search/scroll"), "the scroll is freed");
}
