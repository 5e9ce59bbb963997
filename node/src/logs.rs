//! Container logs: every line a guest writes to stdout or stderr, stamped with
//! the time it arrived, kept in a bounded in-memory ring (what `logs` reads)
//! and appended to size-rotated files on disk (what survives the ring).
//!
//! One [`ContainerLog`] exists per container instance; after a restart the
//! previous instance's log is kept so `--previous` can read it. This module
//! knows nothing of Wasm: it receives bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Bytes of log lines each container instance keeps in memory. 64 KiB is a
/// few hundred lines, enough for `logs --tail` while thousands of pods fit
/// on a node.
pub const LOG_RING_BYTES_MAX: usize = 64 * 1024;

/// Longest line kept, in bytes; a longer run without a newline is cut into
/// lines of this size so one write cannot grow a line without bound.
pub const LOG_LINE_BYTES_MAX: usize = 16 * 1024;

/// Size at which a log file is rotated, in bytes (kubelet's default 10 MiB).
pub const LOG_FILE_BYTES_MAX: u64 = 10 << 20;

/// Rotated files kept beside the current one (kubelet keeps 5 files in all).
pub const LOG_ROTATED_FILES_MAX: u32 = 4;

/// Lines a follower may fall behind before it misses some. Followers read
/// from memory; 1024 lines absorbs a burst while a client is slow.
pub const LOG_FOLLOW_BUFFER_LINES: usize = 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the line was complete.
    pub time: SystemTime,
    /// The stream it was written to.
    pub stream: LogStream,
    /// The text, without its newline (invalid UTF-8 replaced).
    pub text: String,
}

/// What to read from a log.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// The previous instance's log instead of the current one.
    pub previous: bool,
}

/// The log of one container instance.
pub struct ContainerLog {
    state: Mutex<LogState>,
}

struct LogState {
    ring: VecDeque<LogLine>,
    ring_bytes: usize,
    partial: [Vec<u8>; 2],
    file: Option<RotatingFile>,
    /// New lines go to followers; `None` once the instance ended, which
    /// ends every follow after its last line (as `logs -f` ends).
    follow: Option<broadcast::Sender<LogLine>>,
}

