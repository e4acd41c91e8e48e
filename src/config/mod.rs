//! The top floor's assembler: one typed [`Config`], built from each component's own settings
//! type, read once from, in rising priority: defaults, a TOML file, environment variables,
//! command-line flags. Each setting's environment name is a constant owned by its component;
//! every error names the setting at fault.

mod flags;
mod sources;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub use flags::{Flags, StateTarget};
use sources::Layer;

use crate::admin::{AdminSettings, ENV_ADMIN_ADDR};
use crate::pipeline::tracker::{ENV_SETTLE, ENV_SURVEY_HORIZON};
use crate::pipeline::{
    ENV_LATE_VISIBILITY, ENV_LOOKBACK, ENV_MAX_STALENESS, ENV_POLL_INTERVAL, ENV_SINCE,
    ENV_WIDGET_IDS, ENV_WINDOW_OVERLAP, PipelineSettings,
};
use crate::sink::config::{
    ENV_CREATE_TOPICS, ENV_DELIVERY, ENV_EVENT_FORMAT, ENV_FAILOVER_TIMEOUT, ENV_GROUP,
    ENV_TOPIC_CASES, ENV_TOPIC_DEADLETTER, ENV_TOPIC_PARTITIONS, ENV_TOPIC_REPLICATION,
    ENV_TOPIC_STATE, ENV_TOPIC_SURVEYS, KafkaSettings, PropertyProblem, check_properties,
    check_topic_name, property_env_name,
};
use crate::snapengage::ClientConfig;
use crate::snapengage::settings::{
    DEFAULT_API_URL, ENV_API_MAX_ATTEMPTS, ENV_API_RETRY_MAX_DELAY, ENV_API_RETRY_MIN_DELAY,
    ENV_API_TOKEN, ENV_API_TOKEN_FILE, ENV_API_URL, ENV_MAX_BODY, ENV_MAX_PAGES, ENV_ORG_ID,
    ENV_RATE_LIMIT, ENV_WINDOW_MODE, check_api_url, check_token, parse_max_body, parse_rate_limit,
    read_token_file,
};
use crate::state::{DEFAULT_STATE_DIR, ENV_STATE_DIR};

/// The TOML file to read, if any (or `--config`).
pub const ENV_CONFIG: &str = "CASESTREAM_CONFIG";

/// Every setting, by environment name: the table of docs/configuration.md lists each.
pub const SETTINGS: &[&str] = &[
    ENV_API_URL,
    ENV_ORG_ID,
    ENV_API_TOKEN,
    ENV_API_TOKEN_FILE,
    ENV_WIDGET_IDS,
    ENV_RATE_LIMIT,
    ENV_API_RETRY_MIN_DELAY,
    ENV_API_RETRY_MAX_DELAY,
    ENV_API_MAX_ATTEMPTS,
    ENV_MAX_PAGES,
    ENV_MAX_BODY,
    ENV_WINDOW_MODE,
    ENV_STATE_DIR,
    ENV_POLL_INTERVAL,
    ENV_SETTLE,
    ENV_LOOKBACK,
    ENV_LATE_VISIBILITY,
    ENV_WINDOW_OVERLAP,
    ENV_MAX_STALENESS,
    ENV_SURVEY_HORIZON,
    ENV_SINCE,
    ENV_TOPIC_CASES,
    ENV_TOPIC_SURVEYS,
    ENV_TOPIC_DEADLETTER,
    ENV_EVENT_FORMAT,
    ENV_CREATE_TOPICS,
    ENV_TOPIC_PARTITIONS,
    ENV_TOPIC_REPLICATION,
    ENV_DELIVERY,
    ENV_TOPIC_STATE,
    ENV_GROUP,
    ENV_FAILOVER_TIMEOUT,
    ENV_ADMIN_ADDR,
];

/// The whole configuration: each component's settings, as it defines them. Buildable in Rust
/// ([`Config::new`], then any field), or from the sources ([`Flags::load`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub api: ClientConfig,
    pub kafka: KafkaSettings,
    pub pipeline: PipelineSettings,
    pub state_dir: PathBuf,
    pub admin: AdminSettings,
}

impl Config {
    /// Defaults everywhere but what has none: the API, Kafka and the widgets.
    pub fn new(api: ClientConfig, mut kafka: KafkaSettings, widgets: Vec<String>) -> Self {
        kafka.failover.org = api.org_id.clone();
        kafka.fill_state_topic();
        Self {
            api,
            kafka,
            pipeline: PipelineSettings::new(widgets),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            admin: AdminSettings::default(),
        }
    }

