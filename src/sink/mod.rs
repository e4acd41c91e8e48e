//! The Kafka sink: an idempotent producer (`acks=all`) that publishes CloudEvents keyed by
//! case id, dead letters with the raw case and the reason, and the topics they go to.

pub mod dead_letter;
pub mod diagnose;
pub mod encode;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::{EventFormat, KafkaSettings, Topics, is_secret_property};
use crate::events::CloudEvent;
pub use dead_letter::{DeadLetter, ErrorClass, classify};
use diagnose::KafkaContext;

/// Every producer shares one context: the last cause librdkafka gave survives a replacement.
type Producer = FutureProducer<KafkaContext>;

/// How long a metadata or admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Defaults that an operator may override.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    // Fail a delivery after 2 minutes so the pipeline can report Kafka down and retry the
    // page itself, rather than librdkafka retrying silently for 5 minutes.
    ("message.timeout.ms", "120000"),
    ("client.id", "casestream"),
];
/// What the delivery guarantee rests on; an operator's setting cannot weaken it.
const PRODUCER_REQUIRED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];
/// Topics never get a replication factor above this by default.
const MAX_DEFAULT_REPLICATION: i32 = 3;

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
    #[error("topic {topic} does not exist and CASESTREAM_CREATE_TOPICS is false")]
    TopicMissing { topic: String },
}

/// Delays between attempts while Kafka is unreachable or not acknowledging: jittered,
/// growing from 0.5 s to 30 s, never giving up (the caller stops at shutdown).
pub fn kafka_retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build()
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
            let result = match slot {
                Slot::Refused(error) => Err(error),
                Slot::Sent(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((error, _))) => Err(error),
                    Err(_) => Err(KafkaError::Canceled),
                },
            };
            results.push(RecordResult { size, result });
        }
        if results.iter().any(|r| r.result.is_err()) {
            sink.replace_producer_if_fatal(&self.producer);
        }
        results
    }
}

/// A record for the sink.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Event(CloudEvent),
    DeadLetter(DeadLetter),
}

pub struct KafkaSink {
    config: ClientConfig,
    producer: Mutex<Arc<Producer>>,
    topics: Topics,
    format: EventFormat,
    max_record_bytes: usize,
    replacements: AtomicU64,
    context: KafkaContext,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topics", &self.topics)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// A client set-up error that names the property and where it came from, and never quotes the
/// value (librdkafka's own message does: it could be a password); any other set-up error with
/// every registered secret masked.
fn setup_error(error: KafkaError) -> SinkError {
    match error {
        KafkaError::ClientConfig(_, description, property, value) => {
            let reason = if value.is_empty() {
                description
            } else {
                description.replace(&value, crate::redact::MARK)
            };
            SinkError::Property {
                env: crate::config::property_env_name(&property),
                property,
                reason,
            }
        }
        other => SinkError::Setup(crate::redact::redact(&other.to_string()).into_owned()),
    }
}

/// The librdkafka configuration: our defaults, the operator's properties, our requirements.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in PRODUCER_DEFAULTS {
        config.set(*k, *v);
    }
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    for (k, v) in PRODUCER_REQUIRED {
        if let Some(given) = settings.properties.get(*k)
            && given != v
        {
            tracing::warn!(property = k, given = %given, "ignoring Kafka property: casestream needs {k}={v}");
        }
        config.set(*k, *v);
    }
    config
}

