//! One typed configuration, built once from, in rising priority: defaults, a TOML file,
//! environment variables, command-line flags. Every error names the setting at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::snapengage::client::{
    DEFAULT_API_URL, DEFAULT_MAX_BODY, DEFAULT_MAX_PAGES, DEFAULT_RATE_LIMIT_PER_SEC, RetryPolicy,
};

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SURVEY_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_STATE_DIR: &str = "./state";
pub const DEFAULT_TOPIC_CASES: &str = "snapengage.cases";
pub const DEFAULT_TOPIC_SURVEYS: &str = "snapengage.surveys";
pub const DEFAULT_TOPIC_DEADLETTER: &str = "snapengage.deadletter";
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8080";
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 6;

/// How events are laid out in Kafka records (CloudEvents Kafka protocol binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    /// The whole event as JSON in the value.
    Structured,
    /// `ce_*` headers, the data as the value.
    Binary,
}

/// How `start`/`end` are sent: whole days (documented) or datetimes (an option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowMode {
    Dates,
    Datetimes,
}

#[derive(Clone, Debug)]
pub struct Topics {
    pub cases: String,
    pub surveys: String,
    pub deadletter: String,
}

#[derive(Clone)]
pub struct KafkaSettings {
    /// librdkafka properties, `bootstrap.servers` included.
    pub properties: BTreeMap<String, String>,
    pub topics: Topics,
    pub event_format: EventFormat,
    /// Create missing topics at start; otherwise only check they exist.
    pub create_topics: bool,
    pub topic_partitions: i32,
    /// `None`: as many replicas as brokers, up to three.
    pub topic_replication: Option<i32>,
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

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    crate::redact::MARK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("properties", &shown)
            .field("topics", &self.topics)
            .field("event_format", &self.event_format)
            .field("create_topics", &self.create_topics)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub api_url: Url,
    pub org_id: String,
    pub api_token: SecretString,
    /// Where the token was read from, if from a file: read again when the API answers 401
    /// (a rotated Kubernetes Secret updates the mounted file in place).
    pub api_token_file: Option<PathBuf>,
    pub widget_ids: Vec<String>,
    pub rate_limit: f64,
    pub retry: RetryPolicy,
    /// Pages one window may take before it is given up (CASESTREAM_MAX_PAGES).
    pub max_pages: usize,
    /// The largest Logs API body read, in bytes (CASESTREAM_MAX_BODY).
    pub max_body: usize,
    pub window_mode: WindowMode,
    pub kafka: KafkaSettings,
    pub state_dir: PathBuf,
    pub poll_interval: Duration,
    pub settle: Duration,
    pub lookback: Duration,
    pub survey_horizon: Duration,
    pub since: Option<NaiveDate>,
    pub admin_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting} is required but not set")]
    Missing { setting: &'static str },
    #[error("{setting} = `{value}` is invalid: {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot read the API token file {path} (SNAPENGAGE_API_TOKEN_FILE): {reason}")]
    TokenFile { path: PathBuf, reason: String },
}

/// A scalar from TOML or the environment, kept as text until validation.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// A list given as a TOML array or a comma-separated string.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum List {
    Items(Vec<String>),
    Text(String),
}

