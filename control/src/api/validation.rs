//! Validation as Kubernetes does it: names, labels and required fields,
//! plus what Flotilla adds because its containers are Wasm components. Every
//! problem found is reported, each with its field, so one 422 tells the user
//! everything that is wrong.

use serde_json::Value;

use super::status::FieldError;
use crate::resources::ResourceInfo;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
/// Kubernetes' limit on all of an object's annotations together.
const ANNOTATIONS_TOTAL_MAX: usize = 256 * 1024;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be 1 to {DNS1123_LABEL_MAX} characters (is {})",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character"
                .into(),
        )
    }
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be 1 to {DNS1123_SUBDOMAIN_MAX} characters (is {})",
            name.len()
        ));
    }
    if name.split('.').all(|label| dns1123_label(label).is_ok()) {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        )
    }
}

/// `[prefix/]name`: an optional DNS subdomain prefix, then a qualified name.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|why| format!("prefix part {why}"))?;
    }
    qualified_name(name)
}

/// Empty, or a qualified name of at most 63 characters.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    qualified_name(value)
}

fn qualified_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: must be 63 characters or less, begin and end with an alphanumeric \
             character, with dashes, underscores, dots and alphanumerics between"
        ))
    }
}

/// Everything wrong with `object`, a normalized object of `info`.
pub fn validate(info: &ResourceInfo, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    metadata(info, object, &mut errors);
    match info.kind {
        "Pod" => pod_spec(&object["spec"], "spec", &mut errors),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => workload(object, &mut errors),
        "Job" => pod_template(&object["spec"]["template"], "spec.template", &mut errors),
        "CronJob" => pod_template(
            &object["spec"]["jobTemplate"]["spec"]["template"],
            "spec.jobTemplate.spec.template",
            &mut errors,
        ),
        "Service" => service(object, &mut errors),
        "ConfigMap" | "Secret" => data_keys(object, &mut errors),
        "Namespace" => errors.extend(crate::auth::pod_security::validate_namespace_labels(object)),
        _ => {}
    }
    errors
}

/// What an update from `old` to `new` may not change, beyond what
/// [`validate`] checks of `new` alone: a pod's spec, but for the fields
/// Kubernetes lets change on a running pod.
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    if info.kind != "Pod" || pod_spec_change_allowed(&old["spec"], &new["spec"]) {
        return Vec::new();
    }
    vec![FieldError::forbidden(
        "spec",
        "pod updates may not change fields other than `spec.containers[*].image`, \
         `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` (set or shortened), \
         `spec.tolerations` (only additions to existing tolerations) or \
         `spec.terminationGracePeriodSeconds` (set to 1 when it was negative)",
    )]
}

/// Whether `new` differs from `old` only where a running pod may change:
/// `new` with those fields put back as they were equals `old`.
fn pod_spec_change_allowed(old: &Value, new: &Value) -> bool {
    let mut rewound = new.clone();
    for list in ["containers", "initContainers"] {
        // `get_mut`, not indexing: indexing would add the list as null.
        let (Some(before), Some(after)) = (
            old[list].as_array(),
            rewound.get_mut(list).and_then(Value::as_array_mut),
        ) else {
            continue;
        };
        if before.len() == after.len() {
            for (was, now) in before.iter().zip(after.iter_mut()) {
                now["image"] = was["image"].clone();
            }
        }
    }
    let deadline = |spec: &Value| spec["activeDeadlineSeconds"].as_i64();
    if let Some(now) = deadline(&rewound)
        && deadline(old).is_none_or(|was| now <= was)
    {
        put_back(&mut rewound, old, "activeDeadlineSeconds");
    }
    if let (Some(was), Some(now)) = (
        old["tolerations"].as_array(),
        rewound["tolerations"].as_array(),
    ) && now.starts_with(was)
    {
        put_back(&mut rewound, old, "tolerations");
    } else if old["tolerations"].is_null() && rewound["tolerations"].is_array() {
        put_back(&mut rewound, old, "tolerations");
    }
    let grace = |spec: &Value| spec["terminationGracePeriodSeconds"].as_i64();
    if grace(old).is_some_and(|was| was < 0) && grace(&rewound) == Some(1) {
        put_back(&mut rewound, old, "terminationGracePeriodSeconds");
    }
    rewound == *old
}

