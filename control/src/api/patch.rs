//! The three patch formats kubectl and the client libraries send:
//!
//! - JSON merge patch (RFC 7386), `application/merge-patch+json`;
//! - JSON patch (RFC 6902), `application/json-patch+json`;
//! - strategic merge patch, `application/strategic-merge-patch+json`: a
//!   merge patch in which the lists Kubernetes gives a merge key
//!   (containers by `name`, ports by port number, …) merge element by
//!   element instead of being replaced, with the `$patch`,
//!   `$setElementOrder` and `$retainKeys` directives kubectl emits.
//!
//! A patch is small but what it makes need not be: each JSON patch
//! `copy` can double a document. So every patch is bounded: at most
//! [`JSON_PATCH_OPERATIONS_MAX`] operations, at most
//! [`PATCH_COPIED_MAX`] bytes copied or moved, no result deeper than
//! [`PATCHED_DEPTH_MAX`] or larger than [`PATCHED_SIZE_MAX`], and
//! strategic merges in time linear in the lists they merge. Applying one
//! is CPU work: callers run it off the async workers
//! ([`super::objects`]).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::request::REQUEST_BODY_MAX;
use super::status::ApiError;

/// JSON patch operations one patch may hold (Kubernetes' limit).
pub const JSON_PATCH_OPERATIONS_MAX: usize = 10_000;
/// Bytes (as JSON) a JSON patch may copy or move, all operations together.
pub const PATCH_COPIED_MAX: usize = REQUEST_BODY_MAX;
/// How large a patched object may be, as JSON: what a request may send.
pub const PATCHED_SIZE_MAX: usize = REQUEST_BODY_MAX;
/// How deep a patched object may nest: stored objects are read back with
/// serde_json's limit of 128, so this leaves room below it.
pub const PATCHED_DEPTH_MAX: usize = 100;

pub enum Patch {
    Merge(Value),
    Json(json_patch::Patch),
    Strategic(Value),
}

impl Patch {
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Patch, ApiError> {
        let value = || -> Result<Value, ApiError> {
            serde_json::from_slice(body).map_err(|error| {
                ApiError::bad_request(format!("the patch is not valid JSON: {error}"))
            })
        };
        match content_type {
            "application/merge-patch+json" => Ok(Patch::Merge(value()?)),
            "application/strategic-merge-patch+json" => Ok(Patch::Strategic(value()?)),
            "application/json-patch+json" => {
                let patch: json_patch::Patch =
                    serde_json::from_value(value()?).map_err(|error| {
                        ApiError::bad_request(format!("the JSON patch is malformed: {error}"))
                    })?;
                if patch.0.len() > JSON_PATCH_OPERATIONS_MAX {
                    return Err(ApiError::entity_too_large(format!(
                        "the JSON patch has {} operations; at most {JSON_PATCH_OPERATIONS_MAX} are allowed",
                        patch.0.len()
                    )));
                }
                Ok(Patch::Json(patch))
            }
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml (server-side apply is not supported yet; use client-side `kubectl apply`)",
            )),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// The `resourceVersion` a merge patch pins, which makes it
    /// conditional as in Kubernetes.
    pub fn resource_version(&self) -> Result<Option<i64>, ApiError> {
        match self {
            Patch::Merge(value) | Patch::Strategic(value) => {
                super::objects::resource_version_of(value)
            }
            Patch::Json(_) => Ok(None),
        }
    }

    /// The patched object, or why there is none: the patch does not apply
    /// (422) or what it makes is too large (413) or too deep (422).
    pub fn apply(&self, current: &Value) -> Result<Value, ApiError> {
        let mut object = current.clone();
        match self {
            Patch::Merge(patch) => json_patch::merge(&mut object, patch),
            Patch::Json(patch) => apply_json_patch(&mut object, patch)?,
            Patch::Strategic(patch) => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be an object",
                    ));
                }
                object = strategic_merge(&object, patch, "")?;
            }
        }
        let size = measure(&object, PATCHED_SIZE_MAX).map(|m| m.depth);
        match size {
            Ok(depth) if depth > PATCHED_DEPTH_MAX => Err(too_deep()),
            Ok(_) => Ok(object),
            Err(TooLarge) => Err(ApiError::entity_too_large(format!(
                "the patched object would be larger than {PATCHED_SIZE_MAX} bytes"
            ))),
        }
    }
}

fn too_deep() -> ApiError {
    ApiError::unprocessable(format!(
        "the patched object would nest deeper than {PATCHED_DEPTH_MAX} levels"
    ))
}

