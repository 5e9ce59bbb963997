//! One pod's worker: it starts the pod in the runtime (or adopts it, when
//! an earlier agent in this process started it), writes its status through
//! the `pods/{name}/status` subresource whenever the runtime's status
//! changes, and takes it down when the API deletes it. Before the pod
//! runs it gets its address (`ipam.rs`), which the status reports as
//! `podIP` and which is released when the pod goes.
//!
//! A worker is the only one acting on its pod, so the steps for one pod
//! never run twice at once. It looks at the latest desired state, not at
//! the event that woke it, so a missed event costs nothing. It knows the
//! API objects of one pod; the watch and the other pods are `pods.rs`'s.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{HostIP, Pod, PodIP, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::watch;

use super::error::{AgentError, Result, call};
use super::metrics::ErrorKind;
use super::pods::PodContext;
use crate::{PodHandle, PodInputs};

/// How long a worker trusts that the runtime's status has not changed
/// without telling it before it looks again. Changes are pushed; this only
/// bounds the cost of one that was not.
const STATUS_RESYNC_SECS: u64 = 60;

/// What the API wants of a pod, as last seen by the watch.
#[derive(Debug, Clone)]
pub enum Desired {
    /// The pod as the API has it now (possibly marked for deletion).
    Run(Arc<Pod>),
    /// The pod is no longer in the API, or no longer on this node.
    Gone,
}

/// One pod's worker. See the module documentation.
pub struct Worker {
    context: Arc<PodContext>,
    uid: String,
    /// The pod's namespace and name, once a `Desired::Run` has named it.
    name: Option<(String, String)>,
    /// The status last written (or found not worth retrying).
    reported: Option<PodStatus>,
    /// Consecutive failed writes, for the back-off.
    failures: u32,
    /// The pod's address, once it has one.
    address: Option<Ipv4Addr>,
}

/// How a step left the pod.
enum Next {
    /// Keep working on it.
    Continue,
    /// The worker is done.
    Done,
}

impl Worker {
    pub fn new(context: Arc<PodContext>, uid: String) -> Self {
        Self {
            context,
            uid,
            name: None,
            reported: None,
            failures: 0,
            address: None,
        }
    }

