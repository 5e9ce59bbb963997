//! The QUIC mesh between nodes: one quinn connection per pair of nodes
//! that talk, one bidirectional stream per request.
//!
//! Both ends present node certificates from the cluster CA (mutual TLS):
//! a node without one, or with one from another CA, is refused in the
//! handshake, and a certificate of the cluster CA that is not a node's
//! (`system:node:<name>`) right after it.
//!
//! A stream opens with a fixed header saying what it carries and naming
//! the pod address and port it is for (and the calling pod, for policy).
//! An HTTP stream then carries one HTTP/1.1 exchange; a TCP stream (a
//! guest's `wasi:sockets` connection) gets one status byte back and then
//! carries the connection's bytes both ways. Either way, QUIC's flow
//! control is the backpressure.
//!
//! This module knows QUIC, TLS and the stream format; what a request or a
//! connection does on arrival is the [`Inbound`] handlers it is given.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_pki::certificate_common_name;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tracing::Instrument;

use super::tcp::bridge;
use crate::sockets::{Duplex, ErrorCode};
use crate::workload::{RequestBody, ResponseBody};

/// The ALPN protocol of mesh connections: a peer speaking anything else
/// (a raft member, a stray client) fails the handshake.
pub const MESH_ALPN: &[u8] = b"flotilla-mesh/1";

/// Requests in flight on one connection; opening one more waits, which is
/// the mesh's backpressure towards a busy node.
const STREAMS_PER_CONNECTION_MAX: u32 = 4096;
/// A connection with no traffic and no answered keep-alive for this long
/// is dead: its node is gone or cut off. Short, because requests on a dead
/// connection wait this long before they go to another endpoint.
const IDLE_TIMEOUT_MS: u64 = 6_000;
/// Keep-alives well inside the idle timeout.
const KEEP_ALIVE_INTERVAL_MS: u64 = 1_500;
/// A handshake slower than this fails, so a dead node is noticed at once
/// rather than after the idle timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a response's head may take on the calling side. The serving
/// node bounds the guest's time itself; this bounds a node that stopped
/// answering without closing the connection.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCP connection's status byte may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream header: version, kind, target address (16), target port (2),
/// source address (16, unspecified when there is none), source port (2).
const HEADER_BYTES: usize = 1 + 1 + 16 + 2 + 16 + 2;
const HEADER_VERSION: u8 = 2;

/// What a mesh stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// One HTTP/1.1 exchange.
    Http = 1,
    /// A TCP connection's bytes.
    Tcp = 2,
}

/// The common-name prefix of node certificates.
const NODE_NAME_PREFIX: &str = "system:node:";

/// A TCP stream's status byte: accepted, or the error code's number.
const TCP_ACCEPTED: u8 = 0;

/// What a node does with a request that arrived over the mesh: serve it
/// from the pod at `target`, on behalf of `source`.
pub type InboundHandler = Arc<
    dyn Fn(
            SocketAddr,
            Option<IpAddr>,
            http::Request<RequestBody>,
        ) -> Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// What a node does with a TCP connection that arrived over the mesh for
/// the pod address `target` from `source`: hand it to the listening guest
/// (its end of the connection), or say why not.
pub type TcpHandler =
    Arc<dyn Fn(SocketAddr, SocketAddr) -> Result<Duplex, ErrorCode> + Send + Sync>;

/// The handlers of what arrives over the mesh.
#[derive(Clone)]
pub struct Inbound {
    pub http: InboundHandler,
    /// None refuses every TCP connection.
    pub tcp: Option<TcpHandler>,
}

impl From<InboundHandler> for Inbound {
    fn from(http: InboundHandler) -> Self {
        Self { http, tcp: None }
    }
}

