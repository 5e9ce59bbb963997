//! The store's error type. A case a caller branches on has its own variant
//! carrying the context it needs (a leader hint, the compacted revision).

/// Member ids are raft-rs node ids: non-zero `u64`s.
pub type MemberId = u64;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This member is not the leader. `leader_hint` is the member believed to
    /// lead, if any; clients retry there.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<MemberId> },

    /// A read or watch asked for a revision older than the compacted one.
    #[error(
        "revision {requested} has been compacted; the oldest kept revision is {compact_revision}"
    )]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },

    /// A read asked for a revision the store has not reached yet.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: i64, current: i64 },

    /// The operation did not complete in time. It may still take effect.
    #[error("timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },

    /// A key, value, request or transaction exceeds its bound.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },

    /// The cluster cannot reach a quorum of members.
    #[error("no quorum: {detail}")]
    NoQuorum { detail: String },

    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {id} not found")]
    LeaseNotFound { id: i64 },

    /// The request is malformed; the message names the field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A watch ended without the client asking (too slow, compacted, shut down).
    #[error("watch cancelled: {reason}")]
    WatchCancelled { reason: String },

    /// An I/O error on the member's own disk.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Data read back from disk or the network failed its integrity check.
    #[error("corrupt data: {0}")]
    Corrupt(String),

    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),

    /// The QUIC transport or TLS setup failed.
    #[error("transport: {0}")]
    Transport(String),

    /// The member is shutting down or has stopped.
    #[error("the store member has stopped")]
    Stopped,

    /// A certificate or key could not be issued, kept or read.
    #[error("identity: {0}")]
    Pki(#[from] flotilla_pki::Error),

    /// The caller's certificate does not entitle it to this call; the
    /// message names who and what.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl Error {
    /// Wraps an I/O error with what was being done, so the message names the file.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