/// Applies `patch` to `object` one operation at a time, refusing, before
/// it happens, an operation that would copy or move past the budget or
/// nest past the depth limit. On an error `object` is half patched: the
/// caller drops it.
fn apply_json_patch(object: &mut Value, patch: &json_patch::Patch) -> Result<(), ApiError> {
    let mut copied = 0usize;
    for (index, operation) in patch.0.iter().enumerate() {
        if let Some((value, from_document)) = placed(object, operation) {
            let budget = if from_document {
                PATCH_COPIED_MAX.saturating_sub(copied)
            } else {
                REQUEST_BODY_MAX
            };
            let measured = measure(value, budget).map_err(|TooLarge| {
                ApiError::entity_too_large(format!(
                    "the JSON patch copies or moves more than {PATCH_COPIED_MAX} bytes"
                ))
            })?;
            if from_document {
                copied += measured.size;
            }
            let at = operation.path().as_str().matches('/').count();
            if at + measured.depth > PATCHED_DEPTH_MAX {
                return Err(too_deep());
            }
        }
        json_patch::patch_unsafe(object, std::slice::from_ref(operation)).map_err(|error| {
            ApiError::unprocessable(format!(
                "the JSON patch cannot be applied: operation {index} failed at path '{}': {}",
                error.path, error.kind
            ))
        })?;
    }
    Ok(())
}

/// What `operation` puts in place, and whether it comes from the document
/// (a copy or a move, whose size the budget pays for) rather than from the
/// patch, which the request size bounds.
fn placed<'v>(
    object: &'v Value,
    operation: &'v json_patch::PatchOperation,
) -> Option<(&'v Value, bool)> {
    use json_patch::PatchOperation;
    let in_document = |from: &str| object.pointer(from).unwrap_or(&Value::Null);
    match operation {
        PatchOperation::Add(op) => Some((&op.value, false)),
        PatchOperation::Replace(op) => Some((&op.value, false)),
        PatchOperation::Copy(op) => Some((in_document(op.from.as_str()), true)),
        PatchOperation::Move(op) => Some((in_document(op.from.as_str()), true)),
        PatchOperation::Remove(_) | PatchOperation::Test(_) => None,
    }
}

/// A value's size as compact JSON (close enough: strings are counted
/// without escapes) and how deep it nests (a scalar is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Measure {
    size: usize,
    depth: usize,
}

/// The value is larger than the limit it was measured against.
#[derive(Debug)]
struct TooLarge;

/// Measures `value`, giving up as soon as it passes `limit` bytes: the cost
/// is bounded by the limit, whatever the value, and there is no recursion
/// to overflow the stack.
fn measure(value: &Value, limit: usize) -> Result<Measure, TooLarge> {
    let mut size = 0usize;
    let mut depth = 0usize;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, level)) = pending.pop() {
        size += match value {
            Value::Null => 4,
            Value::Bool(_) => 5,
            Value::Number(number) => number.to_string().len(),
            Value::String(text) => text.len() + 2,
            Value::Array(items) => {
                depth = depth.max(level + 1);
                pending.extend(items.iter().map(|item| (item, level + 1)));
                items.len() + 1
            }
            Value::Object(fields) => {
                depth = depth.max(level + 1);
                pending.extend(fields.values().map(|field| (field, level + 1)));
                fields.keys().map(|key| key.len() + 4).sum::<usize>() + 1
            }
        };
        if size > limit {
            return Err(TooLarge);
        }
    }
    Ok(Measure { size, depth })
}

