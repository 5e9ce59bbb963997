//! What a guest knows about the pod it runs in.
//!
//! The node passes nothing implicitly: these values exist only when the pod
//! spec sets them as environment variables (the usual Kubernetes downward-API
//! names `POD_NAME`, `POD_NAMESPACE`, `POD_IP`, set with `fieldRef`).

/// Environment variable that names the pod (downward API `metadata.name`).
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Environment variable that names the pod's namespace (`metadata.namespace`).
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The pod's name, or `"unknown"` when the spec does not pass it.
pub fn name() -> String {
    env(POD_NAME_ENV).unwrap_or_else(|| "unknown".to_owned())
}

/// The pod's namespace, or `"default"` when the spec does not pass it.
pub fn namespace() -> String {
    env(POD_NAMESPACE_ENV).unwrap_or_else(|| "default".to_owned())
}

/// One environment variable from the container spec, if it is set and UTF-8.
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}
