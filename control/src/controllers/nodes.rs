//! The node lifecycle controller: a node whose agent stops renewing its
//! Lease (and posting its status) for the grace period becomes
//! `Ready=Unknown`, is tainted `node.kubernetes.io/unreachable`
//! (NoSchedule and NoExecute) and its pods are marked not ready; after the
//! eviction timeout (or a pod's own `tolerationSeconds`) its pods are
//! deleted, so their owners replace them elsewhere. When the agent comes
//! back, the taints go.
//!
//! Silence is measured on this member's clock: the time since the Lease's
//! `renewTime` (or the Ready condition's heartbeat) last changed, never the
//! agent's timestamps themselves, as Kubernetes does.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PropagationPolicy};
use serde_json::json;
use tokio::time::Instant;

use super::events::{EventType, Recorder};
use super::scheduler::fit::tolerates;

/// The taint of a node whose agent is silent.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Kubernetes' defaults; tests shorten them.
#[derive(Clone, Debug)]
pub struct NodeTimings {
    /// How long a node may be silent before it is NotReady (50 s).
    pub grace: Duration,
    /// How long pods stay on an unreachable node that they do not tolerate
    /// for longer (300 s, Kubernetes' default toleration).
    pub eviction: Duration,
    /// How often nodes are looked at (5 s).
    pub monitor_period: Duration,
}

impl Default for NodeTimings {
    fn default() -> Self {
        NodeTimings {
            grace: Duration::from_secs(50),
            eviction: Duration::from_secs(300),
            monitor_period: Duration::from_secs(5),
        }
    }
}

/// The last heartbeat seen from a node, and when we first saw it.
struct Heard {
    beat: String,
    at: Instant,
}

pub async fn run(client: kube::Client, timings: NodeTimings) {
    let recorder = Recorder::new(client.clone(), "node-controller");
    let mut heard: HashMap<String, Heard> = HashMap::new();
    let mut tick = tokio::time::interval(timings.monitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let span = tracing::debug_span!("node-lifecycle");
        let pass = monitor(&client, &recorder, &timings, &mut heard);
        if let Err(error) = tracing::Instrument::instrument(pass, span).await {
            tracing::warn!(%error, "node lifecycle pass failed; next pass retries");
        }
    }
}

async fn monitor(
    client: &kube::Client,
    recorder: &Recorder,
    timings: &NodeTimings,
    heard: &mut HashMap<String, Heard>,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewals: HashMap<String, String> = leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|lease| {
            let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0.to_string();
            Some((lease.name_any(), renewed))
        })
        .collect();
    let all = nodes.list(&ListParams::default()).await?.items;
    heard.retain(|name, _| all.iter().any(|n| n.name_any() == *name));
    let now = Instant::now();
    for node in all {
        let name = node.name_any();
        let ready = ready_condition(&node);
        // Either sign of life counts: a renewed Lease or a fresh heartbeat.
        let beat = format!(
            "{}|{}",
            renewals.get(&name).cloned().unwrap_or_default(),
            ready
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        );
        let entry = heard.entry(name.clone()).or_insert(Heard {
            beat: beat.clone(),
            at: now,
        });
        if entry.beat != beat {
            *entry = Heard { beat, at: now };
        }
        let silent = now.duration_since(entry.at) > timings.grace;
        let tainted = unreachable_taint(&node).is_some();
        if silent && !tainted {
            mark_unreachable(client, recorder, &node).await?;
        } else if !silent && tainted {
            tracing::info!(node = name, "node is back");
            set_unreachable_taints(&nodes, &node, false).await?;
            recorder
                .record(
                    &node,
                    EventType::Normal,
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                )
                .await;
        }
        if let Some(taint) = unreachable_taint(&node).filter(|_| silent) {
            evict(client, recorder, timings, &name, &taint).await?;
        }
    }
    Ok(())
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn unreachable_taint(node: &Node) -> Option<Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute")
        .cloned()
}

async fn mark_unreachable(
    client: &kube::Client,
    recorder: &Recorder,
    node: &Node,
) -> Result<(), kube::Error> {
    let name = node.name_any();
    tracing::warn!(node = name, "node is silent: marking it unreachable");
    let nodes: Api<Node> = Api::all(client.clone());
    // Every condition becomes Unknown: nobody knows how the node is.
    let now = Time(Timestamp::now());
    let conditions: Vec<serde_json::Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|condition| {
            json!({
                "type": condition.type_,
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": condition.last_heartbeat_time,
                "lastTransitionTime": now,
            })
        })
        .collect();
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    set_unreachable_taints(&nodes, node, true).await?;
    recorder
        .record(
            node,
            EventType::Normal,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        )
        .await;
    // Its pods are no longer ready: Services stop sending them traffic.
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await?;
    for pod in on_node {
        let condition = json!({"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": now});
        super::set_pod_condition(client, &pod, condition, "mark the pod not ready").await;
    }
    Ok(())
}

async fn set_unreachable_taints(
    nodes: &Api<Node>,
    node: &Node,
    on: bool,
) -> Result<(), kube::Error> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != UNREACHABLE_TAINT)
        .collect();
    if on {
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                effect: effect.into(),
                time_added: Some(Time(Timestamp::now())),
                value: None,
            });
        }
    }
    let patch = json!({"spec": {"taints": taints}, "metadata": {"resourceVersion": node.resource_version()}});
    nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}

/// Deletes the node's pods whose toleration of `taint` has run out.
async fn evict(
    client: &kube::Client,
    recorder: &Recorder,
    timings: &NodeTimings,
    node: &str,
    taint: &Taint,
) -> Result<(), kube::Error> {
    let since = taint
        .time_added
        .as_ref()
        .map_or_else(Timestamp::now, |t| t.0);
    let tainted_for =
        Duration::try_from(Timestamp::now().duration_since(since)).unwrap_or_default();
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    for pod in on_node {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let matching = tolerations.iter().find(|t| tolerates(t, taint));
        // A toleration without seconds keeps the pod there for good; none at
        // all gets Kubernetes' default toleration of the eviction timeout.
        let allowed = match matching {
            Some(toleration) => match toleration.toleration_seconds {
                None => continue,
                Some(seconds) => Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
            },
            None => timings.eviction,
        };
        if tainted_for < allowed {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        if !super::delete_exact(&api, &pod, PropagationPolicy::Background).await? {
            continue;
        }
        let message = format!(
            "Marking for deletion Pod {}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        );
        recorder
            .record(&pod, EventType::Normal, "TaintManagerEviction", message)
            .await;
    }
    Ok(())
}