impl List {
    fn items(&self) -> Vec<String> {
        let raw: Vec<String> = match self {
            List::Items(v) => v.clone(),
            List::Text(s) => s.split(',').map(str::to_owned).collect(),
        };
        raw.into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// One source's settings: every field optional, so sources can be layered. Not `Debug`: it
/// holds the token as plain text until validation wraps it.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layer {
    api_url: Option<Scalar>,
    org_id: Option<Scalar>,
    api_token: Option<Scalar>,
    api_token_file: Option<Scalar>,
    widget_ids: Option<List>,
    rate_limit: Option<Scalar>,
    api_retry_min_delay: Option<Scalar>,
    api_retry_max_delay: Option<Scalar>,
    api_max_attempts: Option<Scalar>,
    max_pages: Option<Scalar>,
    max_body: Option<Scalar>,
    window_mode: Option<Scalar>,
    state_dir: Option<Scalar>,
    poll_interval: Option<Scalar>,
    settle: Option<Scalar>,
    lookback: Option<Scalar>,
    survey_horizon: Option<Scalar>,
    since: Option<Scalar>,
    topic_cases: Option<Scalar>,
    topic_surveys: Option<Scalar>,
    topic_deadletter: Option<Scalar>,
    event_format: Option<Scalar>,
    create_topics: Option<Scalar>,
    topic_partitions: Option<Scalar>,
    topic_replication: Option<Scalar>,
    admin_addr: Option<Scalar>,
    /// librdkafka properties by their own names.
    kafka: BTreeMap<String, Scalar>,
}

/// (environment variable, setter) for every named setting.
type Setter = fn(&mut Layer, String);
const ENV_SETTINGS: &[(&str, Setter)] = &[
    ("SNAPENGAGE_API_URL", |l, v| {
        l.api_url = Some(Scalar::Text(v))
    }),
    ("SNAPENGAGE_ORG_ID", |l, v| l.org_id = Some(Scalar::Text(v))),
    ("SNAPENGAGE_API_TOKEN", |l, v| {
        l.api_token = Some(Scalar::Text(v))
    }),
    ("SNAPENGAGE_API_TOKEN_FILE", |l, v| {
        l.api_token_file = Some(Scalar::Text(v))
    }),
    ("SNAPENGAGE_WIDGET_IDS", |l, v| {
        l.widget_ids = Some(List::Text(v))
    }),
    ("CASESTREAM_RATE_LIMIT", |l, v| {
        l.rate_limit = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_API_RETRY_MIN_DELAY", |l, v| {
        l.api_retry_min_delay = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_API_RETRY_MAX_DELAY", |l, v| {
        l.api_retry_max_delay = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_API_MAX_ATTEMPTS", |l, v| {
        l.api_max_attempts = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_MAX_PAGES", |l, v| {
        l.max_pages = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_MAX_BODY", |l, v| {
        l.max_body = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_WINDOW_MODE", |l, v| {
        l.window_mode = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_STATE_DIR", |l, v| {
        l.state_dir = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_POLL_INTERVAL", |l, v| {
        l.poll_interval = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_SETTLE", |l, v| l.settle = Some(Scalar::Text(v))),
    ("CASESTREAM_LOOKBACK", |l, v| {
        l.lookback = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_SURVEY_HORIZON", |l, v| {
        l.survey_horizon = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_SINCE", |l, v| l.since = Some(Scalar::Text(v))),
    ("CASESTREAM_TOPIC_CASES", |l, v| {
        l.topic_cases = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_TOPIC_SURVEYS", |l, v| {
        l.topic_surveys = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_TOPIC_DEADLETTER", |l, v| {
        l.topic_deadletter = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_EVENT_FORMAT", |l, v| {
        l.event_format = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_CREATE_TOPICS", |l, v| {
        l.create_topics = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_TOPIC_PARTITIONS", |l, v| {
        l.topic_partitions = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_TOPIC_REPLICATION", |l, v| {
        l.topic_replication = Some(Scalar::Text(v))
    }),
    ("CASESTREAM_ADMIN_ADDR", |l, v| {
        l.admin_addr = Some(Scalar::Text(v))
    }),
];

/// `KAFKA_*` variables that are not librdkafka properties: the JVM tools' own settings, and
/// the service links Kubernetes injects for every Service whose name starts with `kafka`.
fn is_kafka_property_env(name: &str) -> bool {
    const NOT_PROPERTIES: &[&str] = &[
        "KAFKA_HOME",
        "KAFKA_OPTS",
        "KAFKA_HEAP_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_JMX_OPTS",
    ];
    !NOT_PROPERTIES.contains(&name) && !is_service_link(name)
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

/// The environment variable that sets a librdkafka property.
pub fn property_env_name(property: &str) -> String {
    format!("KAFKA_{}", property.to_ascii_uppercase().replace('.', "_"))
}

impl Layer {
    /// Reads a TOML file with the same keys as the environment variables, in lower case and
    /// without prefix (`org_id`, `poll_interval`, ...), plus a `[kafka]` table.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        // toml's own message quotes the offending line, which may hold the API token: name
        // the line and column and say what is wrong, never show the text.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            ConfigError::File {
                path: path.to_owned(),
                reason: format!(
                    "{at}{} (the line is not shown: it may hold a secret)",
                    e.message().trim_end()
                ),
            }
        })
    }

    /// Reads the environment variables named in the README; `KAFKA_<NAME>` becomes the
    /// librdkafka property `<name>` with `_` → `.`, as the Confluent images do.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut layer = Layer::default();
        for (name, value) in vars {
            if let Some((_, set)) = ENV_SETTINGS.iter().find(|(n, _)| *n == name) {
                set(&mut layer, value);
            } else if let Some(property) = name.strip_prefix("KAFKA_")
                && !property.is_empty()
                && is_kafka_property_env(&name)
            {
                let property = property.to_ascii_lowercase().replace('_', ".");
                layer.kafka.insert(property, Scalar::Text(value));
            }
        }
        layer
    }

    /// Settings given as command-line flags.
    #[allow(clippy::too_many_arguments)]
    pub fn from_flags(flags: &Flags) -> Self {
        let text = |v: &Option<String>| v.clone().map(Scalar::Text);
        let mut kafka: BTreeMap<String, Scalar> = flags
            .kafka_property
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), Scalar::Text(v.trim().to_owned())))
            .collect();
        if let Some(servers) = &flags.bootstrap_servers {
            kafka.insert("bootstrap.servers".into(), Scalar::Text(servers.clone()));
        }
        Layer {
            api_url: text(&flags.api_url),
            org_id: text(&flags.org_id),
            api_token_file: flags
                .api_token_file
                .as_ref()
                .map(|p| Scalar::Text(p.display().to_string())),
            widget_ids: flags.widget_ids.clone().map(List::Text),
            rate_limit: text(&flags.rate_limit),
            state_dir: flags
                .state_dir
                .as_ref()
                .map(|p| Scalar::Text(p.display().to_string())),
            poll_interval: text(&flags.poll_interval),
            settle: text(&flags.settle),
            lookback: text(&flags.lookback),
            survey_horizon: text(&flags.survey_horizon),
            since: text(&flags.since),
            event_format: text(&flags.event_format),
            admin_addr: text(&flags.admin_addr),
            kafka,
            ..Layer::default()
        }
    }

    /// `self` over `lower`: a setting here wins; Kafka properties merge by name.
    pub fn over(self, lower: Layer) -> Layer {
        let mut kafka = lower.kafka;
        kafka.extend(self.kafka);
        // A token given at a higher level replaces a token file from a lower one, and back.
        let (api_token, api_token_file) =
            if self.api_token.is_some() || self.api_token_file.is_some() {
                (self.api_token, self.api_token_file)
            } else {
                (lower.api_token, lower.api_token_file)
            };
        Layer {
            api_url: self.api_url.or(lower.api_url),
            org_id: self.org_id.or(lower.org_id),
            api_token,
            api_token_file,
            widget_ids: self.widget_ids.or(lower.widget_ids),
            rate_limit: self.rate_limit.or(lower.rate_limit),
            api_retry_min_delay: self.api_retry_min_delay.or(lower.api_retry_min_delay),
            api_retry_max_delay: self.api_retry_max_delay.or(lower.api_retry_max_delay),
            api_max_attempts: self.api_max_attempts.or(lower.api_max_attempts),
            max_pages: self.max_pages.or(lower.max_pages),
            max_body: self.max_body.or(lower.max_body),
            window_mode: self.window_mode.or(lower.window_mode),
            state_dir: self.state_dir.or(lower.state_dir),
            poll_interval: self.poll_interval.or(lower.poll_interval),
            settle: self.settle.or(lower.settle),
            lookback: self.lookback.or(lower.lookback),
            survey_horizon: self.survey_horizon.or(lower.survey_horizon),
            since: self.since.or(lower.since),
            topic_cases: self.topic_cases.or(lower.topic_cases),
            topic_surveys: self.topic_surveys.or(lower.topic_surveys),
            topic_deadletter: self.topic_deadletter.or(lower.topic_deadletter),
            event_format: self.event_format.or(lower.event_format),
            create_topics: self.create_topics.or(lower.create_topics),
            topic_partitions: self.topic_partitions.or(lower.topic_partitions),
            topic_replication: self.topic_replication.or(lower.topic_replication),
            admin_addr: self.admin_addr.or(lower.admin_addr),
            kafka,
        }
    }

    /// Validates and fills in defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let api_url_text = text_or(&self.api_url, DEFAULT_API_URL);
        let api_url = Url::parse(&api_url_text)
            .map_err(|e| invalid("SNAPENGAGE_API_URL", &api_url_text, e))
            .and_then(|u| match u.scheme() {
                "http" | "https" if u.host().is_some() => Ok(u),
                _ => Err(invalid(
                    "SNAPENGAGE_API_URL",
                    &api_url_text,
                    "must be an http(s) URL with a host",
                )),
            })?;
        let org_id = required(&self.org_id, "SNAPENGAGE_ORG_ID")?;
        let mut api_token_file = None;
        let api_token = match (&self.api_token, &self.api_token_file) {
            (Some(token), _) => token.text(),
            (None, Some(path)) => {
                let path = PathBuf::from(path.text());
                let token = crate::snapengage::client::read_token_file(&path).map_err(|e| {
                    ConfigError::TokenFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                api_token_file = Some(path);
                token
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    setting: "SNAPENGAGE_API_TOKEN (or SNAPENGAGE_API_TOKEN_FILE)",
                });
            }
        };
        if api_token.trim().is_empty() {
            return Err(ConfigError::Missing {
                setting: "SNAPENGAGE_API_TOKEN (or SNAPENGAGE_API_TOKEN_FILE)",
            });
        }
        if api_token.chars().any(char::is_control) {
            return Err(ConfigError::Invalid {
                setting: "SNAPENGAGE_API_TOKEN",
                value: crate::redact::MARK.into(),
                reason: "contains control characters".into(),
            });
        }
        let widget_ids = self.widget_ids.map(|l| l.items()).unwrap_or_default();
        if widget_ids.is_empty() {
            return Err(ConfigError::Missing {
                setting: "SNAPENGAGE_WIDGET_IDS",
            });
        }
        let rate_text = text_or(&self.rate_limit, &DEFAULT_RATE_LIMIT_PER_SEC.to_string());
        let rate_limit = match rate_text.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => r,
            _ => {
                return Err(invalid(
                    "CASESTREAM_RATE_LIMIT",
                    &rate_text,
                    "must be requests per second, more than 0 and at most 1000",
                ));
            }
        };
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            min_delay: duration(
                &self.api_retry_min_delay,
                "CASESTREAM_API_RETRY_MIN_DELAY",
                defaults.min_delay,
            )?,
            max_delay: duration(
                &self.api_retry_max_delay,
                "CASESTREAM_API_RETRY_MAX_DELAY",
                defaults.max_delay,
            )?,
            max_attempts: usize::try_from(positive(
                &self.api_max_attempts,
                "CASESTREAM_API_MAX_ATTEMPTS",
                i32::try_from(defaults.max_attempts).unwrap_or(i32::MAX),
            )?)
            .unwrap_or(1),
        };
        if retry.max_delay < retry.min_delay {
            return Err(invalid(
                "CASESTREAM_API_RETRY_MAX_DELAY",
                &humantime::format_duration(retry.max_delay).to_string(),
                "must not be shorter than CASESTREAM_API_RETRY_MIN_DELAY",
            ));
        }
        let max_pages = usize::try_from(positive(
            &self.max_pages,
            "CASESTREAM_MAX_PAGES",
            i32::try_from(DEFAULT_MAX_PAGES).unwrap_or(i32::MAX),
        )?)
        .unwrap_or(DEFAULT_MAX_PAGES);
        let max_body = match &self.max_body {
            None => DEFAULT_MAX_BODY,
            Some(v) => {
                let text = v.text();
                match text.trim().parse::<bytesize::ByteSize>() {
                    Ok(size) if size.as_u64() >= 1024 => {
                        usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
                    }
                    _ => {
                        return Err(invalid(
                            "CASESTREAM_MAX_BODY",
                            &text,
                            "must be a size of at least 1 KiB, in bytes or with a unit (`32MiB`)",
                        ));
                    }
                }
            }
        };
        let window_mode = match text_or(&self.window_mode, "dates").as_str() {
            "dates" => WindowMode::Dates,
            "datetimes" => WindowMode::Datetimes,
            other => {
                return Err(invalid(
                    "CASESTREAM_WINDOW_MODE",
                    other,
                    "must be `dates` or `datetimes`",
                ));
            }
        };
        let event_format = match text_or(&self.event_format, "structured").as_str() {
            "structured" => EventFormat::Structured,
            "binary" => EventFormat::Binary,
            other => {
                return Err(invalid(
                    "CASESTREAM_EVENT_FORMAT",
                    other,
                    "must be `structured` or `binary`",
                ));
            }
        };
        let mut properties: BTreeMap<String, String> = self
            .kafka
            .iter()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect();
        match properties.get("bootstrap.servers") {
            Some(s) if !s.trim().is_empty() => {}
            _ => {
                return Err(ConfigError::Missing {
                    setting: "KAFKA_BOOTSTRAP_SERVERS",
                });
            }
        }
        properties.retain(|_, v| !v.is_empty());
        // The Java client's one-line JAAS setting carries the password; librdkafka has no such
        // property. Refuse it by name, never quoting it.
        if properties.contains_key("sasl.jaas.config") {
            return Err(ConfigError::Invalid {
                setting: "KAFKA_SASL_JAAS_CONFIG",
                value: crate::redact::MARK.into(),
                reason: "the Java client's JAAS line is not a librdkafka setting; set \
                         KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (with KAFKA_SASL_MECHANISMS) \
                         instead"
                    .into(),
            });
        }
        let poll_interval = duration(
            &self.poll_interval,
            "CASESTREAM_POLL_INTERVAL",
            DEFAULT_POLL_INTERVAL,
        )?;
        if poll_interval.is_zero() {
            return Err(invalid(
                "CASESTREAM_POLL_INTERVAL",
                "0s",
                "must be more than zero",
            ));
        }
        let settle = duration(&self.settle, "CASESTREAM_SETTLE", DEFAULT_SETTLE)?;
        let lookback = duration(&self.lookback, "CASESTREAM_LOOKBACK", DEFAULT_LOOKBACK)?;
        let survey_horizon = duration(
            &self.survey_horizon,
            "CASESTREAM_SURVEY_HORIZON",
            DEFAULT_SURVEY_HORIZON,
        )?;
        if survey_horizon < settle {
            return Err(invalid(
                "CASESTREAM_SURVEY_HORIZON",
                &humantime::format_duration(survey_horizon).to_string(),
                "must not be shorter than CASESTREAM_SETTLE",
            ));
        }
        let since = match &self.since {
            None => None,
            Some(s) => {
                let text = s.text();
                Some(
                    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|e| {
                        invalid(
                            "CASESTREAM_SINCE",
                            &text,
                            format!("must be a date like 2026-01-31: {e}"),
                        )
                    })?,
                )
            }
        };
        let admin_text = text_or(&self.admin_addr, DEFAULT_ADMIN_ADDR);
        let admin_addr = admin_text
            .parse()
            .map_err(|e| invalid("CASESTREAM_ADMIN_ADDR", &admin_text, e))?;
        let create_text = text_or(&self.create_topics, "true");
        let create_topics = match create_text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(invalid(
                    "CASESTREAM_CREATE_TOPICS",
                    &create_text,
                    "must be true or false",
                ));
            }
        };
        let topic_partitions = positive(
            &self.topic_partitions,
            "CASESTREAM_TOPIC_PARTITIONS",
            DEFAULT_TOPIC_PARTITIONS,
        )?;
        let topic_replication = match &self.topic_replication {
            None => None,
            Some(_) => Some(positive(
                &self.topic_replication,
                "CASESTREAM_TOPIC_REPLICATION",
                1,
            )?),
        };
        let topics = Topics {
            cases: topic(
                &self.topic_cases,
                "CASESTREAM_TOPIC_CASES",
                DEFAULT_TOPIC_CASES,
            )?,
            surveys: topic(
                &self.topic_surveys,
                "CASESTREAM_TOPIC_SURVEYS",
                DEFAULT_TOPIC_SURVEYS,
            )?,
            deadletter: topic(
                &self.topic_deadletter,
                "CASESTREAM_TOPIC_DEADLETTER",
                DEFAULT_TOPIC_DEADLETTER,
            )?,
        };
        Ok(Config {
            api_url,
            org_id,
            api_token: SecretString::from(api_token),
            api_token_file,
            widget_ids,
            rate_limit,
            retry,
            max_pages,
            max_body,
            window_mode,
            kafka: KafkaSettings {
                properties,
                topics,
                event_format,
                create_topics,
                topic_partitions,
                topic_replication,
            },
            state_dir: PathBuf::from(text_or(&self.state_dir, DEFAULT_STATE_DIR)),
            poll_interval,
            settle,
            lookback,
            survey_horizon,
            since,
            admin_addr,
        })
    }
}

