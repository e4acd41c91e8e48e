//! The Logs API client: one request per page, following `linkToNextSetOfResults`, with a
//! shared client-side rate limit and jittered exponential retries for transient failures.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use futures::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use url::Url;

use super::case::LogsResponse;
use super::error::ClientError;
use super::settings::{ClientConfig, read_token_file};
use super::window::Window;

/// A server asking us to wait longer than this is capped: we would rather ask again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// How much of an unexpected response body an error message quotes.
const SNIPPET_CHARS: usize = 240;

/// One page of a window, its cases still raw.
#[derive(Debug)]
pub struct Page {
    pub widget_id: String,
    /// 0 for the first page of the window.
    pub index: usize,
    pub cases: Vec<Box<RawValue>>,
    /// The link to the next page (trusted, complete), absent on the last page: kept with the
    /// page's commit so a restart can go on from there.
    pub next: Option<Url>,
}

impl Page {
    /// Whether this is the window's last page.
    pub fn is_last(&self) -> bool {
        self.next.is_none()
    }
}

/// Observes what the client does, for metrics. The default does nothing.
pub trait ClientObserver: Send + Sync {
    fn request_finished(&self, _widget_id: &str, _outcome: &str, _elapsed: Duration) {}
    /// A request failed and is retried after `wait`.
    fn retried(&self, _widget_id: &str, _error_kind: &str, _wait: Duration) {}
    fn rate_limit_waited(&self, _waited: Duration) {}
    /// Every request waits `wait`: the API asked the token to (a 429's Retry-After).
    fn paused(&self, _wait: Duration) {}
}

struct NoObserver;
impl ClientObserver for NoObserver {}

/// A Logs API client for one org and token. Clones share the connection pool and the rate
/// limit, so every widget's requests together stay within the budget.
#[derive(Clone)]
pub struct LogsClient {
    inner: Arc<Inner>,
    /// Attempts per request when fewer than the configured retries' ([`with_attempts`](
    /// Self::with_attempts)).
    attempts: Option<usize>,
}

