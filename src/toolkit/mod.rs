//! The operator's toolkit, `casestream state …`: what a state directory knows (summary, one
//! case), and the changes an operator makes to it (reset, export and import).
//!
//! Reading never takes the state's lock: it works next to a running forwarder. A change takes
//! the lock and refuses while a forwarder holds it, except in exactly-once delivery, where
//! the state's truth is the changelog: there a change fences the instances of the
//! transactional id (a running active instance stops, and its restart reads the change),
//! rebuilds the state from the changelog, and commits the change to it in a transaction, as a
//! newly elected instance does before it writes.

mod changelog;
pub mod cli;
mod show;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::Serialize;

use crate::config::StateTarget;
use crate::events;
use crate::failover::FailoverError;
use crate::sink::SinkError;
use crate::sink::transaction::TransactionError;
use crate::state::sqlite::{STATE_FILE, WidgetSummary};
use crate::state::{
    Change, ChangelogPosition, DeadLetterMark, SqliteStore, StateError, StateLock, StateStore,
    StoredCase, WidgetProgress,
};

#[derive(Debug, thiserror::Error)]
pub enum ToolkitError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "{0}\nA forwarder in at-least-once delivery is running on this state: stop it before \
         changing its state (summary, case and export read it while it runs)"
    )]
    Running(StateError),
    #[error("widget `{widget}` is not in the state (it knows: {known})")]
    UnknownWidget { widget: String, known: String },
    #[error("{target} already holds a state: import into an empty one")]
    NotEmpty { target: String },
    #[error("{source_name} line {line}: {what} (nothing was imported)")]
    Import {
        source_name: String,
        line: usize,
        what: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the state changelog: {0}")]
    Changelog(#[from] FailoverError),
    #[error("the state changelog: {0}")]
    Kafka(#[from] SinkError),
    #[error("the state changelog: {0}")]
    Transaction(#[from] TransactionError),
    #[error("the state changelog refused a record, and nothing of the change was committed: {0}")]
    Refused(String),
    #[error(
        "nothing of the change was committed to the state changelog: {error}. A change goes in one \
         Kafka transaction, which must end within transaction.timeout.ms: a larger change \
         needs a larger {env} (at most the brokers' transaction.max.timeout.ms)",
        env = crate::sink::config::property_env_name("transaction.timeout.ms")
    )]
    NotCommitted { error: TransactionError },
}

/// What `state summary` shows.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub state_dir: PathBuf,
    /// The pid of the forwarder holding the state's lock, if one runs.
    pub running: Option<String>,
    pub size_bytes: u64,
    pub known_cases: u64,
    pub pending_surveys: u64,
    /// Exactly-once delivery: how far this local store applied the changelog.
    pub changelog: Option<ChangelogPosition>,
    pub widgets: Vec<WidgetSummary>,
}

pub fn summary(dir: &Path) -> Result<Summary, ToolkitError> {
    let store = SqliteStore::open_read_only(dir)?;
    let stats = store.stats()?;
    Ok(Summary {
        state_dir: dir.to_owned(),
        running: StateLock::holder(dir),
        size_bytes: stats.size_bytes,
        known_cases: stats.known_cases,
        pending_surveys: stats.pending_surveys,
        changelog: store.changelog_position()?,
        widgets: store.widget_summaries()?,
    })
}

/// What `state case ID` shows.
#[derive(Debug, Serialize)]
pub struct CaseReport {
    pub id: String,
    /// `None` when the state does not know the case (never seen, or pruned).
    pub case: Option<StoredCase>,
    pub events: Vec<EmittedEvent>,
    pub dead_letters: Vec<DeadLetterMark>,
}

/// One event the state records as published for a case.
#[derive(Debug, Serialize)]
pub struct EmittedEvent {
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The event's id (from the org id, which names every id; absent when not given).
    pub id: Option<String>,
    /// When it was published, as far as the state records it.
    pub when: Option<DateTime<Utc>>,
    pub survey_digest: Option<String>,
}

pub fn case(dir: &Path, id: &str, org_id: Option<&str>) -> Result<CaseReport, ToolkitError> {
    let store = SqliteStore::open_read_only(dir)?;
    let case = store.case(id)?;
    let mut events = Vec::new();
    if let Some(c) = &case {
        if c.record.created_emitted {
            events.push(EmittedEvent {
                event_type: events::TYPE_CREATED,
                id: org_id.map(|org| events::created_event_id(org, id).to_string()),
                when: Some(c.record.first_seen),
                survey_digest: None,
            });
        }
        if let Some(digest) = &c.record.survey_digest {
            events.push(EmittedEvent {
                event_type: events::TYPE_SURVEY,
                id: org_id.map(|org| events::survey_event_id(org, id, digest).to_string()),
                when: c.record.survey_emitted,
                survey_digest: Some(digest.clone()),
            });
        }
    }
    Ok(CaseReport {
        id: id.to_owned(),
        case,
        events,
        dead_letters: store.dead_letters_of(id)?,
    })
}

