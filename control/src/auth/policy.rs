//! Puts the bootstrap policy (`bootstrap.rs`) in the store when a server
//! starts, as kube-apiserver's RBAC post-start hook does: a default object
//! that is missing is created; one that differs is brought back to the
//! default only while its `rbac.authorization.kubernetes.io/autoupdate`
//! annotation is not `false`, so an administrator who changed a default
//! role on purpose keeps the change.

use serde::Serialize;
use serde_json::{Value, json};

use super::bootstrap::{self, AUTOUPDATE_ANNOTATION};
use crate::api::ApiState;
use crate::api::objects::{decode, key};
use crate::resources::registry;
use crate::storage::StorageError;

/// Writes every default ClusterRole and ClusterRoleBinding not yet as the
/// policy has it.
pub async fn reconcile(state: &ApiState) -> Result<(), StorageError> {
    for role in bootstrap::cluster_roles() {
        put(state, "clusterroles", &role, &["rules", "aggregationRule"]).await?;
    }
    for binding in bootstrap::cluster_role_bindings() {
        put(
            state,
            "clusterrolebindings",
            &binding,
            &["roleRef", "subjects"],
        )
        .await?;
    }
    Ok(())
}

/// Creates `object` or, when `fields` differ and the stored one allows
/// it, updates them. A role the aggregation controller fills keeps the
/// rules it was given.
async fn put(
    state: &ApiState,
    plural: &str,
    object: &impl Serialize,
    fields: &[&str],
) -> Result<(), StorageError> {
    let Some(info) = registry().find("rbac.authorization.k8s.io", "v1", plural) else {
        return Ok(());
    };
    let mut wanted = serde_json::to_value(object).unwrap_or(Value::Null);
    let name = wanted["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = key(info, None, &name);
    let Some(stored) = state.storage.get(&key).await? else {
        wanted["apiVersion"] = json!(info.api_version());
        wanted["kind"] = json!(info.kind);
        wanted["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        wanted["metadata"]["creationTimestamp"] = json!(crate::api::clock::now());
        let bytes = serde_json::to_vec(&wanted).unwrap_or_default();
        return match state.storage.create(&key, bytes).await {
            Ok(_) | Err(StorageError::AlreadyExists) => Ok(()),
            Err(error) => Err(error),
        };
    };
    let Ok(mut current) = decode(&stored) else {
        return Ok(());
    };
    let frozen =
        current["metadata"]["annotations"][AUTOUPDATE_ANNOTATION].as_str() == Some("false");
    let aggregated = !wanted["aggregationRule"].is_null();
    let differs = fields
        .iter()
        .filter(|field| !(aggregated && **field == "rules"))
        .any(|field| current[*field] != wanted[*field]);
    if frozen || !differs {
        return Ok(());
    }
    for field in fields {
        if !(aggregated && *field == "rules") {
            current[*field] = wanted[*field].clone();
        }
    }
    if let Some(metadata) = current["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&current).unwrap_or_default();
    match state.storage.update(&key, bytes, stored.mod_revision).await {
        // Another server reconciled it meanwhile.
        Ok(_) | Err(StorageError::Conflict { .. }) | Err(StorageError::NotFound) => Ok(()),
        Err(error) => Err(error),
    }
}
