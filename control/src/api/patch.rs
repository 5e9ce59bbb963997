//! The three patch formats kubectl and the client libraries send:
//!
//! - JSON merge patch (RFC 7386), `application/merge-patch+json`;
//! - JSON patch (RFC 6902), `application/json-patch+json`;
//! - strategic merge patch, `application/strategic-merge-patch+json`: a
//!   merge patch in which the lists Kubernetes gives a merge key
//!   (containers by `name`, ports by port number, …) merge element by
//!   element instead of being replaced, with the `$patch`,
//!   `$setElementOrder` and `$retainKeys` directives kubectl emits.

use serde_json::{Map, Value};

use super::status::ApiError;

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
            "application/json-patch+json" => serde_json::from_value(value()?)
                .map(Patch::Json)
                .map_err(|error| {
                    ApiError::bad_request(format!("the JSON patch is malformed: {error}"))
                }),
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

    pub fn apply(&self, current: &Value) -> Result<Value, ApiError> {
        let mut object = current.clone();
        match self {
            Patch::Merge(patch) => json_patch::merge(&mut object, patch),
            Patch::Json(patch) => json_patch::patch(&mut object, patch).map_err(|error| {
                ApiError::unprocessable(format!("the JSON patch cannot be applied: {error}"))
            })?,
            Patch::Strategic(patch) => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be an object",
                    ));
                }
                object = strategic_merge(&object, patch, "")?;
            }
        }
        Ok(object)
    }
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
        merged.retain(|key, _| keep.iter().any(|k| k.as_str() == Some(key)));
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
                    let mut union = current_items.clone();
                    for item in items {
                        if !union.contains(item) {
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
            list.retain(|item| !remove.contains(item));
        }
    }
    Ok(Value::Object(merged))
}

fn merge_list(
    current: &[Value],
    patch: &[Value],
    key: &str,
    order: Option<&Vec<Value>>,
    path: &str,
) -> Result<Value, ApiError> {
    let mut merged: Vec<Value> = current.to_vec();
    for item in patch {
        let Some(id) = item.get(key) else {
            return Err(ApiError::bad_request(format!(
                "{path}: every element of this list needs its merge key `{key}`"
            )));
        };
        let position = merged
            .iter()
            .position(|existing| existing.get(key) == Some(id));
        let directive = item.get("$patch").and_then(Value::as_str);
        match (directive, position) {
            (Some("delete"), Some(index)) => {
                merged.remove(index);
            }
            (Some("delete"), None) => {}
            (_, Some(index)) => merged[index] = strategic_merge(&merged[index], item, path)?,
            (_, None) => merged.push(strategic_merge(&Value::Null, item, path)?),
        }
    }
    if let Some(order) = order {
        let rank = |item: &Value| {
            order
                .iter()
                .position(|wanted| wanted.get(key) == item.get(key))
                .unwrap_or(usize::MAX)
        };
        merged.sort_by_key(rank);
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
}
