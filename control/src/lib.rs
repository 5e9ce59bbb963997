//! `flotilla-control` is Flotilla's control plane: the Kubernetes API server
//! (axum) on top of `flotilla-raft-store`, the elected control loops
//! (`controllers`) that act on what it stores, and the module `registry`
//! (Wasm modules by digest, replicated in the same store). Every request is
//! authenticated and authorized by `auth` (certificates and ServiceAccount
//! tokens; RBAC and the Node authorizer) before anything else runs, and
//! recorded by `audit` when an `audit.k8s.io/v1` Policy asks for it.
//!
//! Objects are the `k8s-openapi` types, handled as JSON and checked against
//! their types; they are stored under `/registry/<resource>/<namespace>/<name>`
//! and their `resourceVersion` is the store's revision.
//!
//! **Architecture invariant:** the control plane knows nothing of wasmtime.
//! It decides where pods run; the node agent decides how. It reaches the
//! store only through `storage`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod controllers;
pub mod encryption;
pub mod fence;
pub mod join;
pub mod registry;
pub mod resources;
pub mod server;
pub mod storage;
pub mod tls;

pub use server::{Server, ServerConfig, ServerError, ServerOptions, kubeconfig};
