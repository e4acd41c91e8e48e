//! Exactly-once delivery, the reading side: the state's changelog read back (to its end at
//! start, then on, on a standby). The election of the one active instance is in
//! [`super::election`].

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::KafkaSettings;
use super::{ADMIN_TIMEOUT, SinkError, setup_error};
use crate::state::{Change, ChangeError};

/// The changelog has one partition.
pub const CHANGELOG_PARTITION: i32 = 0;
/// How long a store may have stopped reading the changelog and still resume where it stopped,
/// trusting that every tombstone written since is still in the log: half of the least
/// `delete.retention.ms` the changelog is allowed ([`DELETE_RETENTION_NEEDED_MS`]), the other
/// half a margin for the read to the end itself and the log cleaner's timing. A store that
/// stopped longer ago may have missed a deletion, so it is rebuilt instead.
pub const TOMBSTONES_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(12);
/// The least `delete.retention.ms` of the changelog: compaction drops a tombstone no sooner
/// than this after it was written, which [`TOMBSTONES_KEPT`] relies on. Twice it, which is
/// Kafka's default (1 day).
pub const DELETE_RETENTION_NEEDED_MS: i64 = 2 * TOMBSTONES_KEPT.num_milliseconds();

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("reading the state changelog {topic}: {error}")]
    Kafka { topic: String, error: KafkaError },
    #[error("the state changelog {topic} holds a bad record at offset {offset}: {error}")]
    Bad {
        topic: String,
        offset: i64,
        error: ChangeError,
    },
    /// The offset read from is no longer in the log (the topic was recreated or truncated).
    #[error("the state changelog {topic} no longer holds the offset being read")]
    Gone { topic: String },
    #[error(transparent)]
    Setup(#[from] SinkError),
}

/// The reader's client context: a failing connection is logged once a spell
/// ([`super::connection`]), not once per attempt.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::connection::librdkafka_log("changelog reader", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if super::connection::is_connection_error(&error) {
            super::connection::failed("changelog reader", &format!("{error}: {reason}"));
        } else {
            tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A reader of the changelog's partition, assigned by hand (no group), `read_committed`.
pub struct ChangelogReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
}

impl ChangelogReader {
    pub fn new(settings: &KafkaSettings) -> Result<Self, ChangelogError> {
        let mut config = settings.consumer_config(None);
        // An offset that left the log is an error to handle, never a silent jump.
        config.set("auto.offset.reset", "error");
        let consumer: BaseConsumer<ReaderContext> = config
            .create_with_context(ReaderContext)
            .map_err(setup_error)?;
        Ok(Self {
            consumer,
            topic: settings.topics.state.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn kafka(&self) -> impl Fn(KafkaError) -> ChangelogError + '_ {
        |error| ChangelogError::Kafka {
            topic: self.topic.clone(),
            error,
        }
    }

    /// The offset of the first record still in the log, and the end a `read_committed`
    /// reader can reach now (the last stable offset: no open transaction's records).
    pub fn bounds(&self) -> Result<(i64, i64), ChangelogError> {
        self.consumer
            .fetch_watermarks(&self.topic, CHANGELOG_PARTITION, ADMIN_TIMEOUT)
            .map_err(self.kafka())
    }

    /// Reads on from `offset`.
    pub fn seek(&self, offset: i64) -> Result<(), ChangelogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, CHANGELOG_PARTITION, Offset::Offset(offset))
            .map_err(self.kafka())?;
        self.consumer.assign(&list).map_err(self.kafka())
    }

    /// Stops fetching (the active instance writes the changelog; it need not read it back).
    pub fn stop(&self) -> Result<(), ChangelogError> {
        self.consumer.unassign().map_err(self.kafka())
    }

