//! Changes to a state in exactly-once delivery, written where its truth is: the changelog.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ToolkitError;
use crate::sink::KafkaSink;
use crate::sink::config::KafkaSettings;
use crate::state::{Change, SqliteStore};

/// Changes per transaction: an import's records go in several.
const CHANGES_PER_TRANSACTION: usize = 10_000;

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
    /// temporary directory: the changes are decided on the changelog's truth, not on a local
    /// store that may lag it.
    pub(super) async fn fence(settings: &KafkaSettings) -> Result<Self, ToolkitError> {
        let sink = KafkaSink::new(settings)?;
        sink.init_transactions().await?;
        let dir = tempfile::Builder::new()
            .prefix("casestream-state-")
            .tempdir()
            .map_err(|source| ToolkitError::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
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

    /// Commits `changes` to the changelog, in transactions of at most
    /// [`CHANGES_PER_TRANSACTION`].
    pub(super) async fn commit(&self, changes: &[Change]) -> Result<(), ToolkitError> {
        // A tool run is stopped with the process: no call is given up on.
        let never = CancellationToken::new();
        for batch in changes.chunks(CHANGES_PER_TRANSACTION) {
            self.sink.begin_transaction().await?;
            let results = self.sink.start_changes(batch).await.wait(&self.sink).await;
            if let Some(e) = results.into_iter().find_map(|r| r.result.err()) {
                let reason = crate::redact::redact(&e.to_string()).into_owned();
                self.sink.abort_transaction(&never).await?;
                return Err(ToolkitError::Refused(reason));
            }
            self.sink.commit_transaction(&never).await?;
        }
        Ok(())
    }
}
