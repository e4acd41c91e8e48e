//! The sink's settings: librdkafka properties (secrets among them), topics, event format, and
//! the producer configuration the delivery guarantee rests on.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::events::EventType;

pub const ENV_TOPIC_CASES: &str = "CASESTREAM_TOPIC_CASES";
pub const ENV_TOPIC_SURVEYS: &str = "CASESTREAM_TOPIC_SURVEYS";
pub const ENV_TOPIC_DEADLETTER: &str = "CASESTREAM_TOPIC_DEADLETTER";
pub const ENV_EVENT_FORMAT: &str = "CASESTREAM_EVENT_FORMAT";
pub const ENV_CREATE_TOPICS: &str = "CASESTREAM_CREATE_TOPICS";
pub const ENV_TOPIC_PARTITIONS: &str = "CASESTREAM_TOPIC_PARTITIONS";
pub const ENV_TOPIC_REPLICATION: &str = "CASESTREAM_TOPIC_REPLICATION";
pub const ENV_DELIVERY: &str = "CASESTREAM_DELIVERY";
pub const ENV_TOPIC_STATE: &str = "CASESTREAM_TOPIC_STATE";
pub const ENV_GROUP: &str = "CASESTREAM_GROUP";
pub const ENV_FAILOVER_TIMEOUT: &str = "CASESTREAM_FAILOVER_TIMEOUT";
/// `KAFKA_<NAME>` sets the librdkafka property `<name>` ([`property_env_name`]).
pub const KAFKA_ENV_PREFIX: &str = "KAFKA_";
pub const BOOTSTRAP_SERVERS: &str = "bootstrap.servers";

pub const DEFAULT_TOPIC_CASES: &str = "snapengage.cases";
pub const DEFAULT_TOPIC_SURVEYS: &str = "snapengage.surveys";
pub const DEFAULT_TOPIC_DEADLETTER: &str = "snapengage.deadletter";
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 6;
/// The election group's session timeout: how long a dead active instance keeps its role.
/// Brokers accept 6 s to 30 min (classic protocol, `group.min.session.timeout.ms`).
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// A transaction is aborted by the coordinator after this long (librdkafka's default).
const TRANSACTION_TIMEOUT_MS: u64 = 60_000;
/// In exactly-once delivery a record must fail well before its transaction times out, or
/// the coordinator aborts it and fences the producer first; librdkafka refuses a value above
/// `transaction.timeout.ms`.
const TRANSACTIONAL_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// Properties of a producer only: left out of the changelog's consumers, which would warn.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.size",
    "batch.num.messages",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "message.send.max.retries",
    "transactional.id",
    "transaction.timeout.ms",
    "partitioner",
    "sticky.partitioning.linger.ms",
];

/// Consumer properties an operator may not pass on to the changelog's reader and election,
/// which set only some of them (the rest they always set, over the operator's): the election
/// needs the classic protocol (KIP-848 refuses a client-side session timeout) and dynamic
/// members (a static member leaves no group, and a duplicate instance id fences the other).
const CONSUMER_FORCED: &[&str] = &[
    "group.protocol",
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// What a consumer of casestream's topics is promised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every event at least once; after a crash a page's events may be sent again (same ids).
    AtLeastOnce,
    /// Events, dead letters and state changes of a page in one Kafka transaction: consumers
    /// reading `read_committed` see every event once. The state lives in the changelog topic.
    ExactlyOnce,
}

impl std::str::FromStr for Delivery {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "at-least-once" => Ok(Delivery::AtLeastOnce),
            "exactly-once" => Ok(Delivery::ExactlyOnce),
            _ => Err("must be `at-least-once` or `exactly-once`"),
        }
    }
}

/// Who shares one changelog and one transactional id, and how fast a dead active instance
/// is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The SnapEngage org: instances of one org fence each other.
    pub org: String,
    /// Separates deployments of one org that must not fence each other.
    pub group: Option<String>,
    /// The election group's `session.timeout.ms`.
    pub timeout: Duration,
}

impl Failover {
    /// The transactional id and the election's consumer group: one per org and group.
    pub fn id(&self) -> String {
        match &self.group {
            Some(group) => format!("casestream.{}.{group}", self.org),
            None => format!("casestream.{}", self.org),
        }
    }
}

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

/// How events are laid out in Kafka records (CloudEvents Kafka protocol binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    /// The whole event as JSON in the value.
    Structured,
    /// `ce_*` headers, the data as the value.
    Binary,
}

