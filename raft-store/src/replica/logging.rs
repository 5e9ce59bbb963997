//! Bridges raft-rs's `slog` logging into `tracing`, so raft's own messages
//! land in the same subscriber as everything else and nothing is written to
//! stderr behind its back. It knows nothing of raft beyond slog's record shape.
//!
//! A hand-written drain rather than a bridge crate: it is a few lines, and it
//! keeps one fewer dependency pinned to slog's and tracing's versions.

use std::fmt::{self, Write as _};

/// A slog drain that re-emits every record as a `tracing` event with target
/// `raft`, its key-values appended as `key=value`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = FieldWriter(String::new());
        // A field that fails to format is left out rather than losing the record.
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        let message = record.msg();
        let fields = fields.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{fields}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{fields}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}{fields}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}{fields}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}{fields}"),
        }
        Ok(())
    }
}

/// Collects a record's key-values as ` key=value` pairs.
struct FieldWriter(String);

impl slog::Serializer for FieldWriter {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments) -> slog::Result {
        write!(self.0, " {key}={value}").map_err(|_| slog::Error::Other)
    }
}

/// The logger handed to raft-rs for one member.
pub(crate) fn raft_logger(member: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("member" => member))
}
