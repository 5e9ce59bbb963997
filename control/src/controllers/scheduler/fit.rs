//! Whether a pod may go on a node (the filters) and how good a place it is
//! (the scores), as pure functions of the pod, the node and what is
//! already placed there. The names and messages are kube-scheduler's, so
//! `kubectl describe` reads the same.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};

use super::quantity;
use crate::controllers::selector;

/// Requests in milli-units: CPU, memory, and the pod slot itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub pods: i128,
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.pods += other.pods;
    }
}

/// What a pod asks for: its containers' requests summed (a container with
/// only limits requests its limits), or its largest init container if that
/// is more, plus one pod slot.
pub fn requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let of = |container: &k8s_openapi::api::core::v1::Container, name: &str| -> i128 {
        let resources = container.resources.as_ref();
        resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(name))
            .or_else(|| {
                resources
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get(name))
            })
            .and_then(|q| quantity::milli(&q.0))
            .unwrap_or(0)
    };
    let sum = |name: &str| spec.containers.iter().map(|c| of(c, name)).sum::<i128>();
    let init = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| of(c, name))
            .max()
            .unwrap_or(0)
    };
    Resources {
        cpu: sum("cpu").max(init("cpu")),
        memory: sum("memory").max(init("memory")),
        pods: 1_000,
    }
}

/// What the node offers: `status.allocatable`, else its capacity.
pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let get = |name: &str| {
        status
            .and_then(|s| s.allocatable.as_ref().and_then(|a| a.get(name)))
            .or_else(|| {
                status
                    .and_then(|s| s.capacity.as_ref())
                    .and_then(|c| c.get(name))
            })
            .and_then(|q| quantity::milli(&q.0))
            .unwrap_or(0)
    };
    Resources {
        cpu: get("cpu"),
        memory: get("memory"),
        pods: get("pods"),
    }
}

/// A node and what is placed on it already.
pub struct Candidate<'a> {
    pub node: &'a Node,
    /// `allocatable(node)`, read once rather than per pod.
    pub offered: Resources,
    pub used: Resources,
    pub pods: Vec<&'a Pod>,
}

impl<'a> Candidate<'a> {
    /// The node with nothing placed on it yet.
    pub fn new(node: &'a Node) -> Self {
        Candidate {
            node,
            offered: allocatable(node),
            used: Resources::default(),
            pods: Vec::new(),
        }
    }

    /// Counts `pod`, which asks for `wanted`, as placed here.
    pub fn place(&mut self, pod: &'a Pod, wanted: Resources) {
        self.used += wanted;
        self.pods.push(pod);
    }
}

/// Why a node was rejected, in kube-scheduler's words.
pub type Rejection = String;

/// Runs every filter on `pod`, which asks for `wanted` (`requests(pod)`,
/// computed once by the caller); the first that rejects says why.
pub fn filter(pod: &Pod, wanted: Resources, candidate: &Candidate<'_>) -> Result<(), Rejection> {
    let node = candidate.node;
    let spec = node.spec.as_ref();
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    if !is_ready(node) {
        return Err("node(s) were not ready".into());
    }
    if spec.and_then(|s| s.unschedulable) == Some(true) {
        let cordon = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &cordon)) {
            return Err("node(s) were unschedulable".into());
        }
    }
    if !node_affinity_matches(pod, node) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    for taint in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        let blocks = matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocks && !tolerations.iter().any(|t| tolerates(t, taint)) {
            let value = taint.value.as_deref().unwrap_or_default();
            return Err(format!(
                "node(s) had untolerated taint {{{}: {value}}}",
                taint.key
            ));
        }
    }
    let offered = candidate.offered;
    if candidate.used.pods + wanted.pods > offered.pods {
        return Err("Too many pods".into());
    }
    if wanted.cpu > 0 && candidate.used.cpu + wanted.cpu > offered.cpu {
        return Err("Insufficient cpu".into());
    }
    if wanted.memory > 0 && candidate.used.memory + wanted.memory > offered.memory {
        return Err("Insufficient memory".into());
    }
    if violates_anti_affinity(pod, &candidate.pods) {
        return Err("node(s) didn't match pod anti-affinity rules".into());
    }
    Ok(())
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Kubernetes' toleration rule: same key (or an empty key with `Exists`,
/// which tolerates everything), the value when the operator is `Equal`,
/// and the effect unless the toleration leaves it empty.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists
        || toleration.value.as_deref().unwrap_or_default()
            == taint.value.as_deref().unwrap_or_default()
}

