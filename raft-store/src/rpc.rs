//! The client protocol: how a process that is not a member (the API server,
//! a benchmark, `flotilla` commands) uses the store.
//!
//! One QUIC bidirectional stream carries one call. The client writes one
//! [`Request`] frame; the member answers with one [`Response`] frame, or, for
//! a watch, with a [`Response`] frame per watch batch until either side
//! closes the stream. Errors travel as [`ErrorReply`] so the client gets the
//! same typed [`Error`] the member had, leader hint included.

use crate::error::{Error, MemberId};
use crate::kv::proto::{
    CommandError, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse,
};

/// One call from a client.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(
        oneof = "request::Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15"
    )]
    pub kind: Option<request::Kind>,
}

pub mod request {
    use super::*;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Range(RangeRequest),
        #[prost(message, tag = "2")]
        Put(PutRequest),
        #[prost(message, tag = "3")]
        DeleteRange(DeleteRangeRequest),
        #[prost(message, tag = "4")]
        Txn(TxnRequest),
        #[prost(message, tag = "5")]
        Compact(CompactionRequest),
        #[prost(message, tag = "6")]
        LeaseGrant(LeaseGrantRequest),
        #[prost(message, tag = "7")]
        LeaseRevoke(LeaseRevokeRequest),
        #[prost(message, tag = "8")]
        LeaseKeepAlive(LeaseKeepAliveRequest),
        #[prost(message, tag = "9")]
        LeaseTimeToLive(LeaseTimeToLiveRequest),
        #[prost(message, tag = "10")]
        LeaseLeases(LeaseLeasesRequest),
        #[prost(message, tag = "11")]
        Watch(WatchCreateRequest),
        #[prost(message, tag = "12")]
        MemberAdd(MemberAddRequest),
        #[prost(message, tag = "13")]
        MemberRemove(MemberRemoveRequest),
        #[prost(message, tag = "14")]
        MemberList(MemberListRequest),
        #[prost(message, tag = "15")]
        Status(StatusRequest),
    }
}

/// The member's answer to one call (or one batch of a watch).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(
        oneof = "response::Kind",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16"
    )]
    pub kind: Option<response::Kind>,
}

pub mod response {
    use super::*;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Range(RangeResponse),
        #[prost(message, tag = "2")]
        Put(PutResponse),
        #[prost(message, tag = "3")]
        DeleteRange(DeleteRangeResponse),
        #[prost(message, tag = "4")]
        Txn(TxnResponse),
        #[prost(message, tag = "5")]
        Compact(CompactionResponse),
        #[prost(message, tag = "6")]
        LeaseGrant(LeaseGrantResponse),
        #[prost(message, tag = "7")]
        LeaseRevoke(LeaseRevokeResponse),
        #[prost(message, tag = "8")]
        LeaseKeepAlive(LeaseKeepAliveResponse),
        #[prost(message, tag = "9")]
        LeaseTimeToLive(LeaseTimeToLiveResponse),
        #[prost(message, tag = "10")]
        LeaseLeases(LeaseLeasesResponse),
        #[prost(message, tag = "11")]
        Watch(WatchResponse),
        #[prost(message, tag = "12")]
        MemberAdd(MemberAddResponse),
        #[prost(message, tag = "13")]
        MemberRemove(MemberRemoveResponse),
        #[prost(message, tag = "14")]
        MemberList(MemberListResponse),
        #[prost(message, tag = "15")]
        Status(StatusResponse),
        #[prost(message, tag = "16")]
        Error(ErrorReply),
    }
}

/// A member of the cluster as clients see it: one address serves both raft
/// and the client protocol (one QUIC endpoint).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAddRequest {
    #[prost(message, optional, tag = "1")]
    pub member: Option<MemberInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAddResponse {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberRemoveRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberRemoveResponse {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberListRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberListResponse {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// What one member knows of itself and the cluster.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// 0 when no leader is known.
    #[prost(uint64, tag = "2")]
    pub leader: u64,
    #[prost(uint64, tag = "3")]
    pub term: u64,
    #[prost(uint64, tag = "4")]
    pub commit_index: u64,
    #[prost(uint64, tag = "5")]
    pub applied_index: u64,
    #[prost(int64, tag = "6")]
    pub revision: i64,
    #[prost(int64, tag = "7")]
    pub compact_revision: i64,
}

/// Error codes on the wire for what happens around a command (leadership,
/// time, shutdown). What applying or validating a command refused travels
/// as the state machine's own [`CommandError`], under `Command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    Internal = 0,
    NotLeader = 1,
    Command = 2,
    Timeout = 3,
    NoQuorum = 4,
    WatchCancelled = 5,
    Stopped = 6,
    PermissionDenied = 7,
}

/// An [`Error`] as it crosses the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorReply {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    /// NotLeader: the member believed to lead (0 = unknown) and its address.
    #[prost(uint64, tag = "3")]
    pub leader_id: u64,
    #[prost(string, tag = "4")]
    pub leader_address: String,
    /// Timeout: how long the member waited.
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
    /// Command: the state machine's error, with its own fields.
    #[prost(message, optional, tag = "6")]
    pub command: Option<CommandError>,
}

