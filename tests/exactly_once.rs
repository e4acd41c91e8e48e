//! Exactly-once delivery against the real broker: the real process, SIGKILLed at random
//! points of its active life, restarted once with its state directory deleted, two instances
//! failing over, and a frozen (SIGSTOP) active instance coming back as a zombie. A consumer
//! reading `read_committed` finds every case's `case.created` and every settled survey
//! exactly once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_and_a_lost_state_directory_still_deliver_every_event_exactly_once() {
    let bootstrap = kafka_bootstrap().await;
    let sim = live_simulator().await;
    let prefix = unique_prefix("eos-kill");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("forwarder.log");
    let admin = free_port();
    let mut env = instance_env(&sim, &bootstrap, &prefix, &state, admin);
    // A catch-up of several seconds (10 pages, one transaction, a second), so the first kills
    // land in the middle of it.
    env.push(("CASESTREAM_RATE_LIMIT".into(), "10".into()));
    let cases_topic = format!("{prefix}.cases");
    let seed: u64 = rand::random();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    println!("kill points from seed {seed}");
    let mut announced_before_loss = 0;

    for kill in 1..=10 {
        if kill == 6 {
            // This start has no local state: it is rebuilt from the changelog alone.
            std::fs::remove_dir_all(&state).unwrap();
        }
        let mut forwarder = spawn_forwarder(&env, &log);
        becomes(admin, true, "the restarted instance becomes active").await;
        if kill == 5 {
            // The state about to be deleted must hold something to rebuild.
            eventually(Duration::from_secs(60), "a first commit", async || {
                !event_ids_by_case(&bootstrap, &cases_topic, Duration::from_secs(1))
                    .await
                    .is_empty()
            })
            .await;
        }
        // A random point of its active life: mid-transaction, mid-commit, between pages.
        let after = Duration::from_millis(rng.random_range(0..3000));
        tokio::time::sleep(after).await;
        forwarder.0.kill().unwrap();
        forwarder.0.wait().unwrap();
        let announced = event_ids_by_case(&bootstrap, &cases_topic, Duration::from_secs(1))
            .await
            .len();
        println!("kill {kill} after {after:?} active, {announced} cases announced");
        if kill == 5 {
            announced_before_loss = announced;
        }
        if kill == 1 {
            let total: usize = ["w1", "w2"]
                .iter()
                .map(|w| sim.sim.visible_cases(w).len())
                .sum();
            assert!(
                announced < total,
                "the first kill lands mid catch-up ({announced} of {total} announced)"
            );
        }
    }
    let forwarder = spawn_forwarder(&env, &log);
    wait_for_all(&sim, &bootstrap, &prefix, Duration::from_secs(180)).await;
    let until = chrono::Utc::now() - chrono::Duration::seconds(10);
    // Surveys settle and are read again for a few seconds more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop_with_sigterm(forwarder, &log).await;
    let (cases, surveys) = assert_exactly_once(&sim, &bootstrap, &prefix, until).await;
    let logs = std::fs::read_to_string(&log).unwrap();
    let applied: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("the local store caught up with the state changelog"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["since_start"]
                .as_u64()
                .unwrap()
        })
        .collect();
    println!("changes applied from the changelog at each start: {applied:?}");
    assert_eq!(applied.len(), 11, "every start reads the changelog");
    // The start without a state directory rebuilt every case from the changelog alone (each
    // announced case has its record in the changelog, committed with its event).
    assert!(
        announced_before_loss > 0 && applied[5] >= announced_before_loss as u64,
        "the lost state was rebuilt: {applied:?}, {announced_before_loss} cases announced before"
    );
    println!(
        "{cases} cases and {surveys} surveys exactly once after 10 SIGKILLs and a lost state directory"
    );
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_and_from_a_frozen_active_instance() {
    let bootstrap = kafka_bootstrap().await;
    let sim = live_simulator().await;
    let prefix = unique_prefix("eos-failover");
    let dir = tempfile::tempdir().unwrap();
    let (admin_a, admin_b) = (free_port(), free_port());
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let env_a = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("a"), admin_a);
    let env_b = instance_env(&sim, &bootstrap, &prefix, &dir.path().join("b"), admin_b);

    // Started together: one becomes active, the other a standby.
    let mut a = Some(spawn_forwarder(&env_a, &log_a));
    let mut b = Some(spawn_forwarder(&env_b, &log_b));
    let roles = async || (active(admin_a).await, active(admin_b).await);
    eventually(
        Duration::from_secs(60),
        "one active, one standby",
        async || {
            matches!(
                roles().await,
                (Some(true), Some(false)) | (Some(false), Some(true))
            )
        },
    )
    .await;
    // For a while: still one active, and only it publishes.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ra, rb) = roles().await;
        assert_ne!(ra, rb, "exactly one instance is active");
    }
    let a_active = roles().await.0 == Some(true);
    let (standby_admin, standby_log) = if a_active {
        (admin_b, &log_b)
    } else {
        (admin_a, &log_a)
    };
    let published = |admin: u16| async move {
        let (_, body) = admin_get(format!("127.0.0.1:{admin}"), "/metrics")
            .await
            .unwrap();
        body.contains("casestream_events_published_total")
    };
    assert!(
        !published(standby_admin).await,
        "the standby published nothing"
    );
    let (readiness, _) = readyz(format!("127.0.0.1:{standby_admin}")).await.unwrap();
    assert_eq!(readiness, 200, "a standby is ready");

    // SIGKILL the active one: the standby takes over after the session timeout.
    let killed = if a_active { a.take() } else { b.take() };
    let mut killed = killed.unwrap();
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let killed_at = Instant::now();
    becomes(standby_admin, true, "the standby takes over").await;
    let failover = killed_at.elapsed();
    println!("failover after SIGKILL: {failover:?} (session timeout {FAILOVER_TIMEOUT})");
    assert!(
        failover < Duration::from_secs(30),
        "took over in {failover:?}, far beyond the documented session timeout + fencing"
    );
    // The killed one, restarted, is a standby.
    let (restarted_admin, restarted_env, restarted_log) = if a_active {
        (admin_a, &env_a, &log_a)
    } else {
        (admin_b, &env_b, &log_b)
    };
    let restarted = spawn_forwarder(restarted_env, restarted_log);
    becomes(restarted_admin, false, "the restarted one is a standby").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        (active(restarted_admin).await, active(standby_admin).await),
        (Some(false), Some(true)),
        "the restarted instance stays a standby"
    );

    // The zombie: freeze the active one (the former standby) until the restarted standby
    // takes over, then let it run again. It must stop by itself, having made nothing visible.
    let zombie = if a_active { b.take() } else { a.take() };
    let mut zombie = zombie.unwrap();
    assert!(signal(&zombie.0, "-STOP"));
    becomes(
        restarted_admin,
        true,
        "the standby takes over from a frozen active instance",
    )
    .await;
    // Let the new active instance commit transactions before the zombie wakes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(signal(&zombie.0, "-CONT"));
    let exited = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            if let Some(status) = zombie.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    })
    .await
    .unwrap();
    let status = exited.expect("the zombie stops by itself");
    assert!(
        !status.success(),
        "the zombie exits with an error: {status:?}"
    );
    let zombie_log = std::fs::read_to_string(standby_log).unwrap();
    // It names the instance that took over (its election member's client id).
    assert!(
        zombie_log.contains("holds the active role")
            && zombie_log.contains("(casestream.election."),
        "the zombie says why it stopped, and which instance took over: {}",
        standby_log.display()
    );

    wait_for_all(&sim, &bootstrap, &prefix, Duration::from_secs(120)).await;
    let until = chrono::Utc::now() - chrono::Duration::seconds(10);
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop_with_sigterm(restarted, restarted_log).await;
    let (cases, surveys) = assert_exactly_once(&sim, &bootstrap, &prefix, until).await;
    println!("{cases} cases and {surveys} surveys exactly once across a failover and a zombie");
    sim.stop().await.unwrap();
}

