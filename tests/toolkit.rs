//! The operator's toolkit against a real state written by real runs (the real process, the
//! simulator, the real broker): `casestream state summary | case | reset | export | import`,
//! in at-least-once delivery and, for the changes, in exactly-once delivery through the
//! changelog.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use casestream::simulator::http::RunningSimulator;
use common::*;

const IDLE: Duration = Duration::from_secs(2);

/// A simulator with no traffic of its own: three cases per widget, created 50 h, 26 h and
/// 2 min ago (three days, whatever the hour), the middle ones with a survey.
struct Cases {
    sim: RunningSimulator,
    /// Case id → (widget, day).
    days: BTreeMap<String, (String, NaiveDate)>,
}

async fn simulator_with_cases() -> Cases {
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 0.0,
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    let mut days = BTreeMap::new();
    for widget in ["w1", "w2"] {
        for hours_ago in [50, 26, 0] {
            let created =
                Utc::now() - chrono::Duration::hours(hours_ago) - chrono::Duration::minutes(2);
            let id = add_case(&sim, widget, created);
            if hours_ago == 26 {
                assert!(
                    sim.sim
                        .attach_survey(&id, Some(9), Some("great".into()), None)
                );
            }
            days.insert(id, (widget.to_owned(), created.date_naive()));
        }
    }
    Cases { sim, days }
}

fn add_case(sim: &RunningSimulator, widget: &str, created: DateTime<Utc>) -> String {
    let mut case = sim.sim.make_case(widget);
    case["created_at_date"] = created.timestamp_millis().into();
    sim.sim
        .add_case(widget, case, Some(created), None)
        .expect("a made case has an id")
}

fn env(
    cases: &Cases,
    bootstrap: &str,
    prefix: &str,
    dir: &Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let since = (Utc::now() - chrono::Duration::hours(60))
        .date_naive()
        .to_string();
    let mut all = vec![
        ("CASESTREAM_POLL_INTERVAL", "1s"),
        ("CASESTREAM_SETTLE", "2s"),
        ("CASESTREAM_RATE_LIMIT", "20"),
        ("CASESTREAM_SINCE", since.as_str()),
    ];
    all.extend_from_slice(extra);
    process_env(&cases.sim, bootstrap, prefix, dir, &all)
}

/// The day the tests reset `w1` from (that of its case created 26 h ago), and the cases the
/// reset forgets.
fn reset_of_w1(cases: &Cases) -> (NaiveDate, BTreeSet<String>) {
    let since =
        (Utc::now() - chrono::Duration::hours(26) - chrono::Duration::minutes(2)).date_naive();
    let reset = cases
        .days
        .iter()
        .filter(|(_, (w, day))| w == "w1" && *day >= since)
        .map(|(id, _)| id.clone())
        .collect();
    (since, reset)
}

