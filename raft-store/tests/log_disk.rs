//! Tests of the durable raft log (`log::DiskLog`) at its boundary: what is
//! written, synced and reopened, what a crash or bit flip leaves behind, and
//! the `raft::Storage` contract raft-rs relies on.

use std::path::{Path, PathBuf};

use flotilla_raft_store::Error;
use flotilla_raft_store::log::{DiskLog, DiskLogOptions};
use flotilla_raft_store::replica::LogStore;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage, StorageError};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("command {index} of term {term}")
            .into_bytes()
            .into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..Default::default()
    }
}

fn snapshot(index: u64, term: u64, members: &[u64], data: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot {
        data: data.to_vec().into(),
        ..Default::default()
    };
    let metadata = snapshot.mut_metadata();
    metadata.index = index;
    metadata.term = term;
    metadata.set_conf_state(voters(members));
    snapshot
}

fn all_entries(log: &DiskLog) -> Vec<Entry> {
    let first = log.first_index().expect("first index");
    let last = log.last_index().expect("last index");
    log.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|item| item.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    paths
}

fn newest_segment_with_data(dir: &Path) -> PathBuf {
    segments(dir)
        .into_iter()
        .rev()
        .find(|path| std::fs::metadata(path).expect("metadata").len() > 100)
        .expect("a segment with entries")
}

fn small_segments() -> DiskLogOptions {
    DiskLogOptions {
        segment_bytes: 1024,
    }
}

#[test]
fn append_sync_reopen_recovers_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = entries(1..=50, 1);
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.set_conf_state(&voters(&[1, 2, 3])).expect("conf");
        log.append(&written).expect("append");
        log.set_hard_state(&hard_state(1, 2, 40)).expect("hs");
        log.sync().expect("sync");
    }
    let log = DiskLog::open(dir.path()).expect("reopen");
    assert_eq!(all_entries(&log), written);
    let state = log.initial_state().expect("initial state");
    assert_eq!(state.hard_state, hard_state(1, 2, 40));
    assert_eq!(state.conf_state, voters(&[1, 2, 3]));
    assert_eq!(log.first_index().expect("first"), 1);
    assert_eq!(log.last_index().expect("last"), 50);
}

#[test]
fn conflicting_suffix_truncation_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.append(&entries(1..=10, 1)).expect("append");
        log.append(&entries(6..=8, 2)).expect("overwrite");
        assert_eq!(log.last_index().expect("last"), 8);
        log.sync().expect("sync");
    }
    let log = DiskLog::open(dir.path()).expect("reopen");
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=8, 2));
    assert_eq!(all_entries(&log), expected);
    assert_eq!(log.term(6).expect("term"), 2);
    assert!(matches!(
        log.term(9),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
}

#[test]
fn torn_tail_is_cut_off_and_synced_data_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.append(&entries(1..=5, 1)).expect("append");
        log.sync().expect("sync");
        log.append(&entries(6..=7, 1)).expect("append");
        log.sync().expect("sync");
    }
    // A crash in the middle of writing the last record: its end is missing.
    let newest = newest_segment_with_data(dir.path());
    let length = std::fs::metadata(&newest).expect("metadata").len();
    let file = std::fs::File::options()
        .write(true)
        .open(&newest)
        .expect("open segment");
    file.set_len(length - 3).expect("cut");
    drop(file);

    let log = DiskLog::open(dir.path()).expect("reopen after torn write");
    assert_eq!(all_entries(&log), entries(1..=5, 1));
    drop(log);
    assert!(std::fs::metadata(&newest).expect("metadata").len() < length - 3);
    // The repaired log opens again, now with the cut segment no longer newest.
    let log = DiskLog::open(dir.path()).expect("second reopen");
    assert_eq!(log.last_index().expect("last"), 5);
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        for index in 1..=20 {
            log.append(&[entry(index, 1)]).expect("append");
        }
        log.sync().expect("sync");
    }
    let newest = newest_segment_with_data(dir.path());
    let mut bytes = std::fs::read(&newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&newest, &bytes).expect("write");

    match DiskLog::open(dir.path()) {
        Err(Error::Corrupt(message)) => {
            let name = newest.file_name().expect("name").to_string_lossy();
            assert!(message.contains(name.as_ref()), "{message}");
            assert!(message.contains("offset"), "{message}");
        }
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

#[test]
fn damage_at_the_end_of_an_older_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open_with(dir.path(), small_segments()).expect("open");
        // One record per append, so the entries spread over segments.
        for index in 1..=100 {
            log.append(&[entry(index, 1)]).expect("append");
        }
        log.sync().expect("sync");
    }
    let older = segments(dir.path()).into_iter().next().expect("a segment");
    let length = std::fs::metadata(&older).expect("metadata").len();
    std::fs::File::options()
        .write(true)
        .open(&older)
        .and_then(|file| file.set_len(length - 1))
        .expect("cut");
    let reopened = DiskLog::open_with(dir.path(), small_segments());
    assert!(matches!(reopened, Err(Error::Corrupt(_))), "{reopened:?}");
}

