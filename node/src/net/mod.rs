//! The pod network: virtual, inside the agent. No CNI plugin, no iptables,
//! no kube-proxy: a guest's outgoing `wasi:http` request is routed here by
//! its authority, and so is traffic arriving at the node's NodePorts or
//! over the mesh from other nodes.
//!
//! - `table.rs`: [`RoutingTable`], Services, their endpoints and the
//!   Nodes, fed by the agent's watches;
//! - `resolve.rs`: an authority to a [`Destination`] (sibling, pod,
//!   Service, outside), as cluster DNS would resolve it;
//! - `mesh.rs`: [`Mesh`], QUIC between nodes with node certificates;
//! - `nodeport.rs`: a listener on the node's address per Service nodePort;
//! - `tcp.rs`: guests' raw TCP (`wasi:sockets`): each pod's ports, and
//!   connections to pods, ClusterIPs and (with egress) outside;
//! - `metrics.rs`: the counters the agent's `/metrics` shows.
//!
//! [`PodNetwork`] ties them together: requests to pods on this node are
//! served in-process by the [`NodeRuntime`], never leaving the process;
//! requests to pods elsewhere go over the mesh. It knows nothing of the API
//! server: the agent feeds its table.

mod affinity;
mod egress;
mod ingress;
pub(crate) mod listen;
mod mesh;
mod metrics;
mod nodeport;
mod policy;
mod resolve;
mod table;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Body;
use tracing::Instrument;

pub use egress::{AllowList, EGRESS_ALLOW_ANNOTATION};
pub use ingress::{Backend, BackendPort, INGRESS_CLASS, Ingresses};
pub use mesh::{Inbound, InboundHandler, MESH_ALPN, Mesh, MeshError, MeshTls, TcpHandler};
pub use metrics::NetworkMetrics;
pub use policy::{Denied, Direction, PodIdentity, Policies};
pub use resolve::{CLUSTER_DOMAIN, Destination, ResolveError, resolve};
pub use table::{
    EndpointRoute, Locality, MESH_PORT_ANNOTATION, NodeRoute, RoutingTable, SERVICE_NAME_LABEL,
    ServiceKind, ServicePortRoute, ServiceRoute,
};

use crate::sandbox::{OutgoingFuture, OutgoingHttp};
use crate::workload::{RequestBody, ResponseBody};
use crate::{NodeRuntime, RequestOptions, WeakNodeRuntime};

/// A node the mesh could not reach is skipped this long when another
/// endpoint is ready, then tried again: how a node that recovered comes
/// back into the rotation.
const UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(5);
/// Further endpoints an idempotent request is sent to when the one chosen
/// could not be reached.
const RETRIES_MAX: usize = 2;

