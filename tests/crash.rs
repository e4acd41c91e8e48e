//! The real process, killed with SIGKILL mid-run and started again: no case is missing and
//! any repeat carries the same event id. Then SIGTERM: a clean exit 0.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use casestream::snapengage::Case;
use common::*;

async fn created_events(bootstrap: &str, topic: &str) -> HashMap<String, (HashSet<String>, usize)> {
    event_ids_by_case(bootstrap, topic, Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_sigterm_exits_cleanly() {
    let bootstrap = kafka_bootstrap().await;
    // Real time, short delays: the process has its own clock.
    let sim = start_live_simulator(1200.0, Duration::from_secs(5 * 3600)).await;
    let prefix = unique_prefix("crash");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    // The simulator's default org and token: "demo-token" is looked for in the logs below.
    let env = process_env(
        &sim,
        &bootstrap,
        &prefix,
        &dir.path().join("state"),
        &[
            ("CASESTREAM_POLL_INTERVAL", "1s"),
            ("CASESTREAM_SETTLE", "2s"),
            // Slow enough that the catch-up of ~12,000 cases takes several seconds.
            ("CASESTREAM_RATE_LIMIT", "15"),
            // Unused on a PLAINTEXT listener, but must never be printed either.
            ("KAFKA_SASL_USERNAME", "svc-casestream"),
            ("KAFKA_SASL_PASSWORD", "kafka-secret-pw-777"),
        ],
    );
    let cases_topic = format!("{prefix}.cases");

    let mut first = spawn_forwarder(&env, &log);
    eventually(
        Duration::from_secs(60),
        "first events before the kill",
        async || created_events(&bootstrap, &cases_topic).await.len() >= 300,
    )
    .await;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let after_kill = created_events(&bootstrap, &cases_topic).await.len();
    let expected_total: usize = ["w1", "w2"]
        .iter()
        .map(|w| sim.sim.visible_cases(w).len())
        .sum();
    assert!(
        after_kill < expected_total,
        "the kill must land mid-run ({after_kill} of {expected_total} announced)"
    );

    let second = spawn_forwarder(&env, &log);
    eventually(
        Duration::from_secs(120),
        "every case announced after restart",
        async || {
            let created = created_events(&bootstrap, &cases_topic).await;
            let truth: Vec<String> = ["w1", "w2"]
                .iter()
                .flat_map(|w| sim.sim.visible_cases(w))
                .filter_map(|v| Case::from_value(v).ok())
                // Cases that appeared in the last seconds may not be read yet.
                .filter(|c| {
                    c.chat_end().unwrap() < chrono::Utc::now() - chrono::Duration::seconds(5)
                })
                .map(|c| c.id().to_owned())
                .collect();
            truth.iter().all(|id| created.contains_key(id))
        },
    )
    .await;
    // Every survey that had appeared and settled by now arrives. Waited for, not assumed
    // after a fixed margin: at 15 requests/s a read of today's ~120 pages takes about 8 s,
    // and a survey that appears just after its page was read waits for the next read.
    // The set is fixed at the cutoff: a case is visible 200 ms after its chat ends, and a
    // survey counts only 2 s after.
    let surveys_topic = format!("{prefix}.surveys");
    let cutoff = chrono::Utc::now();
    let due: Vec<String> = ["w1", "w2"]
        .iter()
        .flat_map(|w| sim.sim.visible_cases_with_survey_times(w))
        .map(|(value, survey_at)| (Case::from_value(value).unwrap(), survey_at))
        .filter(|(case, survey_at)| survey_due(case, *survey_at, cutoff))
        .map(|(case, _)| case.id().to_owned())
        .collect();
    eventually_or_report(
        Duration::from_secs(60),
        "every survey due before the stop published",
        async || {
            let surveys = created_events(&bootstrap, &surveys_topic).await;
            let missing: Vec<&String> =
                due.iter().filter(|id| !surveys.contains_key(*id)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("surveys lost: {missing:?}"))
            }
        },
    )
    .await;

    stop_with_sigterm(second, &log).await;

    let created = created_events(&bootstrap, &cases_topic).await;
    // A repeat is the same event: consumers dedupe by id (a regression to fresh ids on a
    // re-send would show here, not in the event-id unit tests).
    for (case, (ids, _)) in &created {
        assert_eq!(
            ids.len(),
            1,
            "case {case} announced under different event ids {ids:?}"
        );
    }
    let repeated: usize = created.values().map(|(_, records)| records - 1).sum();
    // Only pages acknowledged but not yet committed at the kill go out again: at most the
    // pages in flight of the one window being read (4 in flight + 1 settling, 100 cases each).
    assert!(
        repeated <= 5 * 100,
        "{repeated} records repeated: more than the pages in flight at the kill"
    );
    // Surveys too: every survey that had appeared and settled arrived, across the kill
    // (waited for above).
    let due = due.len();
    assert!(due > 50, "only {due} surveys were due; test too small");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("stopped cleanly"), "graceful stop logged");
    assert!(
        !logs.contains("demo-token"),
        "the token never reaches the logs"
    );
    println!(
        "{} cases announced, {repeated} records repeated after the SIGKILL, {due} surveys checked",
        created.len()
    );
    sim.stop().await.unwrap();
}
