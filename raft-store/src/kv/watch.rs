//! Watches: a stream of [`WatchResponse`]s for a key, prefix or range, with
//! etcd's guarantees.
//!
//! - **Ordered, unique, reliable.** A watcher is in one of two phases. While
//!   *catching up* it pulls whole revisions from the index's history itself,
//!   in revision order, a bounded batch per [`Watcher::next`]. When a batch
//!   reaches the current revision, the switch to *live* happens under the
//!   state's read lock, which `apply` needs for writing: no revision can be
//!   applied between "history read up to N" and "registered for N + 1 on",
//!   so there is no gap and no duplicate. Live events are pushed by `apply`
//!   while it still holds the write lock, so they arrive in revision order.
//! - **Atomic.** A response carries whole revisions; a revision is never
//!   split, however many events it has.
//! - **Bounded.** The live queue holds [`WATCHER_QUEUE_RESPONSES_MAX`]
//!   responses. A watcher that falls further behind is cancelled with a
//!   reason; the client resumes from its last revision + 1. Catch-up is
//!   pulled by the consumer, so it never queues.
//! - **Resumable.** A watch may start at any revision above the compacted
//!   one; below, it is cancelled with `compact_revision` set.
//!
//! `header.revision` of a response is the revision through which the
//! watcher has been sent everything (events or progress), never more.
//!
//! This module knows the index and the hub; it does not know raft, leases
//! or how responses reach a client.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::mvcc::in_range;
use super::proto::{
    Event, EventType, FilterType, ResponseHeader, WatchCreateRequest, WatchResponse,
};
use super::state::Core;
use crate::error::{Error, Result};

/// 1,024 responses (each one revision, or a progress note) per live
/// watcher: etcd buffers 128 per watch stream; we allow more because one of
/// our watchers is usually the API server's watch cache, which is fast but
/// bursty. Beyond this the watcher is cancelled rather than grow memory.
pub const WATCHER_QUEUE_RESPONSES_MAX: usize = 1024;

/// 10,000 watchers per store: the API server watches through its watch
/// cache (one store watch per resource type, a few hundred at most), so
/// this leaves ample room for direct clients while bounding the memory
/// their queues can hold.
pub const WATCHERS_MAX: usize = 10_000;

/// 1,000 events per catch-up response (whole revisions, so a single large
/// revision may exceed it): matches etcd's catch-up batch, keeping each
/// response a few hundred KiB for Kubernetes-sized objects.
pub const CATCH_UP_EVENTS_MAX: usize = 1000;

/// 10,000 revisions scanned per catch-up step: bounds the time one step
/// holds the read lock (and so delays apply) for a narrow watch over a long
/// history; the next step continues where this one stopped.
pub const CATCH_UP_REVISIONS_SCANNED_MAX: usize = 10_000;

/// Why watchers end without the client asking.
const SLOW_REASON: &str = "watcher is too slow: it fell more than 1024 responses behind; \
     resume from the last revision received + 1";
const RESTORE_REASON: &str = "the store was restored from a snapshot; \
     resume from the last revision received + 1";
const COMPACTED_REASON: &str = "the requested start revision has been compacted";

/// What a watch selects and how it wants events shaped.
#[derive(Debug)]
pub(crate) struct WatchSpec {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    watch_id: i64,
}

impl WatchSpec {
    /// The events of one or more revisions this watch wants, shaped for it.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|event| {
                let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
                let wanted = if event.r#type == EventType::Put as i32 {
                    !self.no_put
                } else {
                    !self.no_delete
                };
                wanted && in_range(key, &self.key, &self.range_end)
            })
            .map(|event| {
                let mut event = event.clone();
                if !self.prev_kv {
                    event.prev_kv = None;
                }
                event
            })
            .collect()
    }

    fn response(&self, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            watch_id: self.watch_id,
            ..Default::default()
        }
    }
}

/// Set by the hub when it ends a watcher; read by the watcher after its
/// queue drains, so events already queued are still delivered first.
#[derive(Debug, Default)]
struct Ending {
    final_response: Mutex<Option<WatchResponse>>,
}

impl Ending {
    fn set(&self, response: WatchResponse) {
        let mut slot = self
            .final_response
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(response);
    }

