//! The `economy` benchmark: Logs API requests spent and event freshness in steady state, for
//! today's behaviour (today and yesterday read every poll) and the scheduler's `dates` and
//! `datetimes` modes, at three volumes and two widget counts, under one 5 requests/s budget.
//!
//! Each scenario runs the forwarder in this process against the simulator on a virtual clock
//! ([`DEFAULT_SPEED`] times real time by default) and a real broker. The budget is virtual: the client's rate
//! limit is 5 x the speed in real requests per second. The state starts as a forwarder that has
//! been running would have it (every case visible at 23:15 is known), so what is measured is
//! the steady state from 23:20, across midnight and its grace period: for 80 minutes after a
//! 47 h history, or with `--economy-day` ([`Span::Day`]) for a whole day after a history that
//! reaches past the survey horizon.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use casestream::admin::Health;
use casestream::clock::Clock;
use casestream::config::Config;
use casestream::pipeline::tracker::{self, TrackerSettings};
use casestream::simulator::http::RunningSimulator;
use casestream::simulator::{SimConfig, Simulator};
use casestream::sink::{KafkaSettings, Topics};
use casestream::snapengage::{Case, ClientConfig, RetryPolicy, WindowMode};
use casestream::state::{SqliteStore, StateStore, StoredCase, WidgetProgress};

/// Virtual seconds per real second, unless `--economy-speed` says otherwise: fast enough for
/// the matrix to run in minutes, slow enough for the light scenarios to keep up in real time.
const DEFAULT_SPEED: f64 = 120.0;
/// The request budget, per virtual second.
const BUDGET_PER_SEC: f64 = 5.0;
const POLL: Duration = Duration::from_secs(30);
/// Cases a page holds, in the API and the simulator.
const PAGE: u64 = casestream::simulator::DEFAULT_PAGE_SIZE as u64;
const INDEX_DELAY_MS: i64 = 2_000;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("a time")
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// What the first release did: today and the lookback day, every poll.
    Baseline,
    Dates,
    Datetimes,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Baseline, Mode::Dates, Mode::Datetimes];

    /// The mode `--economy-modes` names: `baseline`, `dates` or `datetimes`.
    pub fn parse(name: &str) -> Option<Mode> {
        match name {
            "baseline" => Some(Mode::Baseline),
            "dates" => Some(Mode::Dates),
            "datetimes" => Some(Mode::Datetimes),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (today + yesterday every poll)",
            Mode::Dates => "`dates`",
            Mode::Datetimes => "`datetimes`",
        }
    }
}

struct Row {
    requests_per_widget_poll: f64,
    /// Outside the midnight period (midnight until the day just ended has had its final read).
    outside_midnight_per_widget_poll: f64,
    /// Of those, pages of fresh windows (windows reaching the present).
    fresh_outside_midnight_per_widget_poll: f64,
    /// How long the midnight period lasted; `None`: it outlasted the span.
    midnight_minutes: Option<f64>,
    requests_per_new_case: f64,
    budget_use: f64,
    created_p50: f64,
    created_p99: f64,
    created_missing: usize,
    survey_p99: f64,
    surveys_within_15: f64,
    surveys: usize,
}

/// Seconds between two times, as minutes.
fn minutes(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 60_000.0
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    super::percentile(values, p)
}

/// When the events of a topic were produced, by subject, in virtual time: the record's
/// timestamp (the producer's wall clock) mapped onto the virtual clock, which read `origin.1`
/// at real time `origin.0`.
fn publish_times(
    bootstrap: &str,
    topic: &str,
    origin: (std::time::SystemTime, DateTime<Utc>),
    speed: f64,
) -> HashMap<String, DateTime<Utc>> {
    let (origin, start) = origin;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition");
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p.id(), high);
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut times = HashMap::new();
    let mut last = Instant::now();
    while !ends.is_empty() && last.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            last = Instant::now();
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                ends.remove(&m.partition());
            }
            let event: Value = serde_json::from_slice(m.payload().unwrap_or_default())
                .expect("a structured event");
            let subject = event["subject"].as_str().expect("subject").to_owned();
            let real_ms = m.timestamp().to_millis().expect("a record timestamp");
            let origin_ms = origin
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis() as i64;
            let virtual_ms = ((real_ms - origin_ms) as f64 * speed) as i64;
            times
                .entry(subject)
                .or_insert(start + chrono::Duration::milliseconds(virtual_ms));
        }
    }
    times
}

