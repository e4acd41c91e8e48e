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
/// form); datetimes are an option for APIs that accept a time of day.
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
}

impl Window {
    pub(super) fn query_bounds(&self) -> (String, String) {
        match self {
            Window::Dates { start, end } => (start.to_string(), end.to_string()),
            Window::Times { start, end } => (
                start.to_rfc3339_opts(SecondsFormat::Secs, true),
                end.to_rfc3339_opts(SecondsFormat::Secs, true),
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
