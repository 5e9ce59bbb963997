//! [`KvStore`]: the replicated state machine the replica applies committed
//! commands to, and the read side the client-protocol server queries.
//!
//! Locking: the state (index, leases, applied index) sits behind one
//! `RwLock`; the watch hub and the lessor behind their own mutexes, always
//! taken after the state lock. `apply` holds the state write lock while it
//! changes the state *and* publishes that revision's events, which is what
//! makes watch catch-up → live switches gap-free (see [`super::watch`]).
//!
//! It does not know raft: linearizable reads are the caller's job (ReadIndex
//! before [`KvStore::range`]), and so is deciding who leads (the member calls
//! [`KvStore::promote`] / [`KvStore::demote`]).
//!
//! On [`StateMachine::restore`] every watcher is cancelled with a reason:
//! the history it was reading has been replaced, and the simplest way to
//! promise no gap and no duplicate is to let clients resume from their last
//! revision + 1 against the new state.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

use super::apply::{LeaseChange, Machine, Outcome};
use super::lease::Lessor;
use super::limits::validate_range;
use super::proto::{
    CommandError, CommandResponse, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, RangeRequest, RangeResponse, ResponseHeader,
    WatchCreateRequest, command_response, decode_command, encode_response,
};
use super::snapshot;
use super::watch::{WatchHub, Watcher};
use crate::error::{Error, Result};
use crate::replica::StateMachine;

/// Where the store reads the time when it applies a lease grant on the
/// leader. Tests hand in a clock they move by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The deterministic, replicated part and the index it was applied through.
pub(crate) struct Replicated {
    pub(crate) machine: Machine,
    pub(crate) applied_index: u64,
}

/// Shared by the store and its watchers.
pub(crate) struct Core {
    state: RwLock<Replicated>,
    hub: Mutex<WatchHub>,
    lessor: Mutex<Lessor>,
    clock: Arc<dyn Clock>,
}

impl Core {
    /// A panic while a lock was held cannot leave the state half-written
    /// (every check runs before the first write), so a poisoned lock is
    /// still consistent and is used as is.
    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, Replicated> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_hub(&self) -> MutexGuard<'_, WatchHub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_lessor(&self) -> MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The MVCC key-value state machine with watches and leases.
///
/// ```
/// use flotilla_raft_store::kv::proto::{
///     Command, PutRequest, RangeRequest, command, decode_response, encode_command,
/// };
/// use flotilla_raft_store::kv::{KvStore, prefix_end, validate};
/// use flotilla_raft_store::replica::StateMachine;
///
/// let store = KvStore::default();
/// let put = Command {
///     request: Some(command::Request::Put(PutRequest {
///         key: b"/registry/pods/default/web".to_vec(),
///         value: b"{}".to_vec(),
///         ..Default::default()
///     })),
/// };
/// validate(&put)?; // before proposing
/// let answer = store.apply(1, &encode_command(&put)); // once committed
/// decode_response(&answer)?;
/// let pods = store.range(&RangeRequest {
///     key: b"/registry/pods/".to_vec(),
///     range_end: prefix_end(b"/registry/pods/"),
///     ..Default::default()
/// })?;
/// assert_eq!((pods.count, pods.kvs[0].mod_revision), (1, 2));
/// # Ok::<(), flotilla_raft_store::Error>(())
/// ```
#[derive(Clone)]
pub struct KvStore {
    core: Arc<Core>,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KvStore")
            .field("current_revision", &self.current_revision())
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl KvStore {
    /// An empty store (revision 1) reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        KvStore {
            core: Arc::new(Core {
                state: RwLock::new(Replicated {
                    machine: Machine::default(),
                    applied_index: 0,
                }),
                hub: Mutex::new(WatchHub::default()),
                lessor: Mutex::new(Lessor::default()),
                clock,
            }),
        }
    }

