//! The store's wire messages: hand-written prost structs that mirror etcd v3's
//! `kv.proto` and `rpc.proto` (same field names, numbers and meanings, so an
//! etcd user reads them without a dictionary), plus the replicated
//! [`Command`] / [`CommandResponse`] envelope that travels through raft.
//!
//! This module knows encodings only: it does not know how a command is
//! applied, nor who proposes it. No protoc and no build script: the structs
//! are derived directly, which keeps the build hermetic.
//!
//! Range semantics are etcd's: an empty `range_end` means the single key
//! `key`; `range_end == [0]` means every key `>= key`; otherwise the range is
//! `[key, range_end)`. [`prefix_end`] turns a prefix into its `range_end`.

use prost::Message;

use crate::error::{Error, Result};

/// One version of one key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The revision of the last creation of this key.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// The revision of the last modification of this key.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Number of puts since the key was (re)created; a delete resets it to 0.
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// What an [`Event`] did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    Put = 0,
    Delete = 1,
}

/// One change to one key, as etcd's `mvccpb.Event`. A delete's `kv` carries
/// only the key and the deleting revision in `mod_revision`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Event {
    #[prost(enumeration = "EventType", tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    /// The key's value before this event, when the watch asked for it.
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

/// Sent with every response. The state machine fills `revision`; the member
/// fills the ids and term it knows.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// The store's revision when the response was produced.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// Order of a sorted range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortOrder {
    /// Key order, the index's natural order.
    None = 0,
    Ascend = 1,
    Descend = 2,
}

/// Field a sorted range compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortTarget {
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; 0 means no limit.
    #[prost(int64, tag = "3")]
    pub limit: i64,
    /// Read at this past revision; 0 means the current revision.
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(enumeration = "SortOrder", tag = "5")]
    pub sort_order: i32,
    #[prost(enumeration = "SortTarget", tag = "6")]
    pub sort_target: i32,
    /// Read from this member's state without ReadIndex (may be stale).
    #[prost(bool, tag = "7")]
    pub serializable: bool,
    #[prost(bool, tag = "8")]
    pub keys_only: bool,
    #[prost(bool, tag = "9")]
    pub count_only: bool,
    #[prost(int64, tag = "10")]
    pub min_mod_revision: i64,
    #[prost(int64, tag = "11")]
    pub max_mod_revision: i64,
    #[prost(int64, tag = "12")]
    pub min_create_revision: i64,
    #[prost(int64, tag = "13")]
    pub max_create_revision: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// How many keys matched, regardless of `limit`.
    #[prost(int64, tag = "4")]
    pub count: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    /// Keep the key's current value (the key must exist).
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    /// Keep the key's current lease (the key must exist).
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, optional, tag = "2")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub prev_kv: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DeleteRangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub deleted: i64,
    #[prost(message, repeated, tag = "3")]
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a transaction branch.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "request_op::Request", tags = "1, 2, 3, 4")]
    pub request: Option<request_op::Request>,
}

pub mod request_op {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        RequestRange(super::RangeRequest),
        #[prost(message, tag = "2")]
        RequestPut(super::PutRequest),
        #[prost(message, tag = "3")]
        RequestDeleteRange(super::DeleteRangeRequest),
        #[prost(message, tag = "4")]
        RequestTxn(super::TxnRequest),
    }
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResponseOp {
    #[prost(oneof = "response_op::Response", tags = "1, 2, 3, 4")]
    pub response: Option<response_op::Response>,
}

pub mod response_op {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "1")]
        ResponseRange(super::RangeResponse),
        #[prost(message, tag = "2")]
        ResponsePut(super::PutResponse),
        #[prost(message, tag = "3")]
        ResponseDeleteRange(super::DeleteRangeResponse),
        #[prost(message, tag = "4")]
        ResponseTxn(super::TxnResponse),
    }
}

/// How a [`Compare`] relates the key's field to the given value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareResult {
    Equal = 0,
    Greater = 1,
    Less = 2,
    NotEqual = 3,
}

/// Which field of the key a [`Compare`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CompareTarget {
    Version = 0,
    Create = 1,
    Mod = 2,
    Value = 3,
    Lease = 4,
}

