//! `GET pods/<name>/log`: the API server proxies the request to the agent
//! of the pod's node, as kube-apiserver does to the kubelet, and streams
//! the answer back (so `kubectl logs -f` follows).
//!
//! The agent serves `GET /containerLogs/<namespace>/<pod>/<container>` on
//! the port its Node reports in `status.daemonEndpoints.kubeletEndpoint`,
//! at its `InternalIP` (or `Hostname`) address, with the query parameters
//! below passed through. An agent that joined with a token serves HTTPS
//! with its node certificate, and the API server presents its own; one
//! without serves plain HTTP and is only reached on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::ApiState;
use super::objects;
use super::path::Target;
use super::request::Params;
use super::status::ApiError;
use crate::resources::registry;

/// The log options Kubernetes' `PodLogOptions` defines, passed on as given.
const PASSED_THROUGH: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];
/// How long the node's agent may take to accept the connection and answer
/// with headers; a followed stream then runs as long as the client reads.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn proxy(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
) -> Result<Response, ApiError> {
    let pod_target = Target {
        info: target.info,
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        subresource: None,
    };
    let pod = objects::get(state, &pod_target).await?.body;
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let container = container(&pod, &name, params.get("container"))?;
    for integer in ["tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(value) = params.integer(integer)?
            && value < 0
        {
            return Err(ApiError::bad_request(format!(
                "{integer}: Invalid value: {value}: must be greater than or equal to 0"
            )));
        }
    }
    let node_name = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let nodes = registry()
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("the nodes resource is not served"))?;
    let node_target = Target {
        info: nodes,
        namespace: None,
        name: Some(node_name.to_string()),
        subresource: None,
    };
    let node = objects::get(state, &node_target).await?.body;
    let (scheme, address) = kubelet_address(&node, node_name)?;

    let mut query: Vec<String> = PASSED_THROUGH
        .iter()
        .filter_map(|key| {
            params
                .get(key)
                .map(|value| format!("{key}={}", encode(value)))
        })
        .collect();
    query.sort();
    let path = format!(
        "/containerLogs/{namespace}/{name}/{container}{}{}",
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let span = tracing::debug_span!("logs", node = node_name, %address, %path);
    let _entered = span.enter();
    let unreachable = |error: &dyn std::fmt::Display| {
        ApiError::unavailable(format!(
            "the agent of node {node_name} at {address} did not answer: {error}"
        ))
    };
    let stream = tokio::time::timeout(NODE_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
    let request = hyper::Request::get(&path)
        .header(hyper::header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = match scheme {
        Scheme::Https => {
            let connector = state.kubelet_tls.as_ref().ok_or_else(|| {
                ApiError::unavailable(format!(
                    "node {node_name} serves HTTPS, and this API server, serving plain HTTP, \
                     has no certificate to present to it"
                ))
            })?;
            let server_name = rustls_pki_types::ServerName::from(address.ip());
            let stream = tokio::time::timeout(NODE_TIMEOUT, connector.connect(server_name, stream))
                .await
                .map_err(|e| unreachable(&e))?
                .map_err(|e| unreachable(&e))?;
            send(stream, request).await
        }
        Scheme::Http => send(stream, request).await,
    }
    .map_err(|e| unreachable(&e))?;
    let status = response.status();
    if !status.is_success() {
        // The agent says what is wrong (no such container, no previous
        // run); pass its words on with its code.
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_string();
        return Err(ApiError::from_node(status, message));
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        Body::new(response.into_body()),
    )
        .into_response())
}

/// Sends `request` on `stream` (HTTP/1.1) and waits for the answer's head.
async fn send<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    tokio::time::timeout(NODE_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// How a node's agent serves: HTTPS once it joined with a token (the
/// node's [`KUBELET_SCHEME_ANNOTATION`]), plain HTTP on loopback before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The annotation agents set on their Node (see `flotilla-node`).
const KUBELET_SCHEME_ANNOTATION: &str = "flotilla.dev/kubelet-scheme";

/// The container to read: the one named, or the only one.
fn container<'p>(pod: &'p Value, name: &str, wanted: Option<&'p str>) -> Result<&'p str, ApiError> {
    let names: Vec<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match wanted {
        Some(wanted) if names.contains(&wanted) => Ok(wanted),
        Some(wanted) => Err(ApiError::bad_request(format!(
            "container {wanted} is not valid for pod {name}"
        ))),
        None => {
            let regular: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match regular.as_slice() {
                [only] => Ok(only),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    regular.join(" ")
                ))),
            }
        }
    }
}

/// How and where the node's agent serves logs.
fn kubelet_address(node: &Value, node_name: &str) -> Result<(Scheme, SocketAddr), ApiError> {
    let scheme = match node["metadata"]["annotations"][KUBELET_SCHEME_ANNOTATION].as_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ApiError::unavailable(format!("node {node_name} reports no agent endpoint"))
        })?;
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .filter(|a| a["type"].as_str() == Some(kind))
                .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
        })
        .ok_or_else(|| ApiError::unavailable(format!("node {node_name} reports no address")))?;
    if scheme == Scheme::Http && !ip.is_loopback() {
        return Err(ApiError::unavailable(format!(
            "node {node_name} is at {ip} and serves plain HTTP: reading logs from a node off \
             this machine needs the node to join with a token, which gives it a certificate"
        )));
    }
    Ok((scheme, SocketAddr::new(ip, port)))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        assert_eq!(container(&one, "p", None).unwrap(), "web");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "init"}]}});
        let error = container(&two, "p", None).unwrap_err();
        assert_eq!(
            error.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(container(&two, "p", Some("init")).unwrap(), "init");
        assert_eq!(
            container(&two, "p", Some("c")).unwrap_err().message,
            "container c is not valid for pod p"
        );
    }

    #[test]
    fn the_agent_is_found_by_address_and_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        }});
        assert_eq!(
            kubelet_address(&node, "n1").unwrap(),
            (Scheme::Http, "127.0.0.1:10250".parse().unwrap())
        );
        let mut remote = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        }});
        assert!(
            kubelet_address(&remote, "n2")
                .unwrap_err()
                .message
                .contains("join with a token")
        );
        remote["metadata"] = json!({"annotations": {KUBELET_SCHEME_ANNOTATION: "https"}});
        assert_eq!(
            kubelet_address(&remote, "n2").unwrap(),
            (Scheme::Https, "10.0.0.7:10250".parse().unwrap())
        );
        assert!(kubelet_address(&json!({}), "n3").is_err());
        assert_eq!(encode("2026-01-01T00:00:00Z"), "2026-01-01T00%3A00%3A00Z");
    }
}
