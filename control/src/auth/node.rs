//! The Node authorizer: what a node (`system:node:<name>` in
//! `system:nodes`) may read and do, as Kubernetes' has it.
//!
//! Secrets, ConfigMaps and PersistentVolumeClaims are readable by a node
//! only one at a time and only when the graph links them to it: a pod
//! bound to the node refers to them (volumes, env, envFrom, image pull
//! secrets), or, since every Flotilla node is also the cluster's Ingress
//! gateway, an Ingress of the `flotilla` class (or of none) names the
//! Secret for TLS. Everything else a node may do is the `system:node`
//! ClusterRole's rules; NodeRestriction (`admission.rs`) then narrows writes
//! to the node's own Node, Lease and pods.

use std::collections::HashMap;
use std::sync::LazyLock;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::attributes::Attributes;
use super::feed::{Objects, Versioned};
use super::user::UserInfo;
use super::{Decision, bootstrap, rbac};

const PODS: &str = "/registry/pods/";
const INGRESSES: &str = "/registry/ingresses/";
/// The Ingress class every node serves (see `node::net::ingress`).
const INGRESS_CLASS: &str = "flotilla";

/// What a pod or an Ingress can give a node access to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    /// The account a pod runs as: the node may ask for its tokens.
    ServiceAccount,
}

impl Kind {
    fn of_resource(resource: &str) -> Option<Kind> {
        match resource {
            "secrets" => Some(Kind::Secret),
            "configmaps" => Some(Kind::ConfigMap),
            "persistentvolumeclaims" => Some(Kind::PersistentVolumeClaim),
            _ => None,
        }
    }
}

/// (kind, namespace, name).
type Reference = (Kind, String, String);

/// What the graph keeps of a pod.
struct PodEntry {
    /// Empty while it is not bound.
    node: String,
    uid: String,
    references: Vec<Reference>,
}

/// The graph: pods, Ingresses and what they name.
#[derive(Default)]
pub struct State {
    /// Per pod (namespace, name).
    pods: HashMap<(String, String), PodEntry>,
    /// Per node: how many of its pods refer to each object.
    by_node: HashMap<String, HashMap<Reference, u32>>,
    /// Per Ingress (namespace, name): its TLS Secrets.
    ingresses: HashMap<(String, String), Vec<Reference>>,
    /// How many Ingresses name each Secret.
    ingress_secrets: HashMap<Reference, u32>,
}

/// Which node may read which object, from the pods and Ingresses.
pub type NodeGraph = Versioned<State>;

impl NodeGraph {
    /// Whether `node` is linked to the object.
    pub fn links(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        let state = self.read();
        let reference = (kind, namespace.to_string(), name.to_string());
        state.ingress_secrets.contains_key(&reference)
            || state
                .by_node
                .get(node)
                .is_some_and(|linked| linked.contains_key(&reference))
    }

    /// Whether the pod is bound to `node`.
    pub fn pod_on(&self, node: &str, namespace: &str, name: &str) -> bool {
        let state = self.read();
        state
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|pod| pod.node == node)
    }

    /// The uid of the pod of that name, while it exists (what a token
    /// bound to it is checked against).
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        let state = self.read();
        let pod = state.pods.get(&(namespace.to_string(), name.to_string()))?;
        Some(pod.uid.clone())
    }
}

impl State {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        if let Some(rest) = key.strip_prefix(PODS) {
            let Some(id) = split(rest) else { return };
            self.unlink_pod(&id);
            let pod = value.and_then(|v| serde_json::from_slice::<Value>(v).ok());
            if let Some(pod) = pod {
                let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                let references = pod_references(&pod, &id.0);
                if !node.is_empty() {
                    let linked = self.by_node.entry(node.to_string()).or_default();
                    for reference in &references {
                        *linked.entry(reference.clone()).or_default() += 1;
                    }
                }
                let entry = PodEntry {
                    node: node.to_string(),
                    uid: pod["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    references,
                };
                self.pods.insert(id, entry);
            }
        } else if let Some(rest) = key.strip_prefix(INGRESSES) {
            let Some(id) = split(rest) else { return };
            if let Some(old) = self.ingresses.remove(&id) {
                for reference in old {
                    decrement(&mut self.ingress_secrets, &reference);
                }
            }
            let ingress = value.and_then(|v| serde_json::from_slice::<Value>(v).ok());
            if let Some(ingress) = ingress {
                let secrets = ingress_secrets(&ingress, &id.0);
                for reference in &secrets {
                    *self.ingress_secrets.entry(reference.clone()).or_default() += 1;
                }
                self.ingresses.insert(id, secrets);
            }
        }
    }

