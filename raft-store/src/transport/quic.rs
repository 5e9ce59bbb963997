//! The QUIC endpoint of one member or client: one UDP port that both accepts
//! and opens connections, with mutual TLS from the cluster CA.
//!
//! Every stream starts with one kind byte. A unidirectional stream of kind
//! [`STREAM_KIND_RAFT`] carries framed [`RaftEnvelope`]s from a peer member;
//! only a member's certificate ([`super::tls::member_name`]) may open one,
//! and each message must come from that member. They are decoded and handed
//! to the bounded inbound raft channel (dropped
//! and counted when it is full: raft retransmits). A bidirectional stream of
//! kind [`STREAM_KIND_CLIENT`] is a client-protocol exchange and goes to the
//! registered [`ClientHandler`].
//!
//! This module knows nothing of raft's state or of the client protocol's
//! messages: it moves raft messages as opaque values and client streams as
//! streams.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use protobuf::Message as _;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{RecvStream, SendStream, VarInt};
use raft::eraftpb::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::frame::{RAFT_FRAME_BYTES_MAX, read_message};
use super::tls::{ALPN_PROTOCOL, Credentials, PeerIdentity};
use crate::error::MemberId;
use crate::{Error, Result};

/// A connection with no traffic for this long is closed. Keep-alives (below)
/// stop that on a healthy link; a peer that vanished without a close is
/// given up after this, which bounds how long its messages are written into
/// the void before the sender reconnects.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;

/// Keep-alive ping interval: well under [`IDLE_TIMEOUT_MS`] so one lost ping
/// does not close a healthy idle connection.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 2_000;

/// Connection attempts that have not completed the handshake by then fail,
/// so a sender cycles through its backoff instead of hanging on a dead
/// address.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Concurrent bidirectional (client-protocol) streams a peer may open on one
/// connection. Each in-flight request or watch holds one; 1024 lets a client
/// pipeline generously while bounding what one connection can pin.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Concurrent unidirectional (raft) streams a peer may open on one
/// connection. A member uses one long-lived stream per peer; a few more
/// cover a reconnect racing the old stream's end.
pub const RAFT_STREAMS_PER_CONNECTION_MAX: u32 = 8;

/// Incoming connections the endpoint serves at once: every member, agent
/// and client process holds at most a few, and it bounds the per-connection
/// state an attacker without a certificate can make the endpoint keep.
pub const CONNECTIONS_MAX: u32 = 4096;

/// First byte of a unidirectional stream carrying raft envelopes.
pub const STREAM_KIND_RAFT: u8 = 1;
/// First byte of a bidirectional client-protocol stream.
pub const STREAM_KIND_CLIENT: u8 = 2;

/// What travels on a raft stream: one raft message, encoded by raft-rs's own
/// codec (rust-protobuf), inside our prost frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftEnvelope {
    /// The sending member; must equal the raft message's own `from`.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// `raft::eraftpb::Message`, rust-protobuf encoded.
    #[prost(bytes = "vec", tag = "2")]
    pub message: Vec<u8>,
}

impl RaftEnvelope {
    /// Wraps a raft message.
    pub fn wrap(message: &Message) -> Result<Self> {
        let bytes = message
            .write_to_bytes()
            .map_err(|e| Error::Transport(format!("encoding raft message: {e}")))?;
        Ok(Self {
            from: message.from,
            message: bytes,
        })
    }

    /// Unwraps and checks the raft message.
    pub fn open(&self) -> Result<Message> {
        let message = Message::parse_from_bytes(&self.message)
            .map_err(|e| Error::Corrupt(format!("undecodable raft message: {e}")))?;
        if message.from != self.from {
            return Err(Error::Corrupt(format!(
                "envelope from {} carries a message from {}",
                self.from, message.from
            )));
        }
        Ok(message)
    }
}

/// Serves client-protocol streams. The endpoint has read the kind byte; the
/// handler owns the rest of the stream: it reads requests from `recv` (with
/// [`super::frame::read_message`] and
/// [`super::frame::CLIENT_FRAME_BYTES_MAX`]), writes one response or a
/// stream of them to `send`, and finishes `send` when done. `peer` is the
/// CA-verified name of the caller, for authorisation. One call per stream,
/// each on its own task; returning ends the exchange.
///
/// Any `Fn(PeerIdentity, SendStream, RecvStream) -> impl Future<Output = ()>`
/// closure is a handler.
pub trait ClientHandler: Send + Sync + 'static {
    fn serve(
        &self,
        peer: PeerIdentity,
        send: SendStream,
        recv: RecvStream,
    ) -> BoxFuture<'static, ()>;
}

