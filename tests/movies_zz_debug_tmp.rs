//! TEMPORARY debugging (to be deleted).
mod es_support;
mod movies_support;
mod support;

use std::time::Duration;
use es_support::*;
use movies_support::*;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn debug_workload() {
    let es_url = es_url();
    let index = index_name("movies-dbg");
    let db = movies_db("movies_dbg", &es_url, &index).await;
    let sql = db.client().await;
    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    wc.start();
    assert_index_matches_sql(&sql, &es_url, &index, Duration::from_secs(60), &wc, "init").await;
    exec(&sql, &format!("SELECT 1 FROM pg_create_logical_replication_slot('{}_td', 'test_decoding')", db.slot)).await;
    let client = db.client().await;
    let people: Vec<String> = client.query("SELECT id::text FROM content.person ORDER BY id LIMIT 40", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let films: Vec<String> = client.query("SELECT id::text FROM content.film_work ORDER BY id DESC LIMIT 40", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let n_max: usize = std::env::var("DBG_N").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    for n in 0..n_max {
        let (person, film) = (&people[n % people.len()], &films[(n * 7) % films.len()]);
        let s = if n % 2 == 0 {
            format!("UPDATE content.person SET full_name = regexp_replace(full_name, ' #[0-9]+$', '') || ' #{n}' WHERE id = '{person}'")
        } else {
            format!("UPDATE content.film_work SET rating = {} WHERE id = '{film}'", (n % 97) as f64 / 10.0)
        };
        client.simple_query(&s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected = expected_documents(&sql).await;
    let actual = fetch_all(&es_url, &index).await;
    let d = diff(&expected, &actual);
    eprintln!("DIFF {}", d.join("\n"));
    if !d.is_empty() {
        let es = Es::new(&es_url);
        for (id, exp) in &expected {
            if actual.get(id).map(normalize) != Some(exp.clone()) {
                let (_, v) = es.doc_with_version(&index, id).await.unwrap();
                eprintln!("doc {id}: version {}", walcast::lsn::Lsn(v));
            }
        }
        let rows = sql.query(&format!("SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes('{}_td', NULL, NULL)", db.slot), &[]).await.unwrap();
        let mut f = String::new();
        for r in rows { let (a, b, c): (String, String, String) = (r.get(0), r.get(1), r.get(2)); f.push_str(&format!("{a} {b} {}\n", &c[..c.len().min(200)])); }
        std::fs::write("/tmp/td.txt", f).unwrap();
        eprintln!("KEEP {:?}", wc.keep_files());
    }
    wc.stop().await;
}
