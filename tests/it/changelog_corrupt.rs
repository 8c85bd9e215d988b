//! A flipped byte in a middle segment of the change log (4 KiB segments): the next `walcast run`
//! stops with exit code 3 and names the segment and the offset; nothing is skipped silently.

use std::time::Duration;

use crate::changelog_strict::log_dir;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_a_middle_segment_stops_walcast_naming_segment_and_offset() {
    let db = TestDb::create("changelog_corrupt").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &Options { extra: "[changelog]\nsegment_bytes = 4096\n".into(), ..Options::default() });
    wc.start();
    // Rounds, each streamed before the next: a slow walsender start (a loaded server) would
    // otherwise hand all the rows over in one batch, one append, one segment.
    for round in 0..12 {
        for i in round * 10 + 1..=round * 10 + 10 {
            exec(&sql, &format!("INSERT INTO t VALUES ({i}, repeat(md5('{i}'), 3))")).await;
        }
        let last = round * 10 + 10;
        wc.wait_for("the round's last row", WAIT, move |l| l["after"]["id"] == last).await;
    }
    wc.stop().await;

    let dir = log_dir(&wc, &db);
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .expect("log dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != "LOCK")
        .map(|e| e.path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "several segments: {segments:?}");
    let victim = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(victim).expect("read segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(victim, &bytes).expect("write segment");
    let name = victim.file_name().expect("name").to_string_lossy().into_owned();

    exec(&sql, "INSERT INTO t VALUES (1000, 'after the damage')").await;
    wc.start();
    let status = wc.wait_exit(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    let tail = wc.log_tail(20);
    assert_eq!(status.code(), Some(3), "a damaged log is walcast's own state: exit 3\n{tail}");
    let last_start = log.rfind("test harness: start #2").expect("second start");
    let run = &log[last_start..];
    assert!(run.contains(&name), "the error names the segment {name}\n{tail}");
    assert!(run.contains("offset"), "the error names the offset\n{tail}");
    assert!(!wc.lines().iter().any(|l| l["after"]["id"] == 1000), "nothing streamed past a damaged log");
    db.drop().await;
}