    /// Serves a range from this member's state. For a linearizable read the
    /// caller first confirms, through ReadIndex, that this member has applied
    /// everything committed when the read arrived.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse> {
        let _span = tracing::debug_span!("kv.range", revision = request.revision).entered();
        validate_range(request)?;
        let state = self.core.read_state();
        let index = &state.machine.index;
        index.range(request, index.current_revision())
    }

    /// The revision of the last write.
    pub fn current_revision(&self) -> i64 {
        self.core.read_state().machine.index.current_revision()
    }

    /// The revision history was compacted at (0 if never).
    pub fn compact_revision(&self) -> i64 {
        self.core.read_state().machine.index.compact_revision()
    }

    /// Starts a watch. Its first response is `created`; a start at or below
    /// the compacted revision is then `canceled` with `compact_revision` set.
    pub fn watch(&self, request: &WatchCreateRequest) -> Result<Watcher> {
        let _span =
            tracing::debug_span!("kv.watch", start_revision = request.start_revision).entered();
        let state = self.core.read_state();
        let current = state.machine.index.current_revision();
        let mut hub = self.core.lock_hub();
        Watcher::register(self.core.clone(), &mut hub, request, current)
    }

    /// Sends a progress note with the current revision to every idle live
    /// watcher that asked for progress notifications. The member calls this
    /// on a timer (etcd: every 10 minutes by default; Kubernetes asks more
    /// often). A per-watch request goes through [`Watcher::request_progress`].
    pub fn progress_notify(&self) {
        let state = self.core.read_state();
        let revision = state.machine.index.current_revision();
        self.core.lock_hub().progress(revision, false);
    }

    /// Sends a progress note with the current revision to every idle live
    /// watcher, asked for or not (for a member that answers a client's
    /// progress request across all its watches at once).
    pub fn progress_notify_all(&self) {
        let state = self.core.read_state();
        let revision = state.machine.index.current_revision();
        self.core.lock_hub().progress(revision, true);
    }

    /// How many watchers are registered (for metrics and tests).
    pub fn watcher_count(&self) -> usize {
        self.core.lock_hub().watcher_count()
    }

    /// A lease's granted TTL, remaining TTL and (if asked) keys. The
    /// remaining TTL is the leader's view; a follower reports the granted
    /// TTL, so callers wanting the true remainder ask the leader.
    pub fn lease_time_to_live(
        &self,
        request: &LeaseTimeToLiveRequest,
        now: Instant,
    ) -> LeaseTimeToLiveResponse {
        let state = self.core.read_state();
        let mut response = LeaseTimeToLiveResponse {
            header: header(state.machine.index.current_revision()),
            id: request.id,
            ttl_secs: -1,
            ..Default::default()
        };
        if let Some(entry) = state.machine.leases.get(request.id) {
            response.granted_ttl_secs = entry.ttl_secs;
            response.ttl_secs = self
                .core
                .lock_lessor()
                .remaining_secs(request.id, now)
                .unwrap_or(entry.ttl_secs);
            if request.keys {
                response.keys = entry.keys.iter().cloned().collect();
            }
        }
        response
    }

    /// Every lease, in id order.
    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        let state = self.core.read_state();
        LeaseLeasesResponse {
            header: header(state.machine.index.current_revision()),
            leases: state
                .machine
                .leases
                .iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }
    }

    /// Renews a lease on the leader (`Error::NotLeader` elsewhere).
    pub fn lease_keep_alive(&self, id: i64, now: Instant) -> Result<LeaseKeepAliveResponse> {
        let revision = self.current_revision();
        let ttl_secs = self.core.lock_lessor().keep_alive(id, now)?;
        Ok(LeaseKeepAliveResponse {
            header: header(revision),
            id,
            ttl_secs,
        })
    }

    /// This member became leader: it starts deciding lease expiry, giving
    /// every lease a full TTL from `now`.
    pub fn promote(&self, now: Instant) {
        self.core.lock_lessor().promote(now);
    }

    /// This member stopped leading: it stops deciding lease expiry.
    pub fn demote(&self) {
        self.core.lock_lessor().demote();
    }

    /// Up to `max` expired leases for the leader to propose revokes for
    /// (see [`super::lease::LEASE_EXPIRED_BATCH_MAX`]); empty on followers.
    pub fn expired_leases(&self, now: Instant, max: usize) -> Vec<i64> {
        self.core.lock_lessor().expired(now, max)
    }

    /// Seconds left on a lease as this member's lessor sees it (leader only).
    pub fn lease_remaining_secs(&self, id: i64, now: Instant) -> Option<i64> {
        self.core.lock_lessor().remaining_secs(id, now)
    }

    fn follow_lease_changes(&self, changes: &[LeaseChange]) {
        if changes.is_empty() {
            return;
        }
        let now = self.core.clock.now();
        let mut lessor = self.core.lock_lessor();
        for change in changes {
            match change {
                LeaseChange::Granted { id, ttl_secs } => lessor.granted(*id, *ttl_secs, now),
                LeaseChange::Revoked { id } => lessor.revoked(*id),
            }
        }
    }
}

