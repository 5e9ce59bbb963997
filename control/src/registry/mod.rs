//! The module registry: Wasm modules stored in the cluster, content-addressed
//! by sha256, so a pod always runs exactly the bytes it was created with.
//!
//! - `reference`: `name:tag`, `name@sha256:…` and the [`Digest`].
//! - `wasm`: the header check a push passes before anything is stored.
//! - `blobs`: the layout in raft-store (chunks, manifests, tags), through
//!   [`Storage`](crate::storage::Storage) like every other write, so a
//!   module is replicated as the objects are.
//! - `http`: the endpoints under `/flotilla/registry/v1/` on the API server.
//! - `admission`: a Pod being created gets its images pinned to digests.
//! - `client`: `push`, `resolve`, `list` and `fetch` over a kube-rs client,
//!   for the CLI and the tests.
//!
//! The registry knows nothing of wasmtime (it checks a header, not whether
//! a module compiles) and nothing of nodes: agents fetch blobs over HTTP and
//! verify their digests themselves.

mod admission;
mod blobs;
pub mod client;
pub mod http;
pub mod reference;
pub mod wasm;

use std::time::Duration;

pub use admission::admit;
pub use blobs::{BlobWriter, Blobs, CHUNK_BYTES, Manifest, TagEntry};
pub use client::{ClientError, Pushed, fetch, list, push, push_file, resolve};
pub use reference::{Digest, Reference, ReferenceError};
pub use wasm::NotWasm;

use crate::storage::StorageError;

/// The largest module the registry stores, in bytes: the same bound as the
/// node's `flotilla_node::MODULE_BYTES_MAX` (256 MiB), which the agent
/// applies when it downloads (`node` does not depend on `control`, so the
/// number is written twice and a node test checks they agree). Real
/// components are a few MiB.
pub const MODULE_BYTES_MAX: u64 = 256 << 20;

/// Uploads served at once. Each holds one chunk (1 MiB) in memory and
/// keeps the store busy with writes; more would queue behind the store.
pub const UPLOADS_CONCURRENT_MAX: usize = 4;

/// How long an upload waits for one of the [`UPLOADS_CONCURRENT_MAX`]
/// slots before it is refused with 429.
pub const UPLOAD_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// How long one upload may take from its first byte to its last: 256 MiB
/// at a slow 1 MiB/s fits, and a stalled client cannot hold a slot forever.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// How the registry behaves on this server.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Whether pods may name `file://` images (a path on the node). Only
    /// `flotilla up`, where the server and the node are one process on one
    /// machine, sets it; elsewhere such a path means nothing to the node.
    pub allow_file_images: bool,
}

/// The registry's share of the API server's state.
#[derive(Debug)]
pub struct ModuleRegistry {
    pub config: RegistryConfig,
    uploads: tokio::sync::Semaphore,
}

impl ModuleRegistry {
    pub fn new(config: RegistryConfig) -> Self {
        ModuleRegistry {
            config,
            uploads: tokio::sync::Semaphore::new(UPLOADS_CONCURRENT_MAX),
        }
    }
}

impl Default for ModuleRegistry {
    fn default() -> Self {
        ModuleRegistry::new(RegistryConfig::default())
    }
}

/// What a registry operation can run into. Each maps to one HTTP status
/// in `http`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotWasm(#[from] NotWasm),
    #[error("the module is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the uploaded bytes hash to {actual}, not to {expected} as the request says")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{digest} is not in the registry")]
    BlobNotFound { digest: Digest },
    #[error("{name}:{tag} is not in the registry")]
    TagNotFound { name: String, tag: String },
    /// The store holds something the registry did not write as it is.
    #[error("the stored {what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    /// Another writer changed the same key at the same moment, every time.
    #[error("{key} kept changing under concurrent writers; try again")]
    Contended { key: String },
    #[error("{0}")]
    Storage(#[from] StorageError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    fn corrupt(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        RegistryError::Corrupt {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}