/// The flags of `casestream run` and `casestream check` that map onto settings.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// TOML config file (also CASESTREAM_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Logs API base URL (SNAPENGAGE_API_URL).
    #[arg(long)]
    pub api_url: Option<String>,
    /// SnapEngage org id (SNAPENGAGE_ORG_ID).
    #[arg(long)]
    pub org_id: Option<String>,
    /// File holding the API token (SNAPENGAGE_API_TOKEN_FILE); the token itself is never a flag.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Widget ids, comma-separated (SNAPENGAGE_WIDGET_IDS).
    #[arg(long)]
    pub widget_ids: Option<String>,
    /// Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// Any librdkafka property, `name=value`; repeatable.
    #[arg(long = "kafka-property", value_name = "NAME=VALUE")]
    pub kafka_property: Vec<String>,
    /// State directory (CASESTREAM_STATE_DIR).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Poll interval, e.g. 30s (CASESTREAM_POLL_INTERVAL).
    #[arg(long)]
    pub poll_interval: Option<String>,
    /// Survey settle window after chat end (CASESTREAM_SETTLE).
    #[arg(long)]
    pub settle: Option<String>,
    /// Days re-read on every poll besides today (CASESTREAM_LOOKBACK).
    #[arg(long)]
    pub lookback: Option<String>,
    /// How long after chat end a survey is still looked for (CASESTREAM_SURVEY_HORIZON).
    #[arg(long)]
    pub survey_horizon: Option<String>,
    /// First day to read on a first start with empty state (CASESTREAM_SINCE).
    #[arg(long)]
    pub since: Option<String>,
    /// Logs API requests per second, shared by all widgets (CASESTREAM_RATE_LIMIT).
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// `structured` or `binary` (CASESTREAM_EVENT_FORMAT).
    #[arg(long)]
    pub event_format: Option<String>,
    /// Admin HTTP address for metrics and probes (CASESTREAM_ADMIN_ADDR).
    #[arg(long)]
    pub admin_addr: Option<String>,
}

