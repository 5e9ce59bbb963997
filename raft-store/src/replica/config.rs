//! Tuning for one replica: ticks, timeouts, snapshot cadence and the bounds of
//! its queues. It knows nothing of what the replicated commands mean.

use std::time::Duration;

use crate::error::MemberId;

/// How often raft's logical clock ticks. 100 ms with
/// [`ELECTION_TICKS_DEFAULT`] gives etcd's default 1 s election timeout.
pub const TICK_INTERVAL_MS_DEFAULT: u64 = 100;

/// Ticks without hearing from a leader before a follower campaigns. raft-rs
/// randomises the real timeout in `[election, 2 * election)` ticks so that
/// members rarely campaign at once.
pub const ELECTION_TICKS_DEFAULT: usize = 10;

/// Ticks between a leader's heartbeats: every tick, as etcd's 100 ms
/// heartbeat against a 1 s election timeout.
pub const HEARTBEAT_TICKS_DEFAULT: usize = 1;

/// How long a proposal or read may wait for its answer. etcd's clients give
/// up on a request after 5 s; after that the outcome is unknown to the caller.
pub const PROPOSAL_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Entries applied since the last snapshot before a new one is taken and the
/// log truncated. etcd's default snapshot count is 10,000 (since 3.2): enough
/// to make snapshots rare, few enough that a replayed log stays short.
pub const SNAPSHOT_INTERVAL_ENTRIES_DEFAULT: u64 = 10_000;

/// Requests queued for one replica's task. Senders wait when it is full
/// (network steps are dropped instead), so this bounds memory while letting
/// thousands of concurrent proposals share a Ready and its fsync.
pub const MAILBOX_CAPACITY: usize = 4_096;

/// Requests taken from the mailbox before a Ready is processed. Large enough
/// for group commit to pay off, small enough that ticks and the disk are not
/// starved by a flood.
pub const MAILBOX_BATCH_MAX: usize = 1_024;

/// Proposals waiting for their entry to apply. Beyond this the replica
/// refuses new ones instead of growing without bound while a quorum is away.
pub const PENDING_PROPOSALS_MAX: usize = 65_536;

/// Linearizable reads waiting on this member. Each costs a few bytes and
/// they share read-index rounds, so this is generous; it stops a member cut
/// off from its leader from queueing readers without limit until they time out.
pub const PENDING_READS_MAX: usize = 65_536;

/// The largest command a proposal may carry: etcd's 1.5 MiB request limit
/// plus room for the envelope. Larger entries would stall replication.
pub const PROPOSAL_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Bytes of entries in one append message. 1 MiB, as etcd's
/// `maxSizePerMsg`, keeps a catching-up follower's messages small.
pub const APPEND_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;

/// Append messages in flight to one follower before the leader waits for
/// acknowledgements. etcd uses 4,096 / 256 for its streams; 256 keeps the
/// transport's queues short.
pub const INFLIGHT_APPEND_MESSAGES_MAX: usize = 256;

/// Bytes of proposed but uncommitted entries the leader accepts before it
/// drops new proposals: back-pressure when followers cannot keep up.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Configuration of one replica. Build it with [`ReplicaConfig::new`] and
/// override fields as needed; tests shorten the timings.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This member's id (non-zero, unique in the cluster).
    pub id: MemberId,
    /// The voters of a brand-new cluster. Used only when the log is empty:
    /// the first members of a cluster all pass the same list; a member that
    /// joins later passes an empty list and waits for the leader's snapshot.
    pub initial_voters: Vec<MemberId>,
    /// Wall-clock length of one raft tick.
    pub tick_interval_ms: u64,
    /// Ticks before a follower without a leader campaigns (the lower bound
    /// of the randomised election timeout).
    pub election_ticks: usize,
    /// Exclusive upper bound of the randomised election timeout, in ticks.
    /// 0 means `2 * election_ticks`. A seeded simulation sets it to
    /// `election_ticks + 1` (and varies `election_ticks` per member from its
    /// seed) so raft's own unseeded randomness has nothing to choose.
    pub election_ticks_max: usize,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// How long a proposal or linearizable read may wait before it fails
    /// with [`crate::Error::Timeout`].
    pub proposal_timeout_ms: u64,
    /// Applied entries between snapshots (and log truncations).
    pub snapshot_interval_entries: u64,
}

impl ReplicaConfig {
    /// Defaults for member `id`; `initial_voters` as on [`Self::initial_voters`].
    pub fn new(id: MemberId, initial_voters: Vec<MemberId>) -> Self {
        ReplicaConfig {
            id,
            initial_voters,
            tick_interval_ms: TICK_INTERVAL_MS_DEFAULT,
            election_ticks: ELECTION_TICKS_DEFAULT,
            election_ticks_max: 0,
            heartbeat_ticks: HEARTBEAT_TICKS_DEFAULT,
            proposal_timeout_ms: PROPOSAL_TIMEOUT_MS_DEFAULT,
            snapshot_interval_entries: SNAPSHOT_INTERVAL_ENTRIES_DEFAULT,
        }
    }

    pub(crate) fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms.max(1))
    }

    pub(crate) fn proposal_timeout(&self) -> Duration {
        Duration::from_millis(self.proposal_timeout_ms)
    }

    /// The raft-rs configuration: pre-vote and check-quorum on, so a member
    /// rejoining after a partition cannot depose a healthy leader and a
    /// leader cut off from its quorum steps down.
    pub(crate) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            min_election_tick: self.election_ticks,
            max_election_tick: self.election_ticks_max,
            applied,
            max_size_per_msg: APPEND_MESSAGE_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_APPEND_MESSAGES_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        }
    }
}
