//! The RBAC objects in memory, indexed by subject, so a request is decided
//! without reading the store: Roles and ClusterRoles by name, and for each
//! user and group the bindings that name it, cluster-wide and per
//! namespace. Kept current by [`crate::auth::feed`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};

use super::rules;
use crate::auth::attributes::Attributes;
use crate::auth::feed::{Objects, Versioned};
use crate::auth::user::{UserInfo, service_account_user};

const CLUSTER_ROLES: &str = "/registry/clusterroles/";
const CLUSTER_ROLE_BINDINGS: &str = "/registry/clusterrolebindings/";
const ROLES: &str = "/registry/roles/";
const ROLE_BINDINGS: &str = "/registry/rolebindings/";

type Rules = Arc<[PolicyRule]>;

/// A binding's role: a ClusterRole, or a Role of the binding's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RoleRef {
    Cluster(String),
    Namespaced(String),
}

#[derive(Clone, Debug)]
struct Binding {
    role: RoleRef,
    users: Vec<String>,
    groups: Vec<String>,
}

/// Bindings by the users and groups they name.
#[derive(Default)]
struct BySubject {
    users: HashMap<String, BTreeSet<String>>,
    groups: HashMap<String, BTreeSet<String>>,
}

impl BySubject {
    fn insert(&mut self, binding: &str, subjects: &Binding) {
        for user in &subjects.users {
            self.users
                .entry(user.clone())
                .or_default()
                .insert(binding.to_string());
        }
        for group in &subjects.groups {
            self.groups
                .entry(group.clone())
                .or_default()
                .insert(binding.to_string());
        }
    }

    fn remove(&mut self, binding: &str, subjects: &Binding) {
        let drop_from = |map: &mut HashMap<String, BTreeSet<String>>, name: &String| {
            if let Some(set) = map.get_mut(name) {
                set.remove(binding);
                if set.is_empty() {
                    map.remove(name);
                }
            }
        };
        for user in &subjects.users {
            drop_from(&mut self.users, user);
        }
        for group in &subjects.groups {
            drop_from(&mut self.groups, group);
        }
    }

    /// The names of the bindings that apply to `user`.
    fn of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a String> + 'a {
        let by_name = self.users.get(&user.name).into_iter().flatten();
        let by_group = user
            .groups
            .iter()
            .filter_map(|group| self.groups.get(group))
            .flatten();
        by_name.chain(by_group)
    }
}

/// The RBAC objects, indexed.
#[derive(Default)]
pub struct State {
    cluster_roles: HashMap<String, Rules>,
    /// (namespace, name).
    roles: HashMap<(String, String), Rules>,
    cluster_bindings: HashMap<String, Binding>,
    cluster_subjects: BySubject,
    /// (namespace, name).
    bindings: HashMap<(String, String), Binding>,
    /// Per namespace.
    subjects: HashMap<String, BySubject>,
}

/// The authorization cache of RBAC objects.
pub type RbacIndex = Versioned<State>;

impl RbacIndex {
    /// Whether any rule bound to `user` allows the request.
    pub fn allows(&self, user: &UserInfo, attributes: &Attributes) -> bool {
        let namespace = match attributes {
            Attributes::Resource(resource) => resource.namespace.as_str(),
            Attributes::NonResource { .. } => "",
        };
        self.read().visit_rules(user, namespace, &mut |rules| {
            rules.iter().any(|rule| rules::allows(rule, attributes))
        })
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones
    /// only when it is empty): what `SelfSubjectRulesReview` lists and what
    /// a grant is checked against.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut all = Vec::new();
        self.read().visit_rules(user, namespace, &mut |rules| {
            all.extend(rules.iter().cloned());
            false
        });
        all
    }

    /// The rules of a role a binding in `namespace` would refer to; `None`
    /// when it does not exist.
    pub fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<PolicyRule>> {
        let state = self.read();
        let rules = match kind {
            "ClusterRole" => state.cluster_roles.get(name),
            _ => state.roles.get(&(namespace.to_string(), name.to_string())),
        };
        rules.map(|rules| rules.to_vec())
    }
}

