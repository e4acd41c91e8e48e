//! What the simulator simulates: the org, token and widgets, how cases and surveys arrive,
//! and which faults it injects.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";
pub const DEFAULT_ORG: &str = "demo";
pub const DEFAULT_TOKEN: &str = "demo-token";
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The documented maximum of cases per response.
pub const MAX_PAGE_SIZE: usize = 100;

/// Rates (0.0–1.0) at which requests to the Logs API path fail on purpose.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// 429 Too Many Requests with a `Retry-After` header.
    pub rate_429: f64,
    /// Seconds sent in `Retry-After`.
    pub retry_after_secs: u64,
    /// 500 or 503.
    pub rate_5xx: f64,
    /// Responses delayed by `slow_ms`.
    pub rate_slow: f64,
    pub slow_ms: u64,
    /// A 200 whose JSON body is cut off half-way.
    pub rate_truncate: f64,
    /// A page that starts with the last case of the previous page again.
    pub rate_repeat: f64,
    /// Widgets whose next-page links loop: every page after the first links to itself.
    pub loop_links: Vec<String>,
    /// Responses to next-page requests (those with a cursor) are delayed this long, so a
    /// window can span a chosen stretch of time. The page is served (counted, its cases
    /// picked) before the delay.
    pub slow_cursor_ms: u64,
    /// Case ids whose pages answer 503 on every request, whatever the window holding them: a
    /// page the API cannot serve, until the id is taken off the list.
    pub unreadable_cases: Vec<String>,
    /// Windows that start before today (UTC, on the simulator's clock) answer 503: an API that
    /// serves today but fails heavy reads of the past.
    pub brownout_past_days: bool,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub org: String,
    pub token: String,
    pub widgets: Vec<String>,
    pub seed: u64,
    /// New cases per hour per widget (virtual time); 0 generates none.
    pub cases_per_hour: f64,
    /// Span of past cases present at start.
    pub history: Duration,
    pub survey_delay: Duration,
    pub survey_spread: Duration,
    pub survey_late_max: Duration,
    /// Time between a chat closing and its case appearing in the API.
    pub index_delay: Duration,
    pub page_size: usize,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            org: DEFAULT_ORG.into(),
            token: DEFAULT_TOKEN.into(),
            widgets: vec!["w1".into(), "w2".into()],
            seed: 1,
            cases_per_hour: 60.0,
            history: Duration::ZERO,
            survey_delay: Duration::from_secs(300),
            survey_spread: Duration::from_secs(600),
            survey_late_max: Duration::from_secs(6 * 3600),
            index_delay: Duration::from_secs(2),
            page_size: DEFAULT_PAGE_SIZE,
            faults: Faults::default(),
        }
    }
}
