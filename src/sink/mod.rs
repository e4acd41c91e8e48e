//! The Kafka sink: an idempotent producer (`acks=all`) that publishes CloudEvents keyed by
//! case id, dead letters with the raw case and the reason, and the topics they go to.

pub mod changelog;
pub mod config;
pub mod connection;
pub mod dead_letter;
pub mod diagnose;
pub mod election;
pub mod encode;
mod topics;
pub mod transaction;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::events::CloudEvent;
use crate::metrics;
use config::{ENV_CREATE_TOPICS, ENV_TOPIC_STATE, property_env_name};
pub use config::{EventFormat, KafkaSettings, Topics};
pub use dead_letter::{DeadLetter, ErrorClass, classify};
use diagnose::KafkaContext;

/// Every producer shares one context: the last cause librdkafka gave survives a replacement.
type Producer = FutureProducer<KafkaContext>;

/// How long a metadata or admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot set up the Kafka client: {0}")]
    Setup(String),
    #[error(
        "the Kafka client refuses the librdkafka property `{property}` (set by {env} or the \
         config file's [kafka] table): {reason}"
    )]
    Property {
        property: String,
        env: String,
        reason: String,
    },
    #[error("Kafka did not acknowledge a record for topic {topic}: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error("Kafka is unreachable: {0}")]
    Unreachable(KafkaError),
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("topic {topic} does not exist and {ENV_CREATE_TOPICS} is false")]
    TopicMissing { topic: String },
    #[error(
        "the state changelog {topic} has {partitions} partitions; it needs exactly one (and \
         cleanup.policy=compact). A topic cannot lose partitions: move the state to a new topic \
         (`casestream state export`, then `state import` with {ENV_TOPIC_STATE} naming the new \
         one; a new topic alone starts an empty state, announcing the lookback's cases again)"
    )]
    ChangelogLayout { topic: String, partitions: usize },
    #[error(
        "the state changelog {topic} would lose records the state still needs: {problems}. Set \
         them in place (kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config PROPERTY=VALUE); another topic would start an empty state"
    )]
    ChangelogRetention { topic: String, problems: String },
    #[error(
        "cannot read the configuration of the state changelog {topic} ({reason}): casestream \
         checks that it keeps what the state needs before writing to it"
    )]
    ChangelogConfigUnreadable { topic: String, reason: String },
    #[error(
        "the state changelog {topic} does not exist yet, but {pinned} does: releases before this \
         one named {pinned} for every exactly-once deployment. Starting on {topic} would start \
         from an empty state (the lookback's cases announced again, pending surveys lost). If \
         {pinned} is this deployment's state, set {ENV_TOPIC_STATE}={pinned} (one deployment \
         only), or move it (`casestream state export` with {ENV_TOPIC_STATE}={pinned}, then \
         `state import` with the new name). If it is another deployment's, create {topic} \
         first (cleanup.policy=compact, one partition)"
    )]
    ChangelogMoved { topic: String, pinned: String },
}

/// The longest wait between attempts while Kafka is away.
const KAFKA_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Delays between attempts while Kafka is unreachable or not acknowledging: jittered,
/// growing from 0.5 s to 30 s, never giving up (the caller stops at shutdown).
pub struct KafkaRetryDelays(backon::ExponentialBackoff);

impl KafkaRetryDelays {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        use backon::BackoffBuilder;
        Self(
            backon::ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(KAFKA_RETRY_MAX_DELAY)
                .without_max_times()
                .build(),
        )
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Built without a maximum of attempts: the backoff never ends. backon's jitter adds up
        // to one more delay on top of the maximum, so the maximum is held here.
        self.0
            .next()
            .unwrap_or(KAFKA_RETRY_MAX_DELAY)
            .min(KAFKA_RETRY_MAX_DELAY)
    }
}

/// How long to wait before offering a record again to a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);
/// librdkafka's default `message.max.bytes`: the largest record the producer accepts.
const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// One record's delivery: acknowledged, or the error Kafka (or the producer) gave.
#[derive(Debug)]
pub struct RecordResult {
    /// Size of the record's value in bytes.
    pub size: usize,
    /// Where Kafka wrote it, once acknowledged.
    pub offset: Option<i64>,
    pub result: Result<(), KafkaError>,
}

enum Slot {
    Sent(rdkafka::producer::DeliveryFuture),
    Refused(KafkaError),
}

/// Records handed to the producer whose acknowledgements are still to come.
pub struct PendingDelivery {
    producer: Arc<Producer>,
    slots: Vec<(usize, Slot)>,
}

