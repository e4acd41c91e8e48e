//! Operations: `/metrics` (Prometheus), `/livez` and `/readyz` on one admin port, and the
//! client metrics they report.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::monotonic_ms;
use crate::pipeline::Health;
use crate::sink::KafkaSink;
use crate::snapengage::client::ClientObserver;

/// How often readiness asks Kafka for metadata, so an outage shows even with no traffic.
const KAFKA_PROBE_EVERY: Duration = Duration::from_secs(5);
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency buckets in seconds for request and window histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide Prometheus recorder (there is one metrics registry per process).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .unwrap_or_else(|e| unreachable!("the bucket list is not empty: {e}"));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just stays unused.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe_metrics();
        handle
    })
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "casestream_api_requests_total",
        "Logs API requests by widget and status"
    );
    describe_histogram!(
        "casestream_api_request_seconds",
        Unit::Seconds,
        "Logs API request latency"
    );
    describe_counter!(
        "casestream_api_retries_total",
        "Logs API requests retried, by reason"
    );
    describe_histogram!(
        "casestream_rate_limit_wait_seconds",
        Unit::Seconds,
        "Time requests waited for the shared request budget"
    );
    describe_counter!(
        "casestream_cases_seen_total",
        "Cases received from the Logs API"
    );
    describe_counter!(
        "casestream_events_published_total",
        "Events acknowledged by Kafka, by type"
    );
    describe_counter!(
        "casestream_dead_letters_total",
        "Records sent to the dead-letter topic, by widget and reason"
    );
    describe_gauge!(
        "casestream_pending_surveys",
        "Cases still watched for a survey"
    );
    describe_gauge!("casestream_known_cases", "Case ids in the state");
    describe_gauge!(
        "casestream_state_size_bytes",
        Unit::Bytes,
        "Size of the state database"
    );
    describe_gauge!(
        "casestream_window_lag_seconds",
        Unit::Seconds,
        "Seconds since the fresh window of a widget was last read completely"
    );
    describe_counter!(
        "casestream_kafka_delivery_errors_total",
        "Pages Kafka did not acknowledge"
    );
    describe_counter!(
        "casestream_kafka_producer_replacements_total",
        "Kafka producers replaced after a fatal error"
    );
    describe_counter!(
        "casestream_dead_letters_refused_total",
        "Dead letters Kafka refused even cut down (logged as errors only)"
    );
    describe_counter!(
        "casestream_state_pruned_total",
        "State entries pruned because no future decision needs them, by kind"
    );
    describe_counter!(
        "casestream_windows_resumed_total",
        "Windows that went on from a cursor saved before a restart"
    );
    describe_counter!(
        "casestream_window_errors_total",
        "Windows that failed after retries"
    );
    describe_histogram!(
        "casestream_window_seconds",
        Unit::Seconds,
        "Time to read one window"
    );
    describe_gauge!("casestream_ready", "1 when /readyz answers 200");
}

/// Logs API client metrics; a retry wait also tells liveness the loop waits on purpose.
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
        metrics::counter!(
            "casestream_api_requests_total",
            "widget" => widget_id.to_owned(),
            "status" => outcome.to_owned()
        )
        .increment(1);
        metrics::histogram!("casestream_api_request_seconds").record(elapsed.as_secs_f64());
    }

    fn retried(&self, widget_id: &str, error_kind: &str, wait: Duration) {
        self.health.beat_for(wait);
        metrics::counter!(
            "casestream_api_retries_total",
            "widget" => widget_id.to_owned(),
            "reason" => error_kind.to_owned()
        )
        .increment(1);
    }

    fn rate_limit_waited(&self, waited: Duration) {
        metrics::histogram!("casestream_rate_limit_wait_seconds").record(waited.as_secs_f64());
    }
}

/// How stale things may get before the probes fail.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// The poll loop must have turned within this.
    pub live: Duration,
    /// A window must have been read completely within this.
    pub ready: Duration,
}

impl Thresholds {
    /// Generous multiples of the poll interval: a probe should catch a stuck process, not
    /// a slow catch-up page or a cycle of API retries.
    pub fn for_poll_interval(poll_interval: Duration) -> Self {
        Self {
            live: (poll_interval * 4).max(Duration::from_secs(300)),
            ready: (poll_interval * 4).max(Duration::from_secs(180)),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    thresholds: Thresholds,
}

/// How long ago `at` ([`monotonic_ms`]) was; `None` for never, 0 for a time still ahead.
fn age_ms(at: i64) -> Option<u64> {
    (at > 0).then(|| u64::try_from(monotonic_ms() - at).unwrap_or(0))
}

async fn metrics_endpoint(State(state): State<AdminState>) -> Response {
    // Lag is age, so it is computed at scrape time.
    for (widget, at_ms) in state.health.fresh_polls() {
        if let Some(age) = age_ms(at_ms) {
            metrics::gauge!("casestream_window_lag_seconds", "widget" => widget)
                .set(age as f64 / 1000.0);
        }
    }
    let (ready, _) = readiness(&state);
    metrics::gauge!("casestream_ready").set(if ready { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

async fn livez(State(state): State<AdminState>) -> Response {
    let beat = age_ms(state.health.heartbeat_ms.load(Ordering::Relaxed));
    let alive = beat.is_none_or(|age| age <= state.thresholds.live.as_millis() as u64);
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"alive": alive, "poll_loop_age_ms": beat})),
    )
        .into_response()
}

fn readiness(state: &AdminState) -> (bool, serde_json::Value) {
    let health = &state.health;
    let state_ok = health.state_ok.load(Ordering::Relaxed);
    // Both must hold: the probe's answer never hides deliveries that are failing.
    let deliveries_ok = health.kafka_ok.load(Ordering::Relaxed);
    let reachable = health.kafka_reachable.load(Ordering::Relaxed);
    let kafka_ok = deliveries_ok && reachable;
    let poll_age = age_ms(health.last_poll_ok_ms.load(Ordering::Relaxed));
    let polled = poll_age.is_some_and(|age| age <= state.thresholds.ready.as_millis() as u64);
    let fatal = health.fatal();
    let ready = state_ok && kafka_ok && polled && fatal.is_none();
    let mut body = json!({
        "ready": ready,
        "state": state_ok,
        "kafka": kafka_ok,
        "kafka_deliveries": deliveries_ok,
        "kafka_reachable": reachable,
        "last_poll_age_ms": poll_age,
    });
    if let Some(reason) = fatal {
        body["error"] = json!(reason);
    }
    (ready, body)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let (ready, body) = readiness(&state);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Binds the admin port and serves until `shutdown`; also probes Kafka in the background so
/// readiness reflects an outage even when nothing is being published. Returns the bound
/// address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    sink: Arc<KafkaSink>,
    thresholds: Thresholds,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    prometheus();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            health: health.clone(),
            thresholds,
        });
    let stopped = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    tokio::spawn(async move {
        loop {
            let reachable = sink.ping(KAFKA_PROBE_TIMEOUT).await.is_ok();
            health.kafka_reachable.store(reachable, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(KAFKA_PROBE_EVERY) => {}
            }
        }
    });
    tracing::info!(addr = %bound, "admin endpoints: /metrics /livez /readyz");
    Ok(bound)
}
