//! `flotilla rollout undo`: puts an earlier revision's pod template back
//! into a Deployment, as kubectl's Deployment rollbacker does: the
//! ReplicaSet's template (without its `pod-template-hash` label) and its
//! annotations are written with one JSON patch, and the Deployment
//! controller then rolls to it (the old ReplicaSet becomes the newest
//! revision). It computes the patch; it does not roll anything itself.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::{REVISION, Target, replica_sets, revision};
use crate::cli::merge::LAST_APPLIED;
use crate::cli::output::print;
use crate::cli::session::ClientArgs;

/// The label the Deployment controller adds to tell its ReplicaSets apart;
/// it belongs to the ReplicaSet, never to the Deployment's template.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Annotations that describe a Deployment or a ReplicaSet itself rather
/// than the template, so a rollback neither copies nor drops them.
const NOT_COPIED: &[&str] = &[
    LAST_APPLIED,
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Roll a Deployment back to its previous (or a given) revision.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla rollout undo deployment/web
  flotilla rollout undo deployment/web --to-revision 2")]
pub struct Args {
    /// deployment/NAME, or deployment NAME.
    #[arg(required = true, value_name = "deployment/NAME")]
    pub target: Vec<String>,
    /// The revision to go back to; the one before the current by default.
    #[arg(long, default_value_t = 0)]
    pub to_revision: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let target = Target::open(&args.client, &args.target).await?;
    let deployment = target.deployment().await?;
    let name = &target.name;
    if deployment.spec.paused == Some(true) {
        bail!("deployment.apps/{name} is paused; resume it before rolling it back");
    }
    let sets = replica_sets(&target.session, &deployment).await?;
    let (number, set) = pick(&sets, args.to_revision)
        .with_context(|| format!("rolling back deployment.apps/{name}"))?;
    let mut template = set.spec.template.clone().unwrap_or_default();
    if let Some(labels) = template
        .metadata
        .as_mut()
        .and_then(|meta| meta.labels.as_mut())
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    if same_template(&deployment.spec.template, &template) {
        return print(format!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {number})\n"
        ));
    }
    let patch = rollback_patch(&deployment, set, &template)?;
    target
        .api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("rolling back deployment.apps/{name}"))?;
    print(format!("deployment.apps/{name} rolled back\n"))
}

/// The ReplicaSet of revision `wanted`, or of the revision before the
/// newest when `wanted` is 0.
fn pick(sets: &[ReplicaSet], wanted: i64) -> Result<(i64, &ReplicaSet)> {
    let mut numbered: Vec<(i64, &ReplicaSet)> = sets
        .iter()
        .filter_map(|set| Some((revision(set)?, set)))
        .collect();
    numbered.sort_by_key(|(number, _)| *number);
    if wanted != 0 {
        return numbered
            .into_iter()
            .find(|(number, _)| *number == wanted)
            .with_context(|| format!("unable to find revision {wanted} in the history"));
    }
    match numbered.len().checked_sub(2).map(|index| numbered[index]) {
        Some(previous) => Ok(previous),
        None => bail!("no rollout history found: there is no revision before the current one"),
    }
}

/// Whether two templates are equal, ignoring the pod-template-hash label
/// (`template` has had it removed already).
fn same_template(current: &PodTemplateSpec, template: &PodTemplateSpec) -> bool {
    let mut current = current.clone();
    if let Some(labels) = current
        .metadata
        .as_mut()
        .and_then(|meta| meta.labels.as_mut())
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    serde_json::to_value(current).ok() == serde_json::to_value(template).ok()
}

/// The JSON patch kubectl sends: replace the template, and the annotations
/// with the Deployment's own (the ones in [`NOT_COPIED`]) plus the
/// ReplicaSet's others.
fn rollback_patch(
    deployment: &Deployment,
    set: &ReplicaSet,
    template: &PodTemplateSpec,
) -> Result<json_patch::Patch> {
    let own = deployment.metadata.annotations.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = own
        .into_iter()
        .filter(|(key, _)| NOT_COPIED.contains(&key.as_str()))
        .collect();
    let copied = set.metadata.annotations.iter().flatten();
    annotations.extend(
        copied
            .filter(|(key, _)| !NOT_COPIED.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    let operations: Value = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]);
    serde_json::from_value(operations).context("encoding the rollback patch")
}
