//! The disruption controller: each PodDisruptionBudget's status, from the
//! pods its selector selects, as Kubernetes keeps it, so that evictions
//! (`api::eviction`) know how many disruptions it allows.
//!
//! `expectedPods` counts the selected pods that have not finished;
//! `currentHealthy` those of them Ready, not being deleted and not just
//! evicted (`disruptedPods`, forgotten once the pod is gone or after two
//! minutes); `desiredHealthy` is `minAvailable`, or `expectedPods` less
//! `maxUnavailable` (a percentage of `expectedPods`, rounded up, either
//! way); `disruptionsAllowed` is what is healthy beyond that. Any pod
//! change in a namespace looks again at that namespace's budgets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;

use super::replicaset::ready_since;
use super::{Error, selector};

/// How long an evicted pod counts as disrupted without going (Kubernetes'
/// `DeletionTimeout`): long enough for its deletion to be seen.
const DISRUPTED_FOR: Duration = Duration::from_secs(120);

pub async fn run(client: kube::Client) {
    super::run_over_namespace_pods::<PodDisruptionBudget, _, _>(client, "disruption", reconcile)
        .await;
}

#[tracing::instrument(skip_all, fields(namespace = budget.namespace(), name = budget.name_any()))]
async fn reconcile(
    budget: Arc<PodDisruptionBudget>,
    client: Arc<kube::Client>,
) -> Result<Action, Error> {
    if budget.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = budget.namespace().ok_or(Error::Missing("namespace"))?;
    let spec = budget.spec.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.as_ref().clone(), &namespace);
    let selected: Vec<Pod> = match &spec.selector {
        // policy/v1: a null selector selects nothing.
        None => Vec::new(),
        Some(chosen) => pods
            .list(&ListParams::default().labels(&selector::to_query(chosen)))
            .await?
            .items
            .into_iter()
            .filter(|pod| !finished(pod))
            .collect(),
    };
    let now = Timestamp::now();
    let previous = budget.status.clone().unwrap_or_default();
    let disrupted = still_disrupted(&previous, &selected, now);
    let expected = selected.len() as i32;
    let healthy = selected
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| !disrupted.contains_key(&pod.name_any()))
        .filter(|pod| ready_since(pod).is_some())
        .count() as i32;
    let desired = desired_healthy(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        expected,
    )?;
    let allowed = (healthy - desired).max(0);
    let status = PodDisruptionBudgetStatus {
        observed_generation: budget.metadata.generation,
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        expected_pods: Some(expected),
        disruptions_allowed: Some(allowed),
        disrupted_pods: (!disrupted.is_empty()).then(|| disrupted.clone()),
        conditions: Some(vec![condition(&previous, allowed > 0, now)]),
    };
    if status != previous {
        let mut updated = budget.as_ref().clone();
        updated.status = Some(status);
        let api: Api<PodDisruptionBudget> = Api::namespaced(client.as_ref().clone(), &namespace);
        match api
            .replace_status(&budget.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            // Spent by an eviction meanwhile: the next event looks again.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(match disrupted.is_empty() {
        true => Action::await_change(),
        false => Action::requeue(DISRUPTED_FOR),
    })
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The evicted pods that still count as disrupted: they exist, are not
/// yet being deleted, and were evicted less than two minutes ago.
fn still_disrupted(
    previous: &PodDisruptionBudgetStatus,
    selected: &[Pod],
    now: Timestamp,
) -> BTreeMap<String, Time> {
    let window = k8s_openapi::jiff::SignedDuration::try_from(DISRUPTED_FOR).unwrap_or_default();
    previous
        .disrupted_pods
        .iter()
        .flatten()
        .filter(|(name, since)| {
            now.duration_since(since.0) < window
                && selected.iter().any(|pod| {
                    pod.name_any() == **name && pod.metadata.deletion_timestamp.is_none()
                })
        })
        .map(|(name, since)| (name.clone(), since.clone()))
        .collect()
}

/// How many of `expected` pods must stay healthy.
fn desired_healthy(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    expected: i32,
) -> Result<i32, Error> {
    Ok(match (min_available, max_unavailable) {
        (Some(minimum), _) => scaled(minimum, expected)?,
        (None, Some(maximum)) => (expected - scaled(maximum, expected)?).max(0),
        (None, None) => 0,
    })
}

/// An absolute count, or a percentage of `total` rounded up.
fn scaled(value: &IntOrString, total: i32) -> Result<i32, Error> {
    match value {
        IntOrString::Int(count) => Ok(*count),
        IntOrString::String(text) => {
            let percent: i64 = text
                .strip_suffix('%')
                .and_then(|digits| digits.parse().ok())
                .filter(|percent| (0..=100).contains(percent))
                .ok_or_else(|| {
                    Error::Invalid(format!("{text:?} is not a count or a percentage"))
                })?;
            Ok(((percent * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// `DisruptionAllowed`, its transition time kept while it holds.
fn condition(previous: &PodDisruptionBudgetStatus, allowed: bool, now: Timestamp) -> Condition {
    let (status, reason) = match allowed {
        true => ("True", "SufficientPods"),
        false => ("False", "InsufficientPods"),
    };
    let before = previous
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == status);
    Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: before.map_or(Time(now), |c| c.last_transition_time.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_count_and_round_up_as_kubernetes_does() {
        let int = IntOrString::Int;
        let percent = |p: &str| IntOrString::String(p.into());
        assert_eq!(desired_healthy(Some(&int(2)), None, 3).unwrap(), 2);
        assert_eq!(desired_healthy(Some(&percent("50%")), None, 3).unwrap(), 2);
        assert_eq!(desired_healthy(None, Some(&int(1)), 3).unwrap(), 2);
        assert_eq!(desired_healthy(None, Some(&percent("50%")), 3).unwrap(), 1);
        assert_eq!(desired_healthy(None, Some(&int(5)), 3).unwrap(), 0);
        assert_eq!(desired_healthy(None, None, 3).unwrap(), 0);
        assert!(desired_healthy(Some(&percent("150%")), None, 3).is_err());
    }
}
