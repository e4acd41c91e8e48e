//! Catch-up, re-checks and midnight end to end on the simulator's virtual clock, against a
//! real broker: days back from `CASESTREAM_SINCE`, a survey on a day older than the lookback
//! found by a re-check after midnight, pruning that bounds the state without re-announcing,
//! and the last check of a survey horizon that falls due while its window is read.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use casestream::clock::Clock;
use casestream::config::Config;
use casestream::simulator::generator::SurveyPlan;
use casestream::simulator::{Faults, SimConfig};
use casestream::snapengage::Case;
use casestream::state::{CaseRecord, SqliteStore, StateStore, StoredCase, WidgetProgress};
use common::*;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn ms(text: &str) -> i64 {
    at(text).timestamp_millis()
}

/// A case of `widget` created at `created`, ending 5 minutes later.
fn case_at(
    sim: &casestream::simulator::http::RunningSimulator,
    widget: &str,
    id: &str,
    created: &str,
) -> Value {
    let mut case = sim.sim.make_case(widget);
    case["id"] = json!(id);
    case["created_at_date"] = json!(ms(created));
    case["chat_waittime"] = json!(0);
    case["chat_duration"] = json!(300);
    case
}

/// Events per case id (subject) in a topic.
async fn events_by_case(bootstrap: &str, topic: &str) -> HashMap<String, Vec<Value>> {
    let mut by_case: HashMap<String, Vec<Value>> = HashMap::new();
    for record in read_topic_async(bootstrap, topic, Duration::from_secs(2)).await {
        let event = record.json();
        by_case
            .entry(event["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(event);
    }
    by_case
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_across_midnight_with_a_late_survey_and_pruning() {
    let bootstrap = kafka_bootstrap().await;
    // 600x: ten virtual minutes a second; the run starts ten minutes before midnight.
    let clock = Clock::scaled(at("2026-03-10T23:50:00Z"), 600.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 20.0,
            history: Duration::from_secs(5 * 86_400),
            survey_delay: Duration::from_secs(300),
            survey_spread: Duration::from_secs(600),
            survey_late_max: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    // Ends 2026-03-08T15:45, older than the lookback; its survey lands after midnight, after
    // the day's catch-up, and the next re-check (12:00, on the daily grid) finds it. (The
    // test once waited for 01:00 only, and passed only while the catch-up read that day
    // slowly enough to find the survey itself.)
    let late = case_at(&sim, "w1", "late-survey", "2026-03-08T15:40:00Z");
    sim.sim.add_case(
        "w1",
        late,
        None,
        Some(SurveyPlan {
            at_ms: ms("2026-03-11T00:20:00Z"),
            score: Some(90),
            comments: Some("found late".into()),
        }),
    );
    let prefix = unique_prefix("catchup");
    let dir = tempfile::tempdir().unwrap();
    let extra = |c: &mut Config| {
        c.pipeline.since = NaiveDate::from_ymd_opt(2026, 3, 5);
        c.pipeline.tracker.horizon = Duration::from_secs(3 * 86_400);
    };
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), extra);
    let forwarder = RunningForwarder::start(config, clock.clone());
    let surveys_topic = format!("{prefix}.surveys");
    eventually(
        Duration::from_secs(120),
        "the late survey and the re-check at noon",
        async || {
            clock.now() > at("2026-03-11T12:00:00Z")
                && events_by_case(&bootstrap, &surveys_topic)
                    .await
                    .contains_key("late-survey")
        },
    )
    .await;
    let addr = forwarder.health.admin_addr().unwrap();
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    forwarder.stop().await;
    let end = clock.now();

    let created = events_by_case(&bootstrap, &format!("{prefix}.cases")).await;
    let mut after_midnight = 0;
    let mut total = 0;
    for widget in ["w1", "w2"] {
        for value in sim.sim.visible_cases(widget) {
            let case = Case::from_value(value).unwrap();
            let created_at = case.created_at().unwrap();
            if created_at < at("2026-03-05T00:00:00Z")
                || case.chat_end().unwrap() > end - chrono::Duration::minutes(10)
            {
                continue;
            }
            total += 1;
            if created_at >= at("2026-03-11T00:00:00Z") {
                after_midnight += 1;
            }
            let events = created.get(case.id()).unwrap_or_else(|| {
                panic!("case {} created {created_at} never announced", case.id())
            });
            assert_eq!(events.len(), 1, "case {} announced once", case.id());
        }
    }
    assert!(total > 2000, "{total} cases over five days");
    assert!(
        after_midnight >= 5,
        "{after_midnight} cases after midnight announced"
    );
    let surveys = events_by_case(&bootstrap, &surveys_topic).await;
    let late = &surveys["late-survey"];
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["data"]["survey"]["comments"], "found late");
    assert!(at(late[0]["time"].as_str().unwrap()) >= at("2026-03-11T00:20:00Z"));
    for (id, events) in &surveys {
        let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            events.len(),
            "case {id}: a survey event repeated"
        );
    }

    // Days whose cases are past the horizon were pruned: the state holds the recent days.
    let pruned = metrics
        .lines()
        .find(|l| l.starts_with(r#"casestream_state_pruned_total{kind="cases"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(pruned > 500.0, "pruned {pruned}:\n{metrics}");
    let known = SqliteStore::open(dir.path())
        .unwrap()
        .stats()
        .unwrap()
        .known_cases;
    assert!(
        (known as f64) < total as f64 - pruned + 100.0,
        "{known} known of {total}"
    );

    // A restart re-reads nothing it pruned: no case is announced twice.
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), extra);
    let again = RunningForwarder::start(config, clock.clone());
    let before = clock.now();
    eventually(
        Duration::from_secs(30),
        "a while after restarting",
        async || again.polled_ok() && clock.now() - before > chrono::Duration::minutes(30),
    )
    .await;
    again.stop().await;
    for (id, events) in events_by_case(&bootstrap, &format!("{prefix}.cases")).await {
        assert_eq!(
            events.len(),
            1,
            "case {id} announced again after the restart"
        );
    }
    sim.stop().await.unwrap();
}

