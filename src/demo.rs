//! `casestream demo`: the whole product in one process and one command, on any machine. The
//! Logs API simulator, the forwarder and an embedded Kafka-protocol broker (librdkafka's mock
//! cluster) share a fast virtual clock; each event is printed as a consumer reads it back.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::clock::Clock;
use crate::config::Config;
use crate::simulator::{SimConfig, Simulator};
use crate::sink::KafkaSettings;
use crate::snapengage::ClientConfig;

const PARTITIONS: i32 = 3;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Virtual clock speed.
    pub speed: f64,
    /// Stop after this much real time; `None` runs until interrupted.
    pub duration: Option<Duration>,
    /// New cases per widget per virtual hour.
    pub cases_per_hour: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("embedded Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("simulator: {0}")]
    Simulator(std::io::Error),
    #[error(transparent)]
    Forwarder(#[from] crate::app::AppError),
    #[error("forwarder task failed: {0}")]
    Join(String),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DemoSummary {
    pub created: u64,
    pub surveys: u64,
}

/// Runs the demo until `shutdown` or the duration, writing one line per event to `out`.
pub async fn run(
    options: DemoOptions,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<DemoSummary, DemoError> {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let clock = Clock::scaled(Utc::now(), options.speed);
    let sim = Arc::new(Simulator::new(
        SimConfig {
            widgets: vec!["support".into(), "sales".into()],
            seed: 7,
            cases_per_hour: options.cases_per_hour,
            history: Duration::from_secs(30 * 60),
            survey_delay: Duration::from_secs(5 * 60),
            survey_spread: Duration::from_secs(5 * 60),
            survey_late_max: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        clock.clone(),
    ));
    let api = crate::simulator::http::start(sim.clone(), ([127, 0, 0, 1], 0).into())
        .await
        .map_err(DemoError::Simulator)?;
    let state_dir = std::env::temp_dir().join(format!("casestream-demo-{}", std::process::id()));
    let mut client = ClientConfig::new(
        api.base_url(),
        sim.config().org.clone(),
        sim.config().token.clone().into(),
    );
    client.rate_limit_per_sec = 50.0;
    let mut config = Config::new(
        client,
        KafkaSettings::new(&bootstrap),
        sim.config().widgets.clone(),
    );
    config.state_dir = state_dir.clone();
    config.admin.addr = ([127, 0, 0, 1], 0).into();
    let settle = config.pipeline.tracker.settle;
    // The forwarder's default topics, as its settings name them.
    let topics = config.kafka.topics.clone();
    for topic in topics.all() {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }

    writeln!(
        out,
        "casestream demo: simulated Logs API at {}, embedded Kafka at {bootstrap}, clock {}x \
         (a {} settle passes in {:.0}s). Ctrl-C stops.",
        api.base_url(),
        options.speed,
        humantime::format_duration(settle),
        clock.real_duration(settle).as_secs_f64()
    )
    .map_err(DemoError::Output)?;

    let health = Arc::new(Health::default());
    let stop_forwarder = CancellationToken::new();
    let forwarder = tokio::spawn(crate::app::run(
        config,
        clock.clone(),
        health.clone(),
        stop_forwarder.clone(),
    ));

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "casestream-demo")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in [&topics.cases, &topics.surveys] {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;

    let started = Instant::now();
    let deadline = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut summary = DemoSummary::default();
    // Topics are read in no particular order between them; a survey is shown after its case.
    let mut announced = std::collections::HashSet::new();
    let mut early_surveys: Vec<Value> = Vec::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            m = consumer.recv() => m?,
        };
        let Some(event) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        let subject = event["subject"].as_str().unwrap_or_default().to_owned();
        if event["type"] == crate::events::TYPE_CREATED {
            summary.created += 1;
            writeln!(out, "{}", describe(&event, &clock)).map_err(DemoError::Output)?;
            let (now_due, waiting): (Vec<Value>, Vec<Value>) = early_surveys
                .into_iter()
                .partition(|s| s["subject"].as_str() == Some(subject.as_str()));
            early_surveys = waiting;
            for survey in now_due {
                writeln!(out, "{}", describe(&survey, &clock)).map_err(DemoError::Output)?;
            }
            announced.insert(subject);
        } else {
            summary.surveys += 1;
            if announced.contains(&subject) {
                writeln!(out, "{}", describe(&event, &clock)).map_err(DemoError::Output)?;
            } else {
                early_surveys.push(event);
            }
        }
    }
    drop(consumer);
    stop_forwarder.cancel();
    let result = forwarder
        .await
        .map_err(|e| DemoError::Join(e.to_string()))?;
    let _ = api.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result?;
    writeln!(
        out,
        "{} case.created and {} case.survey events in {:.0}s ({} virtual).",
        summary.created,
        summary.surveys,
        started.elapsed().as_secs_f64(),
        humantime::format_duration(Duration::from_secs(
            (started.elapsed().as_secs_f64() * options.speed) as u64
        ))
    )
    .map_err(DemoError::Output)?;
    drop(cluster);
    Ok(summary)
}

/// One short line per event: virtual time, type, widget, case id, a summary.
fn describe(event: &Value, clock: &Clock) -> String {
    let data = &event["data"];
    let case = &data["case"];
    let id: String = event["subject"]
        .as_str()
        .unwrap_or("?")
        .chars()
        .take(8)
        .collect();
    let widget = data["widget_id"].as_str().unwrap_or("?");
    let now = clock.now().format("%H:%M");
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    if event["type"] == crate::events::TYPE_CREATED {
        format!(
            "{now}  created  {widget:<8} {id}  {} from {}: \"{}\"",
            text(&case["requester_details"]["name"]),
            text(&case["city"]),
            text(&case["description"]),
        )
    } else {
        let survey = &data["survey"];
        let after_end = crate::snapengage::Case::from_value(case.clone())
            .ok()
            .and_then(|c| c.chat_end())
            .zip(
                event["time"]
                    .as_str()
                    .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok()),
            )
            .map(|(end, seen)| {
                let secs = u64::try_from((seen - end).num_seconds()).unwrap_or(0);
                format!(
                    ", seen {} after chat end",
                    humantime::format_duration(Duration::from_secs(secs / 60 * 60))
                )
            })
            .unwrap_or_default();
        format!(
            "{now}  survey   {widget:<8} {id}  score {}{}{after_end}",
            survey["score"],
            survey["comments"]
                .as_str()
                .map(|c| format!(" \"{c}\""))
                .unwrap_or_default(),
        )
    }
}
