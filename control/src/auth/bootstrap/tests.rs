use std::collections::HashSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

/// A plain reading of one rule, enough to check the data: exact names or
/// `*`, and a trailing `*` in a URL. The authorizer's matching is its own.
fn rule_grants(rule: &PolicyRule, group: &str, resource: &str, verb: &str) -> bool {
    let has = |list: &Option<Vec<String>>, item: &str| {
        list.iter()
            .flatten()
            .any(|entry| entry == item || entry == "*")
    };
    has(&rule.api_groups, group)
        && has(&rule.resources, resource)
        && rule.verbs.iter().any(|v| v == verb || v == "*")
}

fn rule_grants_url(rule: &PolicyRule, url: &str, verb: &str) -> bool {
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => url.starts_with(prefix),
        None => pattern == url,
    };
    rule.non_resource_urls.iter().flatten().any(matches)
        && rule.verbs.iter().any(|v| v == verb || v == "*")
}

fn find(name: &str) -> ClusterRole {
    cluster_roles()
        .into_iter()
        .find(|role| role.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no ClusterRole {name}"))
}

fn rules_of(name: &str) -> Vec<PolicyRule> {
    find(name).rules.unwrap_or_default()
}

fn grants(role: &str, group: &str, resource: &str, verb: &str) -> bool {
    rules_of(role)
        .iter()
        .any(|rule| rule_grants(rule, group, resource, verb))
}

fn grants_url(role: &str, url: &str, verb: &str) -> bool {
    rules_of(role)
        .iter()
        .any(|rule| rule_grants_url(rule, url, verb))
}

fn assert_default_metadata(kind: &str, metadata: &ObjectMeta) {
    let name = metadata.name.as_deref().unwrap_or_default();
    assert!(!name.is_empty(), "a {kind} without a name");
    let label = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(BOOTSTRAPPING_LABEL));
    assert_eq!(
        label.map(String::as_str),
        Some(BOOTSTRAPPING_DEFAULTS),
        "{kind} {name}"
    );
    let annotation = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTOUPDATE_ANNOTATION));
    assert_eq!(
        annotation.map(String::as_str),
        Some("true"),
        "{kind} {name}"
    );
}

fn assert_unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for name in names {
        assert!(seen.insert(name), "two {kind}s named {name}");
    }
}

#[test]
fn every_object_is_named_once_and_marked_as_a_default() {
    let roles = cluster_roles();
    let bindings = cluster_role_bindings();
    roles
        .iter()
        .for_each(|role| assert_default_metadata("ClusterRole", &role.metadata));
    bindings
        .iter()
        .for_each(|binding| assert_default_metadata("ClusterRoleBinding", &binding.metadata));
    assert_unique(
        "ClusterRole",
        roles.iter().filter_map(|r| r.metadata.name.as_deref()),
    );
    assert_unique(
        "ClusterRoleBinding",
        bindings.iter().filter_map(|b| b.metadata.name.as_deref()),
    );
}

#[test]
fn every_rule_is_about_resources_or_urls_and_has_verbs() {
    for role in cluster_roles() {
        let name = role.metadata.name.unwrap_or_default();
        for rule in role.rules.unwrap_or_default() {
            let resources = rule.resources.as_ref().is_some_and(|r| !r.is_empty());
            let urls = rule
                .non_resource_urls
                .as_ref()
                .is_some_and(|u| !u.is_empty());
            assert!(resources != urls, "{name}: {rule:?}");
            assert_eq!(resources, rule.api_groups.is_some(), "{name}: {rule:?}");
            assert!(!rule.verbs.is_empty(), "{name}: {rule:?}");
        }
    }
}

#[test]
fn every_binding_names_a_default_cluster_role() {
    let roles: HashSet<String> = cluster_roles()
        .into_iter()
        .filter_map(|role| role.metadata.name)
        .collect();
    for binding in cluster_role_bindings() {
        let reference = &binding.role_ref;
        assert_eq!(reference.kind, "ClusterRole");
        assert_eq!(reference.api_group.as_deref(), Some(RBAC_GROUP));
        assert!(roles.contains(&reference.name), "{reference:?}");
        assert!(
            !binding.subjects.unwrap_or_default().is_empty(),
            "{reference:?}"
        );
    }
}

