//! Pod Security Admission, as Kubernetes' namespace labels drive it
//! (`pod-security.kubernetes.io/enforce|warn|audit` set to `privileged`,
//! `baseline` or `restricted`), with checks that mean something for a
//! WebAssembly sandbox.
//!
//! A guest shares nothing with the host except what a pod asks for, so the
//! checks are about those asks: `baseline` refuses every host interface
//! (host namespaces, `privileged`, `hostPath` volumes, `hostPort`,
//! `file://` images unless the server is `flotilla up`'s, probes and
//! hooks aimed at another host); `restricted`
//! also allows only the volume types that carry no host state. Linux
//! controls that a sandbox has no use for (capabilities, seccomp,
//! AppArmor, SELinux, users, `/proc` masks, sysctls) are always met and not
//! asked for: a manifest written for Kubernetes' `restricted` passes.
//!
//! As in Kubernetes, `enforce` refuses Pods (403) and applies to workload
//! templates only as warnings; `warn` adds warnings; `audit` is logged. A
//! namespace without a label gets `baseline`, except `kube-system`, which
//! is `privileged`. An update that leaves a pod's spec alone is not
//! checked, so a pod admitted once can always have its status and labels
//! written. This module knows the rules and the namespace's labels; it
//! does not read the store.

use serde_json::Value;

use crate::api::status::{ApiError, FieldError};
use crate::resources::ResourceInfo;

/// The label prefix of the three modes (`<prefix>enforce`, …) and their
/// `-version` companions.
const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
const MODES: [&str; 3] = ["enforce", "warn", "audit"];
/// The namespace whose pods are the cluster's own, `privileged` unless
/// labelled otherwise.
const SYSTEM_NAMESPACE: &str = "kube-system";
/// Volume sources that carry no host state: all `restricted` allows.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// A Pod Security Standard, from least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(value: &str) -> Option<Level> {
        match value {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The levels a namespace's labels ask for, one per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enforce: Level,
    pub warn: Level,
    pub audit: Level,
    /// Whether `file://` images are the server's one user's own modules
    /// rather than a host interface: on a server that allows them
    /// (`flotilla up`, where server, node and user share one machine).
    /// Other servers refuse them at any level (`registry::admission`).
    pub file_images_allowed: bool,
}

impl Policy {
    /// The policy of the Namespace object `namespace`. A level that is not
    /// one of the three (labels written before they were checked) counts
    /// as `restricted`: a typo must not open the namespace up.
    pub fn of_namespace(namespace: &Value) -> Policy {
        let name = namespace["metadata"]["name"].as_str().unwrap_or_default();
        let default = if name == SYSTEM_NAMESPACE {
            Level::Privileged
        } else {
            Level::Baseline
        };
        let labels = &namespace["metadata"]["labels"];
        let level = |mode: &str| match labels[format!("{LABEL_PREFIX}{mode}")].as_str() {
            None => default,
            Some(value) => Level::parse(value).unwrap_or(Level::Restricted),
        };
        Policy {
            enforce: level("enforce"),
            warn: level("warn"),
            audit: level("audit"),
            file_images_allowed: false,
        }
    }
}

/// What a Namespace's pod-security labels must be: a known level for each
/// mode, and `latest` or `v1.<minor>` for each version.
pub fn validate_namespace_labels(namespace: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(labels) = namespace["metadata"]["labels"].as_object() else {
        return errors;
    };
    for (key, value) in labels {
        let Some(mode) = key.strip_prefix(LABEL_PREFIX) else {
            continue;
        };
        let value = value.as_str().unwrap_or_default();
        let field = format!("metadata.labels[{key}]");
        if let Some(mode) = mode.strip_suffix("-version") {
            if MODES.contains(&mode) && !is_version(value) {
                errors.push(FieldError::invalid(
                    field,
                    format!(
                        "Invalid value: \"{value}\": must be \"latest\" or \"v1.<minor>\" (v1.0 or later)"
                    ),
                ));
            }
        } else if MODES.contains(&mode) && Level::parse(value).is_none() {
            errors.push(FieldError {
                field,
                cause: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: \"{value}\": supported values: \"privileged\", \"baseline\", \"restricted\""
                ),
            });
        }
    }
    errors
}

fn is_version(value: &str) -> bool {
    value == "latest"
        || value
            .strip_prefix("v1.")
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
}

