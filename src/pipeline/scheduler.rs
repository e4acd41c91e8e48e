//! The scheduler's decisions, pure: which windows each widget reads in a cycle, and in which
//! order the widgets share the request budget.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};

use crate::snapengage::Window;
use crate::snapengage::WindowMode;
use crate::state::WidgetProgress;

/// One window to read for one widget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A day before the fresh window, read once on the way from `since` to today.
    CatchUp(NaiveDate),
    /// Today and the lookback days, read every poll interval.
    Fresh,
    /// An older day holding cases whose survey re-check is due.
    Recheck(NaiveDate),
}

impl Task {
    pub fn label(&self) -> &'static str {
        match self {
            Task::CatchUp(_) => "catch_up",
            Task::Fresh => "fresh",
            Task::Recheck(_) => "recheck",
        }
    }
}

/// Whole days covered by a lookback duration (rounded up; 0 means today only).
pub fn lookback_days(lookback: Duration) -> u64 {
    lookback.as_secs().div_ceil(86_400)
}

/// The first day of the fresh window.
pub fn fresh_start(today: NaiveDate, lookback: Duration) -> NaiveDate {
    today
        .checked_sub_days(Days::new(lookback_days(lookback)))
        .unwrap_or(today)
}

/// The next day the catch-up must read, if the catch-up is not done.
pub fn next_catch_up(progress: &WidgetProgress, fresh_start: NaiveDate) -> Option<NaiveDate> {
    let next = match progress.caught_up_through {
        Some(done) => done.succ_opt()?,
        None => progress.since,
    };
    (next < fresh_start).then_some(next)
}

/// Days the catch-up still has to read.
pub fn catch_up_remaining(progress: &WidgetProgress, fresh_start: NaiveDate) -> u64 {
    next_catch_up(progress, fresh_start)
        .map(|next| u64::try_from((fresh_start - next).num_days()).unwrap_or(0))
        .unwrap_or(0)
}

/// The windows one widget reads this cycle: one catch-up day, the fresh window when the poll
/// interval has passed since it was last read completely, and due re-check days (older than
/// the fresh window and already caught up).
pub fn plan_widget(
    progress: &WidgetProgress,
    today: NaiveDate,
    now: DateTime<Utc>,
    poll_interval: Duration,
    lookback: Duration,
    due_days: &[NaiveDate],
) -> Vec<Task> {
    let fresh_start = fresh_start(today, lookback);
    let catch_up = next_catch_up(progress, fresh_start);
    let mut tasks = Vec::new();
    if let Some(day) = catch_up {
        tasks.push(Task::CatchUp(day));
    }
    // A last poll "in the future" means the wall clock was stepped back: poll now rather
    // than wait for the clock to catch up.
    let fresh_due = progress.last_fresh_poll.is_none_or(|last| {
        now < last
            || chrono::Duration::from_std(poll_interval)
                .is_ok_and(|interval| now - last >= interval)
    });
    if fresh_due {
        tasks.push(Task::Fresh);
    }
    tasks.extend(
        due_days
            .iter()
            .filter(|day| **day < fresh_start && catch_up.is_none_or(|next| **day < next))
            .map(|day| Task::Recheck(*day)),
    );
    tasks
}

/// Interleaves the widgets' tasks round-robin, so that when the budget is short every
/// widget's freshness degrades alike.
pub fn interleave(per_widget: Vec<(String, Vec<Task>)>) -> Vec<(String, Task)> {
    let mut queues: Vec<(String, VecDeque<Task>)> = per_widget
        .into_iter()
        .map(|(w, tasks)| (w, tasks.into()))
        .collect();
    let mut order = Vec::new();
    loop {
        let mut any = false;
        for (widget, queue) in queues.iter_mut() {
            if let Some(task) = queue.pop_front() {
                order.push((widget.clone(), task));
                any = true;
            }
        }
        if !any {
            return order;
        }
    }
}

