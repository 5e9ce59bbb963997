//! The ReplicaSet controller: keeps `spec.replicas` pods that match the
//! selector, and reports them in `status`.
//!
//! Each reconcile reads the namespace's pods fresh from the API (a
//! linearizable list), so it never acts on a cache that has not yet seen
//! its own last creations; kube-rs's controller runs at most one reconcile
//! per ReplicaSet at a time. Pods that match and have no controller are
//! adopted; owned pods that stop matching are released. Surplus pods go in
//! Kubernetes' order: unscheduled before scheduled, pending before running,
//! unready before ready, newest first.
//!
//! It knows ReplicaSets and pods; scheduling and running them are others'.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::events::EventType;
use super::selector;
use super::{Context, Error};

/// Pods created or deleted per reconcile: a large scale-up proceeds in
/// steps, each one seen by the next reconcile.
const BURST_MAX: usize = 256;
/// The first slow-start batch of pod creations (Kubernetes'
/// `SlowStartInitialBatchSize`); each next batch is twice as large.
const SLOW_START_INITIAL_BATCH: usize = 1;

pub async fn run(client: kube::Client) {
    let sets = Api::<ReplicaSet>::all(client.clone());
    let pods = Api::<Pod>::all(client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    let context = Context::new(client.clone(), "replicaset-controller");
    controller
        // A pod wakes its controller, or, when it has none, every set in
        // its namespace whose selector it matches (which may adopt it).
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let namespace = pod.namespace().unwrap_or_default();
            if let Some(owner) = controller_of(&pod.metadata) {
                if owner.kind == "ReplicaSet" {
                    return vec![ObjectRef::new(&owner.name).within(&namespace)];
                }
                return Vec::new();
            }
            let labels = pod.labels().clone();
            store
                .state()
                .iter()
                .filter(|set| set.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|set| selector::matches(&set.spec.selector, &labels))
                .map(|set| ObjectRef::from_obj(set.as_ref()))
                .collect()
        })
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "replicaset reconcile failed");
            }
        })
        .await;
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
}

#[tracing::instrument(skip_all, fields(namespace = set.namespace(), name = set.name_any()))]
async fn reconcile(set: Arc<ReplicaSet>, context: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // The garbage collector takes its pods.
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = set.uid().ok_or(Error::Missing("uid"))?;
    let spec = &set.spec;
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let all = pods_api.list(&ListParams::default()).await?;
    let owner = super::controller_reference(set.as_ref(), &uid);

    let mut owned = Vec::new();
    for pod in all.items {
        let matches = selector::matches(&spec.selector, pod.labels());
        match controller_of(&pod.metadata) {
            Some(controller) if controller.uid == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && pod.metadata.deletion_timestamp.is_none() => {
                owned.push(adopt(&pods_api, pod, &owner).await?);
            }
            None => {}
        }
    }
    let mut active: Vec<Pod> = owned.into_iter().filter(is_active).collect();

    let wanted = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < wanted {
        let missing = (wanted - active.len()).min(BURST_MAX);
        let template = spec.template.clone().unwrap_or_default();
        active.extend(create_pods(&set, &uid, &template, &pods_api, &context, missing).await?);
    } else if active.len() > wanted {
        active.sort_by_key(deletion_rank);
        let surplus = (active.len() - wanted).min(BURST_MAX);
        for pod in active.drain(..surplus) {
            let name = pod.name_any();
            super::delete_exact(&pods_api, &pod, PropagationPolicy::Background).await?;
            let message = format!("Deleted pod: {name}");
            context
                .recorder
                .record(set.as_ref(), EventType::Normal, "SuccessfulDelete", message)
                .await;
        }
    }

    let min_ready =
        Duration::from_secs(u64::try_from(spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0));
    let (status, wait) = status_of(&set, &active, min_ready);
    super::write_status(&context.client, set.as_ref(), set.status.as_ref(), &status).await?;
    // A pod ready but not yet available for minReadySeconds becomes so
    // without any event: look again then.
    Ok(match wait {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    })
}

