//! Single bad inputs never stop the flow: an oversized case, cases without an id, a looping
//! cursor, an oversized body. Each is caused for real against the simulator and a real broker.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use casestream::clock::Clock;
use casestream::simulator::{Faults, SimConfig};
use casestream::sink::dead_letter::sha256_hex;
use casestream::snapengage::Case;
use casestream::state::{SqliteStore, StateStore};
use common::*;

/// The admin endpoints of an in-process forwarder.
async fn admin(health: &casestream::admin::Health, path: &str) -> (u16, String) {
    let addr = health.admin_addr().expect("admin endpoints listen");
    admin_get(addr, path)
        .await
        .expect("the admin endpoints answer")
}

/// A 1.5 MB case followed by a normal case on the same page, against a real broker: the normal
/// case is published within 3 poll intervals, the oversized one reaches the dead-letter topic
/// exactly once over many polls, no other case of the page is published twice, and a case
/// without an id is dead-lettered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_case_is_dead_lettered_once_and_nothing_stalls() {
    let bootstrap = kafka_bootstrap().await;
    // Real time: the poll interval below is what the promise is measured in.
    let clock = Clock::system();
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    for i in 0..5 {
        let mut case = sim.sim.make_case("w1");
        case["description"] = json!(format!("ordinary case {i}"));
        sim.sim.add_case("w1", case, None, None);
    }
    let no_id = json!({"type": "chat", "description": "no id at all"});
    sim.sim.add_case("w2", no_id.clone(), None, None);
    let prefix = unique_prefix("poison");
    let dir = tempfile::tempdir().unwrap();
    let poll = Duration::from_secs(2);
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = Duration::from_secs(2)
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let health = forwarder.health.clone();
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "a first complete cycle")
        .await;

    // The oversized case, then a normal one: both on today's only page of w1.
    let mut huge = sim.sim.make_case("w1");
    huge["transcripts"] = json!([{"id": "t1", "message": "x".repeat(1_500_000)}]);
    let huge_id = sim.sim.add_case("w1", huge.clone(), None, None).unwrap();
    let normal_id = sim
        .sim
        .add_case("w1", sim.sim.make_case("w1"), None, None)
        .unwrap();
    let added = Instant::now();
    let cases_topic = format!("{prefix}.cases");
    let mut published_after = None;
    while added.elapsed() < Duration::from_secs(60) {
        let records = read_topic_async(&bootstrap, &cases_topic, Duration::from_millis(300)).await;
        if records.iter().any(|r| r.key.as_deref() == Some(&normal_id)) {
            published_after = Some(added.elapsed());
            break;
        }
    }
    let published_after =
        published_after.expect("the normal case after the oversized one is published");
    assert!(
        published_after <= poll * 3,
        "the normal case took {published_after:?}, more than 3 poll intervals of {poll:?}"
    );

    // At least 5 more polls of both widgets.
    let requests = sim.sim.stats().requests;
    eventually(Duration::from_secs(60), "5 more polls", async || {
        sim.sim.stats().requests >= requests + 10
    })
    .await;
    let (ready, body) = admin(&health, "/readyz").await;
    assert_eq!(ready, 200, "{body}");
    // The bad case changes (other bytes): it is a new input, dead-lettered again, once.
    let edited = json!({"type": "chat", "description": "no id at all, edited"});
    sim.sim.add_case("w2", edited.clone(), None, None);
    let requests = sim.sim.stats().requests;
    eventually(
        Duration::from_secs(60),
        "5 polls after the edit",
        async || sim.sim.stats().requests >= requests + 10,
    )
    .await;
    forwarder.stop().await;

    let dead = read_topic_async(
        &bootstrap,
        &format!("{prefix}.dead"),
        Duration::from_secs(2),
    )
    .await;
    let huge_letters: Vec<_> = dead
        .iter()
        .filter(|r| r.headers.get("casestream_case_id") == Some(&huge_id))
        .collect();
    assert_eq!(
        huge_letters.len(),
        1,
        "the oversized case is dead-lettered exactly once"
    );
    let letter = huge_letters[0];
    assert_eq!(letter.key.as_deref(), Some(huge_id.as_str()));
    assert_eq!(letter.headers["casestream_reason_code"], "record_too_large");
    assert_eq!(
        letter.headers["casestream_event_type"],
        "com.snapengage.case.created"
    );
    assert_eq!(letter.headers["casestream_widget_id"], "w1");
    assert_eq!(letter.headers["casestream_body"], "truncated");
    let raw = serde_json::to_vec(&huge).unwrap();
    assert_eq!(letter.headers["casestream_sha256"], sha256_hex(&raw));
    assert!(
        letter.headers["casestream_record_size"]
            .parse::<usize>()
            .unwrap()
            > 1_500_000
    );
    assert!(
        raw.starts_with(&letter.payload),
        "the body is the case's first bytes"
    );
    assert!(letter.payload.len() < 100_000);

    let no_id_letters: Vec<_> = dead
        .iter()
        .filter(|r| serde_json::from_slice::<Value>(&r.payload).ok().as_ref() == Some(&no_id))
        .collect();
    assert_eq!(
        no_id_letters.len(),
        1,
        "a case without an id is dead-lettered once"
    );
    assert_eq!(
        no_id_letters[0].headers["casestream_reason_code"],
        "missing_id"
    );
    assert_eq!(no_id_letters[0].headers["casestream_body"], "raw");
    let edited_letters = dead
        .iter()
        .filter(|r| serde_json::from_slice::<Value>(&r.payload).ok().as_ref() == Some(&edited))
        .count();
    assert_eq!(
        edited_letters, 1,
        "the changed bad case is dead-lettered once more"
    );
    assert_eq!(dead.len(), 3, "nothing else was dead-lettered");

    let copies = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(2)).await;
    assert!(
        !copies.contains_key(&huge_id),
        "the oversized event never reached its topic"
    );
    let visible: Vec<String> = sim
        .sim
        .visible_cases("w1")
        .into_iter()
        .filter_map(|v| Case::from_value(v).ok())
        .map(|c| c.id().to_owned())
        .filter(|id| *id != huge_id)
        .collect();
    assert_eq!(visible.len(), 6);
    for id in &visible {
        assert_eq!(
            copies.get(id),
            Some(&1),
            "case {id} published exactly once: {copies:?}"
        );
    }
    sim.stop().await.unwrap();
}

