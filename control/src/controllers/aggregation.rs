//! The ClusterRole aggregation controller, as kube-controller-manager's
//! `clusterrole-aggregation-controller`: a ClusterRole with an
//! `aggregationRule` holds the rules of every other ClusterRole that one of
//! its `clusterRoleSelectors` matches. That is how `admin`, `edit` and
//! `view` (`auth::bootstrap`) grow with every role labelled to join them.
//!
//! One task follows the ClusterRoles in a reflector. Whenever any of them
//! changes, it recomputes every aggregated role from the store ([`settle`])
//! and replaces those whose rules differ, each conditional on the
//! resourceVersion it was computed from. A 409 means the role moved
//! meanwhile: it is read again and recomputed, a bounded number of times.
//! Its own writes come back through the watch and find nothing to do.
//!
//! It knows ClusterRoles and label selectors, nothing of what rules grant.

use std::collections::BTreeMap;

use futures::channel::mpsc;
use futures::{StreamExt, future};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::Instrument;

use super::{Error, RETRY_AFTER, selector};

/// Rounds of recomputation within one pass, so that a role that aggregates
/// an aggregated one (`admin` takes `edit`'s, which takes `view`'s) is
/// written once, already complete, rather than once per level. A deeper
/// chain settles over further passes, as each write comes back.
const SETTLE_ROUNDS_MAX: usize = 8;
/// Writes of one role whose version keeps moving under it; past this the
/// change that moved it, coming through the watch, starts a new pass.
const CONFLICT_ATTEMPTS_MAX: u32 = 3;

/// Keeps the aggregated ClusterRoles' rules current; runs until dropped.
pub async fn run(client: kube::Client) {
    let api: Api<ClusterRole> = Api::all(client);
    let (store, writer) = reflector::store::<ClusterRole>();
    // One wake-up queued is enough: a pass reads the store as it is then.
    let (mut wake, woken) = mpsc::channel::<()>(1);
    let follow = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            if super::reflector_settled(&event) {
                // Full means a pass is queued already, which will see this.
                let _ = wake.try_send(());
            }
            future::ready(())
        });
    tokio::join!(follow, aggregate_on_change(api, store, woken));
}

/// One pass per wake-up; after a failed pass, another one after
/// [`RETRY_AFTER`] even if nothing changes.
async fn aggregate_on_change(
    api: Api<ClusterRole>,
    store: Store<ClusterRole>,
    mut woken: mpsc::Receiver<()>,
) {
    let mut failed = false;
    loop {
        let next = if failed {
            tokio::time::timeout(RETRY_AFTER, woken.next())
                .await
                .unwrap_or(Some(()))
        } else {
            woken.next().await
        };
        if next.is_none() {
            return;
        }
        let span = tracing::debug_span!("clusterrole_aggregation");
        let outcome = aggregate_all(&api, &store).instrument(span).await;
        if let Err(error) = &outcome {
            tracing::warn!(%error, "ClusterRole aggregation failed; retrying");
        }
        failed = outcome.is_err();
    }
}

