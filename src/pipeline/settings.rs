//! The poll loop's settings: which widgets, how often, how far back, how a short budget is
//! shared.

use std::time::Duration;

use chrono::NaiveDate;

use super::tracker::TrackerSettings;

pub const ENV_WIDGET_IDS: &str = "SNAPENGAGE_WIDGET_IDS";
pub const ENV_POLL_INTERVAL: &str = "CASESTREAM_POLL_INTERVAL";
pub const ENV_LOOKBACK: &str = "CASESTREAM_LOOKBACK";
pub const ENV_SINCE: &str = "CASESTREAM_SINCE";
pub const ENV_LATE_VISIBILITY: &str = "CASESTREAM_LATE_VISIBILITY";
pub const ENV_WINDOW_OVERLAP: &str = "CASESTREAM_WINDOW_OVERLAP";
pub const ENV_MAX_STALENESS: &str = "CASESTREAM_MAX_STALENESS";

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// A case is created when its chat starts and visible once it ends (and is indexed): the
/// day just ended stays fresh long enough for a chat that crossed midnight to close. The
/// simulator's chats last up to 26 min; SnapEngage publishes no bound.
pub const DEFAULT_LATE_VISIBILITY: Duration = Duration::from_secs(30 * 60);
/// The rolling window reaches back as far, for the same chats.
pub const DEFAULT_WINDOW_OVERLAP: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_MAX_STALENESS: u32 = 5;

#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSettings {
    pub widgets: Vec<String>,
    /// How often the fresh window is read (more than zero).
    pub poll_interval: Duration,
    /// Upper bound on the days before today the fresh window reaches.
    pub lookback: Duration,
    /// How long after its day ends a case may still become visible.
    pub late_visibility: Duration,
    /// `datetimes` mode: how far before the last complete read the rolling window starts.
    pub window_overlap: Duration,
    /// Poll intervals a fresh window may go unread when the request budget is short.
    pub max_staleness: u32,
    /// The first day read on a first start with empty state; `None`: the lookback's first day.
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
            late_visibility: DEFAULT_LATE_VISIBILITY,
            window_overlap: DEFAULT_WINDOW_OVERLAP,
            max_staleness: DEFAULT_MAX_STALENESS,
            since: None,
            tracker: TrackerSettings::default(),
        }
    }
}