/// Why a request over the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// No connection to the node could be made (so the request was not
    /// sent, and may go elsewhere).
    #[error("cannot reach node {node} at {address}: {reason}")]
    Connect {
        node: String,
        address: SocketAddr,
        reason: String,
    },
    /// The connection was lost or refused the stream before the request
    /// was written (so it may go elsewhere too).
    #[error("node {node} refused the stream: {reason}")]
    Stream { node: String, reason: String },
    /// The exchange failed after the request was sent.
    #[error("request to node {node} failed: {reason}")]
    Exchange { node: String, reason: String },
    /// No response head within [`RESPONSE_HEAD_TIMEOUT`].
    #[error("node {node} sent no response within {} s", RESPONSE_HEAD_TIMEOUT.as_secs())]
    Timeout { node: String },
    /// The local endpoint could not be set up.
    #[error("mesh endpoint: {reason}")]
    Setup { reason: String },
    /// The other node refused a TCP connection.
    #[error("node {node} refused the connection: {code:?}")]
    TcpRefused { node: String, code: ErrorCode },
}

impl MeshError {
    /// Whether the connection broke or went silent after the request was
    /// sent (a node that died or was cut off).
    pub fn connection_lost(&self) -> bool {
        matches!(self, MeshError::Exchange { .. } | MeshError::Timeout { .. })
    }

    /// Whether the request never left, so sending it elsewhere cannot
    /// run it twice.
    pub fn not_sent(&self) -> bool {
        matches!(self, MeshError::Connect { .. } | MeshError::Stream { .. })
    }
}

/// TLS for the mesh: the node's certificate for both ends, the cluster CA
/// to verify the other.
pub struct MeshTls {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

/// This node's end of the mesh. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// One connection per node address; the per-address lock makes
    /// concurrent first requests share one handshake.
    connections: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
}

impl Mesh {
    /// Binds the mesh endpoint at `listen` and serves arriving requests
    /// with `handler` until the returned mesh (all its clones) is dropped
    /// or [`Mesh::close`]d.
    pub fn bind(
        listen: SocketAddr,
        tls: MeshTls,
        handler: impl Into<Inbound>,
    ) -> Result<Self, MeshError> {
        let handler = handler.into();
        let setup = |what: &str, error: &dyn std::fmt::Display| MeshError::Setup {
            reason: format!("{what}: {error}"),
        };
        let transport = Arc::new(transport_config().map_err(|e| setup("transport", &e))?);
        let MeshTls {
            mut server,
            mut client,
        } = tls;
        server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        client.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let server_crypto =
            QuicServerConfig::try_from(server).map_err(|e| setup("server TLS", &e))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let client_crypto =
            QuicClientConfig::try_from(client).map_err(|e| setup("client TLS", &e))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server_config, listen)
            .map_err(|e| setup(&format!("binding {listen}"), &e))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| setup("local address", &e))?;
        tokio::spawn(
            accept_loop(endpoint.clone(), handler)
                .instrument(tracing::info_span!("mesh", address = %local)),
        );
        Ok(Self {
            inner: Arc::new(MeshInner {
                endpoint,
                client_config,
                connections: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The UDP address the mesh listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(0), b"node stopping");
    }

    /// Sends `request` to the pod at `target` on the node `node_name`,
    /// whose mesh endpoint is `address`.
    pub async fn send(
        &self,
        node_name: &str,
        address: SocketAddr,
        target: SocketAddr,
        source: Option<IpAddr>,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<ResponseBody>, MeshError> {
        let connection = self.connection(node_name, address).await?;
        let stream_error = |reason: String| MeshError::Stream {
            node: node_name.to_owned(),
            reason,
        };
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let source = source.map(|ip| SocketAddr::new(ip, 0));
        send.write_all(&encode_header(StreamKind::Http, target, source))
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let exchange_error = |reason: String| MeshError::Exchange {
            node: node_name.to_owned(),
            reason,
        };
        let io = TokioIo::new(tokio::io::join(recv, send));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| exchange_error(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "mesh stream ended");
            }
        });
        let response = tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| MeshError::Timeout {
                node: node_name.to_owned(),
            })?
            .map_err(|e| exchange_error(e.to_string()))?;
        Ok(response.map(crate::request_body))
    }

    /// Opens a TCP connection from `source` to the pod at `target` on the
    /// node `node_name` (mesh endpoint `address`): the caller's end of it,
    /// once the other node's guest has it.
    pub async fn connect_tcp(
        &self,
        node_name: &str,
        address: SocketAddr,
        target: SocketAddr,
        source: SocketAddr,
    ) -> Result<Duplex, MeshError> {
        let connection = self.connection(node_name, address).await?;
        let stream_error = |reason: String| MeshError::Stream {
            node: node_name.to_owned(),
            reason,
        };
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        send.write_all(&encode_header(StreamKind::Tcp, target, Some(source)))
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let mut status = [0u8; 1];
        tokio::time::timeout(TCP_CONNECT_TIMEOUT, recv.read_exact(&mut status))
            .await
            .map_err(|_| MeshError::Timeout {
                node: node_name.to_owned(),
            })?
            .map_err(|e| MeshError::Exchange {
                node: node_name.to_owned(),
                reason: e.to_string(),
            })?;
        if status[0] != TCP_ACCEPTED {
            return Err(MeshError::TcpRefused {
                node: node_name.to_owned(),
                code: error_code_of(status[0]),
            });
        }
        let (ours, theirs) = Duplex::pair();
        bridge(recv, send, theirs);
        Ok(ours)
    }

    /// The live connection to `address`, made if there is none.
    async fn connection(
        &self,
        node_name: &str,
        address: SocketAddr,
    ) -> Result<quinn::Connection, MeshError> {
        let slot = {
            let mut connections = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            connections.entry(address).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let connect_error = |reason: String| MeshError::Connect {
            node: node_name.to_owned(),
            address,
            reason,
        };
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), address, node_name)
            .map_err(|e| connect_error(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                connect_error(format!(
                    "no handshake within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| connect_error(e.to_string()))?;
        tracing::debug!(node = node_name, %address, "mesh connection up");
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

fn transport_config() -> Result<quinn::TransportConfig, quinn::VarIntBoundsExceeded> {
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(VarInt::from_u64(IDLE_TIMEOUT_MS)?.into()))
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)))
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(config)
}

