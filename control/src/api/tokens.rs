//! `serviceaccounts/<name>/token`: the TokenRequest subresource, which
//! issues a bound ServiceAccount token (`kubectl create token`). The
//! tokens themselves are `auth::tokens`'.

use serde_json::Value;

use super::objects::{decode, key};
use super::path::Target;
use super::status::{ApiError, FieldError};
use super::{ApiState, Reply};
use crate::auth::tokens::{self, Binding, BoundKind, ObjectRef};

/// Issues a token for the ServiceAccount `target` names.
pub async fn request(
    state: &ApiState,
    target: &Target<'_>,
    body: Value,
) -> Result<Reply, ApiError> {
    let Some(issuer) = &state.tokens else {
        return Err(ApiError::unavailable("this server issues no tokens"));
    };
    let name = target.name.as_deref().unwrap_or_default();
    let namespace = target.namespace.as_deref().unwrap_or("default");
    let request = tokens::parse_request(name, &body)?;
    let account = read(state, "serviceaccounts", namespace, name).await?;
    let account = ObjectRef {
        name: name.to_string(),
        uid: uid(&account),
    };
    let bound = match &request.bound {
        None => None,
        Some(binding) => Some((
            binding.kind,
            bound_object(state, target, namespace, binding).await?,
        )),
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let claims = tokens::claims(namespace, account, bound, &request, now);
    let expires = k8s_openapi::jiff::Timestamp::from_second(claims.exp)
        .map(|at| format!("{at:.0}"))
        .map_err(|error| ApiError::internal(format!("the token's expiry: {error}")))?;
    let token = issuer
        .signer
        .sign(&claims)
        .map_err(|error| ApiError::internal(error.to_string()))?;
    tracing::debug!(%namespace, account = %name, jti = %claims.jti, "issued a token");
    Ok(Reply::created(tokens::answer(
        body, &request, token, expires,
    )))
}

/// The object a token is to be bound to, checked as Kubernetes checks
/// it: it exists (with the uid given, if one was); a Pod runs as the
/// ServiceAccount the token is for. Secrets are the ServiceAccount's
/// namespace's; Nodes are cluster-wide.
async fn bound_object(
    state: &ApiState,
    target: &Target<'_>,
    namespace: &str,
    binding: &Binding,
) -> Result<ObjectRef, ApiError> {
    let name = target.name.as_deref().unwrap_or_default();
    let refuse = |message: String| {
        let error = FieldError::invalid("spec.boundObjectRef", message);
        ApiError::invalid(target.info, name, vec![error])
    };
    let object = match binding.kind {
        BoundKind::Pod => read(state, "pods", namespace, &binding.name).await?,
        BoundKind::Secret => read(state, "secrets", namespace, &binding.name).await?,
        BoundKind::Node => read(state, "nodes", "", &binding.name).await?,
    };
    let uid = uid(&object);
    if binding.uid.as_ref().is_some_and(|wanted| *wanted != uid) {
        return Err(refuse(format!(
            "{:?} {:?} has another uid",
            binding.kind, binding.name
        )));
    }
    if binding.kind == BoundKind::Pod {
        let runs_as = object["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        if runs_as != name {
            return Err(refuse(format!(
                "pod {:?} runs as service account {runs_as:?}, not {name:?}",
                binding.name
            )));
        }
    }
    Ok(ObjectRef {
        name: binding.name.clone(),
        uid,
    })
}

async fn read(
    state: &ApiState,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let info = state
        .registry
        .find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let stored = state
        .storage
        .get(&key(info, Some(namespace), name))
        .await
        .map_err(|error| ApiError::from_storage(error, info, name))?
        .ok_or_else(|| ApiError::not_found(info, name))?;
    decode(&stored)
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
