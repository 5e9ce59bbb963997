//! What a request asks to do, in the terms authorizers decide on: a verb on
//! a resource (group, resource, subresource, namespace, name) or on a
//! non-resource path, as Kubernetes' `RequestInfo` names them.

use axum::http::Method;

use crate::api::path::Target;
use crate::api::request::Params;

/// A request on an API resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// get, list, watch, create, update, patch, delete, deletecollection,
    /// or a special verb (bind, escalate, impersonate) asked of a review.
    pub verb: String,
    pub group: String,
    pub version: String,
    /// The plural, e.g. `pods`.
    pub resource: String,
    /// e.g. `status`, `log`, `scale`; empty for the object itself.
    pub subresource: String,
    /// Empty for cluster-scoped resources and lists across namespaces.
    pub namespace: String,
    /// Empty for collections (a list or watch narrowed to one object by
    /// `fieldSelector=metadata.name=…` names it, as in Kubernetes).
    pub name: String,
}

/// What an authorizer is asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    /// A path outside the resource tree: discovery, `/healthz`, the module
    /// registry. Its verb is the request's method in lower case (`head` is
    /// `get`, as it reads the same).
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource(resource) => &resource.verb,
            Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// A request on a non-resource path.
    pub fn non_resource(method: &Method, path: &str) -> Self {
        let verb = if *method == Method::HEAD {
            "get".to_string()
        } else {
            method.as_str().to_ascii_lowercase()
        };
        Attributes::NonResource {
            verb,
            path: path.to_string(),
        }
    }

    /// A request on `target`, as Kubernetes maps methods to verbs.
    pub fn resource(method: &Method, target: &Target<'_>, params: &Params) -> Self {
        let collection = target.name.is_none();
        let verb = match *method {
            Method::GET | Method::HEAD if collection => {
                // A malformed flag fails later, in the handler, with a 400.
                if params.flag("watch").unwrap_or(false) {
                    "watch"
                } else {
                    "list"
                }
            }
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if collection => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        };
        let name = match &target.name {
            Some(name) => name.clone(),
            None if matches!(verb, "list" | "watch") => params
                .get("fieldSelector")
                .and_then(name_from_field_selector)
                .unwrap_or_default(),
            None => String::new(),
        };
        // A Namespace is authorized as being in itself, so that a
        // RoleBinding there may grant reading it, as in Kubernetes.
        let namespace = match &target.namespace {
            Some(namespace) => namespace.clone(),
            None if target.info.plural == "namespaces" && target.info.group.is_empty() => {
                name.clone()
            }
            None => String::new(),
        };
        Attributes::Resource(ResourceAttributes {
            verb: verb.to_string(),
            group: target.info.group.to_string(),
            version: target.info.version.to_string(),
            resource: target.info.plural.to_string(),
            subresource: target.subresource.clone().unwrap_or_default(),
            namespace,
            name,
        })
    }
}

/// `metadata.name=x` (or `==`) in a field selector: a list or watch of one
/// object, which Kubernetes authorizes as a request on that name.
fn name_from_field_selector(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let value = term.trim().strip_prefix("metadata.name")?;
        let value = value
            .strip_prefix("==")
            .or_else(|| value.strip_prefix('='))?;
        (!value.is_empty()).then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::path::{Route, parse};
    use crate::resources::registry;

    fn attributes(method: Method, path: &str, query: &[(&str, &str)]) -> ResourceAttributes {
        let Ok(Route::Object(target)) = parse(registry(), path) else {
            panic!("{path} is not an object path");
        };
        let params = Params(
            query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        match Attributes::resource(&method, &target, &params) {
            Attributes::Resource(resource) => resource,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn methods_become_verbs() {
        let check = |method: Method, path: &str, query: &[(&str, &str)], verb: &str| {
            assert_eq!(
                attributes(method, path, query).verb,
                verb,
                "{path} {query:?}"
            );
        };
        check(Method::GET, "/api/v1/namespaces/a/pods", &[], "list");
        check(Method::GET, "/api/v1/pods", &[("watch", "true")], "watch");
        check(Method::GET, "/api/v1/namespaces/a/pods/p", &[], "get");
        check(Method::POST, "/api/v1/namespaces/a/pods", &[], "create");
        check(Method::PUT, "/api/v1/namespaces/a/pods/p", &[], "update");
        check(Method::PATCH, "/api/v1/namespaces/a/pods/p", &[], "patch");
        check(Method::DELETE, "/api/v1/namespaces/a/pods/p", &[], "delete");
        check(
            Method::DELETE,
            "/api/v1/namespaces/a/pods",
            &[],
            "deletecollection",
        );
    }

    #[test]
    fn subresources_groups_and_names_are_kept() {
        let scale = attributes(
            Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/web/scale",
            &[],
        );
        assert_eq!(
            (
                scale.group.as_str(),
                scale.resource.as_str(),
                scale.subresource.as_str(),
                scale.namespace.as_str(),
                scale.name.as_str()
            ),
            ("apps", "deployments", "scale", "a", "web")
        );
    }

    #[test]
    fn a_field_selector_on_the_name_names_the_object() {
        let one = attributes(
            Method::GET,
            "/api/v1/namespaces/a/secrets",
            &[("watch", "1"), ("fieldSelector", "metadata.name=tls")],
        );
        assert_eq!((one.verb.as_str(), one.name.as_str()), ("watch", "tls"));
        let other = attributes(
            Method::GET,
            "/api/v1/namespaces/a/secrets",
            &[("fieldSelector", "type=kubernetes.io/tls")],
        );
        assert_eq!(other.name, "");
    }

    #[test]
    fn non_resource_verbs_are_methods() {
        let head = Attributes::non_resource(&Method::HEAD, "/flotilla/registry/v1/blobs/x");
        assert_eq!(head.verb(), "get");
        assert_eq!(Attributes::non_resource(&Method::PUT, "/x").verb(), "put");
    }
}
