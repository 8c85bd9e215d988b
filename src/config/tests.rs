use super::*;

const MINIMAL: &str = r#"
[source]
host = "127.0.0.1"
database = "app"
user = "walcast"
tables = ["public.orders", "shop.*"]

[sinks.jsonl]
path = "-"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.source.port, SourceConfig::DEFAULT_PORT);
    assert_eq!(c.source.slot, SourceConfig::DEFAULT_SLOT);
    assert_eq!(c.pipeline.batch_max_changes, PipelineConfig::DEFAULT_BATCH_MAX_CHANGES);
    assert_eq!(
        c.source.table_selectors(),
        vec![TableSelector::Table { schema: "public".into(), table: "orders".into() }, TableSelector::Schema("shop".into())]
    );
}

#[test]
fn unknown_field_is_named() {
    let text = MINIMAL.replace("user = \"walcast\"", "user = \"walcast\"\nslot_nmae = \"x\"");
    let err = parse(&text).expect_err("unknown field").to_string();
    assert!(err.contains("slot_nmae"), "{err}");
    assert!(err.contains("`source.slot_nmae`"), "{err}");
}

#[test]
fn invalid_values_name_their_field() {
    let cases = [
        (MINIMAL.replace("host = \"127.0.0.1\"", "host = \"\""), "source.host"),
        (MINIMAL.replace("database = \"app\"", "database = \"app\"\nslot = \"Bad-Name\""), "source.slot"),
        (MINIMAL.replace("\"shop.*\"", "\"shop\""), "source.tables[1]"),
        (format!("{MINIMAL}\n[pipeline]\nbatch_max_changes = 0\n"), "pipeline.batch_max_changes"),
        (MINIMAL.replace("[sinks.jsonl]\npath = \"-\"", ""), "sinks"),
        (format!("{MINIMAL}\n[retry]\ninitial_ms = 500\nmax_ms = 100\n"), "retry.max_ms"),
        (format!("{MINIMAL}\n[heartbeat]\nmode = \"table\"\ntable = \"nodot\"\n"), "heartbeat.table"),
    ];
    for (text, field) in cases {
        let err = parse(&text).expect_err(field).to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
    // Not used in message mode, so not checked there.
    assert!(parse(&format!("{MINIMAL}\n[heartbeat]\ntable = \"nodot\"\n")).is_ok());
}

#[test]
fn wrong_type_names_the_field() {
    let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = \"h\"\nport = \"x\"");
    let err = parse(&text).expect_err("wrong type").to_string();
    assert!(err.contains("port"), "{err}");
    assert!(err.contains("`source.port`") && err.contains("line 4"), "{err}");
}

#[test]
fn password_never_in_debug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pg-pw");
    std::fs::write(&file, "hunter2\n").expect("write");
    let text = MINIMAL.replace("user = \"walcast\"", &format!("user = \"walcast\"\npassword_file = {:?}", file.display().to_string()));
    let c = parse(&text).expect("valid");
    let password = c.source.password().expect("set").expect("some");
    assert_eq!(password.expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!format!("{password:?}").contains("hunter2"));
}

/// A parse error names the field it is about, in any section.
#[test]
fn parse_errors_name_nested_fields() {
    let text = "[a]\nb = 1\n[[c.d]]\ne = 1\n[[c.d]]\ne = 2\n";
    let at = text.rfind('2').expect("value");
    assert_eq!(field_at(text, at).as_deref(), Some("c.d[1].e"));
    let text = "[sinks.kafka.tables.\"public.x\"]\ntopic = \"t\"\n";
    assert_eq!(field_at(text, text.find("\"public").expect("key")).as_deref(), Some("sinks.kafka.tables.\"public.x\""));
    assert_eq!(field_at(text, 0), None);
}

/// The shipped example must stay a valid, complete config.
#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/walcast.example.toml");
    let c = Config::load(&path).expect("config/walcast.example.toml is valid");
    assert_eq!(c.source.tables.len(), 3);
    assert!(c.sinks.jsonl.is_some());
}

#[test]
fn messages_and_heartbeat_records_follow_the_sinks_and_the_log() {
    let kafka = "[sinks.kafka]\nbootstrap_servers = \"a:9092\"\n";
    let c = parse(MINIMAL).expect("valid");
    assert!(!c.carries_messages(), "no Kafka sink: messages are dropped");
    let c = parse(&format!("{MINIMAL}{kafka}")).expect("valid");
    assert!(!c.carries_messages() && !c.kafka_heartbeat_records());
    let c = parse(&format!("{MINIMAL}{kafka}[heartbeat]\ninterval_ms = 500\n")).expect("valid");
    assert!(c.carries_messages() && c.kafka_heartbeat_records(), "heartbeat records need the heartbeat messages");
    let c = parse(&format!("{MINIMAL}{kafka}heartbeat_records = false\n[heartbeat]\ninterval_ms = 500\n")).expect("valid");
    assert!(!c.carries_messages());
    let c = parse(&format!("{MINIMAL}{kafka}[heartbeat]\ninterval_ms = 500\nmode = \"table\"\n")).expect("valid");
    assert!(!c.kafka_heartbeat_records(), "a table heartbeat is a row, not a message");
    assert!(parse(&format!("{MINIMAL}{kafka}messages = true\n")).expect("valid").carries_messages());
    match parse(&format!("{MINIMAL}{kafka}messages = true\n[changelog]\nack = \"decoupled\"\n")) {
        Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "sinks.kafka.messages"),
        other => panic!("decoupled sinks never see messages: {other:?}"),
    }
}