/// `casestream state <args>` with `env`: (success, stdout, stderr).
fn state(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_casestream"))
        .arg("state")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn state_ok(args: &[&str], env: &[(String, String)]) -> String {
    let (ok, out, err) = state(args, env);
    assert!(ok, "casestream state {args:?} failed:\n{out}\n{err}");
    out
}

fn summary(env: &[(String, String)]) -> Value {
    serde_json::from_str(&state_ok(&["summary", "--json"], env)).unwrap()
}

/// Event id per case id (the subject) in `topic`, and how many records it holds.
async fn ids(bootstrap: &str, topic: &str) -> (BTreeMap<String, String>, usize) {
    let by_case = event_ids_by_case(bootstrap, topic, IDLE).await;
    let n = by_case.values().map(|(_, n)| n).sum();
    let ids = by_case
        .into_iter()
        .filter_map(|(case, (ids, _))| Some((case, ids.into_iter().next()?)))
        .collect();
    (ids, n)
}

/// Waits (at most 90 s) until `topic` holds `records` records.
async fn until_records(bootstrap: &str, topic: &str, records: usize) {
    eventually(
        Duration::from_secs(90),
        &format!("{records} records in {topic}"),
        async || {
            read_topic_async(bootstrap, topic, Duration::from_millis(300))
                .await
                .len()
                >= records
        },
    )
    .await;
}

/// Runs the forwarder until `topic` holds `records` records, then stops it with SIGTERM.
async fn run_until(
    env: &[(String, String)],
    log: &Path,
    bootstrap: &str,
    topic: &str,
    records: usize,
) {
    let forwarder = spawn_forwarder(env, log);
    until_records(bootstrap, topic, records).await;
    // One more cycle: whatever else it would publish, it publishes now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_with_sigterm(forwarder, log).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn summary_case_export_and_import_of_a_real_state() {
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_prefix("toolkit-transfer");
    let cases = simulator_with_cases().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    let first = dir.path().join("first");
    let env1 = env(&cases, &bootstrap, &prefix, &first, &[]);
    let cases_topic = format!("{prefix}.cases");
    let surveys_topic = format!("{prefix}.surveys");
    run_until(&env1, &log, &bootstrap, &cases_topic, 6).await;
    let (created_ids, _) = ids(&bootstrap, &cases_topic).await;
    let (survey_ids, _) = ids(&bootstrap, &surveys_topic).await;
    assert_eq!(created_ids.len(), 6, "every case announced");
    assert_eq!(survey_ids.len(), 2, "both surveys announced");

    // summary
    let s = summary(&env1);
    assert_eq!(s["known_cases"], 6, "{s:#}");
    assert!(s["pending_surveys"].as_u64().unwrap() <= 6, "{s:#}");
    assert!(s["running"].is_null(), "{s:#}");
    assert!(s["size_bytes"].as_u64().unwrap() > 0);
    let widgets: Vec<&str> = s["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["widget"].as_str().unwrap())
        .collect();
    assert_eq!(widgets, ["w1", "w2"]);
    for w in s["widgets"].as_array().unwrap() {
        assert_eq!(w["known_cases"], 3, "{w:#}");
        assert!(!w["progress"]["last_fresh_poll"].is_null(), "{w:#}");
        let through: NaiveDate = w["progress"]["caught_up_through"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            through >= (Utc::now() - chrono::Duration::hours(50)).date_naive(),
            "{w:#}"
        );
    }
    let text = state_ok(&["summary"], &env1);
    assert!(
        text.contains("not running") && text.contains("w1") && text.contains("w2"),
        "{text}"
    );

    // case: what the state knows matches what Kafka got
    let (surveyed, (widget, day)) = cases
        .days
        .iter()
        .find(|(id, _)| survey_ids.contains_key(*id))
        .unwrap();
    let org = cases.sim.sim.config().org.clone();
    let report: Value = serde_json::from_str(&state_ok(
        &["case", surveyed, "--json", "--org-id", &org],
        &env1,
    ))
    .unwrap();
    assert_eq!(report["case"]["widget"], widget.as_str(), "{report:#}");
    assert_eq!(report["case"]["day"], day.to_string());
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{report:#}");
    assert_eq!(events[0]["type"], "com.snapengage.case.created");
    assert_eq!(
        events[0]["id"],
        created_ids[surveyed].as_str(),
        "the created event id Kafka got"
    );
    assert_eq!(events[1]["type"], "com.snapengage.case.survey");
    assert_eq!(
        events[1]["id"],
        survey_ids[surveyed].as_str(),
        "the survey event id Kafka got"
    );
    assert!(events[1]["survey_digest"].is_string());
    assert!(
        events[1]["when"].is_string(),
        "when the survey was published: {report:#}"
    );
    let text = state_ok(&["case", surveyed], &env1);
    assert!(
        text.contains(widget.as_str()) && text.contains("com.snapengage.case.survey"),
        "{text}"
    );
    let (ok, _, err) = state(&["case", "no-such-case"], &env1);
    assert!(
        !ok && err.contains("does not know case no-such-case"),
        "{err}"
    );

    // export, import into an empty directory: the same state
    let file = dir.path().join("state.jsonl");
    state_ok(&["export", "--output", file.to_str().unwrap()], &env1);
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(
        lines,
        1 + 2 + 6 + 1,
        "a header, 2 widgets, 6 cases and a trailer"
    );
    let second = dir.path().join("second");
    let env2 = env(&cases, &bootstrap, &prefix, &second, &[]);
    state_ok(&["import", file.to_str().unwrap()], &env2);
    let (s1, s2) = (summary(&env1), summary(&env2));
    assert_eq!(
        s1["widgets"], s2["widgets"],
        "the imported state is the exported one"
    );
    assert_eq!(s1["known_cases"], s2["known_cases"]);
    let (ok, _, err) = state(&["import", file.to_str().unwrap()], &env2);
    assert!(!ok && err.contains("already holds a state"), "{err}");
    let (ok, _, err) = state(
        &["import", log.to_str().unwrap()],
        &env(&cases, &bootstrap, &prefix, &dir.path().join("third"), &[]),
    );
    assert!(
        !ok && err.contains("line 1"),
        "a file that is not an export is named: {err}"
    );

    // A run on the imported state announces nothing it announced before: only a new case.
    let fresh = add_case(&cases.sim, "w2", Utc::now() - chrono::Duration::seconds(5));
    run_until(&env2, &log, &bootstrap, &cases_topic, 7).await;
    let mut expected = announced_once(created_ids.keys());
    expected.insert(fresh, 1);
    assert_eq!(
        repeats(&bootstrap, &cases_topic).await,
        expected,
        "only the case new since the export"
    );
    assert_eq!(
        repeats(&bootstrap, &surveys_topic).await,
        announced_once(survey_ids.keys()),
        "no survey again"
    );
}

/// Records per case in `topic`, after checking that every record of a case has one event id.
async fn repeats(bootstrap: &str, topic: &str) -> BTreeMap<String, usize> {
    let by_case = event_ids_by_case(bootstrap, topic, IDLE).await;
    for (case, (ids, _)) in &by_case {
        assert_eq!(
            ids.len(),
            1,
            "case {case}: one event id in {topic}, got {ids:?}"
        );
    }
    by_case
        .into_iter()
        .map(|(case, (_, n))| (case, n))
        .collect()
}

fn announced_once<'a>(cases: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    cases.map(|c| (c.clone(), 1)).collect()
}

/// Each case once, and the `reset` ones twice.
fn twice(once: BTreeMap<String, usize>, reset: &BTreeSet<String>) -> BTreeMap<String, usize> {
    once.into_iter()
        .map(|(case, n)| {
            let n = if reset.contains(&case) { n + 1 } else { n };
            (case, n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_reannounces_exactly_the_reset_days_with_the_same_ids() {
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_prefix("toolkit-reset");
    let cases = simulator_with_cases().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    let env = env(&cases, &bootstrap, &prefix, &dir.path().join("state"), &[]);
    let cases_topic = format!("{prefix}.cases");
    let surveys_topic = format!("{prefix}.surveys");
    run_until(&env, &log, &bootstrap, &cases_topic, 6).await;
    let (created_ids, n) = ids(&bootstrap, &cases_topic).await;
    let (survey_ids, _) = ids(&bootstrap, &surveys_topic).await;
    assert_eq!((created_ids.len(), n, survey_ids.len()), (6, 6, 2));

    let (since, reset) = reset_of_w1(&cases);
    assert_eq!(reset.len(), 2);
    let since = since.to_string();
    let args = ["reset", "--widget", "w1", "--since", since.as_str()];

    // Not on a terminal, and no --yes: nothing changes.
    let (ok, out, err) = state(&args, &env);
    assert!(!ok && err.contains("--yes"), "{out}{err}");
    assert_eq!(summary(&env)["known_cases"], 6);
    // While the forwarder runs (at-least-once): refused, and said why.
    let running = spawn_forwarder(&env, &log);
    eventually(
        Duration::from_secs(30),
        "the forwarder holds the lock",
        async || !summary(&env)["running"].is_null(),
    )
    .await;
    let (ok, _, err) = state(&[&args[..], &["--yes"]].concat(), &env);
    assert!(
        !ok && err.contains("stop it before changing its state"),
        "{err}"
    );
    stop_with_sigterm(running, &log).await;
    assert_eq!(summary(&env)["known_cases"], 6);

    let out = state_ok(&[&args[..], &["--yes"]].concat(), &env);
    assert!(out.contains("forgot 2 case(s)"), "{out}");
    let s = summary(&env);
    assert_eq!(s["known_cases"], 4, "{s:#}");

    run_until(&env, &log, &bootstrap, &cases_topic, 8).await;
    assert_eq!(
        repeats(&bootstrap, &cases_topic).await,
        twice(announced_once(created_ids.keys()), &reset),
        "exactly the reset cases again, with the same event ids"
    );
    assert_eq!(
        repeats(&bootstrap, &surveys_topic).await,
        twice(announced_once(survey_ids.keys()), &reset),
        "the reset case's survey again, with its id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_reset_goes_through_the_changelog_and_the_fenced_instance_takes_it_up() {
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_prefix("toolkit-eo");
    let cases = simulator_with_cases().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("forwarder.log");
    let state_topic = format!("{prefix}.state");
    let env = env(
        &cases,
        &bootstrap,
        &prefix,
        &dir.path().join("state"),
        &[
            ("CASESTREAM_DELIVERY", "exactly-once"),
            ("CASESTREAM_TOPIC_STATE", &state_topic),
            ("CASESTREAM_GROUP", &prefix),
            ("CASESTREAM_FAILOVER_TIMEOUT", "6s"),
        ],
    );
    let cases_topic = format!("{prefix}.cases");
    let mut running = spawn_forwarder(&env, &log);
    until_records(&bootstrap, &cases_topic, 6).await;
    let (created_ids, n) = ids(&bootstrap, &cases_topic).await;
    assert_eq!((created_ids.len(), n), (6, 6));

    let (since, reset) = reset_of_w1(&cases);
    // The forwarder runs and holds the lock: in exactly-once delivery the reset goes to the
    // changelog, fencing the running instance. Its throwaway store goes in the state
    // directory: with TMPDIR unusable (a file), a store in the system's temporary directory
    // could not be made.
    let since = since.to_string();
    let out = state_ok(
        &[
            "reset",
            "--widget",
            "w1",
            "--since",
            since.as_str(),
            "--yes",
        ],
        &with(&env, &[("TMPDIR", &unusable_tmpdir(dir.path()))]),
    );
    assert!(out.contains("forgot 2 case(s)"), "{out}");
    assert_no_scratch_left(&dir.path().join("state"));
    // The running instance is fenced: with no other instance in its group it steps back,
    // takes the role again, reads the changelog to its end (the reset with it) and announces
    // the reset cases again. It never exits.
    until_records(&bootstrap, &cases_topic, n + 2).await;
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "the fenced instance steps back and goes on, it does not exit"
    );
    drop(running);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("fenced"),
        "the instance says it was fenced:\n{text}"
    );

    // The widget's rewind is in the changelog before the cases it forgets: a reader that
    // stops part-way through the change reads days again, never skips them.
    let changelog = read_topic_async(&bootstrap, &state_topic, IDLE).await;
    let forgotten: Vec<usize> = changelog
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.payload.is_empty()
                && r.key
                    .as_deref()
                    .and_then(|k| k.strip_prefix("case/"))
                    .is_some_and(|id| reset.contains(id))
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        forgotten.len(),
        reset.len(),
        "every reset case is forgotten"
    );
    let first_forgotten = *forgotten.iter().min().expect("tombstones");
    let rewind = changelog[..first_forgotten]
        .iter()
        .rposition(|r| r.key.as_deref() == Some("widget/w1"))
        .expect("w1's progress is in the changelog before the tombstones");
    let through = changelog[rewind].json()["caught_up_through"].clone();
    assert!(
        through.is_null() || through.as_str().unwrap() < since.as_str(),
        "the last progress of w1 before the tombstones is the rewind: {through}"
    );
    assert_eq!(
        repeats(&bootstrap, &cases_topic).await,
        twice(announced_once(created_ids.keys()), &reset),
        "exactly the reset cases again, with the same event ids"
    );
}

/// Records in the big state [`big_state`] writes: more than one of the 10,000-change batches
/// an import streams in.
const BIG: usize = 12_000;

/// A state of [`BIG`] cases on two widgets, written by the state store itself.
fn big_state(dir: &Path) {
    use casestream::state::{CaseRecord, SqliteStore, StateStore, StoredCase, WidgetProgress};
    let store = SqliteStore::open(dir).unwrap();
    let at = Utc::now();
    let day = at.date_naive();
    for widget in ["w1", "w2"] {
        store
            .set_widget(
                widget,
                &WidgetProgress {
                    since: day - chrono::Days::new(3),
                    caught_up_through: Some(day - chrono::Days::new(1)),
                    last_fresh_poll: Some(at),
                    unread: Vec::new(),
                },
            )
            .unwrap();
    }
    let cases: Vec<StoredCase> = (0..BIG)
        .map(|i| StoredCase {
            id: format!("case-{i:05}"),
            widget: if i % 2 == 0 { "w1" } else { "w2" }.into(),
            day: day - chrono::Days::new((i % 3) as u64),
            created: at,
            record: CaseRecord {
                first_seen: at,
                chat_end: at,
                created_emitted: true,
                survey_digest: None,
                next_check: Some(at + chrono::Duration::hours(1)),
                survey_emitted: None,
            },
        })
        .collect();
    store.commit_cases(&cases).unwrap();
}

/// `file`'s lines with line `n` (counted from 1) replaced by `line`.
fn with_line(text: &str, n: usize, line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[n - 1] = line;
    lines.join("\n") + "\n"
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// What `state export` writes of the state `env` points at.
fn exported(env: &[(String, String)]) -> String {
    state_ok(&["export"], env)
}

/// A state in short: its export's trailer (the record count and their SHA-256) and the cases
/// its summary counts.
fn fingerprint(env: &[(String, String)]) -> (String, Value) {
    let export = exported(env);
    let trailer = export.lines().last().unwrap_or_default().to_owned();
    (trailer, summary(env)["known_cases"].clone())
}

#[test]
fn an_import_is_all_or_nothing_and_refuses_a_file_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| {
        vec![(
            "CASESTREAM_STATE_DIR".to_owned(),
            dir.path().join(name).display().to_string(),
        )]
    };
    let source = at("source");
    big_state(&dir.path().join("source"));
    let whole = exported(&source);
    assert_eq!(
        whole.lines().count(),
        1 + 2 + BIG + 1,
        "header, widgets, cases, trailer"
    );
    let good = write(dir.path(), "whole.jsonl", &whole);

    // The target: an empty state (imported from an empty state's export).
    let target = at("target");
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    casestream::state::SqliteStore::open(&dir.path().join("empty")).unwrap();
    let empty = write(dir.path(), "empty.jsonl", &exported(&at("empty")));
    state_ok(&["import", &empty], &target);
    let before = fingerprint(&target);
    assert_eq!(before.1, 0);
    assert!(before.0.contains("\"records\":0"), "{}", before.0);

    let refused = |file: &str, problem: &str| {
        let (ok, out, err) = state(&["import", file], &target);
        assert!(!ok, "an import of {file} is refused: {out}{err}");
        assert!(
            err.contains(problem) && err.contains("nothing was imported"),
            "the error names the problem ({problem}): {err}"
        );
        assert_eq!(
            fingerprint(&target),
            before,
            "a refused import leaves the target exactly as it was"
        );
    };
    // A bad line after the first 10,000 records: the first batch would have been committed.
    let bad_line = 2 + 10_500;
    let bad = write(
        dir.path(),
        "bad.jsonl",
        &with_line(&whole, bad_line, "{\"key\":\"case/x\",\"value\":"),
    );
    refused(&bad, &format!("line {bad_line}:"));
    // Cut short in the middle of a line, and at a line's end (no trailer).
    let cut = whole[..whole.len() * 2 / 3].trim_end_matches('\n');
    refused(
        &write(dir.path(), "cut.jsonl", cut),
        "cut short (truncated)",
    );
    let lines: Vec<&str> = whole.lines().collect();
    let no_trailer = lines[..lines.len() - 1].join("\n") + "\n";
    refused(
        &write(dir.path(), "no-trailer.jsonl", &no_trailer),
        "without its trailer after 12002 record(s)",
    );
    // A record changed in a way that still parses: only the checksum tells.
    let changed = whole.replacen("\"created_emitted\":true", "\"created_emitted\":false", 1);
    refused(&write(dir.path(), "changed.jsonl", &changed), "SHA-256");
    // An export of format version 1 has no trailer: refused unless asked for.
    let v1 = with_line(
        &no_trailer,
        1,
        &lines[0].replace("\"version\":2", "\"version\":1"),
    );
    let v1 = write(dir.path(), "v1.jsonl", &v1);
    refused(&v1, "--no-trailer");

    // The whole file then imports, into the target the refusals left empty: the same state.
    let out = state_ok(&["import", &good], &target);
    assert!(out.contains(&format!("cases: {BIG}")), "{out}");
    // Compared whole, shown short: the files are megabytes.
    assert!(
        exported(&target) == whole,
        "the round trip gives the same export"
    );
    let other = at("from-v1");
    state_ok(&["import", &v1, "--no-trailer"], &other);
    assert!(
        exported(&other) == whole,
        "a version 1 file, when asked for"
    );
}

/// A TMPDIR nothing can be made in: a file.
fn unusable_tmpdir(dir: &Path) -> String {
    let file = dir.join("not-a-directory");
    std::fs::write(&file, "TMPDIR points here: nothing can be made in it").unwrap();
    file.display().to_string()
}

/// The exactly-once changes' throwaway stores were made in `state_dir` and removed after.
fn assert_no_scratch_left(state_dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".toolkit-"))
        .collect();
    assert!(left.is_empty(), "throwaway stores left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exactly_once_import_commits_all_or_nothing_beside_the_state_directory() {
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_prefix("toolkit-eo-import");
    let cases = simulator_with_cases().await;
    let dir = tempfile::tempdir().unwrap();
    let source = vec![(
        "CASESTREAM_STATE_DIR".to_owned(),
        dir.path().join("source").display().to_string(),
    )];
    big_state(&dir.path().join("source"));
    let whole = exported(&source);
    let state_topic = format!("{prefix}.state");
    let state_dir = dir.path().join("state");
    let tmpdir = unusable_tmpdir(dir.path());
    let env = env(
        &cases,
        &bootstrap,
        &prefix,
        &state_dir,
        &[
            ("CASESTREAM_DELIVERY", "exactly-once"),
            ("CASESTREAM_TOPIC_STATE", &state_topic),
            ("CASESTREAM_GROUP", &prefix),
            ("TMPDIR", &tmpdir),
        ],
    );

    // A bad line after the first 10,000 records: nothing reaches the changelog.
    let bad_line = 2 + 10_500;
    let bad = write(
        dir.path(),
        "bad.jsonl",
        &with_line(&whole, bad_line, "{\"key\":\"case/x\",\"value\":"),
    );
    let (ok, out, err) = state(&["import", &bad], &env);
    assert!(
        !ok && err.contains(&format!("line {bad_line}:")) && err.contains("nothing was imported"),
        "{out}{err}"
    );
    assert_no_scratch_left(&state_dir);
    let committed = read_topic_async(&bootstrap, &state_topic, IDLE).await;
    assert!(
        committed.is_empty(),
        "the refused import committed {} record(s) to the changelog",
        committed.len()
    );

    // The whole file then imports into the changelog the refusal left empty.
    let good = write(dir.path(), "whole.jsonl", &whole);
    let out = state_ok(&["import", &good], &env);
    assert!(out.contains(&format!("cases: {BIG}")), "{out}");
    assert_no_scratch_left(&state_dir);
    let committed = read_topic_async(&bootstrap, &state_topic, IDLE).await;
    assert_eq!(committed.len(), 2 + BIG, "every record, once");
    let keys: BTreeSet<&str> = committed.iter().filter_map(|r| r.key.as_deref()).collect();
    assert_eq!(keys.len(), 2 + BIG);
    assert!(keys.contains("widget/w1") && keys.contains("case/case-11999"));
}
