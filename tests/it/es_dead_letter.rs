//! A row the index mapping rejects goes to the dead-letter destination with its reason, is
//! counted in walcast_dead_letters_total{sink="elasticsearch"}, and the stream goes on. Without
//! a dead-letter destination the same happens with a file in `snapshot.state_dir`.

use std::time::Duration;

use crate::support::es::*;
use crate::support::obs::{metric, metrics_addr};
use crate::support::*;
use serde_json::{json, Value};

const ES_WAIT: Duration = Duration::from_secs(30);
const STRICT: &str = r#"{"settings":{"number_of_shards":1},"mappings":{"dynamic":"strict","properties":{"id":{"type":"integer"},"n":{"type":"integer"},"note":{"type":"keyword"}}}}"#;

struct Setup {
    db: TestDb,
    wc: Walcast,
    index: String,
    _dir: tempfile::TempDir,
}

async fn setup(test: &str, dead_letter: &str) -> Setup {
    let es = Es::new(&es_url());
    let index = index_name(test);
    es.delete_index(&index).await;
    let db = TestDb::create(test).await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY, n text, note text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("strict.json");
    std::fs::write(&mapping, STRICT).expect("mapping");
    let extra = es_section(
        &es_url(),
        &format!(
            "[sinks.elasticsearch.indexes.{index:?}]\nmapping_file = {:?}\n{dead_letter}\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n",
            mapping.display().to_string()
        ),
    );
    let wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    Setup { db, wc, index, _dir: dir }
}

/// Checks shared by both destinations; returns the dead letter's fields.
async fn rejected_row_is_set_aside(s: &mut Setup, read_letters: impl AsyncFn() -> Vec<Value>) -> Value {
    let es = Es::new(&es_url());
    s.wc.start();
    let sql = s.db.client().await;
    exec(&sql, "INSERT INTO t VALUES (1, '42', 'good')").await;
    exec(&sql, "INSERT INTO t VALUES (2, 'not a number', 'bad')").await;
    exec(&sql, "INSERT INTO t VALUES (3, '7', 'after')").await;
    let lines = s.wc.wait_lines(3, WAIT).await;

    // The stream goes on: the row after the rejected one arrives, the slot moves past both.
    es.wait_doc(&s.index, "3", ES_WAIT, |d| d.is_some()).await;
    assert_eq!(
        es.doc(&s.index, "1").await,
        Some(json!({"id": 1, "n": "42", "note": "good"})),
        "accepted (coerced to the integer mapping; _source keeps the text)"
    );
    assert_eq!(es.doc(&s.index, "2").await, None);
    let last = commit_lsn(&lines[2]);
    let confirmed = s.db.wait_confirmed_at_least(last, Duration::from_secs(20)).await;
    assert!(confirmed >= last, "the slot must move past the rejected row: confirmed {confirmed}, last commit {last}");

    // Counted.
    let addr = metrics_addr(&mut s.wc, Duration::from_secs(10)).await;
    assert_eq!(metric(&addr, "walcast_dead_letters_total{sink=\"elasticsearch\"}"), 1.0);

    let letters = read_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = letters[0].clone();
    assert_eq!(l["table"], "public.t");
    assert_eq!(l["key"], json!({"id": 2}));
    assert_eq!(l["index"], s.index.as_str());
    assert_eq!(l["id"], "2");
    assert_eq!(l["lsn"], lines[1]["lsn"]);
    assert_eq!(l["commit_lsn"], lines[1]["commit_lsn"]);
    let reason = l["reason"].as_str().expect("reason");
    assert!(reason.contains("failed to parse field [n]"), "{reason}");
    let doc: Value = serde_json::from_str(l["document"].as_str().expect("document as a string")).expect("document JSON");
    assert_eq!(doc, json!({"id": 2, "n": "not a number", "note": "bad"}));
    let log = std::fs::read_to_string(&s.wc.log_path).expect("log");
    assert!(log.contains("document rejected, set aside as a dead letter"), "{}", s.wc.log_tail(30));
    l
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_row_goes_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dead.jsonl");
    let mut s = setup("es_dlq_file", &format!("[sinks.elasticsearch.dead_letter]\npath = {:?}\n", path.display().to_string())).await;
    let read = async || dead_letter_lines(&path);
    rejected_row_is_set_aside(&mut s, read).await;
    s.wc.stop().await;
    s.db.drop().await;
    Es::new(&es_url()).delete_index(&s.index).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_row_goes_to_the_dead_letter_index() {
    let es = Es::new(&es_url());
    let dlq = index_name("dlq");
    es.delete_index(&dlq).await;
    let mut s = setup("es_dlq_index", &format!("[sinks.elasticsearch.dead_letter]\nindex = \"{dlq}\"\n")).await;
    let read = async || es.all(&dlq).await.into_iter().map(|(_, d)| d).collect::<Vec<_>>();
    rejected_row_is_set_aside(&mut s, read).await;
    s.wc.stop().await;
    s.db.drop().await;
    es.delete_index(&s.index).await;
    es.delete_index(&dlq).await;
}

/// Without `[sinks.elasticsearch.dead_letter]` a rejected row must not stop the stream for good
/// (every restart met it again at the same LSN): it goes to `dead-letters-elasticsearch.jsonl`
/// in `snapshot.state_dir`, and `walcast status` says where and how many.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_row_without_dead_letter_destination_goes_to_the_state_dir() {
    let mut s = setup("es_dlq_none", "").await;
    let path = s.wc.dir.as_ref().expect("dir").path().join("state").join("dead-letters-elasticsearch.jsonl");
    let read = async || dead_letter_lines(&path);
    rejected_row_is_set_aside(&mut s, read).await;
    // The warning names where it went.
    let log = std::fs::read_to_string(&s.wc.log_path).expect("log");
    let warning = log.lines().find(|l| l.contains("set aside as a dead letter")).expect("warning");
    assert!(warning.contains(&path.display().to_string()), "{warning}");

    // `walcast status` (and `slot status`): where the dead letters are and how many.
    let config = s.wc.config_path.to_string_lossy().into_owned();
    let out = walcast_cmd(&["status", "--config", &config, "--json"]).await;
    assert_eq!(out.code, Some(0), "{out}");
    let status: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        status["dead_letters"],
        json!([{"sink": "elasticsearch", "path": path.display().to_string(), "count": 1, "error": null}]),
        "{out}"
    );
    let out = walcast_cmd(&["slot", "status", "--config", &config]).await;
    assert!(out.stdout.contains(&format!("dead letters (elasticsearch) 1 in {}", path.display())), "{out}");
    s.wc.stop().await;
    s.db.drop().await;
    Es::new(&es_url()).delete_index(&s.index).await;
}

/// The dead-letter file's records (none while it does not exist).
fn dead_letter_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("dead letter line is JSON"))
        .collect()
}