fn encode_header(
    kind: StreamKind,
    target: SocketAddr,
    source: Option<SocketAddr>,
) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0] = HEADER_VERSION;
    header[1] = kind as u8;
    header[2..18].copy_from_slice(&v6(target.ip()).octets());
    header[18..20].copy_from_slice(&target.port().to_be_bytes());
    let (source_ip, source_port) = source.map_or((Ipv6Addr::UNSPECIFIED, 0), |source| {
        (v6(source.ip()), source.port())
    });
    header[20..36].copy_from_slice(&source_ip.octets());
    header[36..38].copy_from_slice(&source_port.to_be_bytes());
    header
}

fn decode_header(
    header: &[u8; HEADER_BYTES],
) -> Option<(StreamKind, SocketAddr, Option<SocketAddr>)> {
    if header[0] != HEADER_VERSION {
        return None;
    }
    let kind = match header[1] {
        1 => StreamKind::Http,
        2 => StreamKind::Tcp,
        _ => return None,
    };
    let address = |bytes: &[u8]| -> Option<IpAddr> {
        let octets: [u8; 16] = bytes.try_into().ok()?;
        let ip = Ipv6Addr::from(octets);
        Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
    };
    let target = address(&header[2..18])?;
    let port = u16::from_be_bytes([header[18], header[19]]);
    let source_port = u16::from_be_bytes([header[36], header[37]]);
    let source = address(&header[20..36])
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, source_port));
    Some((kind, SocketAddr::new(target, port), source))
}

/// The status byte that reports `code` to the connecting node.
fn status_of(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::AccessDenied => 1,
        ErrorCode::ConnectionRefused => 2,
        ErrorCode::RemoteUnreachable => 3,
        _ => 255,
    }
}