impl ContainerLog {
    /// A new log, also written to `file` (rotated) when given.
    pub fn new(file: Option<PathBuf>) -> Arc<Self> {
        let file = file.and_then(|path| match RotatingFile::open(path.clone()) {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::warn!(?path, %error, "cannot open log file; logging to memory only");
                None
            }
        });
        let (follow, _) = broadcast::channel(LOG_FOLLOW_BUFFER_LINES);
        Arc::new(Self {
            state: Mutex::new(LogState {
                ring: VecDeque::new(),
                ring_bytes: 0,
                partial: [Vec::new(), Vec::new()],
                file,
                follow: Some(follow),
            }),
        })
    }

    /// Appends output; complete lines become log lines.
    pub fn append(&self, stream: LogStream, mut bytes: &[u8]) {
        let mut state = self.lock();
        let index = stream as usize;
        while !bytes.is_empty() {
            let room = LOG_LINE_BYTES_MAX - state.partial[index].len();
            let (line_end, consumed) = match bytes.iter().position(|&b| b == b'\n') {
                Some(newline) if newline <= room => (true, newline + 1),
                _ if bytes.len() >= room => (true, room),
                _ => (false, bytes.len()),
            };
            let chunk = &bytes[..consumed];
            let chunk = chunk.strip_suffix(b"\n").unwrap_or(chunk);
            state.partial[index].extend_from_slice(chunk);
            bytes = &bytes[consumed..];
            if line_end {
                let text = std::mem::take(&mut state.partial[index]);
                self.push_line(&mut state, stream, &text);
            }
        }
    }

    /// Ends the log: a last line without a newline is kept, and followers
    /// end after the last line.
    pub fn finish(&self) {
        let mut state = self.lock();
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let text = std::mem::take(&mut state.partial[stream as usize]);
            if !text.is_empty() {
                self.push_line(&mut state, stream, &text);
            }
        }
        state.follow = None;
    }

    /// Lines matching `query` (its `previous` field is the caller's concern).
    pub fn read(&self, query: &LogQuery) -> Vec<LogLine> {
        let state = self.lock();
        select(state.ring.iter(), query)
    }

    /// The lines matching `query` now, and a receiver of every later line.
    pub fn follow(&self, query: &LogQuery) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let state = self.lock();
        // Subscribing under the lock means no line falls between the backlog
        // and the receiver. A finished log gives a receiver that is closed.
        let receiver = match &state.follow {
            Some(follow) => follow.subscribe(),
            None => broadcast::channel(1).1,
        };
        (select(state.ring.iter(), query), receiver)
    }

    fn push_line(&self, state: &mut LogState, stream: LogStream, text: &[u8]) {
        let line = LogLine {
            time: SystemTime::now(),
            stream,
            text: String::from_utf8_lossy(text).into_owned(),
        };
        if let Some(file) = &mut state.file {
            file.write_line(&line);
        }
        state.ring_bytes += line.text.len();
        state.ring.push_back(line.clone());
        while state.ring_bytes > LOG_RING_BYTES_MAX {
            let Some(dropped) = state.ring.pop_front() else {
                break;
            };
            state.ring_bytes -= dropped.text.len();
        }
        // No follower is not an error.
        if let Some(follow) = &state.follow {
            let _ = follow.send(line);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A panic while appending leaves a log that is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn select<'a>(
    lines: impl DoubleEndedIterator<Item = &'a LogLine>,
    query: &LogQuery,
) -> Vec<LogLine> {
    let mut selected: Vec<LogLine> = lines
        .rev()
        .filter(|line| query.since.is_none_or(|since| line.time >= since))
        .take(query.tail_lines.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    selected.reverse();
    selected
}

/// A log file in the CRI format (`<RFC 3339 time> <stream> F <text>`),
/// rotated to `<name>.1`, `<name>.2`, … when it grows past the limit.
struct RotatingFile {
    path: PathBuf,
    file: File,
    bytes: u64,
}

impl RotatingFile {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::options().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        Ok(Self { path, file, bytes })
    }

    fn write_line(&mut self, line: &LogLine) {
        let stream = match line.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        let since_epoch = line
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let record = format!(
            "{}.{:09} {stream} F {}\n",
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
            line.text
        );
        if self.bytes + record.len() as u64 > LOG_FILE_BYTES_MAX
            && let Err(error) = self.rotate()
        {
            tracing::warn!(path = ?self.path, %error, "cannot rotate log file");
        }
        match self.file.write_all(record.as_bytes()) {
            Ok(()) => self.bytes += record.len() as u64,
            Err(error) => tracing::warn!(path = ?self.path, %error, "cannot write log file"),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for index in (1..LOG_ROTATED_FILES_MAX).rev() {
            let from = rotated_path(&self.path, index);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, index + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = File::options().create(true).append(true).open(&self.path)?;
        self.bytes = 0;
        Ok(())
    }
}

fn rotated_path(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// Guest stdout or stderr as a WASI output stream that writes into a log.
#[derive(Clone)]
pub(crate) struct LogPipe {
    log: Arc<ContainerLog>,
    stream: LogStream,
}

impl LogPipe {
    pub(crate) fn new(log: Arc<ContainerLog>, stream: LogStream) -> Self {
        Self { log, stream }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.append(self.stream, bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_bounds_the_ring_and_tails() {
        let log = ContainerLog::new(None);
        log.append(LogStream::Stdout, b"one\ntw");
        log.append(LogStream::Stdout, b"o\nthree");
        log.append(LogStream::Stderr, b"err\n");
        assert_eq!(
            texts(&log.read(&LogQuery::default())),
            ["one", "two", "err"]
        );
        log.finish();
        let tail = LogQuery {
            tail_lines: Some(2),
            ..LogQuery::default()
        };
        assert_eq!(texts(&log.read(&tail)), ["err", "three"]);
        let line = vec![b'x'; 1000];
        for _ in 0..200 {
            log.append(LogStream::Stdout, &line);
            log.append(LogStream::Stdout, b"\n");
        }
        let kept = log.read(&LogQuery::default());
        assert!(
            kept.len() < 200
                && kept.iter().map(|l| l.text.len()).sum::<usize>() <= LOG_RING_BYTES_MAX
        );
    }

    #[test]
    fn rotates_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut file = RotatingFile::open(path.clone()).unwrap();
        file.bytes = LOG_FILE_BYTES_MAX;
        let line = LogLine {
            time: SystemTime::now(),
            stream: LogStream::Stdout,
            text: "x".to_owned(),
        };
        file.write_line(&line);
        assert!(rotated_path(&path, 1).exists());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|line| line.text.as_str()).collect()
    }
}
