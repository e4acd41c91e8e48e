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
    let addr = forwarder.health.admin_addr.get()?;
    let response = reqwest::get(format!("http://{addr}/livez")).await.ok()?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.ok()?;
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
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), &[]);
    let forwarder = RunningForwarder::start(config, Clock::system());
    eventually(
        Duration::from_secs(60),
        "the first 429 answered",
        async || sim.sim.stats().requests > 0,
    )
    .await;
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
        1,
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
    // The API runs on its own (real) clock; only the forwarder's machine is stepped.
    let sim = start_simulator(
        SimConfig {
            cases_per_hour: 3600.0,
            index_delay: Duration::from_millis(200),
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    let prefix = unique_prefix("clockstep");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(
        &sim,
        &bootstrap,
        &prefix,
        dir.path(),
        &[("CASESTREAM_POLL_INTERVAL", "1s")],
    );
    let forwarder_clock = Clock::scaled(Utc::now(), 1.0);
    let forwarder = RunningForwarder::start(config, forwarder_clock.clone());
    let cases_topic = format!("{prefix}.cases");
    eventually(Duration::from_secs(60), "a first event", async || {
        !read_topic_async(&bootstrap, &cases_topic, Duration::from_millis(300))
            .await
            .is_empty()
    })
    .await;

    forwarder_clock.step(-chrono::Duration::hours(1));
    let stepped_at = Utc::now();
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
