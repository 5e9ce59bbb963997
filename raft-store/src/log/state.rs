//! The in-memory state of the log: hard state, conf state, the latest
//! snapshot's metadata and the live (uncompacted) entries.
//!
//! Live writes and replay on open both change it only through
//! [`LogState::apply`], so what is recovered is by construction what was
//! written. This module knows nothing of files.

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use super::record::Record;

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct LogState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The latest snapshot: entries up to `snapshot.index` are compacted.
    pub snapshot: SnapshotMetadata,
    /// `entries[i].index == entries[0].index + i`. Outside replay,
    /// `entries[0].index == snapshot.index + 1`.
    pub entries: Vec<Entry>,
}

/// Whether a record is being replayed (where the oldest kept segment may start
/// after a gap, because the segments before it were deleted) or written live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Live,
    Replay,
}

impl LogState {
    pub fn first_index(&self) -> u64 {
        self.entries
            .first()
            .map_or(self.snapshot.index + 1, |entry| entry.index)
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.index, |entry| entry.index)
    }

    /// The entry at `index`, if it is live.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.entries.first()?.index;
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(offset)
    }

    /// Applies one record. An error names what is inconsistent; the caller
    /// decides whether that is corruption (replay) or a caller's bug (live).
    pub fn apply(&mut self, record: Record, mode: Mode) -> Result<(), String> {
        match record {
            Record::Entries(entries) => self.apply_entries(entries, mode),
            Record::Truncate { from_index } => self.truncate(from_index),
            Record::HardState(hard_state) => {
                self.hard_state = hard_state;
                Ok(())
            }
            Record::ConfState(conf_state) => {
                self.conf_state = conf_state;
                Ok(())
            }
            Record::Snapshot { metadata, restore } => self.apply_snapshot(metadata, restore),
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, mode: Mode) -> Result<(), String> {
        let Some(first) = entries.first().map(|entry| entry.index) else {
            return Ok(());
        };
        check_consecutive(&entries)?;
        if first <= self.snapshot.index {
            return Err(format!(
                "entries from {first} overlap the snapshot at {}",
                self.snapshot.index
            ));
        }
        let gap_allowed = mode == Mode::Replay && self.entries.is_empty();
        if first > self.last_index() + 1 && !gap_allowed {
            return Err(format!(
                "entries from {first} leave a gap after {}",
                self.last_index()
            ));
        }
        self.truncate(first)?;
        self.entries.extend(entries);
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> Result<(), String> {
        if from_index <= self.snapshot.index {
            return Err(format!(
                "truncation from {from_index} reaches into the snapshot at {}",
                self.snapshot.index
            ));
        }
        if let Some(first) = self.entries.first().map(|entry| entry.index) {
            let keep = from_index.saturating_sub(first);
            self.entries
                .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, metadata: SnapshotMetadata, restore: bool) -> Result<(), String> {
        let index = metadata.index;
        if index < self.snapshot.index {
            return Err(format!(
                "snapshot at {index} is older than the one at {}",
                self.snapshot.index
            ));
        }
        if index == self.snapshot.index {
            // Every segment repeats the current snapshot in its header.
            return Ok(());
        }
        let keeps_log = !restore
            && self
                .entry(index)
                .is_some_and(|entry| entry.term == metadata.term);
        if keeps_log {
            let first = self.entries[0].index;
            let drop = usize::try_from(index + 1 - first).expect("invariant: live offset fits");
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            // A snapshot that does not match the log replaces it, and its
            // membership is the membership, as raft-rs's MemStorage does.
            self.entries.clear();
            self.conf_state = metadata.get_conf_state().clone();
        }
        // raft-rs refuses a hard state whose commit is below the snapshot.
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.snapshot = metadata;
        Ok(())
    }

    /// After replay: the live entries must start right after the snapshot.
    pub fn check_continuity(&self) -> Result<(), String> {
        match self.entries.first() {
            Some(entry) if entry.index != self.snapshot.index + 1 => Err(format!(
                "the log starts at {} but the snapshot covers only up to {}",
                entry.index, self.snapshot.index
            )),
            _ => Ok(()),
        }
    }
}

fn check_consecutive(entries: &[Entry]) -> Result<(), String> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(format!(
                "entries are not consecutive: {} then {}",
                pair[0].index, pair[1].index
            ));
        }
    }
    Ok(())
}
