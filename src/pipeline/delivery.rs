//! Settling pages with Kafka: per-record verdicts, dead letters for records Kafka refuses for
//! good, retries for the rest, then the page's state commit.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::flight::{Flight, InFlightPage};
use super::{Pipeline, PipelineError};
use crate::metrics;
use crate::sink::{DeadLetter, ErrorClass, Outgoing, RecordResult, classify, encode};
use crate::state::{Change, page_changes};

/// A page waiting this long for acknowledgements makes readiness say Kafka is not taking it.
const ACK_SLOW: Duration = Duration::from_secs(10);
/// At shutdown, how long a page in flight may still wait for Kafka's acknowledgements.
const SHUTDOWN_ACK_GRACE: Duration = Duration::from_secs(5);

/// Shutdown came while Kafka had not taken a page.
fn interrupted() -> Delivered {
    tracing::warn!(
        "shutting down with a page Kafka did not acknowledge; it will be read again on restart"
    );
    Delivered::Interrupted
}

/// The records of one attempt: those Kafka refused for good in a batch go alone (a broker
/// refuses a whole batch as too large), the rest together.
#[derive(Default)]
pub(super) struct Round {
    pub together: Vec<Outgoing>,
    pub alone: Vec<Outgoing>,
}

impl Round {
    pub fn push(&mut self, record: Outgoing, alone: bool) {
        if alone {
            self.alone.push(record);
        } else {
            self.together.push(record);
        }
    }

