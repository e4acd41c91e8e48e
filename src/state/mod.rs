//! What casestream remembers between runs: per case what was emitted and when to look again,
//! per widget how far the catch-up got. State advances only after Kafka acknowledged the
//! events derived from it.

pub mod change;
pub mod lock;
mod schema;
pub mod sqlite;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub use change::{Change, ChangeError, page_changes};

pub use lock::StateLock;
pub use sqlite::SqliteStore;

pub const ENV_STATE_DIR: &str = "CASESTREAM_STATE_DIR";
pub const DEFAULT_STATE_DIR: &str = "./state";

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
    #[error("no state at {path}: this directory was never written by casestream")]
    Missing { path: String },
    #[error("state database {path} holds a bad value: {what}")]
    Corrupt { path: String, what: String },
    #[error(
        "state directory {dir} is in use by another casestream process{holder} (lock file {lock}); \
         one state directory takes one writer: stop the other process or give this one its own \
         {ENV_STATE_DIR}"
    )]
    Locked {
        dir: String,
        lock: String,
        /// ` (pid N)` when the lock file names its holder.
        holder: String,
    },
    #[error("cannot lock the state directory {dir} (lock file {lock}): {source}")]
    Lock {
        dir: String,
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the state directory if it is missing.
fn ensure_dir(dir: &std::path::Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
        path: dir.display().to_string(),
        source,
    })
}

/// What the state keeps about one case: what was emitted, and when to look again. The
/// tracker decides it; the state stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub first_seen: DateTime<Utc>,
    pub chat_end: DateTime<Utc>,
    pub created_emitted: bool,
    /// Digest of the last survey content emitted.
    pub survey_digest: Option<String>,
    /// When the case should be read again for a survey; `None` after the last check, on the
    /// re-check grid at or after the survey horizon.
    pub next_check: Option<DateTime<Utc>>,
    /// When the last survey event was decided (state written before schema version 5, and
    /// changelog records before it, do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey_emitted: Option<DateTime<Utc>>,
}

impl CaseRecord {
    pub fn is_pending(&self) -> bool {
        self.next_check.is_some()
    }
}

/// A case as the state keeps it: the tracker's record, the widget, the day it was created on
/// and when (the API selects by creation time, so re-checks are asked by creation times too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredCaseRecord")]
pub struct StoredCase {
    pub id: String,
    pub widget: String,
    pub day: NaiveDate,
    /// The case's `created_at_date` (the start of `day` for a case without one, and for
    /// cases stored before creation times were kept: that only widens a re-check's window).
    pub created: DateTime<Utc>,
    pub record: CaseRecord,
}

/// A [`StoredCase`] as changelog records hold it: records written before creation times
/// were kept have none.
#[derive(Deserialize)]
struct StoredCaseRecord {
    id: String,
    widget: String,
    day: NaiveDate,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    record: CaseRecord,
}

impl From<StoredCaseRecord> for StoredCase {
    fn from(r: StoredCaseRecord) -> Self {
        Self {
            created: r.created.unwrap_or_else(|| start_of(r.day)),
            id: r.id,
            widget: r.widget,
            day: r.day,
            record: r.record,
        }
    }
}

/// Midnight (UTC) at the start of `day`: the earliest a case of that day can be created.
pub fn start_of(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// Per-widget progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WidgetProgress {
    /// The first day read for this widget (from `--since` on first start).
    pub since: NaiveDate,
    /// The last day that was read completely by the catch-up; `None` before the first.
    pub caught_up_through: Option<NaiveDate>,
    /// When the fresh window was last read completely.
    pub last_fresh_poll: Option<DateTime<Utc>>,
    /// Parts of the widget's timeline the Logs API would not serve: windows read around them,
    /// and they are tried again on the re-check grid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<UnreadSpan>,
}

/// A part of a widget's timeline, as narrow as the API lets it be addressed, whose pages the
/// API would not serve (a body too large, not JSON, a 5xx on every attempt). Every other
/// window of the widget is read around it; it is read again on the re-check grid until the
/// survey horizon, and what it holds is announced once it can be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnreadSpan {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// What the last read of it failed with.
    pub error: String,
    /// Reads of it that failed, the isolating ones included.
    pub attempts: u32,
    /// When it was found unreadable.
    pub found: DateTime<Utc>,
    /// When it is read again; `None` past the survey horizon: it is only read around.
    pub next_retry: Option<DateTime<Utc>>,
}

/// A day holding cases whose survey re-check is due, the span of their chat ends (which
/// names the group) and their earliest creation time (a re-check in `datetimes` mode reads
/// only the part of the day they were created in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueDay {
    pub day: NaiveDate,
    /// The earliest creation time among them: where a `datetimes` re-check starts.
    pub first_created: DateTime<Utc>,
    pub first_end: DateTime<Utc>,
    pub last_end: DateTime<Utc>,
    /// The earliest re-check time among them: how long the day has been waiting.
    pub due_since: DateTime<Utc>,
}

/// Where a window interrupted part-way goes on: the link to its next page, saved with the
/// commit of the page before it. A restart that plans the same window (the same first-page
/// URL) resumes there instead of at page 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowCursor {
    pub widget: String,
    /// The window's first-page URL: the cursor is only good for that window.
    pub window: String,
    /// The next-page link, as the API gave it.
    pub next: String,
    /// Pages of the window committed before `next`.
    pub pages_done: usize,
}

