//! The member side of the client protocol ([`crate::rpc`]): a [`Service`]
//! answers calls against this member's replica and state machine.
//!
//! Reads are linearizable by default: the service first confirms through
//! ReadIndex that this member has applied everything committed when the read
//! arrived, then reads locally. Writes are proposed through the replica (a
//! follower forwards them to the leader). Lease keep-alives and TTL queries
//! need the leader's clock, so a follower answers them with a leader hint.

use std::sync::Arc;
use std::time::Instant;

use quinn::{RecvStream, SendStream};
use tracing::Instrument;

use crate::access::ClientAccess;
use crate::error::{Error, MemberId, Result};
use crate::kv::KvStore;
use crate::kv::proto::{
    Command, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
    WatchCreateRequest, command, command_response, decode_response, encode_command,
};
use crate::replica::ReplicaHandle;
use crate::rpc::{
    ErrorReply, MemberInfo, MemberListResponse, Request, Response, StatusResponse, request,
    response,
};
use crate::transport::{
    CLIENT_FRAME_BYTES_MAX, PeerIdentity, PeerNetwork, read_message, write_message,
};

/// What a member can do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// It knows a leader: reads and writes go through.
    Serving,
    /// It knows no leader (an election, or no quorum within reach): reads
    /// and writes wait and may time out.
    NoLeader,
    /// Its replica has stopped: nothing it serves will change again.
    Stopped,
}

/// Answers client-protocol calls for one member.
pub struct Service {
    /// Who may make which calls over the client protocol.
    access: ClientAccess,
    replica: ReplicaHandle,
    kv: Arc<KvStore>,
    network: Arc<PeerNetwork>,
    /// Where clients reach this member (its own entry in member lists).
    address: String,
}

impl Service {
    pub fn new(
        replica: ReplicaHandle,
        kv: Arc<KvStore>,
        network: Arc<PeerNetwork>,
        address: String,
    ) -> Self {
        Service {
            access: ClientAccess::default(),
            replica,
            kv,
            network,
            address,
        }
    }

    /// Whether this member can serve now: the API's `/readyz` and
    /// `/livez` say what it says.
    pub fn health(&self) -> Health {
        if self.replica.is_stopped() {
            Health::Stopped
        } else if self.replica.leadership().borrow().leader_id.is_none() {
            Health::NoLeader
        } else {
            Health::Serving
        }
    }

    /// This service with `access` deciding who may call it.
    pub fn with_access(mut self, access: ClientAccess) -> Self {
        self.access = access;
        self
    }

