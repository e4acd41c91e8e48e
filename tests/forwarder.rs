//! The forwarder end to end: the simulator on a fast virtual clock, a real Kafka broker, and
//! the records read back from the topics.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use casestream::clock::Clock;
use casestream::simulator::http::RunningSimulator;
use casestream::simulator::{Faults, SimConfig};
use casestream::sink::EventFormat;
use casestream::snapengage::Case;
use common::*;

/// 600x: a 30 s poll interval passes in 50 ms, a 5 min settle in 0.5 s, 2 h in 12 s.
const SPEED: f64 = 600.0;
/// Virtual slack for cases and surveys that appeared just before the run stopped.
const MARGIN: chrono::Duration = chrono::Duration::minutes(10);
const SETTLE: chrono::Duration = chrono::Duration::minutes(5);

fn clock() -> Clock {
    let start: DateTime<Utc> = "2026-03-10T08:00:00Z".parse().unwrap();
    Clock::scaled(start, SPEED)
}

fn sim_config(cases_per_hour: f64) -> SimConfig {
    SimConfig {
        widgets: vec!["w1".into(), "w2".into()],
        cases_per_hour,
        history: Duration::from_secs(2 * 3600),
        survey_delay: Duration::from_secs(300),
        survey_spread: Duration::from_secs(600),
        survey_late_max: Duration::from_secs(3600),
        ..SimConfig::default()
    }
}

/// One case as the simulator served it: (widget, case now, chat end, survey time).
type Served = (String, Value, DateTime<Utc>, Option<DateTime<Utc>>);

/// What the simulator served, by case id.
struct Truth {
    cases: HashMap<String, Served>,
}

impl Truth {
    fn of(sim: &RunningSimulator) -> Self {
        let mut cases = HashMap::new();
        for widget in &sim.sim.config().widgets {
            for (value, survey_at) in sim.sim.visible_cases_with_survey_times(widget) {
                // Unusable cases are checked against the dead-letter topic instead.
                let Ok(case) = Case::from_value(value.clone()) else {
                    continue;
                };
                let survey_at = survey_at.and_then(DateTime::from_timestamp_millis);
                cases.insert(
                    case.id().to_owned(),
                    (widget.clone(), value, case.chat_end().unwrap(), survey_at),
                );
            }
        }
        Self { cases }
    }
}

