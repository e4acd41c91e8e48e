//! Shared by the integration tests: a real Kafka broker, a consumer that reads topics back,
//! the JSON Schemas, and an in-process forwarder against the simulator.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use casestream::admin::Health;
use casestream::clock::Clock;
use casestream::config::Config;
use casestream::simulator::http::RunningSimulator;
use casestream::simulator::{SimConfig, Simulator};
use casestream::sink::{KafkaSettings, Topics};
use casestream::snapengage::{Case, ClientConfig as ApiConfig, RetryPolicy};

/// Where the tests' broker is: `TEST_KAFKA_BOOTSTRAP`, else a testcontainers `apache/kafka`
/// when a Docker engine answers, else the test fails saying how to get one.
pub async fn kafka_bootstrap() -> String {
    static BOOTSTRAP: OnceCell<String> = OnceCell::const_new();
    BOOTSTRAP
        .get_or_init(|| async {
            if let Ok(servers) = std::env::var("TEST_KAFKA_BOOTSTRAP")
                && !servers.trim().is_empty()
            {
                return servers;
            }
            if docker_answers() {
                return start_container().await;
            }
            panic!(
                "these tests need a real Kafka broker. Either start one with \
                 `scripts/kafka.sh start` and set TEST_KAFKA_BOOTSTRAP to the address it prints \
                 (`bash scripts/test.sh` does both), or make a Docker engine available so \
                 testcontainers can start apache/kafka."
            )
        })
        .await
        .clone()
}

fn docker_answers() -> bool {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

async fn start_container() -> String {
    use testcontainers_modules::kafka::apache;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    static CONTAINER: OnceCell<
        testcontainers_modules::testcontainers::ContainerAsync<apache::Kafka>,
    > = OnceCell::const_new();
    let container = CONTAINER
        .get_or_init(|| async {
            apache::Kafka::default()
                .with_jvm_image()
                .start()
                .await
                .expect("testcontainers could not start apache/kafka")
        })
        .await;
    let port = container
        .get_host_port_ipv4(apache::KAFKA_PORT)
        .await
        .expect("apache/kafka container has no mapped port");
    format!("127.0.0.1:{port}")
}

/// A fresh topic prefix per test, so tests share one broker without seeing each other.
pub fn unique_prefix(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

/// One record read back from Kafka.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("record value is JSON")
    }
}

/// Reads a topic from the beginning up to its end as of the call (the high watermarks then),
/// or until no record arrived for `idle`. A topic still being written to is read as a
/// snapshot, never followed forever.
pub fn read_topic(bootstrap: &str, topic: &str, idle: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // What consumers of exactly-once delivery must set (librdkafka's default, said here).
        .set("isolation.level", "read_committed")
        .create()
        .expect("test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition offset");
            // Right after a broker restart the leader may not be known yet: ask again.
            let mut attempts = 0;
            let (low, high) = loop {
                match consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)) {
                    Ok(marks) => break marks,
                    Err(_) if attempts < 40 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => panic!("watermarks of {topic}: {e}"),
                }
            };
            if high > low {
                ends.insert(p.id(), high);
            }
        }
    }
    consumer.assign(&assignment).expect("assign partitions");
    let mut records = Vec::new();
    let mut last = Instant::now();
    while !ends.is_empty() && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last = Instant::now();
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&message.partition());
                }
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    records
}

pub async fn read_topic_async(bootstrap: &str, topic: &str, idle: Duration) -> Vec<Record> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, idle))
        .await
        .unwrap()
}

/// How many records of `topic` carry each key, read as [`read_topic_async`] does.
pub async fn count_by_key(bootstrap: &str, topic: &str, idle: Duration) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in read_topic_async(bootstrap, topic, idle).await {
        *counts.entry(record.key.unwrap()).or_default() += 1;
    }
    counts
}

/// Validates events against the schemas in `schemas/`.
pub struct Schemas {
    created: jsonschema::Validator,
    survey: jsonschema::Validator,
}

impl Schemas {
    pub fn load() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let load = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            jsonschema::options()
                .should_validate_formats(true)
                .build(&serde_json::from_str(&text).unwrap())
                .unwrap()
        };
        Self {
            created: load("case.created.schema.json"),
            survey: load("case.survey.schema.json"),
        }
    }

    /// Panics with the schema errors if the event is not valid.
    pub fn check(&self, event: &Value) {
        let validator = match event["type"].as_str() {
            Some("com.snapengage.case.created") => &self.created,
            Some("com.snapengage.case.survey") => &self.survey,
            other => panic!("unknown event type {other:?} in {event}"),
        };
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "event fails its schema: {errors:?}\n{event}"
        );
    }
}

