//! OpenAPI documents, as far as clients read them today.
//!
//! kubectl reads `/openapi/v3/<group-version>` to learn whether the server
//! validates fields itself (a `fieldValidation` parameter on PATCH). It
//! does, so each document declares the parameter on every resource, and
//! kubectl then sends `fieldValidation=Strict` instead of validating on its
//! own. The documents carry no type schemas yet, which clients read as
//! "no schema for this kind" (`kubectl explain` needs them; it is not served
//! yet).

use serde_json::{Map, Value, json};

use crate::resources::{Registry, ResourceInfo};

/// Changes when the documents change, so that clients' caches refresh.
const DOCUMENT_HASH: &str = concat!("flotilla-", env!("CARGO_PKG_VERSION"), "-1");

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

/// The document of one group version (`api/v1`, `apis/apps/v1`).
pub fn v3_document(registry: &Registry, group_version: &str) -> Option<Value> {
    let group_version = group_version.trim_end_matches('/');
    let mut paths = Map::new();
    for info in registry
        .all()
        .iter()
        .filter(|info| group_version_path(info) == group_version)
    {
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        let field_validation = json!({
            "name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
            "description": "Ignore, Warn or Strict: what to do with fields the type does not know",
        });
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", info.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [field_validation],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let base = if info.namespaced {
            format!("/{group_version}/namespaces/{{namespace}}/{}", info.plural)
        } else {
            format!("/{group_version}/{}", info.plural)
        };
        paths.insert(base.clone(), json!({"post": operation("post")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": operation("put"), "patch": operation("patch")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Flotilla", "version": super::discovery::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2`: the same operations without schemas, for clients that
/// still read Swagger 2.0.
pub fn v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Flotilla", "version": super::discovery::version()["gitVersion"]},
        "paths": {},
        "definitions": {},
    })
}
