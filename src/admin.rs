//! Operations: `/metrics` (Prometheus), `/livez` and `/readyz` on one admin port, and the
//! [`Health`] they report. Ops owns readiness: the pipeline writes its flags through
//! [`Health`]'s methods, the probes read them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::monotonic_ms;
use crate::metrics;
use crate::sink::KafkaSink;

/// A standby is ready when its store was within this many changelog records of the
/// changelog's end (its last stable offset) within [`CAUGHT_UP_WITHIN`]: it can take over
/// without first rebuilding much.
pub const CAUGHT_UP_LAG: i64 = 1_000;
/// See [`CAUGHT_UP_LAG`]. A standby checks after every read that was not a full batch, so a
/// caught-up one checks every second or so.
pub const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(30);
/// How often readiness asks Kafka for metadata, so an outage shows even with no traffic.
const KAFKA_PROBE_EVERY: Duration = Duration::from_secs(5);
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
pub const ENV_ADMIN_ADDR: &str = "CASESTREAM_ADMIN_ADDR";
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);

/// Where the admin endpoints listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Port 0 picks a free one.
    pub addr: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADMIN_ADDR,
        }
    }
}

/// What the probes report. Each flag has one writer: the poll loop writes all but
/// `kafka_reachable` (the admin probe) and `admin_addr` ([`serve`]).
#[derive(Debug, Default)]
pub struct Health {
    state_ok: AtomicBool,
    /// False while a page's records are not acknowledged.
    deliveries_ok: AtomicBool,
    /// A broker answered a metadata request for our topic.
    kafka_reachable: AtomicBool,
    /// [`monotonic_ms`] of the last completed poll window (any widget).
    last_poll_ok_ms: AtomicI64,
    /// [`monotonic_ms`] until which the poll loop is known to be alive: its last sign of
    /// progress (a page, a cycle), or the end of a wait it chose (a Retry-After, the poll
    /// interval), whichever is later.
    heartbeat_ms: AtomicI64,
    /// Per widget, [`monotonic_ms`] when its fresh window was last read completely.
    fresh_polls: Mutex<HashMap<String, i64>>,
    /// Where the admin endpoints listen, once they do.
    admin_addr: OnceLock<SocketAddr>,
    /// Why the pipeline stopped for good, if it did: readiness names it.
    fatal: OnceLock<String>,
    /// A standby (exactly-once delivery): follows the changelog, polls nothing; written by
    /// the failover loop.
    standby: AtomicBool,
    /// A standby's [`monotonic_ms`] when its store was last within [`CAUGHT_UP_LAG`] records
    /// of the changelog's end.
    caught_up_ms: AtomicI64,
    /// A standby's election error, if the group gave one lately: readiness names it.
    election_error: Mutex<Option<String>>,
}

impl Health {
    /// The loop made progress now.
    pub fn beat(&self) {
        self.beat_for(Duration::ZERO);
    }

    /// The loop is about to wait `wait` on purpose: alive until then, however long. A later
    /// beat never shortens a wait already announced.
    pub fn beat_for(&self, wait: Duration) {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        self.heartbeat_ms
            .fetch_max(monotonic_ms().saturating_add(wait_ms), Ordering::Relaxed);
    }

    /// The last state call succeeded or failed.
    pub fn set_state_ok(&self, ok: bool) {
        self.state_ok.store(ok, Ordering::Relaxed);
    }

    /// Kafka is taking the pipeline's records, or not.
    pub fn set_deliveries_ok(&self, ok: bool) {
        self.deliveries_ok.store(ok, Ordering::Relaxed);
    }

    pub fn deliveries_ok(&self) -> bool {
        self.deliveries_ok.load(Ordering::Relaxed)
    }

