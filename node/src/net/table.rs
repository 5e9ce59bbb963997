//! The routing table: what every router on the node needs to know of the
//! cluster, kept current by the agent's watches (Services, EndpointSlices,
//! Nodes) and read on every request.
//!
//! Reads vastly outnumber writes, so writes rebuild one Service's route
//! and swap it in whole (`Arc<ServiceRoute>`); a request holds the route it
//! read for as long as it needs, without a lock. This module knows the
//! Kubernetes types it is fed; it does not know where they come from.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node annotation that says on which UDP port its mesh endpoint
/// listens, at the Node's InternalIP.
pub const MESH_PORT_ANNOTATION: &str = "flotilla.dev/mesh-port";

/// How long a client sticks to its endpoint under `sessionAffinity:
/// ClientIP` when the Service does not say: Kubernetes' default, 3 hours.
pub const AFFINITY_TIMEOUT_SECS_DEFAULT: u64 = 10_800;

/// `namespace/name` of an object.
pub type ObjectKey = (String, String);

/// How a Service is exposed (`spec.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// A DNS alias for another name (`spec.externalName`).
    ExternalName(String),
}

/// Which endpoints a Service's traffic from this node may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// Any ready endpoint, round-robin.
    Any,
    /// Ready endpoints on this node when there are any, else any
    /// (`trafficDistribution: PreferClose` or `PreferSameNode`).
    PreferSameNode,
    /// Only ready endpoints on this node (`internalTrafficPolicy: Local`).
    SameNodeOnly,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortRoute {
    /// The port's name ("" when the Service has one unnamed port); the
    /// endpoints' ports are matched by it.
    pub name: String,
    pub port: u16,
    pub node_port: Option<u16>,
    pub protocol: String,
}

/// One endpoint (a pod) of a Service, as its EndpointSlice lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRoute {
    pub ip: IpAddr,
    pub node: Option<String>,
    pub ready: bool,
    /// `hostname` (a StatefulSet pod's, for `pod.svc.ns` names).
    pub hostname: Option<String>,
    /// The pod's port for each of the Service's port names.
    pub ports: Vec<(String, u16)>,
}

impl EndpointRoute {
    /// This endpoint's port for the Service port named `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|(port_name, _)| port_name == name)
            .map(|(_, port)| *port)
    }
}

/// A Service with its endpoints: everything a router needs to send it a
/// request.
#[derive(Debug)]
pub struct ServiceRoute {
    pub namespace: String,
    pub name: String,
    /// None for a headless or ExternalName Service.
    pub cluster_ip: Option<IpAddr>,
    pub kind: ServiceKind,
    pub ports: Vec<ServicePortRoute>,
    /// `sessionAffinity: ClientIP`: how long a client sticks to the
    /// endpoint it was given (`sessionAffinityConfig.clientIP.timeoutSeconds`).
    pub client_ip_affinity: Option<std::time::Duration>,
    pub locality: Locality,
    pub endpoints: Vec<EndpointRoute>,
    /// Round-robin position over the endpoints.
    next: AtomicUsize,
}

impl ServiceRoute {
    /// The Service port `port` (the port clients address).
    pub fn port(&self, port: u16) -> Option<&ServicePortRoute> {
        self.ports.iter().find(|candidate| candidate.port == port)
    }

    /// The Service port whose `nodePort` is `node_port`.
    pub fn node_port(&self, node_port: u16) -> Option<&ServicePortRoute> {
        self.ports
            .iter()
            .find(|candidate| candidate.node_port == Some(node_port))
    }

    /// A headless Service: names resolve to the pods themselves.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.is_none() && !matches!(self.kind, ServiceKind::ExternalName(_))
    }

    /// The next round-robin position.
    pub fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A Node as the mesh sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    pub name: String,
    pub internal_ip: Option<IpAddr>,
    pub mesh_port: Option<u16>,
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeRoute {
    /// Where the node's mesh endpoint listens, when it says.
    pub fn mesh_address(&self) -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::new(
            self.internal_ip?,
            self.mesh_port?,
        ))
    }
}

