//! Guests' raw TCP in the pod network (`wasi:sockets`): each pod's port
//! space, and where a connection goes.
//!
//! A connection to the pod's own `127.0.0.1`/`::1` stays in the pod; to a
//! ClusterIP it goes to one of the Service's ready endpoints, as
//! kube-proxy's DNAT would; to a pod on this node it never leaves the
//! process, and to a pod on another node it rides one stream of the QUIC
//! mesh. NetworkPolicy applies as it does to HTTP. Anything else is
//! outside the cluster, and needs egress (a namespace allow-list or an
//! egress policy) like any outward request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::PodNetwork;
use super::metrics::TcpPath;
use super::resolve::{Destination, ResolveError, resolve};
use crate::sockets::{
    BACKLOG_MAX, CHUNK_BYTES_MAX, Connection, Duplex, ErrorCode, Listener, NetFuture, PodSockets,
};

/// The ports given to sockets that connect without binding (Linux's
/// default ephemeral range).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// How long a connection outside the cluster may take to open.
const EGRESS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an outside name may take to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Listening sockets past which closed ones are swept out of the table.
const SWEEP_AT: usize = 4096;

/// Every pod's listening ports on this node.
#[derive(Default)]
pub(super) struct Ports {
    state: Mutex<PortsState>,
}

#[derive(Default)]
struct PortsState {
    /// The accept queue of each listening (pod uid, port).
    listening: HashMap<(String, u16), mpsc::Sender<Connection>>,
    next_ephemeral: u16,
}

impl PortsState {
    /// Whether the pod listens on `port` (a listener whose guest dropped
    /// it no longer counts).
    fn in_use(&self, pod_uid: &str, port: u16) -> bool {
        self.listening
            .get(&(pod_uid.to_owned(), port))
            .is_some_and(|queue| !queue.is_closed())
    }
}

impl Ports {
    fn lock(&self) -> std::sync::MutexGuard<'_, PortsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bind(&self, pod_uid: &str, port: u16) -> Result<u16, ErrorCode> {
        let mut state = self.lock();
        if port != 0 {
            return if state.in_use(pod_uid, port) {
                Err(ErrorCode::AddressInUse)
            } else {
                Ok(port)
            };
        }
        let span = usize::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        for _ in 0..span {
            let offset = state.next_ephemeral % (span as u16);
            state.next_ephemeral = state.next_ephemeral.wrapping_add(1);
            let candidate = EPHEMERAL_PORTS.start() + offset;
            if !state.in_use(pod_uid, candidate) {
                return Ok(candidate);
            }
        }
        Err(ErrorCode::AddressInUse)
    }

    fn listen(&self, pod_uid: &str, port: u16, backlog: usize) -> Result<Listener, ErrorCode> {
        let mut state = self.lock();
        if state.in_use(pod_uid, port) {
            return Err(ErrorCode::AddressInUse);
        }
        if state.listening.len() >= SWEEP_AT {
            state.listening.retain(|_, queue| !queue.is_closed());
        }
        let (queue, connections) = mpsc::channel(backlog.clamp(1, BACKLOG_MAX));
        state.listening.insert((pod_uid.to_owned(), port), queue);
        Ok(Listener { connections })
    }

    /// Hands a new connection to the pod's listener on `local`'s port; the
    /// caller's end, or `connection-refused` when nothing listens there or
    /// its queue is full (as a kernel refuses past the backlog).
    fn deliver(
        &self,
        pod_uid: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Duplex, ErrorCode> {
        let mut state = self.lock();
        let key = (pod_uid.to_owned(), local.port());
        let queue = state
            .listening
            .get(&key)
            .ok_or(ErrorCode::ConnectionRefused)?;
        let (ours, theirs) = Duplex::pair();
        let arrived = Connection {
            duplex: theirs,
            local,
            remote,
        };
        match queue.try_send(arrived) {
            Ok(()) => Ok(ours),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ErrorCode::ConnectionRefused),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.listening.remove(&key);
                Err(ErrorCode::ConnectionRefused)
            }
        }
    }
}

