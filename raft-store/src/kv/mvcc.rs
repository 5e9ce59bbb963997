//! The multi-version index: every version of every key since the compacted
//! revision, addressed by key and revision.
//!
//! It knows revisions, versions and tombstones; it does not know leases,
//! transactions' branching, watchers or raft. The caller ([`super::apply`])
//! decides which revision a write gets and passes it in.
//!
//! Layout, and why:
//! - `keys: BTreeMap<key, Vec<Record>>`, each history sorted by revision. The
//!   ordered map gives prefix and `[start, end)` scans; a range at a past
//!   revision is one binary search per key, not a replay.
//! - `changes: BTreeMap<revision, Vec<key>>`, the keys each revision wrote in
//!   the order the ops ran (etcd's sub-revisions). Watch catch-up walks only
//!   the revisions after its start, in order, and reads each event from the
//!   key's history; the log holds keys only, so values are stored once.
//!
//! A key has at most one record per revision: a transaction may not put and
//! delete (or put twice) the same key, and deleting a deleted key writes
//! nothing. So (key, revision) names one event without sub-revisions.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::proto::{
    Compare, CompareResult, Event, EventType, KeyValue, RangeRequest, RangeResponse,
    ResponseHeader, SortOrder, SortTarget, compare,
};
use crate::error::{Error, Result};

/// The revision of an empty store, as etcd: the first write gets 2.
pub const INITIAL_REVISION: i64 = 1;

/// One version of a key. `value: None` is a tombstone (the key was deleted
/// at `revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Vec<u8>>,
}

impl Record {
    fn to_key_value(&self, key: &[u8]) -> Option<KeyValue> {
        let value = self.value.as_ref()?;
        Some(KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.revision,
            version: self.version,
            value: value.clone(),
            lease: self.lease,
        })
    }
}

/// Whether `key` is selected by etcd's `(key, range_end)` pair.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The map bounds of etcd's `(key, range_end)`, or `None` for an empty range
/// (BTreeMap::range panics on inverted bounds).
fn key_bounds<'a>(start: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    match end {
        [] => Some((Bound::Included(start), Bound::Included(start))),
        [0] => Some((Bound::Included(start), Bound::Unbounded)),
        _ if end <= start => None,
        _ => Some((Bound::Included(start), Bound::Excluded(end))),
    }
}

/// The in-memory MVCC index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MvccIndex {
    keys: BTreeMap<Vec<u8>, Vec<Record>>,
    changes: BTreeMap<i64, Vec<Vec<u8>>>,
    current_revision: i64,
    compact_revision: i64,
}

impl Default for MvccIndex {
    fn default() -> Self {
        MvccIndex {
            keys: BTreeMap::new(),
            changes: BTreeMap::new(),
            current_revision: INITIAL_REVISION,
            compact_revision: 0,
        }
    }
}

/// A batch of catch-up events for one watch and where to continue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Events of whole revisions, in revision then op order.
    pub events: Vec<Event>,
    /// The first revision not yet scanned.
    pub next_revision: i64,
}

impl MvccIndex {
    /// The revision of the last write.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision history was compacted at (0 if never): reads at or
    /// above it work; watches must start above it.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Resolves a requested read revision (0 = `head`) against what is kept.
    pub fn read_revision(&self, requested: i64, head: i64) -> Result<i64> {
        if requested == 0 {
            return Ok(head);
        }
        if requested < self.compact_revision {
            return Err(Error::Compacted {
                requested,
                compact_revision: self.compact_revision,
            });
        }
        if requested > head {
            return Err(Error::FutureRevision {
                requested,
                current: head,
            });
        }
        Ok(requested)
    }