/// Topic configuration properties, name and value.
type TopicProperties = &'static [(&'static str, &'static str)];

/// An admin client of the test's own, for topics made by hand.
fn admin_client(
    bootstrap: &str,
) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("test admin client")
}

/// A changelog made by hand (or by GitOps) that loses records the state still needs: a
/// `delete` policy with a day's retention, or tombstones kept an hour. The real process
/// refuses to start on it, exiting non-zero with a message naming the property and the value
/// it needs, before it announces anything; `casestream check` says the same. Set as the
/// message says, the topic passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_that_would_lose_state_is_refused_naming_the_setting() {
    use rdkafka::admin::{
        AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
    };
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(Default::default(), casestream::clock::Clock::system()).await;
    let admin = admin_client(&bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    // (test name, the topic as made, the refusal, the topic as the refusal says to set it)
    let cases: [(&str, TopicProperties, &str, TopicProperties); 2] = [
        (
            "eos-delete",
            &[("cleanup.policy", "delete"), ("retention.ms", "86400000")],
            "retention.ms=86400000 needs -1, or cleanup.policy=compact",
            &[("cleanup.policy", "compact")],
        ),
        (
            "eos-tombstones",
            &[
                ("cleanup.policy", "compact"),
                ("delete.retention.ms", "3600000"),
            ],
            "delete.retention.ms=3600000 needs at least 86400000",
            &[
                ("cleanup.policy", "compact"),
                ("delete.retention.ms", "86400000"),
            ],
        ),
    ];
    for (name, made, refusal, fixed) in cases {
        let prefix = unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        let env = instance_env(
            &sim,
            &bootstrap,
            &prefix,
            &dir.path().join("state"),
            free_port(),
        );
        let changelog = format!("{prefix}.state");
        let mut topic = NewTopic::new(&changelog, 1, TopicReplication::Fixed(1));
        for (k, v) in made {
            topic = topic.set(k, v);
        }
        for created in admin.create_topics([&topic], &options).await.unwrap() {
            created.unwrap();
        }

        let (ok, text) = casestream("run", &env, Duration::from_secs(60));
        assert!(!ok, "{name}: run must exit non-zero by itself:\n{text}");
        assert!(
            text.contains(&format!(
                "the state changelog {changelog} would lose records"
            )) && text.contains(refusal),
            "{name}: run names the property and the value it needs:\n{text}"
        );
        let announced = read_topic_async(
            &bootstrap,
            &format!("{prefix}.cases"),
            Duration::from_secs(2),
        )
        .await;
        assert!(
            announced.is_empty(),
            "{name}: refused before announcing anything"
        );

        let (ok, text) = casestream("check", &env, Duration::from_secs(60));
        assert!(
            !ok && text.contains("FAIL  changelog") && text.contains(refusal),
            "{name}: check reports the same refusal:\n{text}"
        );

        let mut fix = AlterConfig::new(ResourceSpecifier::Topic(&changelog));
        for (k, v) in fixed {
            fix = fix.set(k, v);
        }
        for altered in admin.alter_configs([&fix], &options).await.unwrap() {
            altered.unwrap();
        }
        // The broker applies an altered topic configuration asynchronously.
        eventually(
            Duration::from_secs(30),
            "check passes on the altered topic",
            async || {
                let env = env.clone();
                let (ok, text) = tokio::task::spawn_blocking(move || {
                    casestream("check", &env, Duration::from_secs(60))
                })
                .await
                .unwrap();
                ok && text.contains("ok    changelog")
            },
        )
        .await;
    }
    sim.stop().await.unwrap();
}

