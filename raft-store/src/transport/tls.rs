//! Mutual TLS between members and clients, with identities from
//! `flotilla-pki`: the ALPN every connection negotiates, and who the
//! verified peer of a connection is.
//!
//! Both sides of every connection present a certificate and verify the
//! other's against the cluster CA alone, so a certificate from any other
//! CA is refused. The verified peer's name is the certificate's common
//! name ([`PeerIdentity`]); a member's certificate is named
//! [`member_name`]`(id)`, which is what entitles it to send raft messages.

pub use flotilla_pki::names::member_name;
pub use flotilla_pki::{
    CertificateSubject, ClusterCa, Credentials, certificate_common_name, certificate_subject,
    create_private_dir,
};
use rustls_pki_types::CertificateDer;

use crate::error::MemberId;
use crate::{Error, Result};

/// The ALPN protocol every Flotilla QUIC connection negotiates; a peer that
/// speaks anything else is refused during the handshake.
pub const ALPN_PROTOCOL: &[u8] = b"flotilla/1";

/// Who is on the other end of a connection, as its CA-verified certificate
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The common name of the peer's certificate (the `name` it was issued
    /// for).
    pub name: String,
}

impl PeerIdentity {
    /// The identity of a connection's verified peer. Fails if the peer
    /// presented no certificate, which mutual TLS never lets through.
    pub fn of(connection: &quinn::Connection) -> Result<Self> {
        let certs = connection
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| Error::Transport("peer presented no certificate".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Error::Transport("peer presented an empty chain".into()))?;
        let name = certificate_common_name(leaf.as_ref())
            .ok_or_else(|| Error::Transport("peer certificate has no common name".into()))?;
        Ok(Self { name })
    }

    /// The member id, if this is a member's certificate (named by
    /// [`member_name`]). Only members may send raft messages, and only as
    /// themselves.
    pub fn member_id(&self) -> Option<MemberId> {
        flotilla_pki::names::member_id(&self.name)
    }
}