    /// Serves one client-protocol stream: one request, then one response or,
    /// for a watch, a response per batch until the client goes away.
    pub async fn serve_stream(
        self: Arc<Self>,
        peer: PeerIdentity,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let request: Request = match read_message(&mut recv, CLIENT_FRAME_BYTES_MAX).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                let reply = self.error_response(&error);
                let _ = write_message(&mut send, &reply, CLIENT_FRAME_BYTES_MAX).await;
                let _ = send.finish();
                return;
            }
        };
        if let Err(error) = self.access.check(&peer, &request) {
            tracing::debug!(peer = %peer.name, kind = request_kind(&request), %error, "refused");
            let reply = self.error_response(&error);
            let _ = write_message(&mut send, &reply, CLIENT_FRAME_BYTES_MAX).await;
            let _ = send.finish();
            return;
        }
        let span =
            tracing::debug_span!("store.call", peer = %peer.name, kind = request_kind(&request));
        async move {
            if let Some(request::Kind::Watch(watch)) = request.kind {
                self.serve_watch(watch, &mut send, &mut recv).await;
            } else {
                let reply = self.call(request).await;
                if let Err(error) = write_message(&mut send, &reply, CLIENT_FRAME_BYTES_MAX).await {
                    tracing::debug!(%error, "client went away before its answer");
                }
            }
            let _ = send.finish();
        }
        .instrument(span)
        .await
    }

    /// Answers one unary call. Errors become [`ErrorReply`] responses.
    pub async fn call(&self, request: Request) -> Response {
        let outcome = match request.kind {
            None => Err(Error::InvalidRequest("empty request".into())),
            Some(kind) => self.dispatch(kind).await,
        };
        match outcome {
            Ok(kind) => Response { kind: Some(kind) },
            Err(error) => self.error_response(&error),
        }
    }

    async fn dispatch(&self, kind: request::Kind) -> Result<response::Kind> {
        use request::Kind as Rq;
        use response::Kind as Rs;
        Ok(match kind {
            Rq::Range(range) => Rs::Range(self.range(range).await?),
            Rq::Put(put) => Rs::Put(self.put(put).await?),
            Rq::DeleteRange(delete) => Rs::DeleteRange(self.delete_range(delete).await?),
            Rq::Txn(txn) => Rs::Txn(self.txn(txn).await?),
            Rq::Compact(compact) => Rs::Compact(self.compact(compact).await?),
            Rq::LeaseGrant(grant) => Rs::LeaseGrant(self.lease_grant(grant).await?),
            Rq::LeaseRevoke(revoke) => Rs::LeaseRevoke(self.lease_revoke(revoke).await?),
            Rq::LeaseKeepAlive(keep) => Rs::LeaseKeepAlive(self.lease_keep_alive(keep)?),
            Rq::LeaseTimeToLive(ttl) => Rs::LeaseTimeToLive(self.lease_time_to_live(ttl)?),
            Rq::LeaseLeases(_) => {
                self.replica.read_index().await?;
                Rs::LeaseLeases(self.kv.lease_leases())
            }
            Rq::Watch(_) => {
                return Err(Error::InvalidRequest(
                    "a watch needs its own stream (Client::watch)".into(),
                ));
            }
            Rq::MemberAdd(add) => {
                let member = add
                    .member
                    .ok_or_else(|| Error::InvalidRequest("member_add.member is missing".into()))?;
                if member.id == 0 {
                    return Err(Error::InvalidRequest("member id 0 is reserved".into()));
                }
                self.replica.add_member(member.id, member.address).await?;
                Rs::MemberAdd(crate::rpc::MemberAddResponse {
                    members: self.members().await?,
                })
            }
            Rq::MemberRemove(remove) => {
                self.replica.remove_member(remove.id).await?;
                Rs::MemberRemove(crate::rpc::MemberRemoveResponse {
                    members: self.members().await?,
                })
            }
            Rq::MemberList(_) => Rs::MemberList(MemberListResponse {
                members: self.members().await?,
            }),
            Rq::Status(_) => Rs::Status(self.status().await?),
        })
    }

    /// A range; linearizable unless `serializable` asks for a local read.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        if !request.serializable {
            self.replica.read_index().await?;
        }
        self.kv.range(&request)
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse> {
        match self.propose(command::Request::Put(request)).await? {
            command_response::Response::Put(response) => Ok(response),
            other => Err(unexpected("put", &other)),
        }
    }

    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        match self.propose(command::Request::DeleteRange(request)).await? {
            command_response::Response::DeleteRange(response) => Ok(response),
            other => Err(unexpected("delete_range", &other)),
        }
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse> {
        match self.propose(command::Request::Txn(request)).await? {
            command_response::Response::Txn(response) => Ok(response),
            other => Err(unexpected("txn", &other)),
        }
    }

    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse> {
        match self.propose(command::Request::Compaction(request)).await? {
            command_response::Response::Compaction(response) => Ok(response),
            other => Err(unexpected("compaction", &other)),
        }
    }

    pub async fn lease_grant(&self, request: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        match self.propose(command::Request::LeaseGrant(request)).await? {
            command_response::Response::LeaseGrant(response) => Ok(response),
            other => Err(unexpected("lease_grant", &other)),
        }
    }

    pub async fn lease_revoke(&self, request: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        match self.propose(command::Request::LeaseRevoke(request)).await? {
            command_response::Response::LeaseRevoke(response) => Ok(response),
            other => Err(unexpected("lease_revoke", &other)),
        }
    }

    /// Renews a lease. Only the leader's clock decides expiry, so only the
    /// leader renews; a follower answers with a leader hint.
    pub fn lease_keep_alive(
        &self,
        request: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse> {
        self.require_leader()?;
        self.kv.lease_keep_alive(request.id, Instant::now())
    }

    /// A lease's remaining time, from the leader's clock.
    pub fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.require_leader()?;
        Ok(self.kv.lease_time_to_live(&request, Instant::now()))
    }

    fn require_leader(&self) -> Result<()> {
        let leadership = *self.replica.leadership().borrow();
        if leadership.leader_id == Some(self.replica.id()) {
            Ok(())
        } else {
            Err(Error::NotLeader {
                leader_hint: leadership.leader_id,
            })
        }
    }

    async fn propose(&self, request: command::Request) -> Result<command_response::Response> {
        let command = Command {
            request: Some(request),
        };
        crate::kv::validate(&command)?;
        let response = self.replica.propose(encode_command(&command)).await?;
        decode_response(&response)
    }

    async fn serve_watch(
        &self,
        request: WatchCreateRequest,
        send: &mut SendStream,
        recv: &mut RecvStream,
    ) {
        let mut watcher = match self.kv.watch(&request) {
            Ok(watcher) => watcher,
            Err(error) => {
                let _ =
                    write_message(send, &self.error_response(&error), CLIENT_FRAME_BYTES_MAX).await;
                return;
            }
        };
        // The client ends a watch by finishing or resetting its side; any
        // byte it sends after the request is a protocol error and ends it too.
        let mut closed = Box::pin(async move {
            let mut probe = [0_u8; 1];
            let _ = recv.read(&mut probe).await;
        });
        loop {
            tokio::select! {
                _ = &mut closed => return,
                next = watcher.next() => {
                    let Some(batch) = next else { return };
                    let canceled = batch.canceled;
                    let reply = Response { kind: Some(response::Kind::Watch(batch)) };
                    if write_message(send, &reply, CLIENT_FRAME_BYTES_MAX).await.is_err() || canceled {
                        return;
                    }
                }
            }
        }
    }

    /// Voters with their addresses; this member's address is its own.
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        let status = self.replica.status().await?;
        let known: std::collections::HashMap<MemberId, String> =
            self.network.peers().into_iter().collect();
        Ok(status
            .voters
            .iter()
            .map(|&id| MemberInfo {
                id,
                address: if id == status.id {
                    self.address.clone()
                } else {
                    known.get(&id).cloned().unwrap_or_default()
                },
            })
            .collect())
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        let status = self.replica.status().await?;
        Ok(StatusResponse {
            id: status.id,
            leader: status.leader_id.unwrap_or(0),
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            revision: self.kv.current_revision(),
            compact_revision: self.kv.compact_revision(),
        })
    }

    fn error_response(&self, error: &Error) -> Response {
        let peers = self.network.peers();
        let own_id = self.replica.id();
        let own_address = self.address.clone();
        let reply = ErrorReply::from_error(error, |id| {
            if id == own_id {
                return Some(own_address.clone());
            }
            peers
                .iter()
                .find(|(peer, _)| *peer == id)
                .map(|(_, address)| address.clone())
        });
        Response {
            kind: Some(response::Kind::Error(reply)),
        }
    }
}

fn unexpected(call: &str, response: &command_response::Response) -> Error {
    Error::Corrupt(format!("{call} was answered with {response:?}"))
}

fn request_kind(request: &Request) -> &'static str {
    use request::Kind as Rq;
    match &request.kind {
        None => "empty",
        Some(Rq::Range(_)) => "range",
        Some(Rq::Put(_)) => "put",
        Some(Rq::DeleteRange(_)) => "delete_range",
        Some(Rq::Txn(_)) => "txn",
        Some(Rq::Compact(_)) => "compact",
        Some(Rq::LeaseGrant(_)) => "lease_grant",
        Some(Rq::LeaseRevoke(_)) => "lease_revoke",
        Some(Rq::LeaseKeepAlive(_)) => "lease_keep_alive",
        Some(Rq::LeaseTimeToLive(_)) => "lease_time_to_live",
        Some(Rq::LeaseLeases(_)) => "lease_leases",
        Some(Rq::Watch(_)) => "watch",
        Some(Rq::MemberAdd(_)) => "member_add",
        Some(Rq::MemberRemove(_)) => "member_remove",
        Some(Rq::MemberList(_)) => "member_list",
        Some(Rq::Status(_)) => "status",
    }
}
