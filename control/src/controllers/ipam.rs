//! The node IPAM controller: each Node without a `spec.podCIDR` gets one
//! (and `spec.podCIDRs`), a range of the cluster CIDR that no other Node
//! holds, as kube-controller-manager's range allocator gives it.
//!
//! It keeps no allocation table of its own: the Nodes are the table. Each
//! allocation lists the Nodes fresh from the API, under one lock, so a new
//! leader starts from what its predecessors wrote and a deleted Node's
//! range is free again the moment the Node is gone. The write is a merge
//! patch conditional on the Node's resourceVersion, and this controller is
//! the only writer of the field. A cluster CIDR with no free range left
//! gives the Node a `CIDRNotAvailable` Warning Event and a retry later.
//! It knows Nodes and CIDRs; it knows nothing of pods or their addresses,
//! which the node agents hand out from these ranges.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::events::{EventType, Recorder};
use super::{Error, RETRY_AFTER};

/// The cluster CIDR: wider than the /16 most Kubernetes installers use,
/// because Flotilla nodes run far more pods (up to 1,000 by default, not
/// 110), so each takes a /22. 1,024 nodes fit. The network is virtual
/// (inside the agents), so it never meets the hosts' routes.
pub const CLUSTER_CIDR_DEFAULT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 240, 0, 0), 12);
/// A node's range: /22, 1,022 pod addresses, enough for the agent's
/// default of 1,000 pods (kube-controller-manager's /24 fits its 110).
pub const NODE_MASK_DEFAULT: u8 = 22;
/// The narrowest node range: a /30 still leaves two pod addresses beside
/// the network and gateway ones.
pub const NODE_MASK_MAX: u8 = 30;
/// Ranges one cluster CIDR may be cut into: bounds the scan for a free
/// one (kube-controller-manager refuses more than 16 bits of difference
/// between the cluster CIDR and the node mask too).
pub const NODE_RANGES_MAX_BITS: u8 = 16;
/// How soon a Node that found the cluster CIDR full looks again.
const FULL_RETRY: Duration = Duration::from_secs(30);

/// Where Node podCIDRs come from. Built by [`IpamConfig::new`], which
/// refuses a mask the cluster CIDR cannot be cut by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    cluster_cidr: Ipv4Net,
    node_mask: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamConfigError {
    #[error(
        "the node mask /{node_mask} must be from /{} to /{NODE_MASK_MAX}, \
         at most {NODE_RANGES_MAX_BITS} bits longer than that of the cluster CIDR {cluster_cidr}",
        cluster_cidr.prefix_len()
    )]
    Mask {
        cluster_cidr: Ipv4Net,
        node_mask: u8,
    },
}

impl IpamConfig {
    pub fn new(cluster_cidr: Ipv4Net, node_mask: u8) -> Result<Self, IpamConfigError> {
        let prefix = cluster_cidr.prefix_len();
        let fits = (prefix..=NODE_MASK_MAX).contains(&node_mask)
            && node_mask - prefix <= NODE_RANGES_MAX_BITS;
        if !fits {
            return Err(IpamConfigError::Mask {
                cluster_cidr,
                node_mask,
            });
        }
        Ok(IpamConfig {
            cluster_cidr: cluster_cidr.trunc(),
            node_mask,
        })
    }

    pub fn cluster_cidr(&self) -> Ipv4Net {
        self.cluster_cidr
    }

    pub fn node_mask(&self) -> u8 {
        self.node_mask
    }

    /// The first range of the cluster CIDR that is not in `held`.
    fn free_range(&self, held: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
        self.cluster_cidr
            .subnets(self.node_mask)
            .ok()?
            .find(|range| !held.contains(range))
    }
}

impl Default for IpamConfig {
    /// 10.240.0.0/12 cut into /22s: 1,024 nodes of 1,022 pod addresses.
    fn default() -> Self {
        IpamConfig {
            cluster_cidr: CLUSTER_CIDR_DEFAULT,
            node_mask: NODE_MASK_DEFAULT,
        }
    }
}