/// The horizon's last check falls due while its day's re-check window is being read (the
/// window's second page is slow): it is not skipped, and the survey that landed just before
/// it is published. The last check is the first point of the case's grid at or after its
/// horizon (the 2-hour grid for a 1-day horizon), so B is read after its horizon, early, and
/// must keep that check (with the check at the horizon itself, that read ended it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_check_of_the_horizon_is_never_skipped() {
    let bootstrap = kafka_bootstrap().await;
    let start = at("2026-03-10T09:40:00Z");
    let clock = Clock::scaled(start, 60.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            page_size: 1,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    // B's chat ends at 08:10: its horizon (chat end + 1 day) has passed at the start, its
    // last check is at 10:00 = start + 20 min (20 s of real time, well after the forwarder
    // has started and read B's page), and its survey lands at start + 19.5 min.
    let mut b = case_at(&sim, "w1", "case-b", "2026-03-09T07:55:00Z");
    b["chat_duration"] = json!(900);
    sim.sim.add_case(
        "w1",
        b,
        None,
        Some(SurveyPlan {
            at_ms: (start + chrono::Duration::seconds(1170)).timestamp_millis(),
            score: Some(70),
            comments: None,
        }),
    );
    // A, on the same day, is due at start: it makes the day due. It comes second, on a slow
    // page, so the window spans B's last check. Its chat ended at 07:57, so its own last
    // check (08:00) is long past: nothing but B's pending check can make the day be read
    // again.
    let mut a = case_at(&sim, "w1", "case-a", "2026-03-09T07:56:00Z");
    a["chat_duration"] = json!(60);
    sim.sim.add_case("w1", a, None, None);
    sim.sim.set_faults(Faults {
        slow_cursor_ms: 30_000,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
        store
            .set_widget(
                "w1",
                &WidgetProgress {
                    since: day,
                    caught_up_through: Some(day),
                    last_fresh_poll: None,
                    unread: Vec::new(),
                },
            )
            .unwrap();
        let seeded = |id: &str, created: &str, chat_end: &str, next: DateTime<Utc>| StoredCase {
            id: id.into(),
            widget: "w1".into(),
            day,
            created: at(created),
            record: CaseRecord {
                first_seen: at(chat_end),
                chat_end: at(chat_end),
                created_emitted: true,
                survey_digest: None,
                next_check: Some(next),
                survey_emitted: None,
            },
        };
        store
            .commit_cases(&[
                seeded(
                    "case-b",
                    "2026-03-09T07:55:00Z",
                    "2026-03-09T08:10:00Z",
                    start + chrono::Duration::minutes(20),
                ),
                seeded(
                    "case-a",
                    "2026-03-09T07:56:00Z",
                    "2026-03-09T07:57:00Z",
                    start - chrono::Duration::minutes(1),
                ),
            ])
            .unwrap();
    }
    let prefix = unique_prefix("horizon");
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.lookback = Duration::ZERO;
        c.pipeline.tracker.horizon = Duration::from_secs(86_400);
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let surveys_topic = format!("{prefix}.surveys");
    eventually(
        Duration::from_secs(90),
        "B's survey, found by its last check",
        async || {
            events_by_case(&bootstrap, &surveys_topic)
                .await
                .contains_key("case-b")
        },
    )
    .await;
    forwarder.stop().await;
    let surveys = events_by_case(&bootstrap, &surveys_topic).await;
    let event = &surveys["case-b"][0];
    assert!(
        at(event["time"].as_str().unwrap()) >= start + chrono::Duration::minutes(20),
        "seen at the last check, not earlier: {event}"
    );
    sim.stop().await.unwrap();
}

/// A case that appears while a long catch-up day is being read is announced before that day
/// is done: the fresh window is read every interval on its own lane, and the day's window,
/// holding the same widget, stops at a page for it and goes on from its cursor, fetching no
/// page twice. (When both shared one cycle, a widget's fresh window waited for its whole
/// catch-up day.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_window_never_holds_back_fresh_cases() {
    let bootstrap = kafka_bootstrap().await;
    let (clock, sim) = long_catch_up_day(150).await;
    let prefix = unique_prefix("lanes");
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = Duration::from_secs(1);
        c.admin.addr = ([127, 0, 0, 1], admin).into();
    });
    let yesterday: NaiveDate = LONG_DAY.parse().unwrap();
    let caught_up = || caught_up_through(dir.path(), "w1") == Some(yesterday);
    let day_pages = sim
        .sim
        .visible_cases("w1")
        .iter()
        .filter(|c| c["created_at_date"].as_i64() < Some(ms("2026-03-11T00:00:00Z")))
        .count()
        .div_ceil(10);
    assert!(day_pages >= 70, "a long catch-up day: {day_pages} pages");

    let forwarder = RunningForwarder::start(config, clock.clone());
    eventually(
        Duration::from_secs(60),
        "the catch-up day under way",
        async || saved_cursor(dir.path(), "w1").is_some_and(|c| c.pages_done >= 5),
    )
    .await;
    let mut case = sim.sim.make_case("w1");
    case["id"] = json!("fresh-during-catch-up");
    sim.sim.add_case("w1", case, None, None);
    let cases_topic = format!("{prefix}.cases");
    eventually(
        Duration::from_secs(60),
        "the new case announced",
        async || {
            read_topic_async(&bootstrap, &cases_topic, Duration::from_millis(300))
                .await
                .iter()
                .any(|r| r.key.as_deref() == Some("fresh-during-catch-up"))
        },
    )
    .await;
    assert!(
        !caught_up(),
        "the new case waited for the whole catch-up day ({day_pages} pages)"
    );

    eventually(
        Duration::from_secs(120),
        "the catch-up day done",
        async || caught_up(),
    )
    .await;
    // Each of the day's pages was fetched once: a window that stops for a fresh read decides
    // the pages it fetched already (requests spent) and goes on after them. (It used to drop
    // them, and fetch them again when it went on.) The only past window read so far is the
    // day's: its cases' first re-checks fall due at 00:50.
    let stats = sim.sim.stats();
    assert_eq!(
        stats.pages_served - stats.pages_reaching_now,
        day_pages as u64,
        "pages of past windows served, against the day's pages"
    );
    let (_, metrics) = admin_get(format!("127.0.0.1:{admin}"), "/metrics")
        .await
        .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("casestream_windows_resumed_total") && !l.ends_with(" 0")),
        "the catch-up window stopped for the fresh read and went on from its cursor:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("resumed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    forwarder.stop().await;
    // Nothing of the day was lost on the way, and nothing announced twice.
    let by_case = events_by_case(&bootstrap, &cases_topic).await;
    let visible: Vec<String> = sim
        .sim
        .visible_cases("w1")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = visible
        .iter()
        .filter(|id| !by_case.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "cases never announced: {missing:?}");
    let twice: Vec<&String> = by_case
        .iter()
        .filter(|(_, events)| events.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "cases announced twice: {twice:?}");
    sim.stop().await.unwrap();
}

