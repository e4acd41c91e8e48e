//! Exactly-once delivery, the producer's side: Kafka transactions over the sink's producer,
//! and the state's changes as records of the compacted changelog topic.
//!
//! Every call that may block (init, commit, abort) runs off the async threads with librdkafka's
//! own timeout for it (`Timeout::Never`: the rest of the transaction's time), as its docs ask;
//! another timeout risks the client's and the coordinator's views of the transaction parting.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::changelog::CHANGELOG_PARTITION;
use super::config::Delivery;
use super::{KafkaSink, PendingDelivery, Producer, enqueue};
use crate::metrics;
use crate::state::Change;

/// How a transaction call failed, in the three classes librdkafka gives (an error with none
/// of them is treated as fatal, as its docs say).
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// Another instance with this transactional id took over: this producer is done for good.
    #[error(
        "another casestream instance with transactional id {id} took over and fenced this one \
         ({reason}); this instance stops publishing"
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
}

impl TransactionError {
    fn of(error: KafkaError, id: String) -> Self {
        let reason = crate::redact::redact(&error.to_string()).into_owned();
        match &error {
            KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::Fenced => {
                TransactionError::Fenced { id, reason }
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

impl KafkaSink {
    pub fn exactly_once(&self) -> bool {
        self.settings.delivery == Delivery::ExactlyOnce
    }

    /// The transactional id (and the election group) of this org and group.
    pub fn transactional_id(&self) -> String {
        self.settings.failover.id()
    }

    /// Runs one blocking transaction call off the async threads.
    async fn transaction_call(
        &self,
        call: impl FnOnce(&Producer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), TransactionError> {
        let producer = self.producer();
        let id = self.transactional_id();
        let result = tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|e| TransactionError::Fatal(format!("the transaction call panicked: {e}")))?;
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                // A fenced or fatal producer says why; the call's error often only says "fatal".
                let error = match self.producer().client().fatal_error() {
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
                .transaction_call(|p| p.init_transactions(Timeout::Never))
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
        self.transaction_call(|p| p.begin_transaction()).await
    }

    /// Commits the open transaction (flushing what is queued first).
    pub async fn commit_transaction(&self) -> Result<(), TransactionError> {
        self.transaction_call(|p| p.commit_transaction(Timeout::Never))
            .await
            .inspect(|()| metrics::transaction_ended("committed"))
    }

    /// Aborts the open transaction: nothing of it is ever visible to `read_committed`.
    pub async fn abort_transaction(&self) -> Result<(), TransactionError> {
        self.transaction_call(|p| p.abort_transaction(Timeout::Never))
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
