//! `flotilla-control` is Flotilla's control plane: the Kubernetes API server
//! (axum) on top of `flotilla-raft-store`, the scheduler, the controllers and
//! the module registry.
//!
//! **Architecture invariant:** the control plane knows nothing of wasmtime.
//! It decides where pods run; the node agent decides how.
//!
//! Not built yet: this crate is a placeholder in the workspace so that the
//! layout is fixed from the first commit.
