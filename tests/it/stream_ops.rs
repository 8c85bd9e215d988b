//! Inserts, updates (including a primary key change), deletes and truncates over three tables in
//! two schemas, in several transactions, two of them interleaved: every change arrives once, in
//! commit order, with the right op, schema, table, key, before, after and truncate options.
//! A REPLICA IDENTITY FULL table carries the whole old row.

use crate::support::*;
use serde_json::{json, Value};

const SCHEMA: &str = r#"
CREATE SCHEMA shop;
CREATE TABLE public.customers (
    id int PRIMARY KEY,
    name text NOT NULL,
    email text,
    born date,
    vip bool NOT NULL DEFAULT false
);
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer_id int REFERENCES public.customers (id),
    amount numeric(10, 2),
    placed timestamptz,
    note text
);
CREATE TABLE shop.items (
    sku text,
    warehouse int2,
    qty int,
    price float8,
    tags text[],
    PRIMARY KEY (sku, warehouse)
);
"#;

fn customer(id: i64, name: &str, email: Value, born: Value, vip: bool) -> Value {
    json!({"id": id, "name": name, "email": email, "born": born, "vip": vip})
}

fn insert(schema: &str, table: &str, key: Value, after: Value) -> Value {
    json!({"schema": schema, "table": table, "op": "insert", "key": key, "before": null, "after": after, "unchanged": []})
}

fn update(schema: &str, table: &str, key: Value, before: Value, after: Value) -> Value {
    json!({"schema": schema, "table": table, "op": "update", "key": key, "before": before, "after": after, "unchanged": []})
}

fn delete(schema: &str, table: &str, key: Value) -> Value {
    json!({"schema": schema, "table": table, "op": "delete", "key": key, "before": key, "after": null, "unchanged": []})
}

fn truncate(schema: &str, table: &str, cascade: bool, restart_identity: bool) -> Value {
    json!({"schema": schema, "table": table, "op": "truncate", "key": null, "before": null, "after": null, "unchanged": [],
           "truncate": {"cascade": cascade, "restart_identity": restart_identity}})
}

