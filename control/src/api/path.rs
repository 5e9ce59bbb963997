//! Kubernetes' URL grammar, parsed once so that handlers get a typed target:
//!
//! ```text
//! /api/v1/<plural>[/<name>[/<subresource>]]
//! /api/v1/namespaces/<ns>/<plural>[/<name>[/<subresource>]]
//! /apis/<group>/<version>/…the same…
//! ```

use crate::resources::{Registry, ResourceInfo};

/// What a request path names.
#[derive(Debug)]
pub enum Route<'r> {
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every other group.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`: its resource list.
    Resources { group: String, version: String },
    /// An object, a collection, or a subresource.
    Object(Target<'r>),
}

/// A collection (no name) or one object, maybe a subresource of it.
#[derive(Debug)]
pub struct Target<'r> {
    pub info: &'r ResourceInfo,
    /// Set for namespaced resources, except when listing across namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Why a path names nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct NoRoute;

pub fn parse<'r>(registry: &'r Registry, path: &str) -> Result<Route<'r>, NoRoute> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Ok(Route::CoreVersions),
        ["apis"] => Ok(Route::Groups),
        ["apis", group] => Ok(Route::Group((*group).into())),
        ["api", version] => Ok(Route::Resources {
            group: String::new(),
            version: (*version).into(),
        }),
        ["apis", group, version] => Ok(Route::Resources {
            group: (*group).into(),
            version: (*version).into(),
        }),
        ["api", version, rest @ ..] => target(registry, "", version, rest).map(Route::Object),
        ["apis", group, version, rest @ ..] => {
            target(registry, group, version, rest).map(Route::Object)
        }
        _ => Err(NoRoute),
    }
}

fn target<'r>(
    registry: &'r Registry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target<'r>, NoRoute> {
    let find = |plural: &str| registry.find(group, version, plural).ok_or(NoRoute);
    let named = |segment: &str| -> Result<String, NoRoute> {
        if segment.is_empty() {
            Err(NoRoute)
        } else {
            Ok(segment.to_string())
        }
    };
    // `namespaces/<ns>/<plural>…` is a namespaced resource unless `<plural>`
    // is a subresource of the namespace itself (`status`, `finalize`).
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(info) = registry
            .find(group, version, plural)
            .filter(|info| info.namespaced)
    {
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(named(name)?), None),
            [name, sub] => (Some(named(name)?), Some((*sub).to_string())),
            _ => return Err(NoRoute),
        };
        return Ok(Target {
            info,
            namespace: Some(named(namespace)?),
            name,
            subresource,
        });
    }
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(named(name)?), None),
        [plural, name, sub] => (*plural, Some(named(name)?), Some((*sub).to_string())),
        _ => return Err(NoRoute),
    };
    let info = find(plural)?;
    // A namespaced resource by name needs its namespace in the path; only
    // the collection may be listed across namespaces.
    if info.namespaced && name.is_some() {
        return Err(NoRoute);
    }
    Ok(Target {
        info,
        namespace: None,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<'r>(registry: &'r Registry, path: &str) -> Target<'r> {
        match parse(registry, path).unwrap() {
            Route::Object(target) => target,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_objects_and_subresources() {
        let registry = Registry::kubernetes();
        let target = object(
            &registry,
            "/apis/apps/v1/namespaces/prod/deployments/web/scale",
        );
        assert_eq!(target.info.kind, "Deployment");
        assert_eq!(target.namespace.as_deref(), Some("prod"));
        assert_eq!(target.name.as_deref(), Some("web"));
        assert_eq!(target.subresource.as_deref(), Some("scale"));

        let target = object(&registry, "/api/v1/pods");
        assert_eq!(target.info.kind, "Pod");
        assert!(target.namespace.is_none() && target.name.is_none());
    }

    #[test]
    fn a_namespace_and_its_own_subresources() {
        let registry = Registry::kubernetes();
        let target = object(&registry, "/api/v1/namespaces/prod");
        assert_eq!(target.info.kind, "Namespace");
        assert_eq!(target.name.as_deref(), Some("prod"));
        let target = object(&registry, "/api/v1/namespaces/prod/finalize");
        assert_eq!(target.info.kind, "Namespace");
        assert_eq!(target.subresource.as_deref(), Some("finalize"));
    }

    #[test]
    fn unknown_paths_name_nothing() {
        let registry = Registry::kubernetes();
        for path in [
            "/api/v1/widgets",
            "/apis/apps/v2/deployments",
            "/api/v1/pods/name-without-namespace",
            "/api/v1/namespaces/a/pods/b/c/d",
            "/nonsense",
        ] {
            assert!(parse(&registry, path).is_err(), "{path}");
        }
    }
}
