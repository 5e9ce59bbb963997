//! Who is asking and whether they may: Kubernetes' authentication,
//! authorization and the admission checks that depend on the caller.
//!
//! - `user`: `UserInfo` and the naming rules (nodes, ServiceAccounts,
//!   system groups).
//! - `attributes`: a request as authorizers see it (verb, resource, path).
//! - `rbac`: Roles, ClusterRoles and their bindings, decided from an
//!   in-memory index (`rbac::index`) that `feed` keeps current from the
//!   store; `rbac::escalation` refuses grants the granter does not hold.
//! - `node`: the Node authorizer (what a kubelet may read, from a graph of
//!   pods and Ingresses) and NodeRestriction (what it may change).
//! - `bootstrap`: the default roles and bindings Kubernetes creates.
//! - `impersonation`: `Impersonate-*` headers, for holders of `impersonate`.
//! - `reviews`: SelfSubjectReview and the access reviews behind
//!   `kubectl auth whoami` and `kubectl auth can-i`.
//! - `tokens`: bound ServiceAccount tokens (signed JWTs) and their checks.
//! - `pod_security`: Pod Security Admission from namespace labels, with
//!   checks for what a Wasm sandbox can be given of its host.
//!
//! Authorization never reads the store on a request: the indexes are
//! followed in the background and updated synchronously by this server's
//! own writes.

pub mod admission;
pub mod attributes;
pub mod bootstrap;
pub mod feed;
pub mod impersonation;
pub mod node;
pub mod pod_security;
pub mod policy;
pub mod rbac;
pub mod reviews;
pub mod tokens;
pub mod user;

use std::sync::Arc;

use tokio::task::JoinHandle;

pub use self::attributes::{Attributes, ResourceAttributes};
use self::node::NodeGraph;
use self::rbac::index::RbacIndex;
pub use self::user::UserInfo;
use crate::api::status::ApiError;
use crate::storage::{Storage, StorageError};

/// An authorizer's answer, as Kubernetes' authorizers give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, and no later authorizer is asked; the reason is shown.
    Deny(String),
    /// Not this authorizer's call: the next one decides.
    NoOpinion,
}

/// The chain `--authorization-mode=Node,RBAC` runs, after the superuser
/// group: the Node authorizer, then RBAC.
pub struct Authorizer {
    pub rbac: Arc<RbacIndex>,
    pub graph: Arc<NodeGraph>,
}

impl Authorizer {
    pub fn new() -> Arc<Self> {
        Arc::new(Authorizer {
            rbac: RbacIndex::new(),
            graph: NodeGraph::new(),
        })
    }

    pub fn decide(&self, user: &UserInfo, attributes: &Attributes) -> Decision {
        if user.is_superuser() {
            return Decision::Allow;
        }
        match node::authorize(&self.graph, user, attributes) {
            Decision::NoOpinion => {}
            decided => return decided,
        }
        if self.rbac.allows(user, attributes) {
            Decision::Allow
        } else {
            Decision::NoOpinion
        }
    }

    /// `Ok` when allowed; otherwise the 403 Kubernetes answers.
    pub fn check(&self, user: &UserInfo, attributes: &Attributes) -> Result<(), ApiError> {
        match self.decide(user, attributes) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(forbidden(user, attributes, &reason)),
            Decision::NoOpinion => Err(forbidden(user, attributes, "")),
        }
    }

    /// Loads the indexes, has `storage` report this server's writes to
    /// them, and follows the store in the background until the returned
    /// tasks are aborted.
    pub async fn start(&self, storage: &Storage) -> Result<Vec<JoinHandle<()>>, StorageError> {
        let rbac: Arc<dyn feed::Table> = self.rbac.clone();
        let graph: Arc<dyn feed::Table> = self.graph.clone();
        storage.observe(rbac.clone());
        storage.observe(graph.clone());
        Ok(vec![
            feed::start(storage, rbac).await?,
            feed::start(storage, graph).await?,
        ])
    }
}

/// Kubernetes' words for a refusal: `pods "web" is forbidden: User "alice"
/// cannot get resource "pods" in API group "" in the namespace "team-b"`,
/// with the authorizer's reason after a colon when it gave one.
pub fn forbidden(user: &UserInfo, attributes: &Attributes, reason: &str) -> ApiError {
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match attributes {
        Attributes::NonResource { verb, path } => ApiError::forbidden(format!(
            "forbidden: User {:?} cannot {verb} path {path:?}{reason}",
            user.name
        )),
        Attributes::Resource(request) => {
            let mut resource = request.resource.clone();
            if !request.subresource.is_empty() {
                resource = format!("{resource}/{}", request.subresource);
            }
            let scope = if request.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", request.namespace)
            };
            let what = if request.group.is_empty() {
                request.resource.clone()
            } else {
                format!("{}.{}", request.resource, request.group)
            };
            let what = if request.name.is_empty() {
                what
            } else {
                format!("{what} {:?}", request.name)
            };
            ApiError::forbidden_object(
                &request.group,
                &request.resource,
                &request.name,
                format!(
                    "{what} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}{reason}",
                    user.name, request.verb, request.group
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_worded_as_kubernetes_words_them() {
        let alice = UserInfo::authenticated("alice", vec![]);
        let list = Attributes::Resource(ResourceAttributes {
            verb: "list".into(),
            resource: "secrets".into(),
            namespace: "kube-system".into(),
            ..ResourceAttributes::default()
        });
        assert_eq!(
            forbidden(&alice, &list, "").message,
            "secrets is forbidden: User \"alice\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
        );
        let scale = Attributes::Resource(ResourceAttributes {
            verb: "patch".into(),
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: "scale".into(),
            name: "web".into(),
            ..ResourceAttributes::default()
        });
        assert_eq!(
            forbidden(&alice, &scale, "no").message,
            "deployments.apps \"web\" is forbidden: User \"alice\" cannot patch resource \"deployments/scale\" in API group \"apps\" at the cluster scope: no"
        );
        let path = Attributes::NonResource {
            verb: "get".into(),
            path: "/metrics".into(),
        };
        assert_eq!(
            forbidden(&alice, &path, "").message,
            "forbidden: User \"alice\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn the_superuser_group_is_allowed_everything() {
        let authorizer = Authorizer::new();
        let request = Attributes::NonResource {
            verb: "delete".into(),
            path: "/anything".into(),
        };
        assert_eq!(
            authorizer.decide(&UserInfo::loopback_admin(), &request),
            Decision::Allow
        );
        assert_eq!(
            authorizer.decide(&UserInfo::authenticated("x", vec![]), &request),
            Decision::NoOpinion
        );
    }
}
