//! Exactly-once delivery: the events, dead letters and state changes of a few pages go out in
//! one Kafka transaction; the local store applies the changes only once it committed.
//!
//! Any record that fails makes the transaction abortable, so it is aborted and the whole
//! page is sent again: what Kafka refused for good alone becomes a dead letter (as in
//! at-least-once delivery), and a state record Kafka refuses stops the pipeline.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::delivery::Round;
use super::flight::Flight;
use super::{Pipeline, PipelineError};
use crate::metrics;
use crate::sink::transaction::TransactionError;
use crate::sink::{ErrorClass, Outgoing, RecordResult, classify};
use crate::state::{Change, ChangelogPosition, page_changes};

/// On stopping, how long the abort of a transaction in flight may take.
const SHUTDOWN_ABORT_GRACE: Duration = Duration::from_secs(5);

/// How a transaction attempt went.
enum Attempt {
    /// Every record was acknowledged: the transaction may commit.
    Sent(Vec<RecordResult>),
    /// Some record failed: abort, then send again.
    Failed,
}

impl Pipeline {
    /// Writes state changes that come with no records (a window's end, pruning): through the
    /// changelog in exactly-once delivery, straight to the store otherwise. A write cut short
    /// by shutdown is lost, as an unfinished window is: it is done again after the restart.
    pub(super) async fn write(
        &self,
        changes: Vec<Change>,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        if changes.is_empty() {
            return Ok(());
        }
        if self.sink.exactly_once() {
            self.transact(Vec::new(), changes, shutdown).await?;
            Ok(())
        } else {
            self.state(move |s| s.apply(&changes, None)).await
        }
    }

    /// Commits the pages held in `flight` in one transaction (nothing if none is held).
    /// Returns false when shutdown came first.
    pub(super) async fn commit_held(
        &self,
        flight: &mut Flight,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let held = flight.take_held();
        if held.is_empty() {
            return Ok(true);
        }
        let (mut records, mut changes, mut pages) = (Vec::new(), Vec::new(), Vec::new());
        for (seq, batch) in held {
            let ids: Vec<String> = batch.changed.iter().map(|c| c.id.clone()).collect();
            pages.push((seq, ids));
            changes.extend(page_changes(
                batch.changed,
                batch.dead_letters,
                batch.cursor,
            ));
            records.extend(batch.outgoing);
        }
        if !self.transact(records, changes, shutdown).await? {
            return Ok(false);
        }
        for (seq, ids) in pages {
            flight.committed(seq, &ids);
        }
        Ok(true)
    }

