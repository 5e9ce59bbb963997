//! The scheduler: binds each pod without a node to the best node that can
//! take it, through the `binding` subresource, as kube-scheduler does.
//!
//! - A cache of nodes and pods, fed by watches (kube-rs reflectors), plus
//!   the bindings this scheduler made that the watch has not shown yet
//!   ("assumed"), so that one cycle's decisions see the previous ones.
//! - Each cycle takes the pending pods in priority order, filters the
//!   nodes (`fit::filter`), scores the rest (`fit::score`) and binds the
//!   winners concurrently.
//! - A pod that fits nowhere gets a `FailedScheduling` Event and a
//!   `PodScheduled=False` condition saying how many nodes each filter
//!   rejected, and waits with back-off until the cluster changes.
//! - The API server refuses to bind a pod that already has a node, so two
//!   schedulers racing never double-bind. An elected scheduler also fences
//!   each binding with the Lease it leads by ([`crate::fence`]): once
//!   another member has taken the Lease over, this one's bindings fail, so
//!   two schedulers that both briefly believe they lead cannot each fill
//!   the same free room on a node.
//!
//! It knows pods and nodes, nothing of how pods run.

pub mod fit;
pub mod quantity;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use self::fit::Candidate;
use super::events::{EventType, Recorder};
use crate::fence::{FENCE_ANNOTATION, LeaseFence};

/// The scheduler name pods choose this scheduler by (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Back-off of a pod that fit nowhere: kube-scheduler's defaults.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A pod that fit nowhere is tried again after this even if nothing in the
/// cluster seemed to change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);
/// Bindings in flight at once: enough for the store to commit many in one
/// fsync (raft-store groups the proposals of one Ready).
const BINDINGS_IN_FLIGHT: usize = 128;
/// `Scheduled` events being written at once. They are written beside the
/// bindings, not before the next one; past this many, an event is dropped
/// (logged), as client-go's event broadcaster drops under load.
const EVENTS_IN_FLIGHT: usize = 64;
/// Pods placed per cycle; the rest wait for the next one.
const CYCLE_PODS_MAX: usize = 1_024;
/// How often back-offs are looked at when nothing else happens.
const TICK: Duration = Duration::from_millis(500);

/// The controller's uid of a pod, which siblings share.
pub fn owner_uid(pod: &Pod) -> Option<&str> {
    super::replicaset::controller_of(&pod.metadata).map(|owner| owner.uid.as_str())
}

/// A pod waiting after it fit nowhere.
struct Waiting {
    attempts: u32,
    retry_at: Instant,
    /// The cluster generation when it last failed.
    generation: u64,
    failed_at: Instant,
}

/// Where an elected scheduler learns its fencing token; `None` for a
/// scheduler that runs unelected (its bindings carry no fence).
pub type Fencing = Option<watch::Receiver<Option<LeaseFence>>>;

pub struct Scheduler {
    client: kube::Client,
    fencing: Fencing,
    recorder: Recorder,
    /// Permits for `Scheduled` events in flight.
    events: Arc<Semaphore>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// Pod uid → the node this scheduler bound it to, until the cache says so.
    assumed: HashMap<String, String>,
    waiting: HashMap<String, Waiting>,
    /// Bumped on every node change and every pod deletion or binding: what
    /// could make a waiting pod fit.
    generation: u64,
    /// Where the next pod's search over the nodes starts.
    next_node: usize,
}

/// What a watch event means to the scheduler.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Nothing,
    /// Something that could make a waiting pod fit.
    Changed,
    NodesListed,
    PodsListed,
}

