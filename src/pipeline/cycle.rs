//! One poll cycle's reading: the widgets' windows read concurrently, within the request
//! budget a short budget rations ([`scheduler::ration`]).

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::scheduler::{self, Activity, FreshDemand, RecheckDemand, Task};
use super::window::{WindowEnd, WindowFailure};
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
    pub(super) recheck_pages: Vec<u64>,
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

    /// Keeps the fresh windows a short budget can pay for this cycle ([`scheduler::ration`])
    /// and orders the widgets to read: rationed fresh windows first, by their claim. Says so,
    /// once, when the budget stops covering every widget, and again when it covers all again.
    pub(super) fn ration(
        &self,
        plans: Vec<(String, Vec<Task>)>,
        progress: &HashMap<String, WidgetProgress>,
        activity: &HashMap<String, Activity>,
        now: DateTime<Utc>,
        note: &mut Option<usize>,
    ) -> Vec<(String, Vec<Task>)> {
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
        // Fresh windows first; re-checks share what they leave, and catch-up days (the walk
        // from `since`, each day's final read after midnight) what the re-checks leave. A burst
        // of whole days (every widget's final read of yesterday at once) then spreads over a
        // few cycles instead of holding every fresh window back.
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

        let with_fresh: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].1.contains(&Task::Fresh))
            .collect();
        let demands: Vec<FreshDemand> = with_fresh
            .iter()
            .map(|&i| {
                let (widget, a) = (&plans[i].0, of(&plans[i].0));
                FreshDemand {
                    cost: a.fresh_pages,
                    new_per_interval: a.new_per_interval,
                    staleness: staleness.get(widget).copied().unwrap_or(f64::INFINITY),
                }
            })
            .collect();
        let ration = scheduler::ration(&demands, budget, self.settings.max_staleness);
        let plans = self.ration_backlog(plans, activity, now, budget - ration.spent);
        let mut plans: Vec<Option<(String, Vec<Task>)>> = plans.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(plans.len());
        for d in ration.read {
            if let Some(plan) = plans[with_fresh[d]].take() {
                ordered.push(plan);
            }
        }
        for d in ration.deferred {
            if let Some((widget, mut tasks)) = plans[with_fresh[d]].take() {
                tasks.retain(|t| *t != Task::Fresh);
                ordered.push((widget, tasks));
            }
        }
        ordered.extend(plans.into_iter().flatten());
        ordered.retain(|(_, tasks)| !tasks.is_empty());
        ordered
    }

    /// Drops the due re-checks and catch-up days that `budget` does not cover this cycle
    /// ([`scheduler::ration_rechecks`], then [`scheduler::ration_catch_up`] with what the
    /// re-checks leave): they stay due, and are read in a later one.
    fn ration_backlog(
        &self,
        mut plans: Vec<(String, Vec<Task>)>,
        activity: &HashMap<String, Activity>,
        now: DateTime<Utc>,
        budget: f64,
    ) -> Vec<(String, Vec<Task>)> {
        let of = |i: usize| activity.get(&plans[i].0).copied().unwrap_or_default();
        let tasks: Vec<(usize, Task)> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, (_, tasks))| tasks.iter().map(move |t| (i, *t)))
            .collect();
        let rechecks: Vec<(usize, DueDay)> = tasks
            .iter()
            .filter_map(|(i, task)| match task {
                Task::Recheck(due) => Some((*i, *due)),
                _ => None,
            })
            .collect();
        let demands: Vec<RecheckDemand> = rechecks
            .iter()
            .map(|(i, due)| RecheckDemand {
                cost: of(*i).recheck_pages,
                overdue: scheduler::intervals_since(
                    due.due_since,
                    now,
                    self.settings.poll_interval,
                ),
            })
            .collect();
        let rationed = scheduler::ration_rechecks(&demands, budget, self.settings.max_staleness);
        let mut deferred: Vec<(usize, Task)> = rationed
            .deferred
            .iter()
            .map(|&d| (rechecks[d].0, Task::Recheck(rechecks[d].1)))
            .collect();
        let days: Vec<(usize, Task)> = tasks
            .into_iter()
            .filter(|(_, task)| matches!(task, Task::CatchUp(_)))
            .collect();
        let costs: Vec<f64> = days.iter().map(|(i, _)| of(*i).day_pages).collect();
        let catch_up = scheduler::ration_catch_up(&costs, (budget - rationed.spent).max(0.0));
        deferred.extend(catch_up.deferred.iter().map(|&d| days[d]));
        for (i, task) in deferred {
            plans[i].1.retain(|t| *t != task);
        }
        plans
    }

    /// Reads one widget's windows of this cycle, in order.
    pub(super) async fn read_widget(
        &self,
        widget: &str,
        tasks: &[Task],
        progress: &mut WidgetProgress,
        cycle_started: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<WidgetCycle, PipelineError> {
        let schedule = self.schedule();
        let mut out = WidgetCycle {
            widget: widget.to_owned(),
            ..WidgetCycle::default()
        };
        for &task in tasks {
            if shutdown.is_cancelled() {
                break;
            }
            self.health.beat();
            let window = scheduler::window_for(task, progress, cycle_started, &schedule);
            let started = Instant::now();
            let window_started = self.clock.now();
            let mut read = CycleStats::default();
            let end = self
                .read_window(widget, task, window, shutdown, &mut read)
                .await;
            out.stats.add(&read);
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
                                    progress,
                                    cycle_started,
                                    schedule.poll_interval,
                                ),
                            });
                        }
                        Task::CatchUp(_) => out.day_pages.push(read.pages),
                        Task::Recheck(_) => out.recheck_pages.push(read.pages),
                    }
                    self.window_done(
                        widget,
                        task,
                        cycle_started,
                        window_started,
                        progress,
                        shutdown,
                    )
                    .await?;
                }
                Ok(WindowEnd::Interrupted) => break,
                Err(WindowFailure::Client(e)) => {
                    out.stats.window_errors += 1;
                    metrics::window_error(widget, e.kind());
                    if e.is_transient() {
                        tracing::warn!(widget, window = %window, error = %e, "Logs API window gave up after retries; will try again next cycle");
                    } else {
                        tracing::error!(widget, window = %window, error = %e, "reading the Logs API failed; will try again next cycle");
                    }
                }
                Err(WindowFailure::Pipeline(e)) => return Err(e),
            }
        }
        Ok(out)
    }
}
