//! The scheduler's decisions, pure: which windows each widget reads in a cycle, how wide they
//! are, and which widgets a short request budget reads first.
//!
//! The fresh window read every poll is today (and the day just ended, for
//! [`Schedule::late_visibility`] after midnight); in `datetimes` mode it rolls, from the last
//! complete read minus [`Schedule::overlap`]. A past day is read again only when something on
//! it is due: its cases' survey re-checks, or its final read once its late-visibility period
//! has passed (the catch-up's walk, which every day takes once).

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};

use crate::snapengage::Window;
use crate::snapengage::WindowMode;
use crate::state::{DueDay, WidgetProgress};

/// What the scheduler needs of the settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub poll_interval: Duration,
    /// Upper bound: no fresh window reaches further back than this many days before today.
    pub lookback: Duration,
    /// How long after its day ends a case may still become visible (chats across midnight,
    /// indexing delay): the day stays in the fresh window this long.
    pub late_visibility: Duration,
    /// `datetimes` mode: how far before the last complete read the rolling window starts.
    pub overlap: Duration,
    /// Poll intervals a widget's fresh window may go unread when the budget is short.
    pub max_staleness: u32,
    pub mode: WindowMode,
}

/// One window to read for one widget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A past day read once: on the way from `since`, and each day's final read once its
    /// late-visibility period has passed.
    CatchUp(NaiveDate),
    /// The fresh window, read every poll interval.
    Fresh,
    /// An older part of a day holding cases whose survey re-check is due.
    Recheck(DueDay),
    /// A span the API would not serve, read again on the re-check grid.
    Unread {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

impl Task {
    /// The day a backlog window reads; `None` for the fresh window.
    pub fn backlog_day(&self) -> Option<NaiveDate> {
        match self {
            Task::CatchUp(day) => Some(*day),
            Task::Recheck(due) => Some(due.day),
            Task::Unread { start, .. } => Some(start.date_naive()),
            Task::Fresh => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Task::CatchUp(_) => "catch_up",
            Task::Fresh => "fresh",
            Task::Recheck(_) => "recheck",
            Task::Unread { .. } => "unread",
        }
    }
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

fn after(t: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    t.checked_add_signed(chrono::Duration::from_std(d).ok()?)
}

fn before(t: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    t.checked_sub_signed(chrono::Duration::from_std(d).ok()?)
}

/// Whole days covered by a lookback duration (rounded up; 0 means today only).
pub fn lookback_days(lookback: Duration) -> u64 {
    lookback.as_secs().div_ceil(86_400)
}

/// The oldest day the lookback reaches: where a first start with no `since` begins, as the
/// first release's fresh window (today and the lookback days) did.
pub fn lookback_start(today: NaiveDate, lookback: Duration) -> NaiveDate {
    today
        .checked_sub_days(Days::new(lookback_days(lookback)))
        .unwrap_or(today)
}

/// The first day of the fresh window: the oldest day, within the lookback, whose cases may
/// still become visible (its end plus the late-visibility period is still ahead).
pub fn fresh_start(now: DateTime<Utc>, schedule: &Schedule) -> NaiveDate {
    let today = now.date_naive();
    let mut day = lookback_start(today, schedule.lookback);
    while day < today {
        let closes = day
            .succ_opt()
            .and_then(|next| after(midnight(next), schedule.late_visibility));
        if closes.is_some_and(|closes| closes <= now) {
            day = day.succ_opt().unwrap_or(today);
        } else {
            break;
        }
    }
    day
}

/// Re-checks read days before this one: in `dates` mode the fresh window's days are read in
/// full every poll anyway; a rolling window leaves today's older cases to re-checks.
pub fn recheck_before(now: DateTime<Utc>, schedule: &Schedule) -> NaiveDate {
    match schedule.mode {
        WindowMode::Dates => fresh_start(now, schedule),
        WindowMode::Datetimes => {
            let today = now.date_naive();
            today.succ_opt().unwrap_or(today)
        }
    }
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

/// Whether the fresh window is due: the poll interval has passed since it was last read
/// completely. A last poll "in the future" means the wall clock was stepped back: poll now
/// rather than wait for the clock to catch up.
pub fn fresh_due(progress: &WidgetProgress, now: DateTime<Utc>, poll_interval: Duration) -> bool {
    progress.last_fresh_poll.is_none_or(|last| {
        now < last
            || chrono::Duration::from_std(poll_interval)
                .is_ok_and(|interval| now - last >= interval)
    })
}

/// Poll intervals since the fresh window was last read completely (infinite before the first).
pub fn staleness(progress: &WidgetProgress, now: DateTime<Utc>, poll_interval: Duration) -> f64 {
    progress.last_fresh_poll.map_or(f64::INFINITY, |last| {
        intervals_since(last, now, poll_interval)
    })
}

/// Poll intervals from `then` to `now` (0 when `then` is ahead: a clock stepped back).
pub fn intervals_since(then: DateTime<Utc>, now: DateTime<Utc>, poll_interval: Duration) -> f64 {
    let age = (now - then).to_std().unwrap_or_default();
    age.as_secs_f64() / poll_interval.as_secs_f64().max(0.001)
}

/// The windows one widget reads this cycle: one catch-up day, the fresh window when due, due
/// re-check days (already caught up, before [`recheck_before`]), and unread spans due a retry.
pub fn plan_widget(
    progress: &WidgetProgress,
    now: DateTime<Utc>,
    schedule: &Schedule,
    due_days: &[DueDay],
) -> Vec<Task> {
    let catch_up = next_catch_up(progress, fresh_start(now, schedule));
    let mut tasks = Vec::new();
    if let Some(day) = catch_up {
        tasks.push(Task::CatchUp(day));
    }
    if fresh_due(progress, now, schedule.poll_interval) {
        tasks.push(Task::Fresh);
    }
    let limit = recheck_before(now, schedule);
    tasks.extend(
        due_days
            .iter()
            .filter(|due| due.day < limit && catch_up.is_none_or(|next| due.day < next))
            .map(|due| Task::Recheck(*due)),
    );
    tasks.extend(
        progress
            .unread
            .iter()
            .filter(|span| span.next_retry.is_some_and(|at| at <= now))
            .map(|span| Task::Unread {
                start: span.start,
                end: span.end,
            }),
    );
    tasks
}

/// The API window of a task.
pub fn window_for(
    task: Task,
    progress: &WidgetProgress,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> Window {
    let today = now.date_naive();
    let end_of = |day: NaiveDate| midnight(day.succ_opt().unwrap_or(day));
    match (task, schedule.mode) {
        (Task::CatchUp(day), WindowMode::Dates) => Window::Dates {
            start: day,
            end: day,
        },
        (Task::CatchUp(day), WindowMode::Datetimes) => Window::Times {
            start: midnight(day),
            end: end_of(day),
        },
        (Task::Fresh, WindowMode::Dates) => Window::Dates {
            start: fresh_start(now, schedule),
            end: today,
        },
        (Task::Fresh, WindowMode::Datetimes) => {
            // Everything before the last complete read was read then; the overlap catches
            // cases created before it that became visible since (chats still open then).
            let floor = midnight(fresh_start(now, schedule));
            let start = progress
                .last_fresh_poll
                .filter(|last| *last <= now)
                .and_then(|last| before(last, schedule.overlap))
                .map_or(floor, |start| start.max(floor));
            Window::Times {
                start,
                end: end_of(today),
            }
        }
        (Task::Unread { start, end }, WindowMode::Datetimes) => Window::Times { start, end },
        // From the span's start: the days before it were read up to it.
        (Task::Unread { start, end }, WindowMode::Dates) => Window::ShiftedDays {
            first: start,
            days: super::unread::days_over(start, end),
        },
        (Task::Recheck(due), WindowMode::Dates) => Window::Dates {
            start: due.day,
            end: due.day,
        },
        (Task::Recheck(due), WindowMode::Datetimes) => {
            // The API selects by creation time: from the earliest creation among the due
            // cases, however long their chats lasted (a start taken back from chat ends missed
            // the longer chats), to the last chat end (a case is never created after its chat
            // ended).
            let (day_start, day_end) = (midnight(due.day), end_of(due.day));
            let start = due.first_created.max(day_start);
            let end = (due.last_end + chrono::Duration::milliseconds(1)).min(day_end);
            if start < end {
                Window::Times { start, end }
            } else {
                Window::Times {
                    start: day_start,
                    end: day_end,
                }
            }
        }
    }
}

/// What recent reads say of one widget: requests a fresh read costs and new cases it finds,
/// as moving averages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activity {
    /// Requests (pages) per fresh read.
    pub fresh_pages: f64,
    /// New cases per poll interval.
    pub new_per_interval: f64,
    /// Requests per whole-day read (catch-up), for days the state knows nothing of.
    pub day_pages: f64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            fresh_pages: 1.0,
            new_per_interval: 0.0,
            day_pages: 1.0,
        }
    }
}

/// Weight of the newest observation in the moving averages.
const ACTIVITY_WEIGHT: f64 = 0.3;

fn blend(old: f64, new: f64) -> f64 {
    old + ACTIVITY_WEIGHT * (new - old)
}

impl Activity {
    /// A fresh read of `pages` found `created` new cases, `staleness` intervals after the last.
    pub fn fresh_read(&mut self, pages: u64, created: u64, staleness: f64) {
        self.fresh_pages = blend(self.fresh_pages, pages.max(1) as f64);
        if staleness.is_finite() && staleness > 0.0 {
            self.new_per_interval = blend(self.new_per_interval, created as f64 / staleness);
        }
    }

    pub fn day_read(&mut self, pages: u64) {
        self.day_pages = blend(self.day_pages, pages.max(1) as f64);
    }
}

/// Cases a Logs API page holds.
const CASES_PER_PAGE: f64 = 100.0;

/// The creation times a backlog window's cases have: a rolling window's bounds, or the whole
/// day for a `dates` window.
pub fn created_within(window: &Window) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    match window {
        Window::Dates { .. } => None,
        Window::Times { start, end } => Some((*start, *end)),
        Window::ShiftedDays { .. } => Some(window.range()),
    }
}