impl std::str::FromStr for EventFormat {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "structured" => Ok(EventFormat::Structured),
            "binary" => Ok(EventFormat::Binary),
            _ => Err("must be `structured` or `binary`"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub cases: String,
    pub surveys: String,
    pub deadletter: String,
    /// The changelog of the state (exactly-once delivery only); by default
    /// `casestream.<org>[.<group>].state`, one per deployment: a changelog shared by two
    /// deployments would mix their states, and one's open transaction would hold back the
    /// other's reads (the last stable offset is the whole partition's).
    pub state: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            cases: DEFAULT_TOPIC_CASES.into(),
            surveys: DEFAULT_TOPIC_SURVEYS.into(),
            deadletter: DEFAULT_TOPIC_DEADLETTER.into(),
            // Derived from the org and group ([`KafkaSettings::fill_state_topic`]).
            state: String::new(),
        }
    }
}

impl Topics {
    /// The topic of an event type.
    pub fn for_event(&self, event_type: EventType) -> &str {
        match event_type {
            EventType::Created => &self.cases,
            EventType::Survey => &self.surveys,
        }
    }

    /// The topics events and dead letters go to.
    pub fn all(&self) -> [&str; 3] {
        [&self.cases, &self.surveys, &self.deadletter]
    }
}

#[derive(Clone, PartialEq)]
pub struct KafkaSettings {
    /// librdkafka properties, `bootstrap.servers` included ([`check_properties`]).
    pub properties: BTreeMap<String, String>,
    pub topics: Topics,
    pub event_format: EventFormat,
    /// Create missing topics at start; otherwise only check they exist.
    pub create_topics: bool,
    pub topic_partitions: i32,
    /// `None`: as many replicas as brokers, up to three.
    pub topic_replication: Option<i32>,
    pub delivery: Delivery,
    pub failover: Failover,
}

impl KafkaSettings {
    /// The defaults, for these bootstrap servers.
    pub fn new(bootstrap_servers: &str) -> Self {
        Self {
            properties: BTreeMap::from([(BOOTSTRAP_SERVERS.to_owned(), bootstrap_servers.into())]),
            topics: Topics::default(),
            event_format: EventFormat::Structured,
            create_topics: true,
            topic_partitions: DEFAULT_TOPIC_PARTITIONS,
            topic_replication: None,
            delivery: Delivery::AtLeastOnce,
            failover: Failover {
                org: String::new(),
                group: None,
                timeout: DEFAULT_FAILOVER_TIMEOUT,
            },
        }
    }

    fn shown_properties(&self) -> BTreeMap<&str, &str> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    crate::redact::MARK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect()
    }

    /// The values of the secret properties: to be masked wherever they could be printed.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.properties
            .iter()
            .filter(|(k, _)| is_secret_property(k))
            .map(|(_, v)| v.as_str())
    }

    /// The librdkafka configuration: our defaults, the operator's properties, our
    /// requirements.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in PRODUCER_DEFAULTS {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        for (k, v) in PRODUCER_REQUIRED {
            if let Some(given) = self.properties.get(*k)
                && given != v
            {
                tracing::warn!(property = k, given = %given, "ignoring Kafka property: casestream needs {k}={v}");
            }
            config.set(*k, *v);
        }
        if self.delivery == Delivery::ExactlyOnce {
            config.set("transactional.id", self.failover.id());
            if !self.properties.contains_key("transaction.timeout.ms") {
                config.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string());
            }
            if !self.properties.contains_key("message.timeout.ms") {
                // Half the transaction's time, at most 30 s.
                let txn: u64 = config
                    .get("transaction.timeout.ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(TRANSACTION_TIMEOUT_MS);
                let timeout = (txn / 2).clamp(1, TRANSACTIONAL_MESSAGE_TIMEOUT_MS);
                config.set("message.timeout.ms", timeout.to_string());
            }
        }
        config
    }

    /// Names the changelog after the org and group unless it was named.
    pub fn fill_state_topic(&mut self) {
        if self.topics.state.is_empty() {
            self.topics.state = format!("{}.state", self.failover.id());
        }
    }

    /// A consumer of the changelog: the connection and security properties the operator set,
    /// reading committed records only, never committing offsets (the store keeps its own).
    pub fn consumer_config(&self, group: Option<&str>) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in &self.properties {
            if !PRODUCER_ONLY.contains(&k.as_str()) && !CONSUMER_FORCED.contains(&k.as_str()) {
                config.set(k, v);
            }
        }
        config
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        if let Some(group) = group {
            let timeout = self.failover.timeout.as_millis().to_string();
            // A third of the session, as Kafka advises: a beat or two may be lost.
            let beat = (self.failover.timeout.as_millis() / 3).max(1).to_string();
            config
                .set("group.id", group)
                .set("session.timeout.ms", timeout)
                .set("heartbeat.interval.ms", beat)
                // The active instance keeps its role when another joins.
                .set("partition.assignment.strategy", "cooperative-sticky");
        } else {
            // Assigned by hand: a group id is still required by librdkafka's consumer.
            config.set("group.id", format!("{}.reader", self.failover.id()));
        }
        config
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("properties", &self.shown_properties())
            .field("topics", &self.topics)
            .field("event_format", &self.event_format)
            .field("create_topics", &self.create_topics)
            .field("delivery", &self.delivery)
            .field("failover", &self.failover)
            .finish_non_exhaustive()
    }
}