    /// A window was read completely.
    pub fn poll_ok(&self) {
        self.last_poll_ok_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Whether any window was ever read completely.
    pub fn polled(&self) -> bool {
        self.last_poll_ok_ms.load(Ordering::Relaxed) > 0
    }

    /// `widget`'s fresh window was read completely.
    pub fn fresh_poll_done(&self, widget: &str) {
        self.fresh_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(widget.to_owned(), monotonic_ms());
    }

    /// Records why the pipeline stopped for good.
    pub fn set_fatal(&self, reason: String) {
        let _ = self.fatal.set(reason);
    }

    /// Why the pipeline stopped for good, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// This instance became the active one (true) or a standby (false).
    pub fn set_active(&self, active: bool) {
        self.standby.store(!active, Ordering::Relaxed);
        metrics::active(active);
    }

    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// A standby's store is within [`CAUGHT_UP_LAG`] records of the changelog's end now.
    pub fn changelog_caught_up(&self) {
        self.caught_up_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The election group's latest error (`None` once it stopped giving one).
    pub fn set_election_error(&self, error: Option<String>) {
        *self
            .election_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Where the admin endpoints listen, once they do.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr.get().copied()
    }

    /// (widget, [`monotonic_ms`] of its last complete fresh poll).
    fn fresh_polls(&self) -> Vec<(String, i64)> {
        self.fresh_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(w, at)| (w.clone(), *at))
            .collect()
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
            metrics::window_lag(&widget, Duration::from_millis(age));
        }
    }
    let (ready, _) = readiness(&state);
    metrics::ready(ready);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::prometheus().render(),
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
    let deliveries_ok = health.deliveries_ok();
    let reachable = health.kafka_reachable.load(Ordering::Relaxed);
    let kafka_ok = deliveries_ok && reachable;
    let poll_age = age_ms(health.last_poll_ok_ms.load(Ordering::Relaxed));
    let polled = poll_age.is_some_and(|age| age <= state.thresholds.ready.as_millis() as u64);
    let fatal = health.fatal();
    // A standby polls nothing: it is ready when its store and Kafka are, its store has caught
    // up with the changelog, and the election group takes it.
    let standby = health.is_standby();
    let caught_up_age = age_ms(health.caught_up_ms.load(Ordering::Relaxed));
    let caught_up = caught_up_age.is_some_and(|age| age <= CAUGHT_UP_WITHIN.as_millis() as u64);
    let election_error = health
        .election_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let role_ok = if standby {
        caught_up && election_error.is_none()
    } else {
        polled
    };
    let ready = state_ok && kafka_ok && role_ok && fatal.is_none();
    let mut body = json!({
        "ready": ready,
        "standby": standby,
        "state": state_ok,
        "kafka": kafka_ok,
        "kafka_deliveries": deliveries_ok,
        "kafka_reachable": reachable,
        "last_poll_age_ms": poll_age,
    });
    if standby {
        body["changelog_caught_up_age_ms"] = json!(caught_up_age);
    }
    if let Some(reason) = fatal {
        body["error"] = json!(reason);
    } else if let Some(reason) = election_error.filter(|_| standby) {
        body["error"] = json!(format!(
            "the election group refuses this instance: {reason}"
        ));
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
/// readiness reflects an outage even when nothing is being published. The bound address
/// (port 0 picks a free one) is in [`Health::admin_addr`]; the probe's task is returned.
pub async fn serve(
    settings: AdminSettings,
    health: Arc<Health>,
    sink: Arc<KafkaSink>,
    thresholds: Thresholds,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    metrics::prometheus();
    let listener = TcpListener::bind(settings.addr).await?;
    let bound = listener.local_addr()?;
    let _ = health.admin_addr.set(bound);
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
    // Handed back so the caller can wait for it: the probe holds the sink, and a Kafka client
    // outliving its caller's shutdown would talk to brokers already gone (the demo's).
    let probe = tokio::spawn(async move {
        loop {
            let reachable = sink.ping(KAFKA_PROBE_TIMEOUT).await.is_ok();
            if reachable {
                // Ends the log's outage spell, if one was under way.
                crate::sink::connection::succeeded();
            }
            health.kafka_reachable.store(reachable, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(KAFKA_PROBE_EVERY) => {}
            }
        }
    });
    tracing::info!(addr = %bound, "admin endpoints: /metrics /livez /readyz");
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_ready_only_when_caught_up_and_taken_by_the_election_group() {
        let health = Arc::new(Health::default());
        health.set_state_ok(true);
        health.set_deliveries_ok(true);
        health.kafka_reachable.store(true, Ordering::Relaxed);
        health.set_active(false);
        let state = AdminState {
            health: health.clone(),
            thresholds: Thresholds::for_poll_interval(Duration::from_secs(60)),
        };
        let (ready, body) = readiness(&state);
        assert!(!ready, "not caught up yet: {body}");
        health.changelog_caught_up();
        assert!(readiness(&state).0, "caught up");
        health.set_election_error(Some("Group authorization failed".into()));
        let (ready, body) = readiness(&state);
        assert!(!ready);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("Group authorization failed")),
            "{body}"
        );
        health.set_election_error(None);
        assert!(readiness(&state).0);
        // Caught up too long ago: a standby that stopped reading is not ready.
        health.caught_up_ms.store(
            monotonic_ms() - CAUGHT_UP_WITHIN.as_millis() as i64 - 1,
            Ordering::Relaxed,
        );
        assert!(!readiness(&state).0);
    }
}
