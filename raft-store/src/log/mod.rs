//! The durable raft log of one member: [`DiskLog`], a [`raft::Storage`] and
//! [`LogStore`] over append-only segment files in a data directory.
//!
//! Every change (entries, a truncated suffix, hard state, conf state, a
//! snapshot) is one CRC-checked record appended to the active segment.
//! Writes are buffered; [`LogStore::sync`] flushes and fdatasyncs once, which
//! is the group commit of one Ready batch. The latest snapshot lives in its
//! own file, replaced atomically; once it is durable, segments holding only
//! entries it covers are deleted. On open the segments are replayed: a torn
//! record at the very end of the newest segment (a crash mid-write of data
//! that was never synced) is cut off; any other damage is
//! [`Error::Corrupt`](crate::Error::Corrupt) naming the file and offset.
//!
//! **Memory.** The live (uncompacted) entries are kept in memory, so
//! `entries()` and `term()` never touch the disk on the Ready path. That is
//! bounded because the replica snapshots its state machine and calls
//! [`LogStore::compact_to_snapshot`] every so many applied entries; a log
//! that is never compacted grows in memory as on disk. The snapshot image is
//! not kept in memory: [`raft::Storage::snapshot`] reads it back from disk,
//! which happens only when a lagging member needs it.
//!
//! This module knows nothing of what entries mean, of the network, or of the
//! state machine. Its calls block on the disk; the replica runs them where
//! blocking is allowed.

mod record;
mod segment;
mod snapshot_file;
mod state;

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::replica::LogStore;
use crate::{Error, Result};
use record::Record;
use segment::{ActiveSegment, list_segments, sync_dir};
use state::{LogState, Mode};

pub use snapshot_file::SNAPSHOT_FILE_BYTES_MAX;

/// Size at which the active segment is closed and a new one started. Big
/// enough that rotation (two extra fsyncs) is rare under load, small enough
/// that compaction frees disk in useful steps and replay reads one segment
/// into memory at a time.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Entries grouped into one record, by encoded size. Keeps each record well
/// under [`record::RECORD_BYTES_MAX`] so a big Ready batch is split rather
/// than refused.
const ENTRIES_RECORD_BYTES_TARGET: usize = 8 * 1024 * 1024;

/// The lock file that keeps two processes from writing one log.
const LOCK_FILE: &str = "LOCK";
/// The log's directory and files: the server's user's alone.
const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// How a [`DiskLog`] is laid out; the defaults suit production.
#[derive(Debug, Clone)]
pub struct DiskLogOptions {
    /// Rotation size of segment files (see [`SEGMENT_BYTES_DEFAULT`]).
    pub segment_bytes: u64,
}

impl Default for DiskLogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// A closed segment and the highest entry index ever written to it, which
/// says when a snapshot makes the whole file redundant.
#[derive(Debug)]
struct SealedSegment {
    path: PathBuf,
    max_index: u64,
}

/// The durable raft log of one member. See the [module docs](self).
///
/// ```no_run
/// # fn main() -> flotilla_raft_store::Result<()> {
/// use flotilla_raft_store::log::DiskLog;
/// use flotilla_raft_store::replica::LogStore;
/// use raft::eraftpb::ConfState;
///
/// let mut log = DiskLog::open("/var/lib/flotilla/raft")?;
/// if !log.is_initialized() {
///     // First start of a new cluster: every founding member bootstraps
///     // with the same voters.
///     log.bootstrap(&ConfState::from((vec![1, 2, 3], vec![])))?;
/// }
/// log.sync()?;
/// # Ok(()) }
/// ```
pub struct DiskLog {
    dir: PathBuf,
    options: DiskLogOptions,
    state: LogState,
    sealed: Vec<SealedSegment>,
    active: ActiveSegment,
    active_max_index: u64,
    /// Sealed segments may be deleted at the next sync, once the snapshot
    /// record that makes them redundant is durable.
    deletion_pending: bool,
    encode_buffer: Vec<u8>,
    fsync_count: u64,
    /// Held for the lifetime of the log; the OS lock goes with the handle.
    _lock: File,
}

impl std::fmt::Debug for DiskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLog")
            .field("dir", &self.dir)
            .field("first_index", &self.state.first_index())
            .field("last_index", &self.state.last_index())
            .field("snapshot_index", &self.state.snapshot.index)
            .finish_non_exhaustive()
    }
}

