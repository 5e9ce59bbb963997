//! The runtime's error type. A case a caller branches on has its own variant;
//! wasmtime's errors are flattened into messages at this boundary because
//! callers report them (in a container state or a response), never inspect them.

use std::path::PathBuf;

/// Errors of the node runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference is not one this node understands.
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidImage { image: String, reason: String },
    /// The module source could not produce the image's bytes.
    #[error("cannot pull image {image:?}: {reason}")]
    ImagePull { image: String, reason: String },
    /// The bytes do not hash to the digest the image names.
    #[error("image {image:?} digest mismatch: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    /// The bytes are not a valid Wasm module or component, or do not compile.
    #[error("invalid module: {reason}")]
    InvalidModule { reason: String },
    /// The component needs an import this node does not provide.
    #[error("cannot link module: {reason}")]
    Link { reason: String },
    /// The component exports neither `wasi:http/incoming-handler` nor `wasi:cli/run`.
    #[error("unsupported workload: {reason}")]
    UnsupportedWorkload { reason: String },
    /// The pod spec asks for something this runtime cannot do.
    #[error("invalid pod spec: {reason}")]
    InvalidSpec { reason: String },
    /// No pod with this uid runs on this node.
    #[error("pod {uid} not found")]
    PodNotFound { uid: String },
    /// A pod with this uid already runs on this node.
    #[error("pod {uid} already exists")]
    PodExists { uid: String },
    /// No container named so in the pod.
    #[error("container {container:?} not found in pod {uid}")]
    ContainerNotFound { uid: String, container: String },
    /// No running service container listens on this port in the pod.
    #[error("no service listening on port {port} in pod {uid}")]
    NoService { uid: String, port: u16 },
    /// The service container exists but cannot take requests now
    /// (starting, backing off or stopping).
    #[error("service on port {port} in pod {uid} is unavailable: {reason}")]
    ServiceUnavailable {
        uid: String,
        port: u16,
        reason: String,
    },
    /// A request to a service did not produce a response in time.
    #[error("request timed out after {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    /// The guest failed while handling a request.
    #[error("guest failed: {reason}")]
    Guest { reason: String },
    /// A host file operation failed.
    #[error("{context} {path:?}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The engine could not be created or configured.
    #[error("engine: {reason}")]
    Engine { reason: String },
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// One line describing a wasmtime error and its causes, outermost first.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