/// A cursor that loops and a body over the cap each fail their widget's window with a clear
/// error and a metric; the other widget's cases all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_cursor_and_an_oversized_body_fail_only_their_widget() {
    let bootstrap = kafka_bootstrap().await;
    let clock = Clock::scaled("2026-03-10T08:00:00Z".parse().unwrap(), 60.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into(), "w3".into()],
            cases_per_hour: 60.0,
            history: Duration::from_secs(3600),
            page_size: 5,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    sim.sim.set_faults(Faults {
        loop_links: vec!["w1".into()],
        ..Faults::default()
    });
    let mut huge = sim.sim.make_case("w2");
    huge["transcripts"] = json!([{"id": "t1", "message": "y".repeat(1_500_000)}]);
    let huge_id = sim.sim.add_case("w2", huge, None, None).unwrap();
    let prefix = unique_prefix("guards");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.api.max_body = 1024 * 1024
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let health = forwarder.health.clone();
    eventually(
        Duration::from_secs(60),
        "both window errors counted",
        async || {
            if health.admin_addr().is_none() {
                return false;
            }
            let metrics = admin(&health, "/metrics").await.1;
            metrics.contains(r#"casestream_window_errors_total{widget="w1",kind="link_loop"}"#)
                && metrics.contains(
                    r#"casestream_window_errors_total{widget="w2",kind="body_too_large"}"#,
                )
        },
    )
    .await;
    // Several cycles: the loop is caught every time, never followed forever.
    tokio::time::sleep(Duration::from_secs(3)).await;
    forwarder.stop().await;
    let end = clock.now();

    let created = count_by_key(
        &bootstrap,
        &format!("{prefix}.cases"),
        Duration::from_secs(2),
    )
    .await;
    let w3: Vec<String> = sim
        .sim
        .visible_cases("w3")
        .into_iter()
        .map(|v| Case::from_value(v).unwrap())
        .filter(|c| c.chat_end().unwrap() < end - chrono::Duration::minutes(2))
        .map(|c| c.id().to_owned())
        .collect();
    assert!(w3.len() > 40, "{} w3 cases", w3.len());
    let missing: Vec<&String> = w3.iter().filter(|id| !created.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} w3 cases missing",
        missing.len(),
        w3.len()
    );
    for id in &w3 {
        assert_eq!(
            created.get(id),
            Some(&1),
            "w3 case {id} arrives exactly once"
        );
    }
    // w2's pages before the oversized one went through; that one never did.
    assert!(
        !created.contains_key(&huge_id),
        "the page over the cap was never taken"
    );
    sim.stop().await.unwrap();
}

