//! Client-side apply's arithmetic, as pure functions: the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, and the
//! three-way JSON merge patch (RFC 7386) that takes the live object to the
//! manifest while removing what an earlier apply set and the manifest no
//! longer has.
//!
//! This is the merge kubectl itself uses for kinds it has no schema for
//! (`jsonmergepatch.CreateThreeWayJSONMergePatch`): lists are replaced
//! whole when the manifest changes them. kubectl's strategic merge would
//! instead merge lists by key and keep elements others added; we choose
//! the schema-free form so that it holds for every kind the server serves.
//! It knows JSON values, not the API.

use serde_json::{Map, Value};

/// The annotation kubectl and `flotilla apply` keep the last manifest in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `manifest` as it will be sent: carrying its own JSON (without the
/// annotation itself) in [`LAST_APPLIED`], byte for byte as kubectl writes
/// it (keys sorted, compact, an `annotations` map even when empty, a
/// final newline), so that either tool finds the other's apply
/// unchanged.
pub fn annotated(manifest: &Value) -> Value {
    let mut annotated = manifest.clone();
    let metadata = ensure_object(&mut annotated, "metadata");
    if let Value::Object(annotations) = ensure_object(metadata, "annotations") {
        annotations.remove(LAST_APPLIED);
    }
    // serde_json's maps keep keys sorted, as Go's encoder writes them.
    let text = format!("{annotated}\n");
    if let Value::Object(annotations) = &mut annotated["metadata"]["annotations"] {
        annotations.insert(LAST_APPLIED.into(), Value::String(text));
    }
    annotated
}

/// The manifest an earlier apply recorded on `live`, if any.
pub fn last_applied(live: &Value) -> Option<Value> {
    let text = live["metadata"]["annotations"][LAST_APPLIED].as_str()?;
    serde_json::from_str(text).ok()
}

/// The merge patch from `current` (live) to `modified` (the annotated
/// manifest), deleting fields `original` (the last applied manifest) had
/// and `modified` dropped. An empty object means nothing changes.
pub fn three_way(original: Option<&Value>, modified: &Value, current: &Value) -> Value {
    let empty = Map::new();
    let modified = modified.as_object().unwrap_or(&empty);
    Value::Object(object_patch(
        original.and_then(Value::as_object),
        modified,
        current.as_object(),
    ))
}

