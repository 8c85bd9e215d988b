//! Streaming of the movies document rule (config/movies.toml) on the real dataset and
//! osmem-server: one `walcast run` (after its initial snapshot) and a sequence of typical admin
//! edits, each one transaction. After every edit ALL documents must equal the expectation
//! recomputed from SQL (support::movies, independent of the rule's query):
//! a renamed person changes every film listing them; a genre added to a film; a renamed genre
//! (hundreds of films); a film's rating; a film losing its only director shows empty
//! `directors` / `directors_names`; a deleted person disappears from all their films (ON DELETE
//! CASCADE on the links); a deleted film's document is gone; a film inserted with its links in
//! one transaction appears.
//!
//! Each edit's commit -> visible latency (commit returned -> every document it changes reads
//! back as expected after `_refresh`) is printed, not asserted (no timing assertions in tests).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::es::*;
use crate::support::movies::*;
use crate::support::*;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// How long a case may take to show up everywhere.
const CASE_WAIT: Duration = Duration::from_secs(20);

/// Run `statements` in one transaction; the expectation is computed inside it (the session sees
/// its own changes) so the clock starts when COMMIT returns. Then wait until the documents the
/// edit changes read back as expected (the latency), and until the whole index equals the
/// expectation. Returns the new expectation, the ids that changed, and the latency.
async fn case(
    sql: &Client,
    es_url: &str,
    index: &str,
    wc: &Walcast,
    before: &BTreeMap<String, Value>,
    name: &str,
    statements: &str,
) -> (BTreeMap<String, Value>, Vec<String>, Duration) {
    exec(sql, &format!("BEGIN; {statements}")).await;
    let after = expected_documents(sql).await;
    exec(sql, "COMMIT").await;
    let committed = Instant::now();
    let changed = changed_ids(before, &after);
    assert!(!changed.is_empty(), "{name}: the edit changes no document");
    let wanted: BTreeMap<String, Value> =
        after.iter().filter(|(id, _)| changed.contains(id)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let latency = loop {
        let got = fetch_ids(es_url, index, &changed).await;
        if diff(&wanted, &got).is_empty() {
            break committed.elapsed();
        }
        if committed.elapsed() > CASE_WAIT {
            panic!(
                "{name}: the {} changed documents are not as expected after {CASE_WAIT:?}:\n{}\n{}",
                changed.len(),
                diff(&wanted, &got).join("\n"),
                wc.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    wait_index_equals(es_url, index, &after, CASE_WAIT, wc, name).await;
    (after, changed, latency)
}

/// The running test's context: each [`Cases::run`] is one edit checked against the expectation.
struct Cases<'a> {
    sql: &'a Client,
    es_url: &'a str,
    index: &'a str,
    wc: &'a Walcast,
    /// The expectation after the edits so far.
    docs: BTreeMap<String, Value>,
    latencies: Vec<(&'static str, Duration)>,
}

impl Cases<'_> {
    /// Run one edit (see [`case`]); returns the ids of the documents it changed.
    async fn run(&mut self, name: &'static str, statements: &str) -> Vec<String> {
        let (after, changed, latency) = case(self.sql, self.es_url, self.index, self.wc, &self.docs, name, statements).await;
        self.docs = after;
        self.latencies.push((name, latency));
        changed
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_edits_stream_into_the_documents() {
    let es_url = es_url();
    let index = index_name("movies-stream");
    let db = movies_db("movies_stream", &es_url, &index).await;
    let sql = db.client().await;
    let mut wc = movies_walcast(&db, &es_url, &index, &MoviesOptions::default());
    wc.start();
    let docs = assert_index_matches_sql(&sql, &es_url, &index, Duration::from_secs(60), &wc, "after the initial snapshot").await;
    let mut cases = Cases { sql: &sql, es_url: &es_url, index: &index, wc: &wc, docs, latencies: Vec::new() };

    // The person in the most films, renamed.
    let person = sql_text(
        &sql,
        "SELECT person_id::text FROM content.person_film_work GROUP BY person_id ORDER BY count(DISTINCT film_work_id) DESC, person_id LIMIT 1",
    )
    .await;
    let films =
        sql_text(&sql, &format!("SELECT count(DISTINCT film_work_id)::text FROM content.person_film_work WHERE person_id = '{person}'"))
            .await;
    let changed =
        cases.run("rename", &format!("UPDATE content.person SET full_name = full_name || ' Renamed' WHERE id = '{person}';")).await;
    assert_eq!(changed.len().to_string(), films, "rename: every film listing the person changes");
    assert!(changed.len() > 1, "rename: the person is in several films");

    // A genre the film does not have yet.
    let pair = sql_text(
        &sql,
        "SELECT fw.id::text || ' ' || g.id::text FROM content.film_work fw CROSS JOIN content.genre g \
         WHERE NOT EXISTS (SELECT FROM content.genre_film_work x WHERE x.film_work_id = fw.id AND x.genre_id = g.id) \
         ORDER BY fw.id, g.id LIMIT 1",
    )
    .await;
    let (film, genre) = pair.split_once(' ').expect("film and genre");
    let changed = cases
        .run(
            "add_genre",
            &format!("INSERT INTO content.genre_film_work (id, film_work_id, genre_id) VALUES (gen_random_uuid(), '{film}', '{genre}');"),
        )
        .await;
    assert_eq!(changed, vec![film.to_string()], "add_genre: only that film");

    // The genre of the most films, renamed: a large fan-out.
    let genre =
        sql_text(&sql, "SELECT genre_id::text FROM content.genre_film_work GROUP BY genre_id ORDER BY count(*) DESC, genre_id LIMIT 1")
            .await;
    let changed = cases.run("rename_genre", &format!("UPDATE content.genre SET name = name || ' Renamed' WHERE id = '{genre}';")).await;
    assert!(changed.len() > 100, "rename_genre: {} films", changed.len());
    let genre_films = changed.len();

    // A rating.
    let film = cases.docs.keys().nth(10).expect("a film").clone();
    let changed = cases.run("rating", &format!("UPDATE content.film_work SET rating = 2.5 WHERE id = '{film}';")).await;
    assert_eq!(changed, vec![film.clone()]);
    assert_eq!(cases.docs[&film]["imdb_rating"], json!(2.5));

    // A film with exactly one director loses it.
    let film = sql_text(
        &sql,
        "SELECT film_work_id::text FROM content.person_film_work WHERE role = 'director' GROUP BY film_work_id HAVING count(*) = 1 ORDER BY 1 LIMIT 1",
    )
    .await;
    let changed = cases
        .run("lose_director", &format!("DELETE FROM content.person_film_work WHERE film_work_id = '{film}' AND role = 'director';"))
        .await;
    assert_eq!(changed, vec![film.clone()]);
    assert_eq!((&cases.docs[&film]["directors"], &cases.docs[&film]["directors_names"]), (&json!([]), &json!([])));
    let got = fetch_ids(&es_url, &index, std::slice::from_ref(&film)).await;
    assert_eq!((&got[&film]["directors"], &got[&film]["directors_names"]), (&json!([]), &json!([])), "empty lists, not null or absent");

    // A person in several films is deleted: the links go with ON DELETE CASCADE.
    let person = sql_text(
        &sql,
        "SELECT person_id::text FROM content.person_film_work GROUP BY person_id HAVING count(DISTINCT film_work_id) >= 3 \
         ORDER BY count(DISTINCT film_work_id), person_id LIMIT 1",
    )
    .await;
    let changed = cases.run("delete_person", &format!("DELETE FROM content.person WHERE id = '{person}';")).await;
    assert!(changed.len() >= 3, "delete_person: {} films", changed.len());
    let got = fetch_ids(&es_url, &index, &changed).await;
    assert!(!got.values().any(|d| d.to_string().contains(&person)), "the person is gone from all their films");

    // A film with links is deleted.
    let film = sql_text(&sql, "SELECT film_work_id::text FROM content.person_film_work ORDER BY film_work_id DESC LIMIT 1").await;
    let changed = cases.run("delete_film", &format!("DELETE FROM content.film_work WHERE id = '{film}';")).await;
    assert_eq!(changed, vec![film.clone()]);
    assert!(
        !cases.docs.contains_key(&film) && fetch_ids(&es_url, &index, std::slice::from_ref(&film)).await.is_empty(),
        "its document is gone"
    );

    // A new film with its genres and people (one of them new) in one transaction.
    let film = "00000000-0000-4000-8000-00000000f11a";
    let new_person = "00000000-0000-4000-8000-00000000beef";
    let changed = cases.run("new_film", &format!(
            "INSERT INTO content.film_work (id, title, description, rating, type) VALUES ('{film}', 'Walcast: The Movie', 'Rows become documents.', 8.8, 'movie');
             INSERT INTO content.person (id, full_name) VALUES ('{new_person}', 'Ada Director');
             INSERT INTO content.genre_film_work (id, film_work_id, genre_id) SELECT gen_random_uuid(), '{film}', id FROM content.genre ORDER BY id LIMIT 2;
             INSERT INTO content.person_film_work (id, film_work_id, person_id, role) VALUES (gen_random_uuid(), '{film}', '{new_person}', 'director');
             INSERT INTO content.person_film_work (id, film_work_id, person_id, role)
                 SELECT gen_random_uuid(), '{film}', id, r FROM (SELECT id FROM content.person ORDER BY id LIMIT 3) p, unnest(ARRAY['actor', 'writer']) r;"
        )).await;
    assert_eq!(changed, vec![film.to_string()]);
    let doc = &cases.docs[film];
    assert_eq!(doc["directors_names"], json!(["Ada Director"]));
    assert_eq!((doc["genres"].as_array().map(Vec::len), doc["actors"].as_array().map(Vec::len)), (Some(2), Some(3)));

    let log = std::fs::read_to_string(&wc.log_path).expect("log");
    assert!(!log.contains("dead letter"), "no document may be rejected\n{}", wc.log_tail(40));
    let summary: Vec<String> = cases.latencies.iter().map(|(n, d)| format!("{n}={}", d.as_millis())).collect();
    eprintln!(
        "movies streaming latency ms: {} (rename_genre rebuilt {genre_films} films; {} documents at the end)",
        summary.join(", "),
        cases.docs.len()
    );

    wc.stop().await;
    db.drop().await;
    Es::new(&es_url).delete_index(&index).await;
}
