use std::path::Path;

use super::super::Config;
use super::*;

const ES_ONLY: &str = r#"
[source]
host = "127.0.0.1"
database = "app"
user = "walcast"

[sinks.elasticsearch]
url = "http://127.0.0.1:9200"

[[sinks.elasticsearch.tables]]
table = "public.orders"
index = "orders"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn elasticsearch_alone_is_a_sink_and_gets_defaults() {
    let c = parse(ES_ONLY).expect("valid");
    let es = c.sinks.elasticsearch.expect("es");
    assert_eq!(es.request_timeout_ms, ElasticsearchSinkConfig::DEFAULT_REQUEST_TIMEOUT_MS);
    assert_eq!(es.bulk_max_actions, ElasticsearchSinkConfig::DEFAULT_BULK_MAX_ACTIONS);
    assert!(es.create_indexes && !es.gzip);
    let rule = &es.tables[0];
    assert_eq!(rule.ops, default_es_ops());
    assert_eq!(rule.truncate, EsTruncate::Ignore);
    assert!(rule.include.is_none() && rule.exclude.is_empty() && rule.rename.is_empty());
    assert_eq!(es.auth().expect("auth"), EsAuth::None);
    assert_eq!(es.all_indexes(), vec!["orders".to_string()]);
}

#[test]
fn invalid_values_name_their_field() {
    let cases = [
        ("url = \"localhost:9200\"", "sinks.elasticsearch.url"),
        ("url = \"http://u:p@h:9200\"", "sinks.elasticsearch.url"),
        ("username = \"u\"", "sinks.elasticsearch.password_env"),
        ("password_env = \"X\"", "sinks.elasticsearch.username"),
        ("api_key_env = \"K\"\nusername = \"u\"\npassword_env = \"X\"", "sinks.elasticsearch.api_key_env"),
        ("ca_file = \"ca.pem\"", "sinks.elasticsearch.ca_file"),
        ("bulk_max_actions = 0", "sinks.elasticsearch.bulk_max_actions"),
        ("request_timeout_ms = 1", "sinks.elasticsearch.request_timeout_ms"),
        ("[sinks.elasticsearch.dead_letter]", "sinks.elasticsearch.dead_letter"),
        ("[sinks.elasticsearch.dead_letter]\nindex = \"orders\"", "sinks.elasticsearch.dead_letter.index"),
        ("[sinks.elasticsearch.dead_letter]\nindex = \"Bad\"", "sinks.elasticsearch.dead_letter.index"),
        ("[sinks.elasticsearch.indexes.\"_x\"]\nmapping_file = \"m.json\"", "sinks.elasticsearch.indexes.\"_x\""),
        ("[[sinks.elasticsearch.tables]]\ntable = \"orders\"\nindex = \"o\"", "sinks.elasticsearch.tables[1].table"),
        ("[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"O\"", "sinks.elasticsearch.tables[1].index"),
        (
            "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nid_columns = []",
            "sinks.elasticsearch.tables[1].id_columns",
        ),
        ("[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nops = []", "sinks.elasticsearch.tables[1].ops"),
        (
            "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\ninclude = [\"a\"]\nexclude = [\"a\"]",
            "sinks.elasticsearch.tables[1].exclude",
        ),
        (
            "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nrename = { a = \"x\", b = \"x\" }",
            "sinks.elasticsearch.tables[1].rename.\"b\"",
        ),
        (
            "[[sinks.elasticsearch.tables]]\ntable = \"public.o\"\nindex = \"o\"\nrename = { a = \"_id\" }",
            "sinks.elasticsearch.tables[1].rename.\"a\"",
        ),
    ];
    for (extra, field) in cases {
        let text = if extra.starts_with('[') {
            format!("{ES_ONLY}{extra}\n")
        } else if extra.starts_with("url") {
            ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", extra)
        } else {
            ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", &format!("url = \"http://127.0.0.1:9200\"\n{extra}"))
        };
        let err = parse(&text).expect_err(field).to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
    let err = parse(&ES_ONLY.replace("index = \"orders\"", "index = \"orders\"\nops = [\"upsert\"]")).expect_err("op").to_string();
    assert!(err.contains("upsert"), "{err}");
    let err = parse(&ES_ONLY.replace("index = \"orders\"", "index = \"orders\"\ntruncate = \"drop\"")).expect_err("truncate").to_string();
    assert!(err.contains("drop"), "{err}");
}

#[test]
fn secrets_never_in_debug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("es-pw");
    std::fs::write(&pw, "es-hunter2\n").expect("write");
    let text = ES_ONLY.replace(
        "url = \"http://127.0.0.1:9200\"",
        &format!("url = \"http://127.0.0.1:9200\"\nusername = \"elastic\"\npassword_file = {:?}", pw.display().to_string()),
    );
    let c = parse(&text).expect("valid");
    let es = c.sinks.elasticsearch.as_ref().expect("es");
    let auth = es.auth().expect("auth");
    assert_eq!(auth, EsAuth::Basic { username: "elastic".into(), password: "es-hunter2".into() });
    assert!(!format!("{auth:?}").contains("es-hunter2"));
    assert!(!format!("{c:?}").contains("es-hunter2"));
    let key = dir.path().join("es-key");
    std::fs::write(&key, "key-hunter3").expect("write");
    let text = ES_ONLY.replace(
        "url = \"http://127.0.0.1:9200\"",
        &format!("url = \"http://127.0.0.1:9200\"\napi_key_file = {:?}", key.display().to_string()),
    );
    let c = parse(&text).expect("valid");
    let auth = c.sinks.elasticsearch.as_ref().expect("es").auth().expect("auth");
    assert_eq!(auth, EsAuth::ApiKey("key-hunter3".into()));
    assert!(!format!("{auth:?}").contains("key-hunter3"));
}

