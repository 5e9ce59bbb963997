//! The Deployment controller: one ReplicaSet per pod template, rolled from
//! the old to the new by the strategy (`rollout.rs` holds the arithmetic),
//! with revisions kubectl's `rollout history` and `rollout undo` read, and
//! the status and conditions `kubectl rollout status` waits on.
//!
//! Each reconcile reads the Deployment's ReplicaSets fresh from the API and
//! takes one step; the ReplicaSets' own changes (pods created, becoming
//! available) wake the next. The ReplicaSet controller runs the pods.

pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use sha2::{Digest, Sha256};

use self::rollout::{Limits, Set};
use super::events::EventType;
use super::replicaset::controller_of;
use super::selector;
use super::{Context, Error};

/// The label that ties a ReplicaSet and its pods to one pod template.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation kubectl's `rollout history` and `undo` read.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// While a rollout is under way, it is looked at again this often even
/// without events, so that its progress deadline is noticed.
const PROGRESS_CHECK: Duration = Duration::from_secs(5);

pub async fn run(client: kube::Client) {
    let deployments = Api::<Deployment>::all(client.clone());
    let sets = Api::<ReplicaSet>::all(client.clone());
    let context = Context::new(client.clone(), "deployment-controller");
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "deployment reconcile failed");
            }
        })
        .await;
}

/// Kubernetes' alphabet for generated name suffixes: no vowels, no
/// look-alike digits, so no words and no confusion.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A short, stable hash of a pod template (without its own hash label).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH_LABEL);
    }
    // serde_json writes maps in key order, so equal templates hash equal.
    let encoded = serde_json::to_vec(&template).unwrap_or_default();
    let digest = Sha256::digest(&encoded);
    let mut value = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    let mut out = String::new();
    for _ in 0..10 {
        let base = SAFE_ALPHABET.len() as u64;
        out.push(char::from(SAFE_ALPHABET[(value % base) as usize]));
        value /= base;
    }
    out
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_state(set: &ReplicaSet) -> Set {
    let status = set.status.as_ref();
    Set {
        replicas: set.spec.replicas.unwrap_or(1),
        current: status.map_or(0, |s| s.replicas),
        available: status.and_then(|s| s.available_replicas).unwrap_or(0),
    }
}

#[tracing::instrument(skip_all, fields(namespace = deployment.namespace(), name = deployment.name_any()))]
async fn reconcile(deployment: Arc<Deployment>, context: Arc<Context>) -> Result<Action, Error> {
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = deployment.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = deployment.uid().ok_or(Error::Missing("uid"))?;
    let spec = &deployment.spec;
    let sets_api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    let mut owned = Vec::new();
    for set in sets_api.list(&ListParams::default()).await?.items {
        match controller_of(&set.metadata) {
            Some(controller) if controller.uid == uid => owned.push(set),
            Some(_) => {}
            None if selector::matches(&spec.selector, set.labels())
                && set.metadata.deletion_timestamp.is_none() =>
            {
                let mut owners = set.metadata.owner_references.clone().unwrap_or_default();
                owners.push(super::controller_reference(deployment.as_ref(), &uid));
                let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": set.resource_version()}});
                owned.push(
                    sets_api
                        .patch(
                            &set.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await?,
                );
            }
            None => {}
        }
    }
    owned.sort_by_key(|s| {
        (
            revision_of(&s.metadata),
            s.metadata.creation_timestamp.clone().map(|t| t.0),
        )
    });
    let hash = template_hash(&spec.template);
    let new_index = owned
        .iter()
        .position(|s| s.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash));
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused == Some(true);

    let new = match new_index {
        Some(index) => Some(owned.remove(index)),
        None if paused => None,
        None => Some(create_new_set(&context, &deployment, &uid, &hash, &owned).await?),
    };
    let old = owned;
    let mut changed = false;
    if let (Some(new), false) = (&new, paused) {
        let current_revision = revision_of(&new.metadata);
        let max_old = old
            .iter()
            .map(|s| revision_of(&s.metadata))
            .max()
            .unwrap_or(0);
        // A template rolled back to an older set makes that set the newest
        // revision again, as `kubectl rollout undo` expects.
        if current_revision <= max_old {
            annotate_revision(&sets_api, new, max_old + 1).await?;
            changed = true;
        }
        changed |= step(&context, &deployment, new, &old, replicas).await?;
        let new_revision = if current_revision <= max_old {
            max_old + 1
        } else {
            current_revision
        };
        if revision_of(&deployment.metadata) != new_revision {
            let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
            let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: new_revision.to_string()}}});
            deployments
                .patch(
                    &deployment.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
        }
    }
    prune_history(&sets_api, &old, spec.revision_history_limit.unwrap_or(10)).await?;
    let complete = write_status(&context, &deployment, new.as_ref(), &old, changed).await?;
    Ok(if complete || paused {
        Action::await_change()
    } else {
        Action::requeue(PROGRESS_CHECK)
    })
}