/// A transaction guard, as etcd's `Compare`. With a `range_end` it must hold
/// for every key in the range. A missing key has version, create and mod
/// revision and lease 0, and no value (a value compare against it fails).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Compare {
    #[prost(enumeration = "CompareResult", tag = "1")]
    pub result: i32,
    #[prost(enumeration = "CompareTarget", tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(oneof = "compare::TargetUnion", tags = "4, 5, 6, 7, 8")]
    pub target_union: Option<compare::TargetUnion>,
    #[prost(bytes = "vec", tag = "64")]
    pub range_end: Vec<u8>,
}

pub mod compare {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum TargetUnion {
        #[prost(int64, tag = "4")]
        Version(i64),
        #[prost(int64, tag = "5")]
        CreateRevision(i64),
        #[prost(int64, tag = "6")]
        ModRevision(i64),
        #[prost(bytes = "vec", tag = "7")]
        Value(Vec<u8>),
        #[prost(int64, tag = "8")]
        Lease(i64),
    }
}

/// If every compare holds, run `success`, else `failure`; all writes of the
/// chosen branch share one revision.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

/// Forget history older than `revision` (the newest version of each key at
/// or below it is kept).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CompactionRequest {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// etcd waits for the backend; our index is in memory, so it is always
    /// physical. Kept for wire compatibility.
    #[prost(bool, tag = "2")]
    pub physical: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CompactionResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseGrantRequest {
    /// Requested time to live in seconds.
    #[prost(int64, tag = "1")]
    pub ttl_secs: i64,
    /// Requested id; 0 lets the store assign one.
    #[prost(int64, tag = "2")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseGrantResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// Granted time to live in seconds (raised to the minimum if needed).
    #[prost(int64, tag = "3")]
    pub ttl_secs: i64,
    #[prost(string, tag = "4")]
    pub error: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseRevokeRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseRevokeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// Keep-alives are not replicated: the leader's lessor answers them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseKeepAliveRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseKeepAliveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// The renewed time to live in seconds; 0 or less if the lease is gone.
    #[prost(int64, tag = "3")]
    pub ttl_secs: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseTimeToLiveRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Also list the keys attached to the lease.
    #[prost(bool, tag = "2")]
    pub keys: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseTimeToLiveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// Remaining seconds; -1 if the lease does not exist.
    #[prost(int64, tag = "3")]
    pub ttl_secs: i64,
    #[prost(int64, tag = "4")]
    pub granted_ttl_secs: i64,
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseLeasesRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseStatus {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseLeasesResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub leases: Vec<LeaseStatus>,
}

/// Which events a watch does not want.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FilterType {
    NoPut = 0,
    NoDelete = 1,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "watch_request::RequestUnion", tags = "1, 2, 3")]
    pub request_union: Option<watch_request::RequestUnion>,
}

pub mod watch_request {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum RequestUnion {
        #[prost(message, tag = "1")]
        CreateRequest(super::WatchCreateRequest),
        #[prost(message, tag = "2")]
        CancelRequest(super::WatchCancelRequest),
        #[prost(message, tag = "3")]
        ProgressRequest(super::WatchProgressRequest),
    }
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 means "changes after now".
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    /// Receive periodic progress notifications while idle.
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    #[prost(enumeration = "FilterType", repeated, tag = "5")]
    pub filters: Vec<i32>,
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    /// The id to report in responses; 0 lets the store assign one.
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
    /// Accepted for compatibility; a revision is never split, so unused.
    #[prost(bool, tag = "8")]
    pub fragment: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WatchCancelRequest {
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WatchProgressRequest {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    /// Set when the watch was cancelled because its start was compacted:
    /// the oldest revision still available is `compact_revision + 1`.
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// Lease time-to-live checkpoint (etcd's `LeaseCheckpoint`). Accepted by
/// apply for wire compatibility; our lessor extends leases to a full TTL on
/// leader change, so nothing proposes these yet.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub remaining_ttl_secs: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseCheckpointRequest {
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseCheckpoint>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaseCheckpointResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// The one replicated command: what a raft entry's data decodes to.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Command {
    #[prost(oneof = "command::Request", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub request: Option<command::Request>,
}

pub mod command {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        Put(super::PutRequest),
        #[prost(message, tag = "2")]
        DeleteRange(super::DeleteRangeRequest),
        /// Also the way to run a read-only transaction through the log: one
        /// with only ranges does not bump the revision.
        #[prost(message, tag = "3")]
        Txn(super::TxnRequest),
        #[prost(message, tag = "4")]
        Compaction(super::CompactionRequest),
        #[prost(message, tag = "5")]
        LeaseGrant(super::LeaseGrantRequest),
        #[prost(message, tag = "6")]
        LeaseRevoke(super::LeaseRevokeRequest),
        #[prost(message, tag = "7")]
        LeaseCheckpoint(super::LeaseCheckpointRequest),
    }
}

/// What applying a [`Command`] produced: the matching response, or an error.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CommandResponse {
    #[prost(oneof = "command_response::Response", tags = "1, 2, 3, 4, 5, 6, 7, 15")]
    pub response: Option<command_response::Response>,
}

