//! Leases in two halves.
//!
//! - [`LeaseTable`] is replicated state: which leases exist, their granted
//!   TTLs and the keys attached to them. Every member holds the same table
//!   because it only changes through applied commands.
//! - [`Lessor`] is the leader's clock on them: deadlines, keep-alives and the
//!   decision that a lease has expired. It is not replicated. Only the
//!   leader's lessor is active; it proposes a revoke for each expired lease,
//!   and the revoke (applied everywhere) deletes the keys. So expiry is
//!   decided by one member and takes effect identically on all.
//!
//! Neither half reads a clock: every time-dependent call takes `now`, so a
//! test drives time by hand and the member passes `Instant::now()`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// 2 s: etcd's minimum lease TTL is 1.5 election timeouts rounded up to a
/// second (1.5 × 1 s by default). A shorter lease could expire during an
/// ordinary leader election, before any new leader could hear a keep-alive.
pub const LEASE_TTL_MIN_SECS: i64 = 2;

/// etcd's `MaxLeaseTTL` (9,000,000,000 s, about 285 years): large enough
/// for "practically forever", small enough that deadlines do not overflow.
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;

/// 3 s: after [`Lessor::expired`] reports a lease, it is not reported again
/// for this long, so one tick proposes one revoke; if that proposal is lost
/// (a dropped message, a leadership blip) the lease comes back and is retried.
pub const LEASE_REVOKE_RETRY_MS: u64 = 3_000;

/// 1,000 leases per expiry batch: etcd revokes at most 1,000 leases per
/// second so a mass expiry cannot flood the log; the member uses this as
/// `max` when it calls [`Lessor::expired`] once a second.
pub const LEASE_EXPIRED_BATCH_MAX: usize = 1_000;

/// One lease as every member knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The TTL it was granted with, in seconds.
    pub ttl_secs: i64,
    /// The keys currently attached to it.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The replicated lease table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTable {
    leases: BTreeMap<i64, LeaseEntry>,
    /// The next id to try for a grant without an id. A counter, not a random
    /// number, so every member assigns the same id.
    next_id: i64,
}

