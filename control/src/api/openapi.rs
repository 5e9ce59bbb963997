//! OpenAPI documents: `/openapi/v3` (per group version) and `/openapi/v2`.
//!
//! Clients read them for two things:
//! - kubectl looks for a `fieldValidation` parameter on PATCH to learn that
//!   the server validates fields itself. It does, so every operation
//!   declares the parameter, and kubectl sends `fieldValidation=Strict`
//!   instead of validating on its own.
//! - `kubectl explain` walks the type schemas. They come from the
//!   `k8s-openapi` types (their JSON Schema, with Kubernetes' own
//!   descriptions and definition names), and each kind's schema carries
//!   `x-kubernetes-group-version-kind`, which is how kubectl finds it.
//!
//! The documents never change while the process runs, so each is built
//! and encoded once, on first request.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use bytes::Bytes;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceInfo, registry};

/// Changes when the documents change, so that clients' caches refresh.
const DOCUMENT_HASH: &str = concat!("flotilla-", env!("CARGO_PKG_VERSION"), "-2");

fn group_version_path(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        format!("api/{}", info.version)
    } else {
        format!("apis/{}/{}", info.group, info.version)
    }
}

pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for info in registry.all() {
        let path = group_version_path(info);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={DOCUMENT_HASH}")}),
        );
    }
    json!({"paths": paths})
}

/// The encoded document of one group version (`api/v1`, `apis/apps/v1`).
pub fn v3_document(group_version: &str) -> Option<Bytes> {
    static DOCUMENTS: LazyLock<BTreeMap<String, Bytes>> = LazyLock::new(|| {
        let registry = registry();
        let mut documents = BTreeMap::new();
        for info in registry.all() {
            let path = group_version_path(info);
            if let std::collections::btree_map::Entry::Vacant(entry) = documents.entry(path) {
                let document = build_v3(registry, entry.key());
                entry.insert(encode(&document));
            }
        }
        documents
    });
    DOCUMENTS.get(group_version.trim_end_matches('/')).cloned()
}

/// `/openapi/v2`: every resource in one Swagger 2.0 document, for clients
/// that still read it (`kubectl explain --output plaintext-openapiv2`).
pub fn v2_document() -> Bytes {
    static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| encode(&build_v2(registry())));
    DOCUMENT.clone()
}

fn encode(document: &Value) -> Bytes {
    // Encoding a `Value` cannot fail: its keys are strings.
    Bytes::from(serde_json::to_vec(document).unwrap_or_default())
}

fn build_v3(registry: &Registry, group_version: &str) -> Value {
    let resources: Vec<&ResourceInfo> = registry
        .all()
        .iter()
        .filter(|info| group_version_path(info) == group_version)
        .collect();
    let (schemas, names) = schemas(SchemaSettings::openapi3(), &resources);
    let mut paths = Map::new();
    for (info, name) in resources.iter().zip(&names) {
        let body = json!({"$ref": format!("#/components/schemas/{name}")});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", info.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk(info),
                "parameters": [field_validation()],
                "requestBody": {"content": {"application/json": {"schema": body}}},
                "responses": {"200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": body}},
                }},
            })
        };
        let base = collection_path(info, group_version);
        paths.insert(base.clone(), json!({"post": operation("post")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": operation("put"), "patch": operation("patch")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Flotilla", "version": super::discovery::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn build_v2(registry: &Registry) -> Value {
    let resources: Vec<&ResourceInfo> = registry.all().iter().collect();
    // Swagger 2.0 keeps schemas under `definitions`; otherwise the OpenAPI 3
    // rules (no siblings beside a `$ref`) suit it too.
    let mut settings = SchemaSettings::openapi3();
    settings.definitions_path = "/definitions".into();
    settings.meta_schema = None;
    let (definitions, names) = schemas(settings, &resources);
    let mut paths = Map::new();
    for (info, name) in resources.iter().zip(&names) {
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", info.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk(info),
                "parameters": [field_validation(), {
                    "name": "body", "in": "body", "required": true,
                    "schema": {"$ref": format!("#/definitions/{name}")},
                }],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let base = collection_path(info, &group_version_path(info));
        paths.insert(base.clone(), json!({"post": operation("post")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": operation("put"), "patch": operation("patch")}),
        );
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Flotilla", "version": super::discovery::version()["gitVersion"]},
        "paths": paths,
        "definitions": definitions,
    })
}

/// The schemas of `resources` and of every type they refer to, each kind's
/// marked with its group, version and kind; and each resource's schema name.
fn schemas(
    settings: SchemaSettings,
    resources: &[&ResourceInfo],
) -> (Map<String, Value>, Vec<String>) {
    let mut generator = settings.into_generator();
    let names: Vec<String> = resources
        .iter()
        .map(|info| info.schema_name(&mut generator))
        .collect();
    let mut schemas = generator.take_definitions(true);
    for (info, name) in resources.iter().zip(&names) {
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk(info)]));
        }
    }
    (schemas, names)
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn field_validation() -> Value {
    json!({
        "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "Ignore, Warn or Strict: what to do with fields the type does not know",
    })
}

fn collection_path(info: &ResourceInfo, group_version: &str) -> String {
    if info.namespaced {
        format!("/{group_version}/namespaces/{{namespace}}/{}", info.plural)
    } else {
        format!("/{group_version}/{}", info.plural)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(group_version: &str) -> Value {
        serde_json::from_slice(&v3_document(group_version).unwrap()).unwrap()
    }

    #[test]
    fn every_kind_has_a_schema_marked_with_its_group_version_kind() {
        for info in registry().all() {
            let document = document(&group_version_path(info));
            let schemas = document["components"]["schemas"].as_object().unwrap();
            let found = schemas.values().any(|schema| {
                schema["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.contains(&gvk(info)))
            });
            assert!(found, "no schema for {}", info.kind);
        }
    }

    #[test]
    fn references_resolve_within_the_document() {
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        out.push(target);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let document = document("apis/apps/v1");
        let mut targets = Vec::new();
        refs(&document, &mut targets);
        assert!(!targets.is_empty());
        let schemas = &document["components"]["schemas"];
        for target in targets {
            let name = target.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.get(name).is_some(), "dangling {target}");
        }
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert!(
            deployment["description"]
                .as_str()
                .unwrap()
                .contains("declarative updates")
        );
    }

    #[test]
    fn unknown_group_versions_have_no_document() {
        assert!(v3_document("apis/nope/v1").is_none());
        assert!(v3_document("api/v1/").is_some());
    }
}