fn error_code_of(status: u8) -> ErrorCode {
    match status {
        1 => ErrorCode::AccessDenied,
        2 => ErrorCode::ConnectionRefused,
        3 => ErrorCode::RemoteUnreachable,
        _ => ErrorCode::ConnectionReset,
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, handler: Inbound) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    // A peer without a certificate from the cluster CA ends here.
                    tracing::info!(%remote, %error, "mesh handshake refused");
                    return;
                }
            };
            // The CA also signs users' and store members' certificates;
            // only nodes may send: the receiving node trusts the sender's
            // policy checks.
            let Some(node) = peer_node(&connection) else {
                tracing::warn!(%remote, "mesh peer's certificate is not a node's; refused");
                connection.close(VarInt::from_u32(1), b"not a node");
                return;
            };
            serve_connection(connection, handler)
                .instrument(tracing::debug_span!("mesh_peer", %remote, %node))
                .await;
        });
    }
}

/// The node a verified peer's certificate was issued to
/// (`system:node:<name>`, as Kubernetes names nodes' credentials).
fn peer_node(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    let name = certificate_common_name(chain.first()?)?;
    name.strip_prefix(NODE_NAME_PREFIX).map(str::to_owned)
}

async fn serve_connection(connection: quinn::Connection, handler: Inbound) {
    loop {
        let (send, mut recv) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "mesh connection ended");
                return;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut header = [0u8; HEADER_BYTES];
            if recv.read_exact(&mut header).await.is_err() {
                return;
            }
            let Some((kind, target, source)) = decode_header(&header) else {
                tracing::warn!("mesh stream with an unknown header");
                return;
            };
            match kind {
                StreamKind::Http => serve_http(handler.http, target, source, send, recv).await,
                StreamKind::Tcp => serve_tcp(handler.tcp, target, source, send, recv).await,
            }
        });
    }
}

async fn serve_http(
    handler: InboundHandler,
    target: SocketAddr,
    source: Option<SocketAddr>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let source = source.map(|source| source.ip());
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            async move {
                let request = request.map(crate::request_body);
                Ok::<_, std::convert::Infallible>(handler(target, source, request).await)
            }
        });
    let io = TokioIo::new(tokio::io::join(recv, send));
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, %target, "mesh request ended early");
    }
}

async fn serve_tcp(
    handler: Option<TcpHandler>,
    target: SocketAddr,
    source: Option<SocketAddr>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let accepted = match (handler, source) {
        (Some(handler), Some(source)) => handler(target, source),
        _ => Err(ErrorCode::ConnectionRefused),
    };
    match accepted {
        Ok(duplex) => {
            if send.write_all(&[TCP_ACCEPTED]).await.is_ok() {
                bridge(recv, send, duplex);
            }
        }
        Err(code) => {
            tracing::debug!(%target, ?code, "mesh TCP connection refused");
            // The caller learns why from the status byte; nothing follows.
            let _ = send.write_all(&[status_of(code)]).await;
            let _ = send.finish();
        }
    }
}

/// A response with a plain-text body, for errors the router answers itself.
pub(crate) fn text_response(
    status: http::StatusCode,
    text: String,
) -> http::Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let target: SocketAddr = "10.240.0.7:8080".parse().unwrap();
        let source: SocketAddr = "10.240.4.2:49152".parse().unwrap();
        assert_eq!(
            decode_header(&encode_header(StreamKind::Tcp, target, Some(source))),
            Some((StreamKind::Tcp, target, Some(source)))
        );
        let v6_target: SocketAddr = "[fd00::7]:80".parse().unwrap();
        assert_eq!(
            decode_header(&encode_header(StreamKind::Http, v6_target, None)),
            Some((StreamKind::Http, v6_target, None))
        );
        let mut bad = encode_header(StreamKind::Http, target, None);
        bad[0] = 9;
        assert_eq!(decode_header(&bad), None);
        let mut unknown_kind = encode_header(StreamKind::Http, target, None);
        unknown_kind[1] = 7;
        assert_eq!(decode_header(&unknown_kind), None);
    }

    #[test]
    fn tcp_refusals_keep_their_reason() {
        for code in [
            ErrorCode::AccessDenied,
            ErrorCode::ConnectionRefused,
            ErrorCode::RemoteUnreachable,
        ] {
            assert_eq!(error_code_of(status_of(code)), code);
        }
        assert_eq!(
            error_code_of(status_of(ErrorCode::Unknown)),
            ErrorCode::ConnectionReset
        );
    }
}
