//! The control plane's own components and what each may do: one
//! ClusterRole per control loop in `crate::controllers`, named and bound as
//! kube-controller-manager's are (`system:controller:<name>`, to the
//! ServiceAccount `kube-system/<name>`), and Kubernetes' roles for the
//! scheduler and for the controller manager itself (the leader election).
//!
//! Each role lists the calls its loop makes, with the file that makes them:
//! a loop that starts calling something new needs its role changed in the
//! same commit. Two grants go beyond the calls, as in Kubernetes: every
//! component may record Events, and a controller may update the
//! `finalizers` of the kinds it owns pods or sets by, which Kubernetes asks
//! of whoever sets `blockOwnerDeletion` on a reference to them.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Subject};

use super::{
    APPS, AUTHENTICATION, AUTHORIZATION, BATCH, COORDINATION, CORE, DISCOVERY, NETWORKING, POLICY,
    RBAC_GROUP, READ, events_rule, named, role, rule, service_account, user,
};

/// One control-plane component: the user name its client certificate
/// carries, and the ClusterRole the default policy binds to that user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    pub user: &'static str,
    pub cluster_role: &'static str,
}

/// Where the controllers' ServiceAccounts live.
pub const CONTROLLER_NAMESPACE: &str = "kube-system";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

impl Component {
    /// Whom the default binding names: the ServiceAccount a controller's
    /// user name stands for, or else the user itself.
    pub fn subject(&self) -> Subject {
        let account = self
            .user
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'));
        match account {
            Some((namespace, name)) => service_account(namespace, name),
            None => user(self.user),
        }
    }
}

/// A controller as kube-controller-manager names it: the user of the
/// ServiceAccount `kube-system/<name>` and the role `system:controller:<name>`.
macro_rules! controller {
    ($name:literal) => {
        Component {
            user: concat!("system:serviceaccount:kube-system:", $name),
            cluster_role: concat!("system:controller:", $name),
        }
    };
}

/// `controllers::gc`.
pub const GARBAGE_COLLECTOR: Component = controller!("generic-garbage-collector");
/// `controllers::nodes` (the node lifecycle) and `controllers::ipam`.
pub const NODE_CONTROLLER: Component = controller!("node-controller");
pub const CRONJOB_CONTROLLER: Component = controller!("cronjob-controller");
pub const DAEMONSET_CONTROLLER: Component = controller!("daemon-set-controller");
pub const DEPLOYMENT_CONTROLLER: Component = controller!("deployment-controller");
/// `controllers::disruption`: PodDisruptionBudgets' status.
pub const DISRUPTION_CONTROLLER: Component = controller!("disruption-controller");
/// `controllers::endpoints`: Endpoints and EndpointSlices both.
pub const ENDPOINT_CONTROLLER: Component = controller!("endpoint-controller");
pub const JOB_CONTROLLER: Component = controller!("job-controller");
/// `controllers::loadbalancer`: Service and Ingress load-balancer status.
pub const SERVICE_CONTROLLER: Component = controller!("service-controller");
pub const REPLICASET_CONTROLLER: Component = controller!("replicaset-controller");
/// `controllers::serviceaccounts`.
pub const SERVICEACCOUNT_CONTROLLER: Component = controller!("service-account-controller");
pub const STATEFULSET_CONTROLLER: Component = controller!("statefulset-controller");
/// `controllers::aggregation`.
pub const AGGREGATION_CONTROLLER: Component = controller!("clusterrole-aggregation-controller");
/// `controllers::scheduler`.
pub const SCHEDULER: Component = Component {
    user: "system:kube-scheduler",
    cluster_role: "system:kube-scheduler",
};
/// `controllers::election`: the client that campaigns for the Lease.
pub const CONTROLLER_MANAGER: Component = Component {
    user: crate::tls::CONTROLLER_NAME,
    cluster_role: "system:kube-controller-manager",
};

/// Every component, each with its own role and binding.
pub const COMPONENTS: &[Component] = &[
    GARBAGE_COLLECTOR,
    NODE_CONTROLLER,
    CRONJOB_CONTROLLER,
    DAEMONSET_CONTROLLER,
    DEPLOYMENT_CONTROLLER,
    DISRUPTION_CONTROLLER,
    ENDPOINT_CONTROLLER,
    JOB_CONTROLLER,
    SERVICE_CONTROLLER,
    REPLICASET_CONTROLLER,
    SERVICEACCOUNT_CONTROLLER,
    STATEFULSET_CONTROLLER,
    AGGREGATION_CONTROLLER,
    SCHEDULER,
    CONTROLLER_MANAGER,
];

