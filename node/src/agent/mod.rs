//! The node agent (`flotilla agent`): the kubelet part of a node. It is a
//! client of the Kubernetes API, exactly as kubelet is, and never touches
//! the store. It
//! - registers the node and keeps its status current (`node.rs`);
//! - renews the node's lease in `kube-node-lease` (`lease.rs`);
//! - watches the pods bound to the node and runs them in the
//!   [`NodeRuntime`], writing their statuses back and confirming their
//!   deletion (`pods.rs`: the watch; `worker.rs`: one pod), each with an
//!   address from the Node's podCIDR (`ipam.rs`);
//! - serves container logs, health and metrics on a kubelet-style HTTP
//!   endpoint (`logs.rs`);
//! - gives its runtime the pods' modules: [`RegistrySource`] (`blobs.rs`)
//!   downloads them by digest from the API server's registry and caches
//!   them on disk;
//! - with a node certificate ([`KubeletTls`], `tls.rs`), serves HTTPS and
//!   renews the certificate before it expires (`renewal.rs`).
//!
//! The agent borrows its runtime: stopping the agent leaves the pods
//! running, and an agent started again on the same runtime adopts them (and
//! removes the ones the API deleted meanwhile). It knows nothing of how the
//! API server stores objects, and nothing of wasmtime beyond `NodeRuntime`.
//!
//! ```no_run
//! # async fn example() -> Result<(), flotilla_node::agent::AgentError> {
//! use std::sync::Arc;
//! use flotilla_node::agent::{Agent, AgentConfig, RegistrySource, client_from_kubeconfig};
//! use flotilla_node::{NodeConfig, NodeRuntime};
//!
//! let client = client_from_kubeconfig("/var/lib/flotilla/kubeconfig".as_ref()).await?;
//! let modules = RegistrySource::new(client.clone(), "/var/lib/flotilla/node/blobs")
//!     .expect("the blob directory can be created");
//! let runtime = NodeRuntime::new(NodeConfig::new("/var/lib/flotilla/node"), Arc::new(modules))
//!     .expect("the runtime starts");
//! let agent = Agent::start(AgentConfig::new("node-1")?, client, runtime).await?;
//! println!("logs at http://{}", agent.kubelet_address());
//! agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod blobs;
mod error;
mod host;
mod ipam;
mod lease;
mod logs;
mod metrics;
mod network;
mod node;
mod pods;
mod renewal;
mod tls;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use blobs::{BLOB_DOWNLOAD_TIMEOUT, REGISTRY_BLOBS_PATH, RegistrySource};
pub use error::{API_CALL_TIMEOUT_SECS, AgentError, Result};
pub use lease::{LEASE_DURATION_SECS, NODE_LEASE_NAMESPACE};
pub use node::{NODE_ARCH, NODE_OS, WASMTIME_VERSION};
pub use renewal::RENEWAL_PATH;
pub use tls::{CREDENTIALS_STEM, KUBELET_SCHEME_ANNOTATION, KubeletTls, Renewals};

use crate::net::PodNetwork;
use crate::{BackoffConfig, NodeRuntime};

/// The kubelet endpoint's address by default: kubelet's port, on loopback
/// because the endpoint has no TLS yet.
pub const KUBELET_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 10250);

/// Pods a node takes by default. Kubelet's 110 is set by container
/// overheads a Wasm pod does not have; memory is the real bound, and the
/// scheduler counts it.
pub const PODS_MAX_DEFAULT: u32 = 1000;

/// Lease renewal interval by default: kubelet's (a quarter of the lease's
/// 40 s duration).
pub const LEASE_RENEW_INTERVAL_SECS_DEFAULT: u64 = 10;

/// Node status heartbeat interval by default: kubelet's
/// `nodeStatusUpdateFrequency`.
pub const NODE_STATUS_INTERVAL_SECS_DEFAULT: u64 = 10;

/// What a node offers to pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// How many pods.
    pub pods: u32,
}