/// A Service's spec, before its endpoints are joined in.
#[derive(Debug, Clone)]
struct ServiceSpec {
    cluster_ip: Option<IpAddr>,
    kind: ServiceKind,
    ports: Vec<ServicePortRoute>,
    client_ip_affinity: Option<std::time::Duration>,
    locality: Locality,
}

#[derive(Default)]
struct Tables {
    specs: HashMap<ObjectKey, ServiceSpec>,
    /// EndpointSlices by `namespace/slice name`: their Service and endpoints.
    slices: HashMap<ObjectKey, (String, Vec<EndpointRoute>)>,
    routes: HashMap<ObjectKey, Arc<ServiceRoute>>,
    by_cluster_ip: HashMap<IpAddr, ObjectKey>,
    by_node_port: HashMap<u16, ObjectKey>,
    /// LoadBalancer Services by their ports, which every node also serves
    /// (its address is the balancer's, as k3s's servicelb makes it).
    by_balancer_port: HashMap<u16, ObjectKey>,
    nodes: BTreeMap<String, NodeRoute>,
}

impl Tables {
    /// Rebuilds the route of `key` from its spec and slices.
    fn rebuild(&mut self, key: &ObjectKey) {
        if let Some(old) = self.routes.remove(key) {
            if let Some(ip) = old.cluster_ip
                && self.by_cluster_ip.get(&ip) == Some(key)
            {
                self.by_cluster_ip.remove(&ip);
            }
            for node_port in old.ports.iter().filter_map(|port| port.node_port) {
                if self.by_node_port.get(&node_port) == Some(key) {
                    self.by_node_port.remove(&node_port);
                }
            }
            for port in old.ports.iter().map(|port| port.port) {
                if self.by_balancer_port.get(&port) == Some(key) {
                    self.by_balancer_port.remove(&port);
                }
            }
        }
        let Some(spec) = self.specs.get(key) else {
            return;
        };
        let mut endpoints: Vec<EndpointRoute> = self
            .slices
            .iter()
            .filter(|((namespace, _), (service, _))| *namespace == key.0 && *service == key.1)
            .flat_map(|(_, (_, endpoints))| endpoints.iter().cloned())
            .collect();
        // Sorted, so every node walks the same order, and deduplicated: a
        // pod may sit in two slices while it moves between them.
        endpoints.sort_by(|a, b| a.ip.cmp(&b.ip).then(b.ready.cmp(&a.ready)));
        endpoints.dedup_by_key(|endpoint| endpoint.ip);
        if let Some(ip) = spec.cluster_ip {
            self.by_cluster_ip.insert(ip, key.clone());
        }
        for node_port in spec.ports.iter().filter_map(|port| port.node_port) {
            self.by_node_port.insert(node_port, key.clone());
        }
        if spec.kind == ServiceKind::LoadBalancer {
            for port in spec.ports.iter().filter(|port| port.protocol == "TCP") {
                // The first Service to claim a port keeps it, as a balancer
                // address can front only one.
                self.by_balancer_port
                    .entry(port.port)
                    .or_insert_with(|| key.clone());
            }
        }
        let route = ServiceRoute {
            namespace: key.0.clone(),
            name: key.1.clone(),
            cluster_ip: spec.cluster_ip,
            kind: spec.kind.clone(),
            ports: spec.ports.clone(),
            client_ip_affinity: spec.client_ip_affinity,
            locality: spec.locality,
            endpoints,
            next: AtomicUsize::new(0),
        };
        self.routes.insert(key.clone(), Arc::new(route));
    }
}