/// Events Kafka refuses at the topic level (here: authorisation, injected with librdkafka's
/// mock cluster, which a plain broker cannot do) stop the pipeline with an error naming the
/// topic, `/readyz` answers 503 naming it, and nothing is committed past the refused page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_refuses_everything_stops_the_pipeline_and_says_so() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let clock = Clock::scaled("2026-03-10T08:00:00Z".parse().unwrap(), 60.0);
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into()],
            cases_per_hour: 60.0,
            history: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    let prefix = unique_prefix("refused");
    let cluster = mock_cluster(&prefix);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(
        &sim,
        &cluster.bootstrap_servers(),
        &prefix,
        dir.path(),
        |_| {},
    );
    let forwarder = RunningForwarder::start(config, clock.clone());
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while !forwarder.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(outcome.is_ok(), "the pipeline stops by itself");
    let (status, body) = admin(&forwarder.health, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("refuses every record") && body.contains(&format!("{prefix}.cases")),
        "{body}"
    );
    let error = forwarder.task.await.unwrap().unwrap_err().to_string();
    assert!(error.contains(&format!("topic {prefix}.cases")), "{error}");
    assert!(error.contains("uthoriz"), "{error}");
    forwarder.stop.cancel();
    // Nothing was acknowledged, so nothing was committed: every case is read again later.
    let store = casestream::state::SqliteStore::open(dir.path()).unwrap();
    use casestream::state::StateStore;
    assert_eq!(store.stats().unwrap().known_cases, 0);
    sim.stop().await.unwrap();
}

/// A fatal error on the idempotent producer (injected as librdkafka's tests do, on the mock
/// cluster) with several pages in flight: exactly one replacement producer, and the records
/// of the dead producer are sent again with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_makes_exactly_one_replacement() {
    use casestream::events::{CloudEvent, EventKind};
    use casestream::sink::{KafkaSink, Outgoing};
    let prefix = unique_prefix("fatal");
    let cluster = mock_cluster(&prefix);
    let sim = start_simulator(SimConfig::default(), Clock::system()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(
        &sim,
        &cluster.bootstrap_servers(),
        &prefix,
        dir.path(),
        |_| {},
    );
    let sink = KafkaSink::new(&config.kafka).unwrap();
    let page = |n: usize| -> Vec<Outgoing> {
        (0..10)
            .map(|i| {
                let case = Case::from_value(json!({"id": format!("p{n}-c{i}")})).unwrap();
                Outgoing::Event(CloudEvent::for_case(
                    "org",
                    "w1",
                    &case,
                    &EventKind::Created,
                    chrono::Utc::now(),
                ))
            })
            .collect()
    };
    let pages: Vec<Vec<Outgoing>> = (0..4).map(page).collect();
    // Four pages queued (the broker is down), then the producer dies under them.
    cluster.broker_down(1).unwrap();
    let mut pending = Vec::new();
    for records in &pages {
        pending.push(sink.start_publish(records).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.inject_fatal_error_for_tests("injected by the test");
    cluster.broker_up(1).unwrap();
    let mut failed_pages = Vec::new();
    for (records, delivery) in pages.iter().zip(pending) {
        let results = delivery.wait(&sink).await;
        if results.iter().any(|r| r.result.is_err()) {
            failed_pages.push(records);
        }
    }
    assert!(
        !failed_pages.is_empty(),
        "the fatal error failed records in flight"
    );
    assert_eq!(
        sink.producer_replacements(),
        1,
        "one replacement, not one per page"
    );
    for records in &failed_pages {
        sink.publish(records)
            .await
            .expect("the replacement producer takes the records");
    }
    assert_eq!(sink.producer_replacements(), 1);
    let topic = format!("{prefix}.cases");
    let read: Vec<Value> =
        read_topic_async(&cluster.bootstrap_servers(), &topic, Duration::from_secs(2))
            .await
            .iter()
            .map(|r| r.json())
            .collect();
    for records in &pages {
        for record in records.iter() {
            let Outgoing::Event(event) = record else {
                unreachable!()
            };
            assert!(
                read.iter().any(|e| e["id"] == event.id.to_string()),
                "event {} of case {} arrived with its id",
                event.id,
                event.subject
            );
        }
    }
    sim.stop().await.unwrap();
}

/// A topic whose size limit is below the producer's: the broker refuses the whole batch that
/// holds the large record. Only the large record is dead-lettered; every other case of its
/// batch is published, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_one_large_record_loses_none_of_the_others() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_prefix("batch");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let cases_topic = format!("{prefix}.cases");
    let topic = NewTopic::new(&cases_topic, 1, TopicReplication::Fixed(1))
        .set("max.message.bytes", "200000");
    for result in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let clock = Clock::system();
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut case = sim.sim.make_case("w1");
        if i == 10 {
            // Random text, so compression cannot bring it under the topic's limit.
            let text: String = (0..15_000)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect();
            case["transcripts"] = json!([{"id": "t1", "message": text}]);
        }
        ids.push(sim.sim.add_case("w1", case, None, None).unwrap());
    }
    let large = ids.remove(10);
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = Duration::from_secs(2)
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "the page settled")
        .await;
    let requests = sim.sim.stats().requests;
    eventually(Duration::from_secs(60), "3 more polls", async || {
        sim.sim.stats().requests >= requests + 3
    })
    .await;
    forwarder.stop().await;
    let copies = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(2)).await;
    for id in &ids {
        assert_eq!(
            copies.get(id),
            Some(&1),
            "case {id} of the refused batch published once"
        );
    }
    assert!(!copies.contains_key(&large));
    let dead = read_topic_async(
        &bootstrap,
        &format!("{prefix}.dead"),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(dead.len(), 1, "only the large record is dead-lettered");
    assert_eq!(dead[0].key.as_deref(), Some(large.as_str()));
    assert_eq!(
        dead[0].headers["casestream_reason_code"],
        "record_too_large"
    );
    assert_eq!(dead[0].headers["casestream_body"], "raw");
    sim.stop().await.unwrap();
}

