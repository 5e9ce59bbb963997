//! NodePorts: a Service of type NodePort or LoadBalancer gets, for each of
//! its ports, a port every node listens on, from the node port range
//! (30000-32767 unless `ServerOptions::node_port_range` says otherwise), as
//! kube-apiserver's allocator gives them; and gives them back when it no
//! longer holds them.
//!
//! It works as ClusterIPs do (`services.rs`): a port is a claim key
//! `/flotilla/nodeports/<port>`, written only if absent in the transaction
//! that writes the Service, and deleted by the transaction that deletes it.
//! Unlike an address a node port can change on update (a type changed to or
//! from NodePort, a port added, removed or renumbered), so an update claims
//! and releases in its own transaction too (`Storage::update_claiming`).
//! This module knows the ports' fields and the claims' layout; not the
//! store, and not which server it runs on.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use super::ApiState;
use super::services::{Allocation, claims_held, holder, scan_from};
use super::status::{ApiError, FieldError};
use crate::storage::Claim;

/// kube-apiserver's default `--service-node-port-range`.
pub const NODE_PORT_RANGE_DEFAULT: NodePortRange = NodePortRange {
    first: 30000,
    last: 32767,
};

/// Where the claims live: outside `/registry/`, so no list or watch of API
/// objects ever sees them.
const CLAIMS_PREFIX: &str = "/flotilla/nodeports/";

/// The ports node ports come from, both ends included; never empty and
/// never port 0 (fields are private so that it stays so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    first: u16,
    last: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodePortRangeError {
    #[error("{0:?} is not a port range: write FIRST-LAST, as 30000-32767")]
    Syntax(String),
    #[error("the port range {first}-{last} is empty or starts at port 0")]
    Empty { first: u16, last: u16 },
}

impl NodePortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, NodePortRangeError> {
        if first == 0 || first > last {
            return Err(NodePortRangeError::Empty { first, last });
        }
        Ok(NodePortRange { first, last })
    }

    pub fn contains(self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }

    /// The first port not in `held`, scanning round from the `start`-th.
    fn pick_free(self, held: &HashSet<u16>, start: u32) -> Option<u16> {
        let count = u64::from(self.last - self.first) + 1;
        scan_from(u64::from(self.first), count, u64::from(start))
            .filter_map(|port| u16::try_from(port).ok())
            .find(|port| !held.contains(port))
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.first, self.last)
    }
}

impl FromStr for NodePortRange {
    type Err = NodePortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || NodePortRangeError::Syntax(text.to_string());
        let (first, last) = text.trim().split_once('-').ok_or_else(syntax)?;
        let first = first.trim().parse().map_err(|_| syntax())?;
        let last = last.trim().parse().map_err(|_| syntax())?;
        NodePortRange::new(first, last)
    }
}

/// Whether any node port `spec` names is held by its Service: true of the
/// types nodes serve on a port.
fn holds_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// Whether a port without a node port is given one: a LoadBalancer may opt
/// out (`allocateLoadBalancerNodePorts: false`, Kubernetes' default true).
fn gives_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false),
        _ => false,
    }
}

/// The node port a port names; none for 0 or absent, as Kubernetes reads it.
fn node_port_of(port: &Value) -> Option<i64> {
    port["nodePort"].as_i64().filter(|number| *number != 0)
}

fn ports(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["ports"].as_array().into_iter().flatten()
}

fn field(index: usize) -> String {
    format!("spec.ports[{index}].nodePort")
}

/// The node ports `service` holds: those it names, if its type holds any.
pub fn held_by(service: &Value) -> BTreeSet<u16> {
    let spec = &service["spec"];
    if !holds_node_ports(spec) {
        return BTreeSet::new();
    }
    ports(spec)
        .filter_map(node_port_of)
        .filter_map(|number| u16::try_from(number).ok())
        .collect()
}

/// The claim keys `service` holds, to delete with it.
pub fn claim_keys(service: &Value) -> Vec<Vec<u8>> {
    held_by(service).into_iter().map(claim_key).collect()
}

/// Kubernetes' validation of node ports: none on a ClusterIP Service, and
/// no two ports of one protocol on the same one. (Two protocols may share
/// a node port, as a DNS Service's TCP and UDP 53 do.)
pub fn validate(spec: &Value, errors: &mut Vec<FieldError>) {
    let cluster_ip_only = spec["type"].as_str() == Some("ClusterIP");
    let mut seen = HashSet::new();
    for (index, port) in ports(spec).enumerate() {
        let Some(number) = node_port_of(port) else {
            continue;
        };
        if cluster_ip_only {
            errors.push(FieldError::forbidden(
                field(index),
                "may not be used when `type` is 'ClusterIP'",
            ));
        } else if !seen.insert((port["protocol"].as_str(), number)) {
            errors.push(FieldError::duplicate(field(index), number));
        }
    }
}