/// Requests a backlog window (a catch-up day, a re-check) is expected to cost: the pages of
/// the `known` cases the state has in it; `unknown` (recent whole-day reads) for a window the
/// state knows nothing of. At least one. A rolling average of past re-checks would price a
/// whole-day re-check (every case of a day falls due at the grid's midnight point) like the
/// 10-minute ones before it.
pub fn backlog_pages(known: u64, unknown: f64) -> f64 {
    if known == 0 {
        return unknown.max(1.0);
    }
    (known as f64 / CASES_PER_PAGE).ceil()
}

/// One widget's claim on this cycle's budget for its fresh window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FreshDemand {
    /// Requests the read is expected to cost.
    pub cost: f64,
    /// New cases expected per poll interval.
    pub new_per_interval: f64,
    /// Poll intervals since the last complete read.
    pub staleness: f64,
}

impl FreshDemand {
    /// Expected new cases per request: what the budget buys by reading this widget now.
    fn yield_per_request(&self) -> f64 {
        // A quiet widget still ages: it is worth a little more each interval it waits.
        (self.new_per_interval + 0.01) * self.staleness.min(1e6) / self.cost.max(1.0)
    }
}

/// Which fresh windows a cycle reads, in order, and what the budget covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Ration {
    /// Indexes into the demands, in reading order.
    pub read: Vec<usize>,
    /// Demands left for a later cycle.
    pub deferred: Vec<usize>,
    /// Requests the read demands are expected to cost.
    pub spent: f64,
}

