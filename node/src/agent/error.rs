//! The agent's error type. Errors that end the agent (it cannot start) are
//! variants here; errors inside its loops are logged, counted and retried
//! there, because a node keeps running its pods through them.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the agent could not start or a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kubeconfig could not be read or understood.
    #[error("cannot use kubeconfig {path:?}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    /// The API client could not be built from the configuration.
    #[error("cannot build the API client: {source}")]
    Client { source: kube::Error },
    /// The kubelet endpoint was asked to listen off loopback without TLS.
    #[error(
        "without a node certificate the kubelet endpoint serves plain HTTP, so it listens on \
         loopback only; {address} is not a loopback address (join the cluster with a token to \
         get a certificate)"
    )]
    NotLoopback { address: SocketAddr },
    /// The node's certificate could not be used.
    #[error("the kubelet endpoint's TLS setup failed: {reason}")]
    Tls { reason: String },
    /// The node could not join the pod network's mesh.
    #[error("cannot join the mesh: {source}")]
    Mesh { source: crate::net::MeshError },
    /// The kubelet endpoint could not bind its address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("cannot {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    /// An API call did not answer in time.
    #[error("cannot {action} {object}: no answer within {timeout_secs} s")]
    Timeout {
        action: &'static str,
        object: String,
        timeout_secs: u64,
    },
    /// A request body could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// The host could not be inspected (hostname, memory).
    #[error("cannot read {what} from {path:?}: {source}")]
    Host {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The agent's result type.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// The HTTP status of an API error, if the server answered with one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            AgentError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Runs one API call with a time bound, naming what it did in the error.
/// kube's own timeouts are minutes long (they also bound watches); a
/// single call from a loop must give up sooner so the loop can back off.
pub(crate) async fn call<T>(
    action: &'static str,
    object: impl Into<String>,
    future: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T> {
    let object = object.into();
    let timeout = std::time::Duration::from_secs(API_CALL_TIMEOUT_SECS);
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(AgentError::Api {
            action,
            object,
            source,
        }),
        Err(_) => Err(AgentError::Timeout {
            action,
            object,
            timeout_secs: API_CALL_TIMEOUT_SECS,
        }),
    }
}

/// Bound on one API call from the agent's loops. A healthy server answers
/// in milliseconds; ten seconds covers a leader election in the store.
pub const API_CALL_TIMEOUT_SECS: u64 = 10;
