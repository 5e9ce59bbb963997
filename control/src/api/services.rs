//! ClusterIPs: the API server gives a Service that needs one an address
//! from the service CIDR, as kube-apiserver's allocator does, and frees it
//! when the Service goes. This module is also where a Service's writes
//! meet its allocations: the address here, node ports in `nodeports.rs`.
//!
//! An allocation is a claim key `/flotilla/serviceips/<ip>` written in the
//! same store transaction as the Service, and only if the key is absent
//! (`Storage::create_claiming`); the Service's deletion removes it in the
//! same transaction too (`Storage::delete_releasing`). So two API servers
//! racing for one address cannot both win, and no address outlives its
//! Service or is lost by a crash between two writes. This module knows a
//! Service's address fields and the claim keys' layout; it does not know
//! the store (only `storage.rs` does) nor which server it runs on.

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::status::{ApiError, FieldError};
use super::{ApiState, nodeports};
use crate::resources::ResourceInfo;
use crate::storage::Claim;

/// kube-apiserver's default `--service-cluster-ip-range`.
pub const SERVICE_CIDR_DEFAULT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);

/// The widest service CIDR accepted: kube-apiserver refuses an IPv4 range
/// of more than 20 bits (a /12), which also bounds the scan for a free
/// address to about a million steps.
pub const SERVICE_CIDR_PREFIX_MIN: u8 = 12;
/// The narrowest: a /29 leaves five addresses to allocate.
pub const SERVICE_CIDR_PREFIX_MAX: u8 = 29;

/// Where the claims live: outside `/registry/`, so no list or watch of
/// API objects ever sees them.
const CLAIMS_PREFIX: &str = "/flotilla/serviceips/";

/// What a Service being created asks of the allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Headless (`clusterIP: None`) or ExternalName: no address.
    Nothing,
    /// Any free address.
    Any,
    /// This one, if it is free.
    Exact(Ipv4Addr),
}

/// Whether `info` is core/v1 Services.
pub fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Service"
}

/// Whether `cidr` can be a service CIDR (see the bounds above).
pub fn valid_service_cidr(cidr: Ipv4Net) -> bool {
    (SERVICE_CIDR_PREFIX_MIN..=SERVICE_CIDR_PREFIX_MAX).contains(&cidr.prefix_len())
}

