//! Rows of the state's tables as values, and the queries shared by the store's modules.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, params_from_iter};

use crate::state::{CaseRecord, WindowCursor, start_of};

pub(super) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A window cursor from `widget, window, next_link, pages_done`.
pub(super) fn cursor_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WindowCursor> {
    Ok(WindowCursor {
        widget: row.get(0)?,
        window: row.get(1)?,
        next: row.get(2)?,
        pages_done: usize::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
    })
}

/// The columns of a [`CaseRecord`], in the order [`record_from_row`] reads them, then the
/// case's creation time ([`created_from_row`]).
pub(super) const RECORD_COLUMNS: &str = "first_seen_ms, chat_end_ms, created_emitted, survey_digest, \
                              next_check_ms, survey_emitted_ms, created_ms";

/// The creation time of a case of `day` whose [`RECORD_COLUMNS`] start at `offset`; the start
/// of its day where none is kept.
pub(super) fn created_from_row(
    row: &rusqlite::Row<'_>,
    offset: usize,
    day: NaiveDate,
) -> rusqlite::Result<DateTime<Utc>> {
    Ok(row
        .get::<_, Option<i64>>(offset + 6)?
        .map_or_else(|| start_of(day), ms_to_time))
}

pub(super) fn record_from_row(
    row: &rusqlite::Row<'_>,
    offset: usize,
) -> rusqlite::Result<CaseRecord> {
    Ok(CaseRecord {
        first_seen: ms_to_time(row.get(offset)?),
        chat_end: ms_to_time(row.get(offset + 1)?),
        created_emitted: row.get(offset + 2)?,
        survey_digest: row.get(offset + 3)?,
        next_check: row.get::<_, Option<i64>>(offset + 4)?.map(ms_to_time),
        survey_emitted: row.get::<_, Option<i64>>(offset + 5)?.map(ms_to_time),
    })
}

/// Runs `select` (ending in `IN`) over `keys`, in chunks far below SQLite's parameter cap,
/// with `leading` bound first (as `?1`, `?2`...: the keys' placeholders follow them), and
/// collects what `row` makes of each result row.
pub(super) fn query_in<T, C: FromIterator<T>>(
    conn: &Connection,
    select: &str,
    leading: &[&str],
    keys: &[&str],
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<C> {
    let mut found = Vec::new();
    for chunk in keys.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let mut stmt = conn.prepare_cached(&format!("{select} ({placeholders})"))?;
        let params = leading.iter().chain(chunk.iter());
        for item in stmt.query_map(params_from_iter(params), &row)? {
            found.push(item?);
        }
    }
    Ok(found.into_iter().collect())
}
