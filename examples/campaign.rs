//! The fault campaign (issue 27): each run draws a scenario and a fault schedule from its seed,
//! runs the real `casestream simulate` and `casestream run` against the project's broker,
//! injects the faults, then judges the topics (read as a `read_committed` consumer) against the
//! simulator's record (`GET /_sim/record`). One line per run; exit 1 if any run violated an
//! invariant. Run through `scripts/campaign.sh` (it builds the binary and starts the broker);
//! docs/reliability.md describes the fault model and the invariants.
//!
//! Test tooling, not the product: it is built and linted with the rest (`--all-targets`) but
//! not shipped. `tests/common/mod.rs` cannot be included here (it needs `CARGO_BIN_EXE_*`,
//! which only integration tests get), so the topic reader is a copy of its `read_topic`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

const SETTLE_MS: i64 = 5 * 60_000;
const POLL_MS: i64 = 60_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Real time the forwarder is allowed on top of every virtual bound, for its own work (retries
/// at real-time delays, a failover's session timeout, a broker coming back).
const SLACK_REAL: Duration = Duration::from_secs(30);
/// Real time a widget with an unreadable page may take to isolate it (docs/events.md "Unreadable
/// pages": 3 failing cycles, then up to 17 failing probes, each after the client's retries at
/// real-time delays), on top of the slack.
const ISOLATION_REAL: Duration = Duration::from_secs(180);
const SIGTERM_LIMIT: Duration = Duration::from_secs(30);
/// The producer's `transaction.timeout.ms` (src/sink/config.rs): a `BrokerStopLong` outlasts it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// `CASESTREAM_WINDOW_OVERLAP` and `CASESTREAM_LATE_VISIBILITY` (both 30 min by default).
const OVERLAP_MS: i64 = 30 * MINUTE_MS;
const LATE_VISIBILITY_MS: i64 = 30 * MINUTE_MS;
/// Exactly-once: the failover timeout the campaign sets; two instances may both report active
/// for at most this (the stale one notices its session expired) plus a sampling margin.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(6);
const ACTIVE_OVERLAP_LIMIT: Duration = Duration::from_secs(10);
/// At most about this many cases are there at the first start: a run is minutes long.
const HISTORY_CASES: f64 = 2000.0;

struct Args {
    runs: u64,
    seed: u64,
    fault_phase: Duration,
    bin: PathBuf,
    bootstrap: String,
    sim_port: u16,
    work: PathBuf,
    /// Only these seeds (CI's fixed set), instead of `seed..seed+runs`.
    seeds: Vec<u64>,
    /// Print each seed's scenario and schedule, run nothing.
    plan: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 1,
        seed: 1,
        fault_phase: Duration::from_secs(60),
        bin: PathBuf::from("target/release/casestream"),
        bootstrap: String::new(),
        sim_port: 29560,
        work: std::env::temp_dir().join("casestream-campaign"),
        seeds: Vec::new(),
        plan: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--seeds" => {
                args.seeds = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--minutes" => {
                args.fault_phase = Duration::from_secs_f64(value()?.parse::<f64>()? * 60.0)
            }
            "--plan" => args.plan = true,
            "--bin" => args.bin = value()?.into(),
            "--bootstrap" => args.bootstrap = value()?,
            "--sim-port" => args.sim_port = value()?.parse()?,
            "--work" => args.work = value()?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    if args.bootstrap.is_empty() && !args.plan {
        bail!("--bootstrap is required (scripts/campaign.sh starts a broker and passes it)");
    }
    Ok(args)
}

// ---------------------------------------------------------------- scenario and schedule

#[derive(Clone, Debug)]
struct Scenario {
    widgets: Vec<String>,
    cases_per_hour: f64,
    datetimes: bool,
    exactly_once: bool,
    binary: bool,
    since_days_back: i64,
    speed: f64,
    start: DateTime<Utc>,
    /// The simulator's delay from chat end to stored survey: often shorter than the settle,
    /// so a survey emitted before settle would show.
    survey_delay_secs: u64,
    /// A warm start: the forwarder runs a while before the fault phase, is stopped (SIGTERM),
    /// stays down for a drawn pause and starts again on its state.
    warm: bool,
}

