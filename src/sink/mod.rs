//! The Kafka sink: an idempotent producer (`acks=all`) that publishes CloudEvents keyed by
//! case id, dead letters with the raw case and the reason, and the topics they go to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::{EventFormat, KafkaSettings, Topics, is_secret_property};
use crate::events::{CloudEvent, STRUCTURED_CONTENT_TYPE, TYPE_CREATED};

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
    Setup(KafkaError),
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

/// Records handed to the producer whose acknowledgements are still to come.
pub struct PendingDelivery {
    producer: Arc<FutureProducer>,
    deliveries: Vec<(String, rdkafka::producer::DeliveryFuture)>,
    failed: Option<SinkError>,
}

impl PendingDelivery {
    /// Waits for every acknowledgement; the first failure, if any.
    pub async fn wait(self, sink: &KafkaSink) -> Result<(), SinkError> {
        let mut first_error = self.failed;
        for (topic, delivery) in self.deliveries {
            let error = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => error,
                Err(_) => KafkaError::Canceled,
            };
            first_error.get_or_insert(SinkError::Delivery { topic, error });
        }
        match first_error {
            None => Ok(()),
            Some(error) => {
                sink.replace_producer_if_fatal(&self.producer);
                Err(error)
            }
        }
    }
}

/// A record for the sink.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Event(CloudEvent),
    DeadLetter(DeadLetter),
}

/// A case that could not be processed, kept with the reason.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub org_id: String,
    pub widget_id: String,
    /// The case id, when one could be read.
    pub key: Option<String>,
    /// The case as received.
    pub raw: Vec<u8>,
    pub reason: String,
}

pub struct KafkaSink {
    config: ClientConfig,
    producer: Mutex<Arc<FutureProducer>>,
    topics: Topics,
    format: EventFormat,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topics", &self.topics)
            .field("format", &self.format)
            .finish_non_exhaustive()
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
                format!("{k}=[REDACTED]")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings) -> Result<Self, SinkError> {
        let config = client_config(settings);
        let producer: FutureProducer = config.create().map_err(SinkError::Setup)?;
        Ok(Self {
            config,
            producer: Mutex::new(Arc::new(producer)),
            topics: settings.topics.clone(),
            format: settings.event_format,
        })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The cluster's topic names and broker count; fails unless a broker answers in time.
    async fn metadata(&self, timeout: Duration) -> Result<(Vec<String>, usize), SinkError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|m| {
                let names = m.topics().iter().map(|t| t.name().to_owned()).collect();
                (names, m.brokers().len())
            })
        })
        .await
        .map_err(|_| SinkError::Unreachable(KafkaError::Canceled))?
        .map_err(SinkError::Unreachable)
    }

    /// Asks the cluster for its metadata: the number of brokers, when one answers in time.
    pub async fn ping(&self, timeout: Duration) -> Result<usize, SinkError> {
        self.metadata(timeout).await.map(|(_, brokers)| brokers)
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
        let (existing, _) = self.metadata(timeout).await?;
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
        let (existing, brokers) = self.metadata(ADMIN_TIMEOUT).await?;
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
        let admin: AdminClient<DefaultClientContext> =
            self.config.create().map_err(SinkError::Setup)?;
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

    /// Publishes every record and waits until Kafka acknowledged all of them. On error some
    /// may have been written; the caller sends the whole batch again (same event ids).
    pub async fn publish(&self, records: &[Outgoing]) -> Result<(), SinkError> {
        self.start_publish(records).await.wait(self).await
    }

    /// Hands every record to the producer and returns without waiting for Kafka, so the next
    /// page can be prepared while these are in flight. Waits only when the producer's queue
    /// is full.
    pub async fn start_publish(&self, records: &[Outgoing]) -> PendingDelivery {
        let producer = self.producer();
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let (topic, key, payload, headers) = self.encode(record);
            let mut future_record = FutureRecord::to(topic).payload(&payload).headers(headers);
            if let Some(key) = key {
                future_record = future_record.key(key);
            }
            loop {
                match producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push((topic.to_owned(), delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(QUEUE_FULL_WAIT).await;
                    }
                    Err((error, _)) => {
                        return PendingDelivery {
                            producer,
                            deliveries,
                            failed: Some(SinkError::Delivery {
                                topic: topic.to_owned(),
                                error,
                            }),
                        };
                    }
                }
            }
        }
        PendingDelivery {
            producer,
            deliveries,
            failed: None,
        }
    }

    /// An idempotent producer can hit a fatal error (e.g. after a long outage); it is then
    /// unusable and a new one takes its place. The batch is re-sent by the caller.
    fn replace_producer_if_fatal(&self, failed: &Arc<FutureProducer>) {
        if let Some((code, reason)) = failed.client().fatal_error() {
            tracing::warn!(%code, %reason, "Kafka producer hit a fatal error; creating a new one");
            match self.config.create::<FutureProducer>() {
                Ok(fresh) => {
                    *self.producer.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh)
                }
                Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
            }
        }
    }

    fn encode<'a>(
        &'a self,
        record: &'a Outgoing,
    ) -> (&'a str, Option<&'a str>, Vec<u8>, OwnedHeaders) {
        match record {
            Outgoing::Event(event) => {
                let topic = if event.event_type == TYPE_CREATED {
                    self.topics.cases.as_str()
                } else {
                    self.topics.surveys.as_str()
                };
                let (payload, headers) = match self.format {
                    EventFormat::Structured => (
                        event.to_structured_bytes(),
                        OwnedHeaders::new().insert(Header {
                            key: "content-type",
                            value: Some(STRUCTURED_CONTENT_TYPE),
                        }),
                    ),
                    EventFormat::Binary => {
                        let headers = event.binary_headers().into_iter().fold(
                            OwnedHeaders::new(),
                            |h, (key, value)| {
                                h.insert(Header {
                                    key,
                                    value: Some(value.as_str()),
                                })
                            },
                        );
                        (event.data_bytes(), headers)
                    }
                };
                (topic, Some(event.subject.as_str()), payload, headers)
            }
            Outgoing::DeadLetter(dead) => {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "casestream_reason",
                        value: Some(dead.reason.as_str()),
                    })
                    .insert(Header {
                        key: "casestream_org_id",
                        value: Some(dead.org_id.as_str()),
                    })
                    .insert(Header {
                        key: "casestream_widget_id",
                        value: Some(dead.widget_id.as_str()),
                    });
                (
                    self.topics.deadletter.as_str(),
                    dead.key.as_deref(),
                    dead.raw.clone(),
                    headers,
                )
            }
        }
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer()
            .flush(timeout)
            .map_err(SinkError::Unreachable)
    }
}
