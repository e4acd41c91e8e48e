//! Exactly-once delivery's election of the one active instance: the member of the election
//! consumer group (over the changelog's single partition) assigned that partition. Also who
//! holds the role, as the group describes it, and whether this Kafka user may use the group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::watch;

use super::changelog::{CHANGELOG_PARTITION, ChangelogError};
use super::config::KafkaSettings;
use super::{SinkError, setup_error};

/// How often the election's consumer is polled: it serves the group's heartbeats and
/// rebalances, so it must turn well within the session timeout.
const ELECTION_POLL: Duration = Duration::from_millis(200);

/// What the election's thread learns, for its owner.
#[derive(Default)]
struct ElectionStatus {
    /// The last error the group gave (not a connection failure: those go to
    /// [`super::connection`]), and when.
    last_error: Mutex<Option<(Instant, String)>>,
}

/// Tells the election's owner when this instance gains or loses the changelog's partition.
struct ElectionContext {
    topic: String,
    active: watch::Sender<bool>,
}

impl ClientContext for ElectionContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::connection::librdkafka_log("election", level, facility, message);
    }

    // Errors come back from `poll` as well (the thread logs and counts them there).
    fn error(&self, _: KafkaError, _: &str) {}
}

impl ConsumerContext for ElectionContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ours = |list: &TopicPartitionList| {
            list.find_partition(&self.topic, CHANGELOG_PARTITION)
                .is_some()
        };
        match rebalance {
            Rebalance::Assign(list) if ours(list) => {
                // The election reads nothing: the active instance writes the changelog, and a
                // fetching election consumer would pull the whole tail only to drop it.
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(%error, "cannot pause the election's changelog partition; its records are fetched and dropped");
                }
                self.active.send_replace(true);
            }
            Rebalance::Revoke(list) if ours(list) => {
                self.active.send_replace(false);
            }
            _ => {}
        }
    }
}

/// How often one election error is logged again while it lasts.
const ELECTION_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// How long the election waits for its consumer to leave the group when dropped (a missing
/// coordinator would hold it much longer); then it leaves it behind.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);

/// The member of the election group that holds the changelog's partition, as the group
/// describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub client_id: String,
    pub host: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}",
            self.client_id,
            self.host.trim_start_matches('/')
        )
    }
}

/// The partitions of a consumer group member's assignment, from its bytes in Kafka's
/// consumer protocol (version, then per topic its name and partitions, then user data);
/// `None` if the bytes are not that.
pub fn assigned_partitions(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    }
    fn i16_(bytes: &mut &[u8]) -> Option<i16> {
        Some(i16::from_be_bytes(take(bytes, 2)?.try_into().ok()?))
    }
    fn i32_(bytes: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut rest = bytes;
    let _version = i16_(&mut rest)?;
    let topics = usize::try_from(i32_(&mut rest)?).ok()?;
    let mut assigned = Vec::new();
    for _ in 0..topics {
        let len = usize::try_from(i16_(&mut rest)?).ok()?;
        let topic = String::from_utf8(take(&mut rest, len)?.to_vec()).ok()?;
        let count = usize::try_from(i32_(&mut rest)?).ok()?;
        let partitions = (0..count)
            .map(|_| i32_(&mut rest))
            .collect::<Option<Vec<_>>>()?;
        assigned.push((topic, partitions));
    }
    Some(assigned)
}

/// Membership of the election group: the member assigned the changelog's one partition is
/// the active instance. Kept polling on its own thread, so the group hears from this
/// instance whatever the pipeline is doing; a process that stops (killed, frozen) stops
/// beating and loses the role after the session timeout. Leaves the group when dropped.
pub struct Election {
    active: watch::Receiver<bool>,
    consumer: Option<Arc<BaseConsumer<ElectionContext>>>,
    status: Arc<ElectionStatus>,
    group: String,
    topic: String,
    /// This member's `client.id`: unique per process, so the group's description tells it
    /// from the others, and names the host.
    client_id: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A `client.id` of this process's election member: the configured one (or "casestream"),
/// the host (the pod's name in Kubernetes), and a random part for two processes of one host.
fn member_client_id(configured: Option<&str>) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown-host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}.election.{host}.{}",
        configured.unwrap_or("casestream"),
        &random[..8]
    )
}