/// The node's routing table. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct RoutingTable {
    tables: Arc<RwLock<Tables>>,
    ingresses: super::ingress::Ingresses,
    policies: super::policy::Policies,
    /// Bumped on every change of a Service or its endpoints, for the
    /// NodePort listeners.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self {
            tables: Arc::default(),
            ingresses: super::ingress::Ingresses::default(),
            policies: super::policy::Policies::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl RoutingTable {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // A poisoned lock means a panic between two map operations; the
        // maps themselves are still whole.
        self.tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// The Ingresses (and their certificates) the gateway serves.
    pub fn ingresses(&self) -> &super::ingress::Ingresses {
        &self.ingresses
    }

    /// The NetworkPolicies, and the pods and namespaces they select.
    pub fn policies(&self) -> &super::policy::Policies {
        &self.policies
    }

    /// A receiver that sees every change of the Services.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&self, service: &Service) {
        let Some(key) = key_of(&service.metadata) else {
            return;
        };
        let spec = service_spec(service);
        let mut tables = self.write();
        tables.specs.insert(key.clone(), spec);
        tables.rebuild(&key);
        drop(tables);
        self.bump();
    }

    /// Forgets a Service.
    pub fn remove_service(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut tables = self.write();
        tables.specs.remove(&key);
        tables.rebuild(&key);
        drop(tables);
        self.bump();
    }

    /// Adds or replaces an EndpointSlice.
    pub fn upsert_slice(&self, slice: &EndpointSlice) {
        let Some(key) = key_of(&slice.metadata) else {
            return;
        };
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        let endpoints = slice_endpoints(slice);
        let service_key = (key.0.clone(), service.clone());
        let mut tables = self.write();
        let previous = tables.slices.insert(key, (service.clone(), endpoints));
        if let Some((old_service, _)) = previous
            && old_service != *service
        {
            tables.rebuild(&(service_key.0.clone(), old_service));
        }
        tables.rebuild(&service_key);
        drop(tables);
        self.bump();
    }

    /// Forgets an EndpointSlice.
    pub fn remove_slice(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let mut tables = self.write();
        if let Some((service, _)) = tables.slices.remove(&key) {
            tables.rebuild(&(namespace.to_owned(), service));
        }
        drop(tables);
        self.bump();
    }

    /// The Services in the table, as `namespace/name`.
    pub fn service_keys(&self) -> Vec<ObjectKey> {
        self.read().specs.keys().cloned().collect()
    }

    /// The EndpointSlices in the table, as `namespace/name`.
    pub fn slice_keys(&self) -> Vec<ObjectKey> {
        self.read().slices.keys().cloned().collect()
    }

    /// The Nodes in the table.
    pub fn node_names(&self) -> Vec<String> {
        self.read().nodes.keys().cloned().collect()
    }

    /// Adds or replaces a Node.
    pub fn upsert_node(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let route = node_route(node, name.clone());
        self.policies.upsert_node_address(&name, route.internal_ip);
        self.write().nodes.insert(name, route);
    }

    /// Forgets a Node.
    pub fn remove_node(&self, name: &str) {
        self.policies.remove_node_address(name);
        self.write().nodes.remove(name);
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<ServiceRoute>> {
        self.read()
            .routes
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The Service whose ClusterIP is `ip`.
    pub fn service_at(&self, ip: IpAddr) -> Option<Arc<ServiceRoute>> {
        let tables = self.read();
        let key = tables.by_cluster_ip.get(&ip)?;
        tables.routes.get(key).cloned()
    }

    /// Every port a node listens on for Services: the nodePorts of
    /// NodePort and LoadBalancer Services, and LoadBalancers' own ports.
    pub fn node_ports(&self) -> Vec<u16> {
        let tables = self.read();
        let mut ports: Vec<u16> = tables
            .by_node_port
            .keys()
            .chain(tables.by_balancer_port.keys())
            .copied()
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The Service a request arriving at a node's `port` is for, and the
    /// Service port it means: by nodePort first, else a LoadBalancer's own
    /// port.
    pub fn service_by_node_port(&self, port: u16) -> Option<(Arc<ServiceRoute>, u16)> {
        let tables = self.read();
        if let Some(route) = tables
            .by_node_port
            .get(&port)
            .and_then(|key| tables.routes.get(key))
        {
            let service_port = route.node_port(port)?.port;
            return Some((route.clone(), service_port));
        }
        let route = tables.routes.get(tables.by_balancer_port.get(&port)?)?;
        Some((route.clone(), port))
    }

    /// The node whose pod range holds `ip`.
    pub fn node_of_pod(&self, ip: IpAddr) -> Option<NodeRoute> {
        self.read()
            .nodes
            .values()
            .find(|node| node.pod_cidrs.iter().any(|cidr| cidr.contains(&ip)))
            .cloned()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<NodeRoute> {
        self.read().nodes.get(name).cloned()
    }
}

/// `namespace/name` of an object (`default` when it names no namespace).
pub(super) fn key_of(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectKey> {
    Some((
        metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        metadata.name.clone()?,
    ))
}

fn service_spec(service: &Service) -> ServiceSpec {
    let spec = service.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref() {
        Some("NodePort") => ServiceKind::NodePort,
        Some("LoadBalancer") => ServiceKind::LoadBalancer,
        Some("ExternalName") => {
            ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
        }
        _ => ServiceKind::ClusterIp,
    };
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .filter(|_| !matches!(kind, ServiceKind::ExternalName(_)));
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some(ServicePortRoute {
                name: port.name.clone().unwrap_or_default(),
                port: u16::try_from(port.port).ok()?,
                node_port: port.node_port.and_then(|p| u16::try_from(p).ok()),
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            })
        })
        .collect();
    let locality = if spec.internal_traffic_policy.as_deref() == Some("Local") {
        Locality::SameNodeOnly
    } else if matches!(
        spec.traffic_distribution.as_deref(),
        Some("PreferClose" | "PreferSameNode" | "PreferSameZone")
    ) {
        Locality::PreferSameNode
    } else {
        Locality::Any
    };
    ServiceSpec {
        cluster_ip,
        kind,
        ports,
        client_ip_affinity: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let seconds = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref()?.timeout_seconds)
                .and_then(|seconds| u64::try_from(seconds).ok())
                .unwrap_or(AFFINITY_TIMEOUT_SECS_DEFAULT);
            std::time::Duration::from_secs(seconds)
        }),
        locality,
    }
}

