//! `flotilla-sdk` is the guest side of Flotilla: a small layer over the WASI
//! 0.2 bindings (the `wasi` crate) for writing workloads that run in a
//! Flotilla pod, compiled for `wasm32-wasip2`.
//!
//! It knows what a guest can see: its environment (which the node fills from
//! the pod spec), its preopened volumes, and the incoming HTTP requests of a
//! `wasi:http/proxy` service. It knows nothing of the node, the cluster or the
//! Kubernetes API.
//!
//! Start with [`http::Handler`] and [`export_http_handler!`] for a service, or
//! an ordinary `fn main` for a process (a `wasi:cli/command`).
//!
//! ```ignore
//! use flotilla_sdk::http::{Handler, Request, Response};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn handle(request: Request) -> Response {
//!         Response::new(200, format!("hello from {}\n", flotilla_sdk::pod::name()))
//!     }
//! }
//!
//! flotilla_sdk::export_http_handler!(Hello);
//! ```

pub mod http;
pub mod pod;

/// The WASI 0.2 bindings this SDK is built on, for what the SDK does not wrap.
pub use wasi;