impl DiskLog {
    /// Opens (creating if needed) the log in `dir` and recovers its state.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, DiskLogOptions::default())
    }

    /// [`DiskLog::open`] with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, options: DiskLogOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let span = tracing::info_span!("disk_log_open", dir = %dir.display());
        let _enter = span.enter();
        // The log holds the cluster's objects (Secrets encrypted or not):
        // only the server's user may read it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating log directory {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;
        let (mut state, mut sealed) = replay_segments(&dir)?;
        reconcile_snapshot_file(&dir, &mut state)?;
        state
            .check_continuity()
            .map_err(|reason| Error::Corrupt(format!("{}: {reason}", dir.display())))?;
        let next_seq = sealed.last().map_or(1, |(seq, _)| seq + 1);
        let sealed = sealed
            .drain(..)
            .map(|(_, segment)| segment)
            .collect::<Vec<_>>();
        let mut log = Self {
            active: ActiveSegment::create(&dir, next_seq)?,
            dir,
            options,
            state,
            sealed,
            active_max_index: 0,
            deletion_pending: true,
            encode_buffer: Vec::new(),
            fsync_count: 1,
            _lock: lock,
        };
        // Every segment opens with the whole current state, so the segments
        // before it can be deleted without losing the hard or conf state.
        log.write_header()?;
        log.sync()?;
        tracing::info!(
            first_index = log.state.first_index(),
            last_index = log.state.last_index(),
            snapshot_index = log.state.snapshot.index,
            "recovered raft log"
        );
        Ok(log)
    }

    /// Whether the log has ever been given a membership (by bootstrap, by a
    /// snapshot or by entries). An uninitialised member waits to be contacted
    /// by the leader of an existing cluster.
    pub fn is_initialized(&self) -> bool {
        self.state.conf_state != ConfState::default()
            || self.state.last_index() > 0
            || self.state.hard_state != HardState::default()
    }

    /// Gives a fresh log its first membership, for the first start of a new
    /// cluster (all founding members bootstrap with the same voters). Call
    /// [`LogStore::sync`] afterwards. Refused on an initialised log.
    pub fn bootstrap(&mut self, conf_state: &ConfState) -> Result<()> {
        if self.is_initialized() {
            return Err(Error::InvalidRequest(format!(
                "raft log in {} is already initialised",
                self.dir.display()
            )));
        }
        self.write_record(Record::ConfState(conf_state.clone()))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hard_state(&self) -> &HardState {
        &self.state.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.state.conf_state
    }

    /// Metadata of the latest stored snapshot (index 0 when there is none).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.state.snapshot
    }

    /// The latest stored snapshot with its data, read from disk: on restart
    /// the replica restores its state machine from it before replaying
    /// committed entries above its index.
    pub fn read_snapshot(&self) -> Result<Option<Snapshot>> {
        snapshot_file::read(&self.dir)
    }

    /// How many fsyncs (files and directories) this log has issued since it
    /// was opened, for metrics and for tests of group commit.
    pub fn fsync_count(&self) -> u64 {
        self.fsync_count
    }

    fn write_header(&mut self) -> Result<()> {
        let header = [
            Record::Snapshot {
                metadata: self.state.snapshot.clone(),
                restore: false,
            },
            Record::HardState(self.state.hard_state.clone()),
            Record::ConfState(self.state.conf_state.clone()),
        ];
        header
            .into_iter()
            .try_for_each(|record| self.write_encoded(&record))
    }

    /// Applies `record` to the in-memory state, then buffers it on disk.
    fn write_record(&mut self, record: Record) -> Result<()> {
        // Encode first so the record can then move into the state without a
        // copy; nothing reaches the file unless the state accepted it.
        self.encode_buffer.clear();
        record::encode(&record, &mut self.encode_buffer)?;
        if let Record::Entries(entries) = &record
            && let Some(last) = entries.last()
        {
            self.active_max_index = self.active_max_index.max(last.index);
        }
        self.state
            .apply(record, Mode::Live)
            .map_err(|reason| Error::InvalidRequest(format!("raft log: {reason}")))?;
        self.active.write(&self.encode_buffer)?;
        if self.active.len_bytes >= self.options.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn write_encoded(&mut self, record: &Record) -> Result<()> {
        self.encode_buffer.clear();
        record::encode(record, &mut self.encode_buffer)?;
        self.active.write(&self.encode_buffer)
    }

    /// Seals the active segment (durably) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        let _span = tracing::debug_span!("rotate_segment", seq = self.active.seq).entered();
        if self.active.sync()? {
            self.fsync_count += 1;
        }
        let next = ActiveSegment::create(&self.dir, self.active.seq + 1)?;
        self.fsync_count += 1;
        let old = std::mem::replace(&mut self.active, next);
        self.sealed.push(SealedSegment {
            path: old.path,
            max_index: std::mem::take(&mut self.active_max_index),
        });
        self.write_header()
    }

    /// Deletes the oldest sealed segments whose entries are all covered by
    /// the snapshot. Only called right after a sync, so the snapshot record
    /// and the active segment's header are durable.
    fn delete_covered_segments(&mut self) -> Result<()> {
        let covered = self
            .sealed
            .iter()
            .take_while(|segment| segment.max_index <= self.state.snapshot.index)
            .count();
        if covered == 0 {
            return Ok(());
        }
        for segment in self.sealed.drain(..covered) {
            std::fs::remove_file(&segment.path).map_err(|e| {
                Error::io(format!("deleting segment {}", segment.path.display()), e)
            })?;
            tracing::debug!(path = %segment.path.display(), "deleted compacted segment");
        }
        sync_dir(&self.dir)?;
        self.fsync_count += 1;
        Ok(())
    }

    fn store_snapshot(&mut self, snapshot: Snapshot, restore: bool) -> Result<()> {
        let _span = tracing::info_span!(
            "store_snapshot",
            index = snapshot.get_metadata().index,
            term = snapshot.get_metadata().term,
            restore,
        )
        .entered();
        // The file first: a crash before the record leaves a newer snapshot
        // file, which open reconciles; the reverse order would leave a record
        // pointing at a snapshot that does not exist.
        self.fsync_count += snapshot_file::write(&self.dir, &snapshot)?;
        let mut snapshot = snapshot;
        self.write_record(Record::Snapshot {
            metadata: snapshot.take_metadata(),
            restore,
        })?;
        self.deletion_pending = true;
        Ok(())
    }
}

