//! The default RBAC policy a cluster starts with, as data: Kubernetes'
//! bootstrap ClusterRoles and ClusterRoleBindings (`bootstrappolicy` in
//! kube-apiserver), adapted to what Flotilla serves, plus one role per
//! control-plane component (`controllers.rs`) and the module registry's.
//!
//! - `cluster-admin` may do anything, and the group `system:masters` holds it.
//! - `admin`, `edit` and `view` are aggregated: their rules are filled in by
//!   the aggregation controller (`controllers::aggregation`) from the
//!   `system:aggregate-to-*` roles, and from any ClusterRole a user labels
//!   the same way. `view` feeds `edit`, which feeds `admin`.
//! - `system:node` holds what a node agent calls. Nothing binds it: the node
//!   authorizer grants it to each node, narrowed to that node's objects.
//! - The registry lives at non-resource URLs, so it is granted by
//!   `nonResourceURLs` rules, whose verbs are the HTTP methods in lower
//!   case as Kubernetes has them (`get`, which HEAD counts as, `put`,
//!   `post`). Nodes read it
//!   (`flotilla:registry-reader`, bound to `system:nodes`). Pushing is
//!   cluster-wide, so no namespaced role carries it: a user who pushes
//!   needs a ClusterRoleBinding to `flotilla:registry-pusher`, and a user who
//!   only pulls one to `flotilla:registry-reader`.
//!
//! - Nodes renew their own certificates (`system:certificates.flotilla.dev:
//!   selfnodeclient`, bound to `system:nodes`, as kubeadm binds Kubernetes'
//!   `selfnodeclient` role for kubelet certificate rotation); the renewal
//!   itself checks that the certificate presented is the node's own.
//!
//! This module is data. It knows no request and matches no rule; the
//! authorizer does that.

mod controllers;
mod namespaced;
#[cfg(test)]
mod tests;

pub use controllers::{
    AGGREGATION_CONTROLLER, COMPONENTS, CONTROLLER_MANAGER, CONTROLLER_NAMESPACE,
    CRONJOB_CONTROLLER, Component, DAEMONSET_CONTROLLER, DEPLOYMENT_CONTROLLER,
    ENDPOINT_CONTROLLER, GARBAGE_COLLECTOR, JOB_CONTROLLER, NODE_CONTROLLER, REPLICASET_CONTROLLER,
    SCHEDULER, SERVICE_CONTROLLER, SERVICEACCOUNT_CONTROLLER, STATEFULSET_CONTROLLER,
};

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// Set to `"true"` on every default object: the server may bring it back
/// to its default at start-up (Kubernetes' reconciliation). A user who
/// wants to keep changes to a default sets it to `"false"`.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The label every default object carries, with [`BOOTSTRAPPING_DEFAULTS`].
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAPPING_DEFAULTS: &str = "rbac-defaults";

/// A ClusterRole labelled with one of these (`"true"`) adds its rules to
/// `admin`, `edit` or `view`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The groups the default bindings name, as Kubernetes spells them.
pub const SYSTEM_MASTERS: &str = "system:masters";
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
pub const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
pub const SYSTEM_NODES: &str = "system:nodes";
pub const SYSTEM_MONITORING: &str = "system:monitoring";

/// Names of default ClusterRoles that other code refers to.
pub const CLUSTER_ADMIN: &str = "cluster-admin";
pub const NODE_ROLE: &str = "system:node";
pub const REGISTRY_READER: &str = "flotilla:registry-reader";
pub const REGISTRY_PUSHER: &str = "flotilla:registry-pusher";
/// Lets nodes renew their certificates (Kubernetes' `selfnodeclient`).
pub const NODE_RENEWAL: &str = "system:certificates.flotilla.dev:selfnodeclient";

/// The API group of roles and bindings (a `roleRef`'s and a user or group
/// subject's `apiGroup`).
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

const CORE: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const NETWORKING: &str = "networking.k8s.io";
const POLICY: &str = "policy";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
/// Every verb of Kubernetes' resource requests.
pub const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

// ---- Builders: the tables below read as Kubernetes' `NewRule(...)` does.

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// `verbs` on `resources` (`pods`, `pods/status`) of each of `groups`.
fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// `rule` restricted to the objects named `names`.
fn named(names: &[&str], rule: PolicyRule) -> PolicyRule {
    PolicyRule {
        resource_names: Some(strings(names)),
        ..rule
    }
}

