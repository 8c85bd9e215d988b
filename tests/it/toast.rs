//! Unchanged TOASTed values (REPLICA IDENTITY DEFAULT): an update that leaves a large,
//! out-of-line value alone does not carry it; walcast lists the column in `unchanged` and leaves
//! it out of `after` (never null). An update of the large column carries it again.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_toast_is_listed_not_nulled() {
    let db = TestDb::create("toast").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE docs (id int PRIMARY KEY, big text, small int)").await;
    db.create_publication(&["docs"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    // 20 kB of chained md5 hex: random enough that pglz cannot bring it under the TOAST threshold.
    exec(
        &sql,
        "INSERT INTO docs VALUES
           (1, (SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 640) g), 1),
           (2, 'short', 1)",
    )
    .await;
    let big = query_text(&sql, "SELECT big FROM docs WHERE id = 1").await.expect("big");
    assert_eq!(big.len(), 20_480);
    // Precondition: the value really lives out of line, in the TOAST table.
    let toast_bytes = query_text(&sql, "SELECT pg_relation_size(reltoastrelid)::text FROM pg_class WHERE relname = 'docs'").await;
    assert!(toast_bytes.as_deref().is_some_and(|b| b != "0"), "the test value was not TOASTed ({toast_bytes:?})");

    exec(&sql, "UPDATE docs SET small = 2 WHERE id = 1").await;
    exec(&sql, "UPDATE docs SET small = 2 WHERE id = 2").await;
    exec(&sql, "UPDATE docs SET big = big || 'x', small = 3 WHERE id = 1").await;
    exec(&sql, "DELETE FROM docs WHERE id = 1").await;

    let lines = wc.wait_lines(6, WAIT).await;
    transactions(&lines);

    // The inserts carry the whole value.
    assert_eq!(lines[0]["after"]["big"].as_str(), Some(big.as_str()), "insert carries the big value");
    assert_eq!(lines[0]["unchanged"], json!([]));
    assert_eq!(lines[1]["after"], json!({"id": 2, "big": "short", "small": 1}));

    // Update of the small column only: big is unchanged, listed, and absent from `after`.
    let u = &lines[2];
    assert_eq!(u["op"], "update", "{u}");
    assert_eq!(u["key"], json!({"id": 1}));
    assert_eq!(u["unchanged"], json!(["big"]), "{u}");
    assert!(u["after"].get("big").is_none(), "an unchanged TOAST value must be left out of `after`, not nulled: {u}");
    assert_eq!(u["after"], json!({"id": 1, "small": 2}), "{u}");
    assert_eq!(u["before"], json!(null), "{u}");

    // The same update of a row whose value is inline carries everything.
    assert_eq!(lines[3]["after"], json!({"id": 2, "big": "short", "small": 2}));
    assert_eq!(lines[3]["unchanged"], json!([]));

    // Update of the big column: present again.
    let u = &lines[4];
    assert_eq!(u["unchanged"], json!([]), "{u}");
    assert_eq!(u["after"]["small"], json!(3));
    assert_eq!(u["after"]["big"].as_str().map(str::len), Some(20_481), "the new big value is sent in full");
    assert_eq!(u["after"]["big"].as_str(), Some(format!("{big}x").as_str()));

    // Delete: the key only.
    assert_eq!(lines[5]["op"], "delete");
    assert_eq!(lines[5]["before"], json!({"id": 1}));
    assert_eq!(lines[5]["unchanged"], json!([]));

    wc.stop().await;
    db.drop().await;
}

/// REPLICA IDENTITY FULL and no primary key: every column is the key. An update that leaves a
/// TOASTed value alone does not carry it in the new row, but the old row (FULL) does: the key and
/// `after` must hold it, or a consumer keying by `key` sees a different row.
#[tokio::test(flavor = "multi_thread")]
async fn full_identity_without_primary_key_keeps_unchanged_toast_in_key() {
    let db = TestDb::create("toastfull").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE notes (big text, small int)").await;
    exec(&sql, "ALTER TABLE notes REPLICA IDENTITY FULL").await;
    db.create_publication(&["notes"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    exec(&sql, "INSERT INTO notes VALUES ((SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 640) g), 1)")
        .await;
    let big = query_text(&sql, "SELECT big FROM notes").await.expect("big");
    let toast_bytes = query_text(&sql, "SELECT pg_relation_size(reltoastrelid)::text FROM pg_class WHERE relname = 'notes'").await;
    assert!(toast_bytes.as_deref().is_some_and(|b| b != "0"), "the test value was not TOASTed ({toast_bytes:?})");
    exec(&sql, "UPDATE notes SET small = 2").await;

    let lines = wc.wait_lines(2, WAIT).await;
    assert_eq!(lines[0]["key"], json!({"big": big, "small": 1}));
    let u = &lines[1];
    assert_eq!(u["op"], "update", "{u}");
    assert_eq!(u["key"], json!({"big": big, "small": 2}), "the key must carry the unchanged TOAST column (from the FULL old row)");
    assert_eq!(u["after"], json!({"big": big, "small": 2}));
    assert_eq!(u["unchanged"], json!([]));
    assert_eq!(u["before"], json!({"big": big, "small": 1}));

    wc.stop().await;
    db.drop().await;
}