/// An API that serves today but answers 503 to every window starting before it (a brownout of
/// heavy past-day reads), two widgets catching up from yesterday, 1 s polls, retries backing
/// off for seconds: a case added today on either widget is announced within 5 poll
/// intervals (a failing window's back-off lasts about 20), each of three times; the backlog
/// windows failing in back-off never hold the fresh reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_window_in_back_off_never_holds_a_fresh_read() {
    let bootstrap = kafka_bootstrap().await;
    let clock = Clock::scaled(at("2026-03-10T10:00:00Z"), 1.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 0.0,
            history: Duration::from_secs(30 * 3600),
            faults: Faults {
                brownout_past_days: true,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    let prefix = unique_prefix("brownout");
    let dir = tempfile::tempdir().unwrap();
    let poll = Duration::from_secs(1);
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = poll;
        c.pipeline.since = Some(NaiveDate::from_ymd_opt(2026, 3, 9).unwrap());
        // A failing window sits in back-off for about 20 s, as with the defaults' first tries.
        c.api.retry = casestream::snapengage::RetryPolicy {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_attempts: 8,
        };
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "a first complete cycle")
        .await;
    let cases_topic = format!("{prefix}.cases");
    for (round, widget) in ["w2", "w1", "w2"].into_iter().enumerate() {
        // Catch-up windows are in back-off by now, and again later.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let id = sim
            .sim
            .add_case(widget, sim.sim.make_case(widget), None, None)
            .unwrap();
        let added = std::time::Instant::now();
        eventually(
            Duration::from_secs(120),
            "today's case announced",
            async || {
                count_by_key(&bootstrap, &cases_topic, Duration::from_millis(200))
                    .await
                    .contains_key(&id)
            },
        )
        .await;
        let took = added.elapsed();
        assert!(
            took <= poll * 5,
            "round {round}: {widget}'s case took {took:?}, more than 5 poll intervals"
        );
    }
    // The backlog really was failing all along: yesterday was never caught up.
    assert_eq!(caught_up_through(dir.path(), "w1"), None);
    assert_eq!(caught_up_through(dir.path(), "w2"), None);
    let (_, metrics) = admin_get(forwarder.health.admin_addr().unwrap(), "/metrics")
        .await
        .expect("metrics answer");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("casestream_api_retries_total") && l.contains("server_error")),
        "the past-day windows failed with 503s: {metrics}"
    );
    forwarder.stop().await;
}

