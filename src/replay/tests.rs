use super::*;
use crate::changelog::marks::Marks;
use crate::decode::fixtures::{change, relation, text};
use crate::decode::{Change, Op, ReplicaIdentity};

// The policy's exit codes (`policy::EXIT_*`) as numbers: naming that module here would make
// replay and policy use each other (scripts/check-structure).
const EXIT_CONFIG: u8 = 2;
const EXIT_SETUP: u8 = 3;

fn row(table: &str, commit: u64, seq: u64) -> Change {
    let rel = relation("public", table, ReplicaIdentity::Default, &[("id", true, 23)]);
    Change { commit_lsn: Lsn(commit), seq, ..change(rel, Op::Insert, None, Some(crate::decode::Tuple::from_datums([text("1")]))) }
}

fn commits(b: &Batch) -> Vec<(String, u64)> {
    b.changes.iter().map(|c| (c.relation.table.clone(), c.commit_lsn.0)).collect()
}

fn t(name: &str) -> TableName {
    TableName::parse(name).expect("table")
}

#[test]
fn a_batch_inside_the_range_passes_whole() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("b", 0x10, 1), row("a", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    let (b, done) = cut(batch, Lsn(0x100), &[]);
    assert_eq!(commits(&b), [("a".into(), 0x10), ("b".into(), 0x10), ("a".into(), 0x20)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)));
    assert!(!done);
    assert!(b.snapshot.is_none(), "replayed changes are streamed changes, versioned by their commit");
}

