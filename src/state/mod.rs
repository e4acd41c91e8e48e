//! What casestream remembers between runs: per case what was emitted and when to look again,
//! per widget how far the catch-up got. State advances only after Kafka acknowledged the
//! events derived from it.

pub mod sqlite;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::pipeline::tracker::CaseRecord;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path} holds a bad value: {what}")]
    Corrupt { path: String, what: String },
}

/// A case as the state keeps it: the tracker's record, the widget and the day it was created
/// on (the API is asked by day, so re-checks are asked by day too).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCase {
    pub id: String,
    pub widget: String,
    pub day: NaiveDate,
    pub record: CaseRecord,
}

/// Per-widget progress.
#[derive(Clone, Debug, PartialEq)]
pub struct WidgetProgress {
    /// The first day read for this widget (from `--since` on first start).
    pub since: NaiveDate,
    /// The last day that was read completely by the catch-up; `None` before the first.
    pub caught_up_through: Option<NaiveDate>,
    /// When the fresh window was last read completely.
    pub last_fresh_poll: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    pub known_cases: u64,
    pub pending_surveys: u64,
    pub size_bytes: u64,
}

/// The state behind the pipeline. Calls are blocking; the pipeline runs them off the async
/// threads. One `commit_cases` is one transaction.
pub trait StateStore: Send + Sync {
    /// What is known of these ids; unknown ids are absent from the map.
    fn lookup(&self, ids: &[&str]) -> Result<HashMap<String, CaseRecord>, StateError>;
    /// Records the cases of one page atomically.
    fn commit_cases(&self, cases: &[StoredCase]) -> Result<(), StateError>;
    fn widget(&self, widget: &str) -> Result<Option<WidgetProgress>, StateError>;
    fn set_widget(&self, widget: &str, progress: &WidgetProgress) -> Result<(), StateError>;
    /// Days before `before` with cases of `widget` whose re-check is due at `now`, oldest first.
    fn due_days(
        &self,
        widget: &str,
        now: DateTime<Utc>,
        before: NaiveDate,
        limit: usize,
    ) -> Result<Vec<NaiveDate>, StateError>;
    /// Cases of one widget and day whose re-check is due at `now`.
    fn due_cases(
        &self,
        widget: &str,
        day: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredCase>, StateError>;
    fn stats(&self) -> Result<StateStats, StateError>;
}