/// `verbs` on paths outside the resource API (`/healthz`, `/apis/*`).
fn non_resource(urls: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        non_resource_urls: Some(strings(urls)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// Recording Events, in either API group, as every component may.
fn events_rule() -> PolicyRule {
    rule(&[CORE, EVENTS], &["events"], &["create", "update", "patch"])
}

/// The registry's paths: every blob and tag below its prefix.
fn registry_urls() -> String {
    format!("{}*", crate::registry::http::PREFIX)
}

fn default_metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(BTreeMap::from([(
            BOOTSTRAPPING_LABEL.to_string(),
            BOOTSTRAPPING_DEFAULTS.to_string(),
        )])),
        annotations: Some(BTreeMap::from([(
            AUTOUPDATE_ANNOTATION.to_string(),
            "true".to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: default_metadata(name),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// `role`, labelled so that it aggregates into the role that selects `label`.
fn aggregates_to(label: &str, mut role: ClusterRole) -> ClusterRole {
    role.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(label.to_string(), "true".to_string());
    role
}

/// A role whose rules are those of the ClusterRoles labelled `label`.
fn aggregated(name: &str, label: &str) -> ClusterRole {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(label.to_string(), "true".to_string())])),
        match_expressions: None,
    };
    ClusterRole {
        metadata: default_metadata(name),
        // Empty until the aggregation controller fills it in.
        rules: Some(Vec::new()),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![selector]),
        }),
    }
}

/// Binds the ClusterRole `role` cluster-wide, under the role's own name
/// (Kubernetes' convention for default bindings).
fn binding(role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: default_metadata(role),
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.to_string()),
            kind: "ClusterRole".to_string(),
            name: role.to_string(),
        },
        subjects: Some(subjects),
    }
}

fn group(name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: "Group".to_string(),
        name: name.to_string(),
        namespace: None,
    }
}

fn user(name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: "User".to_string(),
        name: name.to_string(),
        namespace: None,
    }
}

fn service_account(namespace: &str, name: &str) -> Subject {
    Subject {
        // ServiceAccounts are core objects: Kubernetes leaves the group empty.
        api_group: None,
        kind: "ServiceAccount".to_string(),
        name: name.to_string(),
        namespace: Some(namespace.to_string()),
    }
}

// ---- The policy.

/// Every default ClusterRole; every one carries the bootstrapping label and
/// the autoupdate annotation, as Kubernetes' do.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![
        role(
            CLUSTER_ADMIN,
            vec![rule(&["*"], &["*"], &["*"]), non_resource(&["*"], &["*"])],
        ),
        role("system:discovery", vec![discovery_rule()]),
        role("system:monitoring", vec![monitoring_rule()]),
        role("system:basic-user", basic_user_rules()),
        role("system:public-info-viewer", vec![public_info_rule()]),
        aggregated("admin", AGGREGATE_TO_ADMIN),
        // Everything `edit` holds, `admin` holds too; and `view` in `edit`.
        aggregates_to(AGGREGATE_TO_ADMIN, aggregated("edit", AGGREGATE_TO_EDIT)),
        aggregates_to(AGGREGATE_TO_EDIT, aggregated("view", AGGREGATE_TO_VIEW)),
        aggregates_to(
            AGGREGATE_TO_ADMIN,
            role("system:aggregate-to-admin", namespaced::admin_rules()),
        ),
        aggregates_to(
            AGGREGATE_TO_EDIT,
            role("system:aggregate-to-edit", namespaced::edit_rules()),
        ),
        aggregates_to(
            AGGREGATE_TO_VIEW,
            role("system:aggregate-to-view", namespaced::view_rules()),
        ),
        role(NODE_ROLE, node_rules()),
        role(
            REGISTRY_READER,
            vec![non_resource(&[&registry_urls()], &["get"])],
        ),
        role(
            REGISTRY_PUSHER,
            vec![non_resource(&[&registry_urls()], &["get", "put", "post"])],
        ),
        role(
            NODE_RENEWAL,
            vec![non_resource(&[crate::join::RENEWAL_PATH], &["post"])],
        ),
    ];
    roles.extend(controllers::roles());
    roles
}

