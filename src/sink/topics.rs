//! Checking and creating the topics, and the metadata requests behind them and behind the
//! readiness probe.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::util::Timeout;

use super::changelog::{ChangelogRetention, DELETE_RETENTION_NEEDED_MS, changelog_retention};

/// The changelog an earlier release's exactly-once overlay named for every deployment.
const PINNED_CHANGELOG: &str = "casestream.state";
/// Reads of a new changelog's configuration before a broker that does not know it yet is
/// believed, and the wait between them.
const DESCRIBE_TRIES: u32 = 20;
const DESCRIBE_RETRY_DELAY: Duration = Duration::from_millis(250);
use super::{ADMIN_TIMEOUT, KafkaSink, SinkError, setup_error};

/// Topics never get a replication factor above this by default.
const MAX_DEFAULT_REPLICATION: i32 = 3;

impl KafkaSink {
    /// Topics (name, partitions) and broker count, for one topic or (`None`) the whole
    /// cluster; fails unless a broker answers in time.
    async fn metadata(
        &self,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<(String, usize)>, usize), SinkError> {
        let producer = self.producer();
        let topic = topic.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), timeout)
                .map(|m| {
                    let topics = m.topics().iter();
                    let topics = topics.map(|t| (t.name().to_owned(), t.partitions().len()));
                    (topics.collect(), m.brokers().len())
                })
        })
        .await
        .map_err(|_| SinkError::Unreachable(KafkaError::Canceled))?
        .map_err(SinkError::Unreachable)
    }

    /// Asks the cluster for the metadata of our cases topic only (never every topic of the
    /// cluster): the number of brokers, when one answers in time.
    pub async fn ping(&self, timeout: Duration) -> Result<usize, SinkError> {
        self.metadata(Some(&self.topics().cases), timeout)
            .await
            .map(|(_, brokers)| brokers)
    }

    /// The number of brokers and which of our topics the cluster does not have, from one
    /// metadata request.
    pub async fn missing_topics(
        &self,
        timeout: Duration,
    ) -> Result<(usize, Vec<String>), SinkError> {
        let (existing, brokers) = self.metadata(None, timeout).await?;
        let missing = self.missing_from(&existing);
        Ok((brokers, missing.into_iter().map(str::to_owned).collect()))
    }

    /// The topics this instance writes: the state's changelog too in exactly-once delivery.
    fn needed_topics(&self) -> Vec<&str> {
        let mut topics = self.topics().all().to_vec();
        if self.exactly_once() {
            topics.push(&self.topics().state);
        }
        topics
    }

    /// Our topics that are not among `existing`.
    fn missing_from(&self, existing: &[(String, usize)]) -> Vec<&str> {
        self.needed_topics()
            .into_iter()
            .filter(|n| !existing.iter().any(|(e, _)| e == n))
            .collect()
    }

    /// Creates missing topics (or, when creation is off, checks they exist), and checks the
    /// changelog (exactly-once delivery): its layout before, its configuration after creation
    /// (a topic created now takes the broker's defaults, which may be short too).
    pub async fn ensure_topics(&self) -> Result<(), SinkError> {
        let (existing, brokers) = self.metadata(None, ADMIN_TIMEOUT).await?;
        self.check_changelog_layout(&existing)?;
        let missing = self.missing_from(&existing);
        // An earlier release's exactly-once overlay named one changelog for every deployment.
        // The per-deployment default would start from an empty state beside it: every case
        // of the lookback announced again, every pending survey lost. Refused, saying how on.
        let state = &self.settings.topics.state;
        if self.exactly_once()
            && missing.contains(&state.as_str())
            && *state != PINNED_CHANGELOG
            && existing.iter().any(|(name, _)| name == PINNED_CHANGELOG)
        {
            return Err(SinkError::ChangelogMoved {
                topic: state.clone(),
                pinned: PINNED_CHANGELOG.to_owned(),
            });
        }
        if !missing.is_empty() {
            self.create_topics(&missing, brokers).await?;
        }
        if self.exactly_once()
            && self.check_changelog_config().await? == ChangelogRetention::KeptForever
        {
            tracing::warn!(
                topic = %self.settings.topics.state,
                "the state changelog is not compacted: nothing is lost, but it keeps every \
                 change ever made and a rebuild reads them all; set cleanup.policy=compact"
            );
        }
        Ok(())
    }

    /// The changelog checked as start-up checks it (exactly-once delivery): how it keeps its
    /// records, or `None` while it does not exist (start-up creates it, then checks it).
    pub async fn check_changelog(
        &self,
        timeout: Duration,
    ) -> Result<Option<ChangelogRetention>, SinkError> {
        let (existing, _) = self.metadata(None, timeout).await?;
        if !existing
            .iter()
            .any(|(name, _)| *name == self.topics().state)
        {
            return Ok(None);
        }
        self.check_changelog_layout(&existing)?;
        self.check_changelog_config().await.map(Some)
    }

    /// An existing changelog must have one partition: its reader and the election use
    /// partition 0, and one log orders every change (a topic made by hand may differ).
    fn check_changelog_layout(&self, existing: &[(String, usize)]) -> Result<(), SinkError> {
        match existing
            .iter()
            .find(|(name, _)| *name == self.settings.topics.state)
        {
            Some((topic, partitions)) if self.exactly_once() && *partitions > 1 => {
                Err(SinkError::ChangelogLayout {
                    topic: topic.clone(),
                    partitions: *partitions,
                })
            }
            _ => Ok(()),
        }
    }

    /// The changelog's configuration as the broker reports it: refused, naming every property
    /// that would lose records the state still needs ([`changelog_retention`]).
    async fn check_changelog_config(&self) -> Result<ChangelogRetention, SinkError> {
        let topic = &self.settings.topics.state;
        let unreadable = |reason: String| SinkError::ChangelogConfigUnreadable {
            topic: topic.clone(),
            reason,
        };
        let admin: AdminClient<DefaultClientContext> = self.config.create().map_err(setup_error)?;
        let options = AdminOptions::new().request_timeout(Some(Timeout::After(ADMIN_TIMEOUT)));
        let mut tries = 0;
        let resource = loop {
            tries += 1;
            let answer = admin
                .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
                .await
                .map_err(SinkError::Unreachable)?
                .pop()
                .ok_or_else(|| unreadable("the broker answered nothing".into()))?;
            match answer {
                Ok(resource) => break resource,
                // A topic created a moment ago may not be known to the broker asked yet.
                Err(RDKafkaErrorCode::UnknownTopicOrPartition) if tries < DESCRIBE_TRIES => {
                    tokio::time::sleep(DESCRIBE_RETRY_DELAY).await;
                }
                Err(code @ RDKafkaErrorCode::TopicAuthorizationFailed) => {
                    return Err(unreadable(format!(
                        "{code}: casestream needs DescribeConfigs on the topic"
                    )));
                }
                Err(code) => return Err(unreadable(code.to_string())),
            }
        };
        let entries = resource.entry_map();
        changelog_retention(|name| entries.get(name).and_then(|e| e.value.as_deref())).map_err(
            |problems| SinkError::ChangelogRetention {
                topic: topic.clone(),
                problems: problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        )
    }

    /// Creates `missing` (or, when creation is off, fails naming them).
    async fn create_topics(&self, missing: &[&str], brokers: usize) -> Result<(), SinkError> {
        let settings = &self.settings;
        if !settings.create_topics {
            return Err(SinkError::TopicMissing {
                topic: missing.join(", "),
            });
        }
        // By default as many replicas as brokers, up to three.
        let replication = settings.topic_replication.unwrap_or_else(|| {
            i32::try_from(brokers)
                .unwrap_or(MAX_DEFAULT_REPLICATION)
                .clamp(1, MAX_DEFAULT_REPLICATION)
        });
        let admin: AdminClient<DefaultClientContext> = self.config.create().map_err(setup_error)?;
        let delete_retention = DELETE_RETENTION_NEEDED_MS.to_string();
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                if *name == settings.topics.state {
                    // One partition: one ordered log of the state, one active instance (the
                    // election group's member assigned it). Compaction keeps the latest
                    // record per key, so the log stays as large as the state.
                    // Tombstones kept as long as a resuming store relies on, whatever the
                    // broker's default.
                    NewTopic::new(name, 1, TopicReplication::Fixed(replication))
                        .set("cleanup.policy", "compact")
                        .set("delete.retention.ms", &delete_retention)
                } else {
                    NewTopic::new(
                        name,
                        settings.topic_partitions,
                        TopicReplication::Fixed(replication),
                    )
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Timeout::After(ADMIN_TIMEOUT)));
        let results = admin
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(SinkError::Unreachable)?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(
                    topic = %name,
                    partitions = settings.topic_partitions,
                    replication,
                    "created topic"
                ),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(SinkError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
