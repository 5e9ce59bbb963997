//! The snapshot encoding of the replicated state: every kept version of
//! every key, the change log that orders events inside a revision, the
//! revisions, the leases with their keys, and the applied index.
//!
//! It knows how to turn a [`Machine`] into bytes and back, checking on the
//! way back that the parts agree; it does not know when snapshots are taken
//! or how they travel. Everything is emitted in key / revision / id order,
//! so two members with the same state produce byte-identical snapshots.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use super::apply::Machine;
use super::lease::{LeaseEntry, LeaseTable};
use super::mvcc::{MvccIndex, Record};
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRecord {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    version: i64,
    #[prost(int64, tag = "4")]
    lease: i64,
    /// Absent for a tombstone.
    #[prost(bytes = "vec", optional, tag = "5")]
    value: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotKey {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    records: Vec<SnapshotRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRevision {
    #[prost(int64, tag = "1")]
    revision: i64,
    /// Keys written at this revision, in op order.
    #[prost(bytes = "vec", repeated, tag = "2")]
    keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl_secs: i64,
    #[prost(bytes = "vec", repeated, tag = "3")]
    keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KvSnapshot {
    #[prost(uint64, tag = "1")]
    applied_index: u64,
    #[prost(int64, tag = "2")]
    current_revision: i64,
    #[prost(int64, tag = "3")]
    compact_revision: i64,
    #[prost(message, repeated, tag = "4")]
    keys: Vec<SnapshotKey>,
    #[prost(message, repeated, tag = "5")]
    changes: Vec<SnapshotRevision>,
    #[prost(message, repeated, tag = "6")]
    leases: Vec<SnapshotLease>,
    #[prost(int64, tag = "7")]
    next_lease_id: i64,
}

/// Encodes the state as of `applied_index`.
pub(crate) fn encode(machine: &Machine, applied_index: u64) -> Vec<u8> {
    let index = &machine.index;
    let snapshot = KvSnapshot {
        applied_index,
        current_revision: index.current_revision(),
        compact_revision: index.compact_revision(),
        keys: index
            .histories()
            .map(|(key, records)| SnapshotKey {
                key: key.clone(),
                records: records.iter().map(encode_record).collect(),
            })
            .collect(),
        changes: index
            .change_log()
            .map(|(revision, keys)| SnapshotRevision {
                revision: *revision,
                keys: keys.clone(),
            })
            .collect(),
        leases: machine
            .leases
            .iter()
            .map(|(id, entry)| SnapshotLease {
                id,
                ttl_secs: entry.ttl_secs,
                keys: entry.keys.iter().cloned().collect(),
            })
            .collect(),
        next_lease_id: machine.leases.next_id(),
    };
    snapshot.encode_to_vec()
}

fn encode_record(record: &Record) -> SnapshotRecord {
    SnapshotRecord {
        revision: record.revision,
        create_revision: record.create_revision,
        version: record.version,
        lease: record.lease,
        value: record.value.clone(),
    }
}

/// Decodes a snapshot into the state and its applied index.
pub(crate) fn decode(data: &[u8]) -> Result<(Machine, u64)> {
    let snapshot = KvSnapshot::decode(data)
        .map_err(|error| Error::Corrupt(format!("kv snapshot: {error}")))?;
    let keys: BTreeMap<Vec<u8>, Vec<Record>> = snapshot
        .keys
        .into_iter()
        .map(|key| {
            (
                key.key,
                key.records.into_iter().map(decode_record).collect(),
            )
        })
        .collect();
    let changes: BTreeMap<i64, Vec<Vec<u8>>> = snapshot
        .changes
        .into_iter()
        .map(|revision| (revision.revision, revision.keys))
        .collect();
    let index = MvccIndex::from_parts(
        keys,
        changes,
        snapshot.current_revision,
        snapshot.compact_revision,
    )?;
    let leases: BTreeMap<i64, LeaseEntry> = snapshot
        .leases
        .into_iter()
        .map(|lease| {
            let keys: BTreeSet<Vec<u8>> = lease.keys.into_iter().collect();
            let entry = LeaseEntry {
                ttl_secs: lease.ttl_secs,
                keys,
            };
            (lease.id, entry)
        })
        .collect();
    let machine = Machine {
        index,
        leases: LeaseTable::from_parts(leases, snapshot.next_lease_id),
    };
    Ok((machine, snapshot.applied_index))
}

fn decode_record(record: SnapshotRecord) -> Record {
    Record {
        revision: record.revision,
        create_revision: record.create_revision,
        version: record.version,
        lease: record.lease,
        value: record.value,
    }
}
