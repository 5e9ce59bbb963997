//! What the names on certificates mean. A certificate's common name is
//! its holder and its organization the holder's group, as Kubernetes reads
//! client certificates; these are the names the cluster gives meaning to.

/// The administrators' group: allowed everything.
pub const MASTERS: &str = "system:masters";
/// Every node's group; a node's name is [`NODE_PREFIX`]`<node name>`.
pub const NODES: &str = "system:nodes";
pub const NODE_PREFIX: &str = "system:node:";
/// The administrator a server's kubeconfig holds (in [`MASTERS`]).
pub const ADMIN: &str = "admin";
/// A server's own client of its API, as kube-apiserver's loopback client
/// (in [`MASTERS`]).
pub const API_SERVER_CLIENT: &str = "system:apiserver";
/// The API server's serving certificate.
pub const API_SERVER: &str = "flotilla-apiserver";
/// The scheduler's and the servers' leader election's users.
pub const SCHEDULER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// A ServiceAccount's user is `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The servers' join authority: the only client of a server's store over
/// the network, and the only one that may change its members.
pub const JOIN_AUTHORITY: &str = "join-authority";
/// A standalone store's own tools.
pub const STORE_CLIENT: &str = "store-client";
/// Store members are `member-<id>`; only they may speak raft.
pub const MEMBER_PREFIX: &str = "member-";

/// `system:node:<name>`.
pub fn node_user(name: &str) -> String {
    format!("{NODE_PREFIX}{name}")
}

/// `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The certificate name of store member `id`.
pub fn member_name(id: u64) -> String {
    format!("{MEMBER_PREFIX}{id}")
}

/// The store member a certificate name is, if it is one (ids start at 1).
pub fn member_id(name: &str) -> Option<u64> {
    name.strip_prefix(MEMBER_PREFIX)?
        .parse()
        .ok()
        .filter(|&id| id != 0)
}

/// Why a user may not be issued a certificate of that name: the names the
/// cluster's own components and the store's members go by.
pub fn reserved(user: &str) -> Option<&'static str> {
    if user.is_empty() {
        return Some("a user needs a name");
    }
    if user.starts_with("system:") {
        return Some("system: names belong to the cluster's own components and nodes");
    }
    if [JOIN_AUTHORITY, STORE_CLIENT, API_SERVER].contains(&user) || member_id(user).is_some() {
        return Some("the name is the store's or the API server's own");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        assert_eq!(member_id(&member_name(3)), Some(3));
        assert_eq!(member_id("member-0"), None);
        assert_eq!(member_id("member-x"), None);
        assert_eq!(node_user("n1"), "system:node:n1");
        assert!(reserved("system:admin").is_some());
        assert!(reserved("member-1").is_some());
        assert!(reserved("join-authority").is_some());
        assert!(reserved("alice").is_none());
    }
}