/// Every default ClusterRoleBinding, labelled and annotated as the roles.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let mut bindings = vec![
        binding(CLUSTER_ADMIN, vec![group(SYSTEM_MASTERS)]),
        binding("system:discovery", vec![group(SYSTEM_AUTHENTICATED)]),
        binding("system:monitoring", vec![group(SYSTEM_MONITORING)]),
        binding("system:basic-user", vec![group(SYSTEM_AUTHENTICATED)]),
        binding(
            "system:public-info-viewer",
            vec![group(SYSTEM_AUTHENTICATED), group(SYSTEM_UNAUTHENTICATED)],
        ),
        binding(REGISTRY_READER, vec![group(SYSTEM_NODES)]),
        binding(NODE_RENEWAL, vec![group(SYSTEM_NODES)]),
    ];
    bindings.extend(
        COMPONENTS
            .iter()
            .map(|component| binding(component.cluster_role, vec![component.subject()])),
    );
    bindings
}

/// Just enough to find the API's versions and see whether it is up.
fn discovery_rule() -> PolicyRule {
    non_resource(
        &[
            "/livez",
            "/readyz",
            "/healthz",
            "/version",
            "/version/",
            "/openapi",
            "/openapi/*",
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
        ],
        &["get"],
    )
}

/// The metrics and every health check, which may say more than up or down.
fn monitoring_rule() -> PolicyRule {
    non_resource(
        &[
            "/metrics",
            "/livez",
            "/readyz",
            "/healthz",
            "/livez/*",
            "/readyz/*",
            "/healthz/*",
        ],
        &["get"],
    )
}

/// What anyone may learn about the cluster, signed in or not.
fn public_info_rule() -> PolicyRule {
    non_resource(
        &["/livez", "/readyz", "/healthz", "/version", "/version/"],
        &["get"],
    )
}

/// A user asking what they themselves may do, and who they are.
fn basic_user_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[AUTHORIZATION],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            &["create"],
        ),
        rule(&[AUTHENTICATION], &["selfsubjectreviews"], &["create"]),
    ]
}

/// What a node agent calls (`node/src/agent`), for the node authorizer to
/// grant each node narrowed to its own objects. Kubernetes' node rules,
/// without those for APIs Flotilla does not serve (certificate requests,
/// CSI, runtime classes), and with what Flotilla's agent does beyond a
/// kubelet: it is also the node's kube-proxy, ingress gateway and
/// network-policy agent, and it fetches modules from the registry.
pub fn node_rules() -> Vec<PolicyRule> {
    vec![
        // Checks of API access; these creates change nothing.
        rule(&[AUTHENTICATION], &["tokenreviews"], &["create"]),
        rule(
            &[AUTHORIZATION],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
            &["create"],
        ),
        // Registration, labels, heartbeats (`agent/node.rs`), and its own
        // podCIDR (`agent/ipam.rs`, a watch on its Node).
        rule(&[CORE], &["nodes"], &["create", "get", "list", "watch"]),
        rule(&[CORE], &["nodes", "nodes/status"], &["update", "patch"]),
        rule(&[CORE], &["events"], &["create", "update", "patch"]),
        // Its pods (`agent/pods.rs`, a watch on spec.nodeName), their status
        // (`agent/worker.rs`) and the final delete that lets a pod go.
        rule(&[CORE], &["pods"], READ),
        rule(&[CORE], &["pods"], &["create", "delete"]),
        rule(&[CORE], &["pods/status"], &["update", "patch"]),
        rule(&[CORE], &["pods/eviction"], &["create"]),
        // Volumes and environment from Secrets and ConfigMaps; the gateway's
        // TLS certificates (`agent/network.rs` watches every Secret).
        rule(&[CORE], &["secrets", "configmaps"], READ),
        rule(
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
            &["get"],
        ),
        rule(&[CORE], &["serviceaccounts/token"], &["create"]),
        // Its heartbeat Lease in kube-node-lease (`agent/lease.rs`).
        rule(
            &[COORDINATION],
            &["leases"],
            &["get", "create", "update", "patch", "delete"],
        ),
        // The routing table (`agent/network.rs`): Services and their
        // endpoints, Nodes, Ingresses, and NetworkPolicies with the Pods and
        // Namespaces they select.
        rule(&[CORE], &["services", "namespaces"], READ),
        rule(&[CORE], &["endpoints"], &["get"]),
        rule(&[DISCOVERY], &["endpointslices"], READ),
        rule(&[NETWORKING], &["ingresses", "networkpolicies"], READ),
        // Modules by digest (`agent/blobs.rs`: GET, and HEAD).
        non_resource(&[&registry_urls()], &["get"]),
    ]
}
