//! NetworkPolicy, enforced by the router: the node that sends a request to
//! a pod checks both the caller's egress policies and the target's ingress
//! policies before the request leaves, so no request a policy denies
//! reaches a pod, on this node or across the mesh.
//!
//! Semantics are Kubernetes': a pod selected by a policy of a direction is
//! isolated in that direction and gets only what some rule of some such
//! policy allows; a rule allows peers (pods by `podSelector` in the
//! policy's namespace, by `namespaceSelector`, both, or addresses by
//! `ipBlock`; none listed: everyone) on ports (number, range or container
//! port name; none listed: every port). A caller outside the cluster (a
//! NodePort or Ingress client) matches only `ipBlock` peers.
//!
//! A namespace labelled [`ISOLATION_LABEL`]`: namespace` is closed to pods
//! of other namespaces: their requests to its pods are denied unless one
//! of its NetworkPolicies allows them, as if each namespace had a
//! default-deny policy for the others. Callers outside the cluster and
//! pods of the same namespace are left to its policies, if any.
//!
//! This module knows policies, pods' labels and namespaces' labels; the
//! agent feeds them, the router asks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};

use super::table::{ObjectKey, key_of};

/// Who a pod is, for policies: its namespace, labels and named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    /// Told apart from a pod of the same name that replaced it.
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container ports by name.
    pub ports: Vec<(String, u16)>,
}

/// Which way a denied request went, for the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        })
    }
}

/// A denial: which pod's policies of which direction refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{direction} of pod {namespace}/{pod} is not allowed by its NetworkPolicies")]
pub struct Denied {
    pub direction: Direction,
    pub namespace: String,
    pub pod: String,
}

/// The namespace label that closes a namespace to the pods of others.
pub const ISOLATION_LABEL: &str = "flotilla.dev/network-isolation";
/// Its one value.
const ISOLATION_NAMESPACE: &str = "namespace";

/// An unparseable selector selects nothing (the API server validates
/// selectors, so this is a corrupt object, not a user's mistake).
fn selector(selector: &LabelSelector) -> Option<Selector> {
    Selector::try_from(selector.clone()).ok()
}

#[derive(Debug, Clone)]
enum Peer {
    /// Pods in the policy's namespace (no namespace selector) or in the
    /// namespaces selected; all of them when the pod selector is absent.
    Pods {
        namespaces: Option<Option<Selector>>,
        pods: Option<Option<Selector>>,
    },
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

#[derive(Debug, Clone)]
enum PortMatch {
    Any,
    Range(u16, u16),
    Named(String),
}

#[derive(Debug, Clone)]
struct Rule {
    /// Empty: every peer.
    peers: Vec<Peer>,
    /// Empty: every port.
    ports: Vec<PortMatch>,
}

#[derive(Debug, Clone)]
struct PolicyRoute {
    namespace: String,
    pods: Option<Selector>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

#[derive(Default)]
struct State {
    policies: BTreeMap<ObjectKey, Arc<PolicyRoute>>,
    pods: HashMap<IpAddr, Arc<PodIdentity>>,
    pod_ips: HashMap<ObjectKey, IpAddr>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Namespaces' egress allow-lists (their `flotilla.dev/egress-allow`).
    egress_allowed: HashMap<String, super::egress::AllowList>,
    /// The cluster's nodes' addresses (their InternalIPs), by node name:
    /// the host side of every node, closed to egress as loopback is.
    node_addresses: HashMap<String, IpAddr>,
}

/// The cluster's NetworkPolicies and what they select on. Cheap to clone;
/// clones share it.
#[derive(Clone, Default)]
pub struct Policies {
    state: Arc<RwLock<State>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").finish_non_exhaustive()
    }
}

impl Policies {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic between two map operations; the
        // maps themselves are whole.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces a NetworkPolicy.
    pub fn upsert_policy(&self, policy: &NetworkPolicy) {
        let Some(key) = key_of(&policy.metadata) else {
            return;
        };
        let route = policy_route(&key.0, policy);
        self.write().policies.insert(key, Arc::new(route));
    }

