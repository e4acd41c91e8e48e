//! One lane's cycle: which windows a short budget pays for ([`scheduler::ration`] for the
//! fresh lane, [`scheduler::ration_rechecks`] and [`scheduler::ration_catch_up`] for the
//! backlog), and one widget's windows read in turn.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::isolate::{AfterFailure, FailedRead, streak_key};
use super::lanes::{Lane, WidgetSlot};
use super::scheduler::{self, Activity, FreshDemand, RecheckDemand, Task};
use super::unread;
use super::window::{WindowEnd, WindowFailure, WindowRead};
use super::{CycleStats, Pipeline, PipelineError};
use crate::metrics;
use crate::state::{DueDay, WidgetProgress};

/// What one widget's reads of a cycle did, for the cycle's line and the budget's estimates.
#[derive(Debug, Default)]
pub(super) struct WidgetCycle {
    pub(super) widget: String,
    pub(super) stats: CycleStats,
    pub(super) fresh: Option<FreshRead>,
    /// Pages of each catch-up day read.
    pub(super) day_pages: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FreshRead {
    pub(super) pages: u64,
    pub(super) created: u64,
    /// Poll intervals since the read before.
    pub(super) staleness: f64,
}

impl CycleStats {
    pub(super) fn add(&mut self, other: &CycleStats) {
        self.windows += other.windows;
        self.pages += other.pages;
        self.cases += other.cases;
        self.created += other.created;
        self.surveys += other.surveys;
        self.dead_letters += other.dead_letters;
        self.window_errors += other.window_errors;
        self.pruned += other.pruned;
    }
}

impl Pipeline {
    /// Requests the rate limit allows per poll interval (of real time: a virtual clock runs
    /// the interval faster, the rate limit does not).
    pub(super) fn budget_per_interval(&self) -> f64 {
        self.client.config().rate_limit_per_sec
            * self
                .clock
                .real_duration(self.settings.poll_interval)
                .as_secs_f64()
    }

    /// The widgets whose fresh windows this cycle reads, of those `due`, in order: what a
    /// short budget can pay for ([`scheduler::ration`]). Says so, once, when the budget stops
    /// covering every widget, and again when it covers all again.
    pub(super) fn ration_fresh(
        &self,
        due: Vec<String>,
        progress: &HashMap<String, WidgetProgress>,
        activity: &HashMap<String, Activity>,
        now: DateTime<Utc>,
        note: &mut Option<usize>,
    ) -> Vec<String> {
        let interval = self.settings.poll_interval;
        let budget = self.budget_per_interval();
        let of = |widget: &String| activity.get(widget).copied().unwrap_or_default();
        let staleness: HashMap<&String, f64> = progress
            .iter()
            .map(|(widget, p)| (widget, scheduler::staleness(p, now, interval)))
            .collect();
        for (widget, stale) in &staleness {
            metrics::widget_staleness(widget, if stale.is_finite() { *stale } else { -1.0 });
        }
        let covered =
            scheduler::widgets_covered(budget, progress.keys().map(|w| of(w).fresh_pages));
        let widgets = progress.len();
        if covered < widgets {
            if *note != Some(covered) {
                let per_widget =
                    progress.keys().map(|w| of(w).fresh_pages).sum::<f64>() / widgets.max(1) as f64;
                tracing::warn!(
                    budget_per_interval = format!("{budget:.0}"),
                    requests_per_fresh_read = format!("{per_widget:.1}"),
                    "the Logs API budget covers the fresh windows of {covered} of {widgets} widgets \
                     each poll interval at the observed volume; the others are read by expected \
                     new cases per request, each at least every {} poll intervals",
                    self.settings.max_staleness
                );
                *note = Some(covered);
            }
        } else if note.take().is_some() {
            tracing::info!("the Logs API budget covers every widget's fresh window again");
        }
        let demands: Vec<FreshDemand> = due
            .iter()
            .map(|widget| FreshDemand {
                cost: of(widget).fresh_pages,
                new_per_interval: of(widget).new_per_interval,
                staleness: staleness.get(widget).copied().unwrap_or(f64::INFINITY),
            })
            .collect();
        let ration = scheduler::ration(&demands, budget, self.settings.max_staleness);
        ration.read.iter().map(|&d| due[d].clone()).collect()
    }

