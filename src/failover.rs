//! Exactly-once delivery's roles. Instances of one org and group share one changelog and one
//! transactional id. Each follows the changelog into its local store as a standby until the
//! election group assigns it the changelog's partition; then it fences every earlier
//! producer of the id, reads the changelog to its end, and runs the pipeline until shutdown
//! or until it loses the role (then it stops: a restart makes it a standby).
//!
//! The order (fence, then read to the end, then write) is what makes a takeover safe: after
//! the fence no earlier instance can commit, so the end read is the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::metrics;
use crate::pipeline::{Pipeline, PipelineError};
use crate::sink::KafkaSink;
use crate::sink::changelog::{ChangelogError, ChangelogReader, Election, TOMBSTONES_KEPT};
use crate::sink::config::KafkaSettings;
use crate::sink::transaction::TransactionError;
use crate::state::{ChangelogPosition, StateError, StateStore};

/// Changes applied to the store per transaction while reading the changelog.
const APPLY_BATCH: usize = 10_000;
/// How long one read waits for records.
const READ_WAIT: Duration = Duration::from_millis(500);
/// A store ahead of the changelog's stable end may only be waiting for an open transaction
/// to end; after this long (more than the transaction timeout) it is stale for good.
const AHEAD_PATIENCE: Duration = Duration::from_secs(75);
/// Catch-up progress is logged this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(
        "the state directory holds state the changelog {topic} does not have (written in \
         at-least-once delivery): exactly-once delivery would decide on it while standbys and \
         rebuilt pods could not. Start with an empty state directory (the lookback's cases are \
         announced again, once) or stay at at-least-once"
    )]
    Unlogged { topic: String },
    #[error(
        "this instance lost the active role (another instance of {id} took over); it stops, and \
         a restart makes it a standby"
    )]
    LostRole { id: String },
    #[error("a changelog task failed: {0}")]
    Join(String),
}

