//! The broker stopped mid-run and started again: the forwarder notices, keeps its state where
//! it is, resumes by itself, and nothing is lost.
//!
//! This test needs a broker it may stop, so it starts its own with `scripts/kafka.sh` (Java
//! and Maven, as for the tests' shared broker) on free ports under a separate instance name.

mod common;

use std::time::Duration;

use casestream::clock::Clock;
use casestream::simulator::{Faults, SimConfig};
use casestream::snapengage::Case;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_ridden_out_without_loss() {
    let (broker, bootstrap) = OwnBroker::start("outage");

    // 60x: one virtual minute per second; 10 cases a second across both widgets.
    let clock = Clock::scaled("2026-03-10T08:00:00Z".parse().unwrap(), 60.0);
    let sim = start_simulator(
        SimConfig {
            cases_per_hour: 300.0,
            history: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    // Some retries and a dead letter, so every metric series has something to show.
    sim.sim.set_faults(Faults {
        rate_429: 0.1,
        retry_after_secs: 0,
        ..Faults::default()
    });
    sim.sim
        .add_case("w1", serde_json::json!({"no": "id"}), None, None);
    let prefix = unique_prefix("outage");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        // Deliveries fail fast, so the forwarder's own retry path is what rides it out.
        let properties = &mut c.kafka.properties;
        properties.insert("message.timeout.ms".into(), "3000".into());
        properties.insert("reconnect.backoff.max.ms".into(), "1000".into());
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let topic = format!("{prefix}.cases");
    let health = forwarder.health.clone();
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "events before the outage")
        .await;

    let admin = health.admin_addr().expect("admin endpoints listen");
    let status = async |path: &str| {
        admin_get(admin, path)
            .await
            .expect("the admin endpoints answer")
            .0
    };
    eventually(
        Duration::from_secs(30),
        "ready before the outage",
        async || status("/readyz").await == 200,
    )
    .await;
    assert_eq!(status("/livez").await, 200);

    broker.script("stop");
    eventually(
        Duration::from_secs(60),
        "the forwarder noticing Kafka is down",
        async || !health.deliveries_ok(),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "not ready while Kafka is down",
        async || status("/readyz").await == 503,
    )
    .await;
    assert_eq!(status("/livez").await, 200, "alive though not ready");
    // Cases keep arriving while Kafka is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_outage = clock.now();
    broker.script("start");
    eventually(
        Duration::from_secs(90),
        "the forwarder resuming by itself",
        async || health.deliveries_ok(),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "ready again after the outage",
        async || status("/readyz").await == 200,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = admin_get(admin, "/metrics")
        .await
        .expect("the admin endpoints answer");
    for series in [
        "casestream_api_requests_total{widget=\"w1\",status=\"ok\"}",
        "status=\"rate_limited\"}",
        "casestream_api_request_seconds_bucket",
        "casestream_api_retries_total",
        "casestream_rate_limit_wait_seconds_bucket",
        "casestream_cases_seen_total{widget=\"w2\"}",
        "casestream_events_published_total{type=\"com.snapengage.case.created\"}",
        "casestream_dead_letters_total{widget=\"w1\",reason=\"missing_id\"}",
        "casestream_pending_surveys",
        "casestream_known_cases",
        "casestream_state_size_bytes",
        "casestream_window_lag_seconds{widget=\"w1\"}",
        "casestream_kafka_delivery_errors_total",
        "casestream_ready 1",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics:\n{metrics}"
        );
    }
    forwarder.stop().await;
    let end = clock.now();

    let ids_by_case = event_ids_by_case(&bootstrap, &topic, Duration::from_secs(3)).await;
    let mut checked = 0;
    let mut from_outage = 0;
    for widget in ["w1", "w2"] {
        for value in sim.sim.visible_cases(widget) {
            // The case without an id went to the dead-letter topic (counted in /metrics).
            let Ok(case) = Case::from_value(value) else {
                continue;
            };
            let chat_end = case.chat_end().unwrap();
            if chat_end >= end - chrono::Duration::minutes(2) {
                continue;
            }
            let (ids, _) = ids_by_case
                .get(case.id())
                .unwrap_or_else(|| panic!("case {} lost", case.id()));
            assert_eq!(ids.len(), 1, "repeats carry the same event id");
            checked += 1;
            if chat_end > during_outage - chrono::Duration::minutes(4) && chat_end < during_outage {
                from_outage += 1;
            }
        }
    }
    assert!(checked > 300, "{checked} cases checked");
    assert!(
        from_outage > 5,
        "cases from the outage were delivered: {from_outage}"
    );
    sim.stop().await.unwrap();
}