fn by_subject(events: &[Value]) -> HashMap<String, Vec<&Value>> {
    let mut map: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in events {
        map.entry(e["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    map
}

/// Records in a topic so far.
async fn count(bootstrap: &str, topic: &str) -> usize {
    read_topic_async(bootstrap, topic, Duration::from_millis(500))
        .await
        .len()
}

fn time_of(event: &Value) -> DateTime<Utc> {
    event["time"].as_str().unwrap().parse().unwrap()
}

async fn read_events(bootstrap: &str, topic: &str, schemas: &Schemas) -> Vec<Value> {
    let records = read_topic_async(bootstrap, topic, Duration::from_secs(3)).await;
    records
        .iter()
        .map(|r| {
            let event = r.json();
            schemas.check(&event);
            assert_eq!(r.key.as_deref(), event["subject"].as_str(), "key = case id");
            assert_eq!(
                r.headers["content-type"],
                "application/cloudevents+json; charset=UTF-8"
            );
            event
        })
        .collect()
}

/// Asserts the central promise against what the simulator served until `end`.
fn assert_exactly_once(truth: &Truth, created: &[Value], surveys: &[Value], end: DateTime<Utc>) {
    let created_by_case = by_subject(created);
    let surveys_by_case = by_subject(surveys);
    for (id, events) in &created_by_case {
        assert_eq!(
            events.len(),
            1,
            "case {id} announced {} times",
            events.len()
        );
        assert!(
            truth.cases.contains_key(id),
            "created event for unknown case {id}"
        );
    }
    let mut expected_surveys = 0;
    for (id, (widget, served, chat_end, survey_at)) in &truth.cases {
        if *chat_end < end - MARGIN {
            let events = created_by_case
                .get(id)
                .unwrap_or_else(|| panic!("case {id} (chat end {chat_end}, run end {end}, {widget}) never announced; {} announced", created_by_case.len()));
            let event = events[0];
            assert_eq!(event["data"]["widget_id"], json!(widget));
            assert_eq!(
                without_survey(&event["data"]["case"]),
                without_survey(served),
                "data.case is the case as served"
            );
        }
        let surveyed = surveys_by_case
            .get(id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            surveyed.len() <= 1,
            "survey of {id} emitted {} times",
            surveyed.len()
        );
        match survey_at {
            Some(at) => {
                let due = (*at).max(*chat_end + SETTLE);
                if due < end - MARGIN {
                    expected_surveys += 1;
                    assert_eq!(
                        surveyed.len(),
                        1,
                        "survey of {id} (due {due}) never emitted"
                    );
                }
                if let Some(event) = surveyed.first() {
                    assert!(
                        time_of(event) >= *chat_end + SETTLE,
                        "survey of {id} before settle"
                    );
                    assert!(time_of(event) >= *at, "survey of {id} before it existed");
                    assert_eq!(&event["data"]["case"], served);
                    assert_eq!(event["data"]["survey"]["score"], served["survey_score"]);
                }
            }
            None => assert!(surveyed.is_empty(), "survey event for {id} that has none"),
        }
    }
    assert!(
        expected_surveys >= 20,
        "only {expected_surveys} surveys were due; test too small"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_once_and_every_survey_once_after_settle() {
    let bootstrap = kafka_bootstrap().await;
    let schemas = Schemas::load();
    let clock = clock();
    let sim = start_simulator(sim_config(60.0), clock.clone()).await;
    let prefix = unique_prefix("once");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |_| {});
    let forwarder = RunningForwarder::start(config, clock.clone());
    let start = clock.now();
    let cases_topic = format!("{prefix}.cases");
    eventually(
        Duration::from_secs(90),
        "2 virtual hours and 200 cases",
        async || {
            clock.now() - start > chrono::Duration::hours(2)
                && count(&bootstrap, &cases_topic).await > 200
        },
    )
    .await;
    // The run's end is read before stopping: everything due by then must be out.
    let end = clock.now();
    forwarder.stop().await;
    let truth = Truth::of(&sim);

    let created = read_events(&bootstrap, &format!("{prefix}.cases"), &schemas).await;
    let surveys = read_events(&bootstrap, &format!("{prefix}.surveys"), &schemas).await;
    assert!(created.len() > 200, "{} created events", created.len());
    assert_exactly_once(&truth, &created, &surveys, end);
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_again_repeats_nothing() {
    let bootstrap = kafka_bootstrap().await;
    let schemas = Schemas::load();
    let clock = clock();
    let sim = start_simulator(sim_config(60.0), clock.clone()).await;
    let prefix = unique_prefix("restart");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |_| {});

    let cases_topic = format!("{prefix}.cases");
    let first = RunningForwarder::start(config.clone(), clock.clone());
    eventually(
        Duration::from_secs(60),
        "the first run's events",
        async || count(&bootstrap, &cases_topic).await > 50,
    )
    .await;
    first.stop().await;
    let after_first = read_events(&bootstrap, &cases_topic, &schemas).await;

    let second = RunningForwarder::start(config, clock.clone());
    let restarted = clock.now();
    eventually(
        Duration::from_secs(60),
        "an hour of the second run with new cases",
        async || {
            clock.now() - restarted > chrono::Duration::hours(1)
                && count(&bootstrap, &cases_topic).await > after_first.len() + 20
        },
    )
    .await;
    let end = clock.now();
    second.stop().await;

    let created = read_events(&bootstrap, &format!("{prefix}.cases"), &schemas).await;
    let surveys = read_events(&bootstrap, &format!("{prefix}.surveys"), &schemas).await;
    assert!(
        created.len() > after_first.len(),
        "the second run announced new cases ({} then {})",
        after_first.len(),
        created.len()
    );
    assert_exactly_once(&Truth::of(&sim), &created, &surveys, end);
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_are_ridden_out_and_bad_cases_become_dead_letters() {
    let bootstrap = kafka_bootstrap().await;
    let schemas = Schemas::load();
    let clock = clock();
    let sim = start_simulator(sim_config(60.0), clock.clone()).await;
    sim.sim.set_faults(Faults {
        rate_429: 0.3,
        retry_after_secs: 0,
        rate_5xx: 0.15,
        rate_truncate: 0.1,
        rate_repeat: 0.3,
        ..Faults::default()
    });
    let bad = [
        json!({"type": "chat", "description": "no id at all"}),
        json!("not an object"),
        json!({"id": "", "description": "empty id"}),
    ];
    for raw in &bad {
        sim.sim.add_case("w1", raw.clone(), None, None);
    }
    let prefix = unique_prefix("faults");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |_| {});
    let forwarder = RunningForwarder::start(config, clock.clone());
    eventually(
        Duration::from_secs(120),
        "a storm of every fault",
        async || {
            let stats = sim.sim.stats();
            stats.faults_429 > 20
                && stats.faults_5xx > 5
                && stats.faults_truncated > 2
                && stats.faults_repeat > 2
        },
    )
    .await;
    // The storm ends; a few quiet cycles of both widgets let the last cases through.
    sim.sim.set_faults(Faults::default());
    let requests = sim.sim.stats().requests;
    eventually(Duration::from_secs(60), "quiet cycles", async || {
        sim.sim.stats().requests > requests + 12
    })
    .await;
    let end = clock.now();
    forwarder.stop().await;

    let created = read_events(&bootstrap, &format!("{prefix}.cases"), &schemas).await;
    let surveys = read_events(&bootstrap, &format!("{prefix}.surveys"), &schemas).await;
    assert_exactly_once(&Truth::of(&sim), &created, &surveys, end);

    // Each bad case lands in the dead-letter topic exactly once, though its day was read on
    // every poll, with its raw JSON and the reason.
    let dead = read_topic_async(
        &bootstrap,
        &format!("{prefix}.dead"),
        Duration::from_secs(3),
    )
    .await;
    for raw in &bad {
        let copies: Vec<_> = dead.iter().filter(|r| r.json() == *raw).collect();
        assert_eq!(copies.len(), 1, "{raw} dead-lettered once");
        for copy in copies {
            assert!(
                copy.headers["casestream_reason"].contains("case"),
                "{:?}",
                copy.headers
            );
            assert_eq!(copy.headers["casestream_widget_id"], "w1");
        }
    }
    let reasons: Vec<&str> = dead
        .iter()
        .map(|r| r.headers["casestream_reason"].as_str())
        .collect();
    assert!(reasons.contains(&"case has no `id` field"), "{reasons:?}");
    assert!(
        reasons.contains(&"case is not a JSON object (got a string)"),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"case `id` is empty"), "{reasons:?}");
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_events_validate_too() {
    let bootstrap = kafka_bootstrap().await;
    let schemas = Schemas::load();
    let clock = clock();
    let sim = start_simulator(sim_config(60.0), clock.clone()).await;
    let prefix = unique_prefix("binary");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.kafka.event_format = EventFormat::Binary
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    eventually(
        Duration::from_secs(60),
        "created and survey events",
        async || {
            count(&bootstrap, &format!("{prefix}.cases")).await > 100
                && count(&bootstrap, &format!("{prefix}.surveys")).await > 0
        },
    )
    .await;
    forwarder.stop().await;

    let mut counts = HashMap::new();
    for topic in ["cases", "surveys"] {
        let records = read_topic_async(
            &bootstrap,
            &format!("{prefix}.{topic}"),
            Duration::from_secs(3),
        )
        .await;
        assert!(!records.is_empty(), "no {topic} records");
        for record in &records {
            assert_eq!(record.headers["content-type"], "application/json");
            assert_eq!(record.headers["ce_specversion"], "1.0");
            let event = event_from_binary(record);
            schemas.check(&event);
            assert_eq!(record.key.as_deref(), event["subject"].as_str());
        }
        counts.insert(topic, records.len());
    }
    assert!(counts["cases"] > 100, "{counts:?}");
    sim.stop().await.unwrap();
}

/// Yesterday is no longer re-read every poll, so a case of yesterday that becomes visible after
/// midnight must still be found: a chat across midnight, and cases indexed late, visible
/// within the late-visibility period (30 min). Cases of today visible within the overlap are
/// found by the rolling window of `datetimes` mode. The widget is otherwise quiet and yesterday
/// holds no known case: no survey re-check reads yesterday for another reason.
async fn across_midnight(mode: casestream::snapengage::WindowMode, name: &str) {
    let bootstrap = kafka_bootstrap().await;
    let schemas = Schemas::load();
    let start: DateTime<Utc> = "2026-03-09T23:00:00Z".parse().unwrap();
    let clock = Clock::scaled(start, SPEED);
    let sim = start_simulator(sim_config(0.0), clock.clone()).await;
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let late = [
        // (id, created, chat seconds, visible)
        (
            "crosses-midnight",
            at("2026-03-09T23:50:00Z"),
            1800,
            at("2026-03-10T00:22:00Z"),
        ),
        (
            "indexed-late",
            at("2026-03-09T23:20:00Z"),
            300,
            at("2026-03-10T00:28:00Z"),
        ),
        (
            "today-long-chat",
            at("2026-03-10T00:40:00Z"),
            1440,
            at("2026-03-10T01:05:00Z"),
        ),
    ];
    for (id, created, chat_secs, visible) in late {
        let body = json!({
            "id": id, "type": "chat", "description": "a late case",
            "created_at_date": created.timestamp_millis(),
            "created_at_seconds": created.timestamp(),
            "created_at_milliseconds": 0,
            "chat_waittime": 0, "chat_duration": chat_secs,
        });
        sim.sim.add_case("w1", body, Some(visible), None);
    }
    let prefix = unique_prefix(name);
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.api.window_mode = mode;
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    eventually(
        Duration::from_secs(90),
        "the virtual clock past 01:40",
        async || clock.now() > at("2026-03-10T01:40:00Z"),
    )
    .await;
    forwarder.stop().await;
    let truth = Truth::of(&sim);
    assert_eq!(
        truth.cases.len(),
        late.len(),
        "only the late cases are served"
    );
    let created = read_events(&bootstrap, &format!("{prefix}.cases"), &schemas).await;
    let announced = by_subject(&created);
    for (id, ..) in late {
        let times = announced.get(id).map_or(0, Vec::len);
        assert_eq!(times, 1, "{id} announced {times} times in {mode:?} mode");
    }
    assert_eq!(created.len(), late.len());
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_visible_late_across_midnight_are_found_in_dates_mode() {
    across_midnight(casestream::snapengage::WindowMode::Dates, "midnight-dates").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_visible_late_across_midnight_are_found_in_datetimes_mode() {
    across_midnight(
        casestream::snapengage::WindowMode::Datetimes,
        "midnight-datetimes",
    )
    .await;
}
