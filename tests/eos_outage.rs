//! Exactly-once delivery through broker outages, with the real process against a broker of
//! the test's own, stopped for real: 90 s under one instance, 90 s more under two, then
//! SIGTERM during a third outage. No instance exits on its own, each SIGTERM exits 0 within
//! 30 s, and a `read_committed` consumer finds every case and settled survey exactly once.
//!
//! Needs Java and the Kafka artifacts (`CASESTREAM_KAFKA_HOME`), as tests/kafka_outage.rs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// How long the broker is away each time: past the session timeout and the transaction
/// timeout (60 s) both.
const OUTAGE: Duration = Duration::from_secs(90);
/// What the issue allows a SIGTERM during an outage.
const SIGTERM_LIMIT: Duration = Duration::from_secs(30);

/// Fails the test if the instance exited on its own.
fn assert_running(forwarder: &mut Forwarder, log: &Path) {
    let status = forwarder.0.try_wait().unwrap();
    assert!(
        status.is_none(),
        "an instance exited ({status:?}) during an outage; log: {}",
        log.display()
    );
}

/// Stops the broker for [`OUTAGE`], checking every second that every instance still runs,
/// and starts it again.
async fn outage(broker: &OwnBroker, instances: &mut [(&mut Forwarder, &Path)]) {
    broker.script("stop");
    let started = Instant::now();
    while started.elapsed() < OUTAGE {
        for (forwarder, log) in instances.iter_mut() {
            assert_running(forwarder, log);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    broker.script("start");
}

/// SIGTERM; the process must exit 0 within [`SIGTERM_LIMIT`]. Returns how long it took.
async fn sigterm_exits_in_time(mut forwarder: Forwarder, log: &Path) -> Duration {
    assert!(sigterm(&forwarder.0));
    let sent = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        while sent.elapsed() < SIGTERM_LIMIT + Duration::from_secs(30) {
            if let Some(status) = forwarder.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .unwrap();
    let took = sent.elapsed();
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM; log: {}", log.display()));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0; log: {}",
        log.display()
    );
    assert!(
        took <= SIGTERM_LIMIT,
        "SIGTERM during an outage took {took:?}; log: {}",
        log.display()
    );
    took
}

/// The log lines at ERROR level about reaching the brokers.
fn connection_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .filter(|l| {
            [
                "FAIL [",
                "Connect to",
                "BrokerTransportFailure",
                "AllBrokersDown",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_rides_out_90_s_broker_outages_with_one_and_then_two_instances() {
    let (broker, bootstrap) = OwnBroker::start("eos-outage");
    let sim = live_simulator().await;
    let prefix = unique_prefix("eos-outage");
    let dir = tempfile::tempdir().unwrap();
    let (admin_a, admin_b) = (free_port(), free_port());
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let env_a = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("a"), admin_a);
    let env_b = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("b"), admin_b);
    let roles = async || (active(admin_a).await, active(admin_b).await);

    // One instance.
    let mut a = spawn_forwarder(&env_a, &log_a);
    becomes(admin_a, true, "the only instance becomes active").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    outage(&broker, &mut [(&mut a, &log_a)]).await;
    eventually(
        Duration::from_secs(120),
        "the only instance active again after the outage",
        async || active(admin_a).await == Some(true),
    )
    .await;
    assert_running(&mut a, &log_a);

    // Two instances: the second joins as a standby, then the broker goes away again.
    let mut b = spawn_forwarder(&env_b, &log_b);
    becomes(admin_b, false, "the second instance is a standby").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    outage(&broker, &mut [(&mut a, &log_a), (&mut b, &log_b)]).await;
    eventually(
        Duration::from_secs(120),
        "one active and one standby after the outage",
        async || {
            matches!(
                roles().await,
                (Some(true), Some(false)) | (Some(false), Some(true))
            )
        },
    )
    .await;
    wait_for_all(&sim, &bootstrap, &prefix, Duration::from_secs(240)).await;
    let until = chrono::Utc::now() - chrono::Duration::seconds(10);
    // Surveys settle and are read again for a few seconds more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_running(&mut a, &log_a);
    assert_running(&mut b, &log_b);

    // SIGTERM during a third outage, well into it: both exit 0 in time.
    broker.script("stop");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (took_a, took_b) = tokio::join!(
        sigterm_exits_in_time(a, &log_a),
        sigterm_exits_in_time(b, &log_b)
    );
    println!("SIGTERM during an outage: exits after {took_a:?} and {took_b:?}");
    broker.script("start");

    let (cases, surveys) = assert_exactly_once(&sim, &bootstrap, &prefix, until).await;
    println!("{cases} cases and {surveys} surveys exactly once across two 90 s outages");

    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).unwrap();
        // librdkafka's connection failures: one line when a spell starts, one when it ends,
        // not one per attempt.
        assert!(
            text.contains("Kafka connection failing")
                && text.contains("Kafka connection works again"),
            "the outage's start and end are logged: {}",
            log.display()
        );
        let errors = connection_errors(&text);
        assert!(
            errors.is_empty(),
            "connection failures logged at ERROR: {errors:#?}"
        );
        // The active instance's election consumer never fetches the changelog it writes.
        assert!(
            !text.contains("the election consumer fetched a changelog record"),
            "the election fetched changelog records: {}",
            log.display()
        );
    }
    let text_a = std::fs::read_to_string(&log_a).unwrap();
    assert!(
        text_a.contains("a standby again, rejoining the election"),
        "the only instance stepped back in the process during the outage: {}",
        log_a.display()
    );
    sim.stop().await.unwrap();
}
