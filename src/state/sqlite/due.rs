//! The re-check schedule's queries: which days have due cases, which cases, and what a
//! window of a day holds.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::params;

use super::{RECORD_COLUMNS, SqliteStore, ms_to_time, record_from_row};
use crate::state::{DueDay, StateError, StoredCase};

impl SqliteStore {
    pub(super) fn query_due_days(
        &self,
        widget: &str,
        now: DateTime<Utc>,
        before: NaiveDate,
        split_at: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<DueDay>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare_cached(
                "SELECT day, MIN(chat_end_ms), MAX(chat_end_ms), MIN(next_check_ms) FROM cases
                 WHERE widget = ?1 AND next_check_ms IS NOT NULL AND next_check_ms <= ?2
                   AND day < ?3
                 GROUP BY day, chat_end_ms >= ?5 ORDER BY 3 DESC, 1 DESC LIMIT ?4",
            )
            .map_err(&err)?;
        let rows: Vec<(String, i64, i64, i64)> = stmt
            .query_map(
                params![
                    widget,
                    now.timestamp_millis(),
                    before.to_string(),
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    split_at.map_or(i64::MIN, |t| t.timestamp_millis())
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        drop(stmt);
        drop(conn);
        rows.iter()
            .map(|(day, first, last, due)| {
                Ok(DueDay {
                    day: self.parse_day(day)?,
                    first_end: ms_to_time(*first),
                    last_end: ms_to_time(*last),
                    due_since: ms_to_time(*due),
                })
            })
            .collect()
    }

    pub(super) fn query_cases_on(
        &self,
        widget: &str,
        day: NaiveDate,
        chat_ends: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<u64, StateError> {
        let (from, to) = chat_ends.map_or((i64::MIN, i64::MAX), |(from, to)| {
            (from.timestamp_millis(), to.timestamp_millis())
        });
        let count: i64 = self
            .conn()
            .prepare_cached(
                "SELECT COUNT(*) FROM cases
                 WHERE widget = ?1 AND day = ?2 AND chat_end_ms BETWEEN ?3 AND ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![widget, day.to_string(), from, to], |r| r.get(0))
            })
            .map_err(self.err())?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub(super) fn query_due_cases(
        &self,
        widget: &str,
        due: &DueDay,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredCase>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT id, {RECORD_COLUMNS} FROM cases
                 WHERE widget = ?1 AND next_check_ms IS NOT NULL AND next_check_ms <= ?2 AND day = ?3
                   AND chat_end_ms BETWEEN ?4 AND ?5"
            ))
            .map_err(&err)?;
        let day = due.day;
        stmt.query_map(
            params![
                widget,
                now.timestamp_millis(),
                day.to_string(),
                due.first_end.timestamp_millis(),
                due.last_end.timestamp_millis()
            ],
            |row| {
                Ok(StoredCase {
                    id: row.get(0)?,
                    widget: widget.to_owned(),
                    day,
                    record: record_from_row(row, 1)?,
                })
            },
        )
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)
    }
}
