//! Where a guest's request goes: its authority (`orders.shop:8080`,
//! `10.96.0.10`, `localhost:9000`) resolved against the routing table, as
//! cluster DNS and kube-proxy's rules together would.
//!
//! Names are resolved the way a pod's `resolv.conf` search path does:
//! `svc`, `svc.ns`, `svc.ns.svc` and `svc.ns.svc.cluster.local`, relative
//! to the caller's namespace; a StatefulSet pod is `host.svc.ns…`. An
//! ExternalName Service is an alias, followed once. Anything else is
//! outside the cluster, the host's loopback addresses other than the
//! pod's own `127.0.0.1` and `::1` included.

use std::net::IpAddr;
use std::sync::Arc;

use super::table::{RoutingTable, ServiceKind, ServiceRoute};

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Aliases followed before a name counts as a loop: an ExternalName may
/// name another Service, which may be an ExternalName too.
const ALIAS_HOPS_MAX: usize = 4;

/// Where a request is to go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Another container of the caller's own pod (`localhost:PORT`).
    Sibling { port: u16 },
    /// A pod, by address.
    Pod { ip: IpAddr, port: u16 },
    /// A Service's port, to be balanced over its ready endpoints.
    Service { route: Arc<ServiceRoute>, port: u16 },
    /// Outside the cluster.
    External { host: String, port: u16 },
}

/// Why a name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A cluster name that names no Service (NXDOMAIN).
    #[error("no Service {name:?} in the cluster")]
    UnknownService { name: String },
    /// An ExternalName chain too long to be anything but a loop.
    #[error("ExternalName aliases of {name:?} loop")]
    AliasLoop { name: String },
}

/// Resolves `host:port` for a caller in `namespace`.
pub fn resolve(
    table: &RoutingTable,
    namespace: &str,
    host: &str,
    port: u16,
) -> Result<Destination, ResolveError> {
    let mut host = normalise(host);
    for _ in 0..ALIAS_HOPS_MAX {
        match resolve_once(table, namespace, &host, port)? {
            Resolved::Alias(target) => host = normalise(&target),
            Resolved::Destination(destination) => return Ok(destination),
        }
    }
    Err(ResolveError::AliasLoop { name: host })
}

enum Resolved {
    Destination(Destination),
    Alias(String),
}

fn resolve_once(
    table: &RoutingTable,
    namespace: &str,
    host: &str,
    port: u16,
) -> Result<Resolved, ResolveError> {
    if host == "localhost" {
        return Ok(Resolved::Destination(Destination::Sibling { port }));
    }
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Resolved::Destination(resolve_ip(table, ip, port)));
    }
    let Some(name) = ClusterName::parse(host, namespace) else {
        return Ok(Resolved::Destination(Destination::External {
            host: host.to_owned(),
            port,
        }));
    };
    let unknown = || ResolveError::UnknownService {
        name: host.to_owned(),
    };
    let Some(route) = table.service(&name.namespace, &name.service) else {
        // `example.com` is also `service.namespace` in form; as with a
        // pod's search path, a two-label name no Service answers is
        // looked up outside. One under `.svc`, or a single label, is not.
        if name.qualified || name.hostname.is_none() && !host.contains('.') {
            return Err(unknown());
        }
        return Ok(Resolved::Destination(Destination::External {
            host: host.to_owned(),
            port,
        }));
    };
    if let ServiceKind::ExternalName(target) = &route.kind {
        return Ok(Resolved::Alias(target.clone()));
    }
    if let Some(hostname) = &name.hostname {
        // `pod-0.web.shop`: one pod of a headless Service, by hostname.
        let endpoint = route
            .endpoints
            .iter()
            .find(|endpoint| endpoint.hostname.as_deref() == Some(hostname.as_str()))
            .ok_or_else(unknown)?;
        return Ok(Resolved::Destination(Destination::Pod {
            ip: endpoint.ip,
            port,
        }));
    }
    Ok(Resolved::Destination(Destination::Service { route, port }))
}

fn resolve_ip(table: &RoutingTable, ip: IpAddr, port: u16) -> Destination {
    // The pod's own loopback; the host's other loopback addresses are
    // not the pod's, and count as outside.
    if ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST) {
        return Destination::Sibling { port };
    }
    if let Some(route) = table.service_at(ip) {
        return Destination::Service { route, port };
    }
    if table.node_of_pod(ip).is_some() {
        return Destination::Pod { ip, port };
    }
    Destination::External {
        host: ip.to_string(),
        port,
    }
}

/// Lowercase, without a trailing dot (a fully qualified name).
fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A name inside the cluster.
#[derive(Debug, PartialEq, Eq)]
struct ClusterName {
    /// Written under `.svc`: it can only be the cluster's.
    qualified: bool,
    hostname: Option<String>,
    service: String,
    namespace: String,
}

