//! The admission checks that depend on who writes: NodeRestriction (a node
//! changes only its own Node and Lease and the pods bound to it), RBAC's
//! escalation prevention (no one grants or binds permissions they do not
//! hold, unless allowed to `escalate` or `bind`), and the egress
//! allow-list of a Namespace, which only those who may update the
//! Namespace set (creating one is not enough).

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;

use super::attributes::{Attributes, ResourceAttributes};
use super::rbac::rules;
use super::user::UserInfo;
use super::{Authorizer, Decision};
use crate::api::status::ApiError;
use crate::resources::ResourceInfo;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// Labels only the cluster's administrators set on Nodes, for workloads
/// that must land on trusted nodes: a node may not set them on itself.
const NODE_RESTRICTION_LABEL_DOMAIN: &str = "node-restriction.kubernetes.io";
/// Where node Leases live; a node may hold only its own.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The Namespace annotation that opens egress for its pods, as the nodes
/// read it (`flotilla_node::net::EGRESS_ALLOW_ANNOTATION`).
const EGRESS_ALLOW_ANNOTATION: &str = "flotilla.dev/egress-allow";

/// A write about to happen: `old` is the stored object (none on create).
pub struct Write<'a> {
    pub info: &'a ResourceInfo,
    pub subresource: Option<&'a str>,
    pub old: Option<&'a Value>,
    pub new: &'a Value,
}

/// Checks a create or an update by `user`.
pub fn admit(authorizer: &Authorizer, user: &UserInfo, write: &Write<'_>) -> Result<(), ApiError> {
    if let Some(node) = user.node_name() {
        node_restriction(node, write)?;
    }
    if write.info.group == RBAC_GROUP && write.subresource.is_none() && !user.is_superuser() {
        no_escalation(authorizer, user, write)?;
    }
    if write.info.kind == "Namespace" && !user.is_superuser() {
        egress_allow_setter(authorizer, user, write)?;
    }
    Ok(())
}

/// A Namespace's egress allow-list opens the network to its pods: whoever
/// sets or changes it must be allowed to update that Namespace, so that
/// the right to create namespaces does not carry the right to open them.
fn egress_allow_setter(
    authorizer: &Authorizer,
    user: &UserInfo,
    write: &Write<'_>,
) -> Result<(), ApiError> {
    let allow_list =
        |object: &Value| object["metadata"]["annotations"][EGRESS_ALLOW_ANNOTATION].clone();
    let before = write.old.map(allow_list).unwrap_or(Value::Null);
    let after = allow_list(write.new);
    let name = name_of(write.new);
    if after == before
        || after.is_null()
        || may(authorizer, user, "", "update", "namespaces", "", name)
    {
        return Ok(());
    }
    Err(refuse(
        write.info,
        name,
        format!(
            "setting the {EGRESS_ALLOW_ANNOTATION} annotation needs permission to update the \
             Namespace, which User \"{}\" does not have",
            user.name
        ),
    ))
}

