//! Kafka: the broker from `scripts/test-env` (`WALCAST_TEST_KAFKA`, tansu), a private tansu or
//! noida-db broker for tests that stall the broker, a consumer that collects records, the `[sinks.kafka]` config
//! section, and the Debezium field list every envelope is checked against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// The broker `scripts/test-env` started.
pub fn bootstrap() -> String {
    match std::env::var("WALCAST_TEST_KAFKA") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("WALCAST_TEST_KAFKA is not set: run `eval \"$(scripts/test-env)\"` first (or use scripts/test)"),
    }
}

/// Which broker a [`PrivateBroker`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// tansu 0.6 (`scripts/kafka-broker bin`), in-memory: the broker of every other Kafka test.
    /// Its Fetch carries no aborted-transaction list, so `read_committed` consumers read aborted
    /// records too.
    Tansu,
    /// noida-db's Kafka service (`scripts/es-server bin noida`, the pinned wheel that also serves
    /// the ES-API tests), state in a data dir: transactional producers are fenced by epoch,
    /// `init_transactions` aborts what an earlier instance left open, and `read_committed`
    /// fetches stop at the last stable offset and skip aborted transactions.
    Noida,
    /// A broker this test did not start (e.g. Apache Kafka): `WALCAST_TEST_KAFKA_EOS_BOOTSTRAP`
    /// (`host:port`) and `WALCAST_TEST_KAFKA_EOS_PID`, the process the stall pauses.
    External,
}

impl BrokerKind {
    /// The broker of the exactly-once crash test: `WALCAST_TEST_KAFKA_EOS_BROKER` (`noida`, the
    /// default, `tansu` or `external`).
    pub fn eos() -> Self {
        match std::env::var("WALCAST_TEST_KAFKA_EOS_BROKER").as_deref() {
            Ok("tansu") => Self::Tansu,
            Ok("external") => Self::External,
            Ok("noida") | Ok("") | Err(_) => Self::Noida,
            Ok(other) => panic!("WALCAST_TEST_KAFKA_EOS_BROKER={other}: use noida, tansu or external"),
        }
    }
}

/// A private broker on a free port, for tests that stop or pause the broker: the shared one of
/// `scripts/test-env` is used by other tests at the same time and is never paused. Killed when
/// dropped.
pub struct PrivateBroker {
    pub port: u16,
    pub kind: BrokerKind,
    /// The broker process (`None`: external).
    child: Option<Child>,
    /// The process `pause` and `resume` signal.
    pid: u32,
    pub log: PathBuf,
}

impl PrivateBroker {
    /// Start tansu on a free port, its log in `dir`; returns once it accepts connections.
    pub fn start(dir: &Path) -> Self {
        Self::start_kind(dir, BrokerKind::Tansu)
    }

