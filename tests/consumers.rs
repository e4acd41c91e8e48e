//! The consumer's side, shown and tested: every example of docs/consumers.md marked "tested"
//! is copied out of the page and run against topics the forwarder wrote: Python's CloudEvents
//! SDK in both content modes, deduplicating at-least-once and reading exactly-once delivery;
//! Apache Kafka's Connect runtime (standalone worker, file sink) into PostgreSQL as `jsonb`,
//! with the page's SQL.
//!
//! Prerequisites come from `bash scripts/consumers.sh install` (scripts/test.sh runs it):
//! PostgreSQL's server binaries, a venv under .cache/ with the SDK, Kafka Connect's jars. A
//! missing one fails the test saying so; nothing is skipped.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use casestream::sink::EventFormat;
use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const INSTALL: &str = "run `bash scripts/consumers.sh install` (scripts/test.sh does)";

/// The page's tested examples, by name: the fenced block after each `<!-- tested: NAME ...`.
fn examples() -> HashMap<String, String> {
    let page = std::fs::read_to_string(root().join("docs/consumers.md")).unwrap();
    let mut found = HashMap::new();
    for part in page.split("<!-- tested: ").skip(1) {
        let name = part.split([' ', '\n']).next().unwrap().to_owned();
        let block = part
            .split_once("\n```")
            .and_then(|(_, rest)| rest.split_once('\n'))
            .and_then(|(_, body)| body.split_once("\n```"))
            .map(|(body, _)| format!("{body}\n"))
            .unwrap_or_else(|| panic!("docs/consumers.md: no code block after `tested: {name}`"));
        found.insert(name, block);
    }
    found
}

/// One example, with `replace` applied; each pattern must occur in it.
fn example(examples: &HashMap<String, String>, name: &str, replace: &[(&str, &str)]) -> String {
    let mut text = examples
        .get(name)
        .unwrap_or_else(|| panic!("docs/consumers.md has no tested example {name}"))
        .clone();
    for (from, to) in replace {
        assert!(
            text.contains(from),
            "example {name} no longer contains {from}"
        );
        text = text.replace(from, to);
    }
    text
}

fn python() -> PathBuf {
    let python = root().join(".cache/consumers-venv/bin/python");
    assert!(
        python.exists(),
        "Python's CloudEvents SDK is not installed ({} missing): {INSTALL}",
        python.display()
    );
    python
}

fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("PostgreSQL's server binaries are not installed: {INSTALL}"))
}

/// The sum of the topics' end offsets (high watermarks).
fn end_offsets(bootstrap: &str, topics: &[String]) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "end-offsets")
        .create()
        .unwrap();
    let mut total = 0;
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .unwrap();
            total += high;
        }
    }
    total
}

/// Runs the forwarder in this process, at-least-once, until both topics have events; returns
/// the topic prefix.
async fn forwarded(bootstrap: &str, name: &str, format: EventFormat) -> String {
    let clock = Clock::scaled("2026-03-10T08:00:00Z".parse().unwrap(), 600.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 60.0,
            history: Duration::from_secs(2 * 3600),
            survey_delay: Duration::from_secs(300),
            survey_spread: Duration::from_secs(600),
            survey_late_max: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    let prefix = unique_prefix(name);
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, bootstrap, &prefix, dir.path(), |c| {
        c.kafka.event_format = format
    });
    let forwarder = RunningForwarder::start(config, clock);
    let (cases, surveys) = (format!("{prefix}.cases"), format!("{prefix}.surveys"));
    eventually(
        Duration::from_secs(90),
        "created and survey events",
        async || {
            let idle = Duration::from_millis(500);
            read_topic_async(bootstrap, &cases, idle).await.len() > 150
                && read_topic_async(bootstrap, &surveys, idle).await.len() > 20
        },
    )
    .await;
    forwarder.stop().await;
    sim.stop().await.unwrap();
    prefix
}

/// What `read_events.py` printed: one JSON object per event, and its summary line.
fn read_events(script: &Path, bootstrap: &str, topic: &str) -> (Vec<Value>, String) {
    let output = Command::new(python())
        .arg(script)
        .args([bootstrap, topic])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "read_events.py {topic} failed: {stderr}"
    );
    let events = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("read_events.py prints JSON lines"))
        .collect();
    (
        events,
        stderr.trim().lines().last().unwrap_or("").to_owned(),
    )
}

