//! Wiring: from a [`Config`] to a running forwarder. Shared by `casestream run`, the demo and
//! the integration tests, so they all exercise the same assembly.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::pipeline::tracker::TrackerSettings;
use crate::pipeline::{Health, Pipeline, PipelineError, PipelineSettings};
use crate::sink::{KafkaSink, SinkError};
use crate::snapengage::{ClientConfig, ClientError, LogsClient};
use crate::state::{SqliteStore, StateError, StateLock};

/// How long shutdown waits for Kafka to take records still queued.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot serve the admin endpoints on {addr} (CASESTREAM_ADMIN_ADDR): {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new(
        config.api_url.clone(),
        config.org_id.clone(),
        config.api_token.clone(),
    );
    client.rate_limit_per_sec = config.rate_limit;
    client.retry = config.retry.clone();
    client.max_pages = config.max_pages;
    client.max_body = config.max_body;
    client.token_file = config.api_token_file.clone();
    client
}

pub fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        org_id: config.org_id.clone(),
        widgets: config.widget_ids.clone(),
        poll_interval: config.poll_interval,
        lookback: config.lookback,
        since: config.since,
        window_mode: config.window_mode,
        tracker: TrackerSettings {
            settle: config.settle,
            horizon: config.survey_horizon,
        },
    }
}

/// Creates or checks the topics, waiting (with backoff) while Kafka is unreachable. Returns
/// false if shutdown came first.
pub async fn prepare_topics(
    sink: &KafkaSink,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<bool, SinkError> {
    let mut delays = crate::sink::kafka_retry_delays();
    loop {
        match sink.ensure_topics(&config.kafka).await {
            Ok(()) => return Ok(true),
            Err(SinkError::Unreachable(_)) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                let cause = sink.explain_unreachable().await;
                tracing::warn!(%cause, retry_in = ?delay, "Kafka unreachable; waiting for it");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(other) => return Err(other),
        }
    }
}

/// Runs the forwarder until `shutdown`, then flushes and returns.
pub async fn run(
    config: Config,
    clock: Clock,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    // Held until this function returns: one writer per state directory.
    let lock = StateLock::acquire(&config.state_dir)?;
    let store = Arc::new(SqliteStore::open(&config.state_dir)?);
    tracing::info!(path = %store.path().display(), lock = %lock.path().display(), "state opened");
    let client = LogsClient::with_observer(
        client_config(&config),
        Arc::new(crate::admin::ClientMetrics::new(health.clone())),
    )?;
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);
    let admin_addr = crate::admin::serve(
        config.admin_addr,
        health.clone(),
        sink.clone(),
        crate::admin::Thresholds::for_poll_interval(config.poll_interval),
        shutdown.clone(),
    )
    .await
    .map_err(|source| AppError::Admin {
        addr: config.admin_addr,
        source,
    })?;
    let _ = health.admin_addr.set(admin_addr);
    if !prepare_topics(&sink, &config, &shutdown).await? {
        return Ok(());
    }
    let pipeline = Pipeline::new(
        pipeline_settings(&config),
        client,
        store,
        sink.clone(),
        clock,
        health,
    );
    tracing::info!(
        org = %config.org_id,
        widgets = %config.widget_ids.join(","),
        topics = ?sink.topics(),
        "forwarding"
    );
    pipeline.run(shutdown).await?;
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH) {
        tracing::warn!(error = %e, "Kafka flush at shutdown failed");
    }
    Ok(())
}