/// The merge key of a list field, by its name, as Kubernetes' types
/// declare them. Lists without one are replaced whole.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        // Container ports merge by containerPort, Service ports by port.
        "ports" if sample.get("containerPort").is_some() => "containerPort",
        "ports" => "port",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge(current: &Value, patch: &Value, path: &str) -> Result<Value, ApiError> {
    let Some(patch) = patch.as_object() else {
        return Ok(patch.clone());
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        return Ok(Value::Object(replaced));
    }
    let mut merged: Map<String, Value> = current.as_object().cloned().unwrap_or_default();
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: HashSet<&str> = keep.iter().filter_map(Value::as_str).collect();
        merged.retain(|key, _| keep.contains(key.as_str()));
    }
    for (field, value) in patch {
        if field.starts_with('$') {
            continue;
        }
        let child = format!("{path}.{field}");
        if value.is_null() {
            merged.remove(field);
            continue;
        }
        let existing = merged.get(field).cloned().unwrap_or(Value::Null);
        let order = patch
            .get(&format!("$setElementOrder/{field}"))
            .and_then(Value::as_array);
        let next = match (value, &existing) {
            (Value::Array(items), Value::Array(current_items)) => {
                let sample = items
                    .first()
                    .or(current_items.first())
                    .unwrap_or(&Value::Null);
                if let Some(key) = merge_key(field, sample).filter(|_| sample.is_object()) {
                    merge_list(current_items, items, key, order, &child)?
                } else if is_set_list(field) {
                    let mut seen: HashSet<String> =
                        current_items.iter().map(Value::to_string).collect();
                    let mut union = current_items.clone();
                    for item in items {
                        if seen.insert(item.to_string()) {
                            union.push(item.clone());
                        }
                    }
                    Value::Array(union)
                } else {
                    value.clone()
                }
            }
            (Value::Array(items), _) => Value::Array(
                items
                    .iter()
                    .filter(|item| item.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .cloned()
                    .collect(),
            ),
            (Value::Object(_), _) => strategic_merge(&existing, value, &child)?,
            _ => value.clone(),
        };
        merged.insert(field.clone(), next);
    }
    // `$deleteFromPrimitiveList/<field>`: remove scalars from a set list.
    for (directive, values) in patch {
        if let Some(field) = directive.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Some(remove)) =
                (merged.get_mut(field), values.as_array())
        {
            let remove: HashSet<String> = remove.iter().map(Value::to_string).collect();
            list.retain(|item| !remove.contains(&item.to_string()));
        }
    }
    Ok(Value::Object(merged))
}

