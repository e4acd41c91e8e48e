//! One page's decisions, pure: the page's cases, what is known of them and `now` in; the
//! records to publish and the state to commit once Kafka has them out.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::tracker::{self, TrackerSettings};
use crate::events::{CloudEvent, EventKind};
use crate::sink::dead_letter::sha256_hex;
use crate::sink::{DeadLetter, Outgoing};
use crate::snapengage::{Case, CaseError, Page};
use crate::state::{CaseRecord, DeadLetterMark, StoredCase, WindowCursor, start_of};

/// A page's cases as read: the usable ones, once each, and the unusable ones not yet
/// dead-lettered in this window.
#[derive(Debug)]
pub struct PageCases {
    pub widget: String,
    /// Cases received, repeats and unusable ones included.
    pub received: usize,
    /// In page order; a case repeated within the page counts once, the later copy (the newer).
    pub cases: Vec<Case>,
    /// (SHA-256 of the raw bytes, why the case cannot be read).
    pub unusable: Vec<(String, CaseError)>,
}

impl PageCases {
    /// Reads a page. `dead_in_window` holds the digests of bad inputs already met in this
    /// window; a bad input met again is left out, and a new one is added to it.
    pub fn read(page: Page, dead_in_window: &mut HashSet<String>) -> Self {
        let received = page.cases.len();
        let mut cases: Vec<Case> = Vec::with_capacity(received);
        let mut position: HashMap<String, usize> = HashMap::with_capacity(received);
        let mut unusable = Vec::new();
        for raw in page.cases {
            match Case::from_raw(raw) {
                Ok(case) => match position.get(case.id()) {
                    Some(&i) => cases[i] = case,
                    None => {
                        position.insert(case.id().to_owned(), cases.len());
                        cases.push(case);
                    }
                },
                Err(problem) => {
                    let digest = sha256_hex(problem.raw.get().as_bytes());
                    if dead_in_window.insert(digest.clone()) {
                        unusable.push((digest, problem));
                    }
                }
            }
        }
        Self {
            widget: page.widget_id,
            received,
            cases,
            unusable,
        }
    }

    /// The ids to look up in the state.
    pub fn ids(&self) -> Vec<String> {
        self.cases.iter().map(|c| c.id().to_owned()).collect()
    }

    /// The digests of the bad inputs, to ask the state which were dead-lettered before.
    pub fn digests(&self) -> Vec<String> {
        self.unusable.iter().map(|(d, _)| d.clone()).collect()
    }
}

/// What is known of a page's cases: the state's records (overlaid with those of pages still
/// in flight) and the bad inputs dead-lettered before for the page's widget.
#[derive(Debug, Default)]
pub struct Known {
    pub records: HashMap<String, CaseRecord>,
    pub dead_letters: HashSet<String>,
}

/// What the decisions need besides the page.
#[derive(Clone, Copy, Debug)]
pub struct PageContext<'a> {
    pub org_id: &'a str,
    pub tracker: &'a TrackerSettings,
    /// The largest record the sink takes: a dead letter's body is cut to fit.
    pub max_record_bytes: usize,
}

/// What one page decided: records for Kafka, then state to commit.
#[derive(Debug)]
pub struct PageBatch {
    /// In order: dead letters, then each case's events (created before survey).
    pub outgoing: Vec<Outgoing>,
    pub changed: Vec<StoredCase>,
    pub dead_letters: Vec<DeadLetterMark>,
    /// Where the window goes on after this page, saved with its commit.
    pub cursor: Option<WindowCursor>,
    pub created: u64,
    pub surveys: u64,
}

