//! Exactly-once delivery's standbys, with the real process: a standby is Ready only once its
//! store caught up with the changelog, and an election group this Kafka user may not use
//! (a real ACL on a secured broker of the test's own) is logged, counted, keeps the instance
//! not Ready, and `casestream check` names the ACL, as it names a refused transactional id.

mod common;

use std::time::Duration;

use casestream::state::Change;
use common::*;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Records put in the changelog before the standby starts: seconds of reading.
const LONG_CHANGELOG: usize = 200_000;

/// Appends `count` changelog records (cursor deletions of made-up widgets: reading them
/// costs what any record does, and they leave nothing in the store).
fn fill_changelog(bootstrap: &str, topic: &str, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "50")
        .create()
        .unwrap();
    for i in 0..count {
        let key = Change::CursorCleared {
            widget: format!("filler-{i}"),
        }
        .key();
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(&key).partition(0);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("filling the changelog: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// A counter's value in a Prometheus text body (0 when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_ready_only_once_it_caught_up_with_the_changelog() {
    let bootstrap = kafka_bootstrap().await;
    let sim = live_simulator().await;
    let prefix = unique_prefix("eos-ready");
    let dir = tempfile::tempdir().unwrap();
    let (admin_a, admin_b) = (free_port(), free_port());
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let env_a = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("a"), admin_a);
    let env_b = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("b"), admin_b);
    let a = spawn_forwarder(&env_a, &log_a);
    becomes(admin_a, true, "the first instance becomes active").await;
    let topic = format!("{prefix}.state");
    let (b2, t2) = (bootstrap.clone(), topic.clone());
    tokio::task::spawn_blocking(move || fill_changelog(&b2, &t2, LONG_CHANGELOG))
        .await
        .unwrap();

    let b = spawn_forwarder(&env_b, &log_b);
    let admin = format!("127.0.0.1:{admin_b}");
    let (mut not_ready_while_reading, mut ready_after) = (0, None);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some((status, body)) = readyz(&admin).await else {
            continue;
        };
        // Read after the probe: at least what was applied when it answered.
        let Some((_, metrics)) = admin_get(&admin, "/metrics").await else {
            continue;
        };
        let applied = counter(&metrics, "casestream_changelog_records_applied_total");
        if status == 200 {
            ready_after = Some(applied);
            break;
        }
        if body.contains("\"standby\":true") && applied > 0.0 {
            not_ready_while_reading += 1;
        }
    }
    let applied = ready_after.expect("the standby becomes ready");
    println!(
        "the standby was not ready for {not_ready_while_reading} probes while reading, ready \
         after {applied} records"
    );
    assert!(
        not_ready_while_reading > 0,
        "a standby reading the changelog is not ready; log: {}",
        log_b.display()
    );
    assert!(
        applied >= (LONG_CHANGELOG - casestream::admin::CAUGHT_UP_LAG as usize) as f64,
        "ready after only {applied} of {LONG_CHANGELOG}+ records; log: {}",
        log_b.display()
    );
    assert_eq!(active(admin_b).await, Some(false), "it is a standby");
    stop_with_sigterm(b, &log_b).await;
    stop_with_sigterm(a, &log_a).await;
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_election_group_or_transactional_id_is_named_not_dropped() {
    // Its five listeners on free ports (plain, controller, SASL_SSL, SSL, mismatch).
    let (broker, secure) = OwnBroker::start_secure_on("eos-acl", free_ports(5));
    let sim = live_simulator().await;
    let prefix = unique_prefix("eos-acl");
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let log = dir.path().join("forwarder.log");
    let var = |name: &str| secure[name].clone();
    let (user, password, ca) = (var("SECURE_USER"), var("SECURE_PASSWORD"), var("SECURE_CA"));
    let env = with(
        &instance_env(&sim, &var("SECURE_SASL_SSL"), &prefix, dir.path(), admin),
        &[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", &user),
            ("KAFKA_SASL_PASSWORD", &password),
            ("KAFKA_SSL_CA_LOCATION", &ca),
        ],
    );
    // The election group and the transactional id: casestream.<org>.<group>.
    let id = format!("casestream.{}.{prefix}", sim.sim.config().org);
    let principal = format!("User:{user}");
    let acl = |verb: &str, resource: &str| {
        broker.script_with(&[
            "acl",
            verb,
            "--force",
            "--deny-principal",
            &principal,
            "--operation",
            "All",
            resource,
            &id,
        ]);
    };

    // The group refused: the instance says so, counts it, is not ready, and check names it.
    acl("--add", "--group");
    let forwarder = spawn_forwarder(&env, &log);
    let admin_addr = format!("127.0.0.1:{admin}");
    eventually(
        Duration::from_secs(90),
        "the election error counted",
        async || {
            admin_get(&admin_addr, "/metrics")
                .await
                .is_some_and(|(_, m)| {
                    counter(
                        &m,
                        "casestream_election_errors_total{kind=\"group_authorization\"}",
                    ) > 0.0
                })
        },
    )
    .await;
    // Readiness takes the error at the standby's next turn (twice a second).
    eventually(
        Duration::from_secs(10),
        "readiness naming the election error",
        async || {
            readyz(&admin_addr).await.is_some_and(|(status, body)| {
                status == 503 && body.contains("the election group refuses this instance")
            })
        },
    )
    .await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = readyz(&admin_addr).await.unwrap();
        assert_eq!(
            status, 503,
            "never ready while the group refuses it: {body}"
        );
    }
    stop_with_sigterm(forwarder, &log).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("the election group refuses this instance")
            && logged.contains("\"level\":\"ERROR\""),
        "the election error is logged: {}",
        log.display()
    );
    let (ok, text) = casestream("check", &env, Duration::from_secs(60));
    assert!(!ok, "check fails: {text}");
    assert!(
        text.contains(&format!("may not use consumer group {id}"))
            && text.contains(&format!("allow Read on group {id}")),
        "check names the group's ACL: {text}"
    );

    // The transactional id refused (no instance runs: check tries it).
    acl("--remove", "--group");
    acl("--add", "--transactional-id");
    let (ok, text) = casestream("check", &env, Duration::from_secs(60));
    assert!(!ok, "check fails: {text}");
    assert!(
        text.contains(&format!("may not use transactional id {id}")),
        "check names the transactional id's ACL: {text}"
    );
    assert!(!text.contains(&password), "no secret in check's output");
    acl("--remove", "--transactional-id");
    let (ok, text) = casestream("check", &env, Duration::from_secs(60));
    assert!(ok, "check passes once the ACLs are gone: {text}");
    sim.stop().await.unwrap();
}