/// Why a request could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("request has no host to route by")]
    NoHost,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("Service {namespace}/{name} has no port {port}")]
    NoServicePort {
        namespace: String,
        name: String,
        port: u16,
    },
    #[error("Service {namespace}/{name} has no ready endpoint for port {port}")]
    NoEndpoints {
        namespace: String,
        name: String,
        port: u16,
    },
    #[error("no pod at {address}")]
    NoPod { address: SocketAddr },
    #[error("pod {address} is on node {node}, which the mesh cannot reach: {reason}")]
    NodeUnreachable {
        address: SocketAddr,
        node: String,
        reason: String,
    },
    #[error(
        "request to {host}:{port} denied: traffic leaving the cluster needs an egress allowance"
    )]
    EgressDenied { host: String, port: u16 },
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Pod(#[from] crate::Error),
    /// The node serving `address` did not take the request (the pod is
    /// gone or stopping there), so it may go to another endpoint.
    #[error("pod {address} did not take the request: {reason}")]
    Refused { address: SocketAddr, reason: String },
    #[error("no Ingress rule matches {host}{path}, and there is no default backend")]
    NoIngressRule { host: String, path: String },
    #[error("Ingress backend Service {namespace}/{name} not found")]
    NoBackendService { namespace: String, name: String },
    #[error(transparent)]
    PolicyDenied(#[from] Denied),
    #[error("request to {host}:{port} outside the cluster failed: {error}")]
    Egress {
        host: String,
        port: u16,
        error: wasmtime_wasi_http::Error,
    },
    #[error("the node is stopping")]
    Stopped,
}

/// The response header a node sets when it answers a request it did not
/// serve (its pod is gone or not taking requests), so the sending node may
/// try another endpoint.
const REFUSED_HEADER: &str = "flotilla-refused";

impl RouteError {
    /// Whether the request was never served, so sending it to another
    /// endpoint cannot run it twice.
    fn not_served(&self) -> bool {
        match self {
            RouteError::Mesh(error) => error.not_sent(),
            RouteError::NoPod { .. }
            | RouteError::Refused { .. }
            | RouteError::Pod(crate::Error::PodNotFound { .. })
            | RouteError::Pod(crate::Error::NoService { .. })
            | RouteError::Pod(crate::Error::ServiceUnavailable { .. }) => true,
            _ => false,
        }
    }

    /// Whether the connection to the serving node was lost mid-request
    /// (it may have been served, so only an idempotent request may go
    /// again).
    fn connection_lost(&self) -> bool {
        matches!(self, RouteError::Mesh(error) if error.connection_lost())
    }

    /// What the calling guest sees (`wasi:http`'s error codes).
    fn into_wasi(self) -> wasmtime_wasi_http::Error {
        use wasmtime_wasi_http::Error as E;
        match self {
            RouteError::Egress { error, .. } => error,
            RouteError::NoHost => E::HttpRequestUriInvalid,
            RouteError::Resolve(_) => E::DnsError {
                rcode: Some("NXDOMAIN".to_owned()),
                info_code: None,
            },
            RouteError::NoServicePort { .. } | RouteError::NoPod { .. } => E::ConnectionRefused,
            RouteError::NoEndpoints { .. } | RouteError::NodeUnreachable { .. } => {
                E::DestinationUnavailable
            }
            RouteError::EgressDenied { .. } | RouteError::PolicyDenied(_) => E::HttpRequestDenied,
            RouteError::Mesh(MeshError::Timeout { .. }) => E::HttpResponseTimeout,
            RouteError::Mesh(_) => E::ConnectionTerminated,
            RouteError::Pod(crate::Error::RequestTimeout { .. }) => E::HttpResponseTimeout,
            RouteError::Pod(crate::Error::NoService { .. }) => E::ConnectionRefused,
            RouteError::Pod(crate::Error::ServiceUnavailable { .. }) => E::DestinationUnavailable,
            RouteError::Pod(error) => E::InternalError(Some(error.to_string())),
            RouteError::Refused { .. } => E::DestinationUnavailable,
            RouteError::NoIngressRule { .. } | RouteError::NoBackendService { .. } => {
                E::DestinationNotFound
            }
            RouteError::Stopped => E::ConnectionTerminated,
        }
    }

    /// What an HTTP client at a NodePort, or a node across the mesh, sees.
    fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            RouteError::NoHost => S::BAD_REQUEST,
            RouteError::Resolve(_)
            | RouteError::NoPod { .. }
            | RouteError::NoIngressRule { .. } => S::NOT_FOUND,
            RouteError::EgressDenied { .. } | RouteError::PolicyDenied(_) => S::FORBIDDEN,
            RouteError::NoServicePort { .. }
            | RouteError::NoBackendService { .. }
            | RouteError::NoEndpoints { .. }
            | RouteError::Refused { .. }
            | RouteError::Stopped
            | RouteError::Pod(crate::Error::ServiceUnavailable { .. })
            | RouteError::Pod(crate::Error::NoService { .. }) => S::SERVICE_UNAVAILABLE,
            RouteError::Mesh(MeshError::Timeout { .. })
            | RouteError::Pod(crate::Error::RequestTimeout { .. }) => S::GATEWAY_TIMEOUT,
            RouteError::NodeUnreachable { .. }
            | RouteError::Mesh(_)
            | RouteError::Pod(_)
            | RouteError::Egress { .. } => S::BAD_GATEWAY,
        }
    }

    /// This error as a response with a one-line text body.
    pub fn into_response(self) -> http::Response<ResponseBody> {
        mesh::text_response(self.status(), format!("{self}\n"))
    }
}

