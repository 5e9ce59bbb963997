//! Keeps an in-memory table current from store prefixes, the way an
//! informer keeps a cache: a list at one revision, then a watch from it,
//! relisted from scratch when the watch is lost (history compacted).
//!
//! Writes this server makes reach the table straight away as well, through
//! the storage's observer ([`crate::storage::Observer`]), so a caller that
//! has just created a RoleBinding is authorized by it on its next request.
//! Both paths apply an object only if it is newer than what the table holds
//! for its key.

use std::sync::Arc;
use std::time::Duration;

use flotilla_raft_store::kv::Watcher;
use flotilla_raft_store::kv::proto::{EventType, WatchResponse};

use crate::storage::{Storage, StorageError};

/// Pause before relisting after the watch was lost; bounded so a store
/// that keeps failing is retried at a steady pace, not in a busy loop.
const RELIST_PAUSE: Duration = Duration::from_millis(200);

/// What a feed keeps current.
pub trait Table: Send + Sync + 'static {
    /// The store prefixes it follows, e.g. `/registry/roles/`.
    fn prefixes(&self) -> &'static [&'static str];
    /// Replaces everything with a list's items `(key, value, mod_revision)`.
    fn reset(&self, items: Vec<(Vec<u8>, Vec<u8>, i64)>);
    /// One object written (`Some`) or deleted (`None`) at `revision`.
    fn apply(&self, key: &[u8], value: Option<&[u8]>, revision: i64);
}

/// Lists every prefix at one revision into `table`; returns the revision.
pub async fn load(storage: &Storage, table: &dyn Table) -> Result<i64, StorageError> {
    let mut items = Vec::new();
    let mut revision = 0;
    for prefix in table.prefixes() {
        let page = storage.list(prefix.as_bytes(), b"", 0, revision).await?;
        revision = page.revision;
        items.extend(
            page.items
                .into_iter()
                .map(|stored| (stored.key, stored.value, stored.mod_revision)),
        );
    }
    table.reset(items);
    Ok(revision)
}

/// Follows the store from `revision` (what [`load`] returned) until the
/// task is dropped.
pub async fn follow(storage: Storage, table: Arc<dyn Table>, mut revision: i64) {
    loop {
        match watch_all(&storage, table.as_ref(), revision) {
            Ok(watchers) => run(watchers, table.as_ref()).await,
            Err(error) => tracing::debug!(%error, "the feed's watch could not start"),
        }
        tokio::time::sleep(RELIST_PAUSE).await;
        match load(&storage, table.as_ref()).await {
            Ok(listed) => revision = listed,
            Err(error) => tracing::warn!(%error, "relisting the authorization cache failed"),
        }
    }
}

fn watch_all(
    storage: &Storage,
    table: &dyn Table,
    revision: i64,
) -> Result<Vec<Watcher>, StorageError> {
    table
        .prefixes()
        .iter()
        .map(|prefix| storage.watch(prefix.as_bytes(), revision))
        .collect()
}

/// Applies events until a watch ends or is cancelled.
async fn run(watchers: Vec<Watcher>, table: &dyn Table) {
    let mut next = futures::stream::select_all(watchers.into_iter().map(|watcher| {
        Box::pin(futures::stream::unfold(watcher, |mut watcher| async move {
            watcher.next().await.map(|batch| (batch, watcher))
        }))
    }));
    while let Some(batch) = futures::StreamExt::next(&mut next).await {
        if !apply_batch(batch, table) {
            return;
        }
    }
}

/// Whether the watch goes on.
fn apply_batch(batch: WatchResponse, table: &dyn Table) -> bool {
    if batch.canceled {
        tracing::debug!(reason = %batch.cancel_reason, "the feed's watch was cancelled");
        return false;
    }
    for event in batch.events {
        let Some(kv) = event.kv else { continue };
        let value = (event.r#type != EventType::Delete as i32).then_some(kv.value.as_slice());
        table.apply(&kv.key, value, kv.mod_revision);
    }
    true
}
