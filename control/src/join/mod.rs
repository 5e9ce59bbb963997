//! Joining a cluster. A new server or agent presents a join token
//! ([`token`]) to any server and receives what makes it part of the
//! cluster:
//!
//! - an agent: a node certificate from the cluster CA (`system:node:<name>`,
//!   valid for its addresses), which it uses as a client of the API and to
//!   serve its kubelet endpoint over TLS;
//! - a server: a raft-store member id (the member is added to the store
//!   before the answer), the current members, and the cluster CA with its
//!   key, so that it can issue certificates as every server does.
//!
//! The newcomer first fetches the CA certificate without trusting the
//! connection and checks it against the hash its token carries; only then
//! does it send the token's secret, over TLS verified with that CA
//! ([`client`]).
//!
//! This module knows certificates and store membership; the HTTP routes
//! are `api::join`.

pub mod client;
pub mod token;

use std::net::SocketAddr;

use flotilla_pki::{ClusterCa, Credentials};
use flotilla_raft_store::client::Client as StoreClient;
use serde::{Deserialize, Serialize};

/// The name on the certificate a server's join authority presents to the
/// store: the only client of the store's protocol a server allows, and the
/// only one that may change its members.
pub const AUTHORITY_NAME: &str = flotilla_pki::names::JOIN_AUTHORITY;
/// Path prefix of the join endpoints on the API server.
pub const JOIN_PATH: &str = "/flotilla/join/v1";
/// Where a node, presenting its current certificate, gets a new one before
/// that expires. Authenticated and authorized as any API request, not by a
/// bootstrap token.
pub const RENEWAL_PATH: &str = "/flotilla/join/v1/node/renew";
/// Common-name prefix of node certificates, as Kubernetes names nodes.
pub const NODE_USER_PREFIX: &str = flotilla_pki::names::NODE_PREFIX;
/// Longest node name (a DNS subdomain).
const NODE_NAME_MAX: usize = 253;
/// Addresses one node certificate may name.
const NODE_ADDRESSES_MAX: usize = 16;
/// Store members a cluster may grow to through joins.
const MEMBERS_MAX: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Token(#[from] token::TokenError),
    #[error("{0}")]
    Invalid(String),
    #[error("the cluster CA certificate at {server} does not match the token's hash")]
    WrongCa { server: String },
    #[error("could not reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("{server} refused to admit this {what}: {reason}")]
    Refused {
        server: String,
        what: &'static str,
        reason: String,
    },
    #[error("the store: {0}")]
    Store(#[from] flotilla_raft_store::Error),
    #[error("issuing a certificate: {0}")]
    Certificate(#[from] flotilla_pki::Error),
}

/// What an agent asks for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeJoinRequest {
    pub node_name: String,
    /// IP addresses and DNS names the API server reaches the node at.
    pub addresses: Vec<String>,
}

/// What an agent receives at join and renewal: the CA, its certificate
/// and key (JSON fields `ca`, `cert`, `key`).
pub type NodeJoinResponse = Credentials;

/// What a server asks for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinRequest {
    /// The address other members reach its store at (`host:port`, UDP).
    pub store_address: String,
}

/// A running new server's request to become a store member.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberAddRequest {
    pub id: u64,
    pub store_address: String,
}

/// One store member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub id: u64,
    pub address: String,
}

/// What a server receives.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJoinResponse {
    pub id: u64,
    pub members: Vec<MemberEntry>,
    pub ca: String,
    pub ca_key: String,
    /// The key ServiceAccount tokens are signed with, which every server
    /// shares so that each checks the others' tokens (PEM).
    #[serde(default)]
    pub service_account_key: String,
}

/// A server's power to admit newcomers: the cluster CA and a client of
/// the store (which follows leader hints, as membership changes must go
/// through the raft leader).
pub struct Authority {
    ca: std::sync::Arc<ClusterCa>,
    store: StoreClient,
    service_account_key: String,
    /// How long node certificates are valid.
    node_validity: std::time::Duration,
}

