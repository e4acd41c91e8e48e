//! The poll loop's two lanes, sharing the widgets and the request budget.
//!
//! The fresh lane reads the widgets' fresh windows every poll interval, rationed by
//! [`scheduler::ration`]. The backlog lane reads the catch-up days and the due re-checks with
//! what the fresh windows leave of the budget. A backlog window can be a whole day of 50 pages
//! and more: when both kinds shared one cycle, a cycle ended with its slowest window, and a
//! day's final read held back every widget's next fresh read.
//!
//! A widget's windows are still read one at a time: two windows deciding the same case at
//! once would both announce it. A fresh read waiting for its widget makes the backlog window
//! finish the pages it decided and let it have the widget at once, even while a page of the
//! window is in back-off; the window goes on where it was once the read is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::cycle::WidgetCycle;
use super::progress::CatchUpProgress;
use super::scheduler::{self, Activity, Task};
use super::tracker;
use super::{CycleStats, MAX_CONCURRENT_WIDGETS, PRUNE_EVERY, Pipeline, PipelineError};
use super::{RECHECK_DAYS_PER_CYCLE, metrics};
use crate::snapengage::WindowMode;
use crate::state::WidgetProgress;

/// Which lane reads a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    Fresh,
    Backlog,
}

impl Lane {
    pub(super) fn label(self) -> &'static str {
        match self {
            Lane::Fresh => "fresh",
            Lane::Backlog => "backlog",
        }
    }
}

/// One widget, as both lanes share it.
pub(super) struct WidgetSlot {
    /// Held while one of the widget's windows is read.
    reading: tokio::sync::Mutex<()>,
    /// A fresh read waits for `reading`: the backlog window holding it stops at its next page.
    fresh_waiting: AtomicBool,
    progress: Mutex<WidgetProgress>,
    activity: Mutex<Activity>,
    /// Windows (by [`streak_key`](super::isolate::streak_key)) failing cycle after cycle: how
    /// often in a row, and the pages the API served pipeline-wide when they first failed.
    failing: Mutex<HashMap<String, (u32, u64)>>,
}

/// A window failing cycle after cycle.
#[derive(Clone, Copy, Debug)]
pub(super) struct Failing {
    /// Failed reads in a row.
    pub times: u32,
    /// Whether the API served other pages since it first failed: the failure is the window's,
    /// not the API's.
    pub others_served: bool,
}

/// A lane's hold on a widget, while it reads the widget's windows of one cycle.
pub(super) struct Holding<'a> {
    slot: &'a WidgetSlot,
    lane: Lane,
    guard: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Holding<'_> {
    /// Whether a fresh read waits for the widget this backlog window holds.
    pub(super) fn fresh_waiting(&self) -> bool {
        self.lane == Lane::Backlog && self.slot.fresh_waiting()
    }

    /// Ready once a fresh read waits for the widget (never for the fresh lane's own hold).
    pub(super) async fn fresh_read_waits(&self) {
        if self.lane != Lane::Backlog {
            return std::future::pending().await;
        }
        // A flag looked at often, rather than a notification that could pass between a look
        // and the wait.
        while !self.slot.fresh_waiting() {
            tokio::time::sleep(FRESH_WAIT_LOOK).await;
        }
    }

    /// Lets the waiting fresh read have the widget, and takes it back once it is done. False:
    /// shutdown came first.
    pub(super) async fn let_fresh_read(&mut self, shutdown: &CancellationToken) -> bool {
        self.guard = None;
        self.guard = self.slot.take(self.lane, shutdown).await;
        self.guard.is_some()
    }
}

/// How often a backlog window looks whether a fresh read waits for its widget.
const FRESH_WAIT_LOOK: std::time::Duration = std::time::Duration::from_millis(50);

