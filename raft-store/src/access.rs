//! Who may use the client protocol, by the name on their certificate.
//!
//! Every certificate the cluster CA signs can reach a member's QUIC port,
//! and the CA signs more than the store's own: whoever runs the store says
//! which names may read and write, and which may change the membership.
//! The store gives names no meaning beyond these lists.

use crate::error::{Error, Result};
use crate::rpc::{Request, request};
use crate::transport::PeerIdentity;

/// The name [`crate::client::Client::connect`] issues itself: the
/// standalone store's own tools.
pub const STORE_CLIENT_NAME: &str = flotilla_pki::names::STORE_CLIENT;

/// The names allowed each kind of call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAccess {
    /// May read, write, watch, and use leases.
    pub clients: Vec<String>,
    /// May also add and remove members.
    pub membership: Vec<String>,
}

impl Default for ClientAccess {
    /// A standalone store: its own tools may do everything.
    fn default() -> Self {
        ClientAccess {
            clients: vec![STORE_CLIENT_NAME.to_string()],
            membership: vec![STORE_CLIENT_NAME.to_string()],
        }
    }
}

impl ClientAccess {
    /// Whether `peer` may make `request`.
    pub fn check(&self, peer: &PeerIdentity, request: &Request) -> Result<()> {
        let changes_membership = matches!(
            request.kind,
            Some(request::Kind::MemberAdd(_) | request::Kind::MemberRemove(_))
        );
        let (allowed, what) = if changes_membership {
            (&self.membership, "change the store's members")
        } else {
            (&self.clients, "use the store")
        };
        if allowed.contains(&peer.name) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "{:?} may not {what}: the store serves only the control plane",
            peer.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{MemberAddRequest, MemberInfo};

    fn peer(name: &str) -> PeerIdentity {
        PeerIdentity { name: name.into() }
    }

    #[test]
    fn only_the_listed_names_are_served() {
        let access = ClientAccess {
            clients: vec!["join-authority".into(), "api".into()],
            membership: vec!["join-authority".into()],
        };
        let read = Request {
            kind: Some(request::Kind::Range(Default::default())),
        };
        let add = Request {
            kind: Some(request::Kind::MemberAdd(MemberAddRequest {
                member: Some(MemberInfo::default()),
            })),
        };
        assert!(access.check(&peer("api"), &read).is_ok());
        assert!(access.check(&peer("join-authority"), &add).is_ok());
        assert!(access.check(&peer("api"), &add).is_err());
        let refused = access
            .check(&peer("system:node:n1"), &read)
            .expect_err("a node");
        assert!(refused.to_string().contains("system:node:n1"), "{refused}");
    }
}