    /// Validates `layer` (all sources stacked) and fills in defaults. Settings are checked in
    /// a fixed order, so with several wrong the same one is named first every time.
    fn from_layer(layer: &Layer) -> Result<Self, ConfigError> {
        let base_url = match layer.parse(ENV_API_URL, check_api_url)? {
            Some(url) => url,
            None => url::Url::parse(DEFAULT_API_URL)
                .unwrap_or_else(|e| unreachable!("the default API URL is a URL: {e}")),
        };
        let org_id = layer.required(ENV_ORG_ID)?;
        let (token, token_file) = api_token(layer)?;
        let widgets = layer.list(ENV_WIDGET_IDS);
        if widgets.is_empty() {
            return Err(ConfigError::missing(ENV_WIDGET_IDS));
        }
        let mut api = ClientConfig::new(base_url, org_id, token);
        api.token_file = token_file;
        if let Some(rate) = layer.parse(ENV_RATE_LIMIT, parse_rate_limit)? {
            api.rate_limit_per_sec = rate;
        }
        let retry = &mut api.retry;
        if let Some(min) = layer.duration(ENV_API_RETRY_MIN_DELAY)? {
            retry.min_delay = min;
        }
        if let Some(max) = layer.duration(ENV_API_RETRY_MAX_DELAY)? {
            retry.max_delay = max;
        }
        if let Some(attempts) = layer.positive(ENV_API_MAX_ATTEMPTS)? {
            retry.max_attempts = attempts;
        }
        if retry.max_delay < retry.min_delay {
            return Err(ConfigError::invalid(
                ENV_API_RETRY_MAX_DELAY,
                &humantime::format_duration(retry.max_delay).to_string(),
                format!("must not be shorter than {ENV_API_RETRY_MIN_DELAY}"),
            ));
        }
        if let Some(pages) = layer.positive(ENV_MAX_PAGES)? {
            api.max_pages = pages;
        }
        if let Some(body) = layer.parse(ENV_MAX_BODY, parse_max_body)? {
            api.max_body = body;
        }
        if let Some(mode) = layer.parse(ENV_WINDOW_MODE, str::parse)? {
            api.window_mode = mode;
        }
        let event_format = layer.parse(ENV_EVENT_FORMAT, str::parse)?;
        let mut properties = layer.kafka_properties().clone();
        properties.retain(|_, v| !v.is_empty());
        match check_properties(&properties) {
            Ok(()) => {}
            Err(PropertyProblem::Missing(property)) => {
                return Err(ConfigError::Missing {
                    setting: property_env_name(property),
                });
            }
            // Refused by name, never quoting the value: it may carry a password.
            Err(PropertyProblem::Refused(property, reason)) => {
                return Err(ConfigError::Invalid {
                    setting: property_env_name(property),
                    value: crate::redact::MARK.into(),
                    reason,
                });
            }
        }

        let mut pipeline = PipelineSettings::new(widgets);
        if let Some(interval) = layer.duration(ENV_POLL_INTERVAL)? {
            if interval.is_zero() {
                return Err(ConfigError::invalid(
                    ENV_POLL_INTERVAL,
                    "0s",
                    "must be more than zero",
                ));
            }
            pipeline.poll_interval = interval;
        }
        if let Some(settle) = layer.duration(ENV_SETTLE)? {
            pipeline.tracker.settle = settle;
        }
        if let Some(lookback) = layer.duration(ENV_LOOKBACK)? {
            pipeline.lookback = lookback;
        }
        if let Some(late) = layer.duration(ENV_LATE_VISIBILITY)? {
            pipeline.late_visibility = late;
        }
        if let Some(overlap) = layer.duration(ENV_WINDOW_OVERLAP)? {
            pipeline.window_overlap = overlap;
        }
        if let Some(cap) = layer.positive(ENV_MAX_STALENESS)? {
            pipeline.max_staleness = cap;
        }
        if let Some(horizon) = layer.duration(ENV_SURVEY_HORIZON)? {
            pipeline.tracker.horizon = horizon;
        }
        if pipeline.tracker.horizon < pipeline.tracker.settle {
            return Err(ConfigError::invalid(
                ENV_SURVEY_HORIZON,
                &humantime::format_duration(pipeline.tracker.horizon).to_string(),
                format!("must not be shorter than {ENV_SETTLE}"),
            ));
        }
        pipeline.since = layer.parse(ENV_SINCE, |text| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|e| format!("must be a date like 2026-01-31: {e}"))
        })?;
        let mut admin = AdminSettings::default();
        if let Some(addr) = layer.parse(ENV_ADMIN_ADDR, str::parse)? {
            admin.addr = addr;
        }

        let mut kafka = KafkaSettings {
            properties,
            ..KafkaSettings::new("")
        };
        if let Some(format) = event_format {
            kafka.event_format = format;
        }
        if let Some(create) = layer.flag(ENV_CREATE_TOPICS)? {
            kafka.create_topics = create;
        }
        if let Some(partitions) = layer.positive(ENV_TOPIC_PARTITIONS)? {
            kafka.topic_partitions = partitions;
        }
        kafka.topic_replication = layer.positive(ENV_TOPIC_REPLICATION)?;
        if let Some(delivery) = layer.parse(ENV_DELIVERY, str::parse)? {
            kafka.delivery = delivery;
        }
        kafka.failover.org = api.org_id.clone();
        kafka.failover.group = layer.parse(ENV_GROUP, |name: &str| {
            check_topic_name(name).map(|()| name.to_owned())
        })?;
        if let Some(timeout) = layer.duration(ENV_FAILOVER_TIMEOUT)? {
            if !(Duration::from_secs(6)..=Duration::from_secs(1800)).contains(&timeout) {
                return Err(ConfigError::invalid(
                    ENV_FAILOVER_TIMEOUT,
                    &humantime::format_duration(timeout).to_string(),
                    "brokers accept a group session timeout of 6s to 30m by default",
                ));
            }
            kafka.failover.timeout = timeout;
        }
        let topic = |env| layer.parse(env, |name| check_topic_name(name).map(|()| name.into()));
        // `kafka.topics` holds the defaults until a setting replaces one.
        let topics = &mut kafka.topics;
        for (env, name) in [
            (ENV_TOPIC_CASES, &mut topics.cases),
            (ENV_TOPIC_SURVEYS, &mut topics.surveys),
            (ENV_TOPIC_DEADLETTER, &mut topics.deadletter),
            (ENV_TOPIC_STATE, &mut topics.state),
        ] {
            if let Some(given) = topic(env)? {
                *name = given;
            }
        }
        kafka.fill_state_topic();

        Ok(Config {
            api,
            kafka,
            pipeline,
            state_dir: PathBuf::from(
                layer
                    .text(ENV_STATE_DIR)
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            ),
            admin,
        })
    }
}