pub fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = &pod.spec else {
        return true;
    };
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    // Terms are ORed; an absent requirement admits every node.
    selected
        && required.is_none_or(|selector| {
            selector
                .node_selector_terms
                .iter()
                .any(|term| term_matches(term, node, labels))
        })
}

fn term_matches(term: &NodeSelectorTerm, node: &Node, labels: &BTreeMap<String, String>) -> bool {
    let fields: BTreeMap<String, String> = node
        .metadata
        .name
        .iter()
        .map(|name| ("metadata.name".to_string(), name.clone()))
        .collect();
    let expressions = term.match_expressions.iter().flatten();
    let field_expressions = term.match_fields.iter().flatten();
    let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && term.match_fields.as_ref().is_none_or(Vec::is_empty);
    // An empty term matches nothing, as in Kubernetes.
    !empty
        && expressions
            .into_iter()
            .all(|r| requirement_holds(r, labels))
        && field_expressions
            .into_iter()
            .all(|r| requirement_holds(r, &fields))
}

fn requirement_holds(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let operator = requirement.operator.as_str();
    if let Some(holds) = selector::set_operator_holds(operator, &requirement.key, values, labels) {
        return holds;
    }
    // Gt and Lt compare integers; anything else matches nothing.
    let number = |text: &str| text.parse::<i64>().ok();
    let actual = labels.get(&requirement.key).and_then(|v| number(v));
    let bound = values.first().and_then(|v| number(v));
    match (operator, actual, bound) {
        ("Gt", Some(actual), Some(bound)) => actual > bound,
        ("Lt", Some(actual), Some(bound)) => actual < bound,
        _ => false,
    }
}

/// Required pod anti-affinity with the hostname topology: neither may the
/// pod repel a pod on the node, nor a pod on the node repel it. Other
/// topology keys are treated as the hostname (every node its own domain).
fn violates_anti_affinity(pod: &Pod, placed: &[&Pod]) -> bool {
    let terms_of = |pod: &Pod| -> Vec<PodAffinityTerm> {
        pod.spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    };
    let repels = |term: &PodAffinityTerm, owner: &Pod, other: &Pod| {
        let namespace = owner.metadata.namespace.clone().unwrap_or_default();
        let in_scope = term.namespaces.as_ref().filter(|n| !n.is_empty()).map_or(
            other.metadata.namespace.as_deref() == Some(namespace.as_str()),
            |names| {
                other
                    .metadata
                    .namespace
                    .as_ref()
                    .is_some_and(|n| names.contains(n))
            },
        );
        let labels = other.metadata.labels.clone().unwrap_or_default();
        in_scope
            && term
                .label_selector
                .as_ref()
                .is_some_and(|s| selector::matches(s, &labels))
    };
    let own = terms_of(pod);
    placed.iter().any(|other| {
        own.iter().any(|term| repels(term, pod, other))
            || terms_of(other).iter().any(|term| repels(term, other, pod))
    })
}