/// ISO 8601 UTC with microseconds, as walcast writes commit_ts.
fn is_commit_ts(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[26] == b'Z'
        && b.iter().enumerate().all(|(i, c)| [4, 7, 10, 13, 16, 19, 26].contains(&i) || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_arrives_in_commit_order() {
    let db = TestDb::create("ops").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&[]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    let mut expected: Vec<Vec<Value>> = Vec::new();
    let ada = customer(1, "Ada", json!("ada@example.com"), json!("1815-12-10"), true);
    let brian = customer(2, "Brian", json!(null), json!(null), false);
    let item1 = json!({"sku": "sku-1", "warehouse": 1, "qty": 10, "price": 2.5, "tags": ["red", "big"]});
    let order1 = json!({"id": 1, "customer_id": 1, "amount": "12.50", "placed": "2024-03-01T10:00:00Z", "note": "first"});

    // T1: inserts into all three tables.
    exec(
        &sql,
        "BEGIN;
         INSERT INTO public.customers VALUES (1, 'Ada', 'ada@example.com', '1815-12-10', true), (2, 'Brian', NULL, NULL, false);
         INSERT INTO public.orders (customer_id, amount, placed, note) VALUES (1, 12.5, '2024-03-01 11:00:00+01', 'first');
         INSERT INTO shop.items VALUES ('sku-1', 1, 10, 2.5, '{red,big}');
         COMMIT;",
    )
    .await;
    expected.push(vec![
        insert("public", "customers", json!({"id": 1}), ada.clone()),
        insert("public", "customers", json!({"id": 2}), brian.clone()),
        insert("public", "orders", json!({"id": 1}), order1.clone()),
        insert("shop", "items", json!({"sku": "sku-1", "warehouse": 1}), item1.clone()),
    ]);

    // T2: plain updates (REPLICA IDENTITY DEFAULT, key unchanged: no old tuple).
    exec(
        &sql,
        "BEGIN;
         UPDATE public.customers SET email = 'brian@example.com' WHERE id = 2;
         UPDATE shop.items SET qty = qty - 1 WHERE sku = 'sku-1' AND warehouse = 1;
         COMMIT;",
    )
    .await;
    let brian2 = customer(2, "Brian", json!("brian@example.com"), json!(null), false);
    let mut item1b = item1.clone();
    item1b["qty"] = json!(9);
    expected.push(vec![
        update("public", "customers", json!({"id": 2}), json!(null), brian2.clone()),
        update("shop", "items", json!({"sku": "sku-1", "warehouse": 1}), json!(null), item1b),
    ]);

    // T3: a primary key change carries the old key in `before`.
    exec(&sql, "UPDATE public.customers SET id = 3 WHERE id = 2").await;
    let brian3 = customer(3, "Brian", json!("brian@example.com"), json!(null), false);
    expected.push(vec![update("public", "customers", json!({"id": 3}), json!({"id": 2}), brian3)]);

    // T4 / T5 interleaved on two connections; B commits first, so B's changes come first.
    let a = db.client().await;
    let b = db.client().await;
    exec(
        &a,
        "BEGIN; INSERT INTO public.orders (customer_id, amount, placed, note) VALUES (3, 5, '2024-03-02 23:59:59.999999+00', 'second')",
    )
    .await;
    exec(&b, "BEGIN; INSERT INTO shop.items VALUES ('sku-2', 2, 1, 99.99, '{}')").await;
    exec(&a, "UPDATE public.orders SET note = 'second, edited' WHERE id = 2").await;
    exec(&b, "DELETE FROM shop.items WHERE sku = 'sku-1'").await;
    exec(&b, "COMMIT").await;
    exec(&a, "INSERT INTO public.customers VALUES (4, 'Zoë \"Z\" O''Brien', NULL, '2000-02-29', false); COMMIT").await;
    expected.push(vec![
        insert(
            "shop",
            "items",
            json!({"sku": "sku-2", "warehouse": 2}),
            json!({"sku": "sku-2", "warehouse": 2, "qty": 1, "price": 99.99, "tags": []}),
        ),
        delete("shop", "items", json!({"sku": "sku-1", "warehouse": 1})),
    ]);
    let order2 = json!({"id": 2, "customer_id": 3, "amount": "5.00", "placed": "2024-03-02T23:59:59.999999Z", "note": "second"});
    let mut order2b = order2.clone();
    order2b["note"] = json!("second, edited");
    expected.push(vec![
        insert("public", "orders", json!({"id": 2}), order2),
        update("public", "orders", json!({"id": 2}), json!(null), order2b),
        insert("public", "customers", json!({"id": 4}), customer(4, "Zoë \"Z\" O'Brien", json!(null), json!("2000-02-29"), false)),
    ]);

    // T6: deletes carry the old key.
    exec(&sql, "BEGIN; DELETE FROM public.orders WHERE id = 1; DELETE FROM public.customers WHERE id = 1; COMMIT;").await;
    expected.push(vec![delete("public", "orders", json!({"id": 1})), delete("public", "customers", json!({"id": 1}))]);

    // T7: TRUNCATE of one table.
    exec(&sql, "TRUNCATE shop.items").await;
    expected.push(vec![truncate("shop", "items", false, false)]);

    // T8: two tables, RESTART IDENTITY CASCADE; orders (referencing customers) goes by cascade.
    exec(&sql, "TRUNCATE public.customers, shop.items RESTART IDENTITY CASCADE").await;
    expected.push(vec![
        truncate("public", "customers", true, true),
        truncate("shop", "items", true, true),
        truncate("public", "orders", true, true),
    ]);

    // T9: life goes on after truncates.
    exec(&sql, "INSERT INTO public.customers VALUES (5, 'After', NULL, NULL, true)").await;
    expected.push(vec![insert("public", "customers", json!({"id": 5}), customer(5, "After", json!(null), json!(null), true))]);

    let total: usize = expected.iter().map(Vec::len).sum();
    let lines = wc.wait_lines(total, WAIT).await;
    // Anything extra would arrive right behind; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let lines = {
        let all = wc.lines().to_vec();
        assert_eq!(all.len(), lines.len(), "more lines than changes: {:#?}", &all[lines.len()..]);
        all
    };

    for (i, line) in lines.iter().enumerate() {
        let lsn = parse_lsn(line["lsn"].as_str().unwrap_or_else(|| panic!("line {i}: no lsn: {line}")));
        let commit = commit_lsn(line);
        assert!(lsn.0 > 0 && lsn < commit, "line {i}: the change's lsn {lsn} must be before its commit {commit}: {line}");
        assert!(line["xid"].as_u64().is_some_and(|x| x > 0), "line {i}: xid: {line}");
        assert!(line["commit_ts"].as_str().is_some_and(is_commit_ts), "line {i}: commit_ts: {line}");
    }
    let txs = transactions(&lines);
    assert_eq!(
        txs.len(),
        expected.len(),
        "transactions: {:#?}",
        txs.iter().map(|t| t.iter().map(change_part).collect::<Vec<_>>()).collect::<Vec<_>>()
    );
    for (n, (tx, want)) in txs.iter().zip(&expected).enumerate() {
        let mut got: Vec<Value> = tx.iter().map(change_part).collect();
        let mut want = want.clone();
        if n == 7 {
            // The server lists the cascaded table after the named ones; the order among the
            // truncated tables carries no meaning, so compare them as a set.
            got.sort_by_key(table_of);
            want.sort_by_key(table_of);
        }
        assert_json_eq(&Value::Array(want), &Value::Array(got), &format!("transaction T{}", n + 1));
    }
    // Distinct transactions have distinct xids.
    let xids: std::collections::BTreeSet<u64> = txs.iter().map(|t| t[0]["xid"].as_u64().unwrap_or(0)).collect();
    assert_eq!(xids.len(), txs.len(), "each transaction has its own xid");

    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_identity_full_carries_the_old_row() {
    let db = TestDb::create("ops_full").await;
    let sql = db.client().await;
    exec(
        &sql,
        "CREATE TABLE public.ledger (id int PRIMARY KEY, account text NOT NULL, cents int8, memo text);
         ALTER TABLE public.ledger REPLICA IDENTITY FULL;",
    )
    .await;
    db.create_publication(&["public.ledger"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    exec(&sql, "INSERT INTO public.ledger VALUES (1, 'acme', 1000, 'opening'), (2, 'globex', -50, NULL)").await;
    exec(&sql, "UPDATE public.ledger SET cents = cents + 1, memo = 'adjusted' WHERE id = 1").await;
    exec(&sql, "UPDATE public.ledger SET id = 3 WHERE id = 2").await;
    exec(&sql, "DELETE FROM public.ledger WHERE id = 1").await;

    let lines = wc.wait_lines(5, WAIT).await;
    let row1 = json!({"id": 1, "account": "acme", "cents": 1000, "memo": "opening"});
    let row1b = json!({"id": 1, "account": "acme", "cents": 1001, "memo": "adjusted"});
    let row2 = json!({"id": 2, "account": "globex", "cents": -50, "memo": null});
    let row3 = json!({"id": 3, "account": "globex", "cents": -50, "memo": null});
    let expected = [
        ("insert", Value::Null, row1.clone()),
        ("insert", Value::Null, row2.clone()),
        ("update", row1.clone(), row1b.clone()),
        ("update", row2.clone(), row3.clone()),
        ("delete", row1b.clone(), Value::Null),
    ];
    transactions(&lines);
    for (i, (line, (op, before, after))) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line["op"], json!(op), "line {i}: {line}");
        assert_json_eq(before, &line["before"], &format!("line {i} before (the whole old row)"));
        assert_json_eq(after, &line["after"], &format!("line {i} after"));
        assert_eq!(line["unchanged"], json!([]), "line {i}");
    }
    // `key` is the primary key even though REPLICA IDENTITY FULL flags every column
    // (docs/events.md): taken from the new row, or the old one for deletes.
    for (i, (line, (_, before, after))) in lines.iter().zip(&expected).enumerate() {
        let row = if after.is_null() { before } else { after };
        assert_json_eq(&json!({"id": row["id"]}), &line["key"], &format!("line {i} key (the primary key)"));
    }

    wc.stop().await;
    db.drop().await;
}