impl<F, Fut> ClientHandler for F
where
    F: Fn(PeerIdentity, SendStream, RecvStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn serve(
        &self,
        peer: PeerIdentity,
        send: SendStream,
        recv: RecvStream,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self(peer, send, recv))
    }
}

/// Where a serving endpoint delivers what arrives.
#[derive(Clone, Default)]
pub struct Inbound {
    /// Raft messages from peers. Bounded by the caller; when full, messages
    /// are dropped and counted in [`TransportStats::raft_dropped_inbound`].
    /// `None` refuses raft streams (a client-only process).
    pub raft: Option<mpsc::Sender<Message>>,
    /// Client-protocol streams. `None` refuses them until
    /// [`QuicEndpoint::set_client_handler`] installs one.
    pub client: Option<Arc<dyn ClientHandler>>,
}

/// The client handler, replaceable after binding (the member's handler
/// usually needs the replica, which needs the endpoint first).
type ClientSlot = Arc<std::sync::RwLock<Option<Arc<dyn ClientHandler>>>>;

/// What the accept side routes to, shared by every connection task.
#[derive(Clone)]
struct Routes {
    raft: Option<mpsc::Sender<Message>>,
    client: ClientSlot,
}

impl Routes {
    fn client_handler(&self) -> Option<Arc<dyn ClientHandler>> {
        // The slot holds no invariant a panic elsewhere could break.
        self.client
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Raft messages received and handed to the inbound channel.
    pub raft_received: AtomicU64,
    /// Raft messages received but dropped because the inbound channel was full.
    pub raft_dropped_inbound: AtomicU64,
    /// Raft messages written to a peer's stream.
    pub raft_sent: AtomicU64,
    /// Raft messages dropped because a peer's outbound queue was full.
    pub raft_dropped_queue_full: AtomicU64,
    /// Raft messages dropped because the peer was unknown, unreachable or
    /// its stream failed.
    pub raft_dropped_peer_down: AtomicU64,
    /// Raft streams or messages refused because the peer is not a member or
    /// sent in another member's name.
    pub raft_refused: AtomicU64,
    /// Incoming connections that failed the handshake (including peers whose
    /// certificate is not from the cluster CA).
    pub handshakes_failed: AtomicU64,
    /// Client-protocol streams handed to the handler.
    pub client_streams: AtomicU64,
}

impl TransportStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One QUIC endpoint (cheap to clone; clones share it).
#[derive(Clone)]
pub struct QuicEndpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// Connections reused for client-protocol streams, by address.
    connections: Mutex<HashMap<String, quinn::Connection>>,
    stats: Arc<TransportStats>,
    client_handler: ClientSlot,
}

impl Drop for EndpointInner {
    /// The accept loop holds its own handle to the quinn endpoint; closing
    /// here ends it, so dropping the last [`QuicEndpoint`] releases the port.
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"endpoint dropped");
    }
}

impl std::fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicEndpoint")
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn transport_config() -> Result<Arc<quinn::TransportConfig>> {
    let mut config = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
        .map_err(|e| Error::Transport(format!("idle timeout: {e}")))?;
    config
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)))
        .max_concurrent_bidi_streams(VarInt::from_u32(CLIENT_STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(RAFT_STREAMS_PER_CONNECTION_MAX));
    Ok(Arc::new(config))
}

