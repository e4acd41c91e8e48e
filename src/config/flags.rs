//! The command-line flags of `casestream run` and `casestream check` that map onto settings.

use std::path::PathBuf;

use super::{Config, ConfigError, ENV_CONFIG, Layer};
use crate::admin::ENV_ADMIN_ADDR;
use crate::pipeline::tracker::{ENV_SETTLE, ENV_SURVEY_HORIZON};
use crate::pipeline::{
    ENV_LATE_VISIBILITY, ENV_LOOKBACK, ENV_MAX_STALENESS, ENV_POLL_INTERVAL, ENV_SINCE,
    ENV_WIDGET_IDS, ENV_WINDOW_OVERLAP,
};
use crate::sink::config::{
    BOOTSTRAP_SERVERS, Delivery, ENV_DELIVERY, ENV_EVENT_FORMAT, KafkaSettings,
};
use crate::snapengage::settings::{ENV_API_TOKEN_FILE, ENV_API_URL, ENV_ORG_ID, ENV_RATE_LIMIT};
use crate::state::{DEFAULT_STATE_DIR, ENV_STATE_DIR};

/// Where `casestream state` works ([`Flags::state_target`]).
#[derive(Debug)]
pub struct StateTarget {
    pub state_dir: PathBuf,
    /// Names the event ids `state case` shows, when given.
    pub org_id: Option<String>,
    /// Exactly-once delivery: changes go through this changelog.
    pub changelog: Option<KafkaSettings>,
}

/// Flags win over the environment, the environment over the file.
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
    /// Upper bound on the days before today the fresh window reaches (CASESTREAM_LOOKBACK).
    #[arg(long)]
    pub lookback: Option<String>,
    /// How long after its day ends a case may still appear (CASESTREAM_LATE_VISIBILITY).
    #[arg(long)]
    pub late_visibility: Option<String>,
    /// datetimes mode: the rolling window's reach before the last read (CASESTREAM_WINDOW_OVERLAP).
    #[arg(long)]
    pub window_overlap: Option<String>,
    /// Poll intervals a widget may go unread under a short budget (CASESTREAM_MAX_STALENESS).
    #[arg(long)]
    pub max_staleness: Option<String>,
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
        Config::from_layer(&self.layered(env)?)
    }

    /// What `casestream state` works on: the state directory and, in exactly-once delivery,
    /// the changelog's Kafka settings (which take the whole configuration, as `run` does). In
    /// at-least-once delivery only the state directory is needed: a state copied off a
    /// volume can be inspected anywhere.
    pub fn state_target(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<StateTarget, ConfigError> {
        let layer = self.layered(env)?;
        let org_id = layer.text(ENV_ORG_ID);
        if layer.parse(ENV_DELIVERY, str::parse)? == Some(Delivery::ExactlyOnce) {
            let config = Config::from_layer(&layer)?;
            return Ok(StateTarget {
                state_dir: config.state_dir,
                org_id,
                changelog: Some(config.kafka),
            });
        }
        Ok(StateTarget {
            state_dir: PathBuf::from(
                layer
                    .text(ENV_STATE_DIR)
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            ),
            org_id,
            changelog: None,
        })
    }

    /// Defaults < file < environment < these flags, unchecked.
    fn layered(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Layer, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file_path = self.config.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == ENV_CONFIG)
                .map(|(_, v)| PathBuf::from(v))
        });
        let file = match file_path {
            Some(path) => Layer::from_file(&path)?,
            None => Layer::default(),
        };
        Ok(self.layer().over(Layer::from_env(env)).over(file))
    }

    /// These flags as a layer of settings.
    fn layer(&self) -> Layer {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mut properties: Vec<(String, String)> = self
            .kafka_property
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if let Some(servers) = &self.bootstrap_servers {
            properties.push((BOOTSTRAP_SERVERS.into(), servers.clone()));
        }
        Layer::from_pairs(
            [
                (ENV_API_URL, self.api_url.clone()),
                (ENV_ORG_ID, self.org_id.clone()),
                (ENV_API_TOKEN_FILE, path(&self.api_token_file)),
                (ENV_WIDGET_IDS, self.widget_ids.clone()),
                (ENV_RATE_LIMIT, self.rate_limit.clone()),
                (ENV_STATE_DIR, path(&self.state_dir)),
                (ENV_POLL_INTERVAL, self.poll_interval.clone()),
                (ENV_SETTLE, self.settle.clone()),
                (ENV_LOOKBACK, self.lookback.clone()),
                (ENV_LATE_VISIBILITY, self.late_visibility.clone()),
                (ENV_WINDOW_OVERLAP, self.window_overlap.clone()),
                (ENV_MAX_STALENESS, self.max_staleness.clone()),
                (ENV_SURVEY_HORIZON, self.survey_horizon.clone()),
                (ENV_SINCE, self.since.clone()),
                (ENV_EVENT_FORMAT, self.event_format.clone()),
                (ENV_ADMIN_ADDR, self.admin_addr.clone()),
            ],
            properties,
        )
    }
}
