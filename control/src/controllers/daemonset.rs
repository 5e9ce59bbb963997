//! The DaemonSet controller: one pod on every node the template fits (by
//! node selector, node affinity and taints), none elsewhere, and a rolling
//! update that replaces at most `maxUnavailable` pods at a time.
//!
//! As in Kubernetes, each pod is pinned to its node by a required node
//! affinity on `metadata.name` and placed by the scheduler, which counts
//! its resources; it tolerates the taints a node has while it is
//! unreachable or not ready, so a daemon stays through a node's trouble.
//! A pod's template generation is its `pod-template-generation` label. A
//! replacement on a node waits until the pod it replaces has terminated.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::events::EventType;
use super::replicaset::{controller_of, ready_since};
use super::scheduler::fit;
use super::{Context, Error};

/// The label that says which generation of the template a pod runs.
pub const GENERATION_LABEL: &str = "pod-template-generation";

pub async fn run(client: kube::Client) {
    let sets = Api::<DaemonSet>::all(client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    let context = Context::new(client.clone(), "daemonset-controller");
    controller
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        // Any node change may change where every DaemonSet belongs.
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_: Node| {
                store
                    .state()
                    .iter()
                    .map(|set| ObjectRef::from_obj(set.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "daemonset reconcile failed");
            }
        })
        .await;
}

/// The taints a daemon tolerates whatever its template says, as
/// Kubernetes adds them.
fn daemon_tolerations() -> Vec<Toleration> {
    [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    })
    .collect()
}

/// The pod the set would run on `node`.
fn pod_for(set: &DaemonSet, uid: &str, node: &str) -> Pod {
    let generation = set.metadata.generation.unwrap_or(1).to_string();
    let labels = [(GENERATION_LABEL.to_string(), generation)];
    let mut pod = super::pod_from_template(set, uid, &set.spec.template, None, labels);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .extend(daemon_tolerations());
    let affinity = spec.affinity.get_or_insert_with(Default::default);
    affinity.node_affinity = Some(
        serde_json::from_value(json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]}
        }))
        .unwrap_or_default(),
    );
    pod
}

/// The node a daemon pod is pinned to.
fn pinned_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required.node_selector_terms.iter().find_map(|term| {
        term.match_fields
            .iter()
            .flatten()
            .find(|f| f.key == "metadata.name")
            .and_then(|f| f.values.as_ref()?.first().cloned())
    })
}

fn is_current(pod: &Pod, generation: i64) -> bool {
    pod.labels().get(GENERATION_LABEL) == Some(&generation.to_string())
}

#[tracing::instrument(skip_all, fields(namespace = set.namespace(), name = set.name_any()))]
async fn reconcile(set: Arc<DaemonSet>, context: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = set.uid().ok_or(Error::Missing("uid"))?;
    let spec = &set.spec;
    let generation = set.metadata.generation.unwrap_or(1);
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let nodes = Api::<Node>::all(context.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    // Nodes where a pod of ours is still terminating: its replacement waits,
    // so that a node never runs two of the daemon at once.
    let mut terminating = std::collections::BTreeSet::new();
    for pod in pods_api.list(&ListParams::default()).await?.items {
        if controller_of(&pod.metadata).is_none_or(|c| c.uid != uid) {
            continue;
        }
        let Some(node) = pinned_node(&pod) else {
            continue;
        };
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if pod.metadata.deletion_timestamp.is_some() {
            terminating.insert(node);
        } else if !finished {
            by_node.entry(node).or_default().push(pod);
        }
    }

    // Where the template fits: its node selector and affinity, and taints
    // it tolerates (with the daemon tolerations added).
    let template_pod = Pod {
        spec: spec.template.spec.clone(),
        ..Pod::default()
    };
    let tolerations = pod_for(&set, &uid, "")
        .spec
        .and_then(|s| s.tolerations)
        .unwrap_or_default();
    let eligible: Vec<&Node> = nodes
        .iter()
        .filter(|node| {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            fit::node_affinity_matches(&template_pod, node)
                && taints.iter().all(|taint| {
                    taint.effect == "PreferNoSchedule"
                        || tolerations.iter().any(|t| fit::tolerates(t, taint))
                })
        })
        .collect();

    let mut desired = 0;
    let mut scheduled = 0;
    let mut ready = 0;
    let mut updated = 0;
    let mut misscheduled = 0;
    let mut stale = Vec::new();
    for node in &eligible {
        desired += 1;
        let name = node.name_any();
        let mut pods = by_node.remove(&name).unwrap_or_default();
        if pods.is_empty() && terminating.contains(&name) {
            continue;
        }
        if pods.is_empty() {
            let created = pods_api
                .create(&PostParams::default(), &pod_for(&set, &uid, &name))
                .await?;
            let message = format!("Created pod: {}", created.name_any());
            context
                .recorder
                .record(set.as_ref(), EventType::Normal, "SuccessfulCreate", message)
                .await;
            continue;
        }
        scheduled += 1;
        // Keep the newest current pod; any other on the node goes.
        pods.sort_by_key(|p| {
            (
                is_current(p, generation),
                p.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        });
        let keep = pods.pop();
        for extra in pods {
            super::delete_exact(&pods_api, &extra, PropagationPolicy::Background).await?;
        }
        if let Some(pod) = keep {
            if ready_since(&pod).is_some() {
                ready += 1;
            }
            if is_current(&pod, generation) {
                updated += 1;
            } else {
                stale.push(pod);
            }
        }
    }
    // Pods on nodes the set no longer fits (or that are gone) go.
    for pods in by_node.into_values() {
        misscheduled += 1;
        for pod in pods {
            super::delete_exact(&pods_api, &pod, PropagationPolicy::Background).await?;
        }
    }

    // Rolling update: replace stale pods while few enough are unavailable.
    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete") {
        let budget = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(1));
        let allowed = match budget {
            IntOrString::Int(n) => n.max(0),
            IntOrString::String(text) => text
                .trim_end_matches('%')
                .parse::<i32>()
                .map_or(1, |p| (p * desired + 99) / 100),
        }
        .max(1);
        let unavailable = desired - ready;
        let mut room = allowed - unavailable;
        // Unready stale pods first: replacing them costs no availability.
        stale.sort_by_key(|p| ready_since(p).is_some());
        for pod in stale {
            let costs = ready_since(&pod).is_some();
            if costs && room <= 0 {
                break;
            }
            super::delete_exact(&pods_api, &pod, PropagationPolicy::Background).await?;
            if costs {
                room -= 1;
            }
        }
    }

    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(ready),
        number_unavailable: Some((desired - ready).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: Some(generation),
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    super::write_status(&context.client, set.as_ref(), set.status.as_ref(), &status).await?;
    Ok(Action::await_change())
}
