//! Who a request is from, as Kubernetes' authenticators describe it: a user
//! name, a uid, groups and extra attributes, and the naming rules that give
//! some names meaning (nodes, ServiceAccounts, the system groups).

use std::collections::BTreeMap;

/// The group every authenticated request is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests that presented no credential.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of requests that presented no credential.
pub const ANONYMOUS: &str = "system:anonymous";
/// The superuser group, the nodes' group and names, and ServiceAccounts'
/// users are `flotilla-pki`'s naming rules.
pub use flotilla_pki::names::{
    MASTERS, NODE_PREFIX, NODES, SERVICE_ACCOUNT_PREFIX, node_user, service_account_user,
};
/// Every ServiceAccount's group, and one per namespace
/// (`system:serviceaccounts:<namespace>`).
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// Who plain HTTP on loopback is: the machine's own users, trusted as
/// Kubernetes' old insecure port trusted them.
pub const LOOPBACK_ADMIN: &str = "system:admin";

/// An authenticated (or anonymous) caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups`, plus `system:authenticated` as every
    /// authenticator adds it.
    pub fn authenticated(name: impl Into<String>, groups: Vec<String>) -> Self {
        let mut user = UserInfo {
            name: name.into(),
            groups,
            ..UserInfo::default()
        };
        if !user.in_group(AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
        user
    }

    /// From a verified client certificate: the common name is the user,
    /// each organization a group.
    pub fn from_certificate(common_name: &str, organizations: Vec<String>) -> Self {
        UserInfo::authenticated(common_name, organizations)
    }

    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.to_string(),
            groups: vec![UNAUTHENTICATED.to_string()],
            ..UserInfo::default()
        }
    }

    /// The caller of plain HTTP on loopback.
    pub fn loopback_admin() -> Self {
        UserInfo::authenticated(LOOPBACK_ADMIN, vec![MASTERS.to_string()])
    }

    /// A ServiceAccount's user, with the groups Kubernetes gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        UserInfo::authenticated(
            service_account_user(namespace, name),
            vec![
                SERVICE_ACCOUNTS.to_string(),
                format!("{SERVICE_ACCOUNTS}:{namespace}"),
            ],
        )
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub fn is_superuser(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node this user is, when it is one: named `system:node:<name>`
    /// and in `system:nodes`, as the Node authorizer requires both.
    pub fn node_name(&self) -> Option<&str> {
        let name = self.name.strip_prefix(NODE_PREFIX)?;
        (!name.is_empty() && self.in_group(NODES)).then_some(name)
    }

    /// The ServiceAccount this user is, as (namespace, name).
    pub fn service_account_of(&self) -> Option<(&str, &str)> {
        let rest = self.name.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_users_and_groups() {
        let user = UserInfo::from_certificate("alice", vec!["team-a".into()]);
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["team-a", AUTHENTICATED]);
        assert!(!user.is_superuser());
        assert!(UserInfo::loopback_admin().is_superuser());
    }

    #[test]
    fn nodes_need_their_name_and_group() {
        let node = UserInfo::from_certificate("system:node:n1", vec![NODES.into()]);
        assert_eq!(node.node_name(), Some("n1"));
        let impostor = UserInfo::from_certificate("system:node:n1", vec![]);
        assert_eq!(impostor.node_name(), None);
        let empty = UserInfo::from_certificate("system:node:", vec![NODES.into()]);
        assert_eq!(empty.node_name(), None);
    }

    #[test]
    fn service_accounts_are_parsed() {
        let account = UserInfo::service_account("kube-system", "job-controller");
        assert_eq!(
            account.name,
            "system:serviceaccount:kube-system:job-controller"
        );
        assert_eq!(
            account.service_account_of(),
            Some(("kube-system", "job-controller"))
        );
        assert!(account.in_group("system:serviceaccounts:kube-system"));
        let odd = UserInfo::authenticated("system:serviceaccount:a:b:c", vec![]);
        assert_eq!(odd.service_account_of(), None);
    }
}