/// The score of a feasible node, higher is better: least allocated and
/// balanced allocation after placing the pod, fewer siblings (pods of the
/// same controller) already there, and preferred node affinity.
pub fn score(pod: &Pod, wanted: Resources, candidate: &Candidate<'_>) -> i64 {
    let offered = candidate.offered;
    let mut after = candidate.used;
    after += wanted;
    let fraction = |used: i128, total: i128| {
        if total <= 0 {
            1.0
        } else {
            (used as f64 / total as f64).clamp(0.0, 1.0)
        }
    };
    let cpu = fraction(after.cpu, offered.cpu);
    let memory = fraction(after.memory, offered.memory);
    let pods = fraction(after.pods, offered.pods);
    let least_allocated = (3.0 - cpu - memory - pods) / 3.0 * 100.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    let owner = super::owner_uid(pod);
    let siblings = candidate
        .pods
        .iter()
        .filter(|p| owner.is_some() && super::owner_uid(p) == owner)
        .count() as f64;
    let spread = 100.0 / (1.0 + siblings);
    let no_labels = BTreeMap::new();
    let labels = candidate
        .node
        .metadata
        .labels
        .as_ref()
        .unwrap_or(&no_labels);
    let preferred: i64 = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, candidate.node, labels))
        .map(|p| i64::from(p.weight))
        .sum();
    // Spreading weighs most: replicas on different nodes is what users of
    // Deployments count on.
    (least_allocated + balanced + 2.0 * spread) as i64 + preferred
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        let mut base = json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "zone": "a"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "3"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        json_patch::merge(&mut base, &value);
        serde_json::from_value(base).unwrap()
    }

    fn pod(value: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x:1",
                "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]},
        });
        json_patch::merge(&mut base, &value);
        serde_json::from_value(base).unwrap()
    }

    fn check(pod: &Pod, node: &Node, used: Resources, placed: Vec<&Pod>) -> Result<(), Rejection> {
        filter(
            pod,
            requests(pod),
            &Candidate {
                used,
                pods: placed,
                ..Candidate::new(node)
            },
        )
    }

    #[test]
    fn filters_reject_with_kubernetes_reasons() {
        let p = pod(json!({}));
        let free = Resources::default();
        assert_eq!(check(&p, &node(json!({})), free, vec![]), Ok(()));
        let not_ready =
            node(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(
            check(&p, &not_ready, free, vec![]).unwrap_err(),
            "node(s) were not ready"
        );
        let cordoned = node(json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            check(&p, &cordoned, free, vec![]).unwrap_err(),
            "node(s) were unschedulable"
        );
        let busy = Resources {
            cpu: 1_800,
            memory: 0,
            pods: 1_000,
        };
        assert_eq!(
            check(&p, &node(json!({})), busy, vec![]).unwrap_err(),
            "Insufficient cpu"
        );
        let full = Resources {
            cpu: 0,
            memory: 0,
            pods: 3_000,
        };
        assert_eq!(
            check(&p, &node(json!({})), full, vec![]).unwrap_err(),
            "Too many pods"
        );
        let elsewhere = pod(json!({"spec": {"nodeSelector": {"zone": "b"}}}));
        assert!(
            check(&elsewhere, &node(json!({})), free, vec![])
                .unwrap_err()
                .contains("affinity/selector")
        );
        let tainted = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            check(&p, &tainted, free, vec![]).unwrap_err(),
            "node(s) had untolerated taint {dedicated: gpu}"
        );
        let tolerant = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}}),
        );
        assert_eq!(check(&tolerant, &tainted, free, vec![]), Ok(()));
    }

    #[test]
    fn required_node_affinity_and_anti_affinity() {
        let picky = pod(json!({"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
        ]}}}}}));
        let free = Resources::default();
        assert_eq!(check(&picky, &node(json!({})), free, vec![]), Ok(()));
        let lonely = pod(json!({"spec": {"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "web"}},
                "topologyKey": "kubernetes.io/hostname"}]}}}}));
        let neighbour = pod(json!({"metadata": {"name": "q"}}));
        assert!(check(&lonely, &node(json!({})), free, vec![&neighbour]).is_err());
        // Symmetric: a placed pod's anti-affinity repels the newcomer.
        assert!(check(&neighbour, &node(json!({})), free, vec![&lonely]).is_err());
        let stranger = pod(json!({"metadata": {"labels": {"app": "db"}}}));
        assert_eq!(
            check(&lonely, &node(json!({})), free, vec![&stranger]),
            Ok(())
        );
    }

    #[test]
    fn emptier_nodes_and_fewer_siblings_score_higher() {
        let p = pod(json!({}));
        let n = node(json!({}));
        let empty = Candidate::new(&n);
        let loaded = Candidate {
            used: Resources {
                cpu: 1_000,
                memory: 0,
                pods: 1_000,
            },
            ..Candidate::new(&n)
        };
        let wanted = requests(&p);
        assert!(score(&p, wanted, &empty) > score(&p, wanted, &loaded));
    }
}