    /// Forgets a NetworkPolicy.
    pub fn remove_policy(&self, namespace: &str, name: &str) {
        self.write()
            .policies
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// The NetworkPolicies held.
    pub fn policy_keys(&self) -> Vec<ObjectKey> {
        self.read().policies.keys().cloned().collect()
    }

    /// Adds or replaces a pod (known by its address once it has one).
    pub fn upsert_pod(&self, pod: &Pod) {
        let Some(key) = key_of(&pod.metadata) else {
            return;
        };
        let ip = pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let mut state = self.write();
        // The node running a pod knows its address before the API does
        // (and tells this table at once); an update that does not say it
        // yet keeps the address known, if it is of the same pod (not of
        // one that replaced it under the same name).
        let ip = ip.or_else(|| {
            let known = *state.pod_ips.get(&key)?;
            let same_pod = state
                .pods
                .get(&known)
                .is_some_and(|identity| identity.uid == pod.metadata.uid);
            same_pod.then_some(known)
        });
        state.forget_pod(&key);
        let Some(ip) = ip else {
            return;
        };
        let ports = pod
            .spec
            .iter()
            .flat_map(|spec| spec.containers.iter())
            .flat_map(|container| container.ports.iter().flatten())
            .filter_map(|port| Some((port.name.clone()?, u16::try_from(port.container_port).ok()?)))
            .collect();
        let identity = PodIdentity {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        };
        state.pods.insert(ip, Arc::new(identity));
        state.pod_ips.insert(key, ip);
    }

    /// Forgets a pod.
    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.write()
            .forget_pod(&(namespace.to_owned(), name.to_owned()));
    }

    /// The pods held.
    pub fn pod_keys(&self) -> Vec<ObjectKey> {
        self.read().pod_ips.keys().cloned().collect()
    }

    /// Adds or replaces a Namespace's labels.
    pub fn upsert_namespace(&self, namespace: &Namespace) {
        let Some(name) = namespace.metadata.name.clone() else {
            return;
        };
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        let allowed = namespace
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(super::egress::EGRESS_ALLOW_ANNOTATION))
            .map(|text| super::egress::AllowList::parse(text));
        let mut state = self.write();
        match allowed {
            Some(allowed) => state.egress_allowed.insert(name.clone(), allowed),
            None => state.egress_allowed.remove(&name),
        };
        state.namespaces.insert(name, labels);
    }

    /// Forgets a Namespace.
    pub fn remove_namespace(&self, name: &str) {
        let mut state = self.write();
        state.namespaces.remove(name);
        state.egress_allowed.remove(name);
    }

    /// The Namespaces held.
    pub fn namespace_names(&self) -> Vec<String> {
        self.read().namespaces.keys().cloned().collect()
    }

    /// Records node `name`'s address (none: it has not told one).
    pub fn upsert_node_address(&self, name: &str, address: Option<IpAddr>) {
        let mut state = self.write();
        match address {
            Some(address) => state
                .node_addresses
                .insert(name.to_owned(), address.to_canonical()),
            None => state.node_addresses.remove(name),
        };
    }

    /// Forgets node `name`'s address.
    pub fn remove_node_address(&self, name: &str) {
        self.write().node_addresses.remove(name);
    }

    /// The pod at `ip`, if the cluster has one.
    pub fn pod_at(&self, ip: IpAddr) -> Option<Arc<PodIdentity>> {
        self.read().pods.get(&ip).cloned()
    }

    /// Whether a pod of `namespace` at `source` may send a request to
    /// `host:port` outside the cluster: its namespace's allow-list names
    /// the host, or (for an address) an egress NetworkPolicy of the pod
    /// admits it. Outside is closed otherwise, policy or not.
    ///
    /// An address of the host itself, in any of its forms (loopback,
    /// unspecified, link-local, IPv4-mapped IPv6 of those; see
    /// `egress::host_only`), or a node's InternalIP, is reached only when
    /// a rule names that very address: an allow-list entry or a `/32`
    /// (`/128`) `ipBlock`. A wider range, "every peer" included, does not
    /// open it.
    pub fn egress_allows(
        &self,
        namespace: &str,
        source: Option<IpAddr>,
        host: &str,
        port: u16,
    ) -> bool {
        let state = self.read();
        let allowed = state.egress_allowed.get(namespace);
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return allowed.is_some_and(|allowed| allowed.allows(host));
        };
        let ip = ip.to_canonical();
        let pod = source.and_then(|source| state.pods.get(&source).cloned());
        let a_node = state.node_addresses.values().any(|node| *node == ip);
        if super::egress::host_only(ip) || a_node {
            return allowed.is_some_and(|allowed| allowed.names_exactly(ip))
                || pod.is_some_and(|pod| state.names_exactly(&pod, ip, port));
        }
        if allowed.is_some_and(|allowed| allowed.allows(&ip.to_string())) {
            return true;
        }
        let Some(pod) = pod else {
            return false;
        };
        let peer = Party {
            ip: Some(ip),
            pod: None,
        };
        state.egress_isolated(&pod)
            && state
                .allows(&pod, Direction::Egress, &peer, port, None)
                .is_ok()
    }

    /// Whether a request from `source` (its address; the pod's, when it is
    /// one) to the pod at `target` is allowed.
    pub fn check(&self, source: Option<IpAddr>, target: SocketAddr) -> Result<(), Denied> {
        let state = self.read();
        let from = source.and_then(|ip| state.pods.get(&ip).cloned());
        let to = state.pods.get(&target.ip()).cloned();
        if let Some(from) = &from {
            let peer = Party {
                ip: Some(target.ip()),
                pod: to.as_deref(),
            };
            state.allows(from, Direction::Egress, &peer, target.port(), to.as_deref())?;
        }
        if let Some(to) = &to {
            let peer = Party {
                ip: source,
                pod: from.as_deref(),
            };
            state.allows(to, Direction::Ingress, &peer, target.port(), Some(to))?;
        }
        Ok(())
    }
}

