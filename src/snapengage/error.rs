//! What can go wrong talking to the Logs API, and which failures are worth asking again for.

use std::time::Duration;

use super::settings::{ENV_API_TOKEN, ENV_MAX_BODY, ENV_MAX_PAGES, ENV_ORG_ID};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the Logs API rejected the API token (HTTP {status}); check {ENV_API_TOKEN} (only the account owner's token has API access): {snippet}"
    )]
    Unauthorized { status: u16, snippet: String },
    #[error("the Logs API does not know org `{org_id}` (HTTP 404); check {ENV_ORG_ID}: {snippet}")]
    OrgNotFound { org_id: String, snippet: String },
    #[error("the Logs API refused the request (HTTP 400): {snippet}")]
    BadRequest { snippet: String },
    #[error("the Logs API answered HTTP {status}: {snippet}")]
    UnexpectedStatus { status: u16, snippet: String },
    #[error("the Logs API is rate limiting us (HTTP 429, retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the Logs API failed (HTTP {status}): {snippet}")]
    Server { status: u16, snippet: String },
    #[error("could not reach the Logs API: {0}")]
    Transport(String),
    #[error("the Logs API sent a body that is not a logs response ({error}): {snippet}")]
    InvalidBody { error: String, snippet: String },
    #[error(
        "refusing to follow next-page link to `{found}`: only `{expected}` is trusted with the API token"
    )]
    ForeignNextLink { found: String, expected: String },
    #[error("the next-page link `{link}` is not a valid URL: {error}")]
    BadNextLink { link: String, error: String },
    #[error("invalid Logs API client setting: {0}")]
    Config(String),
    #[error(
        "the Logs API's next-page link `{link}` was already followed in this window (after {pages} pages): \
         the cursor loops, so the window is given up"
    )]
    LinkLoop { link: String, pages: usize },
    #[error(
        "the window took more than {max} pages ({ENV_MAX_PAGES}); given up as a runaway cursor"
    )]
    TooManyPages { max: usize },
    #[error("the Logs API sent a body of more than {limit} bytes ({ENV_MAX_BODY}); refused unread")]
    BodyTooLarge { limit: usize },
}

impl ClientError {
    /// Failures worth asking again for; the others need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::RateLimited { .. }
                | ClientError::Server { .. }
                | ClientError::Transport(_)
                | ClientError::InvalidBody { .. }
        )
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Unauthorized { .. } => "unauthorized",
            ClientError::OrgNotFound { .. } => "org_not_found",
            ClientError::BadRequest { .. } => "bad_request",
            ClientError::UnexpectedStatus { .. } => "unexpected_status",
            ClientError::RateLimited { .. } => "rate_limited",
            ClientError::Server { .. } => "server_error",
            ClientError::Transport(_) => "transport",
            ClientError::InvalidBody { .. } => "invalid_body",
            ClientError::ForeignNextLink { .. } => "foreign_next_link",
            ClientError::BadNextLink { .. } => "bad_next_link",
            ClientError::Config(_) => "config",
            ClientError::LinkLoop { .. } => "link_loop",
            ClientError::TooManyPages { .. } => "too_many_pages",
            ClientError::BodyTooLarge { .. } => "body_too_large",
        }
    }
}