impl State {
    /// Calls `visit` with the rules of each binding that applies to `user`
    /// in `namespace`, until it returns true; returns whether it did.
    fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        visit: &mut dyn FnMut(&[PolicyRule]) -> bool,
    ) -> bool {
        for name in self.cluster_subjects.of(user) {
            let Some(binding) = self.cluster_bindings.get(name) else {
                continue;
            };
            if let RoleRef::Cluster(role) = &binding.role
                && let Some(rules) = self.cluster_roles.get(role)
                && visit(rules)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        let Some(subjects) = self.subjects.get(namespace) else {
            return false;
        };
        for name in subjects.of(user) {
            let key = (namespace.to_string(), name.clone());
            let Some(binding) = self.bindings.get(&key) else {
                continue;
            };
            let rules = match &binding.role {
                RoleRef::Cluster(role) => self.cluster_roles.get(role),
                RoleRef::Namespaced(role) => self.roles.get(&(namespace.to_string(), role.clone())),
            };
            if rules.is_some_and(|rules| visit(rules)) {
                return true;
            }
        }
        false
    }

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(path) = std::str::from_utf8(key) else {
            return;
        };
        if let Some(name) = path.strip_prefix(CLUSTER_ROLES) {
            match value.and_then(|v| serde_json::from_slice::<ClusterRole>(v).ok()) {
                Some(role) => {
                    self.cluster_roles
                        .insert(name.to_string(), role.rules.unwrap_or_default().into());
                }
                None => {
                    self.cluster_roles.remove(name);
                }
            }
        } else if let Some(rest) = path.strip_prefix(ROLES) {
            let Some(key) = namespaced(rest) else { return };
            match value.and_then(|v| serde_json::from_slice::<Role>(v).ok()) {
                Some(role) => {
                    self.roles
                        .insert(key, role.rules.unwrap_or_default().into());
                }
                None => {
                    self.roles.remove(&key);
                }
            }
        } else if let Some(name) = path.strip_prefix(CLUSTER_ROLE_BINDINGS) {
            if let Some(old) = self.cluster_bindings.remove(name) {
                self.cluster_subjects.remove(name, &old);
            }
            let parsed = value.and_then(|v| serde_json::from_slice::<ClusterRoleBinding>(v).ok());
            if let Some(binding) = parsed {
                let binding = to_binding(&binding.role_ref, binding.subjects.as_deref(), "");
                self.cluster_subjects.insert(name, &binding);
                self.cluster_bindings.insert(name.to_string(), binding);
            }
        } else if let Some(rest) = path.strip_prefix(ROLE_BINDINGS) {
            let Some(key) = namespaced(rest) else { return };
            let subjects = self.subjects.entry(key.0.clone()).or_default();
            if let Some(old) = self.bindings.remove(&key) {
                subjects.remove(&key.1, &old);
            }
            let parsed = value.and_then(|v| serde_json::from_slice::<RoleBinding>(v).ok());
            if let Some(binding) = parsed {
                let binding = to_binding(&binding.role_ref, binding.subjects.as_deref(), &key.0);
                subjects.insert(&key.1, &binding);
                self.bindings.insert(key, binding);
            }
        }
    }
}

fn namespaced(rest: &str) -> Option<(String, String)> {
    let (namespace, name) = rest.split_once('/')?;
    Some((namespace.to_string(), name.to_string()))
}

/// A binding's subjects as the users and groups they match: a
/// ServiceAccount is its user name, in the binding's namespace when the
/// subject names none.
fn to_binding(
    role_ref: &k8s_openapi::api::rbac::v1::RoleRef,
    subjects: Option<&[Subject]>,
    namespace: &str,
) -> Binding {
    let role = match role_ref.kind.as_str() {
        "ClusterRole" => RoleRef::Cluster(role_ref.name.clone()),
        _ => RoleRef::Namespaced(role_ref.name.clone()),
    };
    let mut binding = Binding {
        role,
        users: Vec::new(),
        groups: Vec::new(),
    };
    for subject in subjects.unwrap_or_default() {
        match subject.kind.as_str() {
            "User" => binding.users.push(subject.name.clone()),
            "Group" => binding.groups.push(subject.name.clone()),
            "ServiceAccount" => {
                let account_namespace = subject.namespace.as_deref().filter(|ns| !ns.is_empty());
                let account_namespace = account_namespace.unwrap_or(namespace);
                if !account_namespace.is_empty() {
                    binding
                        .users
                        .push(service_account_user(account_namespace, &subject.name));
                }
            }
            _ => {}
        }
    }
    binding
}