/// Property names and values for display, secrets masked.
pub fn describe_config(settings: &KafkaSettings) -> String {
    settings
        .properties
        .iter()
        .map(|(k, v)| {
            if is_secret_property(k) {
                format!("{k}={}", crate::redact::MARK)
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings) -> Result<Self, SinkError> {
        // From here on every log line and error masks the secret values, whoever wrote them.
        for (_, secret) in settings
            .properties
            .iter()
            .filter(|(k, _)| is_secret_property(k))
        {
            crate::redact::register(secret);
        }
        let config = client_config(settings);
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
            config,
            producer: Mutex::new(Arc::new(producer)),
            topics: settings.topics.clone(),
            format: settings.event_format,
            max_record_bytes,
            replacements: AtomicU64::new(0),
            context,
        })
    }

    /// Why no broker answers, in one line naming the setting to fix (it may ask the brokers
    /// again, for a few seconds, to tell look-alike causes apart).
    pub async fn explain_unreachable(&self) -> String {
        let (config, cause) = (self.config.clone(), self.context.last_cause());
        tokio::task::spawn_blocking(move || diagnose::explain(&config, cause.as_deref()))
            .await
            .unwrap_or_else(|e| format!("the diagnosis failed: {e}"))
    }

    fn producer(&self) -> Arc<Producer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Topic names and broker count, for one topic or (`None`) the whole cluster; fails unless a
    /// broker answers in time.
    async fn metadata(
        &self,
        topic: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<String>, usize), SinkError> {
        let producer = self.producer();
        let topic = topic.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), timeout)
                .map(|m| {
                    let names = m.topics().iter().map(|t| t.name().to_owned()).collect();
                    (names, m.brokers().len())
                })
        })
        .await
        .map_err(|_| SinkError::Unreachable(KafkaError::Canceled))?
        .map_err(SinkError::Unreachable)
    }

    /// Asks the cluster for the metadata of our cases topic only (never every topic of the
    /// cluster): the number of brokers, when one answers in time.
    pub async fn ping(&self, timeout: Duration) -> Result<usize, SinkError> {
        self.metadata(Some(&self.topics.cases), timeout)
            .await
            .map(|(_, brokers)| brokers)
    }

    fn topic_names(&self) -> [&str; 3] {
        [
            self.topics.cases.as_str(),
            self.topics.surveys.as_str(),
            self.topics.deadletter.as_str(),
        ]
    }

    /// Which of our topics the cluster does not have.
    pub async fn missing_topics(&self, timeout: Duration) -> Result<Vec<String>, SinkError> {
        let (existing, _) = self.metadata(None, timeout).await?;
        Ok(self
            .missing_from(&existing)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Our topics that are not among `existing`.
    fn missing_from(&self, existing: &[String]) -> Vec<&str> {
        self.topic_names()
            .into_iter()
            .filter(|n| !existing.iter().any(|e| e == n))
            .collect()
    }

    /// Creates missing topics (or, when creation is off, checks they exist).
    pub async fn ensure_topics(&self, settings: &KafkaSettings) -> Result<(), SinkError> {
        let (existing, brokers) = self.metadata(None, ADMIN_TIMEOUT).await?;
        let missing = self.missing_from(&existing);
        if missing.is_empty() {
            return Ok(());
        }
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
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    settings.topic_partitions,
                    TopicReplication::Fixed(replication),
                )
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

    /// Publishes every record and waits until Kafka acknowledged all of them; the first
    /// error otherwise (some records may have been written).
    pub async fn publish(&self, records: &[Outgoing]) -> Result<(), SinkError> {
        let results = self.start_publish(records).await.wait(self).await;
        for (record, outcome) in records.iter().zip(results) {
            if let Err(error) = outcome.result {
                let topic = encode::topic(record, &self.topics);
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
            let encoded = encode::record(record, &self.topics, self.format);
            let size = encoded.payload.len();
            let headers = encoded.kafka_headers();
            let mut future_record = FutureRecord::to(encoded.topic)
                .payload(&encoded.payload)
                .headers(headers);
            if let Some(key) = encoded.key {
                future_record = future_record.key(key);
            }
            loop {
                match producer.send_result(future_record) {
                    Ok(delivery) => {
                        slots.push((size, Slot::Sent(delivery)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    }
                    Err((error, _)) => {
                        slots.push((size, Slot::Refused(error)));
                        break;
                    }
                }
            }
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
                metrics::counter!("casestream_kafka_producer_replacements_total").increment(1);
            }
            Err(e) => {
                let error = setup_error(e);
                tracing::error!(error = %error, "cannot create a new Kafka producer");
            }
        }
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
    use crate::config::{EventFormat, Topics};

    fn settings(properties: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            topics: Topics {
                cases: "c".into(),
                surveys: "s".into(),
                deadletter: "d".into(),
            },
            event_format: EventFormat::Structured,
            create_topics: true,
            topic_partitions: 1,
            topic_replication: None,
        }
    }

    /// The delivery guarantee rests on these: an operator's setting cannot weaken them, while
    /// our other defaults give way to the operator's.
    #[test]
    fn producer_requirements_override_the_operator_and_defaults_do_not() {
        let config = client_config(&settings(&[
            ("bootstrap.servers", "k:9092"),
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("linger.ms", "50"),
        ]));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
        let plain = client_config(&settings(&[("bootstrap.servers", "k:9092")]));
        assert_eq!(plain.get("enable.idempotence"), Some("true"));
        assert_eq!(plain.get("acks"), Some("all"));
        assert_eq!(plain.get("message.timeout.ms"), Some("120000"));
    }

    #[test]
    fn the_largest_record_follows_message_max_bytes() {
        let sink = KafkaSink::new(&settings(&[("bootstrap.servers", "127.0.0.1:1")])).unwrap();
        assert_eq!(sink.max_record_bytes(), DEFAULT_MAX_RECORD_BYTES);
        let sink = KafkaSink::new(&settings(&[
            ("bootstrap.servers", "127.0.0.1:1"),
            ("message.max.bytes", "5000000"),
        ]))
        .unwrap();
        assert_eq!(sink.max_record_bytes(), 5_000_000);
    }
}