    /// Works the pod until it is gone; returns its uid.
    pub async fn run(mut self, mut desired: watch::Receiver<Desired>) -> String {
        let mut handle = self.context.runtime.pod(&self.uid);
        loop {
            let current = desired.borrow_and_update().clone();
            let pod = match current {
                Desired::Gone => {
                    self.remove_locally().await;
                    return self.uid;
                }
                Desired::Run(pod) => pod,
            };
            self.name = Some(namespace_and_name(&pod));
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&pod, &mut desired).await;
                return self.uid;
            }
            if self.address.is_none() && !is_terminal(&pod) {
                match self.acquire_address(&pod, &mut desired).await {
                    Next::Continue if self.address.is_some() => {}
                    Next::Continue => continue,
                    Next::Done => return self.uid,
                }
            }
            if handle.is_none() && !is_terminal(&pod) {
                handle = self.start(&pod).await;
            }
            if handle.is_some() {
                let (namespace, name) = namespace_and_name(&pod);
                self.context.directory.insert(&namespace, &name, &self.uid);
            }
            // Done here means the agent is stopping: the pod keeps running.
            if let Next::Done = self.sync_status(handle.as_ref(), &pod, &mut desired).await {
                return self.uid;
            }
        }
    }

    /// Gets the pod its address: the one it holds, or a new one once the
    /// node has a podCIDR (kubelet, too, runs no pod that needs the network
    /// before then). The wait ends early when the desired state changes,
    /// so a pod deleted meanwhile is not held up. An exhausted range fails
    /// the pod with `PodIPsExhausted`.
    async fn acquire_address(&mut self, pod: &Pod, desired: &mut watch::Receiver<Desired>) -> Next {
        let addresses = self.context.addresses.clone();
        let uid = self.uid.clone();
        let acquired = tokio::select! {
            acquired = addresses.acquire(&uid) => acquired,
            next = wait_changed(desired) => return next,
        };
        match acquired {
            Ok(address) => {
                tracing::debug!(%address, "pod address");
                self.address = Some(address);
                Next::Continue
            }
            Err(exhausted) => {
                tracing::warn!(%exhausted, "pod gets no address");
                self.reject(pod, "PodIPsExhausted", exhausted.to_string())
                    .await;
                wait_changed(desired).await
            }
        }
    }

    /// Starts the pod, its status saying its address (the downward API's
    /// `status.podIP` reads it). A pod this node cannot run is reported
    /// Failed, as kubelet reports a pod it rejects.
    async fn start(&mut self, pod: &Pod) -> Option<PodHandle> {
        let mut addressed = pod.clone();
        if let Some(address) = self.address {
            addressed.status.get_or_insert_default().pod_ip = Some(address.to_string());
        }
        // The pod's policies apply from its first request or connection,
        // before its address has gone round through the API.
        if let Some(network) = &self.context.network {
            network.table().policies().upsert_pod(&addressed);
        }
        match self
            .context
            .runtime
            .run_pod(&addressed, &PodInputs::default())
        {
            Ok(handle) => {
                tracing::info!("pod started");
                Some(handle)
            }
            Err(error) => {
                self.reject(pod, "UnsupportedPodSpec", error.to_string())
                    .await;
                None
            }
        }
    }

    /// Reports the pod Failed for `reason`, without running it.
    async fn reject(&mut self, pod: &Pod, reason: &str, message: String) {
        self.context.metrics.error(ErrorKind::Pod);
        tracing::warn!(reason, %message, "cannot run pod");
        let rejected = PodStatus {
            phase: Some("Failed".to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message),
            ..PodStatus::default()
        };
        if let Err(error) = self.write_status(pod, &rejected).await {
            tracing::warn!(%error, "cannot report the rejected pod");
        }
        self.reported = Some(rejected);
    }

    /// Writes the runtime's status if it changed, then waits for the next
    /// change of either the status or the desired state. Failed writes back
    /// off (bounded by the node's retry policy) and are retried while the
    /// pod lives: the API being away must not lose the latest status.
    async fn sync_status(
        &mut self,
        handle: Option<&PodHandle>,
        pod: &Pod,
        desired: &mut watch::Receiver<Desired>,
    ) -> Next {
        let Some(handle) = handle else {
            // Nothing runs here (finished earlier, or rejected): wait for the API.
            return wait_changed(desired).await;
        };
        let status = handle.status();
        if self.reported.as_ref() != Some(&status) {
            match self.write_status(pod, &status).await {
                Ok(()) => {
                    self.failures = 0;
                    self.reported = Some(status);
                }
                Err(error) if matches!(error.api_code(), Some(404 | 409 | 422)) => {
                    // The pod is gone or replaced; the watch will say so.
                    tracing::info!(%error, "pod status not written");
                    self.reported = Some(status);
                }
                Err(error) => {
                    self.context.metrics.error(ErrorKind::PodStatus);
                    self.failures = self.failures.saturating_add(1);
                    let delay = self.context.config.retry.delay(self.failures);
                    tracing::warn!(%error, ?delay, "pod status write failed; retrying");
                    return tokio::select! {
                        next = wait_changed(desired) => next,
                        () = tokio::time::sleep(delay) => Next::Continue,
                    };
                }
            }
            return Next::Continue;
        }
        let reported = self.reported.clone();
        tokio::select! {
            next = wait_changed(desired) => next,
            _ = handle.wait_for(Duration::from_secs(STATUS_RESYNC_SECS), |now| Some(now) != reported.as_ref()) => Next::Continue,
        }
    }

    /// Writes `status` (the runtime's) over the pod's status in the API,
    /// keeping what the runtime does not know, with a precondition on the
    /// uid so a newer pod of the same name is never written to.
    async fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<()> {
        let merged = merged_status(
            pod.status.as_ref(),
            status,
            &self.context.config,
            self.address,
        );
        let patch: json_patch::Patch = serde_json::from_value(json!([
            { "op": "test", "path": "/metadata/uid", "value": self.uid },
            { "op": "add", "path": "/status", "value": merged },
        ]))
        .map_err(|error| AgentError::Encode {
            what: "a pod status patch",
            reason: error.to_string(),
        })?;
        let (namespace, name) = namespace_and_name(pod);
        let pods: Api<Pod> = Api::namespaced(self.context.client.clone(), &namespace);
        call(
            "write the status of",
            format!("pod {namespace}/{name}"),
            pods.patch_status(&name, &PatchParams::default(), &Patch::<()>::Json(patch)),
        )
        .await?;
        self.context.metrics.pod_status_written();
        tracing::debug!(phase = ?status.phase, "pod status written");
        Ok(())
    }

    /// Graceful deletion: stop with the grace period the API gave, report
    /// the final status, remove the pod here, then delete it through the API
    /// with a zero grace period: that tells the API server this node has let
    /// it go.
    async fn terminate(&mut self, pod: &Pod, desired: &mut watch::Receiver<Desired>) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|secs| Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
        if self.context.runtime.pod(&self.uid).is_some() {
            match self.context.runtime.stop_pod(&self.uid, grace).await {
                Ok(status) => {
                    tracing::info!(phase = ?status.phase, "pod stopped");
                    if let Err(error) = self.write_status(pod, &status).await {
                        tracing::info!(%error, "final pod status not written");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot stop pod"),
            }
            self.remove_locally().await;
        }
        self.confirm_deleted(pod, desired).await;
        self.context.addresses.release(&self.uid);
    }

    /// Deletes the pod with a zero grace period, retrying with back-off
    /// until the API has it gone (or the watch says it is).
    async fn confirm_deleted(&mut self, pod: &Pod, desired: &mut watch::Receiver<Desired>) {
        let (namespace, name) = namespace_and_name(pod);
        let pods: Api<Pod> = Api::namespaced(self.context.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let mut failures = 0;
        loop {
            let deleted = call(
                "delete",
                format!("pod {namespace}/{name}"),
                pods.delete(&name, &params),
            )
            .await;
            match deleted {
                Ok(_) => {
                    tracing::info!("pod deleted");
                    return;
                }
                // Already gone, or the name belongs to a newer pod.
                Err(error) if matches!(error.api_code(), Some(404 | 409)) => return,
                Err(error) => {
                    self.context.metrics.error(ErrorKind::Pod);
                    failures += 1;
                    let delay = self.context.config.retry.delay(failures);
                    tracing::warn!(%error, ?delay, "cannot confirm pod deletion; retrying");
                    tokio::select! {
                        Next::Done = wait_changed(desired) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    if matches!(*desired.borrow(), Desired::Gone) {
                        return;
                    }
                }
            }
        }
    }

    /// Stops the pod if it runs here and forgets it.
    async fn remove_locally(&mut self) {
        if self.context.runtime.pod(&self.uid).is_some() {
            match self.context.runtime.remove_pod(&self.uid).await {
                Ok(status) => tracing::info!(phase = ?status.phase, "pod removed"),
                Err(error) => {
                    self.context.metrics.error(ErrorKind::Pod);
                    tracing::warn!(%error, "cannot remove pod");
                }
            }
        }
        if let Some((namespace, name)) = &self.name {
            self.context.directory.remove(namespace, name, &self.uid);
        }
        self.context.addresses.release(&self.uid);
    }
}

/// Waits for the desired state to change; `Done` when the pod loop has
/// dropped this worker's channel (the agent is stopping).
async fn wait_changed(desired: &mut watch::Receiver<Desired>) -> Next {
    match desired.changed().await {
        Ok(()) => Next::Continue,
        Err(_) => Next::Done,
    }
}

/// The status to write: the runtime's view of phase, conditions and
/// containers, this node's address and the pod's, and what only the API
/// knows (QoS class, nominated node, resource claims) kept from the API's
/// copy.
fn merged_status(
    api: Option<&PodStatus>,
    runtime: &PodStatus,
    config: &super::AgentConfig,
    address: Option<Ipv4Addr>,
) -> PodStatus {
    let mut status = runtime.clone();
    if let Some(address) = address {
        status.pod_ips = Some(vec![PodIP {
            ip: address.to_string(),
        }]);
        status.pod_ip = Some(address.to_string());
    }
    let host_ip = config.node_ip.to_string();
    status.host_ips = Some(vec![HostIP {
        ip: host_ip.clone(),
    }]);
    status.host_ip = Some(host_ip);
    if let Some(api) = api {
        status.qos_class = api.qos_class.clone();
        status.nominated_node_name = api.nominated_node_name.clone();
        status.resource_claim_statuses = api.resource_claim_statuses.clone();
    }
    status
}

/// Pods in Succeeded or Failed never run again on this node (restartPolicy
/// acts within a run); an agent that finds one, after a restart, leaves it.
fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status
            .as_ref()
            .and_then(|status| status.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn namespace_and_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}
