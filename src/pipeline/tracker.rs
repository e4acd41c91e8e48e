//! The tracker: pure decisions. Given a case as received, what state knows of it and `now`,
//! it returns the events to emit and the record to keep. No I/O, no clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::events::{EventKind, survey_digest};
use crate::snapengage::Case;
use crate::state::CaseRecord;

/// Survey re-checks run on fixed grids of wall-clock time, so every pending case of a day (of
/// every widget) falls due at the same instants and a day is read once per re-check time, not
/// once per case. In the first hours after chat end, where answers cluster (the simulator
/// spreads late ones over 6 h), a check every 10 min keeps a survey within ~10 min of
/// appearing; later, every 2 h to a day, then once a day to the horizon. Surveys that late are
/// rare and are read a whole day at a time, so a second daily look would cost a tenth of a
/// request per widget per poll (a day of 4 x 200/h measured) for half a day's latency on them.
const RECHECK_GRIDS: [(Duration, Grid); 2] = [
    (Duration::from_secs(6 * 3600), Grid::every(10 * 60)),
    (Duration::from_secs(24 * 3600), Grid::every(2 * 3600)),
];
/// At 12:00 UTC, away from midnight, where the day just ended has its final read and every
/// other grid has a point. On the 2-hour grid's points, so the grids still nest.
const RECHECK_LATE: Grid = Grid {
    step_ms: 24 * 3_600_000,
    offset_ms: 12 * 3_600_000,
};

/// Points every `step_ms`, `offset_ms` after the multiples of the step from the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grid {
    step_ms: i64,
    offset_ms: i64,
}

impl Grid {
    const fn every(secs: i64) -> Self {
        Self {
            step_ms: secs * 1000,
            offset_ms: 0,
        }
    }