fn slice_endpoints(slice: &EndpointSlice) -> Vec<EndpointRoute> {
    let ports: Vec<(String, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some((
                port.name.clone().unwrap_or_default(),
                u16::try_from(port.port?).ok()?,
            ))
        })
        .collect();
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|endpoint| {
            // Kubernetes: a missing `ready` means ready, unless terminating.
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            let ready = conditions
                .ready
                .unwrap_or(!conditions.terminating.unwrap_or(false));
            let ports = ports.clone();
            endpoint
                .addresses
                .iter()
                .filter_map(move |address| {
                    Some(EndpointRoute {
                        ip: address.parse().ok()?,
                        node: endpoint.node_name.clone(),
                        ready,
                        hostname: endpoint.hostname.clone(),
                        ports: ports.clone(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn node_route(node: &Node, name: String) -> NodeRoute {
    let spec = node.spec.clone().unwrap_or_default();
    let mut cidrs: Vec<String> = spec.pod_cidrs.unwrap_or_default();
    cidrs.extend(spec.pod_cidr);
    let mut pod_cidrs: Vec<IpNet> = cidrs.iter().filter_map(|cidr| cidr.parse().ok()).collect();
    pod_cidrs.sort();
    pod_cidrs.dedup();
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_ref())
        .and_then(|addresses| {
            addresses
                .iter()
                .find(|address| address.type_ == "InternalIP")
                .and_then(|address| address.address.parse().ok())
        });
    let mesh_port = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(MESH_PORT_ANNOTATION))
        .and_then(|port| port.parse().ok());
    NodeRoute {
        name,
        internal_ip,
        mesh_port,
        pod_cidrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("a Service")
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).expect("an EndpointSlice")
    }

    const WEB: &str = "
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  type: NodePort
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
";

    #[test]
    fn a_service_joins_its_slices_endpoints() {
        let table = RoutingTable::default();
        table.upsert_service(&service(WEB));
        table.upsert_slice(&slice(
            "
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.240.0.5], nodeName: n1, conditions: {ready: true}}
  - {addresses: [10.240.4.2], nodeName: n2, conditions: {ready: false}}
",
        ));
        let route = table
            .service_at("10.96.0.10".parse().unwrap())
            .expect("found by ClusterIP");
        assert_eq!(
            (route.namespace.as_str(), route.name.as_str()),
            ("shop", "web")
        );
        assert_eq!(route.node_port(30080).map(|p| p.port), Some(80));
        assert_eq!(table.node_ports(), [30080]);
        assert_eq!(table.service_by_node_port(30080).unwrap().1, 80);
        assert_eq!(route.endpoints.len(), 2);
        assert_eq!(route.endpoints[0].port("http"), Some(8080));
        assert!(route.endpoints[0].ready && !route.endpoints[1].ready);

        table.remove_slice("shop", "web-a");
        assert!(table.service("shop", "web").unwrap().endpoints.is_empty());
        table.remove_service("shop", "web");
        assert!(table.service_at("10.96.0.10".parse().unwrap()).is_none());
        assert!(table.node_ports().is_empty());
    }

    #[test]
    fn a_load_balancer_is_served_on_its_ports_and_node_ports() {
        let table = RoutingTable::default();
        table.upsert_service(&service(
            "
metadata: {name: lb, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  type: LoadBalancer
  ports: [{name: http, port: 8000, targetPort: 8080, nodePort: 30090}]
",
        ));
        assert_eq!(table.node_ports(), [8000, 30090]);
        let (route, port) = table.service_by_node_port(8000).unwrap();
        assert_eq!((route.name.as_str(), port), ("lb", 8000));
        assert_eq!(table.service_by_node_port(30090).unwrap().1, 8000);
        table.remove_service("shop", "lb");
        assert!(table.node_ports().is_empty());
    }

    #[test]
    fn slices_seen_before_their_service_count_once_it_comes() {
        let table = RoutingTable::default();
        table.upsert_slice(&slice(
            "
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.240.0.5]}]
",
        ));
        assert!(table.service("shop", "web").is_none());
        table.upsert_service(&service(WEB));
        let route = table.service("shop", "web").unwrap();
        assert_eq!(route.endpoints.len(), 1);
        assert!(route.endpoints[0].ready, "no conditions means ready");
    }

    #[test]
    fn pods_are_found_on_the_node_whose_range_holds_them() {
        let table = RoutingTable::default();
        let node: Node = serde_yaml::from_str(
            "
metadata: {name: n2, annotations: {flotilla.dev/mesh-port: '4433'}}
spec: {podCIDR: 10.240.4.0/22}
status: {addresses: [{type: InternalIP, address: 127.0.0.3}]}
",
        )
        .unwrap();
        table.upsert_node(&node);
        let found = table.node_of_pod("10.240.5.9".parse().unwrap()).unwrap();
        assert_eq!(found.name, "n2");
        assert_eq!(
            found.mesh_address(),
            Some("127.0.0.3:4433".parse().unwrap())
        );
        assert!(table.node_of_pod("10.240.8.1".parse().unwrap()).is_none());
    }

    #[test]
    fn traffic_policies_set_the_locality() {
        let local = service(
            "
metadata: {name: a, namespace: x}
spec: {clusterIP: None, internalTrafficPolicy: Local}
",
        );
        let close = service(
            "
metadata: {name: b, namespace: x}
spec: {clusterIP: 10.96.0.2, trafficDistribution: PreferClose, sessionAffinity: ClientIP}
",
        );
        let table = RoutingTable::default();
        table.upsert_service(&local);
        table.upsert_service(&close);
        let a = table.service("x", "a").unwrap();
        assert_eq!(a.locality, Locality::SameNodeOnly);
        assert!(a.is_headless());
        let b = table.service("x", "b").unwrap();
        assert_eq!(b.locality, Locality::PreferSameNode);
        assert_eq!(
            b.client_ip_affinity,
            Some(std::time::Duration::from_secs(
                AFFINITY_TIMEOUT_SECS_DEFAULT
            ))
        );
    }
}
