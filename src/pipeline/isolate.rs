//! Windows the API will not serve, at the edge: counting a window's failures, isolating it
//! with probe reads ([`unread::Isolation`]), recording and dead-lettering the spans found, and
//! trying them again on the re-check grid.

use tokio_util::sync::CancellationToken;

use super::lanes::{Holding, WidgetSlot};
use super::scheduler::Task;
use super::unread::{self, ISOLATE_AFTER, Isolated, Isolation, Span};
use super::window::{WindowEnd, WindowFailure, WindowRead};
use super::{CycleStats, Pipeline, PipelineError, tracker};
use crate::metrics;
use crate::sink::{DeadLetter, Outgoing};
use crate::snapengage::{ClientError, Window};
use crate::state::{Change, UnreadSpan};

/// The dead letter's reason code for a span the API would not serve.
pub const UNREAD_SPAN: &str = "unread_span";

/// A window of a task that failed.
pub(super) struct FailedRead<'a> {
    pub task: Task,
    pub piece: Window,
    pub error: &'a ClientError,
}

/// What follows a failed window.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// It stays failed; tried again next cycle.
    Failed,
    /// Spans were isolated: the task may be read again around them now.
    ReadAgain,
    /// The isolation's probes read every part of it: go on as if it was read.
    ReadInParts,
}

/// How an isolation's probes ended.
enum Probed {
    Found(Vec<Span>, String, u32),
    AllRead,
    /// Nothing to isolate (the API fails everywhere), or the probes were cut short (shutdown,
    /// a failure of another kind: an outage, a 429): the window's failure count stands.
    Nothing,
}

/// What a window's failures in a row are counted under: its task and where the piece starts,
/// not where it ends. A re-check window in `datetimes` mode ends at the last due chat's end,
/// which grows whenever a case becomes due: keyed by its whole URL, a window failing on the
/// same page looked new every cycle and was never isolated, and the day's later surveys were
/// never announced (fault campaign, seed 22).
pub(super) fn streak_key(task: Task, piece: &Window) -> String {
    let (start, _) = piece.query_bounds();
    format!("{} {start} {}", task.label(), piece.timezone())
}

impl Pipeline {
    /// After a window failed: a span's retry is rescheduled; any other window failing on the
    /// same page cycle after cycle is isolated.
    pub(super) async fn window_failed(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        hold: &mut Holding<'_>,
        failed: FailedRead<'_>,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<AfterFailure, PipelineError> {
        if let Task::Unread { start, end } = failed.task {
            self.unread_still(widget, slot, (start, end), failed.error, shutdown)
                .await?;
            return Ok(AfterFailure::Failed);
        }
        if !unread::isolates(failed.error) {
            return Ok(AfterFailure::Failed);
        }
        let key = streak_key(failed.task, &failed.piece);
        let failing = slot.window_failed(&key, self.pages_served());
        // A 5xx on every page of every window is the API's outage, not this window's: other
        // pages served since show it is the window's. A body too large or not JSON is the
        // page's own.
        if failing.times < ISOLATE_AFTER
            || !(failing.others_served || unread::page_content(failed.error))
        {
            return Ok(AfterFailure::Failed);
        }
        let probed = self
            .isolate(widget, slot, hold, &failed, failing.times, shutdown, stats)
            .await?;
        match probed {
            Probed::Nothing => Ok(AfterFailure::Failed),
            Probed::AllRead => {
                slot.window_read(&key);
                tracing::info!(widget, window = %failed.piece, "every part of the failing window was read apart: nothing is unread");
                Ok(AfterFailure::ReadInParts)
            }
            Probed::Found(found, error, attempts) => {
                slot.window_read(&key);
                let added = self
                    .record_unread(widget, slot, found, error, attempts, shutdown)
                    .await?;
                Ok(if added {
                    AfterFailure::ReadAgain
                } else {
                    AfterFailure::Failed
                })
            }
        }
    }

