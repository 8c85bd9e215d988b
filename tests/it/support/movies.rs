//! The movies dataset (`../shared/datasets/movies` beside the checkout, the online course's
//! admin catalogue): load it into a test database with `scripts/load-movies`, derive the expected
//! v2 document of every film in Rust from plain SELECTs of the five `content` tables (on purpose
//! independent of the query in `config/movies.toml`), read an index back, and diff the two;
//! and run walcast on it: `movies_config` (config/movies.toml pointed at a test database, index
//! and state_dir), `movies_walcast`, the snapshot progress file, waiting until an index equals
//! the expectation.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::{Client, Row};

use super::es::Es;
use super::{describe, json_diff, pg_url, query_text, read_snapshot_state, repo_root, toml_str, PgUrl, TestDb, Walcast};

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
        let (id, rating, title, description): (String, Option<f64>, String, Option<String>) = (r.get(0), r.get(1), r.get(2), r.get(3));
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

// ---------------------------------------------------------------------------------------------
// walcast on the movies dataset

/// The v2 index definition: `$WALCAST_MOVIES_INDEX_JSON`, else the shared dataset directory
/// beside this checkout.
pub fn mapping_file() -> PathBuf {
    match std::env::var("WALCAST_MOVIES_INDEX_JSON") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("../shared/datasets/movies/es_movies_index_v2.json"),
    }
}

/// What a test changes in `config/movies.toml` besides the connection, names and paths.
#[derive(Debug, Clone, Default)]
pub struct MoviesOptions {
    /// `[snapshot] chunk_rows` (walcast's default when `None`).
    pub chunk_rows: Option<usize>,
    /// `[snapshot] mode` (`initial` as in the shipped file when `None`).
    pub snapshot_mode: Option<&'static str>,
    /// Extra lines inside `[sinks.elasticsearch]`, e.g. `request_timeout_ms = 2000`.
    pub es_lines: String,
    /// Extra sections appended at the end, e.g. `[sinks.elasticsearch.dead_letter]`.
    pub extra: String,
}

