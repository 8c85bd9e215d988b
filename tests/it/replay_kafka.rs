//! `walcast replay --sink kafka --table T` against the shared broker, beside a running
//! `walcast run` that streams two tables to Kafka and writes the change log: the replay re-sends
//! exactly the records of T after the mark (key and envelope equal to the streamed ones, but the
//! processing time), in the same order, and nothing of the other table.

use std::time::Duration;

use crate::support::kafka::*;
use crate::support::*;
use serde_json::Value;

/// Key and envelope of a record without the processing time (`ts_ms`, `ts_us`, `ts_ns` at the
/// top level: when walcast produced it, not when the row changed).
fn comparable(r: &KRec) -> (Option<Value>, Option<Value>) {
    let value = r.value.clone().map(|mut v| {
        if let Some(o) = v.as_object_mut() {
            for field in ["ts_ms", "ts_us", "ts_ns"] {
                o.remove(field);
            }
        }
        v
    });
    (r.key.clone(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_one_table_into_kafka_resends_exactly_its_range() {
    let bootstrap = bootstrap();
    let db = TestDb::create("replay_kafka").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["a", "b"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let (topic_a, topic_b) = (format!("{prefix}.public.a"), format!("{prefix}.public.b"));
    let extra = kafka_section(&bootstrap, &prefix, "");
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let config = wc.config_path.to_string_lossy().into_owned();
    wc.start();

    // Before the mark: one row in each table.
    exec(&sql, "BEGIN; INSERT INTO a VALUES (0, 'before'); INSERT INTO b VALUES (0, 'before'); COMMIT").await;
    let first = commit_lsn(&wc.wait_lines(2, WAIT).await[1]);
    db.wait_confirmed_at_least(first, WAIT).await;
    let out = walcast_cmd(&["mark", "m", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");

    // After it: transactions on both tables, updates and deletes (a delete is followed by a
    // tombstone).
    for i in 1..=20 {
        exec(&sql, &format!("BEGIN; INSERT INTO a VALUES ({i}, 'a{i}'); INSERT INTO b VALUES ({i}, 'b{i}'); COMMIT")).await;
    }
    exec(&sql, "UPDATE a SET v = v || '!' WHERE id % 3 = 0 AND id > 0").await;
    exec(&sql, "BEGIN; DELETE FROM a WHERE id IN (1, 2); DELETE FROM b WHERE id = 1; UPDATE b SET v = 'x' WHERE id = 5; COMMIT").await;
    // 2 + 40 + 6 + 4 changes.
    let lines = wc.wait_lines(52, WAIT).await;
    let end = commit_lsn(&lines[51]);
    db.wait_confirmed_at_least(end, WAIT).await;

    // What the stream produced: a: 1 + 20 + 6 + 2 deletes (+ 2 tombstones) = 31; b: 1 + 20 + 2 (+ 1) = 24.
    let mut c = Collector::group(&bootstrap, &[&topic_a, &topic_b]);
    c.wait_until("the streamed records", WAIT, |r| {
        r.iter().filter(|r| r.topic == topic_a).count() >= 31 && r.iter().filter(|r| r.topic == topic_b).count() >= 24
    });
    c.poll_for(Duration::from_secs(2));
    let streamed_a: Vec<_> = c.topic(&topic_a).into_iter().map(comparable).collect();
    assert_eq!((streamed_a.len(), c.topic(&topic_b).len()), (31, 24), "the stream wrote each record once");
    // The first record of a (row 0) is before the mark.
    let after_mark: Vec<_> = streamed_a[1..].to_vec();

    let out = walcast_cmd(&["replay", "--from-mark", "m", "--sink", "kafka", "--table", "public.a", "--config", &config]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("replayed 28 changes (50 read)"), "{out}");

    c.wait_until("the replayed records", WAIT, |r| r.iter().filter(|r| r.topic == topic_a).count() >= 31 + 30);
    c.poll_for(Duration::from_secs(3));
    let all_a: Vec<_> = c.topic(&topic_a).into_iter().map(comparable).collect();
    assert_eq!(all_a.len(), 61, "exactly the range is sent again");
    assert_eq!(all_a[31..], after_mark[..], "the replayed records equal the streamed ones after the mark, in order");
    assert_eq!(c.topic(&topic_b).len(), 24, "nothing of the other table is sent again");
    // The JSON-lines file of the running walcast got nothing from the replay.
    assert_eq!(wc.lines().len(), 52);

    wc.stop().await;
    db.drop().await;
}
