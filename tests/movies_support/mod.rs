//! Support of the tests on the movies dataset (`/work/shared/datasets/movies`, the online course's
//! admin catalogue): load it into a test database with `scripts/load-movies`, derive the expected
//! v2 document of every film in Rust from plain SELECTs of the five `content` tables (on purpose
//! independent of the query in `config/movies.toml`), read an index back, and diff the two.
//!
//! Needs `mod support;` and `mod es_support;` in the test crate too.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use serde_json::{json, Value};
use tokio_postgres::{Client, Row};

use crate::es_support::Es;
use crate::support::{describe, json_diff, repo_root};

/// At most this many lines of details from [`diff`] (after its summary line).
const DIFF_LINES: usize = 20;

/// Role of `person_film_work` -> (names field, nested field) of the v2 document.
const ROLES: [(&str, &str, &str); 3] =
    [("director", "directors_names", "directors"), ("actor", "actors_names", "actors"), ("writer", "writers_names", "writers")];

/// Apply `sql/movies/schema.sql` to the database at `db_url` and (re)load the dataset with
/// `scripts/load-movies`; panics with the script's output if it fails.
pub fn load_movies(db_url: &str) {
    let script = repo_root().join("scripts").join("load-movies");
    let out = Command::new(&script).arg(db_url).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {db_url} failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn rows(client: &Client, sql: &str) -> Vec<Row> {
    client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{}: {sql}", describe(&e)))
}

/// The expected v2 document of every film (keyed by film id), built from the tables' rows:
/// genre names, and per role the people's names and `{id, name}` objects (a person once per
/// role), empty arrays when there are none. Returned [`normalize`]d.
pub async fn expected_documents(client: &Client) -> BTreeMap<String, Value> {
    let genres: HashMap<String, String> =
        rows(client, "SELECT id::text, name FROM content.genre").await.iter().map(|r| (r.get(0), r.get(1))).collect();
    let people: HashMap<String, String> =
        rows(client, "SELECT id::text, full_name FROM content.person").await.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut docs = BTreeMap::new();
    for r in rows(client, "SELECT id::text, rating::float8, title, description FROM content.film_work").await {
        let (id, rating, title, description): (String, Option<f64>, String, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let doc = json!({
            "id": id,
            "imdb_rating": rating,
            "genres": [],
            "title": title,
            "description": description,
            "directors_names": [], "actors_names": [], "writers_names": [],
            "directors": [], "actors": [], "writers": [],
        });
        docs.insert(id, doc);
    }

    for r in rows(client, "SELECT film_work_id::text, genre_id::text FROM content.genre_film_work").await {
        let (film, genre): (String, String) = (r.get(0), r.get(1));
        let name = genres.get(&genre).unwrap_or_else(|| panic!("genre_film_work: unknown genre {genre}"));
        let doc = docs.get_mut(&film).unwrap_or_else(|| panic!("genre_film_work: unknown film {film}"));
        push(&mut doc["genres"], json!(name));
    }

    for r in rows(client, "SELECT film_work_id::text, person_id::text, role FROM content.person_film_work").await {
        let (film, person, role): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let Some(&(_, names, nested)) = ROLES.iter().find(|(known, _, _)| *known == role) else {
            panic!("person_film_work: unexpected role {role:?} (film {film}, person {person})")
        };
        let name = people.get(&person).unwrap_or_else(|| panic!("person_film_work: unknown person {person}"));
        let doc = docs.get_mut(&film).unwrap_or_else(|| panic!("person_film_work: unknown film {film}"));
        let list = doc[nested].as_array().expect("array");
        if list.iter().any(|p| p["id"].as_str() == Some(person.as_str())) {
            continue; // one entry per person and role, whatever the link table holds
        }
        push(&mut doc[nested], json!({"id": person, "name": name}));
        push(&mut doc[names], json!(name));
    }

    docs.into_iter().map(|(id, doc)| (id, normalize(&doc))).collect()
}

fn push(array: &mut Value, item: Value) {
    array.as_array_mut().expect("array field").push(item);
}

/// The document with every top-level array sorted (strings by value, `{id, name}` objects by
/// id then name) and every top-level number as an f64, so that documents compare with `==`
/// whatever the order of their lists and whether a rating was written as `9` or `9.0`.
pub fn normalize(doc: &Value) -> Value {
    let Value::Object(fields) = doc else { return doc.clone() };
    let mut out = fields.clone();
    for value in out.values_mut() {
        if let Some(f) = value.as_f64() {
            *value = json!(f);
        } else if let Value::Array(items) = value {
            items.sort_by_cached_key(sort_key);
        }
    }
    Value::Object(out)
}

fn sort_key(v: &Value) -> (String, String) {
    let text = |v: Option<&Value>| v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_default();
    match v {
        Value::Object(o) => (text(o.get("id")), text(o.get("name"))),
        other => (text(Some(other)), String::new()),
    }
}

/// Every document of `index` (after `_refresh`) as document id -> `_source`; empty when the
/// index does not exist.
pub async fn fetch_all(es_url: &str, index: &str) -> BTreeMap<String, Value> {
    Es::new(es_url).all(index).await.into_iter().collect()
}

/// What differs between expected and actual documents (both keyed by id; compared after
/// [`normalize`], numbers by value): a summary line, then up to 20 lines naming missing ids,
/// extra ids and the first differing field of each differing document. Empty when they match.
pub fn diff(expected: &BTreeMap<String, Value>, actual: &BTreeMap<String, Value>) -> Vec<String> {
    let title = |doc: &Value| doc["title"].as_str().map(|t| format!(" ({t})")).unwrap_or_default();
    let (mut missing, mut extra, mut differing) = (0, 0, 0);
    let mut details = Vec::new();
    let mut note = |line: String| {
        if details.len() < DIFF_LINES {
            details.push(clip(&line, 400));
        }
    };
    for (id, exp) in expected {
        match actual.get(id) {
            None => {
                missing += 1;
                note(format!("missing {id}{}", title(exp)));
            }
            Some(act) => {
                if let Some(d) = json_diff(&normalize(exp), &normalize(act), "$") {
                    differing += 1;
                    note(format!("{id}{}: {d}", title(exp)));
                }
            }
        }
    }
    for (id, act) in actual.iter().filter(|(id, _)| !expected.contains_key(*id)) {
        extra += 1;
        note(format!("extra {id}{}", title(act)));
    }
    if missing + extra + differing == 0 {
        return Vec::new();
    }
    let mut out = vec![format!(
        "expected {} documents, got {}: {missing} missing, {extra} extra, {differing} differing",
        expected.len(),
        actual.len()
    )];
    out.extend(details);
    if missing + extra + differing > DIFF_LINES {
        out.push(format!("... and {} more", missing + extra + differing - DIFF_LINES));
    }
    out
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
