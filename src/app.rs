//! Wiring: from a [`Config`] to a running forwarder. Shared by `casestream run`, the demo and
//! the integration tests, so they all exercise the same assembly.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::{ENV_ADMIN_ADDR, Health};
use crate::clock::Clock;
use crate::config::Config;
use crate::pipeline::{ClientMetrics, Pipeline, PipelineError};
use crate::sink::{KafkaSink, SinkError};
use crate::snapengage::{ClientError, LogsClient};
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
    #[error(transparent)]
    Failover(#[from] crate::failover::FailoverError),
    #[error("cannot serve the admin endpoints on {addr} ({ENV_ADMIN_ADDR}): {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Creates or checks the topics, waiting (with backoff) while Kafka is unreachable. Returns
/// false if shutdown came first.
pub async fn prepare_topics(
    sink: &KafkaSink,
    shutdown: &CancellationToken,
) -> Result<bool, SinkError> {
    let mut delays = crate::sink::KafkaRetryDelays::new();
    loop {
        match sink.ensure_topics().await {
            Ok(()) => return Ok(true),
            Err(SinkError::Unreachable(_)) => {
                let delay = delays.next_delay();
                let cause = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    cause = sink.explain_unreachable() => cause,
                };
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
    let store: Arc<dyn crate::state::StateStore> = Arc::new(SqliteStore::open(&config.state_dir)?);
    tracing::info!(path = %config.state_dir.display(), lock = %lock.path().display(), "state opened");
    let client = LogsClient::with_observer(
        config.api.clone(),
        Arc::new(ClientMetrics::new(health.clone())),
    )?;
    let sink = Arc::new(KafkaSink::new(&config.kafka)?);
    // The admin endpoints stay up after a fatal error (readiness names it) until shutdown.
    let probe = crate::admin::serve(
        config.admin,
        health.clone(),
        sink.clone(),
        crate::admin::Thresholds::for_poll_interval(config.pipeline.poll_interval),
        shutdown.clone(),
    )
    .await
    .map_err(|source| AppError::Admin {
        addr: config.admin.addr,
        source,
    })?;
    if !prepare_topics(&sink, &shutdown).await? {
        return Ok(());
    }
    let pipeline = Pipeline::new(
        config.pipeline.clone(),
        client,
        store.clone(),
        sink.clone(),
        clock,
        health.clone(),
    );
    tracing::info!(
        org = %config.api.org_id,
        widgets = %config.pipeline.widgets.join(","),
        topics = ?sink.topics(),
        delivery = ?config.kafka.delivery,
        "forwarding"
    );
    if sink.exactly_once() {
        crate::failover::run(
            &config.kafka,
            pipeline,
            sink.clone(),
            store,
            health,
            shutdown,
        )
        .await?;
    } else {
        pipeline.run(shutdown).await?;
    }
    // Exactly-once: what is still queued belongs to a transaction that was not committed and
    // never will be (the next fence aborts it); waiting for it would only delay the exit.
    if !sink.exactly_once()
        && let Err(e) = sink.flush(SHUTDOWN_FLUSH)
    {
        tracing::warn!(error = %e, "Kafka flush at shutdown failed");
    }
    // A clean stop returns only once every Kafka client is gone: the probe holds the sink.
    let _ = probe.await;
    Ok(())
}
