//! The rules behind `admin`, `edit` and `view`: Kubernetes'
//! `system:aggregate-to-*` roles, which the aggregation controller folds
//! into them. They are meant for RoleBindings, so they hold namespaced
//! resources only. Kubernetes' rules for the retired `extensions` group are
//! left out; resources Flotilla does not serve (ReplicationControllers,
//! PersistentVolumeClaims, quotas) are kept, so that a role means here what
//! it means in Kubernetes.

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::{
    APPS, AUTHORIZATION, AUTOSCALING, BATCH, COORDINATION, CORE, DISCOVERY, NETWORKING, POLICY,
    RBAC_GROUP, READ, READ_WRITE, WRITE, rule,
};

/// `admin` beyond `edit`: granting access within the namespace.
pub(super) fn admin_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[AUTHORIZATION],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
        rule(&[RBAC_GROUP], &["roles", "rolebindings"], READ_WRITE),
    ]
}

/// `edit` beyond `view`: changing a namespace's workloads, and reading what
/// can escalate (Secrets, exec), but not its quotas, statuses or access.
pub(super) fn edit_rules() -> Vec<PolicyRule> {
    let pod_access = [
        "pods",
        "pods/attach",
        "pods/proxy",
        "pods/exec",
        "pods/portforward",
    ];
    vec![
        rule(
            &[CORE],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[CORE], &["serviceaccounts"], &["impersonate"]),
        rule(&[CORE], &pod_access, WRITE),
        rule(&[CORE], &["pods/eviction"], &["create"]),
        rule(
            &[CORE],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
            WRITE,
        ),
        rule(&[CORE], &["serviceaccounts/token"], &["create"]),
        rule(
            &[APPS],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
            WRITE,
        ),
        rule(&[AUTOSCALING], &["horizontalpodautoscalers"], WRITE),
        rule(&[BATCH], &["jobs", "cronjobs"], WRITE),
        rule(&[POLICY], &["poddisruptionbudgets"], WRITE),
        rule(&[NETWORKING], &["networkpolicies", "ingresses"], WRITE),
        rule(&[COORDINATION], &["leases"], READ_WRITE),
    ]
}

/// Reading a namespace's objects, except those that can escalate: no
/// Secrets, no exec or proxy.
pub(super) fn view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[CORE],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
            READ,
        ),
        rule(
            &[CORE],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
            READ,
        ),
        // Bound in a namespace, this reads that namespace: how a user can
        // tell which namespaces they have access to.
        rule(&[CORE], &["namespaces"], READ),
        rule(&[DISCOVERY], &["endpointslices"], READ),
        rule(
            &[APPS],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
            READ,
        ),
        rule(
            &[AUTOSCALING],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &[BATCH],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
            READ,
        ),
        rule(
            &[POLICY],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &[NETWORKING],
            &["networkpolicies", "ingresses", "ingresses/status"],
            READ,
        ),
    ]
}
