//! The control loops of `flotilla server`: the scheduler, the garbage
//! collector, the node lifecycle, node IPAM, Endpoints and LoadBalancer
//! status controllers, the disruption controller (PodDisruptionBudgets'
//! status), and the Deployment, ReplicaSet, DaemonSet, StatefulSet, Job,
//! CronJob and ServiceAccount controllers.
//!
//! They run on one member at a time, the holder of a Lease (`election`),
//! and only through the Kubernetes API, as kube-controller-manager does:
//! each member's loops talk to that member's own API server with kube-rs,
//! so they see exactly what users see and are bound by the same
//! validation and optimistic concurrency. They know nothing of the store.

pub mod aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod election;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod ipam;
pub mod job;
pub mod loadbalancer;
pub mod nodes;
pub mod replicaset;
pub mod scheduler;
pub mod selector;
pub mod serviceaccounts;
pub mod statefulset;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::election::{ElectionConfig, Elector};
use crate::fence::LeaseFence;

/// Who this member is in the election, and its timings.
#[derive(Clone, Debug)]
pub struct ControllersConfig {
    /// Unique among the members: the Lease's `holderIdentity`.
    pub identity: String,
    pub election: ElectionConfig,
    /// When silent nodes become NotReady and lose their pods.
    pub nodes: nodes::NodeTimings,
    /// The wait before a Job's failed pod is replaced, doubling with each
    /// failure up to [`job::BACKOFF_MAX`] (Kubernetes: 10 s).
    pub job_backoff: std::time::Duration,
}

/// The user names the control plane's components call the API as, as
/// kube-controller-manager's `--use-service-account-credentials` names
/// them: each controller is the ServiceAccount `kube-system/<name>`, bound
/// to the ClusterRole `system:controller:<name>` (`auth::bootstrap`).
pub mod identity {
    /// The leader election of the servers.
    pub const ELECTOR: &str = flotilla_pki::names::CONTROLLER_MANAGER;
    pub const SCHEDULER: &str = flotilla_pki::names::SCHEDULER;
    pub const GARBAGE_COLLECTOR: &str = "generic-garbage-collector";
    pub const NODE: &str = "node-controller";
    pub const CRONJOB: &str = "cronjob-controller";
    pub const DAEMONSET: &str = "daemon-set-controller";
    pub const DEPLOYMENT: &str = "deployment-controller";
    pub const DISRUPTION: &str = "disruption-controller";
    pub const ENDPOINT: &str = "endpoint-controller";
    pub const JOB: &str = "job-controller";
    pub const SERVICE: &str = "service-controller";
    pub const REPLICASET: &str = "replicaset-controller";
    pub const SERVICE_ACCOUNT: &str = "service-account-controller";
    pub const STATEFULSET: &str = "statefulset-controller";
    pub const CLUSTERROLE_AGGREGATION: &str = "clusterrole-aggregation-controller";
    /// Every controller's ServiceAccount name.
    pub const CONTROLLERS: &[&str] = &[
        GARBAGE_COLLECTOR,
        NODE,
        CRONJOB,
        DAEMONSET,
        DEPLOYMENT,
        DISRUPTION,
        ENDPOINT,
        JOB,
        SERVICE,
        REPLICASET,
        SERVICE_ACCOUNT,
        STATEFULSET,
        CLUSTERROLE_AGGREGATION,
    ];

    /// The user a controller's ServiceAccount is.
    pub fn user_of(controller: &str) -> String {
        crate::auth::user::service_account_user("kube-system", controller)
    }
}

/// How each loop reaches the API: a client per component identity
/// ([`identity`]), so each is allowed its job and no more. A component
/// without a client of its own uses the shared one.
#[derive(Clone)]
pub struct ControllerClients {
    shared: kube::Client,
    own: std::collections::HashMap<String, kube::Client>,
}

impl ControllerClients {
    /// Every component with the same client (plain HTTP on loopback,
    /// where there is no identity to tell them apart).
    pub fn shared(client: kube::Client) -> Self {
        ControllerClients {
            shared: client,
            own: std::collections::HashMap::new(),
        }
    }

    /// Gives the component called `name` (an [`identity`] constant) its
    /// own client.
    pub fn with(mut self, name: &str, client: kube::Client) -> Self {
        self.own.insert(name.to_string(), client);
        self
    }

    pub fn of(&self, name: &str) -> kube::Client {
        self.own.get(name).unwrap_or(&self.shared).clone()
    }
}

impl From<kube::Client> for ControllerClients {
    fn from(client: kube::Client) -> Self {
        ControllerClients::shared(client)
    }
}

