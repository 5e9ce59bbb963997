//! The join endpoints (`/flotilla/join/v1/…`): the cluster CA for anyone
//! (newcomers check it against their token's hash), and node certificates
//! and store membership for those who present a valid bootstrap token.
//! These are the only paths served over TLS without a client certificate
//! besides the public ones: the token is the credential.

use axum::body::Body;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ApiState;
use super::clock::now;
use super::objects::key;
use super::status::ApiError;
use crate::join::token::{self, Purpose, TOKEN_NAMESPACE};
use crate::join::{JOIN_PATH, JoinError};

/// Largest join request body: a node name and a few addresses.
const JOIN_BODY_MAX: usize = 64 * 1024;

/// Answers `path` (which starts with [`JOIN_PATH`]).
pub async fn route(
    state: &ApiState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(authority) = state.join.clone() else {
        return Err(ApiError::unavailable(
            "this server admits no newcomers: it serves plain HTTP without a cluster CA",
        ));
    };
    let endpoint = path.strip_prefix(JOIN_PATH).unwrap_or_default();
    match (method, endpoint) {
        (&Method::GET, "/ca") => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            authority.ca_pem().to_string(),
        )
            .into_response()),
        (&Method::POST, "/node") => {
            authorize(state, headers, Purpose::Agent).await?;
            let request = read::<crate::join::NodeJoinRequest>(body).await?;
            node_name_is_free(state, &request.node_name).await?;
            tracing::info!(node = %request.node_name, "a node joins");
            let answer = authority.admit_node(&request).map_err(refused)?;
            Ok(json(&answer))
        }
        (&Method::POST, "/server") => {
            authorize(state, headers, Purpose::Server).await?;
            let request = read::<crate::join::ServerJoinRequest>(body).await?;
            tracing::info!(store = %request.store_address, "a server joins");
            let answer = authority.admit_server(&request).await.map_err(refused)?;
            Ok(json(&answer))
        }
        (&Method::POST, "/server/member") => {
            authorize(state, headers, Purpose::Server).await?;
            let request = read::<crate::join::MemberAddRequest>(body).await?;
            let members = authority.add_member(&request).await.map_err(refused)?;
            Ok(json(&members))
        }
        _ => Err(ApiError::no_route(path)),
    }
}

/// A node's new certificate, for the node whose certificate the request
/// presents (already authorized by RBAC: `system:nodes` may post here).
/// Only the holder renews: a user impersonating a node has the wrong
/// certificate, and a ServiceAccount token has none.
pub async fn renew(
    state: &ApiState,
    method: &Method,
    peer: Option<&crate::tls::Peer>,
) -> Result<Response, ApiError> {
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(
            "a certificate is renewed with POST",
        ));
    }
    let Some(authority) = state.join.clone() else {
        return Err(ApiError::unavailable(
            "this server issues no certificates: it serves plain HTTP without a cluster CA",
        ));
    };
    let holder = peer
        .and_then(|peer| peer.certificate.as_deref())
        .and_then(|certificate| flotilla_pki::certificate_info(certificate.as_ref()));
    let node = state.user.node_name();
    let (Some(current), Some(node)) = (holder, node) else {
        return Err(ApiError::forbidden(format!(
            "user {:?} cannot renew a node certificate: only a node, presenting its own \
             certificate, renews it",
            state.user.name
        )));
    };
    if current.subject.common_name != state.user.name {
        return Err(ApiError::forbidden(format!(
            "user {:?} cannot renew node {node:?}'s certificate: only its holder renews it",
            current.subject.common_name
        )));
    }
    let answer = authority.renew_node(node, &current).map_err(refused)?;
    tracing::info!(%node, "a node renewed its certificate");
    Ok(json(&answer))
}

/// A new machine may not take over the name of a registered Node: its
/// certificate would let it act as that node. The name is free again once
/// the Node is deleted (its owner replacing the machine does that).
async fn node_name_is_free(state: &ApiState, name: &str) -> Result<(), ApiError> {
    let nodes = state
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let existing = state
        .storage
        .get(&key(nodes, None, name))
        .await
        .map_err(|error| ApiError::from_storage(error, nodes, name))?;
    if existing.is_some() {
        tracing::warn!(node = %name, "a join asked for the name of a registered node");
        return Err(ApiError::conflict_message(format!(
            "node {name:?} is already registered; a new machine may join under this name \
             once `kubectl delete node {name}` has removed it"
        )));
    }
    Ok(())
}

/// Checks the bootstrap token in `Authorization: Bearer <id>.<secret>`
/// against its Secret in `kube-system`, and that it admits `wanted`.
async fn authorize(state: &ApiState, headers: &HeaderMap, wanted: Purpose) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized_because("a join needs a bootstrap token"))?;
    let (id, secret) = token::parse_bootstrap(presented.trim())
        .map_err(|error| ApiError::unauthorized_because(error.to_string()))?;
    let secrets = state
        .registry
        .find("", "v1", "secrets")
        .ok_or_else(|| ApiError::internal("secrets are not served"))?;
    let stored = state
        .storage
        .get(&key(
            secrets,
            Some(TOKEN_NAMESPACE),
            &token::secret_name(&id),
        ))
        .await
        .map_err(|error| ApiError::from_storage(error, secrets, &token::secret_name(&id)))?;
    let stored: Option<serde_json::Value> = stored
        .map(|stored| serde_json::from_slice(&stored.value))
        .transpose()
        .map_err(|error| ApiError::internal(format!("a stored token is not JSON: {error}")))?;
    let purpose = token::check(&secret, stored.as_ref(), &now()).map_err(|error| {
        tracing::warn!(token = %id, %error, "join refused");
        ApiError::unauthorized_because(error.to_string())
    })?;
    if purpose != wanted {
        let error = token::TokenError::WrongPurpose {
            token: purpose,
            wanted,
        };
        tracing::warn!(token = %id, %error, "join refused");
        return Err(ApiError::forbidden(error.to_string()));
    }
    Ok(())
}

async fn read<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, JOIN_BODY_MAX)
        .await
        .map_err(|_| ApiError::too_large(JOIN_BODY_MAX))?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("malformed join request: {error}")))
}

fn json<T: Serialize>(answer: &T) -> Response {
    axum::Json(answer).into_response()
}

fn refused(error: JoinError) -> ApiError {
    match error {
        JoinError::Invalid(message) => ApiError::bad_request(message),
        JoinError::Store(store) => ApiError::unavailable(format!("the store: {store}")),
        other => ApiError::internal(other.to_string()),
    }
}
