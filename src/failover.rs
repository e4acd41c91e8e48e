//! Exactly-once delivery's roles. Instances of one org and group share one changelog and one
//! transactional id. Each follows the changelog into its local store as a standby until the
//! election group assigns it the changelog's partition; then it fences every earlier
//! producer of the id (with a new producer), reads the changelog to its end, and runs the
//! pipeline until shutdown or until its term ends: the role lost, or the producer fenced.
//!
//! The order (fence, then read to the end, then write) is what makes a takeover safe: after
//! the fence no earlier instance can commit, so the end read is the end. It also makes a
//! term's end safe to ride out in the process: the instance drops its producer and its group
//! membership, follows the changelog again as a standby, and a new term starts with a new
//! fence. Only an instance that another one took over from exits ([`verdict`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::metrics;
use crate::pipeline::{Pipeline, PipelineError};
use crate::sink::changelog::{ChangelogError, ChangelogReader, TOMBSTONES_KEPT};
use crate::sink::config::KafkaSettings;
use crate::sink::election::{Election, Holder};
use crate::sink::transaction::TransactionError;
use crate::sink::{KafkaSink, SinkError, connection};
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
/// A lost role counts as an outage's doing when a client of this process failed to reach
/// Kafka within the session timeout plus this before the term ended.
const OUTAGE_MARGIN: Duration = Duration::from_secs(15);
/// After a term ended, how long the election group is asked who holds the role (it answers
/// with assignments only once its rebalance settled).
const HOLDER_LOOKUP: Duration = Duration::from_secs(30);
/// An election error counts for readiness this long after the group last gave it.
const ELECTION_ERROR_HOLD: Duration = Duration::from_secs(60);

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
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(
        "another instance of {id} ({by}) holds the active role and this one was fenced or lost \
         it ({cause}); this instance exits, and a restart makes it a standby"
    )]
    TakenOver {
        id: String,
        by: Holder,
        cause: String,
    },
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
                if connection::is_connection_error(&error) {
                    connection::failed("changelog reader", &error.to_string());
                } else {
                    tracing::warn!(%topic, %error, retry_in = ?delay, "reading the state changelog failed; trying again");
                }
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

    /// How many offsets the reader is behind the changelog's stable end now.
    async fn lag(&self) -> Result<i64, FailoverError> {
        self.blocking(|reader, store| {
            let reached = match reader.position()? {
                Some(offset) => offset,
                None => store.changelog_position()?.map_or(0, |p| p.next_offset),
            };
            Ok(reader.bounds()?.1 - reached)
        })
        .await
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

/// What follows the end of a term as the active instance.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A standby again, in this process: a new term starts with a new fence.
    StepBack,
    /// Another instance holds the role: this process exits, naming it.
    TakenOver(Holder),
}

/// The rule after a term ended (the role lost, or the producer fenced): exit only when
/// another instance truly took over, that is, when Kafka was reachable all along (no client
/// of this process failed to reach it lately: `outage` false) and the election group shows
/// another member holding the changelog's partition. That is the zombie: a process frozen or
/// cut off on its own while the group gave the role away. Anything else steps back and joins
/// again: an outage (every member loses its session; whoever the group picks next is fine),
/// or this producer's own transaction outliving `transaction.timeout.ms`, which the
/// coordinator aborts with an epoch bump that librdkafka reports as `_FENCED` exactly like a
/// fence by another instance. The error code cannot tell these apart; the group can.
/// Stepping back is always safe (a standby writes nothing; the next term fences first), so
/// every doubt steps back.
fn verdict(outage: bool, holder: Option<Holder>) -> Verdict {
    match holder {
        Some(holder) if !outage => Verdict::TakenOver(holder),
        _ => Verdict::StepBack,
    }
}

/// How a term as the active instance ended.
enum TermEnd {
    Shutdown,
    /// The role lost or the producer fenced; why, in words.
    Ended(String),
}