fn error_response(error: &Error) -> Vec<u8> {
    encode_response(&CommandResponse {
        response: Some(command_response::Response::Error(CommandError::from_error(
            error,
        ))),
    })
}

impl StateMachine for KvStore {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let _span = tracing::debug_span!("kv.apply", index, bytes = command.len()).entered();
        let mut state = self
            .core
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if index <= state.applied_index {
            // raft never applies an entry twice; if a caller does, refuse
            // rather than write a second revision.
            tracing::error!(index, applied = state.applied_index, "entry applied twice");
            return error_response(&Error::InvalidRequest(format!(
                "entry {index} was already applied (applied index {})",
                state.applied_index
            )));
        }
        state.applied_index = index;
        if command.is_empty() {
            return Vec::new();
        }
        let outcome = match decode_command(command) {
            Ok(command) => state.machine.execute(&command),
            Err(error) => Outcome {
                response: CommandResponse {
                    response: Some(command_response::Response::Error(CommandError::from_error(
                        &error,
                    ))),
                },
                revision: state.machine.index.current_revision(),
                ..Default::default()
            },
        };
        self.follow_lease_changes(&outcome.lease_changes);
        if !outcome.events.is_empty() {
            // Still under the write lock: watchers see revisions in order and
            // a catch-up cannot slip between this write and its publication.
            self.core
                .lock_hub()
                .publish(outcome.revision, &outcome.events);
        }
        encode_response(&outcome.response)
    }

    fn applied_index(&self) -> u64 {
        self.core.read_state().applied_index
    }

    fn snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let _span = tracing::info_span!("kv.snapshot").entered();
        let state = self.core.read_state();
        Ok((
            state.applied_index,
            snapshot::encode(&state.machine, state.applied_index),
        ))
    }

    /// The state becomes the snapshot's, applied through `index`. The
    /// snapshot may have been taken at a lower applied index when nothing
    /// in between touched the state (the replica's bootstrap snapshot of an
    /// empty store sits at index 1 but was taken at 0); one taken *after*
    /// `index` is refused, since the entries after `index` would be applied
    /// a second time.
    fn restore(&self, index: u64, data: &[u8]) -> Result<()> {
        let _span = tracing::info_span!("kv.restore", index, bytes = data.len()).entered();
        let (machine, snapshot_index) = snapshot::decode(data)?;
        if snapshot_index > index {
            return Err(Error::Corrupt(format!(
                "snapshot taken at applied index {snapshot_index}, restored at {index}"
            )));
        }
        let applied_index = index;
        let mut state = self
            .core
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let revision = machine.index.current_revision();
        let leases: Vec<(i64, i64)> = machine
            .leases
            .iter()
            .map(|(id, entry)| (id, entry.ttl_secs))
            .collect();
        *state = Replicated {
            machine,
            applied_index,
        };
        self.core
            .lock_lessor()
            .reset(leases.into_iter(), self.core.clock.now());
        self.core.lock_hub().end_all(revision);
        tracing::info!(index, revision, "kv state restored from a snapshot");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kv::proto::{Command, CompactionRequest, command, command_response::Response};
    use crate::kv::testing::{
        ManualClock, TestStore, grant_cmd, op_delete, op_put, put_cmd, revoke_cmd, txn_cmd,
    };

    /// A mixed command sequence touching every kind of state.
    fn workload() -> Vec<Command> {
        let mut commands = vec![grant_cmd(0, 60), grant_cmd(7, 5)];
        for i in 0..50 {
            let mut put = put_cmd(&format!("key/{}", i % 9), &format!("value {i}"));
            if let Some(command::Request::Put(request)) = &mut put.request {
                request.lease = if i % 3 == 0 { 7 } else { 0 };
            }
            commands.push(put);
            if i % 10 == 9 {
                commands.push(txn_cmd(
                    vec![],
                    vec![op_delete(&format!("key/{}", i % 4)), op_put("txn", "x")],
                    vec![],
                ));
            }
        }
        commands.push(Command {
            request: Some(command::Request::Compaction(CompactionRequest {
                revision: 20,
                physical: false,
            })),
        });
        commands.push(revoke_cmd(7));
        commands.push(put_cmd("after", "revoke"));
        commands
    }

    #[test]
    fn same_commands_give_identical_snapshots() {
        let (first, second) = (TestStore::new(), TestStore::new());
        for command in workload() {
            let a = first.apply(&command).map_err(|error| error.to_string());
            let b = second.apply(&command).map_err(|error| error.to_string());
            assert_eq!(a, b);
        }
        let (index_a, image_a) = first.store.snapshot().expect("snapshot");
        let (index_b, image_b) = second.store.snapshot().expect("snapshot");
        assert_eq!((index_a, &image_a), (index_b, &image_b));
        assert!(first.store.current_revision() > 50, "the workload wrote");
    }

    #[test]
    fn snapshot_restore_round_trips() {
        let source = TestStore::new();
        for command in workload() {
            let _ = source.apply(&command);
        }
        let (index, image) = source.store.snapshot().expect("snapshot");
        let target = KvStore::default();
        target.restore(index, &image).expect("restore");
        assert_eq!(target.applied_index(), index);
        assert_eq!(target.current_revision(), source.store.current_revision());
        assert_eq!(target.compact_revision(), 20);
        let (_, again) = target.snapshot().expect("snapshot");
        assert_eq!(again, image, "restore then snapshot is the identity");
        let state_a = source.store.core.read_state();
        let state_b = target.core.read_state();
        assert_eq!(state_a.machine, state_b.machine);
        assert!(
            target.restore(index - 1, &image).is_err(),
            "taken after the index"
        );
        // The replica's bootstrap: an empty store's image restored at 1.
        let (zero, empty) = KvStore::default().snapshot().expect("snapshot");
        assert_eq!(zero, 0);
        let bootstrapped = KvStore::default();
        bootstrapped.restore(1, &empty).expect("bootstrap restore");
        assert_eq!(bootstrapped.applied_index(), 1);
        assert_eq!(bootstrapped.current_revision(), 1);
        assert!(target.restore(index, b"garbage").is_err());
    }

    #[test]
    fn leases_expire_only_through_the_leader_and_revoke() {
        let clock = ManualClock::new();
        let store = TestStore::with_clock(clock.clone());
        let id = match store.apply(&grant_cmd(0, 10)).expect("grant") {
            Response::LeaseGrant(grant) => grant.id,
            other => panic!("unexpected {other:?}"),
        };
        let mut put = put_cmd("session", "alive");
        if let Some(command::Request::Put(request)) = &mut put.request {
            request.lease = id;
        }
        store.apply(&put).expect("attached put");

        clock.advance(Duration::from_secs(100));
        assert!(
            store.store.expired_leases(clock.now(), 10).is_empty(),
            "follower"
        );
        store.store.promote(clock.now());
        // The new leader gives the full TTL, whatever time passed before.
        assert_eq!(store.store.lease_remaining_secs(id, clock.now()), Some(10));
        clock.advance(Duration::from_secs(9));
        store
            .store
            .lease_keep_alive(id, clock.now())
            .expect("keep alive");
        clock.advance(Duration::from_secs(9));
        assert!(store.store.expired_leases(clock.now(), 10).is_empty());
        let ttl = store
            .store
            .lease_time_to_live(&LeaseTimeToLiveRequest { id, keys: true }, clock.now());
        assert_eq!((ttl.ttl_secs, ttl.granted_ttl_secs), (1, 10));
        assert_eq!(ttl.keys, vec![b"session".to_vec()]);

        clock.advance(Duration::from_secs(2));
        let expired = store.store.expired_leases(clock.now(), 10);
        assert_eq!(expired, vec![id]);
        let before = store.store.current_revision();
        store.apply(&revoke_cmd(id)).expect("revoke");
        assert_eq!(store.store.current_revision(), before + 1);
        assert!(store.get("session").is_none());
        assert!(store.store.lease_leases().leases.is_empty());
        let gone = store
            .store
            .lease_time_to_live(&LeaseTimeToLiveRequest { id, keys: false }, clock.now());
        assert_eq!(gone.ttl_secs, -1);
    }
}