/// Widgets `w1` and `w2`, no cases of their own, 5 cases a page: a few cases make several
/// pages.
async fn quiet_widgets_of_small_pages(
    clock: &Clock,
) -> casestream::simulator::http::RunningSimulator {
    start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            page_size: 5,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await
}

/// The one dead letter naming an unread span, which must be `w1`'s: its body and its span.
async fn the_one_unread_span_of_w1(
    bootstrap: &str,
    prefix: &str,
) -> (
    Value,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
) {
    let dead = read_topic_async(bootstrap, &format!("{prefix}.dead"), Duration::from_secs(2)).await;
    let letters: Vec<(String, Value)> = dead
        .iter()
        .filter(|r| {
            r.headers.get("casestream_reason_code").map(String::as_str) == Some("unread_span")
        })
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.payload).expect("a span as JSON");
            (r.headers["casestream_widget_id"].clone(), body)
        })
        .collect();
    assert_eq!(
        letters.len(),
        1,
        "one dead letter names the span: {letters:?}"
    );
    let (widget, span) = letters.into_iter().next().expect("one letter");
    assert_eq!(widget, "w1");
    let (start, end) = (time_of(&span["start"]), time_of(&span["end"]));
    (span, start, end)
}

fn time_of(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{value} is no time"))
}

