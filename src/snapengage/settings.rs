//! The Logs API client's settings, their defaults, and the checks each value must pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::window::WindowMode;

pub const ENV_API_URL: &str = "SNAPENGAGE_API_URL";
pub const ENV_ORG_ID: &str = "SNAPENGAGE_ORG_ID";
pub const ENV_API_TOKEN: &str = "SNAPENGAGE_API_TOKEN";
pub const ENV_API_TOKEN_FILE: &str = "SNAPENGAGE_API_TOKEN_FILE";
pub const ENV_RATE_LIMIT: &str = "CASESTREAM_RATE_LIMIT";
pub const ENV_API_RETRY_MIN_DELAY: &str = "CASESTREAM_API_RETRY_MIN_DELAY";
pub const ENV_API_RETRY_MAX_DELAY: &str = "CASESTREAM_API_RETRY_MAX_DELAY";
pub const ENV_API_MAX_ATTEMPTS: &str = "CASESTREAM_API_MAX_ATTEMPTS";
pub const ENV_MAX_PAGES: &str = "CASESTREAM_MAX_PAGES";
pub const ENV_MAX_BODY: &str = "CASESTREAM_MAX_BODY";
pub const ENV_WINDOW_MODE: &str = "CASESTREAM_WINDOW_MODE";

/// The public Logs API host.
pub const DEFAULT_API_URL: &str = "https://www.snapengage.com";
/// Well below the ~10 requests/s that public clients cite as the API's limit.
pub const DEFAULT_RATE_LIMIT_PER_SEC: f64 = 5.0;
/// The highest request rate accepted: more would be a typo, not a budget.
pub const MAX_RATE_LIMIT_PER_SEC: f64 = 1000.0;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages one window may take before it is taken for a runaway cursor.
pub const DEFAULT_MAX_PAGES: usize = 10_000;
/// The largest response body read; 100 cases are rarely more than a few MiB.
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
/// A smaller body limit could not hold one case.
pub const MIN_MAX_BODY: usize = 1024;

/// How transient failures are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    /// Not shorter than `min_delay`.
    pub max_delay: Duration,
    pub max_attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_attempts: 8,
        }
    }
}

/// Everything the client needs to talk to one org's Logs API.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// An http(s) URL with a host ([`check_api_url`]).
    pub base_url: Url,
    pub org_id: String,
    pub token: SecretString,
    /// The file the token came from, read again when the API answers 401 or 403: a rotated
    /// token is picked up without a restart.
    pub token_file: Option<PathBuf>,
    /// Requests per second shared by every widget ([`parse_rate_limit`]).
    pub rate_limit_per_sec: f64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Pages one window may take.
    pub max_pages: usize,
    /// The largest response body read, in bytes.
    pub max_body: usize,
    /// How `start` and `end` are sent.
    pub window_mode: WindowMode,
}

impl ClientConfig {
    /// The defaults, for this API, org and token.
    pub fn new(base_url: Url, org_id: impl Into<String>, token: SecretString) -> Self {
        Self {
            base_url,
            org_id: org_id.into(),
            token,
            token_file: None,
            rate_limit_per_sec: DEFAULT_RATE_LIMIT_PER_SEC,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            max_pages: DEFAULT_MAX_PAGES,
            max_body: DEFAULT_MAX_BODY,
            window_mode: WindowMode::Dates,
        }
    }
}

/// The API token held in `path`, surrounding whitespace removed.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|text| text.trim().to_owned())
}

/// The API base URL: http(s), with a host.
pub fn check_api_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err("must be an http(s) URL with a host".into()),
    }
}

/// A token goes into a header: no control characters.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(())
    }
}

/// Requests per second: more than 0, at most [`MAX_RATE_LIMIT_PER_SEC`].
pub fn parse_rate_limit(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE_LIMIT_PER_SEC => Ok(r),
        _ => Err(format!(
            "must be requests per second, more than 0 and at most {MAX_RATE_LIMIT_PER_SEC}"
        )),
    }
}

/// A body limit in bytes or with a unit (`32MiB`), at least [`MIN_MAX_BODY`].
pub fn parse_max_body(text: &str) -> Result<usize, &'static str> {
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(size) if size.as_u64() >= MIN_MAX_BODY as u64 => {
            Ok(usize::try_from(size.as_u64()).unwrap_or(usize::MAX))
        }
        _ => Err("must be a size of at least 1 KiB, in bytes or with a unit (`32MiB`)"),
    }
}
