//! The benchmark harness: throughput, the limits it is compared with, latency, resources and
//! state scaling, in one run on one machine. `scripts/bench.sh` runs it against a local
//! broker and writes BENCHMARKS.md; see that file for how to read the numbers.
//!
//!   cargo bench --bench pipeline -- [--cases N] [--widgets N] [--state-sizes 1000000,10000000]
//!                                   [--latency-samples N] [--idle-secs N] [--history-days N]
//!   cargo bench --bench pipeline -- --only-state     the state measurements alone, no broker
//!
//! Needs BENCH_KAFKA_BOOTSTRAP (or TEST_KAFKA_BOOTSTRAP), except with --only-state. Timings are
//! printed, never asserted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use futures::TryStreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use secrecy::SecretString;
use serde_json::Value;
use serde_json::value::RawValue;

use casestream::clock::Clock;
use casestream::events::{CloudEvent, EventKind};
use casestream::pipeline::PRUNE_CASES_PER_TURN;
use casestream::simulator::http::RunningSimulator;
use casestream::simulator::{SimConfig, Simulator};
use casestream::sink::KafkaSettings;
use casestream::snapengage::{Case, ClientConfig, LogsClient, RetryPolicy, Window};
use casestream::state::CaseRecord;
use casestream::state::{SqliteStore, StateStore, StoredCase};

#[path = "economy/mod.rs"]
mod economy;
#[path = "exactly_once/mod.rs"]
mod exactly_once;

const HISTORY_DAYS: u64 = 10;
const RATE_LIMIT: &str = "1000";
/// Poll interval of the latency and idle runs.
const POLL_INTERVAL_SECS: u64 = 2;
/// `CASESTREAM_POLL_INTERVAL`'s default, for the catch-up at production settings.
const DEFAULT_POLL_SECS: u64 = 30;
const SETTLE_SECS: u64 = 3;

struct Args {
    cases: usize,
    widgets: usize,
    state_sizes: Vec<u64>,
    latency_samples: usize,
    idle_secs: u64,
    /// Days of history for the pruning measurement (0: skip it).
    history_days: u64,
    /// Only the state measurements: no broker, no pipeline.
    only_state: bool,
    /// Changelog sizes the exactly-once rebuild is timed with.
    rebuild_sizes: Vec<u64>,
    /// Only the exactly-once measurements (and the at-least-once catch-up they compare with).
    only_exactly_once: bool,
    /// Only the API economy measurements, of these scenarios.
    only_economy: Option<economy::Matrix>,
}

