//! Catch-up progress for people watching: a bar on a terminal, a log line otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use super::scheduler;
use crate::state::WidgetProgress;

/// Without a terminal, catch-up progress is logged this often.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Catch-up progress: a bar on a terminal, a log line every few seconds otherwise.
pub(super) struct CatchUpProgress {
    total: u64,
    done: u64,
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
}

impl CatchUpProgress {
    pub(super) fn new(progress: &HashMap<String, WidgetProgress>, fresh_start: NaiveDate) -> Self {
        let total: u64 = progress
            .values()
            .map(|p| scheduler::catch_up_remaining(p, fresh_start))
            .sum();
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "catching up {bar:30} {pos}/{len} days ({eta} left)",
            ) {
                bar.set_style(style);
            }
            bar
        });
        if total > 0 {
            tracing::info!(days = total, "catching up on past days");
        }
        Self {
            total,
            done: 0,
            bar,
            last_log: Instant::now(),
        }
    }

    pub(super) fn day_done(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub(super) fn show(
        &mut self,
        progress: &HashMap<String, WidgetProgress>,
        fresh_start: NaiveDate,
    ) {
        if self.total == 0 || self.bar.is_some() || self.last_log.elapsed() < PROGRESS_LOG_EVERY {
            return;
        }
        self.last_log = Instant::now();
        let left: u64 = progress
            .values()
            .map(|p| scheduler::catch_up_remaining(p, fresh_start))
            .sum();
        if left > 0 {
            tracing::info!(done = self.done, left, "catching up");
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