/// On update, as kube-apiserver does: a port left without a node port gets
/// back the one its namesake held (unless another port has taken that one
/// meanwhile), so a manifest without node ports can be re-applied; and a
/// change to a type without node ports that leaves them as they were drops
/// them, so `type: ClusterIP` alone is a valid edit.
pub fn keep(current: &Value, next: &mut Value) {
    let before = &current["spec"];
    let after = &next["spec"];
    let named: BTreeSet<i64> = ports(before).filter_map(node_port_of).collect();
    let naming: BTreeSet<i64> = ports(after).filter_map(node_port_of).collect();
    if holds_node_ports(before) && !holds_node_ports(after) && named == naming {
        for port in next["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if let Some(port) = port.as_object_mut() {
                port.remove("nodePort");
            }
        }
        return;
    }
    if !(gives_node_ports(before) && gives_node_ports(after)) {
        return;
    }
    let by_name: BTreeMap<&str, i64> = ports(before)
        .filter_map(|port| Some((port["name"].as_str().unwrap_or(""), node_port_of(port)?)))
        .collect();
    let in_use: BTreeSet<i64> = named.intersection(&naming).copied().collect();
    for port in next["spec"]["ports"].as_array_mut().into_iter().flatten() {
        if node_port_of(port).is_some() {
            continue;
        }
        let name = port["name"].as_str().unwrap_or("");
        if let Some(&number) = by_name.get(name).filter(|number| !in_use.contains(*number)) {
            port["nodePort"] = json!(number);
        }
    }
}

/// The node ports `service` asks for that it does not hold yet (`held`,
/// from the stored Service; none on create) and that lie outside `range`.
/// Ports held already stay even if the range has changed since.
pub fn outside_range(
    range: NodePortRange,
    held: &BTreeSet<u16>,
    service: &Value,
) -> Vec<FieldError> {
    let spec = &service["spec"];
    if !holds_node_ports(spec) {
        return Vec::new();
    }
    ports(spec)
        .enumerate()
        .filter_map(|(index, port)| Some((index, node_port_of(port)?)))
        .filter(|(_, number)| {
            let held = u16::try_from(*number).is_ok_and(|number| held.contains(&number));
            !held && !range.contains(*number)
        })
        .map(|(index, number)| {
            FieldError::invalid(
                field(index),
                format!(
                    "Invalid value: {number}: provided port is not in the valid range. \
                     The range of valid ports is {range}"
                ),
            )
        })
        .collect()
}

/// Gives every port of `service` that needs a node port one, and adds to
/// `allocation` what the write must claim and release, given the ports
/// `held` before it (by the stored Service; none on create). A port
/// without one takes its sibling's of the same port number (TCP and UDP
/// 53 share one node port, as in Kubernetes), else a free one picked from
/// a random start; a pick that loses a race shows as
/// `StorageError::Claimed` at the write and is picked again. Requested
/// ports are checked by [`outside_range`] before.
pub async fn assign(
    state: &ApiState,
    held: &BTreeSet<u16>,
    service: &mut Value,
    allocation: &mut Allocation,
) -> Result<(), ApiError> {
    let needed = wanted_by(service);
    let holder = holder(service);
    let mut by_number: BTreeMap<i64, u16> = BTreeMap::new();
    let mut requested = BTreeSet::new();
    for (index, number, node_port) in &needed {
        if let Some(node_port) = node_port {
            by_number.entry(*number).or_insert(*node_port);
            if requested.insert(*node_port) && !held.contains(node_port) {
                let key = claim_key(*node_port);
                allocation.refuse_if_taken(key, taken(*index, *node_port));
            }
        }
    }
    let unfilled = needed
        .iter()
        .filter(|(_, number, node_port)| node_port.is_none() && !by_number.contains_key(number))
        .count();
    let mut in_use: HashSet<u16> = if unfilled > 0 {
        claims_held(state, CLAIMS_PREFIX, "node ports").await?
    } else {
        HashSet::new()
    };
    in_use.extend(&requested);
    in_use.extend(held);
    let start = rand::random::<u32>();
    for (index, number, node_port) in needed {
        if node_port.is_some() {
            continue;
        }
        let picked =
            match by_number.get(&number) {
                Some(shared) => *shared,
                None => {
                    let picked = state.node_port_range.pick_free(&in_use, start).ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a nodePort: range is full ({} ports of {} held)",
                        in_use.len(),
                        state.node_port_range
                    ))
                })?;
                    in_use.insert(picked);
                    by_number.insert(number, picked);
                    picked
                }
            };
        service["spec"]["ports"][index]["nodePort"] = json!(picked);
    }
    let now_held = held_by(service);
    allocation
        .claims
        .extend(now_held.difference(held).map(|port| Claim {
            key: claim_key(*port),
            value: holder.clone(),
        }));
    allocation
        .releases
        .extend(held.difference(&now_held).map(|port| claim_key(*port)));
    Ok(())
}