    /// The key's live value at the newest revision.
    pub fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        let record = self.keys.get(key)?.last()?;
        record.to_key_value(key)
    }

    /// Live key-values in `(start, end)` at `revision`, in key order.
    fn live_at<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a [u8],
        revision: i64,
    ) -> impl Iterator<Item = KeyValue> + 'a {
        key_bounds(start, end)
            .into_iter()
            .flat_map(move |bounds| self.keys.range::<[u8], _>(bounds))
            .filter_map(move |(key, history)| {
                let after = history.partition_point(|record| record.revision <= revision);
                let record = &history[after.checked_sub(1)?];
                record.to_key_value(key)
            })
    }

    /// Serves a range as etcd does. `head` is the revision a request for
    /// revision 0 reads: the current revision, or inside a transaction the
    /// revision being written (so later ops see earlier ones).
    pub fn range(&self, request: &RangeRequest, head: i64) -> Result<RangeResponse> {
        let revision = self.read_revision(request.revision, head)?;
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let sort = sort_of(request);
        let mut response = RangeResponse {
            header: Some(ResponseHeader {
                revision: head,
                ..Default::default()
            }),
            ..Default::default()
        };
        let matching = self
            .live_at(&request.key, &request.range_end, revision)
            .filter(|kv| passes_revision_filters(request, kv));
        let mut count = 0usize;
        for mut kv in matching {
            count += 1;
            // Unsorted ranges stop collecting at the limit but keep counting;
            // sorted ones need every key before they can cut.
            if request.count_only || (sort.is_none() && limit != 0 && response.kvs.len() >= limit) {
                continue;
            }
            if request.keys_only {
                kv.value.clear();
            }
            response.kvs.push(kv);
        }
        if let Some((order, target)) = sort {
            sort_key_values(&mut response.kvs, order, target);
            if limit != 0 {
                response.kvs.truncate(limit);
            }
        }
        response.count = count as i64;
        response.more = limit != 0 && count > limit;
        Ok(response)
    }

    /// Writes `value` to `key` at `revision` and returns the put event (with
    /// the previous value, if the key was live).
    pub fn put(&mut self, revision: i64, key: &[u8], value: Vec<u8>, lease: i64) -> Event {
        debug_assert!(revision > self.current_revision);
        let history = self.keys.entry(key.to_vec()).or_default();
        let prev_kv = history.last().and_then(|record| record.to_key_value(key));
        let (create_revision, version) = match &prev_kv {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (revision, 1),
        };
        let record = Record {
            revision,
            create_revision,
            version,
            lease,
            value: Some(value),
        };
        let kv = record.to_key_value(key);
        history.push(record);
        self.changes.entry(revision).or_default().push(key.to_vec());
        Event {
            r#type: EventType::Put as i32,
            kv,
            prev_kv,
        }
    }

    /// Deletes every live key in `(start, end)` at `revision`; returns one
    /// delete event per deleted key, in key order. Deleting nothing writes
    /// nothing.
    pub fn delete_range(&mut self, revision: i64, start: &[u8], end: &[u8]) -> Vec<Event> {
        debug_assert!(revision > self.current_revision);
        let doomed: Vec<KeyValue> = self.live_at(start, end, revision).collect();
        doomed
            .into_iter()
            .map(|prev| self.delete_key(revision, prev))
            .collect()
    }

    fn delete_key(&mut self, revision: i64, prev: KeyValue) -> Event {
        let tombstone = Record {
            revision,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: None,
        };
        self.keys
            .get_mut(&prev.key)
            .expect("invariant: a live key has a history")
            .push(tombstone);
        self.changes
            .entry(revision)
            .or_default()
            .push(prev.key.clone());
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: prev.key.clone(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: Some(prev),
        }
    }

    /// Makes the writes at `revision` the current state. Called once per
    /// write request, only if it wrote something.
    pub fn commit(&mut self, revision: i64) {
        debug_assert_eq!(revision, self.current_revision + 1);
        self.current_revision = revision;
    }

    /// Drops history older than `revision`, keeping each key's newest
    /// version at or below it (unless that version is a deletion).
    pub fn compact(&mut self, revision: i64) -> Result<()> {
        if revision <= self.compact_revision {
            return Err(Error::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        if revision > self.current_revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.current_revision,
            });
        }
        for history in self.keys.values_mut() {
            compact_history(history, revision);
        }
        self.keys.retain(|_, history| !history.is_empty());
        self.changes = self.changes.split_off(&(revision + 1));
        self.compact_revision = revision;
        Ok(())
    }

    /// Evaluates one transaction guard at `head`, as etcd: every key in the
    /// range must satisfy it; an absent key has zero fields and no value.
    pub fn compare(&self, guard: &Compare, head: i64) -> bool {
        let kvs: Vec<KeyValue> = self.live_at(&guard.key, &guard.range_end, head).collect();
        if kvs.is_empty() {
            if matches!(guard.target_union, Some(compare::TargetUnion::Value(_))) {
                return false;
            }
            return compare_key_value(guard, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_key_value(guard, kv))
    }

    /// Events of whole revisions from `start` on, for keys in `(key, end)`:
    /// stops after the revision that reaches `events_max` events or after
    /// scanning `revisions_max` revisions, so a call under the read lock is
    /// bounded. A watch must start above the compacted revision.
    pub fn catch_up(
        &self,
        start: i64,
        key: &[u8],
        end: &[u8],
        events_max: usize,
        revisions_max: usize,
    ) -> Result<CatchUp> {
        if start <= self.compact_revision {
            return Err(Error::Compacted {
                requested: start,
                compact_revision: self.compact_revision,
            });
        }
        let mut batch = CatchUp {
            events: Vec::new(),
            next_revision: start.max(self.current_revision + 1),
        };
        for (scanned, (revision, keys)) in self.changes.range(start..).enumerate() {
            if scanned >= revisions_max || batch.events.len() >= events_max {
                batch.next_revision = *revision;
                return Ok(batch);
            }
            for changed in keys.iter().filter(|changed| in_range(changed, key, end)) {
                batch.events.push(self.event_at(changed, *revision));
            }
        }
        Ok(batch)
    }

    /// The event that wrote `key` at `revision`, read back from its history.
    fn event_at(&self, key: &[u8], revision: i64) -> Event {
        let history = self
            .keys
            .get(key)
            .expect("invariant: every key in the change log has a history");
        let index = history
            .binary_search_by_key(&revision, |record| record.revision)
            .expect("invariant: the change log names a record of the key");
        let prev_kv = index
            .checked_sub(1)
            .and_then(|prev| history[prev].to_key_value(key));
        let record = &history[index];
        match record.to_key_value(key) {
            Some(kv) => Event {
                r#type: EventType::Put as i32,
                kv: Some(kv),
                prev_kv,
            },
            None => Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.to_vec(),
                    mod_revision: revision,
                    ..Default::default()
                }),
                prev_kv,
            },
        }
    }

    /// Every kept record, for snapshots: key order, then revision order.
    pub(crate) fn histories(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<Record>)> {
        self.keys.iter()
    }

    /// The change log, for snapshots.
    pub(crate) fn change_log(&self) -> impl Iterator<Item = (&i64, &Vec<Vec<u8>>)> {
        self.changes.iter()
    }

    /// Rebuilds an index from a snapshot's parts, checking they agree.
    pub(crate) fn from_parts(
        keys: BTreeMap<Vec<u8>, Vec<Record>>,
        changes: BTreeMap<i64, Vec<Vec<u8>>>,
        current_revision: i64,
        compact_revision: i64,
    ) -> Result<Self> {
        let index = MvccIndex {
            keys,
            changes,
            current_revision,
            compact_revision,
        };
        index.check_consistent()?;
        Ok(index)
    }

    /// What a snapshot must satisfy before the `expect`s above may trust it.
    fn check_consistent(&self) -> Result<()> {
        let corrupt = |what: &str| Err(Error::Corrupt(format!("snapshot index: {what}")));
        if self.current_revision < INITIAL_REVISION || self.compact_revision > self.current_revision
        {
            return corrupt("revisions out of order");
        }
        for history in self.keys.values() {
            let sorted = history
                .windows(2)
                .all(|pair| pair[0].revision < pair[1].revision);
            let bounded = history
                .last()
                .is_none_or(|record| record.revision <= self.current_revision);
            if !sorted || !bounded {
                return corrupt("a key history is out of order");
            }
        }
        for (revision, keys) in &self.changes {
            for key in keys {
                let found = self.keys.get(key).is_some_and(|history| {
                    history
                        .binary_search_by_key(revision, |record| record.revision)
                        .is_ok()
                });
                if !found {
                    return corrupt("the change log names a missing record");
                }
            }
        }
        Ok(())
    }
}

