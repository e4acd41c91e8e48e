//! State commits only after Kafka acknowledged, shown deterministically with the real process
//! and a broker of the test's own: Kafka down at start, then the broker stopped until delivery
//! errors are counted and the process SIGKILLed, then the same with SIGTERM. After each, every
//! case of the outage and every settled survey arrives.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use casestream::snapengage::Case;
use common::*;

async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the process counted a delivery error (its counter restarts with it).
async fn delivery_errors_counted(admin: &str) {
    eventually(
        Duration::from_secs(60),
        "delivery errors counted",
        async || {
            metric(admin, "casestream_kafka_delivery_errors_total")
                .await
                .is_some_and(|n| n > 0.0)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_commits_before_kafka_acknowledges() {
    let (broker, bootstrap) = OwnBroker::start("ack");
    let sim = start_live_simulator(3600.0, Duration::from_secs(600)).await;
    let prefix = unique_prefix("ack");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let env = process_env(
        &sim,
        &bootstrap,
        &prefix,
        &dir.path().join("state"),
        &[
            ("CASESTREAM_ADMIN_ADDR", &admin),
            ("CASESTREAM_POLL_INTERVAL", "1s"),
            ("CASESTREAM_SETTLE", "2s"),
            ("KAFKA_MESSAGE_TIMEOUT_MS", "3000"),
            ("KAFKA_RECONNECT_BACKOFF_MAX_MS", "1000"),
        ],
    );
    let (cases_topic, surveys_topic) = (format!("{prefix}.cases"), format!("{prefix}.surveys"));
    let everything_arrived = async || {
        let since = Instant::now();
        eventually(
            Duration::from_secs(120),
            "every case and survey",
            async || {
                let horizon = chrono::Utc::now() - chrono::Duration::seconds(5);
                let created = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(1)).await;
                let surveys =
                    count_by_key(&bootstrap, &surveys_topic, Duration::from_secs(1)).await;
                let mut cases = 0;
                let mut missing = (0, 0);
                for w in ["w1", "w2"] {
                    for (value, survey_at) in sim.sim.visible_cases_with_survey_times(w) {
                        let case = Case::from_value(value).unwrap();
                        if case.chat_end().unwrap() >= horizon {
                            continue;
                        }
                        cases += 1;
                        if !created.contains_key(case.id()) {
                            missing.0 += 1;
                        }
                        let settled = survey_at.is_some_and(|at| {
                            let at = chrono::DateTime::from_timestamp_millis(at).unwrap();
                            at < horizon
                                && case.chat_end().unwrap() + chrono::Duration::seconds(2) < horizon
                        });
                        if settled && !surveys.contains_key(case.id()) {
                            missing.1 += 1;
                        }
                    }
                }
                cases > 0 && missing == (0, 0)
            },
        )
        .await;
        println!("all arrived {:?} after the restart", since.elapsed());
    };

    // 1. Kafka down at start: the forwarder waits, then delivers.
    broker.script("stop");
    let mut forwarder = spawn_forwarder(&env, &log);
    eventually(
        Duration::from_secs(60),
        "waiting for Kafka logged",
        async || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("Kafka unreachable; waiting for it"))
        },
    )
    .await;
    assert!(
        forwarder.0.try_wait().unwrap().is_none(),
        "it waits rather than exiting"
    );
    broker.script("start");
    everything_arrived().await;

    // 2. The broker stops until delivery errors are counted; SIGKILL; broker back; restart.
    broker.script("stop");
    delivery_errors_counted(&admin).await;
    let outage_cases = sim.sim.stats().cases_served;
    forwarder.0.kill().unwrap();
    forwarder.0.wait().unwrap();
    broker.script("start");
    forwarder = spawn_forwarder(&env, &log);
    everything_arrived().await;
    assert!(sim.sim.stats().cases_served > outage_cases);

    // 3. SIGTERM while Kafka is down, with librdkafka's default 2-minute delivery timeout
    //    (nothing reported yet): exit 0 within 30 s anyway, nothing lost.
    forwarder.0.kill().unwrap();
    forwarder.0.wait().unwrap();
    let default_timeouts: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "KAFKA_MESSAGE_TIMEOUT_MS")
        .cloned()
        .collect();
    forwarder = spawn_forwarder(&default_timeouts, &log);
    eventually(Duration::from_secs(60), "ready", async || {
        readyz(&admin)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    broker.script("stop");
    eventually(
        Duration::from_secs(60),
        "not ready, naming Kafka",
        async || {
            readyz(&admin)
                .await
                .is_some_and(|(status, body)| status == 503 && body.contains(r#""kafka":false"#))
        },
    )
    .await;
    assert!(sigterm(&forwarder.0));
    let termed = Instant::now();
    let status = loop {
        if let Some(status) = forwarder.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            termed.elapsed() < Duration::from_secs(30),
            "SIGTERM ends the process within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0; log: {}",
        log.display()
    );
    broker.script("start");
    let _last = spawn_forwarder(&env, &log);
    everything_arrived().await;

    // Repeats are bounded: only pages in flight at the kill are sent twice.
    let created = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(1)).await;
    let repeated: usize = created.values().map(|n| n - 1).sum();
    let distinct: HashSet<&String> = created.keys().collect();
    println!("{} cases, {repeated} repeated records", distinct.len());
    assert!(
        repeated <= 2 * 5 * 100,
        "{repeated} repeats: more than the pages in flight"
    );
    sim.stop().await.unwrap();
}
