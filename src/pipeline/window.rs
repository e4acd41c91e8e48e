//! Reading one window: its pages fetched ahead, decided, handed to Kafka, settled and
//! committed in order; resumed from a saved cursor when a restart interrupted it.

use std::pin::pin;

use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::flight::Flight;
use super::lanes::Holding;
use super::{
    CycleStats, MAX_PAGES_IN_FLIGHT, PAGES_PER_TRANSACTION, PREFETCH_PAGES, Pipeline, PipelineError,
};
use crate::metrics;
use crate::snapengage::{ClientError, Window};
use crate::state::{Change, WindowCursor};

/// How a window's reading ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WindowEnd {
    Complete,
    Interrupted,
}

/// One window to read, and what it is read for.
#[derive(Clone, Copy, Debug)]
pub(super) struct WindowRead {
    pub window: Window,
    /// A backlog window keeps a cursor, to go on where a restart stopped it; a fresh window
    /// (read again whole every interval) and a probe keep none: the widget's one cursor is its
    /// backlog window's.
    pub keeps_cursor: bool,
    /// What the window is read for, in logs.
    pub label: &'static str,
    /// A probe of an isolation: its requests are tried fewer times ([`PROBE_ATTEMPTS`]).
    pub probe: bool,
}

/// Attempts per request of a probe: its window is expected to fail, and the client's whole
/// back-off on each of a dozen failing probes would hold the widget for many minutes. Two, so
/// a passing blip is not taken for the bad page.
pub(super) const PROBE_ATTEMPTS: usize = 2;