/// The other end of a request, as a rule's peers see it.
struct Party<'a> {
    ip: Option<IpAddr>,
    pod: Option<&'a PodIdentity>,
}

impl State {
    /// Whether an egress rule of `pod`'s policies names `ip` alone (an
    /// `ipBlock` of one address) on `port`.
    fn names_exactly(&self, pod: &PodIdentity, ip: IpAddr, port: u16) -> bool {
        let alone = |peer: &Peer| match peer {
            Peer::Block { cidr, .. } => {
                cidr.prefix_len() == cidr.max_prefix_len() && cidr.addr().to_canonical() == ip
            }
            Peer::Pods { .. } => false,
        };
        self.policies
            .values()
            .filter(|policy| {
                policy.namespace == pod.namespace
                    && policy.pods.as_ref().is_some_and(|s| s.matches(&pod.labels))
            })
            .filter_map(|policy| policy.egress.as_ref())
            .flatten()
            .any(|rule| {
                rule.peers.iter().any(alone)
                    && (rule.ports.is_empty()
                        || rule
                            .ports
                            .iter()
                            .any(|candidate| port_matches(candidate, port, None)))
            })
    }

    /// Whether some egress policy selects `pod`.
    fn egress_isolated(&self, pod: &PodIdentity) -> bool {
        self.policies.values().any(|policy| {
            policy.egress.is_some()
                && policy.namespace == pod.namespace
                && policy.pods.as_ref().is_some_and(|s| s.matches(&pod.labels))
        })
    }

    /// Forgets the pod `key`, and its address unless another pod holds it
    /// by now.
    fn forget_pod(&mut self, key: &ObjectKey) {
        if let Some(ip) = self.pod_ips.remove(key)
            && self
                .pods
                .get(&ip)
                .is_some_and(|pod| pod.name == key.1 && pod.namespace == key.0)
        {
            self.pods.remove(&ip);
        }
    }

    /// Whether `pod`'s policies of `direction` let it talk to `peer` on
    /// `port` (a port of `target`, whose names resolve named ports).
    fn allows(
        &self,
        pod: &PodIdentity,
        direction: Direction,
        peer: &Party<'_>,
        port: u16,
        target: Option<&PodIdentity>,
    ) -> Result<(), Denied> {
        let mut isolated = false;
        for policy in self.policies.values() {
            if policy.namespace != pod.namespace
                || !policy.pods.as_ref().is_some_and(|s| s.matches(&pod.labels))
            {
                continue;
            }
            let rules = match direction {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            let Some(rules) = rules else {
                continue;
            };
            isolated = true;
            let allowed = rules.iter().any(|rule| {
                (rule.peers.is_empty()
                    || rule
                        .peers
                        .iter()
                        .any(|candidate| self.peer_matches(candidate, &policy.namespace, peer)))
                    && (rule.ports.is_empty()
                        || rule
                            .ports
                            .iter()
                            .any(|candidate| port_matches(candidate, port, target)))
            });
            if allowed {
                return Ok(());
            }
        }
        let from_another_namespace = direction == Direction::Ingress
            && peer.pod.is_some_and(|from| from.namespace != pod.namespace)
            && self.isolates(&pod.namespace);
        if isolated || from_another_namespace {
            return Err(Denied {
                direction,
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            });
        }
        Ok(())
    }

    /// Whether `namespace` is closed to other namespaces' pods.
    fn isolates(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|labels| labels.get(ISOLATION_LABEL))
            .is_some_and(|value| value == ISOLATION_NAMESPACE)
    }

