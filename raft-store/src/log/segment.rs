//! Segment files: where log records live on disk, how they are named, and the
//! buffered writer of the one segment being appended to.
//!
//! A segment is `<seq>.seg` (a zero-padded sequence number, so names sort in
//! write order). This module knows nothing of what records mean; it moves
//! bytes and makes them durable, and counts every fsync it issues.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::Error;

/// Bytes buffered in memory before the writer hands them to the kernel. Big
/// enough that one Ready batch of small entries is one `write` call, small
/// enough to be irrelevant next to the live entries kept in memory.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

const SEGMENT_SUFFIX: &str = ".seg";

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// The segments in `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> crate::Result<Vec<(u64, PathBuf)>> {
    let read_dir = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing log directory {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for item in read_dir {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = item.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, item.path()));
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// fsyncs a directory, which makes file creations, renames and deletions in
/// it durable.
pub(crate) fn sync_dir(dir: &Path) -> crate::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// The segment being appended to.
pub(crate) struct ActiveSegment {
    pub seq: u64,
    pub path: PathBuf,
    writer: BufWriter<File>,
    /// Bytes in the file including the buffered ones.
    pub len_bytes: u64,
    /// Whether anything was written since the last sync.
    dirty: bool,
}

impl ActiveSegment {
    /// Creates segment `seq` (which must not exist) and makes its directory
    /// entry durable.
    pub fn create(dir: &Path, seq: u64) -> crate::Result<Self> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(super::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|e| Error::io(format!("creating segment {}", path.display()), e))?;
        sync_dir(dir)?;
        Ok(Self {
            seq,
            path,
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            len_bytes: 0,
            dirty: false,
        })
    }

    /// Buffers `bytes` at the end of the segment.
    pub fn write(&mut self, bytes: &[u8]) -> crate::Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| Error::io(format!("writing segment {}", self.path.display()), e))?;
        self.len_bytes += bytes.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Flushes the buffer and fdatasyncs the file if anything was written
    /// since the last sync. Returns whether an fsync was issued.
    pub fn sync(&mut self) -> crate::Result<bool> {
        if !self.dirty {
            return Ok(false);
        }
        let context = || format!("syncing segment {}", self.path.display());
        self.writer.flush().map_err(|e| Error::io(context(), e))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(context(), e))?;
        self.dirty = false;
        Ok(true)
    }
}
