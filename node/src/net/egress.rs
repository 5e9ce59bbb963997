//! Egress: requests that leave the cluster. They are refused unless the
//! caller's namespace allows the destination (the
//! `flotilla.dev/egress-allow` annotation: host names, `*.` wildcards,
//! addresses and CIDRs, comma-separated) or an egress NetworkPolicy of the
//! calling pod admits its address by `ipBlock` (or allows every peer).
//!
//! What is checked is what is sent: the request is rebuilt for the host
//! and port that passed the check (a relative URL with a forged `Host`
//! header, as in CVE-2024-32980, cannot pick another destination), and
//! redirects are never followed here (a guest that follows one makes a new
//! request, checked again). Only `127.0.0.1`, `::1` and `localhost` are the
//! pod's own loopback; any other address, the host's other loopback
//! addresses included, is outside, and an address of the host itself
//! ([`host_only`]) is reached only where a rule names that very address.

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use ipnet::IpNet;

use crate::RequestOptions;
use crate::workload::{RequestBody, ResponseBody};

/// The Namespace annotation listing where its pods may send requests
/// outside the cluster.
pub const EGRESS_ALLOW_ANNOTATION: &str = "flotilla.dev/egress-allow";

/// Connecting outside takes at most this long unless the guest asks for
/// less: a destination that does not answer fails the request instead of
/// holding an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of the answer, likewise.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two bytes of the answer, likewise.
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// One entry of an allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Host(String),
    /// `*.example.com`: any name under it (not the name itself).
    Suffix(String),
    Network(IpNet),
}

/// A namespace's egress allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Allowed>);

impl AllowList {
    /// Parses the annotation's value; entries that are none of the forms
    /// are skipped (and logged).
    pub fn parse(text: &str) -> Self {
        let entries = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let entry = entry.to_ascii_lowercase();
                if let Ok(network) = entry.parse::<IpNet>() {
                    return Some(Allowed::Network(network));
                }
                if let Ok(ip) = entry.parse::<IpAddr>() {
                    return Some(Allowed::Network(IpNet::from(ip)));
                }
                if let Some(suffix) = entry.strip_prefix("*.") {
                    return Some(Allowed::Suffix(format!(".{suffix}")));
                }
                if entry
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Some(Allowed::Host(entry));
                }
                tracing::warn!(
                    entry,
                    "egress allow-list entry is not a host, wildcard or CIDR"
                );
                None
            })
            .collect();
        Self(entries)
    }

    /// Whether `host` (a name or an address) is allowed. An address is
    /// read as its IPv4 form when it is an IPv4-mapped IPv6 one.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        self.0.iter().any(|entry| match (entry, address) {
            (Allowed::Network(network), Some(ip)) => network.contains(&ip),
            (Allowed::Host(name), None) => name.eq_ignore_ascii_case(host),
            (Allowed::Suffix(suffix), None) => host.to_ascii_lowercase().ends_with(suffix.as_str()),
            _ => false,
        })
    }

    /// Whether an entry is `ip` alone (an address, or a `/32` or `/128`).
    pub fn names_exactly(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|entry| match entry {
            Allowed::Network(network) => {
                network.prefix_len() == network.max_prefix_len()
                    && network.addr().to_canonical() == ip.to_canonical()
            }
            _ => false,
        })
    }
}

/// Whether `ip` is an address of the host a guest runs on rather than of
/// a destination outside: loopback (all of 127/8 and ::1), unspecified
/// (0.0.0.0/8, ::), link-local (169.254/16, fe80::/10, where cloud
/// metadata services answer), the limited broadcast, and IPv4-compatible
/// IPv6 (::/96). IPv4-mapped IPv6 is read as its IPv4 form.
pub fn host_only(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.octets()[0] == 0 || v4.is_link_local() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
                || v6.segments()[..6] == [0; 6]
        }
    }
}

/// Sends `request` to `host:port` outside the cluster, over TLS when its
/// scheme is `https`. The URI and `Host` header are rebuilt from what was
/// checked.
pub(super) async fn send(
    host: &str,
    port: u16,
    mut request: http::Request<RequestBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<ResponseBody>, wasmtime_wasi_http::Error> {
    let scheme = match request.uri().scheme_str() {
        Some("https") => "https",
        _ => "http",
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    *request.uri_mut() = format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    let host_header = http::HeaderValue::from_str(&authority)
        .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
    request
        .headers_mut()
        .insert(http::header::HOST, host_header);
    let bounded =
        |asked: Option<Duration>, most: Duration| Some(asked.map_or(most, |a| a.min(most)));
    let options = RequestOptions {
        connect_timeout: bounded(options.and_then(|o| o.connect_timeout), CONNECT_TIMEOUT),
        first_byte_timeout: bounded(
            options.and_then(|o| o.first_byte_timeout),
            FIRST_BYTE_TIMEOUT,
        ),
        between_bytes_timeout: bounded(
            options.and_then(|o| o.between_bytes_timeout),
            BETWEEN_BYTES_TIMEOUT,
        ),
    };
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
    // The request body is written by this future; it ends with the exchange.
    tokio::spawn(async move {
        if let Err(error) = io.await {
            tracing::debug!(%error, "egress request body failed");
        }
    });
    Ok(response.map(|body| body.boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_name_hosts_wildcards_and_networks() {
        let list = AllowList::parse(
            "api.example.com, *.cdn.example, 203.0.113.0/24, 127.0.0.9, not a host",
        );
        for (host, allowed) in [
            ("api.example.com", true),
            ("API.example.com", true),
            ("www.example.com", false),
            ("a.cdn.example", true),
            ("cdn.example", false),
            ("203.0.113.77", true),
            ("203.0.114.1", false),
            ("127.0.0.9", true),
            ("127.0.0.8", false),
            ("[::1]", false),
        ] {
            assert_eq!(list.allows(host), allowed, "{host}");
        }
        assert!(!AllowList::default().allows("api.example.com"));
    }
}