#[test]
fn every_component_has_its_role_and_a_binding_to_its_user() {
    let listed: Vec<Component> = controllers::table().into_iter().map(|(c, _)| c).collect();
    assert_eq!(listed, COMPONENTS);
    assert_unique("component user", COMPONENTS.iter().map(|c| c.user));
    let bindings = cluster_role_bindings();
    for component in COMPONENTS {
        find(component.cluster_role);
        let binding = bindings
            .iter()
            .find(|b| b.role_ref.name == component.cluster_role)
            .unwrap_or_else(|| panic!("{component:?} is not bound"));
        assert_eq!(binding.subjects, Some(vec![component.subject()]));
    }
}

#[test]
fn controllers_are_kube_system_service_accounts_and_the_rest_users() {
    let cases = [
        (
            NODE_CONTROLLER,
            "ServiceAccount",
            "node-controller",
            Some(controllers::CONTROLLER_NAMESPACE),
        ),
        (SCHEDULER, "User", "system:kube-scheduler", None),
        (
            CONTROLLER_MANAGER,
            "User",
            "system:kube-controller-manager",
            None,
        ),
    ];
    for (component, kind, name, namespace) in cases {
        let subject = component.subject();
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            (kind, name, namespace),
            "{component:?}"
        );
    }
    for component in COMPONENTS {
        if let Some(name) = component.cluster_role.strip_prefix("system:controller:") {
            assert_eq!(
                component.user,
                format!("system:serviceaccount:kube-system:{name}")
            );
        }
    }
}

#[test]
fn cluster_admin_may_do_anything_and_is_held_by_system_masters() {
    for (group, resource, verb) in [
        ("", "pods", "delete"),
        ("apps", "deployments/scale", "update"),
        ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
        ("example.com", "widgets", "deletecollection"),
    ] {
        assert!(
            grants(CLUSTER_ADMIN, group, resource, verb),
            "{resource} {verb}"
        );
    }
    for url in ["/metrics", "/flotilla/registry/v1/tags/app/v1", "/anything"] {
        assert!(grants_url(CLUSTER_ADMIN, url, "update"), "{url}");
    }
    let binding = cluster_role_bindings()
        .into_iter()
        .find(|b| b.role_ref.name == CLUSTER_ADMIN)
        .unwrap();
    assert_eq!(binding.subjects, Some(vec![group(SYSTEM_MASTERS)]));
}

#[test]
fn admin_edit_and_view_are_aggregated_as_in_kubernetes() {
    // (role, the label it selects, the label it carries)
    let cases = [
        ("admin", AGGREGATE_TO_ADMIN, None),
        ("edit", AGGREGATE_TO_EDIT, Some(AGGREGATE_TO_ADMIN)),
        ("view", AGGREGATE_TO_VIEW, Some(AGGREGATE_TO_EDIT)),
    ];
    for (name, selects, carries) in cases {
        let role = find(name);
        assert_eq!(role.rules, Some(Vec::new()), "{name}");
        let selectors = role
            .aggregation_rule
            .unwrap()
            .cluster_role_selectors
            .unwrap();
        let selected = selectors[0].match_labels.as_ref().unwrap();
        assert_eq!(selected.get(selects).map(String::as_str), Some("true"));
        let labels = role.metadata.labels.unwrap();
        assert_eq!(
            carries.and_then(|l| labels.get(l)).map(String::as_str),
            carries.map(|_| "true")
        );
    }
    for (name, label) in [
        ("system:aggregate-to-admin", AGGREGATE_TO_ADMIN),
        ("system:aggregate-to-edit", AGGREGATE_TO_EDIT),
        ("system:aggregate-to-view", AGGREGATE_TO_VIEW),
    ] {
        let role = find(name);
        assert!(role.aggregation_rule.is_none());
        assert_eq!(
            role.metadata.labels.unwrap().get(label).map(String::as_str),
            Some("true")
        );
    }
}