    fn peer_matches(&self, peer: &Peer, policy_namespace: &str, party: &Party<'_>) -> bool {
        match peer {
            Peer::Block { cidr, except } => party.ip.is_some_and(|ip| {
                cidr.contains(&ip) && !except.iter().any(|excluded| excluded.contains(&ip))
            }),
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = party.pod else {
                    return false;
                };
                let namespace_ok = match namespaces {
                    None => pod.namespace == policy_namespace,
                    Some(selector) => {
                        let labels = self.namespaces.get(&pod.namespace);
                        let empty = BTreeMap::new();
                        selector
                            .as_ref()
                            .is_some_and(|s| s.matches(labels.unwrap_or(&empty)))
                    }
                };
                let pod_ok = match pods {
                    None => true,
                    Some(selector) => selector.as_ref().is_some_and(|s| s.matches(&pod.labels)),
                };
                namespace_ok && pod_ok
            }
        }
    }
}

fn port_matches(rule: &PortMatch, port: u16, target: Option<&PodIdentity>) -> bool {
    match rule {
        PortMatch::Any => true,
        PortMatch::Range(first, last) => (*first..=*last).contains(&port),
        PortMatch::Named(name) => target.is_some_and(|pod| {
            pod.ports
                .iter()
                .any(|(port_name, number)| port_name == name && *number == port)
        }),
    }
}

fn policy_route(namespace: &str, policy: &NetworkPolicy) -> PolicyRoute {
    let spec = policy.spec.clone().unwrap_or_default();
    // Kubernetes: without policyTypes, Ingress always, Egress when there
    // are egress rules.
    let types = spec.policy_types.clone().unwrap_or_else(|| {
        let mut types = vec!["Ingress".to_owned()];
        if spec.egress.is_some() {
            types.push("Egress".to_owned());
        }
        types
    });
    let has = |kind: &str| types.iter().any(|t| t == kind);
    let ingress = has("Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .map(|rule| rule_of(rule.from.as_deref(), rule.ports.as_deref()))
            .collect()
    });
    let egress = has("Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .map(|rule| rule_of(rule.to.as_deref(), rule.ports.as_deref()))
            .collect()
    });
    PolicyRoute {
        namespace: namespace.to_owned(),
        // An absent podSelector selects every pod, as an empty one does.
        pods: selector(&spec.pod_selector.clone().unwrap_or_default()),
        ingress,
        egress,
    }
}

fn rule_of(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>) -> Rule {
    Rule {
        peers: peers.into_iter().flatten().filter_map(peer_of).collect(),
        ports: ports.into_iter().flatten().filter_map(port_of).collect(),
    }
}

fn peer_of(peer: &NetworkPolicyPeer) -> Option<Peer> {
    if let Some(block) = &peer.ip_block {
        return Some(Peer::Block {
            cidr: block.cidr.parse().ok()?,
            except: block
                .except
                .iter()
                .flatten()
                .filter_map(|cidr| cidr.parse().ok())
                .collect(),
        });
    }
    Some(Peer::Pods {
        namespaces: peer.namespace_selector.as_ref().map(selector),
        pods: peer.pod_selector.as_ref().map(selector),
    })
}