    /// The offset the next read starts at (past transaction markers and aborted records
    /// already passed); `None` before the first fetch.
    pub fn position(&self) -> Result<Option<i64>, ChangelogError> {
        let list = self.consumer.position().map_err(self.kafka())?;
        Ok(list
            .find_partition(&self.topic, CHANGELOG_PARTITION)
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }

    /// The committed changes that arrive within `wait`, at most `max` of them.
    pub fn read(&self, max: usize, wait: Duration) -> Result<Vec<Change>, ChangelogError> {
        let deadline = Instant::now() + wait;
        let mut changes = Vec::new();
        while changes.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.consumer.poll(left) else {
                break;
            };
            // A failed connection is news, not a failed read: librdkafka reconnects by itself,
            // and the consumer's queue keeps one such event per attempt. Returning them would
            // make the caller wait out each one, long after Kafka is back.
            if let Err(error) = &message
                && super::connection::is_connection_error(error)
            {
                super::connection::failed("changelog reader", &error.to_string());
                if left.is_zero() {
                    break;
                }
                continue;
            }
            let message = message.map_err(|error| match error.rdkafka_error_code() {
                Some(rdkafka::error::RDKafkaErrorCode::AutoOffsetReset) => ChangelogError::Gone {
                    topic: self.topic.clone(),
                },
                _ => self.kafka()(error),
            })?;
            let change = Change::decode(message.key().unwrap_or_default(), message.payload())
                .map_err(|error| ChangelogError::Bad {
                    topic: self.topic.clone(),
                    offset: message.offset(),
                    error,
                })?;
            changes.push(change);
            if left.is_zero() {
                break;
            }
        }
        Ok(changes)
    }
}

/// How an acceptable changelog keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangelogRetention {
    /// `cleanup.policy=compact`: the latest record per key, tombstones long enough.
    Compacted,
    /// Nothing is ever deleted (`delete` with infinite retention, or no policy): nothing is
    /// lost, but the log and every rebuild grow with the whole history.
    KeptForever,
}

/// A property of the changelog that would lose records the state still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogSettingProblem {
    pub property: &'static str,
    /// As the broker reported it (`None`: it did not).
    pub value: Option<String>,
    /// The value it needs, said as an operator would set it.
    pub needed: String,
    pub why: String,
}

impl std::fmt::Display for ChangelogSettingProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.value.as_deref().unwrap_or("(not reported)");
        write!(
            f,
            "{}={value} needs {} ({})",
            self.property, self.needed, self.why
        )
    }
}

