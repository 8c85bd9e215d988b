//! Sharding by publication (docs/scaling.md): two walcast processes on one database, each with
//! its own slot, publication and JSON-lines file, the tables disjoint, under a concurrent
//! workload on every table. Then table `b` moves from shard 1 to shard 2 by the documented
//! procedure, under load. Every table's final state rebuilt from the union of the two files
//! equals Postgres; every change is in exactly one shard's file (identity: table + `change_id`,
//! since `seq` counts what each shard's publication lets through; no duplicate at all here),
//! `b`'s changes after the move in shard 2's only; every inserted id was streamed. `walcast
//! check` refuses two shards sharing a table. The Kubernetes example (deploy/k8s-shards) renders
//! with `kubectl kustomize` into shards of their own, their configs valid and disjoint.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::es::{es_section, es_url, index_name, Es};
use crate::support::*;

const TABLES: [&str; 3] = ["a", "b", "c"];

fn workload(rng: &mut fastrand::Rng) -> String {
    // Inserts with fresh ids (a sequence per table), updates and deletes of earlier rows.
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.usize(1..4) {
        let t = TABLES[rng.usize(0..3)];
        let id = rng.i32(1..400);
        sql.push_str(&match rng.u8(0..10) {
            0..=5 => format!("INSERT INTO {t} (v) VALUES ({});", rng.i32(0..1000)),
            6..=8 => format!("UPDATE {t} SET v = v + 1 WHERE id = {id};"),
            _ => format!("DELETE FROM {t} WHERE id = {id};"),
        });
    }
    sql.push_str("COMMIT;");
    sql
}

/// The Elasticsearch index of table `t` (both shards write to the same cluster and indexes).
fn es_index(t: &str) -> String {
    index_name(&format!("shards-{t}"))
}

/// A shard: walcast with its own slot, publication and tables (`source.tables`), writing to
/// JSON lines and to Elasticsearch with flat rules for `routed` (sink rules may name a table the
/// shard does not stream yet: docs/scaling.md, moving a table, step 1).
fn shard(db: &TestDb, n: u8, tables: &[&str], routed: &[&str]) -> Walcast {
    let w = Walcast::with_options(db, &shard_options(tables, routed));
    write_shard_config(db, &w, n, tables, routed);
    w
}

fn shard_options(tables: &[&str], routed: &[&str]) -> Options {
    let list = tables.iter().map(|t| format!("\"public.{t}\"")).collect::<Vec<_>>().join(", ");
    let rules: String =
        routed.iter().map(|t| format!("[[sinks.elasticsearch.tables]]\ntable = \"public.{t}\"\nindex = \"{}\"\n\n", es_index(t))).collect();
    Options { source: format!("tables = [{list}]\ncreate_publication = false"), extra: es_section(&es_url(), &format!("\n{rules}")) }
}

fn write_shard_config(db: &TestDb, w: &Walcast, n: u8, tables: &[&str], routed: &[&str]) {
    let (slot, publication) = (format!("{}_s{n}", db.slot), format!("{}_s{n}", db.publication));
    let config = config_toml(&db.url, &slot, &publication, &w.out_path, &shard_options(tables, routed));
    std::fs::write(&w.config_path, config).expect("config");
}

/// The de-duplication identity across shards: `change_id` counts `seq` over the changes a
/// shard's publication lets through, so a transaction touching two shards' tables has the same
/// `change_id` in both; with the table it is unique.
fn identity(l: &Value) -> (String, String) {
    (table_of(l), change_id(l))
}

/// Table -> id -> row, replaying the events of both files in commit order (insert / update /
/// read set the row, delete removes it), after removing duplicates by `change_id`.
fn replay(lines: &[Value]) -> BTreeMap<String, BTreeMap<i64, Value>> {
    let mut seen = HashSet::new();
    let mut events: Vec<&Value> = lines.iter().filter(|l| seen.insert(identity(l))).collect();
    events.sort_by_key(|l| (commit_lsn(l), l["seq"].as_u64().unwrap_or(0)));
    let mut out: BTreeMap<String, BTreeMap<i64, Value>> = BTreeMap::new();
    for e in events {
        let rows = out.entry(e["table"].as_str().unwrap_or("?").to_string()).or_default();
        match e["op"].as_str() {
            Some("insert" | "update" | "read") => {
                rows.insert(e["after"]["id"].as_i64().expect("id"), e["after"].clone());
            }
            Some("delete") => {
                rows.remove(&e["key"]["id"].as_i64().expect("key id"));
            }
            other => panic!("unexpected op {other:?}: {e}"),
        }
    }
    out
}