impl ClusterName {
    /// `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`, and the
    /// same with a leading `host.`; anything else (a name with a dot that
    /// is not under `.svc`, three labels or more) is not the cluster's.
    fn parse(host: &str, namespace: &str) -> Option<Self> {
        let relative = host
            .strip_suffix(CLUSTER_DOMAIN)
            .and_then(|rest| rest.strip_suffix('.'))
            .unwrap_or(host);
        let relative = relative.strip_suffix(".svc").unwrap_or(relative);
        let under_svc = relative.len() != host.len();
        let labels: Vec<&str> = relative.split('.').collect();
        if labels.iter().any(|label| label.is_empty()) {
            return None;
        }
        let name = |hostname: Option<&str>, service: &str, namespace: &str| Self {
            qualified: under_svc,
            hostname: hostname.map(str::to_owned),
            service: service.to_owned(),
            namespace: namespace.to_owned(),
        };
        match labels[..] {
            [service] => Some(name(None, service, namespace)),
            [service, namespace] => Some(name(None, service, namespace)),
            [hostname, service, namespace] if under_svc => {
                Some(name(Some(hostname), service, namespace))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn table() -> RoutingTable {
        let table = RoutingTable::default();
        for yaml in [
            "{metadata: {name: orders, namespace: shop}, spec: {clusterIP: 10.96.0.7, ports: [{port: 8080}]}}",
            "{metadata: {name: web, namespace: default}, spec: {clusterIP: 10.96.0.8}}",
            "{metadata: {name: db, namespace: shop}, spec: {clusterIP: None}}",
            "{metadata: {name: alias, namespace: shop}, spec: {type: ExternalName, externalName: orders.shop.svc.cluster.local}}",
            "{metadata: {name: loop, namespace: shop}, spec: {type: ExternalName, externalName: loop.shop}}",
            "{metadata: {name: away, namespace: shop}, spec: {type: ExternalName, externalName: api.example.com}}",
        ] {
            let service: Service = serde_yaml::from_str(yaml).expect("a Service");
            table.upsert_service(&service);
        }
        table.upsert_slice(
            &serde_yaml::from_str(
                "{metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}, addressType: IPv4, endpoints: [{addresses: [10.240.0.9], hostname: db-0}]}",
            )
            .expect("a slice"),
        );
        table
    }

    /// Resolves for a caller in `shop` and names the outcome.
    fn check(host: &str, expected: &str) {
        let found = match resolve(&table(), "shop", host, 80) {
            Ok(Destination::Sibling { port }) => format!("sibling:{port}"),
            Ok(Destination::Pod { ip, port }) => format!("pod {ip}:{port}"),
            Ok(Destination::Service { route, port }) => {
                format!("service {}/{}:{port}", route.namespace, route.name)
            }
            Ok(Destination::External { host, port }) => format!("external {host}:{port}"),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(found, expected, "resolving {host:?}");
    }

    #[test]
    fn names_resolve_as_a_pods_search_path_would() {
        check("orders", "service shop/orders:80");
        check("orders.shop", "service shop/orders:80");
        check("Orders.Shop.svc", "service shop/orders:80");
        check("orders.shop.svc.cluster.local", "service shop/orders:80");
        check("orders.shop.svc.cluster.local.", "service shop/orders:80");
        check("web.default", "service default/web:80");
        check("web", "error: no Service \"web\" in the cluster");
        check(
            "nothing.shop.svc",
            "error: no Service \"nothing.shop.svc\" in the cluster",
        );
        check("nothing.shop", "external nothing.shop:80");
    }

    #[test]
    fn addresses_resolve_to_services_siblings_or_the_outside() {
        check("10.96.0.7", "service shop/orders:80");
        check("localhost", "sibling:80");
        check("127.0.0.1", "sibling:80");
        check("[::1]", "sibling:80");
        check("93.184.215.14", "external 93.184.215.14:80");
        check("127.0.0.2", "external 127.0.0.2:80");
        check("example.com", "external example.com:80");
        check("a.b.c.d", "external a.b.c.d:80");
    }

    #[test]
    fn aliases_and_hostnames_are_followed() {
        check("alias", "service shop/orders:80");
        check("away.shop.svc.cluster.local", "external api.example.com:80");
        check("loop", "error: ExternalName aliases of \"loop.shop\" loop");
        check("db-0.db.shop.svc.cluster.local", "pod 10.240.0.9:80");
        check(
            "db-1.db.shop.svc",
            "error: no Service \"db-1.db.shop.svc\" in the cluster",
        );
    }
}
