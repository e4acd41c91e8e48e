//! Pages the Logs API will not serve, pure: which failures isolate a window, how a failing
//! window is narrowed to the least span the API can address, and how windows are read around
//! the spans found.
//!
//! A window that fails on the same page cycle after cycle would otherwise hold its whole day
//! (and, in the catch-up, every day after it) unread for good. In `datetimes` mode a failing
//! range is halved down to a second, the API's resolution. In `dates` mode a window is always
//! whole days, but in any `timezone`: days that start on any UTC hour ([`Window::ShiftedDays`])
//! find the hour the bad page's cases were created in, and read up to it and from after it.

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::snapengage::{ClientError, Window, WindowMode};
use crate::state::UnreadSpan;

/// Instants `[start, end)`.
pub type Span = (DateTime<Utc>, DateTime<Utc>);

/// Cycles a window fails on in a row (after the client's own retries) before it is isolated.
pub const ISOLATE_AFTER: u32 = 3;
/// Probes one isolation reads at most: halving a day down to a second takes 17 failing ones
/// and as many read (together about the window's pages once, and a request per failure), so
/// this finds three bad pages in a day. What is left unprobed counts as unread, and is read
/// again on the re-check grid like the rest.
pub const MAX_PROBES: usize = 108;

fn a_day() -> Duration {
    Duration::days(1)
}

fn an_hour() -> Duration {
    Duration::hours(1)
}

/// A failure that may be the page's own (its body, or the server's work on it), not the API's
/// or the connection's: worth isolating once other reads show the API serves.
pub fn isolates(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Server { .. }
            | ClientError::InvalidBody { .. }
            | ClientError::BodyTooLarge { .. }
            | ClientError::UnexpectedStatus { .. }
    )
}

/// A failure only a page's content causes: isolated without other reads to compare with.
pub fn page_content(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::InvalidBody { .. } | ClientError::BodyTooLarge { .. }
    )
}

/// The least gap the mode keeps between two unread spans: `dates` windows are whole days,
/// so a part between two spans less than a day apart cannot be read without one of them.
fn least_gap(mode: WindowMode) -> Duration {
    match mode {
        WindowMode::Dates => a_day(),
        WindowMode::Datetimes => Duration::zero(),
    }
}

/// Days (at least one) needed to cover `from..to`.
pub fn days_over(from: DateTime<Utc>, to: DateTime<Utc>) -> u32 {
    let ms = (to - from).num_milliseconds().max(1);
    u32::try_from((ms + a_day().num_milliseconds() - 1) / a_day().num_milliseconds()).unwrap_or(1)
}

/// The windows that read `window` around the `unread` spans: `window` itself when none
/// touches it. In `dates` mode a span is widened to whole hours (one found in `datetimes`
/// mode holds a second), a part before a span is read by days ending at the span's start, a
/// part after one by days starting at its end (reading again, around it, what the
/// neighbouring days hold: the tracker tells those cases apart by id).
pub fn pieces(window: Window, unread: &[UnreadSpan], mode: WindowMode) -> Vec<Window> {
    let (start, end) = window.range();
    let mut touching: Vec<Span> = unread
        .iter()
        .map(|s| match mode {
            WindowMode::Dates => (floor_to(s.start, an_hour()), ceil_to(s.end, an_hour())),
            WindowMode::Datetimes => (s.start, s.end),
        })
        .filter(|&(s, e)| s < end && e > start)
        .collect();
    if touching.is_empty() {
        return vec![window];
    }
    touching.sort();
    let mut out = Vec::new();
    let mut from = start;
    for (span_start, span_end) in touching {
        if span_start > from {
            out.extend(part(from, span_start, true, mode));
        }
        from = from.max(span_end);
    }
    if from < end {
        out.extend(part(from, end, false, mode));
    }
    out
}