#[test]
fn compaction_deletes_covered_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open_with(dir.path(), small_segments()).expect("open");
        log.set_conf_state(&voters(&[1])).expect("conf");
        for index in 1..=300 {
            log.append(&[entry(index, 2)]).expect("append");
        }
        log.set_hard_state(&hard_state(2, 1, 300)).expect("hs");
        log.sync().expect("sync");
        let before = segments(dir.path()).len();
        assert!(before > 3, "the test needs several segments, got {before}");

        log.compact_to_snapshot(snapshot(250, 2, &[1], b"state at 250"))
            .expect("compact");
        log.sync().expect("sync");
        assert!(segments(dir.path()).len() < before, "no segment deleted");
        check_compacted(&log);
    }
    let log = DiskLog::open_with(dir.path(), small_segments()).expect("reopen");
    check_compacted(&log);
    let stored = log.read_snapshot().expect("read").expect("a snapshot");
    assert_eq!(&stored.data[..], b"state at 250");
    assert_eq!(log.initial_state().expect("state").hard_state.commit, 300);
}

fn check_compacted(log: &DiskLog) {
    assert_eq!(log.first_index().expect("first"), 251);
    assert_eq!(log.last_index().expect("last"), 300);
    assert_eq!(all_entries(log), entries(251..=300, 2));
    assert_eq!(log.term(250).expect("term of snapshot index"), 2);
    assert!(matches!(
        log.term(249),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert!(matches!(
        log.entries(100, 260, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    let snapshot = log.snapshot(0, 2).expect("snapshot for a lagging peer");
    assert_eq!(snapshot.get_metadata().index, 250);
    assert_eq!(&snapshot.data[..], b"state at 250");
    assert!(matches!(
        log.snapshot(260, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
}

#[test]
fn snapshot_from_the_leader_replaces_the_log_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.set_conf_state(&voters(&[1, 2, 3])).expect("conf");
        log.append(&entries(1..=10, 1)).expect("append");
        log.set_hard_state(&hard_state(1, 1, 5)).expect("hs");
        log.apply_snapshot(snapshot(20, 3, &[1, 2, 3, 4], b"leader state"))
            .expect("apply snapshot");
        assert!(matches!(
            log.apply_snapshot(snapshot(15, 3, &[1], b"stale")),
            Err(Error::Raft(raft::Error::Store(
                StorageError::SnapshotOutOfDate
            )))
        ));
        log.append(&entries(21..=22, 3))
            .expect("append after snapshot");
        log.sync().expect("sync");
    }
    let log = DiskLog::open(dir.path()).expect("reopen");
    assert_eq!(log.first_index().expect("first"), 21);
    assert_eq!(all_entries(&log), entries(21..=22, 3));
    assert_eq!(log.term(20).expect("term"), 3);
    let state = log.initial_state().expect("state");
    assert_eq!(state.conf_state, voters(&[1, 2, 3, 4]));
    assert_eq!(state.hard_state.commit, 20);
    assert_eq!(state.hard_state.term, 3);
}

/// Writes a log of `entries` to `dir`, compacts it to `snapshot_at` and
/// returns the snapshot file it stored.
fn snapshot_file_of(entries_written: &[Entry], snapshot_at: &Snapshot) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = DiskLog::open(dir.path()).expect("open");
    log.append(entries_written).expect("append");
    log.compact_to_snapshot(snapshot_at.clone())
        .expect("compact");
    log.sync().expect("sync");
    // The file name is the log's own; a crash between writing it and
    // syncing the snapshot record leaves exactly this file behind.
    std::fs::read(dir.path().join("snapshot")).expect("snapshot file")
}

#[test]
fn a_snapshot_file_newer_than_the_log_is_applied_on_open() {
    // The log agrees with the snapshot: it is a compaction that keeps the rest.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.append(&entries(1..=10, 1)).expect("append");
        log.set_hard_state(&hard_state(1, 1, 10)).expect("hs");
        log.sync().expect("sync");
    }
    let file = snapshot_file_of(&entries(1..=10, 1), &snapshot(5, 1, &[1], b"at 5"));
    std::fs::write(dir.path().join("snapshot"), file).expect("plant");
    let log = DiskLog::open(dir.path()).expect("reopen");
    assert_eq!(log.first_index().expect("first"), 6);
    assert_eq!(all_entries(&log), entries(6..=10, 1));

    // The log disagrees (another term at the snapshot index): the snapshot
    // replaces it, membership and commit included.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.append(&entries(1..=10, 1)).expect("append");
        log.sync().expect("sync");
    }
    let file = snapshot_file_of(&entries(1..=10, 2), &snapshot(7, 2, &[1, 2], b"at 7"));
    std::fs::write(dir.path().join("snapshot"), file).expect("plant");
    let log = DiskLog::open(dir.path()).expect("reopen");
    assert_eq!(log.first_index().expect("first"), 8);
    assert_eq!(log.last_index().expect("last"), 7);
    assert_eq!(log.conf_state(), &voters(&[1, 2]));
    assert_eq!(log.hard_state().commit, 7);
}

#[test]
fn storage_contract_matches_raft_rs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = DiskLog::open(dir.path()).expect("open");
    assert_eq!(log.first_index().expect("first"), 1);
    assert_eq!(log.last_index().expect("last"), 0);
    assert_eq!(log.term(0).expect("term 0"), 0);

    let written = entries(1..=10, 1);
    log.append(&written).expect("append");
    let context = || GetEntriesContext::empty(false);
    let one_size = u64::from(written[0].compute_size());

    let all = log.entries(1, 11, None, context()).expect("all");
    assert_eq!(all, written);
    let limited = log
        .entries(1, 11, one_size * 3, context())
        .expect("limited");
    assert_eq!(limited, written[..3]);
    let at_least_one = log.entries(4, 11, 0, context()).expect("at least one");
    assert_eq!(at_least_one, written[3..4]);
    let unlimited = log
        .entries(2, 5, raft::NO_LIMIT, context())
        .expect("no limit");
    assert_eq!(unlimited, written[1..4]);
    assert!(matches!(
        log.entries(5, 12, None, context()),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    assert!(matches!(
        log.snapshot(0, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    assert!(matches!(
        log.append(&entries(13..=14, 1)),
        Err(Error::Raft(raft::Error::Store(StorageError::Unavailable)))
    ));
}

#[test]
fn one_sync_is_one_fsync_however_many_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = DiskLog::open(dir.path()).expect("open");
    let before = log.fsync_count();
    for index in 1..=200 {
        log.append(&[entry(index, 1)]).expect("append");
        log.set_hard_state(&hard_state(1, 1, index - 1))
            .expect("hs");
    }
    assert_eq!(log.fsync_count(), before, "appends must not fsync");
    log.sync().expect("sync");
    assert_eq!(log.fsync_count(), before + 1);
    log.sync().expect("sync with nothing new");
    assert_eq!(log.fsync_count(), before + 1);
}

#[test]
fn bootstrap_once_then_initialised_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = DiskLog::open(dir.path()).expect("open");
        assert!(!log.is_initialized());
        log.bootstrap(&voters(&[1, 2, 3])).expect("bootstrap");
        log.sync().expect("sync");
    }
    let mut log = DiskLog::open(dir.path()).expect("reopen");
    assert!(log.is_initialized());
    assert_eq!(log.conf_state(), &voters(&[1, 2, 3]));
    assert!(matches!(
        log.bootstrap(&voters(&[1])),
        Err(Error::InvalidRequest(_))
    ));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _log = DiskLog::open(dir.path()).expect("open");
    assert!(matches!(DiskLog::open(dir.path()), Err(Error::Io { .. })));
}

/// raft-rs itself drives the log: a single member elects itself, commits a
/// proposal, and after a restart from disk has the same log and commit.
#[test]
fn raw_node_commits_and_restarts_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commit = {
        let mut log = DiskLog::open(dir.path()).expect("open");
        log.bootstrap(&voters(&[1])).expect("bootstrap");
        log.sync().expect("sync");
        let mut node = raw_node(log);
        node.campaign().expect("campaign");
        drive(&mut node);
        node.propose(vec![], b"hello".to_vec()).expect("propose");
        drive(&mut node);
        let commit = node.raft.raft_log.committed;
        assert!(commit >= 2, "the proposal was not committed: {commit}");
        commit
    };
    let log = DiskLog::open(dir.path()).expect("reopen");
    assert_eq!(log.hard_state().commit, commit);
    let data: Vec<Vec<u8>> = all_entries(&log)
        .into_iter()
        .map(|entry| entry.data.to_vec())
        .collect();
    assert!(data.contains(&b"hello".to_vec()));
    let node = raw_node(log);
    assert_eq!(node.raft.raft_log.committed, commit);
}

fn raw_node(log: DiskLog) -> raft::RawNode<DiskLog> {
    let config = raft::Config {
        id: 1,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    raft::RawNode::new(&config, log, &logger).expect("raw node")
}

/// One Ready round in raft-rs's documented order, persisting to the log.
fn drive(node: &mut raft::RawNode<DiskLog>) {
    if !node.has_ready() {
        return;
    }
    let mut ready = node.ready();
    let store = node.mut_store();
    if !ready.snapshot().is_empty() {
        store
            .apply_snapshot(ready.snapshot().clone())
            .expect("snapshot");
    }
    store.append(ready.entries()).expect("append");
    if let Some(hard_state) = ready.hs() {
        store.set_hard_state(hard_state).expect("hs");
    }
    store.sync().expect("sync");
    let _ = ready.take_committed_entries();
    let mut light = node.advance(ready);
    if let Some(commit) = light.commit_index() {
        let mut hard_state = node.store().hard_state().clone();
        hard_state.commit = commit;
        let store = node.mut_store();
        store.set_hard_state(&hard_state).expect("commit");
        store.sync().expect("sync");
    }
    let _ = light.take_committed_entries();
    node.advance_apply();
}