/// How many widgets' fresh windows `budget` requests cover each interval at these costs.
pub fn widgets_covered(budget: f64, costs: impl Iterator<Item = f64>) -> usize {
    let (mut n, mut total) = (0usize, 0.0);
    for cost in costs {
        n += 1;
        total += cost;
    }
    let mean = total / n.max(1) as f64;
    ((budget / mean.max(1e-9)).floor() as usize).min(n)
}

/// Spends `budget` requests on fresh windows: first those that would otherwise pass
/// `max_staleness` intervals unread (always read, whatever the budget), then by expected new
/// cases per request while the budget lasts.
pub fn ration(demands: &[FreshDemand], budget: f64, max_staleness: u32) -> Ration {
    let cap = f64::from(max_staleness.max(1));
    let (mut forced, mut optional): (Vec<usize>, Vec<usize>) =
        (0..demands.len()).partition(|&i| demands[i].staleness + 1.0 > cap);
    forced.sort_by(|&a, &b| demands[b].staleness.total_cmp(&demands[a].staleness));
    optional.sort_by(|&a, &b| {
        let (a, b) = (&demands[a], &demands[b]);
        b.yield_per_request()
            .total_cmp(&a.yield_per_request())
            .then(b.staleness.total_cmp(&a.staleness))
    });
    spend(|i| demands[i].cost, forced, optional, budget)
}