/// (ClusterRole, group, resource, verb, granted)
const RESOURCE_CASES: &[(&str, &str, &str, &str, bool)] = &[
    ("system:aggregate-to-view", "", "pods", "list", true),
    ("system:aggregate-to-view", "", "pods/log", "get", true),
    (
        "system:aggregate-to-view",
        "apps",
        "deployments",
        "watch",
        true,
    ),
    (
        "system:aggregate-to-view",
        "discovery.k8s.io",
        "endpointslices",
        "get",
        true,
    ),
    ("system:aggregate-to-view", "", "secrets", "get", false),
    ("system:aggregate-to-view", "", "pods/exec", "create", false),
    ("system:aggregate-to-view", "", "pods", "delete", false),
    ("system:aggregate-to-edit", "", "secrets", "get", true),
    ("system:aggregate-to-edit", "", "secrets", "create", true),
    ("system:aggregate-to-edit", "", "pods/exec", "create", true),
    (
        "system:aggregate-to-edit",
        "apps",
        "deployments/scale",
        "update",
        true,
    ),
    (
        "system:aggregate-to-edit",
        "",
        "serviceaccounts",
        "impersonate",
        true,
    ),
    (
        "system:aggregate-to-edit",
        "",
        "serviceaccounts/token",
        "create",
        true,
    ),
    (
        "system:aggregate-to-edit",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "create",
        false,
    ),
    (
        "system:aggregate-to-edit",
        "",
        "resourcequotas",
        "update",
        false,
    ),
    (
        "system:aggregate-to-admin",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "create",
        true,
    ),
    (
        "system:aggregate-to-admin",
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "create",
        true,
    ),
    (
        "system:basic-user",
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "create",
        true,
    ),
    (
        "system:basic-user",
        "authentication.k8s.io",
        "selfsubjectreviews",
        "create",
        true,
    ),
    ("system:node", "", "nodes", "create", true),
    ("system:node", "", "nodes/status", "patch", true),
    ("system:node", "", "pods", "watch", true),
    ("system:node", "", "pods/status", "patch", true),
    ("system:node", "", "pods", "delete", true),
    (
        "system:node",
        "coordination.k8s.io",
        "leases",
        "update",
        true,
    ),
    ("system:node", "", "secrets", "watch", true),
    ("system:node", "", "namespaces", "list", true),
    (
        "system:node",
        "networking.k8s.io",
        "networkpolicies",
        "watch",
        true,
    ),
    (
        "system:node",
        "networking.k8s.io",
        "ingresses",
        "list",
        true,
    ),
    (
        "system:node",
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        true,
    ),
    ("system:node", "", "secrets", "create", false),
    ("system:node", "", "services", "update", false),
    (
        "system:controller:endpoint-controller",
        "discovery.k8s.io",
        "endpointslices",
        "update",
        true,
    ),
    (
        "system:controller:endpoint-controller",
        "",
        "endpoints",
        "create",
        true,
    ),
    (
        "system:controller:service-controller",
        "networking.k8s.io",
        "ingresses/status",
        "patch",
        true,
    ),
    (
        "system:controller:node-controller",
        "coordination.k8s.io",
        "leases",
        "list",
        true,
    ),
    (
        "system:controller:generic-garbage-collector",
        "apps",
        "replicasets",
        "delete",
        true,
    ),
    (
        "system:controller:generic-garbage-collector",
        "",
        "secrets",
        "create",
        false,
    ),
    (
        "system:controller:clusterrole-aggregation-controller",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "escalate",
        true,
    ),
    (
        "system:controller:deployment-controller",
        "",
        "events",
        "create",
        true,
    ),
    (
        "system:controller:deployment-controller",
        "events.k8s.io",
        "events",
        "patch",
        true,
    ),
    (
        "system:controller:deployment-controller",
        "",
        "pods",
        "create",
        false,
    ),
    ("system:kube-scheduler", "", "pods/binding", "create", true),
    ("system:kube-scheduler", "", "pods/status", "patch", true),
    (
        "system:kube-controller-manager",
        "coordination.k8s.io",
        "leases",
        "update",
        true,
    ),
    ("system:kube-controller-manager", "", "pods", "list", false),
];

