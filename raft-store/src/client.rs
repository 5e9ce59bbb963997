//! A client of the store for processes that are not members: it speaks the
//! client protocol ([`crate::rpc`]) over QUIC with mutual TLS and follows
//! leader hints by itself.
//!
//! Retries are bounded. A call is retried on another member when the
//! connection could not be made, or when the member answered that it is not
//! the leader or has no quorum (following its leader hint). A write whose
//! answer was lost after it was sent is not retried: the caller gets
//! [`Error::Transport`] and must treat the outcome as unknown, as with etcd.
//! As with etcd, `NotLeader` after a leadership change can follow a write
//! that the new leader still commits, so a retried plain put may apply
//! twice; writes that must apply once are conditional transactions.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::RecvStream;

use crate::error::{Error, Result};
use crate::kv::proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse,
};
use crate::rpc::{
    MemberAddRequest, MemberInfo, MemberListRequest, MemberRemoveRequest, Request, Response,
    StatusRequest, StatusResponse, request, response,
};
use crate::transport::{
    CLIENT_FRAME_BYTES_MAX, ClusterCa, Credentials, QuicEndpoint, read_message, write_message,
};

/// Attempts per call, across members. Enough to walk a five-member cluster
/// twice while an election settles, few enough to fail fast when it cannot.
pub const CALL_ATTEMPTS_MAX: u32 = 10;
/// The first pause between attempts; it doubles up to the maximum below.
pub const RETRY_BACKOFF_INITIAL_MS: u64 = 20;
/// The longest pause between attempts: an election takes about a second
/// with default ticks, so waiting longer would only add latency.
pub const RETRY_BACKOFF_MAX_MS: u64 = 400;
/// How long one attempt may take before it is abandoned. Longer than the
/// replica's proposal timeout, so the member's own verdict normally wins.
pub const ATTEMPT_TIMEOUT_MS: u64 = 8_000;

/// A connection to a store cluster. Clones share the connections; calls may
/// run concurrently (each is its own QUIC stream).
#[derive(Clone)]
pub struct Client {
    endpoint: QuicEndpoint,
    /// Known member addresses; the first is tried first. A leader hint moves
    /// the leader to the front.
    addresses: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addresses", &*self.lock_addresses())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with a client certificate issued from the cluster CA kept in
    /// `tls_dir` (as a standalone `flotilla store` keeps it).
    pub async fn connect(addresses: Vec<SocketAddr>, tls_dir: &Path) -> Result<Client> {
        let ca = ClusterCa::load(tls_dir)?;
        let credentials = ca.issue(crate::access::STORE_CLIENT_NAME, &["localhost".to_string()])?;
        Client::with_credentials(
            addresses.iter().map(ToString::to_string).collect(),
            &credentials,
        )
    }