/// Runs `attempt` again while Kafka fails for a passing reason (an outage; a partition without
/// a leader yet, right after the topic was created), with growing delays; `None` at shutdown.
async fn patiently<T, F: std::future::Future<Output = Result<T, FailoverError>>>(
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Result<Option<T>, FailoverError> {
    let mut delays = crate::sink::KafkaRetryDelays::new();
    loop {
        match attempt().await {
            Err(FailoverError::Changelog(ChangelogError::Kafka { topic, error })) => {
                let delay = delays.next_delay();
                tracing::warn!(%topic, %error, retry_in = ?delay, "reading the state changelog failed; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other.map(Some),
        }
    }
}

/// Where the store goes on reading the changelog, and seeks the reader there. `None`: the
/// store is ahead of the changelog's stable end, which an open transaction may explain; ask
/// again (for [`AHEAD_PATIENCE`] after `waited`, then the store is rebuilt).
fn resume_from(
    reader: &ChangelogReader,
    store: &dyn StateStore,
    waited: Duration,
) -> Result<Option<i64>, FailoverError> {
    let topic = reader.topic().to_owned();
    let (low, end) = reader.bounds()?;
    let from = match store.changelog_position()? {
        Some(p)
            if p.topic == topic
                && (low..=end).contains(&p.next_offset)
                && chrono::Utc::now() - p.applied_at < TOMBSTONES_KEPT =>
        {
            p.next_offset
        }
        Some(p) if p.topic == topic && p.next_offset > end && waited < AHEAD_PATIENCE => {
            return Ok(None);
        }
        Some(p) => {
            tracing::warn!(topic = %p.topic, offset = p.next_offset, applied_at = %p.applied_at, low, end, "the local store followed another changelog, is ahead of it (recreated?), stopped before what compaction removed, or stopped reading too long ago to have seen every tombstone; rebuilding it from the changelog");
            store.clear()?;
            low
        }
        None if store.stats()?.known_cases > 0 => return Err(FailoverError::Unlogged { topic }),
        None => low,
    };
    reader.seek(from)?;
    tracing::info!(topic = %topic, from, end, "following the state changelog");
    Ok(Some(from))
}

/// Reads the changelog into the local store.
struct Follower {
    reader: Arc<ChangelogReader>,
    store: Arc<dyn StateStore>,
    /// Changes applied since this process started (as a standby, then catching up).
    applied: AtomicU64,
}

impl Follower {
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&ChangelogReader, &dyn StateStore) -> Result<T, FailoverError>
        + Send
        + 'static,
    ) -> Result<T, FailoverError> {
        let (reader, store) = (self.reader.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || call(&reader, store.as_ref()))
            .await
            .map_err(|e| FailoverError::Join(e.to_string()))?
    }

    fn new(settings: &KafkaSettings, store: Arc<dyn StateStore>) -> Result<Self, FailoverError> {
        Ok(Self {
            reader: Arc::new(ChangelogReader::new(settings)?),
            store,
            applied: Default::default(),
        })
    }

    /// Seeks to where the store stopped, if that is still in the changelog; otherwise the
    /// store is cleared and rebuilt from the changelog's start ([`resume_from`]).
    async fn start(&self, shutdown: &CancellationToken) -> Result<(), FailoverError> {
        let started = Instant::now();
        loop {
            let decide = || self.blocking(move |r, s| resume_from(r, s, started.elapsed()));
            match patiently(shutdown, decide).await? {
                None | Some(Some(_)) => return Ok(()),
                Some(None) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reads what the changelog has now (at most a batch) and applies it, with the offset it
    /// reached. Returns the changes applied and the offset the store reached.
    async fn step(&self) -> Result<(usize, Option<i64>), FailoverError> {
        self.blocking(|reader, store| {
            let before = reader.position()?;
            let changes = match reader.read(APPLY_BATCH, READ_WAIT) {
                Err(ChangelogError::Gone { .. }) => {
                    // The offset left the log (recreated, truncated): start over from its
                    // first record, never on top of what the store holds.
                    tracing::warn!(topic = reader.topic(), "the state changelog no longer holds the offset the store reached; rebuilding the store from the changelog");
                    store.clear()?;
                    let (low, _) = reader.bounds()?;
                    reader.seek(low)?;
                    return Ok((0, None));
                }
                other => other?,
            };
            let Some(next_offset) = reader.position()? else {
                return Ok((0, None));
            };
            let position = ChangelogPosition {
                topic: reader.topic().to_owned(),
                next_offset,
                applied_at: chrono::Utc::now(),
            };
            // Transaction markers move the offset too: the store records where it reached.
            if !changes.is_empty() || before != Some(next_offset) {
                store.apply(&changes, Some(&position))?;
                metrics::changelog_applied(changes.len() as u64);
            }
            Ok((changes.len(), Some(next_offset)))
        })
        .await
        .inspect(|(n, _)| {
            self.applied.fetch_add(*n as u64, Ordering::Relaxed);
        })
    }

    /// Reads the changelog to its stable end as of now. Returns the changes applied.
    async fn catch_up(
        &self,
        health: &Health,
        shutdown: &CancellationToken,
    ) -> Result<u64, FailoverError> {
        let started = Instant::now();
        let before = self.applied.load(Ordering::Relaxed);
        let ends = || {
            self.blocking(|reader, store| {
                let reached = store.changelog_position()?.map_or(0, |p| p.next_offset);
                Ok((reached, reader.bounds()?.1))
            })
        };
        let Some((mut reached, end)) = patiently(shutdown, ends).await? else {
            return Ok(0);
        };
        let mut shown = Instant::now();
        while reached < end && !shutdown.is_cancelled() {
            health.beat();
            let Some((_, at)) = patiently(shutdown, || self.step()).await? else {
                break;
            };
            reached = at.unwrap_or(reached);
            if shown.elapsed() >= PROGRESS_EVERY {
                shown = Instant::now();
                let applied = self.applied.load(Ordering::Relaxed) - before;
                tracing::info!(reached, end, applied, "reading the state changelog");
            }
        }
        let since_start = self.applied.load(Ordering::Relaxed);
        let applied = since_start - before;
        tracing::info!(
            applied,
            since_start,
            end,
            took_ms = started.elapsed().as_millis() as u64,
            "the local store caught up with the state changelog"
        );
        Ok(applied)
    }
}

/// Brings `store` up to the changelog's end, rebuilding it from the start if it is empty or
/// follows another changelog. Returns the changes applied. (Start-up does this as a standby
/// and after fencing; this is the same reading on its own, for tools and benchmarks.)
pub async fn restore(
    settings: &KafkaSettings,
    store: Arc<dyn StateStore>,
    shutdown: &CancellationToken,
) -> Result<u64, FailoverError> {
    let follower = Follower::new(settings, store)?;
    follower.start(shutdown).await?;
    follower.catch_up(&Health::default(), shutdown).await
}

/// Runs one instance in exactly-once delivery until shutdown: a standby until elected, then
/// the active instance.
pub async fn run(
    settings: &KafkaSettings,
    pipeline: Pipeline,
    sink: Arc<KafkaSink>,
    store: Arc<dyn StateStore>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), FailoverError> {
    let follower = Follower::new(settings, store)?;
    health.set_active(false);
    follower.start(&shutdown).await?;
    let election = Election::join(settings)?;
    let id = sink.transactional_id();
    tracing::info!(group = %id, "standby: following the state changelog until elected");
    // One read at a time (never abandoned half-way: a read and its apply go together), each
    // short, so the role and shutdown are looked at twice a second.
    while !election.is_active() {
        health.beat();
        if shutdown.is_cancelled() {
            return Ok(());
        }
        patiently(&shutdown, || follower.step()).await?;
    }
    tracing::info!(group = %id, "elected the active instance; fencing earlier producers");
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        fenced = sink.init_transactions() => fenced?,
    }
    // Lost while fencing (a slow coordinator, a pause): the newer active instance may have
    // fenced already, and this fence would fence it back.
    if !election.is_active() {
        return Err(FailoverError::LostRole { id });
    }
    follower.catch_up(&health, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    if !election.is_active() {
        return Err(FailoverError::LostRole { id });
    }
    // From here this instance writes the changelog; its reader would only buffer them.
    follower.blocking(|reader, _| Ok(reader.stop()?)).await?;
    health.set_active(true);
    // The pipeline stops at shutdown, or when the role is lost (a rebalance gave the
    // partition to another member: it may fence this one any moment).
    let stop = shutdown.child_token();
    let mut role = election.watch();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if role.wait_for(|active| !*active).await.is_ok() {
                stop.cancel();
            }
        })
    };
    let result = pipeline.run(stop.clone()).await;
    watcher.abort();
    // The stop came from the watcher, not from shutdown: the role was lost.
    let lost = stop.is_cancelled() && !shutdown.is_cancelled();
    result?;
    if lost {
        return Err(FailoverError::LostRole { id });
    }
    Ok(())
}
