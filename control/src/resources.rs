//! The resources the API server serves: one table, built from the
//! `k8s-openapi` types, that discovery, routing, storage keys and
//! validation all read.
//!
//! Objects move through the server as JSON. Each resource checks a body by
//! decoding it into its `k8s-openapi` type and encoding it back: a field of
//! the wrong type fails the decode, and a field the type does not know is
//! missing from the re-encoded object, which is how strict field validation
//! finds it without a hand-written schema.

use k8s_openapi::api::{
    apps::v1 as apps, authentication::v1 as authentication, authorization::v1 as authorization,
    autoscaling::v2 as autoscaling, batch::v1 as batch, coordination::v1 as coordination,
    core::v1 as core, discovery::v1 as discovery, networking::v1 as networking,
    policy::v1 as policy, rbac::v1 as rbac,
};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource as K8sResource};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes a body into the resource's type and re-encodes it.
type Normalize = fn(Value) -> Result<Value, serde_json::Error>;

/// Adds the resource's JSON Schema (and those it refers to) to a
/// generator's definitions and returns a reference to it.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

/// One served resource, as discovery describes it.
#[derive(Debug)]
pub struct ResourceInfo {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment and the store's key segment, e.g. `deployments`.
    pub plural: &'static str,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources besides the object itself, e.g. `status`, `scale`.
    pub subresources: &'static [&'static str],
    /// A review (SelfSubjectAccessReview and its kin): only created, never
    /// stored; the answer comes back in its status.
    pub review: bool,
    normalize: Normalize,
    schema: SchemaOf,
}

impl ResourceInfo {
    /// `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `deployments.apps`: how Kubernetes names a resource
    /// in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.contains(&name)
    }

    /// Whether a change to `spec` bumps `metadata.generation`. Kubernetes
    /// does this for every resource with a spec.
    pub fn tracks_generation(&self) -> bool {
        !matches!(
            self.kind,
            "ConfigMap"
                | "Secret"
                | "ServiceAccount"
                | "Event"
                | "Endpoints"
                | "EndpointSlice"
                | "Role"
                | "RoleBinding"
                | "ClusterRole"
                | "ClusterRoleBinding"
        )
    }

    /// Adds the type's schema to `generator` and returns its name among the
    /// generator's definitions (`io.k8s.api.apps.v1.Deployment`).
    pub fn schema_name(&self, generator: &mut SchemaGenerator) -> String {
        let reference = (self.schema)(generator);
        let reference = reference
            .get("$ref")
            .and_then(Value::as_str)
            .unwrap_or_default();
        reference
            .rsplit_once('/')
            .map_or(reference, |(_, name)| name)
            .to_string()
    }

    /// Checks `object` against the resource's type. On success returns the
    /// re-encoded object and the paths of fields the type does not know.
    pub fn normalize(&self, object: Value) -> Result<(Value, Vec<String>), String> {
        let typed = (self.normalize)(object.clone()).map_err(|error| error.to_string())?;
        let mut unknown = Vec::new();
        unknown_fields(&object, &typed, "", &mut unknown);
        Ok((typed, unknown))
    }
}

/// The table, built once: every `&ResourceInfo` lives as long as the
/// process, so streams (watches) may hold one.
pub fn registry() -> &'static Registry {
    static REGISTRY: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(Registry::kubernetes);
    &REGISTRY
}

/// Every resource the server serves.
pub struct Registry {
    resources: Vec<ResourceInfo>,
}

impl Registry {
    pub fn kubernetes() -> Self {
        let resources = vec![
            namespaced::<core::Pod>(&["po"], &["all"], &["status", "binding", "log", "eviction"]),
            namespaced::<core::Service>(&["svc"], &["all"], &["status"]),
            namespaced::<core::Endpoints>(&["ep"], &[], &[]),
            namespaced::<core::ConfigMap>(&["cm"], &[], &[]),
            namespaced::<core::Secret>(&[], &[], &[]),
            namespaced::<core::ServiceAccount>(&["sa"], &[], &["token"]),
            namespaced::<core::Event>(&["ev"], &[], &[]),
            cluster::<core::Namespace>(&["ns"], &["status", "finalize"]),
            cluster::<core::Node>(&["no"], &["status"]),
            namespaced::<apps::Deployment>(&["deploy"], &["all"], &["status", "scale"]),
            namespaced::<apps::ReplicaSet>(&["rs"], &["all"], &["status", "scale"]),
            namespaced::<apps::DaemonSet>(&["ds"], &["all"], &["status"]),
            namespaced::<apps::StatefulSet>(&["sts"], &["all"], &["status", "scale"]),
            namespaced::<batch::Job>(&[], &["all"], &["status"]),
            namespaced::<batch::CronJob>(&["cj"], &["all"], &["status"]),
            namespaced::<coordination::Lease>(&[], &[], &[]),
            namespaced::<discovery::EndpointSlice>(&[], &[], &[]),
            namespaced::<networking::NetworkPolicy>(&["netpol"], &[], &[]),
            namespaced::<policy::PodDisruptionBudget>(&["pdb"], &[], &["status"]),
            namespaced::<networking::Ingress>(&["ing"], &[], &["status"]),
            namespaced::<autoscaling::HorizontalPodAutoscaler>(&["hpa"], &["all"], &["status"]),
            namespaced::<rbac::Role>(&[], &[], &[]),
            namespaced::<rbac::RoleBinding>(&[], &[], &[]),
            cluster::<rbac::ClusterRole>(&[], &[]),
            cluster::<rbac::ClusterRoleBinding>(&[], &[]),
            review(cluster::<authentication::SelfSubjectReview>(&[], &[])),
            review(cluster::<authorization::SelfSubjectAccessReview>(&[], &[])),
            review(cluster::<authorization::SelfSubjectRulesReview>(&[], &[])),
            review(cluster::<authorization::SubjectAccessReview>(&[], &[])),
            review(namespaced::<authorization::LocalSubjectAccessReview>(
                &[],
                &[],
                &[],
            )),
        ];
        Registry { resources }
    }