impl Pipeline {
    pub(super) async fn read_window(
        &self,
        widget: &str,
        read: WindowRead,
        hold: &mut Holding<'_>,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<WindowEnd, WindowFailure> {
        let WindowRead {
            window,
            keeps_cursor,
            label,
            probe,
        } = read;
        let client = if probe {
            &self.probe_client
        } else {
            &self.client
        };
        tracing::debug!(widget, kind = label, %window, "reading window");
        // A backlog window interrupted part-way (a restart, a pod killed) goes on from its
        // saved cursor, if the cursor is for this very window.
        let first = client.window_url(widget, &window);
        let window_url = first.to_string();
        let w = widget.to_owned();
        let resume = if keeps_cursor {
            self.state(move |s| s.window_cursor(&w))
                .await?
                .filter(|c| c.window == window_url)
        } else {
            None
        };
        if let Some(c) = &resume {
            tracing::info!(widget, %window, pages_done = c.pages_done, "resuming a window where it stopped");
            metrics::window_resumed(widget);
        }
        // The next page is fetched while this one is decided, published and committed.
        let (tx, mut pages) = tokio::sync::mpsc::channel(PREFETCH_PAGES);
        let source = client.pages_from(
            widget,
            first,
            resume.as_ref().map(|c| (c.next.as_str(), c.pages_done)),
        );
        let _fetcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut source = pin!(source);
            while let Some(page) = source.next().await {
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    break;
                }
            }
        }));
        // Pages decided since a fresh read began to wait: those fetched before it are decided
        // before it (what they say is older than what it reads), a few at most.
        let mut decided_while_waited = 0;
        let mut flight = Flight::default();
        // Whether the page read last links to another.
        let mut more = false;
        let mut pages_read = 0u64;
        let end = loop {
            if hold.fresh_waiting() && (pages.is_empty() || decided_while_waited > PREFETCH_PAGES) {
                // A fresh read of this widget waits: the pages already fetched are decided,
                // what is decided is finished, and the widget is the fresh read's until it is
                // done. The fetcher goes on meanwhile (a page in back-off keeps its retries),
                // and the window after it, from the same page.
                if !self.finish_flight(&mut flight, shutdown).await? {
                    return Ok(WindowEnd::Interrupted);
                }
                metrics::window_resumed(widget);
                if !hold.let_fresh_read(shutdown).await {
                    break Ok(WindowEnd::Interrupted);
                }
                decided_while_waited = 0;
                continue;
            }
            // A fetch in flight is abandoned at shutdown: nothing of it was committed.
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(WindowEnd::Interrupted),
                // Woken at once, also while the fetcher waits out a failing page's retries.
                _ = hold.fresh_read_waits(), if pages.is_empty() => continue,
                next = pages.recv() => next,
            };
            match next {
                None => {
                    break end_when_pages_close(pages_read, more).map_err(|stopped| {
                        WindowFailure::FetcherStopped {
                            pages_read: stopped,
                        }
                    });
                }
                Some(Err(e)) => break Err(WindowFailure::Client(e)),
                Some(Ok(page)) => {
                    if hold.fresh_waiting() {
                        decided_while_waited += 1;
                    }
                    // A long window is progress, page by page: liveness never fails for it.
                    self.health.beat();
                    self.page_served();
                    let cursor =
                        page.next
                            .as_ref()
                            .filter(|_| keeps_cursor)
                            .map(|next| WindowCursor {
                                widget: widget.to_owned(),
                                window: window_url.clone(),
                                next: next.to_string(),
                                pages_done: page.index + 1,
                            });
                    more = page.next.is_some();
                    pages_read += 1;
                    let mut batch = self.decide(page, &mut flight, stats).await?;
                    batch.cursor = cursor;
                    if self.sink.exactly_once() {
                        // Pages go out in transactions of several: a commit costs a round
                        // trip to the coordinator and a marker per partition.
                        flight.hold(batch);
                        if flight.held_pages() >= PAGES_PER_TRANSACTION
                            && !self.commit_held(&mut flight, shutdown).await?
                        {
                            return Ok(WindowEnd::Interrupted);
                        }
                        continue;
                    }
                    let Some(slot) = self.page_slot(&mut flight, shutdown).await? else {
                        return Ok(WindowEnd::Interrupted);
                    };
                    let delivery = self.sink.start_publish(&batch.outgoing).await;
                    flight.push(batch, delivery, slot);
                    while flight.pages.len() > MAX_PAGES_IN_FLIGHT {
                        if !self.settle_oldest(&mut flight, shutdown).await? {
                            return Ok(WindowEnd::Interrupted);
                        }
                    }
                    if shutdown.is_cancelled() {
                        break Ok(WindowEnd::Interrupted);
                    }
                }
            }
        };
        // Pages already decided or handed to Kafka are finished, whatever ends the window.
        if !self.finish_flight(&mut flight, shutdown).await? {
            return Ok(WindowEnd::Interrupted);
        }
        // The API refused to go on from the saved cursor (it may have expired): the window
        // starts over at page 1 next cycle.
        if let (Some(_), Err(WindowFailure::Client(e))) = (&resume, &end)
            && !e.is_transient()
        {
            tracing::warn!(widget, error = %e, "the saved cursor was refused; the window starts over next cycle");
            let widget = widget.to_owned();
            self.write(vec![Change::CursorCleared { widget }], shutdown)
                .await?;
        }
        end
    }

    /// Commits the pages held for a transaction and settles those handed to Kafka. Returns
    /// false when shutdown came first.
    async fn finish_flight(
        &self,
        flight: &mut Flight,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        if !self.commit_held(flight, shutdown).await? {
            return Ok(false);
        }
        while !flight.pages.is_empty() {
            if !self.settle_oldest(flight, shutdown).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Pipeline {
    /// A place for one more page handed to Kafka. Pages in flight are bounded across every
    /// window read at once, so a crash re-sends at most that many whatever the concurrency. A
    /// window with pages of its own in flight settles its oldest rather than wait on other
    /// windows (which never wait holding pages either). `None`: shutdown came first.
    async fn page_slot(
        &self,
        flight: &mut Flight,
        shutdown: &CancellationToken,
    ) -> Result<Option<OwnedSemaphorePermit>, PipelineError> {
        loop {
            if let Ok(slot) = self.pages_in_flight.clone().try_acquire_owned() {
                return Ok(Some(slot));
            }
            if flight.pages.is_empty() {
                return Ok(tokio::select! {
                    slot = self.pages_in_flight.clone().acquire_owned() => slot.ok(),
                    _ = shutdown.cancelled() => None,
                });
            }
            if !self.settle_oldest(flight, shutdown).await? {
                return Ok(None);
            }
        }
    }
}

/// How a window ends when its fetcher closes the channel of pages. The fetcher closes it after
/// the last page, or after a failure it sent. Closed otherwise, it panicked: that is no
/// complete read, which would mark a day read or a fresh read done without its pages. `Err`
/// holds the pages read before.
fn end_when_pages_close(pages_read: u64, more: bool) -> Result<WindowEnd, u64> {
    match (pages_read, more) {
        (1.., false) => Ok(WindowEnd::Complete),
        _ => Err(pages_read),
    }
}

/// Why a window failed: the API, its page fetcher, or the pipeline itself (which stops it).
pub(super) enum WindowFailure {
    Client(ClientError),
    /// The fetcher ended before the window's last page without saying why (it panicked).
    FetcherStopped {
        pages_read: u64,
    },
    Pipeline(PipelineError),
}

impl From<PipelineError> for WindowFailure {
    fn from(e: PipelineError) -> Self {
        WindowFailure::Pipeline(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_complete_only_when_its_last_page_says_so() {
        // The last page read links to no other.
        assert_eq!(end_when_pages_close(1, false), Ok(WindowEnd::Complete));
        assert_eq!(end_when_pages_close(7, false), Ok(WindowEnd::Complete));
        // Closed with pages still to come, or before any page (even the last page of an
        // empty window comes as a page): the fetcher died.
        assert_eq!(end_when_pages_close(3, true), Err(3));
        assert_eq!(end_when_pages_close(0, false), Err(0));
    }
}