/// A bad input already sent to the dead-letter topic, remembered by its widget and the digest
/// of its raw bytes so it is sent once per widget, not on every read of its day (the same bytes
/// served by two widgets are two inputs: each widget's dead letter is its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterMark {
    /// SHA-256 (hex) of the raw bytes received.
    pub digest: String,
    pub widget: String,
    pub case_id: Option<String>,
    pub reason_code: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    pub known_cases: u64,
    pub pending_surveys: u64,
    pub size_bytes: u64,
    /// The file system holding the state: its size and the bytes free for us (`None` where
    /// it cannot be asked).
    pub volume: Option<(u64, u64)>,
}

/// Where the local store stands in the changelog: the next offset to apply, and of which
/// topic (a store follows one changelog; another topic's offsets mean nothing to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangelogPosition {
    pub topic: String,
    pub next_offset: i64,
    /// When the store last applied the changelog: tombstones older than the topic's
    /// `delete.retention.ms` may be gone, so a store that stopped reading long ago is stale.
    pub applied_at: DateTime<Utc>,
}

/// The state behind the pipeline. Calls are blocking; the pipeline runs them off the async
/// threads. Every write is a list of [`Change`]s applied in one transaction.
pub trait StateStore: Send + Sync {
    /// What is known of these ids; unknown ids are absent from the map.
    fn lookup(&self, ids: &[&str]) -> Result<HashMap<String, CaseRecord>, StateError>;
    /// Applies `changes` in one transaction; with `position`, records in the same
    /// transaction that the changelog was applied up to there; without, forgets any position
    /// (the store now holds what the changelog does not).
    fn apply(
        &self,
        changes: &[Change],
        position: Option<&ChangelogPosition>,
    ) -> Result<(), StateError>;
    /// How far the changelog was applied; `None` if it never was.
    fn changelog_position(&self) -> Result<Option<ChangelogPosition>, StateError>;
    /// Forgets everything (the store is rebuilt from the changelog).
    fn clear(&self) -> Result<(), StateError>;
    /// Records the cases of one page atomically.
    fn commit_cases(&self, cases: &[StoredCase]) -> Result<(), StateError> {
        self.apply(&page_changes(cases.to_vec(), Vec::new(), None), None)
    }
    /// The saved cursor of `widget`'s window interrupted part-way, if any.
    fn window_cursor(&self, widget: &str) -> Result<Option<WindowCursor>, StateError>;
    /// Forgets `widget`'s cursor: its window was read to the end, or the API refused it.
    fn clear_window_cursor(&self, widget: &str) -> Result<(), StateError> {
        let widget = widget.to_owned();
        self.apply(&[Change::CursorCleared { widget }], None)
    }
    /// Which of these raw-input digests were dead-lettered already for `widget`.
    fn known_dead_letters(
        &self,
        widget: &str,
        digests: &[&str],
    ) -> Result<HashSet<String>, StateError>;
    /// Cases of `widget` on days before `before` on which no case awaits a survey re-check any
    /// more, oldest days first, at most `max_cases`: such days are never read again, so nothing
    /// decided there can repeat, and they can be forgotten (a day cut by the bound is still
    /// prunable at the next call, which takes the rest).
    fn prunable_cases(
        &self,
        widget: &str,
        before: NaiveDate,
        max_cases: usize,
    ) -> Result<Vec<String>, StateError>;
    /// Forgets up to `max_cases` prunable cases ([`StateStore::prunable_cases`]) in one
    /// transaction. Returns how many.
    fn prune_cases(
        &self,
        widget: &str,
        before: NaiveDate,
        max_cases: usize,
    ) -> Result<u64, StateError> {
        let ids = self.prunable_cases(widget, before, max_cases)?;
        let changes: Vec<Change> = ids
            .into_iter()
            .map(|id| Change::CaseForgotten { id })
            .collect();
        self.apply(&changes, None)?;
        Ok(changes.len() as u64)
    }
    /// Dead-letter marks recorded before `before`, as (widget, digest, whether every mark of
    /// that digest is that old).
    fn dead_letters_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, String, bool)>, StateError>;
    /// Forgets dead-letter marks recorded before `before`. Returns how many.
    fn prune_dead_letters(&self, before: DateTime<Utc>) -> Result<u64, StateError> {
        let marks = self.dead_letters_before(before)?;
        let count = marks.len() as u64;
        self.apply(&change::forget_dead_letters(marks), None)?;
        Ok(count)
    }
    fn widget(&self, widget: &str) -> Result<Option<WidgetProgress>, StateError>;
    fn set_widget(&self, widget: &str, progress: &WidgetProgress) -> Result<(), StateError> {
        let (widget, progress) = (widget.to_owned(), progress.clone());
        self.apply(&[Change::Widget { widget, progress }], None)
    }
    /// Days before `before` with cases of `widget` whose re-check is due at `now`, with the span
    /// of those cases' chat ends and their earliest creation time, the youngest cases first (the first `limit`: older days come
    /// once these are read, and surveys come mostly in a chat's first hours). With `split_at`,
    /// a day's due cases whose chats ended from then on are a day of their own: a re-check of
    /// recent cases then reads their hours, not the whole day that falls due with them.
    fn due_days(
        &self,
        widget: &str,
        now: DateTime<Utc>,
        before: NaiveDate,
        split_at: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<DueDay>, StateError>;
    /// Cases of `due`'s widget and day, in its span of chat ends, whose re-check is due at
    /// `now`.
    fn due_cases(
        &self,
        widget: &str,
        due: &DueDay,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredCase>, StateError>;
    /// How many cases of `widget` the state knows on `day`, of those created within `created`
    /// (`[start, end)`) if given: what a read of the day, or of those hours of it, costs.
    fn cases_on(
        &self,
        widget: &str,
        day: NaiveDate,
        created: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<u64, StateError>;
    fn stats(&self) -> Result<StateStats, StateError>;
}