/// The API token, given itself or as a file to read (and read again on 401).
fn api_token(layer: &Layer) -> Result<(SecretString, Option<PathBuf>), ConfigError> {
    let missing = || ConfigError::Missing {
        setting: format!("{ENV_API_TOKEN} (or {ENV_API_TOKEN_FILE})"),
    };
    let (token, file) = match (layer.raw(ENV_API_TOKEN), layer.raw(ENV_API_TOKEN_FILE)) {
        (Some(token), _) => (token, None),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let token = read_token_file(&path).map_err(|e| ConfigError::TokenFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            (token, Some(path))
        }
        (None, None) => return Err(missing()),
    };
    if token.trim().is_empty() {
        return Err(missing());
    }
    check_token(&token).map_err(|reason| ConfigError::Invalid {
        setting: ENV_API_TOKEN.into(),
        value: crate::redact::MARK.into(),
        reason: reason.into(),
    })?;
    Ok((SecretString::from(token), file))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting} is required but not set")]
    Missing { setting: String },
    #[error("{setting} = `{value}` is invalid: {reason}")]
    Invalid {
        setting: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot read the API token file {path} ({ENV_API_TOKEN_FILE}): {reason}")]
    TokenFile { path: PathBuf, reason: String },
}

impl ConfigError {
    fn missing(setting: &str) -> Self {
        ConfigError::Missing {
            setting: setting.into(),
        }
    }