/// What `service` (defaulted and validated, about to be created) asks for.
/// A requested address outside `cidr` is refused here, before any write.
pub fn wanted(cidr: Ipv4Net, service: &Value) -> Result<Wanted, FieldError> {
    let spec = &service["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        return Ok(Wanted::Nothing);
    }
    let single = spec["clusterIP"].as_str().filter(|ip| !ip.is_empty());
    let first_of_list = spec["clusterIPs"][0].as_str().filter(|ip| !ip.is_empty());
    if let (Some(single), Some(listed)) = (single, first_of_list)
        && single != listed
    {
        return Err(FieldError::invalid(
            "spec.clusterIPs",
            format!("Invalid value: \"{listed}\": must match the first value of spec.clusterIP"),
        ));
    }
    let requested = match single.or(first_of_list) {
        None => return Ok(Wanted::Any),
        Some("None") => return Ok(Wanted::Nothing),
        Some(requested) => requested,
    };
    let invalid = |why: &str| {
        FieldError::invalid(
            "spec.clusterIP",
            format!("Invalid value: \"{requested}\": {why}"),
        )
    };
    let address: IpAddr = requested
        .parse()
        .map_err(|_| invalid("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))?;
    match address {
        // The network and broadcast addresses are in the range but no
        // host's.
        IpAddr::V4(address)
            if cidr.contains(&address)
                && address != cidr.network()
                && address != cidr.broadcast() =>
        {
            Ok(Wanted::Exact(address))
        }
        _ => Err(invalid(&format!(
            "provided IP is not in the valid range. The range of valid IPs is {cidr}"
        ))),
    }
}

/// The field error of an address that another Service holds.
fn taken(address: Ipv4Addr) -> FieldError {
    FieldError::invalid(
        "spec.clusterIP",
        format!("Invalid value: \"{address}\": provided IP is already allocated"),
    )
}

/// What a Service being created asks for and may not have, checked before
/// any write: its address ([`wanted`]) and its node ports.
pub fn requested(state: &ApiState, service: &Value) -> Result<Wanted, Vec<FieldError>> {
    let address = wanted(state.service_cidr, service);
    let mut errors = node_port_errors(state, &BTreeSet::new(), service);
    match address {
        Ok(address) if errors.is_empty() => Ok(address),
        Ok(_) => Err(errors),
        Err(error) => {
            errors.insert(0, error);
            Err(errors)
        }
    }
}

/// What one write of a Service claims and releases, and how a claim found
/// taken is answered.
#[derive(Debug, Default)]
pub struct Allocation {
    /// The address given on create, for the log.
    pub address: Option<Ipv4Addr>,
    pub claims: Vec<Claim>,
    pub releases: Vec<Vec<u8>>,
    /// The claims of values the client asked for, with the field error
    /// that answers one found taken. Any other claim is a value picked
    /// here, which a lost race makes the caller pick again.
    requested: Vec<(Vec<u8>, FieldError)>,
}

impl Allocation {
    /// The field error that answers `key` taken, if the client asked for
    /// it; none if it was picked, and is picked again.
    pub fn refusal(&self, key: &[u8]) -> Option<FieldError> {
        self.requested
            .iter()
            .find(|(requested, _)| requested == key)
            .map(|(_, error)| error.clone())
    }

    pub(super) fn refuse_if_taken(&mut self, key: Vec<u8>, error: FieldError) {
        self.requested.push((key, error));
    }
}

/// Gives a Service being created (`info` tells; anything else gets
/// nothing) the address `wanted` names or a free one, and its node ports;
/// returns what to claim with it. For `Any`, the claims are listed and a
/// free address is picked from a random start, as kube-apiserver's
/// allocator scans; a race lost to another server shows as
/// `StorageError::Claimed` at the write, and the caller picks again.
pub async fn assign(
    state: &ApiState,
    info: &ResourceInfo,
    wanted: &Wanted,
    service: &mut Value,
) -> Result<Allocation, ApiError> {
    let mut allocation = Allocation::default();
    if !is_service(info) {
        return Ok(allocation);
    }
    assign_address(state, wanted, service, &mut allocation).await?;
    nodeports::assign(state, &BTreeSet::new(), service, &mut allocation).await?;
    Ok(allocation)
}

async fn assign_address(
    state: &ApiState,
    wanted: &Wanted,
    service: &mut Value,
    allocation: &mut Allocation,
) -> Result<(), ApiError> {
    let address = match wanted {
        Wanted::Nothing => {
            if service["spec"]["clusterIP"].as_str() == Some("None") {
                service["spec"]["clusterIPs"] = json!(["None"]);
            }
            return Ok(());
        }
        Wanted::Exact(address) => {
            allocation.refuse_if_taken(claim_key(*address), taken(*address));
            *address
        }
        Wanted::Any => {
            let held = claims_held(state, CLAIMS_PREFIX, "ClusterIPs").await?;
            let start = rand::random::<u32>();
            pick_free(state.service_cidr, &held, start).ok_or_else(|| {
                ApiError::internal(format!(
                    "failed to allocate a serviceIP: range is full ({} addresses of {} held)",
                    held.len(),
                    state.service_cidr
                ))
            })?
        }
    };
    let spec = &mut service["spec"];
    spec["clusterIP"] = json!(address.to_string());
    spec["clusterIPs"] = json!([address.to_string()]);
    if spec["ipFamilies"].is_null() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    allocation.address = Some(address);
    allocation.claims.push(Claim {
        key: claim_key(address),
        value: holder(service),
    });
    Ok(())
}

/// A claim's value: the Service holding it, for whoever reads the store.
pub(super) fn holder(service: &Value) -> Vec<u8> {
    let metadata = &service["metadata"];
    json!({
        "namespace": metadata["namespace"],
        "name": metadata["name"],
        "uid": metadata["uid"],
    })
    .to_string()
    .into_bytes()
}

/// The claims `object` holds, to delete with it.
pub fn claims_of(info: &ResourceInfo, object: &Value) -> Vec<Vec<u8>> {
    if !is_service(info) {
        return Vec::new();
    }
    let address = object["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(claim_key);
    address
        .into_iter()
        .chain(nodeports::claim_keys(object))
        .collect()
}

/// On update a Service keeps what it was given: a replacement that leaves
/// its address or node ports out gets them back (kube-apiserver fills them
/// in the same way, so a manifest without them can be re-applied). The
/// address is immutable; a node port may change, but a new one must be in
/// the range.
pub fn keep(state: &ApiState, current: &Value, next: &mut Value) -> Result<(), Vec<FieldError>> {
    keep_address(current, next).map_err(|error| vec![error])?;
    nodeports::keep(current, next);
    let errors = node_port_errors(state, &nodeports::held_by(current), next);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What is wrong with `service`'s node ports, given those it holds
/// (`held`). Checked here rather than with the rest of the object
/// (`validation.rs`), because an update must first have its node ports
/// kept or dropped (`nodeports::keep`): `type: ClusterIP` alone is a
/// valid edit of a NodePort Service.
fn node_port_errors(state: &ApiState, held: &BTreeSet<u16>, service: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    nodeports::validate(&service["spec"], &mut errors);
    errors.extend(nodeports::outside_range(
        state.node_port_range,
        held,
        service,
    ));
    errors
}

/// What an update of a Service (`info` tells; anything else gets nothing)
/// from `current` to `next` claims and releases: node ports given to ports
/// that have none, or newly asked for, and those no longer held.
pub async fn reassign(
    state: &ApiState,
    info: &ResourceInfo,
    current: &Value,
    next: &mut Value,
) -> Result<Allocation, ApiError> {
    let mut allocation = Allocation::default();
    if is_service(info) {
        let held = nodeports::held_by(current);
        nodeports::assign(state, &held, next, &mut allocation).await?;
    }
    Ok(allocation)
}

/// A replacement that changes the address is refused, as the field is
/// immutable.
fn keep_address(current: &Value, next: &mut Value) -> Result<(), FieldError> {
    for field in ["clusterIP", "clusterIPs"] {
        let now = &current["spec"][field];
        if now.is_null() {
            continue;
        }
        let given = &next["spec"][field];
        let left_out = given.is_null() || given.as_str() == Some("");
        if left_out {
            next["spec"][field] = now.clone();
        } else if given != now {
            return Err(FieldError::invalid(
                format!("spec.{field}"),
                format!("Invalid value: {given}: field is immutable"),
            ));
        }
    }
    Ok(())
}

fn claim_key(address: Ipv4Addr) -> Vec<u8> {
    format!("{CLAIMS_PREFIX}{address}").into_bytes()
}

/// The values held now under `prefix`, read from the claims' keys
/// (`what` names them in an error).
pub(super) async fn claims_held<T: FromStr + Eq + Hash>(
    state: &ApiState,
    prefix: &str,
    what: &str,
) -> Result<HashSet<T>, ApiError> {
    let page = state
        .storage
        .list(prefix.as_bytes(), b"", 0, 0)
        .await
        .map_err(|error| ApiError::internal(format!("cannot read the held {what}: {error}")))?;
    Ok(page
        .items
        .iter()
        .filter_map(|stored| {
            let key = std::str::from_utf8(&stored.key).ok()?;
            key.strip_prefix(prefix)?.parse().ok()
        })
        .collect())
}

/// The `count` values from `first` on, starting at the `start`-th (modulo
/// `count`) and wrapping round: how both allocators scan for a free one.
pub(super) fn scan_from(first: u64, count: u64, start: u64) -> impl Iterator<Item = u64> {
    let start = start.checked_rem(count).unwrap_or(0);
    (0..count).map(move |step| first + (start + step) % count)
}

/// The first address not in `held`, scanning `cidr` round from the
/// `start`-th candidate. The network and broadcast addresses are never
/// candidates, nor the first host, which Kubernetes keeps for the
/// `kubernetes` Service (it may still be asked for by name).
fn pick_free(cidr: Ipv4Net, held: &HashSet<Ipv4Addr>, start: u32) -> Option<Ipv4Addr> {
    let first = u64::from(u32::from(cidr.network())) + 2;
    let last = u64::from(u32::from(cidr.broadcast())).checked_sub(1)?;
    let count = (last + 1).checked_sub(first).filter(|count| *count > 0)?;
    scan_from(first, count, u64::from(start))
        .filter_map(|address| u32::try_from(address).ok())
        .map(Ipv4Addr::from)
        .find(|address| !held.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn free_addresses_skip_the_reserved_ones_and_wrap_round() {
        let small = cidr("10.0.0.0/29");
        let mut held = HashSet::new();
        let mut picked = Vec::new();
        while let Some(address) = pick_free(small, &held, 3) {
            held.insert(address);
            picked.push(address.to_string());
        }
        assert_eq!(
            picked,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
    }

    #[test]
    fn requests_are_read_as_kubernetes_reads_them() {
        let range = SERVICE_CIDR_DEFAULT;
        let check = |spec: Value| wanted(range, &json!({ "spec": spec }));
        assert_eq!(check(json!({})), Ok(Wanted::Any));
        assert_eq!(check(json!({"clusterIP": ""})), Ok(Wanted::Any));
        assert_eq!(check(json!({"clusterIP": "None"})), Ok(Wanted::Nothing));
        assert_eq!(check(json!({"type": "ExternalName"})), Ok(Wanted::Nothing));
        assert_eq!(
            check(json!({"clusterIPs": ["10.96.0.10"]})),
            Ok(Wanted::Exact(Ipv4Addr::new(10, 96, 0, 10)))
        );
        for refused in ["10.95.0.1", "10.96.0.0", "10.111.255.255", "fd00::1", "x"] {
            let error = check(json!({ "clusterIP": refused })).unwrap_err();
            assert_eq!(error.field, "spec.clusterIP", "{refused}");
        }
        let mismatch = check(json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"]}));
        assert_eq!(mismatch.unwrap_err().field, "spec.clusterIPs");
    }

    #[test]
    fn an_update_keeps_the_address_or_is_refused() {
        let current = json!({"spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"]}});
        let mut left_out = json!({"spec": {"ports": []}});
        keep_address(&current, &mut left_out).unwrap();
        assert_eq!(left_out["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(left_out["spec"]["clusterIPs"], json!(["10.96.0.7"]));
        let mut changed = json!({"spec": {"clusterIP": "10.96.0.8"}});
        let error = keep_address(&current, &mut changed).unwrap_err();
        assert_eq!(error.field, "spec.clusterIP");
    }
}