/// Sets `spec[field]` to what `old` has there, or removes it.
fn put_back(spec: &mut Value, old: &Value, field: &str) {
    match (old.get(field), spec.as_object_mut()) {
        (Some(value), _) => spec[field] = value.clone(),
        (None, Some(object)) => {
            object.remove(field);
        }
        (None, None) => {}
    }
}

fn metadata(info: &ResourceInfo, object: &Value, errors: &mut Vec<FieldError>) {
    let metadata = &object["metadata"];
    match metadata["name"].as_str() {
        None | Some("") => errors.push(FieldError::required("metadata.name")),
        Some(name) => {
            // Names that become DNS labels (namespaces, services) are held
            // to the stricter rule.
            let check = match info.kind {
                "Namespace" | "Service" => dns1123_label(name),
                _ => dns1123_subdomain(name),
            };
            if let Err(why) = check {
                errors.push(FieldError::invalid(
                    "metadata.name",
                    format!("Invalid value: \"{name}\": {why}"),
                ));
            }
        }
    }
    if let Some(labels) = metadata["labels"].as_object() {
        for (key, value) in labels {
            if let Err(why) = label_key(key) {
                errors.push(FieldError::invalid(
                    "metadata.labels",
                    format!("Invalid value: \"{key}\": {why}"),
                ));
            }
            if let Err(why) = label_value(value.as_str().unwrap_or_default()) {
                errors.push(FieldError::invalid(
                    format!("metadata.labels.{key}"),
                    format!("Invalid value: {value}: {why}"),
                ));
            }
        }
    }
    if let Some(annotations) = metadata["annotations"].as_object() {
        let total: usize = annotations
            .iter()
            .map(|(key, value)| key.len() + value.as_str().map_or(0, str::len))
            .sum();
        if total > ANNOTATIONS_TOTAL_MAX {
            errors.push(FieldError::invalid(
                "metadata.annotations",
                format!("Too long: must have at most {ANNOTATIONS_TOTAL_MAX} bytes"),
            ));
        }
    }
}

fn workload(object: &Value, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    if let Some(replicas) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        errors.push(FieldError::invalid(
            "spec.replicas",
            format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    let selector = &spec["selector"];
    let match_labels = selector["matchLabels"].as_object();
    if selector.is_null()
        || (match_labels.is_none_or(|m| m.is_empty())
            && selector["matchExpressions"]
                .as_array()
                .is_none_or(|m| m.is_empty()))
    {
        errors.push(FieldError::required("spec.selector"));
    } else if let Some(match_labels) = match_labels {
        let template_labels = &spec["template"]["metadata"]["labels"];
        if match_labels
            .iter()
            .any(|(key, value)| template_labels[key] != *value)
        {
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                "Invalid value: `selector` does not match template `labels`",
            ));
        }
    }
    pod_template(&spec["template"], "spec.template", errors);
}

fn pod_template(template: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if template.is_null() {
        errors.push(FieldError::required(path));
        return;
    }
    pod_spec(&template["spec"], &format!("{path}.spec"), errors);
}