async fn pg_rows(sql: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, Value> {
    sql.query(&format!("SELECT id, v FROM {table}"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), json!({"id": r.get::<_, i32>(0), "v": r.get::<_, i32>(1)})))
        .collect()
}

async fn wait_confirmed(db: &TestDb, slot: &str, target: walcast::lsn::Lsn) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let at = db.slot_state(slot).await.and_then(|s| s.confirmed_flush_lsn);
        if at.is_some_and(|at| at >= target) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "slot {slot} did not confirm {target} (at {at:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_and_a_table_moved_under_load() {
    let db = TestDb::create("shards").await;
    let sql = db.client().await;
    for t in TABLES {
        exec(&sql, &format!("CREATE TABLE {t} (id serial PRIMARY KEY, v int NOT NULL)")).await;
    }
    let (p1, p2) = (format!("{}_s1", db.publication), format!("{}_s2", db.publication));
    exec(&sql, &format!("CREATE PUBLICATION {p1} FOR TABLE a, b; CREATE PUBLICATION {p2} FOR TABLE c")).await;
    let (s1, s2) = (format!("{}_s1", db.slot), format!("{}_s2", db.slot));
    db.create_named_slot(&s1).await;
    db.create_named_slot(&s2).await;

    let es = Es::new(&es_url());
    es.drop_leftovers().await;
    for t in TABLES {
        es.delete_index(&es_index(t)).await;
    }
    let mut one = shard(&db, 1, &["a", "b"], &["a", "b"]);
    // Shard 2 routes b already (step 1 of the move, done at its first start here).
    let mut two = shard(&db, 2, &["c"], &["b", "c"]);
    one.start();
    two.start();
    let load = chaos::Workload::start(&db, crash_seed("shards"), workload).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // `walcast check` refuses an overlap with a streaming shard: a third config on p2's slot
    // name pattern with a publication that shares `c`.
    let overlap = format!("{}_s3", db.publication);
    exec(&sql, &format!("CREATE PUBLICATION {overlap} FOR TABLE c")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("overlap.toml");
    std::fs::write(
        &cfg,
        config_toml(&db.url, &format!("{}_s3", db.slot), &overlap, &dir.path().join("o.jsonl"), &shard_options(&["c"], &[])),
    )
    .expect("config");
    let out = walcast_cmd(&["check", "--config", &cfg.to_string_lossy()]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("another walcast shard streams tables of this one") && out.stdout.contains("public.c"), "{out}");
    assert!(out.stdout.contains(&format!("slot {s2:?}")), "{out}");
    // Shard 1's own check passes: its tables are disjoint from shard 2's.
    let out = walcast_cmd(&["check", "--config", &one.config_path.to_string_lossy()]).await;
    assert!(out.stdout.contains("no other walcast shard streams these tables"), "{out}");
    assert!(!out.stdout.contains("another walcast shard"), "{out}");

    // Move b from shard 1 to shard 2 (docs/scaling.md "Moving a table"), the workload running.
    two.stop().await; // 2. the receiving shard stops (its slot keeps every change)
    let before_move = current_wal_lsn(&sql).await;
    exec(&sql, &format!("BEGIN; ALTER PUBLICATION {p1} DROP TABLE b; ALTER PUBLICATION {p2} ADD TABLE b; COMMIT")).await; // 3.
                                                                                                                          // The move commits at X between these two positions (the workload commits around it).
    let moved_at = current_wal_lsn(&sql).await;
    wait_confirmed(&db, &s1, moved_at).await; // 4. the giving shard has written b's changes up to the move
    write_shard_config(&db, &one, 1, &["a"], &["a"]); // 5. configs follow the publications
    write_shard_config(&db, &two, 2, &["b", "c"], &["b", "c"]);
    one.stop().await;
    one.start();
    two.start(); // the receiving shard streams b from the move on (step 6: same sinks, no snapshot)
    tokio::time::sleep(Duration::from_secs(3)).await;

    let committed = load.stop().await;
    let end = current_wal_lsn(&sql).await;
    wait_confirmed(&db, &s1, end).await;
    wait_confirmed(&db, &s2, end).await;
    one.stop().await;
    two.stop().await;

    let (l1, l2) = (one.lines().to_vec(), two.lines().to_vec());
    let ids1: HashSet<(String, String)> = l1.iter().map(identity).collect();
    let both: Vec<&Value> = l2.iter().filter(|l| ids1.contains(&identity(l))).collect();
    assert!(both.is_empty(), "a change streamed by both shards: {:?}", both.first());
    for l in &l1 {
        let t = table_of(l);
        assert!(t == "public.a" || (t == "public.b" && commit_lsn(l) < moved_at), "shard 1 streamed {t} at {}: {l}", commit_lsn(l));
    }
    for l in &l2 {
        let t = table_of(l);
        assert!(t == "public.c" || (t == "public.b" && commit_lsn(l) > before_move), "shard 2 streamed {t} at {}: {l}", commit_lsn(l));
    }
    // b's changes split at one point X: every one shard 1 streamed commits before every one
    // shard 2 streamed.
    let b_commits = |lines: &[Value]| lines.iter().filter(|l| l["table"] == "b").map(commit_lsn).collect::<Vec<_>>();
    let (last_in_1, first_in_2) = (b_commits(&l1).into_iter().max(), b_commits(&l2).into_iter().min());
    assert!(last_in_1 < first_in_2, "b's changes overlap around the move: shard 1 up to {last_in_1:?}, shard 2 from {first_in_2:?}");
    for lines in [&l1, &l2] {
        transactions(lines); // each file keeps the ordering contract
    }
    let all: Vec<Value> = l1.iter().chain(&l2).cloned().collect();
    let state = replay(&all);
    for t in TABLES {
        let want = pg_rows(&sql, t).await;
        let got = state.get(t).cloned().unwrap_or_default();
        assert_eq!(got, want, "table {t}: the shards' files replayed = Postgres");
        // Elasticsearch, written by both shards (b's documents by shard 1, then by shard 2).
        let docs: BTreeMap<i64, Value> = es.all(&es_index(t)).await.into_iter().map(|(_, d)| (d["id"].as_i64().expect("id"), d)).collect();
        assert_eq!(docs, want, "table {t}: Elasticsearch index = Postgres");
        // Every id ever inserted was streamed once (ids come from the table's sequence).
        let last: i64 = sql.query_one(&format!("SELECT last_value FROM {t}_id_seq"), &[]).await.expect("seq").get(0);
        let inserted: BTreeSet<i64> =
            all.iter().filter(|l| l["table"] == t && l["op"] == "insert").map(|l| l["after"]["id"].as_i64().expect("id")).collect();
        let inserts = all.iter().filter(|l| l["table"] == t && l["op"] == "insert").count();
        assert_eq!(inserts, inserted.len(), "table {t}: an insert streamed twice");
        assert_eq!(inserted, (1..=last).collect::<BTreeSet<i64>>(), "table {t}: every insert streamed");
    }
    let b_after = l2.iter().filter(|l| l["table"] == "b").count();
    assert!(b_after > 0 && l1.iter().any(|l| l["table"] == "b"), "b changed on both sides of the move");
    eprintln!("shards: {committed} transactions, {} + {} lines, b moved at {moved_at}, {b_after} b changes after", l1.len(), l2.len());
    db.drop().await;
    for t in TABLES {
        es.delete_index(&es_index(t)).await;
    }
}

