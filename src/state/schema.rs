//! The state file's schema, one migration step per version.

/// The schema, one step per version: a file at version `v` has had the first `v` steps
/// applied. They run in one transaction with the version bump.
pub(super) const MIGRATIONS: [&str; 7] = [
    SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7,
];

/// The length of [`MIGRATIONS`]; an unknown (newer) version refuses to open, older ones are
/// migrated forward.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cases (
    id              TEXT PRIMARY KEY,
    widget          TEXT NOT NULL,
    day             TEXT NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    chat_end_ms     INTEGER NOT NULL,
    created_emitted INTEGER NOT NULL,
    survey_digest   TEXT,
    next_check_ms   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cases_pending
    ON cases (widget, next_check_ms) WHERE next_check_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS widgets (
    widget               TEXT PRIMARY KEY,
    since                TEXT NOT NULL,
    caught_up_through    TEXT,
    last_fresh_poll_ms   INTEGER
);
";

/// Version 2: days can be pruned whole (an index by widget and day that also answers "any
/// case still pending?"), and dead letters are remembered by digest.
const SCHEMA_V2: &str = "
CREATE INDEX IF NOT EXISTS cases_by_day ON cases (widget, day, next_check_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    digest       TEXT PRIMARY KEY,
    widget       TEXT NOT NULL,
    case_id      TEXT,
    reason_code  TEXT NOT NULL,
    at_ms        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_by_age ON dead_letters (at_ms);
";

/// Version 3: a window interrupted part-way keeps where it goes on.
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS window_cursors (
    widget      TEXT PRIMARY KEY,
    window      TEXT NOT NULL,
    next_link   TEXT NOT NULL,
    pages_done  INTEGER NOT NULL
);
";

/// Version 4: how far the changelog (exactly-once delivery) was applied to this store.
const SCHEMA_V4: &str = "
CREATE TABLE IF NOT EXISTS changelog (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    topic       TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL
);
";

/// Version 5: when a case's survey event was published (`casestream state case`). Not
/// idempotent: migrations run in one transaction with the version bump.
const SCHEMA_V5: &str = "
ALTER TABLE cases ADD COLUMN survey_emitted_ms INTEGER;
";

/// Version 6: each case's creation time (a `datetimes` re-check reads from the earliest one of
/// its cases; chat ends say nothing of it); dead letters are remembered per (widget, input),
/// so the same bytes served by two widgets are two dead letters. Existing cases are taken as
/// created at the start of their day (the earliest they can be: a re-check reads a little more
/// of the day, never less). Existing marks keep meaning "this input was sent for the widget
/// the mark names"; another widget that met the same bytes was left without its dead letter,
/// and now gets it at its next read of that day. Not idempotent (ADD COLUMN).
const SCHEMA_V6: &str = "
ALTER TABLE cases ADD COLUMN created_ms INTEGER;
UPDATE cases SET created_ms = CAST(strftime('%s', day) AS INTEGER) * 1000;
CREATE TABLE dead_letters_by_widget (
    widget       TEXT NOT NULL,
    digest       TEXT NOT NULL,
    case_id      TEXT,
    reason_code  TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    PRIMARY KEY (widget, digest)
) WITHOUT ROWID;
INSERT INTO dead_letters_by_widget (widget, digest, case_id, reason_code, at_ms)
    SELECT widget, digest, case_id, reason_code, at_ms FROM dead_letters;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_by_widget RENAME TO dead_letters;
CREATE INDEX dead_letters_by_age ON dead_letters (at_ms);
CREATE INDEX dead_letters_by_digest ON dead_letters (digest);
";

/// Version 7: the parts of a widget's timeline the Logs API would not serve (JSON, absent when
/// none), read around and tried again.
const SCHEMA_V7: &str = "
ALTER TABLE widgets ADD COLUMN unread_spans TEXT;
";