/// Decides one page at `now`.
pub fn decide(page: PageCases, known: &Known, now: DateTime<Utc>, ctx: PageContext) -> PageBatch {
    let widget = page.widget;
    let mut batch = PageBatch {
        outgoing: Vec::new(),
        changed: Vec::new(),
        dead_letters: Vec::new(),
        cursor: None,
        created: 0,
        surveys: 0,
    };
    // A bad input goes to the dead-letter topic once per widget, not on every read of its day;
    // a changed one (other bytes) is a new input, and so are the same bytes of another widget.
    for (digest, problem) in page.unusable {
        if known.dead_letters.contains(&digest) {
            continue;
        }
        let code = problem.reason.code();
        let case_id = problem.id_text();
        batch.dead_letters.push(DeadLetterMark {
            digest,
            widget: widget.clone(),
            case_id: case_id.clone(),
            reason_code: code.to_owned(),
            at: now,
        });
        batch
            .outgoing
            .push(Outgoing::DeadLetter(DeadLetter::unusable_case(
                ctx.org_id,
                &widget,
                case_id,
                code,
                problem.reason.to_string(),
                problem.raw.get().as_bytes(),
                ctx.max_record_bytes,
            )));
    }
    for case in &page.cases {
        let before = known.records.get(case.id());
        let decision = tracker::observe(case, before, now, ctx.tracker);
        for kind in &decision.events {
            match kind {
                EventKind::Created => batch.created += 1,
                EventKind::Survey { .. } => batch.surveys += 1,
            }
            batch.outgoing.push(Outgoing::Event(CloudEvent::for_case(
                ctx.org_id, &widget, case, kind, now,
            )));
        }
        if before != Some(&decision.record) {
            let day = case
                .created_at()
                .unwrap_or(decision.record.chat_end)
                .date_naive();
            batch.changed.push(StoredCase {
                id: case.id().to_owned(),
                widget: widget.clone(),
                day,
                created: case.created_at().unwrap_or_else(|| start_of(day)),
                record: decision.record,
            });
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{TYPE_CREATED, TYPE_SURVEY};
    use serde_json::value::RawValue;
    use std::time::Duration;

    const SAMPLE: &str = include_str!("../../tests/fixtures/logs-api-sample.json");
    const TRACKER: TrackerSettings = TrackerSettings {
        settle: Duration::from_secs(300),
        horizon: Duration::from_secs(7 * 86_400),
    };

    fn ctx() -> PageContext<'static> {
        PageContext {
            org_id: "org",
            tracker: &TRACKER,
            max_record_bytes: 1_000_000,
        }
    }

    fn page(cases: Vec<Box<RawValue>>) -> Page {
        Page {
            widget_id: "w".into(),
            index: 0,
            cases,
            next: None,
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn sample_cases() -> Vec<Box<RawValue>> {
        let response: crate::snapengage::LogsResponse = serde_json::from_str(SAMPLE).unwrap();
        response.cases
    }

    fn event_types(batch: &PageBatch) -> Vec<(&str, String)> {
        batch
            .outgoing
            .iter()
            .map(|o| match o {
                Outgoing::Event(e) => (e.event_type.name(), e.subject.clone()),
                Outgoing::DeadLetter(d) => ("dead", d.reason_code.to_owned()),
            })
            .collect()
    }

    /// The documented sample, seen for the first time: one created event per case, keyed by
    /// its id, and one record to commit per case.
    #[test]
    fn the_sample_page_seen_first_announces_every_case_once() {
        let cases = sample_cases();
        let ids: Vec<String> = cases
            .iter()
            .map(|c| Case::from_raw(c.clone()).unwrap().id().to_owned())
            .collect();
        assert!(!ids.is_empty());
        let read = PageCases::read(page(cases), &mut HashSet::new());
        assert_eq!(read.ids(), ids);
        let now = Utc::now();
        let batch = decide(read, &Known::default(), now, ctx());
        let created: Vec<String> = event_types(&batch)
            .into_iter()
            .filter(|(t, _)| *t == TYPE_CREATED)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(created, ids);
        assert_eq!(batch.created, ids.len() as u64);
        assert_eq!(batch.changed.len(), ids.len());
        assert!(batch.changed.iter().all(|c| c.widget == "w"));
        assert!(batch.dead_letters.is_empty());
    }

    /// Seen again with nothing new: no event, nothing to commit (the records are unchanged).
    #[test]
    fn a_page_already_known_decides_nothing() {
        let now = Utc::now();
        let first = decide(
            PageCases::read(page(sample_cases()), &mut HashSet::new()),
            &Known::default(),
            now,
            ctx(),
        );
        let known = Known {
            records: first
                .changed
                .into_iter()
                .map(|c| (c.id, c.record))
                .collect(),
            dead_letters: HashSet::new(),
        };
        let again = decide(
            PageCases::read(page(sample_cases()), &mut HashSet::new()),
            &known,
            now,
            ctx(),
        );
        assert!(again.outgoing.is_empty(), "{:?}", event_types(&again));
        assert!(again.changed.is_empty());
    }

    /// A case twice in one page counts once, as its later copy: here the one with a survey.
    #[test]
    fn a_case_repeated_within_a_page_counts_once_as_its_later_copy() {
        let created_ms = 1_700_000_000_000_i64;
        let early = format!(
            r#"{{"id":"c1","created_at_date":{created_ms},"chat_duration":60,"survey_score":null}}"#
        );
        let later = format!(
            r#"{{"id":"c1","created_at_date":{created_ms},"chat_duration":60,"survey_score":9}}"#
        );
        let read = PageCases::read(page(vec![raw(&early), raw(&later)]), &mut HashSet::new());
        assert_eq!(read.received, 2);
        assert_eq!(read.ids(), ["c1"]);
        // An hour after the chat: the survey has settled.
        let now = DateTime::from_timestamp_millis(created_ms + 3_600_000).unwrap();
        let batch = decide(read, &Known::default(), now, ctx());
        assert_eq!(
            event_types(&batch),
            [(TYPE_CREATED, "c1".into()), (TYPE_SURVEY, "c1".into())]
        );
        assert_eq!((batch.created, batch.surveys), (1, 1));
        assert_eq!(batch.changed.len(), 1);
    }

    /// A case without an id goes to the dead-letter topic once: not again in the same window,
    /// nor when the state says it was sent before; other bytes are a new input.
    #[test]
    fn an_unusable_case_is_dead_lettered_once() {
        let bad = r#"{"created_at_date":1700000000000,"description":"no id"}"#;
        let mut window = HashSet::new();
        let read = PageCases::read(page(vec![raw(bad)]), &mut window);
        assert!(read.cases.is_empty());
        let digests = read.digests();
        let batch = decide(read, &Known::default(), Utc::now(), ctx());
        assert_eq!(event_types(&batch), [("dead", "missing_id".into())]);
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(batch.dead_letters[0].digest, digests[0]);
        assert!(batch.changed.is_empty());

        // The same bytes again in this window: left out while reading.
        let again = PageCases::read(page(vec![raw(bad)]), &mut window);
        assert!(again.unusable.is_empty());
        // In a later window, when the state knows it: read, but not sent again.
        let later = PageCases::read(page(vec![raw(bad)]), &mut HashSet::new());
        let known = Known {
            records: HashMap::new(),
            dead_letters: digests.into_iter().collect(),
        };
        assert!(decide(later, &known, Utc::now(), ctx()).outgoing.is_empty());
        // Other bytes: a new input.
        let changed = r#"{"created_at_date":1700000000001,"description":"no id"}"#;
        let other = PageCases::read(page(vec![raw(changed)]), &mut HashSet::new());
        assert_eq!(decide(other, &known, Utc::now(), ctx()).outgoing.len(), 1);
    }
}