impl Flags {
    /// Builds the configuration from defaults < file < environment < these flags.
    pub fn load(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file_path = self.config.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == "CASESTREAM_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        let file = match file_path {
            Some(path) => Layer::from_file(&path)?,
            None => Layer::default(),
        };
        Layer::from_flags(self)
            .over(Layer::from_env(env))
            .over(file)
            .build()
    }
}

fn text_or(value: &Option<Scalar>, default: &str) -> String {
    value
        .as_ref()
        .map(Scalar::text)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| default.to_owned())
}

fn required(value: &Option<Scalar>, setting: &'static str) -> Result<String, ConfigError> {
    match value.as_ref().map(Scalar::text) {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(ConfigError::Missing { setting }),
    }
}

fn invalid(setting: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// Durations read as `30s`, `5m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("not a duration like 30s, 5m or 7d ({e})"))
}

fn duration(
    value: &Option<Scalar>,
    setting: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let text = v.text();
            parse_duration(&text).map_err(|reason| invalid(setting, &text, reason))
        }
    }
}

fn positive(
    value: &Option<Scalar>,
    setting: &'static str,
    default: i32,
) -> Result<i32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let text = v.text();
            match text.trim().parse::<i32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(invalid(setting, &text, "must be a positive whole number")),
            }
        }
    }
}