/// One field of a pod that a level forbids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The check, as Kubernetes names it ("hostPath volumes").
    pub check: &'static str,
    /// The offending field's path ("spec.volumes[0].hostPath").
    pub field: String,
    /// What is there ("volume \"host\"").
    pub detail: String,
}

/// Every field of the pod spec `spec` (found at `path`) that `level`
/// forbids; `file://` images only unless `file_images_allowed`.
pub fn violations(
    spec: &Value,
    path: &str,
    level: Level,
    file_images_allowed: bool,
) -> Vec<Violation> {
    let mut found = Vec::new();
    if level == Level::Privileged {
        return found;
    }
    let mut violation = |check, field: String, detail: String| {
        found.push(Violation {
            check,
            field,
            detail,
        })
    };
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            violation(
                "host namespaces",
                format!("{path}.{field}"),
                format!("{field}=true"),
            );
        }
    }
    for (index, volume) in items(&spec["volumes"]) {
        let at = format!("{path}.volumes[{index}]");
        let name = volume["name"].as_str().unwrap_or_default();
        if volume
            .get("hostPath")
            .is_some_and(|source| !source.is_null())
        {
            violation(
                "hostPath volumes",
                format!("{at}.hostPath"),
                format!("volume {name:?}"),
            );
        } else if level == Level::Restricted
            && let Some(kind) = volume_type(volume)
            && !RESTRICTED_VOLUME_TYPES.contains(&kind)
        {
            violation(
                "restricted volume types",
                format!("{at}.{kind}"),
                format!("volume {name:?} uses {kind}"),
            );
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (index, container) in items(&spec[list]) {
            let at = format!("{path}.{list}[{index}]");
            let name = container["name"].as_str().unwrap_or_default();
            if container["securityContext"]["privileged"] == Value::Bool(true) {
                violation(
                    "privileged",
                    format!("{at}.securityContext.privileged"),
                    format!("container {name:?} must not set securityContext.privileged=true"),
                );
            }
            if let Some(image) = container["image"].as_str()
                && image.starts_with("file://")
                && !file_images_allowed
            {
                violation(
                    "file:// images",
                    format!("{at}.image"),
                    format!("container {name:?} reads {image:?} from the node's disk"),
                );
            }
            for (port_index, port) in items(&container["ports"]) {
                if let Some(host_port) = port["hostPort"].as_i64().filter(|p| *p != 0) {
                    violation(
                        "hostPort",
                        format!("{at}.ports[{port_index}].hostPort"),
                        format!("container {name:?} uses hostPort {host_port}"),
                    );
                }
            }
            host_handlers(container, &at, name, &mut violation);
        }
    }
    found
}