/// Property names whose values are secrets: never printed.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl.keystore.key",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// The environment variable that sets a librdkafka property.
pub fn property_env_name(property: &str) -> String {
    format!(
        "{KAFKA_ENV_PREFIX}{}",
        property.to_ascii_uppercase().replace('.', "_")
    )
}

/// The librdkafka property a `KAFKA_<NAME>` variable sets, if it is one: not the JVM tools'
/// own settings, nor a service link Kubernetes injects for a Service named `kafka...`.
pub fn property_of_env(name: &str) -> Option<String> {
    const NOT_PROPERTIES: &[&str] = &[
        "KAFKA_HOME",
        "KAFKA_OPTS",
        "KAFKA_HEAP_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_JMX_OPTS",
    ];
    let property = name.strip_prefix(KAFKA_ENV_PREFIX)?;
    if property.is_empty() || NOT_PROPERTIES.contains(&name) || is_service_link(name) {
        return None;
    }
    Some(property.to_ascii_lowercase().replace('_', "."))
}

/// A Kubernetes service-link variable, by its shape: for a Service `kafka-ui` Kubernetes sets
/// `KAFKA_UI_SERVICE_HOST`, `KAFKA_UI_SERVICE_PORT[_<NAME>]`, `KAFKA_UI_PORT` and
/// `KAFKA_UI_PORT_<n>_<PROTO>[_ADDR|_PORT|_PROTO]`. No librdkafka property has these shapes.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") || name.ends_with("_PORT")
    {
        return true;
    }
    // `..._PORT_<n>_<PROTO>...`
    name.match_indices("_PORT_").any(|(i, m)| {
        let rest = &name[i + m.len()..];
        let mut parts = rest.split('_');
        let number = parts
            .next()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let proto = parts
            .next()
            .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
        number && proto
    })
}

