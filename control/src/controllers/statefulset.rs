//! The StatefulSet controller: pods with stable names (`<set>-0`,
//! `<set>-1`, …), created in order and removed in reverse order, each one
//! only once the ones before it are running and ready (`OrderedReady`), or
//! all at once (`Parallel`); a template change replaces pods from the
//! highest ordinal down to the `partition`, one at a time.
//!
//! A pod's revision is its `controller-revision-hash` label: the set's name
//! and the hash of its template. Pods get `hostname` and the governing
//! Service as `subdomain`, as Kubernetes gives them. Volume claim
//! templates are not served (there are no PersistentVolumeClaims).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::deployment::template_hash;
use super::events::EventType;
use super::replicaset::{controller_of, ready_since};
use super::{Context, Error};

/// The label holding a pod's revision, as Kubernetes names it.
pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub async fn run(client: kube::Client) {
    let sets = Api::<StatefulSet>::all(client.clone());
    let context = Context::new(client.clone(), "statefulset-controller");
    Controller::new(sets, watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "statefulset reconcile failed");
            }
        })
        .await;
}

fn pod_for(set: &StatefulSet, uid: &str, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let labels = [
        (REVISION_LABEL, revision.to_string()),
        (POD_NAME_LABEL, name.clone()),
        (POD_INDEX_LABEL, ordinal.to_string()),
    ];
    let ordinal = ordinal.to_string();
    let mut pod = super::pod_from_template(
        set,
        uid,
        &set.spec.template,
        Some(&ordinal),
        labels.map(|(k, v)| (k.to_string(), v)),
    );
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    spec.subdomain = set.spec.service_name.clone().filter(|s| !s.is_empty());
    pod
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && ready_since(pod).is_some()
}

fn revision_of(pod: &Pod) -> Option<&String> {
    pod.labels().get(REVISION_LABEL)
}

#[tracing::instrument(skip_all, fields(namespace = set.namespace(), name = set.name_any()))]
async fn reconcile(set: Arc<StatefulSet>, context: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = set.uid().ok_or(Error::Missing("uid"))?;
    let spec = &set.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let revision = format!("{}-{}", set.name_any(), template_hash(&spec.template));
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let prefix = format!("{}-", set.name_any());
    let mut by_ordinal: BTreeMap<i32, Pod> = BTreeMap::new();
    for pod in pods_api.list(&ListParams::default()).await?.items {
        let ordinal = pod
            .name_any()
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<i32>().ok());
        if let (Some(ordinal), true) = (
            ordinal,
            controller_of(&pod.metadata).is_some_and(|c| c.uid == uid),
        ) {
            by_ordinal.insert(ordinal, pod);
        }
    }
    let wanted = start..start + replicas;

    // A failed pod is replaced, under the same name.
    for pod in by_ordinal.values() {
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        if failed && pod.metadata.deletion_timestamp.is_none() {
            super::delete_exact(&pods_api, pod, PropagationPolicy::Background).await?;
        }
    }
    let healthy = |ordinal: i32| by_ordinal.get(&ordinal).is_some_and(running_and_ready);

    // Create what is missing, in order.
    for ordinal in wanted.clone() {
        if by_ordinal.contains_key(&ordinal) {
            if !parallel && !healthy(ordinal) {
                break;
            }
            continue;
        }
        let pod = pod_for(&set, &uid, ordinal, &revision);
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            // The previous pod of that name is still going.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
        let message = format!(
            "create Pod {} in StatefulSet {} successful",
            pod.name_any(),
            set.name_any()
        );
        context
            .recorder
            .record(set.as_ref(), EventType::Normal, "SuccessfulCreate", message)
            .await;
        if !parallel {
            break;
        }
    }

    // Remove what is beyond the count, highest first.
    let all_healthy = wanted.clone().all(healthy);
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(ordinal, _)| !wanted.contains(ordinal))
        .map(|(_, pod)| pod)
        .collect();
    for pod in condemned {
        if !parallel && pod.metadata.deletion_timestamp.is_some() {
            break;
        }
        if !parallel && !all_healthy {
            break;
        }
        super::delete_exact(&pods_api, pod, PropagationPolicy::Background).await?;
        let message = format!(
            "delete Pod {} in StatefulSet {} successful",
            pod.name_any(),
            set.name_any()
        );
        context
            .recorder
            .record(set.as_ref(), EventType::Normal, "SuccessfulDelete", message)
            .await;
        if !parallel {
            break;
        }
    }

    // Roll: the highest stale pod at or above the partition, once all are
    // healthy; it comes back at the new revision.
    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete") && all_healthy {
        let partition = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let stale = wanted
            .clone()
            .rev()
            .filter(|ordinal| *ordinal >= partition)
            .filter_map(|ordinal| by_ordinal.get(&ordinal))
            .find(|pod| revision_of(pod) != Some(&revision));
        if let Some(pod) = stale {
            super::delete_exact(&pods_api, pod, PropagationPolicy::Background).await?;
        }
    }

    let live: Vec<&Pod> = by_ordinal
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let ready = count(live.iter().filter(|p| ready_since(p).is_some()).count());
    let updated = count(
        live.iter()
            .filter(|p| revision_of(p) == Some(&revision))
            .count(),
    );
    let previous = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current_revision = if updated == replicas {
        Some(revision.clone())
    } else {
        previous.or(Some(revision.clone()))
    };
    let current = count(
        live.iter()
            .filter(|p| revision_of(p) == current_revision.as_ref())
            .count(),
    );
    let status = StatefulSetStatus {
        replicas: count(live.len()),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision,
        update_revision: Some(revision),
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    super::write_status(&context.client, set.as_ref(), set.status.as_ref(), &status).await?;
    Ok(Action::await_change())
}