impl PendingDelivery {
    /// Waits for every acknowledgement: one result per record, in the order given.
    pub async fn wait(self, sink: &KafkaSink) -> Vec<RecordResult> {
        let mut results = Vec::with_capacity(self.slots.len());
        for (size, slot) in self.slots {
            let (offset, result) = match slot {
                Slot::Refused(error) => (None, Err(error)),
                Slot::Sent(delivery) => match delivery.await {
                    Ok(Ok(delivered)) => (Some(delivered.offset), Ok(())),
                    Ok(Err((error, _))) => (None, Err(error)),
                    Err(_) => (None, Err(KafkaError::Canceled)),
                },
            };
            results.push(RecordResult {
                size,
                offset,
                result,
            });
        }
        if results.iter().any(|r| r.result.is_err()) {
            sink.replace_producer_if_fatal(&self.producer);
        }
        results
    }
}

/// Hands one record to the producer, waiting while its queue is full.
async fn enqueue(producer: &Producer, mut record: FutureRecord<'_, str, [u8]>) -> Slot {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Slot::Sent(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((error, _)) => return Slot::Refused(error),
        }
    }
}

/// A record for the sink.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Event(CloudEvent),
    DeadLetter(DeadLetter),
}

pub struct KafkaSink {
    settings: KafkaSettings,
    config: ClientConfig,
    producer: Mutex<Arc<Producer>>,
    max_record_bytes: usize,
    replacements: AtomicU64,
    context: KafkaContext,
    /// The last diagnosis and the cause it explained: asked again only for a new cause, so
    /// a long outage does not probe the brokers again on every retry.
    explained: Mutex<Option<(Option<String>, String)>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A client set-up error that names the property and where it came from, and never quotes the
/// value (librdkafka's own message does: it could be a password); any other set-up error with
/// every registered secret masked.
fn setup_error(error: KafkaError) -> SinkError {
    match error {
        KafkaError::ClientConfig(_, description, property, value) => {
            let reason = crate::redact::mask(&description, [value.as_str()]).into_owned();
            SinkError::Property {
                env: property_env_name(&property),
                property,
                reason,
            }
        }
        // librdkafka names a property between backquotes when it refuses a combination (a
        // transactional producer's `message.timeout.ms`, say): name its setting too.
        KafkaError::ClientCreation(message) => {
            let message = crate::redact::redact(&message).into_owned();
            match message.split('`').nth(1).filter(|p| p.contains('.')) {
                Some(property) => SinkError::Setup(format!(
                    "{message} (set by {} or the config file's [kafka] table)",
                    property_env_name(property)
                )),
                None => SinkError::Setup(message),
            }
        }
        other => SinkError::Setup(crate::redact::redact(&other.to_string()).into_owned()),
    }
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings) -> Result<Self, SinkError> {
        // From here on every log line and error masks the secret values, whoever wrote them.
        settings.secrets().for_each(crate::redact::register);
        let config = settings.client_config();
        let context = KafkaContext::default();
        let producer: Producer = config
            .create_with_context(context.clone())
            .map_err(setup_error)?;
        let max_record_bytes = settings
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        Ok(Self {
            settings: settings.clone(),
            config,
            producer: Mutex::new(Arc::new(producer)),
            max_record_bytes,
            replacements: AtomicU64::new(0),
            context,
            explained: Mutex::new(None),
        })
    }

    /// Why no broker answers, in one line naming the setting to fix (it may ask the brokers
    /// again, for a few seconds, to tell look-alike causes apart).
    pub async fn explain_unreachable(&self) -> String {
        let cause = self.context.last_cause();
        if let Some((explained, line)) = &*self.explained.lock().unwrap_or_else(|p| p.into_inner())
            && *explained == cause
        {
            return line.clone();
        }
        let (config, asked) = (self.config.clone(), cause.clone());
        let line =
            tokio::task::spawn_blocking(move || diagnose::explain(&config, asked.as_deref()))
                .await
                .unwrap_or_else(|e| format!("the diagnosis failed: {e}"));
        *self.explained.lock().unwrap_or_else(|p| p.into_inner()) = Some((cause, line.clone()));
        line
    }

    fn producer(&self) -> Arc<Producer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn topics(&self) -> &Topics {
        &self.settings.topics
    }

    /// Publishes every record and waits until Kafka acknowledged all of them; the first
    /// error otherwise (some records may have been written).
    pub async fn publish(&self, records: &[Outgoing]) -> Result<(), SinkError> {
        let results = self.start_publish(records).await.wait(self).await;
        for (record, outcome) in records.iter().zip(results) {
            if let Err(error) = outcome.result {
                let topic = encode::topic(record, self.topics());
                return Err(SinkError::Delivery {
                    topic: topic.to_owned(),
                    error,
                });
            }
        }
        Ok(())
    }