/// Whether a changelog whose topic configuration reads `property` keeps every record the
/// state still needs.
///
/// - `cleanup.policy` with `delete` (alone, or `compact,delete`) deletes whole segments by age
///   (`retention.ms`) and by size (`retention.bytes`), whatever compaction keeps. The state
///   leaves records unwritten for as long as it needs them (a case's until its survey horizon,
///   a widget's progress while it is quiet, both as long as the operator configures), so no
///   finite value is safe: only -1 (infinite) passes, for each of the two.
/// - `cleanup.policy` with `compact` drops a tombstone `delete.retention.ms` after it was
///   written: it must be at least [`DELETE_RETENTION_NEEDED_MS`], which a resuming store
///   relies on. Without `compact` nothing removes tombstones but retention, checked above.
///
/// Every offending property is named, with the value it needs.
pub fn changelog_retention<'a>(
    property: impl Fn(&str) -> Option<&'a str>,
) -> Result<ChangelogRetention, Vec<ChangelogSettingProblem>> {
    let reported = |name: &str| property(name).map(str::to_owned);
    let policy = property("cleanup.policy").unwrap_or_default();
    let policies: Vec<String> = policy
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    let (compact, delete) = (
        policies.iter().any(|p| p == "compact"),
        policies.iter().any(|p| p == "delete"),
    );
    let mut problems = Vec::new();
    if property("cleanup.policy").is_none() {
        // Kafka's default policy is `delete`: unknown is not safe.
        problems.push(ChangelogSettingProblem {
            property: "cleanup.policy",
            value: None,
            needed: "compact".into(),
            why: "the broker did not say how the topic is cleaned".into(),
        });
    }
    if delete {
        for (name, limit) in [("retention.ms", "age"), ("retention.bytes", "size")] {
            if property(name).is_none_or(|v| v.trim() != "-1") {
                problems.push(ChangelogSettingProblem {
                    property: name,
                    value: reported(name),
                    needed: "-1, or cleanup.policy=compact without delete".into(),
                    why: format!(
                        "with cleanup.policy=delete, records past this {limit} are deleted while \
                         the state still needs them"
                    ),
                });
            }
        }
    }
    if compact {
        let kept = property("delete.retention.ms").and_then(|v| v.trim().parse::<i64>().ok());
        if kept.is_none_or(|ms| ms < DELETE_RETENTION_NEEDED_MS) {
            problems.push(ChangelogSettingProblem {
                property: "delete.retention.ms",
                value: reported("delete.retention.ms"),
                needed: format!("at least {DELETE_RETENTION_NEEDED_MS}"),
                why: format!(
                    "compaction would drop deletions sooner, while a store that stopped reading \
                     up to {} hours ago resumes without a rebuild",
                    TOMBSTONES_KEPT.num_hours()
                ),
            });
        }
    }
    match (problems.is_empty(), compact) {
        (false, _) => Err(problems),
        (true, true) => Ok(ChangelogRetention::Compacted),
        (true, false) => Ok(ChangelogRetention::KeptForever),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(config: &[(&str, &str)]) -> Result<ChangelogRetention, Vec<ChangelogSettingProblem>> {
        changelog_retention(|name| config.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    fn refused(config: &[(&str, &str)]) -> Vec<&'static str> {
        judge(config)
            .expect_err("refused")
            .iter()
            .map(|p| p.property)
            .collect()
    }

    const KAFKA_DEFAULTS: [(&str, &str); 3] = [
        ("retention.ms", "604800000"),
        ("retention.bytes", "-1"),
        ("delete.retention.ms", "86400000"),
    ];

    fn with(
        policy: &'static str,
        changes: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut config: Vec<_> = KAFKA_DEFAULTS.to_vec();
        config.push(("cleanup.policy", policy));
        for (k, v) in changes {
            config.retain(|(name, _)| name != k);
            config.push((k, v));
        }
        config
    }

    #[test]
    fn compaction_with_tombstones_kept_a_day_passes() {
        assert_eq!(DELETE_RETENTION_NEEDED_MS, 86_400_000);
        assert_eq!(
            judge(&with("compact", &[])),
            Ok(ChangelogRetention::Compacted)
        );
        // Retention settings mean nothing without `delete`.
        let short = with(
            "compact",
            &[("retention.ms", "1000"), ("retention.bytes", "10")],
        );
        assert_eq!(judge(&short), Ok(ChangelogRetention::Compacted));
        let longer = with("compact", &[("delete.retention.ms", "604800000")]);
        assert_eq!(judge(&longer), Ok(ChangelogRetention::Compacted));
    }

    #[test]
    fn tombstones_dropped_sooner_than_a_day_are_refused() {
        let hour = with("compact", &[("delete.retention.ms", "3600000")]);
        assert_eq!(refused(&hour), ["delete.retention.ms"]);
        let just_short = with("compact", &[("delete.retention.ms", "86399999")]);
        assert_eq!(refused(&just_short), ["delete.retention.ms"]);
        let problem = &judge(&hour).unwrap_err()[0];
        let said = problem.to_string();
        assert!(
            said.contains("delete.retention.ms=3600000 needs at least 86400000"),
            "{said}"
        );
        assert!(said.contains("12 hours"), "{said}");
    }

    #[test]
    fn delete_policies_pass_only_with_infinite_retention() {
        let day = with("delete", &[("retention.ms", "86400000")]);
        assert_eq!(refused(&day), ["retention.ms"]);
        let said = judge(&day).unwrap_err()[0].to_string();
        assert!(said.contains("retention.ms=86400000 needs -1"), "{said}");
        let sized = with(
            "compact,delete",
            &[("retention.ms", "-1"), ("retention.bytes", "1073741824")],
        );
        assert_eq!(refused(&sized), ["retention.bytes"]);
        let both = with(" Compact , Delete ", &[("delete.retention.ms", "1")]);
        assert_eq!(refused(&both), ["retention.ms", "delete.retention.ms"]);
        let forever = with("compact,delete", &[("retention.ms", "-1")]);
        assert_eq!(judge(&forever), Ok(ChangelogRetention::Compacted));
        // Nothing deleted and nothing compacted: no tombstone is ever dropped.
        let forever = with(
            "delete",
            &[("retention.ms", "-1"), ("delete.retention.ms", "1")],
        );
        assert_eq!(judge(&forever), Ok(ChangelogRetention::KeptForever));
    }

    #[test]
    fn what_the_broker_does_not_say_is_not_assumed_safe() {
        assert_eq!(refused(&[]), ["cleanup.policy"]);
        assert_eq!(
            refused(&[("cleanup.policy", "delete")]),
            ["retention.ms", "retention.bytes"]
        );
        assert_eq!(
            refused(&[("cleanup.policy", "compact")]),
            ["delete.retention.ms"]
        );
        let garbled = with("compact", &[("delete.retention.ms", "a day")]);
        assert_eq!(refused(&garbled), ["delete.retention.ms"]);
    }
}
