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

use flotilla_raft_store::kv::proto::{EventType, WatchResponse};

use crate::storage::{Storage, StorageError, Watch};

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
    /// The watch of `prefix` has delivered every change up to `revision`.
    fn caught_up(&self, _prefix: &str, _revision: i64) {}
}

/// Lists every prefix at one revision into `table`; returns the revision.
/// What cannot be decrypted is left out: to a table it is absent.
pub async fn load(storage: &Storage, table: &dyn Table) -> Result<i64, StorageError> {
    let storage = storage.skipping_unreadable();
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

/// Loads `table` and follows the store in a task of its own, until that
/// task is aborted.
pub async fn start(
    storage: &Storage,
    table: Arc<dyn Table>,
) -> Result<tokio::task::JoinHandle<()>, StorageError> {
    let revision = load(storage, table.as_ref()).await?;
    Ok(tokio::spawn(follow(storage.clone(), table, revision)))
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
) -> Result<Vec<Watch>, StorageError> {
    let storage = storage.skipping_unreadable();
    table
        .prefixes()
        .iter()
        .map(|prefix| storage.watch(prefix.as_bytes(), revision))
        .collect()
}

/// Applies events until a watch ends or is cancelled.
async fn run(watchers: Vec<Watch>, table: &dyn Table) {
    let streams = watchers
        .into_iter()
        .zip(table.prefixes())
        .map(|(watcher, prefix)| {
            Box::pin(futures::stream::unfold(
                watcher,
                move |mut watcher| async move {
                    watcher
                        .next()
                        .await
                        .map(|batch| ((*prefix, batch), watcher))
                },
            ))
        });
    let mut next = futures::stream::select_all(streams);
    while let Some((prefix, batch)) = futures::StreamExt::next(&mut next).await {
        if !apply_batch(prefix, batch, table) {
            return;
        }
    }
}

/// Whether the watch goes on.
fn apply_batch(prefix: &str, batch: WatchResponse, table: &dyn Table) -> bool {
    if batch.canceled {
        tracing::debug!(reason = %batch.cancel_reason, "the feed's watch was cancelled");
        return false;
    }
    // A progress notification vouches for its header's revision; a batch
    // of events for its newest event.
    let mut delivered = match batch.events.is_empty() {
        true => batch.header.as_ref().map_or(0, |header| header.revision),
        false => 0,
    };
    for event in batch.events {
        let Some(kv) = event.kv else { continue };
        let value = (event.r#type != EventType::Delete as i32).then_some(kv.value.as_slice());
        table.apply(&kv.key, value, kv.mod_revision);
        delivered = delivered.max(kv.mod_revision);
    }
    table.caught_up(prefix, delivered);
    true
}

/// The newest revision a table applied per key, so that a write applied
/// straight from this server ([`crate::storage::Storage::observe`]) is not
/// undone by its own older watch event arriving later. A deletion leaves
/// a tombstone until the watch has caught up with it, so the memory kept
/// is that of the live keys and a moment's deletions.
#[derive(Default)]
pub struct Revisions {
    live: std::collections::HashMap<Vec<u8>, i64>,
    tombstones: std::collections::HashMap<Vec<u8>, i64>,
}

impl Revisions {
    /// Whether a change of `key` at `revision` (a deletion when `deleted`)
    /// is newer than what was applied; if so it is recorded.
    pub fn admit(&mut self, key: &[u8], revision: i64, deleted: bool) -> bool {
        let newest = self
            .live
            .get(key)
            .or_else(|| self.tombstones.get(key))
            .copied()
            .unwrap_or(0);
        if revision <= newest {
            return false;
        }
        if deleted {
            self.live.remove(key);
            self.tombstones.insert(key.to_vec(), revision);
        } else {
            self.tombstones.remove(key);
            self.live.insert(key.to_vec(), revision);
        }
        true
    }

    /// The watch of `prefix` has delivered everything up to `revision`:
    /// its tombstones at or below it have done their work.
    pub fn caught_up(&mut self, prefix: &str, revision: i64) {
        self.tombstones
            .retain(|key, deleted| *deleted > revision || !key.starts_with(prefix.as_bytes()));
    }

    /// Forgets everything, for a relist that starts over with `items`.
    pub fn reset<'a>(&mut self, items: impl Iterator<Item = (&'a [u8], i64)>) {
        self.tombstones.clear();
        self.live = items
            .map(|(key, revision)| (key.to_vec(), revision))
            .collect();
    }
}