/// Carries bytes between a transport (a mesh stream, an outside TCP
/// connection) and `duplex`, both ways, until each direction ends.
pub(super) fn bridge<R, W>(mut reader: R, mut writer: W, duplex: Duplex)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Duplex {
        mut incoming,
        outgoing,
    } = duplex;
    tokio::spawn(
        async move {
            loop {
                let mut chunk = BytesMut::with_capacity(CHUNK_BYTES_MAX);
                match reader.read_buf(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if outgoing.send(chunk.freeze()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
    tokio::spawn(
        async move {
            while let Some(chunk) = incoming.recv().await {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // The guest shut down sending (or closed): end the stream.
            let _ = writer.shutdown().await;
        }
        .in_current_span(),
    );
}

impl PodSockets for PodNetwork {
    fn pod_ip(&self, pod_uid: &str) -> Option<IpAddr> {
        self.runtime().ok()?.pod(pod_uid)?.pod_ip()
    }

    fn bind(&self, pod_uid: &str, port: u16) -> Result<u16, ErrorCode> {
        self.inner.ports.bind(pod_uid, port)
    }

    fn listen(&self, pod_uid: &str, port: u16, backlog: usize) -> Result<Listener, ErrorCode> {
        self.inner.ports.listen(pod_uid, port, backlog)
    }

    fn connect(
        &self,
        pod_uid: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> NetFuture<Connection> {
        let network = self.clone();
        let pod_uid = pod_uid.to_owned();
        let span = tracing::debug_span!("tcp_connect", pod = %pod_uid, %remote);
        Box::pin(
            async move {
                let connected = network.connect_tcp(&pod_uid, local, remote).await;
                if let Err(code) = &connected {
                    tracing::debug!(?code, "connection failed");
                }
                connected.map(|duplex| Connection {
                    duplex,
                    local,
                    remote,
                })
            }
            .instrument(span),
        )
    }

    fn resolve(&self, pod_uid: &str, name: &str) -> NetFuture<Vec<IpAddr>> {
        let network = self.clone();
        let pod_uid = pod_uid.to_owned();
        let name = name.to_owned();
        Box::pin(async move { network.resolve_name(&pod_uid, &name).await })
    }
}

impl PodNetwork {
    /// The namespace and address of the pod `pod_uid` on this node.
    fn caller(&self, pod_uid: &str) -> (String, Option<IpAddr>) {
        let pod = self.runtime().ok().and_then(|runtime| runtime.pod(pod_uid));
        let namespace = pod
            .as_ref()
            .map_or_else(|| "default".to_owned(), |pod| pod.namespace().to_owned());
        (namespace, pod.and_then(|pod| pod.pod_ip()))
    }

    async fn connect_tcp(
        &self,
        pod_uid: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Duplex, ErrorCode> {
        if is_pod_loopback(remote.ip()) {
            let from = SocketAddr::new(remote.ip(), local.port());
            return self.inner.ports.deliver(pod_uid, remote, from);
        }
        let (namespace, source) = self.caller(pod_uid);
        let source = SocketAddr::new(source.unwrap_or(local.ip()), local.port());
        // A ClusterIP stands for one of its Service's ready endpoints.
        let target = match self.inner.table.service_at(remote.ip()) {
            Some(route) => {
                let port = route
                    .port(remote.port())
                    .ok_or(ErrorCode::ConnectionRefused)?;
                let (endpoint, target_port) = self
                    .pick(
                        &route,
                        Some(&port.name),
                        remote.port(),
                        Some(source.ip()),
                        &[],
                    )
                    .ok_or(ErrorCode::ConnectionRefused)?;
                SocketAddr::new(endpoint.ip, target_port)
            }
            None => remote,
        };
        let runtime = self.runtime().map_err(|_| ErrorCode::ConnectionRefused)?;
        let here = runtime.pod_at(target.ip());
        let node = self.inner.table.node_of_pod(target.ip());
        if here.is_none() && node.is_none() {
            return self.connect_outside(&namespace, source, target).await;
        }
        if let Err(denied) = self.inner.table.policies().check(Some(source.ip()), target) {
            self.inner.metrics.denied("policy");
            tracing::info!(%denied, %target, "connection denied by NetworkPolicy");
            return Err(ErrorCode::AccessDenied);
        }
        if let Some(uid) = here {
            self.inner.metrics.tcp(TcpPath::Local);
            return self.inner.ports.deliver(&uid, target, source);
        }
        let node = node
            .filter(|node| node.name != self.inner.node_name)
            .ok_or(ErrorCode::ConnectionRefused)?;
        let (Some(mesh), Some(address)) = (self.inner.mesh.get(), node.mesh_address()) else {
            return Err(ErrorCode::RemoteUnreachable);
        };
        self.inner.metrics.tcp(TcpPath::MeshOut);
        match mesh.connect_tcp(&node.name, address, target, source).await {
            Ok(duplex) => Ok(duplex),
            Err(super::MeshError::TcpRefused { code, .. }) => Err(code),
            Err(error) => {
                if error.not_sent() || error.connection_lost() {
                    self.mark_unreachable(&node.name);
                }
                tracing::info!(%error, "mesh connection failed");
                Err(ErrorCode::RemoteUnreachable)
            }
        }
    }

    /// Hands a connection that arrived over the mesh to the pod at
    /// `target`. Policy was checked by the sending node, which knows its
    /// own pods first (mesh peers are nodes of this cluster, by their
    /// certificates), as for HTTP.
    pub(super) fn accept_from_mesh(
        &self,
        target: SocketAddr,
        source: SocketAddr,
    ) -> Result<Duplex, ErrorCode> {
        self.inner.metrics.tcp(TcpPath::MeshIn);
        let runtime = self.runtime().map_err(|_| ErrorCode::ConnectionRefused)?;
        let uid = runtime
            .pod_at(target.ip())
            .ok_or(ErrorCode::ConnectionRefused)?;
        self.inner.ports.deliver(&uid, target, source)
    }

    /// A connection outside the cluster, if egress admits it.
    async fn connect_outside(
        &self,
        namespace: &str,
        source: SocketAddr,
        target: SocketAddr,
    ) -> Result<Duplex, ErrorCode> {
        let policies = self.inner.table.policies();
        if !policies.egress_allows(
            namespace,
            Some(source.ip()),
            &target.ip().to_string(),
            target.port(),
        ) {
            self.inner.metrics.denied("egress");
            tracing::info!(%target, "connection outside the cluster denied: no egress allows it");
            return Err(ErrorCode::AccessDenied);
        }
        self.inner.metrics.tcp(TcpPath::Egress);
        let stream = tokio::time::timeout(
            EGRESS_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(target),
        )
        .await
        .map_err(|_| ErrorCode::Timeout)?
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            _ => ErrorCode::RemoteUnreachable,
        })?;
        let (reader, writer) = stream.into_split();
        let (ours, theirs) = Duplex::pair();
        bridge(reader, writer, theirs);
        Ok(ours)
    }

    /// `name`'s addresses as the pod's DNS gives them: a Service's
    /// ClusterIP, a headless Service's ready pods, a pod's own loopback;
    /// an outside name only if the namespace's egress allow-list names it.
    async fn resolve_name(&self, pod_uid: &str, name: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let (namespace, source) = self.caller(pod_uid);
        let destination = match resolve(&self.inner.table, &namespace, name, 0) {
            Ok(destination) => destination,
            Err(ResolveError::UnknownService { .. } | ResolveError::AliasLoop { .. }) => {
                return Err(ErrorCode::NameUnresolvable);
            }
        };
        match destination {
            Destination::Sibling { .. } => Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]),
            Destination::Pod { ip, .. } => Ok(vec![ip]),
            Destination::Service { route, .. } => match route.cluster_ip {
                Some(ip) => Ok(vec![ip]),
                None => {
                    let ready: Vec<IpAddr> = route
                        .endpoints
                        .iter()
                        .filter(|endpoint| endpoint.ready)
                        .map(|endpoint| endpoint.ip)
                        .collect();
                    if ready.is_empty() {
                        Err(ErrorCode::NameUnresolvable)
                    } else {
                        Ok(ready)
                    }
                }
            },
            Destination::External { host, .. } => {
                let policies = self.inner.table.policies();
                if !policies.egress_allows(&namespace, source, &host, 0) {
                    self.inner.metrics.denied("egress");
                    tracing::info!(%host, "lookup outside the cluster denied: not in the namespace's egress allow-list");
                    return Err(ErrorCode::NameUnresolvable);
                }
                let found =
                    tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0)))
                        .await
                        .map_err(|_| ErrorCode::TemporaryResolverFailure)?
                        .map_err(|_| ErrorCode::NameUnresolvable)?;
                Ok(found.map(|address| address.ip()).collect())
            }
        }
    }
}