impl Scenario {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let n = rng.random_range(1..=6usize);
        let widgets = (1..=n).map(|i| format!("w{i}")).collect();
        let cases_per_hour = f64::from(rng.random_range(20..=1000u32));
        let since_days_back = rng.random_range(0..=2i64);
        // A start before midnight crosses into a new day; one before noon crosses the daily
        // re-check of days-old cases; any other hour is drawn too.
        let hour = match rng.random_range(0..3u8) {
            0 => 23,
            1 => 11,
            _ => rng.random_range(0..24u32),
        };
        let day = Utc
            .with_ymd_and_hms(
                2026,
                rng.random_range(1..=9u32),
                rng.random_range(1..=28u32),
                0,
                0,
                0,
            )
            .single()
            .expect("a valid date: months 1-9, days 1-28");
        let start = day
            + chrono::Duration::hours(i64::from(hour))
            + chrono::Duration::minutes(rng.random_range(0..50i64));
        Self {
            widgets,
            cases_per_hour,
            datetimes: rng.random_bool(0.5),
            exactly_once: rng.random_bool(0.5),
            binary: rng.random_bool(0.5),
            since_days_back,
            speed: [60.0, 120.0, 180.0][rng.random_range(0..3usize)],
            start,
            survey_delay_secs: [30, 120, 300][rng.random_range(0..3usize)],
            warm: rng.random_bool(0.5),
        }
    }

    fn since_day_start(&self) -> DateTime<Utc> {
        self.start.date_naive().and_time(NaiveTime::MIN).and_utc()
            - chrono::Duration::days(self.since_days_back)
    }

    /// The simulator's history: back to `CASESTREAM_SINCE`'s day, or fewer hours when that
    /// would hold more than [`HISTORY_CASES`] cases (the days before are then read empty).
    fn history(&self) -> Duration {
        let to_since = (self.start - self.since_day_start())
            .to_std()
            .unwrap_or_default();
        let per_hour = self.cases_per_hour * self.widgets.len() as f64;
        to_since.min(Duration::from_secs_f64(HISTORY_CASES / per_hour * 3600.0))
    }

    fn summary(&self) -> String {
        format!(
            "{}w {}/h {} {} {} since-{}d{} x{} {} survey-delay-{}s",
            self.widgets.len(),
            self.cases_per_hour,
            if self.datetimes { "datetimes" } else { "dates" },
            if self.exactly_once {
                "exactly-once"
            } else {
                "at-least-once"
            },
            if self.binary { "binary" } else { "structured" },
            self.since_days_back,
            if self.warm { " warm" } else { "" },
            self.speed,
            self.start.format("%m-%dT%H:%M"),
            self.survey_delay_secs,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Storm429,
    Burst5xx,
    SlowPages,
    Truncated,
    Repeated,
    Brownout,
    UnreadableWhile,
    UnreadableForGood,
    SigKill,
    SigTerm,
    BrokerStop,
    NoIdCase,
    OversizedCase,
    LateSurvey,
    EditedSurvey,
    BrokerStopLong,
    ClockStepBack,
    LongChat,
    LostState,
    Standby,
}

/// Kinds only exactly-once has: a second instance, a state rebuilt from the changelog.
const EXACTLY_ONCE_KINDS: [Kind; 2] = [Kind::LostState, Kind::Standby];

const KINDS: [Kind; 20] = [
    Kind::Storm429,
    Kind::Burst5xx,
    Kind::SlowPages,
    Kind::Truncated,
    Kind::Repeated,
    Kind::Brownout,
    Kind::UnreadableWhile,
    Kind::UnreadableForGood,
    Kind::SigKill,
    Kind::SigTerm,
    Kind::BrokerStop,
    Kind::NoIdCase,
    Kind::OversizedCase,
    Kind::LateSurvey,
    Kind::EditedSurvey,
    Kind::BrokerStopLong,
    Kind::ClockStepBack,
    Kind::LongChat,
    Kind::LostState,
    Kind::Standby,
];

#[derive(Clone, Debug)]
struct Fault {
    kind: Kind,
    at: Duration,
    /// How long it lasts (rates, brownout, broker stop, an unreadable page), or the pause
    /// before a killed forwarder is started again.
    lasts: Duration,
    rate: f64,
    widget: usize,
}

/// A seed's scenario and schedule, and the generator the run goes on drawing from.
fn draw(seed: u64, phase: Duration) -> (Scenario, Vec<Fault>, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scenario = Scenario::draw(&mut rng);
    let schedule = draw_schedule(
        &mut rng,
        phase,
        scenario.widgets.len(),
        scenario.exactly_once,
    );
    (scenario, schedule, rng)
}

fn draw_schedule(
    rng: &mut ChaCha8Rng,
    phase: Duration,
    widgets: usize,
    exactly_once: bool,
) -> Vec<Fault> {
    let kinds: Vec<Kind> = KINDS
        .into_iter()
        .filter(|k| exactly_once || !EXACTLY_ONCE_KINDS.contains(k))
        .collect();
    let count = rng.random_range(3..=8usize);
    let mut faults: Vec<Fault> = (0..count)
        .map(|_| {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let at = phase.mul_f64(rng.random_range(0.05..0.8));
            let lasts = match kind {
                Kind::SigKill | Kind::SigTerm | Kind::LostState => {
                    Duration::from_millis(rng.random_range(200..3000))
                }
                Kind::BrokerStop => Duration::from_secs(rng.random_range(2..15)),
                Kind::BrokerStopLong => {
                    TRANSACTION_TIMEOUT + Duration::from_secs(rng.random_range(5..20))
                }
                _ => phase.mul_f64(rng.random_range(0.05..0.3)),
            };
            Fault {
                kind,
                at,
                lasts,
                rate: rng.random_range(0.2..0.9),
                widget: rng.random_range(0..widgets),
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    faults
}

// ---------------------------------------------------------------- processes

/// Which forwarder process: the one the schedule kills and restarts, or (exactly-once) a
/// second instance started mid-run that runs to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Primary,
    Standby,
}

struct Forwarder {
    child: Child,
    /// Its log file's name in the run's directory.
    log: String,
    /// SIGTERM sent at: the exit must follow within 30 s, with status 0.
    terminating: Option<Instant>,
    /// The broker was stopped while this process was up.
    broker_stopped_under: bool,
}

struct Run<'a> {
    args: &'a Args,
    seed: u64,
    scenario: Scenario,
    prefix: String,
    token: String,
    dir: PathBuf,
    anchor_ms: i64,
    http: reqwest::Client,
    forwarder: Option<Forwarder>,
    standby: Option<Forwarder>,
    /// A standby was started: it is started again whenever it exits, as Kubernetes would.
    standby_wanted: bool,
    starts: u32,
    standby_starts: u32,
    kills: u32,
    terms: u32,
    violations: Vec<String>,
    injected: BTreeMap<Kind, u32>,
    /// Unusable inputs added, per widget, by creation time (dead-lettered once each, unless
    /// a span unreadable for good holds them).
    no_id: HashMap<String, Vec<i64>>,
    oversized: Vec<(String, String)>,
    unreadable_now: Vec<String>,
    unreadable_for_good: Vec<(String, String)>,
    /// (widget, case id, created ms) of pages unreadable for a while.
    unreadable_cleared: Vec<(String, String, i64)>,
    /// (widget, case id, created ms) of chats longer than an hour, visible when they ended.
    long_chats: Vec<(String, String, i64)>,
    broker_down: bool,
    /// How far the primary's clock is behind the simulator's now (virtual ms), and the most
    /// it ever was: every liveness bound waits that much longer.
    clock_lag_ms: i64,
    max_lag_ms: i64,
    /// Both instances reported `casestream_active 1` since; the longest such overlap.
    both_active_since: Option<Instant>,
    longest_overlap: Duration,
    last_sample: Option<Instant>,
    /// Exits the docs document for a fault the schedule caused (not violations).
    documented_exits: Vec<String>,
    /// A killed or terminated forwarder is started again no sooner than this.
    down_until: Option<Instant>,
    sim: Option<Child>,
}

impl Run<'_> {
    fn sim_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.args.sim_port)
    }

    fn admin_port(&self, slot: Slot) -> u16 {
        self.args.sim_port
            + match slot {
                Slot::Primary => 1,
                Slot::Standby => 2,
            }
    }

    fn state_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(match slot {
            Slot::Primary => "state",
            Slot::Standby => "state-standby",
        })
    }

    fn slot(&mut self, slot: Slot) -> &mut Option<Forwarder> {
        match slot {
            Slot::Primary => &mut self.forwarder,
            Slot::Standby => &mut self.standby,
        }
    }

    fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?)
    }

    fn start_simulator(&mut self) -> anyhow::Result<()> {
        let s = &self.scenario;
        let child = Command::new(&self.args.bin)
            .args(["simulate", "--log-format", "json", "--org", "campaign"])
            .args(["--listen", &format!("127.0.0.1:{}", self.args.sim_port)])
            .args(["--token", &self.token, "--seed", &self.seed.to_string()])
            .args(["--widgets", &s.widgets.join(",")])
            .args(["--cases-per-hour", &s.cases_per_hour.to_string()])
            .args(["--history", &format!("{}s", s.history().as_secs())])
            .args(["--speed", &s.speed.to_string()])
            .args(["--survey-delay", &format!("{}s", s.survey_delay_secs)])
            .args(["--start-time", &s.start.to_rfc3339()])
            .args(["--clock-anchor-ms", &self.anchor_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(self.log("simulate.log")?)
            .stderr(self.log("simulate.log")?)
            .spawn()
            .context("cannot start casestream simulate")?;
        self.sim = Some(child);
        Ok(())
    }

    fn forwarder_env(&self, slot: Slot) -> Vec<(String, String)> {
        let s = &self.scenario;
        let p = &self.prefix;
        // The primary's clock may be behind (a restart on a clock stepped back); the
        // standby's never is.
        let lag = if slot == Slot::Primary {
            chrono::Duration::milliseconds(self.clock_lag_ms)
        } else {
            chrono::Duration::zero()
        };
        let mut env: Vec<(&str, String)> = vec![
            (
                "SNAPENGAGE_API_URL",
                format!("http://127.0.0.1:{}", self.args.sim_port),
            ),
            ("SNAPENGAGE_ORG_ID", "campaign".into()),
            ("SNAPENGAGE_API_TOKEN", self.token.clone()),
            ("SNAPENGAGE_WIDGET_IDS", s.widgets.join(",")),
            ("KAFKA_BOOTSTRAP_SERVERS", self.args.bootstrap.clone()),
            (
                "CASESTREAM_STATE_DIR",
                self.state_dir(slot).display().to_string(),
            ),
            ("CASESTREAM_TOPIC_CASES", format!("{p}.cases")),
            ("CASESTREAM_TOPIC_SURVEYS", format!("{p}.surveys")),
            ("CASESTREAM_TOPIC_DEADLETTER", format!("{p}.dead")),
            ("CASESTREAM_TOPIC_PARTITIONS", "3".into()),
            (
                "CASESTREAM_ADMIN_ADDR",
                format!("127.0.0.1:{}", self.admin_port(slot)),
            ),
            ("CASESTREAM_POLL_INTERVAL", format!("{}s", POLL_MS / 1000)),
            (
                "CASESTREAM_SINCE",
                s.since_day_start().date_naive().to_string(),
            ),
            ("CASESTREAM_RATE_LIMIT", "200".into()),
            ("CASESTREAM_API_RETRY_MIN_DELAY", "50ms".into()),
            ("CASESTREAM_API_RETRY_MAX_DELAY", "1s".into()),
            (
                "CASESTREAM_WINDOW_MODE",
                if s.datetimes { "datetimes" } else { "dates" }.into(),
            ),
            (
                "CASESTREAM_EVENT_FORMAT",
                if s.binary { "binary" } else { "structured" }.into(),
            ),
            (
                "CASESTREAM_TEST_CLOCK",
                format!(
                    "{},{},{}",
                    (s.start - lag).to_rfc3339(),
                    s.speed,
                    self.anchor_ms
                ),
            ),
            ("RUST_LOG", "info".into()),
        ];
        if s.exactly_once {
            env.extend([
                ("CASESTREAM_DELIVERY", "exactly-once".to_owned()),
                ("CASESTREAM_TOPIC_STATE", format!("{p}.state")),
                ("CASESTREAM_GROUP", p.clone()),
                (
                    "CASESTREAM_FAILOVER_TIMEOUT",
                    format!("{}s", FAILOVER_TIMEOUT.as_secs()),
                ),
            ]);
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn start(&mut self, slot: Slot) -> anyhow::Result<()> {
        let log = match slot {
            Slot::Primary => {
                self.starts += 1;
                format!("run-{}.log", self.starts)
            }
            Slot::Standby => {
                self.standby_starts += 1;
                format!("standby-{}.log", self.standby_starts)
            }
        };
        let child = Command::new(&self.args.bin)
            .args(["run", "--log-format", "json"])
            .env_clear()
            .envs(self.forwarder_env(slot))
            .stdin(Stdio::null())
            .stdout(self.log(&log)?)
            .stderr(self.log(&log)?)
            .spawn()
            .context("cannot start casestream run")?;
        let broker_stopped_under = self.broker_down;
        *self.slot(slot) = Some(Forwarder {
            child,
            log,
            terminating: None,
            broker_stopped_under,
        });
        Ok(())
    }

    fn start_forwarder(&mut self) -> anyhow::Result<()> {
        self.start(Slot::Primary)
    }

    fn watch_forwarder(&mut self) -> bool {
        self.watch(Slot::Primary)
    }

    /// Notices a forwarder that exited: by itself (a violation, unless documented), or after
    /// SIGTERM (0 within 30 s, else a violation). Whether one is running now.
    fn watch(&mut self, slot: Slot) -> bool {
        let exactly_once = self.scenario.exactly_once;
        let dir = self.dir.clone();
        let Some(fwd) = self.slot(slot).as_mut() else {
            return false;
        };
        let log = fwd.log.clone();
        let verdict = match fwd.child.try_wait() {
            Ok(None) => match fwd.terminating {
                Some(sent) if sent.elapsed() > SIGTERM_LIMIT => {
                    let _ = fwd.child.kill();
                    let _ = fwd.child.wait();
                    Err(format!(
                        "{log}: still running {SIGTERM_LIMIT:?} after SIGTERM"
                    ))
                }
                _ => return true,
            },
            Ok(Some(status)) => match fwd.terminating {
                Some(_) if status.code() == Some(0) => Ok(None),
                Some(sent) => Err(format!(
                    "{log}: exited {status} after SIGTERM ({:?}), not 0",
                    sent.elapsed()
                )),
                None if exactly_once
                    && fwd.broker_stopped_under
                    && lost_role_in(&dir.join(&log)) =>
                {
                    Ok(Some(format!(
                        "{log}: lost the active role to a broker outage"
                    )))
                }
                None => Err(format!("{log}: exited by itself: {status}")),
            },
            Err(e) => Err(format!("cannot watch {log}: {e}")),
        };
        *self.slot(slot) = None;
        match verdict {
            Ok(Some(documented)) => self.documented_exits.push(documented),
            Ok(None) => {}
            Err(violation) => self.violations.push(violation),
        }
        false
    }

    fn signal(&mut self, slot: Slot, signal: &str) -> bool {
        let Some(fwd) = self.slot(slot).as_mut() else {
            return false;
        };
        if fwd.terminating.is_some() {
            return false;
        }
        let sent = Command::new("kill")
            .args([signal, &fwd.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if sent && signal == "-TERM" {
            fwd.terminating = Some(Instant::now());
        }
        sent
    }

    fn signal_forwarder(&mut self, signal: &str) -> bool {
        self.signal(Slot::Primary, signal)
    }

    /// SIGKILL of the primary, reaped at once: the schedule's exit, not the forwarder's own.
    fn kill_primary(&mut self) -> bool {
        let sent = self.signal_forwarder("-KILL");
        if sent {
            self.kills += 1;
            if let Some(mut fwd) = self.forwarder.take() {
                let _ = fwd.child.wait();
            }
        }
        sent
    }

    /// SIGTERM of `slot`, waiting for its exit (judged by [`Run::watch`]).
    async fn stop(&mut self, slot: Slot) {
        if self.signal(slot, "-TERM") {
            while self.watch(slot) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// `casestream_active` of each running instance, sampled at most every 500 ms:
    /// exactly-once must never have two active for longer than a stale one takes to notice.
    async fn sample_active(&mut self) {
        if !self.scenario.exactly_once
            || self.standby.is_none()
            || self
                .last_sample
                .is_some_and(|at| at.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last_sample = Some(Instant::now());
        let mut active = 0;
        for slot in [Slot::Primary, Slot::Standby] {
            let metrics = self.metrics(slot).await;
            active += u32::from(metric_value(&metrics, "casestream_active ") == Some(1.0));
        }
        match (active >= 2, self.both_active_since) {
            (true, None) => self.both_active_since = Some(Instant::now()),
            (true, Some(since)) => self.longest_overlap = self.longest_overlap.max(since.elapsed()),
            (false, _) => self.both_active_since = None,
        }
    }

    /// The instance's `/metrics` text, empty when it does not answer.
    async fn metrics(&self, slot: Slot) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port(slot));
        match self
            .http
            .get(url)
            .timeout(Duration::from_millis(300))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn broker(&self, action: &str) -> anyhow::Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(action)
            .output()
            .context("scripts/kafka.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/kafka.sh {action} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn record(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(self.sim_url("/_sim/record"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn sim_now_ms(&self) -> anyhow::Result<i64> {
        let clock: Value = self
            .http
            .get(self.sim_url("/_sim/clock"))
            .send()
            .await?
            .json()
            .await?;
        let now: DateTime<Utc> = clock["now"]
            .as_str()
            .context("clock without now")?
            .parse()?;
        Ok(now.timestamp_millis())
    }

    async fn put_faults(&self, faults: &Value) -> anyhow::Result<()> {
        self.http
            .put(self.sim_url("/_sim/faults"))
            .json(faults)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        self.http
            .post(self.sim_url(path))
            .json(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- the run

/// What one run drew and found: its line, its violations, the faults it injected.
type Outcome = (String, Vec<String>, BTreeMap<Kind, u32>);

async fn run_one(args: &Args, seed: u64) -> anyhow::Result<Outcome> {
    let (scenario, schedule, mut rng) = draw(seed, args.fault_phase);
    let dir = args.work.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut run = Run {
        args,
        seed,
        prefix: format!("campaign-{seed}-{}", uuid::Uuid::new_v4().simple()),
        token: format!("secret-{}", uuid::Uuid::new_v4().simple()),
        dir,
        anchor_ms: Utc::now().timestamp_millis(),
        http: reqwest::Client::new(),
        forwarder: None,
        standby: None,
        standby_wanted: false,
        starts: 0,
        standby_starts: 0,
        kills: 0,
        terms: 0,
        violations: Vec::new(),
        injected: BTreeMap::new(),
        no_id: HashMap::new(),
        oversized: Vec::new(),
        unreadable_now: Vec::new(),
        unreadable_for_good: Vec::new(),
        unreadable_cleared: Vec::new(),
        long_chats: Vec::new(),
        broker_down: false,
        clock_lag_ms: 0,
        max_lag_ms: 0,
        both_active_since: None,
        longest_overlap: Duration::ZERO,
        last_sample: None,
        down_until: None,
        documented_exits: Vec::new(),
        sim: None,
        scenario: scenario.clone(),
    };
    let summary = scenario.summary();
    let result = drive(&mut run, &schedule, &mut rng).await;
    for mut fwd in [run.forwarder.take(), run.standby.take()]
        .into_iter()
        .flatten()
    {
        let _ = fwd.child.kill();
        let _ = fwd.child.wait();
    }
    if let Some(mut sim) = run.sim.take() {
        let _ = sim.kill();
        let _ = sim.wait();
    }
    if run.broker_down {
        run.broker("start")?;
    }
    result?;
    let faults = run
        .injected
        .iter()
        .map(|(k, n)| format!("{k:?}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut line = format!("{summary} faults=[{faults}]");
    if run.standby_wanted {
        line.push_str(&format!(
            " longest-both-active={:.1}s",
            run.longest_overlap.as_secs_f64()
        ));
    }
    if !run.documented_exits.is_empty() {
        line.push_str(&format!(
            " documented-exits=[{}]",
            run.documented_exits.join("; ")
        ));
    }
    Ok((line, run.violations, run.injected))
}

async fn drive(run: &mut Run<'_>, schedule: &[Fault], rng: &mut ChaCha8Rng) -> anyhow::Result<()> {
    run.start_simulator()?;
    let started = Instant::now();
    while run.sim_now_ms().await.is_err() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the simulator did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.start_forwarder()?;
    if run.scenario.warm {
        // A warm start: the forwarder works a while, is stopped cleanly, stays down (the
        // API goes on) and starts again on its state; the faults begin after.
        let (works, down) = (
            Duration::from_secs(rng.random_range(8..20)),
            Duration::from_secs(rng.random_range(2..15)),
        );
        tokio::time::sleep(works).await;
        run.stop(Slot::Primary).await;
        tokio::time::sleep(down).await;
        run.start_forwarder()?;
    }
    eprintln!(
        "seed {}: {} ; schedule {:?}",
        run.seed,
        run.scenario.summary(),
        schedule
            .iter()
            .map(|f| (f.kind, f.at.as_secs()))
            .collect::<Vec<_>>()
    );

    // The fault phase: every fault at its moment; rates and outages end at their time.
    let mut ends: Vec<(Instant, usize)> = Vec::new();
    let mut next = 0;
    let phase_start = Instant::now();
    let mut active: HashSet<usize> = HashSet::new();
    loop {
        let elapsed = phase_start.elapsed();
        let faults_changed = {
            let mut changed = false;
            while next < schedule.len() && schedule[next].at <= elapsed {
                if inject(run, &schedule[next], rng).await? {
                    *run.injected.entry(schedule[next].kind).or_default() += 1;
                    ends.push((Instant::now() + schedule[next].lasts, next));
                    active.insert(next);
                    changed = true;
                }
                next += 1;
            }
            let now = Instant::now();
            for (_, i) in ends.iter().filter(|(at, _)| *at <= now) {
                if active.remove(i) {
                    end_fault(run, &schedule[*i]).await?;
                    changed = true;
                }
            }
            ends.retain(|(at, _)| *at > now);
            changed
        };
        if faults_changed {
            let rates = rates_now(schedule, &active, &run.unreadable_now);
            run.put_faults(&rates).await?;
        }
        let running = run.watch_forwarder();
        if !running && run.down_until.is_none_or(|at| at <= Instant::now()) {
            run.start_forwarder()?;
            run.down_until = None;
        }
        if run.standby_wanted && !run.watch(Slot::Standby) {
            run.start(Slot::Standby)?;
        }
        run.sample_active().await;
        if next >= schedule.len() && active.is_empty() && elapsed >= run.args.fault_phase {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Faults stop: rates off, the broker up, a forwarder running (an unreadable-for-good
    // page stays so).
    run.put_faults(&rates_now(schedule, &HashSet::new(), &run.unreadable_now))
        .await?;
    if run.broker_down {
        run.broker("start")?;
        run.broker_down = false;
    }
    while run
        .forwarder
        .as_ref()
        .is_some_and(|f| f.terminating.is_some())
    {
        run.watch_forwarder();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !run.watch_forwarder() {
        run.start_forwarder()?;
    }
    judge(run).await
}

/// Whether a forwarder's log ends with the exit docs/troubleshooting.md documents for exactly-once when the
/// broker was away longer than the failover timeout: "this instance lost the active role".
fn lost_role_in(log: &Path) -> bool {
    let log = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&log[log.len().saturating_sub(4000)..])
        .contains("this instance lost the active role")
}

/// The value of the first sample in a Prometheus text whose line starts with `prefix`.
fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The simulator's fault settings for the rate faults active now.
fn rates_now(schedule: &[Fault], active: &HashSet<usize>, unreadable: &[String]) -> Value {
    let mut faults = json!({
        "retry_after_secs": 1, "slow_ms": 1500, "unreadable_cases": unreadable,
    });
    for f in active.iter().map(|i| &schedule[*i]) {
        let field = match f.kind {
            Kind::Storm429 => "rate_429",
            Kind::Burst5xx => "rate_5xx",
            Kind::SlowPages => "rate_slow",
            Kind::Truncated => "rate_truncate",
            Kind::Repeated => "rate_repeat",
            Kind::Brownout => {
                faults["brownout_past_days"] = true.into();
                continue;
            }
            _ => continue,
        };
        let rate = faults[field].as_f64().unwrap_or(0.0).max(f.rate);
        faults[field] = rate.into();
    }
    faults
}

/// Starts one fault; whether it was injected (a kill with no forwarder running is not).
async fn inject(run: &mut Run<'_>, fault: &Fault, rng: &mut ChaCha8Rng) -> anyhow::Result<bool> {
    let widget = run.scenario.widgets[fault.widget].clone();
    Ok(match fault.kind {
        Kind::Storm429
        | Kind::Burst5xx
        | Kind::SlowPages
        | Kind::Truncated
        | Kind::Repeated
        | Kind::Brownout => true,
        Kind::SigKill | Kind::SigTerm => {
            run.down_until = Some(Instant::now() + fault.lasts);
            if fault.kind == Kind::SigTerm {
                let sent = run.signal_forwarder("-TERM");
                run.terms += u32::from(sent);
                return Ok(sent);
            }
            run.kill_primary()
        }
        Kind::LostState => {
            // Exactly-once: the state directory is gone (a pod rescheduled onto a new node
            // with an emptyDir); the restart rebuilds it from the changelog.
            let killed = run.kill_primary();
            let _ = std::fs::remove_dir_all(run.state_dir(Slot::Primary));
            run.down_until = Some(Instant::now() + fault.lasts);
            killed
        }
        Kind::ClockStepBack => {
            // A restart on a clock behind the API's (a VM restored from a snapshot, a node
            // whose NTP has not synced yet); corrected (a restart) when the fault ends.
            let lag = rng.random_range(5..=60i64) * MINUTE_MS;
            if run.clock_lag_ms != 0 {
                return Ok(false);
            }
            run.clock_lag_ms = lag;
            run.max_lag_ms = run.max_lag_ms.max(lag);
            run.kill_primary();
            run.down_until = None;
            true
        }
        Kind::Standby => {
            if run.standby_wanted {
                false
            } else {
                run.standby_wanted = true;
                run.start(Slot::Standby)?;
                true
            }
        }
        Kind::BrokerStop | Kind::BrokerStopLong => {
            if run.broker_down {
                false
            } else {
                run.broker("stop")?;
                run.broker_down = true;
                for fwd in [run.forwarder.as_mut(), run.standby.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    fwd.broker_stopped_under = true;
                }
                true
            }
        }
        Kind::LongChat => {
            // A chat of 1 to 3 hours that ended now: created long before it is visible. Only
            // within today (shorter when today is younger): a chat ending more than the
            // late-visibility period after its day's end is documented as found by re-checks
            // only (docs/api-economy.md).
            let now = run.sim_now_ms().await?;
            let today_so_far = now.rem_euclid(DAY_MS) / MINUTE_MS;
            if today_so_far <= 61 {
                return Ok(false);
            }
            let created = now - rng.random_range(61..=today_so_far.min(180)) * MINUTE_MS;
            let id = format!("longchat-{}-{}", run.seed, run.long_chats.len());
            let wait = 30i64;
            let score = rng.random_range(0..=100i64);
            let survey_at = DateTime::<Utc>::from_timestamp_millis(now + 2 * MINUTE_MS)
                .context("a survey time within chrono's range")?;
            run.post(
                "/_sim/cases",
                &json!({"widget_id": widget, "case": {
                    "id": id, "created_at_date": created,
                    "created_at_seconds": created / 1000,
                    "created_at_milliseconds": created % 1000,
                    "chat_waittime": wait, "chat_duration": (now - created) / 1000 - wait,
                }, "survey": {"score": score, "comments": format!("long chat {score}"),
                              "at": survey_at.to_rfc3339()}}),
            )
            .await?;
            run.long_chats.push((widget, id, created));
            true
        }
        Kind::NoIdCase => {
            // Not a number: a numeric id is an identity the forwarder keeps (src/snapengage).
            let id = [Value::Null, json!(" "), json!(["not", "text"])][rng.random_range(0..3usize)]
                .clone();
            let created = run.sim_now_ms().await?;
            run.post(
                "/_sim/cases",
                &json!({"widget_id": widget, "case": {"id": id}}),
            )
            .await?;
            run.no_id.entry(widget).or_default().push(created);
            true
        }
        Kind::OversizedCase => {
            let id = format!("oversized-{}-{}", run.seed, run.oversized.len());
            let notes = "x".repeat(1_200_000);
            run.post(
                "/_sim/cases",
                &json!({"widget_id": widget, "case": {"id": id, "notes": notes}}),
            )
            .await?;
            run.oversized.push((widget, id));
            true
        }
        Kind::UnreadableWhile | Kind::UnreadableForGood => {
            let record = run.record().await?;
            let since = run.scenario.since_day_start().timestamp_millis();
            let candidates: Vec<&Value> = cases(&record)
                .filter(|c| c["widget"] == widget.as_str())
                .filter(|c| c["created_ms"].as_i64().unwrap_or(0) >= since)
                .filter(|c| !c["id"].as_str().unwrap_or("").starts_with("oversized"))
                .collect();
            if candidates.is_empty() {
                return Ok(false);
            }
            let case = candidates[rng.random_range(0..candidates.len())];
            let id = case["id"].as_str().unwrap_or_default().to_owned();
            run.unreadable_now.push(id.clone());
            if fault.kind == Kind::UnreadableForGood {
                run.unreadable_for_good.push((widget, id));
            } else {
                let created = case["created_ms"].as_i64().unwrap_or(0);
                run.unreadable_cleared.push((widget, id, created));
            }
            // The simulator learns of it with the next fault update.
            true
        }
        Kind::LateSurvey | Kind::EditedSurvey => {
            let record = run.record().await?;
            let now = record["now_ms"].as_i64().unwrap_or(0);
            let since = run.scenario.since_day_start().timestamp_millis();
            let pick: Vec<&Value> = cases(&record)
                .filter(|c| c["created_ms"].as_i64().unwrap_or(0) >= since)
                .filter(|c| !c["id"].as_str().unwrap_or("").starts_with("oversized"))
                .filter(|c| {
                    let landed = c["survey"]["at_ms"].as_i64().is_some_and(|at| at <= now);
                    if fault.kind == Kind::EditedSurvey {
                        landed && c["survey"]["score"].is_i64()
                    } else {
                        !landed && c["chat_end_ms"].as_i64().is_some_and(|e| e < now - HOUR_MS)
                    }
                })
                .collect();
            if pick.is_empty() {
                return Ok(false);
            }
            // Days late when the run has days-old cases: the oldest.
            let case = if fault.kind == Kind::LateSurvey && rng.random_bool(0.5) {
                pick[0]
            } else {
                pick[rng.random_range(0..pick.len())]
            };
            let score = rng.random_range(0..=100i64);
            run.post(
                "/_sim/surveys",
                &json!({"case_id": case["id"], "score": score,
                        "comments": format!("campaign {} {score}", run.seed)}),
            )
            .await?;
            true
        }
    })
}

async fn end_fault(run: &mut Run<'_>, fault: &Fault) -> anyhow::Result<()> {
    match fault.kind {
        Kind::ClockStepBack if run.clock_lag_ms != 0 => {
            run.clock_lag_ms = 0;
            run.kill_primary();
            run.down_until = None;
        }
        Kind::BrokerStop | Kind::BrokerStopLong if run.broker_down => {
            run.broker("start")?;
            run.broker_down = false;
        }
        Kind::UnreadableWhile => {
            let widget = &run.scenario.widgets[fault.widget];
            if let Some((_, id, _)) = run
                .unreadable_cleared
                .iter()
                .rev()
                .find(|(w, id, _)| w == widget && run.unreadable_now.contains(id))
            {
                let id = id.clone();
                run.unreadable_now.retain(|x| *x != id);
            }
        }
        _ => {}
    }
    Ok(())
}

fn cases(record: &Value) -> impl Iterator<Item = &Value> {
    record["cases"].as_array().into_iter().flatten()
}

// ---------------------------------------------------------------- the oracle

/// One event read back: (type, subject, id, time, data).
#[derive(Debug)]
struct Event {
    kind: String,
    subject: String,
    id: String,
    time: DateTime<Utc>,
    data: Value,
}

struct Letter {
    code: String,
    widget: String,
    case_id: Option<String>,
    value: Vec<u8>,
}

/// The next instant on the survey re-check grid at or after `at` for a chat that ended at
/// `end` (docs/api-economy.md): every 10 min for 6 h, every 2 h to a day, then
/// daily at 12:00 UTC.
fn grid_next(at: i64, end: i64) -> i64 {
    let ceil = |t: i64, step: i64| (t + step - 1).div_euclid(step) * step;
    match at - end {
        age if age < 6 * HOUR_MS => ceil(at, 10 * MINUTE_MS),
        age if age < DAY_MS => ceil(at, 2 * HOUR_MS),
        _ => ceil(at - 12 * HOUR_MS, DAY_MS) + 12 * HOUR_MS,
    }
}

fn survey_of(plan: &Value) -> Option<(Option<i64>, Option<String>)> {
    let score = plan["score"].as_i64();
    let comments = plan["comments"]
        .as_str()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    (score.is_some() || comments.is_some()).then_some((score, comments))
}

async fn judge(run: &mut Run<'_>) -> anyhow::Result<()> {
    let speed = run.scenario.speed;
    let virt = |real: Duration| (real.as_secs_f64() * speed * 1000.0) as i64;
    let quiet_ms = run.sim_now_ms().await?;
    eprintln!("seed {}: faults stopped at {}", run.seed, at(quiet_ms));
    let slack = virt(SLACK_REAL);
    // Judged at: after faults stop, one re-check grid step, a poll and the slack.
    let isolation = virt(ISOLATION_REAL);
    let unreadable_widgets: HashSet<String> = run
        .unreadable_for_good
        .iter()
        .map(|(w, _)| w.clone())
        .chain(run.unreadable_cleared.iter().map(|(w, _, _)| w.clone()))
        .collect();
    // A clock stepped back delays everything the forwarder decides by as much.
    let lag = run.max_lag_ms;
    let judge_ms = quiet_ms
        + lag
        + 10 * MINUTE_MS
        + POLL_MS
        + 2 * slack
        + if unreadable_widgets.is_empty() {
            0
        } else {
            isolation
        };
    let since = run.scenario.since_day_start().timestamp_millis();
    let mut last_report;
    loop {
        let record = run.record().await?;
        let now = record["now_ms"].as_i64().unwrap_or(0);
        let (cases, surveys, letters) = read_all(run).await?;
        let mut missing = Vec::new();
        let exempt = exempt_cases(run, &record, &letters);
        for case in cases_of(&record) {
            let (widget, id) = (
                case["widget"].as_str().unwrap_or(""),
                case["id"].as_str().unwrap_or(""),
            );
            let created = case["created_ms"].as_i64().unwrap_or(0);
            if created < since || exempt.contains(id) || run.oversized.iter().any(|(_, o)| o == id)
            {
                continue;
            }
            // Every widget's: the lanes are shared, so one widget's probes hold the others'
            // reads of the past too (seed 40).
            let extra = lag
                + if !unreadable_widgets.is_empty() {
                    isolation
                } else {
                    0
                };
            let visible = case["visible_ms"].as_i64().unwrap_or(0);
            let mut due = visible.max(quiet_ms) + POLL_MS + slack + extra;
            // A chat longer than the overlap is created before the rolling fresh window of
            // `datetimes` starts: its day's final read finds it (docs/api-economy.md, "No case is missed").
            let long_chat = run.long_chats.iter().any(|(_, l, _)| l == id);
            if long_chat && run.scenario.datetimes && visible - created > OVERLAP_MS {
                let day_end = (created.div_euclid(DAY_MS) + 1) * DAY_MS;
                due = due.max(day_end + LATE_VISIBILITY_MS + POLL_MS + slack + extra);
            }
            let case_due = due;
            if run
                .unreadable_cleared
                .iter()
                .any(|(w, _, c)| w == widget && c.div_euclid(DAY_MS) == created.div_euclid(DAY_MS))
            {
                due = due.max(grid_next(quiet_ms, created) + POLL_MS + slack + extra);
            }
            if due <= judge_ms && !cases.contains_key(id) {
                missing.push(format!(
                    "case.created of {widget}/{id} (due by {})",
                    at(due)
                ));
            }
            let (Some(plan), Some(end)) =
                (survey_of(&case["survey"]), case["chat_end_ms"].as_i64())
            else {
                continue;
            };
            let landed = case["survey"]["at_ms"].as_i64().unwrap_or(i64::MAX);
            if landed > now {
                continue;
            }
            let ready = landed.max(end + SETTLE_MS);
            // Tracked from its announcement on: a survey of a case found late waits for it.
            let due =
                (grid_next(ready, end).max(grid_next(quiet_ms, end)) + POLL_MS + slack + extra)
                    .max(case_due + 10 * MINUTE_MS + POLL_MS);
            let published = surveys.get(id).is_some_and(|evs| {
                evs.iter()
                    .any(|e| survey_of(&e.data["survey"]).as_ref() == Some(&plan))
            });
            if due <= judge_ms && !published {
                missing.push(format!(
                    "case.survey {plan:?} of {widget}/{id} (landed {}, settled {}, due by {})",
                    at(landed),
                    at(end + SETTLE_MS),
                    at(due)
                ));
            }
        }
        missing.extend(letters_missing(run, &letters));
        missing.extend(unread_spans_unreported(run).await);
        // An exit while judged is noticed (and judged) too; the forwarder is started again.
        if !run.watch_forwarder() {
            run.start_forwarder()?;
        }
        if run.standby_wanted && !run.watch(Slot::Standby) {
            run.start(Slot::Standby)?;
        }
        run.sample_active().await;
        last_report = missing;
        if last_report.is_empty() {
            break;
        }
        if now >= judge_ms {
            let n = last_report.len();
            last_report.truncate(5);
            run.violations.push(format!(
                "at {} (faults stopped {} + clock lag {}m + grid step 10m + poll + 2x slack {}s real{}), {n} missing: {}",
                at(now), at(quiet_ms), lag / MINUTE_MS, SLACK_REAL.as_secs(),
                if unreadable_widgets.is_empty() { "" } else { " + isolation 180s real" },
                last_report.join("; ")
            ));
            break;
        }
        eprintln!(
            "seed {}: judging at {}: {} open, e.g. {:?}",
            run.seed,
            at(now),
            last_report.len(),
            last_report.first()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // What may never happen, on the final read.
    let record = run.record().await?;
    let (cases, surveys, letters) = read_all(run).await?;
    let chat_end: HashMap<&str, i64> = cases_of(&record)
        .filter_map(|c| Some((c["id"].as_str()?, c["chat_end_ms"].as_i64()?)))
        .collect();
    // docs/delivery.md: a crash re-sends the pages in flight, and so does a SIGTERM that gave up waiting
    // for Kafka (broker down): one more copy per process end at most.
    let max_copies = 1 + (run.kills + run.terms) as usize;
    for (id, evs) in &cases {
        let ids: HashSet<&str> = evs.iter().map(|e| e.id.as_str()).collect();
        if ids.len() > 1 {
            run.violations
                .push(format!("case.created of {id} with {} event ids", ids.len()));
        }
        if run.scenario.exactly_once && evs.len() > 1 {
            run.violations.push(format!(
                "case.created of {id} {} times in exactly-once",
                evs.len()
            ));
        } else if evs.len() > max_copies {
            run.violations.push(format!(
                "case.created of {id} {} times (bound: 1 + {} SIGKILLs + {} SIGTERMs)",
                evs.len(),
                run.kills,
                run.terms
            ));
        }
    }
    for (id, evs) in &surveys {
        let mut by_content: HashMap<String, (HashSet<&str>, usize)> = HashMap::new();
        for e in evs {
            let entry = by_content.entry(e.data["survey"].to_string()).or_default();
            entry.0.insert(&e.id);
            entry.1 += 1;
            if let Some(end) = chat_end.get(id.as_str())
                && e.time.timestamp_millis() < end + SETTLE_MS
            {
                run.violations.push(format!(
                    "case.survey of {id} observed {} before settle {}",
                    e.time.to_rfc3339(),
                    at(end + SETTLE_MS)
                ));
            }
        }
        for (content, (ids, n)) in by_content {
            if ids.len() > 1 {
                run.violations.push(format!(
                    "case.survey {content} of {id} with {} event ids",
                    ids.len()
                ));
            }
            if run.scenario.exactly_once && n > 1 {
                run.violations.push(format!(
                    "case.survey {content} of {id} {n} times in exactly-once"
                ));
            } else if n > max_copies {
                run.violations
                    .push(format!("case.survey {content} of {id} {n} times"));
            }
        }
    }
    // Unusable inputs: no more dead letters than inputs (the count check above asked for at
    // least as many).
    for (widget, created) in &run.no_id {
        let n = created.len();
        let got = letters
            .iter()
            .filter(|l| &l.widget == widget && is_no_id(&l.code))
            .count();
        let bound = if run.scenario.exactly_once {
            n
        } else {
            n * max_copies
        };
        if got > bound {
            run.violations.push(format!(
                "{got} dead letters for {n} unusable case(s) of {widget}"
            ));
        }
    }
    // No secret in any output.
    for entry in std::fs::read_dir(&run.dir)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if text.contains(&run.token) {
                run.violations
                    .push(format!("the API token in {}", entry.path().display()));
            }
        }
    }
    let payload_leak = cases
        .values()
        .chain(surveys.values())
        .flatten()
        .any(|e| e.data.to_string().contains(&run.token))
        || letters
            .iter()
            .any(|l| String::from_utf8_lossy(&l.value).contains(&run.token));
    if payload_leak {
        run.violations.push("the API token in a topic".into());
    }
    // One line per run: the first few violations say enough to replay.
    if run.violations.len() > 6 {
        let more = run.violations.len() - 6;
        run.violations.truncate(6);
        run.violations.push(format!("and {more} more"));
    }
    if run.longest_overlap > ACTIVE_OVERLAP_LIMIT {
        run.violations.push(format!(
            "two instances reported casestream_active 1 at once for {:?} (limit {ACTIVE_OVERLAP_LIMIT:?})",
            run.longest_overlap
        ));
    }
    run.stop(Slot::Standby).await;
    run.stop(Slot::Primary).await;
    Ok(())
}

/// Every widget with a page unreadable for good must show it in `casestream_unread_spans` on a
/// running instance (the active one; a standby follows the same progress).
async fn unread_spans_unreported(run: &Run<'_>) -> Vec<String> {
    let widgets: HashSet<&str> = run
        .unreadable_for_good
        .iter()
        .map(|(w, _)| w.as_str())
        .collect();
    if widgets.is_empty() {
        return Vec::new();
    }
    let metrics = [
        run.metrics(Slot::Primary).await,
        run.metrics(Slot::Standby).await,
    ];
    widgets
        .into_iter()
        .filter(|w| {
            let series = format!("casestream_unread_spans{{widget=\"{w}\"}} ");
            !metrics
                .iter()
                .any(|m| metric_value(m, &series).is_some_and(|v| v >= 1.0))
        })
        .map(|w| format!("casestream_unread_spans{{widget=\"{w}\"}} not at least 1"))
        .collect()
}

fn is_no_id(code: &str) -> bool {
    matches!(
        code,
        "missing_id" | "empty_id" | "id_not_text" | "not_an_object"
    )
}

/// The record's cases with a usable id (a blank one is dead-lettered, not announced).
fn cases_of(record: &Value) -> impl Iterator<Item = &Value> {
    cases(record).filter(|c| c["id"].as_str().is_some_and(|id| !id.trim().is_empty()))
}

fn at(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%m-%dT%H:%M:%S").to_string(),
    )
}

/// Cases of pages unreadable for good: the dead letter of an unread span that holds one is
/// their record (docs/events.md, "Unreadable pages"); its absence is reported by `letters_missing`.
fn exempt_cases(run: &Run<'_>, record: &Value, letters: &[Letter]) -> HashSet<String> {
    let spans = unread_spans(letters);
    // The spans that still hold a page unreadable for good: found once, not per case.
    let bad_created: Vec<(&str, i64)> = run
        .unreadable_for_good
        .iter()
        .filter_map(|(w, bad)| {
            let case = cases_of(record).find(|c| c["id"] == bad.as_str())?;
            Some((w.as_str(), case["created_ms"].as_i64().unwrap_or(0)))
        })
        .collect();
    let bad_spans: Vec<&(String, i64, i64)> = spans
        .iter()
        .filter(|(w, s, e)| {
            bad_created
                .iter()
                .any(|(bw, at)| bw == w && (*s..*e).contains(at))
        })
        .collect();
    let mut exempt = HashSet::new();
    for case in cases_of(record) {
        let widget = case["widget"].as_str().unwrap_or("");
        let created = case["created_ms"].as_i64().unwrap_or(0);
        let id = case["id"].as_str().unwrap_or("");
        let bad = run
            .unreadable_for_good
            .iter()
            .any(|(w, bad)| w == widget && bad == id);
        // Other cases of a span that still holds a page unreadable for good.
        let in_bad_span = bad_spans
            .iter()
            .any(|(w, s, e)| w == widget && (*s..*e).contains(&created));
        if bad || in_bad_span {
            exempt.insert(id.to_owned());
        }
    }
    exempt
}

/// The spans dead letters name as unread, by widget: (widget, start ms, end ms).
fn unread_spans(letters: &[Letter]) -> Vec<(String, i64, i64)> {
    letters
        .iter()
        .filter(|l| l.code == "unread_span")
        .filter_map(|l| {
            let v: Value = serde_json::from_slice(&l.value).ok()?;
            let start: DateTime<Utc> = v["start"].as_str()?.parse().ok()?;
            let end: DateTime<Utc> = v["end"].as_str()?.parse().ok()?;
            Some((
                l.widget.clone(),
                start.timestamp_millis(),
                end.timestamp_millis(),
            ))
        })
        .collect()
}

fn letters_missing(run: &Run<'_>, letters: &[Letter]) -> Vec<String> {
    let mut missing = Vec::new();
    let spans = unread_spans(letters);
    for (widget, created) in &run.no_id {
        // One created inside a span the API does not serve is never read: the span's dead
        // letter is its record (seed 1017: an unusable case in the unread hour of `dates`).
        let n = created
            .iter()
            .filter(|at| {
                !spans
                    .iter()
                    .any(|(w, s, e)| w == widget && (*s..*e).contains(*at))
            })
            .count();
        let got = letters
            .iter()
            .filter(|l| &l.widget == widget && is_no_id(&l.code))
            .count();
        if got < n {
            missing.push(format!(
                "{n} unusable case(s) of {widget}, {got} dead letter(s)"
            ));
        }
    }
    for (widget, id) in &run.oversized {
        if !letters.iter().any(|l| {
            &l.widget == widget && l.case_id.as_deref() == Some(id) && l.code == "record_too_large"
        }) {
            missing.push(format!("the record_too_large dead letter of {widget}/{id}"));
        }
    }
    for (widget, id) in &run.unreadable_for_good {
        let named = letters
            .iter()
            .any(|l| &l.widget == widget && l.code == "unread_span");
        if !named {
            missing.push(format!(
                "an unread_span dead letter of {widget} (page of {id} unreadable for good)"
            ));
        }
    }
    missing
}

type ByCase = HashMap<String, Vec<Event>>;

async fn read_all(run: &Run<'_>) -> anyhow::Result<(ByCase, ByCase, Vec<Letter>)> {
    let (bootstrap, prefix, binary) = (
        run.args.bootstrap.clone(),
        run.prefix.clone(),
        run.scenario.binary,
    );
    tokio::task::spawn_blocking(move || {
        let events = |suffix: &str| -> anyhow::Result<ByCase> {
            let mut by_case: ByCase = HashMap::new();
            for r in read_topic(&bootstrap, &format!("{prefix}.{suffix}"))? {
                let event = if binary {
                    event_from_binary(&r)?
                } else {
                    serde_json::from_slice(&r.payload)?
                };
                let text = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
                let e = Event {
                    kind: text("type"),
                    subject: text("subject"),
                    id: text("id"),
                    time: text("time").parse().context("event time")?,
                    data: event["data"].clone(),
                };
                by_case.entry(e.subject.clone()).or_default().push(e);
            }
            Ok(by_case)
        };
        let cases = events("cases")?;
        let surveys = events("surveys")?;
        if let Some(e) = cases
            .values()
            .flatten()
            .chain(surveys.values().flatten())
            .find(|e| !e.kind.starts_with("com.snapengage.case."))
        {
            bail!("unknown event type {}", e.kind);
        }
        let letters = read_topic(&bootstrap, &format!("{prefix}.dead"))?
            .into_iter()
            .map(|r| Letter {
                code: r
                    .headers
                    .get("casestream_reason_code")
                    .cloned()
                    .unwrap_or_default(),
                widget: r
                    .headers
                    .get("casestream_widget_id")
                    .cloned()
                    .unwrap_or_default(),
                case_id: r.headers.get("casestream_case_id").cloned(),
                value: r.payload,
            })
            .collect();
        Ok((cases, surveys, letters))
    })
    .await?
}

struct Record {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

fn event_from_binary(record: &Record) -> anyhow::Result<Value> {
    let mut event = serde_json::Map::new();
    for (k, v) in &record.headers {
        if let Some(attr) = k.strip_prefix("ce_") {
            event.insert(attr.to_owned(), Value::String(v.clone()));
        }
    }
    event.insert("data".into(), serde_json::from_slice(&record.payload)?);
    Ok(Value::Object(event))
}

/// A topic from the beginning to its end as of the call, `read_committed` (a copy of
/// tests/common's `read_topic`); a topic not created yet is empty.
fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("campaign-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                ends.insert(p.id(), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let mut last = Instant::now();
    // In read_committed the last offsets may be transaction markers, never delivered: a
    // partition is done when the consumer's position reaches its end.
    while !ends.is_empty() && last.elapsed() < Duration::from_secs(10) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
                let headers = m
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
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => {
                for p in consumer.position()?.elements() {
                    if let (Offset::Offset(at), Some(end)) = (p.offset(), ends.get(&p.partition()))
                        && at >= *end
                    {
                        ends.remove(&p.partition());
                    }
                }
            }
        }
    }
    Ok(records)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("campaign: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = if args.seeds.is_empty() {
        (args.seed..args.seed + args.runs).collect()
    } else {
        args.seeds.clone()
    };
    let mut violated = 0;
    let mut totals: BTreeMap<String, u32> = BTreeMap::new();
    for seed in &seeds {
        if args.plan {
            let (scenario, schedule, _) = draw(*seed, args.fault_phase);
            let kinds: Vec<String> = schedule
                .iter()
                .map(|f| format!("{:?}@{}s", f.kind, f.at.as_secs()))
                .collect();
            println!(
                "seed={seed} {} faults=[{}]",
                scenario.summary(),
                kinds.join(",")
            );
            continue;
        }
        let started = Instant::now();
        match run_one(&args, *seed).await {
            Ok((line, violations, injected)) => {
                for (kind, n) in injected {
                    *totals.entry(format!("{kind:?}")).or_default() += n;
                }
                let secs = started.elapsed().as_secs();
                if violations.is_empty() {
                    println!("seed={seed} {line} verdict=ok ({secs}s)");
                } else {
                    violated += 1;
                    println!(
                        "seed={seed} {line} verdict=VIOLATION ({secs}s): {} | replay: bash scripts/campaign.sh --seed {seed}",
                        violations.join(" | ")
                    );
                }
            }
            Err(e) => {
                violated += 1;
                println!(
                    "seed={seed} verdict=ERROR (the campaign itself failed): {e:#} | replay: bash scripts/campaign.sh --seed {seed}"
                );
            }
        }
    }
    let kinds: Vec<String> = totals.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "campaign: {} run(s), {violated} with violations; faults injected: {}",
        seeds.len(),
        kinds.join(" ")
    );
    if violated > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
