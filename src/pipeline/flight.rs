//! In-flight bookkeeping: the pages of a window handed to Kafka but not yet committed, oldest
//! first, and the records they decided, which later pages must see before the state does.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::OwnedSemaphorePermit;

use super::page::PageBatch;
use crate::sink::PendingDelivery;
use crate::state::CaseRecord;

/// A page handed to Kafka, waiting for its acknowledgements and then its commit.
pub(super) struct InFlightPage {
    pub seq: u64,
    pub batch: PageBatch,
    pub delivery: PendingDelivery,
    /// Its place among the pages in flight of every window; freed when the page is dropped
    /// (committed, or given up at shutdown).
    pub _slot: OwnedSemaphorePermit,
}

/// The pages of one window in flight.
#[derive(Default)]
pub(super) struct Flight {
    pub pages: VecDeque<InFlightPage>,
    /// Per case id, the record a page in flight decided, and that page's `seq`.
    records: HashMap<String, (CaseRecord, u64)>,
    seq: u64,
    /// Digests of bad inputs dead-lettered by pages of this window (committed or not).
    pub dead_letters: HashSet<String>,
    /// Once shutdown came: until when pages in flight may still be acknowledged.
    pub shutdown_deadline: Option<tokio::time::Instant>,
    /// Exactly-once delivery: pages decided for the next transaction, with their `seq`.
    held: Vec<(u64, PageBatch)>,
}

impl Flight {
    /// Pages in flight are not committed yet: what they decided about `ids` replaces what the
    /// state knows.
    pub fn overlay<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        known: &mut HashMap<String, CaseRecord>,
    ) {
        for id in ids {
            if let Some((record, _)) = self.records.get(id) {
                known.insert(id.to_owned(), record.clone());
            }
        }
    }

    /// A page now handed to Kafka, in its `slot`.
    pub fn push(
        &mut self,
        batch: PageBatch,
        delivery: PendingDelivery,
        slot: OwnedSemaphorePermit,
    ) {
        let seq = self.remember(&batch);
        self.pages.push_back(InFlightPage {
            seq,
            batch,
            delivery,
            _slot: slot,
        });
    }

    /// A page decided for the next transaction (exactly-once delivery): later pages see its
    /// records until it commits.
    pub fn hold(&mut self, batch: PageBatch) {
        let seq = self.remember(&batch);
        self.held.push((seq, batch));
    }

    /// Numbers a page and makes its records what later pages see. Returns its `seq`.
    fn remember(&mut self, batch: &PageBatch) -> u64 {
        self.seq += 1;
        for case in &batch.changed {
            self.records
                .insert(case.id.clone(), (case.record.clone(), self.seq));
        }
        self.seq
    }

    pub fn held_pages(&self) -> usize {
        self.held.len()
    }

    /// The pages held for the transaction, oldest first.
    pub fn take_held(&mut self) -> Vec<(u64, PageBatch)> {
        std::mem::take(&mut self.held)
    }

    /// The page `seq` is committed: its records are the state's now, unless a later page in
    /// flight decided a newer one for the same id.
    pub fn committed(&mut self, seq: u64, ids: &[String]) {
        for id in ids {
            if self.records.get(id).is_some_and(|(_, s)| *s == seq) {
                self.records.remove(id);
            }
        }
    }
}