    /// Hands every record to the producer and returns without waiting for Kafka, so the next
    /// page can be prepared while these are in flight. Waits only when the producer's queue
    /// is full. A record the producer refuses at once (too large, say) gets its error in its
    /// own slot; the others are still sent.
    pub async fn start_publish(&self, records: &[Outgoing]) -> PendingDelivery {
        let producer = self.producer();
        let mut slots = Vec::with_capacity(records.len());
        for record in records {
            let encoded = encode::record(record, self.topics(), self.settings.event_format);
            let size = encoded.payload.len();
            let headers = encoded.kafka_headers();
            let mut future_record = FutureRecord::to(encoded.topic)
                .payload(encoded.payload.as_slice())
                .headers(headers);
            if let Some(key) = encoded.key {
                future_record = future_record.key(key);
            }
            slots.push((size, enqueue(&producer, future_record).await));
        }
        PendingDelivery { producer, slots }
    }

    /// The largest record value the producer takes (`message.max.bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// How many times a producer with a fatal error was replaced.
    pub fn producer_replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }

    /// An idempotent producer can hit a fatal error (e.g. after a long outage); it is then
    /// unusable and a new one takes its place. Every page in flight on the dead producer
    /// reports it, so only the first report replaces it: the others find it already gone.
    /// The records are re-sent by the caller, with the same event ids.
    fn replace_producer_if_fatal(&self, failed: &Arc<Producer>) {
        // A transactional producer's fatal error is final (it may have been fenced): the
        // transaction's caller stops, it never goes on under a new producer.
        if self.exactly_once() {
            return;
        }
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        tracing::warn!(%code, %reason, "Kafka producer hit a fatal error; creating a new one");
        match self
            .config
            .create_with_context::<_, Producer>(self.context.clone())
        {
            Ok(fresh) => {
                *current = Arc::new(fresh);
                self.replacements.fetch_add(1, Ordering::Relaxed);
                metrics::producer_replaced();
            }
            Err(e) => {
                let error = setup_error(e);
                tracing::error!(error = %error, "cannot create a new Kafka producer");
            }
        }
    }

    /// Exactly-once delivery: a new transactional producer in place of the current one, before
    /// each term as the active instance. The old one may be fenced, fatal, or still waiting in
    /// a transaction call that was given up on; its `init_transactions` is the fence that
    /// settles whatever the old one left open.
    pub fn renew_producer(&self) -> Result<(), SinkError> {
        let fresh: Producer = self
            .config
            .create_with_context(self.context.clone())
            .map_err(setup_error)?;
        let old = std::mem::replace(
            &mut *self.producer.lock().unwrap_or_else(|p| p.into_inner()),
            Arc::new(fresh),
        );
        // Dropping a producer purges and waits for librdkafka's threads: off the async threads.
        std::thread::spawn(move || drop(old));
        Ok(())
    }

    /// Raises a fatal error on the current producer, as librdkafka's own tests do
    /// (`rd_kafka_test_fatal_error`), so the replacement path can be tested for real.
    #[doc(hidden)]
    pub fn inject_fatal_error_for_tests(&self, reason: &str) {
        let producer = self.producer();
        let reason = std::ffi::CString::new(reason).unwrap_or_default();
        // SAFETY: the handle belongs to `producer`, which lives across the call; the reason
        // is a valid C string.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer()
            .flush(timeout)
            .map_err(SinkError::Unreachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fault campaign (seed 12, docs/reliability.md): a standby waited 56 s
    /// between reads of the changelog after a broker outage of seconds, the jitter on top
    /// of the 30 s maximum.
    #[test]
    fn kafka_retry_delays_stay_within_their_maximum() {
        let mut delays = KafkaRetryDelays::new();
        let drawn: Vec<Duration> = (0..40).map(|_| delays.next_delay()).collect();
        assert!(
            drawn.iter().all(|d| *d <= KAFKA_RETRY_MAX_DELAY),
            "{drawn:?}"
        );
        assert!(
            drawn.iter().any(|d| *d >= KAFKA_RETRY_MAX_DELAY / 2),
            "{drawn:?}"
        );
    }

    #[test]
    fn the_largest_record_follows_message_max_bytes() {
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        let sink = KafkaSink::new(&settings).unwrap();
        assert_eq!(sink.max_record_bytes(), DEFAULT_MAX_RECORD_BYTES);
        settings
            .properties
            .insert("message.max.bytes".into(), "5000000".into());
        let sink = KafkaSink::new(&settings).unwrap();
        assert_eq!(sink.max_record_bytes(), 5_000_000);
    }

    /// librdkafka refuses a transactional producer whose records could outlive their
    /// transaction; the error names the setting, not a generic failure.
    #[test]
    fn a_message_timeout_above_the_transaction_timeout_is_refused_by_name() {
        let mut settings = KafkaSettings::new("127.0.0.1:1");
        settings.delivery = config::Delivery::ExactlyOnce;
        settings
            .properties
            .insert("message.timeout.ms".into(), "120000".into());
        let error = KafkaSink::new(&settings).unwrap_err().to_string();
        assert!(
            error.contains("KAFKA_MESSAGE_TIMEOUT_MS") && error.contains("transaction.timeout.ms"),
            "{error}"
        );
    }
}