/// A chat of two hours, in `datetimes` mode, whose survey lands after its day's final read
/// (the catch-up): the day's re-checks read from the case's creation, and announce the survey.
/// (They read from half an hour, the late visibility, before its chat ended: the case was
/// created before that window, never returned, and its survey never announced.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chat_is_rechecked_from_its_creation_in_datetimes_mode() {
    let bootstrap = kafka_bootstrap().await;
    // 60x: a virtual minute a second. The day before is no longer fresh (its late visibility
    // ended at 00:30), so only the catch-up and then the re-checks read it.
    let start = at("2026-03-11T00:45:00Z");
    let clock = Clock::scaled(start, 60.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    // Created at 20:00, ended at 22:00: on the 10-minute re-check grid at the start.
    let mut long = case_at(&sim, "w1", "long-chat", "2026-03-10T20:00:00Z");
    long["chat_duration"] = json!(2 * 3600);
    let survey_at = start + chrono::Duration::minutes(30);
    sim.sim.add_case(
        "w1",
        long,
        None,
        Some(SurveyPlan {
            at_ms: survey_at.timestamp_millis(),
            score: Some(80),
            comments: Some("after a long chat".into()),
        }),
    );
    let prefix = unique_prefix("longchat");
    let dir = tempfile::tempdir().unwrap();
    let day: NaiveDate = "2026-03-10".parse().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.api.window_mode = casestream::snapengage::WindowMode::Datetimes;
        c.pipeline.since = Some(day);
        c.pipeline.lookback = Duration::ZERO;
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    eventually(
        Duration::from_secs(60),
        "the day read by the catch-up",
        async || caught_up_through(dir.path(), "w1") == Some(day),
    )
    .await;
    assert!(
        clock.now() < survey_at,
        "the catch-up read the day at {}, after the survey landed: nothing is left to a re-check",
        clock.now()
    );
    let surveys_topic = format!("{prefix}.surveys");
    eventually(
        Duration::from_secs(120),
        "the long chat's survey, found by a re-check",
        async || {
            events_by_case(&bootstrap, &surveys_topic)
                .await
                .contains_key("long-chat")
        },
    )
    .await;
    forwarder.stop().await;
    let surveys = events_by_case(&bootstrap, &surveys_topic).await;
    let events = &surveys["long-chat"];
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["survey"]["comments"], "after a long chat");
    assert!(at(events[0]["time"].as_str().unwrap()) >= survey_at);
    let created = events_by_case(&bootstrap, &format!("{prefix}.cases")).await;
    assert_eq!(created["long-chat"].len(), 1, "announced once");
    sim.stop().await.unwrap();
}