/// One due re-check's claim on what the fresh windows leave of a cycle's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecheckDemand {
    /// Requests the read is expected to cost.
    pub cost: f64,
    /// Poll intervals since the first of its cases fell due.
    pub overdue: f64,
    /// Poll intervals since the newest of its due cases' chats ended.
    pub newest_age: f64,
}

/// Spends what the fresh windows left on due re-checks, the youngest cases first: surveys
/// come mostly in the first hours after a chat, and at the grids' shared points (every 2 h;
/// at 12:00 the days 2-7 back too) the re-checks of every widget's older days fall due with
/// them. A re-check that would otherwise wait past `max_staleness` intervals is read whatever
/// the budget, so re-checks falling due together spread over a few cycles instead of crowding
/// out the fresh windows, and none waits long.
pub fn ration_rechecks(demands: &[RecheckDemand], budget: f64, max_staleness: u32) -> Ration {
    let cap = f64::from(max_staleness.max(1));
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&demands[a], &demands[b]);
        a.newest_age
            .total_cmp(&b.newest_age)
            .then(b.overdue.total_cmp(&a.overdue))
    });
    let (forced, optional) = order
        .into_iter()
        .partition(|&i| demands[i].overdue + 1.0 > cap);
    spend(|i| demands[i].cost, forced, optional, budget)
}

/// Spends what fresh windows and re-checks left on catch-up days (each costing `costs`), in
/// order; the first is read whatever the budget, so the catch-up always moves on.
pub fn ration_catch_up(costs: &[f64], budget: f64) -> Ration {
    let forced: Vec<usize> = (0..costs.len().min(1)).collect();
    spend(|i| costs[i], forced, (1..costs.len()).collect(), budget)
}