/// Refuses a second process on the same directory.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    file.try_lock().map_err(|e| {
        Error::io(
            format!("locking {} (is another member using it?)", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(file)
}

/// Replays every segment in order. Returns the state and the segments (all
/// sealed: the log appends to a fresh one after open).
fn replay_segments(dir: &Path) -> Result<(LogState, Vec<(u64, SealedSegment)>)> {
    let segments = list_segments(dir)?;
    let mut state = LogState::default();
    let mut sealed = Vec::with_capacity(segments.len());
    let count = segments.len();
    for (position, (seq, path)) in segments.into_iter().enumerate() {
        let is_newest = position + 1 == count;
        let max_index = replay_segment(&path, is_newest, &mut state)?;
        sealed.push((seq, SealedSegment { path, max_index }));
    }
    Ok((state, sealed))
}

/// Replays one segment into `state`; returns its highest entry index.
fn replay_segment(path: &Path, is_newest: bool, state: &mut LogState) -> Result<u64> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading segment {}", path.display()), e))?;
    let scan = record::scan(&bytes);
    if let Some(damage) = &scan.damage {
        if !(is_newest && damage.reaches_end) {
            return Err(Error::Corrupt(format!(
                "{} at offset {}: {}",
                path.display(),
                damage.offset,
                damage.reason
            )));
        }
        truncate_torn_tail(path, scan.valid_len, &damage.reason)?;
    }
    let mut max_index = 0;
    for (offset, record) in scan.records {
        if let Record::Entries(entries) = &record
            && let Some(last) = entries.last()
        {
            max_index = max_index.max(last.index);
        }
        state.apply(record, Mode::Replay).map_err(|reason| {
            Error::Corrupt(format!("{} at offset {offset}: {reason}", path.display()))
        })?;
    }
    Ok(max_index)
}

fn truncate_torn_tail(path: &Path, valid_len: usize, reason: &str) -> Result<()> {
    tracing::warn!(
        path = %path.display(),
        valid_len,
        reason,
        "cutting off a torn record at the end of the log (a crash mid-write of unsynced data)"
    );
    File::options()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(valid_len as u64)?;
            file.sync_all()
        })
        .map_err(|e| Error::io(format!("truncating torn tail of {}", path.display()), e))
}

/// A snapshot file newer than the log's last snapshot record means a crash
/// came between writing the file and making its record durable: apply it
/// now. It keeps the log above it only if the log agrees with it.
fn reconcile_snapshot_file(dir: &Path, state: &mut LogState) -> Result<()> {
    let Some(mut snapshot) = snapshot_file::read(dir)? else {
        return Ok(());
    };
    let metadata = snapshot.take_metadata();
    if metadata.index <= state.snapshot.index {
        return Ok(());
    }
    tracing::warn!(
        index = metadata.index,
        "snapshot file is newer than the log; applying it"
    );
    state
        .apply(
            Record::Snapshot {
                metadata,
                restore: false,
            },
            Mode::Replay,
        )
        .map_err(|reason| Error::Corrupt(format!("{}: {reason}", dir.display())))
}