impl ErrorReply {
    /// Encodes `error`; `leader_address` resolves a leader hint to where the
    /// client should go next.
    pub fn from_error(error: &Error, leader_address: impl Fn(MemberId) -> Option<String>) -> Self {
        let mut reply = ErrorReply {
            message: error.to_string(),
            ..ErrorReply::default()
        };
        let code = match error {
            Error::NotLeader { leader_hint } => {
                if let Some(leader) = leader_hint {
                    reply.leader_id = *leader;
                    reply.leader_address = leader_address(*leader).unwrap_or_default();
                }
                ErrorCode::NotLeader
            }
            Error::InvalidRequest(_)
            | Error::TooLarge { .. }
            | Error::Compacted { .. }
            | Error::FutureRevision { .. }
            | Error::LeaseNotFound { .. } => {
                reply.command = Some(CommandError::from_error(error));
                ErrorCode::Command
            }
            Error::Timeout { timeout_ms } => {
                reply.timeout_ms = *timeout_ms;
                ErrorCode::Timeout
            }
            Error::NoQuorum { .. } => ErrorCode::NoQuorum,
            Error::WatchCancelled { .. } => ErrorCode::WatchCancelled,
            Error::Stopped => ErrorCode::Stopped,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            _ => ErrorCode::Internal,
        };
        reply.code = code as i32;
        reply
    }

    /// Decodes the reply into the error the member had. Free-text variants
    /// keep the member's message.
    pub fn into_error(self) -> Error {
        let code = ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Internal);
        match (code, self.command) {
            (ErrorCode::NotLeader, _) => Error::NotLeader {
                leader_hint: (self.leader_id != 0).then_some(self.leader_id),
            },
            (ErrorCode::Command, Some(command)) => command.to_error(),
            (ErrorCode::Timeout, _) => Error::Timeout {
                timeout_ms: self.timeout_ms,
            },
            (ErrorCode::NoQuorum, _) => Error::NoQuorum {
                detail: self.message,
            },
            (ErrorCode::WatchCancelled, _) => Error::WatchCancelled {
                reason: self.message,
            },
            (ErrorCode::Stopped, _) => Error::Stopped,
            (ErrorCode::PermissionDenied, _) => Error::PermissionDenied(
                self.message
                    .strip_prefix("permission denied: ")
                    .unwrap_or(&self.message)
                    .to_string(),
            ),
            (ErrorCode::Command | ErrorCode::Internal, _) => {
                Error::Transport(format!("member error: {}", self.message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        let errors = [
            Error::NotLeader {
                leader_hint: Some(3),
            },
            Error::Compacted {
                requested: 4,
                compact_revision: 9,
            },
            Error::TooLarge {
                what: "value",
                size: 2_000_000,
                limit: 1_572_864,
            },
            Error::LeaseNotFound { id: 7 },
            Error::Timeout { timeout_ms: 5_000 },
            Error::InvalidRequest("txn ops name one key twice".into()),
            Error::PermissionDenied("system:node:n1 may not use the store".into()),
        ];
        for error in errors {
            let reply = ErrorReply::from_error(&error, |id| Some(format!("member-{id}:7000")));
            let decoded = reply.clone().into_error();
            assert_eq!(decoded.to_string(), error.to_string(), "{reply:?}");
        }
        let reply = ErrorReply::from_error(
            &Error::NotLeader {
                leader_hint: Some(3),
            },
            |_| Some("127.0.0.1:7003".into()),
        );
        assert_eq!(reply.leader_address, "127.0.0.1:7003");
    }
}
