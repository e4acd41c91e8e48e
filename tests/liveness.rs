//! Time as a platform sees it: a long, deliberate wait is not a stuck loop (liveness holds), and
//! a wall clock stepped back does not stall polling (every wait is monotonic).

mod common;

use std::time::Duration;

use casestream::clock::Clock;
use casestream::simulator::{Faults, SimConfig};
use chrono::Utc;
use common::*;
use serde_json::Value;

/// `/livez`: (status, the loop's age in ms as reported).
async fn livez(forwarder: &RunningForwarder) -> Option<(u16, u64)> {
    let (status, body) = admin_get(forwarder.health.admin_addr()?, "/livez").await?;
    let body: Value = serde_json::from_str(&body).ok()?;
    Some((status, body["poll_loop_age_ms"].as_u64().unwrap_or(0)))
}

/// One 429 asking for 400 s: the loop waits as asked and says so; `/livez` answers 200 with an
/// age that does not grow, so no liveness threshold can kill the pod for obeying the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_keeps_livez_alive() {
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(
        SimConfig {
            faults: Faults {
                rate_429: 1.0,
                retry_after_secs: 400,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    let prefix = unique_prefix("retryafter");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |_| {});
    let forwarder = RunningForwarder::start(config, Clock::system());
    eventually(
        Duration::from_secs(60),
        "the first 429 answered",
        async || sim.sim.stats().requests > 0,
    )
    .await;
    // The widgets' windows are read at once: each may have had its first request out before
    // the first 429 came back, none after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = sim.sim.stats().requests;
    assert!(
        first <= 2,
        "{first} requests: at most one per widget read at once"
    );
    // The heartbeat the loop set before its wait is still ahead for minutes to come.
    let mut answers = Vec::new();
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        answers.push(livez(&forwarder).await.expect("/livez answers"));
    }
    assert!(
        answers
            .iter()
            .all(|&(status, age)| status == 200 && age == 0),
        "liveness during a 400 s Retry-After: {answers:?}"
    );
    assert_eq!(
        sim.sim.stats().requests,
        first,
        "the loop waits as asked, not a request more"
    );
    forwarder.stop().await;
    sim.stop().await.unwrap();
}

/// The forwarder's wall clock is stepped back an hour while it runs (an NTP step, a VM
/// restored from a snapshot): cases created after the step still arrive within seconds, and
/// the loop's age stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_does_not_stall_polling() {
    let bootstrap = kafka_bootstrap().await;
    // The API and the forwarder's machine agree on the time (noon, so that the step stays
    // within the day whenever the test runs: a clock stepped back across midnight reads
    // yesterday, and today's first hour waits, by design, until it reaches today again);
    // only the forwarder's clock is stepped.
    let noon = Utc::now()
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let anchor = Utc::now();
    let api_clock = Clock::anchored(noon, 1.0, anchor);
    let sim = start_simulator(
        SimConfig {
            cases_per_hour: 3600.0,
            index_delay: Duration::from_millis(200),
            ..SimConfig::default()
        },
        api_clock.clone(),
    )
    .await;
    let prefix = unique_prefix("clockstep");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = Duration::from_secs(1)
    });
    let forwarder_clock = Clock::anchored(noon, 1.0, anchor);
    let forwarder = RunningForwarder::start(config, forwarder_clock.clone());
    let cases_topic = format!("{prefix}.cases");
    eventually(Duration::from_secs(60), "a first event", async || {
        !read_topic_async(&bootstrap, &cases_topic, Duration::from_millis(300))
            .await
            .is_empty()
    })
    .await;

    forwarder_clock.step(-chrono::Duration::hours(1));
    let stepped_at = api_clock.now();
    let created_after_step = async || {
        read_topic_async(&bootstrap, &cases_topic, Duration::from_millis(300))
            .await
            .iter()
            .filter_map(|r| {
                let event = r.json();
                let ms = event["data"]["case"]["created_at_date"].as_i64()?;
                chrono::DateTime::from_timestamp_millis(ms)
            })
            .filter(|created| *created > stepped_at + chrono::Duration::seconds(1))
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "cases created after the step published",
        async || created_after_step().await >= 3,
    )
    .await;
    let (status, age) = livez(&forwarder).await.expect("/livez answers");
    assert_eq!(status, 200);
    assert!(age < 10_000, "the loop's age after the step: {age} ms");
    forwarder.stop().await;
    sim.stop().await.unwrap();
}

/// A long window stopped part-way (SIGTERM, a pod moved) goes on after a restart from the
/// cursor saved with its last committed page, not from page 1; nothing is lost on the way.
/// The long window is a catch-up day: fresh windows keep no cursor (they are read whole
/// every interval), backlog windows do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_a_long_window_where_it_stopped() {
    let bootstrap = kafka_bootstrap().await;
    // The first start reads yesterday as a catch-up day.
    let (clock, sim) = long_catch_up_day(60).await;
    let prefix = unique_prefix("resume");
    let dir = tempfile::tempdir().unwrap();
    let config = || forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |_| {});
    let yesterday: chrono::NaiveDate = LONG_DAY.parse().unwrap();
    let created_on = |day: chrono::NaiveDate| {
        sim.sim
            .visible_cases("w1")
            .iter()
            .filter(|c| {
                c["created_at_date"]
                    .as_i64()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .is_some_and(|t| t.date_naive() == day)
            })
            .count()
    };
    let window_pages = created_on(yesterday).div_ceil(10);
    assert!(window_pages >= 60, "a long window: {window_pages} pages");
    let cursor = || saved_cursor(dir.path(), "w1");

    let first = RunningForwarder::start(config(), clock.clone());
    eventually(
        Duration::from_secs(60),
        "a third of the catch-up day read",
        async || cursor().is_some_and(|c| c.pages_done >= window_pages / 3),
    )
    .await;
    first.stop().await;
    let served_before = sim.sim.stats().pages_served;
    let saved = cursor().expect("the interrupted window left a cursor");
    assert!(saved.pages_done >= window_pages / 3, "{saved:?}");
    // Every case that existed when the first run stopped must be out once the window ends.
    let existing: Vec<String> = sim
        .sim
        .visible_cases("w1")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();

    let second = RunningForwarder::start(config(), clock.clone());
    eventually(
        Duration::from_secs(60),
        "the catch-up day read to its end",
        async || caught_up_through(dir.path(), "w1") == Some(yesterday),
    )
    .await;
    let served_after = sim.sim.stats().pages_served - served_before;
    second.stop().await;
    // The second run also read today's fresh window, once (the poll interval is 30 s).
    let today_pages = created_on("2026-03-11".parse().unwrap())
        .div_ceil(10)
        .max(1);
    assert!(
        served_after <= (window_pages - saved.pages_done + 1 + today_pages) as u64,
        "the restart read {served_after} pages: a {window_pages}-page window resumed after \
         page {}, and {today_pages} page(s) of today",
        saved.pages_done
    );
    let published: std::collections::HashSet<String> = read_topic_async(
        &bootstrap,
        &format!("{prefix}.cases"),
        Duration::from_secs(1),
    )
    .await
    .iter()
    .filter_map(|r| r.key.clone())
    .collect();
    let missing: Vec<&String> = existing
        .iter()
        .filter(|id| !published.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "cases lost across the restart: {missing:?}"
    );
    sim.stop().await.unwrap();
}
