//! Schema changes while walcast streams (never restarted): ADD COLUMN, DROP COLUMN, RENAME
//! COLUMN (also of the primary key), ALTER COLUMN TYPE (int -> bigint, text -> int USING).
//! Every event has the shape of the table at the time of its change: events after a change show
//! the new shape, events before it keep the old one — including changes committed before the
//! ALTER but streamed after walcast has already seen the new shape of another table's change.

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_the_shape_of_the_table() {
    let db = TestDb::create("schema").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, a int, b text)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    // (op, key, after) per expected event, in commit order.
    let mut expected: Vec<(&str, Value, Value)> = Vec::new();

    exec(&sql, "INSERT INTO t VALUES (1, 10, 'x')").await;
    expected.push(("insert", json!({"id": 1}), json!({"id": 1, "a": 10, "b": "x"})));
    // Wait for it, so the relation is described to walcast before the table changes.
    wc.wait_lines(1, WAIT).await;

    // ADD COLUMN (with a default: existing rows read it without a rewrite).
    exec(&sql, "ALTER TABLE t ADD COLUMN c text DEFAULT 'dflt'").await;
    exec(&sql, "INSERT INTO t VALUES (2, 20, 'y', 'z')").await;
    expected.push(("insert", json!({"id": 2}), json!({"id": 2, "a": 20, "b": "y", "c": "z"})));
    exec(&sql, "UPDATE t SET a = 11 WHERE id = 1").await;
    expected.push(("update", json!({"id": 1}), json!({"id": 1, "a": 11, "b": "x", "c": "dflt"})));
    exec(&sql, "UPDATE t SET c = 'cc' WHERE id = 1").await;
    expected.push(("update", json!({"id": 1}), json!({"id": 1, "a": 11, "b": "x", "c": "cc"})));

    // DROP COLUMN.
    exec(&sql, "ALTER TABLE t DROP COLUMN b").await;
    exec(&sql, "INSERT INTO t VALUES (3, 30, 'w')").await;
    expected.push(("insert", json!({"id": 3}), json!({"id": 3, "a": 30, "c": "w"})));

    // RENAME COLUMN.
    exec(&sql, "ALTER TABLE t RENAME COLUMN a TO amount").await;
    exec(&sql, "INSERT INTO t VALUES (4, 40, 'v')").await;
    expected.push(("insert", json!({"id": 4}), json!({"id": 4, "amount": 40, "c": "v"})));

    // ALTER COLUMN TYPE int -> bigint (a table rewrite, which streams nothing).
    exec(&sql, "ALTER TABLE t ALTER COLUMN amount TYPE bigint").await;
    exec(&sql, "INSERT INTO t VALUES (5, 9000000000, 'u')").await;
    expected.push(("insert", json!({"id": 5}), json!({"id": 5, "amount": 9_000_000_000_i64, "c": "u"})));

    // ALTER COLUMN TYPE text -> int USING an expression.
    exec(&sql, "ALTER TABLE t ALTER COLUMN c DROP DEFAULT, ALTER COLUMN c TYPE int USING length(c)").await;
    exec(&sql, "INSERT INTO t VALUES (6, 60, 12)").await;
    expected.push(("insert", json!({"id": 6}), json!({"id": 6, "amount": 60, "c": 12})));
    exec(&sql, "UPDATE t SET amount = amount + 1 WHERE id = 1").await;
    expected.push(("update", json!({"id": 1}), json!({"id": 1, "amount": 12, "c": 2})));

    // A transaction that changes a row, then the table, then the row again: each event has the
    // shape that was current when it was made.
    exec(
        &sql,
        "BEGIN;
         UPDATE t SET amount = 0 WHERE id = 2;
         ALTER TABLE t ADD COLUMN d bool;
         UPDATE t SET d = true WHERE id = 2;
         COMMIT;",
    )
    .await;
    expected.push(("update", json!({"id": 2}), json!({"id": 2, "amount": 0, "c": 1})));
    expected.push(("update", json!({"id": 2}), json!({"id": 2, "amount": 0, "c": 1, "d": true})));

    // Renaming the primary key column renames the key.
    exec(&sql, "ALTER TABLE t RENAME COLUMN id TO pk").await;
    exec(&sql, "DELETE FROM t WHERE pk = 3").await;
    let lines = wc.wait_lines(expected.len() + 1, WAIT).await;
    assert_eq!(lines.len(), expected.len() + 1, "one line per change");
    let delete = lines.last().expect("a line");
    assert_eq!(delete["op"], "delete");
    assert_eq!(delete["key"], json!({"pk": 3}), "key after renaming the key column: {delete}");
    assert_eq!(delete["before"], json!({"pk": 3}), "{delete}");

    transactions(&lines);
    for (i, (line, (op, key, after))) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line["op"], json!(op), "event {i}: {line}");
        assert_eq!(&line["key"], key, "event {i}: {line}");
        assert_json_eq(after, &line["after"], &format!("event {i} after"));
        assert_eq!(line["unchanged"], json!([]), "event {i}");
    }
    assert!(wc.is_running(), "walcast kept running through every schema change");

    wc.stop().await;
    db.drop().await;
}

/// A transaction committed before an ALTER TABLE but decoded after walcast has seen the new
/// shape still has the old shape: pgoutput decodes every change with the catalog of its time.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_transaction_keeps_the_older_shape() {
    let db = TestDb::create("schema_old").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE t (id int PRIMARY KEY, a int)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;

    // Everything happens while walcast is not connected: the whole history is decoded later.
    exec(&sql, "INSERT INTO t VALUES (1, 1)").await;
    exec(&sql, "ALTER TABLE t ADD COLUMN b text DEFAULT 'new'").await;
    exec(&sql, "INSERT INTO t VALUES (2, 2, 'b2')").await;
    exec(&sql, "ALTER TABLE t DROP COLUMN a").await;
    exec(&sql, "INSERT INTO t VALUES (3, 'b3')").await;

    let mut wc = Walcast::new(&db);
    wc.start();
    let lines = wc.wait_lines(3, WAIT).await;
    let afters: Vec<&Value> = lines.iter().map(|l| &l["after"]).collect();
    assert_eq!(
        afters,
        [&json!({"id": 1, "a": 1}), &json!({"id": 2, "a": 2, "b": "b2"}), &json!({"id": 3, "b": "b3"})],
        "each insert has the shape of its own time"
    );

    wc.stop().await;
    db.drop().await;
}