    pub fn len(&self) -> usize {
        self.together.len() + self.alone.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a page's delivery ended.
enum Delivered {
    /// Every record is acknowledged or dead-lettered.
    Settled,
    /// Shutdown came while Kafka could not take the page.
    Interrupted,
}

impl Pipeline {
    /// Sends each record by itself, one after another, awaited: (record, alone, result).
    pub(super) async fn send_alone(
        &self,
        records: Vec<Outgoing>,
    ) -> Vec<(Outgoing, bool, RecordResult)> {
        let mut sent = Vec::with_capacity(records.len());
        for record in records {
            let result = self
                .sink
                .start_publish(std::slice::from_ref(&record))
                .await
                .wait(&self.sink)
                .await
                .pop()
                .unwrap_or_else(|| unreachable!("one result per record sent"));
            sent.push((record, true, result));
        }
        sent
    }

    /// Publishes `records` (a few, outside any page) and then writes `changes`: in one
    /// transaction in exactly-once delivery; in at-least-once, the changes only once Kafka
    /// took every record. Returns false when shutdown came first (nothing is written).
    pub(super) async fn publish_then_write(
        &self,
        records: Vec<Outgoing>,
        changes: Vec<Change>,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        if self.sink.exactly_once() {
            return self.transact(records, changes, shutdown).await;
        }
        if !records.is_empty() {
            let results = self
                .sink
                .start_publish(&records)
                .await
                .wait(&self.sink)
                .await;
            if let Delivered::Interrupted = self.deliver(records, results, shutdown).await? {
                return Ok(false);
            }
        }
        self.write(changes, shutdown).await?;
        Ok(true)
    }

    /// Waits for the oldest page in flight to be settled with Kafka (sending again what failed
    /// for a passing reason, dead-lettering what Kafka refuses for good), then commits its
    /// state. Pages commit in order. Returns false when shutdown came while Kafka could not
    /// take the page: nothing of it is committed, and it will be read again.
    pub(super) async fn settle_oldest(
        &self,
        flight: &mut Flight,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let Some(page) = flight.pages.pop_front() else {
            return Ok(true);
        };
        let InFlightPage {
            seq,
            batch,
            delivery,
            _slot,
        } = page;
        let wait = delivery.wait(&self.sink);
        tokio::pin!(wait);
        let mut slow = false;
        let results = loop {
            tokio::select! {
                results = &mut wait => break results,
                // librdkafka retries a page for up to `message.timeout.ms` before it reports;
                // readiness says so long before that.
                _ = tokio::time::sleep(ACK_SLOW), if !slow => {
                    slow = true;
                    self.health.beat();
                    self.health.set_deliveries_ok(false);
                    tracing::warn!(after = ?ACK_SLOW, "Kafka has not acknowledged a page yet; still waiting");
                }
                // Shutdown waits a little for acknowledgements on their way, never for Kafka
                // to come back: a page not acknowledged is not committed and is read again.
                _ = shutdown.cancelled() => {
                    // One grace for the whole window, not one per page in flight.
                    let deadline = *flight
                        .shutdown_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_ACK_GRACE);
                    match tokio::time::timeout_at(deadline, &mut wait).await {
                        Ok(results) => break results,
                        Err(_) => {
                            interrupted();
                            return Ok(false);
                        }
                    }
                }
            }
        };
        if let Delivered::Interrupted = self.deliver(batch.outgoing, results, shutdown).await? {
            return Ok(false);
        }
        let ids: Vec<String> = batch.changed.iter().map(|c| c.id.clone()).collect();
        let changes = page_changes(batch.changed, batch.dead_letters, batch.cursor);
        self.state(move |s| s.apply(&changes, None)).await?;
        flight.committed(seq, &ids);
        Ok(true)
    }

    /// Takes each record's result to its verdict: acknowledged; refused by its topic (the
    /// pipeline stops); failed for a passing reason (sent again after a backoff: what was
    /// acknowledged is not sent twice); or refused for good. A broker refuses a whole batch as
    /// too large, so a record refused for good is first sent again alone, and only what is
    /// refused alone becomes a dead letter (sent at once).
    async fn deliver(
        &self,
        records: Vec<Outgoing>,
        results: Vec<RecordResult>,
        shutdown: &CancellationToken,
    ) -> Result<Delivered, PipelineError> {
        let mut delays = crate::sink::KafkaRetryDelays::new();
        // (record, sent alone, result)
        let mut round: Vec<(Outgoing, bool, RecordResult)> = records
            .into_iter()
            .zip(results)
            .map(|(record, result)| (record, false, result))
            .collect();
        loop {
            let mut again = Round::default();
            let mut passing = None;
            for (record, alone, outcome) in round {
                let error = match outcome.result {
                    Ok(()) => {
                        if let Outgoing::Event(event) = &record {
                            metrics::event_published(event.event_type.name());
                        }
                        continue;
                    }
                    Err(error) => error,
                };
                let transient = classify(&error) == ErrorClass::Transient;
                match self.after_failure(record, alone, &error, outcome.size) {
                    Ok(Some((record, alone))) => again.push(record, alone),
                    Ok(None) => {}
                    Err(failure) => return Err(self.refusal(failure)),
                }
                if transient {
                    passing.get_or_insert(error);
                }
            }
            if again.is_empty() {
                self.health.set_deliveries_ok(true);
                return Ok(Delivered::Settled);
            }
            if let Some(error) = passing {
                self.health.beat();
                self.health.set_deliveries_ok(false);
                metrics::kafka_delivery_error();
                let delay = delays.next_delay();
                tracing::warn!(error = %error, retry_in = ?delay, records = again.len(), "Kafka did not take records of a page; sending them again, state stays where it is");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(interrupted()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let resend = async {
                let mut next = self.send_alone(again.alone).await;
                let results = self
                    .sink
                    .start_publish(&again.together)
                    .await
                    .wait(&self.sink)
                    .await;
                next.extend(
                    again
                        .together
                        .into_iter()
                        .zip(results)
                        .map(|(r, result)| (r, false, result)),
                );
                next
            };
            round = tokio::select! {
                next = resend => next,
                // Kafka is already failing here: no grace, the page is read again later.
                _ = shutdown.cancelled() => return Ok(interrupted()),
            };
        }
    }

    /// What becomes of a record Kafka did not take (in [`Pipeline::deliver`] and in a
    /// transaction alike): sent again, as it was, for a passing reason; sent again alone when
    /// refused for good in a batch (a broker refuses a whole batch as too large); replaced by its
    /// dead letter when refused alone (`None` if even that was refused); and `Err` when its
    /// topic refuses every record.
    pub(super) fn after_failure(
        &self,
        record: Outgoing,
        alone: bool,
        error: &rdkafka::error::KafkaError,
        size: usize,
    ) -> Result<Option<(Outgoing, bool)>, PipelineError> {
        Ok(match classify(error) {
            ErrorClass::Transient => Some((record, alone)),
            ErrorClass::Topic => {
                return Err(PipelineError::KafkaRefused {
                    topic: encode::topic(&record, self.sink.topics()).to_owned(),
                    error: error.to_string(),
                });
            }
            ErrorClass::Record if !alone => Some((record, true)),
            ErrorClass::Record => self
                .dead_letter_for(record, error, size)
                .map(|dead| (Outgoing::DeadLetter(dead), false)),
        })
    }

    /// The pipeline stops on a refusal; readiness says why.
    pub(super) fn refusal(&self, failure: PipelineError) -> PipelineError {
        self.health.set_deliveries_ok(false);
        self.health.set_fatal(failure.to_string());
        failure
    }

    /// The dead letter that replaces a record Kafka refused for good; `None` when even a cut
    /// dead letter was refused (then it is logged as an error, with the case id and digest).
    fn dead_letter_for(
        &self,
        record: Outgoing,
        error: &rdkafka::error::KafkaError,
        size: usize,
    ) -> Option<DeadLetter> {
        match record {
            Outgoing::Event(event) => {
                let dead =
                    DeadLetter::refused_event(&event, error, size, self.sink.max_record_bytes());
                tracing::warn!(
                    case = %event.subject,
                    widget = %event.data.widget_id,
                    event_type = event.event_type.name(),
                    size,
                    error = %error,
                    "Kafka refused an event for good; it goes to the dead-letter topic"
                );
                metrics::dead_letter(&event.data.widget_id, dead.reason_code);
                Some(dead)
            }
            Outgoing::DeadLetter(dead) => match dead.shrunk() {
                Some(smaller) => Some(smaller),
                None => {
                    tracing::error!(
                        case = dead.case_id.as_deref().unwrap_or("(none)"),
                        widget = %dead.widget_id,
                        sha256 = %dead.sha256,
                        reason = %dead.reason,
                        error = %error,
                        "Kafka refused the dead letter too; it is recorded only in this log"
                    );
                    metrics::dead_letter_refused();
                    None
                }
            },
        }
    }
}