    /// Start a broker of `kind` on a free port, its log (and noida-db's data) in `dir`; returns
    /// once it accepts connections.
    pub fn start_kind(dir: &Path, kind: BrokerKind) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (script, arg) = match kind {
            BrokerKind::Tansu => ("scripts/kafka-broker", vec!["bin"]),
            BrokerKind::Noida => ("scripts/es-server", vec!["bin", "noida"]),
            BrokerKind::External => return Self::external(dir),
        };
        let out = Command::new("bash").arg(root.join(script)).args(&arg).output().unwrap_or_else(|e| panic!("run {script}: {e}"));
        assert!(out.status.success(), "{script} {arg:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let log = dir.join(format!("{kind:?}.log").to_lowercase());
        let file = std::fs::File::create(&log).expect("broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let data = dir.join("noida-kafka");
        let args: Vec<String> = match kind {
            BrokerKind::Tansu => {
                ["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]
                    .map(String::from)
                    .to_vec()
            }
            BrokerKind::External => unreachable!("returned above"),
            BrokerKind::Noida => vec![
                "start".into(),
                "--only".into(),
                "kafka".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--kafka-port".into(),
                port.to_string(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        };
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let pid = child.id();
        let mut this = Self { port, kind, child: Some(child), pid, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let running = this.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            assert!(running, "private {kind:?} broker exited at start: {}", this.log_text());
            assert!(Instant::now() < deadline, "private {kind:?} broker did not listen on {port} within 20 s: {}", this.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        this
    }

    fn external(dir: &Path) -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("WALCAST_TEST_KAFKA_EOS_BROKER=external needs {name}"));
        let bootstrap = var("WALCAST_TEST_KAFKA_EOS_BOOTSTRAP");
        let port =
            bootstrap.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("WALCAST_TEST_KAFKA_EOS_BOOTSTRAP is 127.0.0.1:PORT");
        let pid = var("WALCAST_TEST_KAFKA_EOS_PID").parse().expect("WALCAST_TEST_KAFKA_EOS_PID is a process id");
        Self { port, kind: BrokerKind::External, child: None, pid, log: dir.join("external-broker.log") }
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{sig} of the private broker failed");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // A paused process dies of SIGKILL all the same.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `[sinks.kafka]` section for the test config (`Options.extra`), plus `extra` lines inside it.
pub fn kafka_section(bootstrap: &str, prefix: &str, extra: &str) -> String {
    format!("[sinks.kafka]\nbootstrap_servers = \"{bootstrap}\"\nprefix = \"{prefix}\"\n{extra}\n")
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct KRec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The key parsed as JSON (`None`: null key).
    pub key: Option<Value>,
    /// The key bytes.
    pub key_raw: Option<Vec<u8>>,
    /// The value parsed as JSON (`None`: tombstone).
    pub value: Option<Value>,
    pub headers: BTreeMap<String, String>,
}

impl KRec {
    pub fn op(&self) -> Option<&str> {
        self.value.as_ref()?.get("op")?.as_str()
    }
    pub fn source(&self, field: &str) -> Option<&Value> {
        self.value.as_ref()?.get("source")?.get(field)
    }
}

static GROUP_SEQ: AtomicU32 = AtomicU32::new(0);

/// Collects records from a consumer (group or assigned partitions).
pub struct Collector {
    consumer: BaseConsumer,
    pub records: Vec<KRec>,
}

impl Collector {
    /// A consumer-group member (`session.timeout.ms=6000`, earliest offsets) subscribed to
    /// `topics`; topics that do not exist yet are picked up once created.
    pub fn group(bootstrap: &str, topics: &[&str]) -> Self {
        let group = format!("walcast-test-{}-{}", std::process::id(), GROUP_SEQ.fetch_add(1, Ordering::Relaxed));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &group)
            .set("session.timeout.ms", "6000")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set("fetch.wait.max.ms", "10")
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("create consumer");
        consumer.subscribe(topics).expect("subscribe");
        Self { consumer, records: Vec::new() }
    }

    /// A consumer reading partitions `0..partitions` of each topic from the start (no group).
    pub fn assigned(bootstrap: &str, topics: &[&str], partitions: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "walcast-test-assigned")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("create consumer");
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions {
                tpl.add_partition_offset(t, p, Offset::Beginning).expect("partition");
            }
        }
        consumer.assign(&tpl).expect("assign");
        Self { consumer, records: Vec::new() }
    }

    /// Poll for `dur`, collecting records.
    pub fn poll_for(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            self.poll_once(Duration::from_millis(50));
        }
    }

    fn poll_once(&mut self, timeout: Duration) -> bool {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => {
                let parse = |b: &[u8]| {
                    serde_json::from_slice::<Value>(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
                };
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(header.key.to_string(), String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned());
                    }
                }
                self.records.push(KRec {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(parse),
                    key_raw: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(parse),
                    headers,
                });
                true
            }
            // Unknown topics (not created yet), partition EOF and the like.
            Some(Err(_)) | None => false,
        }
    }

    /// Poll until `pred(records)` holds; panics after `timeout`.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&[KRec]) -> bool) {
        assert!(self.poll_until(timeout, pred), "timed out after {timeout:?} waiting for {what} ({} records)", self.records.len());
    }

    /// Poll until `pred(records)` holds or `timeout` passes; returns whether it holds.
    pub fn poll_until(&mut self, timeout: Duration, pred: impl Fn(&[KRec]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.records) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Check the predicate about every 200 records, not after each one.
            let mut got = 0;
            while got < 200 && self.poll_once(Duration::from_millis(50)) {
                got += 1;
            }
        }
    }

    /// Records of one topic, in partition/offset order.
    pub fn topic(&self, topic: &str) -> Vec<&KRec> {
        let mut v: Vec<&KRec> = self.records.iter().filter(|r| r.topic == topic).collect();
        v.sort_by_key(|r| (r.partition, r.offset));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The Debezium change event value, from Debezium's documentation of the PostgreSQL connector
// ("Data change events": the envelope of a create event, and the `source` fields of the
// PostgreSQL connector), as Kafka Connect's JSON converter writes it with schemas disabled.

/// JSON type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JType {
    /// A string.
    Str,
    /// An integer (int64 in the Connect schema).
    Int,
    /// An object or null (optional struct).
    ObjectOrNull,
    /// An object.
    Object,
    /// null or an integer (optional int64).
    IntOrNull,
    /// A string holding a JSON array (Debezium's `sequence`), or null.
    JsonArrayStringOrNull,
}