/// Which widgets `state reset` forgets.
#[derive(Clone, Debug)]
pub enum Widgets {
    All,
    Only(Vec<String>),
}

/// What `state reset` will do (or did): per widget, the cases it forgets.
#[derive(Debug, Serialize)]
pub struct ResetPlan {
    pub since: NaiveDate,
    pub forgotten: BTreeMap<String, u64>,
    #[serde(skip)]
    changes: Vec<Change>,
}

impl ResetPlan {
    pub fn cases(&self) -> u64 {
        self.forgotten.values().sum()
    }
}

/// The changes that forget `widgets`' cases from `since` on, and their progress with them:
/// the catch-up goes back to `since`, and the next run reads those days again and announces
/// their cases with the same event ids.
fn plan_reset(
    store: &SqliteStore,
    widgets: &Widgets,
    since: NaiveDate,
) -> Result<ResetPlan, ToolkitError> {
    let known = store.widget_names()?;
    let chosen = match widgets {
        Widgets::All => known.clone(),
        Widgets::Only(names) => names.clone(),
    };
    let mut plan = ResetPlan {
        since,
        forgotten: BTreeMap::new(),
        changes: Vec::new(),
    };
    let mut forgotten = Vec::new();
    for widget in chosen {
        let Some(progress) = store.widget(&widget)? else {
            return Err(ToolkitError::UnknownWidget {
                widget,
                known: known.join(", "),
            });
        };
        let ids = store.cases_from(&widget, since)?;
        plan.forgotten.insert(widget.clone(), ids.len() as u64);
        forgotten.extend(ids.into_iter().map(|id| Change::CaseForgotten { id }));
        plan.changes.push(Change::CursorCleared {
            widget: widget.clone(),
        });
        plan.changes.push(Change::Widget {
            progress: rewound(&progress, since),
            widget,
        });
    }
    // The rewinds before the cases they forget. The change commits as one, but a reader that
    // stops part-way through applying it (a standby killed while following the changelog)
    // then holds a rewind without all its forgetting, which only reads days again; the other
    // way round, forgotten cases on days the catch-up counts as read would never be read again.
    plan.changes.append(&mut forgotten);
    Ok(plan)
}

/// `progress` as if the days from `since` on were never read.
fn rewound(progress: &WidgetProgress, since: NaiveDate) -> WidgetProgress {
    let first = progress.since.min(since);
    let before = since.checked_sub_days(Days::new(1));
    WidgetProgress {
        since: first,
        caught_up_through: progress
            .caught_up_through
            .zip(before)
            .map(|(through, before)| through.min(before))
            .filter(|through| *through >= first),
        last_fresh_poll: None,
        unread: Vec::new(),
    }
}

/// Forgets `widgets`' cases from `since` on, once `confirm` agrees to the plan. Returns the
/// plan, and whether it was carried out.
pub async fn reset(
    target: &StateTarget,
    widgets: &Widgets,
    since: NaiveDate,
    confirm: impl FnOnce(&ResetPlan) -> bool,
) -> Result<(ResetPlan, bool), ToolkitError> {
    if let Some(kafka) = &target.changelog {
        let writer = changelog::Writer::fence(kafka, &target.state_dir).await?;
        let plan = plan_reset(writer.store(), widgets, since)?;
        if !confirm(&plan) {
            return Ok((plan, false));
        }
        writer.commit(&plan.changes).await?;
        return Ok((plan, true));
    }
    let _lock = lock(&target.state_dir, true)?;
    let store = SqliteStore::open(&target.state_dir)?;
    let plan = plan_reset(&store, widgets, since)?;
    if !confirm(&plan) {
        return Ok((plan, false));
    }
    store.apply(&plan.changes, None)?;
    Ok((plan, true))
}

/// The state's lock, or why a change refuses (`existing`: there must be a state to change).
fn lock(dir: &Path, existing: bool) -> Result<StateLock, ToolkitError> {
    if existing && !dir.join(STATE_FILE).is_file() {
        return Err(StateError::Missing {
            path: dir.join(STATE_FILE).display().to_string(),
        }
        .into());
    }
    StateLock::acquire(dir).map_err(|e| match e {
        locked @ StateError::Locked { .. } => ToolkitError::Running(locked),
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_reset_rewinds_the_catch_up_to_the_day_before() {
        let p = WidgetProgress {
            since: day("2026-03-01"),
            caught_up_through: Some(day("2026-03-09")),
            last_fresh_poll: Some(Utc::now()),
            unread: Vec::new(),
        };
        let r = rewound(&p, day("2026-03-05"));
        assert_eq!(r.since, day("2026-03-01"));
        assert_eq!(r.caught_up_through, Some(day("2026-03-04")));
        assert_eq!(r.last_fresh_poll, None);
        let r = rewound(&p, day("2026-02-20"));
        assert_eq!(
            (r.since, r.caught_up_through),
            (day("2026-02-20"), None),
            "a day before `since` moves `since` back"
        );
        let r = rewound(&p, day("2026-03-20"));
        assert_eq!(r.caught_up_through, Some(day("2026-03-09")));
    }
}
