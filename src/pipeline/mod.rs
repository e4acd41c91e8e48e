//! The forwarder: scheduler → source → tracker → sink → state commit.
//!
//! A page's state commits only after Kafka acknowledged every event derived from it, so a
//! crash loses nothing; at worst the events of the pages in flight (at most
//! `MAX_PAGES_IN_FLIGHT` + 1) go out again with the same ids.

mod delivery;
mod progress;
pub mod scheduler;
pub mod tracker;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, monotonic_ms};
use crate::config::WindowMode;
use crate::events::{CloudEvent, EventKind};
use crate::sink::dead_letter::sha256_hex;
use crate::sink::{DeadLetter, KafkaSink, Outgoing, PendingDelivery};
use crate::snapengage::{Case, ClientError, LogsClient, Page};
use crate::state::{
    CaseRecord, DeadLetterMark, StateError, StateStore, StoredCase, WidgetProgress, WindowCursor,
};
use progress::CatchUpProgress;
use scheduler::Task;
use tracker::TrackerSettings;

/// How often state counts are refreshed for metrics.
const STATS_REFRESH: Duration = Duration::from_secs(30);
/// Pages fetched ahead of the one being processed.
const PREFETCH_PAGES: usize = 2;
/// Pages handed to Kafka before the oldest must be acknowledged and committed. Bounded, so
/// memory stays flat and a crash re-sends at most this many pages (same event ids).
const MAX_PAGES_IN_FLIGHT: usize = 4;
/// Re-check days read per widget per cycle, so old surveys never crowd out fresh cases.
const RECHECK_DAYS_PER_CYCLE: usize = 4;
/// How often (on the pipeline's clock) state that no decision needs any more is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(15 * 60);
/// Days pruned per widget per turn; each is one small transaction.
const PRUNE_DAYS_PER_TURN: usize = 64;
/// Dead-letter marks are kept this long beyond lookback and horizon, after which a bad case's
/// day is normally not read again (a catch-up after a longer outage may dead-letter it again).
const DEAD_LETTER_MARGIN: chrono::Duration = chrono::Duration::days(1);

#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub org_id: String,
    pub widgets: Vec<String>,
    pub poll_interval: Duration,
    pub lookback: Duration,
    pub since: Option<NaiveDate>,
    pub window_mode: WindowMode,
    pub tracker: TrackerSettings,
}

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
}

/// What the admin endpoints report; written by the pipeline, read by probes.
#[derive(Debug, Default)]
pub struct Health {
    pub state_ok: AtomicBool,
    /// Written by the pipeline only: false while a page's records are not acknowledged.
    pub kafka_ok: AtomicBool,
    /// Written by the admin probe only: a broker answered a metadata request for our topic.
    pub kafka_reachable: AtomicBool,
    /// [`monotonic_ms`] of the last completed poll window (any widget).
    pub last_poll_ok_ms: AtomicI64,
    /// [`monotonic_ms`] until which the poll loop is known to be alive: its last sign of
    /// progress (a page, a cycle), or the end of a wait it chose (a Retry-After, the poll
    /// interval), whichever is later.
    pub heartbeat_ms: AtomicI64,
    /// Per widget, [`monotonic_ms`] when its fresh window was last read completely.
    fresh_polls: std::sync::Mutex<HashMap<String, i64>>,
    /// Where the admin endpoints listen, once they do.
    pub admin_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Why the pipeline stopped for good, if it did: readiness names it.
    fatal: std::sync::OnceLock<String>,
}

impl Health {
    /// The loop made progress now.
    pub fn beat(&self) {
        self.beat_for(Duration::ZERO);
    }

    /// The loop is about to wait `wait` on purpose: alive until then, however long. A later
    /// beat never shortens a wait already announced.
    pub fn beat_for(&self, wait: Duration) {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        self.heartbeat_ms
            .fetch_max(monotonic_ms().saturating_add(wait_ms), Ordering::Relaxed);
    }