/// What a [`Versioned`] table holds: objects changed one key at a time.
pub trait Objects: Default + Send + Sync + 'static {
    /// The store prefixes the objects live under.
    const PREFIXES: &'static [&'static str];
    /// One object written (`Some`) or deleted (`None`).
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>);
}

/// Objects behind one lock, each key changed only by a revision newer than
/// the last that changed it ([`Revisions`]): the shape every table a feed
/// keeps has, so each needs only say how one key changes it.
pub struct Versioned<O> {
    inner: std::sync::RwLock<Held<O>>,
}

#[derive(Default)]
struct Held<O> {
    objects: O,
    revisions: Revisions,
}

/// The objects of a [`Versioned`] table, read under its lock.
pub struct Read<'a, O>(std::sync::RwLockReadGuard<'a, Held<O>>);

impl<O> std::ops::Deref for Read<'_, O> {
    type Target = O;
    fn deref(&self) -> &O {
        &self.0.objects
    }
}

impl<O: Objects> Default for Versioned<O> {
    fn default() -> Self {
        Versioned {
            inner: std::sync::RwLock::new(Held::default()),
        }
    }
}

impl<O: Objects> Versioned<O> {
    pub fn new() -> Arc<Self> {
        Arc::new(Versioned::default())
    }

    /// The objects, for reading. A writer that panicked left whole entries
    /// behind (each change is one insert or remove), so they stay usable.
    pub fn read(&self) -> Read<'_, O> {
        Read(
            self.inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held<O>> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<O: Objects> Table for Versioned<O> {
    fn prefixes(&self) -> &'static [&'static str] {
        O::PREFIXES
    }

    fn reset(&self, items: Vec<(Vec<u8>, Vec<u8>, i64)>) {
        let mut fresh = Held::<O>::default();
        for (key, value, _) in &items {
            fresh.objects.apply(key, Some(value));
        }
        let revisions = items
            .iter()
            .map(|(key, _, revision)| (key.as_slice(), *revision));
        fresh.revisions.reset(revisions);
        *self.write() = fresh;
    }

    fn apply(&self, key: &[u8], value: Option<&[u8]>, revision: i64) {
        let mut held = self.write();
        if held.revisions.admit(key, revision, value.is_none()) {
            held.objects.apply(key, value);
        }
    }

    fn caught_up(&self, prefix: &str, revision: i64) {
        self.write().revisions.caught_up(prefix, revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_deletion_outlives_its_older_events_until_the_watch_catches_up() {
        let mut revisions = Revisions::default();
        assert!(revisions.admit(b"/a/x", 5, false));
        // Deleted by this server at 7, seen before the watch's own events.
        assert!(revisions.admit(b"/a/x", 7, true));
        // The watch's put at 6 arrives late: refused.
        assert!(!revisions.admit(b"/a/x", 6, false));
        // Another prefix's watch catching up does not end the tombstone.
        revisions.caught_up("/b/", 10);
        assert!(!revisions.admit(b"/a/x", 6, false));
        // Its own does, and nothing is kept of the deleted key.
        assert!(!revisions.admit(b"/a/x", 7, true));
        revisions.caught_up("/a/", 7);
        assert!(revisions.tombstones.is_empty() && revisions.live.is_empty());
        // A new object under the same name is taken.
        assert!(revisions.admit(b"/a/x", 9, false));
    }
}