    fn invalid(setting: &str, value: &str, reason: impl ToString) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sources::file_key;
    use super::*;
    use crate::sink::EventFormat;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
        assert_eq!(config.api.base_url.as_str(), "https://www.snapengage.com/");
        assert_eq!(config.pipeline.widgets, ["a", "b", "c"]);
        assert_eq!(config.pipeline.poll_interval, Duration::from_secs(30));
        assert_eq!(config.pipeline.tracker.settle, Duration::from_secs(300));
        assert_eq!(config.pipeline.lookback, Duration::from_secs(86_400));
        assert_eq!(
            config.pipeline.tracker.horizon,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(config.api.rate_limit_per_sec, 5.0);
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
        assert_eq!(config.api.org_id, "from-file");
        assert_eq!(config.pipeline.widgets, ["f1", "f2"]);
        assert_eq!(config.pipeline.poll_interval, Duration::from_secs(60));
        assert_eq!(config.pipeline.tracker.settle, Duration::from_secs(180));
        assert_eq!(config.pipeline.lookback, Duration::from_secs(3 * 86_400));
        assert_eq!(config.api.rate_limit_per_sec, 2.0);
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
                &[("CASESTREAM_DELIVERY", "exactly-twice")],
                "CASESTREAM_DELIVERY = `exactly-twice` is invalid: must be `at-least-once` or `exactly-once`",
            ),
            (
                &[("CASESTREAM_FAILOVER_TIMEOUT", "2s")],
                "CASESTREAM_FAILOVER_TIMEOUT = `2s` is invalid",
            ),
            (
                &[("CASESTREAM_GROUP", "blue green")],
                "CASESTREAM_GROUP = `blue green` is invalid",
            ),
            (
                &[("CASESTREAM_TOPIC_STATE", "")],
                "CASESTREAM_TOPIC_STATE = `` is invalid",
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
        assert_eq!(config.api.token.expose_secret(), "file-secret-999");
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

    /// The settings table of docs/configuration.md lists every setting, and nothing else of
    /// ours.
    #[test]
    fn the_configuration_page_lists_every_setting() {
        let page = include_str!("../../docs/configuration.md");
        let section = page
            .split("\n## Settings\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("a Settings section");
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
        let named: Vec<&str> = rows
            .iter()
            .filter_map(|row| row.split(" | ").next())
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .collect();
        for setting in SETTINGS {
            assert!(
                named.contains(setting),
                "{setting} is not in the table of docs/configuration.md"
            );
        }
        for name in named {
            let ours = name.starts_with("CASESTREAM_") || name.starts_with("SNAPENGAGE_");
            assert!(
                !ours || SETTINGS.contains(&name),
                "docs/configuration.md lists {name}, no setting"
            );
        }
    }

    #[test]
    fn the_file_names_an_unknown_key_and_takes_a_bare_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("casestream.toml");
        std::fs::write(&path, "org_id = \"o\"\npoll_intervall = \"1m\"\n").unwrap();
        let err = Layer::from_file(&path)
            .err()
            .expect("an unknown key")
            .to_string();
        assert!(
            err.contains("line 2: unknown setting `poll_intervall`"),
            "{err}"
        );
        std::fs::write(&path, "org_id = [\"o\", \"p\"]\n").unwrap();
        let err = Layer::from_file(&path).err().expect("a list").to_string();
        assert!(err.contains("`org_id` must be a string"), "{err}");

        std::fs::write(&path, "since = 2026-01-31\nwidget_ids = [\"a\", \"b\"]\n").unwrap();
        let config = Flags {
            config: Some(path),
            ..Flags::default()
        }
        .load(minimal())
        .unwrap();
        assert_eq!(
            config.pipeline.since,
            chrono::NaiveDate::from_ymd_opt(2026, 1, 31)
        );
        // The environment's widget list wins over the file's.
        assert_eq!(config.pipeline.widgets, ["a", "b", "c"]);
        assert_eq!(file_key(ENV_POLL_INTERVAL), "poll_interval");
        assert_eq!(file_key(ENV_ORG_ID), "org_id");
    }

    /// With several settings wrong, the same one is named first, in the documented order:
    /// here the widgets before Kafka (as before settings moved to their components).
    #[test]
    fn with_several_settings_wrong_the_first_in_order_is_named() {
        let vars = env(&[
            ("SNAPENGAGE_ORG_ID", "org-1"),
            ("SNAPENGAGE_API_TOKEN", "tok-secret-123"),
            ("CASESTREAM_EVENT_FORMAT", "xml"),
        ]);
        let err = Flags::default().load(vars).unwrap_err().to_string();
        assert!(err.contains("SNAPENGAGE_WIDGET_IDS is required"), "{err}");
        let mut vars = minimal();
        vars.extend(env(&[
            ("CASESTREAM_EVENT_FORMAT", "xml"),
            ("CASESTREAM_TOPIC_CASES", "bad topic!"),
        ]));
        let err = Flags::default().load(vars).unwrap_err().to_string();
        assert!(err.contains("CASESTREAM_EVENT_FORMAT"), "{err}");
    }
}
