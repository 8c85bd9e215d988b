//! Flat mapping rules end to end: the real walcast binary streams a test database into the
//! Elasticsearch-API servers of scripts/test-env (osmem-server; the basic case also on noida-db).
//! Every read is preceded by `_refresh`.

use std::time::Duration;

use crate::support::es::*;
use crate::support::*;
use serde_json::json;

const ES_WAIT: Duration = Duration::from_secs(30);

/// insert / update / key change / delete on a mapped table; include, exclude, rename; ops
/// without delete; composite ids; an unmapped table writes nothing; the index is created from
/// its mapping file.
async fn flat_mapping(url: &str, test: &str) {
    let es = Es::new(url);
    es.drop_leftovers().await;
    let (orders, items) = (index_name(&format!("{test}-orders")), index_name(&format!("{test}-items")));
    es.delete_index(&orders).await;
    es.delete_index(&items).await;

    let db = TestDb::create(test).await;
    let sql = db.client().await;
    exec(
        &sql,
        "CREATE TABLE orders (id int PRIMARY KEY, region text, note text, secret text, n int);
         CREATE TABLE items (a int, b text, qty int, extra text, PRIMARY KEY (a, b));
         CREATE TABLE other (id int PRIMARY KEY, v text);",
    )
    .await;
    db.create_publication(&["orders", "items", "other"]).await;
    db.create_slot().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("orders.json");
    std::fs::write(
        &mapping,
        r#"{"settings":{"number_of_shards":1},"mappings":{"properties":{"region":{"type":"keyword"},"count":{"type":"integer"}}}}"#,
    )
    .expect("mapping file");
    let extra = es_section(
        url,
        &format!(
            "[sinks.elasticsearch.indexes.{orders:?}]\nmapping_file = {mapping:?}\n\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.orders\"\nindex = \"{orders}\"\nexclude = [\"secret\"]\nrename = {{ n = \"count\" }}\n\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.items\"\nindex = \"{items}\"\ninclude = [\"a\", \"b\", \"qty\"]\nops = [\"insert\", \"update\"]\n",
            mapping = mapping.display().to_string()
        ),
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    exec(&sql, "INSERT INTO orders VALUES (1, 'eu', 'first', 'pw1', 5), (2, 'us', 'second', 'pw2', 6), (3, 'eu', 'third', 'pw3', 7)").await;
    exec(&sql, "INSERT INTO items VALUES (1, 'x', 10, 'no'), (2, 'y\"z', 20, 'no')").await;
    exec(&sql, "INSERT INTO other VALUES (1, 'not mapped')").await;
    exec(&sql, "UPDATE orders SET note = 'changed', n = 50 WHERE id = 1").await;
    exec(&sql, "UPDATE orders SET id = 20 WHERE id = 2").await;
    exec(&sql, "DELETE FROM orders WHERE id = 3").await;
    exec(&sql, "DELETE FROM items WHERE a = 1").await;
    exec(&sql, "UPDATE items SET qty = 21 WHERE a = 2").await;
    // The JSON-lines sink sees everything; the last change marks the end.
    let lines = wc.wait_lines(11, WAIT).await;
    let last_commit = commit_lsn(&lines[10]);

    es.wait_doc(&items, r#"[2,"y\"z"]"#, ES_WAIT, |d| d.is_some_and(|d| d["qty"] == json!(21))).await;
    let got = es.all(&orders).await;
    assert_eq!(
        got,
        vec![
            ("1".to_string(), json!({"id": 1, "region": "eu", "note": "changed", "count": 50})),
            ("20".to_string(), json!({"id": 20, "region": "us", "note": "second", "count": 6})),
        ],
        "orders: update applied, key change moved the document, delete removed it, secret excluded, n renamed"
    );
    let got = es.all(&items).await;
    assert_eq!(
        got,
        vec![
            (r#"[1,"x"]"#.to_string(), json!({"a": 1, "b": "x", "qty": 10})),
            (r#"[2,"y\"z"]"#.to_string(), json!({"a": 2, "b": "y\"z", "qty": 21})),
        ],
        "items: composite ids as JSON arrays, only included columns, deletes not applied (ops)"
    );
    // The version of a document is the commit LSN of its last change.
    let (_, version) = es.doc_with_version(&items, r#"[2,"y\"z"]"#).await.expect("doc");
    assert_eq!(version, last_commit.0, "external version = commit LSN");
    // The index was created from the mapping file.
    let m = es.mapping(&orders).await;
    assert_eq!(m["properties"]["region"]["type"], "keyword", "{m}");
    // Nothing for the unmapped table: the two indexes hold exactly the documents above, and no
    // dead letters or errors were logged.
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter") && !log.contains("ERROR"), "{}", wc.log_tail(40));

    wc.stop().await;
    db.drop().await;
    es.delete_index(&orders).await;
    es.delete_index(&items).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flat_mapping_osmem() {
    flat_mapping(&es_url(), "es_flat_osmem").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flat_mapping_noida() {
    flat_mapping(&noida_url(), "es_flat_noida").await;
}

/// TRUNCATE: `delete_all` empties the index in stream order (a row inserted after the truncate
/// in the same transaction stays); the default `ignore` keeps the documents and logs a warning.
#[tokio::test(flavor = "multi_thread")]
async fn truncate_delete_all_and_ignore() {
    let es = Es::new(&es_url());
    let (gone, kept) = (index_name("trunc-all"), index_name("trunc-keep"));
    es.delete_index(&gone).await;
    es.delete_index(&kept).await;
    let db = TestDb::create("es_truncate").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);").await;
    db.create_publication(&["a", "b"]).await;
    db.create_slot().await;
    let extra = es_section(
        &es_url(),
        &format!(
            "[[sinks.elasticsearch.tables]]\ntable = \"public.a\"\nindex = \"{gone}\"\ntruncate = \"delete_all\"\n\n\
             [[sinks.elasticsearch.tables]]\ntable = \"public.b\"\nindex = \"{kept}\"\n"
        ),
    );
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    exec(&sql, "INSERT INTO a SELECT generate_series(1, 5); INSERT INTO b SELECT generate_series(1, 5);").await;
    exec(&sql, "BEGIN; INSERT INTO a VALUES (6); TRUNCATE a, b; INSERT INTO a VALUES (9); INSERT INTO b VALUES (9); COMMIT;").await;
    wc.wait_for("the last insert", WAIT, |l| l["table"] == "b" && l["after"]["id"] == 9).await;
    es.wait_doc(&kept, "9", ES_WAIT, |d| d.is_some()).await;
    let ids = |docs: Vec<(String, serde_json::Value)>| docs.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(es.all(&gone).await), ["9"], "delete_all removed everything written before the truncate, nothing after it");
    assert_eq!(ids(es.all(&kept).await), ["1", "2", "3", "4", "5", "9"], "ignore keeps the documents");
    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(log.contains("truncate ignored"), "{}", wc.log_tail(40));
    assert!(log.contains("truncate: deleted every document of the index"), "{}", wc.log_tail(40));
    wc.stop().await;
    db.drop().await;
    es.delete_index(&gone).await;
    es.delete_index(&kept).await;
}

/// A TOASTed column on a table with REPLICA IDENTITY DEFAULT: updating another column (so the
/// large value is not sent) keeps the large value in the document; so do two such updates in
/// one transaction, and a primary-key change; an update of the large value replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn toast_value_survives_partial_updates() {
    let es = Es::new(&es_url());
    let index = index_name("toast");
    es.delete_index(&index).await;
    let db = TestDb::create("es_toast").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE docs (id int PRIMARY KEY, big text, small int)").await;
    assert_eq!(query_text(&sql, "SELECT relreplident::text FROM pg_class WHERE relname = 'docs'").await.as_deref(), Some("d"));
    db.create_publication(&["docs"]).await;
    db.create_slot().await;
    // gzip: the 20 kB documents go compressed.
    let extra =
        es_section(&es_url(), &format!("gzip = true\n\n[[sinks.elasticsearch.tables]]\ntable = \"public.docs\"\nindex = \"{index}\"\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();

    // 20 kB of chained md5 hex: pglz cannot bring it under the TOAST threshold.
    exec(&sql, "INSERT INTO docs VALUES (1, (SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 640) g), 1)")
        .await;
    let big = query_text(&sql, "SELECT big FROM docs WHERE id = 1").await.expect("big");
    let toast_bytes = query_text(&sql, "SELECT pg_relation_size(reltoastrelid)::text FROM pg_class WHERE relname = 'docs'").await;
    assert!(toast_bytes.as_deref().is_some_and(|b| b != "0"), "the value was not TOASTed");
    es.wait_doc(&index, "1", ES_WAIT, |d| d.is_some()).await;

    // 1. Another column only: the change carries no `big` (checked on the JSON-lines output).
    exec(&sql, "UPDATE docs SET small = 2 WHERE id = 1").await;
    let lines = wc.wait_lines(2, WAIT).await;
    assert_eq!(lines[1]["unchanged"], json!(["big"]), "precondition: the update did not carry the TOASTed value");
    let d = es.wait_doc(&index, "1", ES_WAIT, |d| d.is_some_and(|d| d["small"] == json!(2))).await.expect("doc");
    assert_eq!(d["big"].as_str(), Some(big.as_str()), "the large value is kept");

    // 2. Two partial updates in one transaction.
    exec(&sql, "BEGIN; UPDATE docs SET small = 3 WHERE id = 1; UPDATE docs SET small = 4 WHERE id = 1; COMMIT;").await;
    let d = es.wait_doc(&index, "1", ES_WAIT, |d| d.is_some_and(|d| d["small"] == json!(4))).await.expect("doc");
    assert_eq!(d["big"].as_str(), Some(big.as_str()));
    let lines = wc.wait_lines(4, WAIT).await;
    let (_, version) = es.doc_with_version(&index, "1").await.expect("doc");
    assert_eq!(version, commit_lsn(&lines[3]).0, "a completed partial update is written with the commit LSN as version");

    // 3. A key change that leaves the large value alone: the document moves with it.
    exec(&sql, "UPDATE docs SET id = 10, small = 5 WHERE id = 1").await;
    let d = es.wait_doc(&index, "10", ES_WAIT, |d| d.is_some()).await.expect("doc");
    assert_eq!(d["big"].as_str(), Some(big.as_str()));
    assert_eq!(d["small"], json!(5));
    assert!(es.doc(&index, "1").await.is_none(), "the old id is deleted");

    // 4. Updating the large value itself replaces it; then a partial update after it.
    exec(&sql, "BEGIN; UPDATE docs SET big = big || 'x' WHERE id = 10; UPDATE docs SET small = 6 WHERE id = 10; COMMIT;").await;
    let d = es.wait_doc(&index, "10", ES_WAIT, |d| d.is_some_and(|d| d["small"] == json!(6))).await.expect("doc");
    assert_eq!(d["big"].as_str().map(str::len), Some(big.len() + 1));
    assert_eq!(es.all(&index).await.len(), 1);

    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}

/// `walcast check` has an Elasticsearch section: the server answers, and each index exists or
/// can be created (from its mapping file, or by the server's automatic creation).
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_cluster_and_indexes() {
    let es = Es::new(&es_url());
    let (with_file, without, existing) = (index_name("chk-file"), index_name("chk-auto"), index_name("chk-have"));
    for i in [&with_file, &without, &existing] {
        es.delete_index(i).await;
    }
    es.create_index(&existing, json!({"mappings": {"properties": {"n": {"type": "keyword"}}}})).await;
    let db = TestDb::create("es_check").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY, n int)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mapping = dir.path().join("m.json");
    std::fs::write(&mapping, r#"{"mappings":{"properties":{"n":{"type":"integer"}}}}"#).expect("write");
    let rule = |index: &str| format!("[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"{index}\"\n");
    let m = mapping.display().to_string();
    let extra = es_section(
        &es_url(),
        &format!(
            "[sinks.elasticsearch.indexes.{with_file:?}]\nmapping_file = {m:?}\n[sinks.elasticsearch.indexes.{existing:?}]\nmapping_file = {m:?}\n{}{}{}",
            rule(&with_file),
            rule(&without),
            rule(&existing)
        ),
    );
    let wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    let out = walcast_cmd(&["check", "--config", &wc.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("elasticsearch: http://127.0.0.1:") && out.stdout.contains("reachable (OpenSearch 3.8.0)"), "{out}");
    assert!(out.stdout.contains(&format!("index {with_file} does not exist yet; walcast creates it from {m}")), "{out}");
    assert!(out.stdout.contains(&format!("warn  elasticsearch: index {without} does not exist and has no mapping_file")), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "warn  elasticsearch: index {existing} exists but its mapping differs from {m}: mappings.properties.n.type"
        )),
        "{out}"
    );

    // Unreachable cluster: a failure with the fix.
    let bad = Walcast::with_options(
        &db,
        &Options { extra: es_section(&format!("http://127.0.0.1:{}", free_port()), &rule(&with_file)), ..Options::default() },
    );
    let out = walcast_cmd(&["check", "--config", &bad.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("FAIL  elasticsearch: cannot reach"), "{out}");
    assert!(out.stdout.contains("fix: check sinks.elasticsearch.url"), "{out}");
    db.drop().await;
    for i in [&with_file, &without, &existing] {
        es.delete_index(i).await;
    }
}

/// Rows that exist when walcast creates the slot reach a flat index through the snapshot, with
/// version = the slot's consistent point; a change streamed afterwards has a higher version and
/// replaces the snapshot's document.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_loads_existing_rows_into_a_flat_index() {
    let url = es_url();
    let es = Es::new(&url);
    let index = index_name("snapflat");
    es.delete_index(&index).await;
    let db = TestDb::create("es_snapflat").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 2500) g")
        .await;
    db.create_publication(&["items"]).await;
    let extra = es_section(&url, &format!("[[sinks.elasticsearch.tables]]\ntable = \"public.items\"\nindex = \"{index}\"\n"));
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start(); // no slot yet: walcast creates it and loads the table first
    let lines = wc.wait_lines(2500, WAIT).await;
    assert!(lines.iter().all(|l| l["op"] == "read"));
    let point = commit_lsn(&lines[0]);
    es.wait_doc(&index, "2500", ES_WAIT, |d| d.is_some()).await;
    let (doc, version) = es.doc_with_version(&index, "1").await.expect("document 1");
    assert_eq!(doc, json!({"id": 1, "v": "v1"}));
    assert_eq!(version, point.0, "snapshot writes carry the consistent point as version");
    assert_eq!(es.all(&index).await.len(), 2500);
    exec(&sql, "UPDATE items SET v = 'streamed' WHERE id = 1").await;
    let doc = es.wait_doc(&index, "1", ES_WAIT, |d| d.is_some_and(|d| d["v"] == "streamed")).await;
    assert!(doc.is_some());
    let (_, version) = es.doc_with_version(&index, "1").await.expect("document 1");
    assert!(version > point.0, "the streamed change has a higher version");
    wc.stop().await;
    db.drop().await;
    es.delete_index(&index).await;
}
