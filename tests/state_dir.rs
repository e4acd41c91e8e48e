//! The state directory under stress, with the real process: a second writer is refused, and a
//! full disk stops the forwarder with a clear error, losing nothing.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use casestream::snapengage::Case;
use common::*;

fn sim_config() -> SimConfig {
    SimConfig {
        widgets: vec!["w1".into(), "w2".into()],
        cases_per_hour: 600.0,
        history: Duration::from_secs(3 * 3600),
        ..SimConfig::default()
    }
}

/// Waits for a child to exit, at most `limit`; its exit status, or `None` if still running.
fn wait_for_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_state_directory_is_refused() {
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(sim_config(), Clock::system()).await;
    let prefix = unique_prefix("lock");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env = process_env(&sim, &bootstrap, &prefix, &state, &[]);
    let first_log = dir.path().join("first.log");
    let mut first = spawn_forwarder(&env, &first_log);
    eventually(
        Duration::from_secs(60),
        "the first process holds the lock",
        async || std::fs::read_to_string(&first_log).is_ok_and(|l| l.contains("state opened")),
    )
    .await;

    let second_log = dir.path().join("second.log");
    let mut second = spawn_forwarder(&env, &second_log);
    let started = Instant::now();
    let status = wait_for_exit(&mut second.0, Duration::from_secs(5))
        .expect("the second process exits within 5 s");
    assert!(!status.success(), "the second process exits non-zero");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(&second_log).unwrap();
    assert!(
        text.contains(&state.display().to_string()),
        "names the directory: {text}"
    );
    assert!(text.contains("another casestream process"), "{text}");
    assert!(
        text.contains(&format!("pid {}", first.0.id())),
        "names the holder: {text}"
    );
    // The first one is unharmed and still running.
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first process runs on"
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // SIGKILL released the lock with the process: a restart is not blocked.
    let mut third = spawn_forwarder(&env, &dir.path().join("third.log"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        third.0.try_wait().unwrap().is_none(),
        "a restart after SIGKILL takes the lock"
    );
    sim.stop().await.unwrap();
}

/// A tmpfs of its own as the state volume, so the disk can fill for real.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill a disk for real: it needs root (CI runs as root)"
        );
        Self(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_forwarder_clearly_and_loses_nothing() {
    let bootstrap = kafka_bootstrap().await;
    let sim = start_simulator(
        SimConfig {
            cases_per_hour: 600.0,
            history: Duration::from_secs(6 * 3600),
            ..sim_config()
        },
        Clock::system(),
    )
    .await;
    let prefix = unique_prefix("diskfull");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("volume"), "8m");
    let state = disk.0.join("state");
    let log = dir.path().join("forwarder.log");
    let env = process_env(
        &sim,
        &bootstrap,
        &prefix,
        &state,
        &[("CASESTREAM_RATE_LIMIT", "200")],
    );
    // Leave the state little room: the cases of a day do not fit.
    std::fs::write(disk.0.join("filler"), vec![0u8; 7800 * 1024]).unwrap();

    let mut first = spawn_forwarder(&env, &log);
    let status = wait_for_exit(&mut first.0, Duration::from_secs(120))
        .expect("the forwarder stops when its disk is full");
    assert!(!status.success(), "a full disk exits non-zero");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("database or disk is full") && text.contains(&state.display().to_string()),
        "the error says the state's disk is full and names it: {text}"
    );

    // Room again: the restart delivers every case, the ones announced before included.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let _second = spawn_forwarder(&env, &log);
    let cases_topic = format!("{prefix}.cases");
    let truth: HashSet<String> = ["w1", "w2"]
        .iter()
        .flat_map(|w| sim.sim.visible_cases(w))
        .filter_map(|v| Case::from_value(v).ok())
        .filter(|c| c.chat_end().unwrap() < chrono::Utc::now() - chrono::Duration::seconds(5))
        .map(|c| c.id().to_owned())
        .collect();
    assert!(truth.len() > 2000, "{} cases", truth.len());
    eventually(
        Duration::from_secs(120),
        "every case after the restart",
        async || {
            let seen: HashSet<String> =
                read_topic_async(&bootstrap, &cases_topic, Duration::from_secs(1))
                    .await
                    .into_iter()
                    .filter_map(|r| r.key)
                    .collect();
            truth.difference(&seen).count() == 0
        },
    )
    .await;
    sim.stop().await.unwrap();
}
