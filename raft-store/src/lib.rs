//! `flotilla-raft-store` is Flotilla's replicated key-value store: the part of
//! the cluster that etcd is in Kubernetes.
//!
//! It is an MVCC map from byte keys to byte values with one cluster-wide
//! revision, watches, leases and compaction ([`kv`]), replicated by tikv
//! raft-rs ([`replica`]) over a durable log ([`log`]) and a QUIC transport
//! with mutual TLS ([`transport`]).
//!
//! **Architecture invariant:** this crate knows nothing of Kubernetes or Wasm.
//! Keys and values are bytes; what they mean is the caller's business.
//!
//! Start reading at [`member`] for how the parts are wired into one running
//! member, [`replica`] for how a write becomes durable and replicated, and
//! [`kv`] for what a committed write does to the state. Processes that are
//! not members use the store through [`client::Client`].

pub mod access;
pub mod client;
pub mod error;
pub mod kv;
pub mod log;
pub mod member;
pub mod replica;
pub mod rpc;
pub mod server;
pub mod transport;

pub use error::{Error, Result};