/// The ports of `service` that hold a node port or are given one: (index,
/// port number, the node port it names). Validation has checked the
/// numbers fit.
fn wanted_by(service: &Value) -> Vec<(usize, i64, Option<u16>)> {
    let spec = &service["spec"];
    if !holds_node_ports(spec) {
        return Vec::new();
    }
    let gives = gives_node_ports(spec);
    ports(spec)
        .enumerate()
        .map(|(index, port)| {
            let node_port = node_port_of(port).and_then(|number| u16::try_from(number).ok());
            (index, port["port"].as_i64().unwrap_or(0), node_port)
        })
        .filter(|(_, _, node_port)| node_port.is_some() || gives)
        .collect()
}

/// The field error of a node port another Service holds.
fn taken(index: usize, node_port: u16) -> FieldError {
    FieldError::invalid(
        field(index),
        format!("Invalid value: {node_port}: provided port is already allocated"),
    )
}

fn claim_key(port: u16) -> Vec<u8> {
    format!("{CLAIMS_PREFIX}{port}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({ "spec": spec })
    }

    #[test]
    fn ranges_are_read_as_kube_apiserver_writes_them() {
        assert_eq!("30000-32767".parse(), Ok(NODE_PORT_RANGE_DEFAULT));
        assert_eq!(NODE_PORT_RANGE_DEFAULT.to_string(), "30000-32767");
        for refused in ["30000", "0-10", "20-10", "a-b", "30000-70000"] {
            assert!(refused.parse::<NodePortRange>().is_err(), "{refused}");
        }
    }

    #[test]
    fn free_ports_wrap_round_from_the_start() {
        let range = NodePortRange::new(30000, 30003).unwrap();
        let mut held = HashSet::from([30000]);
        let mut picked = Vec::new();
        while let Some(port) = range.pick_free(&held, 6) {
            held.insert(port);
            picked.push(port);
        }
        assert_eq!(picked, [30002, 30003, 30001]);
    }

    #[test]
    fn node_ports_are_forbidden_on_cluster_ip_services_and_unique_per_protocol() {
        let check = |spec: Value| {
            let mut errors = Vec::new();
            validate(&spec, &mut errors);
            errors
        };
        let forbidden =
            check(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(forbidden[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            forbidden[0].message,
            "Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        let twice = check(json!({"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080},
            {"port": 81, "protocol": "TCP", "nodePort": 30080},
        ]}));
        assert_eq!(twice[0].field, "spec.ports[1].nodePort");
        let protocols = check(json!({"type": "NodePort", "ports": [
            {"port": 53, "protocol": "TCP", "nodePort": 30053},
            {"port": 53, "protocol": "UDP", "nodePort": 30053},
        ]}));
        assert!(protocols.is_empty(), "{protocols:?}");
    }

    #[test]
    fn an_update_keeps_node_ports_by_port_name_and_a_type_change_drops_them() {
        let current = service(json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "nodePort": 30080},
            {"name": "https", "port": 443, "nodePort": 30443},
        ]}));
        let mut left_out = service(json!({"type": "NodePort", "ports": [
            {"name": "https", "port": 443},
            {"name": "http", "port": 8080},
        ]}));
        keep(&current, &mut left_out);
        assert_eq!(left_out["spec"]["ports"][0]["nodePort"], 30443);
        assert_eq!(left_out["spec"]["ports"][1]["nodePort"], 30080);

        // Another port took http's: it is not handed out twice.
        let mut moved = service(json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80},
            {"name": "admin", "port": 9000, "nodePort": 30080},
        ]}));
        keep(&current, &mut moved);
        assert!(moved["spec"]["ports"][0]["nodePort"].is_null());

        let mut cluster_ip = current.clone();
        cluster_ip["spec"]["type"] = json!("ClusterIP");
        keep(&current, &mut cluster_ip);
        assert!(held_by(&cluster_ip).is_empty());
        assert!(ports(&cluster_ip["spec"]).all(|port| port.get("nodePort").is_none()));
    }

    #[test]
    fn only_new_requests_are_checked_against_the_range() {
        let range = NODE_PORT_RANGE_DEFAULT;
        let asking = service(json!({"type": "NodePort", "ports": [
            {"port": 80, "nodePort": 40000},
            {"port": 81, "nodePort": 20000},
            {"port": 82, "nodePort": 30001},
        ]}));
        let errors = outside_range(range, &BTreeSet::from([20000]), &asking);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            errors[0].message,
            "Invalid value: 40000: provided port is not in the valid range. \
             The range of valid ports is 30000-32767"
        );
    }
}
