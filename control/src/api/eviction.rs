//! `POST pods/<name>/eviction`: deleting a pod only as its
//! PodDisruptionBudget allows, which is how `kubectl drain` empties a node
//! without taking a service below its budget.
//!
//! As in Kubernetes: a pod that is not running (pending, finished, or
//! already being deleted) or that no budget selects is deleted at once; a
//! pod that more than one budget selects cannot be evicted; otherwise the
//! budget must allow a disruption, which the eviction spends (its status's
//! `disruptionsAllowed` goes down and the pod joins `disruptedPods`, in
//! one write that compares the budget's revision) before the pod is
//! deleted. A budget that allows none is a 429, which kubectl retries.
//! The budget's status is the disruption controller's
//! (`controllers::disruption`); this module only spends it.

use serde_json::{Value, json};

use super::clock::now;
use super::objects;
use super::path::Target;
use super::request::Params;
use super::status::ApiError;
use super::{ApiState, Reply};
use crate::controllers::selector;
use crate::storage::StorageError;

/// Attempts to spend a disruption against concurrent evictions.
const ATTEMPTS_MAX: usize = 8;

pub async fn evict(
    state: &ApiState,
    target: &Target<'_>,
    name: &str,
    params: &Params,
    body: Value,
) -> Result<Reply, ApiError> {
    if let Some(named) = body["metadata"]["name"].as_str()
        && !named.is_empty()
        && named != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the Eviction ({named}) does not match the pod's ({name})"
        )));
    }
    let options = body
        .get("deleteOptions")
        .filter(|options| options.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let pod_target = Target {
        info: target.info,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        subresource: None,
    };
    let namespace = target.namespace.as_deref().unwrap_or("default");
    for _ in 0..ATTEMPTS_MAX {
        let pod = objects::decode(&objects::read_object(state, &pod_target, name).await?)?;
        if !bound_by_budgets(&pod) {
            return delete(state, &pod_target, params, &options).await;
        }
        let budgets = budgets_of(state, namespace, &pod).await?;
        let budget = match budgets.as_slice() {
            [] => return delete(state, &pod_target, params, &options).await,
            [budget] => budget,
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction \
                     subresource does not support.",
                ));
            }
        };
        match spend(state, budget, name, params).await {
            Ok(()) => return delete(state, &pod_target, params, &options).await,
            Err(Spend::Refused(error)) => return Err(error),
            // Another eviction spent from the budget meanwhile: look again.
            Err(Spend::Raced) => continue,
        }
    }
    Err(ApiError::too_many_requests(
        "too many concurrent evictions from this pod's disruption budget; try again",
    ))
}

/// Whether the pod is running, so that evicting it is a disruption its
/// budget must allow.
fn bound_by_budgets(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    pod["metadata"]["deletionTimestamp"].is_null() && phase == "Running"
}

/// The PodDisruptionBudgets of `namespace` whose selector selects `pod`.
async fn budgets_of(
    state: &ApiState,
    namespace: &str,
    pod: &Value,
) -> Result<Vec<Value>, ApiError> {
    let info = budgets_info(state)?;
    let page = state
        .storage
        .list(&objects::prefix(info, Some(namespace)), b"", 0, 0)
        .await
        .map_err(|error| ApiError::from_storage(error, info, ""))?;
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
    let mut selected = Vec::new();
    for stored in &page.items {
        let budget = objects::decode(stored)?;
        // policy/v1: a null selector selects nothing, an empty one all.
        let Ok(chosen) = serde_json::from_value(budget["spec"]["selector"].clone()) else {
            continue;
        };
        if selector::matches(&chosen, &labels) {
            selected.push(budget);
        }
    }
    Ok(selected)
}

fn budgets_info(state: &ApiState) -> Result<&'static crate::resources::ResourceInfo, ApiError> {
    state
        .registry
        .find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not served"))
}

enum Spend {
    Refused(ApiError),
    Raced,
}

/// Spends one of `budget`'s disruptions on the pod `pod`, in a write that
/// compares the budget's revision.
async fn spend(state: &ApiState, budget: &Value, pod: &str, params: &Params) -> Result<(), Spend> {
    let info = budgets_info(state).map_err(Spend::Refused)?;
    let name = budget["metadata"]["name"].as_str().unwrap_or_default();
    let status = &budget["status"];
    let generation = budget["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(0);
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    if observed < generation || allowed <= 0 {
        let why = if observed < generation {
            format!("The disruption budget {name} is still being processed by the server.")
        } else {
            format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status["desiredHealthy"].as_i64().unwrap_or(0),
                status["currentHealthy"].as_i64().unwrap_or(0)
            )
        };
        return Err(Spend::Refused(ApiError::too_many_requests(format!(
            "Cannot evict pod as it would violate the pod's disruption budget. {why}"
        ))));
    }
    if params.dry_run().map_err(Spend::Refused)? {
        return Ok(());
    }
    let mut spent = budget.clone();
    spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
    spent["status"]["disruptedPods"][pod] = json!(now());
    let namespace = budget["metadata"]["namespace"].as_str();
    let key = objects::key(info, namespace, name);
    let revision = objects::resource_version_of(budget)
        .map_err(Spend::Refused)?
        .unwrap_or(0);
    let bytes = objects::encode(&spent).map_err(Spend::Refused)?;
    match state.storage.update(&key, bytes, revision).await {
        Ok(_) => Ok(()),
        Err(StorageError::Conflict { .. } | StorageError::NotFound) => Err(Spend::Raced),
        Err(error) => Err(Spend::Refused(ApiError::from_storage(error, info, name))),
    }
}

/// Deletes the pod as the eviction's `deleteOptions` say; answers as
/// kube-apiserver does, a `Status` of success.
async fn delete(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    options: &Value,
) -> Result<Reply, ApiError> {
    objects::delete(state, target, params, options).await?;
    Ok(Reply::created(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201
    })))
}