/// Reads every forced demand, then the optional ones in order while the budget lasts.
fn spend(
    cost: impl Fn(usize) -> f64,
    forced: Vec<usize>,
    optional: Vec<usize>,
    budget: f64,
) -> Ration {
    let mut spent: f64 = forced.iter().map(|&i| cost(i)).sum();
    let mut read = forced;
    let mut deferred = Vec::new();
    for i in optional {
        if spent + cost(i) <= budget {
            spent += cost(i);
            read.push(i);
        } else {
            deferred.push(i);
        }
    }
    Ration {
        read,
        deferred,
        spent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn at(d: &str, h: u32, m: u32) -> DateTime<Utc> {
        day(d).and_hms_opt(h, m, 0).unwrap().and_utc()
    }

    const POLL: Duration = Duration::from_secs(30);

    fn schedule(mode: WindowMode) -> Schedule {
        Schedule {
            poll_interval: POLL,
            lookback: Duration::from_secs(86_400),
            late_visibility: Duration::from_secs(30 * 60),
            overlap: Duration::from_secs(30 * 60),
            max_staleness: 5,
            mode,
        }
    }

    fn now() -> DateTime<Utc> {
        at("2026-03-10", 12, 0)
    }

    fn progress(since: &str, through: Option<&str>, last: Option<DateTime<Utc>>) -> WidgetProgress {
        WidgetProgress {
            since: day(since),
            caught_up_through: through.map(day),
            last_fresh_poll: last,
            unread: Vec::new(),
        }
    }

    #[test]
    fn first_start_today_reads_only_the_fresh_window() {
        let s = schedule(WindowMode::Dates);
        let p = progress("2026-03-10", None, None);
        assert_eq!(plan_widget(&p, now(), &s, &[]), [Task::Fresh]);
        assert_eq!(catch_up_remaining(&p, fresh_start(now(), &s)), 0);
        assert_eq!(
            window_for(Task::Fresh, &p, now(), &s),
            Window::Dates {
                start: day("2026-03-10"),
                end: day("2026-03-10")
            },
            "yesterday is not re-read at noon"
        );
    }

    #[test]
    fn catch_up_walks_day_by_day_to_today() {
        let s = schedule(WindowMode::Dates);
        let mut p = progress("2026-03-01", None, Some(now()));
        let fresh = fresh_start(now(), &s);
        assert_eq!(fresh, day("2026-03-10"));
        assert_eq!(catch_up_remaining(&p, fresh), 9);
        let mut read = Vec::new();
        while let Some(next) = next_catch_up(&p, fresh) {
            read.push(next);
            p.caught_up_through = Some(next);
        }
        assert_eq!(read.first(), Some(&day("2026-03-01")));
        assert_eq!(read.last(), Some(&day("2026-03-09")));
    }

    #[test]
    fn the_day_just_ended_stays_fresh_for_the_late_visibility_then_is_read_once_more() {
        let s = schedule(WindowMode::Dates);
        let p = progress(
            "2026-03-01",
            Some("2026-03-08"),
            Some(at("2026-03-10", 0, 10)),
        );
        let early = at("2026-03-10", 0, 20);
        assert_eq!(fresh_start(early, &s), day("2026-03-09"));
        assert_eq!(plan_widget(&p, early, &s, &[]), [Task::Fresh]);
        assert_eq!(
            window_for(Task::Fresh, &p, early, &s),
            Window::Dates {
                start: day("2026-03-09"),
                end: day("2026-03-10")
            }
        );
        let closed = at("2026-03-10", 0, 30);
        assert_eq!(fresh_start(closed, &s), day("2026-03-10"));
        assert_eq!(
            plan_widget(&p, closed, &s, &[]),
            [Task::CatchUp(day("2026-03-09")), Task::Fresh],
            "the day's final read"
        );
    }

    #[test]
    fn a_day_long_late_visibility_is_the_old_behaviour_and_lookback_bounds_it() {
        let mut s = schedule(WindowMode::Dates);
        s.late_visibility = Duration::from_secs(86_400);
        assert_eq!(fresh_start(now(), &s), day("2026-03-09"));
        s.late_visibility = Duration::from_secs(10 * 86_400);
        assert_eq!(
            fresh_start(now(), &s),
            day("2026-03-09"),
            "never past the lookback"
        );
        s.lookback = Duration::ZERO;
        assert_eq!(fresh_start(now(), &s), day("2026-03-10"));
    }

    #[test]
    fn fresh_window_waits_for_the_poll_interval() {
        let s = schedule(WindowMode::Dates);
        let p = progress(
            "2026-03-10",
            None,
            Some(now() - chrono::Duration::seconds(10)),
        );
        assert!(plan_widget(&p, now(), &s, &[]).is_empty());
        let later = now() + chrono::Duration::seconds(20);
        assert_eq!(plan_widget(&p, later, &s, &[]), [Task::Fresh]);
    }

    #[test]
    fn a_clock_stepped_back_makes_the_fresh_window_due() {
        let s = schedule(WindowMode::Dates);
        let p = progress("2026-03-10", None, Some(now()));
        let stepped_back = now() - chrono::Duration::hours(1);
        assert_eq!(plan_widget(&p, stepped_back, &s, &[]), [Task::Fresh]);
        assert_eq!(staleness(&p, stepped_back, POLL), 0.0);
    }

    fn due(d: &str) -> DueDay {
        DueDay {
            day: day(d),
            first_created: at(d, 9, 50),
            first_end: at(d, 10, 0),
            last_end: at(d, 11, 0),
            due_since: at(d, 11, 10),
        }
    }

    #[test]
    fn rechecks_only_for_caught_up_days_before_the_fresh_window() {
        let s = schedule(WindowMode::Dates);
        let p = progress("2026-03-01", Some("2026-03-04"), Some(now()));
        let days = [due("2026-03-02"), due("2026-03-06"), due("2026-03-10")];
        assert_eq!(
            plan_widget(&p, now(), &s, &days),
            [Task::CatchUp(day("2026-03-05")), Task::Recheck(days[0])]
        );
        // A rolling window leaves today's older cases to re-checks.
        let s = schedule(WindowMode::Datetimes);
        let p = progress("2026-03-01", Some("2026-03-09"), Some(now()));
        assert_eq!(
            plan_widget(&p, now(), &s, &days),
            [
                Task::Recheck(days[0]),
                Task::Recheck(days[1]),
                Task::Recheck(days[2])
            ]
        );
    }

    #[test]
    fn datetimes_windows_roll_and_rechecks_read_only_the_due_span() {
        let s = schedule(WindowMode::Datetimes);
        let p = progress("2026-03-10", None, Some(at("2026-03-10", 11, 59)));
        assert_eq!(
            window_for(Task::Fresh, &p, now(), &s),
            Window::Times {
                start: at("2026-03-10", 11, 29),
                end: at("2026-03-11", 0, 0)
            }
        );
        let first = progress("2026-03-10", None, None);
        assert_eq!(
            window_for(Task::Fresh, &first, now(), &s),
            Window::Times {
                start: at("2026-03-10", 0, 0),
                end: at("2026-03-11", 0, 0)
            },
            "a first read covers the whole fresh window"
        );
        let just_after_midnight = at("2026-03-11", 0, 5);
        let p = progress("2026-03-10", None, Some(at("2026-03-11", 0, 4)));
        let Window::Times { start, .. } = window_for(Task::Fresh, &p, just_after_midnight, &s)
        else {
            panic!("datetimes mode gives times")
        };
        assert_eq!(
            start,
            at("2026-03-10", 23, 34),
            "the rolling window crosses midnight"
        );
        assert_eq!(
            window_for(Task::Recheck(due("2026-03-02")), &p, now(), &s),
            Window::Times {
                start: at("2026-03-02", 9, 50),
                end: at("2026-03-02", 11, 0) + chrono::Duration::milliseconds(1)
            }
        );
        // A chat of three hours, ended at 10:00: its re-check starts where it was created,
        // not half an hour (the late visibility) before its end.
        let long_chat = DueDay {
            first_created: at("2026-03-02", 7, 0),
            ..due("2026-03-02")
        };
        let window = window_for(Task::Recheck(long_chat), &p, now(), &s);
        assert!(holds(&window, at("2026-03-02", 7, 0)), "{window:?}");
        assert_eq!(
            window,
            Window::Times {
                start: at("2026-03-02", 7, 0),
                end: at("2026-03-02", 11, 0) + chrono::Duration::milliseconds(1)
            }
        );
        // Cases kept before creation times were: taken as created at midnight, the whole
        // morning is read; never a time before the day.
        let unknown = DueDay {
            first_created: at("2026-03-01", 23, 0),
            ..due("2026-03-02")
        };
        let Window::Times { start, .. } = window_for(Task::Recheck(unknown), &p, now(), &s) else {
            panic!("datetimes mode gives times")
        };
        assert_eq!(start, at("2026-03-02", 0, 0));
        assert_eq!(lookback_days(Duration::from_secs(3600)), 1);
        assert_eq!(lookback_days(Duration::ZERO), 0);
    }

    /// Does a window read hold a case created at `created`?
    fn holds(window: &Window, created: DateTime<Utc>) -> bool {
        match window {
            Window::Dates { start, end } => (*start..=*end).contains(&created.date_naive()),
            Window::Times { start, end } => (*start..*end).contains(&created),
            Window::ShiftedDays { .. } => {
                let (start, end) = window.range();
                (start..end).contains(&created)
            }
        }
    }

    proptest! {
        /// Across midnight, in both modes: every case that becomes visible within the
        /// late-visibility period after its creation is in a window read once it is visible.
        /// In `datetimes` mode, those visible within the overlap are in the very next fresh
        /// read.
        #[test]
        fn no_case_is_missed_across_midnight(
            cases in prop::collection::vec((0i64..(4 * 3600), 0i64..=1800), 1..40),
            datetimes in any::<bool>(),
            poll_secs in 10u64..300,
        ) {
            let mode = if datetimes { WindowMode::Datetimes } else { WindowMode::Dates };
            let s = Schedule { poll_interval: Duration::from_secs(poll_secs), ..schedule(mode) };
            let origin = at("2026-03-09", 22, 0);
            let mut p = progress("2026-03-01", Some("2026-03-08"), Some(origin));
            let mut reads: Vec<(DateTime<Utc>, Window, Task)> = Vec::new();
            let mut now = origin;
            let end = at("2026-03-10", 3, 0);
            while now < end {
                for task in plan_widget(&p, now, &s, &[]) {
                    reads.push((now, window_for(task, &p, now, &s), task));
                    match task {
                        Task::CatchUp(day) => p.caught_up_through = Some(day),
                        Task::Fresh => p.last_fresh_poll = Some(now),
                        Task::Recheck(_) | Task::Unread { .. } => {}
                    }
                }
                now += chrono::Duration::seconds(poll_secs as i64);
            }
            for (created_after, delay) in cases {
                let created = origin + chrono::Duration::seconds(created_after);
                let visible = created + chrono::Duration::seconds(delay);
                if visible > end - chrono::Duration::hours(1) {
                    continue;
                }
                let found: Vec<_> = reads
                    .iter()
                    .filter(|(t, w, _)| *t >= visible && holds(w, created))
                    .collect();
                prop_assert!(!found.is_empty(), "case created {created} visible {visible} never read");
                let first = found[0];
                if datetimes && delay <= 1800 {
                    prop_assert!(first.0 <= visible + chrono::Duration::seconds(poll_secs as i64));
                }
                if !datetimes {
                    prop_assert!(first.0 <= visible + chrono::Duration::seconds(poll_secs as i64));
                }
            }
        }

        /// The budget: what a cycle reads costs no more than the budget unless the widgets at
        /// their staleness cap alone cost more; everything is read when everything fits.
        #[test]
        fn ration_keeps_to_the_budget(
            demands in prop::collection::vec((1.0f64..50.0, 0.0f64..20.0, 0.0f64..8.0), 1..30),
            budget in 1.0f64..200.0,
        ) {
            let demands: Vec<FreshDemand> = demands
                .into_iter()
                .map(|(cost, new_per_interval, staleness)| FreshDemand { cost, new_per_interval, staleness })
                .collect();
            let r = ration(&demands, budget, 5);
            let cost = |ids: &[usize]| ids.iter().map(|&i| demands[i].cost).sum::<f64>();
            let forced: Vec<usize> = (0..demands.len()).filter(|&i| demands[i].staleness + 1.0 > 5.0).collect();
            prop_assert!(cost(&r.read) <= budget.max(cost(&forced)) + 1e-9);
            prop_assert!(forced.iter().all(|i| r.read.contains(i)));
            prop_assert_eq!(r.read.len() + r.deferred.len(), demands.len());
            if cost(&(0..demands.len()).collect::<Vec<_>>()) <= budget {
                prop_assert!(r.deferred.is_empty());
            }
        }

        /// Cycle after cycle under a short budget, no widget's fresh window goes unread longer
        /// than the cap, and the busiest widgets are read most often.
        #[test]
        fn staleness_cap_is_honoured(
            rates in prop::collection::vec(0.0f64..30.0, 2..25),
            budget in 1.0f64..20.0,
            cap in 1u32..8,
        ) {
            let mut stale = vec![f64::INFINITY; rates.len()];
            let mut reads = vec![0u32; rates.len()];
            for _cycle in 0..60 {
                let demands: Vec<FreshDemand> = rates
                    .iter()
                    .zip(&stale)
                    .map(|(rate, staleness)| FreshDemand { cost: 1.0 + rate / 10.0, new_per_interval: *rate, staleness: *staleness })
                    .collect();
                let r = ration(&demands, budget, cap);
                for &i in &r.read {
                    prop_assert!(stale[i].is_infinite() || stale[i] <= f64::from(cap), "read at staleness {}", stale[i]);
                    stale[i] = 0.0;
                    reads[i] += 1;
                }
                for s in stale.iter_mut() {
                    *s += 1.0;
                }
            }
            prop_assert!(reads.iter().all(|r| *r >= 60 / cap.max(1) - 1));
        }
    }

    proptest! {
        /// Re-checks fall due together (every widget's on the same grid time) while the fresh
        /// windows use part of the budget: cycle after cycle, re-checks take only what the
        /// fresh windows leave, unless one would wait past the cap; none waits past it.
        #[test]
        fn rechecks_spread_within_what_fresh_windows_leave(
            costs in prop::collection::vec(1.0f64..15.0, 1..25),
            budget in 5.0f64..150.0,
            fresh_share in 0.0f64..1.0,
            cap in 1u32..8,
        ) {
            let fresh_spent = budget * fresh_share;
            let mut waiting: Vec<(usize, f64)> = (0..costs.len()).map(|i| (i, 0.0)).collect();
            let mut cycles = 0;
            while !waiting.is_empty() {
                let demands: Vec<RecheckDemand> = waiting
                    .iter()
                    .map(|&(i, overdue)| RecheckDemand { cost: costs[i], overdue, newest_age: i as f64 })
                    .collect();
                let r = ration_rechecks(&demands, budget - fresh_spent, cap);
                let forced_cost: f64 = demands.iter().filter(|d| d.overdue + 1.0 > f64::from(cap)).map(|d| d.cost).sum();
                prop_assert!(r.spent <= (budget - fresh_spent).max(forced_cost) + 1e-9);
                prop_assert_eq!(r.read.len() + r.deferred.len(), demands.len());
                for &d in &r.read {
                    prop_assert!(demands[d].overdue <= f64::from(cap), "a re-check waited past the cap");
                }
                waiting = r.deferred.iter().map(|&d| (waiting[d].0, waiting[d].1 + 1.0)).collect();
                cycles += 1;
                prop_assert!(cycles <= cap + 1);
            }
        }
    }

    #[test]
    fn rechecks_of_the_youngest_cases_go_first_and_none_waits_past_the_cap() {
        let demand = |newest_age: f64, overdue: f64| RecheckDemand {
            cost: 40.0,
            overdue,
            newest_age,
        };
        // Midnight: yesterday's whole day (its newest case 10 min old: 20 intervals) and
        // the day before (a day old) fall due together, with a 10-minute check of today.
        let demands = [demand(2_900.0, 0.0), demand(20.0, 0.0), demand(2.0, 0.0)];
        let r = ration_rechecks(&demands, 90.0, 5);
        assert_eq!(r.read, [2, 1]);
        assert_eq!(r.deferred, [0]);
        // Whatever its age, a re-check about to wait past the cap is read first, over the
        // budget if need be; the youngest of the others take what it leaves.
        let demands = [demand(2_900.0, 4.5), demand(20.0, 0.0), demand(2.0, 0.0)];
        let r = ration_rechecks(&demands, 90.0, 5);
        assert_eq!(r.read, [0, 2]);
        assert_eq!(r.deferred, [1]);
        let r = ration_rechecks(&demands, 10.0, 5);
        assert_eq!((r.read.as_slice(), r.spent), ([0].as_slice(), 40.0));
    }

    #[test]
    fn a_backlog_window_costs_the_pages_of_the_cases_it_covers() {
        let day = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        // 4,801 known cases: 49 pages, whatever recent reads cost.
        assert_eq!(backlog_pages(4_801, 3.0), 49.0);
        // A window the state knows nothing of (a first start's catch-up): recent whole days.
        assert_eq!(backlog_pages(0, 7.5), 7.5);
        // Never less than the one request any read costs.
        assert_eq!(backlog_pages(1, 0.0), 1.0);
        assert_eq!(backlog_pages(0, 0.0), 1.0);
        // A rolling window counts the cases created within it; a `dates` one the day's.
        let six_hours = Window::Times {
            start: midnight(day),
            end: midnight(day) + chrono::Duration::hours(6),
        };
        assert_eq!(
            created_within(&six_hours),
            Some((midnight(day), midnight(day) + chrono::Duration::hours(6)))
        );
        let whole = Window::Dates {
            start: day,
            end: day,
        };
        assert_eq!(created_within(&whole), None);
    }

    #[test]
    fn catch_up_days_take_what_is_left_and_always_move_on() {
        let r = ration_catch_up(&[48.0, 48.0, 48.0], 100.0);
        assert_eq!((r.read, r.deferred), (vec![0, 1], vec![2]));
        let r = ration_catch_up(&[48.0, 48.0], 0.0);
        assert_eq!(
            (r.read, r.deferred),
            (vec![0], vec![1]),
            "one day even with nothing left"
        );
        assert!(ration_catch_up(&[], 10.0).read.is_empty());
    }

    #[test]
    fn a_short_budget_reads_the_busy_widgets_first() {
        let quiet = FreshDemand {
            cost: 1.0,
            new_per_interval: 0.1,
            staleness: 1.0,
        };
        let busy = FreshDemand {
            cost: 2.0,
            new_per_interval: 10.0,
            staleness: 1.0,
        };
        let overdue = FreshDemand {
            cost: 1.0,
            new_per_interval: 0.0,
            staleness: 4.5,
        };
        let r = ration(&[quiet, busy, overdue], 3.0, 5);
        assert_eq!(r.read, [2, 1]);
        assert_eq!(r.deferred, [0]);
        assert_eq!(widgets_covered(3.0, [1.0, 2.0, 1.0].into_iter()), 2);
        assert_eq!(widgets_covered(30.0, [1.0, 2.0, 1.0].into_iter()), 3);
    }
}