/// The windows that read `[from, to)`, one part of a window between spans (a span starts at
/// `to` if `before_span`). Days never reach back before `from`, where a span may end, and
/// only a whole day ending at a span's start reaches past `to`'s side: spans less than a day
/// apart are one ([`merge`]), so nothing else is within its reach.
fn part(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    before_span: bool,
    mode: WindowMode,
) -> Vec<Window> {
    match mode {
        WindowMode::Datetimes => vec![Window::Times {
            start: from,
            end: to,
        }],
        WindowMode::Dates if !before_span => vec![Window::ShiftedDays {
            first: from,
            days: days_over(from, to),
        }],
        WindowMode::Dates => {
            let whole = u32::try_from((to - from).num_hours() / 24).unwrap_or(0);
            let mut windows = Vec::new();
            if whole > 0 {
                windows.push(Window::ShiftedDays {
                    first: from,
                    days: whole,
                });
            }
            if from + Duration::days(i64::from(whole)) < to {
                // The rest, as the day ending at the span's start.
                windows.push(Window::ShiftedDays {
                    first: to - a_day(),
                    days: 1,
                });
            }
            windows
        }
    }
}

/// Spans still tried (not yet past the survey horizon): what the gauge and its alert count.
pub fn tried(spans: &[UnreadSpan]) -> usize {
    spans.iter().filter(|s| s.next_retry.is_some()).count()
}

/// Forgets spans no longer tried once no window reads their time any more (`keep` after
/// they end: the survey horizon and its last re-check, with a margin).
pub fn forget_past(spans: &mut Vec<UnreadSpan>, now: DateTime<Utc>, keep: Duration) {
    spans.retain(|s| s.next_retry.is_some() || now - s.end < keep);
}