/// deploy/k8s-shards: every shard's walcast.toml loads with this build, has HA on, a slot and a
/// publication named alike (how `walcast check` finds a stopped shard's publication) and tables
/// no other shard has; `kubectl kustomize` renders per shard a ConfigMap, Deployment, PVC,
/// Service and ServiceMonitor of its own, the Deployment mounting its shard's ConfigMap and PVC
/// and the Service and ServiceMonitor selecting only its shard's pods.
#[test]
fn k8s_shards_example_renders_disjoint_shards() {
    let dir = repo_root().join("deploy/k8s-shards");
    let mut shards: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s-shards")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("shard-"))
        .collect();
    shards.sort();
    assert_eq!(shards, ["shard-1", "shard-2"], "the example has two shards");
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut slots = HashSet::new();
    for shard in &shards {
        let path = dir.join(shard).join("walcast.toml");
        let config = walcast::config::Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let source = &config.source;
        assert!(config.ha.enabled, "{shard}: HA per shard");
        assert_eq!(source.slot, source.publication, "{shard}: the publication is named like the slot");
        assert!(slots.insert(source.slot.clone()), "{shard}: slot {} used twice", source.slot);
        assert!(!source.create_publication && source.application_name.starts_with("walcast"), "{shard}");
        for t in &source.tables {
            let prev = owner.insert(format!("{t:?}"), shard.clone());
            assert!(prev.is_none(), "{t:?} is in {shard} and {prev:?}");
        }
    }

    let out = std::process::Command::new("kubectl")
        .args(["kustomize", &dir.to_string_lossy()])
        .output()
        .expect("run kubectl (fix: install kubectl; `kubectl kustomize` needs no cluster)");
    assert!(out.status.success(), "kubectl kustomize deploy/k8s-shards: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    // (kind, metadata.name) -> the document: kustomize prints `kind:` and the metadata's
    // `  name:` at fixed indentation.
    let mut docs: BTreeMap<(String, String), String> = BTreeMap::new();
    for doc in rendered.split("\n---\n") {
        let kind = doc.lines().find_map(|l| l.strip_prefix("kind: ")).expect("kind").to_string();
        let name =
            doc.lines().skip_while(|l| *l != "metadata:").find_map(|l| l.strip_prefix("  name: ")).expect("metadata.name").to_string();
        assert!(docs.insert((kind.clone(), name.clone()), doc.to_string()).is_none(), "{kind} {name} twice");
    }
    assert_eq!(docs.len(), 5 * shards.len(), "{:?}", docs.keys().collect::<Vec<_>>());
    for shard in &shards {
        let name = format!("walcast-{shard}");
        let selects = format!("walcast.io/shard: {shard}");
        for kind in ["ConfigMap", "Deployment", "Service", "ServiceMonitor"] {
            let doc = docs.get(&(kind.to_string(), name.clone())).unwrap_or_else(|| panic!("no {kind} {name}"));
            assert!(doc.contains(&selects), "{kind} {name} is not labelled / selecting {shard}:\n{doc}");
        }
        let pvc = format!("walcast-state-{shard}");
        assert!(docs.contains_key(&("PersistentVolumeClaim".to_string(), pvc.clone())), "no PVC {pvc}");
        let deployment = &docs[&("Deployment".to_string(), name.clone())];
        assert!(deployment.contains(&format!("claimName: {pvc}")), "{name} mounts another PVC:\n{deployment}");
        let mounts =
            deployment.split("configMap:").skip(1).any(|v| v.lines().nth(1).map(str::trim) == Some(format!("name: {name}").as_str()));
        assert!(mounts, "{name} mounts another ConfigMap:\n{deployment}");
        let config = &docs[&("ConfigMap".to_string(), name.clone())];
        assert!(config.contains(&format!("slot = \"walcast_{}\"", shard.replace('-', "_"))), "{name}: not its shard's config");
        let monitor = &docs[&("ServiceMonitor".to_string(), name.clone())];
        let selector = monitor.split("selector:").nth(1).unwrap_or_default();
        assert!(selector.contains(&selects), "ServiceMonitor {name} selects other shards' Services:\n{monitor}");
    }
}