fn store_error(error: StorageError) -> raft::Error {
    raft::Error::Store(error)
}

/// Splits `entries` into runs whose encoded size stays near the target.
fn entry_chunks(entries: &[Entry]) -> Vec<&[Entry]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (position, entry) in entries.iter().enumerate() {
        let size = record::entry_encoded_bytes(entry);
        if position > start && bytes + size > ENTRIES_RECORD_BYTES_TARGET {
            chunks.push(&entries[start..position]);
            start = position;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

impl raft::Storage for DiskLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.state.hard_state.clone(),
            self.state.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.state.first_index() {
            return Err(store_error(StorageError::Compacted));
        }
        // raft-rs's MemStorage panics here; a library returns an error.
        if high > self.state.last_index() + 1 {
            return Err(store_error(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let first = self.state.first_index();
        let live = &self.state.entries[(low - first) as usize..(high - first) as usize];
        Ok(take_within(live, max_size.into()))
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.state.snapshot.index {
            return Ok(self.state.snapshot.term);
        }
        if index < self.state.first_index() {
            return Err(store_error(StorageError::Compacted));
        }
        self.state
            .entry(index)
            .map(|entry| entry.term)
            .ok_or(store_error(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.state.last_index())
    }

    /// The stored snapshot. If there is none, or it is older than
    /// `request_index` (a follower asked for a fresher one), this answers
    /// `SnapshotTemporarilyUnavailable` and raft asks again later; the
    /// replica should then take a new snapshot with `compact_to_snapshot`.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let _span = tracing::debug_span!("read_snapshot", request_index, to).entered();
        let stored = snapshot_file::read(&self.dir)
            .map_err(|e| store_error(StorageError::Other(Box::new(e))))?;
        match stored {
            Some(snapshot)
                if snapshot.get_metadata().index >= request_index
                    && snapshot.get_metadata().index > 0 =>
            {
                Ok(snapshot)
            }
            _ => Err(store_error(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

/// The longest prefix of `entries` within `max_size` encoded bytes, but
/// always at least one entry (raft-rs's `limit_size` contract).
fn take_within(entries: &[Entry], max_size: Option<u64>) -> Vec<Entry> {
    let Some(max_size) = max_size.filter(|&max| max != raft::NO_LIMIT) else {
        return entries.to_vec();
    };
    let mut total = 0u64;
    let count = entries
        .iter()
        .take_while(|entry| {
            let first = total == 0;
            total += u64::from(protobuf::Message::compute_size(*entry));
            first || total <= max_size
        })
        .count();
    entries[..count].to_vec()
}

impl LogStore for DiskLog {
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.state.snapshot.index {
            return Err(Error::Raft(store_error(StorageError::Compacted)));
        }
        if first.index > self.state.last_index() + 1 {
            return Err(Error::Raft(store_error(StorageError::Unavailable)));
        }
        if first.index <= self.state.last_index() {
            // Written on its own so replay sees the truncation explicitly.
            self.write_record(Record::Truncate {
                from_index: first.index,
            })?;
        }
        for chunk in entry_chunks(entries) {
            self.write_record(Record::Entries(chunk.to_vec()))?;
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        if *hard_state == self.state.hard_state {
            return Ok(());
        }
        self.write_record(Record::HardState(hard_state.clone()))
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<()> {
        if *conf_state == self.state.conf_state {
            return Ok(());
        }
        self.write_record(Record::ConfState(conf_state.clone()))
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let index = snapshot.get_metadata().index;
        // As raft-rs's MemStorage: a snapshot not above the first index is stale.
        if index < self.state.first_index() {
            return Err(Error::Raft(store_error(StorageError::SnapshotOutOfDate)));
        }
        self.store_snapshot(snapshot, true)
    }

    fn compact_to_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let metadata = snapshot.get_metadata();
        if metadata.index <= self.state.snapshot.index {
            return Ok(());
        }
        match self.state.entry(metadata.index) {
            Some(entry) if entry.term == metadata.term => self.store_snapshot(snapshot, false),
            Some(entry) => Err(Error::InvalidRequest(format!(
                "snapshot at {} has term {} but the log has term {}",
                metadata.index, metadata.term, entry.term
            ))),
            None => Err(Error::Raft(store_error(StorageError::Unavailable))),
        }
    }

    fn sync(&mut self) -> Result<()> {
        let _span = tracing::debug_span!("log_sync", seq = self.active.seq).entered();
        if self.active.sync()? {
            self.fsync_count += 1;
        }
        if std::mem::take(&mut self.deletion_pending) {
            self.delete_covered_segments()?;
        }
        Ok(())
    }
}