    fn unlink_pod(&mut self, id: &(String, String)) {
        let Some(pod) = self.pods.remove(id) else {
            return;
        };
        if let Some(linked) = self.by_node.get_mut(&pod.node) {
            for reference in &pod.references {
                decrement(linked, reference);
            }
            if linked.is_empty() {
                self.by_node.remove(&pod.node);
            }
        }
    }
}

fn decrement(counts: &mut HashMap<Reference, u32>, reference: &Reference) {
    if let Some(count) = counts.get_mut(reference) {
        *count -= 1;
        if *count == 0 {
            counts.remove(reference);
        }
    }
}

fn split(rest: &str) -> Option<(String, String)> {
    let (namespace, name) = rest.split_once('/')?;
    Some((namespace.to_string(), name.to_string()))
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Every Secret, ConfigMap and claim a pod names.
fn pod_references(pod: &Value, namespace: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    let mut add = |kind: Kind, name: &Value| {
        if let Some(name) = name.as_str().filter(|name| !name.is_empty()) {
            let reference = (kind, namespace.to_string(), name.to_string());
            if !found.contains(&reference) {
                found.push(reference);
            }
        }
    };
    let spec = &pod["spec"];
    let account = spec["serviceAccountName"]
        .as_str()
        .filter(|name| !name.is_empty());
    add(
        Kind::ServiceAccount,
        &Value::from(account.unwrap_or("default")),
    );
    for secret in items(&spec["imagePullSecrets"]) {
        add(Kind::Secret, &secret["name"]);
    }
    for volume in items(&spec["volumes"]) {
        add(Kind::Secret, &volume["secret"]["secretName"]);
        add(Kind::ConfigMap, &volume["configMap"]["name"]);
        add(
            Kind::PersistentVolumeClaim,
            &volume["persistentVolumeClaim"]["claimName"],
        );
        for source in items(&volume["projected"]["sources"]) {
            add(Kind::Secret, &source["secret"]["name"]);
            add(Kind::ConfigMap, &source["configMap"]["name"]);
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for container in items(&spec[list]) {
            for variable in items(&container["env"]) {
                add(Kind::Secret, &variable["valueFrom"]["secretKeyRef"]["name"]);
                add(
                    Kind::ConfigMap,
                    &variable["valueFrom"]["configMapKeyRef"]["name"],
                );
            }
            for source in items(&container["envFrom"]) {
                add(Kind::Secret, &source["secretRef"]["name"]);
                add(Kind::ConfigMap, &source["configMapRef"]["name"]);
            }
        }
    }
    found
}

/// The TLS Secrets of an Ingress the nodes serve.
fn ingress_secrets(ingress: &Value, namespace: &str) -> Vec<Reference> {
    let class = ingress["spec"]["ingressClassName"].as_str();
    if class.is_some_and(|class| class != INGRESS_CLASS) {
        return Vec::new();
    }
    items(&ingress["spec"]["tls"])
        .iter()
        .filter_map(|tls| tls["secretName"].as_str())
        .filter(|name| !name.is_empty())
        .map(|name| (Kind::Secret, namespace.to_string(), name.to_string()))
        .collect()
}

impl Objects for State {
    const PREFIXES: &'static [&'static str] = &[PODS, INGRESSES];

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        State::apply(self, &String::from_utf8_lossy(key), value);
    }
}

/// The `system:node` ClusterRole's rules, from the bootstrap policy.
pub(crate) fn node_rules() -> &'static [PolicyRule] {
    static RULES: LazyLock<Vec<PolicyRule>> = LazyLock::new(bootstrap::node_rules);
    &RULES
}