fn port_of(port: &NetworkPolicyPort) -> Option<PortMatch> {
    // Only TCP is carried (HTTP and, later, TCP streams).
    if port
        .protocol
        .as_deref()
        .is_some_and(|protocol| protocol != "TCP")
    {
        return None;
    }
    Some(match &port.port {
        None => PortMatch::Any,
        Some(IntOrString::String(name)) => PortMatch::Named(name.clone()),
        Some(IntOrString::Int(number)) => {
            let first = u16::try_from(*number).ok()?;
            let last = port
                .end_port
                .and_then(|end| u16::try_from(end).ok())
                .unwrap_or(first);
            PortMatch::Range(first, last)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yamls: &[&str]) -> Policies {
        let policies = Policies::default();
        for (namespace, labels) in [("alpha", "{team: a}"), ("beta", "{team: b}")] {
            let namespace: Namespace = serde_yaml::from_str(&format!(
                "{{metadata: {{name: {namespace}, labels: {labels}}}}}"
            ))
            .unwrap();
            policies.upsert_namespace(&namespace);
        }
        for (namespace, name, app, ip) in [
            ("alpha", "front", "front", "10.240.0.2"),
            ("beta", "front", "front", "10.240.0.3"),
            ("beta", "back", "back", "10.240.0.4"),
        ] {
            let pod: Pod = serde_yaml::from_str(&format!(
                "{{metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}},
                  spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}},
                  status: {{podIP: {ip}}}}}"
            ))
            .unwrap();
            policies.upsert_pod(&pod);
        }
        for yaml in yamls {
            policies.upsert_policy(&serde_yaml::from_str(yaml).unwrap());
        }
        policies
    }

    /// Who of alpha/front, beta/front and outside (192.0.2.1) reaches
    /// beta/back on `port`.
    fn reach(policies: &Policies, port: u16) -> [bool; 3] {
        let target = SocketAddr::new("10.240.0.4".parse().unwrap(), port);
        ["10.240.0.2", "10.240.0.3", "192.0.2.1"].map(|source| {
            policies
                .check(Some(source.parse().unwrap()), target)
                .is_ok()
        })
    }

    #[test]
    fn an_update_without_an_address_keeps_its_own_pods_address_only() {
        let policies = Policies::default();
        let pod = |uid: &str, ip: Option<&str>| -> Pod {
            let status = ip.map_or(String::new(), |ip| format!(", status: {{podIP: {ip}}}"));
            serde_yaml::from_str(&format!(
                "{{metadata: {{name: web-0, namespace: shop, uid: {uid}}}{status}}}"
            ))
            .unwrap()
        };
        let ip: IpAddr = "10.240.0.9".parse().unwrap();
        // The node enters its pod with its address; the API's copy of the
        // pod, a moment behind, does not say it yet.
        policies.upsert_pod(&pod("first", Some("10.240.0.9")));
        policies.upsert_pod(&pod("first", None));
        assert_eq!(
            policies.pod_at(ip).map(|p| p.name.clone()).as_deref(),
            Some("web-0")
        );
        // A pod of the same name that replaced it has no address yet.
        policies.upsert_pod(&pod("second", None));
        assert!(policies.pod_at(ip).is_none());
    }

    #[test]
    fn ingress_policies_allow_only_what_their_rules_name() {
        assert_eq!(reach(&policies(&[]), 8080), [true, true, true]);
        let deny_all = "{metadata: {name: deny, namespace: beta}, spec: {podSelector: {}}}";
        assert_eq!(reach(&policies(&[deny_all]), 8080), [false, false, false]);
        let from_team_a =
            "{metadata: {name: a, namespace: beta}, spec: {podSelector: {matchLabels: {app: back}},
            ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}}";
        assert_eq!(
            reach(&policies(&[deny_all, from_team_a]), 8080),
            [true, false, false]
        );
        let same_namespace_front = "{metadata: {name: f, namespace: beta}, spec: {podSelector: {},
            ingress: [{from: [{podSelector: {matchLabels: {app: front}}}], ports: [{port: http}]}]}}";
        let both = policies(&[same_namespace_front]);
        assert_eq!(reach(&both, 8080), [false, true, false]);
        assert_eq!(reach(&both, 9090), [false, false, false], "another port");
        let outside = "{metadata: {name: o, namespace: beta}, spec: {podSelector: {},
            ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 8000, endPort: 8080}]}]}}";
        assert_eq!(reach(&policies(&[outside]), 8080), [false, false, true]);
    }

    #[test]
    fn an_isolated_namespace_is_closed_to_other_namespaces_pods_only() {
        let isolated = |yamls: &[&str]| {
            let policies = policies(yamls);
            let beta: Namespace = serde_yaml::from_str(
                "{metadata: {name: beta, labels: {team: b, flotilla.dev/network-isolation: namespace}}}",
            )
            .unwrap();
            policies.upsert_namespace(&beta);
            policies
        };
        // alpha/front is refused; beta/front and the outside are not.
        assert_eq!(reach(&isolated(&[]), 8080), [false, true, true]);
        // A policy of beta's may let alpha in again.
        let from_team_a =
            "{metadata: {name: a, namespace: beta}, spec: {podSelector: {matchLabels: {app: back}},
            ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}}";
        assert_eq!(reach(&isolated(&[from_team_a]), 8080), [true, false, false]);
        // The label opens nothing a policy closes.
        let deny_all = "{metadata: {name: deny, namespace: beta}, spec: {podSelector: {}}}";
        assert_eq!(reach(&isolated(&[deny_all]), 8080), [false, false, false]);
    }

    #[test]
    fn the_host_is_reached_only_where_a_rule_names_its_very_address() {
        let open_namespace = |allow: &str| {
            let policies = policies(&[]);
            let namespace: Namespace = serde_yaml::from_str(&format!(
                "{{metadata: {{name: alpha, annotations: {{flotilla.dev/egress-allow: '{allow}'}}}}}}"
            ))
            .unwrap();
            policies.upsert_namespace(&namespace);
            policies
        };
        let from = Some("10.240.0.2".parse().unwrap());
        let everywhere = open_namespace("0.0.0.0/0, ::/0");
        for host in [
            "127.0.0.1",
            "127.0.0.2",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "::ffff:7f00:2",
            "0.0.0.0",
            "[::]",
            "0.1.2.3",
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "[fe80::1]",
            "[::127.0.0.1]",
            "255.255.255.255",
        ] {
            assert!(!everywhere.egress_allows("alpha", from, host, 80), "{host}");
        }
        for host in ["203.0.113.5", "[::ffff:203.0.113.5]", "[2001:db8::1]"] {
            assert!(everywhere.egress_allows("alpha", from, host, 80), "{host}");
        }
        // An entry naming the address itself opens it, in every form.
        let metadata = open_namespace("0.0.0.0/0, 169.254.169.254");
        assert!(metadata.egress_allows("alpha", from, "169.254.169.254", 80));
        assert!(metadata.egress_allows("alpha", from, "[::ffff:169.254.169.254]", 80));
        assert!(!metadata.egress_allows("alpha", from, "169.254.169.253", 80));
        // Likewise a NetworkPolicy: every peer or 0.0.0.0/0 does not reach
        // the host, a /32 of it does, on its ports.
        let policy = |to: &str| {
            format!(
                "{{metadata: {{name: out, namespace: alpha}},
                  spec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{to}]}}}}"
            )
        };
        let any_peer = policies(&[&policy("{}")]);
        assert!(any_peer.egress_allows("alpha", from, "203.0.113.5", 80));
        assert!(!any_peer.egress_allows("alpha", from, "127.0.0.2", 80));
        let wide = policies(&[&policy("{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}")]);
        assert!(!wide.egress_allows("alpha", from, "127.0.0.2", 80));
        let exact = policies(&[&policy(
            "{to: [{ipBlock: {cidr: 127.0.0.2/32}}], ports: [{port: 8080}]}",
        )]);
        assert!(exact.egress_allows("alpha", from, "127.0.0.2", 8080));
        assert!(!exact.egress_allows("alpha", from, "127.0.0.2", 80));
        assert!(!exact.egress_allows("alpha", from, "127.0.0.3", 8080));
        // A node's InternalIP is the host too, in any form, until it goes.
        let nodes = open_namespace("0.0.0.0/0, 10.0.0.9");
        nodes.upsert_node_address("n1", Some("10.0.0.5".parse().unwrap()));
        nodes.upsert_node_address("n2", Some("10.0.0.9".parse().unwrap()));
        assert!(!nodes.egress_allows("alpha", from, "10.0.0.5", 80));
        assert!(!nodes.egress_allows("alpha", from, "[::ffff:10.0.0.5]", 80));
        assert!(nodes.egress_allows("alpha", from, "10.0.0.9", 80), "named");
        assert!(nodes.egress_allows("alpha", from, "10.0.0.6", 80));
        nodes.remove_node_address("n1");
        assert!(nodes.egress_allows("alpha", from, "10.0.0.5", 80));
    }

    #[test]
    fn egress_policies_isolate_the_caller() {
        let alpha_no_egress = "{metadata: {name: e, namespace: alpha},
            spec: {podSelector: {}, policyTypes: [Egress]}}";
        assert_eq!(
            reach(&policies(&[alpha_no_egress]), 8080),
            [false, true, true]
        );
        let alpha_to_back = "{metadata: {name: e2, namespace: alpha},
            spec: {podSelector: {}, policyTypes: [Egress],
                   egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: back}}}]}]}}";
        assert_eq!(
            reach(&policies(&[alpha_no_egress, alpha_to_back]), 8080),
            [true, true, true]
        );
        let denied = policies(&[alpha_no_egress])
            .check(
                Some("10.240.0.2".parse().unwrap()),
                "10.240.0.4:8080".parse().unwrap(),
            )
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "egress of pod alpha/front is not allowed by its NetworkPolicies"
        );
    }
}
