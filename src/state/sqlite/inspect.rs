//! What the operator's toolkit reads of the store: per-widget summaries, one case with its
//! dead letters, and every row as the [`Change`] that would write it (export).

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OpenFlags, OptionalExtension, params};

use super::{
    RECORD_COLUMNS, SqliteStore, created_from_row, cursor_from_row, ms_to_time, record_from_row,
};
use crate::state::schema::SCHEMA_VERSION;
use crate::state::{Change, DeadLetterMark, StateError, StoredCase, WidgetProgress, start_of};

/// One widget as `casestream state summary` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WidgetSummary {
    pub widget: String,
    pub progress: Option<WidgetProgress>,
    pub known_cases: u64,
    pub pending_surveys: u64,
    /// The earliest survey re-check.
    pub next_check: Option<DateTime<Utc>>,
    /// A window interrupted part-way that the next run resumes.
    pub resumes_window: bool,
}

impl SqliteStore {
    /// Opens the state file of `dir` for reading only, never creating or migrating it: safe
    /// next to a running forwarder (WAL readers do not block its writes).
    pub fn open_read_only(dir: &std::path::Path) -> Result<Self, StateError> {
        let path = dir.join(super::STATE_FILE);
        let sqlite = |source| StateError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if !path.is_file() {
            return Err(StateError::Missing {
                path: path.display().to_string(),
            });
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite)?;
        if version != SCHEMA_VERSION {
            return Err(StateError::Corrupt {
                path: path.display().to_string(),
                what: format!(
                    "schema version {version}, this casestream reads {SCHEMA_VERSION} (a run of \
                     this version migrates it)"
                ),
            });
        }
        Ok(Self {
            path,
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// Every widget the state knows, by name.
    pub fn widget_summaries(&self) -> Result<Vec<WidgetSummary>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare(
                "WITH names AS (SELECT widget FROM widgets UNION SELECT DISTINCT widget FROM cases)
                 SELECT n.widget, w.since, w.caught_up_through, w.last_fresh_poll_ms, w.unread_spans,
                     (SELECT COUNT(*) FROM cases c WHERE c.widget = n.widget),
                     (SELECT COUNT(next_check_ms) FROM cases c WHERE c.widget = n.widget),
                     (SELECT MIN(next_check_ms) FROM cases c WHERE c.widget = n.widget),
                     EXISTS (SELECT 1 FROM window_cursors k WHERE k.widget = n.widget)
                 FROM names n LEFT JOIN widgets w ON w.widget = n.widget ORDER BY n.widget",
            )
            .map_err(&err)?;
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            i64,
            i64,
            Option<i64>,
            bool,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        drop(stmt);
        drop(conn);
        rows.into_iter()
            .map(
                |(widget, since, through, fresh, unread, known, pending, next, cursor)| {
                    let progress = since
                        .map(|since| {
                            self.progress(&since, through.as_deref(), fresh, unread.as_deref())
                        })
                        .transpose()?;
                    Ok(WidgetSummary {
                        widget,
                        progress,
                        known_cases: u64::try_from(known).unwrap_or_default(),
                        pending_surveys: u64::try_from(pending).unwrap_or_default(),
                        next_check: next.map(ms_to_time),
                        resumes_window: cursor,
                    })
                },
            )
            .collect()
    }

    /// The widgets with progress, by name.
    pub fn widget_names(&self) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare("SELECT widget FROM widgets ORDER BY widget")
            .map_err(&err)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    /// One case, if the state knows it.
    pub fn case(&self, id: &str) -> Result<Option<StoredCase>, StateError> {
        let conn = self.conn();
        let row: Option<(String, String, crate::state::CaseRecord, Option<i64>)> = conn
            .query_row(
                &format!("SELECT widget, day, {RECORD_COLUMNS} FROM cases WHERE id = ?1"),
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, record_from_row(r, 2)?, r.get(8)?)),
            )
            .optional()
            .map_err(self.err())?;
        drop(conn);
        row.map(|(widget, day, record, created)| {
            let day = self.parse_day(&day)?;
            Ok(StoredCase {
                id: id.to_owned(),
                widget,
                day,
                created: created.map_or_else(|| start_of(day), ms_to_time),
                record,
            })
        })
        .transpose()
    }

