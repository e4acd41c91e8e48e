//! Ordinary cluster facts that used to break casestream, caused for real with the real process:
//! a JAAS line holding a password, Kubernetes service links of a Service named `kafka-...`, a
//! misspelt librdkafka property, and deliveries failing while the brokers answer metadata.

mod common;

use std::time::Duration;

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaas_lines_service_links_and_bad_properties_get_clear_errors() {
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(SimConfig::default(), Clock::system()).await;
    let prefix = unique_prefix("quirks");
    let dir = tempfile::tempdir().unwrap();
    let env = process_env(&sim, &bootstrap, &prefix, &dir.path().join("state"), &[]);

    // The Java client's JAAS line: refused by name, the password never printed.
    let jaas = r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="svc" password="jaas-pw-8812";"#;
    for command in ["check", "run"] {
        let (ok, text) = casestream(
            command,
            &with(&env, &[("KAFKA_SASL_JAAS_CONFIG", jaas)]),
            Duration::from_secs(20),
        );
        assert!(!ok, "{command} with a JAAS line must fail: {text}");
        assert!(text.contains("KAFKA_SASL_JAAS_CONFIG"), "{command}: {text}");
        assert!(
            text.contains("KAFKA_SASL_USERNAME") && text.contains("KAFKA_SASL_PASSWORD"),
            "{command} says what to use instead: {text}"
        );
        assert!(
            !text.contains("jaas-pw-8812"),
            "{command} printed the password: {text}"
        );
    }

    // What Kubernetes injects for a Service named `kafka-ui`: ignored, not read as properties.
    let links = [
        ("KAFKA_UI_SERVICE_HOST", "10.0.0.1"),
        ("KAFKA_UI_SERVICE_PORT", "8080"),
        ("KAFKA_UI_SERVICE_PORT_HTTP", "8080"),
        ("KAFKA_UI_PORT", "tcp://10.0.0.1:8080"),
        ("KAFKA_UI_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("KAFKA_UI_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ("KAFKA_UI_PORT_8080_TCP_PORT", "8080"),
        ("KAFKA_UI_PORT_8080_TCP_PROTO", "tcp"),
    ];
    let (ok, text) = casestream("check", &with(&env, &links), Duration::from_secs(60));
    assert!(ok, "check with service links: {text}");
    let (_, text) = casestream("run", &with(&env, &links), Duration::from_secs(8));
    assert!(
        text.contains("forwarding"),
        "run starts with service links: {text}"
    );
    assert!(text.contains("stopped cleanly"), "{text}");
    assert!(!text.contains("ui.service.host"), "{text}");

    // A misspelt property names the variable it came from; a bad value is never quoted.
    let (ok, text) = casestream(
        "check",
        &with(&env, &[("KAFKA_LINGER_MSS", "5")]),
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(
        text.contains("`linger.mss`") && text.contains("KAFKA_LINGER_MSS"),
        "names the property and its variable: {text}"
    );
    let (ok, text) = casestream(
        "run",
        &with(&env, &[("KAFKA_SASL_OAUTHBEARER_METHOD", "hunter2-secret")]),
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(text.contains("KAFKA_SASL_OAUTHBEARER_METHOD"), "{text}");
    assert!(
        !text.contains("hunter2-secret"),
        "the value was quoted: {text}"
    );
    sim.stop().await.unwrap();
}

/// Deliveries fail for a passing reason (`NOT_ENOUGH_REPLICAS`, injected with librdkafka's mock
/// cluster, since a one-broker cluster cannot be made to refuse records while it answers
/// metadata) while the brokers answer metadata: `/readyz` says `"kafka": false`, whatever the
/// probe finds, and keeps saying so across probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_failing_deliveries_though_brokers_answer() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let prefix = unique_prefix("isr");
    let cluster = mock_cluster(&prefix);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let sim = start_simulator(
        SimConfig {
            history: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(
        &sim,
        &cluster.bootstrap_servers(),
        &prefix,
        dir.path(),
        |_| {},
    );
    let forwarder = RunningForwarder::start(config, Clock::system());
    let health = forwarder.health.clone();
    let readyz = async || common::readyz(health.admin_addr()?).await;
    let failing = |(status, body): &(u16, String)| {
        *status == 503
            && body.contains(r#""kafka":false"#)
            && body.contains(r#""kafka_deliveries":false"#)
            && body.contains(r#""kafka_reachable":true"#)
    };
    eventually(
        Duration::from_secs(60),
        "readyz naming failing deliveries",
        async || readyz().await.is_some_and(|r| failing(&r)),
    )
    .await;
    // It stays so across several probes (every 5 s): the probe never overwrites it.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answer = readyz().await.unwrap();
        assert!(failing(&answer), "{answer:?}");
    }
    // Kafka takes records again: ready again.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    eventually(Duration::from_secs(120), "ready again", async || {
        readyz().await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    forwarder.stop().await;
    sim.stop().await.unwrap();
}

/// The documented promise (docs/operations.md): a Kafka password never reaches the logs or `/metrics`. A run with
/// `KAFKA_SASL_PASSWORD` set, every log at debug and librdkafka's own security and broker debug
/// output on, against a listener that does not speak SASL (so the failure paths run too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_password_never_reaches_logs_or_metrics() {
    const PASSWORD: &str = "kafka-pw-5521-zq";
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(SimConfig::default(), Clock::system()).await;
    let prefix = unique_prefix("kafkapw");
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let env = process_env(
        &sim,
        &bootstrap,
        &prefix,
        &dir.path().join("state"),
        &[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_MECHANISMS", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", PASSWORD),
            ("KAFKA_DEBUG", "security,broker,conf"),
            ("CASESTREAM_ADMIN_ADDR", &admin),
            ("RUST_LOG", "debug"),
        ],
    );

    let (ok, text) = casestream("check", &env, Duration::from_secs(60));
    assert!(
        !ok,
        "check against a listener without SASL must fail: {text}"
    );
    assert!(text.contains("FAIL  kafka"), "{text}");
    assert!(
        !text.contains(PASSWORD),
        "check printed the password: {text}"
    );

    let (child, output) = spawn("run", &env);
    let mut scraped = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        for path in ["/metrics", "/readyz", "/livez"] {
            if let Some((_, body)) = admin_get(&admin, path).await {
                scraped.push(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, logs) = finish(child, output);
    assert!(
        scraped.iter().any(|b| b.contains("casestream_ready")),
        "metrics were scraped: {scraped:?}"
    );
    assert!(
        scraped.iter().any(|b| b.contains(r#""kafka":false"#)),
        "readiness shows Kafka failing: {scraped:?}"
    );
    assert!(
        logs.contains("sasl") || logs.contains("SASL"),
        "librdkafka's security debug output was logged: {logs}"
    );
    assert!(!logs.contains(PASSWORD), "the password reached the logs");
    for body in &scraped {
        assert!(!body.contains(PASSWORD), "the password reached {body}");
    }
    sim.stop().await.unwrap();
}