/// Adds `new` to `spans`, merging those that overlap or lie closer than the mode can read
/// between. Returns whether `new` adds time not already unread.
pub fn merge(spans: &mut Vec<UnreadSpan>, new: UnreadSpan, mode: WindowMode) -> bool {
    let covered = spans
        .iter()
        .any(|s| s.start <= new.start && s.end >= new.end);
    spans.push(new);
    spans.sort_by_key(|s| s.start);
    let gap = least_gap(mode);
    let mut merged: Vec<UnreadSpan> = Vec::with_capacity(spans.len());
    for span in spans.drain(..) {
        match merged.last_mut() {
            Some(last) if span.start <= last.end + gap => {
                last.end = last.end.max(span.end);
                last.attempts = last.attempts.max(span.attempts);
                last.found = last.found.min(span.found);
                if span.found >= last.found {
                    last.error = span.error;
                }
                last.next_retry = match (last.next_retry, span.next_retry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            _ => merged.push(span),
        }
    }
    *spans = merged;
    !covered
}

/// Narrowing one failing window to the spans the API will not serve: a series of probe
/// windows, each read in full (what they hold is announced) or failing. Feed each probe's
/// outcome to [`record`](Self::record) until [`next_probe`](Self::next_probe) says `None`.
#[derive(Debug)]
pub struct Isolation {
    search: Search,
    probes: usize,
    /// Whether any probe was read: without one, the API fails everywhere and the failure is
    /// nothing to isolate.
    any_read: bool,
    /// The window fits in one day's probe (`dates`): a probe ending at its end covers it.
    within_a_day: bool,
}

/// What an isolation found.
#[derive(Debug, PartialEq, Eq)]
pub enum Isolated {
    /// Spans that failed at the least width the API addresses.
    Unread(Vec<Span>),
    /// The probes read every part of the window: its cases are decided, nothing is unread (a
    /// failure of the window's layout, or a passing one).
    AllRead,
    /// No probe was read: the API fails everywhere, not this window.
    NotLocal,
}

#[derive(Debug)]
enum Search {
    /// `datetimes`: ranges still to probe (the next last), and those that failed at a second.
    Halves {
        pending: Vec<Span>,
        unread: Vec<Span>,
    },
    /// `dates`: the span's start is the latest hour up to which days ending there read
    /// (`lo` reads, `hi` fails; `hi_failed` once a probe showed it).
    StartHour {
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
        end: DateTime<Utc>,
        hi_failed: bool,
    },
    /// `dates`: days ending at the window's end were never probed: they must fail, or nothing
    /// in the window does.
    Confirm {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// Days from `bad` fail, from `good` read (or `good` is the window's end); the hour after
    /// the start is tried first: one bad page, one hour.
    EndHour {
        start: DateTime<Utc>,
        bad: DateTime<Utc>,
        good: DateTime<Utc>,
        tried_next: bool,
    },
    Done(Vec<Span>),
}

fn floor_to(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    t.duration_trunc(unit).unwrap_or(t)
}

fn ceil_to(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let floor = floor_to(t, unit);
    if floor < t { floor + unit } else { floor }
}

/// The middle of `lo..hi` on `unit`s, strictly between them when they are two units apart.
fn middle(lo: DateTime<Utc>, hi: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    let units = (hi - lo).num_milliseconds() / unit.num_milliseconds().max(1);
    lo + unit * i32::try_from((units / 2).max(1)).unwrap_or(1)
}

/// A whole day in `dates` mode ending at `end`.
fn day_ending(end: DateTime<Utc>) -> Window {
    Window::ShiftedDays {
        first: end - a_day(),
        days: 1,
    }
}

impl Isolation {
    /// Isolating `window`, which failed on the same page several cycles running.
    pub fn new(window: Window, mode: WindowMode) -> Self {
        let (start, end) = window.range();
        let (search, within_a_day) = match mode {
            WindowMode::Datetimes => {
                let (start, end) = (
                    floor_to(start, Duration::seconds(1)),
                    ceil_to(end, Duration::seconds(1)),
                );
                // The whole window is known to fail: its halves come first.
                let mut pending = Vec::new();
                Self::halve(&mut pending, &mut Vec::new(), start, end);
                let search = Search::Halves {
                    pending,
                    unread: Vec::new(),
                };
                (search, true)
            }
            WindowMode::Dates => {
                let (lo, hi) = (floor_to(start, an_hour()), ceil_to(end, an_hour()));
                (Self::start_search(lo, hi, hi, false), hi - lo <= a_day())
            }
        };
        Self {
            search,
            probes: 0,
            any_read: false,
            within_a_day,
        }
    }

    fn halve(
        pending: &mut Vec<Span>,
        unread: &mut Vec<Span>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) {
        if end - start <= Duration::seconds(1) {
            unread.push((start, end));
            return;
        }
        let mid = middle(start, end, Duration::seconds(1));
        pending.push((mid, end));
        pending.push((start, mid));
    }

    fn start_search(
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
        end: DateTime<Utc>,
        hi_failed: bool,
    ) -> Search {
        if hi - lo > an_hour() {
            Search::StartHour {
                lo,
                hi,
                end,
                hi_failed,
            }
        } else if hi_failed {
            Self::end_search(lo, lo, end, false)
        } else {
            Search::Confirm { start: lo, end: hi }
        }
    }

    fn end_search(
        start: DateTime<Utc>,
        bad: DateTime<Utc>,
        good: DateTime<Utc>,
        tried_next: bool,
    ) -> Search {
        if good - bad <= an_hour() {
            Search::Done(vec![(start, good)])
        } else {
            Search::EndHour {
                start,
                bad,
                good,
                tried_next,
            }
        }
    }

    /// The start of the days an end search reads next.
    fn end_probe(bad: DateTime<Utc>, good: DateTime<Utc>, tried_next: bool) -> DateTime<Utc> {
        if tried_next {
            middle(bad, good, an_hour())
        } else {
            bad + an_hour()
        }
    }

    /// The next window to read, or `None` when the search is over.
    pub fn next_probe(&self) -> Option<Window> {
        if self.probes >= MAX_PROBES {
            return None;
        }
        match &self.search {
            Search::Halves { pending, .. } => pending
                .last()
                .map(|&(start, end)| Window::Times { start, end }),
            // Days ending at the middle hour.
            Search::StartHour { lo, hi, .. } => Some(day_ending(middle(*lo, *hi, an_hour()))),
            Search::Confirm { end, .. } => Some(day_ending(*end)),
            Search::EndHour {
                bad,
                good,
                tried_next,
                ..
            } => Some(Window::ShiftedDays {
                first: Self::end_probe(*bad, *good, *tried_next),
                days: 1,
            }),
            Search::Done(_) => None,
        }
    }

    /// The outcome of the probe [`next_probe`](Self::next_probe) gave: read in full, or failed.
    pub fn record(&mut self, read: bool) {
        self.probes += 1;
        self.any_read |= read;
        let search = std::mem::replace(&mut self.search, Search::Done(Vec::new()));
        self.search = match search {
            Search::Halves {
                mut pending,
                mut unread,
            } => {
                if let Some((start, end)) = pending.pop()
                    && !read
                {
                    Self::halve(&mut pending, &mut unread, start, end);
                }
                if pending.is_empty() {
                    Search::Done(unread)
                } else {
                    Search::Halves { pending, unread }
                }
            }
            Search::StartHour {
                lo,
                hi,
                end,
                hi_failed,
            } => {
                let mid = middle(lo, hi, an_hour());
                if read {
                    Self::start_search(mid, hi, end, hi_failed)
                } else {
                    Self::start_search(lo, mid, end, true)
                }
            }
            Search::Confirm { start, end } => {
                if read {
                    Search::Done(Vec::new())
                } else {
                    Self::end_search(start, start, end, false)
                }
            }
            Search::EndHour {
                start,
                bad,
                good,
                tried_next,
            } => {
                let probe = Self::end_probe(bad, good, tried_next);
                if read {
                    Self::end_search(start, bad, probe, true)
                } else {
                    Self::end_search(start, probe, good, true)
                }
            }
            done => done,
        };
    }

    /// What the probes found. Ranges left unprobed at [`MAX_PROBES`] count as unread.
    pub fn finish(self) -> Isolated {
        if !self.any_read {
            return Isolated::NotLocal;
        }
        let unread = match self.search {
            Search::Done(unread) => unread,
            Search::Halves {
                mut pending,
                mut unread,
            } => {
                unread.append(&mut pending);
                unread
            }
            Search::StartHour { lo, end, .. } => vec![(lo, end)],
            Search::Confirm { start, end } => vec![(start, end)],
            Search::EndHour { start, good, .. } => vec![(start, good)],
        };
        match (unread.is_empty(), self.within_a_day) {
            (false, _) => Isolated::Unread(unread),
            (true, true) => Isolated::AllRead,
            // The probes read only the window's last day: nothing found, nothing settled.
            (true, false) => Isolated::Unread(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    /// Runs an isolation against an API that fails any window holding one of `bad`.
    fn isolate(window: Window, mode: WindowMode, bad: &[DateTime<Utc>]) -> (Isolated, usize) {
        let mut isolation = Isolation::new(window, mode);
        let mut probes = 0;
        while let Some(probe) = isolation.next_probe() {
            let (start, end) = probe.range();
            isolation.record(!bad.iter().any(|t| *t >= start && *t < end));
            probes += 1;
        }
        (isolation.finish(), probes)
    }

    fn span(start: DateTime<Utc>, end: DateTime<Utc>) -> UnreadSpan {
        UnreadSpan {
            start,
            end,
            error: "HTTP 500".into(),
            attempts: 3,
            found: start,
            next_retry: None,
        }
    }

    #[test]
    fn datetimes_narrow_a_bad_page_to_its_second() {
        let window = Window::Times {
            start: at(10, 0, 0),
            end: at(12, 0, 0),
        };
        let bad = at(11, 17, 42) + Duration::milliseconds(300);
        let (found, probes) = isolate(window, WindowMode::Datetimes, &[bad]);
        assert_eq!(
            found,
            Isolated::Unread(vec![(at(11, 17, 42), at(11, 17, 43))])
        );
        assert!(probes <= 2 * 13 + 2, "{probes} probes for two hours");
        // A whole day, from a rolling window's odd start, two bad points.
        let window = Window::Times {
            start: at(0, 0, 0) + Duration::milliseconds(1_250),
            end: at(0, 0, 0) + Duration::days(1),
        };
        let (found, _) = isolate(window, WindowMode::Datetimes, &[at(3, 0, 0), at(20, 0, 5)]);
        assert_eq!(
            found,
            Isolated::Unread(vec![
                (at(3, 0, 0), at(3, 0, 1)),
                (at(20, 0, 5), at(20, 0, 6))
            ])
        );
    }

    #[test]
    fn dates_narrow_a_bad_page_to_its_hour() {
        let day = at(0, 0, 0).date_naive();
        let window = Window::Dates {
            start: day,
            end: day,
        };
        for (bad, hour) in [
            (at(13, 25, 0), 13),
            (at(0, 10, 0), 0),
            (at(23, 59, 59), 23),
            (at(12, 0, 0), 12),
        ] {
            let (found, probes) = isolate(window, WindowMode::Dates, &[bad]);
            let start = at(0, 0, 0) + Duration::hours(hour);
            assert_eq!(
                found,
                Isolated::Unread(vec![(start, start + an_hour())]),
                "bad at {bad}"
            );
            assert!(probes <= 7, "{probes} probes for one day");
        }
    }

    #[test]
    fn an_api_failing_everywhere_isolates_nothing() {
        let day = at(0, 0, 0).date_naive();
        let everywhere: Vec<_> = (0..72)
            .map(|h| at(0, 0, 0) - Duration::days(1) + Duration::hours(h))
            .collect();
        let dates = Window::Dates {
            start: day,
            end: day,
        };
        assert_eq!(
            isolate(dates, WindowMode::Dates, &everywhere).0,
            Isolated::NotLocal
        );
        let times = Window::Times {
            start: at(10, 0, 0),
            end: at(10, 0, 4),
        };
        let seconds: Vec<_> = (0..4).map(|s| at(10, 0, s)).collect();
        assert_eq!(
            isolate(times, WindowMode::Datetimes, &seconds).0,
            Isolated::NotLocal
        );
        // A window that fails for its layout, not one page: every part reads.
        assert_eq!(
            isolate(times, WindowMode::Datetimes, &[]).0,
            Isolated::AllRead
        );
        assert_eq!(isolate(dates, WindowMode::Dates, &[]).0, Isolated::AllRead);
    }

    #[test]
    fn windows_are_read_around_unread_spans_and_never_touch_them() {
        let day = at(0, 0, 0).date_naive();
        let window = Window::Dates {
            start: day,
            end: day,
        };
        let spans = [span(at(13, 0, 0), at(14, 0, 0))];
        assert_eq!(pieces(window, &[], WindowMode::Dates), vec![window]);
        let read = pieces(window, &spans, WindowMode::Dates);
        assert_eq!(
            read,
            vec![
                Window::ShiftedDays {
                    first: at(13, 0, 0) - a_day(),
                    days: 1
                },
                Window::ShiftedDays {
                    first: at(14, 0, 0),
                    days: 1
                },
            ]
        );
        // Together they cover the day but the span's hour.
        for minute in (0..24 * 60).step_by(7) {
            let t = at(0, 0, 0) + Duration::minutes(minute);
            let covered = read.iter().any(|w| {
                let (s, e) = w.range();
                t >= s && t < e
            });
            assert_eq!(covered, !(13..14).contains(&(minute / 60)), "{t}");
        }
        // A span at the window's very start or end leaves one piece.
        let late = [span(at(23, 0, 0), at(0, 0, 0) + a_day())];
        assert_eq!(
            pieces(window, &late, WindowMode::Dates),
            vec![Window::ShiftedDays {
                first: at(23, 0, 0) - a_day(),
                days: 1
            }]
        );
        let times = Window::Times {
            start: at(10, 0, 0),
            end: at(12, 0, 0),
        };
        let second = [span(at(11, 0, 0), at(11, 0, 1))];
        assert_eq!(
            pieces(times, &second, WindowMode::Datetimes),
            vec![
                Window::Times {
                    start: at(10, 0, 0),
                    end: at(11, 0, 0)
                },
                Window::Times {
                    start: at(11, 0, 1),
                    end: at(12, 0, 0)
                },
            ]
        );
    }

    #[test]
    fn spans_closer_than_a_readable_gap_merge() {
        let mut spans = vec![span(at(3, 0, 0), at(4, 0, 0))];
        assert!(merge(
            &mut spans,
            span(at(13, 0, 0), at(14, 0, 0)),
            WindowMode::Dates
        ));
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].start, spans[0].end), (at(3, 0, 0), at(14, 0, 0)));
        assert!(!merge(
            &mut spans,
            span(at(5, 0, 0), at(6, 0, 0)),
            WindowMode::Dates
        ));
        let mut seconds = vec![span(at(3, 0, 0), at(3, 0, 1))];
        merge(
            &mut seconds,
            span(at(13, 0, 0), at(13, 0, 1)),
            WindowMode::Datetimes,
        );
        assert_eq!(seconds.len(), 2);
    }

    #[test]
    fn pieces_of_any_window_never_touch_a_span_and_cover_the_rest() {
        let midnight = at(0, 0, 0);
        let h = |n: i64| midnight + Duration::hours(n);
        // One- and two-day windows (a fresh window in the grace period after midnight), spans
        // of whole hours and of one second (found in `datetimes`, read in `dates`).
        let windows = [
            Window::Dates {
                start: midnight.date_naive(),
                end: midnight.date_naive(),
            },
            Window::Dates {
                start: (midnight - a_day()).date_naive(),
                end: midnight.date_naive(),
            },
        ];
        let span_sets: Vec<Vec<UnreadSpan>> = vec![
            vec![span(h(-14), h(-13)), span(h(15), h(16))],
            vec![span(h(-24), h(-23))],
            vec![span(h(23), h(24))],
            vec![span(
                h(5) + Duration::seconds(17),
                h(5) + Duration::seconds(18),
            )],
            vec![span(h(-30), h(-29)), span(h(2), h(3))],
        ];
        for window in windows {
            for spans in &span_sets {
                let mut merged = Vec::new();
                for s in spans {
                    merge(&mut merged, s.clone(), WindowMode::Dates);
                }
                let widened: Vec<Span> = merged
                    .iter()
                    .map(|s| (floor_to(s.start, an_hour()), ceil_to(s.end, an_hour())))
                    .collect();
                let read = pieces(window, &merged, WindowMode::Dates);
                for piece in &read {
                    let (s, e) = piece.range();
                    assert_eq!(s, floor_to(s, an_hour()), "{piece} starts on an hour");
                    for (us, ue) in &widened {
                        assert!(e <= *us || s >= *ue, "{piece} touches {us}..{ue}");
                    }
                }
                let (ws, we) = window.range();
                let mut t = ws;
                while t < we {
                    let unread = widened.iter().any(|(us, ue)| t >= *us && t < *ue);
                    let covered = read.iter().any(|w| {
                        let (s, e) = w.range();
                        t >= s && t < e
                    });
                    assert_eq!(covered, !unread, "{t} in {window} around {widened:?}");
                    t += Duration::minutes(10);
                }
            }
        }
    }
}