/// The node's pod network. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct PodNetwork {
    inner: Arc<NetworkInner>,
}

struct NetworkInner {
    node_name: String,
    table: RoutingTable,
    runtime: OnceLock<WeakNodeRuntime>,
    mesh: OnceLock<Mesh>,
    metrics: NetworkMetrics,
    /// Nodes the mesh failed to reach, and until when they are skipped.
    unreachable: Mutex<HashMap<String, Instant>>,
    /// Which endpoint each client of a ClientIP-affinity Service sticks to.
    affinity: affinity::Affinity,
    /// Guests' listening TCP ports.
    ports: tcp::Ports,
}

impl PodNetwork {
    /// The network of the node `node_name`, with an empty table.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(NetworkInner {
                node_name: node_name.into(),
                table: RoutingTable::default(),
                runtime: OnceLock::new(),
                mesh: OnceLock::new(),
                metrics: NetworkMetrics::default(),
                unreachable: Mutex::new(HashMap::new()),
                affinity: affinity::Affinity::default(),
                ports: tcp::Ports::default(),
            }),
        }
    }

    /// The routing table, for whoever keeps it current.
    pub fn table(&self) -> &RoutingTable {
        &self.inner.table
    }

    /// The network's counters.
    pub fn metrics(&self) -> &NetworkMetrics {
        &self.inner.metrics
    }

    /// The runtime whose pods this network serves. The runtime holds the
    /// network (as its guests' carrier), so the network holds it weakly.
    pub fn attach_runtime(&self, runtime: &NodeRuntime) {
        if self.inner.runtime.set(runtime.downgrade()).is_err() {
            tracing::warn!("the pod network already has a runtime");
        }
    }

    /// Joins the mesh: listens at `listen` (UDP) with the node's
    /// certificate. Returns the address bound.
    pub fn start_mesh(&self, listen: SocketAddr, tls: MeshTls) -> Result<SocketAddr, MeshError> {
        let network = self.clone();
        let handler: mesh::InboundHandler = Arc::new(move |target, source, request| {
            let network = network.clone();
            Box::pin(async move { network.serve_inbound(target, source, request).await })
        });
        let network = self.clone();
        let tcp: mesh::TcpHandler =
            Arc::new(move |target, source| network.accept_from_mesh(target, source));
        let inbound = mesh::Inbound {
            http: handler,
            tcp: Some(tcp),
        };
        let mesh = Mesh::bind(listen, tls, inbound)?;
        let address = mesh.local_addr().unwrap_or(listen);
        if self.inner.mesh.set(mesh).is_err() {
            return Err(MeshError::Setup {
                reason: "the node is in the mesh already".to_owned(),
            });
        }
        tracing::info!(%address, "mesh listening");
        Ok(address)
    }

    /// Closes the mesh endpoint, if there is one.
    pub fn close(&self) {
        if let Some(mesh) = self.inner.mesh.get() {
            mesh.close();
        }
    }

    /// Serves every Service nodePort on `address` until the returned
    /// future is dropped.
    pub fn serve_node_ports(
        &self,
        address: IpAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        nodeport::run(self.clone(), address)
    }

    /// Binds the Ingress gateway: plain HTTP at `http`, HTTPS (with the
    /// Ingresses' certificates, by SNI) at `https`; an address that cannot
    /// be bound is skipped with a warning. Returns the addresses bound and
    /// the future that serves them until dropped.
    pub async fn bind_ingress(
        &self,
        http: Option<SocketAddr>,
        https: Option<SocketAddr>,
    ) -> std::io::Result<(
        Vec<SocketAddr>,
        impl std::future::Future<Output = ()> + Send + 'static,
    )> {
        let mut bound = Vec::new();
        let mut servers = Vec::new();
        for (address, secure) in [(http, false), (https, true)] {
            let Some(address) = address else {
                continue;
            };
            // A gateway port taken (or privileged, for a user without the
            // right) leaves the node running without it, as a NodePort does.
            let listener = match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%address, %error, "cannot serve Ingresses here");
                    continue;
                }
            };
            bound.push(listener.local_addr()?);
            let tls = secure.then(|| self.ingress_acceptor()).transpose()?;
            let network = self.clone();
            let handler: listen::Handler = Arc::new(move |client, request| {
                let network = network.clone();
                Box::pin(async move { network.serve_ingress(client, request).await })
            });
            let span = tracing::info_span!("ingress", address = %bound[bound.len() - 1], secure);
            servers.push(listen::serve(listener, tls, handler).instrument(span));
        }
        Ok((bound, async move {
            futures::future::join_all(servers).await;
        }))
    }

    fn ingress_acceptor(&self) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        let resolver = Arc::new(ingress::SniResolver(self.inner.table.ingresses().clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Serves a request that arrived at the Ingress gateway from `client`.
    async fn serve_ingress(
        &self,
        client: SocketAddr,
        request: http::Request<RequestBody>,
    ) -> http::Response<ResponseBody> {
        let served = async {
            let runtime = self.runtime()?;
            let host = authority(&request)
                .map(|(host, _)| host)
                .unwrap_or_default();
            let path = request.uri().path().to_owned();
            let backend = self
                .inner
                .table
                .ingresses()
                .route(&host, &path)
                .ok_or_else(|| RouteError::NoIngressRule {
                    host: host.clone(),
                    path: path.clone(),
                })?;
            let route = self
                .inner
                .table
                .service(&backend.namespace, &backend.service)
                .ok_or_else(|| RouteError::NoBackendService {
                    namespace: backend.namespace.clone(),
                    name: backend.service.clone(),
                })?;
            let port = match &backend.port {
                BackendPort::Number(number) => *number,
                BackendPort::Name(name) => route
                    .ports
                    .iter()
                    .find(|port| port.name == *name)
                    .map(|port| port.port)
                    .ok_or_else(|| RouteError::NoBackendService {
                        namespace: backend.namespace.clone(),
                        name: format!("{} (port {name})", backend.service),
                    })?,
            };
            self.to_service(&runtime, &route, port, Some(client.ip()), request)
                .await
        };
        served.await.unwrap_or_else(|error| {
            tracing::debug!(%error, "Ingress request failed");
            self.inner.metrics.error();
            error.into_response()
        })
    }

    fn runtime(&self) -> Result<NodeRuntime, RouteError> {
        self.inner
            .runtime
            .get()
            .and_then(WeakNodeRuntime::upgrade)
            .ok_or(RouteError::Stopped)
    }

    /// Routes a request a guest of the pod `pod_uid` sent.
    pub async fn send_from_pod(
        &self,
        pod_uid: &str,
        request: http::Request<RequestBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<ResponseBody>, RouteError> {
        let runtime = self.runtime()?;
        let caller = runtime.pod(pod_uid);
        let namespace = caller
            .as_ref()
            .map_or_else(|| "default".to_owned(), |pod| pod.namespace().to_owned());
        let source = caller.as_ref().and_then(|pod| pod.pod_ip());
        let (host, port) = authority(&request).ok_or(RouteError::NoHost)?;
        let destination = resolve(&self.inner.table, &namespace, &host, port)?;
        match destination {
            Destination::Sibling { port } => {
                self.inner.metrics.local();
                Ok(runtime.serve_http(pod_uid, port, request).await?)
            }
            Destination::Pod { ip, port } => {
                self.to_pod(&runtime, SocketAddr::new(ip, port), source, request)
                    .await
            }
            Destination::Service { route, port } => {
                self.to_service(&runtime, &route, port, source, request)
                    .await
            }
            Destination::External { host, port } => {
                let policies = self.inner.table.policies();
                if !policies.egress_allows(&namespace, source, &host, port) {
                    self.inner.metrics.denied("egress");
                    return Err(RouteError::EgressDenied { host, port });
                }
                self.inner.metrics.egress();
                egress::send(&host, port, request, options)
                    .await
                    .map_err(|error| RouteError::Egress { host, port, error })
            }
        }
    }

    /// Sends a request to a Service's `port`, balanced over its ready
    /// endpoints; `client` is the caller's address (for ClientIP affinity).
    async fn to_service(
        &self,
        runtime: &NodeRuntime,
        route: &ServiceRoute,
        port: u16,
        client: Option<IpAddr>,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<ResponseBody>, RouteError> {
        // A headless Service's name stands for its pods: the port is theirs.
        let port_name = if route.is_headless() {
            None
        } else {
            let service_port = route.port(port).ok_or_else(|| RouteError::NoServicePort {
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                port,
            })?;
            Some(service_port.name.as_str())
        };
        let replay = replayable(&request);
        let mut request = Some(request);
        let mut tried = Vec::new();
        // A retry picks from the table as it is now: the endpoints may have
        // changed while the failed attempt waited (a dead node's pods gone,
        // their replacements ready).
        let mut current: Option<Arc<ServiceRoute>> = None;
        loop {
            let route = current.as_deref().unwrap_or(route);
            let (endpoint, target_port) = self
                .pick(route, port_name, port, client, &tried)
                .ok_or_else(|| RouteError::NoEndpoints {
                    namespace: route.namespace.clone(),
                    name: route.name.clone(),
                    port,
                })?;
            let attempt = match (request.take(), &replay) {
                (Some(request), _) => request,
                (None, Some(replay)) => replay.request(),
                (None, None) => return Err(RouteError::Stopped),
            };
            let target = SocketAddr::new(endpoint.ip, target_port);
            match self.to_pod(runtime, target, client, attempt).await {
                // Only requests that can be replayed (idempotent, no body)
                // go again: one that was not served, or whose connection
                // was lost, which for an idempotent request is as safe.
                Err(error)
                    if (error.not_served() || error.connection_lost())
                        && replay.is_some()
                        && tried.len() < RETRIES_MAX =>
                {
                    tracing::info!(%error, %target, "endpoint did not answer; trying another");
                    self.inner.metrics.retry();
                    tried.push(endpoint.ip);
                    current = self.inner.table.service(&route.namespace, &route.name);
                }
                outcome => return outcome,
            }
        }
    }

    /// A ready endpoint of `route` for the port named `port_name` (or, for
    /// a headless Service, `port` itself), not among `tried`.
    fn pick(
        &self,
        route: &ServiceRoute,
        port_name: Option<&str>,
        port: u16,
        client: Option<IpAddr>,
        tried: &[IpAddr],
    ) -> Option<(EndpointRoute, u16)> {
        let target_port = |endpoint: &EndpointRoute| match port_name {
            Some(name) => endpoint.port(name),
            None => Some(port),
        };
        let candidates: Vec<&EndpointRoute> = route
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.ready && !tried.contains(&endpoint.ip))
            .filter(|endpoint| target_port(endpoint).is_some())
            .collect();
        let here = |endpoint: &&EndpointRoute| {
            endpoint.node.as_deref() == Some(self.inner.node_name.as_str())
        };
        let pool: Vec<&EndpointRoute> = match route.locality {
            Locality::Any => candidates,
            Locality::SameNodeOnly => candidates.into_iter().filter(here).collect(),
            Locality::PreferSameNode => {
                let local: Vec<_> = candidates.iter().copied().filter(here).collect();
                if local.is_empty() { candidates } else { local }
            }
        };
        // Endpoints on nodes the mesh just failed to reach wait out their
        // cool-down, unless nothing else is left.
        let reachable: Vec<&EndpointRoute> = pool
            .iter()
            .copied()
            .filter(|endpoint| !self.is_unreachable(endpoint.node.as_deref()))
            .collect();
        let pool = if reachable.is_empty() {
            pool
        } else {
            reachable
        };
        if pool.is_empty() {
            return None;
        }
        let sticky = client.zip(route.client_ip_affinity);
        let remembered = sticky.and_then(|(client, _)| {
            let chosen = self.inner.affinity.get(route, client)?;
            pool.iter().copied().find(|endpoint| endpoint.ip == chosen)
        });
        let endpoint = remembered.unwrap_or_else(|| pool[route.next_index() % pool.len()]);
        if let Some((client, timeout)) = sticky {
            self.inner
                .affinity
                .remember(route, client, endpoint.ip, timeout);
        }
        self.inner.metrics.picked(here(&endpoint));
        Some((endpoint.clone(), target_port(endpoint)?))
    }

    fn is_unreachable(&self, node: Option<&str>) -> bool {
        let Some(node) = node else {
            return false;
        };
        let mut unreachable = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match unreachable.get(node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                unreachable.remove(node);
                false
            }
            None => false,
        }
    }

    fn mark_unreachable(&self, node: &str) {
        self.inner
            .unreachable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_owned(), Instant::now() + UNREACHABLE_COOLDOWN);
    }

    /// Sends a request to the pod at `target`: in-process when it runs
    /// here, over the mesh when it runs on another node.
    async fn to_pod(
        &self,
        runtime: &NodeRuntime,
        target: SocketAddr,
        source: Option<IpAddr>,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<ResponseBody>, RouteError> {
        if let Err(denied) = self.inner.table.policies().check(source, target) {
            self.inner.metrics.denied("policy");
            return Err(denied.into());
        }
        if let Some(uid) = runtime.pod_at(target.ip()) {
            self.inner.metrics.local();
            return Ok(runtime.serve_http(&uid, target.port(), request).await?);
        }
        let node = self
            .inner
            .table
            .node_of_pod(target.ip())
            .filter(|node| node.name != self.inner.node_name)
            .ok_or(RouteError::NoPod { address: target })?;
        let unreachable = |reason: &str| RouteError::NodeUnreachable {
            address: target,
            node: node.name.clone(),
            reason: reason.to_owned(),
        };
        let mesh =
            self.inner.mesh.get().ok_or_else(|| {
                unreachable("this node has no certificate, so it is not in the mesh")
            })?;
        let address = node
            .mesh_address()
            .ok_or_else(|| unreachable("it does not advertise a mesh address"))?;
        self.inner.metrics.mesh();
        let sent = mesh
            .send(&node.name, address, target, source, request)
            .instrument(tracing::debug_span!("mesh_send", node = %node.name, %target))
            .await;
        if let Err(error) = &sent
            && (error.not_sent() || error.connection_lost())
        {
            self.mark_unreachable(&node.name);
        }
        let response = sent?;
        if let Some(reason) = response.headers().get(REFUSED_HEADER) {
            return Err(RouteError::Refused {
                address: target,
                reason: String::from_utf8_lossy(reason.as_bytes()).into_owned(),
            });
        }
        Ok(response)
    }

    /// Serves a request that arrived over the mesh for a pod on this node.
    async fn serve_inbound(
        &self,
        target: SocketAddr,
        _source: Option<IpAddr>,
        request: http::Request<RequestBody>,
    ) -> http::Response<ResponseBody> {
        self.inner.metrics.inbound();
        let served = async {
            let runtime = self.runtime()?;
            let uid = runtime
                .pod_at(target.ip())
                .ok_or(RouteError::NoPod { address: target })?;
            Ok::<_, RouteError>(runtime.serve_http(&uid, target.port(), request).await?)
        };
        served.await.unwrap_or_else(|error| {
            self.inner.metrics.error();
            let refused = error.not_served().then(|| error.to_string());
            let mut response = error.into_response();
            if let Some(reason) = refused.and_then(|r| http::HeaderValue::from_str(&r).ok()) {
                response.headers_mut().insert(REFUSED_HEADER, reason);
            }
            response
        })
    }

    /// Serves a request that arrived at this node's `node_port` from
    /// `client`.
    async fn serve_node_port(
        &self,
        node_port: u16,
        client: SocketAddr,
        request: http::Request<RequestBody>,
    ) -> http::Response<ResponseBody> {
        let served = async {
            let runtime = self.runtime()?;
            let (route, port) =
                self.inner
                    .table
                    .service_by_node_port(node_port)
                    .ok_or(RouteError::NoPod {
                        address: SocketAddr::new(client.ip(), node_port),
                    })?;
            self.to_service(&runtime, &route, port, Some(client.ip()), request)
                .await
        };
        served.await.unwrap_or_else(|error| {
            tracing::debug!(%error, node_port, "NodePort request failed");
            self.inner.metrics.error();
            error.into_response()
        })
    }
}

impl OutgoingHttp for PodNetwork {
    fn send(
        &self,
        pod_uid: &str,
        request: http::Request<crate::WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingFuture {
        let network = self.clone();
        let pod_uid = pod_uid.to_owned();
        let span = tracing::debug_span!("route", pod = %pod_uid, uri = %request.uri());
        Box::pin(
            async move {
                network
                    .send_from_pod(&pod_uid, request, options)
                    .await
                    .map_err(|error| {
                        tracing::debug!(%error, "request not routed");
                        network.inner.metrics.error();
                        error.into_wasi()
                    })
            }
            .instrument(span),
        )
    }

    fn sockets(&self) -> Option<Arc<dyn crate::sockets::PodSockets>> {
        Some(Arc::new(self.clone()))
    }
}

/// The host and port a request is addressed to: its URI's authority, else
/// its Host header; the scheme's port when it names none.
fn authority<B>(request: &http::Request<B>) -> Option<(String, u16)> {
    let default_port = match request.uri().scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .parse()
            .ok()?,
    };
    Some((
        authority.host().to_owned(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

/// A request without a body can be sent again to another endpoint; this
/// keeps what is needed to.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    fn request(&self) -> http::Request<RequestBody> {
        let mut request = http::Request::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Idempotent requests with no body may be retried elsewhere (RFC 9110
/// §9.2.2); others are sent once.
fn replayable(request: &http::Request<RequestBody>) -> Option<Replay> {
    let idempotent = request.method().is_idempotent();
    (idempotent && request.body().is_end_stream()).then(|| Replay {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(affinity: bool, endpoints: &[&str]) -> PodNetwork {
        let network = PodNetwork::new("n1");
        let affinity = if affinity {
            "sessionAffinity: ClientIP, "
        } else {
            ""
        };
        let service = format!(
            "{{metadata: {{name: web, namespace: x}}, spec: {{clusterIP: 10.96.0.9, {affinity}ports: [{{port: 80}}]}}}}"
        );
        network
            .table()
            .upsert_service(&serde_yaml::from_str(&service).unwrap());
        let addresses = endpoints
            .iter()
            .map(|ip| format!("{{addresses: [{ip}], nodeName: n2}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let slice = format!(
            "{{metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}, addressType: IPv4, ports: [{{port: 8080}}], endpoints: [{addresses}]}}"
        );
        network
            .table()
            .upsert_slice(&serde_yaml::from_str(&slice).unwrap());
        network
    }

    fn pick(network: &PodNetwork, client: &str) -> String {
        let route = network.table().service("x", "web").unwrap();
        let client = client.parse().ok();
        let (endpoint, port) = network.pick(&route, Some(""), 80, client, &[]).unwrap();
        assert_eq!(port, 8080);
        endpoint.ip.to_string()
    }

    #[test]
    fn client_ip_affinity_keeps_a_client_on_its_endpoint_while_it_is_ready() {
        let endpoints = ["10.240.4.2", "10.240.4.3", "10.240.4.4"];
        let network = network(true, &endpoints);
        let first = pick(&network, "192.0.2.1");
        for _ in 0..5 {
            assert_eq!(pick(&network, "192.0.2.1"), first);
        }
        let others: std::collections::BTreeSet<String> = (2..8)
            .map(|client| pick(&network, &format!("192.0.2.{client}")))
            .collect();
        assert!(others.len() > 1, "new clients are spread: {others:?}");
        // Its endpoint gone, the client gets another and keeps that one.
        let left: Vec<&str> = endpoints.into_iter().filter(|ip| *ip != first).collect();
        let network_after = network.clone();
        let slice = format!(
            "{{metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}, addressType: IPv4, ports: [{{port: 8080}}], endpoints: [{{addresses: [{}]}}, {{addresses: [{}]}}]}}",
            left[0], left[1]
        );
        network_after
            .table()
            .upsert_slice(&serde_yaml::from_str(&slice).unwrap());
        let second = pick(&network_after, "192.0.2.1");
        assert_ne!(second, first);
        assert_eq!(pick(&network_after, "192.0.2.1"), second);
    }

    #[test]
    fn without_affinity_one_client_goes_round_the_endpoints() {
        let network = network(false, &["10.240.4.2", "10.240.4.3"]);
        let picks: Vec<String> = (0..4).map(|_| pick(&network, "192.0.2.1")).collect();
        assert_eq!(
            picks,
            ["10.240.4.2", "10.240.4.3", "10.240.4.2", "10.240.4.3"]
        );
    }
}