/// Follows the changelog until this instance is elected (true) or shutdown (false). Tells
/// readiness whether the store is caught up and whether the election group takes it.
async fn standby(
    follower: &Follower,
    election: &Election,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<bool, FailoverError> {
    // One read at a time (never abandoned half-way: a read and its apply go together), each
    // short, so the role and shutdown are looked at twice a second.
    while !election.is_active() {
        health.beat();
        health.set_election_error(election.error_within(ELECTION_ERROR_HOLD));
        if shutdown.is_cancelled() {
            return Ok(false);
        }
        let Some((read, _)) = patiently(shutdown, || follower.step()).await? else {
            return Ok(false);
        };
        // Less than a batch: the read reached what the log had; how far behind is that?
        // (Not asked while a rebuild reads full batches.) A failed question is no answer.
        if read < APPLY_BATCH
            && let Ok(lag) = follower.lag().await
            && lag <= crate::admin::CAUGHT_UP_LAG
        {
            health.changelog_caught_up();
        }
    }
    health.set_election_error(None);
    Ok(true)
}

/// One term as the active instance: fence with a new producer, read the changelog to its
/// end, run the pipeline; until shutdown, the role lost, or the producer fenced.
async fn active_term(
    follower: &Follower,
    election: &Election,
    pipeline: &Pipeline,
    sink: &KafkaSink,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<TermEnd, FailoverError> {
    // Everything of this term stops when the role is lost (and at shutdown).
    let term = shutdown.child_token();
    let mut role = election.watch();
    let watcher = {
        let term = term.clone();
        tokio::spawn(async move {
            if role.wait_for(|active| !*active).await.is_ok() {
                term.cancel();
            }
        })
    };
    let ended = |what: &str| {
        if shutdown.is_cancelled() {
            TermEnd::Shutdown
        } else {
            TermEnd::Ended(format!("the election group gave the role away {what}"))
        }
    };
    let result = async {
        tracing::info!(group = %sink.transactional_id(), "elected the active instance; fencing earlier producers");
        sink.renew_producer()?;
        tokio::select! {
            // Lost while fencing (a slow coordinator, a pause): the newer active instance may
            // have fenced already, and this fence would fence it back.
            _ = term.cancelled() => return Ok(ended("while fencing")),
            fenced = sink.init_transactions() => match fenced {
                Ok(()) => {}
                // A missing ACL: every term would end the same way.
                Err(refused @ TransactionError::Refused { .. }) => return Err(refused.into()),
                Err(error) => return Ok(TermEnd::Ended(error.to_string())),
            },
        }
        follower.catch_up(health, &term).await?;
        if term.is_cancelled() {
            return Ok(ended("while reading the changelog to its end"));
        }
        // From here this instance writes the changelog; its reader would only buffer them.
        follower.blocking(|reader, _| Ok(reader.stop()?)).await?;
        health.set_active(true);
        match pipeline.run(term.clone()).await {
            Ok(()) => Ok(ended("while publishing")),
            Err(PipelineError::Transaction(refused @ TransactionError::Refused { .. })) => {
                Err(refused.into())
            }
            Err(PipelineError::Transaction(error)) => Ok(TermEnd::Ended(error.to_string())),
            Err(other) => Err(other.into()),
        }
    }
    .await;
    watcher.abort();
    result
}

/// Who holds the role now, as the election group says once its rebalance settled: `None`
/// if nobody else does, or the group does not say within [`HOLDER_LOOKUP`].
async fn other_holder(election: &Election, shutdown: &CancellationToken) -> Option<Holder> {
    let query = Arc::new(election.holder_query()?);
    let started = Instant::now();
    while started.elapsed() < HOLDER_LOOKUP && !shutdown.is_cancelled() {
        let q = query.clone();
        let asked =
            tokio::task::spawn_blocking(move || q.other_holder(Duration::from_secs(5))).await;
        match asked.ok()? {
            Ok(Some(holder)) => return Some(holder),
            Ok(None) if election.is_active() => return None,
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "asking the election group who holds the role"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    None
}

/// Runs one instance in exactly-once delivery until shutdown: a standby until elected, then
/// the active instance; a standby again when a term ends, unless another instance took over
/// ([`verdict`]).
pub async fn run(
    settings: &KafkaSettings,
    pipeline: Pipeline,
    sink: Arc<KafkaSink>,
    store: Arc<dyn StateStore>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), FailoverError> {
    let follower = Follower::new(settings, store)?;
    let id = sink.transactional_id();
    loop {
        health.set_active(false);
        // A standby delivers nothing: what a term saw of Kafka's deliveries is over.
        health.set_deliveries_ok(true);
        follower.start(&shutdown).await?;
        let election = Election::join(settings)?;
        tracing::info!(group = %id, "standby: following the state changelog until elected");
        if !standby(&follower, &election, &health, &shutdown).await? {
            return Ok(());
        }
        let cause =
            match active_term(&follower, &election, &pipeline, &sink, &health, &shutdown).await? {
                TermEnd::Shutdown => return Ok(()),
                TermEnd::Ended(cause) => cause,
            };
        health.set_active(false);
        let outage = connection::failed_within(settings.failover.timeout + OUTAGE_MARGIN);
        let holder = if outage {
            None
        } else {
            other_holder(&election, &shutdown).await
        };
        match verdict(outage, holder) {
            Verdict::TakenOver(by) => {
                metrics::role_lost("taken_over");
                let error = FailoverError::TakenOver { id, by, cause };
                health.set_fatal(error.to_string());
                return Err(error);
            }
            Verdict::StepBack => {
                metrics::role_lost("stepped_back");
                tracing::warn!(%cause, outage, "the term as the active instance ended and no other instance holds the role; a standby again, rejoining the election");
            }
        }
        // Leaves the group: the next term needs a fresh assignment, never a re-fence of its
        // own (two instances would fence each other in turn).
        drop(election);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_takeover_by_another_instance_while_kafka_was_reachable_ends_the_process() {
        let other = Holder {
            client_id: "casestream.election.pod-b.1234abcd".into(),
            host: "/10.0.0.7".into(),
        };
        assert_eq!(
            verdict(false, Some(other.clone())),
            Verdict::TakenOver(other.clone())
        );
        // An outage: whoever the group picked after it, this one steps back.
        assert_eq!(verdict(true, Some(other)), Verdict::StepBack);
        // Nobody else holds it: this producer's own transaction timed out.
        assert_eq!(verdict(false, None), Verdict::StepBack);
        assert_eq!(verdict(true, None), Verdict::StepBack);
    }
}
