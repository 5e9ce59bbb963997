//! The audit log: JSON lines appended to a file that is rotated by size,
//! as kube-apiserver's log backend (lumberjack) does it, or written to
//! standard output.
//!
//! When the file would grow past its maximum it is renamed to
//! `<name>-<UTC time>.<ext>` (`audit-2026-03-01T12-00-00.000.log`) and a new
//! one is started; then backups beyond the count to keep, or older than
//! the age to keep, are removed, oldest first. Files are created 0600 and
//! missing directories 0700: the log records who did what, and at the
//! Request levels what they sent.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::fmt::strtime;

/// kube-apiserver's (lumberjack's) size when none is given: 100 MB.
pub const MAX_SIZE_MB_DEFAULT: u64 = 100;
/// Rotated files kept unless told otherwise. kube-apiserver keeps them
/// all by default; here the default is a bound, 1 GB at the default size.
pub const MAX_BACKUPS_DEFAULT: usize = 10;
const BYTES_PER_MB: u64 = 1024 * 1024;
const SECONDS_PER_DAY: u64 = 24 * 60 * 60;
/// lumberjack's backup time format, `2006-01-02T15-04-05.000` in Go's.
const BACKUP_TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%S%.3f";
/// Milliseconds tried after a rotation's own for a backup name that is not
/// taken: rotations come at most one per line written, far fewer than
/// this in a millisecond.
const BACKUP_NAME_ATTEMPTS_MAX: usize = 1_000;
/// Backups found in the log's directory and considered for removal at
/// once: a directory with more files than this is not swept whole in one
/// rotation, only in several.
const BACKUPS_LISTED_MAX: usize = 10_000;

/// Where the log goes and how it is rotated (kube-apiserver's
/// `--audit-log-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub target: Target,
    /// The size in megabytes (MiB, as lumberjack counts them) a file may
    /// reach before it is rotated; 0 is [`MAX_SIZE_MB_DEFAULT`].
    pub max_size_mb: u64,
    /// How many rotated files are kept; 0 keeps them all, as in Kubernetes.
    pub max_backups: usize,
    /// How many days a rotated file is kept; 0 keeps them however old.
    pub max_age_days: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `--audit-log-path -`: no file, no rotation.
    Stdout,
    File(PathBuf),
}

impl LogConfig {
    /// A log at `path` with rotation as `flotilla server`'s defaults.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        LogConfig {
            target: Target::File(path.into()),
            max_size_mb: MAX_SIZE_MB_DEFAULT,
            max_backups: MAX_BACKUPS_DEFAULT,
            max_age_days: 0,
        }
    }
}

/// Where lines are written: one of the two targets.
pub enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(RotatingFile),
}

impl Sink {
    /// Opens the target (creating the file) so that a path that cannot be
    /// written is an error at start, not a silent loss later.
    pub fn open(config: &LogConfig) -> io::Result<Sink> {
        match &config.target {
            Target::Stdout => Ok(Sink::Stdout(BufWriter::new(io::stdout()))),
            Target::File(path) => {
                let max_size_mb = match config.max_size_mb {
                    0 => MAX_SIZE_MB_DEFAULT,
                    size => size,
                };
                let max_age = (config.max_age_days > 0)
                    .then(|| Duration::from_secs(config.max_age_days * SECONDS_PER_DAY));
                let file = RotatingFile::open(
                    path,
                    max_size_mb.saturating_mul(BYTES_PER_MB),
                    config.max_backups,
                    max_age,
                )?;
                file.remove_old_backups(SystemTime::now())?;
                Ok(Sink::File(file))
            }
        }
    }

    pub fn write_line(&mut self, line: &[u8], now: SystemTime) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(line),
            Sink::File(file) => file.write_line(line, now),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.flush(),
        }
    }
}

/// A file rotated by size, with its backups bounded by count and age.
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    /// What the file holds, written or buffered.
    size_bytes: u64,
    max_bytes: u64,
    max_backups: usize,
    max_age: Option<Duration>,
}