struct Inner {
    config: ClientConfig,
    /// The token in use: the configured one until a re-read of `token_file` replaces it.
    token: std::sync::RwLock<SecretString>,
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    logs_url: Url,
    observer: Arc<dyn ClientObserver>,
    /// Requests sent, retries included: what the budget was spent on.
    requests: std::sync::atomic::AtomicU64,
    /// Until when no request goes out: a 429's Retry-After is about the token, which every
    /// widget's windows (read at once) share.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for LogsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogsClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl LogsClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        Self::with_observer(config, Arc::new(NoObserver))
    }

    pub fn with_observer(
        config: ClientConfig,
        observer: Arc<dyn ClientObserver>,
    ) -> Result<Self, ClientError> {
        // From here on every log line and error masks the token, whoever wrote it.
        crate::redact::register(config.token.expose_secret().trim());
        let quota = quota_for(config.rate_limit_per_sec)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // Redirects could carry the Authorization header elsewhere; the API has no need.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("casestream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut logs_url = config.base_url.clone();
        logs_url
            .path_segments_mut()
            .map_err(|()| ClientError::Config("the API URL cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(["api", "v2", config.org_id.as_str(), "logs"]);
        Ok(Self {
            attempts: None,
            inner: Arc::new(Inner {
                limiter: RateLimiter::direct(quota),
                http,
                logs_url,
                observer,
                requests: std::sync::atomic::AtomicU64::new(0),
                paused_until: std::sync::Mutex::new(None),
                token: std::sync::RwLock::new(config.token.clone()),
                config,
            }),
        })
    }

    /// A clone that tries each request at most `attempts` times (the configured retries' delays
    /// otherwise), sharing the connection pool and the rate limit: for reads whose failure is
    /// already expected, where a long back-off would only hold up others.
    pub fn with_attempts(&self, attempts: usize) -> Self {
        Self {
            inner: self.inner.clone(),
            attempts: Some(attempts.clamp(1, self.inner.config.retry.max_attempts.max(1))),
        }
    }

    /// Requests sent so far by this client and its clones.
    pub fn requests_sent(&self) -> u64 {
        self.inner
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The first-page URL of a window for one widget.
    pub fn window_url(&self, widget_id: &str, window: &Window) -> Url {
        let (start, end) = window.query_bounds();
        let mut url = self.inner.logs_url.clone();
        url.query_pairs_mut()
            .append_pair("widgetId", widget_id)
            .append_pair("start", &start)
            .append_pair("end", &end)
            .append_pair("timezone", &window.timezone());
        url
    }

    /// Streams the pages of one widget's window. Only one page is held at a time, so memory
    /// stays flat however large the window is. The stream ends after the last page or the
    /// first error that retries could not mend.
    pub fn pages(
        &self,
        widget_id: &str,
        window: Window,
    ) -> impl Stream<Item = Result<Page, ClientError>> + Send + 'static {
        self.pages_from(widget_id, self.window_url(widget_id, &window), None)
    }

    /// Like [`pages`](Self::pages), for the window whose first-page URL ([`window_url`](
    /// Self::window_url)) is `first`, going on from a next-page link saved earlier for it
    /// (`resume`: the link and the index of the page it leads to). The link must point at the
    /// configured API, as any next link must; one that does not ends the stream at once.
    pub fn pages_from(
        &self,
        widget_id: &str,
        first: Url,
        resume: Option<(&str, usize)>,
    ) -> impl Stream<Item = Result<Page, ClientError>> + Send + 'static {
        let client = self.clone();
        let widget_id = widget_id.to_owned();
        // Links followed in this window: a cursor that comes back would never end.
        let mut followed = std::collections::HashSet::from([first.to_string()]);
        let start = match resume {
            None => Ok((first, 0usize)),
            Some((link, index)) => self.trusted_next_url(link, &first).map(|url| {
                followed.insert(url.to_string());
                (url, index)
            }),
        };
        futures::stream::try_unfold((Some(start), followed), move |(next, mut followed)| {
            let client = client.clone();
            let widget_id = widget_id.clone();
            async move {
                let (url, index) = match next {
                    None => return Ok(None),
                    Some(start) => start?,
                };
                let response = client.fetch_with_retries(&widget_id, &url).await?;
                let next = match response.next_link() {
                    Some(link) => {
                        let next_url = client.trusted_next_url(link, &url)?;
                        if index + 1 >= client.inner.config.max_pages {
                            return Err(ClientError::TooManyPages {
                                max: client.inner.config.max_pages,
                            });
                        }
                        if !followed.insert(next_url.to_string()) {
                            return Err(ClientError::LinkLoop {
                                link: next_url.to_string(),
                                pages: index + 1,
                            });
                        }
                        Some((next_url, index + 1))
                    }
                    None => None,
                };
                let page = Page {
                    widget_id,
                    index,
                    cases: response.cases,
                    next: next.as_ref().map(|(url, _)| url.clone()),
                };
                Ok(Some((page, (next.map(Ok), followed))))
            }
        })
    }

    /// Parses a next-page link and checks it points at the configured API, never elsewhere.
    fn trusted_next_url(&self, link: &str, current: &Url) -> Result<Url, ClientError> {
        let mut url = current.join(link).map_err(|e| ClientError::BadNextLink {
            link: link.to_owned(),
            error: e.to_string(),
        })?;
        let base = &self.inner.config.base_url;
        let same_origin = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default();
        if !same_origin {
            return Err(ClientError::ForeignNextLink {
                found: url.origin().ascii_serialization(),
                expected: base.origin().ascii_serialization(),
            });
        }
        // Some clients of this API re-send the window with the cursor; do so when the link
        // leaves them out.
        let present: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let missing: Vec<(String, String)> = current
            .query_pairs()
            .filter(|(k, _)| k != "next" && !present.iter().any(|p| p == k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if !missing.is_empty() {
            url.query_pairs_mut().extend_pairs(missing);
        }
        Ok(url)
    }

    async fn fetch_with_retries(
        &self,
        widget_id: &str,
        url: &Url,
    ) -> Result<LogsResponse, ClientError> {
        let policy = &self.inner.config.retry;
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(
                self.attempts
                    .unwrap_or(policy.max_attempts)
                    .saturating_sub(1),
            );
        let observer = &self.inner.observer;
        (|| self.fetch_once(widget_id, url))
            .retry(backoff)
            .when(ClientError::is_transient)
            .adjust(|err, delay| match (err, delay) {
                // Honour the server's Retry-After when it asks for longer than our backoff.
                (
                    ClientError::RateLimited {
                        retry_after: Some(asked),
                    },
                    Some(ours),
                ) => Some(ours.max(*asked)),
                (_, delay) => delay,
            })
            .notify(|err, delay| {
                observer.retried(widget_id, err.kind(), delay);
                tracing::warn!(widget = widget_id, error = %err, retry_in = ?delay, "Logs API request failed; retrying");
            })
            .await
    }

    async fn fetch_once(&self, widget_id: &str, url: &Url) -> Result<LogsResponse, ClientError> {
        let paused = *self
            .inner
            .paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = paused.and_then(|until| until.checked_duration_since(Instant::now())) {
            self.inner.observer.paused(wait);
            tokio::time::sleep(wait).await;
        }
        let waited = Instant::now();
        self.inner.limiter.until_ready().await;
        self.inner.observer.rate_limit_waited(waited.elapsed());
        self.inner
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let started = Instant::now();
        let mut result = self.request(url).await;
        if matches!(result, Err(ClientError::Unauthorized { .. })) && self.reload_token() {
            result = self.request(url).await;
        }
        if let Err(ClientError::RateLimited {
            retry_after: Some(asked),
        }) = &result
        {
            let until = Instant::now() + *asked;
            let mut paused = self
                .inner
                .paused_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *paused = Some(paused.map_or(until, |current| current.max(until)));
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.inner
            .observer
            .request_finished(widget_id, outcome, started.elapsed());
        result
    }

    /// Reads the token file again; true when it holds a new token, now in use.
    fn reload_token(&self) -> bool {
        let Some(path) = &self.inner.config.token_file else {
            return false;
        };
        let fresh = match read_token_file(path) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the API token file again");
                return false;
            }
        };
        let mut token = self.inner.token.write().unwrap_or_else(|p| p.into_inner());
        if fresh.is_empty() || fresh == token.expose_secret() {
            return false;
        }
        crate::redact::register(&fresh);
        *token = SecretString::from(fresh);
        tracing::info!(path = %path.display(), "the API token file holds a new token; using it");
        true
    }

    async fn request(&self, url: &Url) -> Result<LogsResponse, ClientError> {
        let token = self
            .inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let token = token.expose_secret();
        let mut auth = HeaderValue::from_str(token)
            .map_err(|_| ClientError::Config("the API token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let response = self
            .inner
            .http
            .get(url.clone())
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .map_err(|e| ClientError::Transport(describe_transport(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match read_capped(response, self.inner.config.max_body).await {
            Ok(body) => body,
            // An error's body only feeds a snippet: its status (429's Retry-After) decides.
            Err(ClientError::BodyTooLarge { .. }) if !status.is_success() => Vec::new(),
            Err(e) => return Err(e),
        };
        let snippet = || snippet(&body, token);
        match status {
            s if s.is_success() => serde_json::from_slice::<LogsResponse>(&body).map_err(|e| {
                ClientError::InvalidBody {
                    error: e.to_string(),
                    snippet: snippet(),
                }
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ClientError::Unauthorized {
                status: status.as_u16(),
                snippet: snippet(),
            }),
            StatusCode::NOT_FOUND => Err(ClientError::OrgNotFound {
                org_id: self.inner.config.org_id.clone(),
                snippet: snippet(),
            }),
            StatusCode::BAD_REQUEST => Err(ClientError::BadRequest { snippet: snippet() }),
            StatusCode::TOO_MANY_REQUESTS => Err(ClientError::RateLimited { retry_after }),
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                Err(ClientError::Server {
                    status: s.as_u16(),
                    snippet: snippet(),
                })
            }
            s => Err(ClientError::UnexpectedStatus {
                status: s.as_u16(),
                snippet: snippet(),
            }),
        }
    }
}

/// Reads a body of at most `limit` bytes; a larger one is refused without being kept, so
/// a runaway response can never exhaust memory.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ClientError::BodyTooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ClientError::Transport(describe_transport(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn quota_for(per_sec: f64) -> Result<Quota, ClientError> {
    if !(per_sec.is_finite() && per_sec > 0.0) {
        return Err(ClientError::Config(format!(
            "rate limit must be a positive number of requests per second, got {per_sec}"
        )));
    }
    // One request per period, no burst: the budget is never exceeded even briefly.
    let period = Duration::from_secs_f64(1.0 / per_sec);
    Quota::with_period(period)
        .map(|q| q.allow_burst(NonZeroU32::MIN))
        .ok_or_else(|| ClientError::Config(format!("rate limit {per_sec}/s is too high")))
}

/// reqwest's errors name the URL (which holds no secret) and the cause; keep both.
fn describe_transport(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as delta-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(SystemTime::now()).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The start of a response body for an error message: printable, short, and never the token
/// (a server could echo the header back).
fn snippet(body: &[u8], token: &str) -> String {
    let text = String::from_utf8_lossy(body);
    // Redact before cutting, so a token across the cut cannot leak in part.
    let text = crate::redact::mask(&text, [token]);
    let mut short: String = text
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > SNIPPET_CHARS {
        short.push('…');
    }
    if short.trim().is_empty() {
        "(empty body)".into()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, NaiveDate, Utc};

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        let soon = SystemTime::now() + Duration::from_secs(30);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn snippet_is_short_printable_and_redacted() {
        let s = snippet(b"bad token sekrit\n", "sekrit");
        assert_eq!(s, "bad token [redacted] ");
        let long = "x".repeat(1000);
        assert_eq!(
            snippet(long.as_bytes(), "t").chars().count(),
            SNIPPET_CHARS + 1
        );
        assert_eq!(snippet(b"", "t"), "(empty body)");
        // A token across the cut: masked whole, no prefix of it shows.
        let body = format!(
            "{}sekrit-token-across-the-cut",
            "y".repeat(SNIPPET_CHARS - 4)
        );
        let s = snippet(body.as_bytes(), "sekrit-token-across-the-cut");
        assert!(!s.contains("sekr"), "{s}");
    }

    #[test]
    fn windows_render_dates_or_datetimes() {
        let dates = Window::Dates {
            start: NaiveDate::from_ymd_opt(2017, 4, 20).unwrap(),
            end: NaiveDate::from_ymd_opt(2017, 4, 28).unwrap(),
        };
        assert_eq!(dates.to_string(), "2017-04-20..2017-04-28");
        let t = DateTime::parse_from_rfc3339("2017-04-20T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let times = Window::Times { start: t, end: t };
        assert_eq!(times.query_bounds().0, "2017-04-20T10:00:00Z");
    }

    #[test]
    fn rate_limit_must_be_positive() {
        assert!(quota_for(0.0).is_err());
        assert!(quota_for(f64::NAN).is_err());
        assert!(quota_for(0.5).is_ok());
        assert!(quota_for(5.0).is_ok());
    }

    #[test]
    fn next_links_only_to_the_configured_origin() {
        let config = ClientConfig::new(
            Url::parse("http://127.0.0.1:8089").unwrap(),
            "org",
            SecretString::from("tok"),
        );
        let client = LogsClient::new(config).unwrap();
        let window = Window::Dates {
            start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            end: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
        };
        let first = client.window_url("w1", &window);
        assert_eq!(
            first.as_str(),
            "http://127.0.0.1:8089/api/v2/org/logs?widgetId=w1&start=2026-01-01&end=2026-01-02&timezone=Etc%2FUTC"
        );
        let same = client
            .trusted_next_url("http://127.0.0.1:8089/api/v2/org/logs?next=abc", &first)
            .unwrap();
        assert!(same.as_str().contains("next=abc"));
        assert!(same.as_str().contains("start=2026-01-01"));
        for foreign in [
            "http://evil.example/api/v2/org/logs?next=abc",
            "https://127.0.0.1:8089/x",
            "http://127.0.0.1:9999/x",
        ] {
            let err = client.trusted_next_url(foreign, &first).unwrap_err();
            assert!(matches!(err, ClientError::ForeignNextLink { .. }), "{err}");
        }
    }
}