/// The commented `[sinks.elasticsearch]` block of the shipped example, uncommented, is valid
/// and shows every field of the Elasticsearch config.
#[test]
fn example_elasticsearch_section_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walcast.example.toml");
    let text = std::fs::read_to_string(&path).expect("example config");
    let mut out = String::new();
    let mut in_es = false;
    for line in text.lines() {
        if line.starts_with("#[sinks.elasticsearch]") {
            in_es = true;
        } else if line.trim().is_empty() {
            in_es = false;
        }
        match line.strip_prefix('#') {
            Some(rest) if in_es && !rest.starts_with('#') => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let c = Config::parse(&out, &path).expect("uncommented example is valid");
    let es = c.sinks.elasticsearch.expect("elasticsearch section");
    assert_eq!(es.url, "https://es.example.internal:9200");
    assert!(
        es.indexes.contains_key(&IndexPattern::from(IndexName::parse("orders").expect("index name")))
            && es.dead_letter.is_some()
            && es.tables.len() == 1
    );
    assert_eq!((es.refresh, es.refresh_of("orders")), (EsRefresh::False, EsRefresh::WaitFor));
    let rule = &es.tables[0];
    assert_eq!(rule.rename.get("total").map(String::as_str), Some("amount"));
    let doc = es.documents.first().expect("a document rule");
    assert_eq!((doc.name.as_str(), doc.dependents.len()), ("orders_with_lines", 2));
    assert!(doc.query.contains("ANY($1)"));
    for field in ["name", "root_key", "document_id", "max_ids", "query", "root_id_column", "key_column", "root_ids_query"] {
        assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.elasticsearch.documents[].{field}");
    }
    for field in [
        "url",
        "username",
        "password_env",
        "ca_file",
        "gzip",
        "request_timeout_ms",
        "connect_timeout_ms",
        "bulk_max_actions",
        "bulk_max_bytes",
        "create_indexes",
        "mapping_file",
        "refresh",
        "table",
        "index",
        "id_columns",
        "include",
        "exclude",
        "rename",
        "ops",
        "truncate",
        "path",
    ] {
        assert!(text.contains(&format!("\n#{field} = ")), "the example does not show sinks.elasticsearch.{field}");
    }
    for field in ["password_file", "api_key_env"] {
        assert!(text.contains(&format!("\n## {field} = ")), "the example does not mention sinks.elasticsearch.{field}");
    }
}

#[test]
fn invalid_document_rules_name_their_field() {
    const DOC_RULE: &str = "[[sinks.elasticsearch.documents]]\nname = \"films\"\nindex = \"films\"\ntable = \"public.f\"\nroot_key = \"id\"\nquery = \"SELECT id FROM public.f WHERE id = ANY($1)\"\n";
    assert!(parse(&format!("{ES_ONLY}{DOC_RULE}")).is_ok());
    let cases: Vec<(String, &str)> = vec![
        (DOC_RULE.replace("ANY($1)", "ANY($2)"), "sinks.elasticsearch.documents[0].query"),
        (DOC_RULE.replace("name = \"films\"", "name = \"\""), "sinks.elasticsearch.documents[0].name"),
        (DOC_RULE.replace("index = \"films\"", "index = \"orders\""), "sinks.elasticsearch.documents[0].index"),
        (format!("{DOC_RULE}[[sinks.elasticsearch.documents.dependents]]\ntable = \"public.l\"\n"), "sinks.elasticsearch.documents[0].dependents[0].root_id_column"),
        (
            format!("{DOC_RULE}[[sinks.elasticsearch.documents.dependents]]\ntable = \"public.p\"\nroot_ids_query = \"SELECT 1 WHERE 2 = ANY($1)\"\n"),
            "sinks.elasticsearch.documents[0].dependents[0].key_column",
        ),
        (format!("{DOC_RULE}max_ids = 0\n"), "sinks.elasticsearch.documents[0].max_ids"),
    ];
    for (extra, field) in cases {
        let err = parse(&format!("{ES_ONLY}{extra}")).expect_err(field).to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn refresh_default_and_per_index() {
    let es = parse(ES_ONLY).expect("valid").sinks.elasticsearch.expect("es");
    assert_eq!((es.refresh, es.refresh_of("orders")), (EsRefresh::False, EsRefresh::False));
    let text = ES_ONLY.replace(
        "url = \"http://127.0.0.1:9200\"",
        "url = \"http://127.0.0.1:9200\"\nrefresh = \"wait_for\"\n[sinks.elasticsearch.indexes.tiny]\nrefresh = true\n[sinks.elasticsearch.indexes.bulk]\nrefresh = \"false\"\nmapping_file = \"bulk.json\"\n",
    );
    let es = parse(&text).expect("valid").sinks.elasticsearch.expect("es");
    assert_eq!(es.refresh, EsRefresh::WaitFor);
    assert_eq!(es.refresh_of("orders"), EsRefresh::WaitFor, "no own setting: the sink-wide one");
    assert_eq!(es.refresh_of("tiny"), EsRefresh::True, "a TOML boolean is accepted");
    assert_eq!(es.refresh_of("bulk"), EsRefresh::False);
    for (value, want) in
        [("false", EsRefresh::False), ("\"false\"", EsRefresh::False), ("true", EsRefresh::True), ("\"true\"", EsRefresh::True)]
    {
        let text = ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", &format!("url = \"http://127.0.0.1:9200\"\nrefresh = {value}"));
        assert_eq!(parse(&text).expect("valid").sinks.elasticsearch.expect("es").refresh, want, "{value}");
    }
    assert!(EsRefresh::False < EsRefresh::WaitFor && EsRefresh::WaitFor < EsRefresh::True);
}

#[test]
fn refresh_errors_name_the_field() {
    for (extra, field) in [
        ("refresh = \"wait\"", "refresh"),
        ("refresh = 1", "refresh"),
        ("[sinks.elasticsearch.indexes.tiny]\nrefresh = \"immediate\"", "refresh"),
        ("[sinks.elasticsearch.indexes.tiny]\n", "sinks.elasticsearch.indexes.\"tiny\""),
    ] {
        let text = ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", &format!("url = \"http://127.0.0.1:9200\"\n{extra}"));
        let err = parse(&text).expect_err(extra).to_string();
        assert!(err.contains(field), "{extra}: {err}");
    }
    let text = ES_ONLY.replace("url = \"http://127.0.0.1:9200\"", "url = \"http://127.0.0.1:9200\"\nrefresh = \"wait\"");
    let err = parse(&text).expect_err("bad value").to_string();
    assert!(err.contains("wait_for"), "the error lists the values: {err}");
}