impl Authority {
    /// `member`: this server's own store member, the first one asked.
    pub fn new(ca: std::sync::Arc<ClusterCa>, member: SocketAddr) -> Result<Authority, JoinError> {
        let credentials = ca.issue(AUTHORITY_NAME, &["localhost".to_string()])?;
        let store = StoreClient::with_credentials(vec![member.to_string()], &credentials)?;
        Ok(Authority {
            ca,
            store,
            service_account_key: String::new(),
            node_validity: flotilla_pki::CERTIFICATE_VALIDITY_DEFAULT,
        })
    }

    /// Node certificates valid for `validity` (the cluster's signing
    /// duration) rather than a year.
    pub fn with_node_validity(mut self, validity: std::time::Duration) -> Self {
        self.node_validity = validity;
        self
    }

    /// The ServiceAccount token key (PEM) a joining server receives.
    pub fn with_service_account_key(mut self, pem: &str) -> Self {
        self.service_account_key = pem.to_string();
        self
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A node certificate for `request`, checked first.
    pub fn admit_node(&self, request: &NodeJoinRequest) -> Result<NodeJoinResponse, JoinError> {
        check_node_name(&request.node_name)?;
        if request.addresses.len() > NODE_ADDRESSES_MAX {
            return Err(JoinError::Invalid(format!(
                "a node may name at most {NODE_ADDRESSES_MAX} addresses"
            )));
        }
        let mut names = request.addresses.clone();
        names.push(request.node_name.clone());
        names.sort();
        names.dedup();
        self.issue_node(&request.node_name, &names)
            .map_err(|error| JoinError::Invalid(format!("the node's addresses: {error}")))
    }

    /// A new certificate for node `node_name`, which presented `current`
    /// (its certificate, verified): the same names, a new key, valid from
    /// now. A node renews its own certificate only, and cannot add names
    /// to it: those were checked when it joined.
    pub fn renew_node(
        &self,
        node_name: &str,
        current: &flotilla_pki::CertificateInfo,
    ) -> Result<NodeJoinResponse, JoinError> {
        check_node_name(node_name)?;
        if current.subject.common_name != format!("{NODE_USER_PREFIX}{node_name}") {
            return Err(JoinError::Invalid(format!(
                "the certificate presented is {:?}'s, not node {node_name:?}'s",
                current.subject.common_name
            )));
        }
        Ok(self.issue_node(node_name, &current.names)?)
    }

    fn issue_node(
        &self,
        node_name: &str,
        names: &[String],
    ) -> Result<Credentials, flotilla_pki::Error> {
        self.ca.issue_valid_for(
            &format!("{NODE_USER_PREFIX}{node_name}"),
            Some(crate::auth::user::NODES),
            names,
            self.node_validity,
        )
    }

    /// Admits a new server: the member id it is to start its store member
    /// with (the one already at its address, when it asks again), the
    /// current members, and the CA. The member is added by
    /// [`Authority::add_member`] once it runs: a store of one member that
    /// added a second before the second could answer would have no quorum.
    pub async fn admit_server(
        &self,
        request: &ServerJoinRequest,
    ) -> Result<ServerJoinResponse, JoinError> {
        let address = store_address(&request.store_address)?;
        let members = self.store.member_list().await?;
        let id = match members.iter().find(|m| m.address == address) {
            Some(existing) => existing.id,
            None if members.len() >= MEMBERS_MAX => {
                return Err(JoinError::Invalid(format!(
                    "the store already has {} members, the most it takes",
                    members.len()
                )));
            }
            None => members.iter().map(|m| m.id).max().unwrap_or(0) + 1,
        };
        Ok(ServerJoinResponse {
            id,
            members: entries(members),
            ca: self.ca.cert_pem().to_string(),
            ca_key: self.ca.key_pem(),
            service_account_key: self.service_account_key.clone(),
        })
    }

    /// Adds the store member `request.id` at `request.store_address`, once
    /// it is running; adding it again is a no-op.
    pub async fn add_member(
        &self,
        request: &MemberAddRequest,
    ) -> Result<Vec<MemberEntry>, JoinError> {
        let address = store_address(&request.store_address)?;
        let members = self.store.member_list().await?;
        if let Some(existing) = members.iter().find(|m| m.id == request.id) {
            if existing.address == address {
                return Ok(entries(members));
            }
            return Err(JoinError::Invalid(format!(
                "member id {} is taken by {}; join again for a new id",
                request.id, existing.address
            )));
        }
        tracing::info!(id = request.id, %address, "adding a store member");
        Ok(entries(self.store.member_add(request.id, address).await?))
    }
}

/// A newcomer's store address, checked: one the other members can reach.
fn store_address(text: &str) -> Result<String, JoinError> {
    let address: SocketAddr = text.parse().map_err(|error| {
        JoinError::Invalid(format!("storeAddress {text:?} is not HOST:PORT: {error}"))
    })?;
    if address.ip().is_unspecified() || address.port() == 0 {
        return Err(JoinError::Invalid(format!(
            "storeAddress {address} must be an address other members can reach"
        )));
    }
    Ok(address.to_string())
}

fn entries(members: Vec<flotilla_raft_store::rpc::MemberInfo>) -> Vec<MemberEntry> {
    members
        .into_iter()
        .map(|m| MemberEntry {
            id: m.id,
            address: m.address,
        })
        .collect()
}

/// Creates a join token for `purpose` valid for `ttl` (forever when
/// `None`) through the API, as the Secret Kubernetes keeps bootstrap tokens
/// in. `ca_pem` is the cluster CA certificate the token pins.
pub async fn create_token(
    client: &kube::Client,
    ca_pem: &str,
    ttl: Option<std::time::Duration>,
    description: &str,
    purpose: token::Purpose,
) -> Result<token::JoinToken, JoinError> {
    let token = token::JoinToken::generate(ca_pem)?;
    let expiration = match ttl {
        None => None,
        Some(ttl) => {
            let ttl = k8s_openapi::jiff::SignedDuration::try_from(ttl)
                .map_err(|error| JoinError::Invalid(format!("token lifetime: {error}")))?;
            let expires = k8s_openapi::jiff::Timestamp::now()
                .checked_add(ttl)
                .map_err(|error| JoinError::Invalid(format!("token lifetime: {error}")))?;
            Some(format!("{expires:.0}"))
        }
    };
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(token.secret_object(expiration, description, purpose))
            .map_err(|error| JoinError::Invalid(error.to_string()))?;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), token::TOKEN_NAMESPACE);
    secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .map_err(|error| JoinError::Invalid(format!("storing the token: {error}")))?;
    Ok(token)
}

