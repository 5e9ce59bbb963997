//! The node's heartbeat lease: a `coordination.k8s.io/v1` Lease named after
//! the node in `kube-node-lease`, renewed every `lease_renew_interval`, as
//! kubelet does. Its `renewTime` is how the control plane tells a live node
//! from a dead one.
//!
//! This module knows the Lease object and nothing else of the node.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::AgentConfig;
use super::error::{AgentError, Result, call};
use super::metrics::{ErrorKind, Metrics};

/// The namespace node leases live in.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How long a lease holds without renewal: kubelet's default
/// (`nodeLeaseDurationSeconds`), four renewal intervals.
pub const LEASE_DURATION_SECS: i32 = 40;

/// Renewal attempts within one interval before waiting for the next
/// (kubelet's `maxUpdateRetries`).
const RENEW_ATTEMPTS_MAX: u32 = 5;

/// Renews one node's lease. It keeps the lease it last wrote, so a renewal
/// is one update; it reads the lease again only after a conflict.
pub struct LeaseKeeper {
    leases: Api<Lease>,
    config: AgentConfig,
    owner: OwnerReference,
    last: Option<Lease>,
}

impl LeaseKeeper {
    /// A keeper for `config.node_name`'s lease, owned by the Node `node_uid`
    /// so that deleting the Node deletes its lease.
    pub fn new(client: kube::Client, config: AgentConfig, node_uid: String) -> Self {
        let owner = OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Node".to_owned(),
            name: config.node_name.clone(),
            uid: node_uid,
            ..OwnerReference::default()
        };
        Self {
            leases: Api::namespaced(client, NODE_LEASE_NAMESPACE),
            config,
            owner,
            last: None,
        }
    }

    /// Renews every interval until the task is dropped.
    pub async fn run(mut self, metrics: Arc<Metrics>) {
        let mut ticker = tokio::time::interval(self.config.lease_renew_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.renew_with_retries(&metrics).await;
        }
    }

    async fn renew_with_retries(&mut self, metrics: &Metrics) {
        for attempt in 1..=RENEW_ATTEMPTS_MAX {
            match self.renew().await {
                Ok(()) => {
                    metrics.lease_renewed();
                    return;
                }
                Err(error) => {
                    metrics.error(ErrorKind::Lease);
                    tracing::warn!(%error, attempt, "lease renewal failed");
                    // A retry never runs into the next interval's renewal.
                    let delay = self
                        .config
                        .retry
                        .delay(attempt)
                        .min(self.config.lease_renew_interval / RENEW_ATTEMPTS_MAX);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One renewal: update the lease last written, or else read it (or
    /// create it) and update that.
    #[tracing::instrument(skip(self), fields(node = %self.config.node_name))]
    pub async fn renew(&mut self) -> Result<()> {
        if let Some(lease) = self.last.take() {
            match self.update(lease).await {
                Ok(()) => return Ok(()),
                // Someone else wrote it, or deleted it: start from the server's copy.
                Err(error) if matches!(error.api_code(), Some(404 | 409)) => {}
                Err(error) => return Err(error),
            }
        }
        let name = self.config.node_name.as_str();
        let object = format!("lease {NODE_LEASE_NAMESPACE}/{name}");
        match call("read", &object, self.leases.get_opt(name)).await? {
            Some(lease) => self.update(lease).await,
            None => {
                let lease = self.renewed(Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                });
                let created = call(
                    "create",
                    &object,
                    self.leases.create(&PostParams::default(), &lease),
                )
                .await?;
                self.last = Some(created);
                Ok(())
            }
        }
    }

    async fn update(&mut self, lease: Lease) -> Result<(), AgentError> {
        let lease = self.renewed(lease);
        let name = self.config.node_name.as_str();
        let updated = call(
            "renew",
            format!("lease {NODE_LEASE_NAMESPACE}/{name}"),
            self.leases.replace(name, &PostParams::default(), &lease),
        )
        .await?;
        self.last = Some(updated);
        Ok(())
    }

    /// `lease` held by this node and renewed now.
    fn renewed(&self, mut lease: Lease) -> Lease {
        let now = MicroTime(Timestamp::now());
        let holder = self.config.node_name.clone();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_ref() != Some(&holder) {
            spec.holder_identity = Some(holder);
            spec.acquire_time = Some(now.clone());
        }
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECS);
        spec.renew_time = Some(now);
        let owners = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        if !owners.iter().any(|owner| owner.uid == self.owner.uid) {
            owners.push(self.owner.clone());
        }
        lease
    }
}