#[test]
fn time_based_indexes_are_checked_at_load() {
    let with =
        |rule: &str, more: &str| parse(&format!("{ES_ONLY}\n[[sinks.elasticsearch.tables]]\ntable = \"public.readings\"\n{rule}\n{more}"));
    let c = with(
        "index = \"telemetry-{column:ts:%Y.%m.%d}\"",
        "[sinks.elasticsearch.indexes.\"telemetry-{column:ts:%Y.%m.%d}\"]\nmapping_file = \"m.json\"\nrefresh = \"wait_for\"",
    )
    .expect("valid");
    let es = c.sinks.elasticsearch.expect("es");
    assert_eq!(es.all_indexes(), ["orders"], "patterns are not index names");
    assert_eq!(es.index_patterns().iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["telemetry-{column:ts:%Y.%m.%d}"]);
    assert_eq!(es.refresh_of("telemetry-2026.03.07"), EsRefresh::WaitFor, "a pattern's refresh applies to its indexes");
    assert_eq!(es.refresh_of("orders"), EsRefresh::False);

    let err = |rule: &str| with(rule, "").expect_err(rule).to_string();
    let e = err("index = \"telemetry-{commit_date:%Y.%m.%d}\"");
    assert!(e.contains("sinks.elasticsearch.tables[1].ops") && e.contains("append-only"), "{e}");
    with("index = \"telemetry-{commit_date:%Y.%m.%d}\"\nops = [\"insert\", \"truncate\"]", "").expect("append-only");
    let e = err("index = \"telemetry-{commit_date:%Y.%b}\"");
    assert!(e.contains("sinks.elasticsearch.tables[1].index") && e.contains("%b is not supported"), "{e}");
    let e = err("index = \"Telemetry-{column:ts:%Y}\"");
    assert!(e.contains("sinks.elasticsearch.tables[1].index"), "{e}");
    // A document rule or the dead-letter index must not be one of a pattern's names.
    let e = with("index = \"orders-{column:ts:%Y}\"", "[sinks.elasticsearch.dead_letter]\nindex = \"orders-2026\"")
        .expect_err("dlq")
        .to_string();
    assert!(e.contains("sinks.elasticsearch.dead_letter.index"), "{e}");
}

#[test]
fn the_telemetry_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/telemetry.toml");
    let c = Config::parse(&std::fs::read_to_string(&path).expect("config/telemetry.toml"), &path).expect("valid");
    let es = c.sinks.elasticsearch.expect("es");
    assert_eq!(es.index_patterns().iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["telemetry-{column:ts:%Y.%m.%d}"]);
    assert_eq!(es.all_indexes(), ["devices", "walcast-telemetry-dead-letters"]);
    for file in ["sql/telemetry/readings-index.json", "sql/telemetry/devices-index.json"] {
        let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect(file);
        serde_json::from_slice::<serde_json::Value>(&text).expect(file);
    }
}
