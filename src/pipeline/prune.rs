//! Pruning: the state forgets what no future decision needs, a little at a time.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Pipeline, PipelineError, scheduler};
use crate::metrics;
use crate::state::change::forget_dead_letters;
use crate::state::{Change, WidgetProgress};

/// Cases pruned per turn, in one transaction (and, in exactly-once delivery, one Kafka
/// transaction of as many tombstones): bounded by cases, not days, because a day holds any
/// number of them. Page commits wait while a turn writes, and a turn's tombstones go in one
/// Kafka transaction like a page's changes: 5,000 is tens of pages' worth, a fraction of a second
/// of SQLite deletes and well under a megabyte of tombstones.
pub const PRUNE_CASES_PER_TURN: usize = 5_000;
/// Dead-letter marks are kept this long beyond lookback and horizon, after which a bad case's
/// day is normally not read again (a catch-up after a longer outage may dead-letter it again):
/// a day, plus the up to 24 h by which a case's last survey check follows its horizon, plus a
/// day for chats across midnight and late-visible cases (with no lookback, nothing else
/// covers them).
const DEAD_LETTER_MARGIN: chrono::Duration = chrono::Duration::days(3);

impl Pipeline {
    /// Forgets what no future decision needs: per widget, the days before the fresh window
    /// whose cases are all past their survey horizon (such a day is never read again), and
    /// dead-letter marks older than any day still read. Returns the cases removed.
    pub(super) async fn prune(
        &self,
        progress: &HashMap<String, WidgetProgress>,
        shutdown: &CancellationToken,
    ) -> Result<u64, PipelineError> {
        let fresh_start = self.fresh_start();
        let mut removed = 0;
        for (widget, p) in progress {
            // Never a day the catch-up has still to read (the day that just left the fresh
            // window at midnight is read once more by it).
            let before = scheduler::next_catch_up(p, fresh_start).unwrap_or(fresh_start);
            loop {
                if shutdown.is_cancelled() {
                    return Ok(removed);
                }
                self.health.beat();
                let w = widget.clone();
                let ids = self
                    .state(move |s| s.prunable_cases(&w, before, PRUNE_CASES_PER_TURN))
                    .await?;
                let n = ids.len() as u64;
                let forgotten = ids.into_iter().map(|id| Change::CaseForgotten { id });
                self.write(forgotten.collect(), shutdown).await?;
                removed += n;
                if n == 0 {
                    break;
                }
            }
        }
        let keep =
            chrono::Duration::from_std(self.settings.lookback + self.settings.tracker.horizon)
                .unwrap_or(chrono::Duration::MAX)
                + DEAD_LETTER_MARGIN;
        let marks_before: DateTime<Utc> = self
            .clock
            .now()
            .checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let old_marks = self
            .state(move |s| s.dead_letters_before(marks_before))
            .await?;
        let marks = old_marks.len() as u64;
        self.write(forget_dead_letters(old_marks), shutdown).await?;
        if removed + marks > 0 {
            metrics::state_pruned(removed, marks);
            tracing::info!(cases = removed, dead_letters = marks, fresh_start = %fresh_start, "pruned state no decision needs");
        }
        Ok(removed)
    }
}