fn client_config(credentials: &Credentials) -> Result<quinn::ClientConfig> {
    let mut tls = credentials.client_config()?;
    tls.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Transport(format!("QUIC client TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok(config)
}

fn server_config(credentials: &Credentials) -> Result<quinn::ServerConfig> {
    let mut tls = credentials.server_config()?;
    tls.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Transport(format!("QUIC server TLS: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config()?);
    config.max_incoming(CONNECTIONS_MAX as usize);
    Ok(config)
}

impl QuicEndpoint {
    /// Binds a member's endpoint on `address` (port 0 picks one), accepting
    /// connections and delivering to `inbound`, and able to connect out with
    /// the same credentials. Must be called inside a tokio runtime.
    pub fn bind(address: SocketAddr, credentials: &Credentials, inbound: Inbound) -> Result<Self> {
        let endpoint = quinn::Endpoint::server(server_config(credentials)?, address)
            .map_err(|e| Error::io(format!("binding QUIC endpoint on {address}"), e))?;
        let this = Self::wrap(endpoint, credentials)?;
        if let Some(handler) = inbound.client {
            this.set_client_handler(handler);
        }
        let routes = Routes {
            raft: inbound.raft,
            client: this.inner.client_handler.clone(),
        };
        let accept = accept_loop(
            this.inner.endpoint.clone(),
            routes,
            this.inner.stats.clone(),
        );
        let span = tracing::info_span!("quic_accept", local = %address);
        tokio::spawn(accept.instrument(span));
        Ok(this)
    }

    /// Installs (or replaces) the client-protocol handler of a bound
    /// endpoint; streams opened from now on go to it.
    pub fn set_client_handler(&self, handler: Arc<dyn ClientHandler>) {
        *self
            .inner
            .client_handler
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handler);
    }

    /// An endpoint that only connects out (a client process), bound on
    /// `address` (e.g. `127.0.0.1:0`). Must be called inside a tokio runtime.
    pub fn client(address: SocketAddr, credentials: &Credentials) -> Result<Self> {
        let endpoint = quinn::Endpoint::client(address)
            .map_err(|e| Error::io(format!("binding QUIC client on {address}"), e))?;
        Self::wrap(endpoint, credentials)
    }

    fn wrap(endpoint: quinn::Endpoint, credentials: &Credentials) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(EndpointInner {
                endpoint,
                client_config: client_config(credentials)?,
                connections: Mutex::new(HashMap::new()),
                stats: Arc::new(TransportStats::default()),
                client_handler: ClientSlot::default(),
            }),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| Error::io("reading QUIC endpoint address", e))
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    pub(crate) fn stats_handle(&self) -> Arc<TransportStats> {
        self.inner.stats.clone()
    }

    /// Opens a new connection to `address` (`host:port`; the host must be
    /// among the server certificate's names) and completes the handshake.
    pub async fn connect(&self, address: &str) -> Result<quinn::Connection> {
        let (socket, server_name) = resolve(address).await?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), socket, &server_name)
            .map_err(|e| Error::Transport(format!("connecting to {address}: {e}")))?;
        let connection =
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
                .await
                .map_err(|_| Error::Timeout {
                    timeout_ms: CONNECT_TIMEOUT_MS,
                })?
                .map_err(|e| Error::Transport(format!("handshake with {address}: {e}")))?;
        Ok(connection)
    }

    /// Opens a client-protocol stream to `address`, reusing one connection
    /// per address while it stays open. The kind byte is already written;
    /// the caller speaks the client protocol on the returned pair and
    /// finishes the send side when its request is complete.
    pub async fn open_client_stream(&self, address: &str) -> Result<(SendStream, RecvStream)> {
        let connection = self.cached_connection(address).await?;
        let (mut send, recv) = match connection.open_bi().await {
            Ok(pair) => pair,
            Err(e) => {
                self.forget_connection(address);
                return Err(Error::Transport(format!(
                    "opening stream to {address}: {e}"
                )));
            }
        };
        send.write_all(&[STREAM_KIND_CLIENT])
            .await
            .map_err(|e| Error::Transport(format!("writing to {address}: {e}")))?;
        Ok((send, recv))
    }

    async fn cached_connection(&self, address: &str) -> Result<quinn::Connection> {
        let cached = self.lock_connections().get(address).cloned();
        if let Some(connection) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok(connection);
        }
        let connection = self.connect(address).await?;
        self.lock_connections()
            .insert(address.to_string(), connection.clone());
        Ok(connection)
    }

    fn forget_connection(&self, address: &str) {
        self.lock_connections().remove(address);
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        // The map holds no invariant a panic elsewhere could break.
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes every connection and stops accepting; waits until the peers
    /// have been told (bounded by the idle timeout).
    pub async fn shutdown(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(0), b"endpoint shut down");
        self.inner.endpoint.wait_idle().await;
    }
}

/// Resolves `host:port` to a socket address and the TLS server name.
async fn resolve(address: &str) -> Result<(SocketAddr, String)> {
    let (host, _port) = address
        .rsplit_once(':')
        .ok_or_else(|| Error::Transport(format!("address {address} has no port")))?;
    let server_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let socket = tokio::net::lookup_host(address)
        .await
        .map_err(|e| Error::Transport(format!("resolving {address}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{address} resolves to nothing")))?;
    Ok((socket, server_name))
}

async fn accept_loop(endpoint: quinn::Endpoint, routes: Routes, stats: Arc<TransportStats>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let span = tracing::info_span!("quic_connection", %remote, peer = tracing::field::Empty);
        let serve = serve_connection(incoming, routes.clone(), stats.clone());
        tokio::spawn(serve.instrument(span));
    }
    tracing::debug!("endpoint closed; accept loop ends");
}