    /// The dead letters recorded for one case id.
    pub fn dead_letters_of(&self, case_id: &str) -> Result<Vec<DeadLetterMark>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare(
                "SELECT digest, widget, case_id, reason_code, at_ms FROM dead_letters
                 WHERE case_id = ?1 ORDER BY at_ms",
            )
            .map_err(&err)?;
        stmt.query_map([case_id], dead_letter_from_row)
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    /// The ids of `widget`'s cases on `since` or later.
    pub fn cases_from(&self, widget: &str, since: NaiveDate) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare("SELECT id FROM cases WHERE widget = ?1 AND day >= ?2 ORDER BY id")
            .map_err(&err)?;
        stmt.query_map(params![widget, since.to_string()], |r| r.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    /// Whether the store holds nothing at all (no case, widget, cursor or dead letter).
    pub fn is_empty(&self) -> Result<bool, StateError> {
        self.conn()
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM cases) AND NOT EXISTS (SELECT 1 FROM widgets)
                     AND NOT EXISTS (SELECT 1 FROM window_cursors)
                     AND NOT EXISTS (SELECT 1 FROM dead_letters)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Every row as the change that writes it, widgets first, streamed to `visit` (a state
    /// holds millions of cases: nothing is collected).
    pub fn for_each_change<E: From<StateError>>(
        &self,
        mut visit: impl FnMut(Change) -> Result<(), E>,
    ) -> Result<(), E> {
        self.each_row(
            "SELECT widget, since, caught_up_through, last_fresh_poll_ms, unread_spans FROM widgets
             ORDER BY widget",
            |r| {
                let (since, through): (String, Option<String>) = (r.get(1)?, r.get(2)?);
                let unread: Option<String> = r.get(4)?;
                Ok(Change::Widget {
                    widget: r.get(0)?,
                    progress: self.progress(
                        &since,
                        through.as_deref(),
                        r.get(3)?,
                        unread.as_deref(),
                    )?,
                })
            },
            &mut visit,
        )?;
        self.each_row(
            &format!(
                "SELECT id, widget, day, {RECORD_COLUMNS} FROM cases ORDER BY widget, day, id"
            ),
            |r| {
                let day: String = r.get(2)?;
                let day = self.parse_day(&day)?;
                Ok(Change::Case(StoredCase {
                    id: r.get(0)?,
                    widget: r.get(1)?,
                    day,
                    created: created_from_row(r, 3, day)?,
                    record: record_from_row(r, 3)?,
                }))
            },
            &mut visit,
        )?;
        self.each_row(
            "SELECT widget, window, next_link, pages_done FROM window_cursors",
            |r| Ok(Change::Cursor(cursor_from_row(r)?)),
            &mut visit,
        )?;
        self.each_row(
            "SELECT digest, widget, case_id, reason_code, at_ms FROM dead_letters ORDER BY at_ms",
            |r| Ok(Change::DeadLetter(dead_letter_from_row(r)?)),
            &mut visit,
        )
    }

    /// Each row of `select`, made a change by `change`, handed to `visit` as it is read.
    fn each_row<E: From<StateError>>(
        &self,
        select: &str,
        change: impl Fn(&rusqlite::Row<'_>) -> Result<Change, RowError>,
        visit: &mut impl FnMut(Change) -> Result<(), E>,
    ) -> Result<(), E> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn.prepare(select).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let change = change(row).map_err(|e| match e {
                RowError::Sqlite(e) => err(e),
                RowError::State(e) => e,
            })?;
            visit(change)?;
        }
        Ok(())
    }
}

/// A row that SQLite could not read, or whose value is bad.
enum RowError {
    Sqlite(rusqlite::Error),
    State(StateError),
}

impl From<rusqlite::Error> for RowError {
    fn from(e: rusqlite::Error) -> Self {
        RowError::Sqlite(e)
    }
}

impl From<StateError> for RowError {
    fn from(e: StateError) -> Self {
        RowError::State(e)
    }
}

fn dead_letter_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterMark> {
    Ok(DeadLetterMark {
        digest: r.get(0)?,
        widget: r.get(1)?,
        case_id: r.get(2)?,
        reason_code: r.get(3)?,
        at: ms_to_time(r.get(4)?),
    })
}