    /// Publishes `records` and `changes` in one Kafka transaction, then applies the changes to
    /// the local store with the changelog offset they reached. Returns false when shutdown
    /// came first: the transaction is aborted and nothing of it counts.
    pub(super) async fn transact(
        &self,
        records: Vec<Outgoing>,
        changes: Vec<Change>,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let _one_at_a_time = self.transaction.lock().await;
        let mut delays = crate::sink::KafkaRetryDelays::new();
        let mut round = Round {
            together: records,
            alone: Vec::new(),
        };
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            self.sink
                .begin_transaction()
                .await
                .map_err(|e| self.stopped(e))?;
            let attempt = tokio::select! {
                attempt = self.attempt(&mut round, &changes) => attempt?,
                _ = shutdown.cancelled() => {
                    self.abort_when_stopping().await;
                    return Ok(false);
                }
            };
            if let Attempt::Sent(state) = attempt {
                match self.commit(shutdown).await {
                    Ok(()) => {
                        self.health.set_deliveries_ok(true);
                        for record in round.together.iter().chain(&round.alone) {
                            if let Outgoing::Event(event) = record {
                                metrics::event_published(event.event_type.name());
                            }
                        }
                        self.apply_committed(changes, &state).await?;
                        return Ok(true);
                    }
                    Err(
                        TransactionError::Abortable(reason) | TransactionError::Retriable(reason),
                    ) => {
                        tracing::warn!(%reason, "Kafka did not commit the transaction; aborting it and sending the page again");
                    }
                    // Stopped while Kafka had not answered: the outcome is open until the next
                    // fence settles it, and the store learns it from the changelog.
                    Err(TransactionError::Interrupted) => return Ok(false),
                    Err(fatal) => return Err(self.stopped(fatal)),
                }
            }
            if !self.abort(shutdown).await? {
                return Ok(false);
            }
            self.health.beat();
            self.health.set_deliveries_ok(false);
            metrics::kafka_delivery_error();
            let delay = delays.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Sends the round and the changes, and sorts what failed ([`Pipeline::after_failure`]):
    /// the round becomes what the next attempt sends.
    async fn attempt(
        &self,
        round: &mut Round,
        changes: &[Change],
    ) -> Result<Attempt, PipelineError> {
        let mut sent = self.send_alone(std::mem::take(&mut round.alone)).await;
        let batch = self.sink.start_publish(&round.together).await;
        let state = self.sink.start_changes(changes).await;
        let together_results = batch.wait(&self.sink).await;
        let state = state.wait(&self.sink).await;
        sent.extend(
            std::mem::take(&mut round.together)
                .into_iter()
                .zip(together_results)
                .map(|(record, outcome)| (record, false, outcome)),
        );
        let mut failed = false;
        for (record, alone, outcome) in sent {
            let Err(error) = outcome.result else {
                round.push(record, alone);
                continue;
            };
            failed = true;
            match self.after_failure(record, alone, &error, outcome.size) {
                Ok(Some((record, alone))) => round.push(record, alone),
                Ok(None) => {}
                Err(failure) => return Err(self.refused(failure).await),
            }
        }
        for outcome in &state {
            if let Err(error) = &outcome.result {
                failed = true;
                if classify(error) != ErrorClass::Transient {
                    let failure = PipelineError::KafkaRefused {
                        topic: self.sink.topics().state.clone(),
                        error: error.to_string(),
                    };
                    return Err(self.refused(failure).await);
                }
                tracing::warn!(error = %error, "Kafka did not take a changelog record; the transaction is sent again");
            }
        }
        Ok(if failed {
            Attempt::Failed
        } else {
            Attempt::Sent(state)
        })
    }

    /// The local store takes the committed changes, with the changelog offset past them.
    async fn apply_committed(
        &self,
        changes: Vec<Change>,
        state: &[RecordResult],
    ) -> Result<(), PipelineError> {
        let Some(last) = state.iter().filter_map(|r| r.offset).max() else {
            return Ok(());
        };
        let position = ChangelogPosition {
            topic: self.sink.topics().state.clone(),
            next_offset: last + 1,
            applied_at: chrono::Utc::now(),
        };
        self.state(move |s| s.apply(&changes, Some(&position)))
            .await
    }

    /// Commits the open transaction, calling again while the failure is a passing one (the
    /// outcome is then still open: only a new commit call settles it). Shutdown gives up:
    /// the next active instance's fencing settles it.
    async fn commit(&self, shutdown: &CancellationToken) -> Result<(), TransactionError> {
        loop {
            match self.sink.commit_transaction(shutdown).await {
                Err(TransactionError::Retriable(reason)) => {
                    self.health.beat();
                    tracing::warn!(%reason, "committing the Kafka transaction failed for a passing reason; committing again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(TransactionError::Retriable(reason)),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Aborts the open transaction; a fenced or fatal producer stops the pipeline. False when
    /// shutdown came first (the next fencing aborts it).
    async fn abort(&self, shutdown: &CancellationToken) -> Result<bool, PipelineError> {
        loop {
            match self.sink.abort_transaction(shutdown).await {
                Ok(()) => return Ok(true),
                Err(TransactionError::Interrupted) => return Ok(false),
                Err(TransactionError::Retriable(reason)) => {
                    self.health.beat();
                    tracing::warn!(%reason, "aborting the Kafka transaction failed; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(other) => return Err(self.stopped(other)),
            }
        }
    }

    /// On stopping (shutdown, a lost role, a refusal) the open transaction is aborted if Kafka
    /// answers soon; otherwise the next fence (or the transaction timeout) aborts it.
    async fn abort_when_stopping(&self) {
        let never = CancellationToken::new();
        let abort = self.sink.abort_transaction(&never);
        match tokio::time::timeout(SHUTDOWN_ABORT_GRACE, abort).await {
            Ok(Ok(())) => tracing::info!("aborted the open Kafka transaction on stopping"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not abort the Kafka transaction on stopping")
            }
            Err(_) => tracing::warn!(
                "Kafka did not abort the transaction in time on stopping; the next fence will"
            ),
        }
    }

    /// The pipeline stops on a fenced or fatal producer; the failover decides what follows
    /// (a standby again, or an exit when another instance took over).
    fn stopped(&self, error: TransactionError) -> PipelineError {
        PipelineError::Transaction(error)
    }

    /// A topic refuses records: the open transaction is aborted and the pipeline stops.
    async fn refused(&self, failure: PipelineError) -> PipelineError {
        self.abort_when_stopping().await;
        self.refusal(failure)
    }
}
