//! ClusterIPs: the API server gives a Service that needs one an address
//! from the service CIDR, as kube-apiserver's allocator does, and frees it
//! when the Service goes.
//!
//! An allocation is a claim key `/flotilla/serviceips/<ip>` written in the
//! same store transaction as the Service, and only if the key is absent
//! (`Storage::create_claiming`); the Service's deletion removes it in the
//! same transaction too (`Storage::delete_releasing`). So two API servers
//! racing for one address cannot both win, and no address outlives its
//! Service or is lost by a crash between two writes. This module knows a
//! Service's address fields and the claim keys' layout; it does not know
//! the store (only `storage.rs` does) nor which server it runs on.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::ApiState;
use super::status::{ApiError, FieldError};
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
pub fn taken(address: Ipv4Addr) -> FieldError {
    FieldError::invalid(
        "spec.clusterIP",
        format!("Invalid value: \"{address}\": provided IP is already allocated"),
    )
}

/// Gives `service` the address `wanted` names, or a free one, and returns
/// the claims to write with it (none for `Nothing`). For `Any`, the
/// claims are listed and a free address is picked from a random start, as
/// kube-apiserver's allocator scans; a race lost to another server shows
/// as `StorageError::Claimed` at the write, and the caller picks again.
pub async fn assign(
    state: &ApiState,
    wanted: &Wanted,
    service: &mut Value,
) -> Result<(Option<Ipv4Addr>, Vec<Claim>), ApiError> {
    let address = match wanted {
        Wanted::Nothing => {
            if service["spec"]["clusterIP"].as_str() == Some("None") {
                service["spec"]["clusterIPs"] = json!(["None"]);
            }
            return Ok((None, Vec::new()));
        }
        Wanted::Exact(address) => *address,
        Wanted::Any => {
            let held = held(state).await?;
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
    let metadata = &service["metadata"];
    let holder = json!({
        "namespace": metadata["namespace"],
        "name": metadata["name"],
        "uid": metadata["uid"],
    });
    let claim = Claim {
        key: claim_key(address),
        value: holder.to_string().into_bytes(),
    };
    Ok((Some(address), vec![claim]))
}

/// The claims `object` holds, to delete with it.
pub fn claims_of(info: &ResourceInfo, object: &Value) -> Vec<Vec<u8>> {
    if !is_service(info) {
        return Vec::new();
    }
    object["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(claim_key)
        .into_iter()
        .collect()
}

/// On update a Service keeps its address: a replacement that leaves it
/// out gets it back (kube-apiserver fills it in the same way, so a
/// manifest without `clusterIP` can be re-applied), and one that changes
/// it is refused, as the field is immutable.
pub fn keep_address(current: &Value, next: &mut Value) -> Result<(), FieldError> {
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

/// The addresses held now, read from the claims.
async fn held(state: &ApiState) -> Result<HashSet<Ipv4Addr>, ApiError> {
    let page = state
        .storage
        .list(CLAIMS_PREFIX.as_bytes(), b"", 0, 0)
        .await
        .map_err(|error| ApiError::internal(format!("cannot read the held ClusterIPs: {error}")))?;
    Ok(page
        .items
        .iter()
        .filter_map(|stored| {
            let key = std::str::from_utf8(&stored.key).ok()?;
            key.strip_prefix(CLAIMS_PREFIX)?.parse().ok()
        })
        .collect())
}

/// The first address not in `held`, scanning `cidr` round from the
/// `start`-th candidate. The network and broadcast addresses are never
/// candidates, nor the first host, which Kubernetes keeps for the
/// `kubernetes` Service (it may still be asked for by name).
fn pick_free(cidr: Ipv4Net, held: &HashSet<Ipv4Addr>, start: u32) -> Option<Ipv4Addr> {
    let first = u64::from(u32::from(cidr.network())) + 2;
    let last = u64::from(u32::from(cidr.broadcast())).checked_sub(1)?;
    let count = (last + 1).checked_sub(first).filter(|count| *count > 0)?;
    let start = u64::from(start) % count;
    (0..count)
        .map(|step| first + (start + step) % count)
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
