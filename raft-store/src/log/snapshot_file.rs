//! The snapshot file: the latest raft snapshot (metadata and state machine
//! image) of one member, replaced atomically.
//!
//! The file is `[magic: 8 bytes][CRC32 of rest: u32 LE][raft Snapshot
//! encoded by rust-protobuf]`. It is written to a temporary name, fsynced,
//! renamed over the old one and the directory fsynced, so a crash leaves
//! either the old snapshot or the new one, never half of one. This module
//! knows nothing of log entries.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use super::segment::sync_dir;
use crate::Error;

const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TEMP_FILE: &str = "snapshot.tmp";
const MAGIC: &[u8; 8] = b"FLTSNAP1";
const HEADER_BYTES: usize = MAGIC.len() + 4;

/// Largest snapshot file read back. It bounds memory on a corrupt file and
/// matches the largest raft frame the transport carries, since a stored
/// snapshot is what gets sent to a lagging member.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Atomically replaces the snapshot file with `snapshot`. Returns the number
/// of fsyncs issued (file and directory).
pub(crate) fn write(dir: &Path, snapshot: &Snapshot) -> crate::Result<u64> {
    let body = snapshot
        .write_to_bytes()
        .map_err(|e| Error::Corrupt(format!("encoding snapshot: {e}")))?;
    if body.len() as u64 + HEADER_BYTES as u64 > SNAPSHOT_FILE_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "snapshot",
            size: body.len(),
            limit: SNAPSHOT_FILE_BYTES_MAX as usize,
        });
    }
    let temp = dir.join(SNAPSHOT_TEMP_FILE);
    let context = || format!("writing snapshot {}", temp.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::PRIVATE_FILE_MODE)
        .open(&temp)
        .map_err(|e| Error::io(context(), e))?;
    file.write_all(MAGIC)
        .and_then(|()| file.write_all(&crc32fast::hash(&body).to_le_bytes()))
        .and_then(|()| file.write_all(&body))
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(context(), e))?;
    drop(file);
    std::fs::rename(&temp, path(dir))
        .map_err(|e| Error::io(format!("renaming snapshot into {}", dir.display()), e))?;
    sync_dir(dir)?;
    Ok(2)
}

/// Reads and verifies the snapshot file, if there is one.
pub(crate) fn read(dir: &Path) -> crate::Result<Option<Snapshot>> {
    let path = path(dir);
    let context = || format!("reading snapshot {}", path.display());
    let len_bytes = match std::fs::metadata(&path) {
        Ok(metadata) => metadata.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(context(), e)),
    };
    if len_bytes > SNAPSHOT_FILE_BYTES_MAX {
        return Err(Error::Corrupt(format!(
            "{} is {len_bytes} bytes, over the limit of {SNAPSHOT_FILE_BYTES_MAX}",
            path.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(context(), e))?;
    decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::Corrupt(format!("{}: {reason}", path.display())))
}

fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a snapshot file".into());
    }
    let crc = u32::from_le_bytes(
        bytes[MAGIC.len()..HEADER_BYTES]
            .try_into()
            .expect("invariant: 4 bytes"),
    );
    let body = &bytes[HEADER_BYTES..];
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch".into());
    }
    Snapshot::parse_from_bytes(body).map_err(|e| format!("undecodable snapshot: {e}"))
}