#[test]
fn roles_grant_what_they_should_and_no_more() {
    for &(role, group, resource, verb, expected) in RESOURCE_CASES {
        assert_eq!(
            grants(role, group, resource, verb),
            expected,
            "{role}: {verb} {group}/{resource}"
        );
    }
}

/// (ClusterRole, URL, verb, granted)
const URL_CASES: &[(&str, &str, &str, bool)] = &[
    ("system:public-info-viewer", "/healthz", "get", true),
    ("system:public-info-viewer", "/version", "get", true),
    ("system:public-info-viewer", "/metrics", "get", false),
    ("system:public-info-viewer", "/apis", "get", false),
    ("system:discovery", "/apis/apps/v1", "get", true),
    ("system:discovery", "/openapi/v3", "get", true),
    ("system:discovery", "/metrics", "get", false),
    ("system:monitoring", "/metrics", "get", true),
    (
        REGISTRY_READER,
        "/flotilla/registry/v1/blobs/sha256:ab",
        "get",
        true,
    ),
    (REGISTRY_READER, "/flotilla/registry/v1/tags", "get", true),
    (
        REGISTRY_READER,
        "/flotilla/registry/v1/blobs/sha256:ab",
        "put",
        false,
    ),
    (
        REGISTRY_PUSHER,
        "/flotilla/registry/v1/blobs/sha256:ab",
        "put",
        true,
    ),
    (
        REGISTRY_PUSHER,
        "/flotilla/registry/v1/tags/app/v1",
        "put",
        true,
    ),
    (
        REGISTRY_PUSHER,
        "/flotilla/registry/v1/blobs/sha256:ab",
        "get",
        true,
    ),
    (
        REGISTRY_PUSHER,
        "/flotilla/registry/v1/tags/app/v1",
        "delete",
        false,
    ),
    (REGISTRY_PUSHER, "/api/v1/pods", "put", false),
    (
        NODE_ROLE,
        "/flotilla/registry/v1/blobs/sha256:ab",
        "get",
        true,
    ),
    (NODE_ROLE, "/flotilla/registry/v1/tags/app/v1", "put", false),
];

#[test]
fn urls_are_granted_as_they_should_be() {
    for &(role, url, verb, expected) in URL_CASES {
        assert_eq!(
            grants_url(role, url, verb),
            expected,
            "{role}: {verb} {url}"
        );
    }
}

#[test]
fn namespaced_roles_carry_no_url_rules() {
    // A RoleBinding ignores nonResourceURLs; a role meant for namespaces
    // that had them (the registry above all) would mislead.
    for name in [
        "system:aggregate-to-admin",
        "system:aggregate-to-edit",
        "system:aggregate-to-view",
    ] {
        assert!(
            rules_of(name)
                .iter()
                .all(|rule| rule.non_resource_urls.is_none()),
            "{name}"
        );
    }
}

#[test]
fn default_bindings_name_kubernetes_groups() {
    let subjects_of = |role: &str| {
        cluster_role_bindings()
            .into_iter()
            .find(|b| b.role_ref.name == role)
            .and_then(|b| b.subjects)
            .unwrap_or_default()
    };
    let cases = [
        ("system:basic-user", vec![group(SYSTEM_AUTHENTICATED)]),
        ("system:discovery", vec![group(SYSTEM_AUTHENTICATED)]),
        (
            "system:public-info-viewer",
            vec![group(SYSTEM_AUTHENTICATED), group(SYSTEM_UNAUTHENTICATED)],
        ),
        (REGISTRY_READER, vec![group(SYSTEM_NODES)]),
        (REGISTRY_PUSHER, vec![]),
        (NODE_ROLE, vec![]),
        ("admin", vec![]),
    ];
    for (role, subjects) in cases {
        assert_eq!(subjects_of(role), subjects, "{role}");
    }
}