impl Election {
    pub fn join(settings: &KafkaSettings) -> Result<Self, ChangelogError> {
        let (tx, active) = watch::channel(false);
        let group = settings.failover.id();
        let topic = settings.topics.state.clone();
        let mut config = settings.consumer_config(Some(&group));
        let client_id = member_client_id(settings.properties.get("client.id").map(String::as_str));
        config.set("client.id", &client_id);
        // The election reads nothing (its partition is paused); were it ever to fetch, only
        // what comes after joining.
        config.set("auto.offset.reset", "latest");
        let consumer: BaseConsumer<ElectionContext> = config
            .create_with_context(ElectionContext {
                topic: topic.clone(),
                active: tx,
            })
            .map_err(setup_error)?;
        consumer
            .subscribe(&[&topic])
            .map_err(|error| ChangelogError::Kafka {
                topic: topic.clone(),
                error,
            })?;
        let consumer = Arc::new(consumer);
        let status = Arc::new(ElectionStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (consumer, status, stopped) = (consumer.clone(), status.clone(), stop.clone());
            let group = group.clone();
            std::thread::Builder::new()
                .name("election".into())
                .spawn(move || {
                    let mut logged: Option<(Instant, String)> = None;
                    while !stopped.load(Ordering::Relaxed) {
                        match consumer.poll(ELECTION_POLL) {
                            None => {}
                            Some(Ok(message)) => {
                                // Paused on assignment: a record here means the pause failed.
                                tracing::warn!(offset = message.offset(), "the election consumer fetched a changelog record (dropped)");
                            }
                            Some(Err(error)) if super::connection::is_connection_error(&error) => {
                                super::connection::failed("election", &error.to_string());
                            }
                            Some(Err(error)) => {
                                let reason = crate::redact::redact(&error.to_string()).into_owned();
                                crate::metrics::election_error(election_error_kind(&error));
                                let now = Instant::now();
                                let repeat = logged.as_ref().is_some_and(|(at, r)| {
                                    *r == reason && now.duration_since(*at) < ELECTION_ERROR_LOG_EVERY
                                });
                                if !repeat {
                                    tracing::error!(%group, %reason, "the election group refuses this instance: it stays a standby until this is fixed");
                                    logged = Some((now, reason.clone()));
                                }
                                *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some((now, reason));
                            }
                        }
                    }
                })
                .map_err(|e| SinkError::Setup(format!("cannot start the election thread: {e}")))?
        };
        Ok(Self {
            active,
            consumer: Some(consumer),
            status,
            group,
            topic,
            client_id,
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

    /// The last error the group gave, if it came within `window`.
    pub fn error_within(&self, window: Duration) -> Option<String> {
        let last = self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() <= window)
            .map(|(_, reason)| reason.clone())
    }

    /// A way to ask the group who holds the role, for a blocking thread.
    pub fn holder_query(&self) -> Option<HolderQuery> {
        Some(HolderQuery {
            consumer: self.consumer.clone()?,
            group: self.group.clone(),
            topic: self.topic.clone(),
            client_id: self.client_id.clone(),
        })
    }
}

/// Asks the election group who holds the changelog's partition.
pub struct HolderQuery {
    consumer: Arc<BaseConsumer<ElectionContext>>,
    group: String,
    topic: String,
    client_id: String,
}

impl HolderQuery {
    /// Which other member holds the changelog's partition, as the group describes it now:
    /// `Ok(None)` if no other member does (or the group is between assignments, when it
    /// describes none). Blocks up to `timeout`.
    pub fn other_holder(&self, timeout: Duration) -> Result<Option<Holder>, ChangelogError> {
        let groups = self
            .consumer
            .fetch_group_list(Some(&self.group), timeout)
            .map_err(|error| ChangelogError::Kafka {
                topic: self.topic.clone(),
                error,
            })?;
        let holder = groups
            .groups()
            .iter()
            .flat_map(|g| g.members())
            .filter(|m| m.client_id() != self.client_id)
            .find(|m| {
                m.assignment()
                    .and_then(assigned_partitions)
                    .is_some_and(|topics| {
                        topics
                            .iter()
                            .any(|(t, ps)| *t == self.topic && ps.contains(&CHANGELOG_PARTITION))
                    })
            })
            .map(|m| Holder {
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
            });
        Ok(holder)
    }
}

/// Whether this Kafka user may use the election group: asks for the group's committed
/// offsets (read only; needs Describe on the group, which Read implies). `Ok` with the
/// number of members the group has now, `Err` with a line naming the ACL when refused.
pub fn check_group_access(settings: &KafkaSettings, timeout: Duration) -> Result<usize, String> {
    let group = settings.failover.id();
    let topic = &settings.topics.state;
    let mut config = settings.consumer_config(Some(&group));
    config.set("client.id", member_client_id(None) + ".check");
    let consumer: BaseConsumer = config.create().map_err(|e| setup_error(e).to_string())?;
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, CHANGELOG_PARTITION);
    let refused = |error: KafkaError| match error.rdkafka_error_code() {
        Some(rdkafka::error::RDKafkaErrorCode::GroupAuthorizationFailed) => format!(
            "the Kafka user may not use consumer group {group} (the election of exactly-once \
             delivery): an ACL must allow Read on group {group}"
        ),
        _ => crate::redact::redact(&format!("asking for consumer group {group}: {error}"))
            .into_owned(),
    };
    if let Err(error) = consumer.committed_offsets(list, timeout) {
        // A refused group comes back as a timeout (librdkafka retries the coordinator lookup);
        // why is on the consumer's queue.
        let cause = std::iter::from_fn(|| consumer.poll(Duration::from_millis(100)))
            .take(50)
            .filter_map(Result::err)
            .find(|e| {
                e.rdkafka_error_code()
                    == Some(rdkafka::error::RDKafkaErrorCode::GroupAuthorizationFailed)
            });
        return Err(refused(cause.unwrap_or(error)));
    }
    let groups = consumer
        .fetch_group_list(Some(&group), timeout)
        .map_err(refused)?;
    Ok(groups.groups().iter().map(|g| g.members().len()).sum())
}

/// The `kind` label of an election error.
fn election_error_kind(error: &KafkaError) -> &'static str {
    use rdkafka::error::RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(GroupAuthorizationFailed) => "group_authorization",
        Some(TopicAuthorizationFailed) => "topic_authorization",
        Some(UnknownTopicOrPartition | UnknownTopic) => "unknown_topic",
        _ => "other",
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Dropping the consumer leaves the group, so a standby takes over at once; without a
        // coordinator that waits, so it is left to finish on its own after a while.
        if let Some(consumer) = self.consumer.take() {
            let (done, left) = std::sync::mpsc::channel();
            let leaving = std::thread::Builder::new()
                .name("election-leave".into())
                .spawn(move || {
                    drop(consumer);
                    let _ = done.send(());
                });
            if leaving.is_ok() && left.recv_timeout(LEAVE_WITHIN).is_err() {
                tracing::warn!(
                    "the election consumer did not leave its group in time (Kafka unreachable?); the group drops it after the session timeout"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assignment as Kafka's consumer protocol writes it.
    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut bytes = 1i16.to_be_bytes().to_vec();
        bytes.extend((topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        // User data: none.
        bytes.extend((-1i32).to_be_bytes());
        bytes
    }

    #[test]
    fn a_members_assignment_is_read_from_the_consumer_protocol() {
        let bytes = assignment(&[("org.state", &[0]), ("other", &[1, 2])]);
        assert_eq!(
            assigned_partitions(&bytes),
            Some(vec![
                ("org.state".to_owned(), vec![0]),
                ("other".to_owned(), vec![1, 2])
            ])
        );
        assert_eq!(assigned_partitions(&[]), Some(vec![]));
        assert_eq!(assigned_partitions(&assignment(&[])), Some(vec![]));
        // Cut short: not an assignment.
        assert_eq!(assigned_partitions(&bytes[..bytes.len() - 9]), None);
    }

    #[test]
    fn an_election_member_names_its_host() {
        let id = member_client_id(None);
        assert!(id.starts_with("casestream.election."), "{id}");
        assert_ne!(
            id,
            member_client_id(None),
            "two processes of one host differ"
        );
        assert!(member_client_id(Some("team-a")).starts_with("team-a.election."));
    }
}
