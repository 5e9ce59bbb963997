//! Pod addresses: each pod this node runs gets an IP from the Node's
//! `spec.podCIDR`, which the control plane's IPAM controller sets, and
//! keeps it for its life.
//!
//! Allocation waits, as kubelet does for pods that need the network, until
//! the podCIDR is known and the first list of this node's pods has been
//! read: the pods' reported `status.podIP`s are the record of what is
//! held (an agent restarted on the same runtime recovers them from there),
//! so a new pod must not be given an address before they are all seen.
//! Addresses are handed out round from the last one given (the network
//! and gateway addresses, `.0` and `.1`, and the broadcast one never), so
//! a released address is not reused at once. This module knows the range
//! and who holds what; it knows nothing of the runtime or the API beyond
//! the Node it follows.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;

/// The node's range has no free address left.
#[derive(Debug, thiserror::Error)]
#[error("no free pod IP in the node's podCIDR {range} ({held} addresses held)")]
pub struct Exhausted {
    pub range: Ipv4Net,
    pub held: usize,
}

#[derive(Debug, Default)]
struct State {
    range: Option<Ipv4Net>,
    /// Whether the pods' reported addresses have all been recovered.
    recovered: bool,
    by_uid: HashMap<String, Ipv4Addr>,
    held: HashSet<Ipv4Addr>,
    /// The last address handed out; the next search starts after it.
    last: Option<Ipv4Addr>,
}

/// This node's pod addresses; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct PodAddresses {
    state: Arc<watch::Sender<State>>,
}

impl Default for PodAddresses {
    fn default() -> Self {
        PodAddresses {
            state: Arc::new(watch::Sender::new(State::default())),
        }
    }
}

impl PodAddresses {
    /// The Node's podCIDR, once known.
    pub fn set_range(&self, range: Ipv4Net) {
        self.state.send_if_modified(|state| {
            let changed = state.range != Some(range);
            state.range = Some(range);
            changed
        });
    }

    /// Records that pod `uid` holds `address` (from its reported status).
    pub fn recover(&self, uid: &str, address: Ipv4Addr) {
        self.state.send_if_modified(|state| {
            if state.by_uid.contains_key(uid) || state.held.contains(&address) {
                return false;
            }
            state.by_uid.insert(uid.to_owned(), address);
            state.held.insert(address);
            true
        });
    }

    /// Every pod listed has been recovered: new addresses may be given.
    pub fn recovered(&self) {
        self.state
            .send_if_modified(|state| !std::mem::replace(&mut state.recovered, true));
    }

    /// The address of pod `uid`: the one it holds, or a new one once the
    /// range is known and the pods are recovered (this waits until then).
    pub async fn acquire(&self, uid: &str) -> Result<Ipv4Addr, Exhausted> {
        let mut ready = self.state.subscribe();
        // The sender lives in `self`, so the wait ends only when ready.
        let _ = ready
            .wait_for(|state| {
                state.by_uid.contains_key(uid) || state.range.is_some() && state.recovered
            })
            .await;
        // Overwritten: send_modify always runs its closure.
        let mut outcome = Err(Exhausted {
            range: Ipv4Net::default(),
            held: 0,
        });
        self.state
            .send_modify(|state| outcome = state.allocate(uid));
        outcome
    }

    /// Pod `uid` is gone: its address is free.
    pub fn release(&self, uid: &str) {
        self.state
            .send_if_modified(|state| match state.by_uid.remove(uid) {
                Some(address) => state.held.remove(&address),
                None => false,
            });
    }
}

impl State {
    fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, Exhausted> {
        if let Some(address) = self.by_uid.get(uid) {
            return Ok(*address);
        }
        let range = self.range.unwrap_or_default();
        let exhausted = Exhausted {
            range,
            held: self.held.len(),
        };
        // hosts() leaves out the network and broadcast addresses; the
        // first host is the gateway's.
        let candidates = || range.hosts().skip(1);
        let after_last = candidates().skip_while(|a| Some(*a) <= self.last);
        let address = after_last
            .chain(candidates())
            .find(|address| !self.held.contains(address))
            .ok_or(exhausted)?;
        self.by_uid.insert(uid.to_owned(), address);
        self.held.insert(address);
        self.last = Some(address);
        Ok(address)
    }
}

/// Follows this Node's `spec.podCIDR` into `addresses`, until dropped.
pub async fn follow_node(
    client: kube::Client,
    node_name: String,
    addresses: PodAddresses,
    retry: crate::BackoffConfig,
) {
    let nodes: Api<Node> = Api::all(client);
    let selector = format!("metadata.name={node_name}");
    let events = watcher::watcher(nodes, watcher::Config::default().fields(&selector))
        .backoff(super::backoff::for_watches(&retry))
        .applied_objects();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(node) => {
                let range = node.spec.as_ref().and_then(|spec| {
                    let text = spec
                        .pod_cidr
                        .as_deref()
                        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))?;
                    text.parse::<Ipv4Net>().ok()
                });
                if let Some(range) = range {
                    tracing::debug!(%range, "node podCIDR");
                    addresses.set_range(range.trunc());
                }
            }
            Err(error) => tracing::warn!(%error, "node watch failed; relisting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_skip_network_and_gateway_go_round_and_are_recovered() {
        let addresses = PodAddresses::default();
        addresses.recover("old", "10.0.0.3".parse().unwrap());
        addresses.set_range("10.0.0.0/29".parse().unwrap());
        addresses.recovered();
        let mut given = Vec::new();
        for uid in ["a", "b", "c", "d"] {
            given.push(addresses.acquire(uid).await.unwrap().to_string());
        }
        assert_eq!(given, ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert_eq!(
            addresses.acquire("b").await.unwrap().to_string(),
            "10.0.0.4"
        );
        let full = addresses.acquire("e").await.unwrap_err();
        assert_eq!(full.held, 5);
        addresses.release("a");
        assert_eq!(
            addresses.acquire("e").await.unwrap().to_string(),
            "10.0.0.2"
        );
    }
}
