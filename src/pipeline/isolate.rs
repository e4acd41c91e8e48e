//! Windows the API will not serve, at the edge: counting a window's failures, isolating it
//! with probe reads ([`unread::Isolation`]), recording and dead-lettering the spans found, and
//! trying them again on the re-check grid.

use tokio_util::sync::CancellationToken;

use super::lanes::{Holding, WidgetSlot};
use super::scheduler::Task;
use super::unread::{self, ISOLATE_AFTER, Isolation, Span};
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

impl Pipeline {
    /// After a window failed: a span's retry is rescheduled; any other window failing on the
    /// same page cycle after cycle is isolated. True: spans were found, and the task may be
    /// read again around them.
    pub(super) async fn window_failed(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        hold: &mut Holding<'_>,
        failed: FailedRead<'_>,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<bool, PipelineError> {
        if let Task::Unread { start, end } = failed.task {
            self.unread_still(widget, slot, (start, end), failed.error, shutdown)
                .await?;
            return Ok(false);
        }
        if !unread::isolates(failed.error) {
            return Ok(false);
        }
        let url = self.client.window_url(widget, &failed.piece).to_string();
        let failing = slot.window_failed(&url, self.pages_served());
        // A 5xx on every page of every window is the API's outage, not this window's: other
        // pages served since show it is the window's. A body too large or not JSON is the
        // page's own.
        if failing.times < ISOLATE_AFTER
            || !(failing.others_served || unread::page_content(failed.error))
        {
            return Ok(false);
        }
        let found = self
            .isolate(
                widget,
                hold,
                failed.piece,
                failed.error,
                failing.times,
                shutdown,
                stats,
            )
            .await?;
        slot.window_read(&url);
        let Some((found, error, attempts)) = found else {
            return Ok(false);
        };
        self.record_unread(widget, slot, found, error, attempts, shutdown)
            .await
    }

    /// Reads probe windows until the failing `piece` is narrowed to what the API will not
    /// serve. `None`: no probe was read (the API fails everywhere), or shutdown came.
    #[allow(clippy::too_many_arguments)]
    async fn isolate(
        &self,
        widget: &str,
        hold: &mut Holding<'_>,
        piece: Window,
        error: &ClientError,
        failures: u32,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<Option<(Vec<Span>, String, u32)>, PipelineError> {
        tracing::warn!(widget, window = %piece, failures, error = %error, "a window failed on the same page {failures} cycles running; narrowing it to what the Logs API will not serve");
        let mut isolation = Isolation::new(piece, self.schedule().mode);
        let mut last_error = error.to_string();
        let mut attempts = failures;
        while let Some(probe) = isolation.next_probe() {
            let how = WindowRead {
                window: probe,
                keeps_cursor: false,
                label: "isolate",
            };
            match self.read_window(widget, how, hold, shutdown, stats).await {
                Ok(WindowEnd::Complete) => isolation.record(true),
                Ok(WindowEnd::Interrupted) => return Ok(None),
                Err(WindowFailure::Client(e)) => {
                    last_error = e.to_string();
                    attempts += 1;
                    isolation.record(false);
                }
                Err(WindowFailure::FetcherStopped { .. }) => isolation.record(false),
                Err(WindowFailure::Pipeline(e)) => return Err(e),
            }
        }
        match isolation.finish() {
            Some(found) => Ok(Some((found, last_error, attempts))),
            None => {
                tracing::warn!(widget, window = %piece, "every probe failed: the Logs API fails this widget everywhere, not one page; nothing isolated");
                Ok(None)
            }
        }
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
                    next_retry: tracker::next_check(end, now, &settings),
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
        metrics::unread_spans(widget, progress.unread.len());
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
                    tracing::error!(widget, %start, %end, attempts = span.attempts, "an unread span is past the survey horizon and is no longer tried; its cases were never announced (see the dead-letter topic)");
                }
            }
        });
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