/// Writes every aggregated role whose rules are not what they should be.
/// A failed write does not stop the others; the first error is returned.
async fn aggregate_all(api: &Api<ClusterRole>, store: &Store<ClusterRole>) -> Result<(), Error> {
    let current: Vec<ClusterRole> = store.state().iter().map(|role| (**role).clone()).collect();
    let settled = settle(&current);
    let mut first_error = None;
    for (before, after) in current.iter().zip(&settled) {
        if rules_of(before) == rules_of(after) {
            continue;
        }
        if let Err(error) = write(api, &settled, after.clone()).await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Replaces `role` (rules computed, version as read). On a 409 it reads
/// the role again and recomputes it from `sources`.
#[tracing::instrument(skip_all, fields(role = role.name_any()))]
async fn write(
    api: &Api<ClusterRole>,
    sources: &[ClusterRole],
    mut role: ClusterRole,
) -> Result<(), Error> {
    let name = role.name_any();
    for attempt in 1..=CONFLICT_ATTEMPTS_MAX {
        match api.replace(&name, &PostParams::default(), &role).await {
            Ok(_) => {
                let rules = rules_of(&role).len();
                tracing::info!(rules, "aggregated ClusterRole updated");
                return Ok(());
            }
            // Deleted meanwhile: nothing left to aggregate into.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            // Expected now and then: a user or the server's start-up
            // reconciliation wrote the role between our read and write.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(attempt, "the ClusterRole moved meanwhile; reading it again");
                let Some(fresh) = api.get_opt(&name).await? else {
                    return Ok(());
                };
                match aggregate(&fresh, sources) {
                    Some(rules) if rules_of(&fresh) != rules.as_slice() => {
                        role = fresh;
                        role.rules = Some(rules);
                    }
                    // No longer aggregated, or already right.
                    _ => return Ok(()),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    tracing::debug!("the ClusterRole kept moving; the next pass writes it");
    Ok(())
}

// ---- The union itself, free of the API.

/// The rules `role` aggregates, or `None` if it has no `aggregationRule`:
/// those of every other ClusterRole in `all` that any of its selectors
/// matches, taken in the order of those roles' names and then of their
/// rules, each rule once. An empty selector matches every role, as a
/// Kubernetes label selector does.
pub fn aggregate(role: &ClusterRole, all: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_deref()
        .unwrap_or_default();
    let name = role.metadata.name.as_deref();
    let mut sources: Vec<&ClusterRole> = all
        .iter()
        .filter(|other| other.metadata.name.as_deref() != name)
        .filter(|other| selected(selectors, other))
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    // Rules are few (tens per role) and have no hash: a scan is enough.
    for rule in sources.into_iter().flat_map(rules_of) {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    Some(rules)
}

/// `roles` with every aggregated one's rules recomputed until nothing
/// changes (or [`SETTLE_ROUNDS_MAX`] rounds), in the same order. Each
/// recomputation sees the ones before it, as the writes would.
pub fn settle(roles: &[ClusterRole]) -> Vec<ClusterRole> {
    let mut settled = roles.to_vec();
    for _ in 0..SETTLE_ROUNDS_MAX {
        let mut changed = false;
        for index in 0..settled.len() {
            let Some(rules) = aggregate(&settled[index], &settled) else {
                continue;
            };
            if rules_of(&settled[index]) != rules.as_slice() {
                settled[index].rules = Some(rules);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    settled
}

fn selected(selectors: &[LabelSelector], role: &ClusterRole) -> bool {
    const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();
    let labels = role.metadata.labels.as_ref().unwrap_or(NO_LABELS);
    selectors
        .iter()
        .any(|selector| selector::matches(selector, labels))
}

/// A role's rules; absent and empty are the same.
fn rules_of(role: &ClusterRole) -> &[PolicyRule] {
    role.rules.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::bootstrap;

    fn role(value: serde_json::Value) -> ClusterRole {
        serde_json::from_value(value).unwrap()
    }

    /// A plain role named `name` with `labels` and one rule per resource.
    fn source(name: &str, labels: serde_json::Value, resources: &[&str]) -> ClusterRole {
        let rules: Vec<_> = resources
            .iter()
            .map(|r| json!({"apiGroups": [""], "resources": [r], "verbs": ["get"]}))
            .collect();
        role(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
    }

    fn aggregator(name: &str, selectors: serde_json::Value) -> ClusterRole {
        role(json!({
            "metadata": {"name": name},
            "aggregationRule": {"clusterRoleSelectors": selectors},
        }))
    }

    /// The single resource of each rule, in order.
    fn resources(rules: &[PolicyRule]) -> Vec<String> {
        rules
            .iter()
            .map(|rule| rule.resources.as_ref().unwrap().join(","))
            .collect()
    }

    fn check(aggregated: &ClusterRole, all: &[ClusterRole], expected: &[&str]) {
        let rules = aggregate(aggregated, all).expect("an aggregated role");
        assert_eq!(resources(&rules), expected);
    }

    #[test]
    fn a_role_without_an_aggregation_rule_is_left_alone() {
        let plain = source("plain", json!({}), &["pods"]);
        assert_eq!(aggregate(&plain, std::slice::from_ref(&plain)), None);
    }

    #[test]
    fn match_labels_and_match_expressions_select_roles() {
        let all = [
            source("a", json!({"team": "web"}), &["pods"]),
            source("b", json!({"team": "db", "tier": "x"}), &["secrets"]),
            source("c", json!({"tier": "y"}), &["services"]),
            source("d", json!({}), &["nodes"]),
        ];
        check(
            &aggregator("by-label", json!([{"matchLabels": {"team": "web"}}])),
            &all,
            &["pods"],
        );
        check(
            &aggregator(
                "by-expression",
                json!([{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]}]}]),
            ),
            &all,
            &["secrets", "services"],
        );
        // Any selector suffices.
        check(
            &aggregator(
                "either",
                json!([
                    {"matchLabels": {"team": "web"}},
                    {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]},
                ]),
            ),
            &all,
            &["pods", "services", "nodes"],
        );
        check(
            &aggregator("nothing", json!([{"matchLabels": {"team": "ops"}}])),
            &all,
            &[],
        );
    }

    #[test]
    fn sources_are_taken_by_name_then_rule_order_and_each_rule_once() {
        let all = [
            source("zeta", json!({"join": "yes"}), &["pods", "nodes"]),
            source("alpha", json!({"join": "yes"}), &["secrets", "pods"]),
            source("mid", json!({"join": "yes"}), &["services", "secrets"]),
        ];
        let selector = json!([{"matchLabels": {"join": "yes"}}]);
        check(
            &aggregator("union", selector),
            &all,
            &["secrets", "pods", "services", "nodes"],
        );
    }

    #[test]
    fn a_role_never_aggregates_itself() {
        let mut itself = aggregator("self", json!([{"matchLabels": {"join": "yes"}}]));
        itself.metadata.labels = Some(BTreeMap::from([("join".into(), "yes".into())]));
        itself.rules = Some(source("x", json!({}), &["stale"]).rules.unwrap());
        let all = [
            itself.clone(),
            source("other", json!({"join": "yes"}), &["pods"]),
        ];
        check(&itself, &all, &["pods"]);
    }

    #[test]
    fn chains_settle_in_one_pass_and_then_stay() {
        let all = [
            aggregator("admin", json!([{"matchLabels": {"to-admin": "true"}}])),
            role(json!({
                "metadata": {"name": "edit", "labels": {"to-admin": "true"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-edit": "true"}}]},
            })),
            role(json!({
                "metadata": {"name": "view", "labels": {"to-edit": "true"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]},
            })),
            source("more-view", json!({"to-view": "true"}), &["pods"]),
            source("more-edit", json!({"to-edit": "true"}), &["secrets"]),
            source("more-admin", json!({"to-admin": "true"}), &["roles"]),
        ];
        let settled = settle(&all);
        let rules = |name: &str| {
            let role = settled.iter().find(|r| r.name_any() == name).unwrap();
            resources(rules_of(role))
        };
        assert_eq!(rules("view"), ["pods"]);
        assert_eq!(rules("edit"), ["secrets", "pods"]);
        assert_eq!(rules("admin"), ["secrets", "pods", "roles"]);
        assert_eq!(settle(&settled), settled);
    }

    #[test]
    fn the_default_policy_settles_into_nested_roles() {
        let settled = settle(&bootstrap::cluster_roles());
        let rules = |name: &str| {
            let role = settled.iter().find(|r| r.name_any() == name).unwrap();
            rules_of(role).to_vec()
        };
        let (admin, edit, view) = (rules("admin"), rules("edit"), rules("view"));
        assert!(!view.is_empty());
        assert!(view.iter().all(|rule| edit.contains(rule)));
        assert!(edit.iter().all(|rule| admin.contains(rule)));
        let names = |rules: &[PolicyRule]| -> Vec<String> {
            rules
                .iter()
                .flat_map(|rule| rule.resources.clone().unwrap_or_default())
                .collect()
        };
        assert!(!names(&view).contains(&"secrets".to_string()));
        assert!(names(&edit).contains(&"secrets".to_string()));
        assert!(!names(&edit).contains(&"rolebindings".to_string()));
        assert!(names(&admin).contains(&"rolebindings".to_string()));
        // Only the three aggregated roles change.
        let changed: Vec<String> = bootstrap::cluster_roles()
            .iter()
            .zip(&settled)
            .filter(|(before, after)| before != after)
            .map(|(role, _)| role.name_any())
            .collect();
        assert_eq!(changed, ["admin", "edit", "view"]);
    }
}
