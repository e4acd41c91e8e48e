//! What the Logs API client reports: metrics, and a retry wait tells liveness that the poll
//! loop waits on purpose.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::Health;
use crate::metrics;
use crate::snapengage::client::ClientObserver;

/// The poll loop's observer of its Logs API client.
pub struct ClientMetrics {
    health: Arc<Health>,
}

impl ClientMetrics {
    pub fn new(health: Arc<Health>) -> Self {
        Self { health }
    }
}

impl ClientObserver for ClientMetrics {
    fn request_finished(&self, widget_id: &str, outcome: &str, elapsed: Duration) {
        metrics::api_request(widget_id, outcome, elapsed);
    }

    fn retried(&self, widget_id: &str, error_kind: &str, wait: Duration) {
        self.health.beat_for(wait);
        metrics::api_retry(widget_id, error_kind);
    }

    fn rate_limit_waited(&self, waited: Duration) {
        metrics::rate_limit_wait(waited);
    }

    fn paused(&self, wait: Duration) {
        self.health.beat_for(wait);
    }
}
