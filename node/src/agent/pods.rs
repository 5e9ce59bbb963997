//! The pods bound to this node: one watch of `spec.nodeName=<node>`, and
//! one worker (`worker.rs`) per pod that the watch's events are handed to.
//!
//! The watch is kube-runtime's `watcher`: after a disconnect it relists,
//! and a relist is where a pod deleted while the agent was away is noticed
//! (it is running here but was not listed). This module decides which
//! worker gets what; it never runs or stops a pod itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::AgentConfig;
use super::metrics::{ErrorKind, Metrics};
use super::worker::{Desired, Worker};
use crate::NodeRuntime;

/// What the pod loop and its workers share.
pub struct PodContext {
    pub client: kube::Client,
    /// The pods' addresses from the Node's podCIDR.
    pub addresses: super::ipam::PodAddresses,
    pub runtime: NodeRuntime,
    pub config: AgentConfig,
    pub metrics: Arc<Metrics>,
    pub directory: PodDirectory,
    /// The pod network, if the node has one.
    pub network: Option<crate::net::PodNetwork>,
}

/// Pods on this node by namespace and name, for the log endpoint, which
/// is addressed by name while the runtime knows pods by uid.
#[derive(Clone, Default)]
pub struct PodDirectory {
    pods: Arc<Mutex<HashMap<(String, String), String>>>,
}

impl PodDirectory {
    /// The uid of the pod `namespace/name` running here.
    pub fn uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub(super) fn insert(&self, namespace: &str, name: &str, uid: &str) {
        self.lock()
            .insert((namespace.to_owned(), name.to_owned()), uid.to_owned());
    }

    /// Forgets `namespace/name` if it still names pod `uid` (a newer pod of
    /// the same name may have taken the entry).
    pub(super) fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut pods = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if pods.get(&key).is_some_and(|current| current == uid) {
            pods.remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        // A poisoned lock only means a panic between two map operations.
        self.pods
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Watches this node's pods and hands each event to its pod's worker,
/// until the task is dropped (which drops every worker with it).
pub async fn run(context: Arc<PodContext>) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let selector = format!("spec.nodeName={}", context.config.node_name);
    let events = watcher::watcher(pods, watcher::Config::default().fields(&selector))
        .backoff(super::backoff::for_watches(&context.config.retry));
    let mut events = std::pin::pin!(events);
    let mut workers = Workers::new(context.clone());
    // The uids listed since the watch (re)started; `Some` during a relist.
    let mut listed: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                        listed.insert(uid);
                    }
                    workers.apply(pod);
                }
                Some(Ok(Event::InitDone)) => {
                    if let Some(listed) = listed.take() {
                        workers.keep_only(&listed);
                    }
                    // Every listed pod's address is recovered (in `apply`):
                    // new ones may be given without taking a held one.
                    context.addresses.recovered();
                }
                Some(Ok(Event::Apply(pod))) => workers.apply(pod),
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        workers.gone(uid);
                    }
                }
                Some(Err(error)) => {
                    // The watcher backs off and relists by itself.
                    context.metrics.error(ErrorKind::Watch);
                    tracing::warn!(%error, "pod watch failed; relisting");
                }
                None => {
                    tracing::error!("pod watch ended");
                    return;
                }
            },
            Some(finished) = workers.tasks.join_next() => workers.finished(finished),
        }
    }
}

/// The running workers: each gets the latest desired state of its pod
/// through a `watch` channel, so a slow worker skips stale states instead
/// of queueing them (the channel holds one value: bounded by construction).
struct Workers {
    context: Arc<PodContext>,
    desired: HashMap<String, watch::Sender<Desired>>,
    tasks: JoinSet<String>,
}

impl Workers {
    fn new(context: Arc<PodContext>) -> Self {
        Self {
            context,
            desired: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// A pod was added or changed in the API.
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.recover_address(&uid, &pod);
        let pod = Arc::new(pod);
        match self.desired.get(&uid) {
            Some(sender) => {
                sender.send_replace(Desired::Run(pod));
            }
            None => self.spawn(uid, Desired::Run(pod)),
        }
    }

    /// A pod that runs (or is to run) keeps the address it reported, also
    /// across an agent restart; one that finished has let it go.
    fn recover_address(&self, uid: &str, pod: &Pod) {
        let Some(status) = pod.status.as_ref() else {
            return;
        };
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let address = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        if let (false, Some(address)) = (finished, address) {
            self.context.addresses.recover(uid, address);
        }
    }

    /// A pod left the API (or this node).
    fn gone(&mut self, uid: &str) {
        match self.desired.get(uid) {
            Some(sender) => {
                sender.send_replace(Desired::Gone);
            }
            // Running here without a worker (left by an earlier agent):
            // a worker for it removes it.
            None if self.context.runtime.pod(uid).is_some() => {
                self.spawn(uid.to_owned(), Desired::Gone);
            }
            None => {}
        }
    }

    /// After a relist: every pod on this node that was not listed is gone.
    fn keep_only(&mut self, listed: &HashSet<String>) {
        let mut here: HashSet<String> = self.desired.keys().cloned().collect();
        here.extend(self.context.runtime.pod_uids());
        for uid in here.difference(listed) {
            tracing::info!(%uid, "pod no longer in the API; removing it");
            self.gone(uid);
        }
    }

    fn spawn(&mut self, uid: String, desired: Desired) {
        let span = match &desired {
            Desired::Run(pod) => tracing::info_span!(
                "pod",
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                name = pod.metadata.name.as_deref().unwrap_or_default(),
                %uid,
            ),
            Desired::Gone => tracing::info_span!("pod", %uid),
        };
        let (sender, receiver) = watch::channel(desired);
        let worker = Worker::new(self.context.clone(), uid.clone());
        self.tasks.spawn(worker.run(receiver).instrument(span));
        self.desired.insert(uid, sender);
    }

    fn finished(&mut self, finished: Result<String, tokio::task::JoinError>) {
        match finished {
            Ok(uid) => {
                self.desired.remove(&uid);
            }
            Err(error) => {
                // A worker panicked; its pod gets a new worker at the next event.
                self.context.metrics.error(ErrorKind::Pod);
                tracing::error!(%error, "pod worker failed");
                self.desired.retain(|_, sender| !sender.is_closed());
            }
        }
    }
}