#[test]
fn the_range_ends_at_to_and_the_checkpoint_moves_back_with_it() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("a", 0x20, 0), row("a", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, done) = cut(batch, Lsn(0x20), &[]);
    assert_eq!(commits(&b), [("a".into(), 0x10), ("a".into(), 0x20)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)));
    assert!(done);
    // A batch that ends exactly at `to` ends the range too.
    let batch = LogBatch { changes: vec![row("a", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    assert!(cut(batch, Lsn(0x20), &[]).1);
    // Nothing of the batch inside the range: empty, done.
    let batch = LogBatch { changes: vec![row("a", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, done) = cut(batch, Lsn(0x20), &[]);
    assert!(b.changes.is_empty() && b.checkpoint.is_none() && done);
}

#[test]
fn the_table_filter_keeps_the_checkpoint() {
    let batch = LogBatch { changes: vec![row("a", 0x10, 0), row("b", 0x10, 1), row("b", 0x20, 0)], checkpoint: Some(Lsn(0x20)) };
    let (b, done) = cut(batch, Lsn(0x100), &[t("public.a")]);
    assert_eq!(commits(&b), [("a".into(), 0x10)]);
    assert_eq!(b.checkpoint, Some(Lsn(0x20)), "transactions of other tables still ended");
    assert!(!done);
    let batch = LogBatch { changes: vec![row("b", 0x30, 0)], checkpoint: Some(Lsn(0x30)) };
    let (b, _) = cut(batch, Lsn(0x100), &[t("public.a"), t("other.b")]);
    assert!(b.changes.is_empty());
    assert_eq!(b.checkpoint, Some(Lsn(0x30)));
    // A batch in the middle of a transaction has no checkpoint, filtered or not.
    let batch = LogBatch { changes: vec![row("a", 0x40, 0)], checkpoint: None };
    assert_eq!(cut(batch, Lsn(0x100), &[t("public.a")]).0.checkpoint, None);
}

/// A config whose JSON lines go to `out`, with its state (log, marks) in `state`.
fn config(state: &std::path::Path, out: &std::path::Path) -> Config {
    let toml = format!(
        "[source]\nhost = \"127.0.0.1\"\ndatabase = \"db\"\nuser = \"u\"\nslot = \"s1\"\npublication = \"p\"\n\n\
         [sinks.jsonl]\npath = {out:?}\n\n[snapshot]\nstate_dir = {state:?}\n\n[changelog]\nsegment_bytes = 4096\n"
    );
    Config::parse(&toml, std::path::Path::new("test.toml")).expect("config")
}

fn request(from: ReplayStart, to: Option<Lsn>, tables: &[&str]) -> ReplayRequest {
    ReplayRequest { from, to, tables: tables.iter().map(|n| t(n)).collect(), sinks: Vec::new(), jsonl_path: None }
}

/// The `(table, commit LSN)` of every JSON line in `path`.
fn lines(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (v["table"].as_str().unwrap_or("?").to_string(), v["commit_lsn"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

#[tokio::test]
async fn a_replay_sends_the_log_range_after_a_mark_through_the_sinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, out) = (tmp.path().join("state"), tmp.path().join("out.jsonl"));
    let config = config(&state, &out);
    // Six transactions of three changes, alternating tables a and b, committed at 0x1000 * k;
    // the log holds every commit after 0x800.
    let mut log = crate::changelog::ChangeLog::open(&log_dir(&config), &config.changelog).expect("log");
    log.set_start(Lsn(0x800));
    for k in 1..=6u64 {
        let table = if k % 2 == 1 { "a" } else { "b" };
        let changes: Vec<Change> = (0..3).map(|seq| row(table, 0x1000 * k, seq)).collect();
        log.append(&changes, Some(Lsn(0x1000 * k))).expect("append");
    }
    let mut marks = Marks::load(&state, "s1").expect("marks");
    marks.set("m", Lsn(0x2000)).expect("mark");
    marks.save().expect("save");

    // After the mark, up to 0/5000, table a only: transactions 0x3000 and 0x5000.
    let s = replay(&config, &request(ReplayStart::Mark("m".into()), Some(Lsn(0x5000)), &["public.a"]), CancellationToken::new())
        .await
        .expect("replay");
    assert_eq!((s.from, s.reached, s.rows, s.interrupted), (Lsn(0x2000), Lsn(0x5000), 6, false));
    let want: Vec<(String, String)> =
        ["0/3000", "0/5000"].iter().flat_map(|l| std::iter::repeat_n(("a".to_string(), l.to_string()), 3)).collect();
    assert_eq!(lines(&out), want);

    // The whole log after 0/800 while the writer still holds it, every table: 18 changes more.
    // (The file exists now: without --jsonl-path the replay would ask Postgres whether
    // `walcast run` appends to it.)
    let mut r = request(ReplayStart::Lsn(Lsn(0x800)), None, &[]);
    r.jsonl_path = Some(out.to_string_lossy().into_owned());
    let s = replay(&config, &r, CancellationToken::new()).await.expect("replay");
    assert_eq!((s.reached, s.rows), (Lsn(0x6000), 18));
    assert_eq!(lines(&out).len(), 6 + 18);

    // Before the log's start: refused, with the way out.
    let e = replay(&config, &request(ReplayStart::Lsn(Lsn(0x10)), None, &[]), CancellationToken::new()).await.expect_err("not in the log");
    assert!(matches!(e, ReplayError::NotInLog { requested: Lsn(0x10), .. }), "{e}");
    assert_eq!(e.action().exit_code(), EXIT_SETUP);
    assert!(e.fix().is_some_and(|f| f.contains("walcast snapshot")), "{e}");
    // An unknown mark: refused, naming the marks there are.
    let e = replay(&config, &request(ReplayStart::Mark("nope".into()), None, &[]), CancellationToken::new()).await.expect_err("no mark");
    assert!(matches!(&e, ReplayError::NoMark { known, .. } if known == &["m".to_string()]), "{e}");
    assert_eq!(e.action().exit_code(), EXIT_SETUP);
    assert!(e.fix().is_some_and(|f| f.contains("walcast snapshot")), "{e}");
    // An unknown sink and a range ending before it starts: command-line mistakes.
    let mut r = request(ReplayStart::Lsn(Lsn(0x800)), None, &[]);
    r.sinks = vec!["kafka".into()];
    let e = replay(&config, &r, CancellationToken::new()).await.expect_err("not configured");
    assert_eq!(e.action().exit_code(), EXIT_CONFIG, "{e}");
    let e = replay(&config, &request(ReplayStart::Lsn(Lsn(0x3000)), Some(Lsn(0x2000)), &[]), CancellationToken::new())
        .await
        .expect_err("--to before --from");
    assert_eq!(e.action().exit_code(), EXIT_CONFIG, "{e}");
    assert_eq!(lines(&out).len(), 24, "a refused replay writes nothing");
    drop(log);
}