/// A page the client cannot read (`CASESTREAM_MAX_BODY` 1 MiB, a 1.5 MB case, 5 cases a
/// page) in `datetimes` mode: the 7 cases after it on the same widget are announced within 10
/// poll intervals, the other widget's case within 5, and one dead letter names the unread
/// second, which a metric counts; it is not dead-lettered again on later polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_too_large_to_read_costs_one_second_and_one_dead_letter() {
    let bootstrap = kafka_bootstrap().await;
    // Real speed from a fixed time, far from midnight.
    let clock = Clock::scaled("2026-03-10T10:00:00Z".parse().unwrap(), 1.0);
    let sim = quiet_widgets_of_small_pages(&clock).await;
    let prefix = unique_prefix("unreadable-datetimes");
    let dir = tempfile::tempdir().unwrap();
    let poll = Duration::from_secs(2);
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = poll;
        c.api.window_mode = casestream::snapengage::WindowMode::Datetimes;
        c.api.max_body = 1 << 20;
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let health = forwarder.health.clone();
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "a first complete cycle")
        .await;

    let mut huge = sim.sim.make_case("w1");
    huge["transcripts"] = json!([{"id": "t1", "message": "x".repeat(1_500_000)}]);
    let huge_id = sim.sim.add_case("w1", huge, None, None).unwrap();
    let huge_created = clock.now();
    // The next cases in later seconds: the API addresses a second at best.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after: Vec<String> = (0..7)
        .map(|_| {
            sim.sim
                .add_case("w1", sim.sim.make_case("w1"), None, None)
                .unwrap()
        })
        .collect();
    let other = sim
        .sim
        .add_case("w2", sim.sim.make_case("w2"), None, None)
        .unwrap();
    let added = Instant::now();
    let cases_topic = format!("{prefix}.cases");
    let (mut all_after, mut other_after) = (None, None);
    while added.elapsed() < Duration::from_secs(60) && all_after.is_none() {
        let keys = count_by_key(&bootstrap, &cases_topic, Duration::from_millis(300)).await;
        if other_after.is_none() && keys.contains_key(&other) {
            other_after = Some(added.elapsed());
        }
        if after.iter().all(|id| keys.contains_key(id)) {
            all_after = Some(added.elapsed());
        }
    }
    let all_after = all_after.expect("the 7 cases after the unreadable page are announced");
    assert!(
        all_after <= poll * 10,
        "the 7 cases took {all_after:?}, more than 10 poll intervals"
    );
    let other_after = other_after.expect("the other widget's case is announced");
    assert!(
        other_after <= poll * 5,
        "the other widget waited {other_after:?}"
    );
    // Later polls do not name the span again.
    let requests = sim.sim.stats().requests;
    eventually(Duration::from_secs(60), "5 more polls", async || {
        sim.sim.stats().requests >= requests + 10
    })
    .await;
    let (_, metrics) = admin_get(health.admin_addr().unwrap(), "/metrics")
        .await
        .expect("metrics answer");
    assert!(
        metrics.contains("casestream_unread_spans{widget=\"w1\"} 1"),
        "{metrics}"
    );
    forwarder.stop().await;

    let (span, start, end) = the_one_unread_span_of_w1(&bootstrap, &prefix).await;
    assert_eq!(end - start, chrono::Duration::seconds(1), "{span}");
    assert!(
        start <= huge_created && huge_created - start < chrono::Duration::seconds(2),
        "the span {span} holds the case created at {huge_created}"
    );
    assert!(
        span["error"].as_str().unwrap().contains("bytes"),
        "the error is named: {span}"
    );
    let cases = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(1)).await;
    assert!(
        !cases.contains_key(&huge_id),
        "the unreadable case was never read"
    );
    for id in &after {
        assert_eq!(cases[id], 1, "{id} announced once");
    }
}