fn parse_args() -> Args {
    let mut args = Args {
        cases: 200_000,
        widgets: 4,
        state_sizes: vec![1_000_000, 10_000_000],
        latency_samples: 60,
        idle_secs: 30,
        history_days: 365,
        only_state: false,
        rebuild_sizes: vec![1_000_000, 10_000_000],
        only_exactly_once: false,
        only_economy: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--cases" => args.cases = value().parse().expect("--cases N"),
            "--widgets" => args.widgets = value().parse().expect("--widgets N"),
            "--state-sizes" => {
                args.state_sizes = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("--state-sizes N,N"))
                    .collect()
            }
            "--latency-samples" => args.latency_samples = value().parse().expect("N"),
            "--idle-secs" => args.idle_secs = value().parse().expect("N"),
            "--history-days" => args.history_days = value().parse().expect("N"),
            "--only-state" => args.only_state = true,
            "--rebuild-sizes" => {
                args.rebuild_sizes = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("--rebuild-sizes N,N"))
                    .collect()
            }
            "--only-exactly-once" => args.only_exactly_once = true,
            "--only-economy" => {
                args.only_economy.get_or_insert_default();
            }
            // One scenario per mode, 2 widgets at 200 cases/hour: proves the harness works.
            "--economy-small" => {
                let matrix = args.only_economy.get_or_insert_default();
                matrix.widgets = vec![2];
                matrix.volumes = vec![200.0];
                matrix.catch_up_days = 1;
            }
            "--economy-widgets" => {
                args.only_economy.get_or_insert_default().widgets = value()
                    .split(',')
                    .map(|n| n.parse().expect("--economy-widgets 4,20"))
                    .collect();
            }
            "--economy-volumes" => {
                // Empty: the budgeted catch-up alone.
                args.only_economy.get_or_insert_default().volumes = value()
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(|n| n.parse().expect("--economy-volumes 20,200"))
                    .collect();
            }
            "--economy-modes" => {
                args.only_economy.get_or_insert_default().modes = value()
                    .split(',')
                    .map(|m| {
                        economy::Mode::parse(m).expect("--economy-modes baseline,dates,datetimes")
                    })
                    .collect();
            }
            // A whole day with the survey horizon's history, not 80 minutes across midnight.
            "--economy-day" => {
                args.only_economy.get_or_insert_default().span = economy::Span::Day;
            }
            // 0: the steady-state scenarios alone.
            "--economy-catch-up-days" => {
                args.only_economy.get_or_insert_default().catch_up_days =
                    value().parse().expect("--economy-catch-up-days 7");
            }
            "--economy-speed" => {
                args.only_economy.get_or_insert_default().speed =
                    value().parse().expect("--economy-speed 30");
            }
            // cargo bench passes --bench; a probe child gets --probe-state.
            _ => {}
        }
    }
    args
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    if let Some(i) = raw.iter().position(|a| a == "--probe-state") {
        probe_state(Path::new(&raw[i + 1]), raw[i + 2].parse().expect("size"));
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it,
    // and must not start a benchmark.
    if !raw.iter().any(|a| a == "--bench") {
        println!("benches/pipeline.rs: run it with `bash scripts/bench.sh` (cargo bench)");
        return;
    }
    let args = parse_args();
    if args.only_state {
        println!("Machine: {}\n{}", machine(), state_sections(&args));
        return;
    }
    let bootstrap = std::env::var("BENCH_KAFKA_BOOTSTRAP")
        .or_else(|_| std::env::var("TEST_KAFKA_BOOTSTRAP"))
        .expect("set BENCH_KAFKA_BOOTSTRAP to a broker (scripts/bench.sh starts one)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = if let Some(matrix) = &args.only_economy {
        runtime.block_on(async {
            format!(
                "Machine: {}\n\n## API economy\n\n{}",
                machine(),
                economy::economy_rows(&bootstrap, matrix).await
            )
        })
    } else if args.only_exactly_once {
        runtime.block_on(exactly_once_run(&args, &bootstrap))
    } else {
        runtime.block_on(run(&args, &bootstrap))
    };
    println!("{report}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Peak RSS (VmHWM), current RSS (VmRSS) in KiB and CPU seconds of a process.
fn proc_usage(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime is the 14th field, stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    (kib("VmHWM:"), kib("VmRSS:"), ticks / 100.0)
}

/// An in-process simulator, unthrottled, with `history` of past cases already visible.
async fn start_sim(widgets: usize, cases_per_hour: f64, history: Duration) -> RunningSimulator {
    let sim = Arc::new(Simulator::new(
        SimConfig {
            widgets: (1..=widgets).map(|i| format!("w{i}")).collect(),
            cases_per_hour,
            history,
            index_delay: Duration::ZERO,
            ..SimConfig::default()
        },
        Clock::system(),
    ));
    casestream::simulator::http::start(sim, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator")
}

/// The backlog simulator: `args.cases` over [`HISTORY_DAYS`].
async fn start_backlog_sim(args: &Args) -> RunningSimulator {
    let per_widget_hours = (HISTORY_DAYS * 24) as f64;
    let cases_per_hour = args.cases as f64 / args.widgets as f64 / per_widget_hours;
    // Starts just after midnight HISTORY_DAYS ago so every day window is full.
    let history = Duration::from_secs(HISTORY_DAYS * 86_400 - 60);
    start_sim(args.widgets, cases_per_hour, history).await
}

/// Cases the simulator shows now, across its widgets.
fn visible_total(sim: &RunningSimulator) -> usize {
    sim.sim
        .config()
        .widgets
        .iter()
        .map(|w| sim.sim.visible_cases(w).len())
        .sum()
}

fn since() -> chrono::NaiveDate {
    Utc::now()
        .date_naive()
        .checked_sub_days(Days::new(HISTORY_DAYS))
        .expect("date")
}

/// (a) fetch-only: the client paging every day window of every widget, as the catch-up does.
async fn fetch_only(
    sim: &RunningSimulator,
    widgets: usize,
) -> (Duration, Vec<(String, Box<RawValue>)>) {
    let mut config = ClientConfig::new(sim.base_url(), "demo", SecretString::from("demo-token"));
    config.rate_limit_per_sec = RATE_LIMIT.parse().unwrap();
    config.retry = RetryPolicy::default();
    let client = LogsClient::new(config).unwrap();
    let started = Instant::now();
    let mut cases = Vec::new();
    let today = Utc::now().date_naive();
    let mut day = since();
    while day <= today {
        for w in 1..=widgets {
            let widget = format!("w{w}");
            let pages: Vec<_> = client
                .pages(
                    &widget,
                    Window::Dates {
                        start: day,
                        end: day,
                    },
                )
                .try_collect()
                .await
                .expect("fetch");
            for page in pages {
                cases.extend(page.cases.into_iter().map(|c| (widget.clone(), c)));
            }
        }
        day = day.succ_opt().unwrap();
    }
    (started.elapsed(), cases)
}

/// (b) produce-only: the same events, encoded as the pipeline does, by a bare producer with
/// the pipeline's settings (idempotent, acks=all), all in flight at once.
async fn produce_only(
    bootstrap: &str,
    cases: &[(String, Box<RawValue>)],
) -> (Duration, usize, usize) {
    let producer: FutureProducer = KafkaSettings::new(bootstrap)
        .client_config()
        .create()
        .unwrap();
    let topic = format!("bench-produce-{}", uuid::Uuid::new_v4().simple());
    create_topic(bootstrap, &topic).await;
    let now = Utc::now();
    let events: Vec<(String, Vec<u8>)> = cases
        .iter()
        .filter_map(|(w, v)| Case::from_raw(v.clone()).ok().map(|c| (w, c)))
        .flat_map(|(w, case)| {
            let mut out = vec![CloudEvent::for_case(
                "demo",
                w,
                &case,
                &EventKind::Created,
                now,
            )];
            let survey = case.survey();
            if survey.is_present() {
                out.push(CloudEvent::for_case(
                    "demo",
                    w,
                    &case,
                    &EventKind::Survey {
                        score: survey.score,
                        comments: survey.comments,
                    },
                    now,
                ));
            }
            out
        })
        .map(|e| (e.subject.clone(), e.to_structured_bytes()))
        .collect();
    let bytes: usize = events.iter().map(|(_, v)| v.len()).sum();
    let started = Instant::now();
    let sends = events.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(&topic).key(key).payload(payload),
            Timeout::Never,
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("delivery");
    }
    (started.elapsed(), events.len(), bytes)
}

async fn create_topic(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new(topic, 6, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
}

struct Forwarder {
    child: Child,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_forwarder(
    sim: &RunningSimulator,
    bootstrap: &str,
    widgets: usize,
    state: &Path,
    prefix: &str,
    poll_secs: u64,
    extra: &[(&str, &str)],
) -> Forwarder {
    let widget_ids: Vec<String> = (1..=widgets).map(|i| format!("w{i}")).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_casestream"))
        .args(["run", "--log-format", "json"])
        .env_clear()
        .env("SNAPENGAGE_API_URL", sim.base_url().to_string())
        .env("SNAPENGAGE_ORG_ID", "demo")
        .env("SNAPENGAGE_API_TOKEN", "demo-token")
        .env("SNAPENGAGE_WIDGET_IDS", widget_ids.join(","))
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("CASESTREAM_STATE_DIR", state)
        .env("CASESTREAM_SINCE", since().to_string())
        .env("CASESTREAM_RATE_LIMIT", RATE_LIMIT)
        .env("CASESTREAM_POLL_INTERVAL", format!("{poll_secs}s"))
        .env("CASESTREAM_SETTLE", format!("{SETTLE_SECS}s"))
        .env("CASESTREAM_TOPIC_CASES", format!("{prefix}.cases"))
        .env("CASESTREAM_TOPIC_SURVEYS", format!("{prefix}.surveys"))
        .env("CASESTREAM_TOPIC_DEADLETTER", format!("{prefix}.dead"))
        .env("CASESTREAM_TOPIC_STATE", format!("{prefix}.state"))
        .env("CASESTREAM_GROUP", prefix)
        // Any free port, unless `extra` names one.
        .env("CASESTREAM_ADMIN_ADDR", "127.0.0.1:0")
        .envs(extra.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn casestream");
    Forwarder { child }
}

/// Latencies in ms, sorted, of the cases that arrived, and how many cases were added.
struct Latency {
    created: Vec<f64>,
    survey: Vec<f64>,
    added: usize,
}

/// Adds cases one by one while a forwarder (publishing under `prefix`) polls, and measures
/// when each `case.created` becomes readable (from the case being visible in the API) and
/// each `case.survey` (from its settle time).
async fn measure_latency(
    sim: &RunningSimulator,
    bootstrap: &str,
    prefix: &str,
    widgets: usize,
    samples: usize,
) -> Latency {
    let created_seen = Arc::new(Mutex::new(HashMap::new()));
    let survey_seen = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchers = [
        watch_topic(
            bootstrap,
            &format!("{prefix}.cases"),
            created_seen.clone(),
            stop.clone(),
        ),
        watch_topic(
            bootstrap,
            &format!("{prefix}.surveys"),
            survey_seen.clone(),
            stop.clone(),
        ),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut added: Vec<(String, Instant, Instant)> = Vec::new();
    let spacing = Duration::from_millis(POLL_INTERVAL_SECS * 1000 * 7 / 10);
    for i in 0..samples {
        let widget = format!("w{}", i % widgets + 1);
        let case = sim.sim.make_case(&widget);
        let id = case["id"].as_str().unwrap().to_owned();
        let visible = Instant::now();
        sim.sim.add_case(&widget, case, None, None);
        // The survey lands 1 s after the chat ended; it is due at chat end + settle.
        let survey_at = Utc::now() + chrono::Duration::seconds(1);
        sim.sim
            .attach_survey(&id, Some(80), Some("bench".into()), Some(survey_at));
        let due = visible + Duration::from_secs(SETTLE_SECS);
        added.push((id, visible, due));
        tokio::time::sleep(spacing).await;
    }
    tokio::time::sleep(Duration::from_secs(
        POLL_INTERVAL_SECS * 3 + SETTLE_SECS + 2,
    ))
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in watchers {
        w.join().unwrap();
    }
    let latencies = |seen: &HashMap<String, Instant>,
                     from: &dyn Fn(&(String, Instant, Instant)) -> Instant| {
        let mut v: Vec<f64> = added
            .iter()
            .filter_map(|a| {
                seen.get(&a.0)
                    .map(|t| t.saturating_duration_since(from(a)).as_secs_f64() * 1000.0)
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let created_lat = latencies(&created_seen.lock().unwrap(), &|a| a.1);
    let survey_lat = latencies(&survey_seen.lock().unwrap(), &|a| a.2);
    Latency {
        created: created_lat,
        survey: survey_lat,
        added: added.len(),
    }
}

/// Cases per hour per widget of the realistic-volume latency run.
const LIGHT_CASES_PER_HOUR: f64 = 3.0;

/// Latency with a realistic volume: its own simulator (two days of history at
/// [`LIGHT_CASES_PER_HOUR`]) and a forwarder that caught up first.
async fn light_latency(bootstrap: &str, args: &Args) -> Latency {
    let sim = start_sim(
        args.widgets,
        LIGHT_CASES_PER_HOUR,
        Duration::from_secs(2 * 86_400),
    )
    .await;
    let total = visible_total(&sim);
    let mut run = catch_up(
        &sim,
        bootstrap,
        args.widgets,
        total,
        POLL_INTERVAL_SECS,
        &[],
    )
    .await;
    let latency = measure_latency(
        &sim,
        bootstrap,
        &run.prefix,
        args.widgets,
        args.latency_samples,
    )
    .await;
    drop(run.forwarder.take());
    let _ = sim.stop().await;
    latency
}

/// One catch-up of the whole backlog by a forwarder process with a fresh state.
struct CatchUp {
    /// Still running; taken to stop it.
    forwarder: Option<Forwarder>,
    prefix: String,
    pid: u32,
    time: Duration,
    rate: f64,
    /// Cases the simulator served during the catch-up (re-reads included).
    cases_read: u64,
    peak_kib: u64,
    cpu_secs: f64,
    /// Removed after the forwarder (fields drop in order).
    _state: tempfile::TempDir,
}

/// Waits until the state in `state_dir` holds `total` cases (2 h at most).
async fn known_cases_reach(state_dir: &Path, total: usize) {
    state_reaches(state_dir, &format!("{total} known cases"), |store| {
        Ok(store.stats()?.known_cases >= total as u64)
    })
    .await;
}

/// Waits until `reached` holds of the state in `state_dir`, opened read-only next to the
/// forwarder writing it (once the forwarder has created it), 2 h at most: a whole-day economy
/// scenario at 30x lasts 48 min.
async fn state_reaches(
    state_dir: &Path,
    what: &str,
    reached: impl Fn(&SqliteStore) -> Result<bool, casestream::state::StateError>,
) {
    let started = Instant::now();
    let mut reader: Option<SqliteStore> = None;
    loop {
        if reader.is_none() {
            reader = SqliteStore::open_read_only(state_dir).ok();
        }
        if reader.as_ref().is_some_and(|s| reached(s).unwrap_or(false)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(7200),
            "the state never reached {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a forwarder on a fresh state and waits until its state holds every case of the
/// backlog, i.e. every event was acknowledged by Kafka and checkpointed.
async fn catch_up(
    sim: &RunningSimulator,
    bootstrap: &str,
    widgets: usize,
    total: usize,
    poll_secs: u64,
    extra: &[(&str, &str)],
) -> CatchUp {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().to_owned();
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let served_before = sim.sim.stats().cases_served;
    let started = Instant::now();
    let forwarder = spawn_forwarder(sim, bootstrap, widgets, &state, &prefix, poll_secs, extra);
    let pid = forwarder.child.id();
    known_cases_reach(&state, total).await;
    let time = started.elapsed();
    let (peak_kib, _, cpu_secs) = proc_usage(pid);
    CatchUp {
        forwarder: Some(forwarder),
        prefix,
        pid,
        time,
        rate: total as f64 / time.as_secs_f64(),
        cases_read: sim.sim.stats().cases_served - served_before,
        peak_kib,
        cpu_secs,
        _state: state_dir,
    }
}

/// Records when each case id first appears on a topic (wall clock).
fn watch_topic(
    bootstrap: &str,
    topic: &str,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset(topic, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                && let Some(key) = m.key()
            {
                let key = String::from_utf8_lossy(key).into_owned();
                seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
            }
        }
    })
}

async fn run(args: &Args, bootstrap: &str) -> String {
    let mut out = String::new();
    let machine = machine();
    out.push_str(&format!("machine: {machine}\n"));
    let sim = start_backlog_sim(args).await;
    let total = visible_total(&sim);
    out.push_str(&format!(
        "backlog: {total} cases across {} widgets, {HISTORY_DAYS} days\n\n",
        args.widgets
    ));

    let (fetch_time, cases) = fetch_only(&sim, args.widgets).await;
    let fetch_rate = cases.len() as f64 / fetch_time.as_secs_f64();
    let (produce_time, events, bytes) = produce_only(bootstrap, &cases).await;
    let produce_rate = cases.len() as f64 / produce_time.as_secs_f64();

    // Catch-up at the production poll interval: the fresh window is re-read every 30 s.
    let mut production = catch_up(
        &sim,
        bootstrap,
        args.widgets,
        cases.len(),
        DEFAULT_POLL_SECS,
        &[],
    )
    .await;
    drop(production.forwarder.take());
    // The same at the 2 s poll interval of the latency runs: the fresh window (today and
    // yesterday, a fifth of the backlog) is re-read every cycle while the catch-up goes on.
    let mut fast = catch_up(
        &sim,
        bootstrap,
        args.widgets,
        cases.len(),
        POLL_INTERVAL_SECS,
        &[],
    )
    .await;
    let (prefix, pid) = (fast.prefix.clone(), fast.pid);
    let limit = fetch_rate.min(produce_rate);

    // Idle: steady polling of the fresh window, nothing new.
    let (_, _, cpu_before) = proc_usage(pid);
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (_, idle_rss_kib, cpu_after) = proc_usage(pid);
    let idle_cpu = (cpu_after - cpu_before) / args.idle_secs as f64;

    // Latency: cases added one by one while the forwarder polls, at the backlog's volume.
    let heavy = measure_latency(&sim, bootstrap, &prefix, args.widgets, args.latency_samples).await;
    drop(fast.forwarder.take());
    // The same at a realistic volume: 3 cases an hour per widget, a fresh window of a few pages.
    let light = light_latency(bootstrap, args).await;
    out.push_str("## Throughput (catch-up)\n\n| what | cases/s | time |\n|---|---|---|\n");
    out.push_str(&format!(
        "| (a) fetch-only: client paging the backlog | {fetch_rate:.0} | {:.1} s |\n",
        fetch_time.as_secs_f64()
    ));
    out.push_str(&format!(
        "| (b) produce-only: bare idempotent producer, acks=all, {events} events ({:.0} MB) | {produce_rate:.0} | {:.1} s |\n",
        bytes as f64 / 1e6,
        produce_time.as_secs_f64()
    ));
    for (run, poll) in [
        (&production, DEFAULT_POLL_SECS),
        (&fast, POLL_INTERVAL_SECS),
    ] {
        out.push_str(&format!(
            "| pipeline, poll interval {poll} s: fetched, published, acknowledged, checkpointed ({} cases read from the API) | {:.0} | {:.1} s |\n",
            run.cases_read,
            run.rate,
            run.time.as_secs_f64()
        ));
    }
    out.push_str(&format!(
        "\npipeline / min(a, b) = {:.2} at the {DEFAULT_POLL_SECS} s poll interval, {:.2} at {POLL_INTERVAL_SECS} s\n\n",
        production.rate / limit,
        fast.rate / limit
    ));
    out.push_str("## Latency (steady polling, poll interval 2 s, settle 3 s)\n\n| volume | event | samples | p50 | p99 | max |\n|---|---|---|---|---|---|\n");
    let heavy_volume = format!(
        "backlog: {} widgets, {:.0} cases/day each",
        args.widgets,
        total as f64 / args.widgets as f64 / HISTORY_DAYS as f64
    );
    let light_volume = format!(
        "realistic: {} widgets, {:.0} cases/day each",
        args.widgets,
        LIGHT_CASES_PER_HOUR * 24.0
    );
    for (volume, lat) in [(&heavy_volume, &heavy), (&light_volume, &light)] {
        for (name, values) in [
            ("case.created, from visible in the API", &lat.created),
            ("case.survey, from its settle time", &lat.survey),
        ] {
            out.push_str(&format!(
                "| {volume} | {name} | {}/{} | {:.0} ms | {:.0} ms | {:.0} ms |\n",
                values.len(),
                lat.added,
                percentile(values, 0.5),
                percentile(values, 0.99),
                values.last().copied().unwrap_or(f64::NAN)
            ));
        }
    }
    out.push_str("\n## Resources (the forwarder process)\n\n| what | value |\n|---|---|\n");
    for (run, poll) in [
        (&production, DEFAULT_POLL_SECS),
        (&fast, POLL_INTERVAL_SECS),
    ] {
        out.push_str(&format!(
            "| peak RSS during catch-up (poll interval {poll} s) | {:.1} MB |\n",
            run.peak_kib as f64 / 1024.0
        ));
        out.push_str(&format!(
            "| CPU per 1,000 cases during catch-up (poll interval {poll} s) | {:.3} s |\n",
            run.cpu_secs / cases.len() as f64 * 1000.0
        ));
    }
    out.push_str(&format!(
        "| RSS while idle polling | {:.1} MB |\n",
        idle_rss_kib as f64 / 1024.0
    ));
    out.push_str(&format!(
        "| CPU while idle polling ({}-widget fresh window every {POLL_INTERVAL_SECS} s, {} s) | {:.1} % of a core |\n",
        args.widgets,
        args.idle_secs,
        idle_cpu * 100.0
    ));

    out.push_str(&state_sections(args));
    let _ = sim.stop().await;
    out
}

/// Exactly-once against at-least-once: the same backlog caught up in both modes (production
/// poll interval), then the changelog rebuild and failover measurements.
async fn exactly_once_run(args: &Args, bootstrap: &str) -> String {
    let mut out = format!("machine: {}\n", machine());
    let sim = start_backlog_sim(args).await;
    let total = visible_total(&sim);
    out.push_str(&format!(
        "backlog: {total} cases across {} widgets, {HISTORY_DAYS} days\n\n",
        args.widgets
    ));
    out.push_str(&exactly_once_throughput(&sim, bootstrap, args.widgets, total).await);
    out.push_str(&exactly_once::rebuild_rows(bootstrap, &args.rebuild_sizes).await);
    out.push_str(&exactly_once::failover_rows(&sim, bootstrap, args.widgets).await);
    let _ = sim.stop().await;
    out
}

/// Catch-up throughput in both delivery modes, one after the other on the same backlog.
async fn exactly_once_throughput(
    sim: &RunningSimulator,
    bootstrap: &str,
    widgets: usize,
    total: usize,
) -> String {
    let mut out = String::from(
        "## Exactly-once against at-least-once (catch-up, poll interval 30 s)\n\n| delivery | cases/s | time | peak RSS | CPU per 1,000 cases |\n|---|---|---|---|---|\n",
    );
    let mut rates = Vec::new();
    for (name, extra) in [
        ("at-least-once", &[][..]),
        (
            "exactly-once",
            &[("CASESTREAM_DELIVERY", "exactly-once")][..],
        ),
    ] {
        let mut run = catch_up(sim, bootstrap, widgets, total, DEFAULT_POLL_SECS, extra).await;
        drop(run.forwarder.take());
        out.push_str(&format!(
            "| {name} | {:.0} | {:.1} s | {:.1} MB | {:.3} s |\n",
            run.rate,
            run.time.as_secs_f64(),
            run.peak_kib as f64 / 1024.0,
            run.cpu_secs / total as f64 * 1000.0
        ));
        rates.push(run.rate);
    }
    out.push_str(&format!(
        "\nexactly-once / at-least-once = {:.2}\n",
        rates[1] / rates[0]
    ));
    out
}

/// The state measurements: scaling with known ids, and pruning a long history.
fn state_sections(args: &Args) -> String {
    let mut out = String::new();
    if !args.state_sizes.is_empty() {
        out.push_str("\n## State scaling\n\n| known ids | file | fill | start-up (open + first queries) | RSS after start-up | dedupe per page (100 ids) | stats query |\n|---|---|---|---|---|---|---|\n");
        for &size in &args.state_sizes {
            out.push_str(&state_scaling(size));
        }
    }
    if args.history_days > 0 {
        out.push_str(&format!(
            "\n## State pruning\n\n{PRUNE_WIDGETS} widgets x {PRUNE_PER_DAY} cases a day, {} days of history; \
             pruned as the forwarder does (1-day lookback, 7-day survey horizon, 5,000 cases per turn).\n\n\
             | cases before | file before | cases after | file after | pruned | prune time |\n|---|---|---|---|---|---|\n",
            args.history_days
        ));
        out.push_str(&state_pruning(args.history_days));
    }
    out
}

const PRUNE_WIDGETS: u64 = 4;
const PRUNE_PER_DAY: u64 = 2_400;

/// Bytes of the state on disk: the database and its write-ahead log.
fn state_bytes(dir: &Path) -> u64 {
    let file = casestream::state::sqlite::STATE_FILE;
    [file.to_owned(), format!("{file}-wal")]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// A state holding `days` of history, then pruned as the forwarder prunes it.
fn state_pruning(days: u64) -> String {
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let today = Utc::now().date_naive();
    let horizon = chrono::Duration::days(7);
    let now = Utc::now();
    let store = SqliteStore::open(&dir).unwrap();
    let mut n = 0u64;
    for back in (0..days).rev() {
        let day = today - chrono::Days::new(back);
        let midnight = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        for w in 1..=PRUNE_WIDGETS {
            let cases: Vec<StoredCase> = (0..PRUNE_PER_DAY)
                .map(|k| {
                    n += 1;
                    let t =
                        midnight + chrono::Duration::seconds((k * 86_400 / PRUNE_PER_DAY) as i64);
                    StoredCase {
                        id: uuid::Uuid::from_u128(n as u128 * 0x9E37_79B9_7F4A_7C15).to_string(),
                        widget: format!("w{w}"),
                        day,
                        created: t,
                        record: CaseRecord {
                            first_seen: t,
                            chat_end: t,
                            created_emitted: true,
                            survey_digest: None,
                            // Watched for a survey until the horizon.
                            next_check: (t + horizon > now).then_some(t + horizon),
                            survey_emitted: None,
                        },
                    }
                })
                .collect();
            store.commit_cases(&cases).unwrap();
        }
    }
    let before_cases = store.stats().unwrap().known_cases;
    let before_bytes = state_bytes(&dir);
    let fresh_start = today - chrono::Days::new(1);
    let started = Instant::now();
    let mut pruned = 0;
    for w in 1..=PRUNE_WIDGETS {
        loop {
            let removed = store
                .prune_cases(&format!("w{w}"), fresh_start, PRUNE_CASES_PER_TURN)
                .unwrap();
            pruned += removed;
            if removed == 0 {
                break;
            }
        }
    }
    let took = started.elapsed();
    let after_cases = store.stats().unwrap().known_cases;
    drop(store);
    // Reopened, so the write-ahead log is checkpointed into the file.
    drop(SqliteStore::open(&dir).unwrap());
    let after_bytes = state_bytes(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "| {before_cases} | {:.0} MB | {after_cases} | {:.1} MB | {pruned} | {:.1} s |\n",
        before_bytes as f64 / 1e6,
        after_bytes as f64 / 1e6,
        took.as_secs_f64()
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!(
        "{} cores ({cpu}), {:.0} GiB memory",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn synthetic(i: u64) -> StoredCase {
    let t = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64 * 1000).unwrap();
    StoredCase {
        id: uuid::Uuid::from_u128(i as u128 * 0x9E37_79B9_7F4A_7C15).to_string(),
        widget: format!("w{}", i % 4 + 1),
        day: t.date_naive(),
        created: t,
        record: CaseRecord {
            first_seen: t,
            chat_end: t,
            created_emitted: true,
            survey_digest: None,
            // A tenth still pending, as in a week of real traffic.
            next_check: i
                .is_multiple_of(10)
                .then_some(t + chrono::Duration::days(7)),
            survey_emitted: None,
        },
    }
}

/// Fills a state with `size` ids, then measures start-up and dedupe in a fresh process.
fn state_scaling(size: u64) -> String {
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let fill_started = Instant::now();
    {
        let store = SqliteStore::open(&dir).unwrap();
        let batch = 50_000;
        let mut start = 0;
        while start < size {
            let end = (start + batch).min(size);
            let cases: Vec<StoredCase> = (start..end).map(synthetic).collect();
            store.commit_cases(&cases).unwrap();
            start = end;
        }
    }
    let fill = fill_started.elapsed();
    let file_mb = std::fs::metadata(dir.join(casestream::state::sqlite::STATE_FILE))
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0);
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--probe-state", dir.to_str().unwrap(), &size.to_string()])
        .output()
        .expect("probe");
    let _ = std::fs::remove_dir_all(&dir);
    let probe: Value = serde_json::from_slice(&output.stdout).expect("probe output");
    format!(
        "| {size} | {file_mb:.0} MB | {:.0} s | {:.0} ms | {:.1} MB | {:.0} µs | {:.0} ms |\n",
        fill.as_secs_f64(),
        probe["startup_ms"].as_f64().unwrap_or(f64::NAN),
        probe["rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        probe["lookup_us"].as_f64().unwrap_or(f64::NAN),
        probe["stats_ms"].as_f64().unwrap_or(f64::NAN),
    )
}

/// Runs in a fresh process: what a forwarder does with an existing state at start and per page.
fn probe_state(dir: &Path, size: u64) {
    let started = Instant::now();
    let store = SqliteStore::open(dir).unwrap();
    // What the pipeline asks at start: widget progress and due re-check days.
    let _ = store.widget("w1").unwrap();
    let _ = store
        .due_days("w1", Utc::now(), Utc::now().date_naive(), None, 4)
        .unwrap();
    let startup = started.elapsed();
    let pages = 1000;
    let lookup_started = Instant::now();
    for page in 0..pages {
        // Half known ids, half new ones, like a fresh window with new cases.
        let ids: Vec<String> = (0..100u64)
            .map(|k| {
                let i = (page * 100 + k) * 7919 % size;
                if k % 2 == 0 {
                    synthetic(i).id
                } else {
                    uuid::Uuid::new_v4().to_string()
                }
            })
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let found = store.lookup(&refs).unwrap();
        assert_eq!(found.len(), 50);
    }
    let lookup_us = lookup_started.elapsed().as_secs_f64() * 1e6 / pages as f64;
    let stats_started = Instant::now();
    let _ = store.stats().unwrap();
    let stats_ms = stats_started.elapsed().as_secs_f64() * 1000.0;
    let (_, rss_kib, _) = proc_usage(std::process::id());
    println!(
        "{}",
        serde_json::json!({
            "startup_ms": startup.as_secs_f64() * 1000.0,
            "lookup_us": lookup_us,
            "stats_ms": stats_ms,
            "rss_kib": rss_kib,
        })
    );
}
