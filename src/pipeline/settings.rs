//! The poll loop's settings: which widgets, how often, how far back.

use std::time::Duration;

use chrono::NaiveDate;

use super::tracker::TrackerSettings;

pub const ENV_WIDGET_IDS: &str = "SNAPENGAGE_WIDGET_IDS";
pub const ENV_POLL_INTERVAL: &str = "CASESTREAM_POLL_INTERVAL";
pub const ENV_LOOKBACK: &str = "CASESTREAM_LOOKBACK";
pub const ENV_SINCE: &str = "CASESTREAM_SINCE";

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSettings {
    pub widgets: Vec<String>,
    /// How often the fresh window is read (more than zero).
    pub poll_interval: Duration,
    /// Days before today read on every poll.
    pub lookback: Duration,
    /// The first day read on a first start with empty state; `None`: today.
    pub since: Option<NaiveDate>,
    pub tracker: TrackerSettings,
}

impl PipelineSettings {
    /// The defaults, for these widgets.
    pub fn new(widgets: Vec<String>) -> Self {
        Self {
            widgets,
            poll_interval: DEFAULT_POLL_INTERVAL,
            lookback: DEFAULT_LOOKBACK,
            since: None,
            tracker: TrackerSettings::default(),
        }
    }
}