async fn create_new_set(
    context: &Context,
    deployment: &Deployment,
    uid: &str,
    hash: &str,
    old: &[ReplicaSet],
) -> Result<ReplicaSet, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let spec = &deployment.spec;
    let mut template = spec.template.clone();
    let metadata = template.metadata.get_or_insert_with(ObjectMeta::default);
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let labels = metadata.labels.clone();
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let revision = old
        .iter()
        .map(|s| revision_of(&s.metadata))
        .max()
        .unwrap_or(0)
        + 1;
    let mut annotations = deployment.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    let set = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", deployment.name_any())),
            namespace: Some(namespace.clone()),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![super::controller_reference(deployment, uid)]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    match api.create(&PostParams::default(), &set).await {
        Ok(created) => Ok(created),
        // Created by a reconcile whose list this one missed: use it.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(api
            .get(set.metadata.name.as_deref().unwrap_or_default())
            .await?),
        Err(error) => Err(error.into()),
    }
}

async fn annotate_revision(
    api: &Api<ReplicaSet>,
    set: &ReplicaSet,
    revision: i64,
) -> Result<(), Error> {
    let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: revision.to_string()}}});
    api.patch(
        &set.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// One step of the strategy; true when it scaled something.
async fn step(
    context: &Context,
    deployment: &Deployment,
    new: &ReplicaSet,
    old: &[ReplicaSet],
    replicas: i32,
) -> Result<bool, Error> {
    let strategy = deployment.spec.strategy.as_ref();
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let new_state = set_state(new);
    let old_states: Vec<Set> = old.iter().map(set_state).collect();
    if recreate {
        // Every old pod goes before any new one starts.
        let mut scaled = false;
        for (set, state) in old.iter().zip(&old_states) {
            if state.replicas > 0 {
                scale(context, deployment, set, state.replicas, 0).await?;
                scaled = true;
            }
        }
        if scaled || old_states.iter().any(|s| s.current > 0) {
            return Ok(scaled);
        }
        if new_state.replicas != replicas {
            scale(context, deployment, new, new_state.replicas, replicas).await?;
            return Ok(true);
        }
        return Ok(false);
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let limits = Limits::new(
        replicas,
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
    )
    .map_err(Error::Invalid)?;
    let grown = rollout::scale_new(&limits, &new_state, &old_states);
    if grown != new_state.replicas {
        scale(context, deployment, new, new_state.replicas, grown).await?;
        return Ok(true);
    }
    let mut scaled = false;
    let targets = rollout::scale_old(&limits, &new_state, &old_states);
    for ((set, state), target) in old.iter().zip(&old_states).zip(targets) {
        if target != state.replicas {
            scale(context, deployment, set, state.replicas, target).await?;
            scaled = true;
        }
    }
    Ok(scaled)
}

async fn scale(
    context: &Context,
    deployment: &Deployment,
    set: &ReplicaSet,
    from: i32,
    to: i32,
) -> Result<(), Error> {
    let api: Api<ReplicaSet> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({"spec": {"replicas": to}});
    api.patch(
        &set.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    let direction = if to > from { "up" } else { "down" };
    let message = format!(
        "Scaled {direction} replica set {} from {from} to {to}",
        set.name_any()
    );
    context
        .recorder
        .record(deployment, EventType::Normal, "ScalingReplicaSet", message)
        .await;
    Ok(())
}

/// Deletes the oldest empty old sets beyond the history limit.
async fn prune_history(api: &Api<ReplicaSet>, old: &[ReplicaSet], limit: i32) -> Result<(), Error> {
    let empty: Vec<&ReplicaSet> = old
        .iter()
        .filter(|s| {
            let state = set_state(s);
            state.replicas == 0 && state.current == 0 && s.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let surplus = empty
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    for set in empty.into_iter().take(surplus) {
        super::delete_exact(api, set, PropagationPolicy::Background).await?;
    }
    Ok(())
}

/// Writes the status and conditions; true when the rollout is complete.
async fn write_status(
    context: &Context,
    deployment: &Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    progressed: bool,
) -> Result<bool, Error> {
    let spec = &deployment.spec;
    let replicas = spec.replicas.unwrap_or(1);
    let all: Vec<&ReplicaSet> = new.into_iter().chain(old).collect();
    let sum = |get: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|s| get(s)).sum::<i32>();
    let total = sum(&|s| s.status.as_ref().map_or(0, |st| st.replicas));
    let ready = sum(&|s| {
        s.status
            .as_ref()
            .and_then(|st| st.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(&|s| {
        s.status
            .as_ref()
            .and_then(|st| st.available_replicas)
            .unwrap_or(0)
    });
    let updated = new
        .and_then(|s| s.status.as_ref())
        .map_or(0, |st| st.replicas);
    let strategy = spec.strategy.as_ref();
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let max_unavailable = Limits::new(
        replicas,
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
    )
    .map(|l| l.max_unavailable)
    .unwrap_or(0);
    let complete = updated == replicas && total == replicas && available >= replicas;
    let now = Time(Timestamp::now());
    let previous = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let find = |kind: &str| {
        previous
            .iter()
            .find(|c| c.type_.as_deref() == Some(kind))
            .cloned()
    };
    let condition = |kind: &str, status: &str, reason: &str, message: String| {
        let before = find(kind);
        let same = before.as_ref().is_some_and(|b| {
            b.status.as_deref() == Some(status) && b.reason.as_deref() == Some(reason)
        });
        DeploymentCondition {
            type_: Some(kind.into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: if before
                .as_ref()
                .is_some_and(|b| b.status.as_deref() == Some(status))
            {
                before.as_ref().and_then(|b| b.last_transition_time.clone())
            } else {
                Some(now.clone())
            },
            last_update_time: if same && !progressed {
                before.and_then(|b| b.last_update_time)
            } else {
                Some(now.clone())
            },
        }
    };
    let availability = if available >= replicas - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let new_name = new.map(|s| s.name_any()).unwrap_or_default();
    let deadline = Duration::from_secs(
        u64::try_from(spec.progress_deadline_seconds.unwrap_or(600)).unwrap_or(600),
    );
    let progressing = if spec.paused == Some(true) {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        let since = find("Progressing")
            .filter(|c| c.status.as_deref() == Some("True") && !progressed)
            .and_then(|c| c.last_update_time)
            .map(|t| t.0);
        let stalled = since.is_some_and(|since| {
            Duration::try_from(Timestamp::now().duration_since(since)).unwrap_or_default()
                > deadline
        });
        if stalled
            || find("Progressing").is_some_and(|c| {
                c.reason.as_deref() == Some("ProgressDeadlineExceeded") && !progressed
            })
        {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            )
        }
    };
    let status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: Some(vec![availability, progressing]),
        collision_count: deployment.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
    };
    super::write_status(
        &context.client,
        deployment,
        deployment.status.as_ref(),
        &status,
    )
    .await?;
    Ok(complete)
}