pub async fn run(client: kube::Client, fencing: Fencing) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let node_changes = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| match event {
        Ok(watcher::Event::InitDone) => Signal::NodesListed,
        _ => Signal::Changed,
    })
    .boxed();
    let pod_changes = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| match event {
        Ok(watcher::Event::InitDone) => Signal::PodsListed,
        // A pod leaving or landing frees or takes room.
        Ok(watcher::Event::Delete(_)) => Signal::Changed,
        Ok(watcher::Event::Apply(pod))
            if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) =>
        {
            Signal::Changed
        }
        _ => Signal::Nothing,
    })
    .boxed();
    let mut changes = stream::select(node_changes, pod_changes);
    let mut scheduler = Scheduler {
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME),
        client,
        fencing,
        events: Arc::new(Semaphore::new(EVENTS_IN_FLIGHT)),
        nodes,
        pods,
        assumed: HashMap::new(),
        waiting: HashMap::new(),
        generation: 0,
        next_node: 0,
    };
    let (mut nodes_listed, mut pods_listed) = (false, false);
    let mut tick = tokio::time::interval(TICK);
    loop {
        let mut signals = Vec::new();
        tokio::select! {
            signal = changes.next() => match signal {
                Some(signal) => signals.push(signal),
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Take whatever else has arrived into this cycle.
        while let Some(Some(signal)) = futures::FutureExt::now_or_never(changes.next()) {
            signals.push(signal);
        }
        for signal in signals {
            match signal {
                Signal::Changed => scheduler.generation += 1,
                Signal::NodesListed => nodes_listed = true,
                Signal::PodsListed => pods_listed = true,
                Signal::Nothing => {}
            }
        }
        if nodes_listed && pods_listed {
            scheduler.cycle().await;
        }
    }
}

impl Scheduler {
    #[tracing::instrument(skip_all, fields(generation = self.generation))]
    async fn cycle(&mut self) {
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        // Forget assumptions the cache now confirms, or whose pods are gone.
        let bound: HashMap<String, bool> = pods
            .iter()
            .filter_map(|p| Some((p.uid()?, p.spec.as_ref()?.node_name.is_some())))
            .collect();
        self.assumed.retain(|uid, _| bound.get(uid) == Some(&false));
        self.waiting.retain(|uid, _| bound.get(uid) == Some(&false));

        // Each node once, with what is placed on it; a pod on a node the
        // cache does not know holds room nowhere that matters.
        let mut candidates: Vec<Candidate<'_>> =
            nodes.iter().map(|node| Candidate::new(node)).collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| Some((node.metadata.name.as_deref()?, at)))
            .collect();
        for pod in pods.iter() {
            let assumed = pod.uid().and_then(|uid| self.assumed.get(&uid).cloned());
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .or(assumed);
            if let Some(&at) = node.as_deref().and_then(|node| index.get(node))
                && holds_room(pod)
            {
                candidates[at].place(pod, fit::requests(pod));
            }
        }

        let now = Instant::now();
        let mut pending: Vec<&Pod> = pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| self.wants(p))
            .filter(|p| {
                p.uid()
                    .and_then(|uid| self.waiting.get(&uid))
                    .is_none_or(|w| {
                        now >= w.retry_at
                            && (w.generation != self.generation
                                || now - w.failed_at >= UNSCHEDULABLE_RETRY)
                    })
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|p| {
            let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            (
                std::cmp::Reverse(priority),
                p.metadata.creation_timestamp.clone().map(|t| t.0),
            )
        });
        pending.truncate(CYCLE_PODS_MAX);

        let enough = feasible_nodes_to_find(candidates.len());
        let mut decisions = Vec::new();
        for pod in pending {
            let wanted = fit::requests(pod);
            let mut rejections: BTreeMap<String, usize> = BTreeMap::new();
            let mut best: Option<(i64, usize)> = None;
            let mut feasible = 0;
            let mut examined = 0;
            // As kube-scheduler does: start where the last pod stopped and
            // stop once enough feasible nodes are found, so that every node
            // gets its turn and a large cluster costs a bounded search.
            for offset in 0..candidates.len() {
                let at = (self.next_node + offset) % candidates.len();
                let candidate = &candidates[at];
                examined += 1;
                match fit::filter(pod, wanted, candidate) {
                    Ok(()) => {
                        let score = fit::score(pod, wanted, candidate);
                        if best.is_none_or(|(top, _)| score > top) {
                            best = Some((score, at));
                        }
                        feasible += 1;
                        if feasible >= enough {
                            break;
                        }
                    }
                    Err(reason) => *rejections.entry(reason).or_default() += 1,
                }
            }
            if !candidates.is_empty() {
                self.next_node = (self.next_node + examined) % candidates.len();
            }
            match best {
                Some((_, at)) => {
                    let candidate = &mut candidates[at];
                    candidate.place(pod, wanted);
                    let node = candidate.node.name_any();
                    if let Some(uid) = pod.uid() {
                        self.assumed.insert(uid, node.clone());
                    }
                    decisions.push((pod.clone(), node));
                }
                None => self.unschedulable(pod, nodes.len(), &rejections).await,
            }
        }

        let fence = match &self.fencing {
            None => None,
            Some(fencing) => match fencing.borrow().clone() {
                Some(fence) => Some(fence),
                // No longer leading: the loops are about to stop.
                None => {
                    for (pod, _) in &decisions {
                        if let Some(uid) = pod.uid() {
                            self.assumed.remove(&uid);
                        }
                    }
                    return;
                }
            },
        };
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let events = self.events.clone();
        let outcomes: Vec<(Pod, String, Result<(), kube::Error>)> = stream::iter(decisions)
            .map(|(pod, node)| {
                let client = client.clone();
                let recorder = recorder.clone();
                let events = events.clone();
                let fence = fence.as_ref();
                async move {
                    let outcome = bind(&client, &pod, &node, fence).await;
                    if outcome.is_ok() {
                        record_scheduled(&recorder, &events, &pod, &node);
                    }
                    (pod, node, outcome)
                }
            })
            .buffer_unordered(BINDINGS_IN_FLIGHT)
            .collect()
            .await;
        for (pod, node, outcome) in outcomes {
            let Err(error) = outcome else { continue };
            tracing::warn!(pod = pod.name_any(), node, %error, "binding failed");
            let reason = match &error {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            self.recorder
                .record(
                    &pod,
                    EventType::Warning,
                    "FailedScheduling",
                    format!("Binding rejected: {reason}"),
                )
                .await;
            let Some(uid) = pod.uid() else { continue };
            self.assumed.remove(&uid);
            // A conflict (the pod bound elsewhere, or the fence moved) is
            // settled by the next look at the cache, not by waiting.
            let conflict = matches!(&error, kube::Error::Api(status) if status.code == 409);
            if !conflict {
                self.back_off(uid);
            }
        }
    }

    /// Whether the pod is this scheduler's to place now.
    fn wants(&self, pod: &Pod) -> bool {
        let Some(spec) = &pod.spec else {
            return false;
        };
        let ours = spec
            .scheduler_name
            .as_deref()
            .is_none_or(|name| name.is_empty() || name == SCHEDULER_NAME);
        let unbound = spec.node_name.as_deref().is_none_or(str::is_empty);
        let assumed = pod.uid().is_some_and(|uid| self.assumed.contains_key(&uid));
        ours && unbound && !assumed && pod.metadata.deletion_timestamp.is_none() && holds_room(pod)
    }

    fn back_off(&mut self, uid: String) {
        let now = Instant::now();
        let waiting = self.waiting.entry(uid).or_insert(Waiting {
            attempts: 0,
            retry_at: now,
            generation: 0,
            failed_at: now,
        });
        waiting.attempts += 1;
        let delay = BACKOFF_INITIAL
            .saturating_mul(1 << (waiting.attempts - 1).min(8))
            .min(BACKOFF_MAX);
        waiting.retry_at = now + delay;
        waiting.generation = self.generation;
        waiting.failed_at = now;
    }

    async fn unschedulable(
        &mut self,
        pod: &Pod,
        total: usize,
        rejections: &BTreeMap<String, usize>,
    ) {
        let reasons: Vec<String> = rejections
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        let message = if reasons.is_empty() {
            format!("0/{total} nodes are available: no nodes registered.")
        } else {
            format!("0/{total} nodes are available: {}.", reasons.join(", "))
        };
        tracing::debug!(pod = pod.name_any(), %message, "unschedulable");
        if let Some(uid) = pod.uid() {
            self.back_off(uid);
        }
        self.recorder
            .record(pod, EventType::Warning, "FailedScheduling", message.clone())
            .await;
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str()));
        if !already {
            let condition = json!({
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": k8s_openapi::jiff::Timestamp::now(),
            });
            super::set_pod_condition(&self.client, pod, condition, "mark the pod unschedulable")
                .await;
        }
    }
}