/// The event ids of a topic as casestream's own test reader decodes them.
async fn ids_in(bootstrap: &str, topic: &str, binary: bool) -> Vec<String> {
    read_topic_async(bootstrap, topic, Duration::from_secs(2))
        .await
        .iter()
        .map(|r| {
            let event = if binary {
                event_from_binary(r)
            } else {
                r.json()
            };
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn ids(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Writes the records of `from`, and its first `again` records once more, to `to`: a topic as
/// at-least-once delivery leaves it after a crash.
async fn copy_with_repeats(bootstrap: &str, from: &str, to: &str, again: usize) -> usize {
    let records = read_topic_async(bootstrap, from, Duration::from_secs(2)).await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(to, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(
        created.iter().all(Result::is_ok),
        "creating {to}: {created:?}"
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for record in records.iter().chain(records.iter().take(again)) {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut out = FutureRecord::to(to)
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key);
        }
        producer
            .send(out, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    records.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_both_content_modes_dedupes_and_reads_committed() {
    let bootstrap = kafka_bootstrap().await;
    let examples = examples();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("read_events.py");
    std::fs::write(&script, example(&examples, "read_events.py", &[])).unwrap();

    // Both content modes, at-least-once.
    for (format, binary) in [
        (EventFormat::Structured, false),
        (EventFormat::Binary, true),
    ] {
        let prefix = forwarded(&bootstrap, "python", format).await;
        for topic in ["cases", "surveys"] {
            let topic = format!("{prefix}.{topic}");
            let expected = ids_in(&bootstrap, &topic, binary).await;
            let (events, summary) = read_events(&script, &bootstrap, &topic);
            eprintln!("read_events.py {topic} ({format:?}): {summary}");
            assert_eq!(
                events.len(),
                expected.len(),
                "{topic} ({format:?}): {summary}"
            );
            assert_eq!(ids(&events), expected.iter().cloned().collect());
            assert_eq!(
                summary,
                format!("{} events, 0 duplicates skipped", expected.len())
            );
            for event in &events {
                assert!(
                    ["w1", "w2"].contains(&event["widget"].as_str().unwrap()),
                    "{event}"
                );
                assert!(
                    event["case"].as_str().is_some_and(|c| !c.is_empty()),
                    "{event}"
                );
                if topic.ends_with(".surveys") {
                    assert_eq!(event["type"], "com.snapengage.case.survey");
                    assert!(
                        !event["score"].is_null(),
                        "a survey without its score: {event}"
                    );
                } else {
                    assert_eq!(event["type"], "com.snapengage.case.created");
                }
            }
        }
        // At-least-once after a crash: some records twice. Each event is printed once.
        if !binary {
            let copy = format!("{prefix}.repeated");
            let unique = copy_with_repeats(&bootstrap, &format!("{prefix}.cases"), &copy, 25).await;
            let (events, summary) = read_events(&script, &bootstrap, &copy);
            eprintln!("read_events.py {copy} (records repeated): {summary}");
            assert_eq!(events.len(), unique, "{summary}");
            assert_eq!(summary, format!("{unique} events, 25 duplicates skipped"));
        }
    }

    // Exactly-once delivery, the real process: every committed event once, fewer events than
    // offsets (the transaction markers take offsets).
    let sim = live_simulator().await;
    let prefix = unique_prefix("python-eos");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    let admin = free_port();
    let env = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("state"), admin);
    let forwarder = spawn_forwarder(&env, &log);
    let (cases, surveys) = (format!("{prefix}.cases"), format!("{prefix}.surveys"));
    eventually(
        Duration::from_secs(120),
        "exactly-once events",
        async || {
            let idle = Duration::from_millis(500);
            read_topic_async(&bootstrap, &cases, idle).await.len() > 500
                && read_topic_async(&bootstrap, &surveys, idle).await.len() > 20
        },
    )
    .await;
    stop_with_sigterm(forwarder, &log).await;
    sim.stop().await.unwrap();
    for topic in [&cases, &surveys] {
        let committed = ids_in(&bootstrap, topic, false).await;
        let (events, summary) = read_events(&script, &bootstrap, topic);
        let offsets = end_offsets(&bootstrap, std::slice::from_ref(topic));
        eprintln!("read_events.py {topic} (exactly-once): {summary}; end offsets {offsets}");
        assert_eq!(events.len(), committed.len(), "{topic}: {summary}");
        assert_eq!(ids(&events), committed.iter().cloned().collect());
        assert_eq!(
            summary,
            format!("{} events, 0 duplicates skipped", committed.len())
        );
        assert!(
            (events.len() as i64) < offsets,
            "{topic}: {} events and {offsets} offsets: where are the transaction markers?",
            events.len()
        );
    }
}

/// A PostgreSQL cluster of the test's own on 127.0.0.1, stopped when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// As root, PostgreSQL's server runs as the `postgres` user Debian's package creates.
fn as_postgres(bin: &Path, program: &str) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if is_root {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    fn start() -> Self {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        // The server's user must own the directory (root's temp directories are 0700).
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let run = |command: &mut Command, what: &str| {
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "PostgreSQL {what} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(
            as_postgres(&bin, "initdb")
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
                .arg(&data),
            "initdb",
        );
        let options = format!("-h 127.0.0.1 -p {port} -k {}", dir.path().display());
        run(
            as_postgres(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.path().join("postgres.log"))
                .args(["-w", "start"]),
            "start",
        );
        Self {
            bin,
            data,
            port,
            _dir: dir,
        }
    }

    /// Runs an SQL file with psql; its rows, columns separated by `|`.
    fn psql_file(&self, file: &Path) -> Vec<String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
            ])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn query(&self, dir: &Path, sql: &str) -> i64 {
        let file = dir.join("query.sql");
        std::fs::write(&file, sql).unwrap();
        let rows = self.psql_file(&file);
        rows[0]
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: {rows:?}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// The Connect worker, stopped when dropped.
struct Connect(Child);

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(connector, tasks)` states of one connector from the worker's REST API.
async fn connector_states(port: u16, name: &str) -> Option<(String, Vec<String>)> {
    let (status, body) = admin_get(
        format!("127.0.0.1:{port}"),
        &format!("/connectors/{name}/status"),
    )
    .await?;
    if status != 200 {
        return None;
    }
    let body: Value = serde_json::from_str(&body).ok()?;
    let tasks = body["tasks"]
        .as_array()?
        .iter()
        .map(|t| t["state"].as_str().unwrap_or("").to_owned())
        .collect();
    Some((body["connector"]["state"].as_str()?.to_owned(), tasks))
}

fn lines_in(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_connect_loads_every_event_into_postgres_as_jsonb() {
    let bootstrap = kafka_bootstrap().await;
    let examples = examples();
    let postgres = Postgres::start();
    let prefix = forwarded(&bootstrap, "connect", EventFormat::Structured).await;
    let topics = vec![format!("{prefix}.cases"), format!("{prefix}.surveys")];
    let records = end_offsets(&bootstrap, &topics);
    eprintln!("{records} records in {topics:?}");
    let created = read_topic_async(&bootstrap, &topics[0], Duration::from_secs(2)).await;
    let surveyed: HashSet<String> =
        read_topic_async(&bootstrap, &topics[1], Duration::from_secs(2))
            .await
            .iter()
            .map(|r| r.json()["subject"].as_str().unwrap().to_owned())
            .collect();

    // The worker and both connectors, as the page gives them.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (events_file, parsed_file) = (dir.join("events.json"), dir.join("parsed.txt"));
    let port = free_port();
    let listener = format!("http://127.0.0.1:{port}");
    let topic_list = format!("topics={}", topics.join(","));
    let worker = example(
        &examples,
        "worker.properties",
        &[
            (
                "bootstrap.servers=localhost:9092",
                &format!("bootstrap.servers={bootstrap}"),
            ),
            ("http://127.0.0.1:8083", &listener),
            (
                "/var/lib/connect/casestream.offsets",
                &dir.join("offsets").display().to_string(),
            ),
        ],
    );
    let sink = example(
        &examples,
        "casestream-file-sink.properties",
        &[
            ("topics=snapengage.cases,snapengage.surveys", &topic_list),
            (
                "/var/lib/connect/casestream-events.json",
                &events_file.display().to_string(),
            ),
        ],
    );
    let check = example(
        &examples,
        "casestream-json-check.properties",
        &[
            ("topics=snapengage.cases,snapengage.surveys", &topic_list),
            (
                "/var/lib/connect/casestream-parsed.txt",
                &parsed_file.display().to_string(),
            ),
        ],
    );
    for (name, text) in [
        ("worker.properties", &worker),
        ("sink.properties", &sink),
        ("check.properties", &check),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let log = std::fs::File::create(dir.join("connect.log")).unwrap();
    let started = Instant::now();
    let connect = Connect(
        Command::new("bash")
            .arg(root().join("scripts/kafka.sh"))
            .arg("connect-standalone")
            .args([
                dir.join("worker.properties"),
                dir.join("sink.properties"),
                dir.join("check.properties"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let connect_log = || std::fs::read_to_string(dir.join("connect.log")).unwrap_or_default();
    let mut running_seen = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut all_running = true;
        for name in ["casestream-file-sink", "casestream-json-check"] {
            match connector_states(port, name).await {
                Some((connector, tasks)) => {
                    assert!(
                        connector != "FAILED" && !tasks.iter().any(|t| t == "FAILED"),
                        "{name} failed: connector {connector}, tasks {tasks:?}\n{}",
                        connect_log()
                    );
                    all_running &= connector == "RUNNING"
                        && !tasks.is_empty()
                        && tasks.iter().all(|t| t == "RUNNING");
                }
                None => all_running = false,
            }
        }
        running_seen |= all_running;
        let written = (lines_in(&events_file), lines_in(&parsed_file));
        if running_seen && all_running && written == (records as usize, records as usize) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka Connect wrote {written:?} lines of {records} records in 180 s \
             (all running: {all_running})\n{}",
            connect_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "Kafka Connect: started and wrote {records} records in {:?}",
        started.elapsed()
    );
    // Still running once everything is written, then stopped.
    for name in ["casestream-file-sink", "casestream-json-check"] {
        let (connector, tasks) = connector_states(port, name)
            .await
            .expect("the worker answers");
        assert_eq!(
            (connector.as_str(), tasks),
            ("RUNNING", vec!["RUNNING".to_owned()]),
            "{name}"
        );
    }
    drop(connect);
    // The JSON converter parsed every record into a map (printed the Java way).
    let parsed = std::fs::read_to_string(&parsed_file).unwrap();
    assert!(
        parsed
            .lines()
            .all(|l| l.starts_with('{') && l.contains("specversion=1.0"))
    );

    // The page's SQL: the tables, the load, the queries.
    let events_path = events_file.display().to_string();
    let sql = |name: &str, replace: &[(&str, &str)]| {
        let file = dir.join(name);
        std::fs::write(&file, example(&examples, name, replace)).unwrap();
        postgres.psql_file(&file)
    };
    let load = [(
        "/var/lib/connect/casestream-events.json",
        events_path.as_str(),
    )];
    sql("tables.sql", &[]);
    sql("load.sql", &load);
    let count = |q: &str| postgres.query(dir, q);
    assert_eq!(
        count("SELECT count(*) FROM casestream_records"),
        records,
        "rows = end offsets"
    );
    assert_eq!(
        count("SELECT count(DISTINCT doc->>'id') FROM casestream_records"),
        records,
        "every event id distinct"
    );
    assert_eq!(count("SELECT count(*) FROM casestream_events"), records);
    assert_eq!(
        count(
            "SELECT count(*) FROM casestream_events s WHERE s.type = 'com.snapengage.case.survey' \
             AND NOT EXISTS (SELECT 1 FROM casestream_events c \
             WHERE c.type = 'com.snapengage.case.created' AND c.case_id = s.case_id)"
        ),
        0,
        "every survey's case is there"
    );
    let latest = sql("latest-survey.sql", &[]);
    assert_eq!(
        latest.len(),
        surveyed.len(),
        "one latest survey per surveyed case"
    );
    let per_day = sql("cases-per-widget-per-day.sql", &[]);
    let total: usize = per_day
        .iter()
        .map(|row| row.rsplit('|').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(
        total,
        created.len(),
        "cases per widget per day add up: {per_day:?}"
    );
    assert!(
        per_day.iter().any(|r| r.starts_with("w1|"))
            && per_day.iter().any(|r| r.starts_with("w2|"))
    );
    // A redelivery (the same file again): every record twice, every event once.
    sql("load.sql", &load);
    assert_eq!(
        count("SELECT count(*) FROM casestream_records"),
        2 * records
    );
    assert_eq!(count("SELECT count(*) FROM casestream_events"), records);
}