/// A state as a forwarder that has been running since `since` would have it at `now`: every
/// case visible then known (decided by the tracker as of `now`, so each pending survey
/// re-check sits on its grid), every widget caught up and read at `now`. The virtual clock
/// runs on while this works: cases that became visible since are left out.
fn seed_state(
    dir: &std::path::Path,
    sim: &RunningSimulator,
    since: chrono::NaiveDate,
    now: DateTime<Utc>,
) {
    let store = SqliteStore::open(dir).expect("state");
    let settings = TrackerSettings::default();
    for widget in &sim.sim.config().widgets {
        let known: Vec<StoredCase> = sim
            .sim
            // Seeding takes minutes of the virtual clock: the cases as served at `now`, so a
            // survey that landed since is not known yet (else it would never be announced).
            .cases_served_at(widget, now)
            .into_iter()
            .filter_map(|(value, _)| Case::from_value(value).ok())
            .filter(|case| {
                case.chat_end()
                    .is_some_and(|end| end + chrono::Duration::milliseconds(INDEX_DELAY_MS) <= now)
            })
            .map(|case| StoredCase {
                id: case.id().to_owned(),
                widget: widget.clone(),
                day: case.created_at().unwrap_or(now).date_naive(),
                created: case.created_at().unwrap_or(now),
                record: tracker::observe(&case, None, now, &settings).record,
            })
            .collect();
        for chunk in known.chunks(20_000) {
            store.commit_cases(chunk).expect("seed cases");
        }
        store
            .set_widget(
                widget,
                &WidgetProgress {
                    since,
                    caught_up_through: now.date_naive().pred_opt(),
                    last_fresh_poll: Some(now),
                    unread: Vec::new(),
                },
            )
            .expect("seed progress");
    }
}

/// A forwarder running in this process on the scenario's clock.
struct Forwarder {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), casestream::app::AppError>>,
}