impl Capacity {
    /// The host's CPUs and memory, and [`PODS_MAX_DEFAULT`] pods.
    pub fn of_host() -> Result<Self> {
        Ok(Self {
            cpu_millis: host::cpu_millis(),
            memory_bytes: host::memory_bytes()?,
            pods: PODS_MAX_DEFAULT,
        })
    }
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name; its pods are those with this `spec.nodeName`.
    pub node_name: String,
    /// The `kubernetes.io/hostname` label and the Hostname address.
    pub hostname: String,
    /// The InternalIP address. The API server reaches the kubelet endpoint
    /// at this address and the endpoint's port.
    pub node_ip: IpAddr,
    /// Where the kubelet endpoint listens (port 0: any free port).
    pub kubelet_listen: SocketAddr,
    /// What the node offers.
    pub capacity: Capacity,
    /// How often the lease is renewed.
    pub lease_renew_interval: Duration,
    /// How often the node status is written.
    pub node_status_interval: Duration,
    /// Back-off between retries of a failed API call.
    pub retry: BackoffConfig,
    /// The node's certificate from the cluster: with it the kubelet
    /// endpoint serves HTTPS and may listen anywhere, and the node joins
    /// the pod network's mesh; without it, plain HTTP on loopback only,
    /// and no mesh. The agent renews it before it expires, through its
    /// API client, which must present it ([`KubeletTls::api_client`]).
    pub kubelet_tls: Option<KubeletTls>,
    /// Where the mesh listens (UDP; port 0: any free port). The Node
    /// advertises the port bound, at its InternalIP.
    pub mesh_listen: SocketAddr,
    /// Where NodePort listeners bind; the node's InternalIP by default
    /// (kube-proxy's `--nodeport-addresses`).
    pub node_port_address: Option<IpAddr>,
    /// Where the Ingress gateway serves plain HTTP; None: not at all.
    pub ingress_http_listen: Option<SocketAddr>,
    /// Where the Ingress gateway serves HTTPS, with the certificates of
    /// the Ingresses' TLS Secrets; None: not at all.
    pub ingress_https_listen: Option<SocketAddr>,
    /// The mesh port actually bound, once the mesh runs (for the Node's
    /// annotation).
    pub(crate) mesh_port: Option<u16>,
}

impl AgentConfig {
    /// Kubernetes' defaults for a node named `node_name` on this host.
    pub fn new(node_name: impl Into<String>) -> Result<Self> {
        Ok(Self {
            node_name: node_name.into(),
            hostname: host::hostname()?,
            node_ip: KUBELET_LISTEN_DEFAULT.ip(),
            kubelet_listen: KUBELET_LISTEN_DEFAULT,
            capacity: Capacity::of_host()?,
            lease_renew_interval: Duration::from_secs(LEASE_RENEW_INTERVAL_SECS_DEFAULT),
            node_status_interval: Duration::from_secs(NODE_STATUS_INTERVAL_SECS_DEFAULT),
            // From a fifth of a second, for a blip, to ten seconds, for an
            // API server that is restarting; never longer than a lease
            // interval, so a node reconnects before its lease lapses.
            retry: BackoffConfig {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                reset_after: Duration::from_secs(60),
            },
            kubelet_tls: None,
            // UDP beside the kubelet's TCP port: the two never clash.
            mesh_listen: KUBELET_LISTEN_DEFAULT,
            node_port_address: None,
            ingress_http_listen: None,
            ingress_https_listen: None,
            mesh_port: None,
        })
    }
}

/// The host's name, lowercased: the default node name.
pub fn hostname() -> Result<String> {
    host::hostname()
}

/// An API client from a kubeconfig file (its current context), as kubectl
/// would use it: HTTPS with a client certificate, or plain HTTP.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig_error = |source| AgentError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(kubeconfig_error)?;
    kube::Client::try_from(config).map_err(|source| AgentError::Client { source })
}