fn pod_spec(spec: &Value, path: &str, errors: &mut Vec<FieldError>) {
    // The sandbox has no host to share: say so rather than ignore it.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            errors.push(FieldError::invalid(
                format!("{path}.{field}"),
                "Forbidden: Flotilla runs pods as WebAssembly sandboxes, which share nothing \
                 with the host",
            ));
        }
    }
    // Kubernetes' range: a positive int32, so that a deadline is a time.
    if let Some(deadline) = spec.get("activeDeadlineSeconds").filter(|v| !v.is_null())
        && !deadline
            .as_i64()
            .is_some_and(|seconds| (1..=i64::from(i32::MAX)).contains(&seconds))
    {
        errors.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            format!("Invalid value: {deadline}: must be between 1 and 2147483647, inclusive"),
        ));
    }
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        errors.push(FieldError::required(format!("{path}.containers")));
    }
    let mut names = Vec::new();
    for (list, containers) in [
        ("initContainers", spec["initContainers"].as_array()),
        ("containers", containers),
    ] {
        for (index, container) in containers.into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{index}]");
            match container["name"].as_str() {
                None | Some("") => errors.push(FieldError::required(format!("{at}.name"))),
                Some(name) => {
                    if let Err(why) = dns1123_label(name) {
                        errors.push(FieldError::invalid(
                            format!("{at}.name"),
                            format!("Invalid value: \"{name}\": {why}"),
                        ));
                    } else if names.contains(&name) {
                        errors.push(FieldError {
                            field: format!("{at}.name"),
                            cause: "FieldValueDuplicate",
                            message: format!("Duplicate value: \"{name}\""),
                        });
                    }
                    names.push(name);
                }
            }
            match container["image"].as_str() {
                None | Some("") => errors.push(FieldError::required(format!("{at}.image"))),
                Some(image) => {
                    if let Err(why) = wasm_image(image) {
                        errors.push(FieldError::invalid(
                            format!("{at}.image"),
                            format!("Invalid value: \"{image}\": {why}"),
                        ));
                    }
                }
            }
            if container["securityContext"]["privileged"] == Value::Bool(true) {
                errors.push(FieldError::invalid(
                    format!("{at}.securityContext.privileged"),
                    "Forbidden: a WebAssembly sandbox cannot be privileged",
                ));
            }
            for (port_index, port) in container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                port_number(
                    &port["containerPort"],
                    &format!("{at}.ports[{port_index}].containerPort"),
                    errors,
                );
            }
        }
    }
}

/// A container image must name a Wasm component Flotilla can fetch: a
/// `file://` path (local clusters), `name[:tag]`, `name@sha256:<64 hex>`,
/// or an OCI reference with a registry host.
pub fn wasm_image(image: &str) -> Result<(), String> {
    if let Some(path) = image.strip_prefix("file://") {
        return if path.starts_with('/') {
            Ok(())
        } else {
            Err("a file:// image needs an absolute path".into())
        };
    }
    if image.contains("://") {
        return Err(
            "only file:// and registry references (name:tag, name@sha256:…) are supported".into(),
        );
    }
    if image
        .chars()
        .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
    {
        return Err("an image reference is lowercase and has no spaces".into());
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or("the digest must be sha256:<64 hex digits>")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the digest must be sha256:<64 hex digits>".into());
        }
    }
    if name.is_empty() || name.starts_with(['/', ':', '.', '-']) || name.ends_with(['/', ':']) {
        return Err("the image name is malformed".into());
    }
    Ok(())
}

fn service(object: &Value, errors: &mut Vec<FieldError>) {
    let spec = &object["spec"];
    let headless = spec["clusterIP"].as_str() == Some("None");
    let external_name = spec["type"].as_str() == Some("ExternalName");
    let ports = spec["ports"].as_array();
    if ports.is_none_or(|p| p.is_empty()) && !headless && !external_name {
        errors.push(FieldError::required("spec.ports"));
    }
    for (index, port) in ports.into_iter().flatten().enumerate() {
        port_number(&port["port"], &format!("spec.ports[{index}].port"), errors);
    }
}

fn port_number(value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value.as_i64() {
        Some(1..=65535) => {}
        None => errors.push(FieldError::required(path)),
        Some(other) => errors.push(FieldError::invalid(
            path,
            format!("Invalid value: {other}: must be between 1 and 65535, inclusive"),
        )),
    }
}