/// Rebuilds the structured event from a binary-mode record (`ce_*` headers + data value).
pub fn event_from_binary(record: &Record) -> Value {
    let mut event = serde_json::Map::new();
    for (k, v) in &record.headers {
        if let Some(attr) = k.strip_prefix("ce_") {
            event.insert(attr.to_owned(), Value::String(v.clone()));
        }
    }
    event.insert(
        "datacontenttype".into(),
        Value::String(record.headers["content-type"].clone()),
    );
    event.insert("data".into(), record.json());
    Value::Object(event)
}

/// Live traffic on real time for the real process (which has its own clock): widgets `w1`
/// and `w2`, `history` already there, surveys landing seconds after a chat, the index a moment
/// behind.
pub async fn start_live_simulator(cases_per_hour: f64, history: Duration) -> RunningSimulator {
    start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour,
            history,
            survey_delay: Duration::from_secs(2),
            survey_spread: Duration::from_secs(3),
            survey_late_max: Duration::from_secs(10),
            index_delay: Duration::from_millis(200),
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await
}

/// A simulator on a free port.
pub async fn start_simulator(config: SimConfig, clock: Clock) -> RunningSimulator {
    let sim = Arc::new(Simulator::new(config, clock));
    casestream::simulator::http::start(sim, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The settings every forwarder test starts from, built in Rust: what [`process_env`] sets,
/// and what an in-process run on a fast virtual clock needs; `tweak` changes the rest.
/// The day a first start on [`long_catch_up_day`]'s clock catches up on.
pub const LONG_DAY: &str = "2026-03-10";

/// One widget, `w1`, on a clock at real speed just past midnight and its grace period, with
/// a 20 h history: mostly [`LONG_DAY`], a catch-up day of 70 pages and more (10 cases a
/// page), each next-page link answered after `slow_cursor_ms`.
pub async fn long_catch_up_day(slow_cursor_ms: u64) -> (Clock, RunningSimulator) {
    let clock = Clock::scaled("2026-03-11T00:45:00Z".parse().expect("a time"), 1.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into()],
            page_size: 10,
            cases_per_hour: 40.0,
            history: Duration::from_secs(20 * 3600),
            faults: casestream::simulator::Faults {
                slow_cursor_ms,
                ..casestream::simulator::Faults::default()
            },
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    (clock, sim)
}

/// The saved cursor of `widget`'s interrupted window in the state at `dir`, read beside a
/// running forwarder.
pub fn saved_cursor(
    dir: &std::path::Path,
    widget: &str,
) -> Option<casestream::state::WindowCursor> {
    use casestream::state::StateStore;
    let store = casestream::state::SqliteStore::open_read_only(dir).ok()?;
    store.window_cursor(widget).ok().flatten()
}

/// The last day `widget`'s catch-up read in the state at `dir`, read beside a running
/// forwarder.
pub fn caught_up_through(dir: &std::path::Path, widget: &str) -> Option<chrono::NaiveDate> {
    use casestream::state::StateStore;
    let store = casestream::state::SqliteStore::open_read_only(dir).ok()?;
    store.widget(widget).ok().flatten()?.caught_up_through
}

pub fn forwarder_config(
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    state_dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> Config {
    let simulated = sim.sim.config();
    let mut api = ApiConfig::new(
        sim.base_url(),
        simulated.org.clone(),
        simulated.token.clone().into(),
    );
    api.rate_limit_per_sec = 500.0;
    // Real-time backoff would stall a run on a 600x virtual clock.
    api.retry = RetryPolicy {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: 20,
    };
    let mut kafka = KafkaSettings::new(bootstrap);
    kafka.topics = Topics {
        cases: format!("{prefix}.cases"),
        surveys: format!("{prefix}.surveys"),
        deadletter: format!("{prefix}.dead"),
        state: format!("{prefix}.state"),
    };
    kafka.topic_partitions = 3;
    let mut config = Config::new(api, kafka, simulated.widgets.clone());
    config.state_dir = state_dir.to_owned();
    config.admin.addr = ([127, 0, 0, 1], 0).into();
    tweak(&mut config);
    config
}

/// The events of `topic` per case id (their subject): the distinct event ids, and how many
/// records there were.
pub async fn event_ids_by_case(
    bootstrap: &str,
    topic: &str,
    idle: Duration,
) -> HashMap<String, (HashSet<String>, usize)> {
    let mut by_case: HashMap<String, (HashSet<String>, usize)> = HashMap::new();
    for record in read_topic_async(bootstrap, topic, idle).await {
        let event = record.json();
        let entry = by_case
            .entry(event["subject"].as_str().unwrap().to_owned())
            .or_default();
        entry.0.insert(event["id"].as_str().unwrap().to_owned());
        entry.1 += 1;
    }
    by_case
}

/// A forwarder running in this process until stopped.
pub struct RunningForwarder {
    pub health: Arc<Health>,
    /// Cancelled by [`RunningForwarder::stop`].
    pub stop: CancellationToken,
    /// `app::run`, for a test that waits for it to end by itself.
    pub task: tokio::task::JoinHandle<Result<(), casestream::app::AppError>>,
}

impl RunningForwarder {
    pub fn start(config: Config, clock: Clock) -> Self {
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(casestream::app::run(
            config,
            clock,
            health.clone(),
            stop.clone(),
        ));
        Self { health, stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("forwarder task panicked")
            .expect("forwarder failed");
    }

    /// Whether a poll cycle has completed.
    pub fn polled_ok(&self) -> bool {
        self.health.polled()
    }

    /// Waits for a first complete poll cycle, at most `limit`; the test fails with `what` then.
    pub async fn wait_for_first_cycle(&self, limit: Duration, what: &str) {
        eventually(limit, what, async || self.polled_ok()).await;
    }
}

/// `path` (`/readyz`, `/metrics`, ...) of the admin endpoints at `admin`: (status, body), or
/// `None` if it did not answer.
pub async fn admin_get(admin: impl std::fmt::Display, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{admin}{path}")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// `/readyz` of the admin endpoints at `admin`: (status, body), or `None` if it did not answer.
pub async fn readyz(admin: impl std::fmt::Display) -> Option<(u16, String)> {
    admin_get(admin, "/readyz").await
}

/// Polls `check` until it holds or `limit` passes; the test fails with `what` then.
pub async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    eventually_or_report(limit, what, async || {
        check().await.then_some(()).ok_or_else(String::new)
    })
    .await
}

/// [`eventually`], for a check that says what is still wrong: the last report is in the
/// failure.
pub async fn eventually_or_report(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let started = Instant::now();
    let mut report = String::new();
    while started.elapsed() < limit {
        match check().await {
            Ok(()) => return,
            Err(last) => report = last,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = if report.is_empty() {
        report
    } else {
        format!("; {report}")
    };
    panic!("timed out after {limit:?} waiting for: {what}{report}");
}

pub fn without_survey(case: &Value) -> Value {
    let mut case = case.clone();
    if let Some(map) = case.as_object_mut() {
        map.remove("survey_score");
        map.remove("survey_comments");
    }
    case
}

/// A broker of this test's own, reset (stopped, data deleted) when dropped.
pub struct OwnBroker {
    env: Vec<(String, String)>,
}

impl OwnBroker {
    pub fn script(&self, action: &str) -> String {
        self.script_with(&[action])
    }

    /// `scripts/kafka.sh` with arguments (`acl --add ...`); the last line it printed.
    pub fn script_with(&self, args: &[&str]) -> String {
        let action = args.join(" ");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let output = Command::new("bash")
            .arg(script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/kafka.sh");
        assert!(
            output.status.success(),
            "scripts/kafka.sh {action} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.script("reset");
    }
}

pub fn free_port_pair() -> u16 {
    free_ports(2)
}

/// The first of `n` consecutive free ports on loopback (each bound and released).
pub fn free_ports(n: u16) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65000
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok())
        {
            return port;
        }
    }
}

impl OwnBroker {
    /// A broker of the test's own on free ports, started; its bootstrap address.
    pub fn start(name: &str) -> (Self, String) {
        Self::start_on(name, free_port_pair())
    }

    /// A broker of the test's own on `port` (and `port` + 1 for its controller), started;
    /// its bootstrap address.
    pub fn start_on(name: &str, port: u16) -> (Self, String) {
        let broker = OwnBroker {
            env: vec![
                ("CASESTREAM_KAFKA_PORT".into(), port.to_string()),
                (
                    "CASESTREAM_KAFKA_INSTANCE".into(),
                    format!("{name}-{}", std::process::id()),
                ),
            ],
        };
        let bootstrap = broker.script("start");
        assert_eq!(bootstrap, format!("127.0.0.1:{port}"));
        (broker, bootstrap)
    }

    /// A secured broker of the test's own (`start-secure`: ports `port` to `port` + 4), with
    /// an authorizer; the variables of its last line (`SECURE_SASL_SSL`, `SECURE_USER`...).
    pub fn start_secure_on(name: &str, port: u16) -> (Self, HashMap<String, String>) {
        let broker = OwnBroker {
            env: vec![
                ("CASESTREAM_KAFKA_PORT".into(), port.to_string()),
                (
                    "CASESTREAM_KAFKA_INSTANCE".into(),
                    format!("{name}-{}", std::process::id()),
                ),
            ],
        };
        let line = broker.script("start-secure");
        // NAME=value pairs; the values are paths, addresses and letters (no quoting needed).
        let vars = line
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (broker, vars)
    }
}

/// The real `casestream run` process, killed when dropped.
pub struct Forwarder(pub Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_forwarder(env: &[(String, String)], log: &std::path::Path) -> Forwarder {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Forwarder(
        Command::new(env!("CARGO_BIN_EXE_casestream"))
            .args(["run", "--log-format", "json"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The environment of a `casestream run` process against the simulator and a broker.
pub fn process_env(
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    state_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("SNAPENGAGE_API_URL", sim.base_url().to_string()),
        ("SNAPENGAGE_ORG_ID", sim.sim.config().org.clone()),
        ("SNAPENGAGE_API_TOKEN", sim.sim.config().token.clone()),
        ("SNAPENGAGE_WIDGET_IDS", sim.sim.config().widgets.join(",")),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()),
        ("CASESTREAM_STATE_DIR", state_dir.display().to_string()),
        ("CASESTREAM_TOPIC_CASES", format!("{prefix}.cases")),
        ("CASESTREAM_TOPIC_SURVEYS", format!("{prefix}.surveys")),
        ("CASESTREAM_TOPIC_DEADLETTER", format!("{prefix}.dead")),
        ("CASESTREAM_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// A free port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// librdkafka's mock cluster (for faults a real broker cannot be made to show) with the three
/// topics of `prefix`.
pub fn mock_cluster(
    prefix: &str,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for suffix in ["cases", "surveys", "dead"] {
        cluster
            .create_topic(&format!("{prefix}.{suffix}"), 1, 1)
            .expect("mock topic");
    }
    cluster
}

/// Runs `casestream <command>` with `env`; (exit success, stdout + stderr). `run` is stopped
/// with SIGTERM after `run_for` if it is still running.
pub fn casestream(command: &str, env: &[(String, String)], run_for: Duration) -> (bool, String) {
    let (mut child, output) = spawn(command, env);
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(child, output)
}

/// Starts `casestream <command>`; its stdout and stderr go to one file (a pipe read only at
/// the end would fill up and block a chatty process).
pub fn spawn(
    command: &str,
    env: &[(String, String)],
) -> (std::process::Child, tempfile::NamedTempFile) {
    let output = tempfile::NamedTempFile::new().unwrap();
    // Appending, both: two handles at their own offsets would overwrite each other.
    let append = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(output.path())
            .unwrap()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_casestream"))
        .arg(command)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(append())
        .stderr(append())
        .spawn()
        .unwrap();
    (child, output)
}

/// Sends SIGTERM if the process still runs, waits for it; (exit success, what it printed).
pub fn finish(mut child: std::process::Child, output: tempfile::NamedTempFile) -> (bool, String) {
    if child.try_wait().unwrap().is_none() {
        sigterm(&child);
    }
    let status = child.wait().unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(output.path()).unwrap()).into_owned();
    (status.success(), text)
}

/// Sends SIGTERM to `child`; whether `kill` succeeded.
pub fn sigterm(child: &Child) -> bool {
    signal(child, "-TERM")
}

/// Sends `signal` (`-STOP`, `-CONT`, ...) to `child`; whether `kill` succeeded.
pub fn signal(child: &Child, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success()
}

pub fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Whether a survey was due by `until`: it had appeared (`survey_at`, epoch ms), and the case
/// had settled under the tests' 2 s settle.
pub fn survey_due(
    case: &casestream::snapengage::Case,
    survey_at: Option<i64>,
    until: chrono::DateTime<chrono::Utc>,
) -> bool {
    let settled = case
        .chat_end()
        .is_some_and(|end| end + chrono::Duration::seconds(2) < until);
    let appeared = survey_at
        .and_then(chrono::DateTime::from_timestamp_millis)
        .is_some_and(|at| at < until);
    settled && appeared
}

/// SIGTERM, then the process must exit 0 (its log is named when it does not).
pub async fn stop_with_sigterm(mut forwarder: Forwarder, log: &std::path::Path) {
    assert!(sigterm(&forwarder.0));
    let status = tokio::task::spawn_blocking(move || forwarder.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0; log: {}",
        log.display()
    );
}

// Exactly-once delivery: instances of the real process, their roles, and the read back.

/// The election group's session timeout in these tests (the broker's floor is 6 s).
pub const FAILOVER_TIMEOUT: &str = "6s";

/// Live traffic on two widgets with some history, surveys landing within seconds.
pub async fn live_simulator() -> RunningSimulator {
    start_live_simulator(1200.0, Duration::from_secs(3 * 3600)).await
}

/// One instance's environment: exactly-once, its own state directory and admin port.
pub fn instance_env(
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    state_dir: &std::path::Path,
    admin: u16,
) -> Vec<(String, String)> {
    let admin = format!("127.0.0.1:{admin}");
    let state_topic = format!("{prefix}.state");
    process_env(
        sim,
        bootstrap,
        prefix,
        state_dir,
        &[
            ("CASESTREAM_DELIVERY", "exactly-once"),
            ("CASESTREAM_TOPIC_STATE", &state_topic),
            // Each test its own group: runs of the suite never fence each other.
            ("CASESTREAM_GROUP", prefix),
            ("CASESTREAM_FAILOVER_TIMEOUT", FAILOVER_TIMEOUT),
            ("CASESTREAM_POLL_INTERVAL", "1s"),
            ("CASESTREAM_SETTLE", "2s"),
            ("CASESTREAM_RATE_LIMIT", "20"),
            ("CASESTREAM_ADMIN_ADDR", &admin),
        ],
    )
}

/// `casestream_active` of the instance at `admin`; `None` while it does not answer.
pub async fn active(admin: u16) -> Option<bool> {
    let (_, body) = admin_get(format!("127.0.0.1:{admin}"), "/metrics").await?;
    let line = body.lines().find(|l| l.starts_with("casestream_active "))?;
    Some(line.trim_end().ends_with(" 1"))
}

/// Waits (at most 60 s) until the instance behind `admin` is active, or a standby.
pub async fn becomes(admin: u16, is_active: bool, what: &str) {
    eventually(Duration::from_secs(60), what, async || {
        active(admin).await == Some(is_active)
    })
    .await;
}

/// Every case and settled survey the simulator shows, read back `read_committed`: each
/// exactly once, under one event id, nothing missing. Returns (cases, surveys) checked.
pub async fn assert_exactly_once(
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    until: chrono::DateTime<chrono::Utc>,
) -> (usize, usize) {
    let idle = Duration::from_secs(2);
    let created = event_ids_by_case(bootstrap, &format!("{prefix}.cases"), idle).await;
    let surveys = event_ids_by_case(bootstrap, &format!("{prefix}.surveys"), idle).await;
    for (topic, events) in [("cases", &created), ("surveys", &surveys)] {
        let repeated: HashMap<&String, usize> = events
            .iter()
            .filter(|(_, (_, records))| *records != 1)
            .map(|(case, (_, records))| (case, *records))
            .collect();
        assert!(
            repeated.is_empty(),
            "{} cases have more than one {topic} event visible to read_committed: {repeated:?}",
            repeated.len()
        );
    }
    let (mut cases, mut due) = (0, 0);
    for w in ["w1", "w2"] {
        for (value, survey_at) in sim.sim.visible_cases_with_survey_times(w) {
            let case = Case::from_value(value).unwrap();
            let chat_end = case.chat_end().unwrap();
            if chat_end >= until {
                continue;
            }
            cases += 1;
            assert!(
                created.contains_key(case.id()),
                "case.created of {} missing",
                case.id()
            );
            if survey_due(&case, survey_at, until) {
                due += 1;
                assert!(
                    surveys.contains_key(case.id()),
                    "case.survey of {} missing",
                    case.id()
                );
            }
        }
    }
    assert!(
        cases > 1000 && due > 50,
        "too small: {cases} cases, {due} surveys"
    );
    (cases, due)
}

/// Waits until every case that ended before `until` was announced.
pub async fn wait_for_all(sim: &RunningSimulator, bootstrap: &str, prefix: &str, limit: Duration) {
    let until = chrono::Utc::now() - chrono::Duration::seconds(5);
    let topic = format!("{prefix}.cases");
    eventually(limit, "every case announced", async || {
        let created = event_ids_by_case(bootstrap, &topic, Duration::from_secs(1)).await;
        ["w1", "w2"]
            .iter()
            .flat_map(|w| sim.sim.visible_cases(w))
            .filter_map(|v| Case::from_value(v).ok())
            .filter(|c| c.chat_end().unwrap() < until)
            .all(|c| created.contains_key(c.id()))
    })
    .await;
}