impl Forwarder {
    fn start(config: Config, clock: &Clock) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(casestream::app::run(
            config,
            clock.clone(),
            Arc::new(Health::default()),
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Shuts it down as SIGTERM would, and waits for it to end without an error.
    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("forwarder task")
            .expect("forwarder run");
    }
}

/// The simulator of a scenario on `clock`: widgets w1.., `volume` cases an hour each, and
/// `history` of past cases.
async fn start_simulator(
    clock: &Clock,
    widgets: usize,
    volume: f64,
    history: Duration,
) -> RunningSimulator {
    let sim = Arc::new(Simulator::new(
        SimConfig {
            widgets: (1..=widgets).map(|i| format!("w{i}")).collect(),
            cases_per_hour: volume,
            history,
            index_delay: Duration::from_millis(INDEX_DELAY_MS as u64),
            ..SimConfig::default()
        },
        clock.clone(),
    ));
    casestream::simulator::http::start(sim, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator")
}

/// The forwarder of a scenario: the simulator's API under the virtual budget, topics of its
/// own (named after the returned prefix), its state in `dir`, poll 30 s.
fn forwarder_config(
    sim: &RunningSimulator,
    bootstrap: &str,
    dir: &std::path::Path,
    mode: Mode,
    speed: f64,
) -> (Config, String) {
    let simulated = sim.sim.config();
    let mut api = ClientConfig::new(
        sim.base_url(),
        simulated.org.clone(),
        simulated.token.clone().into(),
    );
    api.rate_limit_per_sec = BUDGET_PER_SEC * speed;
    api.retry = RetryPolicy {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_attempts: 20,
    };
    api.window_mode = match mode {
        Mode::Datetimes => WindowMode::Datetimes,
        _ => WindowMode::Dates,
    };
    let prefix = format!("bench-economy-{}", uuid::Uuid::new_v4().simple());
    let mut kafka = KafkaSettings::new(bootstrap);
    kafka.topics = Topics {
        cases: format!("{prefix}.cases"),
        surveys: format!("{prefix}.surveys"),
        deadletter: format!("{prefix}.dead"),
        state: format!("{prefix}.state"),
    };
    kafka.topic_partitions = 3;
    let mut config = Config::new(api, kafka, simulated.widgets.clone());
    config.state_dir = dir.to_owned();
    config.admin.addr = ([127, 0, 0, 1], 0).into();
    config.pipeline.poll_interval = POLL;
    (config, prefix)
}

/// How long a steady-state scenario is measured, and the history it starts with.
#[derive(Clone, Copy)]
pub enum Span {
    /// 80 minutes across midnight, 2 days of history: the fresh windows and midnight.
    Midnight,
    /// A whole day, 7 past days of history: every re-check grid's points once or more. The
    /// oldest case with a check inside the day ended on the 7th day back (its last check is the
    /// first 12:00 UTC at or after its 7-day horizon); an older day would be one a running
    /// forwarder had pruned, and pruning it inside the span would weigh on the backlog lane.
    Day,
}

impl Span {
    fn measured(self) -> Duration {
        match self {
            Span::Midnight => Duration::from_secs(80 * 60),
            Span::Day => Duration::from_secs(86_400),
        }
    }

    /// Whole days of history before today (today's, until the start, comes on top).
    fn past_days(self) -> u64 {
        match self {
            Span::Midnight => 1,
            Span::Day => 7,
        }
    }
}

async fn scenario(
    bootstrap: &str,
    mode: Mode,
    widgets: usize,
    volume: f64,
    span: Span,
    speed: f64,
) -> Row {
    let start = at("2026-03-10T23:15:00Z");
    let clock = Clock::scaled(start, speed);
    // The past days whole, today until now.
    let history = Duration::from_secs(span.past_days() * 86_400 + 23 * 3600 + 15 * 60);
    let since = start.date_naive() - chrono::Days::new(span.past_days());
    let span = span.measured();
    let sim = start_simulator(&clock, widgets, volume, history).await;
    let dir = tempfile::tempdir().expect("state dir");
    seed_state(dir.path(), &sim, since, start);
    // Seeding took real time, which the virtual clock counted: back to the start, so the
    // forwarder begins where the seeded state ends. (Real, virtual) origin of the mapping of
    // record timestamps onto the virtual clock, taken together after the step.
    clock.step(start - clock.now());
    let origin = (std::time::SystemTime::now(), clock.now());

    let (mut config, prefix) = forwarder_config(&sim, bootstrap, dir.path(), mode, speed);
    let simulated = sim.sim.config();
    if let Mode::Baseline = mode {
        config.pipeline.late_visibility = Duration::from_secs(86_400);
    }

    let forwarder = Forwarder::start(config, &clock);
    let measured_from = at("2026-03-10T23:20:00Z");
    let midnight = at("2026-03-11T00:00:00Z");
    let measured_to = measured_from + chrono::Duration::from_std(span).expect("span");
    let requests_now = || {
        let stats = sim.sim.stats();
        (stats.requests, stats.pages_reaching_now)
    };
    let mut marks = Vec::new();
    for mark in [measured_from, midnight] {
        clock.sleep_until(mark).await;
        marks.push(requests_now());
    }
    // Midnight's once-a-day read, the final whole-day read of the day just ended, comes once
    // its grace period has passed (every widget's catch-up past it): from midnight to then is
    // the midnight period, whatever it holds. The daily re-checks of older days are at 12:00,
    // outside it. The baseline's fresh window keeps that day until the next midnight: its
    // period is the grace period alone.
    let midnight_ended = match mode {
        Mode::Baseline => {
            let grace_end = midnight + chrono::Duration::minutes(30);
            clock.sleep_until(grace_end).await;
            Some(clock.now())
        }
        Mode::Dates | Mode::Datetimes => {
            let day = measured_from.date_naive();
            let final_read = |store: &SqliteStore| {
                for widget in &simulated.widgets {
                    let through = store.widget(widget)?.and_then(|p| p.caught_up_through);
                    if through.is_none_or(|through| through < day) {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            let what = format!("every widget caught up through {day}");
            tokio::select! {
                _ = super::state_reaches(dir.path(), &what, final_read) => Some(clock.now()),
                _ = clock.sleep_until(measured_to) => None,
            }
        }
    };
    marks.push(requests_now());
    clock.sleep_until(measured_to).await;
    marks.push(requests_now());
    forwarder.stop().await;

    let created = publish_times(bootstrap, &format!("{prefix}.cases"), origin, speed);
    let surveyed = publish_times(bootstrap, &format!("{prefix}.surveys"), origin, speed);
    let requests = marks[3].0 - marks[0].0;
    let outside = (marks[1].0 - marks[0].0) + (marks[3].0 - marks[2].0);
    let fresh_outside = (marks[1].1 - marks[0].1) + (marks[3].1 - marks[2].1);
    let polls = span.as_secs_f64() / POLL.as_secs_f64();
    let midnight_to = midnight_ended.unwrap_or(measured_to);
    let midnight_polls = minutes(midnight_to - midnight) * 60.0 / POLL.as_secs_f64();
    let outside_per_widget_poll =
        |requests: u64| requests as f64 / (polls - midnight_polls) / widgets as f64;

    let mut created_latency = Vec::new();
    let mut created_missing = 0;
    let mut survey_latency = Vec::new();
    let last_created = measured_to - chrono::Duration::minutes(5);
    let last_survey = measured_to - chrono::Duration::minutes(20);
    for widget in &simulated.widgets {
        for (value, survey_ms) in sim.sim.visible_cases_with_survey_times(widget) {
            let Ok(case) = Case::from_value(value) else {
                continue;
            };
            let Some(end) = case.chat_end() else {
                continue;
            };
            let visible = end + chrono::Duration::milliseconds(INDEX_DELAY_MS);
            if visible >= measured_from && visible <= last_created {
                match created.get(case.id()) {
                    Some(t) => created_latency.push(minutes(*t - visible)),
                    None => {
                        created_missing += 1;
                        created_latency.push(minutes(measured_to - visible));
                    }
                }
            }
            if let Some(appeared) = survey_ms.and_then(DateTime::from_timestamp_millis)
                && appeared >= measured_from
                && appeared <= last_survey
            {
                let published = surveyed.get(case.id()).copied().unwrap_or(measured_to);
                survey_latency.push(minutes(published - appeared));
            }
        }
    }
    let new_cases = created_latency.len().max(1);
    let surveys = survey_latency.len();
    let within = survey_latency.iter().filter(|m| **m <= 15.0).count();
    let row = Row {
        requests_per_widget_poll: requests as f64 / polls / widgets as f64,
        outside_midnight_per_widget_poll: outside_per_widget_poll(outside),
        fresh_outside_midnight_per_widget_poll: outside_per_widget_poll(fresh_outside),
        midnight_minutes: midnight_ended.map(|end| minutes(end - midnight)),
        requests_per_new_case: requests as f64 / new_cases as f64,
        budget_use: requests as f64 / (BUDGET_PER_SEC * span.as_secs_f64()),
        created_p50: percentile(&mut created_latency, 0.5),
        created_p99: percentile(&mut created_latency, 0.99),
        created_missing,
        survey_p99: percentile(&mut survey_latency, 0.99),
        surveys_within_15: within as f64 / surveys.max(1) as f64,
        surveys,
    };
    sim.stop().await.expect("simulator stop");
    row
}

/// Which scenarios: every mode at each of these widget counts and volumes, at this speed.
pub struct Matrix {
    pub widgets: Vec<usize>,
    pub volumes: Vec<f64>,
    pub speed: f64,
    /// Which modes the steady-state scenarios run (the catch-up runs both scheduler modes).
    pub modes: Vec<Mode>,
    /// Days of history the budgeted catch-up reads, at the first widget count and 200/h.
    pub catch_up_days: u64,
    pub span: Span,
}

impl Default for Matrix {
    fn default() -> Self {
        Self {
            widgets: vec![4, 20],
            volumes: vec![20.0, 200.0, 1_000.0],
            modes: Mode::ALL.to_vec(),
            speed: DEFAULT_SPEED,
            catch_up_days: 7,
            span: Span::Midnight,
        }
    }
}

/// The table: every mode at every volume and widget count of `matrix`.
pub async fn economy_rows(bootstrap: &str, matrix: &Matrix) -> String {
    let span = matrix.span;
    let speed = matrix.speed;
    let coverage = match span {
        Span::Midnight => {
            "Neither is a day's average: a day also holds the 2-hourly and daily \
             survey re-checks of older cases, which this span meets only at midnight, and this \
             history reaches 2 days back, not the survey horizon's 7."
        }
        Span::Day => {
            "Over the span is a day's average: every re-check grid's points are inside it, \
             and the history reaches past the survey horizon."
        }
    };
    let mut out = format!(
        "Steady state for {:.0} virtual minutes from 23:20 (midnight and its 30 min grace inside), \
         simulator at {speed}x with a {} h 15 min history already known, \
         poll 30 s, settle 5 min, \
         budget {BUDGET_PER_SEC} requests per virtual second shared by all widgets, one \
         broker. Requests are per widget per poll: over the span, and outside the midnight \
         period (from midnight until the day just ended has had its final whole-day read, after \
         its grace period; the baseline's is its grace period) with the fresh windows' pages in \
         brackets. {coverage} \"Past re-reads\" is requests outside the midnight period \
         other than the fresh windows' pages: re-checks and catch-up. The `dates` fresh window is \
         today, so for `dates` these are the requests beyond the pages today holds; the \
         baseline's fresh window holds yesterday too. Latencies in minutes: `case.created` from the case becoming visible in the \
         API, `case.survey` from the survey appearing.\n\n\
         | mode | widgets | cases/h/widget | requests/poll | outside midnight (fresh) | \
         midnight period | past re-reads | requests/new case | budget use | created p50 | \
         created p99 | survey p99 | surveys ≤ 15 min |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        span.measured().as_secs_f64() / 60.0,
        span.past_days() * 24 + 23,
    );
    for &widgets in &matrix.widgets {
        for &volume in &matrix.volumes {
            for &mode in &matrix.modes {
                let started = Instant::now();
                let r = scenario(bootstrap, mode, widgets, volume, span, speed).await;
                eprintln!(
                    "economy: {} {widgets} widgets {volume}/h done in {:.0?}",
                    mode.name(),
                    started.elapsed()
                );
                let missing = if r.created_missing > 0 {
                    format!(" ({} not yet)", r.created_missing)
                } else {
                    String::new()
                };
                let midnight = r
                    .midnight_minutes
                    .map_or("past the span".to_owned(), |m| format!("{m:.1} min"));
                out.push_str(&format!(
                    "| {} | {widgets} | {volume:.0} | {:.2} | {:.2} ({:.2}) | \
                     {midnight} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1}{missing} | {:.1} | \
                     {:.1}% of {} |\n",
                    mode.name(),
                    r.requests_per_widget_poll,
                    r.outside_midnight_per_widget_poll,
                    r.fresh_outside_midnight_per_widget_poll,
                    r.outside_midnight_per_widget_poll - r.fresh_outside_midnight_per_widget_poll,
                    r.requests_per_new_case,
                    r.budget_use,
                    r.created_p50,
                    r.created_p99,
                    r.survey_p99,
                    r.surveys_within_15 * 100.0,
                    r.surveys,
                ));
            }
        }
    }
    out.push_str(&budgeted_catch_up_rows(bootstrap, matrix).await);
    out
}

/// Virtual seconds per real second of the budgeted catch-up: its 500 cases per virtual second
/// are 5,000 real ones, well under what the pipeline does unthrottled on the bench machine
/// (about 12,000), so the budget, not the host, is the limit.
const CATCH_UP_SPEED: f64 = 10.0;
const CATCH_UP_VOLUME: f64 = 200.0;

/// What a first start's catch-up spent and achieved, in virtual time.
struct CatchUpRow {
    cases: usize,
    /// Requests a reader needs that reads each day's pages once and nothing else.
    day_pages: u64,
    seconds: f64,
    requests: u64,
}

/// A first start at 00:45 with `days` whole days of history behind it, read under the 5
/// requests/s budget: timed from the first request to the last case checkpointed.
async fn budgeted_catch_up(bootstrap: &str, mode: Mode, widgets: usize, days: u64) -> CatchUpRow {
    let start = at("2026-03-11T00:45:00Z");
    let clock = Clock::scaled(start, CATCH_UP_SPEED);
    let history = Duration::from_secs(days * 86_400 + 45 * 60);
    let sim = start_simulator(&clock, widgets, CATCH_UP_VOLUME, history).await;
    clock.step(start - clock.now());
    // The fewest requests any reader of day windows needs: each day's pages, once.
    let (mut cases, mut day_pages) = (0, 0);
    for widget in &sim.sim.config().widgets {
        let mut per_day: HashMap<chrono::NaiveDate, u64> = HashMap::new();
        for value in sim.sim.visible_cases(widget) {
            let day = Case::from_value(value)
                .ok()
                .and_then(|case| case.created_at())
                .expect("the simulator's cases have a creation time")
                .date_naive();
            *per_day.entry(day).or_default() += 1;
            cases += 1;
        }
        day_pages += per_day.values().map(|n| n.div_ceil(PAGE)).sum::<u64>();
    }
    let dir = tempfile::tempdir().expect("state dir");
    let (mut config, _prefix) = forwarder_config(&sim, bootstrap, dir.path(), mode, CATCH_UP_SPEED);
    config.pipeline.since = start.date_naive().checked_sub_days(chrono::Days::new(days));
    let forwarder = Forwarder::start(config, &clock);
    let (began, requests_before) = loop {
        let served = sim.sim.stats().requests;
        if served > 0 {
            break (clock.now(), served - 1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    super::known_cases_reach(dir.path(), cases).await;
    let row = CatchUpRow {
        cases,
        day_pages,
        seconds: (clock.now() - began).num_milliseconds() as f64 / 1000.0,
        requests: sim.sim.stats().requests - requests_before,
    };
    forwarder.stop().await;
    sim.stop().await.expect("simulator stop");
    row
}

/// The catch-up table: both scheduler modes, against the 500 cases/s the budget allows.
async fn budgeted_catch_up_rows(bootstrap: &str, matrix: &Matrix) -> String {
    let widgets = matrix.widgets.first().copied().unwrap_or(4);
    let days = matrix.catch_up_days;
    if days == 0 {
        return String::new();
    }
    let allowed = BUDGET_PER_SEC * PAGE as f64;
    let mut out = format!(
        "\n### Catch-up under the budget\n\nA first start at 00:45 with {days} whole days of \
         history at {CATCH_UP_VOLUME:.0} cases/hour for each of {widgets} widgets, budget \
         {BUDGET_PER_SEC} requests per virtual second ({allowed:.0} cases/s at {PAGE} a page), \
         simulator at {CATCH_UP_SPEED}x, poll 30 s. Timed in virtual seconds from the first \
         request to the last case checkpointed (published, acknowledged, in the state); the \
         requests include the fresh window's reads meanwhile; \"day pages\" is the fewest \
         requests a reader of day windows needs (each day's pages once).\n\n\
         | mode | cases | time | requests | day pages | requests/s | cases/request | cases/s | \
         of {allowed:.0} cases/s |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for mode in [Mode::Dates, Mode::Datetimes] {
        let started = Instant::now();
        let r = budgeted_catch_up(bootstrap, mode, widgets, days).await;
        eprintln!(
            "economy: budgeted catch-up {} done in {:.0?}",
            mode.name(),
            started.elapsed()
        );
        let rate = r.cases as f64 / r.seconds;
        out.push_str(&format!(
            "| {} | {} | {:.1} s | {} | {} | {:.2} | {:.1} | {rate:.0} | {:.1}% |\n",
            mode.name(),
            r.cases,
            r.seconds,
            r.requests,
            r.day_pages,
            r.requests as f64 / r.seconds,
            r.cases as f64 / r.requests as f64,
            rate / allowed * 100.0
        ));
    }
    out
}