/// A running agent. Dropping it stops its tasks, as [`Agent::shutdown`]
/// does, without waiting for them.
pub struct Agent {
    kubelet_address: SocketAddr,
    mesh_port: Option<u16>,
    ingress_addresses: Vec<SocketAddr>,
    network: Option<PodNetwork>,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Binds the kubelet endpoint, registers the node (retrying while the
    /// API is not reachable yet), and starts the lease, heartbeat, pod and
    /// endpoint tasks.
    pub async fn start(
        config: AgentConfig,
        client: kube::Client,
        runtime: NodeRuntime,
    ) -> Result<Agent> {
        Self::start_with_network(config, client, runtime, None).await
    }

    /// Like [`Agent::start`], also routing the pod network: `network`
    /// (the carrier the runtime was created with) gets its table from the
    /// API, joins the mesh when the node has a certificate, and serves the
    /// Services' nodePorts on the node's address.
    #[tracing::instrument(skip_all, fields(node = %config.node_name))]
    pub async fn start_with_network(
        mut config: AgentConfig,
        client: kube::Client,
        runtime: NodeRuntime,
        network: Option<PodNetwork>,
    ) -> Result<Agent> {
        let acceptor = config
            .kubelet_tls
            .as_ref()
            .map(KubeletTls::acceptor)
            .transpose()?;
        if acceptor.is_none() && !config.kubelet_listen.ip().is_loopback() {
            return Err(AgentError::NotLoopback {
                address: config.kubelet_listen,
            });
        }
        let listener = tokio::net::TcpListener::bind(config.kubelet_listen)
            .await
            .map_err(|source| AgentError::Listen {
                address: config.kubelet_listen,
                source,
            })?;
        let kubelet_address = listener.local_addr().map_err(|source| AgentError::Listen {
            address: config.kubelet_listen,
            source,
        })?;
        // The Node advertises the port actually bound (port 0 in tests).
        config.kubelet_listen = kubelet_address;
        if let (Some(network), Some(tls)) = (&network, &config.kubelet_tls) {
            network.attach_runtime(&runtime);
            let address = network
                .start_mesh(config.mesh_listen, tls.mesh_tls()?)
                .map_err(|source| AgentError::Mesh { source })?;
            config.mesh_port = Some(address.port());
        } else if let Some(network) = &network {
            network.attach_runtime(&runtime);
            tracing::info!("no node certificate: pods reach only this node's pods");
        }

        let ready_since = Timestamp::now();
        let nodes: Api<Node> = Api::all(client.clone());
        let node = node::register(&nodes, &config, ready_since).await?;
        let node_uid = node.metadata.uid.unwrap_or_default();

        let metrics = Arc::new(metrics::Metrics::default());
        let directory = pods::PodDirectory::default();
        let mut tasks = JoinSet::new();
        let span = tracing::Span::current();
        tasks.spawn(
            node::heartbeat(nodes, config.clone(), ready_since, metrics.clone())
                .instrument(tracing::info_span!(parent: &span, "heartbeat")),
        );
        tasks.spawn(
            lease::LeaseKeeper::new(client.clone(), config.clone(), node_uid)
                .run(metrics.clone())
                .instrument(tracing::info_span!(parent: &span, "lease")),
        );
        let addresses = ipam::PodAddresses::default();
        tasks.spawn(
            ipam::follow_node(
                client.clone(),
                config.node_name.clone(),
                addresses.clone(),
                config.retry.clone(),
            )
            .instrument(tracing::info_span!(parent: &span, "pod_cidr")),
        );
        if let Some(tls) = &config.kubelet_tls {
            tasks.spawn(
                renewal::run(client.clone(), tls.clone())
                    .instrument(tracing::info_span!(parent: &span, "certificate_renewal")),
            );
        }
        let client_for_network = client.clone();
        let mut ingress_addresses = Vec::new();
        let context = Arc::new(pods::PodContext {
            client,
            addresses,
            runtime: runtime.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            directory: directory.clone(),
            network: network.clone(),
        });
        tasks.spawn(pods::run(context).instrument(tracing::info_span!(parent: &span, "pods")));
        if let Some(network) = &network {
            tasks.spawn(
                network::follow(
                    client_for_network,
                    network.table().clone(),
                    config.retry.clone(),
                )
                .instrument(tracing::info_span!(parent: &span, "network")),
            );
            let address = config.node_port_address.unwrap_or(config.node_ip);
            tasks.spawn(
                network
                    .serve_node_ports(address)
                    .instrument(tracing::info_span!(parent: &span, "node_ports", %address)),
            );
            let (bound, gateway) = network
                .bind_ingress(config.ingress_http_listen, config.ingress_https_listen)
                .await
                .map_err(|source| AgentError::Listen {
                    address: config
                        .ingress_http_listen
                        .or(config.ingress_https_listen)
                        .unwrap_or(config.kubelet_listen),
                    source,
                })?;
            ingress_addresses = bound;
            tasks.spawn(gateway);
        }
        let router = logs::router(logs::Endpoint {
            runtime,
            directory,
            metrics,
            network: network.clone(),
        });
        tasks.spawn(
            async move {
                match acceptor {
                    Some(acceptor) => tls::serve(listener, acceptor, router).await,
                    None => {
                        if let Err(error) = axum::serve(listener, router).await {
                            tracing::error!(%error, "kubelet endpoint failed");
                        }
                    }
                }
            }
            .instrument(
                tracing::info_span!(parent: &span, "kubelet_endpoint", address = %kubelet_address),
            ),
        );
        tracing::info!(%kubelet_address, "agent running");
        Ok(Agent {
            kubelet_address,
            mesh_port: config.mesh_port,
            ingress_addresses,
            network,
            tasks,
        })
    }

    /// Where the kubelet endpoint listens.
    pub fn kubelet_address(&self) -> SocketAddr {
        self.kubelet_address
    }

    /// The UDP port the node's mesh listens on, when it is in the mesh.
    pub fn mesh_port(&self) -> Option<u16> {
        self.mesh_port
    }

    /// Where the Ingress gateway listens: HTTP first, then HTTPS, for
    /// those configured.
    pub fn ingress_addresses(&self) -> &[SocketAddr] {
        &self.ingress_addresses
    }

    /// Stops the agent's tasks and leaves the mesh. The pods keep running
    /// in the runtime.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        if let Some(network) = &self.network {
            network.close();
        }
    }
}