    /// Reads probe windows (each around the spans already known) until the failing piece is
    /// narrowed to what the API will not serve. A probe counts as failing only for a failure
    /// that isolates; any other stops the probing.
    #[allow(clippy::too_many_arguments)]
    async fn isolate(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        hold: &mut Holding<'_>,
        failed: &FailedRead<'_>,
        failures: u32,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<Probed, PipelineError> {
        let (piece, error) = (failed.piece, failed.error);
        tracing::warn!(widget, window = %piece, failures, error = %error, "a window failed on the same page {failures} cycles running; narrowing it to what the Logs API will not serve");
        let mode = self.schedule().mode;
        let known = slot.progress().unread;
        let mut isolation = Isolation::new(piece, mode);
        let mut last_error = error.to_string();
        let mut attempts = failures;
        while let Some(probe) = isolation.next_probe() {
            let mut read = true;
            for part in unread::pieces(probe, &known, mode) {
                let how = WindowRead {
                    window: part,
                    keeps_cursor: false,
                    label: "isolate",
                    probe: true,
                };
                match self.read_window(widget, how, hold, shutdown, stats).await {
                    Ok(WindowEnd::Complete) => {}
                    Ok(WindowEnd::Interrupted) => return Ok(Probed::Nothing),
                    Err(WindowFailure::Client(e)) if unread::isolates(&e) => {
                        last_error = e.to_string();
                        attempts += 1;
                        read = false;
                        break;
                    }
                    Err(WindowFailure::Client(e)) => {
                        tracing::warn!(widget, window = %part, error = %e, "probing stopped: the Logs API failed for another reason; the window is isolated later");
                        return Ok(Probed::Nothing);
                    }
                    Err(WindowFailure::FetcherStopped { .. }) => return Ok(Probed::Nothing),
                    Err(WindowFailure::Pipeline(e)) => return Err(e),
                }
            }
            isolation.record(read);
        }
        Ok(match isolation.finish() {
            Isolated::Unread(found) if found.is_empty() => Probed::Nothing,
            Isolated::Unread(found) => Probed::Found(found, last_error, attempts),
            Isolated::AllRead => Probed::AllRead,
            Isolated::NotLocal => {
                tracing::warn!(widget, window = %piece, "every probe failed: the Logs API fails this widget everywhere, not one page; nothing isolated");
                Probed::Nothing
            }
        })
    }

    /// Records the spans found unread, and sends one dead letter for each that adds time
    /// not already unread, with the widget's progress naming them (one transaction in
    /// exactly-once delivery).
    async fn record_unread(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        found: Vec<Span>,
        error: String,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let (now, mode, settings) = (
            self.clock.now(),
            self.schedule().mode,
            self.settings.tracker,
        );
        let mut added = Vec::new();
        let progress = slot.update_progress(|p| {
            for (start, end) in found {
                let span = UnreadSpan {
                    start,
                    end,
                    error: error.clone(),
                    attempts,
                    found: now,
                    // One try at least, even for a day already past the survey horizon (a
                    // first start reaching far back): the page may serve again soon.
                    next_retry: tracker::next_check(end, now, &settings)
                        .or(Some(now + chrono::Duration::hours(1))),
                };
                if unread::merge(&mut p.unread, span.clone(), mode) {
                    added.push(span);
                }
            }
        });
        let records: Vec<Outgoing> = added
            .iter()
            .map(|span| {
                tracing::error!(widget, start = %span.start, end = %span.end, attempts = span.attempts, error = %span.error, next_retry = ?span.next_retry, "the Logs API will not serve this span of the widget's cases; it is read around, sent to the dead-letter topic, and read again on the re-check grid until the survey horizon");
                metrics::unread_span_found(widget);
                metrics::dead_letter(widget, UNREAD_SPAN);
                Outgoing::DeadLetter(self.unread_dead_letter(widget, span))
            })
            .collect();
        metrics::unread_spans(widget, unread::tried(&progress.unread));
        let change = Change::Widget {
            widget: widget.to_owned(),
            progress,
        };
        self.publish_then_write(records, vec![change], shutdown)
            .await?;
        Ok(!added.is_empty())
    }

    /// A dead letter naming an unread span: the widget, the span, the error and the tries.
    fn unread_dead_letter(&self, widget: &str, span: &UnreadSpan) -> DeadLetter {
        let body = serde_json::json!({
            "widget_id": widget,
            "start": span.start,
            "end": span.end,
            "error": span.error,
            "attempts": span.attempts,
            "found": span.found,
            "next_retry": span.next_retry,
        })
        .to_string();
        let reason = format!(
            "the Logs API would not serve the cases of widget {widget} created from {} to {} \
             ({} failed reads): {}",
            span.start, span.end, span.attempts, span.error
        );
        DeadLetter::unusable_case(
            &self.client.config().org_id,
            widget,
            None,
            UNREAD_SPAN,
            reason,
            body.as_bytes(),
            self.sink.max_record_bytes(),
        )
    }

    /// An unread span failed again: its next try moves on along the re-check grid; past the
    /// survey horizon it is no longer tried, only read around.
    async fn unread_still(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        (start, end): Span,
        error: &ClientError,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let (now, settings) = (self.clock.now(), self.settings.tracker);
        let progress = slot.update_progress(|p| {
            for span in p.unread.iter_mut().filter(|s| s.start == start && s.end == end) {
                span.attempts += 1;
                span.error = error.to_string();
                span.next_retry = tracker::next_check(span.end, now, &settings);
                if span.next_retry.is_none() {
                    tracing::error!(widget, %start, %end, attempts = span.attempts, "an unread span is past the survey horizon and is no longer tried, only read around; its cases were never announced (see the dead-letter topic)");
                    metrics::unread_span_abandoned(widget);
                }
            }
        });
        metrics::unread_spans(widget, unread::tried(&progress.unread));
        self.write(
            vec![Change::Widget {
                widget: widget.to_owned(),
                progress,
            }],
            shutdown,
        )
        .await
    }
}