    /// The backlog windows (each with the requests it is expected to cost) this cycle reads
    /// within `budget`: due re-checks first ([`scheduler::ration_rechecks`]), catch-up days
    /// with what they leave ([`scheduler::ration_catch_up`]). The others stay due, and are
    /// read in a later cycle. A burst of whole days (every widget's final read of yesterday,
    /// every day's re-check at the grid's midnight point) so spreads over a few cycles.
    pub(super) fn ration_backlog(
        &self,
        plans: Vec<(String, Vec<(Task, f64)>)>,
        now: DateTime<Utc>,
        budget: f64,
    ) -> Vec<(String, Vec<Task>)> {
        let tasks: Vec<(usize, Task, f64)> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, (_, tasks))| tasks.iter().map(move |(t, cost)| (i, *t, *cost)))
            .collect();
        let rechecks: Vec<(usize, DueDay, f64)> = tasks
            .iter()
            .filter_map(|&(i, task, cost)| match task {
                Task::Recheck(due) => Some((i, due, cost)),
                _ => None,
            })
            .collect();
        let interval = self.settings.poll_interval;
        let demands: Vec<RecheckDemand> = rechecks
            .iter()
            .map(|(_, due, cost)| RecheckDemand {
                cost: *cost,
                overdue: scheduler::intervals_since(due.due_since, now, interval),
                newest_age: scheduler::intervals_since(due.last_end, now, interval),
            })
            .collect();
        let rationed = scheduler::ration_rechecks(&demands, budget, self.settings.max_staleness);
        let days: Vec<&(usize, Task, f64)> = tasks
            .iter()
            .filter(|(_, task, _)| matches!(task, Task::CatchUp(_)))
            .collect();
        let costs: Vec<f64> = days.iter().map(|(_, _, cost)| *cost).collect();
        let catch_up = scheduler::ration_catch_up(&costs, (budget - rationed.spent).max(0.0));
        // Unread spans are few and narrow: each is tried when due, before the rest.
        let unread = tasks
            .iter()
            .filter(|(_, task, _)| matches!(task, Task::Unread { .. }))
            .map(|&(i, task, _)| (i, task));
        let read: Vec<(usize, Task)> = unread
            .chain(
                rationed
                    .read
                    .iter()
                    .map(|&r| (rechecks[r].0, Task::Recheck(rechecks[r].1))),
            )
            .chain(catch_up.read.iter().map(|&d| (days[d].0, days[d].1)))
            .collect();
        // In the order rationed: the widget with the youngest due cases starts first, and
        // reads them first.
        let mut out: Vec<(String, Vec<Task>)> = Vec::new();
        let mut at: HashMap<usize, usize> = HashMap::new();
        for (i, task) in read {
            let k = *at.entry(i).or_insert_with(|| {
                out.push((plans[i].0.clone(), Vec::new()));
                out.len() - 1
            });
            out[k].1.push(task);
        }
        out
    }

    /// Reads one widget's windows of this cycle, in order, holding the widget. A backlog
    /// window lets a fresh read waiting for the widget go first, and goes on after it. A task
    /// is read in pieces around the widget's unread spans ([`unread::pieces`]); a piece that
    /// fails cycle after cycle is isolated ([`Pipeline::isolate`]) and the task read again.
    pub(super) async fn read_widget(
        &self,
        widget: &str,
        slot: &WidgetSlot,
        lane: Lane,
        tasks: &[Task],
        cycle_started: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<WidgetCycle, PipelineError> {
        let schedule = self.schedule();
        let mut out = WidgetCycle {
            widget: widget.to_owned(),
            ..WidgetCycle::default()
        };
        let Some(mut hold) = slot.hold(lane, shutdown).await else {
            return Ok(out);
        };
        let mut next = 0;
        // A task read again at once after isolating one of its pieces, once a cycle.
        let mut isolated = false;
        while let Some(&task) = tasks.get(next) {
            next += 1;
            if shutdown.is_cancelled() {
                break;
            }
            self.health.beat();
            let progress = slot.progress();
            let window = scheduler::window_for(task, &progress, cycle_started, &schedule);
            let pieces = match task {
                Task::Unread { .. } => vec![window],
                _ => unread::pieces(window, &progress.unread, schedule.mode),
            };
            let (window_started, started) = (self.clock.now(), Instant::now());
            let mut read = CycleStats::default();
            let mut end = Ok(WindowEnd::Complete);
            let mut failed_piece = window;
            let mut read_again = false;
            for piece in pieces {
                let how = WindowRead {
                    window: piece,
                    keeps_cursor: task != Task::Fresh,
                    label: task.label(),
                    probe: false,
                };
                end = self
                    .read_window(widget, how, &mut hold, shutdown, &mut read)
                    .await;
                match &end {
                    Ok(WindowEnd::Complete) => {
                        slot.window_read(&streak_key(task, &piece));
                        continue;
                    }
                    Err(WindowFailure::Client(e)) => {
                        out.stats.window_errors += 1;
                        metrics::window_error(widget, e.kind());
                        if e.is_transient() {
                            tracing::warn!(widget, window = %piece, error = %e, "Logs API window gave up after retries; will try again next cycle");
                        } else {
                            tracing::error!(widget, window = %piece, error = %e, "reading the Logs API failed; will try again next cycle");
                        }
                        let failed = FailedRead {
                            task,
                            piece,
                            error: e,
                        };
                        match self
                            .window_failed(widget, slot, &mut hold, failed, shutdown, &mut read)
                            .await?
                        {
                            AfterFailure::ReadInParts => {
                                end = Ok(WindowEnd::Complete);
                                continue;
                            }
                            AfterFailure::ReadAgain => read_again = true,
                            AfterFailure::Failed => {}
                        }
                    }
                    _ => {}
                }
                failed_piece = piece;
                break;
            }
            out.stats.add(&read);
            if read_again && !isolated {
                // Read around what was isolated, now rather than next cycle.
                isolated = true;
                next -= 1;
                continue;
            }
            match end {
                Ok(WindowEnd::Complete) => {
                    out.stats.windows += 1;
                    self.health.poll_ok();
                    metrics::window_read(task.label(), started.elapsed());
                    match task {
                        Task::Fresh => {
                            out.fresh = Some(FreshRead {
                                pages: read.pages,
                                created: read.created,
                                staleness: scheduler::staleness(
                                    &progress,
                                    cycle_started,
                                    schedule.poll_interval,
                                ),
                            });
                        }
                        Task::CatchUp(_) => out.day_pages.push(read.pages),
                        Task::Recheck(_) | Task::Unread { .. } => {}
                    }
                    self.window_done(widget, task, cycle_started, window_started, slot, shutdown)
                        .await?;
                }
                Ok(WindowEnd::Interrupted) => break,
                // Counted and logged above.
                Err(WindowFailure::Client(_)) => {}
                Err(WindowFailure::FetcherStopped { pages_read }) => {
                    out.stats.window_errors += 1;
                    metrics::window_error(widget, "fetcher_stopped");
                    tracing::error!(widget, window = %failed_piece, pages_read, "the page fetcher stopped before the window's last page (a bug: it panicked); the pages read are committed, and the window is read again next cycle (a backlog window from its cursor)");
                }
                Err(WindowFailure::Pipeline(e)) => return Err(e),
            }
        }
        Ok(out)
    }
}
