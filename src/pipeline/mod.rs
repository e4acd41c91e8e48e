//! The forwarder: scheduler → source → tracker → sink → state commit.
//!
//! A page's state commits only after Kafka acknowledged every event derived from it, so a
//! crash loses nothing; at worst the events of the pages in flight (at most
//! `MAX_PAGES_IN_FLIGHT` + 1, across all the windows read at once) go out again with the same
//! ids.

mod cycle;
mod delivery;
mod flight;
mod isolate;
mod lanes;
mod observe;
mod page;
mod progress;
mod prune;
pub mod scheduler;
mod settings;
pub mod tracker;
mod transact;
mod unread;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::clock::Clock;
use crate::metrics;
use crate::sink::{KafkaSink, Outgoing};
use crate::snapengage::{Case, LogsClient, Page};
use crate::state::{Change, StateError, StateStore, WidgetProgress};
use flight::Flight;
pub use observe::ClientMetrics;
use page::{Known, PageBatch, PageCases, PageContext};
pub use prune::PRUNE_CASES_PER_TURN;
use scheduler::{Schedule, Task};
pub use settings::*;

/// How often state counts are refreshed for metrics.
const STATS_REFRESH: Duration = Duration::from_secs(30);
/// Pages fetched ahead of the one being processed.
const PREFETCH_PAGES: usize = 2;
/// Pages handed to Kafka before the oldest must be acknowledged and committed. Bounded, so
/// memory stays flat and a crash re-sends at most this many pages (same event ids).
const MAX_PAGES_IN_FLIGHT: usize = 4;
/// Exactly-once delivery: pages per Kafka transaction, at most (a window's last pages commit
/// when it ends).
const PAGES_PER_TRANSACTION: usize = 10;
/// Widgets whose windows each lane reads at once, sharing the request budget: the pages of
/// one window come one after another (each link is in the page before), so only several
/// windows in flight keep the budget, not the wait for each response, the limit.
const MAX_CONCURRENT_WIDGETS: usize = 4;
/// Re-check days read per widget per cycle, so old surveys never crowd out fresh cases.
const RECHECK_DAYS_PER_CYCLE: usize = 4;
/// How long past the survey horizon a span no longer tried is still read around: the last
/// re-check of its day's cases can follow the horizon by a day (the daily grid).
const UNREAD_KEPT_PAST_HORIZON: chrono::Duration = chrono::Duration::days(3);
/// How often (on the pipeline's clock) state that no decision needs any more is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state task failed: {0}")]
    Join(String),
    #[error(
        "Kafka refuses every record for topic {topic}: {error}; an operator must fix the topic \
         or the client's rights (nothing after the last acknowledged page was committed)"
    )]
    KafkaRefused { topic: String, error: String },
    #[error(transparent)]
    Transaction(#[from] crate::sink::transaction::TransactionError),
}

/// What one cycle did, for its summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct CycleStats {
    pub windows: u64,
    pub pages: u64,
    pub cases: u64,
    pub created: u64,
    pub surveys: u64,
    pub dead_letters: u64,
    pub window_errors: u64,
    pub pruned: u64,
}

pub struct Pipeline {
    settings: PipelineSettings,
    client: LogsClient,
    /// The client for an isolation's probes: fewer attempts per request.
    probe_client: LogsClient,
    store: Arc<dyn StateStore>,
    sink: Arc<KafkaSink>,
    clock: Clock,
    health: Arc<Health>,
    stats_cache: std::sync::Mutex<Option<(Instant, crate::state::StateStats)>>,
    /// Exactly-once delivery: one transaction at a time (windows of several widgets are read
    /// concurrently; the producer has one transactional id).
    transaction: tokio::sync::Mutex<()>,
    /// Places for pages handed to Kafka and not yet committed, shared by the windows read at
    /// once: `MAX_PAGES_IN_FLIGHT` + 1 (one being settled), whatever the concurrency.
    pages_in_flight: Arc<tokio::sync::Semaphore>,
    /// Pages the API has served, every window together: a window failing while others are
    /// served fails for a reason of its own.
    pages_served: std::sync::atomic::AtomicU64,
}

