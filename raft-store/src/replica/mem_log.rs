//! An in-memory [`LogStore`] for tests and the seeded simulation.
//!
//! It models a disk honestly enough to test durability: writes go to a
//! working image, and only [`LogStore::sync`] copies them to the [`MemDisk`],
//! the part that survives a crash. Reopening a member from its `MemDisk`
//! therefore loses exactly what was never synced. It knows nothing of the
//! state machine: the snapshot it keeps is opaque bytes.

use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::LogStore;
use crate::error::{Error, Result};

/// One image of a log: what is on the disk, or what the member sees.
#[derive(Clone, Debug, Default)]
struct LogImage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot, with its data. Its index is the last compacted
    /// entry; `entries` continue from the one after it.
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl LogImage {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        // Entries the snapshot already covers carry nothing new.
        let first_index = self.first_index();
        let entries: Vec<&Entry> = entries.iter().filter(|e| e.index >= first_index).collect();
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index > self.last_index() + 1 {
            return Err(Error::Corrupt(format!(
                "append at {} leaves a gap after {}",
                first.index,
                self.last_index()
            )));
        }
        // A conflicting suffix is replaced, as raft requires.
        self.entries.truncate((first.index - first_index) as usize);
        self.entries.extend(entries.into_iter().cloned());
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let metadata = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.conf_state = metadata.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    fn compact_to_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if index <= self.snapshot_index() {
            return;
        }
        let drop_count = ((index - self.snapshot_index()) as usize).min(self.entries.len());
        self.entries.drain(..drop_count);
        self.snapshot = snapshot;
    }
}

/// One buffered write, replayed onto the disk image by `sync`.
#[derive(Debug)]
enum Write {
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    ApplySnapshot(Snapshot),
    Compact(Snapshot),
}

impl Write {
    fn replay(self, image: &mut LogImage) -> Result<()> {
        match self {
            Write::Append(entries) => image.append(&entries)?,
            Write::HardState(hard_state) => image.hard_state = hard_state,
            Write::ConfState(conf_state) => image.conf_state = conf_state,
            Write::ApplySnapshot(snapshot) => image.apply_snapshot(snapshot),
            Write::Compact(snapshot) => image.compact_to_snapshot(snapshot),
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct DiskState {
    image: LogImage,
    syncs: u64,
    fail_next_sync: bool,
}

/// The durable part of an in-memory log: survives a member's crash.
/// Clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    state: Arc<Mutex<DiskState>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `sync` fail without persisting anything, as a process
    /// dying mid-fsync would. The replica stops on the error; reopening the
    /// disk shows what a real crash at that moment would have left.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Cancels a [`Self::fail_next_sync`] that has not fired yet.
    pub fn disarm(&self) {
        self.lock().fail_next_sync = false;
    }

    /// How many syncs completed on this disk.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The last durable log index.
    pub fn last_index(&self) -> u64 {
        self.lock().image.last_index()
    }

    /// The first index still held as an entry (older ones are in the snapshot).
    pub fn first_index(&self) -> u64 {
        self.lock().image.first_index()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding this lock is a test failure already; the
        // image itself is always consistent between statements.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An in-memory log over a [`MemDisk`]. Open one per member start.
#[derive(Debug)]
pub struct MemLog {
    disk: MemDisk,
    image: LogImage,
    unsynced: Vec<Write>,
}

impl MemLog {
    /// Opens the log as it was last synced to `disk`.
    pub fn open(disk: &MemDisk) -> Self {
        MemLog {
            disk: disk.clone(),
            image: disk.lock().image.clone(),
            unsynced: Vec::new(),
        }
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.image.hard_state.clone(),
            self.image.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.image.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.image.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.image.first_index();
        let mut entries =
            self.image.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.image.snapshot_index() {
            return Ok(self.image.snapshot.get_metadata().term);
        }
        if index < self.image.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.image.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.image.entries[(index - self.image.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.image.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.image.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Like the disk log: no snapshot yet is "unavailable", not empty.
        let index = self.image.snapshot_index();
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.image.snapshot.clone())
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.image.append(entries)?;
        self.unsynced.push(Write::Append(entries.to_vec()));
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.image.hard_state = hard_state.clone();
        self.unsynced.push(Write::HardState(hard_state.clone()));
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()> {
        self.image.conf_state = conf_state.clone();
        self.unsynced.push(Write::ConfState(conf_state.clone()));
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        self.image.apply_snapshot(snapshot.clone());
        self.unsynced.push(Write::ApplySnapshot(snapshot));
        Ok(())
    }

    fn compact_to_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        self.image.compact_to_snapshot(snapshot.clone());
        self.unsynced.push(Write::Compact(snapshot));
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let mut disk = self.disk.lock();
        if disk.fail_next_sync {
            disk.fail_next_sync = false;
            return Err(Error::io(
                "syncing the in-memory log",
                std::io::Error::other("simulated crash during fsync"),
            ));
        }
        for write in self.unsynced.drain(..) {
            write.replay(&mut disk.image)?;
        }
        disk.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn unsynced_writes_are_lost_on_reopen() {
        let disk = MemDisk::new();
        let mut log = MemLog::open(&disk);
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        log.sync().expect("sync");
        log.append(&[entry(3, 1)]).expect("append");
        assert_eq!(log.last_index().expect("last"), 3);
        let reopened = MemLog::open(&disk);
        assert_eq!(reopened.last_index().expect("last"), 2);
    }

    #[test]
    fn append_replaces_a_conflicting_suffix() {
        let disk = MemDisk::new();
        let mut log = MemLog::open(&disk);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        log.append(&[entry(2, 2)]).expect("append");
        assert_eq!(log.last_index().expect("last"), 2);
        assert_eq!(log.term(2).expect("term"), 2);
        assert!(log.append(&[entry(5, 2)]).is_err(), "a gap is refused");
    }

    #[test]
    fn compaction_keeps_the_snapshot_and_later_entries() {
        let disk = MemDisk::new();
        let mut log = MemLog::open(&disk);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .expect("append");
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 2;
        snapshot.mut_metadata().term = 1;
        snapshot.data = b"state".to_vec().into();
        log.compact_to_snapshot(snapshot).expect("compact");
        log.sync().expect("sync");
        let log = MemLog::open(&disk);
        assert_eq!(log.first_index().expect("first"), 3);
        assert_eq!(log.term(2).expect("term"), 1);
        assert!(log.term(1).is_err());
        assert_eq!(log.snapshot(0, 1).expect("snapshot").get_data(), b"state");
    }

    #[test]
    fn a_failed_sync_persists_nothing() {
        let disk = MemDisk::new();
        let mut log = MemLog::open(&disk);
        log.append(&[entry(1, 1)]).expect("append");
        disk.fail_next_sync();
        assert!(log.sync().is_err());
        assert_eq!(disk.last_index(), 0);
    }
}