async fn serve_connection(incoming: quinn::Incoming, routes: Routes, stats: Arc<TransportStats>) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            TransportStats::bump(&stats.handshakes_failed);
            tracing::warn!(error = %e, "refused connection: handshake failed");
            return;
        }
    };
    let peer = match PeerIdentity::of(&connection) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(error = %e, "refused connection without identity");
            connection.close(VarInt::from_u32(1), b"no identity");
            return;
        }
    };
    tracing::Span::current().record("peer", peer.name.as_str());
    tracing::debug!("connection accepted");
    loop {
        tokio::select! {
            uni = connection.accept_uni() => match uni {
                Ok(recv) => spawn_raft_stream(&peer, recv, &routes, &stats),
                Err(e) => { tracing::debug!(reason = %e, "connection ended"); return; }
            },
            bi = connection.accept_bi() => match bi {
                Ok((send, recv)) => spawn_client_stream(peer.clone(), send, recv, &routes, &stats),
                Err(e) => { tracing::debug!(reason = %e, "connection ended"); return; }
            },
        }
    }
}

fn spawn_raft_stream(
    peer: &PeerIdentity,
    recv: RecvStream,
    routes: &Routes,
    stats: &Arc<TransportStats>,
) {
    let Some(sink) = routes.raft.clone() else {
        tracing::warn!("refused a raft stream: this endpoint takes no raft traffic");
        return;
    };
    // Clients hold certificates from the same CA; only a member may speak
    // raft, and only in its own name.
    let Some(member) = peer.member_id() else {
        TransportStats::bump(&stats.raft_refused);
        tracing::warn!(peer = %peer.name, "refused a raft stream from a non-member");
        return;
    };
    let stats = stats.clone();
    let span = tracing::debug_span!("raft_stream_in", member);
    tokio::spawn(
        async move {
            if let Err(e) = receive_raft(member, recv, sink, &stats).await {
                tracing::debug!(error = %e, "raft stream ended");
            }
        }
        .instrument(span),
    );
}

async fn receive_raft(
    member: MemberId,
    mut recv: RecvStream,
    sink: mpsc::Sender<Message>,
    stats: &TransportStats,
) -> Result<()> {
    let kind = recv
        .read_u8()
        .await
        .map_err(|e| Error::Transport(format!("reading stream kind: {e}")))?;
    if kind != STREAM_KIND_RAFT {
        return Err(Error::Transport(format!(
            "unexpected uni stream kind {kind}"
        )));
    }
    while let Some(envelope) =
        read_message::<_, RaftEnvelope>(&mut recv, RAFT_FRAME_BYTES_MAX).await?
    {
        let message = envelope.open()?;
        if message.from != member {
            TransportStats::bump(&stats.raft_refused);
            return Err(Error::Transport(format!(
                "member {member} sent a message as {}",
                message.from
            )));
        }
        match sink.try_send(message) {
            Ok(()) => TransportStats::bump(&stats.raft_received),
            Err(mpsc::error::TrySendError::Full(_)) => {
                TransportStats::bump(&stats.raft_dropped_inbound);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Stopped),
        }
    }
    Ok(())
}

fn spawn_client_stream(
    peer: PeerIdentity,
    send: SendStream,
    mut recv: RecvStream,
    routes: &Routes,
    stats: &Arc<TransportStats>,
) {
    let Some(handler) = routes.client_handler() else {
        tracing::warn!("refused a client stream: this endpoint serves no clients");
        return;
    };
    TransportStats::bump(&stats.client_streams);
    let span = tracing::debug_span!("client_stream", peer = %peer.name);
    tokio::spawn(
        async move {
            match recv.read_u8().await {
                Ok(STREAM_KIND_CLIENT) => handler.serve(peer, send, recv).await,
                Ok(kind) => tracing::warn!(kind, "unexpected bi stream kind"),
                Err(e) => tracing::debug!(error = %e, "client stream ended before its kind"),
            }
        }
        .instrument(span),
    );
}

/// Opens the long-lived raft stream on `connection` (kind byte written).
pub(crate) async fn open_raft_stream(connection: &quinn::Connection) -> Result<SendStream> {
    let mut send = connection
        .open_uni()
        .await
        .map_err(|e| Error::Transport(format!("opening raft stream: {e}")))?;
    send.write_all(&[STREAM_KIND_RAFT])
        .await
        .map_err(|e| Error::Transport(format!("writing raft stream kind: {e}")))?;
    Ok(send)
}