/// Checks a deletion by `user` of `current`.
pub fn admit_delete(user: &UserInfo, info: &ResourceInfo, current: &Value) -> Result<(), ApiError> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    let name = name_of(current);
    match info.kind {
        "Pod" if current["spec"]["nodeName"].as_str() != Some(node) => Err(refuse(
            info,
            name,
            format!("node \"{node}\" can only delete pods with spec.nodeName set to itself"),
        )),
        "Node" if name != node => Err(refuse(
            info,
            name,
            format!("node \"{node}\" is not allowed to modify node \"{name}\""),
        )),
        "Lease" => own_lease(node, info, current),
        _ => Ok(()),
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn refuse(info: &ResourceInfo, name: &str, message: String) -> ApiError {
    let what = if name.is_empty() {
        info.qualified_plural()
    } else {
        format!("{} {name:?}", info.qualified_plural())
    };
    ApiError::forbidden_object(
        info.group,
        info.plural,
        name,
        format!("{what} is forbidden: {message}"),
    )
}

fn node_restriction(node: &str, write: &Write<'_>) -> Result<(), ApiError> {
    let info = write.info;
    let name = name_of(write.new);
    match info.kind {
        "Node" => {
            if name != node {
                return Err(refuse(
                    info,
                    name,
                    format!("node \"{node}\" is not allowed to modify node \"{name}\""),
                ));
            }
            let changed = restricted_labels_changed(write.old, write.new);
            if !changed.is_empty() {
                return Err(refuse(
                    info,
                    name,
                    format!(
                        "node \"{node}\" is not allowed to modify labels: {}",
                        changed.join(", ")
                    ),
                ));
            }
            Ok(())
        }
        "Pod" => match write.old {
            None => Err(refuse(
                info,
                name,
                format!(
                    "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                ),
            )),
            Some(old) if old["spec"]["nodeName"].as_str() != Some(node) => Err(refuse(
                info,
                name,
                format!(
                    "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                ),
            )),
            Some(_) => Ok(()),
        },
        "Lease" => own_lease(node, info, write.new),
        _ => Ok(()),
    }
}

fn own_lease(node: &str, info: &ResourceInfo, lease: &Value) -> Result<(), ApiError> {
    let name = name_of(lease);
    let namespace = lease["metadata"]["namespace"].as_str().unwrap_or_default();
    if namespace == NODE_LEASE_NAMESPACE && name == node {
        return Ok(());
    }
    Err(refuse(
        info,
        name,
        "can only access node lease with the same name as the requesting node".into(),
    ))
}

/// The restricted labels `new` adds, changes or drops compared to `old`.
fn restricted_labels_changed(old: Option<&Value>, new: &Value) -> Vec<String> {
    let labels = |object: Option<&Value>| {
        object
            .and_then(|o| o["metadata"]["labels"].as_object())
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (labels(old), labels(Some(new)));
    let restricted = |key: &str| {
        key.split_once('/').is_some_and(|(domain, _)| {
            domain == NODE_RESTRICTION_LABEL_DOMAIN
                || domain.ends_with(&format!(".{NODE_RESTRICTION_LABEL_DOMAIN}"))
        })
    };
    let mut changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|key| restricted(key) && before.get(*key) != after.get(*key))
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

/// What a role or binding grants, to be held by whoever writes it.
fn no_escalation(
    authorizer: &Authorizer,
    user: &UserInfo,
    write: &Write<'_>,
) -> Result<(), ApiError> {
    let info = write.info;
    let name = name_of(write.new);
    let namespace = write.new["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    match info.kind {
        "Role" | "ClusterRole" => {
            let rules_of = |object: &Value| object.get("rules").cloned().unwrap_or(Value::Null);
            let aggregated = !write.new["aggregationRule"].is_null();
            let unchanged = write.old.is_some_and(|old| {
                rules_of(old) == rules_of(write.new)
                    && old["aggregationRule"] == write.new["aggregationRule"]
            });
            let escalate = "escalate";
            if unchanged
                || may(
                    authorizer,
                    user,
                    RBAC_GROUP,
                    escalate,
                    info.plural,
                    namespace,
                    name,
                )
            {
                return Ok(());
            }
            let held = authorizer.rbac.rules_for(user, namespace);
            if aggregated && !rules::uncovered(&held, &full_authority()).is_empty() {
                return Err(refuse(
                    info,
                    name,
                    "must have cluster-admin privileges to use the aggregationRule".into(),
                ));
            }
            let wanted: Vec<PolicyRule> =
                serde_json::from_value(rules_of(write.new)).unwrap_or_default();
            escalation_check(info, name, user, &held, &wanted)
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let unchanged = write.old.is_some_and(|old| {
                old["roleRef"] == write.new["roleRef"] && old["subjects"] == write.new["subjects"]
            });
            if unchanged {
                return Ok(());
            }
            let role: RoleRef =
                serde_json::from_value(write.new["roleRef"].clone()).unwrap_or_default();
            let plural = if role.kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if may(
                authorizer, user, RBAC_GROUP, "bind", plural, namespace, &role.name,
            ) {
                return Ok(());
            }
            let Some(wanted) = authorizer
                .rbac
                .role_rules(&role.kind, &role.name, namespace)
            else {
                return Err(refuse(
                    info,
                    name,
                    format!("{} {:?} not found", role.kind, role.name),
                ));
            };
            let held = authorizer.rbac.rules_for(user, namespace);
            escalation_check(info, name, user, &held, &wanted)
        }
        _ => Ok(()),
    }
}

fn escalation_check(
    info: &ResourceInfo,
    name: &str,
    user: &UserInfo,
    held: &[PolicyRule],
    wanted: &[PolicyRule],
) -> Result<(), ApiError> {
    let missing = rules::uncovered(held, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = missing.iter().map(describe_rule).collect();
    Err(refuse(
        info,
        name,
        format!(
            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            listed.join("\n")
        ),
    ))
}

/// A rule as Kubernetes prints one in an escalation refusal.
fn describe_rule(rule: &PolicyRule) -> String {
    let quoted = |values: &Option<Vec<String>>| {
        values
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if rule.non_resource_urls.is_some() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            quoted(&rule.non_resource_urls)
        ));
    } else {
        parts.push(format!("APIGroups:[{}]", quoted(&rule.api_groups)));
        parts.push(format!("Resources:[{}]", quoted(&rule.resources)));
        if rule.resource_names.is_some() {
            parts.push(format!("ResourceNames:[{}]", quoted(&rule.resource_names)));
        }
    }
    parts.push(format!("Verbs:[{}]", quoted(&Some(rule.verbs.clone()))));
    format!("{{{}}}", parts.join(", "))
}

pub(crate) fn full_authority() -> Vec<PolicyRule> {
    let all = || Some(vec!["*".to_string()]);
    vec![
        PolicyRule {
            api_groups: all(),
            resources: all(),
            verbs: vec!["*".into()],
            ..PolicyRule::default()
        },
        PolicyRule {
            non_resource_urls: all(),
            verbs: vec!["*".into()],
            ..PolicyRule::default()
        },
    ]
}

/// Whether `user` holds the special verb on one role.
fn may(
    authorizer: &Authorizer,
    user: &UserInfo,
    group: &str,
    verb: &str,
    plural: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let request = Attributes::Resource(ResourceAttributes {
        verb: verb.to_string(),
        group: group.to_string(),
        version: "v1".to_string(),
        resource: plural.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        ..ResourceAttributes::default()
    });
    authorizer.decide(user, &request) == Decision::Allow
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::feed::Table;
    use crate::resources::registry;

    fn info(kind: &str) -> &'static ResourceInfo {
        registry()
            .all()
            .iter()
            .find(|info| info.kind == kind)
            .expect("served")
    }

    fn node(name: &str) -> UserInfo {
        UserInfo::authenticated(format!("system:node:{name}"), vec!["system:nodes".into()])
    }

    fn write<'a>(kind: &str, old: Option<&'a Value>, new: &'a Value) -> Write<'a> {
        Write {
            info: info(kind),
            subresource: None,
            old,
            new,
        }
    }

    #[test]
    fn nodes_change_only_their_own() {
        let authorizer = Authorizer::new();
        let n1 = node("n1");
        let own = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        assert!(admit(&authorizer, &n1, &write("Node", None, &own)).is_ok());
        let other = json!({"metadata": {"name": "n2"}});
        assert!(admit(&authorizer, &n1, &write("Node", None, &other)).is_err());
        let labelled = json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/tier": "gold"}}});
        let refused =
            admit(&authorizer, &n1, &write("Node", Some(&own), &labelled)).expect_err("label");
        assert!(
            refused
                .message
                .contains("not allowed to modify labels: node-restriction.kubernetes.io/tier")
        );
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n2"}});
        assert!(admit(&authorizer, &n1, &write("Pod", Some(&pod), &pod)).is_err());
        assert!(admit_delete(&n1, info("Pod"), &pod).is_err());
        assert!(admit_delete(&node("n2"), info("Pod"), &pod).is_ok());
        let lease = json!({"metadata": {"name": "n2", "namespace": "kube-node-lease"}});
        assert!(admit(&authorizer, &n1, &write("Lease", None, &lease)).is_err());
        assert!(admit(&authorizer, &node("n2"), &write("Lease", None, &lease)).is_ok());
    }

    #[test]
    fn grants_need_what_they_grant() {
        let authorizer = Authorizer::new();
        let put = |key: &str, value: Value, revision: i64| {
            authorizer.rbac.apply(
                key.as_bytes(),
                Some(&serde_json::to_vec(&value).expect("json")),
                revision,
            );
        };
        put(
            "/registry/clusterroles/pods",
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}),
            1,
        );
        put(
            "/registry/clusterroles/secrets",
            json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
            2,
        );
        put(
            "/registry/rolebindings/a/alice",
            json!({
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "pods"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
            3,
        );
        let alice = UserInfo::authenticated("alice", vec![]);
        let role = |resource: &str| {
            json!({"metadata": {"name": "r", "namespace": "a"},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]})
        };
        assert!(admit(&authorizer, &alice, &write("Role", None, &role("pods"))).is_ok());
        let refused = admit(&authorizer, &alice, &write("Role", None, &role("secrets")))
            .expect_err("escalation");
        assert!(
            refused
                .message
                .contains("attempting to grant RBAC permissions not currently held"),
            "{}",
            refused.message
        );
        let binding = |role: &str| {
            json!({"metadata": {"name": "b", "namespace": "a"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": "bob"}]})
        };
        assert!(
            admit(
                &authorizer,
                &alice,
                &write("RoleBinding", None, &binding("pods"))
            )
            .is_ok()
        );
        assert!(
            admit(
                &authorizer,
                &alice,
                &write("RoleBinding", None, &binding("secrets"))
            )
            .is_err()
        );
        // With `bind` on that role, the binding is allowed.
        put(
            "/registry/clusterroles/binder",
            json!({"rules": [{"apiGroups": [RBAC_GROUP], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["secrets"]}]}),
            4,
        );
        put(
            "/registry/rolebindings/a/alice-binds",
            json!({
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "binder"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
            5,
        );
        assert!(
            admit(
                &authorizer,
                &alice,
                &write("RoleBinding", None, &binding("secrets"))
            )
            .is_ok()
        );
    }
}