/// The elected loops of one member; stopped when dropped.
pub struct Controllers {
    elector: Elector,
    task: JoinHandle<()>,
}

impl Controllers {
    pub fn start(clients: impl Into<ControllerClients>, config: ControllersConfig) -> Self {
        Controllers::start_with(clients, config, ipam::IpamConfig::default())
    }

    /// As [`Controllers::start`], with Node podCIDRs cut from `ipam`'s
    /// cluster CIDR. A second argument, not a `ControllersConfig` field, so
    /// that callers building `ControllersConfig` literally keep compiling.
    pub fn start_with(
        clients: impl Into<ControllerClients>,
        config: ControllersConfig,
        ipam: ipam::IpamConfig,
    ) -> Self {
        let clients = clients.into();
        let elector = Elector::start(
            clients.of(identity::ELECTOR),
            config.identity,
            config.election,
        );
        let leading = elector.leading.clone();
        let timings = Timings {
            nodes: config.nodes,
            job_backoff: config.job_backoff,
            ipam,
        };
        let fence = elector.fence.clone();
        let task = tokio::spawn(lead_while_elected(clients, leading, fence, timings));
        Controllers { elector, task }
    }

    /// Whether this member leads now, and when that changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.elector.leading.clone()
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the loops whenever `leading` says so, and stops them the moment it
/// does not.
/// The durations and ranges the loops run by.
#[derive(Clone, Debug)]
struct Timings {
    nodes: nodes::NodeTimings,
    job_backoff: std::time::Duration,
    ipam: ipam::IpamConfig,
}

async fn lead_while_elected(
    clients: ControllerClients,
    mut leading: watch::Receiver<bool>,
    fence: watch::Receiver<Option<LeaseFence>>,
    timings: Timings,
) {
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("starting the controllers");
        // Aborted when leadership ends, and also when this task is itself
        // aborted (the Controllers dropped): a JoinHandle alone would leave
        // the loops running.
        let loops = AbortOnDrop(tokio::spawn(run_loops(
            clients.clone(),
            fence.clone(),
            timings.clone(),
        )));
        let elected = loop {
            if leading.changed().await.is_err() {
                break false;
            }
            if !*leading.borrow_and_update() {
                break true;
            }
        };
        drop(loops);
        if !elected {
            return;
        }
        tracing::info!("stopped the controllers: no longer the leader");
    }
}

/// Why a reconcile failed; it is retried after [`RETRY_AFTER`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the API refused: {0}")]
    Api(#[from] kube::Error),
    #[error("the object has no {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// Back-off after a failed reconcile.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a workload controller's reconciles share.
pub struct Context {
    pub client: kube::Client,
    pub recorder: events::Recorder,
}

impl Context {
    pub fn new(client: kube::Client, component: &'static str) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Context {
            recorder: events::Recorder::new(client.clone(), component),
            client,
        })
    }
}

/// Whether a reflector's store reads as the cluster does after `event`:
/// the reflector has applied it by then, and during a relist the store
/// keeps the old objects until `InitDone`.
pub fn reflector_settled<K>(
    event: &Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
) -> bool {
    use kube::runtime::watcher::Event;
    matches!(
        event,
        Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)
    )
}

/// Runs `reconcile` over every `K`, waking each `K` of a namespace when
/// any pod of that namespace changes: how the controllers whose objects
/// select pods (Endpoints, disruption budgets) see a pod relabelled into
/// or out of a selector. `what` names the loop in its logs.
pub async fn run_over_namespace_pods<K, F, R>(
    client: kube::Client,
    what: &'static str,
    reconcile: F,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(std::sync::Arc<K>, std::sync::Arc<kube::Client>) -> R,
    R: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>
        + Send
        + 'static,
{
    use futures::StreamExt;
    use kube::ResourceExt;
    use kube::runtime::reflector::ObjectRef;
    let objects = kube::Api::<K>::all(client.clone());
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone());
    let config = kube::runtime::watcher::Config::default();
    let controller = kube::runtime::Controller::new(objects, config.clone());
    let store = controller.store();
    controller
        .watches(pods, config, move |pod| {
            let namespace = pod.namespace();
            store
                .state()
                .iter()
                .filter(|object| object.namespace() == namespace)
                .map(|object| ObjectRef::from_obj(object.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, retry_later, std::sync::Arc::new(client))
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "{what} reconcile failed");
            }
        })
        .await;
}

