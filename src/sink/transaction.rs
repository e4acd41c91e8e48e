//! Exactly-once delivery, the producer's side: Kafka transactions over the sink's producer,
//! and the state's changes as records of the compacted changelog topic.
//!
//! Every call that may block (init, commit, abort) runs off the async threads with librdkafka's
//! own timeout for it (`Timeout::Never`: the rest of the transaction's time for commit and
//! abort, twice `transaction.timeout.ms` for init), as its docs ask; another timeout risks the
//! client's and the coordinator's views of the transaction parting. So each call is bounded by
//! the transaction timeout, and the caller may stop waiting sooner (shutdown, a lost role):
//! the call then goes on in the background on a producer that is never used again
//! ([`KafkaSink::renew_producer`] before the next term; its fence settles the transaction).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use super::changelog::CHANGELOG_PARTITION;
use super::config::Delivery;
use super::{KafkaSink, PendingDelivery, Producer, enqueue};
use crate::metrics;
use crate::state::Change;

/// How a transaction call failed, in the three classes librdkafka gives (an error with none
/// of them is treated as fatal, as its docs say).
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The producer's epoch is over: another instance initialised this transactional id, or
    /// the coordinator aborted a transaction of this producer that outlived
    /// `transaction.timeout.ms` (an outage). The error alone cannot tell which (librdkafka
    /// answers `_FENCED` to both); the failover asks the election group.
    #[error(
        "Kafka fenced this producer of transactional id {id} ({reason}): another instance          initialised the id, or a transaction outlived transaction.timeout.ms"
    )]
    Fenced { id: String, reason: String },
    /// The transaction must be aborted, and may then be tried again.
    #[error("the Kafka transaction failed and must be aborted: {0}")]
    Abortable(String),
    /// The call may be made again.
    #[error("a Kafka transaction call failed for a passing reason: {0}")]
    Retriable(String),
    #[error("the transactional Kafka producer failed for good: {0}")]
    Fatal(String),
    /// Kafka's ACLs refuse this user the transactional id (or idempotent writes): no later
    /// term can do better, so the instance exits.
    #[error(
        "Kafka refuses this user transactional id {id} ({reason}): an ACL must allow Write and \
         Describe on the transactional id, and IdempotentWrite on the cluster"
    )]
    Refused { id: String, reason: String },
    /// The caller stopped waiting (shutdown, a lost role); the producer is not used again.
    #[error("gave up waiting for a Kafka transaction call")]
    Interrupted,
}

impl TransactionError {
    fn of(error: KafkaError, id: String) -> Self {
        let reason = crate::redact::redact(&error.to_string()).into_owned();
        match &error {
            KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::Fenced => {
                TransactionError::Fenced { id, reason }
            }
            KafkaError::Transaction(e)
                if matches!(
                    e.code(),
                    RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                ) =>
            {
                TransactionError::Refused { id, reason }
            }
            KafkaError::Transaction(e) if e.is_fatal() => TransactionError::Fatal(reason),
            KafkaError::Transaction(e) if e.txn_requires_abort() => {
                TransactionError::Abortable(reason)
            }
            KafkaError::Transaction(e) if e.is_retriable() => TransactionError::Retriable(reason),
            KafkaError::Transaction(_) => TransactionError::Fatal(reason),
            // The flush before a commit timed out: nothing was sent to the coordinator yet.
            _ => TransactionError::Retriable(reason),
        }
    }
}

/// Whether this Kafka user may use the transactional id: initialises it with a producer of
/// its own, which fences any producer of the id, so only call it when no instance runs (the
/// election group has no member). `Err` with a line naming the ACL when refused.
pub fn check_transactional_access(
    settings: &super::KafkaSettings,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let id = settings.failover.id();
    let producer: rdkafka::producer::BaseProducer = settings
        .client_config()
        .create()
        .map_err(|e| super::setup_error(e).to_string())?;
    producer.init_transactions(timeout).map_err(|error| {
        let code = producer
            .client()
            .fatal_error()
            .map(|(code, _)| code)
            .or(error.rdkafka_error_code());
        match code {
            Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => format!(
                "the Kafka user may not use transactional id {id}: an ACL must allow Write \
                 (and Describe) on transactional id {id}"
            ),
            Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => format!(
                "the Kafka user may not use idempotent producers: an ACL must allow \
                 IdempotentWrite on the cluster (for transactional id {id})"
            ),
            _ => crate::redact::redact(&format!("initialising transactional id {id}: {error}"))
                .into_owned(),
        }
    })
}

