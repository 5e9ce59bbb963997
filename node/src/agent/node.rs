//! The agent's Node object: registration (create, or update after a
//! restart) and the status heartbeat that keeps its Ready condition and
//! heartbeat times current.
//!
//! This module knows what a Node says about this machine; it knows nothing
//! of pods, and liveness is told by the lease (`lease.rs`), not by it.

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;

use super::AgentConfig;
use super::error::{Result, call};
use super::metrics::{ErrorKind, Metrics};

/// The wasmtime version the node runs pods with, reported in nodeInfo. The
/// workspace pins wasmtime to exactly this version; a unit test keeps the
/// two in step.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The architecture and operating system label values of a Flotilla node:
/// pods run as `wasm32` guests of WASI, whatever the host is, so manifests
/// select Wasm nodes with `kubernetes.io/arch: wasm32`.
pub const NODE_ARCH: &str = "wasm32";
/// See [`NODE_ARCH`].
pub const NODE_OS: &str = "wasi";

/// Registration attempts before the agent gives up starting. With the
/// back-off below they span about half a minute: long enough for a server
/// started at the same moment to elect a leader.
const REGISTER_ATTEMPTS_MAX: u32 = 6;

/// The labels a node carries: Kubernetes' well-known node labels.
pub fn labels(config: &AgentConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.hostname.clone()),
        ("kubernetes.io/arch".to_owned(), NODE_ARCH.to_owned()),
        ("kubernetes.io/os".to_owned(), NODE_OS.to_owned()),
    ])
}

/// How the API server reaches the kubelet endpoint: over HTTPS once the
/// node has a certificate (an annotation, as Kubernetes' kubelets always
/// serve HTTPS and have no field to say otherwise).
fn annotations(config: &AgentConfig) -> BTreeMap<String, String> {
    let scheme = if config.kubelet_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut annotations = BTreeMap::from([(
        super::tls::KUBELET_SCHEME_ANNOTATION.to_owned(),
        scheme.to_owned(),
    )]);
    // Where other nodes' routers reach this one's pods.
    if let Some(port) = config.mesh_port {
        annotations.insert(
            crate::net::MESH_PORT_ANNOTATION.to_owned(),
            port.to_string(),
        );
    }
    annotations
}

/// The node's status as of `now`; it has been ready since `ready_since`.
pub fn status(config: &AgentConfig, ready_since: Timestamp, now: Timestamp) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), cpu_quantity(config.capacity.cpu_millis)),
        (
            "memory".to_owned(),
            memory_quantity(config.capacity.memory_bytes),
        ),
        (
            "pods".to_owned(),
            Quantity(config.capacity.pods.to_string()),
        ),
    ]);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    NodeStatus {
        // Nothing is reserved for the system yet: the agent's own use is small
        // beside the pods', and limits are enforced inside each sandbox.
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: config.hostname.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.kubelet_listen.port()),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: NODE_ARCH.to_owned(),
            operating_system: NODE_OS.to_owned(),
            container_runtime_version: format!("wasmtime://{WASMTIME_VERSION}"),
            kubelet_version: format!("flotilla-v{}", env!("CARGO_PKG_VERSION")),
            os_image: format!("Flotilla {}", env!("CARGO_PKG_VERSION")),
            ..NodeSystemInfo::default()
        }),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "flotilla agent is posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "limits are enforced inside each sandbox",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "flotilla agent has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "pods are not processes",
            ),
        ]),
        ..NodeStatus::default()
    }
}

/// `2000` millicores is `2`; `1500` is `1500m`.
fn cpu_quantity(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Memory in kibibytes when whole, as kubelet reports it.
fn memory_quantity(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1024) {
        Quantity(format!("{}Ki", bytes / 1024))
    } else {
        Quantity(bytes.to_string())
    }
}

/// Registers the node, retrying with back-off while the API is not there
/// yet; returns the Node as stored (its uid owns the lease).
pub async fn register(
    nodes: &Api<Node>,
    config: &AgentConfig,
    ready_since: Timestamp,
) -> Result<Node> {
    let mut attempt = 0;
    loop {
        match register_once(nodes, config, ready_since).await {
            Ok(node) => return Ok(node),
            Err(error) if attempt + 1 < REGISTER_ATTEMPTS_MAX => {
                attempt += 1;
                let delay = config.retry.delay(attempt);
                tracing::warn!(%error, attempt, ?delay, "node registration failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Creates the Node, or takes over the one a previous run of this agent
/// left (its labels are set again; labels others added stay), then writes
/// its status.
async fn register_once(
    nodes: &Api<Node>,
    config: &AgentConfig,
    ready_since: Timestamp,
) -> Result<Node> {
    let name = config.node_name.as_str();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels(config)),
            annotations: Some(annotations(config)),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let object = format!("node {name}");
    match call(
        "create",
        &object,
        nodes.create(&PostParams::default(), &node),
    )
    .await
    {
        Ok(_) => tracing::info!(node = name, "node registered"),
        Err(error) if error.api_code() == Some(409) => {
            let patch = json!({ "metadata": {
                "labels": labels(config),
                "annotations": annotations(config),
            } });
            call(
                "update",
                &object,
                nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
            tracing::info!(node = name, "node exists already; updated it");
        }
        Err(error) => return Err(error),
    }
    write_status(nodes, config, ready_since).await
}

/// Writes the node's status with fresh heartbeat times.
async fn write_status(
    nodes: &Api<Node>,
    config: &AgentConfig,
    ready_since: Timestamp,
) -> Result<Node> {
    let status = status(config, ready_since, Timestamp::now());
    let patch = json!({ "status": status });
    call(
        "write the status of",
        format!("node {}", config.node_name),
        nodes.patch_status(
            &config.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await
}

/// Keeps the node's status current: one write every
/// `node_status_interval`. A failed write is retried at the next tick,
/// which bounds the retries; the lease tells liveness meanwhile.
pub async fn heartbeat(
    nodes: Api<Node>,
    config: AgentConfig,
    ready_since: Timestamp,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut ticker = tokio::time::interval(config.node_status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and registration has just written the status.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match write_status(&nodes, &config, ready_since).await {
            Ok(_) => metrics.node_status_written(),
            Err(error) => {
                metrics.error(ErrorKind::NodeStatus);
                tracing::warn!(%error, "node status heartbeat failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubelet_writes_them() {
        assert_eq!(cpu_quantity(2000).0, "2");
        assert_eq!(cpu_quantity(1500).0, "1500m");
        assert_eq!(memory_quantity(16 * 1024 * 1024).0, "16384Ki");
        assert_eq!(memory_quantity(1000).0, "1000");
    }

    #[test]
    fn reported_wasmtime_version_is_the_pinned_one() {
        let workspace = include_str!("../../../Cargo.toml");
        let pin = format!("wasmtime = \"={WASMTIME_VERSION}\"");
        assert!(
            workspace.contains(&pin),
            "the workspace no longer pins {pin}; update WASMTIME_VERSION"
        );
    }
}