    pub fn all(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// The resources kept in the store: all but the reviews.
    pub fn stored(&self) -> impl Iterator<Item = &ResourceInfo> + Clone {
        self.resources.iter().filter(|info| !info.review)
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|info| info.group == group && info.version == version && info.plural == plural)
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|info| info.kind == kind && info.api_version() == api_version)
    }

    /// The group versions served, in discovery order (core first).
    pub fn groups(&self) -> Vec<(&'static str, &'static str)> {
        let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
        for info in &self.resources {
            if !groups.contains(&(info.group, info.version)) {
                groups.push((info.group, info.version));
            }
        }
        groups
    }
}

fn namespaced<K>(
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> ResourceInfo
where
    K: K8sResource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + JsonSchema,
{
    info::<K>(true, short_names, categories, subresources)
}

fn review(info: ResourceInfo) -> ResourceInfo {
    ResourceInfo {
        review: true,
        ..info
    }
}

fn cluster<K>(
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> ResourceInfo
where
    K: K8sResource<Scope = ClusterResourceScope> + Serialize + DeserializeOwned + JsonSchema,
{
    info::<K>(false, short_names, &[], subresources)
}

fn info<K>(
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> ResourceInfo
where
    K: K8sResource + Serialize + DeserializeOwned + JsonSchema,
{
    ResourceInfo {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_ascii_lowercase(),
        namespaced,
        short_names,
        categories,
        subresources,
        review: false,
        normalize: normalize::<K>,
        schema: SchemaGenerator::subschema_for::<K>,
    }
}

fn normalize<K: Serialize + DeserializeOwned>(object: Value) -> Result<Value, serde_json::Error> {
    let typed: K = serde_json::from_value(object)?;
    serde_json::to_value(typed)
}

/// Paths (`.spec.replicaz`) present in `given` but absent from `typed`.
/// A null in `given` is not a field: Kubernetes drops it too.
fn unknown_fields(given: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (given, typed) {
        (Value::Object(given), Value::Object(typed)) => {
            for (name, value) in given {
                let child = format!("{path}.{name}");
                match typed.get(name) {
                    Some(known) => unknown_fields(value, known, &child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(typed)) => {
            for (index, (value, known)) in given.iter().zip(typed).enumerate() {
                unknown_fields(value, known, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_by_path() {
        let registry = Registry::kubernetes();
        let deployments = registry.find("apps", "v1", "deployments").unwrap();
        let (_, unknown) = deployments
            .normalize(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicaz": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "c", "image": "x", "imagePolicy": 1}]}}
                }
            }))
            .unwrap();
        assert_eq!(
            unknown,
            [
                ".spec.replicaz",
                ".spec.template.spec.containers[0].imagePolicy"
            ]
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_rejected() {
        let registry = Registry::kubernetes();
        let config_maps = registry.find("", "v1", "configmaps").unwrap();
        let error = config_maps
            .normalize(json!({"metadata": {"name": "x"}, "data": {"a": 1}}))
            .unwrap_err();
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn every_resource_is_found_by_kind_and_plural() {
        let registry = Registry::kubernetes();
        for info in registry.all() {
            assert!(std::ptr::eq(
                registry
                    .find(info.group, info.version, info.plural)
                    .unwrap(),
                info
            ));
            assert!(std::ptr::eq(
                registry.by_kind(&info.api_version(), info.kind).unwrap(),
                info
            ));
        }
        assert_eq!(registry.groups()[0], ("", "v1"));
    }
}