impl Pipeline {
    pub fn new(
        settings: PipelineSettings,
        client: LogsClient,
        store: Arc<dyn StateStore>,
        sink: Arc<KafkaSink>,
        clock: Clock,
        health: Arc<Health>,
    ) -> Self {
        health.set_state_ok(true);
        // No delivery has failed yet; the first that does says so.
        health.set_deliveries_ok(true);
        Self {
            settings,
            probe_client: client.with_attempts(window::PROBE_ATTEMPTS),
            client,
            store,
            sink,
            clock,
            health,
            stats_cache: std::sync::Mutex::new(None),
            transaction: tokio::sync::Mutex::new(()),
            pages_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_PAGES_IN_FLIGHT + 1)),
            pages_served: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn page_served(&self) {
        self.pages_served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn pages_served(&self) -> u64 {
        self.pages_served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a blocking state call off the async threads.
    async fn state<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn StateStore) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, PipelineError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .map_err(|e| PipelineError::Join(e.to_string()))?;
        self.health.set_state_ok(result.is_ok());
        Ok(result?)
    }

    /// Polls until `shutdown` fires, in two lanes ([`lanes`]): fresh windows every interval,
    /// the backlog with what they leave. Then the pages in flight are finished and committed.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        let widgets = self.settings.widgets.clone();
        // A first start reads the lookback days once (the catch-up), not only today: cases of
        // yesterday are announced whatever the hour of the first start.
        let since = self.settings.since.unwrap_or_else(|| {
            scheduler::lookback_start(self.clock.now().date_naive(), self.settings.lookback)
        });
        let mut slots = Vec::new();
        for widget in &widgets {
            let w = widget.clone();
            let known = self.state(move |s| s.widget(&w)).await?;
            let p = match known {
                Some(p) => p,
                None => {
                    let fresh = WidgetProgress {
                        since,
                        caught_up_through: None,
                        last_fresh_poll: None,
                        unread: Vec::new(),
                    };
                    let change = Change::Widget {
                        widget: widget.clone(),
                        progress: fresh.clone(),
                    };
                    self.write(vec![change], &shutdown).await?;
                    fresh
                }
            };
            metrics::unread_spans(widget, unread::tried(&p.unread));
            slots.push((widget.clone(), lanes::WidgetSlot::new(p)));
        }
        let widgets = lanes::Widgets(slots);
        tokio::try_join!(
            self.fresh_lane(&widgets, &shutdown),
            self.backlog_lane(&widgets, &shutdown)
        )?;
        tracing::info!("poll loop stopped");
        Ok(())
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            poll_interval: self.settings.poll_interval,
            lookback: self.settings.lookback,
            late_visibility: self.settings.late_visibility,
            overlap: self.settings.window_overlap,
            max_staleness: self.settings.max_staleness,
            mode: self.client.config().window_mode,
        }
    }

    fn fresh_start(&self) -> NaiveDate {
        scheduler::fresh_start(self.clock.now(), &self.schedule())
    }

    async fn report_cycle(
        &self,
        lane: lanes::Lane,
        stats: &CycleStats,
        took: Duration,
        progress: &HashMap<String, WidgetProgress>,
    ) {
        let fresh_start = self.fresh_start();
        let behind: u64 = progress
            .values()
            .map(|p| scheduler::catch_up_remaining(p, fresh_start))
            .sum();
        let state = self.state_stats().await;
        if let Some(state) = state {
            metrics::state_size(state.known_cases, state.pending_surveys, state.size_bytes);
            if let Some((size, free)) = state.volume {
                metrics::state_volume(size, free);
            }
        }
        if stats.windows + stats.window_errors + stats.pruned > 0 {
            tracing::info!(
                lane = lane.label(),
                windows = stats.windows,
                pages = stats.pages,
                cases = stats.cases,
                created = stats.created,
                surveys = stats.surveys,
                dead_letters = stats.dead_letters,
                window_errors = stats.window_errors,
                pruned = stats.pruned,
                catch_up_days_left = behind,
                known_cases = state.map(|s| s.known_cases),
                pending_surveys = state.map(|s| s.pending_surveys),
                took_ms = took.as_millis() as u64,
                "poll cycle"
            );
        }
    }

    /// State counts for metrics and the cycle line, refreshed at most every
    /// [`STATS_REFRESH`]: counting ten million rows each cycle would cost more than a page.
    async fn state_stats(&self) -> Option<crate::state::StateStats> {
        let cached = *self.stats_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, stats)) = cached
            && at.elapsed() < STATS_REFRESH
        {
            return Some(stats);
        }
        let fresh = self.state(|s| s.stats()).await.ok()?;
        *self.stats_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), fresh));
        Some(fresh)
    }

    /// Records that a window was read completely.
    async fn window_done(
        &self,
        widget: &str,
        task: Task,
        cycle_started: DateTime<Utc>,
        window_started: DateTime<Utc>,
        slot: &lanes::WidgetSlot,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut changes = Vec::new();
        match task {
            Task::CatchUp(day) => {
                slot.update_progress(|p| p.caught_up_through = Some(day));
            }
            Task::Fresh => {
                self.health.fresh_poll_done(widget);
                slot.update_progress(|p| p.last_fresh_poll = Some(cycle_started));
            }
            Task::Recheck(due) => {
                // Due cases the API no longer returned: move their next check on, or they
                // would make this day due forever. Due as of the window's start: a case that
                // fell due while the window was read was read before it was due, and its
                // check (the horizon's last, say) must still happen.
                let (w, now, settings) =
                    (widget.to_owned(), self.clock.now(), self.settings.tracker);
                let unseen = self
                    .state(move |s| s.due_cases(&w, &due, window_started))
                    .await?;
                changes.extend(unseen.into_iter().map(|mut c| {
                    c.record.next_check = tracker::next_check(c.record.chat_end, now, &settings);
                    Change::Case(c)
                }));
            }
            Task::Unread { start, end } => {
                tracing::info!(widget, %start, %end, "an unread span was read: what it holds is announced");
                metrics::unread_span_read(widget);
                slot.update_progress(|p| p.unread.retain(|s| !(s.start == start && s.end == end)));
            }
        }
        // Spans no longer tried are read around until nothing reads their time any more.
        let keep = chrono::Duration::from_std(self.settings.tracker.horizon)
            .unwrap_or(chrono::Duration::days(7))
            + UNREAD_KEPT_PAST_HORIZON;
        let now = self.clock.now();
        let progress = slot.update_progress(|p| {
            unread::forget_past(&mut p.unread, now, keep);
        });
        if let Task::Unread { .. } = task {
            metrics::unread_spans(widget, unread::tried(&progress.unread));
        }
        changes.push(Change::Widget {
            widget: widget.to_owned(),
            progress,
        });
        // The widget's cursor is its backlog window's: a fresh window never saves one.
        if task != Task::Fresh {
            changes.push(Change::CursorCleared {
                widget: widget.to_owned(),
            });
        }
        self.write(changes, shutdown).await
    }

    /// The decisions for one page ([`page::decide`]) on what the state and the pages in
    /// flight know: the records to publish and the state to commit once Kafka has them.
    async fn decide(
        &self,
        page: Page,
        flight: &mut Flight,
        stats: &mut CycleStats,
    ) -> Result<PageBatch, PipelineError> {
        let now = self.clock.now();
        let cases = PageCases::read(page, &mut flight.dead_letters);
        stats.pages += 1;
        stats.cases += cases.received as u64;
        metrics::cases_seen(&cases.widget, cases.received);
        let (ids, digests, w) = (cases.ids(), cases.digests(), cases.widget.clone());
        let mut known = self
            .state(move |s| {
                Ok(Known {
                    dead_letters: s.known_dead_letters(&w, &as_strs(&digests))?,
                    records: s.lookup(&as_strs(&ids))?,
                })
            })
            .await?;
        flight.overlay(cases.cases.iter().map(Case::id), &mut known.records);
        let widget = cases.widget.clone();
        let batch = page::decide(
            cases,
            &known,
            now,
            PageContext {
                org_id: &self.client.config().org_id,
                tracker: &self.settings.tracker,
                max_record_bytes: self.sink.max_record_bytes(),
            },
        );
        for record in &batch.outgoing {
            if let Outgoing::DeadLetter(dead) = record {
                tracing::warn!(widget = %widget, reason = %dead.reason, "case sent to the dead-letter topic");
                metrics::dead_letter(&widget, dead.reason_code);
            }
        }
        stats.created += batch.created;
        stats.surveys += batch.surveys;
        stats.dead_letters += batch.dead_letters.len() as u64;
        Ok(batch)
    }
}

fn as_strs(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}