/// Why a set of properties cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum PropertyProblem {
    /// This property must be set.
    Missing(&'static str),
    /// This property is refused, for this reason; its value is never quoted.
    Refused(&'static str, String),
}

/// Properties casestream can run with: `bootstrap.servers` set, no Java-only JAAS line.
pub fn check_properties(properties: &BTreeMap<String, String>) -> Result<(), PropertyProblem> {
    if properties
        .get(BOOTSTRAP_SERVERS)
        .is_none_or(|s| s.trim().is_empty())
    {
        return Err(PropertyProblem::Missing(BOOTSTRAP_SERVERS));
    }
    // The Java client's one-line JAAS setting carries the password; librdkafka has no such
    // property.
    if properties.contains_key("sasl.jaas.config") {
        return Err(PropertyProblem::Refused(
            "sasl.jaas.config",
            format!(
                "the Java client's JAAS line is not a librdkafka setting; set {} and {} (with {}) \
                 instead",
                property_env_name("sasl.username"),
                property_env_name("sasl.password"),
                property_env_name("sasl.mechanisms"),
            ),
        ));
    }
    Ok(())
}

/// Kafka's own rule for topic names.
pub fn check_topic_name(name: &str) -> Result<(), &'static str> {
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal {
        Ok(())
    } else {
        Err("a Kafka topic name is 1-249 characters of a-z, A-Z, 0-9, `.`, `_`, `-`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(properties: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaSettings::new("unused")
        }
    }

    /// The delivery guarantee rests on these: an operator's setting cannot weaken them, while
    /// our other defaults give way to the operator's.
    #[test]
    fn producer_requirements_override_the_operator_and_defaults_do_not() {
        let config = settings(&[
            ("bootstrap.servers", "k:9092"),
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("linger.ms", "50"),
        ])
        .client_config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
        let plain = KafkaSettings::new("k:9092").client_config();
        assert_eq!(plain.get("enable.idempotence"), Some("true"));
        assert_eq!(plain.get("acks"), Some("all"));
        assert_eq!(plain.get("message.timeout.ms"), Some("120000"));
    }

    #[test]
    fn exactly_once_makes_a_transactional_producer_whose_records_fail_before_the_transaction() {
        let mut eo = settings(&[("bootstrap.servers", "k:9092")]);
        eo.delivery = Delivery::ExactlyOnce;
        eo.failover.org = "org1".into();
        let config = eo.client_config();
        assert_eq!(config.get("transactional.id"), Some("casestream.org1"));
        assert_eq!(config.get("transaction.timeout.ms"), Some("60000"));
        assert_eq!(config.get("message.timeout.ms"), Some("30000"));
        eo.failover.group = Some("blue".into());
        eo.properties
            .insert("message.timeout.ms".into(), "20000".into());
        let config = eo.client_config();
        assert_eq!(config.get("transactional.id"), Some("casestream.org1.blue"));
        assert_eq!(
            config.get("message.timeout.ms"),
            Some("20000"),
            "the operator's value"
        );
        let alo = settings(&[("bootstrap.servers", "k:9092")]).client_config();
        assert_eq!(alo.get("transactional.id"), None);
    }

    #[test]
    fn changelog_consumers_take_the_connection_but_not_the_producer_properties() {
        let mut eo = settings(&[
            ("bootstrap.servers", "k:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "pw"),
            ("linger.ms", "50"),
            ("acks", "all"),
        ]);
        eo.failover.org = "org1".into();
        let reader = eo.consumer_config(None);
        assert_eq!(reader.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(reader.get("sasl.password"), Some("pw"));
        assert_eq!(reader.get("isolation.level"), Some("read_committed"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        for producer_only in ["linger.ms", "acks"] {
            assert_eq!(reader.get(producer_only), None, "{producer_only}");
        }
        let election = eo.consumer_config(Some("casestream.org1"));
        assert_eq!(election.get("group.id"), Some("casestream.org1"));
        assert_eq!(election.get("session.timeout.ms"), Some("10000"));
        assert_eq!(election.get("heartbeat.interval.ms"), Some("3333"));
        assert_eq!(
            election.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn service_links_are_recognised_by_their_shape() {
        for name in [
            "KAFKA_PORT",
            "KAFKA_SERVICE_HOST",
            "KAFKA_SERVICE_PORT",
            "KAFKA_PORT_9092_TCP",
            "KAFKA_PORT_9092_TCP_ADDR",
            "KAFKA_UI_SERVICE_HOST",
            "KAFKA_UI_SERVICE_PORT",
            "KAFKA_UI_SERVICE_PORT_HTTP",
            "KAFKA_UI_PORT",
            "KAFKA_UI_PORT_8080_TCP_PROTO",
            "KAFKA_CONNECT_PORT_8083_UDP",
            "KAFKA_HEAP_OPTS",
            "KAFKA_",
        ] {
            assert_eq!(property_of_env(name), None, "{name} is not a property");
        }
        for (name, property) in [
            ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap.servers"),
            ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
            ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
            ("KAFKA_LINGER_MS", "linger.ms"),
            ("KAFKA_SASL_PASSWORD", "sasl.password"),
            ("KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
            ("KAFKA_SOCKET_KEEPALIVE_ENABLE", "socket.keepalive.enable"),
            (
                "KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS",
                "topic.metadata.refresh.interval.ms",
            ),
        ] {
            assert_eq!(property_of_env(name).as_deref(), Some(property));
            assert_eq!(property_env_name(property), name);
        }
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let s = settings(&[
            ("bootstrap.servers", "k:9092"),
            ("sasl.password", "pw-777"),
            ("ssl.key.pem", "pem-888"),
            ("sasl.username", "svc"),
        ]);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("pw-777") && !shown.contains("pem-888"),
            "{shown}"
        );
        assert!(shown.contains("svc"), "{shown}");
        let mut secrets: Vec<&str> = s.secrets().collect();
        secrets.sort_unstable();
        assert_eq!(secrets, ["pem-888", "pw-777"]);
    }

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for good in ["snapengage.cases", "a", "A-b_c.9", &"x".repeat(249)] {
            assert_eq!(check_topic_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "bad topic!", "ü", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad}");
        }
    }
}