/// A page answering 503 on every attempt, in `dates` mode, on a virtual clock across
/// midnight: the cases of later hours on the same widget are announced, the other widget does
/// not wait, one dead letter names the unread hour, the day's final read and a later late
/// survey of the widget still happen, and once the page can be read again the span's retry
/// on the re-check grid announces the case it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_page_in_dates_mode_costs_its_hour_until_it_can_be_read() {
    use casestream::simulator::generator::SurveyPlan;
    use chrono::{DurationRound, Timelike};
    let bootstrap = kafka_bootstrap().await;
    // 300x: 5 virtual hours in a minute, and a 30 s poll in 0.1 s.
    let clock = Clock::scaled("2026-03-10T21:00:00Z".parse().unwrap(), 300.0);
    let sim = quiet_widgets_of_small_pages(&clock).await;
    let prefix = unique_prefix("unreadable-dates");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        // A failing page gives up after 2 attempts: 20 would take virtual hours.
        c.api.retry.max_attempts = 2;
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "a first complete cycle")
        .await;
    let at = |t: &str| -> chrono::DateTime<chrono::Utc> { t.parse().unwrap() };
    let until = async |t: &str| {
        let t = at(t);
        eventually(Duration::from_secs(120), "the virtual clock", async || {
            clock.now() >= t
        })
        .await
    };

    let bad = sim
        .sim
        .add_case("w1", sim.sim.make_case("w1"), None, None)
        .unwrap();
    let bad_created = clock.now();
    sim.sim.set_faults(Faults {
        unreadable_cases: vec![bad.clone()],
        ..Faults::default()
    });
    // The hour the bad page's case was created in, and the cases of a later hour.
    let bad_hour = bad_created
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap();
    assert!(
        bad_hour.hour() <= 21,
        "the forwarder took too long to start for this test's virtual clock ({bad_created})"
    );
    let next_hour = bad_hour + chrono::Duration::hours(1);
    let later_at = next_hour + chrono::Duration::minutes(5);
    eventually(Duration::from_secs(120), "the virtual clock", async || {
        clock.now() >= later_at
    })
    .await;
    let later: Vec<String> = (0..7)
        .map(|_| {
            sim.sim
                .add_case("w1", sim.sim.make_case("w1"), None, None)
                .unwrap()
        })
        .collect();
    let other = sim
        .sim
        .add_case("w2", sim.sim.make_case("w2"), None, None)
        .unwrap();
    let cases_topic = format!("{prefix}.cases");
    let surveys_topic = format!("{prefix}.surveys");
    let added = clock.now();
    let mut other_seen = None;
    eventually(
        Duration::from_secs(60),
        "the later hour's cases announced",
        async || {
            let keys = count_by_key(&bootstrap, &cases_topic, Duration::from_millis(300)).await;
            if other_seen.is_none() && keys.contains_key(&other) {
                other_seen = Some(clock.now());
            }
            later.iter().all(|id| keys.contains_key(id))
        },
    )
    .await;
    let other_seen = other_seen.expect("the other widget's case is announced");
    assert!(
        other_seen - added <= chrono::Duration::minutes(30),
        "the other widget waited {} virtual minutes",
        (other_seen - added).num_minutes()
    );
    // A case late in the day whose survey lands after the day's final read (00:30).
    until("2026-03-10T23:00:00Z").await;
    assert!(
        clock.now() < at("2026-03-10T23:45:00Z"),
        "too slow for this test's virtual clock: the late case must be created before midnight"
    );
    let late = sim
        .sim
        .add_case(
            "w1",
            without_survey(&sim.sim.make_case("w1")),
            None,
            Some(SurveyPlan {
                at_ms: at("2026-03-11T01:30:00Z").timestamp_millis(),
                score: Some(80),
                comments: Some("late but kind".into()),
            }),
        )
        .unwrap();
    until("2026-03-11T02:00:00Z").await;
    eventually(
        Duration::from_secs(60),
        "the late survey announced",
        async || {
            count_by_key(&bootstrap, &surveys_topic, Duration::from_millis(300))
                .await
                .contains_key(&late)
        },
    )
    .await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
    assert!(
        caught_up_through(dir.path(), "w1") >= Some(day),
        "the day's final read is done around the span"
    );
    // The page can be read again: the span's next try on the re-check grid announces it.
    sim.sim.set_faults(Faults::default());
    eventually(
        Duration::from_secs(60),
        "the once unreadable case announced",
        async || {
            count_by_key(&bootstrap, &cases_topic, Duration::from_millis(300))
                .await
                .contains_key(&bad)
        },
    )
    .await;
    forwarder.stop().await;

    let (span, start, end) = the_one_unread_span_of_w1(&bootstrap, &prefix).await;
    assert_eq!(start, bad_hour, "{span}");
    assert_eq!(end, next_hour, "{span}");
    let cases = count_by_key(&bootstrap, &cases_topic, Duration::from_secs(1)).await;
    for id in later.iter().chain([&other, &late, &bad]) {
        assert_eq!(cases.get(id), Some(&1), "{id} announced once");
    }
    let progress = casestream::state::SqliteStore::open_read_only(dir.path())
        .ok()
        .and_then(|s| {
            casestream::state::StateStore::widget(&s, "w1")
                .ok()
                .flatten()
        })
        .expect("w1's progress");
    assert!(
        progress.unread.is_empty(),
        "the span was read: {:?}",
        progress.unread
    );
}