/// Each component with its rules, in [`COMPONENTS`]' order.
pub(super) fn table() -> Vec<(Component, Vec<PolicyRule>)> {
    vec![
        (GARBAGE_COLLECTOR, garbage_collector()),
        (NODE_CONTROLLER, node_controller()),
        (CRONJOB_CONTROLLER, cronjob_controller()),
        (DAEMONSET_CONTROLLER, daemonset_controller()),
        (DEPLOYMENT_CONTROLLER, deployment_controller()),
        (DISRUPTION_CONTROLLER, disruption_controller()),
        (ENDPOINT_CONTROLLER, endpoint_controller()),
        (JOB_CONTROLLER, job_controller()),
        (SERVICE_CONTROLLER, service_controller()),
        (REPLICASET_CONTROLLER, replicaset_controller()),
        (SERVICEACCOUNT_CONTROLLER, serviceaccount_controller()),
        (STATEFULSET_CONTROLLER, statefulset_controller()),
        (AGGREGATION_CONTROLLER, aggregation_controller()),
        (SCHEDULER, scheduler()),
        (CONTROLLER_MANAGER, controller_manager()),
    ]
}

pub(super) fn roles() -> Vec<ClusterRole> {
    table()
        .into_iter()
        .map(|(component, rules)| role(component.cluster_role, rules))
        .collect()
}

/// `gc.rs` watches every served resource, lists them to find an owner's
/// dependents, gets owners it has not seen, patches `ownerReferences` and
/// `finalizers`, and deletes orphans: of any kind, so on everything.
fn garbage_collector() -> Vec<PolicyRule> {
    vec![
        rule(
            &["*"],
            &["*"],
            &["get", "list", "watch", "patch", "update", "delete"],
        ),
        events_rule(),
    ]
}

/// `nodes.rs` lists Nodes and the agents' Leases, marks a silent Node's
/// conditions (status) and taints (spec), marks its pods not ready and
/// deletes them; `ipam.rs` watches Nodes and patches their podCIDR.
fn node_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[CORE], &["nodes"], &["list", "watch", "patch"]),
        rule(&[CORE], &["nodes/status"], &["patch"]),
        rule(&[CORE], &["pods"], &["list", "delete"]),
        rule(&[CORE], &["pods/status"], &["patch"]),
        rule(&[COORDINATION], &["leases"], &["list"]),
        events_rule(),
    ]
}

/// `cronjob.rs` reads each CronJob fresh, writes its status, and creates
/// and deletes (history, `Replace`) the Jobs it owns.
fn cronjob_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[BATCH], &["cronjobs"], READ),
        rule(&[BATCH], &["cronjobs/status"], &["patch"]),
        rule(&[BATCH], &["cronjobs/finalizers"], &["update"]),
        rule(
            &[BATCH],
            &["jobs"],
            &["get", "list", "watch", "create", "delete"],
        ),
        events_rule(),
    ]
}

/// `daemonset.rs` follows DaemonSets, their pods and every Node, creates
/// and deletes pods, and writes the sets' status.
fn daemonset_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[APPS], &["daemonsets"], &["list", "watch"]),
        rule(&[APPS], &["daemonsets/status"], &["patch"]),
        rule(&[APPS], &["daemonsets/finalizers"], &["update"]),
        rule(&[CORE], &["nodes"], &["list", "watch"]),
        rule(&[CORE], &["pods"], &["list", "watch", "create", "delete"]),
        events_rule(),
    ]
}

/// `deployment/mod.rs` follows Deployments and their ReplicaSets, adopts,
/// scales, annotates, creates and prunes sets, annotates the Deployment's
/// revision and writes its status.
fn deployment_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[APPS], &["deployments"], &["list", "watch", "patch"]),
        rule(&[APPS], &["deployments/status"], &["patch"]),
        rule(&[APPS], &["deployments/finalizers"], &["update"]),
        rule(
            &[APPS],
            &["replicasets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        events_rule(),
    ]
}

/// `endpoints.rs` follows Services and pods and writes each Service's
/// Endpoints and EndpointSlice (read, then create or replace).
/// `disruption.rs` follows budgets and pods and writes the budgets'
/// status.
fn disruption_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[POLICY], &["poddisruptionbudgets"], &["list", "watch"]),
        rule(&[POLICY], &["poddisruptionbudgets/status"], &["update"]),
        rule(&[CORE], &["pods"], &["list", "watch"]),
        events_rule(),
    ]
}

fn endpoint_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[CORE], &["services", "pods"], &["list", "watch"]),
        rule(&[CORE], &["services/finalizers"], &["update"]),
        rule(&[CORE], &["endpoints"], &["get", "create", "update"]),
        rule(
            &[DISCOVERY],
            &["endpointslices"],
            &["get", "create", "update"],
        ),
        events_rule(),
    ]
}