fn object_patch(
    original: Option<&Map<String, Value>>,
    modified: &Map<String, Value>,
    current: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    let has = |key: &String| current.is_some_and(|current| current.contains_key(key));
    // Dropped from the manifest since the last apply: delete, if still there.
    for key in original.into_iter().flat_map(Map::keys) {
        if !modified.contains_key(key) && has(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, wanted) in modified {
        let live = current.and_then(|current| current.get(key));
        let before = original.and_then(|original| original.get(key));
        match (wanted, live) {
            (Value::Object(wanted), Some(Value::Object(live))) => {
                let nested = object_patch(before.and_then(Value::as_object), wanted, Some(live));
                if !nested.is_empty() {
                    patch.insert(key.clone(), Value::Object(nested));
                }
            }
            // A value the manifest did not change and the live object
            // still holds (perhaps with defaults added inside, as a
            // container list has) is left alone; anything else is set.
            (wanted, Some(live))
                if before.is_none_or(|before| before == wanted) && covers(live, wanted) => {}
            (wanted, _) => {
                patch.insert(key.clone(), wanted.clone());
            }
        }
    }
    patch
}

/// Whether `live` holds everything `wanted` says: equal scalars, lists of
/// the same length element by element, objects key by key (extra keys in
/// `live` are the server's defaults and status).
fn covers(live: &Value, wanted: &Value) -> bool {
    match (live, wanted) {
        (Value::Object(live), Value::Object(wanted)) => wanted
            .iter()
            .all(|(key, wanted)| live.get(key).is_some_and(|live| covers(live, wanted))),
        (Value::Array(live), Value::Array(wanted)) => {
            live.len() == wanted.len() && live.iter().zip(wanted).all(|(l, w)| covers(l, w))
        }
        (live, wanted) => live == wanted,
    }
}

fn ensure_object<'v>(value: &'v mut Value, key: &str) -> &'v mut Value {
    if !value[key].is_object() {
        value[key] = Value::Object(Map::new());
    }
    &mut value[key]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(image: &str, extra: Value) -> Value {
        let mut value = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
        });
        json_patch::merge(&mut value, &extra);
        value
    }

    /// What the server would hold after `manifest`: defaults inside lists,
    /// status, and fields set by others.
    fn live_from(manifest: &Value) -> Value {
        let mut live = annotated(manifest);
        json_patch::merge(
            &mut live,
            &json!({"metadata": {"uid": "u1", "resourceVersion": "7"}, "status": {"replicas": 2}}),
        );
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        live
    }

    #[test]
    fn the_annotation_holds_the_manifest_without_itself() {
        let manifest = deployment("a:1", json!({}));
        let sent = annotated(&manifest);
        let mut recorded = last_applied(&sent).unwrap();
        assert_eq!(recorded["metadata"]["annotations"], json!({}));
        recorded["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(recorded, manifest);
        assert!(
            sent["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap()
                .ends_with("}\n")
        );
        // Applying the annotated object again records the same text.
        assert_eq!(annotated(&sent), sent);
    }

    #[test]
    fn the_annotation_is_the_text_kubectl_writes() {
        // As kubectl 1.37 recorded this manifest (after setting its namespace).
        let manifest = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "interop", "namespace": "default", "labels": {"a": "1", "d": "4"}},
            "data": {"x": "1", "z": "3"},
        });
        let kubectl = "{\"apiVersion\":\"v1\",\"data\":{\"x\":\"1\",\"z\":\"3\"},\"kind\":\"ConfigMap\",\
                       \"metadata\":{\"annotations\":{},\"labels\":{\"a\":\"1\",\"d\":\"4\"},\
                       \"name\":\"interop\",\"namespace\":\"default\"}}\n";
        assert_eq!(
            annotated(&manifest)["metadata"]["annotations"][LAST_APPLIED],
            kubectl
        );
    }

    #[test]
    fn an_unchanged_manifest_patches_nothing_despite_defaults() {
        let manifest = deployment("a:1", json!({}));
        let live = live_from(&manifest);
        let patch = three_way(last_applied(&live).as_ref(), &annotated(&manifest), &live);
        assert_eq!(patch, json!({}));
    }

    #[test]
    fn changed_fields_are_set_and_dropped_fields_deleted() {
        let first = deployment("a:1", json!({"metadata": {"labels": {"tier": "front"}}}));
        let live = live_from(&first);
        let second = deployment("a:2", json!({"spec": {"replicas": null}}));
        let patch = three_way(last_applied(&live).as_ref(), &annotated(&second), &live);
        assert_eq!(patch["metadata"]["labels"], json!({"tier": null}));
        assert_eq!(patch["spec"]["replicas"], Value::Null);
        assert!(patch["spec"].as_object().unwrap().contains_key("replicas"));
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "a:2"}]),
        );
        // Fields the manifest never set (status, uid) are not touched.
        assert!(patch.get("status").is_none());
        assert!(patch["metadata"].get("uid").is_none());
    }

    #[test]
    fn a_field_dropped_inside_a_list_replaces_the_list() {
        let first = deployment("a:1", json!({}));
        let mut with_port = first.clone();
        with_port["spec"]["template"]["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": 80}]);
        let live = live_from(&with_port);
        let patch = three_way(last_applied(&live).as_ref(), &annotated(&first), &live);
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "a:1"}]),
        );
    }

    #[test]
    fn without_an_earlier_apply_nothing_is_deleted() {
        let manifest = deployment("a:1", json!({}));
        let mut live = live_from(&manifest);
        live["metadata"]["annotations"] = json!({});
        live["metadata"]["labels"]["extra"] = json!("kept");
        let patch = three_way(None, &annotated(&manifest), &live);
        assert!(patch["metadata"]["labels"].is_null());
        assert!(patch["metadata"]["annotations"][LAST_APPLIED].is_string());
    }
}