fn compact_history(history: &mut Vec<Record>, revision: i64) {
    let at_or_below = history.partition_point(|record| record.revision <= revision);
    let Some(newest) = at_or_below.checked_sub(1) else {
        return;
    };
    if history[newest].value.is_none() {
        history.drain(..at_or_below);
    } else {
        history.drain(..newest);
    }
}

fn passes_revision_filters(request: &RangeRequest, kv: &KeyValue) -> bool {
    let above = |value: i64, min: i64| min == 0 || value >= min;
    let below = |value: i64, max: i64| max == 0 || value <= max;
    above(kv.mod_revision, request.min_mod_revision)
        && below(kv.mod_revision, request.max_mod_revision)
        && above(kv.create_revision, request.min_create_revision)
        && below(kv.create_revision, request.max_create_revision)
}

/// The sort a range needs beyond the natural key order, if any. As etcd
/// 3.5: a target other than the key with no order means ascending.
fn sort_of(request: &RangeRequest) -> Option<(SortOrder, SortTarget)> {
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None) {
        SortOrder::None if target != SortTarget::Key => SortOrder::Ascend,
        order => order,
    };
    match (order, target) {
        (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => None,
        sort => Some(sort),
    }
}

fn sort_key_values(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // A stable sort keeps key order among equal fields.
    kvs.sort_by(|a, b| {
        let ordering = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

fn compare_key_value(guard: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match &guard.target_union {
        Some(compare::TargetUnion::Version(version)) => kv.version.cmp(version),
        Some(compare::TargetUnion::CreateRevision(revision)) => kv.create_revision.cmp(revision),
        Some(compare::TargetUnion::ModRevision(revision)) => kv.mod_revision.cmp(revision),
        Some(compare::TargetUnion::Value(value)) => kv.value.as_slice().cmp(value.as_slice()),
        Some(compare::TargetUnion::Lease(lease)) => kv.lease.cmp(lease),
        None => return false,
    };
    match CompareResult::try_from(guard.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::proto::prefix_end;
    use crate::kv::testing::{TestStore, range};

    /// The keys (and values) a range returns, as "key=value" strings.
    fn check(store: &TestStore, request: RangeRequest, expected: &[&str], more: bool, count: i64) {
        let response = store.store.range(&request).expect("range");
        let got: Vec<String> = response
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                )
            })
            .collect();
        assert_eq!(got, expected, "{request:?}");
        assert_eq!(response.more, more, "more for {request:?}");
        assert_eq!(response.count, count, "count for {request:?}");
    }

    fn sample() -> TestStore {
        let store = TestStore::new();
        for (key, value) in [
            ("a", "1"),
            ("b", "2"),
            ("b/x", "3"),
            ("b/y", "4"),
            ("c", "5"),
        ] {
            store.put(key, value);
        }
        store
    }

    #[test]
    fn revisions_and_versions_follow_etcd() {
        let store = TestStore::new();
        assert_eq!(store.store.current_revision(), INITIAL_REVISION);
        assert_eq!(store.put("k", "v1"), 2);
        assert_eq!(store.put("k", "v2"), 3);
        let kv = store.get("k").expect("k exists");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(store.delete("k", ""), 1);
        assert_eq!(store.store.current_revision(), 4);
        assert_eq!(store.delete("k", ""), 0, "deleting a missing key");
        assert_eq!(
            store.store.current_revision(),
            4,
            "no revision for a no-op delete"
        );
        assert_eq!(store.put("k", "v3"), 5);
        let kv = store.get("k").expect("k recreated");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn ranges() {
        let store = sample();
        let all = ["a=1", "b=2", "b/x=3", "b/y=4", "c=5"];
        check(&store, range("b", ""), &["b=2"], false, 1);
        check(&store, range("zz", ""), &[], false, 0);
        check(
            &store,
            range("b", "c"),
            &["b=2", "b/x=3", "b/y=4"],
            false,
            3,
        );
        check(&store, range("c", "a"), &[], false, 0);
        let prefix = RangeRequest {
            key: b"b/".to_vec(),
            range_end: prefix_end(b"b/"),
            ..Default::default()
        };
        check(&store, prefix, &["b/x=3", "b/y=4"], false, 2);
        check(&store, range("a", "\0"), &all, false, 5);
        check(&store, range("b/y", "\0"), &["b/y=4", "c=5"], false, 2);
        let limited = RangeRequest {
            limit: 2,
            ..range("a", "\0")
        };
        check(&store, limited, &["a=1", "b=2"], true, 5);
        let exact_limit = RangeRequest {
            limit: 5,
            ..range("a", "\0")
        };
        check(&store, exact_limit, &all, false, 5);
        let count_only = RangeRequest {
            count_only: true,
            ..range("a", "\0")
        };
        check(&store, count_only, &[], false, 5);
        let keys_only = RangeRequest {
            keys_only: true,
            ..range("a", "b/x")
        };
        check(&store, keys_only, &["a=", "b="], false, 2);
        let descending = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            limit: 2,
            ..range("a", "\0")
        };
        check(&store, descending, &["c=5", "b/y=4"], true, 5);
        let by_mod = RangeRequest {
            min_mod_revision: 4,
            max_mod_revision: 5,
            ..range("a", "\0")
        };
        check(&store, by_mod, &["b/x=3", "b/y=4"], false, 2);
    }

    #[test]
    fn ranges_at_past_revisions() {
        let store = TestStore::new();
        store.put("k", "one"); // 2
        store.put("k", "two"); // 3
        store.put("j", "x"); // 4
        store.delete("k", ""); // 5
        let at = |revision| RangeRequest {
            revision,
            ..range("a", "\0")
        };
        check(&store, at(2), &["k=one"], false, 1);
        check(&store, at(3), &["k=two"], false, 1);
        check(&store, at(4), &["j=x", "k=two"], false, 2);
        check(&store, at(5), &["j=x"], false, 1);
        check(&store, at(0), &["j=x"], false, 1);
        assert!(matches!(
            store.store.range(&at(6)),
            Err(Error::FutureRevision {
                requested: 6,
                current: 5
            })
        ));
    }

    #[test]
    fn compaction_keeps_the_newest_version_at_or_below() {
        let mut index = MvccIndex::default();
        let mut revision = INITIAL_REVISION;
        let mut write = |index: &mut MvccIndex, key: &[u8], value: Option<&str>| {
            revision += 1;
            match value {
                Some(value) => {
                    index.put(revision, key, value.into(), 0);
                }
                None => {
                    index.delete_range(revision, key, &[]);
                }
            }
            index.commit(revision);
        };
        write(&mut index, b"k", Some("1")); // 2
        write(&mut index, b"k", Some("2")); // 3
        write(&mut index, b"gone", Some("x")); // 4
        write(&mut index, b"gone", None); // 5
        write(&mut index, b"k", Some("3")); // 6
        index.compact(5).expect("compacts");
        assert_eq!(index.compact_revision(), 5);
        assert!(
            !index.keys.contains_key(&b"gone"[..]),
            "a deleted key is dropped"
        );
        assert_eq!(
            index.keys[&b"k"[..]].len(),
            2,
            "v2 (newest <= 5) and v3 kept"
        );
        let at = |revision| RangeRequest {
            revision,
            ..range("a", "\0")
        };
        let values = |response: RangeResponse| -> Vec<Vec<u8>> {
            response.kvs.into_iter().map(|kv| kv.value).collect()
        };
        assert_eq!(
            values(index.range(&at(5), 6).expect("at 5")),
            vec![b"2".to_vec()]
        );
        assert_eq!(
            values(index.range(&at(6), 6).expect("at 6")),
            vec![b"3".to_vec()]
        );
        assert!(matches!(
            index.range(&at(4), 6),
            Err(Error::Compacted {
                requested: 4,
                compact_revision: 5
            })
        ));
        assert!(matches!(index.compact(5), Err(Error::Compacted { .. })));
        assert!(matches!(
            index.compact(7),
            Err(Error::FutureRevision { .. })
        ));
        assert!(matches!(
            index.catch_up(5, b"k", &[], 10, 10),
            Err(Error::Compacted { .. })
        ));
        let batch = index.catch_up(6, b"k", &[], 10, 10).expect("catch up");
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.next_revision, 7);
    }

    #[test]
    fn catch_up_never_splits_a_revision() {
        let mut index = MvccIndex::default();
        index.put(2, b"a", b"1".to_vec(), 0);
        index.put(2, b"b", b"1".to_vec(), 0);
        index.put(2, b"c", b"1".to_vec(), 0);
        index.commit(2);
        index.put(3, b"a", b"2".to_vec(), 0);
        index.commit(3);
        let batch = index.catch_up(2, b"a", &[0], 1, 10).expect("catch up");
        assert_eq!(
            batch.events.len(),
            3,
            "all of revision 2, over the event bound"
        );
        assert_eq!(batch.next_revision, 3);
        let batch = index.catch_up(3, b"a", &[0], 1, 10).expect("catch up");
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].prev_kv.as_ref().expect("prev").value, b"1");
        assert_eq!(batch.next_revision, 4);
    }
}