/// Envelope fields: `before` (optional row struct), `after` (optional row struct), `source`
/// (mandatory struct), `transaction` (optional struct, present as null when transaction metadata
/// is off), `op` (mandatory string: c, u, d, r, t), `ts_ms` (optional int64: when the connector
/// processed the event).
pub const ENVELOPE_FIELDS: &[(&str, JType)] = &[
    ("before", JType::ObjectOrNull),
    ("after", JType::ObjectOrNull),
    ("source", JType::Object),
    ("transaction", JType::ObjectOrNull),
    ("op", JType::Str),
    ("ts_ms", JType::Int),
];

/// `source` fields of the PostgreSQL connector: version (string), connector (string,
/// "postgresql"), name (string: the logical server name / topic prefix), ts_ms (int64: commit
/// time), snapshot (string: "true", "last", "false", ...), db (string), sequence (string: a JSON
/// array of the last commit LSN and the current LSN), schema (string), table (string), txId
/// (int64), lsn (int64), xmin (optional int64, null unless xmin tracking is on).
pub const SOURCE_FIELDS: &[(&str, JType)] = &[
    ("version", JType::Str),
    ("connector", JType::Str),
    ("name", JType::Str),
    ("ts_ms", JType::Int),
    ("snapshot", JType::Str),
    ("db", JType::Str),
    ("sequence", JType::JsonArrayStringOrNull),
    ("schema", JType::Str),
    ("table", JType::Str),
    ("txId", JType::Int),
    ("lsn", JType::Int),
    ("xmin", JType::IntOrNull),
];

/// `transaction` block fields (transaction metadata on): id (string), total_order (int64),
/// data_collection_order (int64).
pub const TRANSACTION_FIELDS: &[(&str, JType)] = &[("id", JType::Str), ("total_order", JType::Int), ("data_collection_order", JType::Int)];

fn type_ok(v: &Value, t: JType) -> bool {
    match t {
        JType::Str => v.is_string(),
        JType::Int => v.is_i64() || v.is_u64(),
        JType::ObjectOrNull => v.is_object() || v.is_null(),
        JType::Object => v.is_object(),
        JType::IntOrNull => v.is_null() || v.is_i64() || v.is_u64(),
        JType::JsonArrayStringOrNull => match v {
            Value::Null => true,
            Value::String(s) => serde_json::from_str::<Value>(s)
                .is_ok_and(|a| a.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.is_string() || x.is_null()))),
            _ => false,
        },
    }
}

fn check_fields(obj: &Value, fields: &[(&str, JType)], what: &str) -> Result<(), String> {
    let map = obj.as_object().ok_or_else(|| format!("{what} is not an object: {obj}"))?;
    for (name, t) in fields {
        match map.get(*name) {
            None => return Err(format!("{what}.{name} is missing (fields: {:?})", map.keys().collect::<Vec<_>>())),
            Some(v) if !type_ok(v, *t) => return Err(format!("{what}.{name} should be {t:?}, is {v}")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Check a record value against the documented Debezium fields (extra fields are allowed;
/// missing, renamed or mistyped ones are not).
pub fn check_debezium_envelope(v: &Value) -> Result<(), String> {
    check_fields(v, ENVELOPE_FIELDS, "value")?;
    check_fields(&v["source"], SOURCE_FIELDS, "value.source")?;
    let op = v["op"].as_str().unwrap_or("");
    if !["c", "u", "d", "r", "t"].contains(&op) {
        return Err(format!("value.op {op:?} is not one of c, u, d, r, t"));
    }
    if v["source"]["connector"] != "postgresql" {
        return Err(format!("value.source.connector is {}, not \"postgresql\"", v["source"]["connector"]));
    }
    if !["true", "false", "last", "first", "first_in_data_collection", "last_in_data_collection", "incremental"]
        .contains(&v["source"]["snapshot"].as_str().unwrap_or(""))
    {
        return Err(format!("value.source.snapshot {} is not a Debezium snapshot marker", v["source"]["snapshot"]));
    }
    if !v["transaction"].is_null() {
        check_fields(&v["transaction"], TRANSACTION_FIELDS, "value.transaction")?;
    }
    // The rows are present as the op says.
    let (before, after) = (&v["before"], &v["after"]);
    let shape_ok = match op {
        "c" | "r" => before.is_null() && after.is_object(),
        "u" => after.is_object(),
        "d" => after.is_null(),
        "t" => before.is_null() && after.is_null(),
        _ => false,
    };
    if !shape_ok {
        return Err(format!("op {op} with before {before} and after {after}"));
    }
    Ok(())
}