pub mod command_response {
    #[derive(Clone, PartialEq, Eq, prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "1")]
        Put(super::PutResponse),
        #[prost(message, tag = "2")]
        DeleteRange(super::DeleteRangeResponse),
        #[prost(message, tag = "3")]
        Txn(super::TxnResponse),
        #[prost(message, tag = "4")]
        Compaction(super::CompactionResponse),
        #[prost(message, tag = "5")]
        LeaseGrant(super::LeaseGrantResponse),
        #[prost(message, tag = "6")]
        LeaseRevoke(super::LeaseRevokeResponse),
        #[prost(message, tag = "7")]
        LeaseCheckpoint(super::LeaseCheckpointResponse),
        #[prost(message, tag = "15")]
        Error(super::CommandError),
    }
}

/// Which [`Error`] variant a [`CommandError`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    InvalidRequest = 0,
    TooLarge = 1,
    Compacted = 2,
    FutureRevision = 3,
    LeaseNotFound = 4,
    Corrupt = 5,
}

/// A command that could not be applied. It changed nothing: the revision
/// did not move. The fields that matter depend on `code`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CommandError {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    /// `Compacted` / `FutureRevision`: the revision asked for.
    #[prost(int64, tag = "3")]
    pub requested: i64,
    /// `Compacted`: the store's compacted revision.
    #[prost(int64, tag = "4")]
    pub compact_revision: i64,
    /// `FutureRevision`: the store's current revision.
    #[prost(int64, tag = "5")]
    pub current_revision: i64,
    /// `LeaseNotFound`: the lease.
    #[prost(int64, tag = "6")]
    pub lease_id: i64,
    /// `TooLarge`: what was too large, its size and the limit.
    #[prost(string, tag = "7")]
    pub what: String,
    #[prost(uint64, tag = "8")]
    pub size: u64,
    #[prost(uint64, tag = "9")]
    pub limit: u64,
}

/// The names `TooLarge::what` may carry; decoding maps a name back to one of
/// these because the error variant holds a `&'static str`.
const TOO_LARGE_WHATS: &[&str] = &[
    "key",
    "value",
    "request",
    "transaction ops",
    "transaction depth",
    "watchers",
];

impl CommandError {
    /// Encodes a store error for the proposer. Errors apply cannot produce
    /// (I/O, transport) become `Corrupt` with their message.
    pub fn from_error(error: &Error) -> Self {
        // Variants that wrap a message keep it bare, so decoding does not
        // stack the Display prefix a second time.
        let message = match error {
            Error::InvalidRequest(message) | Error::Corrupt(message) => message.clone(),
            other => other.to_string(),
        };
        let mut out = CommandError {
            message,
            ..Default::default()
        };
        let code = match error {
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::TooLarge { what, size, limit } => {
                out.what = (*what).to_string();
                out.size = *size as u64;
                out.limit = *limit as u64;
                ErrorCode::TooLarge
            }
            Error::Compacted {
                requested,
                compact_revision,
            } => {
                out.requested = *requested;
                out.compact_revision = *compact_revision;
                ErrorCode::Compacted
            }
            Error::FutureRevision { requested, current } => {
                out.requested = *requested;
                out.current_revision = *current;
                ErrorCode::FutureRevision
            }
            Error::LeaseNotFound { id } => {
                out.lease_id = *id;
                ErrorCode::LeaseNotFound
            }
            _ => ErrorCode::Corrupt,
        };
        out.code = code as i32;
        out
    }