impl Objects for State {
    const PREFIXES: &'static [&'static str] =
        &[CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS];

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        State::apply(self, key, value);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use crate::auth::feed::Table;

    fn put(index: &RbacIndex, key: &str, value: serde_json::Value, revision: i64) {
        let bytes = serde_json::to_vec(&value).expect("json");
        index.apply(key.as_bytes(), Some(&bytes), revision);
    }

    fn request(verb: &str, resource: &str, namespace: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            ..ResourceAttributes::default()
        })
    }

    fn pod_reader(index: &RbacIndex) {
        put(
            index,
            "/registry/clusterroles/pod-reader",
            json!({"metadata": {"name": "pod-reader"},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
            1,
        );
    }

    #[test]
    fn role_bindings_grant_in_their_namespace_only() {
        let index = RbacIndex::default();
        pod_reader(&index);
        put(
            &index,
            "/registry/rolebindings/team-a/read",
            json!({"metadata": {"name": "read", "namespace": "team-a"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
                   "subjects": [{"kind": "User", "name": "alice"},
                                {"kind": "ServiceAccount", "name": "ci"},
                                {"kind": "Group", "name": "readers"}]}),
            2,
        );
        let alice = UserInfo::authenticated("alice", vec![]);
        assert!(index.allows(&alice, &request("list", "pods", "team-a")));
        assert!(!index.allows(&alice, &request("list", "pods", "team-b")));
        assert!(!index.allows(&alice, &request("list", "pods", "")));
        assert!(!index.allows(&alice, &request("delete", "pods", "team-a")));
        let ci = UserInfo::service_account("team-a", "ci");
        assert!(index.allows(&ci, &request("get", "pods", "team-a")));
        let reader = UserInfo::authenticated("bob", vec!["readers".into()]);
        assert!(index.allows(&reader, &request("get", "pods", "team-a")));
        assert_eq!(index.rules_for(&alice, "team-a").len(), 1);
        assert!(index.rules_for(&alice, "team-b").is_empty());
    }

    #[test]
    fn cluster_bindings_grant_everywhere_and_follow_changes() {
        let index = RbacIndex::default();
        let binding = |subject: &str| {
            json!({"metadata": {"name": "readers"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
                   "subjects": [{"kind": "User", "name": subject}]})
        };
        put(
            &index,
            "/registry/clusterrolebindings/readers",
            binding("alice"),
            1,
        );
        let alice = UserInfo::authenticated("alice", vec![]);
        // The role may come after its binding.
        assert!(!index.allows(&alice, &request("get", "pods", "x")));
        pod_reader(&index);
        assert!(index.allows(&alice, &request("get", "pods", "x")));
        // An older write of the same key changes nothing.
        put(
            &index,
            "/registry/clusterroles/pod-reader",
            json!({"rules": []}),
            1,
        );
        assert!(index.allows(&alice, &request("get", "pods", "x")));
        put(
            &index,
            "/registry/clusterrolebindings/readers",
            binding("bob"),
            3,
        );
        assert!(!index.allows(&alice, &request("get", "pods", "x")));
        index.apply(b"/registry/clusterrolebindings/readers", None, 4);
        let bob = UserInfo::authenticated("bob", vec![]);
        assert!(!index.allows(&bob, &request("get", "pods", "x")));
        // An older event of a deleted key does not bring it back.
        put(
            &index,
            "/registry/clusterrolebindings/readers",
            binding("bob"),
            3,
        );
        assert!(!index.allows(&bob, &request("get", "pods", "x")));
    }
}
