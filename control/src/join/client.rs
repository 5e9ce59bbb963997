//! The newcomer's side of a join: fetch the cluster CA without trusting
//! the connection, check it against the token's hash, then present the
//! token over TLS verified with that CA.
//!
//! This module knows HTTP and the token; what the newcomer does with the
//! answer (write a kubeconfig, start a store member) is its caller's.

use http::{Method, Request};
use kube::config::{AuthInfo, Config};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::token::{JoinToken, ca_hash};
use super::{
    JOIN_PATH, JoinError, MemberAddRequest, MemberEntry, NodeJoinRequest, NodeJoinResponse,
    ServerJoinRequest, ServerJoinResponse,
};

/// How long one join call may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks `server` (the API's URL, `https://host:port`) for a node
/// certificate.
pub async fn join_node(
    server: &str,
    token: &JoinToken,
    request: &NodeJoinRequest,
) -> Result<NodeJoinResponse, JoinError> {
    let client = trusted_client(server, token).await?;
    call(&client, server, "node", request).await
}

/// Asks `server` to admit a new server: its member id, the members, the
/// CA. The caller then starts its store member and calls
/// [`add_server_member`].
pub async fn join_server(
    server: &str,
    token: &JoinToken,
    request: &ServerJoinRequest,
) -> Result<ServerJoinResponse, JoinError> {
    let client = trusted_client(server, token).await?;
    call(&client, server, "server", request).await
}

/// Asks `server` to add the store member a running new server started
/// with the id [`join_server`] gave it; the change commits once that
/// member answers.
pub async fn add_server_member(
    server: &str,
    token: &JoinToken,
    request: &MemberAddRequest,
) -> Result<Vec<MemberEntry>, JoinError> {
    let client = trusted_client(server, token).await?;
    call(&client, server, "server/member", request).await
}

/// A client of `server` that trusts only the cluster CA the token names
/// and authenticates with the token.
async fn trusted_client(server: &str, token: &JoinToken) -> Result<kube::Client, JoinError> {
    let ca = fetch_ca(server).await?;
    if ca_hash(&ca).as_deref() != Some(token.ca_hash.as_str()) {
        return Err(JoinError::WrongCa {
            server: server.to_string(),
        });
    }
    let der = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|error| {
        JoinError::Invalid(format!("the CA certificate from {server}: {error}"))
    })?;
    let mut config = config_for(server)?;
    config.root_cert = Some(vec![der.to_vec()]);
    config.auth_info = AuthInfo {
        token: Some(SecretString::from(token.bootstrap())),
        ..AuthInfo::default()
    };
    client_of(server, config)
}

/// The CA certificate, fetched without checking the server's certificate:
/// the caller checks what it gets against the token's hash.
async fn fetch_ca(server: &str) -> Result<String, JoinError> {
    let mut config = config_for(server)?;
    config.accept_invalid_certs = true;
    let client = client_of(server, config)?;
    let request = Request::get(format!("{JOIN_PATH}/ca"))
        .body(Vec::new())
        .map_err(|error| JoinError::Invalid(error.to_string()))?;
    tokio::time::timeout(CALL_TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| unreachable(server, "timed out"))?
        .map_err(|error| unreachable(server, &error.to_string()))
}

async fn call<Q: Serialize, A: DeserializeOwned>(
    client: &kube::Client,
    server: &str,
    what: &'static str,
    body: &Q,
) -> Result<A, JoinError> {
    let body = serde_json::to_vec(body).map_err(|error| JoinError::Invalid(error.to_string()))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{JOIN_PATH}/{what}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|error| JoinError::Invalid(error.to_string()))?;
    match tokio::time::timeout(CALL_TIMEOUT, client.request::<A>(request)).await {
        Err(_) => Err(unreachable(server, "timed out")),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(kube::Error::Api(status))) => Err(JoinError::Refused {
            server: server.to_string(),
            what,
            reason: status.message,
        }),
        Ok(Err(error)) => Err(unreachable(server, &error.to_string())),
    }
}

fn config_for(server: &str) -> Result<Config, JoinError> {
    let url: http::Uri = server
        .parse()
        .map_err(|error| JoinError::Invalid(format!("server URL {server:?}: {error}")))?;
    if url.scheme_str() != Some("https") {
        return Err(JoinError::Invalid(format!(
            "server URL {server:?} must start with https:// (joins need TLS)"
        )));
    }
    Ok(Config::new(url))
}

fn client_of(server: &str, config: Config) -> Result<kube::Client, JoinError> {
    kube::Client::try_from(config).map_err(|error| unreachable(server, &error.to_string()))
}

fn unreachable(server: &str, reason: &str) -> JoinError {
    JoinError::Unreachable {
        server: server.to_string(),
        reason: reason.to_string(),
    }
}
