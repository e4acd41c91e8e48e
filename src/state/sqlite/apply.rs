//! One [`Change`] as SQL, inside the caller's transaction.

use rusqlite::params;

use crate::state::Change;

/// One change, inside the caller's transaction.
pub(super) fn apply_one(tx: &rusqlite::Transaction<'_>, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Case(case) => {
            let r = &case.record;
            tx.prepare_cached(
                "INSERT INTO cases (id, widget, day, first_seen_ms, chat_end_ms,
                     created_emitted, survey_digest, next_check_ms, survey_emitted_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET
                     widget = excluded.widget, day = excluded.day,
                     created_ms = excluded.created_ms,
                     chat_end_ms = excluded.chat_end_ms,
                     created_emitted = excluded.created_emitted,
                     survey_digest = excluded.survey_digest,
                     survey_emitted_ms = excluded.survey_emitted_ms,
                     next_check_ms = excluded.next_check_ms",
            )?
            .execute(params![
                case.id,
                case.widget,
                case.day.to_string(),
                r.first_seen.timestamp_millis(),
                r.chat_end.timestamp_millis(),
                r.created_emitted,
                r.survey_digest,
                r.next_check.map(|t| t.timestamp_millis()),
                r.survey_emitted.map(|t| t.timestamp_millis()),
                case.created.timestamp_millis(),
            ])?;
        }
        Change::CaseForgotten { id } => {
            tx.prepare_cached("DELETE FROM cases WHERE id = ?1")?
                .execute([id])?;
        }
        Change::Widget { widget, progress } => {
            tx.prepare_cached(
                "INSERT INTO widgets (widget, since, caught_up_through, last_fresh_poll_ms,
                     unread_spans)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (widget) DO UPDATE SET since = excluded.since,
                     caught_up_through = excluded.caught_up_through,
                     last_fresh_poll_ms = excluded.last_fresh_poll_ms,
                     unread_spans = excluded.unread_spans",
            )?
            .execute(params![
                widget,
                progress.since.to_string(),
                progress.caught_up_through.map(|d| d.to_string()),
                progress.last_fresh_poll.map(|t| t.timestamp_millis()),
                // Plain data: serialising it cannot fail.
                (!progress.unread.is_empty())
                    .then(|| serde_json::to_string(&progress.unread).unwrap_or_default()),
            ])?;
        }
        Change::Cursor(c) => {
            tx.prepare_cached(
                "INSERT INTO window_cursors (widget, window, next_link, pages_done)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (widget) DO UPDATE SET window = excluded.window,
                     next_link = excluded.next_link, pages_done = excluded.pages_done",
            )?
            .execute(params![
                c.widget,
                c.window,
                c.next,
                i64::try_from(c.pages_done).unwrap_or(i64::MAX)
            ])?;
        }
        Change::CursorCleared { widget } => {
            tx.prepare_cached("DELETE FROM window_cursors WHERE widget = ?1")?
                .execute([widget])?;
        }
        Change::DeadLetter(mark) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO dead_letters (digest, widget, case_id, reason_code, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                mark.digest,
                mark.widget,
                mark.case_id,
                mark.reason_code,
                mark.at.timestamp_millis(),
            ])?;
        }
        Change::DeadLetterForgotten {
            widget: Some(widget),
            digest,
        } => {
            tx.prepare_cached("DELETE FROM dead_letters WHERE widget = ?1 AND digest = ?2")?
                .execute([widget, digest])?;
        }
        // The older key's tombstone: the input's mark, whichever widget it names.
        Change::DeadLetterForgotten {
            widget: None,
            digest,
        } => {
            tx.prepare_cached("DELETE FROM dead_letters WHERE digest = ?1")?
                .execute([digest])?;
        }
    }
    Ok(())
}