/// `job.rs` follows Jobs and their pods, creates and deletes pods, writes
/// the Jobs' status, and deletes a finished Job whose time to live is over
/// (Kubernetes' ttl-after-finished controller).
fn job_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[BATCH], &["jobs"], &["list", "watch", "delete"]),
        rule(&[BATCH], &["jobs/status"], &["patch"]),
        rule(&[BATCH], &["jobs/finalizers"], &["update"]),
        rule(&[CORE], &["pods"], &["list", "watch", "create", "delete"]),
        events_rule(),
    ]
}

/// `loadbalancer.rs` follows Nodes (their addresses), Services and
/// Ingresses, and writes the load-balancer status of both.
fn service_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[CORE], &["nodes", "services"], &["list", "watch"]),
        rule(&[CORE], &["services/status"], &["patch"]),
        rule(&[NETWORKING], &["ingresses"], &["list", "watch"]),
        rule(&[NETWORKING], &["ingresses/status"], &["patch"]),
        events_rule(),
    ]
}

/// `replicaset.rs` follows ReplicaSets and pods, creates, adopts, releases
/// (both patches of `ownerReferences`) and deletes pods, and writes the
/// sets' status.
fn replicaset_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[APPS], &["replicasets"], &["list", "watch"]),
        rule(&[APPS], &["replicasets/status"], &["patch"]),
        rule(&[APPS], &["replicasets/finalizers"], &["update"]),
        rule(
            &[CORE],
            &["pods"],
            &["list", "watch", "create", "patch", "delete"],
        ),
        events_rule(),
    ]
}

/// `serviceaccounts.rs` follows Namespaces and ServiceAccounts and creates
/// a namespace's `default` account when it is missing.
fn serviceaccount_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[CORE], &["namespaces"], &["list", "watch"]),
        rule(
            &[CORE],
            &["serviceaccounts"],
            &["get", "list", "watch", "create"],
        ),
        events_rule(),
    ]
}

/// `statefulset.rs` follows StatefulSets and their pods, creates and
/// deletes pods by ordinal, and writes the sets' status.
fn statefulset_controller() -> Vec<PolicyRule> {
    vec![
        rule(&[APPS], &["statefulsets"], &["list", "watch"]),
        rule(&[APPS], &["statefulsets/status"], &["patch"]),
        rule(&[APPS], &["statefulsets/finalizers"], &["update"]),
        rule(&[CORE], &["pods"], &["list", "watch", "create", "delete"]),
        events_rule(),
    ]
}

/// `aggregation.rs` follows ClusterRoles and replaces aggregated ones. It
/// writes rules it need not hold itself, hence `escalate`.
fn aggregation_controller() -> Vec<PolicyRule> {
    vec![rule(
        &[RBAC_GROUP],
        &["clusterroles"],
        &["escalate", "get", "list", "watch", "update", "patch"],
    )]
}

/// Kubernetes' `system:kube-scheduler`, less the storage and dynamic
/// resource APIs Flotilla does not serve. Flotilla's scheduler
/// (`scheduler/mod.rs`) itself follows Nodes and pods, binds through
/// `pods/binding`, sets `PodScheduled` (status) and records Events; the
/// rest is there for a kube-scheduler run against Flotilla.
fn scheduler() -> Vec<PolicyRule> {
    vec![
        events_rule(),
        rule(&[COORDINATION], &["leases"], &["create"]),
        named(
            &["kube-scheduler"],
            rule(
                &[COORDINATION],
                &["leases"],
                &["get", "update", "list", "watch"],
            ),
        ),
        rule(&[CORE], &["nodes"], READ),
        rule(&[CORE], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[CORE], &["pods/binding", "bindings"], &["create"]),
        rule(&[CORE], &["pods/status"], &["patch", "update"]),
        rule(&[CORE], &["services", "replicationcontrollers"], READ),
        rule(&[APPS], &["replicasets", "statefulsets"], READ),
        rule(&[POLICY], &["poddisruptionbudgets"], READ),
        rule(
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
            READ,
        ),
        rule(&[CORE], &["namespaces"], READ),
        rule(&[AUTHENTICATION], &["tokenreviews"], &["create"]),
        rule(&[AUTHORIZATION], &["subjectaccessreviews"], &["create"]),
    ]
}

/// `election.rs` reads the Lease, creates it, and renews or takes it over
/// with a replace. The Lease's name is configurable (`ElectionConfig`), so
/// unlike Kubernetes' this role does not name it.
fn controller_manager() -> Vec<PolicyRule> {
    vec![
        rule(&[COORDINATION], &["leases"], &["get", "create", "update"]),
        events_rule(),
    ]
}