/// The error policy of every controller: log, and try again shortly.
pub fn retry_later<K, C>(
    object: std::sync::Arc<K>,
    error: &Error,
    _context: std::sync::Arc<C>,
) -> kube::runtime::controller::Action
where
    K: kube::Resource,
{
    use kube::ResourceExt;
    tracing::warn!(name = object.name_any(), %error, "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(RETRY_AFTER)
}

/// Writes `wanted` as `object`'s status (a merge patch of the status
/// subresource, conditional on `object`'s resourceVersion) unless `current`
/// says it is so already.
pub async fn write_status<K, S>(
    client: &kube::Client,
    object: &K,
    current: Option<&S>,
    wanted: &S,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    use kube::ResourceExt;
    if current == Some(wanted) {
        return Ok(());
    }
    let api: kube::Api<K> =
        kube::Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    // Conditional on the version the status was computed from: a status
    // written meanwhile (by another writer, or a leader that was deposed)
    // makes this a 409, and the reconcile runs again on fresh data.
    let patch = kube::api::Patch::Merge(serde_json::json!({
        "metadata": {"resourceVersion": object.resource_version()},
        "status": wanted,
    }));
    api.patch_status(
        &object.name_any(),
        &kube::api::PatchParams::default(),
        &patch,
    )
    .await?;
    Ok(())
}

/// Sets one of `pod`'s status conditions (a strategic merge patch, so the
/// others stay); a failure is logged as `what` and otherwise ignored, since
/// the next pass sets it again.
pub async fn set_pod_condition(
    client: &kube::Client,
    pod: &k8s_openapi::api::core::v1::Pod,
    condition: serde_json::Value,
    what: &str,
) {
    use kube::ResourceExt;
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    if let Err(error) = api
        .patch_status(
            &pod.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(patch),
        )
        .await
    {
        tracing::debug!(pod = pod.name_any(), %error, "could not {what}");
    }
}

/// The reference that makes `owner` (with `uid`) an object's controller.
pub fn controller_reference<K>(
    owner: &K,
    uid: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference
where
    K: kube::Resource<DynamicType = ()>,
{
    use kube::ResourceExt;
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod from `template`, controlled by `owner`, in its namespace, named
/// `<owner>-<suffix>` (or generated from `<owner>-` without a suffix), with
/// `labels` added to the template's.
pub fn pod_from_template<K>(
    owner: &K,
    uid: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    suffix: Option<&str>,
    labels: impl IntoIterator<Item = (String, String)>,
) -> k8s_openapi::api::core::v1::Pod
where
    K: kube::Resource<DynamicType = ()>,
{
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::ResourceExt;
    let metadata = template.metadata.clone().unwrap_or_default();
    let mut all_labels = metadata.labels.unwrap_or_default();
    all_labels.extend(labels);
    let (name, generate_name) = match suffix {
        Some(suffix) => (Some(format!("{}-{suffix}", owner.name_any())), None),
        None => (None, Some(format!("{}-", owner.name_any()))),
    };
    k8s_openapi::api::core::v1::Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: owner.namespace(),
            labels: (!all_labels.is_empty()).then_some(all_labels),
            annotations: metadata.annotations,
            owner_references: Some(vec![controller_reference(owner, uid)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Deletes `object` if it is still the object with its uid (a newer one of
/// the same name is left alone). True when this call deleted or marked it;
/// false when it was already gone or replaced.
pub async fn delete_exact<K>(
    api: &kube::Api<K>,
    object: &K,
    propagation: kube::api::PropagationPolicy,
) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::ResourceExt;
    let params = kube::api::DeleteParams {
        propagation_policy: Some(propagation),
        preconditions: object.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..kube::api::DeleteParams::default()
    };
    match api.delete(&object.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_loops(
    clients: ControllerClients,
    fence: watch::Receiver<Option<LeaseFence>>,
    timings: Timings,
) {
    use identity::*;
    tokio::join!(
        gc::GarbageCollector::new(clients.of(GARBAGE_COLLECTOR)).run(),
        ipam::run(clients.of(NODE), timings.ipam),
        cronjob::run(clients.of(CRONJOB)),
        daemonset::run(clients.of(DAEMONSET)),
        deployment::run(clients.of(DEPLOYMENT)),
        disruption::run(clients.of(DISRUPTION)),
        endpoints::run(clients.of(ENDPOINT)),
        job::run(clients.of(JOB), timings.job_backoff),
        loadbalancer::run(clients.of(SERVICE)),
        nodes::run(clients.of(NODE), timings.nodes),
        replicaset::run(clients.of(REPLICASET)),
        serviceaccounts::run(clients.of(SERVICE_ACCOUNT)),
        statefulset::run(clients.of(STATEFULSET)),
        aggregation::run(clients.of(CLUSTERROLE_AGGREGATION)),
        scheduler::run(clients.of(SCHEDULER), Some(fence)),
    );
}
