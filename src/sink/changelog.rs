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