impl WidgetSlot {
    pub(super) fn new(progress: WidgetProgress) -> Self {
        Self {
            reading: tokio::sync::Mutex::new(()),
            fresh_waiting: AtomicBool::new(false),
            progress: Mutex::new(progress),
            activity: Mutex::new(Activity::default()),
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// The window of streak `key` failed again; `served` is the count of pages the API has
    /// served so far, pipeline-wide.
    pub(super) fn window_failed(&self, key: &str, served: u64) -> Failing {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failing.entry(key.to_owned()).or_insert((0, served));
        entry.0 += 1;
        Failing {
            times: entry.0,
            others_served: served > entry.1,
        }
    }

    /// The window of streak `key` was read: its failures are forgotten.
    pub(super) fn window_read(&self, key: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    pub(super) fn progress(&self) -> WidgetProgress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the progress and returns it as changed. Only a lane holding the widget calls
    /// this, so the widget's progress is written to the state in the order it changes.
    pub(super) fn update_progress(
        &self,
        change: impl FnOnce(&mut WidgetProgress),
    ) -> WidgetProgress {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut progress);
        progress.clone()
    }

    fn activity(&self) -> Activity {
        *self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, change: impl FnOnce(&mut Activity)) {
        change(&mut self.activity.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The widget to this lane alone, for its windows of one cycle. `None`: shutdown came
    /// first.
    pub(super) async fn hold(
        &self,
        lane: Lane,
        shutdown: &CancellationToken,
    ) -> Option<Holding<'_>> {
        let guard = self.take(lane, shutdown).await?;
        Some(Holding {
            slot: self,
            lane,
            guard: Some(guard),
        })
    }

    async fn take(
        &self,
        lane: Lane,
        shutdown: &CancellationToken,
    ) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if lane == Lane::Fresh {
            self.fresh_waiting.store(true, Ordering::Relaxed);
        }
        let taken = tokio::select! {
            taken = self.reading.lock() => Some(taken),
            _ = shutdown.cancelled() => None,
        };
        if lane == Lane::Fresh {
            self.fresh_waiting.store(false, Ordering::Relaxed);
        }
        taken
    }

    /// Whether a fresh read waits for the backlog window being read.
    pub(super) fn fresh_waiting(&self) -> bool {
        self.fresh_waiting.load(Ordering::Relaxed)
    }
}

/// The configured widgets, in their order.
pub(super) struct Widgets(pub(super) Vec<(String, WidgetSlot)>);

impl Widgets {
    pub(super) fn progress(&self) -> HashMap<String, WidgetProgress> {
        self.0
            .iter()
            .map(|(w, s)| (w.clone(), s.progress()))
            .collect()
    }

    fn activity(&self) -> HashMap<String, Activity> {
        self.0
            .iter()
            .map(|(w, s)| (w.clone(), s.activity()))
            .collect()
    }

    fn slot(&self, widget: &str) -> Option<&WidgetSlot> {
        self.0.iter().find(|(w, _)| w == widget).map(|(_, s)| s)
    }
}

impl Pipeline {
    /// Reads the fresh windows every poll interval until `shutdown`.
    pub(super) async fn fresh_lane(
        &self,
        widgets: &Widgets,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let interval = self.settings.poll_interval;
        let mut budget_note = None;
        let mut since = (Instant::now(), self.client.requests_sent());
        while !shutdown.is_cancelled() {
            self.health.beat();
            let cycle_started = Instant::now();
            let now = self.clock.now();
            let progress = widgets.progress();
            let due: Vec<String> = widgets
                .0
                .iter()
                .map(|(w, _)| w)
                .filter(|w| scheduler::fresh_due(&progress[*w], now, interval))
                .cloned()
                .collect();
            let read =
                self.ration_fresh(due, &progress, &widgets.activity(), now, &mut budget_note);
            let plans: Vec<(String, Vec<Task>)> =
                read.into_iter().map(|w| (w, vec![Task::Fresh])).collect();
            let (stats, cycles) = self
                .read_widgets(widgets, Lane::Fresh, &plans, now, shutdown)
                .await?;
            for cycle in cycles {
                if let (Some(fresh), Some(slot)) = (cycle.fresh, widgets.slot(&cycle.widget)) {
                    slot.record(|a| a.fresh_read(fresh.pages, fresh.created, fresh.staleness));
                }
            }
            // Requests of both lanes since the cycle before, over what the budget allowed.
            let (at, requests) = (Instant::now(), self.client.requests_sent());
            let allowed = self.budget_per_interval()
                * ((at - since.0).as_secs_f64()
                    / self.clock.real_duration(interval).as_secs_f64().max(1e-9));
            if allowed > 0.0 {
                metrics::budget_use(requests.saturating_sub(since.1) as f64 / allowed);
            }
            since = (at, requests);
            self.report_cycle(
                Lane::Fresh,
                &stats,
                cycle_started.elapsed(),
                &widgets.progress(),
            )
            .await;
            self.wait_rest_of_interval(cycle_started, shutdown).await;
        }
        Ok(())
    }

    /// Reads catch-up days and due re-checks, with what the fresh windows leave of the
    /// budget, until `shutdown`; prunes the state now and then.
    pub(super) async fn backlog_lane(
        &self,
        widgets: &Widgets,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let schedule = self.schedule();
        let mut catch_up = CatchUpProgress::new(&widgets.progress(), self.fresh_start());
        // The first prune comes one period after start, not at once: a start is busy enough
        // (a catch-up's first days, a migrated state's first prune would both land together).
        let mut last_prune = Instant::now();
        while !shutdown.is_cancelled() {
            self.health.beat();
            let cycle_started = Instant::now();
            let now = self.clock.now();
            let recheck_before = scheduler::recheck_before(now, &schedule);
            // A rolling window can read a day's recent hours alone; a `dates` window reads the
            // whole day whatever its due cases.
            let split_at = (schedule.mode == WindowMode::Datetimes)
                .then(|| tracker::frequent_checks_since(now, &self.settings.tracker));
            let activity = widgets.activity();
            let mut plans = Vec::new();
            for (widget, slot) in &widgets.0 {
                let (w, progress) = (widget.clone(), slot.progress());
                let unknown = activity.get(widget).copied().unwrap_or_default().day_pages;
                // The widget's due days and what each backlog window costs, in one state call.
                let tasks = self
                    .state(move |s| {
                        let due =
                            s.due_days(&w, now, recheck_before, split_at, RECHECK_DAYS_PER_CYCLE)?;
                        let mut tasks = Vec::new();
                        for task in scheduler::plan_widget(&progress, now, &schedule, &due) {
                            let Some(day) = task.backlog_day() else {
                                continue;
                            };
                            let window = scheduler::window_for(task, &progress, now, &schedule);
                            let known = s.cases_on(&w, day, scheduler::created_within(&window))?;
                            tasks.push((task, scheduler::backlog_pages(known, unknown)));
                        }
                        Ok(tasks)
                    })
                    .await?;
                plans.push((widget.clone(), tasks));
            }
            // What the fresh windows are expected to spend each interval stays theirs.
            let fresh: f64 = activity.values().map(|a| a.fresh_pages).sum();
            let budget = (self.budget_per_interval() - fresh).max(0.0);
            let plans = self.ration_backlog(plans, now, budget);
            let (mut stats, cycles) = self
                .read_widgets(widgets, Lane::Backlog, &plans, now, shutdown)
                .await?;
            for cycle in cycles {
                if let Some(slot) = widgets.slot(&cycle.widget) {
                    for pages in cycle.day_pages {
                        slot.record(|a| a.day_read(pages));
                        catch_up.day_done();
                    }
                }
            }
            if !shutdown.is_cancelled()
                && self.clock.virtual_duration(last_prune.elapsed()) >= PRUNE_EVERY
            {
                stats.pruned = self.prune(&widgets.progress(), shutdown).await?;
                last_prune = Instant::now();
            }
            let progress = widgets.progress();
            self.report_cycle(Lane::Backlog, &stats, cycle_started.elapsed(), &progress)
                .await;
            let fresh_start = self.fresh_start();
            catch_up.show(&progress, fresh_start);
            let still_catching_up = progress
                .values()
                .any(|p| scheduler::next_catch_up(p, fresh_start).is_some());
            // A catch-up goes on at once, as fast as the budget allows.
            if !(still_catching_up && stats.window_errors == 0) {
                self.wait_rest_of_interval(cycle_started, shutdown).await;
            }
        }
        catch_up.finish();
        Ok(())
    }

    /// Reads each widget's windows of `plans`, up to [`MAX_CONCURRENT_WIDGETS`] widgets at
    /// once: what they did, together and per widget.
    async fn read_widgets(
        &self,
        widgets: &Widgets,
        lane: Lane,
        plans: &[(String, Vec<Task>)],
        now: chrono::DateTime<chrono::Utc>,
        shutdown: &CancellationToken,
    ) -> Result<(CycleStats, Vec<WidgetCycle>), PipelineError> {
        let mut reads = Vec::new();
        for (widget, tasks) in plans {
            if let Some(slot) = widgets.slot(widget) {
                reads.push(self.read_widget(widget, slot, lane, tasks, now, shutdown));
            }
        }
        let cycles: Vec<WidgetCycle> = futures::stream::iter(reads)
            .buffer_unordered(MAX_CONCURRENT_WIDGETS)
            .try_collect()
            .await?;
        let mut stats = CycleStats::default();
        for cycle in &cycles {
            stats.add(&cycle.stats);
        }
        Ok((stats, cycles))
    }

    /// Waits until the poll interval has passed since `cycle_started`, measured on the
    /// monotonic clock: a wall clock stepped back must not stretch the wait.
    async fn wait_rest_of_interval(&self, cycle_started: Instant, shutdown: &CancellationToken) {
        let elapsed = self.clock.virtual_duration(cycle_started.elapsed());
        let wait = self.settings.poll_interval.saturating_sub(elapsed);
        self.health.beat_for(self.clock.real_duration(wait));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.clock.sleep(wait) => {}
        }
    }
}