impl RotatingFile {
    pub fn open(
        path: &Path,
        max_bytes: u64,
        max_backups: usize,
        max_age: Option<Duration>,
    ) -> io::Result<RotatingFile> {
        create_parent(path)?;
        let file = open_append(path)?;
        let size_bytes = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            size_bytes,
            max_bytes,
            max_backups,
            max_age,
        })
    }

    /// Appends `line`, first rotating if the file would pass its maximum.
    /// A line is never split between files.
    pub fn write_line(&mut self, line: &[u8], now: SystemTime) -> io::Result<()> {
        let length = line.len() as u64;
        if self.size_bytes > 0 && self.size_bytes.saturating_add(length) > self.max_bytes {
            self.rotate(now)?;
        }
        self.file.write_all(line)?;
        self.size_bytes += length;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Renames the file to its backup name, starts a new one, and removes
    /// the backups no longer kept.
    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        self.file.flush()?;
        let backup = self.free_backup_path(now)?;
        std::fs::rename(&self.path, &backup)?;
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size_bytes = 0;
        tracing::debug!(backup = %backup.display(), "audit log rotated");
        self.remove_old_backups(now)
    }

    /// The backup name for a rotation at `now`. Two rotations in one
    /// millisecond would get one name: the second takes the next free
    /// millisecond rather than replace the first.
    fn free_backup_path(&self, now: SystemTime) -> io::Result<PathBuf> {
        let (stem, extension) = self.name_parts();
        let mut time = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
        for _ in 0..BACKUP_NAME_ATTEMPTS_MAX {
            let stamp = strtime::format(BACKUP_TIME_FORMAT, time).map_err(io::Error::other)?;
            let backup = self
                .path
                .with_file_name(format!("{stem}-{stamp}{extension}"));
            if !backup.exists() {
                return Ok(backup);
            }
            time = time
                .checked_add(Duration::from_millis(1))
                .map_err(io::Error::other)?;
        }
        Err(io::Error::other(format!(
            "no free backup name for {} within {BACKUP_NAME_ATTEMPTS_MAX} ms of now",
            self.path.display()
        )))
    }

    /// The file name before and from its extension's dot: `audit` and
    /// `.log`.
    fn name_parts(&self) -> (String, String) {
        let name = self
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.rfind('.').filter(|&dot| dot > 0) {
            Some(dot) => (name[..dot].to_string(), name[dot..].to_string()),
            None => (name, String::new()),
        }
    }

    /// The backups beside the file, newest first, with their times (read
    /// from their names, as lumberjack does).
    fn backups(&self) -> io::Result<Vec<(Timestamp, PathBuf)>> {
        let (stem, extension) = self.name_parts();
        let prefix = format!("{stem}-");
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut backups = Vec::new();
        for entry in std::fs::read_dir(directory)?.take(BACKUPS_LISTED_MAX) {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stamp = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&extension));
            let time = stamp.and_then(|stamp| {
                strtime::parse(BACKUP_TIME_FORMAT, stamp)
                    .and_then(|parsed| parsed.to_datetime())
                    .and_then(|time| time.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC))
                    .ok()
            });
            if let Some(time) = time {
                backups.push((time.timestamp(), entry.path()));
            }
        }
        backups.sort_by_key(|backup| std::cmp::Reverse(backup.0));
        Ok(backups)
    }

    /// Removes backups past the count to keep and those older than the age
    /// to keep.
    pub fn remove_old_backups(&self, now: SystemTime) -> io::Result<()> {
        if self.max_backups == 0 && self.max_age.is_none() {
            return Ok(());
        }
        let oldest_kept = self
            .max_age
            .and_then(|age| now.checked_sub(age))
            .and_then(|time| Timestamp::try_from(time).ok());
        for (index, (time, path)) in self.backups()?.into_iter().enumerate() {
            let too_many = self.max_backups > 0 && index >= self.max_backups;
            let too_old = oldest_kept.is_some_and(|oldest| time < oldest);
            if too_many || too_old {
                std::fs::remove_file(&path)?;
                tracing::debug!(backup = %path.display(), "old audit log removed");
            }
        }
        Ok(())
    }
}

/// Creates the directories `path` is in that are missing, 0700 as
/// kube-apiserver creates them; existing ones are left as they are.
fn create_parent(path: &Path) -> io::Result<()> {
    let Some(parent) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(parent)
}

/// Opens `path` for appending, creating it readable by its owner only.
fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        // 2026-03-01T00:00:00Z and on.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_772_323_200 + seconds)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn size_rotates_and_max_backups_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = RotatingFile::open(&path, 100, 2, None).unwrap();
        let mut line = vec![b'x'; 39];
        line.push(b'\n');
        // Two lines fit in 100 bytes, a third starts a new file: rotations
        // at seconds 2, 4 and 6, of which the last two are kept.
        for second in 0..7 {
            log.write_line(&line, at(second)).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(
            files(dir.path()),
            [
                "audit-2026-03-01T00-00-04.000.log",
                "audit-2026-03-01T00-00-06.000.log",
                "audit.log",
            ]
        );
        assert_eq!(std::fs::read(&path).unwrap(), line);
        let backup = dir.path().join("audit-2026-03-01T00-00-06.000.log");
        assert_eq!(std::fs::read(backup).unwrap().len(), 80);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rotations_within_a_millisecond_keep_both_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit");
        let mut log = RotatingFile::open(&path, 10, 0, None).unwrap();
        for _ in 0..3 {
            log.write_line(b"0123456789\n", at(0)).unwrap();
        }
        assert_eq!(
            files(dir.path()),
            [
                "audit",
                "audit-2026-03-01T00-00-00.000",
                "audit-2026-03-01T00-00-00.001",
            ]
        );
    }

    #[test]
    fn old_backups_go_and_other_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        for name in [
            "audit-2026-02-20T00-00-00.000.log",
            "audit-2026-02-28T12-00-00.000.log",
            "audit-notatime.log",
            "other.log",
        ] {
            std::fs::write(dir.path().join(name), "x\n").unwrap();
        }
        let day = Duration::from_secs(SECONDS_PER_DAY);
        let log = RotatingFile::open(&path, 1000, 0, Some(day * 2)).unwrap();
        log.remove_old_backups(at(0)).unwrap();
        assert_eq!(
            files(dir.path()),
            [
                "audit-2026-02-28T12-00-00.000.log",
                "audit-notatime.log",
                "audit.log",
                "other.log",
            ]
        );
    }

    #[test]
    fn missing_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/log/audit.log");
        let mut log = RotatingFile::open(&path, 100, 1, None).unwrap();
        log.write_line(b"{}\n", at(0)).unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn an_existing_file_is_appended_to_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "0123456789\n").unwrap();
        let mut log = RotatingFile::open(&path, 15, 1, None).unwrap();
        log.write_line(b"abc\n", at(0)).unwrap();
        log.write_line(b"def\n", at(1)).unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "def\n");
        let backup = dir.path().join("audit-2026-03-01T00-00-01.000.log");
        assert_eq!(
            std::fs::read_to_string(backup).unwrap(),
            "0123456789\nabc\n"
        );
    }
}