/// The API window of a task.
pub fn window_for(task: Task, today: NaiveDate, lookback: Duration, mode: WindowMode) -> Window {
    let (start, end) = match task {
        Task::CatchUp(day) | Task::Recheck(day) => (day, day),
        Task::Fresh => (fresh_start(today, lookback), today),
    };
    match mode {
        WindowMode::Dates => Window::Dates { start, end },
        WindowMode::Datetimes => {
            let midnight = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
            Window::Times {
                start: midnight(start),
                end: midnight(end.succ_opt().unwrap_or(end)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);
    const POLL: Duration = Duration::from_secs(30);

    fn now() -> DateTime<Utc> {
        day("2026-03-10").and_hms_opt(12, 0, 0).unwrap().and_utc()
    }

    #[test]
    fn first_start_today_reads_only_the_fresh_window() {
        let progress = WidgetProgress {
            since: day("2026-03-10"),
            caught_up_through: None,
            last_fresh_poll: None,
        };
        let tasks = plan_widget(&progress, day("2026-03-10"), now(), POLL, DAY, &[]);
        assert_eq!(tasks, [Task::Fresh]);
        assert_eq!(
            catch_up_remaining(&progress, fresh_start(day("2026-03-10"), DAY)),
            0
        );
    }

    #[test]
    fn catch_up_walks_day_by_day_to_the_fresh_window() {
        let mut progress = WidgetProgress {
            since: day("2026-03-01"),
            caught_up_through: None,
            last_fresh_poll: Some(now()),
        };
        let fresh = fresh_start(day("2026-03-10"), DAY);
        assert_eq!(fresh, day("2026-03-09"));
        assert_eq!(catch_up_remaining(&progress, fresh), 8);
        let mut read = Vec::new();
        while let Some(next) = next_catch_up(&progress, fresh) {
            read.push(next);
            progress.caught_up_through = Some(next);
        }
        assert_eq!(read.len(), 8);
        assert_eq!(read[0], day("2026-03-01"));
        assert_eq!(*read.last().unwrap(), day("2026-03-08"));
    }

    #[test]
    fn fresh_window_waits_for_the_poll_interval() {
        let progress = WidgetProgress {
            since: day("2026-03-10"),
            caught_up_through: None,
            last_fresh_poll: Some(now() - chrono::Duration::seconds(10)),
        };
        assert!(plan_widget(&progress, day("2026-03-10"), now(), POLL, DAY, &[]).is_empty());
        let later = now() + chrono::Duration::seconds(20);
        assert_eq!(
            plan_widget(&progress, day("2026-03-10"), later, POLL, DAY, &[]),
            [Task::Fresh]
        );
    }

    #[test]
    fn a_clock_stepped_back_makes_the_fresh_window_due() {
        let progress = WidgetProgress {
            since: day("2026-03-10"),
            caught_up_through: None,
            last_fresh_poll: Some(now()),
        };
        let stepped_back = now() - chrono::Duration::hours(1);
        assert_eq!(
            plan_widget(&progress, day("2026-03-10"), stepped_back, POLL, DAY, &[]),
            [Task::Fresh]
        );
    }

    #[test]
    fn rechecks_only_for_old_caught_up_days() {
        let progress = WidgetProgress {
            since: day("2026-03-01"),
            caught_up_through: Some(day("2026-03-04")),
            last_fresh_poll: Some(now()),
        };
        let due = [day("2026-03-02"), day("2026-03-06"), day("2026-03-09")];
        let tasks = plan_widget(&progress, day("2026-03-10"), now(), POLL, DAY, &due);
        assert_eq!(
            tasks,
            [
                Task::CatchUp(day("2026-03-05")),
                Task::Recheck(day("2026-03-02"))
            ]
        );
    }

    #[test]
    fn widgets_take_turns() {
        let order = interleave(vec![
            (
                "a".into(),
                vec![Task::CatchUp(day("2026-03-01")), Task::Fresh],
            ),
            ("b".into(), vec![Task::Fresh]),
            ("c".into(), vec![]),
        ]);
        let names: Vec<&str> = order.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(names, ["a", "b", "a"]);
    }

    #[test]
    fn windows_by_mode() {
        let today = day("2026-03-10");
        assert_eq!(
            window_for(Task::Fresh, today, DAY, WindowMode::Dates),
            Window::Dates {
                start: day("2026-03-09"),
                end: today
            }
        );
        let Window::Times { start, end } = window_for(
            Task::Recheck(day("2026-03-01")),
            today,
            DAY,
            WindowMode::Datetimes,
        ) else {
            panic!("datetimes mode gives times");
        };
        assert_eq!(end - start, chrono::Duration::days(1));
        assert_eq!(lookback_days(Duration::from_secs(3600)), 1);
        assert_eq!(lookback_days(Duration::ZERO), 0);
    }
}