/// The pod's own loopback, as HTTP routing has it: other host loopback
/// addresses are outside the pod.
fn is_pod_loopback(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn chunk(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_listener_gets_connections_until_it_is_dropped() {
        let ports = Ports::default();
        let listener = ports.listen("pod-a", 7000, 4).unwrap();
        assert_eq!(ports.bind("pod-a", 7000), Err(ErrorCode::AddressInUse));
        assert_eq!(
            ports.bind("pod-b", 7000),
            Ok(7000),
            "another pod's port space"
        );
        assert!(matches!(
            ports.listen("pod-a", 7000, 4),
            Err(ErrorCode::AddressInUse)
        ));

        let ours = ports
            .deliver("pod-a", address("10.1.0.2:7000"), address("10.1.0.3:50000"))
            .unwrap();
        let mut listener = listener;
        let mut theirs = listener.connections.recv().await.unwrap();
        assert_eq!(theirs.remote, address("10.1.0.3:50000"));
        ours.outgoing.send(chunk("ping")).await.unwrap();
        assert_eq!(theirs.duplex.incoming.recv().await.unwrap(), chunk("ping"));
        drop(ours.outgoing);
        assert_eq!(theirs.duplex.incoming.recv().await, None, "end of stream");

        drop(listener);
        assert!(matches!(
            ports.deliver("pod-a", address("10.1.0.2:7000"), address("10.1.0.3:50001")),
            Err(ErrorCode::ConnectionRefused)
        ));
        assert_eq!(ports.bind("pod-a", 7000), Ok(7000), "free again");
    }

    #[tokio::test]
    async fn a_full_backlog_refuses() {
        let ports = Ports::default();
        let _listener = ports.listen("pod-a", 80, 1).unwrap();
        let to = address("10.1.0.2:80");
        let _first = ports
            .deliver("pod-a", to, address("10.1.0.3:50000"))
            .unwrap();
        assert!(matches!(
            ports.deliver("pod-a", to, address("10.1.0.3:50001")),
            Err(ErrorCode::ConnectionRefused)
        ));
    }

    #[test]
    fn ephemeral_ports_skip_listening_ones() {
        let ports = Ports::default();
        let first = ports.bind("pod-a", 0).unwrap();
        assert!(EPHEMERAL_PORTS.contains(&first));
        let _listener = ports.listen("pod-a", first + 1, 1).unwrap();
        let second = ports.bind("pod-a", 0).unwrap();
        assert_ne!(second, first + 1);
        assert!(EPHEMERAL_PORTS.contains(&second));
    }

    #[tokio::test]
    async fn bridge_carries_both_ways_and_ends_streams() {
        let (near, far) = tokio::io::duplex(1024);
        let (far_read, far_write) = tokio::io::split(far);
        let (mut ours, theirs) = Duplex::pair();
        bridge(far_read, far_write, theirs);
        let (mut near_read, mut near_write) = tokio::io::split(near);
        near_write.write_all(b"hello").await.unwrap();
        assert_eq!(ours.incoming.recv().await.unwrap(), chunk("hello"));
        ours.outgoing.send(chunk("back")).await.unwrap();
        drop(ours.outgoing);
        let mut answer = String::new();
        near_read.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "back");
    }
}