    /// The store error this response stands for.
    pub fn to_error(&self) -> Error {
        match ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Corrupt) {
            ErrorCode::InvalidRequest => Error::InvalidRequest(self.message.clone()),
            ErrorCode::TooLarge => Error::TooLarge {
                what: TOO_LARGE_WHATS
                    .iter()
                    .find(|name| **name == self.what)
                    .copied()
                    .unwrap_or("request"),
                size: self.size as usize,
                limit: self.limit as usize,
            },
            ErrorCode::Compacted => Error::Compacted {
                requested: self.requested,
                compact_revision: self.compact_revision,
            },
            ErrorCode::FutureRevision => Error::FutureRevision {
                requested: self.requested,
                current: self.current_revision,
            },
            ErrorCode::LeaseNotFound => Error::LeaseNotFound { id: self.lease_id },
            ErrorCode::Corrupt => Error::Corrupt(self.message.clone()),
        }
    }
}

/// Encodes a command for proposal.
pub fn encode_command(command: &Command) -> Vec<u8> {
    command.encode_to_vec()
}

/// Decodes a command from a raft entry.
pub fn decode_command(bytes: &[u8]) -> Result<Command> {
    Command::decode(bytes).map_err(|error| Error::Corrupt(format!("command: {error}")))
}

/// Encodes what apply returns to the proposer.
pub fn encode_response(response: &CommandResponse) -> Vec<u8> {
    response.encode_to_vec()
}

/// Decodes apply's answer; an error response becomes the store error it
/// carries, so the proposer's caller sees `Error::Compacted` etc. directly.
pub fn decode_response(bytes: &[u8]) -> Result<command_response::Response> {
    let response = CommandResponse::decode(bytes)
        .map_err(|error| Error::Corrupt(format!("command response: {error}")))?;
    match response.response {
        Some(command_response::Response::Error(error)) => Err(error.to_error()),
        Some(response) => Ok(response),
        None => Err(Error::Corrupt("empty command response".into())),
    }
}

/// The `range_end` that selects every key starting with `prefix`: the prefix
/// with its last byte below 0xff incremented and the rest dropped. A prefix
/// of only 0xff bytes (or an empty one) has no upper bound, which etcd spells
/// `[0]` ("all keys from `key` on").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_matches_etcd() {
        let check = |prefix: &[u8], expected: &[u8]| assert_eq!(prefix_end(prefix), expected);
        check(b"/registry/pods/", b"/registry/pods0");
        check(b"a", b"b");
        check(&[b'a', 0xff], b"b");
        check(&[0xff, 0xff], &[0]);
        check(b"", &[0]);
    }

    #[test]
    fn command_round_trips() {
        let command = Command {
            request: Some(command::Request::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: b"k".to_vec(),
                    target_union: Some(compare::TargetUnion::ModRevision(7)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b"k".to_vec(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b"k".to_vec(),
                        ..Default::default()
                    })),
                }],
            })),
        };
        let decoded = decode_command(&encode_command(&command)).expect("decodes");
        assert_eq!(decoded, command);
        assert!(decode_command(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn errors_round_trip_through_responses() {
        let errors = [
            Error::InvalidRequest("key is empty".into()),
            Error::TooLarge {
                what: "value",
                size: 10,
                limit: 5,
            },
            Error::Compacted {
                requested: 3,
                compact_revision: 9,
            },
            Error::FutureRevision {
                requested: 30,
                current: 9,
            },
            Error::LeaseNotFound { id: 42 },
            Error::Corrupt("bad".into()),
        ];
        for error in errors {
            let response = CommandResponse {
                response: Some(command_response::Response::Error(CommandError::from_error(
                    &error,
                ))),
            };
            let decoded = decode_response(&encode_response(&response)).expect_err("is an error");
            assert_eq!(decoded.to_string(), error.to_string());
        }
    }
}
