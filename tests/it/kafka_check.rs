//! `walcast check` with a Kafka sink (real broker): the Kafka section says whether the brokers
//! answer and whether every topic walcast will write to exists or can be created; a missing
//! topic with create_topics = false fails with the fix; an unreachable broker fails.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::kafka::*;
use crate::support::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn write_config(dir: &tempfile::TempDir, db: &TestDb, kafka: &str) -> PathBuf {
    let opts = Options { extra: kafka.to_string(), ..Options::default() };
    let text = config_toml(&db.url, &db.slot, &db.publication, std::path::Path::new("/dev/null"), &opts);
    let path = dir.path().join("walcast.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn check(path: &std::path::Path) -> CmdOutput {
    walcast_cmd(&["check", "--config", &path.to_string_lossy()]).await
}

fn lines_with<'a>(out: &'a CmdOutput, tag: &str, needle: &str) -> Vec<&'a str> {
    out.stdout.lines().filter(|l| l.split_whitespace().next() == Some(tag) && l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_brokers_and_topics() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_check").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);").await;
    db.create_publication(&["a", "b"]).await;
    let prefix = db.name.clone();
    let (topic_a, topic_b) = (format!("{prefix}.public.a"), format!("{prefix}.public.b"));
    let dir = tempfile::tempdir().expect("tempdir");

    // Topics required to exist, none does.
    let cfg = write_config(&dir, &db, &kafka_section(&bootstrap, &prefix, "create_topics = false\n"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(lines_with(&out, "ok", "kafka: brokers reachable").len(), 1, "{out}");
    for t in [&topic_a, &topic_b] {
        assert_eq!(lines_with(&out, "FAIL", &format!("topic {t} ")).len(), 1, "no FAIL line for {t}:\n{out}");
    }
    assert!(out.stdout.contains(&format!("fix: create topic {topic_a}, or set sinks.kafka.create_topics = true")), "{out}");

    // One of them created: only the other fails.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic_a, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(lines_with(&out, "ok", &format!("kafka: topic {topic_a} exists")).len(), 1, "{out}");
    assert_eq!(lines_with(&out, "FAIL", &format!("topic {topic_b} ")).len(), 1, "{out}");

    // With creation on, a missing topic is fine.
    let cfg = write_config(&dir, &db, &kafka_section(&bootstrap, &prefix, "create_topics = true\n"));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(lines_with(&out, "ok", &format!("topic {topic_b} (table public.b) does not exist yet; it is created")).len(), 1, "{out}");

    // No broker there.
    let cfg = write_config(&dir, &db, &kafka_section("127.0.0.1:1", &prefix, ""));
    let out = check(&cfg).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(lines_with(&out, "FAIL", "kafka: cannot reach the brokers at 127.0.0.1:1").len(), 1, "{out}");
    assert!(out.stdout.contains("fix: check sinks.kafka.bootstrap_servers"), "{out}");

    db.drop().await;
}
