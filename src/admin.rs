//! Operations: what the process reports about itself.

use std::time::Duration;

use crate::snapengage::client::ClientObserver;

/// Logs API client metrics.
pub struct ClientMetrics;

impl ClientObserver for ClientMetrics {
    fn request_finished(&self, widget_id: &str, outcome: &str, elapsed: Duration) {
        metrics::counter!(
            "casestream_api_requests_total",
            "widget" => widget_id.to_owned(),
            "outcome" => outcome.to_owned()
        )
        .increment(1);
        metrics::histogram!("casestream_api_request_seconds").record(elapsed.as_secs_f64());
    }

    fn retried(&self, widget_id: &str, error_kind: &str) {
        metrics::counter!(
            "casestream_api_retries_total",
            "widget" => widget_id.to_owned(),
            "reason" => error_kind.to_owned()
        )
        .increment(1);
    }

    fn rate_limit_waited(&self, waited: Duration) {
        if !waited.is_zero() {
            metrics::counter!("casestream_rate_limit_wait_seconds_total")
                .increment(waited.as_micros() as u64 / 1_000_000);
            metrics::histogram!("casestream_rate_limit_wait_seconds").record(waited.as_secs_f64());
        }
    }
}
