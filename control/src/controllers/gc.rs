//! The garbage collector: what `ownerReferences` promise.
//!
//! - An object whose owners are all gone is deleted (in the background).
//! - An owner deleted with `propagationPolicy: Foreground` carries the
//!   `foregroundDeletion` finalizer: its dependents are deleted first (in
//!   the foreground themselves when their reference blocks the owner), and
//!   the finalizer is removed once no blocking dependent is left.
//! - An owner deleted with `propagationPolicy: Orphan` carries the `orphan`
//!   finalizer: its references are removed from its dependents, then the
//!   finalizer.
//!
//! It keeps a graph of every object's owners, fed by a watch on every
//! served resource, and works through a queue of objects whose situation
//! changed. An owner it has not seen is looked up in the API before a
//! dependent is judged orphaned: the graph may lag, the API does not. Every
//! write is conditional on what it was decided on: a delete on the uid, a
//! patch on the resourceVersion.
//!
//! It knows ownership and finalizers, nothing of what the objects are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::time::Instant;

use crate::api::objects::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::resources::{ResourceInfo, registry};

/// How often every object with owners or finalizers is looked at again,
/// whatever the watches said: a missed event costs at most this long.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Back-off of an item whose handling failed, doubling up to the maximum.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Attempts per item before it waits for the next event or resync.
const ATTEMPTS_MAX: u32 = 8;

/// What the graph knows of one object.
#[derive(Clone, Debug)]
struct Node {
    info: &'static ResourceInfo,
    namespace: Option<String>,
    name: String,
    /// The version the graph saw: writes decided on it are conditional on
    /// it, and a 409 means a newer version is on its way through the watch.
    resource_version: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

impl Node {
    fn of(info: &'static ResourceInfo, object: &DynamicObject) -> Option<(String, Node)> {
        let meta = &object.metadata;
        let uid = meta.uid.clone()?;
        let node = Node {
            info,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        };
        Some((uid, node))
    }

    fn finalizing(&self, finalizer: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == finalizer)
    }

    fn needs_attention(&self) -> bool {
        !self.owners.is_empty()
            || self.finalizing(FOREGROUND_FINALIZER)
            || self.finalizing(ORPHAN_FINALIZER)
    }
}

fn api_resource(info: &ResourceInfo) -> ApiResource {
    ApiResource {
        group: info.group.to_string(),
        version: info.version.to_string(),
        api_version: info.api_version(),
        kind: info.kind.to_string(),
        plural: info.plural.to_string(),
    }
}

/// The graph and the work queue; one task owns both.
pub struct GarbageCollector {
    client: kube::Client,
    nodes: HashMap<String, Node>,
    /// Owner uid → the uids of the objects that name it.
    dependents: HashMap<String, HashSet<String>>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    retries: Vec<(Instant, String, u32)>,
    /// Kinds whose first list is complete; nothing is judged before all are.
    synced: HashSet<&'static str>,
    /// Per kind, during a relist: the uids listed so far.
    relisting: HashMap<&'static str, HashSet<String>>,
}