impl Default for LeaseTable {
    fn default() -> Self {
        LeaseTable {
            leases: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl LeaseTable {
    /// Grants a lease; `id == 0` assigns the next free id. Returns the id and
    /// the TTL actually granted (raised to [`LEASE_TTL_MIN_SECS`]).
    pub fn grant(&mut self, id: i64, ttl_secs: i64) -> Result<(i64, i64)> {
        if id < 0 {
            return Err(Error::InvalidRequest(
                "lease id must not be negative".into(),
            ));
        }
        if ttl_secs > LEASE_TTL_MAX_SECS {
            return Err(Error::InvalidRequest(format!(
                "lease ttl {ttl_secs} s is over the maximum of {LEASE_TTL_MAX_SECS} s"
            )));
        }
        let id = if id == 0 { self.free_id() } else { id };
        if self.leases.contains_key(&id) {
            return Err(Error::InvalidRequest(format!("lease {id} already exists")));
        }
        let ttl_secs = ttl_secs.max(LEASE_TTL_MIN_SECS);
        self.leases.insert(
            id,
            LeaseEntry {
                ttl_secs,
                keys: BTreeSet::new(),
            },
        );
        Ok((id, ttl_secs))
    }

    fn free_id(&mut self) -> i64 {
        while self.leases.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Removes a lease and returns the keys that were attached to it.
    pub fn revoke(&mut self, id: i64) -> Result<BTreeSet<Vec<u8>>> {
        self.leases
            .remove(&id)
            .map(|entry| entry.keys)
            .ok_or(Error::LeaseNotFound { id })
    }

    pub fn get(&self, id: i64) -> Option<&LeaseEntry> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &LeaseEntry)> {
        self.leases.iter().map(|(id, entry)| (*id, entry))
    }

    /// Records that `key` now belongs to lease `id` (0 = none).
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(entry) = self.leases.get_mut(&id) {
            entry.keys.insert(key.to_vec());
        }
    }

    /// Records that `key` no longer belongs to lease `id` (0 = none).
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(entry) = self.leases.get_mut(&id) {
            entry.keys.remove(key);
        }
    }

    pub(crate) fn next_id(&self) -> i64 {
        self.next_id
    }

    pub(crate) fn from_parts(leases: BTreeMap<i64, LeaseEntry>, next_id: i64) -> Self {
        LeaseTable { leases, next_id }
    }
}

#[derive(Clone, Debug)]
struct Timer {
    ttl_secs: i64,
    /// Set only while this member leads.
    deadline: Option<Instant>,
    /// Reported by [`Lessor::expired`]; its revoke is on the way, so it can
    /// no longer be kept alive (as etcd: an expired lease is not renewed).
    expired: bool,
}

/// The leader's expiry clock over the lease table.
#[derive(Debug, Default)]
pub struct Lessor {
    leader: bool,
    timers: BTreeMap<i64, Timer>,
}

fn ttl_duration(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

impl Lessor {
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// This member became leader: every lease gets its full TTL from now.
    /// The old leader's deadlines are unknown here, so extending is the only
    /// choice that never expires a lease its holder kept alive.
    pub fn promote(&mut self, now: Instant) {
        self.leader = true;
        for timer in self.timers.values_mut() {
            timer.deadline = Some(now + ttl_duration(timer.ttl_secs));
            timer.expired = false;
        }
    }

    /// This member stopped leading: it stops deciding expiry.
    pub fn demote(&mut self) {
        self.leader = false;
        for timer in self.timers.values_mut() {
            timer.deadline = None;
            timer.expired = false;
        }
    }

    /// An applied grant: track the lease (and time it, if leading).
    pub fn granted(&mut self, id: i64, ttl_secs: i64, now: Instant) {
        let deadline = self.leader.then(|| now + ttl_duration(ttl_secs));
        self.timers.insert(
            id,
            Timer {
                ttl_secs,
                deadline,
                expired: false,
            },
        );
    }

    /// An applied revoke: stop tracking the lease.
    pub fn revoked(&mut self, id: i64) {
        self.timers.remove(&id);
    }

    /// Replaces what is tracked after a snapshot restore.
    pub fn reset(&mut self, leases: impl Iterator<Item = (i64, i64)>, now: Instant) {
        self.timers.clear();
        for (id, ttl_secs) in leases {
            self.granted(id, ttl_secs, now);
        }
    }

    /// Renews a lease to its full TTL from `now`; returns the TTL in seconds.
    /// Only the leader renews: a follower's answer would not be the one that
    /// decides expiry.
    pub fn keep_alive(&mut self, id: i64, now: Instant) -> Result<i64> {
        if !self.leader {
            return Err(Error::NotLeader { leader_hint: None });
        }
        let timer = self
            .timers
            .get_mut(&id)
            .filter(|timer| !timer.expired)
            .ok_or(Error::LeaseNotFound { id })?;
        timer.deadline = Some(now + ttl_duration(timer.ttl_secs));
        Ok(timer.ttl_secs)
    }

    /// Up to `max` leases whose deadline has passed, earliest first. Each is
    /// held back for [`LEASE_REVOKE_RETRY_MS`] so the caller proposes one
    /// revoke per lease; it returns if that revoke is never applied.
    pub fn expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        if !self.leader {
            return Vec::new();
        }
        let mut due: Vec<(Instant, i64)> = self
            .timers
            .iter()
            .filter_map(|(id, timer)| timer.deadline.filter(|at| *at <= now).map(|at| (at, *id)))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        let retry_at = now + Duration::from_millis(LEASE_REVOKE_RETRY_MS);
        for (_, id) in &due {
            if let Some(timer) = self.timers.get_mut(id) {
                timer.deadline = Some(retry_at);
                timer.expired = true;
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Whole seconds left on a lease as the leader sees it; `None` if this
    /// member does not lead or does not know the lease. An expired lease
    /// whose revoke is pending reports 0.
    pub fn remaining_secs(&self, id: i64, now: Instant) -> Option<i64> {
        let timer = self.timers.get(&id)?;
        if timer.expired {
            return timer.deadline.map(|_| 0);
        }
        let deadline = timer.deadline?;
        let left = deadline.saturating_duration_since(now);
        Some(i64::try_from(left.as_secs()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_assigns_deterministic_ids_and_minimum_ttl() {
        let mut table = LeaseTable::default();
        assert_eq!(table.grant(0, 10).expect("grant"), (1, 10));
        assert_eq!(table.grant(2, 1).expect("grant"), (2, LEASE_TTL_MIN_SECS));
        // Auto ids skip ids that were granted explicitly.
        assert_eq!(table.grant(0, 10).expect("grant").0, 3);
        assert!(table.grant(2, 10).is_err(), "an existing id is refused");
        assert!(table.grant(0, LEASE_TTL_MAX_SECS + 1).is_err());
        assert!(matches!(
            table.revoke(9),
            Err(Error::LeaseNotFound { id: 9 })
        ));
    }

    #[test]
    fn only_the_leader_expires_and_promotion_extends() {
        let start = Instant::now();
        let secs = |n: u64| start + Duration::from_secs(n);
        let mut lessor = Lessor::default();
        lessor.granted(1, 10, start);
        lessor.granted(2, 20, start);
        assert!(
            lessor.expired(secs(100), 10).is_empty(),
            "a follower never expires"
        );
        assert!(matches!(
            lessor.keep_alive(1, start),
            Err(Error::NotLeader { .. })
        ));

        lessor.promote(secs(5));
        assert_eq!(lessor.remaining_secs(1, secs(5)), Some(10));
        assert!(lessor.expired(secs(14), 10).is_empty());
        assert_eq!(lessor.keep_alive(1, secs(14)).expect("renewed"), 10);
        assert_eq!(lessor.keep_alive(1, secs(20)).expect("renewed"), 10);
        assert_eq!(lessor.expired(secs(25), 10), vec![2]);
        assert!(
            matches!(
                lessor.keep_alive(2, secs(25)),
                Err(Error::LeaseNotFound { id: 2 })
            ),
            "an expired lease awaiting its revoke is not renewed"
        );
        assert_eq!(lessor.remaining_secs(2, secs(25)), Some(0));
        // Reported once, then again only after the retry delay.
        assert_eq!(lessor.expired(secs(25), 10), Vec::<i64>::new());
        assert_eq!(lessor.expired(secs(28), 10), vec![2]);
        assert_eq!(lessor.expired(secs(40), 1), vec![1], "the batch is bounded");

        lessor.demote();
        assert_eq!(lessor.remaining_secs(1, secs(40)), None);
        lessor.promote(secs(100));
        assert_eq!(lessor.remaining_secs(2, secs(100)), Some(20));
        lessor.revoked(2);
        assert!(matches!(
            lessor.keep_alive(2, secs(100)),
            Err(Error::LeaseNotFound { id: 2 })
        ));
    }
}
