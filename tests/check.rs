//! `casestream check`: one line per check, non-zero exit when any fails, reasons an operator
//! can act on, and never the token.

mod common;

use std::process::Command;

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use common::*;

fn check(env: &[(&str, String)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_casestream"))
        .arg("check")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run casestream check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_dependency() {
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(
        SimConfig {
            token: "check-token-31337".into(),
            history: std::time::Duration::from_secs(3600),
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    let prefix = unique_prefix("check");
    let good = vec![
        ("SNAPENGAGE_API_URL", sim.base_url().to_string()),
        ("SNAPENGAGE_ORG_ID", "demo".to_owned()),
        ("SNAPENGAGE_API_TOKEN", "check-token-31337".to_owned()),
        ("SNAPENGAGE_WIDGET_IDS", "w1,w2".to_owned()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("CASESTREAM_TOPIC_CASES", format!("{prefix}.cases")),
        ("CASESTREAM_TOPIC_SURVEYS", format!("{prefix}.surveys")),
        ("CASESTREAM_TOPIC_DEADLETTER", format!("{prefix}.dead")),
    ];
    let with = |changes: &[(&'static str, &str)]| {
        let mut env = good.clone();
        for (k, v) in changes {
            env.retain(|(name, _)| name != k);
            env.push((k, v.to_string()));
        }
        env
    };

    let (ok, text) = check(&good);
    assert!(ok, "{text}");
    for line in [
        "ok    config",
        "ok    logs-api",
        "ok    kafka",
        "ok    topics",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(text.contains("(created at start)"), "{text}");

    let (ok, text) = check(&with(&[("SNAPENGAGE_API_TOKEN", "wrong-token-4242")]));
    assert!(!ok);
    assert!(
        text.contains("FAIL  logs-api") && text.contains("rejected the API token"),
        "{text}"
    );
    assert!(
        text.contains("ok    kafka"),
        "the other checks still run:\n{text}"
    );
    assert!(
        !text.contains("wrong-token-4242") && !text.contains("check-token-31337"),
        "{text}"
    );

    let (ok, text) = check(&with(&[("SNAPENGAGE_ORG_ID", "other-org")]));
    assert!(
        !ok && text.contains("does not know org `other-org`"),
        "{text}"
    );

    let (ok, text) = check(&with(&[("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")]));
    assert!(!ok);
    assert!(
        text.contains("FAIL  kafka") && text.contains("KAFKA_BOOTSTRAP_SERVERS"),
        "{text}"
    );
    assert!(text.contains("ok    logs-api"), "{text}");

    let (ok, text) = check(&with(&[("CASESTREAM_CREATE_TOPICS", "false")]));
    assert!(
        !ok && text.contains("FAIL  topics") && text.contains("CASESTREAM_CREATE_TOPICS"),
        "{text}"
    );

    let (ok, text) = check(&with(&[("CASESTREAM_POLL_INTERVAL", "sometimes")]));
    assert!(
        !ok && text.contains("FAIL  config") && text.contains("CASESTREAM_POLL_INTERVAL"),
        "{text}"
    );
    sim.stop().await.unwrap();
}
