//! The namespaces every cluster starts with, and what deleting a namespace
//! does: everything in it is deleted, then the namespace itself.

use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use super::ApiState;
use super::objects::key;
use super::path::Target;
use super::request::Params;
use crate::resources::registry;
use crate::storage::StorageError;

/// Namespaces Kubernetes creates at start.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Passes over a terminating namespace's content before it is left for a
/// later delete to retry; objects held by finalizers keep it Terminating.
const CLEANUP_PASSES_MAX: u32 = 10;
const CLEANUP_PAUSE_INITIAL: Duration = Duration::from_millis(50);
const CLEANUP_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Creates the system namespaces that do not exist yet.
pub async fn bootstrap(state: &ApiState) -> Result<(), StorageError> {
    let Some(namespaces) = registry().find("", "v1", "namespaces") else {
        return Ok(());
    };
    for name in SYSTEM_NAMESPACES {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": super::clock::now(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        let bytes = serde_json::to_vec(&object).unwrap_or_default();
        match state
            .storage
            .create(&key(namespaces, None, name), bytes)
            .await
        {
            Ok(_) | Err(StorageError::AlreadyExists) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Deletes what is in `namespace`, then the namespace, in the background.
pub fn spawn_cleanup(state: ApiState, namespace: String) {
    let span = tracing::info_span!("namespace_cleanup", %namespace);
    let cleanup = async move {
        let mut pause = CLEANUP_PAUSE_INITIAL;
        for _ in 0..CLEANUP_PASSES_MAX {
            match cleanup_pass(&state, &namespace).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "namespace cleanup pass failed"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(CLEANUP_PAUSE_MAX);
        }
        tracing::warn!("namespace still has content held by finalizers; it stays Terminating");
    };
    tokio::spawn(cleanup.instrument(span));
}

/// One pass; true when the namespace is gone.
async fn cleanup_pass(state: &ApiState, namespace: &str) -> Result<bool, String> {
    let no_options = json!({});
    let mut left = false;
    for info in registry().stored().filter(|info| info.namespaced) {
        let collection = Target {
            info,
            namespace: Some(namespace.to_string()),
            name: None,
            subresource: None,
        };
        // Immediate: the namespace is going, so its pods' grace ends now.
        let mut params = Params::default();
        params.0.insert("gracePeriodSeconds".into(), "0".into());
        let reply = super::list::delete_collection(state, &collection, &params, &no_options)
            .await
            .map_err(|error| error.to_string())?;
        left |= reply.body["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|item| !item["metadata"]["finalizers"].is_null())
        });
    }
    if left {
        return Ok(false);
    }
    let namespaces = registry()
        .find("", "v1", "namespaces")
        .ok_or("namespaces are not served")?;
    let key = key(namespaces, None, namespace);
    let stored = match state.storage.get(&key).await.map_err(|e| e.to_string())? {
        Some(stored) => stored,
        None => return Ok(true),
    };
    match state.storage.delete(&key, stored.mod_revision).await {
        Ok(_) | Err(StorageError::NotFound) => Ok(true),
        Err(StorageError::Conflict { .. }) => Ok(false),
        Err(error) => Err(error.to_string()),
    }
}
