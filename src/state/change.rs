//! A change of the state, as one record of the changelog: every write of the state is a list
//! of these, applied to the local store in one transaction and, in exactly-once delivery,
//! published first to the compacted changelog topic in the page's Kafka transaction.
//!
//! A record's key names what it is about (one case, one widget's progress, one widget's
//! window cursor, one widget's dead letter of one input), so compaction keeps the latest
//! record per key; a forgotten thing is a tombstone (no value).
//!
//! Dead letters were once keyed by the input's digest alone (`dead/{digest}`); such records
//! still read: a mark says which widget it was sent for, and a tombstone forgets the input's
//! marks of every widget (there was one at most).

use super::{DeadLetterMark, StoredCase, WidgetProgress, WindowCursor};

const CASE: &str = "case/";
const WIDGET: &str = "widget/";
const CURSOR: &str = "cursor/";
const DEAD_LETTER: &str = "dead/";

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// What is known of a case now.
    Case(StoredCase),
    /// A case no decision needs any more (pruned).
    CaseForgotten {
        id: String,
    },
    Widget {
        widget: String,
        progress: WidgetProgress,
    },
    /// The widget's interrupted window goes on here.
    Cursor(WindowCursor),
    /// The widget's window was read to its end (or its cursor refused).
    CursorCleared {
        widget: String,
    },
    DeadLetter(DeadLetterMark),
    DeadLetterForgotten {
        /// `None`: the record of the older key, by digest alone (every widget's mark of it).
        widget: Option<String>,
        digest: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("changelog record with key `{key}`: {what}")]
    Bad { key: String, what: String },
}

/// The changes one page commits: its cases, its dead letters and, when the window goes on,
/// its cursor.
pub fn page_changes(
    cases: Vec<StoredCase>,
    dead_letters: Vec<DeadLetterMark>,
    cursor: Option<WindowCursor>,
) -> Vec<Change> {
    cases
        .into_iter()
        .map(Change::Case)
        .chain(dead_letters.into_iter().map(Change::DeadLetter))
        .chain(cursor.map(Change::Cursor))
        .collect()
}

/// The changes that forget dead-letter marks, given as (widget, digest, whether every mark of
/// that digest is among them): each mark's tombstone, then, once an input has no mark left,
/// the tombstone of its record under the older key, so a compacted changelog written before
/// marks were per widget does not keep that record for ever.
pub fn forget_dead_letters(marks: Vec<(String, String, bool)>) -> Vec<Change> {
    let mut last_of_digest = Vec::new();
    let mut changes: Vec<Change> = marks
        .into_iter()
        .map(|(widget, digest, last)| {
            if last && !last_of_digest.contains(&digest) {
                last_of_digest.push(digest.clone());
            }
            Change::DeadLetterForgotten {
                widget: Some(widget),
                digest,
            }
        })
        .collect();
    changes.extend(
        last_of_digest
            .into_iter()
            .map(|digest| Change::DeadLetterForgotten {
                widget: None,
                digest,
            }),
    );
    changes
}

impl Change {
    /// The record's key.
    pub fn key(&self) -> String {
        match self {
            Change::Case(case) => format!("{CASE}{}", case.id),
            Change::CaseForgotten { id } => format!("{CASE}{id}"),
            Change::Widget { widget, .. } => format!("{WIDGET}{widget}"),
            Change::CursorCleared { widget } => format!("{CURSOR}{widget}"),
            Change::Cursor(cursor) => format!("{CURSOR}{}", cursor.widget),
            Change::DeadLetter(mark) => format!("{DEAD_LETTER}{}/{}", mark.widget, mark.digest),
            Change::DeadLetterForgotten {
                widget: Some(widget),
                digest,
            } => format!("{DEAD_LETTER}{widget}/{digest}"),
            Change::DeadLetterForgotten {
                widget: None,
                digest,
            } => format!("{DEAD_LETTER}{digest}"),
        }
    }

    /// The record's value as JSON; `None` is a tombstone.
    pub fn value(&self) -> Option<Vec<u8>> {
        match self {
            Change::Case(case) => json(case),
            Change::Widget { progress, .. } => json(progress),
            Change::Cursor(cursor) => json(cursor),
            Change::DeadLetter(mark) => json(mark),
            Change::CaseForgotten { .. }
            | Change::CursorCleared { .. }
            | Change::DeadLetterForgotten { .. } => None,
        }
    }

    /// The change a changelog record holds.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Change, ChangeError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let bad = |what: String| ChangeError::Bad {
            key: key.clone(),
            what,
        };
        fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
            serde_json::from_slice(v).map_err(|e| e.to_string())
        }
        let (kind, name) = [CASE, WIDGET, CURSOR, DEAD_LETTER]
            .into_iter()
            .find_map(|prefix| {
                key.strip_prefix(prefix)
                    .map(|name| (prefix, name.to_owned()))
            })
            .ok_or_else(|| bad("unknown key kind".into()))?;
        let change = match (kind, value) {
            (CASE, Some(v)) => Change::Case(parse(v).map_err(&bad)?),
            (CASE, None) => Change::CaseForgotten { id: name },
            (WIDGET, Some(v)) => Change::Widget {
                widget: name,
                progress: parse(v).map_err(&bad)?,
            },
            (WIDGET, None) => return Err(bad("a widget's progress is never forgotten".into())),
            (CURSOR, Some(v)) => Change::Cursor(parse(v).map_err(&bad)?),
            (CURSOR, None) => Change::CursorCleared { widget: name },
            (_, Some(v)) => {
                let mark: DeadLetterMark = parse(v).map_err(&bad)?;
                // The older key, by digest alone (a digest is hex: never a `/`).
                if !name.contains('/') && mark.digest == name {
                    return Ok(Change::DeadLetter(mark));
                }
                Change::DeadLetter(mark)
            }
            (_, None) => match name.rsplit_once('/') {
                Some((widget, digest)) => Change::DeadLetterForgotten {
                    widget: Some(widget.to_owned()),
                    digest: digest.to_owned(),
                },
                None => Change::DeadLetterForgotten {
                    widget: None,
                    digest: name,
                },
            },
        };
        if change.key() != key {
            return Err(bad(format!("its value is about `{}`", change.key())));
        }
        Ok(change)
    }
}