/// Kafka's own rule for topic names.
fn topic(
    value: &Option<Scalar>,
    setting: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let name = text_or(value, default);
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal {
        Ok(name)
    } else {
        Err(invalid(
            setting,
            &name,
            "a Kafka topic name is 1-249 characters of a-z, A-Z, 0-9, `.`, `_`, `-`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
        ] {
            assert!(!is_kafka_property_env(name), "{name} is not a property");
        }
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_KEY_PASSWORD",
            "KAFKA_SOCKET_KEEPALIVE_ENABLE",
            "KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS",
        ] {
            assert!(is_kafka_property_env(name), "{name} is a property");
        }
        assert_eq!(property_env_name("linger.ms"), "KAFKA_LINGER_MS");
    }

    #[test]
    fn a_jaas_line_is_refused_without_quoting_it() {
        let mut vars = minimal();
        vars.push((
            "KAFKA_SASL_JAAS_CONFIG".into(),
            r#"PlainLoginModule required username="u" password="pw-3141";"#.into(),
        ));
        let err = Flags::default().load(vars).unwrap_err().to_string();
        assert!(err.contains("KAFKA_SASL_JAAS_CONFIG"), "{err}");
        assert!(err.contains("KAFKA_SASL_PASSWORD"), "{err}");
        assert!(!err.contains("pw-3141"), "{err}");
    }

    fn minimal() -> Vec<(String, String)> {
        env(&[
            ("SNAPENGAGE_ORG_ID", "org-1"),
            ("SNAPENGAGE_API_TOKEN", "tok-secret-123"),
            ("SNAPENGAGE_WIDGET_IDS", "a, b,,c"),
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
        ])
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let config = Flags::default().load(minimal()).unwrap();
        assert_eq!(config.api_url.as_str(), "https://www.snapengage.com/");
        assert_eq!(config.widget_ids, ["a", "b", "c"]);
        assert_eq!(config.poll_interval, Duration::from_secs(30));
        assert_eq!(config.settle, Duration::from_secs(300));
        assert_eq!(config.lookback, Duration::from_secs(86_400));
        assert_eq!(config.survey_horizon, Duration::from_secs(7 * 86_400));
        assert_eq!(config.rate_limit, 5.0);
        assert_eq!(config.kafka.topics.cases, "snapengage.cases");
        assert_eq!(config.kafka.topics.surveys, "snapengage.surveys");
        assert_eq!(config.kafka.topics.deadletter, "snapengage.deadletter");
        assert_eq!(config.kafka.event_format, EventFormat::Structured);
        assert_eq!(config.kafka.properties["bootstrap.servers"], "k:9092");
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("casestream.toml");
        std::fs::write(
            &path,
            r#"
org_id = "from-file"
api_token = "file-token"
widget_ids = ["f1", "f2"]
poll_interval = "1m"
settle = "2m"
rate_limit = 2
[kafka]
"bootstrap.servers" = "file:9092"
"linger.ms" = 20
"#,
        )
        .unwrap();
        let mut vars = env(&[
            ("CASESTREAM_CONFIG", path.to_str().unwrap()),
            ("CASESTREAM_SETTLE", "3m"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISMS", "PLAIN"),
            ("KAFKA_BOOTSTRAP_SERVERS", "env:9092"),
            ("KAFKA_HEAP_OPTS", "-Xmx1g"),
            // What Kubernetes injects for a Service named `kafka`.
            ("KAFKA_PORT", "tcp://10.0.0.1:9092"),
            ("KAFKA_PORT_9092_TCP_ADDR", "10.0.0.1"),
            ("KAFKA_SERVICE_HOST", "10.0.0.1"),
        ]);
        vars.push(("CASESTREAM_LOOKBACK".into(), "2d".into()));
        let flags = Flags {
            lookback: Some("3d".into()),
            kafka_property: vec!["linger.ms=50".into()],
            ..Flags::default()
        };
        let config = flags.load(vars).unwrap();
        assert_eq!(config.org_id, "from-file");
        assert_eq!(config.widget_ids, ["f1", "f2"]);
        assert_eq!(config.poll_interval, Duration::from_secs(60));
        assert_eq!(config.settle, Duration::from_secs(180));
        assert_eq!(config.lookback, Duration::from_secs(3 * 86_400));
        assert_eq!(config.rate_limit, 2.0);
        let props = &config.kafka.properties;
        assert_eq!(props["bootstrap.servers"], "env:9092");
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanisms"], "PLAIN");
        assert_eq!(props["linger.ms"], "50");
        assert!(!props.contains_key("heap.opts"));
        assert!(
            !props
                .keys()
                .any(|k| k.starts_with("port") || k.starts_with("service"))
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("SNAPENGAGE_ORG_ID", "")],
                "SNAPENGAGE_ORG_ID is required",
            ),
            (
                &[("SNAPENGAGE_WIDGET_IDS", " , ")],
                "SNAPENGAGE_WIDGET_IDS is required",
            ),
            (
                &[("CASESTREAM_POLL_INTERVAL", "often")],
                "CASESTREAM_POLL_INTERVAL = `often` is invalid",
            ),
            (
                &[("CASESTREAM_RATE_LIMIT", "-1")],
                "CASESTREAM_RATE_LIMIT = `-1` is invalid",
            ),
            (
                &[("CASESTREAM_SINCE", "yesterday")],
                "CASESTREAM_SINCE = `yesterday` is invalid",
            ),
            (
                &[("CASESTREAM_EVENT_FORMAT", "xml")],
                "CASESTREAM_EVENT_FORMAT = `xml` is invalid",
            ),
            (
                &[("CASESTREAM_TOPIC_CASES", "bad topic!")],
                "CASESTREAM_TOPIC_CASES = `bad topic!` is invalid",
            ),
            (
                &[("SNAPENGAGE_API_URL", "ftp://x")],
                "SNAPENGAGE_API_URL = `ftp://x` is invalid",
            ),
            (
                &[("KAFKA_BOOTSTRAP_SERVERS", "")],
                "KAFKA_BOOTSTRAP_SERVERS is required",
            ),
            (
                &[("SNAPENGAGE_API_TOKEN", "")],
                "SNAPENGAGE_API_TOKEN (or SNAPENGAGE_API_TOKEN_FILE) is required",
            ),
            (
                &[("CASESTREAM_SURVEY_HORIZON", "1m")],
                "CASESTREAM_SURVEY_HORIZON = `1m` is invalid",
            ),
        ];
        for (overrides, expected) in cases {
            let mut vars = minimal();
            vars.extend(env(overrides));
            let err = Flags::default().load(vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
        let err = Flags {
            config: Some("/nonexistent/casestream.toml".into()),
            ..Flags::default()
        }
        .load(minimal())
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/casestream.toml"));
    }

    #[test]
    fn a_toml_syntax_error_names_the_line_but_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("casestream.toml");
        // A missing closing quote on the token's line: toml's own message would print it.
        std::fs::write(&path, "org_id = \"o\"\napi_token = \"tok-3b1f9e\n").unwrap();
        let err = Layer::from_file(&path).err().expect("a syntax error");
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains(path.to_str().unwrap()), "{text}");
        assert!(!text.contains("tok-3b1f9e"), "{text}");
    }

    #[test]
    fn token_file_is_read_and_secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "file-secret-999\n").unwrap();
        let mut vars: Vec<_> = minimal()
            .into_iter()
            .filter(|(k, _)| k != "SNAPENGAGE_API_TOKEN")
            .collect();
        vars.extend(env(&[
            ("SNAPENGAGE_API_TOKEN_FILE", token_path.to_str().unwrap()),
            ("KAFKA_SASL_PASSWORD", "kafka-pass-555"),
            ("KAFKA_SASL_USERNAME", "svc"),
        ]));
        let config = Flags::default().load(vars).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(config.api_token.expose_secret(), "file-secret-999");
        let shown = format!("{config:?}");
        assert!(!shown.contains("file-secret-999"), "{shown}");
        assert!(!shown.contains("kafka-pass-555"), "{shown}");
        assert!(shown.contains("svc"));

        let err = Flags {
            api_token_file: Some("/nonexistent/token".into()),
            ..Flags::default()
        }
        .load(
            minimal()
                .into_iter()
                .filter(|(k, _)| k != "SNAPENGAGE_API_TOKEN"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"));
    }
}