fn data_keys(object: &Value, errors: &mut Vec<FieldError>) {
    for field in ["data", "binaryData", "stringData"] {
        for key in object[field]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let ok = !key.is_empty()
                && key.len() <= DNS1123_SUBDOMAIN_MAX
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                errors.push(FieldError::invalid(
                    format!("{field}[{key}]"),
                    format!(
                        "Invalid value: \"{key}\": a valid config key must consist of alphanumeric \
                         characters, '-', '_' or '.'"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_ok());
        for bad in ["", "Web", "-web", "web-", "a_b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
        assert!(dns1123_subdomain("web.example-1").is_ok());
        assert!(dns1123_subdomain("web..x").is_err());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("Bad Key").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn active_deadlines_are_positive_int32s() {
        let registry = Registry::kubernetes();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let pod = |deadline: Value| {
            json!({"metadata": {"name": "p"}, "spec": {
                "activeDeadlineSeconds": deadline,
                "containers": [{"name": "c", "image": "hello:1.0"}]}})
        };
        for good in [json!(1), json!(2_147_483_647), Value::Null] {
            assert!(validate(pods, &pod(good.clone())).is_empty(), "{good}");
        }
        for bad in [
            json!(0),
            json!(-1),
            json!(2_147_483_648i64),
            json!(i64::MAX),
            json!("60"),
        ] {
            let errors = validate(pods, &pod(bad.clone()));
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == "spec.activeDeadlineSeconds"),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn wasm_images() {
        for good in [
            "hello:1.0",
            "registry.example.com:5000/team/hello:v2",
            "hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "file:///srv/modules/hello.wasm",
        ] {
            assert!(wasm_image(good).is_ok(), "{good}");
        }
        for bad in [
            "file://relative.wasm",
            "https://x/y.wasm",
            "hello@sha256:abc",
            "Hello",
            ":x",
        ] {
            assert!(wasm_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_of_a_pod_is_listed() {
        let registry = Registry::kubernetes();
        let pods = registry.find("", "v1", "pods").unwrap();
        let errors = validate(
            pods,
            &json!({
                "metadata": {"name": "Bad_Name", "labels": {"ok": "yes"}},
                "spec": {
                    "hostNetwork": true,
                    "containers": [
                        {"name": "a", "image": "x:1", "ports": [{"containerPort": 70000}]},
                        {"name": "a", "image": ""}
                    ]
                }
            }),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.hostNetwork",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[1].name",
                "spec.containers[1].image",
            ]
        );
    }

    #[test]
    fn a_deployment_selector_must_match_its_template() {
        let registry = Registry::kubernetes();
        let deployments = registry.find("apps", "v1", "deployments").unwrap();
        let errors = validate(
            deployments,
            &json!({
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "other"}},
                                 "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
                }
            }),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn a_running_pod_changes_only_where_kubernetes_lets_it() {
        let registry = Registry::kubernetes();
        let pods = registry.find("", "v1", "pods").expect("pods");
        let old = json!({"spec": {
            "containers": [{"name": "app", "image": "hello:1"}],
            "activeDeadlineSeconds": 60,
            "tolerations": [{"key": "a", "operator": "Exists"}],
        }});
        let changed = |edit: fn(&mut Value)| {
            let mut new = old.clone();
            edit(&mut new["spec"]);
            validate_update(pods, &old, &new)
        };
        let allowed: [fn(&mut Value); 3] = [
            |spec| spec["containers"][0]["image"] = json!("hello:2"),
            |spec| spec["activeDeadlineSeconds"] = json!(30),
            |spec| {
                if let Some(tolerations) = spec["tolerations"].as_array_mut() {
                    tolerations.push(json!({"key": "b", "operator": "Exists"}));
                }
            },
        ];
        for (index, edit) in allowed.into_iter().enumerate() {
            assert_eq!(changed(edit), [], "allowed edit {index}");
        }
        let refused: [fn(&mut Value); 4] = [
            |spec| spec["activeDeadlineSeconds"] = json!(120),
            |spec| spec["tolerations"] = json!([]),
            |spec| spec["containers"][0]["name"] = json!("other"),
            |spec| spec["volumes"] = json!([{"name": "ca", "hostPath": {"path": "/"}}]),
        ];
        for edit in refused {
            let errors = changed(edit);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field, "spec");
        }
        let configmaps = registry.find("", "v1", "configmaps").expect("configmaps");
        assert_eq!(validate_update(configmaps, &old, &json!({})), []);
    }
}