/// Serves `raw` (a case served verbatim) on `widget` through the simulator's control API.
/// A page that turns unreadable after it was read, inside a day's re-check window in
/// `datetimes` mode while cases keep arriving: the window ends at the last due chat's end, so
/// its end grows every cycle, and it is still isolated after 3 failing cycles: the surveys of
/// the cases around the page are announced and one dead letter names the span. Counted by the
/// whole window, every cycle's window looked new and none was ever isolated (the fault
/// campaign's seed 22: 32 surveys of the widget never announced, no dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_check_window_growing_past_an_unreadable_page_is_still_isolated() {
    use casestream::simulator::generator::SurveyPlan;
    let bootstrap = kafka_bootstrap().await;
    // 600x: the 10-minute re-check grid in a second of real time. A failing window gives up
    // after 2 attempts 1.2 s apart: each failing cycle outlasts a grid step, so the day's due
    // cases, and the re-check window's end, change between any two of them (as a slower
    // production cycle does at real speed).
    let clock = Clock::scaled("2026-03-10T10:00:00Z".parse().unwrap(), 600.0);
    let sim = quiet_widgets_of_small_pages(&clock).await;
    let prefix = unique_prefix("unreadable-recheck");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.api.window_mode = casestream::snapengage::WindowMode::Datetimes;
        c.api.retry = casestream::snapengage::RetryPolicy {
            min_delay: Duration::from_millis(1_200),
            max_delay: Duration::from_millis(1_200),
            max_attempts: 2,
        };
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    forwarder
        .wait_for_first_cycle(Duration::from_secs(60), "a first complete cycle")
        .await;

    // The page that turns unreadable, between cases whose surveys land later.
    let started = clock.now();
    let lands = started + chrono::Duration::minutes(50);
    let add = |survey: bool| {
        let plan = survey.then(|| SurveyPlan {
            at_ms: lands.timestamp_millis(),
            score: Some(90),
            comments: Some("kind".into()),
        });
        let case = without_survey(&sim.sim.make_case("w1"));
        sim.sim.add_case("w1", case, None, plan).unwrap()
    };
    let mut surveyed = vec![add(true)];
    // Cases in other seconds: the API addresses a second at best.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bad = add(false);
    tokio::time::sleep(Duration::from_millis(20)).await;
    surveyed.extend((0..3).map(|_| add(true)));
    let cases_topic = format!("{prefix}.cases");
    // New cases keep arriving (one every 5 virtual minutes), and fall due on the grid.
    let arrivals = {
        let sim = sim.sim.clone();
        tokio::spawn(async move {
            loop {
                sim.add_case("w1", without_survey(&sim.make_case("w1")), None, None);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    eventually(
        Duration::from_secs(60),
        "the five cases announced",
        async || {
            let keys = count_by_key(&bootstrap, &cases_topic, Duration::from_millis(300)).await;
            surveyed
                .iter()
                .chain([&bad])
                .all(|id| keys.contains_key(id))
        },
    )
    .await;
    // Unreadable once the rolling fresh window (30 min overlap) has passed it: from then on
    // only the day's re-check windows hold it.
    eventually(
        Duration::from_secs(120),
        "the fresh window past the page",
        async || clock.now() >= started + chrono::Duration::minutes(35),
    )
    .await;
    sim.sim.set_faults(Faults {
        unreadable_cases: vec![bad.clone()],
        ..Faults::default()
    });
    let surveys_topic = format!("{prefix}.surveys");
    // Within the day: its final read (00:30 tomorrow) reads around the span whatever the
    // re-checks do.
    eventually(
        Duration::from_secs(60),
        "the surveys around the unreadable page announced",
        async || {
            let keys = count_by_key(&bootstrap, &surveys_topic, Duration::from_millis(300)).await;
            surveyed.iter().all(|id| keys.contains_key(id))
        },
    )
    .await;
    assert!(
        clock.now()
            < "2026-03-10T23:30:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap(),
        "announced by the day's re-checks, not its final read"
    );
    arrivals.abort();
    forwarder.stop().await;
    let (span, start, end) = the_one_unread_span_of_w1(&bootstrap, &prefix).await;
    let bad_created = sim
        .sim
        .record()
        .cases
        .iter()
        .find(|c| c.id == bad)
        .map(|c| c.created_ms)
        .expect("the simulator's record holds the unreadable case");
    assert!(
        start.timestamp_millis() <= bad_created && bad_created < end.timestamp_millis(),
        "the span {span} holds the unreadable case, created at {bad_created} ms"
    );
    sim.stop().await.unwrap();
}

async fn serve_raw(sim: &casestream::simulator::http::RunningSimulator, widget: &str, raw: &Value) {
    let response = reqwest::Client::new()
        .post(format!("{}_sim/cases", sim.base_url()))
        .json(&json!({"widget_id": widget, "raw": raw}))
        .send()
        .await
        .expect("the simulator's control API answers");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

/// Dead letters of `input` (a case without an id, told by its description) per widget.
async fn letters_per_widget(
    bootstrap: &str,
    topic: &str,
    input: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut per_widget = std::collections::BTreeMap::new();
    for record in read_topic_async(bootstrap, topic, Duration::from_millis(500)).await {
        if record.json()["description"] == input {
            *per_widget
                .entry(record.headers["casestream_widget_id"].clone())
                .or_default() += 1;
        }
    }
    per_widget
}

/// The same unusable case (no id) served by two widgets is two inputs: exactly one dead letter
/// per widget, both when their pages are decided one after the other (the second widget is
/// served it after the first's dead letter is committed) and when both serve it from the start,
/// and none again over the polls that follow. (Marks were kept by the bytes alone: the second
/// widget's dead letter was lost when the first's was committed before its page.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bad_case_on_two_widgets_is_dead_lettered_once_per_widget() {
    let bootstrap = kafka_bootstrap().await;
    let clock = Clock::system();
    let sim = start_simulator(
        SimConfig {
            widgets: vec!["w1".into(), "w2".into()],
            cases_per_hour: 0.0,
            history: Duration::ZERO,
            ..SimConfig::default()
        },
        clock.clone(),
    )
    .await;
    let in_turn = json!({"type": "chat", "description": "no id, one widget after the other"});
    let at_once = json!({"type": "chat", "description": "no id, both widgets at once"});
    serve_raw(&sim, "w1", &in_turn).await;
    serve_raw(&sim, "w1", &at_once).await;
    serve_raw(&sim, "w2", &at_once).await;
    let prefix = unique_prefix("deadtwice");
    let dir = tempfile::tempdir().unwrap();
    let config = forwarder_config(&sim, &bootstrap, &prefix, dir.path(), |c| {
        c.pipeline.poll_interval = Duration::from_secs(1)
    });
    let forwarder = RunningForwarder::start(config, clock.clone());
    let dead_topic = format!("{prefix}.dead");
    let in_turn_text = in_turn["description"].as_str().unwrap();
    // As served, byte for byte: what the state's mark is keyed by.
    let in_turn_digest = sha256_hex(&serde_json::to_vec(&in_turn).unwrap());
    eventually(
        Duration::from_secs(60),
        "w1's dead letter, committed",
        async || {
            letters_per_widget(&bootstrap, &dead_topic, in_turn_text)
                .await
                .contains_key("w1")
                && SqliteStore::open_read_only(dir.path()).is_ok_and(|store| {
                    store
                        .known_dead_letters("w1", &[&in_turn_digest])
                        .is_ok_and(|marks| marks.len() == 1)
                })
        },
    )
    .await;
    // Only now does w2 serve the same bytes: its page is decided in a later cycle.
    serve_raw(&sim, "w2", &in_turn).await;
    eventually(
        Duration::from_secs(60),
        "w2's own dead letter of the same bytes",
        async || {
            letters_per_widget(&bootstrap, &dead_topic, in_turn_text)
                .await
                .contains_key("w2")
        },
    )
    .await;
    // Polls go on: neither input is sent again for either widget.
    let requests = sim.sim.stats().requests;
    eventually(Duration::from_secs(60), "5 more polls", async || {
        sim.sim.stats().requests >= requests + 10
    })
    .await;
    forwarder.stop().await;
    let once_each: std::collections::BTreeMap<String, usize> =
        [("w1".to_owned(), 1), ("w2".to_owned(), 1)].into();
    for input in [&in_turn, &at_once] {
        let text = input["description"].as_str().unwrap();
        assert_eq!(
            letters_per_widget(&bootstrap, &dead_topic, text).await,
            once_each,
            "dead letters of `{text}` per widget"
        );
    }
    sim.stop().await.unwrap();
}
