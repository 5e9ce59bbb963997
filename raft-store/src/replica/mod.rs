//! Replication: one task owns a raft-rs `RawNode` and drives its Ready loop.
//!
//! This module knows nothing of keys, values or revisions. It orders opaque
//! command bytes, makes them durable through a [`LogStore`], ships raft
//! messages through a [`Network`], and hands committed commands to a
//! [`StateMachine`]. The three traits below are the seams: the real store
//! plugs in [`crate::log`], [`crate::transport`] and [`crate::kv`]; the
//! seeded simulation plugs in its own network and disk.
//!
//! Start at [`Replica::start`], which returns a [`ReplicaHandle`]: propose a
//! command and get the state machine's answer, wait for a linearizable read
//! index, hand in raft messages, change membership, watch leadership. The
//! Ready loop itself is in `node.rs`, one commented step per raft-rs rule.
//! [`MemLog`] is an in-memory [`LogStore`] that loses unsynced writes when
//! reopened, for tests.
//!
//! What the replica expects of its seams, beyond the signatures:
//! - `LogStore::snapshot` returns the latest snapshot stored through
//!   `apply_snapshot` or `compact_to_snapshot`, data included: it is what a
//!   restarting member restores its state machine from, and what a leader
//!   sends to a member that is too far behind.
//! - The state machine given to `start` is new (applied index 0): the
//!   replica restores it from the log's snapshot and replays the rest.
//! - Raft's proposal forwarding is not idempotent: a transport must not
//!   deliver one `MsgPropose` twice (QUIC streams do not).

use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot};

use crate::error::{MemberId, Result};

/// What committed commands are applied to. Implemented by [`crate::kv`].
///
/// `apply` must be deterministic: every member applies the same entries in
/// the same order and must reach the same state.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the command committed at `index` and returns the encoded
    /// response for the proposer. An empty `command` is raft's own no-op entry
    /// and only advances the applied index.
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8>;

    /// The index of the last applied entry (0 before the first).
    fn applied_index(&self) -> u64;

    /// A consistent image of the whole state at `applied_index()`.
    fn snapshot(&self) -> Result<(u64, Vec<u8>)>;

    /// Replaces the whole state with a snapshot taken at `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<()>;
}

/// The durable raft log of one member. Implemented by [`crate::log`]; the
/// simulation has its own that can lose what was not synced.
///
/// Writes are buffered until [`LogStore::sync`], which makes everything
/// written so far durable with one fsync: that is the group commit of one
/// Ready batch.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends entries, truncating any conflicting suffix first.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;

    /// Records the hard state (term, vote, commit).
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()>;

    /// Records the membership.
    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()>;

    /// Installs a snapshot received from the leader, dropping older entries.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()>;

    /// Stores a snapshot this member took of its own state machine and drops
    /// log entries up to `snapshot.get_metadata().index`.
    fn compact_to_snapshot(&mut self, snapshot: Snapshot) -> Result<()>;

    /// Makes every write so far durable (one fsync for the batch).
    fn sync(&mut self) -> Result<()>;
}

/// Carries raft messages to other members. Implemented by
/// [`crate::transport`] over QUIC; the simulation has a seeded network.
///
/// `send` never blocks the Ready loop: a message that cannot be queued is
/// dropped, which raft tolerates by retrying.
pub trait Network: Send + Sync + 'static {
    /// Queues `message` for member `to`.
    fn send(&self, to: MemberId, message: Message);

    /// Tells the network where member `id` listens (on membership change).
    fn set_peer_address(&self, id: MemberId, address: String);

    /// Forgets member `id` (on removal).
    fn remove_peer(&self, id: MemberId);
}

mod config;
mod handle;
mod logging;
pub mod mem_log;
mod metrics;
mod node;
mod pending;

pub use config::{
    APPEND_MESSAGE_BYTES_MAX, ELECTION_TICKS_DEFAULT, HEARTBEAT_TICKS_DEFAULT,
    INFLIGHT_APPEND_MESSAGES_MAX, MAILBOX_BATCH_MAX, MAILBOX_CAPACITY, PENDING_PROPOSALS_MAX,
    PENDING_READS_MAX, PROPOSAL_BYTES_MAX, PROPOSAL_TIMEOUT_MS_DEFAULT, ReplicaConfig,
    SNAPSHOT_INTERVAL_ENTRIES_DEFAULT, TICK_INTERVAL_MS_DEFAULT, UNCOMMITTED_BYTES_MAX,
};
pub use handle::{Leadership, MembershipChange, ReplicaHandle, ReplicaStatus};
pub use mem_log::{MemDisk, MemLog};
pub use metrics::ReplicaMetrics;
pub use node::Replica;
