//! Kafka sink benchmark against the real Postgres and broker of `scripts/test-env` (tansu, or
//! noida-db's Kafka service with `WALCAST_BENCH_KAFKA_BROKER=noida`, scripts/bench-kafka):
//!
//! 1. Throughput: one INSERT transaction of WALCAST_BENCH_KAFKA_ROWS rows (200,000) on
//!    `bench_rows`, drained by the release `walcast run` with the Kafka sink, then the same with
//!    the JSON-lines sink writing to /dev/null, each on a fresh slot and connected before the
//!    workload. Time = commit returned -> walcast's slot confirmed the commit end LSN, which the
//!    Kafka sink allows only once every record's delivery report is positive.
//! 2. Latency at half the Kafka throughput just measured: transactions of rows every 10 ms for
//!    WALCAST_BENCH_KAFKA_LATENCY_SECS (10) seconds; a consumer-group member reads every record
//!    and takes now - `source.ts_us` (the Postgres commit timestamp). Commit -> consumer receipt
//!    is an upper bound of commit -> delivery report (the broker acknowledges a record before a
//!    consumer can fetch it).
//!
//! 3. Both again with `exactly_once = true` (a transactional producer, one Kafka transaction per
//!    batch), the latency run at the same rate as the at-least-once one.
//!
//! Goals: >= 30,000 rows/s into the broker; p99 < 100 ms at half that rate; exactly-once at
//! least half the at-least-once rate. A
//! measurement: exits 0 with MISSED printed when a goal is missed, non-zero only when it could
//! not measure. Run it through `scripts/bench-kafka`. Knobs (environment):
//!   WALCAST_TEST_PG, WALCAST_TEST_KAFKA  set by scripts/test-env
//!   WALCAST_BIN                          walcast binary, default target/release/walcast
//!   WALCAST_BENCH_KAFKA_ROWS             rows in the throughput transaction (200000)
//!   WALCAST_BENCH_KAFKA_LATENCY_SECS     duration of the latency run (10)

mod setup;

use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use setup::{connect, create_bench_db, drop_bench_db, drop_slot, env_num, stop, wait_active, Target};
use tokio::process::Child;
use tokio_postgres::Client;