/// An upgrade from the release whose exactly-once overlay named `casestream.state` for every
/// deployment: on a broker holding that topic, the per-deployment default changelog (new,
/// empty) is refused, naming both topics and the ways on, instead of starting from an empty
/// state (the lookback announced again, pending surveys lost). Naming the old topic goes on.
/// A broker of the test's own: `casestream.state` on the shared one would refuse other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_default_changelog_beside_the_old_pinned_one_is_refused() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let (_broker, bootstrap) = OwnBroker::start("eos-moved");
    let sim = start_simulator(Default::default(), casestream::clock::Clock::system()).await;
    let admin = admin_client(&bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let pinned = NewTopic::new("casestream.state", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact");
    for created in admin.create_topics([&pinned], &options).await.unwrap() {
        created.unwrap();
    }
    let prefix = unique_prefix("eos-moved");
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = instance_env(
        &sim,
        &bootstrap,
        &prefix,
        &dir.path().join("state"),
        free_port(),
    )
    .into_iter()
    .filter(|(k, _)| k != "CASESTREAM_TOPIC_STATE")
    .collect();
    let (ok, text) = casestream("run", &env, Duration::from_secs(60));
    let default = format!("casestream.demo.{prefix}.state");
    assert!(!ok, "run must exit non-zero by itself:\n{text}");
    assert!(
        text.contains(&format!(
            "the state changelog {default} does not exist yet, but casestream.state does"
        )) && text.contains("CASESTREAM_TOPIC_STATE=casestream.state"),
        "the refusal names both topics and the way on:\n{text}"
    );
    let topics = topic_names(&bootstrap);
    assert!(
        !topics.contains(&default),
        "nothing was created: {topics:?}"
    );
    // Going on with the old topic, as the refusal says: past the check, running.
    let with_old = with(&env, &[("CASESTREAM_TOPIC_STATE", "casestream.state")]);
    let (_, text) = casestream("run", &with_old, Duration::from_secs(15));
    assert!(
        !text.contains("does not exist yet"),
        "the named old changelog is used:\n{text}"
    );
    assert!(
        text.contains("elected the active instance"),
        "it runs:\n{text}"
    );
}

/// The topics of a broker, by name.
fn topic_names(bootstrap: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a metadata client");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}