/// How many feasible nodes a pod's search stops at: kube-scheduler's
/// adaptive `percentageOfNodesToScore` (every node up to 100; then 50%
/// falling by one point per 125 nodes, at least 5%, and never under 100).
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN_NODES: usize = 100;
    if nodes <= MIN_NODES {
        return nodes.max(1);
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN_NODES)
}

/// Records that `pod` was bound to `node`, in the background; dropped when
/// [`EVENTS_IN_FLIGHT`] are already being written.
fn record_scheduled(recorder: &Recorder, events: &Arc<Semaphore>, pod: &Pod, node: &str) {
    let Ok(permit) = events.clone().try_acquire_owned() else {
        tracing::debug!(
            pod = pod.name_any(),
            "too many events in flight; Scheduled dropped"
        );
        return;
    };
    let message = format!(
        "Successfully assigned {}/{} to {node}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    );
    let (recorder, pod) = (recorder.clone(), pod.clone());
    tokio::spawn(async move {
        recorder
            .record(&pod, EventType::Normal, "Scheduled", message)
            .await;
        drop(permit);
    });
}

/// Finished pods hold no room.
fn holds_room(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn bind(
    client: &kube::Client,
    pod: &Pod,
    node: &str,
    fence: Option<&LeaseFence>,
) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    if let Some(fence) = fence {
        binding["metadata"]["annotations"] = json!({ FENCE_ANNOTATION: fence.to_string() });
    }
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::feasible_nodes_to_find;

    #[test]
    fn the_search_is_bounded_as_kube_scheduler_bounds_it() {
        assert_eq!(feasible_nodes_to_find(0), 1);
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(200), 100);
        assert_eq!(feasible_nodes_to_find(1_000), 420);
        assert_eq!(feasible_nodes_to_find(5_000), 500);
        assert_eq!(feasible_nodes_to_find(20_000), 1_000);
    }
}
