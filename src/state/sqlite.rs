//! The default state: one embedded SQLite file (WAL, `synchronous=FULL`) in the state
//! directory. Ids live on disk, not in memory; one transaction (one fsync) per page.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    CaseRecord, Change, ChangelogPosition, DueDay, StateError, StateStats, StateStore, StoredCase,
    WidgetProgress, WindowCursor,
};

use super::schema::{MIGRATIONS, SCHEMA_VERSION};

mod apply;
mod inspect;
mod rows;
use apply::apply_one;
pub use inspect::WidgetSummary;
use rows::{
    RECORD_COLUMNS, created_from_row, cursor_from_row, ms_to_time, query_in, record_from_row,
};

pub const STATE_FILE: &str = "casestream.sqlite";

/// Free pages handed back to the file system after a prune turn, at most (4 KiB each).
const VACUUM_PAGES: i64 = 16_384;

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the state file in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        super::ensure_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let store = Self {
            conn: Mutex::new(
                Connection::open(&path).map_err(|source| StateError::Sqlite {
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            path,
        };
        store.init()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // SQLite rolls back an unfinished transaction itself; the connection stays usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn init(&self) -> Result<(), StateError> {
        let conn = self.conn();
        let err = self.err();
        // Takes effect only on a new, empty file, and only before WAL mode writes its header:
        // pruned pages then go back to the disk. Older files reuse them instead.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(&err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&err)?;
        match version {
            0..SCHEMA_VERSION => {
                // A version 1 file keeps its size; pruned pages are reused, so it stops growing.
                let applied = usize::try_from(version).unwrap_or(0);
                // All steps and the version together, or none: a step that is not idempotent
                // (ADD COLUMN) never runs twice.
                let tx = conn.unchecked_transaction().map_err(&err)?;
                for step in &MIGRATIONS[applied..] {
                    tx.execute_batch(step).map_err(&err)?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(&err)?;
                tx.commit().map_err(&err)?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(StateError::Corrupt {
                    path: self.path.display().to_string(),
                    what: format!("schema version {other}, this casestream knows {SCHEMA_VERSION}"),
                });
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the batches `next` gives until it gives `None`, all in one transaction, as
    /// [`StateStore::apply`] does for one: an error of `next` or of a change rolls back every
    /// batch, so a long import is all or nothing without being held in memory.
    pub fn apply_all<B: AsRef<[Change]>, E: From<StateError>>(
        &self,
        mut next: impl FnMut() -> Result<Option<B>, E>,
        position: Option<&ChangelogPosition>,
    ) -> Result<(), E> {
        let mut conn = self.conn();
        let err = self.err();
        // Dropped without a commit (an error below), the transaction rolls back.
        let tx = conn.transaction().map_err(&err)?;
        let mut forgot_cases = false;
        while let Some(batch) = next()? {
            for change in batch.as_ref() {
                apply_one(&tx, change).map_err(&err)?;
                forgot_cases |= matches!(change, Change::CaseForgotten { .. });
            }
        }
        match position {
            Some(p) => {
                tx.prepare_cached(
                    "INSERT INTO changelog (id, topic, next_offset, applied_at_ms)
                     VALUES (0, ?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET topic = excluded.topic,
                         next_offset = excluded.next_offset,
                         applied_at_ms = excluded.applied_at_ms",
                )
                .map_err(&err)?
                .execute(params![
                    p.topic,
                    p.next_offset,
                    p.applied_at.timestamp_millis()
                ])
                .map_err(&err)?;
            }
            // A change the changelog does not have (at-least-once delivery): the store is no
            // longer a view of the changelog, and must never be taken for one.
            None => {
                tx.prepare_cached("DELETE FROM changelog")
                    .map_err(&err)?
                    .execute([])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        drop(conn);
        if forgot_cases {
            self.vacuum_some()?;
        }
        Ok(())
    }

    /// Hands some free pages back to the file system (a no-op on files made before schema
    /// version 2, which reuse them instead).
    fn vacuum_some(&self) -> Result<(), StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
            .map_err(&err)?;
        // Each step of this pragma frees one page: step it to the end.
        let mut rows = stmt.query([]).map_err(&err)?;
        while rows.next().map_err(&err)?.is_some() {}
        Ok(())
    }

    /// A widget's progress from its row's `since`, `caught_up_through`, `last_fresh_poll_ms`,
    /// `unread_spans` (JSON).
    fn progress(
        &self,
        since: &str,
        through: Option<&str>,
        fresh: Option<i64>,
        unread: Option<&str>,
    ) -> Result<WidgetProgress, StateError> {
        let unread = match unread {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| StateError::Corrupt {
                path: self.path.display().to_string(),
                what: format!("unread spans `{json}`: {e}"),
            })?,
        };
        Ok(WidgetProgress {
            since: self.parse_day(since)?,
            caught_up_through: through.map(|d| self.parse_day(d)).transpose()?,
            last_fresh_poll: fresh.map(ms_to_time),
            unread,
        })
    }

    fn parse_day(&self, text: &str) -> Result<NaiveDate, StateError> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| StateError::Corrupt {
            path: self.path.display().to_string(),
            what: format!("day `{text}`"),
        })
    }
}

/// The size of the file system holding `dir`, and the bytes free to an unprivileged writer.
fn volume(dir: &Path) -> Option<(u64, u64)> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some((
        fs.f_blocks.saturating_mul(fs.f_frsize),
        fs.f_bavail.saturating_mul(fs.f_frsize),
    ))
}

impl StateStore for SqliteStore {
    fn lookup(&self, ids: &[&str]) -> Result<HashMap<String, CaseRecord>, StateError> {
        query_in(
            &self.conn(),
            &format!("SELECT id, {RECORD_COLUMNS} FROM cases WHERE id IN"),
            &[],
            ids,
            |row| Ok((row.get::<_, String>(0)?, record_from_row(row, 1)?)),
        )
        .map_err(self.err())
    }

    fn apply(
        &self,
        changes: &[Change],
        position: Option<&ChangelogPosition>,
    ) -> Result<(), StateError> {
        if changes.is_empty() && position.is_none() {
            return Ok(());
        }
        let mut once = Some(changes);
        self.apply_all(|| Ok::<_, StateError>(once.take()), position)
    }

    fn changelog_position(&self) -> Result<Option<ChangelogPosition>, StateError> {
        self.conn()
            .query_row(
                "SELECT topic, next_offset, applied_at_ms FROM changelog WHERE id = 0",
                [],
                |row| {
                    Ok(ChangelogPosition {
                        topic: row.get(0)?,
                        next_offset: row.get(1)?,
                        applied_at: ms_to_time(row.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    fn clear(&self) -> Result<(), StateError> {
        self.conn()
            .execute_batch(
                "BEGIN; DELETE FROM cases; DELETE FROM widgets; DELETE FROM dead_letters;
                 DELETE FROM window_cursors; DELETE FROM changelog; COMMIT;",
            )
            .map_err(self.err())?;
        self.vacuum_some()
    }

    fn window_cursor(&self, widget: &str) -> Result<Option<WindowCursor>, StateError> {
        self.conn()
            .query_row(
                "SELECT widget, window, next_link, pages_done FROM window_cursors WHERE widget = ?1",
                [widget],
                cursor_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    fn known_dead_letters(
        &self,
        widget: &str,
        digests: &[&str],
    ) -> Result<HashSet<String>, StateError> {
        query_in(
            &self.conn(),
            "SELECT digest FROM dead_letters WHERE widget = ?1 AND digest IN",
            &[widget],
            digests,
            |row| row.get::<_, String>(0),
        )
        .map_err(self.err())
    }

    fn prunable_cases(
        &self,
        widget: &str,
        before: NaiveDate,
        max_cases: usize,
    ) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let err = self.err();
        // The days with a pending case come from the index of pending cases (a few recent
        // days), not from a scan of every day before `before`; the cases are then read in day
        // order, so a turn costs its bound, not the whole history, each time.
        let mut stmt = conn
            .prepare_cached(
                "SELECT id FROM cases WHERE widget = ?1 AND day < ?2 AND day NOT IN (
                     SELECT day FROM cases INDEXED BY cases_pending
                     WHERE widget = ?1 AND next_check_ms IS NOT NULL AND day < ?2)
                 ORDER BY day LIMIT ?3",
            )
            .map_err(&err)?;
        stmt.query_map(
            params![
                widget,
                before.to_string(),
                i64::try_from(max_cases).unwrap_or(i64::MAX)
            ],
            |r| r.get(0),
        )
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)
    }

    fn dead_letters_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, String, bool)>, StateError> {
        let conn = self.conn();
        let err = self.err();
        let mut stmt = conn
            .prepare_cached(
                "SELECT widget, digest, NOT EXISTS (SELECT 1 FROM dead_letters AS other
                     WHERE other.digest = mark.digest AND other.at_ms >= ?1)
                 FROM dead_letters AS mark WHERE at_ms < ?1",
            )
            .map_err(&err)?;
        stmt.query_map([before.timestamp_millis()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)
    }

    fn widget(&self, widget: &str) -> Result<Option<WidgetProgress>, StateError> {
        let conn = self.conn();
        type Row = (String, Option<String>, Option<i64>, Option<String>);
        let row: Option<Row> = conn
            .query_row(
                "SELECT since, caught_up_through, last_fresh_poll_ms, unread_spans FROM widgets
                 WHERE widget = ?1",
                [widget],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err())?;
        drop(conn);
        row.map(|(since, through, fresh, unread)| {
            self.progress(&since, through.as_deref(), fresh, unread.as_deref())
        })
        .transpose()
    }

    fn due_days(
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
                "SELECT day, MIN(chat_end_ms), MAX(chat_end_ms), MIN(next_check_ms),
                     MIN(COALESCE(created_ms, CAST(strftime('%s', day) AS INTEGER) * 1000))
                 FROM cases
                 WHERE widget = ?1 AND next_check_ms IS NOT NULL AND next_check_ms <= ?2
                   AND day < ?3
                 GROUP BY day, chat_end_ms >= ?5 ORDER BY 3 DESC, 1 DESC LIMIT ?4",
            )
            .map_err(&err)?;
        let rows: Vec<(String, i64, i64, i64, i64)> = stmt
            .query_map(
                params![
                    widget,
                    now.timestamp_millis(),
                    before.to_string(),
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    split_at.map_or(i64::MIN, |t| t.timestamp_millis())
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        drop(stmt);
        drop(conn);
        rows.iter()
            .map(|(day, first, last, due, created)| {
                Ok(DueDay {
                    day: self.parse_day(day)?,
                    first_created: ms_to_time(*created),
                    first_end: ms_to_time(*first),
                    last_end: ms_to_time(*last),
                    due_since: ms_to_time(*due),
                })
            })
            .collect()
    }

    fn cases_on(
        &self,
        widget: &str,
        day: NaiveDate,
        created: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<u64, StateError> {
        let (from, to) = created.map_or((i64::MIN, i64::MAX), |(from, to)| {
            (from.timestamp_millis(), to.timestamp_millis())
        });
        let count: i64 = self
            .conn()
            .prepare_cached(
                "SELECT COUNT(*) FROM cases
                 WHERE widget = ?1 AND day = ?2 AND created_ms >= ?3 AND created_ms < ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![widget, day.to_string(), from, to], |r| r.get(0))
            })
            .map_err(self.err())?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn due_cases(
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
                    created: created_from_row(row, 1, day)?,
                    record: record_from_row(row, 1)?,
                })
            },
        )
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)
    }
    fn stats(&self) -> Result<StateStats, StateError> {
        let conn = self.conn();
        let err = self.err();
        let (known, pending): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COUNT(next_check_ms) FROM cases",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&err)?;
        let page_count: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .map_err(&err)?;
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(&err)?;
        Ok(StateStats {
            known_cases: u64::try_from(known).unwrap_or_default(),
            pending_surveys: u64::try_from(pending).unwrap_or_default(),
            size_bytes: u64::try_from(page_count * page_size).unwrap_or_default(),
            volume: self.path.parent().and_then(volume),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::schema::{MIGRATIONS, SCHEMA};
    use crate::state::{DeadLetterMark, page_changes};

    fn t(ms: i64) -> DateTime<Utc> {
        ms_to_time(ms)
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn stored(id: &str, d: &str, next: Option<i64>) -> StoredCase {
        StoredCase {
            id: id.into(),
            widget: "w1".into(),
            day: day(d),
            created: t(500),
            record: CaseRecord {
                first_seen: t(1_000),
                chat_end: t(2_000),
                created_emitted: true,
                survey_digest: None,
                next_check: next.map(t),
                survey_emitted: None,
            },
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let mut a = stored("a", "2026-01-01", Some(5_000));
            store
                .commit_cases(&[a.clone(), stored("b", "2026-01-02", None)])
                .unwrap();
            a.record.survey_digest = Some("d1".into());
            store.commit_cases(&[a]).unwrap();
            store
                .set_widget(
                    "w1",
                    &WidgetProgress {
                        since: day("2026-01-01"),
                        caught_up_through: Some(day("2026-01-05")),
                        last_fresh_poll: Some(t(9_000)),
                        unread: Vec::new(),
                    },
                )
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let found = store.lookup(&["a", "b", "zzz"]).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["a"].survey_digest.as_deref(), Some("d1"));
        assert_eq!(found["a"].next_check, Some(t(5_000)));
        assert_eq!(found["b"].next_check, None);
        let progress = store.widget("w1").unwrap().unwrap();
        assert_eq!(progress.caught_up_through, Some(day("2026-01-05")));
        assert_eq!(store.widget("w2").unwrap(), None);
        let stats = store.stats().unwrap();
        assert_eq!((stats.known_cases, stats.pending_surveys), (2, 1));
        assert!(stats.size_bytes > 0);
    }

    #[test]
    fn due_days_and_cases() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit_cases(&[
                stored("a", "2026-01-01", Some(5_000)),
                stored("b", "2026-01-01", Some(50_000)),
                stored("c", "2026-01-02", Some(4_000)),
                stored("d", "2026-01-03", Some(1_000)),
                stored("e", "2026-01-01", None),
            ])
            .unwrap();
        let mut late = stored("f", "2026-01-01", Some(3_000));
        late.record.chat_end = t(2_500);
        // A longer chat: created first, ended last.
        late.created = t(100);
        store.commit_cases(&[late]).unwrap();
        let days = store
            .due_days("w1", t(6_000), day("2026-01-03"), None, 10)
            .unwrap();
        assert_eq!(
            days,
            [
                DueDay {
                    day: day("2026-01-01"),
                    first_created: t(100),
                    first_end: t(2_000),
                    last_end: t(2_500),
                    due_since: t(3_000)
                },
                DueDay {
                    day: day("2026-01-02"),
                    first_created: t(500),
                    first_end: t(2_000),
                    last_end: t(2_000),
                    due_since: t(4_000)
                }
            ]
        );
        // The youngest due cases first: with a limit of one, the day of the latest chat.
        let youngest = store
            .due_days("w1", t(6_000), day("2026-01-03"), None, 1)
            .unwrap();
        assert_eq!(youngest, days[..1]);
        assert!(
            store
                .due_days("w2", t(6_000), day("2026-01-03"), None, 10)
                .unwrap()
                .is_empty()
        );
        let mut due = store.due_cases("w1", &days[0], t(6_000)).unwrap();
        due.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(due.len(), 2);
        assert_eq!((due[0].id.as_str(), due[1].id.as_str()), ("a", "f"));
        // Split at a chat end: the later chats of a day are a day of their own, and each
        // one's due cases are those of its span.
        let split = store
            .due_days("w1", t(6_000), day("2026-01-03"), Some(t(2_200)), 10)
            .unwrap();
        let spans: Vec<_> = split
            .iter()
            .map(|d| (d.day, d.first_end, d.last_end))
            .collect();
        assert_eq!(
            spans,
            [
                (day("2026-01-01"), t(2_500), t(2_500)),
                (day("2026-01-02"), t(2_000), t(2_000)),
                (day("2026-01-01"), t(2_000), t(2_000)),
            ]
        );
        let ids = |due: &DueDay| -> Vec<String> {
            let mut ids: Vec<String> = store
                .due_cases("w1", due, t(6_000))
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            (ids(&split[0]), ids(&split[2])),
            (vec!["f".to_owned()], vec!["a".to_owned()])
        );
        // Every case of the day counts toward what reading it costs, due or not.
        assert_eq!(store.cases_on("w1", day("2026-01-01"), None).unwrap(), 4);
        assert_eq!(store.cases_on("w1", day("2026-01-04"), None).unwrap(), 0);
        assert_eq!(store.cases_on("w2", day("2026-01-01"), None).unwrap(), 0);
        // Those of some hours: the cases created within them.
        let hours = Some((t(100), t(500)));
        assert_eq!(store.cases_on("w1", day("2026-01-01"), hours).unwrap(), 1);
    }

    #[test]
    fn pruning_removes_whole_days_no_case_awaits_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit_cases(&[
                stored("a", "2026-01-01", None),
                stored("b", "2026-01-01", None),
                // Day 2 still has a case awaiting a survey: the whole day stays, or its
                // re-check would announce its other cases again.
                stored("c", "2026-01-02", None),
                stored("d", "2026-01-02", Some(5_000)),
                // Day 3 is not before the cut.
                stored("e", "2026-01-03", None),
            ])
            .unwrap();
        assert_eq!(store.prune_cases("w2", day("2026-01-03"), 10).unwrap(), 0);
        assert_eq!(store.prune_cases("w1", day("2026-01-03"), 10).unwrap(), 2);
        let left = store.lookup(&["a", "b", "c", "d", "e"]).unwrap();
        let mut ids: Vec<&str> = left.keys().map(String::as_str).collect();
        ids.sort();
        assert_eq!(ids, ["c", "d", "e"]);
    }

    /// A prune of many days' cases is cut in turns of at most the bound, oldest days first,
    /// each its own transaction; the turn after the last takes nothing.
    #[test]
    fn a_prune_turn_takes_at_most_its_bound_of_cases_and_the_next_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        // 30 days of 10 cases each, none awaiting a survey.
        let cases: Vec<StoredCase> = (1..=30)
            .flat_map(|d| {
                (0..10).map(move |i| stored(&format!("{d}-{i}"), &format!("2026-01-{d:02}"), None))
            })
            .collect();
        store.commit_cases(&cases).unwrap();
        let before = day("2026-02-01");
        // The first turn: 25 cases, the two oldest days and half of the third.
        let first = store.prunable_cases("w1", before, 25).unwrap();
        assert_eq!(first.len(), 25);
        assert!(
            first
                .iter()
                .all(|id| ["1-", "2-", "3-"].iter().any(|p| id.starts_with(p))),
            "{first:?}"
        );
        let mut turns = vec![store.prune_cases("w1", before, 25).unwrap()];
        while let Some(&last) = turns.last().filter(|n| **n > 0) {
            assert!(last <= 25);
            turns.push(store.prune_cases("w1", before, 25).unwrap());
        }
        assert_eq!(turns, [25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 0]);
        assert_eq!(store.stats().unwrap().known_cases, 0);
    }

    fn mark(widget: &str, digest: &str, at_ms: i64) -> Change {
        Change::DeadLetter(DeadLetterMark {
            digest: digest.into(),
            widget: widget.into(),
            case_id: None,
            reason_code: "missing_id".into(),
            at: t(at_ms),
        })
    }

    /// A mark is per (widget, input): the same bytes of another widget are not known, and
    /// each widget's mark is forgotten on its own.
    #[test]
    fn dead_letters_are_marked_per_widget_and_input() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .apply(&[mark("w1", "x", 1_000), mark("w2", "x", 3_000)], None)
            .unwrap();
        assert_eq!(
            store.known_dead_letters("w1", &["x", "y"]).unwrap().len(),
            1
        );
        assert!(store.known_dead_letters("w3", &["x"]).unwrap().is_empty());
        // The same mark again (a page sent twice) changes nothing.
        store.apply(&[mark("w1", "x", 2_000)], None).unwrap();
        assert_eq!(
            store.dead_letters_before(t(2_000)).unwrap(),
            [("w1".to_owned(), "x".to_owned(), false)]
        );
        assert_eq!(store.prune_dead_letters(t(500)).unwrap(), 0);
        assert_eq!(store.prune_dead_letters(t(2_000)).unwrap(), 1);
        assert!(store.known_dead_letters("w1", &["x"]).unwrap().is_empty());
        assert_eq!(store.known_dead_letters("w2", &["x"]).unwrap().len(), 1);
        assert_eq!(
            store.dead_letters_before(t(4_000)).unwrap(),
            [("w2".to_owned(), "x".to_owned(), true)]
        );
        assert_eq!(store.prune_dead_letters(t(4_000)).unwrap(), 1);
        assert!(store.is_empty().unwrap());
    }

    /// A version 5 file: its cases are taken as created at the start of their day, and its
    /// dead-letter marks keep the widget they name.
    #[test]
    fn a_version_5_file_gets_creation_times_and_marks_per_widget() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(STATE_FILE)).unwrap();
            for step in &MIGRATIONS[..5] {
                conn.execute_batch(step).unwrap();
            }
            conn.execute_batch(
                "INSERT INTO cases (id, widget, day, first_seen_ms, chat_end_ms, created_emitted,
                     next_check_ms) VALUES ('a', 'w1', '2026-01-02', 0, 0, 1, 5);
                 INSERT INTO dead_letters (digest, widget, reason_code, at_ms)
                     VALUES ('x', 'w1', 'missing_id', 7);",
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 5).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let midnight = "2026-01-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(store.case("a").unwrap().unwrap().created, midnight);
        let due = store
            .due_days("w1", t(10), day("2026-01-03"), None, 10)
            .unwrap();
        assert_eq!(due[0].first_created, midnight);
        assert_eq!(store.known_dead_letters("w1", &["x"]).unwrap().len(), 1);
        assert!(store.known_dead_letters("w2", &["x"]).unwrap().is_empty());
        store.apply(&[mark("w2", "x", 8)], None).unwrap();
        assert_eq!(store.known_dead_letters("w2", &["x"]).unwrap().len(), 1);
    }

    #[test]
    fn a_version_1_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(STATE_FILE)).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit_cases(&[stored("a", "2026-01-01", None)])
            .unwrap();
        assert_eq!(store.prune_cases("w1", day("2026-01-02"), 10).unwrap(), 1);
        // Version 3's table is there too.
        assert_eq!(store.window_cursor("w1").unwrap(), None);
    }

    #[test]
    fn a_window_cursor_is_kept_with_its_page_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let cursor = |pages_done| WindowCursor {
            widget: "w1".into(),
            window: "https://api/logs?widgetId=w1&start=2026-01-01".into(),
            next: format!("https://api/logs?next=p{pages_done}"),
            pages_done,
        };
        store
            .apply(
                &page_changes(
                    vec![stored("a", "2026-01-01", None)],
                    vec![],
                    Some(cursor(1)),
                ),
                None,
            )
            .unwrap();
        store.apply(&[Change::Cursor(cursor(2))], None).unwrap();
        assert_eq!(store.window_cursor("w1").unwrap(), Some(cursor(2)));
        assert_eq!(store.window_cursor("w2").unwrap(), None);
        store.clear_window_cursor("w1").unwrap();
        assert_eq!(store.window_cursor("w1").unwrap(), None);
    }

    #[test]
    fn the_changelog_position_commits_with_its_changes_and_clear_forgets_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.changelog_position().unwrap(), None);
        let position = ChangelogPosition {
            topic: "t.state".into(),
            next_offset: 42,
            applied_at: t(5_000),
        };
        let case = stored("c1", "2026-11-01", None);
        store
            .apply(&[Change::Case(case.clone())], Some(&position))
            .unwrap();
        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(reopened.changelog_position().unwrap(), Some(position));
        assert_eq!(reopened.lookup(&["c1"]).unwrap()["c1"], case.record);
        reopened
            .apply(&[Change::CaseForgotten { id: "c1".into() }], None)
            .unwrap();
        assert!(reopened.lookup(&["c1"]).unwrap().is_empty());
        // A write the changelog does not have: no longer a view of it.
        reopened.apply(&[Change::Case(case)], None).unwrap();
        assert_eq!(reopened.changelog_position().unwrap(), None);
        reopened.clear().unwrap();
        assert_eq!(reopened.stats().unwrap().known_cases, 0);
        assert_eq!(reopened.changelog_position().unwrap(), None);
    }

    #[test]
    fn apply_all_is_all_or_nothing_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut batches = vec![
            Ok(vec![Change::Case(stored("a", "2026-01-01", None))]),
            Ok(vec![Change::Case(stored("b", "2026-01-02", None))]),
            Err(StateError::Missing {
                path: "the third batch".into(),
            }),
        ]
        .into_iter();
        let failed = store.apply_all(|| batches.next().transpose(), None);
        assert!(failed.is_err());
        assert_eq!(
            store.stats().unwrap().known_cases,
            0,
            "the batches before the failing one rolled back"
        );
        let mut batches = vec![
            vec![Change::Case(stored("a", "2026-01-01", None))],
            vec![Change::Case(stored("b", "2026-01-02", None))],
        ]
        .into_iter();
        store
            .apply_all(|| Ok::<_, StateError>(batches.next()), None)
            .unwrap();
        assert_eq!(store.stats().unwrap().known_cases, 2);
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(STATE_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
