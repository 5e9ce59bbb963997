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
//!   schedulers racing never double-bind.
//!
//! It knows pods and nodes, nothing of how pods run.

pub mod fit;
pub mod quantity;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::time::Instant;

use self::fit::{Candidate, Resources};
use super::events::{EventType, Recorder};

/// The scheduler name pods choose this scheduler by (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Back-off of a pod that fit nowhere: kube-scheduler's defaults.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A pod that fit nowhere is tried again after this even if nothing in the
/// cluster seemed to change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);
/// Bindings in flight at once.
const BINDINGS_IN_FLIGHT: usize = 32;
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

pub struct Scheduler {
    client: kube::Client,
    recorder: Recorder,
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// Pod uid → the node this scheduler bound it to, until the cache says so.
    assumed: HashMap<String, String>,
    waiting: HashMap<String, Waiting>,
    /// Bumped on every node change and every pod deletion or binding: what
    /// could make a waiting pod fit.
    generation: u64,
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

pub async fn run(client: kube::Client) {
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
        nodes,
        pods,
        assumed: HashMap::new(),
        waiting: HashMap::new(),
        generation: 0,
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

        let mut placed: BTreeMap<String, (Resources, Vec<&Pod>)> = BTreeMap::new();
        let by_uid: HashMap<String, &Pod> = pods
            .iter()
            .filter_map(|p| Some((p.uid()?, p.as_ref())))
            .collect();
        for pod in pods.iter() {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .or_else(|| pod.uid().and_then(|uid| self.assumed.get(&uid).cloned()));
            if let Some(node) = node
                && holds_room(pod)
            {
                let entry = placed.entry(node).or_default();
                entry.0 += fit::requests(pod);
                entry.1.push(pod.as_ref());
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

        let mut decisions = Vec::new();
        for pod in pending {
            let mut rejections: BTreeMap<String, usize> = BTreeMap::new();
            let mut best: Option<(i64, &str)> = None;
            for node in nodes.iter() {
                let name = node.name_any();
                let (used, on_node) = placed.get(&name).cloned().unwrap_or_default();
                let candidate = Candidate {
                    node,
                    used,
                    pods: on_node,
                };
                match fit::filter(pod, &candidate) {
                    Ok(()) => {
                        let score = fit::score(pod, &candidate);
                        if best.is_none_or(|(top, _)| score > top) {
                            best = Some((score, node.metadata.name.as_deref().unwrap_or_default()));
                        }
                    }
                    Err(reason) => *rejections.entry(reason).or_default() += 1,
                }
            }
            match best {
                Some((_, node)) => {
                    let entry = placed.entry(node.to_string()).or_default();
                    entry.0 += fit::requests(pod);
                    entry.1.push(pod);
                    if let Some(uid) = pod.uid() {
                        self.assumed.insert(uid, node.to_string());
                    }
                    decisions.push((pod.clone(), node.to_string()));
                }
                None => self.unschedulable(pod, nodes.len(), &rejections).await,
            }
        }
        drop(by_uid);

        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let outcomes: Vec<(Pod, String, Result<(), kube::Error>)> = stream::iter(decisions)
            .map(|(pod, node)| {
                let client = client.clone();
                let recorder = recorder.clone();
                async move {
                    let outcome = bind(&client, &pod, &node).await;
                    if outcome.is_ok() {
                        let message = format!(
                            "Successfully assigned {}/{} to {node}",
                            pod.namespace().unwrap_or_default(),
                            pod.name_any()
                        );
                        recorder
                            .record(&pod, EventType::Normal, "Scheduled", message)
                            .await;
                    }
                    (pod, node, outcome)
                }
            })
            .buffer_unordered(BINDINGS_IN_FLIGHT)
            .collect()
            .await;
        for (pod, node, outcome) in outcomes {
            if let Err(error) = outcome {
                tracing::warn!(pod = pod.name_any(), node, %error, "binding failed");
                if let Some(uid) = pod.uid() {
                    self.assumed.remove(&uid);
                    self.back_off(uid);
                }
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
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": k8s_openapi::jiff::Timestamp::now(),
            }]}});
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            if let Err(error) = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                tracing::debug!(%error, "could not mark the pod unschedulable");
            }
        }
    }
}

/// Finished pods hold no room.
fn holds_room(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    Ok(())
}
