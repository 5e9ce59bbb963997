//! Counters a replica keeps about itself, readable from any thread. A plain
//! struct of atomics; the member glue exports them to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

/// What one replica has done since it started.
#[derive(Debug, Default)]
pub struct ReplicaMetrics {
    /// Proposals accepted into raft (commands and membership changes).
    pub proposals: AtomicU64,
    /// Proposals that failed (not leader, timeout, stopped, too large).
    pub proposals_failed: AtomicU64,
    /// `LogStore::sync` calls: one per Ready that had something to persist.
    pub fsyncs: AtomicU64,
    /// Entries persisted through `LogStore::append`.
    pub entries_appended: AtomicU64,
    /// The index of the last applied entry.
    pub applied_index: AtomicU64,
    /// Times the known (leader, term) changed.
    pub leader_changes: AtomicU64,
    /// raft read-index requests issued (each serves a batch of readers).
    pub read_index_requests: AtomicU64,
    /// Snapshots this member took of its own state machine.
    pub snapshots_taken: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: AtomicU64,
    /// Raft messages from the network dropped because the mailbox was full.
    pub steps_dropped: AtomicU64,
}

impl ReplicaMetrics {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