/// The Node authorizer's decision; no opinion on callers that are not
/// nodes.
pub fn authorize(graph: &NodeGraph, user: &UserInfo, attributes: &Attributes) -> Decision {
    let Some(node) = user.node_name() else {
        return Decision::NoOpinion;
    };
    if let Attributes::Resource(request) = attributes
        && request.group.is_empty()
        && let Some(kind) = Kind::of_resource(&request.resource)
    {
        if !request.subresource.is_empty()
            || !matches!(request.verb.as_str(), "get" | "list" | "watch")
        {
            return Decision::Deny(format!(
                "node '{node}' can only read {} one at a time",
                request.resource
            ));
        }
        if request.name.is_empty() {
            return Decision::Deny("can only get individual resources of this type".into());
        }
        return if graph.links(node, kind, &request.namespace, &request.name) {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
    }
    // Tokens only for the accounts its pods run as.
    if let Attributes::Resource(request) = attributes
        && request.group.is_empty()
        && request.resource == "serviceaccounts"
        && request.subresource == "token"
    {
        let linked = request.verb == "create"
            && graph.links(
                node,
                Kind::ServiceAccount,
                &request.namespace,
                &request.name,
            );
        return if linked {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
    }
    if node_rules()
        .iter()
        .any(|rule| rbac::rules::allows(rule, attributes))
    {
        Decision::Allow
    } else {
        Decision::NoOpinion
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use crate::auth::feed::Table;

    fn put(graph: &NodeGraph, key: &str, value: Value, revision: i64) {
        let bytes = serde_json::to_vec(&value).expect("json");
        graph.apply(key.as_bytes(), Some(&bytes), revision);
    }

    fn secret(verb: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            resource: "secrets".into(),
            namespace: namespace.into(),
            name: name.into(),
            ..ResourceAttributes::default()
        })
    }

    #[test]
    fn nodes_read_what_their_pods_and_the_gateway_use() {
        let graph = NodeGraph::default();
        put(
            &graph,
            "/registry/pods/a/web",
            json!({"spec": {"nodeName": "n1",
                "volumes": [{"name": "v", "secret": {"secretName": "db"}}],
                "containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]}}),
            1,
        );
        put(
            &graph,
            "/registry/ingresses/a/site",
            json!({"spec": {"tls": [{"secretName": "site-tls"}]}}),
            2,
        );
        put(
            &graph,
            "/registry/ingresses/a/other",
            json!({"spec": {"ingressClassName": "nginx", "tls": [{"secretName": "nginx-tls"}]}}),
            3,
        );
        let n1 = UserInfo::authenticated("system:node:n1", vec!["system:nodes".into()]);
        let n2 = UserInfo::authenticated("system:node:n2", vec!["system:nodes".into()]);
        assert_eq!(
            authorize(&graph, &n1, &secret("get", "a", "db")),
            Decision::Allow
        );
        assert!(matches!(
            authorize(&graph, &n2, &secret("get", "a", "db")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(&graph, &n1, &secret("get", "b", "db")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(&graph, &n1, &secret("list", "a", "")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(&graph, &n1, &secret("update", "a", "db")),
            Decision::Deny(_)
        ));
        assert_eq!(
            authorize(&graph, &n2, &secret("watch", "a", "site-tls")),
            Decision::Allow
        );
        assert!(matches!(
            authorize(&graph, &n2, &secret("get", "a", "nginx-tls")),
            Decision::Deny(_)
        ));
        assert!(graph.pod_on("n1", "a", "web"));
        // Tokens only for the account its pods run as (`default` here).
        let token = |account: &str| {
            Attributes::Resource(ResourceAttributes {
                verb: "create".into(),
                resource: "serviceaccounts".into(),
                subresource: "token".into(),
                namespace: "a".into(),
                name: account.into(),
                ..ResourceAttributes::default()
            })
        };
        assert_eq!(authorize(&graph, &n1, &token("default")), Decision::Allow);
        assert!(matches!(
            authorize(&graph, &n1, &token("admin")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            authorize(&graph, &n2, &token("default")),
            Decision::Deny(_)
        ));
        // The pod moves away (deleted): the link goes with it.
        graph.apply(b"/registry/pods/a/web", None, 4);
        assert!(matches!(
            authorize(&graph, &n1, &secret("get", "a", "db")),
            Decision::Deny(_)
        ));
        assert!(!graph.pod_on("n1", "a", "web"));
        // Others than nodes are not this authorizer's to decide.
        let alice = UserInfo::authenticated("alice", vec![]);
        assert_eq!(
            authorize(&graph, &alice, &secret("get", "a", "db")),
            Decision::NoOpinion
        );
    }
}