    /// The first point at or after `t`.
    fn at_or_after(self, t: DateTime<Utc>) -> DateTime<Utc> {
        // Whole milliseconds, rounded up: a point is never before `t`.
        let ms = t
            .timestamp_millis()
            .saturating_add(i64::from(
                !t.timestamp_subsec_nanos().is_multiple_of(1_000_000),
            ))
            .saturating_sub(self.offset_ms);
        let at = ms
            .div_euclid(self.step_ms)
            .saturating_add(i64::from(ms.rem_euclid(self.step_ms) != 0));
        DateTime::from_timestamp_millis(
            at.saturating_mul(self.step_ms)
                .saturating_add(self.offset_ms),
        )
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The first point strictly after `t`.
    fn after(self, t: DateTime<Utc>) -> DateTime<Utc> {
        self.at_or_after(t + chrono::Duration::milliseconds(1))
    }

    /// The last point at or before `t`.
    fn at_or_before(self, t: DateTime<Utc>) -> DateTime<Utc> {
        self.after(t) - chrono::Duration::milliseconds(self.step_ms)
    }
}

pub const ENV_SETTLE: &str = "CASESTREAM_SETTLE";
pub const ENV_SURVEY_HORIZON: &str = "CASESTREAM_SURVEY_HORIZON";
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_SURVEY_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerSettings {
    /// Wait this long after chat end before a survey counts (SnapEngage stores it after 5 min).
    pub settle: Duration,
    /// Stop looking for surveys this long after chat end (the last look is the first point of
    /// the re-check grid at or after it).
    pub horizon: Duration,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        Self {
            settle: DEFAULT_SETTLE,
            horizon: DEFAULT_SURVEY_HORIZON,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// In emission order: created before survey.
    pub events: Vec<EventKind>,
    pub record: CaseRecord,
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Chats that ended from then on were checked on the first grid, every 10 minutes, at its last
/// point (at or before `now`): the re-checks worth reading apart from their day's older cases,
/// which fall due with them at the grids' shared points. Counted from that point, not from
/// `now`, so a re-check read a little after it finds every case due there in one group.
pub fn frequent_checks_since(now: DateTime<Utc>, settings: &TrackerSettings) -> DateTime<Utc> {
    let (first_grid_until, first_grid) = RECHECK_GRIDS[0];
    let point = first_grid.at_or_before(now);
    // A check at the point is on the first grid while the case is younger than the band.
    point
        .checked_sub_signed(
            chrono::Duration::from_std(settings.settle + first_grid_until).unwrap_or_default(),
        )
        .map_or(DateTime::<Utc>::MIN_UTC, |t| {
            t + chrono::Duration::milliseconds(1)
        })
}

/// The grid a case is checked on at `age` after its chat ended.
fn grid_for(age: Duration, settings: &TrackerSettings) -> Grid {
    RECHECK_GRIDS
        .iter()
        .find(|(until, _)| age < settings.settle + *until)
        .map_or(RECHECK_LATE, |(_, grid)| *grid)
}

/// The next time to look for a survey after `now`: the first grid point at or after settle,
/// then the next point of the grid for the case's age; the last is the first point at or after
/// the horizon, `None` from then on. The last check stays on a grid: at the horizon itself, a
/// day's cases would fall due one by one as their chats' ends come round, and a `dates`
/// re-check reads the whole day each time.
pub fn next_check(
    chat_end: DateTime<Utc>,
    now: DateTime<Utc>,
    settings: &TrackerSettings,
) -> Option<DateTime<Utc>> {
    let last = grid_for(settings.horizon, settings).at_or_after(add(chat_end, settings.horizon));
    if now >= last {
        return None;
    }
    let settled = add(chat_end, settings.settle);
    let age_at = |t: DateTime<Utc>| (t - chat_end).to_std().unwrap_or_default();
    let mut grid = grid_for(age_at(settled.max(now)), settings);
    let mut at = if now < settled {
        grid.at_or_after(settled)
    } else {
        grid.after(now)
    };
    // A check that would fall past its grid's band goes to the next grid's point instead,
    // where the day's older cases fall due: one read for both, not a small one for it alone.
    // The grids nest (each one's points are points of the one before), so this ends within
    // their number.
    loop {
        let grid_then = grid_for(age_at(at), settings);
        if grid_then == grid {
            break;
        }
        grid = grid_then;
        at = grid.after(now.max(settled));
    }
    Some(at.min(last))
}

/// Decides what one observation of a case means.
pub fn observe(
    case: &Case,
    known: Option<&CaseRecord>,
    now: DateTime<Utc>,
    settings: &TrackerSettings,
) -> Decision {
    // Without a usable chat end (no creation time), the first sighting stands in for it.
    let chat_end = case.chat_end().or(known.map(|k| k.chat_end)).unwrap_or(now);
    let mut events = Vec::new();
    let created_emitted = known.is_some_and(|k| k.created_emitted);
    if !created_emitted {
        events.push(EventKind::Created);
    }
    let mut digest = known.and_then(|k| k.survey_digest.clone());
    let mut survey_emitted = known.and_then(|k| k.survey_emitted);
    let settled = now >= add(chat_end, settings.settle);
    let survey = case.survey();
    if settled && survey.is_present() {
        let current = survey_digest(&survey);
        if digest.as_deref() != Some(current.as_str()) {
            events.push(EventKind::Survey {
                score: survey.score,
                comments: survey.comments,
            });
            digest = Some(current);
            survey_emitted = Some(now);
        }
    }
    Decision {
        events,
        record: CaseRecord {
            first_seen: known.map_or(now, |k| k.first_seen),
            chat_end,
            created_emitted: true,
            survey_digest: digest,
            next_check: next_check(chat_end, now, settings),
            survey_emitted,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SETTINGS: TrackerSettings = TrackerSettings {
        settle: Duration::from_secs(300),
        horizon: Duration::from_secs(7 * 86_400),
    };
    const CREATED_MS: i64 = 1_700_000_000_000;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn t(secs_after_created: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(CREATED_MS + secs_after_created * 1000).unwrap()
    }

    fn case(survey: Option<(i64, &str)>) -> Case {
        let mut raw = json!({
            "id": "c1", "created_at_date": CREATED_MS,
            "chat_waittime": 10, "chat_duration": 90,
            "survey_score": null, "survey_comments": null,
        });
        if let Some((score, comments)) = survey {
            raw["survey_score"] = score.into();
            raw["survey_comments"] = comments.into();
        }
        Case::from_value(raw).unwrap()
    }

    #[test]
    fn unknown_case_is_created_now_and_pending() {
        let d = observe(&case(None), None, t(100), &SETTINGS);
        assert_eq!(d.events, [EventKind::Created]);
        assert_eq!(d.record.chat_end, t(100));
        assert_eq!(d.record.first_seen, t(100));
        let first = d.record.next_check.unwrap();
        assert!(first >= t(400) && first < t(1_000) && first.timestamp() % 600 == 0);
    }

    #[test]
    fn survey_waits_for_settle_then_is_emitted_once() {
        let surveyed = case(Some((100, "great")));
        let first = observe(&surveyed, None, t(120), &SETTINGS);
        assert_eq!(
            first.events,
            [EventKind::Created],
            "not settled at chat end + 20 s"
        );
        let early = observe(&surveyed, Some(&first.record), t(399), &SETTINGS);
        assert!(early.events.is_empty());
        let settled = observe(&surveyed, Some(&early.record), t(400), &SETTINGS);
        assert_eq!(
            settled.events,
            [EventKind::Survey {
                score: Some(100),
                comments: Some("great".into())
            }]
        );
        let again = observe(&surveyed, Some(&settled.record), t(5000), &SETTINGS);
        assert!(again.events.is_empty(), "same survey never twice");
        let changed = observe(
            &case(Some((100, "great!"))),
            Some(&again.record),
            t(6000),
            &SETTINGS,
        );
        assert_eq!(changed.events.len(), 1, "different content is a new survey");
    }

    #[test]
    fn first_seen_settled_with_survey_gives_both_created_first() {
        let d = observe(&case(Some((80, ""))), None, t(86_400), &SETTINGS);
        assert_eq!(
            d.events,
            [
                EventKind::Created,
                EventKind::Survey {
                    score: Some(80),
                    comments: None
                }
            ]
        );
    }

    #[test]
    fn frequent_checks_are_those_of_chats_ended_since_the_cutoff() {
        // A 10-minute point that is no 2-hour one, and a re-check read 22 s after it.
        let point = at("2026-03-11T10:10:00Z");
        let now = point + chrono::Duration::seconds(22);
        let cutoff = frequent_checks_since(now, &SETTINGS);
        assert_eq!(cutoff, frequent_checks_since(point, &SETTINGS));
        // Whatever check came before (10 min or 1 ms earlier), is the case due at the point?
        let due_at_point = |chat_end: DateTime<Utc>| {
            [
                chrono::Duration::minutes(10),
                chrono::Duration::milliseconds(1),
            ]
            .iter()
            .all(|before| next_check(chat_end, point - *before, &SETTINGS) == Some(point))
        };
        // Ended from the cutoff on: due at the point, on the 10-minute grid.
        for after in [0, 1, 60_000] {
            assert!(due_at_point(cutoff + chrono::Duration::milliseconds(after)));
        }
        // Ended before: its checks are on the 2-hour grid by the point, so none of that
        // group is due at it (no second, small read beside the frequent one).
        for before in [1, 1_000, 600_000] {
            let chat_end = cutoff - chrono::Duration::milliseconds(before);
            assert_eq!(
                next_check(chat_end, point - chrono::Duration::minutes(10), &SETTINGS),
                Some(at("2026-03-11T12:00:00Z"))
            );
        }
    }

    #[test]
    fn a_check_past_its_band_moves_to_the_next_grid() {
        let end = at("2026-03-10T00:40:00Z");
        // Checked at 6 h 02 min, 3 min before the first band ends (settle + 6 h): the next
        // 10-minute point, 06:50, is past it, so the next check is the 2-hour point after.
        let next = next_check(end, at("2026-03-10T06:42:00Z"), &SETTINGS);
        assert_eq!(next, Some(at("2026-03-10T08:00:00Z")));
        // Likewise past a day: 02:00 is past the second band, so the daily point after (12:00).
        let next = next_check(end, at("2026-03-11T00:42:00Z"), &SETTINGS);
        assert_eq!(next, Some(at("2026-03-11T12:00:00Z")));
        // Ended at 12:40: its last 2-hour check is 12:00 the next day, and the one after is
        // the next day's 12:00, not midnight.
        let end = at("2026-03-10T12:40:00Z");
        let next = next_check(end, at("2026-03-11T12:00:00Z"), &SETTINGS);
        assert_eq!(next, Some(at("2026-03-12T12:00:00Z")));
    }

    #[test]
    fn grid_points_around_a_time() {
        let daily = RECHECK_LATE;
        let noon = at("2026-03-10T12:00:00Z");
        let ms = chrono::Duration::milliseconds(1);
        assert_eq!(daily.at_or_after(noon), noon);
        assert_eq!(daily.at_or_after(noon - ms), noon);
        assert_eq!(
            daily.at_or_after(noon + ms),
            noon + chrono::Duration::days(1)
        );
        assert_eq!(daily.after(noon), noon + chrono::Duration::days(1));
        assert_eq!(daily.at_or_before(noon), noon);
        assert_eq!(
            daily.at_or_before(noon - ms),
            noon - chrono::Duration::days(1)
        );
        // Before the epoch, and a part of a millisecond past a point.
        let before_epoch = at("1969-12-31T11:00:00Z");
        assert_eq!(daily.at_or_after(before_epoch), at("1969-12-31T12:00:00Z"));
        let ten = Grid::every(600);
        let past_a_point = at("2026-03-10T12:10:00.000000500Z");
        assert_eq!(ten.at_or_after(past_a_point), at("2026-03-10T12:20:00Z"));
    }

    #[test]
    fn rechecks_follow_grids_and_end_on_the_grid_after_the_horizon() {
        let end = t(100);
        let checks: Vec<DateTime<Utc>> =
            std::iter::successors(next_check(end, end, &SETTINGS), |at| {
                next_check(end, *at, &SETTINGS)
            })
            .collect();
        let minutes = |at: &DateTime<Utc>| (*at - end).num_minutes();
        // First at settle or the next 10-minute mark after it, then every 10 minutes for 6 h.
        assert!(
            (5..15).contains(&minutes(&checks[0])),
            "{}",
            minutes(&checks[0])
        );
        let fast: Vec<_> = checks.iter().filter(|at| minutes(at) < 6 * 60).collect();
        assert!(
            fast.windows(2)
                .all(|w| *w[1] - *w[0] == chrono::Duration::minutes(10))
        );
        assert!(
            fast.iter().all(|at| at.timestamp() % 600 == 0),
            "on the grid"
        );
        let day_one = checks
            .iter()
            .filter(|at| (6 * 60 + 15..24 * 60).contains(&minutes(at)));
        assert!(day_one.clone().all(|at| at.timestamp() % 7200 == 0));
        assert!(day_one.count() >= 8);
        // Past the first day, once a day at 12:00 UTC, the last the first such point at or
        // after the horizon.
        let late: Vec<_> = checks.iter().filter(|at| minutes(at) >= 24 * 60).collect();
        assert!(
            late.iter().all(|at| at.timestamp() % 86_400 == 43_200),
            "{late:?}"
        );
        assert!(
            late.windows(2)
                .all(|w| *w[1] - *w[0] == chrono::Duration::days(1))
        );
        let last = *checks.last().unwrap();
        let horizon = end + chrono::Duration::days(7);
        assert!(last >= horizon && last - horizon < chrono::Duration::days(1));
        assert_eq!(**late.last().unwrap(), last);
        assert!(checks.windows(2).all(|w| w[0] < w[1]));
        assert!(checks.len() < 36 + 10 + 8);
        assert_eq!(next_check(end, last, &SETTINGS), None);
    }

    #[test]
    fn cases_of_a_day_fall_due_together() {
        // Chats ending minutes apart share their checks once settled.
        let a = next_check(t(100), t(2_000), &SETTINGS);
        let b = next_check(t(400), t(2_000), &SETTINGS);
        assert_eq!(a, b);
        let a = next_check(t(100), t(30_000), &SETTINGS);
        let b = next_check(t(3_000), t(30_000), &SETTINGS);
        assert_eq!(a, b);
    }

    #[test]
    fn the_last_checks_of_a_day_fall_due_together() {
        // Chats ending hours apart on one day: their horizons pass one by one, their last
        // checks do not (else the day would be due again with each case).
        let day = at("2026-03-03T00:00:00Z");
        let ends = [1, 5, 11].map(|h| day + chrono::Duration::hours(h));
        let last = |end: DateTime<Utc>| {
            std::iter::successors(next_check(end, end, &SETTINGS), |at| {
                next_check(end, *at, &SETTINGS)
            })
            .last()
            .unwrap()
        };
        let lasts = ends.map(last);
        assert_eq!(lasts, [at("2026-03-10T12:00:00Z"); 3]);
        // Seen after its horizon but before that last check (read early by a re-check of its
        // day, say), a case keeps the check.
        let end = ends[2];
        for seen in [
            end + chrono::Duration::days(7) - chrono::Duration::minutes(1),
            end + chrono::Duration::days(7) + chrono::Duration::minutes(1),
        ] {
            assert_eq!(
                next_check(end, seen, &SETTINGS),
                Some(at("2026-03-10T12:00:00Z"))
            );
        }
        assert_eq!(next_check(end, at("2026-03-10T12:00:00Z"), &SETTINGS), None);
    }

    #[test]
    fn a_case_without_times_uses_first_sight() {
        let bare = Case::from_value(json!({"id": "x", "survey_score": 5})).unwrap();
        let first = observe(&bare, None, t(0), &SETTINGS);
        assert_eq!(first.record.chat_end, t(0));
        let later = observe(&bare, Some(&first.record), t(300), &SETTINGS);
        assert_eq!(later.record.chat_end, t(0));
        assert_eq!(later.events.len(), 1);
    }

    fn survey_strategy() -> impl Strategy<Value = Option<(i64, &'static str)>> {
        prop_oneof![
            Just(None),
            Just(Some((100, "great"))),
            Just(Some((20, ""))),
            Just(Some((60, "meh"))),
        ]
    }

    proptest! {
        /// Any sequence of observations: one created, surveys only when settled, never the same
        /// survey content twice in a row, and the record pending until its last check (the
        /// first daily grid point at or after the 7-day horizon), which the steps cross.
        #[test]
        fn sequences_of_observations(
            steps in prop::collection::vec((0i64..50_000, survey_strategy()), 1..30)
        ) {
            let mut now = 0i64;
            let mut known: Option<CaseRecord> = None;
            let mut created = 0;
            let mut last_survey: Option<EventKind> = None;
            let last_check = RECHECK_LATE.at_or_after(t(100 + 7 * 86_400));
            for (advance, survey) in steps {
                now += advance;
                let d = observe(&case(survey), known.as_ref(), t(now), &SETTINGS);
                for event in &d.events {
                    match event {
                        EventKind::Created => created += 1,
                        survey_event => {
                            prop_assert!(t(now) >= t(100 + 300), "survey before settle");
                            prop_assert_ne!(Some(survey_event), last_survey.as_ref());
                            last_survey = Some(survey_event.clone());
                        }
                    }
                }
                prop_assert_eq!(d.record.is_pending(), t(now) < last_check);
                if let Some(next) = d.record.next_check {
                    prop_assert!(next > t(now));
                }
                known = Some(d.record);
            }
            prop_assert_eq!(created, 1);
        }
    }
}