struct Allocator {
    client: kube::Client,
    config: IpamConfig,
    recorder: Recorder,
    /// Held over list, pick and write: two Nodes reconciled at once must
    /// not both pick the range the list showed free.
    lock: tokio::sync::Mutex<()>,
}

pub async fn run(client: kube::Client, config: IpamConfig) {
    let nodes = Api::<Node>::all(client.clone());
    let allocator = Arc::new(Allocator {
        recorder: Recorder::new(client.clone(), "node-ipam-controller"),
        client,
        config,
        lock: tokio::sync::Mutex::new(()),
    });
    // A deleted Node frees its range: every Node still waiting for one
    // looks again at once rather than at its next retry.
    let deletions = watcher::watcher(nodes.clone(), watcher::Config::default()).filter_map(
        |event| async move { matches!(event, Ok(watcher::Event::Delete(_))).then_some(()) },
    );
    Controller::new(nodes, watcher::Config::default())
        .reconcile_all_on(deletions)
        .run(reconcile, super::retry_later, allocator)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "node ipam reconcile failed");
            }
        })
        .await;
}

#[tracing::instrument(skip_all, fields(node = node.name_any()))]
async fn reconcile(node: Arc<Node>, allocator: Arc<Allocator>) -> Result<Action, Error> {
    if pod_cidr_of(&node).is_some() || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let nodes: Api<Node> = Api::all(allocator.client.clone());
    let _allocating = allocator.lock.lock().await;
    let listed = nodes.list(&ListParams::default()).await?;
    let name = node.name_any();
    let Some(current) = listed.items.iter().find(|n| n.name_any() == name) else {
        return Ok(Action::await_change());
    };
    if pod_cidr_of(current).is_some() {
        return Ok(Action::await_change());
    }
    let held: HashSet<Ipv4Net> = listed.items.iter().filter_map(pod_cidr_of).collect();
    let Some(range) = allocator.config.free_range(&held) else {
        let message = format!(
            "no range /{} is free in the cluster CIDR {} ({} held)",
            allocator.config.node_mask,
            allocator.config.cluster_cidr,
            held.len()
        );
        tracing::warn!(%message, "node gets no podCIDR");
        allocator
            .recorder
            .record(current, EventType::Warning, "CIDRNotAvailable", message)
            .await;
        return Ok(Action::requeue(FULL_RETRY));
    };
    // Conditional on the version just listed: a Node replaced or changed
    // meanwhile is a 409, and the next reconcile looks again.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "spec": {"podCIDR": range.to_string(), "podCIDRs": [range.to_string()]},
    });
    match nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(%range, "node podCIDR allocated");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
            Ok(Action::requeue(RETRY_AFTER))
        }
        Err(error) => Err(error.into()),
    }
}

/// The range a Node holds, if it holds one this controller could have
/// given (an IPv4 CIDR).
fn pod_cidr_of(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    let text = spec
        .pod_cidr
        .as_deref()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))?;
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_in_order_and_reused() {
        let config = IpamConfig::new("10.1.0.0/22".parse().unwrap(), 24).unwrap();
        let mut held = HashSet::new();
        let mut given = Vec::new();
        while let Some(range) = config.free_range(&held) {
            held.insert(range);
            given.push(range.to_string());
        }
        assert_eq!(
            given,
            ["10.1.0.0/24", "10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"]
        );
        held.remove(&"10.1.2.0/24".parse().unwrap());
        assert_eq!(
            config.free_range(&held).map(|r| r.to_string()).as_deref(),
            Some("10.1.2.0/24")
        );
    }

    #[test]
    fn masks_the_cluster_cidr_cannot_be_cut_by_are_refused() {
        let cidr: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(IpamConfig::new(cidr, 15).is_err());
        assert!(IpamConfig::new(cidr, 31).is_err());
        assert!(IpamConfig::new("10.0.0.0/8".parse().unwrap(), 26).is_err());
        assert!(IpamConfig::new(cidr, 24).is_ok());
        assert_eq!(
            IpamConfig::new("10.240.0.0/12".parse().unwrap(), 22).unwrap(),
            IpamConfig::default()
        );
    }
}
