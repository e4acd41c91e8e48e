//! Exactly-once delivery, the reading side: the state's changelog read back (to its end at
//! start, then on, on a standby), and the election of the one active instance, which is the
//! member of the changelog's consumer group assigned its single partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::config::KafkaSettings;
use super::{ADMIN_TIMEOUT, SinkError, setup_error};
use crate::state::{Change, ChangeError};

/// The changelog has one partition.
pub const CHANGELOG_PARTITION: i32 = 0;
/// How often the election's consumer is polled: it serves the group's heartbeats and
/// rebalances, so it must turn well within the session timeout.
const ELECTION_POLL: Duration = Duration::from_millis(200);

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

/// A reader of the changelog's partition, assigned by hand (no group), `read_committed`.
pub struct ChangelogReader {
    consumer: BaseConsumer,
    topic: String,
}

impl ChangelogReader {
    pub fn new(settings: &KafkaSettings) -> Result<Self, ChangelogError> {
        let mut config = settings.consumer_config(None);
        // An offset that left the log is an error to handle, never a silent jump.
        config.set("auto.offset.reset", "error");
        let consumer: BaseConsumer = config.create().map_err(setup_error)?;
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

/// Tells the election's owner when this instance gains or loses the changelog's partition.
struct ElectionContext {
    topic: String,
    active: watch::Sender<bool>,
}

impl ClientContext for ElectionContext {}

impl ConsumerContext for ElectionContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ours = |list: &TopicPartitionList| {
            list.find_partition(&self.topic, CHANGELOG_PARTITION)
                .is_some()
        };
        match rebalance {
            Rebalance::Assign(list) if ours(list) => {
                self.active.send_replace(true);
            }
            Rebalance::Revoke(list) if ours(list) => {
                self.active.send_replace(false);
            }
            _ => {}
        }
    }
}

/// Membership of the election group: the member assigned the changelog's one partition is
/// the active instance. Kept polling on its own thread, so the group hears from this
/// instance whatever the pipeline is doing; a process that stops (killed, frozen) stops
/// beating and loses the role after the session timeout. Leaves the group when dropped.
pub struct Election {
    active: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Election {
    pub fn join(settings: &KafkaSettings) -> Result<Self, ChangelogError> {
        let (tx, active) = watch::channel(false);
        let group = settings.failover.id();
        let mut config = settings.consumer_config(Some(&group));
        // The election reads nothing: it only ever starts at the end.
        config.set("auto.offset.reset", "latest");
        let consumer: BaseConsumer<ElectionContext> = config
            .create_with_context(ElectionContext {
                topic: settings.topics.state.clone(),
                active: tx,
            })
            .map_err(setup_error)?;
        consumer
            .subscribe(&[&settings.topics.state])
            .map_err(|error| ChangelogError::Kafka {
                topic: settings.topics.state.clone(),
                error,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("election".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    // Records are dropped: the changelog is read by its own reader.
                    let _ = consumer.poll(ELECTION_POLL);
                }
                // Dropping the consumer leaves the group: a standby takes over at once.
                drop(consumer);
            })
            .map_err(|e| SinkError::Setup(format!("cannot start the election thread: {e}")))?;
        Ok(Self {
            active,
            stop,
            thread: Some(thread),
        })
    }

    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// A receiver of the role, for a task that must stop when it is lost.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
