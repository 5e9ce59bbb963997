//! QUIC transport between members and for clients, with mutual TLS from the
//! cluster CA.
//!
//! - [`tls`]: the cluster CA, member and client certificates, rustls configs,
//!   and the verified [`PeerIdentity`] of a connection.
//! - [`frame`]: length-delimited frames with size limits, and prost helpers
//!   the client protocol is built on.
//! - [`quic`]: [`QuicEndpoint`], one UDP port per process that serves raft
//!   streams (to a bounded inbound channel) and client-protocol streams (to a
//!   registered [`ClientHandler`]) and connects out.
//! - [`peer`]: [`PeerNetwork`], the [`crate::replica::Network`] over QUIC.
//!
//! This module knows nothing of the key-value state or of raft's logic: it
//! moves raft messages and client streams between processes.
//!
//! Wiring a member (inside a tokio runtime):
//!
//! ```no_run
//! # async fn wire() -> flotilla_raft_store::Result<()> {
//! use std::sync::Arc;
//! use flotilla_raft_store::replica::Network;
//! use flotilla_raft_store::transport::{
//!     ClusterCa, Inbound, PeerNetwork, QuicEndpoint, member_name,
//! };
//!
//! let ca = ClusterCa::generate()?;
//! // Only certificates named member_name(id) may send raft messages (as `id`).
//! let credentials = ca.issue(&member_name(1), &["127.0.0.1".into(), "localhost".into()])?;
//! let (raft_in, mut raft_messages) = tokio::sync::mpsc::channel(4096);
//! let inbound = Inbound {
//!     raft: Some(raft_in),
//!     client: Some(Arc::new(|peer, mut send: quinn::SendStream, _recv| async move {
//!         let _ = (peer, send.finish());
//!     })),
//! };
//! let endpoint = QuicEndpoint::bind("127.0.0.1:0".parse().expect("address"), &credentials, inbound)?;
//! let (network, mut reports) = PeerNetwork::new(endpoint.clone());
//! network.set_peer_address(2, "127.0.0.1:7001".into());
//! # Ok(()) }
//! ```

pub mod frame;
pub mod peer;
pub mod quic;
pub mod tls;

pub use frame::{
    CLIENT_FRAME_BYTES_MAX, RAFT_FRAME_BYTES_MAX, encode_frame, read_frame, read_message,
    write_frame, write_message,
};
pub use peer::{PeerNetwork, PeerReport};
pub use quic::{ClientHandler, Inbound, QuicEndpoint, RaftEnvelope, TransportStats};
pub use tls::{
    CertificateSubject, ClusterCa, Credentials, PeerIdentity, certificate_common_name,
    certificate_subject, create_private_dir, member_name,
};
