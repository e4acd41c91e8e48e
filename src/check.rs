//! `casestream check`: is this deployment able to run? The configuration, one cheap Logs API
//! request, one Kafka metadata request, the topics, and in exactly-once delivery the rights
//! on the election group and the transactional id. One line per check; useful as an init
//! container or a deploy smoke test.

use std::time::Duration;

use futures::StreamExt;

use crate::config::{Config, ConfigError};
use crate::sink::changelog::ChangelogRetention;
use crate::sink::config::{Delivery, ENV_CREATE_TOPICS};
use crate::sink::{KafkaSink, election, transaction};
use crate::snapengage::{LogsClient, RetryPolicy, Window};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one check.
#[derive(Debug)]
pub struct CheckLine {
    pub name: &'static str,
    pub result: Result<String, String>,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(detail) => write!(f, "ok    {:<9} {detail}", self.name),
            Err(reason) => write!(f, "FAIL  {:<9} {reason}", self.name),
        }
    }
}

/// Runs every check; the configuration must load for the others to run.
pub async fn run_checks(config: Result<Config, ConfigError>) -> Vec<CheckLine> {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            return vec![CheckLine {
                name: "config",
                result: Err(e.to_string()),
            }];
        }
    };
    let mut lines = vec![CheckLine {
        name: "config",
        result: Ok(format!(
            "org {}, widgets {}, state in {}",
            config.api.org_id,
            config.pipeline.widgets.join(","),
            config.state_dir.display()
        )),
    }];
    lines.push(CheckLine {
        name: "logs-api",
        result: check_api(&config).await,
    });
    let kafka = check_kafka(&config).await;
    let reachable = kafka
        .iter()
        .any(|line| line.name == "kafka" && line.result.is_ok());
    lines.extend(kafka);
    if reachable && config.kafka.delivery == Delivery::ExactlyOnce {
        lines.extend(check_exactly_once(&config).await);
    }
    lines
}

/// Exactly-once delivery's rights: the election group, and the transactional id. The id is
/// only tried when no instance runs: trying it fences the running active instance.
async fn check_exactly_once(config: &Config) -> Vec<CheckLine> {
    let settings = config.kafka.clone();
    let (group, id) = (settings.failover.id(), settings.failover.id());
    let asked = tokio::task::spawn_blocking(move || {
        let members = election::check_group_access(&settings, KAFKA_TIMEOUT)?;
        let txn = (members == 0)
            .then(|| transaction::check_transactional_access(&settings, KAFKA_TIMEOUT));
        Ok::<_, String>((members, txn))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the check panicked: {e}")));
    match asked {
        Err(reason) => vec![CheckLine {
            name: "group",
            result: Err(reason),
        }],
        Ok((members, txn)) => vec![
            CheckLine {
                name: "group",
                result: Ok(format!(
                    "may use election group {group} ({members} member(s) now)"
                )),
            },
            CheckLine {
                name: "txn-id",
                result: match txn {
                    Some(Ok(())) => Ok(format!("may use transactional id {id}")),
                    Some(Err(reason)) => Err(reason),
                    None => Ok(format!(
                        "transactional id {id} not tried: {members} instance(s) run, and \
                         trying it would fence the active one"
                    )),
                },
            },
        ],
    }
}

/// One request for today's first page of the first widget, with a single retry.
async fn check_api(config: &Config) -> Result<String, String> {
    let mut client = config.api.clone();
    client.retry = RetryPolicy {
        min_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(2),
        max_attempts: 2,
    };
    let client = LogsClient::new(client).map_err(|e| e.to_string())?;
    let today = chrono::Utc::now().date_naive();
    let Some(widget) = config.pipeline.widgets.first() else {
        return Err("no widget is configured".into());
    };
    let mut pages = Box::pin(client.pages(
        widget,
        Window::Dates {
            start: today,
            end: today,
        },
    ));
    match pages.next().await {
        Some(Ok(page)) => Ok(format!(
            "{} answered; widget {widget} has {}{} cases today",
            config.api.base_url,
            page.cases.len(),
            if page.is_last() { "" } else { "+" }
        )),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the Logs API returned no response".into()),
    }
}

/// The brokers, then (when they answer) the topics and, in exactly-once delivery, the
/// changelog's layout and configuration as start-up checks them.
async fn check_kafka(config: &Config) -> Vec<CheckLine> {
    let kafka = |result| CheckLine {
        name: "kafka",
        result,
    };
    let sink = match KafkaSink::new(&config.kafka) {
        Ok(s) => s,
        Err(e) => return vec![kafka(Err(e.to_string()))],
    };
    let (brokers, missing) = match sink.missing_topics(KAFKA_TIMEOUT).await {
        Ok(found) => found,
        Err(_) => return vec![kafka(Err(sink.explain_unreachable().await))],
    };
    let topics = if missing.is_empty() {
        Ok("cases, surveys and dead-letter topics exist".to_owned())
    } else if config.kafka.create_topics {
        Ok(format!("missing {} (created at start)", missing.join(", ")))
    } else {
        Err(format!(
            "missing {} and {ENV_CREATE_TOPICS} is false",
            missing.join(", ")
        ))
    };
    let mut lines = vec![
        kafka(Ok(format!("{brokers} broker(s) answered"))),
        CheckLine {
            name: "topics",
            result: topics,
        },
    ];
    if sink.exactly_once() {
        let topic = &config.kafka.topics.state;
        let result = match sink.check_changelog(KAFKA_TIMEOUT).await {
            Ok(Some(ChangelogRetention::Compacted)) => Ok(format!(
                "{topic}: one partition, compacted, keeps what the state needs"
            )),
            Ok(Some(ChangelogRetention::KeptForever)) => Ok(format!(
                "{topic}: one partition, never cleaned (nothing is lost, but it grows with every \
                 change; cleanup.policy=compact keeps it as large as the state)"
            )),
            Ok(None) => Ok(format!(
                "{topic} does not exist yet (created at start, then checked)"
            )),
            Err(e) => Err(e.to_string()),
        };
        lines.push(CheckLine {
            name: "changelog",
            result,
        });
    }
    lines
}