    fn poll_ok(&self) {
        self.last_poll_ok_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    fn fresh_poll_done(&self, widget: &str) {
        self.fresh_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(widget.to_owned(), monotonic_ms());
    }

    /// Records why the pipeline stopped for good.
    pub fn set_fatal(&self, reason: String) {
        let _ = self.fatal.set(reason);
    }

    /// Why the pipeline stopped for good, if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// (widget, [`monotonic_ms`] of its last complete fresh poll).
    pub fn fresh_polls(&self) -> Vec<(String, i64)> {
        self.fresh_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(w, at)| (w.clone(), *at))
            .collect()
    }
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

enum WindowEnd {
    Complete,
    Interrupted,
}

pub struct Pipeline {
    settings: PipelineSettings,
    client: LogsClient,
    store: Arc<dyn StateStore>,
    sink: Arc<KafkaSink>,
    clock: Clock,
    health: Arc<Health>,
    stats_cache: std::sync::Mutex<Option<(Instant, crate::state::StateStats)>>,
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
        health.state_ok.store(true, Ordering::Relaxed);
        // No delivery has failed yet; the first that does says so.
        health.kafka_ok.store(true, Ordering::Relaxed);
        Self {
            settings,
            client,
            store,
            sink,
            clock,
            health,
            stats_cache: std::sync::Mutex::new(None),
        }
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
        self.health
            .state_ok
            .store(result.is_ok(), Ordering::Relaxed);
        Ok(result?)
    }

