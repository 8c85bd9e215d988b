//! REPLICA IDENTITY FULL with a primary key: walcast keys by the primary key, which it looks up in
//! the catalog. A lookup that fails must never key the table by every column (Kafka keys and
//! Elasticsearch ids would change): walcast reconnects and reads the transaction again.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn failed_primary_key_lookup_never_keys_by_every_column() {
    let db = TestDb::create("identfull").await;
    let sql = db.client().await;
    let admin = db.admin().await;
    for t in ["a", "b"] {
        exec(&sql, &format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)")).await;
        exec(&sql, &format!("ALTER TABLE {t} REPLICA IDENTITY FULL")).await;
    }
    db.create_publication(&["a", "b"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    exec(&sql, "INSERT INTO a VALUES (1, 'x')").await;
    let lines = wc.wait_lines(1, WAIT).await;
    assert_eq!(lines[0]["key"], json!({"id": 1}));

    // Break the catalog lookup the way it breaks in production: its connection is gone and no new
    // one can be opened (the database refuses connections, superusers included).
    exec(&admin, &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name)).await;
    exec(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE '%indisprimary%' AND pid <> pg_backend_pid()",
            db.name
        ),
    )
    .await;
    // The first change of table b brings its Relation message, hence a lookup.
    exec(&sql, "INSERT INTO b VALUES (2, 'y')").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    exec(&admin, &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name)).await;

    let lines = wc.wait_lines(2, WAIT).await;
    assert_eq!(lines[1]["table"], "b", "{}", lines[1]);
    assert_eq!(lines[1]["key"], json!({"id": 2}), "a failed primary-key lookup changed the key: {}", lines[1]);
    assert!(wc.is_running(), "walcast must reconnect, not stop");

    wc.stop().await;
    db.drop().await;
}