const DB: &str = "walcast_bench_kafka";
const PUBLICATION: &str = "bench_kafka_pub";
const SLOT_PREFIX: &str = "bench_kafka_";
const STATUS_INTERVAL_MS: u64 = 50;
const POLL: Duration = Duration::from_millis(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
const LATENCY_TICK: Duration = Duration::from_millis(10);

const GOAL_ROWS_PER_SEC: f64 = 30_000.0;
const GOAL_P99_MS: f64 = 100.0;

fn main() -> ExitCode {
    setup::run("kafka", bench)
}

struct Env {
    pg: Target,
    kafka: String,
    rows: u64,
    latency_secs: u64,
    tmp: tempfile::TempDir,
    /// Makes topic names unique per bench run (the broker keeps topics while it runs).
    run_id: String,
}

impl Env {
    fn load() -> Result<Self> {
        let pg = Target::from_env("scripts/bench-kafka")?;
        let kafka = std::env::var("WALCAST_TEST_KAFKA")
            .map_err(|_| anyhow!("WALCAST_TEST_KAFKA is not set: run scripts/bench-kafka, or eval \"$(scripts/test-env)\" first"))?;
        Ok(Self {
            pg,
            kafka,
            rows: env_num("WALCAST_BENCH_KAFKA_ROWS", 200_000)?.max(1),
            latency_secs: env_num("WALCAST_BENCH_KAFKA_LATENCY_SECS", 10)?.max(1),

            tmp: tempfile::Builder::new().prefix("walcast-bench-kafka").tempdir().context("temp dir")?,
            run_id: format!("{}", SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SinkKind {
    Kafka,
    KafkaExactlyOnce,
    Jsonl,
}

impl SinkKind {
    fn label(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::KafkaExactlyOnce => "kafka exactly_once",
            SinkKind::Jsonl => "jsonl (/dev/null)",
        }
    }
}

async fn bench() -> Result<()> {
    let env = Env::load()?;
    let admin = connect(&env.pg.admin_url).await?;
    drop_bench_db(&admin, DB, Some(SLOT_PREFIX)).await.context("remove what an earlier run left")?;
    let result = async {
        let db = create_bench_db(&admin, &env.pg, DB, PUBLICATION).await?;

        let mut rates = Vec::new();
        for kind in [SinkKind::Kafka, SinkKind::KafkaExactlyOnce, SinkKind::Jsonl] {
            eprintln!("kafka bench: {} throughput run ({} rows) ...", kind.label(), env.rows);
            let secs = throughput_run(&env, &admin, &db, kind).await.with_context(|| format!("{} throughput", kind.label()))?;
            eprintln!("kafka bench: {}: {:.2} s, {:.0} rows/s", kind.label(), secs, env.rows as f64 / secs);
            rates.push((kind, secs));
        }
        let kafka_rate = env.rows as f64 / rates[0].1;
        let target_rate = (kafka_rate / 2.0).max(100.0);
        eprintln!("kafka bench: latency run at {target_rate:.0} rows/s for {} s ...", env.latency_secs);
        let latency = latency_run(&env, &admin, &db, target_rate, SinkKind::Kafka).await.context("latency run")?;
        eprintln!("kafka bench: exactly_once latency run at {target_rate:.0} rows/s for {} s ...", env.latency_secs);
        let latency_eos =
            latency_run(&env, &admin, &db, target_rate, SinkKind::KafkaExactlyOnce).await.context("exactly_once latency run")?;
        Ok::<_, anyhow::Error>((rates, target_rate, [latency, latency_eos]))
    }
    .await;
    let cleaned = drop_bench_db(&admin, DB, Some(SLOT_PREFIX)).await;
    let (rates, target_rate, [latency, latency_eos]) = result?;
    cleaned.context("clean up")?;

    // Summary.
    let kafka = env.rows as f64 / rates[0].1;
    let eos = env.rows as f64 / rates[1].1;
    let jsonl = env.rows as f64 / rates[2].1;
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "kafka bench (one run; {} cores; Postgres, the broker at {} and walcast on this machine)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        env.kafka
    );
    println!("  throughput, one {}-row transaction, commit -> slot confirmed:", env.rows);
    println!("    kafka sink             {:>7.2} s  {:>9.0} rows/s", rates[0].1, kafka);
    println!("    kafka exactly_once     {:>7.2} s  {:>9.0} rows/s", rates[1].1, eos);
    println!("    jsonl sink (/dev/null) {:>7.2} s  {:>9.0} rows/s", rates[2].1, jsonl);
    println!("    kafka / jsonl          {:>7.2}", kafka / jsonl);
    println!(
        "    goal >= {GOAL_ROWS_PER_SEC:.0} rows/s into the broker: {} ({:.2}x the goal)",
        mark(kafka >= GOAL_ROWS_PER_SEC),
        kafka / GOAL_ROWS_PER_SEC
    );
    println!(
        "  latency at {target_rate:.0} rows/s (half the kafka rate) for {} s: {} rows ({:.0} rows/s achieved), commit -> consumer receipt \
         (upper bound of commit -> delivery report):",
        env.latency_secs, latency.samples, latency.achieved_rate
    );
    println!("    p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms", latency.p50_ms, latency.p99_ms, latency.max_ms);
    println!("    goal p99 < {GOAL_P99_MS:.0} ms: {} ({:.2}x the goal)", mark(latency.p99_ms < GOAL_P99_MS), latency.p99_ms / GOAL_P99_MS);
    println!(
        "  exactly_once: {:.0} rows/s = {:.2}x at-least-once (goal >= 0.5: {}); latency at {target_rate:.0} rows/s: {} rows, \
         p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        eos,
        eos / kafka,
        mark(eos / kafka >= 0.5),
        latency_eos.samples,
        latency_eos.p50_ms,
        latency_eos.p99_ms,
        latency_eos.max_ms
    );
    Ok(())
}

/// Start walcast for `slot` with one sink. Its log goes to a file in the temp dir.
fn spawn_walcast(env: &Env, slot: &str, kind: SinkKind, prefix: &str) -> Result<Child> {
    let sink = match kind {
        SinkKind::Jsonl => "[sinks.jsonl]\npath = \"/dev/null\"\n".to_string(),
        SinkKind::Kafka => format!("[sinks.kafka]\nbootstrap_servers = \"{}\"\nprefix = \"{prefix}\"\n", env.kafka),
        SinkKind::KafkaExactlyOnce => {
            format!("[sinks.kafka]\nbootstrap_servers = \"{}\"\nprefix = \"{prefix}\"\nexactly_once = true\n", env.kafka)
        }
    };
    // The state dir in the run's temp dir: one left in the working directory by an earlier run
    // remembers the publication this run drops and creates again, and walcast refuses to start.
    let sink = format!("{sink}\n[snapshot]\nstate_dir = \"{}\"\n", env.tmp.path().join("state").display());
    let source = format!("create_slot = false\ncreate_publication = false\nstatus_interval_ms = {STATUS_INTERVAL_MS}\n");
    let path = env.tmp.path().join(format!("{slot}.toml"));
    std::fs::write(&path, env.pg.walcast_config(DB, slot, PUBLICATION, &source, &sink)).context("write config")?;
    let log = std::fs::File::create(env.tmp.path().join(format!("{slot}.log"))).context("log file")?;
    env.pg.spawn_walcast(&path, Stdio::null(), Stdio::from(log))
}

async fn wait_confirmed(admin: &Client, slot: &str, target: &str, child: &mut Child, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("walcast exited early ({status})");
        }
        let done: Option<bool> = admin
            .query_opt("SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", &[&slot, &target])
            .await?
            .and_then(|r| r.get(0));
        if done == Some(true) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("slot {slot} did not reach {target} within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn create_slot(db: &Client, slot: &str) -> Result<()> {
    db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.context("create slot")?;
    Ok(())
}

/// The end of walcast's log for `slot`, for error messages.
fn log_tail(env: &Env, slot: &str) -> String {
    let text = std::fs::read_to_string(env.tmp.path().join(format!("{slot}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Seconds from the commit of one big transaction to the slot confirming it.
async fn throughput_run(env: &Env, admin: &Client, db: &Client, kind: SinkKind) -> Result<f64> {
    db.batch_execute("TRUNCATE bench_rows RESTART IDENTITY").await?;
    admin.batch_execute("CHECKPOINT").await?;
    let slot = format!(
        "{SLOT_PREFIX}{}",
        match kind {
            SinkKind::Kafka => "kafka",
            SinkKind::KafkaExactlyOnce => "kafka_eos",
            SinkKind::Jsonl => "jsonl",
        }
    );
    create_slot(db, &slot).await?;
    let prefix = format!("bench{}", env.run_id);
    let mut child = spawn_walcast(env, &slot, kind, &prefix)?;
    let outcome = async {
        wait_active(admin, &slot, &mut child).await?;
        db.execute(
            &format!("INSERT INTO bench_rows (a, b, d) SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, {}) g", env.rows),
            &[],
        )
        .await
        .context("workload insert")?;
        let commit = Instant::now();
        let target: String = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
        let done = wait_confirmed(admin, &slot, &target, &mut child, DRAIN_TIMEOUT).await?;
        Ok::<_, anyhow::Error>(done.duration_since(commit).as_secs_f64())
    }
    .await;
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    outcome.with_context(|| format!("walcast log tail:\n{}", log_tail(env, &slot)))
}

struct Latency {
    samples: usize,
    achieved_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Rows at `rate` per second for the configured time; each row's commit -> consumer receipt.
async fn latency_run(env: &Env, admin: &Client, db: &Client, rate: f64, kind: SinkKind) -> Result<Latency> {
    db.batch_execute("TRUNCATE bench_rows RESTART IDENTITY").await?;
    let eos = kind == SinkKind::KafkaExactlyOnce;
    let slot = format!("{SLOT_PREFIX}latency{}", if eos { "_eos" } else { "" });
    create_slot(db, &slot).await?;
    let prefix = format!("bench{}lat{}", env.run_id, if eos { "eos" } else { "" });
    let topic = format!("{prefix}.public.bench_rows");
    let mut child = spawn_walcast(env, &slot, kind, &prefix)?;

    // The consumer: a group member in its own thread, recording (receipt - commit) per record.
    let stop_flag = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<i64>::new()));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("group.id", format!("walcast-bench-{}{}", env.run_id, if eos { "-eos" } else { "" }))
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .context("create consumer")?;
    consumer.subscribe(&[&topic]).context("subscribe")?;
    let reader = std::thread::spawn({
        let (stop_flag, samples) = (stop_flag.clone(), samples.clone());
        move || {
            #[derive(serde::Deserialize)]
            struct Src {
                ts_us: i64,
            }
            #[derive(serde::Deserialize)]
            struct Val {
                source: Src,
            }
            while !stop_flag.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let received = now_us();
                    if let Some(v) = m.payload().and_then(|p| serde_json::from_slice::<Val>(p).ok()) {
                        if let Ok(mut s) = samples.lock() {
                            s.push(received - v.source.ts_us);
                        }
                    }
                }
            }
        }
    });

    let outcome = async {
        wait_active(admin, &slot, &mut child).await?;
        // Warm-up: the topic exists and the consumer has joined its group.
        db.execute("INSERT INTO bench_rows (a, b, d) VALUES (0, 'warmup', 0)", &[]).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while samples.lock().map(|s| s.is_empty()).unwrap_or(true) {
            if Instant::now() > deadline {
                bail!("the consumer saw nothing within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Ok(mut s) = samples.lock() {
            s.clear();
        }

        // The load: every 10 ms a transaction with the rows due so far.
        let start = Instant::now();
        let total = Duration::from_secs(env.latency_secs);
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(LATENCY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while start.elapsed() < total {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if due > sent {
                let n = due - sent;
                db.execute(
                    &format!("INSERT INTO bench_rows (a, b, d) SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, {n}) g"),
                    &[],
                )
                .await?;
                sent = due;
            }
        }
        let achieved = sent as f64 / start.elapsed().as_secs_f64();
        // Wait for the tail.
        let deadline = Instant::now() + Duration::from_secs(60);
        while samples.lock().map(|s| (s.len() as u64) < sent).unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("the consumer received fewer rows than were committed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(achieved)
    }
    .await;
    stop_flag.store(true, Ordering::Relaxed);
    let _ = reader.join();
    stop(&mut child).await;
    drop_slot(admin, &slot).await?;
    let achieved_rate = outcome.with_context(|| format!("walcast log tail:\n{}", log_tail(env, &slot)))?;

    let mut s = samples.lock().map_err(|_| anyhow!("samples lock"))?.clone();
    if s.is_empty() {
        bail!("no latency samples");
    }
    s.sort_unstable();
    let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)] as f64 / 1000.0;
    Ok(Latency { samples: s.len(), achieved_rate, p50_ms: pct(0.50), p99_ms: pct(0.99), max_ms: *s.last().unwrap_or(&0) as f64 / 1000.0 })
}