    /// Connects with existing credentials to members at `addresses`
    /// (`host:port`).
    pub fn with_credentials(addresses: Vec<String>, credentials: &Credentials) -> Result<Client> {
        if addresses.is_empty() {
            return Err(Error::InvalidRequest(
                "no store member addresses given".into(),
            ));
        }
        let bind: SocketAddr = if addresses.iter().any(|a| a.starts_with('[')) {
            SocketAddr::from(([0_u16; 8], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        Ok(Client {
            endpoint: QuicEndpoint::client(bind, credentials)?,
            addresses: Arc::new(Mutex::new(addresses)),
        })
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse> {
        self.put_request(PutRequest {
            key,
            value,
            ..Default::default()
        })
        .await
    }

    pub async fn put_request(&self, request: PutRequest) -> Result<PutResponse> {
        match self
            .call(request::Kind::Put(request), Idempotent::No)
            .await?
        {
            response::Kind::Put(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// The current value of one key, read linearizably.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<KeyValue>> {
        let response = self
            .range(RangeRequest {
                key,
                ..Default::default()
            })
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        match self
            .call(request::Kind::Range(request), Idempotent::Yes)
            .await?
        {
            response::Kind::Range(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        match self
            .call(request::Kind::DeleteRange(request), Idempotent::No)
            .await?
        {
            response::Kind::DeleteRange(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse> {
        match self
            .call(request::Kind::Txn(request), Idempotent::No)
            .await?
        {
            response::Kind::Txn(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn compact(&self, revision: i64) -> Result<CompactionResponse> {
        let request = CompactionRequest {
            revision,
            ..Default::default()
        };
        match self
            .call(request::Kind::Compact(request), Idempotent::Yes)
            .await?
        {
            response::Kind::Compact(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lease_grant(&self, request: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        match self
            .call(request::Kind::LeaseGrant(request), Idempotent::No)
            .await?
        {
            response::Kind::LeaseGrant(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        let request = LeaseRevokeRequest { id };
        match self
            .call(request::Kind::LeaseRevoke(request), Idempotent::Yes)
            .await?
        {
            response::Kind::LeaseRevoke(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let request = LeaseKeepAliveRequest { id };
        match self
            .call(request::Kind::LeaseKeepAlive(request), Idempotent::Yes)
            .await?
        {
            response::Kind::LeaseKeepAlive(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        match self
            .call(request::Kind::LeaseTimeToLive(request), Idempotent::Yes)
            .await?
        {
            response::Kind::LeaseTimeToLive(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        match self
            .call(
                request::Kind::LeaseLeases(LeaseLeasesRequest {}),
                Idempotent::Yes,
            )
            .await?
        {
            response::Kind::LeaseLeases(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn member_list(&self) -> Result<Vec<MemberInfo>> {
        match self
            .call(
                request::Kind::MemberList(MemberListRequest {}),
                Idempotent::Yes,
            )
            .await?
        {
            response::Kind::MemberList(response) => Ok(response.members),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds a voting member that will listen at `address`; start it with
    /// `--join` so it waits for the leader's snapshot.
    pub async fn member_add(&self, id: u64, address: String) -> Result<Vec<MemberInfo>> {
        let request = MemberAddRequest {
            member: Some(MemberInfo { id, address }),
        };
        match self
            .call(request::Kind::MemberAdd(request), Idempotent::No)
            .await?
        {
            response::Kind::MemberAdd(response) => Ok(response.members),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn member_remove(&self, id: u64) -> Result<Vec<MemberInfo>> {
        let request = MemberRemoveRequest { id };
        match self
            .call(request::Kind::MemberRemove(request), Idempotent::No)
            .await?
        {
            response::Kind::MemberRemove(response) => Ok(response.members),
            other => Err(unexpected(&other)),
        }
    }

    /// The status of the first member that answers.
    pub async fn status(&self) -> Result<StatusResponse> {
        match self
            .call(request::Kind::Status(StatusRequest {}), Idempotent::Yes)
            .await?
        {
            response::Kind::Status(response) => Ok(response),
            other => Err(unexpected(&other)),
        }
    }

    /// Opens a watch. The first response says `created`; later ones carry
    /// events, progress or the cancellation. Dropping the stream ends it.
    pub async fn watch(&self, request: WatchCreateRequest) -> Result<WatchStream> {
        let address = self.first_address();
        let (mut send, mut recv) = self.endpoint.open_client_stream(&address).await?;
        let call = Request {
            kind: Some(request::Kind::Watch(request)),
        };
        write_message(&mut send, &call, CLIENT_FRAME_BYTES_MAX).await?;
        // The send side stays open: finishing or dropping it tells the
        // member the watch is over.
        let first = read_response(&mut recv).await?;
        match first {
            response::Kind::Watch(created) => Ok(WatchStream {
                _send: send,
                recv,
                first: Some(created),
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, kind: request::Kind, idempotent: Idempotent) -> Result<response::Kind> {
        let request = Request { kind: Some(kind) };
        let mut backoff_ms = RETRY_BACKOFF_INITIAL_MS;
        let mut last_error = Error::NoQuorum {
            detail: "no member answered".into(),
        };
        for _ in 0..CALL_ATTEMPTS_MAX {
            let address = self.first_address();
            let attempt = tokio::time::timeout(
                Duration::from_millis(ATTEMPT_TIMEOUT_MS),
                self.attempt(&address, &request),
            )
            .await
            .unwrap_or(Err(Attempt::AfterSend(Error::Timeout {
                timeout_ms: ATTEMPT_TIMEOUT_MS,
            })));
            let error = match attempt {
                Ok(kind) => return Ok(kind),
                Err(Attempt::BeforeSend(error)) => {
                    self.rotate();
                    error
                }
                Err(Attempt::AfterSend(error)) if idempotent == Idempotent::Yes => {
                    self.rotate();
                    error
                }
                Err(Attempt::AfterSend(error)) => {
                    return Err(Error::Transport(format!(
                        "the answer from {address} was lost, so the outcome is unknown: {error}"
                    )));
                }
                Err(Attempt::Refused {
                    error,
                    leader_address,
                }) => {
                    match leader_address {
                        Some(leader) => self.prefer(leader),
                        None => self.rotate(),
                    }
                    error
                }
                // A read that timed out on the member had no effect, so it
                // may be asked again, of another member if this one is cut
                // off (a leader flap while the read waited for quorum).
                Err(Attempt::Answered(error @ Error::Timeout { .. }))
                    if idempotent == Idempotent::Yes =>
                {
                    self.rotate();
                    error
                }
                Err(Attempt::Answered(error)) => return Err(error),
            };
            tracing::debug!(%address, %error, "store call retried");
            last_error = error;
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MAX_MS);
        }
        Err(last_error)
    }

    async fn attempt(&self, address: &str, request: &Request) -> Result<response::Kind, Attempt> {
        let (mut send, mut recv) = self
            .endpoint
            .open_client_stream(address)
            .await
            .map_err(Attempt::BeforeSend)?;
        write_message(&mut send, request, CLIENT_FRAME_BYTES_MAX)
            .await
            .map_err(Attempt::BeforeSend)?;
        let _ = send.finish();
        let response: Response = read_message(&mut recv, CLIENT_FRAME_BYTES_MAX)
            .await
            .map_err(Attempt::AfterSend)?
            .ok_or_else(|| {
                Attempt::AfterSend(Error::Transport(format!("{address} closed the stream")))
            })?;
        match response.kind {
            Some(response::Kind::Error(reply)) => {
                let leader_address =
                    (!reply.leader_address.is_empty()).then(|| reply.leader_address.clone());
                let error = reply.into_error();
                match error {
                    // Refused before proposing: safe to send elsewhere.
                    Error::NotLeader { .. } | Error::NoQuorum { .. } | Error::Stopped => {
                        Err(Attempt::Refused {
                            error,
                            leader_address,
                        })
                    }
                    error => Err(Attempt::Answered(error)),
                }
            }
            Some(kind) => Ok(kind),
            None => Err(Attempt::Answered(Error::Corrupt("empty response".into()))),
        }
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A plain list: a panic elsewhere cannot leave it inconsistent.
        self.addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn first_address(&self) -> String {
        self.lock_addresses().first().cloned().unwrap_or_default()
    }

    fn rotate(&self) {
        self.lock_addresses().rotate_left(1);
    }

    fn prefer(&self, leader: String) {
        let mut addresses = self.lock_addresses();
        addresses.retain(|address| *address != leader);
        addresses.insert(0, leader);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// How one attempt failed, which decides whether the call may be retried.
enum Attempt {
    /// The request never reached the member.
    BeforeSend(Error),
    /// The request was sent but its answer was lost.
    AfterSend(Error),
    /// The member refused without acting; try `leader_address` if given.
    Refused {
        error: Error,
        leader_address: Option<String>,
    },
    /// The member's definitive answer.
    Answered(Error),
}

/// The responses of one watch, in order.
pub struct WatchStream {
    _send: quinn::SendStream,
    recv: RecvStream,
    first: Option<WatchResponse>,
}

impl WatchStream {
    /// The next response, or `None` once the member ended the watch.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        match read_message::<_, Response>(&mut self.recv, CLIENT_FRAME_BYTES_MAX).await? {
            None => Ok(None),
            Some(Response {
                kind: Some(response::Kind::Watch(batch)),
            }) => Ok(Some(batch)),
            Some(Response {
                kind: Some(response::Kind::Error(reply)),
            }) => Err(reply.into_error()),
            Some(other) => Err(Error::Corrupt(format!("watch answered with {other:?}"))),
        }
    }
}

async fn read_response(recv: &mut RecvStream) -> Result<response::Kind> {
    let response: Response = read_message(recv, CLIENT_FRAME_BYTES_MAX)
        .await?
        .ok_or_else(|| Error::Transport("the member closed the stream".into()))?;
    match response.kind {
        Some(response::Kind::Error(reply)) => Err(reply.into_error()),
        Some(kind) => Ok(kind),
        None => Err(Error::Corrupt("empty response".into())),
    }
}

fn unexpected(kind: &response::Kind) -> Error {
    Error::Corrupt(format!("unexpected response {kind:?}"))
}