/// Probes and lifecycle hooks aimed at another host: the node would make
/// the request for the pod, from the node's own network.
fn host_handlers(
    container: &Value,
    at: &str,
    name: &str,
    violation: &mut impl FnMut(&'static str, String, String),
) {
    let handlers = [
        ("livenessProbe", &container["livenessProbe"]),
        ("readinessProbe", &container["readinessProbe"]),
        ("startupProbe", &container["startupProbe"]),
        ("lifecycle.postStart", &container["lifecycle"]["postStart"]),
        ("lifecycle.preStop", &container["lifecycle"]["preStop"]),
    ];
    for (field, handler) in handlers {
        for action in ["httpGet", "tcpSocket"] {
            if let Some(host) = handler[action]["host"].as_str().filter(|h| !h.is_empty()) {
                violation(
                    "probe or lifecycle host",
                    format!("{at}.{field}.{action}.host"),
                    format!("container {name:?} uses {field}.{action}.host {host:?}"),
                );
            }
        }
    }
}

fn items(list: &Value) -> impl Iterator<Item = (usize, &Value)> {
    list.as_array().into_iter().flatten().enumerate()
}

/// A volume's source: its one field besides `name`.
fn volume_type(volume: &Value) -> Option<&str> {
    volume
        .as_object()?
        .iter()
        .find(|(key, value)| *key != "name" && !value.is_null())
        .map(|(key, _)| key.as_str())
}

/// `violations` as Kubernetes words them: the checks, each with what
/// breaks it and where.
fn describe(violations: &[Violation]) -> String {
    let mut checks: Vec<(&str, Vec<String>)> = Vec::new();
    for violation in violations {
        let detail = format!("{} at {}", violation.detail, violation.field);
        match checks
            .iter_mut()
            .find(|(check, _)| *check == violation.check)
        {
            Some((_, details)) => details.push(detail),
            None => checks.push((violation.check, vec![detail])),
        }
    }
    checks
        .iter()
        .map(|(check, details)| format!("{check} ({})", details.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a resource keeps its pod spec: the pod's own, or the template of
/// a workload.
pub fn pod_spec_pointer(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" => "/spec",
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return None,
    })
}

/// Checks `object` (of kind `info`) against the policy of its namespace:
/// a Pod that breaks `enforce` is refused; otherwise the warnings for
/// `warn` are returned, and `audit` is logged.
pub fn admit(info: &ResourceInfo, object: &Value, policy: Policy) -> Result<Vec<String>, ApiError> {
    let Some(pointer) = pod_spec_pointer(info.kind) else {
        return Ok(Vec::new());
    };
    let Some(spec) = object.pointer(pointer) else {
        return Ok(Vec::new());
    };
    let path = pointer[1..].replace('/', ".");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let is_pod = info.kind == "Pod";
    if is_pod {
        let broken = violations(spec, &path, policy.enforce, policy.file_images_allowed);
        if !broken.is_empty() {
            return Err(ApiError::forbidden_object(
                info.group,
                info.plural,
                name,
                format!(
                    "{} {name:?} is forbidden: violates PodSecurity \"{}:latest\": {}",
                    info.plural,
                    policy.enforce.name(),
                    describe(&broken)
                ),
            ));
        }
    }
    let audited = violations(spec, &path, policy.audit, policy.file_images_allowed);
    if !audited.is_empty() {
        tracing::info!(
            resource = info.plural,
            namespace,
            name,
            level = policy.audit.name(),
            violations = %describe(&audited),
            "pod-security audit"
        );
    }
    // Templates are warned about at the enforce level too: their pods will
    // be refused, and the warning is the only place the user sees why.
    let mut warnings = Vec::new();
    let mut warn_at = |level: Level| {
        let broken = violations(spec, &path, level, policy.file_images_allowed);
        if !broken.is_empty() {
            let text = if is_pod {
                format!(
                    "would violate PodSecurity \"{}:latest\": {}",
                    level.name(),
                    describe(&broken)
                )
            } else {
                format!(
                    "its pods would violate PodSecurity \"{}:latest\": {}",
                    level.name(),
                    describe(&broken)
                )
            };
            if !warnings.contains(&text) {
                warnings.push(text);
            }
        }
    };
    warn_at(if is_pod {
        policy.warn
    } else {
        policy.warn.max(policy.enforce)
    });
    Ok(warnings)
}

/// Whether an update from `old` to `new` needs checking: only a changed
/// pod spec (or template) does.
pub fn spec_changed(kind: &str, old: &Value, new: &Value) -> bool {
    pod_spec_pointer(kind).is_some_and(|pointer| old.pointer(pointer) != new.pointer(pointer))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn namespace(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    fn checks(spec: Value, level: Level) -> Vec<&'static str> {
        violations(&spec, "spec", level, false)
            .into_iter()
            .map(|v| v.check)
            .collect()
    }

    #[test]
    fn unlabelled_namespaces_are_baseline_and_kube_system_privileged() {
        let plain = Policy::of_namespace(&namespace("team-a", json!({})));
        assert_eq!(plain.enforce, Level::Baseline);
        assert_eq!(plain.warn, Level::Baseline);
        let system = Policy::of_namespace(&namespace("kube-system", Value::Null));
        assert_eq!(system.enforce, Level::Privileged);
        let labelled = Policy::of_namespace(&namespace(
            "team-a",
            json!({"pod-security.kubernetes.io/enforce": "restricted",
                   "pod-security.kubernetes.io/warn": "privileged"}),
        ));
        assert_eq!(labelled.enforce, Level::Restricted);
        assert_eq!(labelled.warn, Level::Privileged);
        assert_eq!(labelled.audit, Level::Baseline);
    }

    #[test]
    fn an_unknown_level_counts_as_restricted_and_is_refused_on_namespaces() {
        let typo = namespace(
            "team-a",
            json!({"pod-security.kubernetes.io/enforce": "privilegd",
                   "pod-security.kubernetes.io/warn-version": "1.30",
                   "pod-security.kubernetes.io/audit-version": "v1.30",
                   "example.com/enforce": "anything"}),
        );
        assert_eq!(Policy::of_namespace(&typo).enforce, Level::Restricted);
        let errors = validate_namespace_labels(&typo);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels[pod-security.kubernetes.io/enforce]",
                "metadata.labels[pod-security.kubernetes.io/warn-version]"
            ]
        );
        assert!(errors[0].message.contains("\"privilegd\""));
    }

    #[test]
    fn baseline_refuses_every_host_interface_and_privileged_none() {
        let spec = json!({
            "volumes": [
                {"name": "ca", "hostPath": {"path": "/var/lib/flotilla/ca"}},
                {"name": "scratch", "emptyDir": {}},
            ],
            "containers": [{
                "name": "app",
                "image": "file:///dev/zero",
                "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81}],
                "livenessProbe": {"httpGet": {"host": "169.254.169.254", "port": 80}},
                "securityContext": {"privileged": true},
            }],
            "hostNetwork": true,
        });
        assert_eq!(
            checks(spec.clone(), Level::Baseline),
            [
                "host namespaces",
                "hostPath volumes",
                "privileged",
                "file:// images",
                "hostPort",
                "probe or lifecycle host"
            ]
        );
        assert!(checks(spec.clone(), Level::Privileged).is_empty());
        let on_one_machine = violations(&spec, "spec", Level::Baseline, true);
        assert!(on_one_machine.iter().all(|v| v.check != "file:// images"));
    }

    #[test]
    fn restricted_allows_only_volumes_without_host_state() {
        let spec = json!({
            "volumes": [
                {"name": "config", "configMap": {"name": "c"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "share", "nfs": {"server": "10.0.0.1", "path": "/"}},
            ],
            "containers": [{"name": "app", "image": "hello:1"}],
        });
        assert!(checks(spec.clone(), Level::Baseline).is_empty());
        let found = violations(&spec, "spec", Level::Restricted, false);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "spec.volumes[2].nfs");
    }

    #[test]
    fn a_manifest_written_for_kubernetes_restricted_passes() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "hello:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        });
        assert!(checks(spec, Level::Restricted).is_empty());
    }

    #[test]
    fn a_refused_pod_is_a_403_naming_the_field() {
        let info = crate::resources::registry()
            .find("", "v1", "pods")
            .expect("pods are served");
        let pod = json!({
            "metadata": {"name": "thief", "namespace": "team-a"},
            "spec": {
                "volumes": [{"name": "ca", "hostPath": {"path": "/var/lib/flotilla/ca"}}],
                "containers": [{"name": "app", "image": "hello:1"}],
            },
        });
        let policy = Policy::of_namespace(&namespace("team-a", json!({})));
        let error = admit(info, &pod, policy).expect_err("hostPath is refused");
        assert_eq!(error.code, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(
            error.message,
            "pods \"thief\" is forbidden: violates PodSecurity \"baseline:latest\": \
             hostPath volumes (volume \"ca\" at spec.volumes[0].hostPath)"
        );
    }

    #[test]
    fn templates_are_warned_about_not_refused() {
        let info = crate::resources::registry()
            .find("apps", "v1", "deployments")
            .expect("deployments are served");
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"template": {"spec": {
                "containers": [{"name": "app", "image": "hello:1", "ports": [{"containerPort": 80, "hostPort": 80}]}],
            }}},
        });
        let policy = Policy::of_namespace(&namespace("team-a", json!({})));
        let warnings = admit(info, &deployment, policy).expect("templates are not refused");
        assert_eq!(
            warnings,
            [
                "its pods would violate PodSecurity \"baseline:latest\": hostPort \
              (container \"app\" uses hostPort 80 at spec.template.spec.containers[0].ports[0].hostPort)"
            ]
        );
    }

    #[test]
    fn only_a_changed_spec_is_checked_again() {
        let old = json!({"metadata": {"labels": {}}, "spec": {"containers": [{"image": "a"}]}});
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["x"] = json!("y");
        assert!(!spec_changed("Pod", &old, &relabelled));
        let mut reimaged = old.clone();
        reimaged["spec"]["containers"][0]["image"] = json!("file:///etc/passwd");
        assert!(spec_changed("Pod", &old, &reimaged));
        assert!(!spec_changed("ConfigMap", &old, &reimaged));
    }
}