/// A value as JSON: these plain structs (no maps, no non-string keys) always serialise.
fn json<T: serde::Serialize>(value: &T) -> Option<Vec<u8>> {
    Some(
        serde_json::to_vec(value)
            .unwrap_or_else(|e| unreachable!("state records always serialise: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};

    use super::*;
    use crate::state::CaseRecord;

    fn every_kind() -> Vec<Change> {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        vec![
            Change::Case(StoredCase {
                id: "c/1".into(),
                widget: "w1".into(),
                day,
                created: t - chrono::Duration::hours(2),
                record: CaseRecord {
                    first_seen: t,
                    chat_end: t,
                    created_emitted: true,
                    survey_digest: Some("abc".into()),
                    next_check: None,
                    survey_emitted: None,
                },
            }),
            Change::CaseForgotten { id: "c/1".into() },
            Change::Widget {
                widget: "w1".into(),
                progress: WidgetProgress {
                    since: day,
                    caught_up_through: Some(day),
                    last_fresh_poll: Some(t),
                    unread: Vec::new(),
                },
            },
            Change::Cursor(WindowCursor {
                widget: "w1".into(),
                window: "http://x/logs?widgetId=w1".into(),
                next: "http://x/logs?next=2".into(),
                pages_done: 3,
            }),
            Change::CursorCleared {
                widget: "w1".into(),
            },
            Change::DeadLetter(DeadLetterMark {
                digest: "d1".into(),
                widget: "w1".into(),
                case_id: None,
                reason_code: "bad_json".into(),
                at: t,
            }),
            Change::DeadLetterForgotten {
                widget: Some("w1".into()),
                digest: "d1".into(),
            },
            Change::DeadLetterForgotten {
                widget: None,
                digest: "d1".into(),
            },
        ]
    }

    #[test]
    fn every_change_survives_its_record() {
        for change in every_kind() {
            let (key, value) = (change.key(), change.value());
            let back = Change::decode(key.as_bytes(), value.as_deref()).unwrap();
            assert_eq!(back, change, "key {key}");
        }
    }

    #[test]
    fn a_record_whose_value_is_about_another_key_is_refused() {
        let change = &every_kind()[0];
        let error = Change::decode(b"case/other", change.value().as_deref()).unwrap_err();
        assert!(error.to_string().contains("case/other"), "{error}");
        assert!(Change::decode(b"nonsense", None).is_err());
        assert!(Change::decode(b"widget/w1", None).is_err());
        assert!(Change::decode(b"case/x", Some(b"{not json")).is_err());
    }

    /// Records written before creation times were kept, and dead letters keyed by digest
    /// alone, still read: a case without `created` is taken as created at the start of its
    /// day (which only widens a re-check's window), an old mark keeps its widget, an old
    /// tombstone forgets the input for every widget.
    #[test]
    fn records_of_older_versions_still_read() {
        let old_case = br#"{"id":"c1","widget":"w1","day":"2026-11-24","record":{
            "first_seen":"2026-11-24T10:00:00Z","chat_end":"2026-11-24T10:00:00Z",
            "created_emitted":true,"survey_digest":null,"next_check":null}}"#;
        let Change::Case(case) = Change::decode(b"case/c1", Some(old_case)).unwrap() else {
            panic!("a case record is a case");
        };
        assert_eq!(
            case.created,
            Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap()
        );

        let old_mark = br#"{"digest":"d1","widget":"w1","case_id":null,
            "reason_code":"missing_id","at":"2026-11-24T10:00:00Z"}"#;
        let Change::DeadLetter(mark) = Change::decode(b"dead/d1", Some(old_mark)).unwrap() else {
            panic!("a dead-letter record is a mark");
        };
        assert_eq!((mark.widget.as_str(), mark.digest.as_str()), ("w1", "d1"));
        // Under the new key, the same mark; a mark about another input is refused.
        assert!(Change::decode(b"dead/w1/d1", Some(old_mark)).is_ok());
        assert!(Change::decode(b"dead/d2", Some(old_mark)).is_err());
        assert!(Change::decode(b"dead/w2/d1", Some(old_mark)).is_err());
        assert_eq!(
            Change::decode(b"dead/d1", None).unwrap(),
            Change::DeadLetterForgotten {
                widget: None,
                digest: "d1".into()
            }
        );
    }

    /// Forgetting marks: one tombstone per mark, and the older key's tombstone once an input
    /// has no mark left.
    #[test]
    fn forgetting_dead_letters_clears_the_older_key_once_no_mark_is_left() {
        let changes = forget_dead_letters(vec![
            ("w1".into(), "d1".into(), true),
            ("w2".into(), "d1".into(), true),
            ("w1".into(), "d2".into(), false),
        ]);
        let keys: Vec<String> = changes.iter().map(Change::key).collect();
        assert_eq!(keys, ["dead/w1/d1", "dead/w2/d1", "dead/w1/d2", "dead/d1"]);
        assert!(changes.iter().all(|c| c.value().is_none()));
    }
}