/// Creates `count` pods from `template` in Kubernetes' slow-start batches:
/// 1, 2, 4, … at once, so a template the API refuses fails after one
/// attempt, while a good one reaches hundreds of pods in a few rounds
/// rather than one write after another. Each pod's event is written beside
/// its creation. The first failed batch ends the round with its error.
async fn create_pods(
    set: &ReplicaSet,
    uid: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    pods_api: &Api<Pod>,
    context: &Context,
    count: usize,
) -> Result<Vec<Pod>, Error> {
    let create_one = || async {
        let pod = super::pod_from_template(set, uid, template, None, []);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let message = format!("Created pod: {}", created.name_any());
                context
                    .recorder
                    .record(set, EventType::Normal, "SuccessfulCreate", message)
                    .await;
                Ok(created)
            }
            Err(error) => {
                let message = format!("Error creating: {error}");
                context
                    .recorder
                    .record(set, EventType::Warning, "FailedCreate", message)
                    .await;
                Err(error)
            }
        }
    };
    let mut created = Vec::with_capacity(count);
    let mut batch = SLOW_START_INITIAL_BATCH;
    while created.len() < count {
        let size = batch.min(count - created.len());
        let outcomes = futures::future::join_all((0..size).map(|_| create_one())).await;
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(pod) => created.push(pod),
                Err(error) => failure = Some(error),
            }
        }
        if let Some(error) = failure {
            return Err(error.into());
        }
        batch = batch.saturating_mul(2);
    }
    Ok(created)
}

/// Makes `set` the pod's controller; conditional on the version read.
async fn adopt(pods: &Api<Pod>, pod: Pod, owner: &OwnerReference) -> Result<Pod, kube::Error> {
    let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
    owners.push(owner.clone());
    let patch =
        json!({"metadata": {"ownerReferences": owners, "resourceVersion": pod.resource_version()}});
    tracing::debug!(pod = pod.name_any(), "adopting");
    pods.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
}

/// Drops the set from the pod's owners; conditional on the version read.
async fn release(pods: &Api<Pod>, pod: &Pod, uid: &str) -> Result<(), kube::Error> {
    let owners: Vec<&OwnerReference> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|owner| owner.uid != uid)
        .collect();
    let patch =
        json!({"metadata": {"ownerReferences": owners, "resourceVersion": pod.resource_version()}});
    tracing::debug!(pod = pod.name_any(), "releasing");
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Counted toward the replicas: not finished and not on its way out.
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod's Ready condition is True, and since when.
pub fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let ready = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// Sort key: the pods to delete first sort first.
fn deletion_rank(pod: &Pod) -> (bool, u8, bool, std::cmp::Reverse<Timestamp>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    (
        scheduled,
        phase,
        ready_since(pod).is_some(),
        std::cmp::Reverse(created),
    )
}

/// The status the pods add up to, and how long until a ready pod becomes
/// available, if one is waiting for that.
fn status_of(
    set: &ReplicaSet,
    active: &[Pod],
    min_ready: Duration,
) -> (ReplicaSetStatus, Option<Duration>) {
    let template_labels: BTreeMap<String, String> = set
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let mut ready = 0;
    let mut available = 0;
    let mut wait: Option<Duration> = None;
    for pod in active {
        let Some(since) = ready_since(pod) else {
            continue;
        };
        ready += 1;
        let ready_for = Duration::try_from(now.duration_since(since)).unwrap_or_default();
        if ready_for >= min_ready {
            available += 1;
        } else {
            let remaining = min_ready - ready_for;
            wait = Some(wait.map_or(remaining, |w| w.min(remaining)));
        }
    }
    let fully_labeled = active
        .iter()
        .filter(|pod| {
            template_labels
                .iter()
                .all(|(k, v)| pod.labels().get(k) == Some(v))
        })
        .count();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let status = ReplicaSetStatus {
        replicas: count(active.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(available)),
        observed_generation: set.metadata.generation,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..ReplicaSetStatus::default()
    };
    (status, wait)
}