    /// Polls until `shutdown` fires; then the page in flight is finished and committed.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        let widgets = self.settings.widgets.clone();
        let since = self
            .settings
            .since
            .unwrap_or_else(|| self.clock.now().date_naive());
        let mut progress = HashMap::new();
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
                    };
                    let (w, p) = (widget.clone(), fresh.clone());
                    self.state(move |s| s.set_widget(&w, &p)).await?;
                    fresh
                }
            };
            progress.insert(widget.clone(), p);
        }
        let mut catch_up = CatchUpProgress::new(&progress, self.fresh_start());
        // The first prune comes one period after start, not at once: a start is busy enough
        // (a catch-up's first days, a migrated state's first prune would both land together).
        let mut last_prune = Instant::now();

        while !shutdown.is_cancelled() {
            self.health.beat();
            let cycle_started = Instant::now();
            let now = self.clock.now();
            let today = now.date_naive();
            let fresh_start = self.fresh_start();
            let mut plans = Vec::new();
            for widget in &widgets {
                let (w, before) = (widget.clone(), fresh_start);
                let due = self
                    .state(move |s| s.due_days(&w, now, before, RECHECK_DAYS_PER_CYCLE))
                    .await?;
                let tasks = scheduler::plan_widget(
                    &progress[widget],
                    today,
                    now,
                    self.settings.poll_interval,
                    self.settings.lookback,
                    &due,
                );
                plans.push((widget.clone(), tasks));
            }
            let mut stats = CycleStats::default();
            for (widget, task) in scheduler::interleave(plans) {
                if shutdown.is_cancelled() {
                    break;
                }
                self.health.beat();
                let window = scheduler::window_for(
                    task,
                    today,
                    self.settings.lookback,
                    self.settings.window_mode,
                );
                let started = Instant::now();
                let window_started = self.clock.now();
                match self
                    .read_window(&widget, task, window, &shutdown, &mut stats)
                    .await
                {
                    Ok(WindowEnd::Complete) => {
                        stats.windows += 1;
                        self.health.poll_ok();
                        metrics::histogram!("casestream_window_seconds", "kind" => task.label())
                            .record(started.elapsed().as_secs_f64());
                        let p = progress
                            .get_mut(&widget)
                            .unwrap_or_else(|| unreachable!("every planned widget has progress"));
                        self.window_done(&widget, task, now, window_started, p)
                            .await?;
                        if let Task::CatchUp(_) = task {
                            catch_up.day_done();
                        }
                    }
                    Ok(WindowEnd::Interrupted) => break,
                    Err(WindowFailure::Client(e)) => {
                        stats.window_errors += 1;
                        metrics::counter!("casestream_window_errors_total", "widget" => widget.clone(), "kind" => e.kind()).increment(1);
                        let level_error = !e.is_transient();
                        if level_error {
                            tracing::error!(widget = %widget, window = %window, error = %e, "reading the Logs API failed; will try again next cycle");
                        } else {
                            tracing::warn!(widget = %widget, window = %window, error = %e, "Logs API window gave up after retries; will try again next cycle");
                        }
                    }
                    Err(WindowFailure::Pipeline(e)) => return Err(e),
                }
            }
            if !shutdown.is_cancelled()
                && self.clock.virtual_duration(last_prune.elapsed()) >= PRUNE_EVERY
            {
                stats.pruned = self.prune(&progress, &shutdown).await?;
                last_prune = Instant::now();
            }
            self.report_cycle(&stats, cycle_started.elapsed(), &progress, fresh_start)
                .await;
            catch_up.show(&progress, self.fresh_start());
            let still_catching_up = progress
                .values()
                .any(|p| scheduler::next_catch_up(p, self.fresh_start()).is_some());
            if shutdown.is_cancelled() || (still_catching_up && stats.window_errors == 0) {
                continue;
            }
            // Next cycle when the poll interval has passed since this one started, measured on
            // the monotonic clock: a wall clock stepped back must not stretch the wait.
            let elapsed = self.clock.virtual_duration(cycle_started.elapsed());
            let wait = self.settings.poll_interval.saturating_sub(elapsed);
            self.health.beat_for(self.clock.real_duration(wait));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.clock.sleep(wait) => {}
            }
        }
        catch_up.finish();
        tracing::info!("poll loop stopped");
        Ok(())
    }

    fn fresh_start(&self) -> NaiveDate {
        scheduler::fresh_start(self.clock.now().date_naive(), self.settings.lookback)
    }

    async fn report_cycle(
        &self,
        stats: &CycleStats,
        took: Duration,
        progress: &HashMap<String, WidgetProgress>,
        fresh_start: NaiveDate,
    ) {
        let behind: u64 = progress
            .values()
            .map(|p| scheduler::catch_up_remaining(p, fresh_start))
            .sum();
        let state = self.state_stats().await;
        if let Some(state) = state {
            metrics::gauge!("casestream_known_cases").set(state.known_cases as f64);
            metrics::gauge!("casestream_pending_surveys").set(state.pending_surveys as f64);
            metrics::gauge!("casestream_state_size_bytes").set(state.size_bytes as f64);
        }
        if stats.windows + stats.window_errors + stats.pruned > 0 {
            tracing::info!(
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
        progress: &mut WidgetProgress,
    ) -> Result<(), PipelineError> {
        match task {
            Task::CatchUp(day) => progress.caught_up_through = Some(day),
            Task::Fresh => {
                progress.last_fresh_poll = Some(cycle_started);
                self.health.fresh_poll_done(widget);
            }
            Task::Recheck(day) => {
                // Due cases the API no longer returned: move their next check on, or they
                // would make this day due forever. Due as of the window's start: a case that
                // fell due while the window was read was read before it was due, and its
                // check (the horizon's last, say) must still happen.
                let (w, now, settings) =
                    (widget.to_owned(), self.clock.now(), self.settings.tracker);
                self.state(move |s| {
                    let unseen: Vec<StoredCase> = s
                        .due_cases(&w, day, window_started)?
                        .into_iter()
                        .map(|mut c| {
                            c.record.next_check =
                                tracker::next_check(c.record.chat_end, now, &settings);
                            c
                        })
                        .collect();
                    s.commit_cases(&unseen)
                })
                .await?;
            }
        }
        let (w, p) = (widget.to_owned(), progress.clone());
        self.state(move |s| {
            s.set_widget(&w, &p)?;
            s.clear_window_cursor(&w)
        })
        .await
    }

    async fn read_window(
        &self,
        widget: &str,
        task: Task,
        window: crate::snapengage::Window,
        shutdown: &CancellationToken,
        stats: &mut CycleStats,
    ) -> Result<WindowEnd, WindowFailure> {
        tracing::debug!(widget, kind = task.label(), %window, "reading window");
        // A window interrupted part-way (a restart, a pod killed) goes on from its saved
        // cursor, if the cursor is for this very window.
        let window_url = self.client.window_url(widget, &window).to_string();
        let w = widget.to_owned();
        let resume = self
            .state(move |s| s.window_cursor(&w))
            .await?
            .filter(|c| c.window == window_url);
        if let Some(c) = &resume {
            tracing::info!(widget, %window, pages_done = c.pages_done, "resuming a window where it stopped");
            metrics::counter!("casestream_windows_resumed_total", "widget" => widget.to_owned())
                .increment(1);
        }
        // The next page is fetched while this one is decided, published and committed.
        let (tx, mut pages) = tokio::sync::mpsc::channel(PREFETCH_PAGES);
        let source = self.client.pages_from(
            widget,
            window,
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
        let mut flight = Flight::default();
        let end = loop {
            // A fetch in flight is abandoned at shutdown: nothing of it was committed.
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(WindowEnd::Interrupted),
                next = pages.recv() => next,
            };
            match next {
                None => break Ok(WindowEnd::Complete),
                Some(Err(e)) => break Err(WindowFailure::Client(e)),
                Some(Ok(page)) => {
                    // A long window is progress, page by page: liveness never fails for it.
                    self.health.beat();
                    let cursor = page.next.as_ref().map(|next| WindowCursor {
                        widget: widget.to_owned(),
                        window: window_url.clone(),
                        next: next.to_string(),
                        pages_done: page.index + 1,
                    });
                    let mut batch = self
                        .decide(page, &flight.records, &mut flight.dead_letters, stats)
                        .await?;
                    batch.cursor = cursor;
                    flight.seq += 1;
                    for case in &batch.changed {
                        flight
                            .records
                            .insert(case.id.clone(), (case.record.clone(), flight.seq));
                    }
                    let delivery = self.sink.start_publish(&batch.outgoing).await;
                    flight.pages.push_back(InFlightPage {
                        seq: flight.seq,
                        batch,
                        delivery,
                    });
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
        // Pages already handed to Kafka are finished, whatever ends the window.
        while !flight.pages.is_empty() {
            if !self.settle_oldest(&mut flight, shutdown).await? {
                return Ok(WindowEnd::Interrupted);
            }
        }
        // The API refused to go on from the saved cursor (it may have expired): the window
        // starts over at page 1 next cycle.
        if let (Some(_), Err(WindowFailure::Client(e))) = (&resume, &end)
            && !e.is_transient()
        {
            tracing::warn!(widget, error = %e, "the saved cursor was refused; the window starts over next cycle");
            let w = widget.to_owned();
            self.state(move |s| s.clear_window_cursor(&w)).await?;
        }
        end
    }

    /// The tracker's decisions for one page: the records to publish and the state to commit
    /// once Kafka has them. `in_flight` holds what pages not yet committed decided.
    async fn decide(
        &self,
        page: Page,
        in_flight: &HashMap<String, (CaseRecord, u64)>,
        dead_in_window: &mut HashSet<String>,
        stats: &mut CycleStats,
    ) -> Result<PageBatch, PipelineError> {
        let now = self.clock.now();
        let widget = page.widget_id;
        stats.pages += 1;
        stats.cases += page.cases.len() as u64;
        metrics::counter!("casestream_cases_seen_total", "widget" => widget.clone())
            .increment(page.cases.len() as u64);

        let mut cases: Vec<Case> = Vec::with_capacity(page.cases.len());
        let mut position: HashMap<String, usize> = HashMap::with_capacity(page.cases.len());
        let mut unusable = Vec::new();
        for raw in page.cases {
            match Case::from_raw(raw) {
                // A case repeated within a page counts once: the later copy is the newer.
                Ok(case) => match position.get(case.id()) {
                    Some(&i) => cases[i] = case,
                    None => {
                        position.insert(case.id().to_owned(), cases.len());
                        cases.push(case);
                    }
                },
                Err(problem) => {
                    let digest = sha256_hex(problem.raw.get().as_bytes());
                    if dead_in_window.insert(digest.clone()) {
                        unusable.push((digest, problem));
                    }
                }
            }
        }

        // A bad input goes to the dead-letter topic once, not on every read of its day; a
        // changed one (other bytes) is a new input.
        let digests: Vec<String> = unusable.iter().map(|(d, _)| d.clone()).collect();
        let sent_before = self
            .state(move |s| {
                s.known_dead_letters(&digests.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await?;
        let mut outgoing = Vec::new();
        let mut dead_letters = Vec::new();
        for (digest, problem) in unusable {
            if sent_before.contains(&digest) {
                continue;
            }
            tracing::warn!(widget = %widget, reason = %problem.reason, "case sent to the dead-letter topic");
            stats.dead_letters += 1;
            let code = problem.reason.code();
            metrics::counter!("casestream_dead_letters_total", "widget" => widget.clone(), "reason" => code)
                .increment(1);
            let case_id = problem.id_text();
            dead_letters.push(DeadLetterMark {
                digest,
                widget: widget.clone(),
                case_id: case_id.clone(),
                reason_code: code.to_owned(),
                at: now,
            });
            outgoing.push(Outgoing::DeadLetter(DeadLetter::unusable_case(
                &self.settings.org_id,
                &widget,
                case_id,
                code,
                problem.reason.to_string(),
                problem.raw.get().as_bytes(),
                self.sink.max_record_bytes(),
            )));
        }

        let ids: Vec<String> = cases.iter().map(|c| c.id().to_owned()).collect();
        let mut known = self
            .state(move |s| s.lookup(&ids.iter().map(String::as_str).collect::<Vec<_>>()))
            .await?;
        // Pages still in flight are not committed yet; what they decided comes first.
        for case in &cases {
            if let Some((record, _)) = in_flight.get(case.id()) {
                known.insert(case.id().to_owned(), record.clone());
            }
        }

        let mut changed = Vec::new();
        for case in &cases {
            let before: Option<&CaseRecord> = known.get(case.id());
            let decision = tracker::observe(case, before, now, &self.settings.tracker);
            for kind in &decision.events {
                match kind {
                    EventKind::Created => stats.created += 1,
                    EventKind::Survey { .. } => stats.surveys += 1,
                }
                outgoing.push(Outgoing::Event(CloudEvent::for_case(
                    &self.settings.org_id,
                    &widget,
                    case,
                    kind,
                    now,
                )));
            }
            if before != Some(&decision.record) {
                let day = case
                    .created_at()
                    .unwrap_or(decision.record.chat_end)
                    .date_naive();
                changed.push(StoredCase {
                    id: case.id().to_owned(),
                    widget: widget.clone(),
                    day,
                    record: decision.record,
                });
            }
        }

        Ok(PageBatch {
            outgoing,
            changed,
            dead_letters,
            cursor: None,
        })
    }
}

/// What one page decided: records for Kafka, then state to commit.
struct PageBatch {
    outgoing: Vec<Outgoing>,
    changed: Vec<StoredCase>,
    dead_letters: Vec<DeadLetterMark>,
    /// Where the window goes on after this page, saved with its commit.
    cursor: Option<WindowCursor>,
}

struct InFlightPage {
    seq: u64,
    batch: PageBatch,
    delivery: PendingDelivery,
}

/// The pages of a window handed to Kafka but not yet committed, oldest first, and the
/// records they decided (with the page that decided each).
#[derive(Default)]
struct Flight {
    pages: std::collections::VecDeque<InFlightPage>,
    records: HashMap<String, (CaseRecord, u64)>,
    seq: u64,
    /// Digests of bad inputs dead-lettered by pages of this window (committed or not).
    dead_letters: HashSet<String>,
    /// Once shutdown came: until when pages in flight may still be acknowledged.
    shutdown_deadline: Option<tokio::time::Instant>,
}

enum WindowFailure {
    Client(ClientError),
    Pipeline(PipelineError),
}

impl From<PipelineError> for WindowFailure {
    fn from(e: PipelineError) -> Self {
        WindowFailure::Pipeline(e)
    }
}