impl KafkaSink {
    pub fn exactly_once(&self) -> bool {
        self.settings.delivery == Delivery::ExactlyOnce
    }

    /// The transactional id (and the election group) of this org and group.
    pub fn transactional_id(&self) -> String {
        self.settings.failover.id()
    }

    /// Runs one blocking transaction call off the async threads, until it returns or
    /// `give_way` is cancelled.
    async fn transaction_call(
        &self,
        give_way: Option<&CancellationToken>,
        call: impl FnOnce(&Producer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), TransactionError> {
        let producer = self.producer();
        let id = self.transactional_id();
        let used = producer.clone();
        let blocking = tokio::task::spawn_blocking(move || call(&used));
        let joined = match give_way {
            Some(token) => tokio::select! {
                joined = blocking => joined,
                _ = token.cancelled() => return Err(TransactionError::Interrupted),
            },
            None => blocking.await,
        };
        let result = joined
            .map_err(|e| TransactionError::Fatal(format!("the transaction call panicked: {e}")))?;
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                // A fenced or fatal producer says why; the call's error often only says "fatal".
                let error = match producer.client().fatal_error() {
                    Some((RDKafkaErrorCode::Fenced, reason)) => {
                        return Err(TransactionError::Fenced {
                            id,
                            reason: crate::redact::redact(&reason).into_owned(),
                        });
                    }
                    _ => error,
                };
                Err(TransactionError::of(error, id))
            }
        }
    }

    /// Fences every earlier producer of this transactional id: their open transaction is
    /// aborted, and anything they send later is refused. Waits while the coordinator is busy
    /// finishing an earlier transaction.
    pub async fn init_transactions(&self) -> Result<(), TransactionError> {
        let mut delays = super::KafkaRetryDelays::new();
        loop {
            match self
                .transaction_call(None, |p| p.init_transactions(Timeout::Never))
                .await
            {
                Err(TransactionError::Retriable(reason)) => {
                    let delay = delays.next_delay();
                    tracing::warn!(%reason, retry_in = ?delay, "Kafka did not initialise the transactional producer yet");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    pub async fn begin_transaction(&self) -> Result<(), TransactionError> {
        self.transaction_call(None, |p| p.begin_transaction()).await
    }

    /// Commits the open transaction (flushing what is queued first); gives up waiting when
    /// `give_way` is cancelled (the outcome is then settled by the next fence).
    pub async fn commit_transaction(
        &self,
        give_way: &CancellationToken,
    ) -> Result<(), TransactionError> {
        self.transaction_call(Some(give_way), |p| p.commit_transaction(Timeout::Never))
            .await
            .inspect(|()| metrics::transaction_ended("committed"))
    }

    /// Aborts the open transaction: nothing of it is ever visible to `read_committed`. Gives
    /// up waiting when `give_way` is cancelled.
    pub async fn abort_transaction(
        &self,
        give_way: &CancellationToken,
    ) -> Result<(), TransactionError> {
        self.transaction_call(Some(give_way), |p| p.abort_transaction(Timeout::Never))
            .await
            .inspect(|()| metrics::transaction_ended("aborted"))
    }

    /// Hands the state's changes to the producer as changelog records (in the open
    /// transaction), without waiting for Kafka.
    pub async fn start_changes(&self, changes: &[Change]) -> PendingDelivery {
        let producer = self.producer();
        let topic = self.topics().state.as_str();
        let mut slots = Vec::with_capacity(changes.len());
        for change in changes {
            let (key, value) = (change.key(), change.value());
            // The one partition, whatever the partitioner would pick for the key.
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .key(key.as_str())
                .partition(CHANGELOG_PARTITION);
            if let Some(value) = &value {
                record = record.payload(value.as_slice());
            }
            let size = value.as_ref().map_or(0, Vec::len);
            slots.push((size, enqueue(&producer, record).await));
        }
        PendingDelivery { producer, slots }
    }
}
