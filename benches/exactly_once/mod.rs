//! Exactly-once delivery's costs (issue 10): catch-up throughput against at-least-once in the
//! same run, the time to rebuild a local store from the changelog alone, and failover time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use casestream::simulator::http::RunningSimulator;
use casestream::sink::KafkaSettings;
use casestream::sink::config::Delivery;
use casestream::state::{Change, SqliteStore, StateStore};

/// Records produced per wait while filling a changelog.
const PRODUCE_CHUNK: u64 = 100_000;

/// A changelog topic as casestream creates it: one partition, compacted.
async fn create_changelog(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = KafkaSettings::new(bootstrap)
        .client_config()
        .create()
        .unwrap();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
}

/// Fills a changelog with `size` cases (one record each), as an active instance would have.
async fn fill_changelog(bootstrap: &str, topic: &str, size: u64) -> Duration {
    let producer: FutureProducer = KafkaSettings::new(bootstrap)
        .client_config()
        .create()
        .unwrap();
    let started = Instant::now();
    let mut from = 0;
    while from < size {
        let to = (from + PRODUCE_CHUNK).min(size);
        let records: Vec<(String, Vec<u8>)> = (from..to)
            .map(|i| {
                let change = Change::Case(crate::synthetic(i));
                (change.key(), change.value().unwrap())
            })
            .collect();
        let sends = records.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(value),
                Timeout::Never,
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("delivery");
        }
        from = to;
    }
    started.elapsed()
}

/// Rows: per size, the time to rebuild an empty local store from a changelog of that many
/// cases.
pub async fn rebuild_rows(bootstrap: &str, sizes: &[u64]) -> String {
    let mut out = String::from(
        "\n## Exactly-once: rebuilding the local store from the changelog\n\n| cases in the changelog | fill (producer) | rebuild (read, decode, apply) | rebuild rate | SQLite file |\n|---|---|---|---|---|\n",
    );
    for &size in sizes {
        let topic = format!("bench-changelog-{}", uuid::Uuid::new_v4().simple());
        create_changelog(bootstrap, &topic).await;
        let fill = fill_changelog(bootstrap, &topic, size).await;
        let mut settings = KafkaSettings::new(bootstrap);
        settings.delivery = Delivery::ExactlyOnce;
        settings.failover.org = "bench".into();
        settings.topics.state = topic;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let started = Instant::now();
        let applied =
            casestream::failover::restore(&settings, store.clone(), &CancellationToken::new())
                .await
                .unwrap();
        let rebuild = started.elapsed();
        assert_eq!(applied, size, "every record applied");
        assert_eq!(store.stats().unwrap().known_cases, size, "every case known");
        out.push_str(&format!(
            "| {size} | {:.1} s | {:.1} s | {:.0} cases/s | {:.0} MB |\n",
            fill.as_secs_f64(),
            rebuild.as_secs_f64(),
            size as f64 / rebuild.as_secs_f64(),
            crate::state_bytes(dir.path()) as f64 / 1e6,
        ));
    }
    out
}

/// `casestream_active` of the instance at `admin`; `None` while it does not answer.
async fn active(admin: u16) -> Option<bool> {
    let body = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let line = body.lines().find(|l| l.starts_with("casestream_active "))?;
    Some(line.trim_end().ends_with(" 1"))
}

async fn wait_until(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "no takeover within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rows: how long a standby takes to become active after the active instance is SIGKILLed
/// and after it is stopped with SIGTERM, at the default `CASESTREAM_FAILOVER_TIMEOUT`.
pub async fn failover_rows(sim: &RunningSimulator, bootstrap: &str, widgets: usize) -> String {
    let prefix = format!("bench-failover-{}", uuid::Uuid::new_v4().simple());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let admins = [free_port(), free_port()];
    let spawn = |i: usize| {
        let admin = format!("127.0.0.1:{}", admins[i]);
        crate::spawn_forwarder(
            sim,
            bootstrap,
            widgets,
            dirs[i].path(),
            &prefix,
            crate::POLL_INTERVAL_SECS,
            &[
                ("CASESTREAM_DELIVERY", "exactly-once"),
                ("CASESTREAM_ADMIN_ADDR", &admin),
            ],
        )
    };
    let mut instances = [Some(spawn(0)), Some(spawn(1))];
    let mut out = String::from(
        "\n## Exactly-once: failover (CASESTREAM_FAILOVER_TIMEOUT 10 s, the default)\n\n| how the active instance ended | until the standby is active |\n|---|---|\n",
    );
    for how in ["SIGKILL", "SIGTERM (leaves the group)"] {
        wait_until(Duration::from_secs(120), async || {
            let roles = (active(admins[0]).await, active(admins[1]).await);
            matches!(roles, (Some(true), Some(false)) | (Some(false), Some(true)))
        })
        .await;
        let first = if active(admins[0]).await == Some(true) {
            0
        } else {
            1
        };
        let mut ended = instances[first].take().unwrap();
        if how == "SIGKILL" {
            ended.child.kill().unwrap();
        } else {
            std::process::Command::new("kill")
                .args(["-TERM", &ended.child.id().to_string()])
                .status()
                .unwrap();
        }
        let took = wait_until(Duration::from_secs(120), async || {
            active(admins[1 - first]).await == Some(true)
        })
        .await;
        let _ = ended.child.wait();
        out.push_str(&format!("| {how} | {:.1} s |\n", took.as_secs_f64()));
        // Back to two instances: the restarted one is a standby.
        instances[first] = Some(spawn(first));
    }
    out
}
