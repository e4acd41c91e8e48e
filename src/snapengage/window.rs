//! Windows: the span of cases one series of pages asks for, and how it is written.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// How `start`/`end` are sent: whole days (documented) or datetimes (an option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowMode {
    Dates,
    Datetimes,
}

impl std::str::FromStr for WindowMode {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "dates" => Ok(WindowMode::Dates),
            "datetimes" => Ok(WindowMode::Datetimes),
            _ => Err("must be `dates` or `datetimes`"),
        }
    }
}

/// The span of cases to ask for. Dates are whole days in UTC, `end` inclusive (the documented
/// form); datetimes are an option for APIs that accept a time of day. Shifted days are whole
/// days in another zone (the API reads dates in its `timezone`): the only way `dates` mode can
/// start or end a window on another hour, to read around a part the API cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Dates {
        start: NaiveDate,
        end: NaiveDate,
    },
    Times {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// `days` whole days from `first`, a whole UTC hour, read as dates in the fixed-offset zone
    /// whose midnight falls on it.
    ShiftedDays {
        first: DateTime<Utc>,
        days: u32,
    },
}

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

impl Window {
    pub(crate) fn query_bounds(&self) -> (String, String) {
        match self {
            Window::Dates { start, end } => (start.to_string(), end.to_string()),
            Window::Times { start, end } => (
                start.to_rfc3339_opts(SecondsFormat::Secs, true),
                end.to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
            Window::ShiftedDays { first, days } => {
                let local = *first + chrono::Duration::hours(i64::from(self.utc_offset_hours()));
                let start = local.date_naive();
                let end = start + chrono::Days::new(u64::from(*days).saturating_sub(1));
                (start.to_string(), end.to_string())
            }
        }
    }

    /// The `timezone` the bounds are read in.
    pub(crate) fn timezone(&self) -> String {
        match self.utc_offset_hours() {
            0 => "Etc/UTC".to_owned(),
            // POSIX signs, as the IANA `Etc/GMT` zones have them: `Etc/GMT-5` is UTC+5.
            east @ 1.. => format!("Etc/GMT-{east}"),
            west => format!("Etc/GMT+{}", -west),
        }
    }

    /// Hours east of UTC of the zone the window is read in, within the zones that exist
    /// (UTC-12 to UTC+14): midnight there falls on `first`'s hour.
    fn utc_offset_hours(&self) -> i32 {
        match self {
            Window::ShiftedDays { first, .. } => {
                let hour = first.timestamp_millis().rem_euclid(DAY_MS) / HOUR_MS;
                // Local midnight at UTC hour h: offset -h, or 24 - h east of UTC.
                let hour = hour as i32;
                if hour <= 12 { -hour } else { 24 - hour }
            }
            _ => 0,
        }
    }

    /// The instants the window covers, `[start, end)`.
    pub fn range(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let midnight = |day: NaiveDate| day.and_time(chrono::NaiveTime::MIN).and_utc();
        match self {
            Window::Dates { start, end } => {
                (midnight(*start), midnight(end.succ_opt().unwrap_or(*end)))
            }
            Window::Times { start, end } => (*start, *end),
            Window::ShiftedDays { first, days } => (
                *first,
                *first + chrono::Duration::milliseconds(DAY_MS * i64::from(*days)),
            ),
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (start, end) = self.query_bounds();
        write!(f, "{start}..{end}")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// Where the API (as the simulator reads it) starts and ends a shifted window.
    fn as_the_api_reads(window: &Window) -> (DateTime<Utc>, DateTime<Utc>) {
        let tz: chrono_tz::Tz = window.timezone().parse().expect("a zone the API knows");
        let (start, end) = window.query_bounds();
        let midnight = |date: &str| {
            let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("a date");
            tz.from_local_datetime(&day.and_time(chrono::NaiveTime::MIN))
                .single()
                .expect("fixed offsets have one midnight")
                .with_timezone(&Utc)
        };
        let end_day = NaiveDate::parse_from_str(&end, "%Y-%m-%d").expect("a date");
        (
            midnight(&start),
            midnight(&end_day.succ_opt().expect("a day after").to_string()),
        )
    }

    #[test]
    fn shifted_days_start_on_any_utc_hour() {
        let day = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
        for hour in 0..24 {
            for days in [1, 3] {
                let first = day + chrono::Duration::hours(hour);
                let window = Window::ShiftedDays { first, days };
                assert_eq!(
                    as_the_api_reads(&window),
                    window.range(),
                    "{hour}h, {days} days"
                );
                let offset = window.utc_offset_hours();
                assert!((-12..=14).contains(&offset), "{offset} is no zone");
            }
        }
        let evening = Window::ShiftedDays {
            first: day + chrono::Duration::hours(20),
            days: 1,
        };
        assert_eq!(evening.timezone(), "Etc/GMT-4");
        assert_eq!(
            evening.query_bounds(),
            ("2026-03-11".into(), "2026-03-11".into())
        );
        let morning = Window::ShiftedDays {
            first: day + chrono::Duration::hours(5),
            days: 1,
        };
        assert_eq!(morning.timezone(), "Etc/GMT+5");
        assert_eq!(
            Window::Dates {
                start: day.date_naive(),
                end: day.date_naive()
            }
            .timezone(),
            "Etc/UTC"
        );
    }
}