/// The token a server keeps at `path` (mode 0600) for its operator: the
/// one there while it is still valid, else a new one valid for `ttl`
/// (forever when `None`). `kubectl -n kube-system delete secret
/// bootstrap-token-<id>` revokes it; the server writes a new one when it
/// next starts.
pub async fn ensure_token(
    client: &kube::Client,
    ca_pem: &str,
    path: &std::path::Path,
    purpose: token::Purpose,
    ttl: Option<std::time::Duration>,
) -> Result<token::JoinToken, JoinError> {
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(kept) = token::JoinToken::parse(&text)
        && still_valid(client, &kept, purpose).await?
    {
        return Ok(kept);
    }
    let description = format!("written by a server for {purpose}");
    let token = create_token(client, ca_pem, ttl, &description, purpose).await?;
    write_private(path, &format!("{token}\n"))
        .map_err(|error| JoinError::Invalid(format!("writing {}: {error}", path.display())))?;
    Ok(token)
}

/// Whether `kept` is still in the cluster, unexpired, for `purpose`.
async fn still_valid(
    client: &kube::Client,
    kept: &token::JoinToken,
    purpose: token::Purpose,
) -> Result<bool, JoinError> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), token::TOKEN_NAMESPACE);
    let stored = secrets
        .get_opt(&token::secret_name(&kept.id))
        .await
        .map_err(|error| JoinError::Invalid(format!("reading the kept token: {error}")))?;
    let Some(stored) = stored else {
        return Ok(false);
    };
    let stored =
        serde_json::to_value(stored).map_err(|error| JoinError::Invalid(error.to_string()))?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    Ok(token::check(&kept.secret, Some(&stored), &now) == Ok(purpose))
}

/// Writes `text` to `path`, readable by its owner only, atomically.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Kubernetes' rule for node names: a DNS subdomain.
fn check_node_name(name: &str) -> Result<(), JoinError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > NODE_NAME_MAX || !name.split('.').all(label_ok) {
        return Err(JoinError::Invalid(format!(
            "node name {name:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["node-1", "a.b.c", "x"] {
            assert!(check_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b", &"a".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }
}