impl GarbageCollector {
    pub fn new(client: kube::Client) -> Self {
        GarbageCollector {
            client,
            nodes: HashMap::new(),
            dependents: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            retries: Vec::new(),
            synced: HashSet::new(),
            relisting: HashMap::new(),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let streams = registry().stored().map(|info| {
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &api_resource(info));
            // Back off while the API is away rather than spin on errors.
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |event| (info, event))
                .boxed()
        });
        let mut events = futures::stream::select_all(streams);
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        let mut retry = tokio::time::interval(RETRY_INITIAL);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some((info, Ok(event))) => self.observe(info, event),
                    Some((info, Err(error))) => {
                        tracing::debug!(kind = info.kind, %error, "watch interrupted; it resumes");
                    }
                    None => return,
                },
                _ = resync.tick() => {
                    let all: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|(_, node)| node.needs_attention())
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    all.into_iter().for_each(|uid| self.enqueue(uid));
                }
                _ = retry.tick() => self.requeue_due(),
            }
            if self.synced.len() == registry().stored().count() {
                self.drain().await;
            }
        }
    }

    fn enqueue(&mut self, uid: String) {
        if self.queued.insert(uid.clone()) {
            self.queue.push_back(uid);
        }
    }

    fn requeue_due(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.retries.drain(..).partition(|(at, _, _)| *at <= now);
        self.retries = waiting;
        for (_, uid, _) in due {
            self.enqueue(uid);
        }
    }

    fn observe(&mut self, info: &'static ResourceInfo, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => {
                self.relisting.insert(info.kind, HashSet::new());
            }
            watcher::Event::InitApply(object) => {
                if let Some(uid) = object.metadata.uid.clone() {
                    self.relisting.entry(info.kind).or_default().insert(uid);
                }
                self.apply(info, &object);
            }
            watcher::Event::InitDone => {
                // What the relist did not return was deleted meanwhile.
                let listed = self.relisting.remove(info.kind).unwrap_or_default();
                let gone: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(uid, node)| node.info.kind == info.kind && !listed.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                gone.iter().for_each(|uid| self.remove(uid));
                self.synced.insert(info.kind);
            }
            watcher::Event::Apply(object) => self.apply(info, &object),
            watcher::Event::Delete(object) => {
                if let Some(uid) = &object.metadata.uid {
                    self.remove(uid);
                }
            }
        }
    }

    fn apply(&mut self, info: &'static ResourceInfo, object: &DynamicObject) {
        let Some((uid, node)) = Node::of(info, object) else {
            return;
        };
        if let Some(previous) = self.nodes.get(&uid) {
            for owner in &previous.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(&uid);
                }
            }
        }
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        let attention = node.needs_attention();
        self.nodes.insert(uid.clone(), node);
        if attention {
            self.enqueue(uid);
        }
    }

    fn remove(&mut self, uid: &str) {
        let Some(node) = self.nodes.remove(uid) else {
            return;
        };
        for owner in &node.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
            }
            // An owner waiting for its dependents may now be done.
            if self.nodes.contains_key(&owner.uid) {
                self.enqueue(owner.uid.clone());
            }
        }
        // Its dependents may now be orphans.
        let orphans: Vec<String> = self
            .dependents
            .get(uid)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        orphans.into_iter().for_each(|d| self.enqueue(d));
    }

    async fn drain(&mut self) {
        while let Some(uid) = self.queue.pop_front() {
            self.queued.remove(&uid);
            let Some(node) = self.nodes.get(&uid).cloned() else {
                continue;
            };
            let span = tracing::debug_span!("gc", kind = node.info.kind, name = %node.name);
            let outcome = tracing::Instrument::instrument(self.attend(&uid, &node), span).await;
            if let Err(error) = outcome {
                let attempts = self
                    .retries
                    .iter()
                    .find(|(_, u, _)| *u == uid)
                    .map_or(0, |(_, _, a)| *a);
                if attempts + 1 >= ATTEMPTS_MAX {
                    tracing::warn!(kind = node.info.kind, name = %node.name, %error, "giving up until the next change");
                    continue;
                }
                let delay = RETRY_INITIAL
                    .saturating_mul(1 << attempts.min(16))
                    .min(RETRY_MAX);
                tracing::debug!(kind = node.info.kind, name = %node.name, %error, ?delay, "retrying");
                self.retries
                    .push((Instant::now() + delay, uid, attempts + 1));
            }
        }
    }

    async fn attend(&mut self, uid: &str, node: &Node) -> Result<(), kube::Error> {
        if node.finalizing(ORPHAN_FINALIZER) || node.finalizing(FOREGROUND_FINALIZER) {
            self.discover_dependents(uid, node).await?;
        }
        self.handle(uid, node).await
    }

    /// Before an owner is finalized, its dependents are listed from the API
    /// into the graph: the watches of different kinds are not ordered with
    /// each other, so a dependent created just before the owner's deletion
    /// may not have arrived yet, and must be neither missed (orphan) nor
    /// left behind (foreground). Dependents share a namespaced owner's
    /// namespace, as Kubernetes requires.
    async fn discover_dependents(&mut self, uid: &str, node: &Node) -> Result<(), kube::Error> {
        for info in registry().stored() {
            let resource = api_resource(info);
            let api: Api<DynamicObject> = match (&node.namespace, info.namespaced) {
                (Some(namespace), true) => {
                    Api::namespaced_with(self.client.clone(), namespace, &resource)
                }
                (Some(_), false) => continue,
                (None, _) => Api::all_with(self.client.clone(), &resource),
            };
            for object in api.list(&kube::api::ListParams::default()).await? {
                let names_owner = object
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| owner.uid == uid);
                if names_owner {
                    self.apply(info, &object);
                }
            }
        }
        Ok(())
    }

    async fn handle(&self, uid: &str, node: &Node) -> Result<(), kube::Error> {
        if node.finalizing(ORPHAN_FINALIZER) {
            return self.orphan_dependents(uid, node).await;
        }
        if node.finalizing(FOREGROUND_FINALIZER) {
            return self.delete_dependents_first(uid, node).await;
        }
        if node.owners.is_empty() || node.deleting {
            return Ok(());
        }
        let mut solid = false;
        let mut stale = Vec::new();
        let mut waiting_blocks = false;
        for owner in &node.owners {
            match self.nodes.get(&owner.uid) {
                Some(found) if found.finalizing(FOREGROUND_FINALIZER) => {
                    stale.push(owner.uid.clone());
                    waiting_blocks |= owner.block_owner_deletion == Some(true);
                }
                Some(_) => solid = true,
                None if self.owner_exists(node, owner).await? => solid = true,
                None => stale.push(owner.uid.clone()),
            }
        }
        if solid {
            // Another owner keeps it; forget the ones that are going.
            if stale.is_empty() {
                return Ok(());
            }
            let owners: Vec<&OwnerReference> = node
                .owners
                .iter()
                .filter(|o| !stale.contains(&o.uid))
                .collect();
            let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": node.resource_version}});
            self.api(node)
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            return Ok(());
        }
        let policy = if waiting_blocks {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::info!(kind = node.info.kind, name = %node.name, ?policy, "deleting: its owners are gone");
        self.delete(uid, node, policy).await
    }

    /// Whether `owner`, absent from the graph, exists in the API with the
    /// uid the reference names. A kind the server does not serve counts as
    /// existing: nothing is deleted on a guess.
    async fn owner_exists(&self, node: &Node, owner: &OwnerReference) -> Result<bool, kube::Error> {
        let Some(info) = registry().by_kind(&owner.api_version, &owner.kind) else {
            return Ok(true);
        };
        let resource = api_resource(info);
        let api: Api<DynamicObject> = match (&node.namespace, info.namespaced) {
            (Some(namespace), true) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            (None, true) => return Ok(false),
            (_, false) => Api::all_with(self.client.clone(), &resource),
        };
        let found = api.get_opt(&owner.name).await?;
        Ok(found.is_some_and(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str())))
    }

    async fn orphan_dependents(&self, uid: &str, node: &Node) -> Result<(), kube::Error> {
        for dependent_uid in self.dependents.get(uid).into_iter().flatten() {
            let Some(dependent) = self.nodes.get(dependent_uid) else {
                continue;
            };
            let owners: Vec<&OwnerReference> =
                dependent.owners.iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {
                "ownerReferences": owners,
                "resourceVersion": dependent.resource_version,
            }});
            tracing::debug!(kind = dependent.info.kind, name = %dependent.name, "orphaning");
            ignore_gone(
                self.api(dependent)
                    .patch(
                        &dependent.name,
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await,
            )?;
        }
        self.remove_finalizer(node, ORPHAN_FINALIZER).await
    }

    async fn delete_dependents_first(&self, uid: &str, node: &Node) -> Result<(), kube::Error> {
        let mut blocking = 0;
        for dependent_uid in self.dependents.get(uid).into_iter().flatten() {
            let Some(dependent) = self.nodes.get(dependent_uid) else {
                continue;
            };
            let reference = dependent.owners.iter().find(|o| o.uid == uid);
            let blocks = reference.is_some_and(|o| o.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if !dependent.deleting {
                let policy = if blocks {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                };
                self.delete(dependent_uid, dependent, policy).await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(node, FOREGROUND_FINALIZER).await?;
        }
        Ok(())
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), kube::Error> {
        let finalizers: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": node.resource_version,
        }});
        tracing::debug!(kind = node.info.kind, name = %node.name, finalizer, "removing finalizer");
        ignore_gone(
            self.api(node)
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
                .await,
        )
    }

    async fn delete(
        &self,
        uid: &str,
        node: &Node,
        policy: PropagationPolicy,
    ) -> Result<(), kube::Error> {
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        ignore_gone(self.api(node).delete(&node.name, &params).await.map(drop))
    }

    fn api(&self, node: &Node) -> Api<DynamicObject> {
        let resource = api_resource(node.info);
        match &node.namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }
}

/// An object that is already gone, or was replaced by another of the same
/// name (uid precondition), needs nothing more.
fn ignore_gone<T>(outcome: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match outcome {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}