/// `config/movies.toml` (read from the repository) for a test: `[source]` points at `db` (its
/// database, slot and publication; no password), `[snapshot]` gets `state_dir`, the
/// Elasticsearch URL is `es_url`, the index `movies` becomes `index` (its `mapping_file` the
/// absolute [`mapping_file`]), plus `[metrics] listen = "127.0.0.1:0"`, a debug log and short
/// retry delays. The document rule (query, dependents) is the shipped one, untouched. Panics if
/// a line it must replace is not found exactly once (the shipped file changed shape).
pub fn movies_config(db: &TestDb, es_url: &str, index: &str, state_dir: &Path, opts: &MoviesOptions) -> String {
    let path = repo_root().join("config/movies.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mapping = mapping_file();
    assert!(mapping.is_file(), "the v2 index definition is not at {} (set WALCAST_MOVIES_INDEX_JSON)", mapping.display());
    let mapping = mapping.canonicalize().expect("canonical mapping path");

    let mut out = String::new();
    let mut section = String::new();
    let mut in_string = false;
    let mut replaced: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        if in_string {
            in_string = line.matches("\"\"\"").count() % 2 == 0;
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(|c| c == '[' || c == ']').to_string();
            if section == "sinks.elasticsearch.indexes.movies" {
                let _ = writeln!(out, "[sinks.elasticsearch.indexes.{}]", toml_str(index));
                *replaced.entry("indexes.movies".into()).or_default() += 1;
                continue;
            }
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let key = trimmed.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        let value = match (section.as_str(), key) {
            ("source", "host") => Some(toml_str(&db.url.host)),
            ("source", "port") => Some(db.url.port.to_string()),
            ("source", "database") => Some(toml_str(&db.url.database)),
            ("source", "user") => Some(toml_str(&db.url.user)),
            ("source", "slot") => Some(toml_str(&db.slot)),
            ("source", "publication") => Some(toml_str(&db.publication)),
            ("source", "password_env" | "password_file") => Some(String::new()),
            ("snapshot", "mode") => Some(toml_str(opts.snapshot_mode.unwrap_or("initial"))),
            ("sinks.elasticsearch", "url") => Some(toml_str(es_url)),
            ("sinks.elasticsearch.indexes.movies", "mapping_file") => Some(toml_str(&mapping.to_string_lossy())),
            ("sinks.elasticsearch.documents", "index") => Some(toml_str(index)),
            _ => None,
        };
        match value {
            Some(v) => {
                *replaced.entry(format!("{section}.{key}")).or_default() += 1;
                if !v.is_empty() {
                    let _ = writeln!(out, "{key} = {v}");
                }
                match (section.as_str(), key) {
                    ("source", "publication") => out.push_str("status_interval_ms = 200\n"),
                    ("snapshot", "mode") => {
                        let _ = writeln!(out, "state_dir = {}", toml_str(&state_dir.to_string_lossy()));
                        if let Some(n) = opts.chunk_rows {
                            let _ = writeln!(out, "chunk_rows = {n}");
                        }
                    }
                    ("sinks.elasticsearch", "url") => {
                        out.push_str(&opts.es_lines);
                        out.push('\n');
                    }
                    _ => {}
                }
            }
            None => {
                in_string = line.matches("\"\"\"").count() % 2 == 1;
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for key in [
        "source.host",
        "source.port",
        "source.database",
        "source.user",
        "source.slot",
        "source.publication",
        "snapshot.mode",
        "sinks.elasticsearch.url",
        "indexes.movies",
        "sinks.elasticsearch.indexes.movies.mapping_file",
        "sinks.elasticsearch.documents.index",
    ] {
        assert_eq!(replaced.get(key).copied(), Some(1), "{}: expected exactly one `{key}` to replace", path.display());
    }
    let _ = write!(
        out,
        "\n[retry]\ninitial_ms = 50\nmax_ms = 1000\n\n[log]\nlevel = \"walcast=debug\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{}\n",
        opts.extra
    );
    out
}

/// A `walcast run` (not started) with [`movies_config`]: config, log and `state/` (the
/// snapshot's `state_dir`) in the runner's temporary directory.
pub fn movies_walcast(db: &TestDb, es_url: &str, index: &str, opts: &MoviesOptions) -> Walcast {
    let wc = Walcast::new(db);
    let state = state_dir(&wc);
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(&wc.config_path, movies_config(db, es_url, index, &state, opts)).expect("write config");
    wc
}

/// The snapshot `state_dir` of a [`movies_walcast`].
pub fn state_dir(wc: &Walcast) -> PathBuf {
    wc.config_path.parent().expect("config dir").join("state")
}

/// The snapshot progress file of `wc` (`snapshot-SLOT.json`), parsed, if it exists and is
/// complete (it is replaced atomically, so a read never sees half a file).
pub fn snapshot_state(wc: &Walcast, db: &TestDb) -> Option<Value> {
    read_snapshot_state(&state_dir(wc), &db.slot)
}

/// Database, index and walcast for one test: a fresh database with the movies dataset loaded,
/// no index of that name on `es_url`.
pub async fn movies_db(test: &str, es_url: &str, index: &str) -> TestDb {
    movies_db_on(&pg_url(), test, es_url, index).await
}

/// [`movies_db`] on another cluster (the chaos cluster).
pub async fn movies_db_on(server: &PgUrl, test: &str, es_url: &str, index: &str) -> TestDb {
    let es = Es::new(es_url);
    es.drop_leftovers().await;
    es.delete_index(index).await;
    let db = TestDb::create_on(server, test).await;
    load_movies(&db.url.to_url());
    db
}

/// `_source` of the documents `ids` (after `_refresh`; realtime `_mget`), absent ones left out.
pub async fn fetch_ids(es_url: &str, index: &str, ids: &[String]) -> BTreeMap<String, Value> {
    let es = Es::new(es_url);
    es.refresh(index).await;
    let (s, v) = es.request(reqwest::Method::POST, &format!("/{index}/_mget"), Some(json!({ "ids": ids }))).await;
    assert_eq!(s, 200, "_mget {index}: {v}");
    v["docs"]
        .as_array()
        .map(|docs| {
            docs.iter()
                .filter(|d| d["found"] == json!(true))
                .map(|d| (d["_id"].as_str().unwrap_or("").to_string(), d["_source"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids whose expected document differs between `before` and `after` (changed, added, removed).
pub fn changed_ids(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) -> Vec<String> {
    let ids: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    ids.into_iter().filter(|id| before.get(*id) != after.get(*id)).cloned().collect()
}

/// Poll (each time `_refresh`, then every document) until the index holds exactly `expected`;
/// returns how long it took. Panics after `timeout` with [`diff`] and the walcast log tail.
pub async fn wait_index_equals(
    es_url: &str,
    index: &str,
    expected: &BTreeMap<String, Value>,
    timeout: Duration,
    wc: &Walcast,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let actual = fetch_all(es_url, index).await;
        let d = diff(expected, &actual);
        if d.is_empty() {
            return started.elapsed();
        }
        if started.elapsed() >= timeout {
            panic!("{what}: the index {index} does not equal the expectation after {timeout:?}:\n{}\n{}", d.join("\n"), wc.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The expectation recomputed from SQL, then [`wait_index_equals`]; returns the expectation.
pub async fn assert_index_matches_sql(
    client: &Client,
    es_url: &str,
    index: &str,
    timeout: Duration,
    wc: &Walcast,
    what: &str,
) -> BTreeMap<String, Value> {
    let expected = expected_documents(client).await;
    wait_index_equals(es_url, index, &expected, timeout, wc, what).await;
    expected
}

/// One text value from SQL (first column of the first row).
pub async fn sql_text(client: &Client, sql: &str) -> String {
    query_text(client, sql).await.unwrap_or_else(|| panic!("no value from {sql}"))
}
