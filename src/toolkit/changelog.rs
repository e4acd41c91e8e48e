//! Changes to a state in exactly-once delivery, written where its truth is: the changelog.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ToolkitError;
use crate::sink::KafkaSink;
use crate::sink::config::KafkaSettings;
use crate::sink::transaction::TransactionError;
use crate::state::{Change, SqliteStore};

/// Changes handed to the producer before waiting for their acknowledgements: bounds what is
/// held in memory, not the transaction, which takes them all.
const CHANGES_PER_WAIT: usize = 10_000;
/// The prefix of the throwaway store's directory inside the state directory.
const SCRATCH_PREFIX: &str = ".toolkit-changelog-";
/// How long an abort after a failed change may wait for Kafka.
const ABORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The changelog's only writer while it lives: it fenced every earlier producer of the
/// transactional id, then read the changelog to its end into a store of its own.
pub(super) struct Writer {
    sink: KafkaSink,
    store: Arc<SqliteStore>,
    /// Where the store lives; removed with the writer.
    _dir: tempfile::TempDir,
}

impl Writer {
    /// Fences the instances (a running active instance stops at its next commit; its restart
    /// reads what this writer commits), then rebuilds the state from the changelog in a
    /// throwaway directory inside `state_dir`: the changes are decided on the changelog's
    /// truth, not on a local store that may lag it. Inside the state directory, not the
    /// system's temporary one: the state's volume is sized for a copy of the state, and `/tmp`
    /// in the shipped manifests is a 16 MiB emptyDir.
    pub(super) async fn fence(
        settings: &KafkaSettings,
        state_dir: &Path,
    ) -> Result<Self, ToolkitError> {
        let sink = KafkaSink::new(settings)?;
        // An import may be a deployment's first write: the changelog is made as `run` makes
        // it (compacted, one partition), never auto-created by a broker with its defaults.
        sink.ensure_topics().await?;
        sink.init_transactions().await?;
        let io = |source| ToolkitError::Io {
            path: state_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        // One left by a toolkit run killed part-way (SIGKILL, OOM) is a whole copy of the
        // state: removed before another is made. None is in use: two changes at once share
        // one transactional id, and this one's fence above ended the other.
        sweep_scratch(state_dir);
        let dir = tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(state_dir)
            .map_err(io)?;
        let store = Arc::new(SqliteStore::open(dir.path())?);
        let writer = Self {
            sink,
            store,
            _dir: dir,
        };
        crate::failover::restore(settings, writer.store.clone(), &CancellationToken::new()).await?;
        Ok(writer)
    }

    /// The state as the changelog holds it.
    pub(super) fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// Commits `changes` to the changelog in one transaction.
    pub(super) async fn commit(&self, changes: &[Change]) -> Result<(), ToolkitError> {
        let mut once = Some(changes);
        self.commit_all(|| Ok(once.take())).await
    }

    /// Commits the batches `next` gives, until it gives `None`, in one Kafka transaction:
    /// all of them or, when `next`, a record or the commit fails, none (the transaction is
    /// aborted, and `read_committed` readers never see its records). One transaction also
    /// means no instance can be elected between two parts of a change and act on half of it.
    pub(super) async fn commit_all<B: AsRef<[Change]>>(
        &self,
        mut next: impl FnMut() -> Result<Option<B>, ToolkitError>,
    ) -> Result<(), ToolkitError> {
        // A tool run is stopped with the process: its commit is never given up on.
        let never = CancellationToken::new();
        self.sink.begin_transaction().await?;
        let sent = async {
            while let Some(batch) = next()? {
                for part in batch.as_ref().chunks(CHANGES_PER_WAIT) {
                    let results = self.sink.start_changes(part).await.wait(&self.sink).await;
                    if let Some(e) = results.into_iter().find_map(|r| r.result.err()) {
                        let reason = crate::redact::redact(&e.to_string()).into_owned();
                        return Err(ToolkitError::Refused(reason));
                    }
                }
            }
            Ok(())
        }
        .await;
        let result = match sent {
            Ok(()) => self
                .sink
                .commit_transaction(&never)
                .await
                .map_err(|error| match error {
                    // An instance started and took the id: scaling to 0 is the fix, not time.
                    fenced @ TransactionError::Fenced { .. } => ToolkitError::Transaction(fenced),
                    error => ToolkitError::NotCommitted { error },
                }),
            Err(e) => Err(e),
        };
        // An abort is given up on after a while (Kafka away): the coordinator aborts the
        // transaction at its timeout all the same.
        let give_up = CancellationToken::new();
        let _timer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
            let give_up = give_up.clone();
            async move {
                tokio::time::sleep(ABORT_PATIENCE).await;
                give_up.cancel();
            }
        }));
        if result.is_err()
            && let Err(abort) = self.sink.abort_transaction(&give_up).await
        {
            // Nothing was committed either way: the coordinator aborts an open transaction
            // at its timeout, or when the next producer of the id starts.
            tracing::warn!(error = %abort, "could not abort the state changelog's transaction");
        }
        result
    }
}

/// Removes throwaway stores of earlier runs from `state_dir`; what cannot be removed is left
/// and said (it is only disk).
fn sweep_scratch(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(SCRATCH_PREFIX));
        if stale && path.is_dir() {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed the throwaway store of an earlier run")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove the throwaway store of an earlier run")
                }
            }
        }
    }
}