/// Merges the `patch` elements into the `current` ones by `key`, in time
/// linear in both: elements are found through an index of their keys, as
/// JSON text.
fn merge_list(
    current: &[Value],
    patch: &[Value],
    key: &str,
    order: Option<&Vec<Value>>,
    path: &str,
) -> Result<Value, ApiError> {
    let mut merged: Vec<Option<Value>> = current.iter().cloned().map(Some).collect();
    let mut positions: HashMap<String, usize> = HashMap::with_capacity(current.len());
    for (position, item) in current.iter().enumerate() {
        if let Some(id) = item.get(key) {
            positions.entry(id.to_string()).or_insert(position);
        }
    }
    for item in patch {
        let Some(id) = item.get(key) else {
            return Err(ApiError::bad_request(format!(
                "{path}: every element of this list needs its merge key `{key}`"
            )));
        };
        let id = id.to_string();
        let directive = item.get("$patch").and_then(Value::as_str);
        match (directive, positions.get(&id).copied()) {
            (Some("delete"), Some(position)) => {
                merged[position] = None;
                positions.remove(&id);
            }
            (Some("delete"), None) => {}
            (_, Some(position)) => {
                let existing = merged[position].take().unwrap_or(Value::Null);
                merged[position] = Some(strategic_merge(&existing, item, path)?);
            }
            (_, None) => {
                positions.insert(id, merged.len());
                merged.push(Some(strategic_merge(&Value::Null, item, path)?));
            }
        }
    }
    let mut merged: Vec<Value> = merged.into_iter().flatten().collect();
    if let Some(order) = order {
        let mut ranks: HashMap<String, usize> = HashMap::with_capacity(order.len());
        for (rank, wanted) in order.iter().enumerate() {
            if let Some(id) = wanted.get(key) {
                ranks.entry(id.to_string()).or_insert(rank);
            }
        }
        merged.sort_by_cached_key(|item| {
            item.get(key)
                .and_then(|id| ranks.get(&id.to_string()))
                .copied()
                .unwrap_or(usize::MAX)
        });
    }
    Ok(Value::Array(merged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategic(current: Value, patch: Value) -> Value {
        Patch::Strategic(patch).apply(&current).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_keep_what_the_patch_does_not_name() {
        let current = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "side:1"}
        ]}});
        let patched = strategic(
            current,
            json!({"spec": {"containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]}
            ]}}),
        );
        let containers = &patched["spec"]["containers"];
        assert_eq!(containers[0]["image"], "app:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(containers[1]["name"], "sidecar");
    }

    #[test]
    fn kubectl_apply_directives() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                             "spec": {"ports": [{"port": 80}, {"port": 443}, {"port": 8080}],
                                      "selector": {"app": "x"}}});
        let patched = strategic(
            current,
            json!({
                "metadata": {"labels": {"b": null}},
                "spec": {
                    "$setElementOrder/ports": [{"port": 8080}, {"port": 80}],
                    "ports": [{"port": 443, "$patch": "delete"}, {"port": 8080, "name": "alt"}],
                    "selector": {"$patch": "replace", "app": "y"}
                }
            }),
        );
        assert_eq!(patched["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 8080, "name": "alt"}, {"port": 80}])
        );
        assert_eq!(patched["spec"]["selector"], json!({"app": "y"}));
    }

    #[test]
    fn plain_lists_are_replaced_and_finalizers_are_a_set() {
        let current = json!({"spec": {"args": ["a", "b"]}, "metadata": {"finalizers": ["x"]}});
        let patched = strategic(
            current,
            json!({"spec": {"args": ["c"]}, "metadata": {"finalizers": ["y", "x"]}}),
        );
        assert_eq!(patched["spec"]["args"], json!(["c"]));
        assert_eq!(patched["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn merge_and_json_patches() {
        let current = json!({"spec": {"replicas": 1, "paused": true}});
        let merged = Patch::parse(
            "application/merge-patch+json",
            br#"{"spec":{"replicas":3,"paused":null}}"#,
        )
        .unwrap()
        .apply(&current)
        .unwrap();
        assert_eq!(merged, json!({"spec": {"replicas": 3}}));
        let patched = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        )
        .unwrap()
        .apply(&current)
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 5);
        let error = Patch::parse(
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap()
        .apply(&current)
        .unwrap_err();
        assert_eq!(error.code.as_u16(), 422);
    }

    fn json_patch(current: &Value, operations: Value) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&operations).unwrap();
        Patch::parse("application/json-patch+json", &body)?.apply(current)
    }

    #[test]
    fn a_copy_bomb_is_refused_before_it_grows() {
        let current = json!({"data": {"a": "x".repeat(64)}});
        let mut operations = vec![json!({"op": "add", "path": "/data/b", "value": []})];
        operations.push(json!({"op": "add", "path": "/data/b/-", "value": "x"}));
        for _ in 0..40 {
            operations.push(json!({"op": "copy", "from": "/data", "path": "/data/b/-"}));
        }
        let started = std::time::Instant::now();
        let error = json_patch(&current, Value::Array(operations)).unwrap_err();
        assert_eq!(error.code.as_u16(), 413, "{}", error.message);
        assert!(
            error.message.contains("copies or moves more than"),
            "{}",
            error.message
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn too_many_operations_or_too_deep_a_result_are_refused() {
        let operations = vec![json!({"op": "test", "path": "", "value": {}}); 10_001];
        let error = json_patch(&json!({}), Value::Array(operations)).unwrap_err();
        assert_eq!(error.code.as_u16(), 413);
        let mut deep = json!("bottom");
        for _ in 0..90 {
            deep = json!([deep]);
        }
        let path = "/x".repeat(20);
        let mut current = json!({});
        let mut at = &mut current;
        for _ in 0..19 {
            at["x"] = json!({});
            at = &mut at["x"];
        }
        let error = json_patch(
            &current,
            json!([{"op": "add", "path": path, "value": deep}]),
        )
        .unwrap_err();
        assert_eq!(error.code.as_u16(), 422);
        assert!(error.message.contains("deeper than"), "{}", error.message);
    }

    #[test]
    fn a_failed_operation_is_named_by_its_index() {
        let error = json_patch(
            &json!({"a": 1}),
            json!([{"op": "replace", "path": "/a", "value": 2}, {"op": "remove", "path": "/b"}]),
        )
        .unwrap_err();
        assert_eq!(error.code.as_u16(), 422);
        assert!(
            error.message.contains("operation 1 failed at path '/b'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_large_list_merges_in_linear_time() {
        let env = |range: std::ops::Range<usize>, value: &str| {
            range
                .map(|i| json!({"name": format!("V{i}"), "value": value}))
                .collect::<Vec<_>>()
        };
        let current =
            json!({"spec": {"containers": [{"name": "app", "env": env(0..20_000, "old")}]}});
        let patch =
            json!({"spec": {"containers": [{"name": "app", "env": env(10_000..30_000, "new")}]}});
        let started = std::time::Instant::now();
        let patched = strategic(current, patch);
        let env = patched["spec"]["containers"][0]["env"].as_array().unwrap();
        assert_eq!(env.len(), 30_000);
        assert_eq!(env[9_999]["value"], "old");
        assert_eq!(env[10_000]["value"], "new");
        assert_eq!(env[29_999]["name"], "V29999");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
