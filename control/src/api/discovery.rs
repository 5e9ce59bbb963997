//! Discovery: `/version`, `/api`, `/apis` and each group version's resource
//! list, which is how kubectl learns what `kubectl get deploy` means.
//!
//! Served as the unaggregated documents; clients that ask for aggregated
//! discovery fall back to these when the response is plain JSON.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceInfo};

/// The Kubernetes version whose API this server serves.
pub const KUBERNETES_MAJOR: &str = "1";
pub const KUBERNETES_MINOR: &str = "37";

pub fn version() -> Value {
    json!({
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// Go's name for this architecture, which is what clients expect.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

pub fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .map(|(group, version)| group_document(group, version))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or `None` when the group is not served.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let (group, version) = registry
        .groups()
        .into_iter()
        .find(|(group, _)| !group.is_empty() && *group == name)?;
    let mut document = group_document(group, version);
    document["kind"] = json!("APIGroup");
    document["apiVersion"] = json!("v1");
    Some(document)
}

fn group_document(group: &str, version: &str) -> Value {
    let version = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [version], "preferredVersion": version})
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when not served.
pub fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceInfo> = registry
        .all()
        .iter()
        .filter(|info| info.group == group && info.version == version)
        .collect();
    let first = served.first()?;
    let mut resources = Vec::new();
    for info in &served {
        resources.push(json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": verbs(info),
            "shortNames": info.short_names,
            "categories": info.categories,
        }));
        for subresource in info.subresources {
            resources.push(subresource_document(info, subresource));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": first.api_version(),
        "resources": resources,
    }))
}

fn subresource_document(info: &ResourceInfo, subresource: &str) -> Value {
    let name = format!("{}/{subresource}", info.plural);
    let mut document = match subresource {
        "scale" => json!({"kind": "Scale", "group": "autoscaling", "version": "v1",
                          "verbs": ["get", "patch", "update"]}),
        "binding" => json!({"kind": "Binding", "verbs": ["create"]}),
        "eviction" => json!({"kind": "Eviction", "group": "policy", "version": "v1",
                             "verbs": ["create"]}),
        "log" => json!({"kind": info.kind, "verbs": ["get"]}),
        "finalize" => json!({"kind": info.kind, "verbs": ["update"]}),
        "token" => json!({"kind": "TokenRequest", "group": "authentication.k8s.io",
                          "version": "v1", "verbs": ["create"]}),
        _ => json!({"kind": info.kind, "verbs": ["get", "patch", "update"]}),
    };
    document["name"] = json!(name);
    document["singularName"] = json!("");
    document["namespaced"] = json!(info.namespaced);
    document
}

/// What may be done to a resource: reviews are only created.
fn verbs(info: &ResourceInfo) -> &'static [&'static str] {
    if info.review {
        &["create"]
    } else {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_carry_short_names_categories_and_subresources() {
        let registry = Registry::kubernetes();
        let apps = resources(&registry, "apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        let list = apps["resources"].as_array().unwrap();
        let deployments = list.iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        assert_eq!(deployments["categories"], json!(["all"]));
        let scale = list
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["kind"], "Scale");
        assert!(resources(&registry, "apps", "v2").is_none());
    }

    #[test]
    fn groups_exclude_core_and_name_their_preferred_version() {
        let registry = Registry::kubernetes();
        let list = groups(&registry);
        let names: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|group| group["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"batch"));
        assert!(!names.contains(&""));
        assert_eq!(
            group(&registry, "apps").unwrap()["preferredVersion"]["version"],
            "v1"
        );
    }
}