    fn take(&self) -> Option<WatchResponse> {
        self.final_response
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

struct Entry {
    spec: Arc<WatchSpec>,
    sender: mpsc::Sender<WatchResponse>,
    /// Live: apply pushes events of revisions `>= min_revision` to it.
    live: bool,
    min_revision: i64,
    ending: Arc<Ending>,
}

/// Every registered watcher; lives behind a mutex in the store core.
/// Lock order: the state lock first, then the hub.
#[derive(Default)]
pub(crate) struct WatchHub {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

impl WatchHub {
    /// Publishes the events of one applied revision to live watchers.
    /// Called by apply with the state write lock held.
    pub(crate) fn publish(&mut self, revision: i64, events: &[Event]) {
        self.entries.retain(|_, entry| {
            if !entry.live || revision < entry.min_revision {
                return true;
            }
            let selected = entry.spec.select(events);
            if selected.is_empty() {
                return true;
            }
            let mut response = entry.spec.response(revision);
            response.events = selected;
            send_or_end(entry, response)
        });
    }

    /// Sends a progress note (no events, `header.revision = revision`) to
    /// idle live watchers: those that asked for notifications, or all if
    /// `everyone`. A busy watcher's next events tell it more than a note.
    pub(crate) fn progress(&mut self, revision: i64, everyone: bool) {
        for entry in self.entries.values() {
            let idle = entry.sender.capacity() == entry.sender.max_capacity();
            if entry.live && (everyone || entry.spec.progress_notify) && idle {
                // Idle, so there is room; a full queue just skips a note.
                let _ = entry.sender.try_send(entry.spec.response(revision));
            }
        }
    }

    /// Ends every watcher (their history no longer matches the state).
    pub(crate) fn end_all(&mut self, revision: i64) {
        for (_, entry) in self.entries.drain() {
            let mut response = entry.spec.response(revision);
            response.canceled = true;
            response.cancel_reason = RESTORE_REASON.into();
            entry.ending.set(response);
        }
    }

    pub(crate) fn watcher_count(&self) -> usize {
        self.entries.len()
    }
}

/// Queues a response for a live watcher; ends the watcher if its queue is
/// full. Returns whether the watcher stays registered.
fn send_or_end(entry: &Entry, response: WatchResponse) -> bool {
    match entry.sender.try_send(response) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(response)) => {
            let mut cancel = entry
                .spec
                .response(response.header.map_or(0, |h| h.revision) - 1);
            cancel.canceled = true;
            cancel.cancel_reason = SLOW_REASON.into();
            entry.ending.set(cancel);
            tracing::warn!(watch_id = entry.spec.watch_id, "cancelled a slow watcher");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

enum Phase {
    CatchingUp { next_revision: i64 },
    Live,
    Done,
}

/// One watch's stream of responses. The first is `created`; the last, if
/// the store ended the watch, is `canceled` with a reason. Dropping the
/// watcher unregisters it.
pub struct Watcher {
    core: Arc<Core>,
    id: u64,
    spec: Arc<WatchSpec>,
    receiver: mpsc::Receiver<WatchResponse>,
    ending: Arc<Ending>,
    phase: Phase,
    pending: VecDeque<WatchResponse>,
    progress_requested: bool,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Watcher")
            .field("id", &self.id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Registers a watch. Called by the store with its state read lock held
    /// (`current` and `compact` read under it).
    pub(crate) fn register(
        core: Arc<Core>,
        hub: &mut WatchHub,
        request: &WatchCreateRequest,
        current: i64,
    ) -> Result<Watcher> {
        if request.key.is_empty() {
            return Err(Error::InvalidRequest("watch key is not provided".into()));
        }
        if request.start_revision < 0 {
            return Err(Error::InvalidRequest(
                "watch start revision is negative".into(),
            ));
        }
        if hub.entries.len() >= WATCHERS_MAX {
            return Err(Error::TooLarge {
                what: "watchers",
                size: hub.entries.len() + 1,
                limit: WATCHERS_MAX,
            });
        }
        hub.next_id += 1;
        let id = hub.next_id;
        let watch_id = if request.watch_id != 0 {
            request.watch_id
        } else {
            id as i64
        };
        let spec = Arc::new(WatchSpec {
            key: request.key.clone(),
            range_end: request.range_end.clone(),
            prev_kv: request.prev_kv,
            no_put: request.filters.contains(&(FilterType::NoPut as i32)),
            no_delete: request.filters.contains(&(FilterType::NoDelete as i32)),
            progress_notify: request.progress_notify,
            watch_id,
        });
        let next_revision = if request.start_revision == 0 {
            current + 1
        } else {
            request.start_revision
        };
        let (sender, receiver) = mpsc::channel(WATCHER_QUEUE_RESPONSES_MAX);
        let ending = Arc::new(Ending::default());
        // A watch of the present or future has no history to read: it is
        // live at once (the caller holds the state lock, so nothing is
        // applied in between).
        let live = next_revision > current;
        let entry = Entry {
            spec: spec.clone(),
            sender,
            live,
            min_revision: next_revision,
            ending: ending.clone(),
        };
        hub.entries.insert(id, entry);
        let mut created = spec.response(current);
        created.created = true;
        Ok(Watcher {
            core,
            id,
            spec,
            receiver,
            ending,
            phase: if live {
                Phase::Live
            } else {
                Phase::CatchingUp { next_revision }
            },
            pending: VecDeque::from([created]),
            progress_requested: false,
        })
    }

    /// The id responses carry.
    pub fn watch_id(&self) -> i64 {
        self.spec.watch_id
    }

    /// The next response; `None` once the watch has ended and its final
    /// response was returned. Cancel-safe: dropping the future (in a
    /// `select!`) loses no response.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            if let Some(response) = self.pending.pop_front() {
                return Some(response);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::CatchingUp { next_revision } => {
                    self.catch_up(next_revision);
                    if self.pending.is_empty() {
                        // A step over revisions this watch does not select:
                        // let other tasks run before the next step.
                        tokio::task::yield_now().await;
                    }
                }
                Phase::Live => match self.receiver.recv().await {
                    Some(response) => return Some(response),
                    None => {
                        self.phase = Phase::Done;
                        return self.ending.take();
                    }
                },
            }
        }
    }

    /// The next response if one is ready now, without waiting: catch-up
    /// responses are always ready; live ones if queued.
    pub fn try_next(&mut self) -> Option<WatchResponse> {
        loop {
            if let Some(response) = self.pending.pop_front() {
                return Some(response);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::CatchingUp { next_revision } => self.catch_up(next_revision),
                Phase::Live => match self.receiver.try_recv() {
                    Ok(response) => return Some(response),
                    Err(mpsc::error::TryRecvError::Empty) => return None,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.phase = Phase::Done;
                        return self.ending.take();
                    }
                },
            }
        }
    }

    /// Asks for a progress note (etcd's `WatchProgressRequest`): sent now if
    /// the watcher is live, or as soon as catch-up reaches the present.
    pub fn request_progress(&mut self) {
        match self.phase {
            Phase::CatchingUp { .. } => self.progress_requested = true,
            Phase::Done => {}
            Phase::Live => {
                let state = self.core.read_state();
                let revision = state.machine.index.current_revision();
                let hub = self.core.lock_hub();
                if let Some(entry) = hub.entries.get(&self.id) {
                    // A full queue already holds newer news than a note.
                    let _ = entry.sender.try_send(self.spec.response(revision));
                }
            }
        }
    }

    /// One bounded step of catch-up from history; switches to live when it
    /// reaches the current revision.
    fn catch_up(&mut self, next_revision: i64) {
        let core = self.core.clone();
        let state = core.read_state();
        if let Some(ending) = self.ending.take() {
            self.finish(ending);
            return;
        }
        let index = &state.machine.index;
        let batch = match index.catch_up(
            next_revision,
            &self.spec.key,
            &self.spec.range_end,
            CATCH_UP_EVENTS_MAX,
            CATCH_UP_REVISIONS_SCANNED_MAX,
        ) {
            Ok(batch) => batch,
            Err(_) => {
                let mut cancel = self.spec.response(index.current_revision());
                cancel.canceled = true;
                cancel.compact_revision = index.compact_revision();
                cancel.cancel_reason = COMPACTED_REASON.into();
                self.finish(cancel);
                return;
            }
        };
        let events = self.spec.select(&batch.events);
        let through = (batch.next_revision - 1).min(index.current_revision());
        if !events.is_empty() {
            let mut response = self.spec.response(through);
            response.events = events;
            self.pending.push_back(response);
        }
        if batch.next_revision <= index.current_revision() {
            self.phase = Phase::CatchingUp {
                next_revision: batch.next_revision,
            };
            return;
        }
        // Caught up. Still under the read lock: nothing was applied since
        // the history was read, so live delivery starts exactly after it.
        let mut hub = core.lock_hub();
        if let Some(entry) = hub.entries.get_mut(&self.id) {
            entry.live = true;
            entry.min_revision = batch.next_revision;
        }
        self.phase = Phase::Live;
        if std::mem::take(&mut self.progress_requested) {
            self.pending
                .push_back(self.spec.response(index.current_revision()));
        }
    }

    fn finish(&mut self, response: WatchResponse) {
        self.pending.push_back(response);
        self.phase = Phase::Done;
        self.core.lock_hub().entries.remove(&self.id);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.core.lock_hub().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kv::proto::{Command, CompactionRequest, command};
    use crate::kv::proto::{KeyValue, prefix_end};
    use crate::kv::testing::{TestStore, op_put, txn_cmd};
    use crate::replica::StateMachine;

    const WAIT: Duration = Duration::from_secs(10);

    fn watch_from(store: &TestStore, key: &str, range_end: &[u8], start_revision: i64) -> Watcher {
        let request = WatchCreateRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            start_revision,
            prev_kv: true,
            ..Default::default()
        };
        let mut watcher = store.store.watch(&request).expect("watch");
        let created = watcher.try_next().expect("created first");
        assert!(created.created);
        watcher
    }

    async fn next(watcher: &mut Watcher) -> WatchResponse {
        tokio::time::timeout(WAIT, watcher.next())
            .await
            .expect("a response within the bound")
            .expect("the watch is open")
    }

    /// (revision, key) of every event, checking each response holds whole
    /// revisions in order.
    fn events_of(response: &WatchResponse) -> Vec<(i64, String)> {
        response
            .events
            .iter()
            .map(|event| {
                let kv: &KeyValue = event.kv.as_ref().expect("kv");
                (
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                )
            })
            .collect()
    }

    fn compact(store: &TestStore, revision: i64) {
        let command = Command {
            request: Some(command::Request::Compaction(CompactionRequest {
                revision,
                physical: true,
            })),
        };
        store.apply(&command).expect("compacts");
    }

    #[tokio::test]
    async fn catch_up_then_live_without_gap_or_duplicate() {
        let store = TestStore::new();
        let history = CATCH_UP_EVENTS_MAX * 2 + 10;
        for i in 0..history {
            store.put(&format!("k{}", i % 7), "v");
        }
        let mut watcher = watch_from(&store, "k", &prefix_end(b"k"), 2);
        let last = store.store.current_revision() + 500;
        let mut seen = Vec::new();
        // Interleave writes with reading, so the switch to live happens
        // while the store keeps moving.
        while seen.last().is_none_or(|revision| *revision < last) {
            let response = next(&mut watcher).await;
            seen.extend(
                events_of(&response)
                    .into_iter()
                    .map(|(revision, _)| revision),
            );
            if store.store.current_revision() < last {
                store.put("k-live", "v");
            }
        }
        let expected: Vec<i64> = (2..=last).collect();
        assert_eq!(seen, expected);
        assert!(watcher.try_next().is_none());
    }

    #[test]
    fn concurrent_writer_and_watcher_see_every_revision_once() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = std::sync::Arc::new(TestStore::new());
        for _ in 0..100 {
            store.put("a", "v");
        }
        let last: i64 = 101 + 3000;
        // The newest revision the watcher has seen: the writer stays less
        // than half a live queue ahead of it, as a slower writer would, so
        // that a loaded machine tests the catch-up, not the (tested
        // elsewhere) cancellation of a watcher that falls a queue behind.
        let seen_up_to = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let lead_max = (WATCHER_QUEUE_RESPONSES_MAX / 2) as i64;
        let writer = {
            let store = store.clone();
            let seen_up_to = seen_up_to.clone();
            std::thread::spawn(move || {
                while store.store.current_revision() < last {
                    let seen = seen_up_to.load(std::sync::atomic::Ordering::Acquire);
                    if store.store.current_revision() - seen.max(101) < lead_max {
                        store.put("a", "v");
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut watcher = watch_from(&store, "a", &[], 2);
        let seen = runtime.block_on(async move {
            let mut seen = Vec::new();
            while seen.last().is_none_or(|revision| *revision < last) {
                let response = next(&mut watcher).await;
                seen.extend(
                    events_of(&response)
                        .into_iter()
                        .map(|(revision, _)| revision),
                );
                if let Some(newest) = seen.last() {
                    seen_up_to.store(*newest, std::sync::atomic::Ordering::Release);
                }
            }
            seen
        });
        writer.join().expect("writer");
        assert_eq!(seen, (2..=last).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn a_revision_is_delivered_whole() {
        let store = TestStore::new();
        let mut live = watch_from(&store, "a", &[0], 0);
        let txn = txn_cmd(
            vec![],
            vec![op_put("x", "1"), op_put("b", "1"), op_put("m", "1")],
            vec![],
        );
        store.apply(&txn).expect("txn");
        store.put("z", "2");
        let expected = vec![(2, "x".to_string()), (2, "b".into()), (2, "m".into())];
        assert_eq!(events_of(&next(&mut live).await), expected, "op order kept");
        assert_eq!(
            events_of(&next(&mut live).await),
            vec![(3, "z".to_string())]
        );
        let mut replay = watch_from(&store, "a", &[0], 2);
        let response = next(&mut replay).await;
        assert_eq!(events_of(&response)[..3], expected[..]);
        assert_eq!(response.header.expect("header").revision, 3);
    }

    #[tokio::test]
    async fn a_slow_watcher_is_cancelled_not_buffered() {
        let store = TestStore::new();
        let mut slow = watch_from(&store, "k", &[], 0);
        for _ in 0..=WATCHER_QUEUE_RESPONSES_MAX {
            store.put("k", "v");
        }
        assert_eq!(store.store.watcher_count(), 0, "unregistered at once");
        for _ in 0..WATCHER_QUEUE_RESPONSES_MAX {
            assert_eq!(
                next(&mut slow).await.events.len(),
                1,
                "queued events still arrive"
            );
        }
        let cancel = next(&mut slow).await;
        assert!(cancel.canceled);
        assert!(
            cancel.cancel_reason.contains("too slow"),
            "{}",
            cancel.cancel_reason
        );
        assert!(slow.next().await.is_none());
    }

    #[tokio::test]
    async fn a_compacted_start_is_cancelled_with_the_compact_revision() {
        let store = TestStore::new();
        for _ in 0..4 {
            store.put("k", "v"); // 2..=5
        }
        compact(&store, 4);
        let mut old = watch_from(&store, "k", &[], 4);
        let cancel = next(&mut old).await;
        assert!(cancel.canceled);
        assert_eq!(cancel.compact_revision, 4);
        assert!(old.next().await.is_none());
        let mut kept = watch_from(&store, "k", &[], 5);
        assert_eq!(
            events_of(&next(&mut kept).await),
            vec![(5, "k".to_string())]
        );
    }

    #[tokio::test]
    async fn filters_prev_kv_and_future_starts() {
        let store = TestStore::new();
        let request = WatchCreateRequest {
            key: b"k".to_vec(),
            filters: vec![FilterType::NoPut as i32],
            prev_kv: true,
            start_revision: 3,
            ..Default::default()
        };
        let mut deletes = store.store.watch(&request).expect("watch");
        assert!(next(&mut deletes).await.created);
        store.put("k", "one"); // 2, before the start
        store.delete("k", ""); // 3
        store.put("k", "two"); // 4, filtered
        store.delete("k", ""); // 5
        let first = next(&mut deletes).await;
        assert_eq!(events_of(&first), vec![(3, "k".to_string())]);
        assert_eq!(
            first.events[0].prev_kv.as_ref().expect("prev").value,
            b"one"
        );
        let second = next(&mut deletes).await;
        assert_eq!(events_of(&second), vec![(5, "k".to_string())]);
        assert!(deletes.try_next().is_none());
    }

    #[tokio::test]
    async fn progress_notifications_report_the_current_revision() {
        let store = TestStore::new();
        store.put("other", "v");
        let request = WatchCreateRequest {
            key: b"k".to_vec(),
            progress_notify: true,
            ..Default::default()
        };
        let mut watcher = store.store.watch(&request).expect("watch");
        let mut silent = watch_from(&store, "k", &[], 0);
        assert!(next(&mut watcher).await.created);
        store.put("other", "v"); // 3
        store.store.progress_notify();
        let progress = next(&mut watcher).await;
        assert!(progress.events.is_empty());
        assert_eq!(progress.header.expect("header").revision, 3);
        assert!(silent.try_next().is_none(), "only watchers that asked");
        store.store.progress_notify_all();
        assert_eq!(next(&mut silent).await.header.expect("header").revision, 3);
        assert_eq!(next(&mut watcher).await.header.expect("header").revision, 3);
        silent.request_progress();
        assert_eq!(next(&mut silent).await.header.expect("header").revision, 3);
    }

    /// Seeded random writes with a watcher read at random moments: replaying
    /// its events must rebuild exactly the store's final state, and every
    /// response must hold whole revisions in increasing order.
    #[tokio::test]
    async fn replaying_events_rebuilds_the_state() {
        use std::collections::BTreeMap;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let store = TestStore::new();
        store.put("k0", "first");
        // Revision 2 is history now, so the watcher starts by catching up.
        let mut watcher = watch_from(&store, "a", &[0], 2);
        let mut replayed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut last_revision = 1;
        let mut consume = |response: WatchResponse, replayed: &mut BTreeMap<_, _>| {
            assert!(!response.canceled, "{}", response.cancel_reason);
            let mut revisions: Vec<i64> = Vec::new();
            for event in response.events {
                let kv = event.kv.expect("kv");
                revisions.push(kv.mod_revision);
                if event.r#type == EventType::Put as i32 {
                    replayed.insert(kv.key, kv.value);
                } else {
                    replayed.remove(&kv.key);
                }
            }
            assert!(revisions.windows(2).all(|pair| pair[0] <= pair[1]));
            if let Some(first) = revisions.first() {
                assert!(
                    *first > last_revision,
                    "revision {first} after {last_revision}"
                );
                last_revision = *revisions.last().expect("non-empty");
            }
        };
        for step in 0..3_000u64 {
            let key = format!("k{}", random(12));
            match random(4) {
                0 | 1 => {
                    store.put(&key, &format!("v{step}"));
                }
                2 => {
                    store.delete(&key, &format!("k{}", random(12)));
                }
                _ => {
                    let other = format!("k{}", random(12));
                    let ops = if other == key {
                        vec![op_put(&key, "t")]
                    } else {
                        vec![op_put(&key, "t1"), op_put(&other, "t2")]
                    };
                    store.apply(&txn_cmd(vec![], ops, vec![])).expect("txn");
                }
            }
            // Nothing read for the first half (a long catch-up), then drain
            // at random moments: the switch to live lands between writes.
            if step > 1_500 && random(3) == 0 {
                while let Some(response) = watcher.try_next() {
                    consume(response, &mut replayed);
                }
            }
        }
        while let Some(response) = watcher.try_next() {
            consume(response, &mut replayed);
        }
        let all = store
            .store
            .range(&crate::kv::testing::range("a", "\0"))
            .expect("range");
        let expected: BTreeMap<Vec<u8>, Vec<u8>> =
            all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(replayed, expected);
        assert_eq!(last_revision, store.store.current_revision());
    }

    #[test]
    fn watchers_and_their_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let store = TestStore::new();
        let mut watcher = watch_from(&store, "k", &[], 0);
        assert_send(&watcher);
        assert_send(&watcher.next());
    }

    #[tokio::test]
    async fn restore_and_drop_end_watchers() {
        let store = TestStore::new();
        store.put("k", "v");
        let (index, image) = store.store.snapshot().expect("snapshot");
        let mut live = watch_from(&store, "k", &[], 0);
        let dropped = watch_from(&store, "k", &[], 0);
        assert_eq!(store.store.watcher_count(), 2);
        drop(dropped);
        assert_eq!(store.store.watcher_count(), 1);
        store.store.restore(index, &image).expect("restore");
        let cancel = next(&mut live).await;
        assert!(cancel.canceled && cancel.cancel_reason.contains("snapshot"));
        assert!(live.next().await.is_none());
    }
}
