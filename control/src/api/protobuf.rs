//! Request bodies in Kubernetes' protobuf encoding, which kubectl's typed
//! clients send (`kubectl create configmap|secret|namespace|deployment|…`,
//! `kubectl run`).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` wrapping the object's
//! bytes. The object is decoded with the `k8s-pb` message types and turned
//! into the JSON the rest of the server handles. Only the kinds and fields
//! those commands write are converted; any other field set in a body makes
//! it a 415 that says to send JSON, so nothing a client sent is silently
//! dropped.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::authentication::v1 as authentication;
use k8s_pb::api::authorization::v1 as authorization;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use super::status::ApiError;

/// The media type of the encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body cannot be read.
fn unreadable(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body is malformed: {why}"))
}

/// A field this server does not read from protobuf yet.
fn unsupported(kind: &str, part: &str) -> ApiError {
    ApiError::unsupported_media_type(&format!(
        "{MEDIA_TYPE} ({kind} with {part} set; send this object as JSON or YAML, \
         e.g. with `kubectl apply`)"
    ))
}

pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| unreadable("it does not start with the k8s\\0 magic"))?;
    let unknown = Unknown::decode(envelope).map_err(unreadable)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => config_map(message(&raw)?)?,
        ("v1", "Secret") => secret(message(&raw)?)?,
        ("v1", "Namespace") => namespace(message(&raw)?)?,
        ("v1", "ServiceAccount") => service_account(message(&raw)?)?,
        ("v1", "Service") => service(message(&raw)?)?,
        ("v1", "Pod") => pod(message(&raw)?)?,
        ("apps/v1", "Deployment") => deployment(message(&raw)?)?,
        ("batch/v1", "Job") => job(message(&raw)?)?,
        ("batch/v1", "CronJob") => cron_job(message(&raw)?)?,
        ("rbac.authorization.k8s.io/v1", "Role") => role(message(&raw)?)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => cluster_role(message(&raw)?)?,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let mut binding: rbac::RoleBinding = message(&raw)?;
            let kind = "RoleBinding";
            let metadata = metadata(binding.metadata.take(), kind)?;
            role_binding(
                metadata,
                std::mem::take(&mut binding.subjects),
                binding.role_ref.take(),
            )
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let mut binding: rbac::ClusterRoleBinding = message(&raw)?;
            let kind = "ClusterRoleBinding";
            let metadata = metadata(binding.metadata.take(), kind)?;
            role_binding(
                metadata,
                std::mem::take(&mut binding.subjects),
                binding.role_ref.take(),
            )
        }
        ("authentication.k8s.io/v1", "TokenRequest") => token_request(message(&raw)?)?,
        ("policy/v1", "Eviction") => eviction(message(&raw)?)?,
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => delete_options(message(&raw)?)?,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => self_subject_review(message(&raw)?)?,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            self_subject_access_review(message(&raw)?)?
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            self_subject_rules_review(message(&raw)?)?
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "{MEDIA_TYPE} for {api_version} {kind} (send it as JSON or YAML)"
            )));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

fn message<M: Message + Default>(raw: &[u8]) -> Result<M, ApiError> {
    M::decode(raw).map_err(unreadable)
}

/// Fails unless `rest` (a message with every converted field taken out)
/// holds nothing but zero values. Go's encoder writes every non-pointer
/// field, so "unset" arrives as `""`, `0`, `false` or an empty message.
fn nothing_else<M: Message>(rest: &M, kind: &str, part: &str) -> Result<(), ApiError> {
    if all_zero(&rest.encode_to_vec()) {
        Ok(())
    } else {
        Err(unsupported(kind, part))
    }
}

/// Whether encoded protobuf fields are all zero values, looking into
/// nested messages.
fn all_zero(mut buf: &[u8]) -> bool {
    use prost::encoding::{WireType, decode_key, decode_varint};
    while !buf.is_empty() {
        let Ok((_, wire_type)) = decode_key(&mut buf) else {
            return false;
        };
        match wire_type {
            WireType::Varint => {
                if decode_varint(&mut buf) != Ok(0) {
                    return false;
                }
            }
            WireType::LengthDelimited => {
                let Ok(length) = decode_varint(&mut buf) else {
                    return false;
                };
                let Some((inner, rest)) = usize::try_from(length)
                    .ok()
                    .and_then(|length| buf.split_at_checked(length))
                else {
                    return false;
                };
                if !inner.is_empty() && !all_zero(inner) {
                    return false;
                }
                buf = rest;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let width = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                let Some((value, rest)) = buf.split_at_checked(width) else {
                    return false;
                };
                if value.iter().any(|byte| *byte != 0) {
                    return false;
                }
                buf = rest;
            }
            WireType::StartGroup | WireType::EndGroup => return false,
        }
    }
    true
}

/// Inserts `value` under `key` unless it is empty (`""` included: Go sends
/// it for every unset string).
fn put(object: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if !empty {
        object.insert(key.into(), value);
    }
}

/// A Go non-pointer integer: zero is how "unset" arrives.
fn nonzero(value: Option<i32>) -> Value {
    match value {
        Some(0) | None => Value::Null,
        Some(number) => json!(number),
    }
}

fn strings(map: BTreeMap<String, String>) -> Value {
    json!(map)
}

fn metadata(metadata: Option<meta::ObjectMeta>, kind: &str) -> Result<Value, ApiError> {
    let mut meta = metadata.unwrap_or_default();
    let mut out = Map::new();
    put(&mut out, "name", json!(meta.name.take()));
    put(&mut out, "generateName", json!(meta.generate_name.take()));
    put(&mut out, "namespace", json!(meta.namespace.take()));
    put(
        &mut out,
        "resourceVersion",
        json!(meta.resource_version.take()),
    );
    put(
        &mut out,
        "labels",
        strings(std::mem::take(&mut meta.labels)),
    );
    put(
        &mut out,
        "annotations",
        strings(std::mem::take(&mut meta.annotations)),
    );
    put(
        &mut out,
        "finalizers",
        json!(std::mem::take(&mut meta.finalizers)),
    );
    // What the server sets itself is ignored, as in JSON bodies.
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    meta.managed_fields.clear();
    nothing_else(
        &meta,
        kind,
        "metadata fields other than name, namespace, labels, annotations and finalizers",
    )?;
    Ok(Value::Object(out))
}

fn bytes_map(map: BTreeMap<String, Vec<u8>>) -> Value {
    use base64::Engine as _;
    let encoded: BTreeMap<String, String> = map
        .into_iter()
        .map(|(key, value)| (key, base64::engine::general_purpose::STANDARD.encode(value)))
        .collect();
    json!(encoded)
}

/// `kubectl create token NAME [--audience A] [--duration D]
/// [--bound-object-kind Pod --bound-object-name P]`.
/// `kubectl drain`'s request to evict a pod.
fn eviction(mut object: policy::Eviction) -> Result<Value, ApiError> {
    let kind = "Eviction";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    if let Some(options) = object.delete_options.take() {
        out.insert("deleteOptions".into(), delete_options(options)?);
    }
    nothing_else(&object, kind, "fields")?;
    Ok(Value::Object(out))
}

fn delete_options(mut options: meta::DeleteOptions) -> Result<Value, ApiError> {
    let kind = "DeleteOptions";
    let mut out = Map::new();
    put(
        &mut out,
        "gracePeriodSeconds",
        json!(options.grace_period_seconds.take()),
    );
    if let Some(mut preconditions) = options.preconditions.take() {
        let mut converted = Map::new();
        put(&mut converted, "uid", json!(preconditions.uid.take()));
        put(
            &mut converted,
            "resourceVersion",
            json!(preconditions.resource_version.take()),
        );
        out.insert("preconditions".into(), Value::Object(converted));
    }
    put(
        &mut out,
        "orphanDependents",
        json!(options.orphan_dependents.take()),
    );
    put(
        &mut out,
        "propagationPolicy",
        json!(options.propagation_policy.take()),
    );
    put(
        &mut out,
        "dryRun",
        json!(std::mem::take(&mut options.dry_run)),
    );
    // Kubernetes' escape hatch for objects the store cannot decode: there
    // is no such thing to ignore here.
    options
        .ignore_store_read_error_with_cluster_breaking_potential
        .take();
    nothing_else(&options, kind, "fields")?;
    Ok(Value::Object(out))
}

fn token_request(mut object: authentication::TokenRequest) -> Result<Value, ApiError> {
    let kind = "TokenRequest";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    let mut spec = object.spec.take().unwrap_or_default();
    let mut converted = Map::new();
    put(
        &mut converted,
        "audiences",
        json!(std::mem::take(&mut spec.audiences)),
    );
    put(
        &mut converted,
        "expirationSeconds",
        json!(spec.expiration_seconds.take()),
    );
    if let Some(mut bound) = spec.bound_object_ref.take() {
        let mut reference = Map::new();
        put(&mut reference, "kind", json!(bound.kind.take()));
        put(
            &mut reference,
            "apiVersion",
            json!(bound.api_version.take()),
        );
        put(&mut reference, "name", json!(bound.name.take()));
        put(&mut reference, "uid", json!(bound.u_id.take()));
        converted.insert("boundObjectRef".into(), Value::Object(reference));
    }
    nothing_else(&spec, kind, "unknown spec fields")?;
    out.insert("spec".into(), Value::Object(converted));
    nothing_else(&object, kind, "status")?;
    Ok(Value::Object(out))
}

/// `kubectl auth whoami`: nothing but metadata.
fn self_subject_review(mut object: authentication::SelfSubjectReview) -> Result<Value, ApiError> {
    let kind = "SelfSubjectReview";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    nothing_else(&object, kind, "status")?;
    Ok(Value::Object(out))
}

/// `kubectl auth can-i VERB RESOURCE` and `can-i VERB /path`.
fn self_subject_access_review(
    mut object: authorization::SelfSubjectAccessReview,
) -> Result<Value, ApiError> {
    let kind = "SelfSubjectAccessReview";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    let mut spec = object.spec.take().unwrap_or_default();
    let mut converted = Map::new();
    if let Some(mut attributes) = spec.resource_attributes.take() {
        let mut resource = Map::new();
        put(
            &mut resource,
            "namespace",
            json!(attributes.namespace.take()),
        );
        put(&mut resource, "verb", json!(attributes.verb.take()));
        put(&mut resource, "group", json!(attributes.group.take()));
        put(&mut resource, "version", json!(attributes.version.take()));
        put(&mut resource, "resource", json!(attributes.resource.take()));
        put(
            &mut resource,
            "subresource",
            json!(attributes.subresource.take()),
        );
        put(&mut resource, "name", json!(attributes.name.take()));
        nothing_else(&attributes, kind, "field or label selectors")?;
        converted.insert("resourceAttributes".into(), Value::Object(resource));
    }
    if let Some(mut attributes) = spec.non_resource_attributes.take() {
        let mut path = Map::new();
        put(&mut path, "path", json!(attributes.path.take()));
        put(&mut path, "verb", json!(attributes.verb.take()));
        converted.insert("nonResourceAttributes".into(), Value::Object(path));
    }
    nothing_else(&spec, kind, "unknown spec fields")?;
    out.insert("spec".into(), Value::Object(converted));
    nothing_else(&object, kind, "status")?;
    Ok(Value::Object(out))
}

/// `kubectl auth can-i --list`.
fn self_subject_rules_review(
    mut object: authorization::SelfSubjectRulesReview,
) -> Result<Value, ApiError> {
    let kind = "SelfSubjectRulesReview";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    let mut spec = object.spec.take().unwrap_or_default();
    out.insert("spec".into(), json!({"namespace": spec.namespace.take()}));
    nothing_else(&object, kind, "status")?;
    Ok(Value::Object(out))
}

/// `kubectl create role|clusterrole`.
fn policy_rules(rules: Vec<rbac::PolicyRule>) -> Value {
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|rule| {
            let mut out = Map::new();
            out.insert("verbs".into(), json!(rule.verbs));
            put(&mut out, "apiGroups", json!(rule.api_groups));
            put(&mut out, "resources", json!(rule.resources));
            put(&mut out, "resourceNames", json!(rule.resource_names));
            put(&mut out, "nonResourceURLs", json!(rule.non_resource_ur_ls));
            Value::Object(out)
        })
        .collect();
    json!(rules)
}

fn role(mut object: rbac::Role) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), "Role")?);
    put(
        &mut out,
        "rules",
        policy_rules(std::mem::take(&mut object.rules)),
    );
    nothing_else(&object, "Role", "unknown fields")?;
    Ok(Value::Object(out))
}

fn cluster_role(mut object: rbac::ClusterRole) -> Result<Value, ApiError> {
    let kind = "ClusterRole";
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), kind)?);
    put(
        &mut out,
        "rules",
        policy_rules(std::mem::take(&mut object.rules)),
    );
    if let Some(mut aggregation) = object.aggregation_rule.take() {
        let selectors = std::mem::take(&mut aggregation.cluster_role_selectors)
            .into_iter()
            .map(|selector| label_selector(selector, kind))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(
            "aggregationRule".into(),
            json!({"clusterRoleSelectors": selectors}),
        );
    }
    nothing_else(&object, kind, "unknown fields")?;
    Ok(Value::Object(out))
}

/// A label selector with its expressions (an aggregation rule's).
fn label_selector(mut selector: meta::LabelSelector, kind: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    put(
        &mut out,
        "matchLabels",
        strings(std::mem::take(&mut selector.match_labels)),
    );
    let expressions: Vec<Value> = std::mem::take(&mut selector.match_expressions)
        .into_iter()
        .map(|expression| {
            let mut out = Map::new();
            put(&mut out, "key", json!(expression.key));
            put(&mut out, "operator", json!(expression.operator));
            put(&mut out, "values", json!(expression.values));
            Value::Object(out)
        })
        .collect();
    put(&mut out, "matchExpressions", json!(expressions));
    nothing_else(&selector, kind, "selector fields")?;
    Ok(Value::Object(out))
}

/// `kubectl create rolebinding|clusterrolebinding`.
fn role_binding(
    metadata: Value,
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
) -> Value {
    let subjects: Vec<Value> = subjects
        .into_iter()
        .map(|subject| {
            let mut out = Map::new();
            put(&mut out, "kind", json!(subject.kind));
            put(&mut out, "apiGroup", json!(subject.api_group));
            put(&mut out, "name", json!(subject.name));
            put(&mut out, "namespace", json!(subject.namespace));
            Value::Object(out)
        })
        .collect();
    let role_ref = role_ref.unwrap_or_default();
    let mut out = Map::new();
    out.insert("metadata".into(), metadata);
    put(&mut out, "subjects", json!(subjects));
    out.insert(
        "roleRef".into(),
        json!({"apiGroup": role_ref.api_group, "kind": role_ref.kind, "name": role_ref.name}),
    );
    Value::Object(out)
}

fn config_map(mut object: core::ConfigMap) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "ConfigMap")?,
    );
    put(&mut out, "data", strings(std::mem::take(&mut object.data)));
    put(
        &mut out,
        "binaryData",
        bytes_map(std::mem::take(&mut object.binary_data)),
    );
    put(&mut out, "immutable", json!(object.immutable.take()));
    nothing_else(&object, "ConfigMap", "unknown fields")?;
    Ok(Value::Object(out))
}

fn secret(mut object: core::Secret) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "Secret")?,
    );
    put(
        &mut out,
        "data",
        bytes_map(std::mem::take(&mut object.data)),
    );
    put(
        &mut out,
        "stringData",
        strings(std::mem::take(&mut object.string_data)),
    );
    put(&mut out, "type", json!(object.r#type.take()));
    put(&mut out, "immutable", json!(object.immutable.take()));
    nothing_else(&object, "Secret", "unknown fields")?;
    Ok(Value::Object(out))
}

fn namespace(mut object: core::Namespace) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "Namespace")?,
    );
    if let Some(mut spec) = object.spec.take() {
        put(
            &mut out,
            "spec",
            json!({"finalizers": std::mem::take(&mut spec.finalizers)}),
        );
    }
    object.status = None;
    nothing_else(&object, "Namespace", "unknown fields")?;
    Ok(Value::Object(out))
}

fn service_account(mut object: core::ServiceAccount) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "ServiceAccount")?,
    );
    put(
        &mut out,
        "automountServiceAccountToken",
        json!(object.automount_service_account_token.take()),
    );
    nothing_else(&object, "ServiceAccount", "secrets or imagePullSecrets")?;
    Ok(Value::Object(out))
}

fn service(mut object: core::Service) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "Service")?,
    );
    let mut spec = object.spec.take().unwrap_or_default();
    let mut spec_out = Map::new();
    let mut ports = Vec::new();
    for mut port in std::mem::take(&mut spec.ports) {
        let mut port_out = Map::new();
        put(&mut port_out, "name", json!(port.name.take()));
        put(&mut port_out, "protocol", json!(port.protocol.take()));
        put(&mut port_out, "port", nonzero(port.port.take()));
        put(&mut port_out, "nodePort", nonzero(port.node_port.take()));
        if let Some(mut target) = port.target_port.take() {
            let value = match target.r#type.take() {
                Some(1) => json!(target.str_val.take()),
                _ => nonzero(target.int_val.take()),
            };
            put(&mut port_out, "targetPort", value);
            nothing_else(&target, "Service", "an unreadable targetPort")?;
        }
        nothing_else(
            &port,
            "Service",
            "port fields other than name, protocol, port, targetPort and nodePort",
        )?;
        ports.push(Value::Object(port_out));
    }
    put(&mut spec_out, "ports", json!(ports));
    put(
        &mut spec_out,
        "selector",
        strings(std::mem::take(&mut spec.selector)),
    );
    put(&mut spec_out, "type", json!(spec.r#type.take()));
    put(&mut spec_out, "clusterIP", json!(spec.cluster_ip.take()));
    put(
        &mut spec_out,
        "externalName",
        json!(spec.external_name.take()),
    );
    nothing_else(
        &spec,
        "Service",
        "spec fields other than ports, selector, type, clusterIP and externalName",
    )?;
    out.insert("spec".into(), Value::Object(spec_out));
    object.status = None;
    nothing_else(&object, "Service", "unknown fields")?;
    Ok(Value::Object(out))
}

fn container(mut container: core::Container, kind: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    put(&mut out, "name", json!(container.name.take()));
    put(&mut out, "image", json!(container.image.take()));
    put(
        &mut out,
        "command",
        json!(std::mem::take(&mut container.command)),
    );
    put(&mut out, "args", json!(std::mem::take(&mut container.args)));
    put(&mut out, "workingDir", json!(container.working_dir.take()));
    put(
        &mut out,
        "imagePullPolicy",
        json!(container.image_pull_policy.take()),
    );
    let mut ports = Vec::new();
    for mut port in std::mem::take(&mut container.ports) {
        let mut port_out = Map::new();
        put(&mut port_out, "name", json!(port.name.take()));
        put(
            &mut port_out,
            "containerPort",
            json!(port.container_port.take()),
        );
        put(&mut port_out, "protocol", json!(port.protocol.take()));
        nothing_else(
            &port,
            kind,
            "container port fields other than name, containerPort and protocol",
        )?;
        ports.push(Value::Object(port_out));
    }
    put(&mut out, "ports", json!(ports));
    let mut env = Vec::new();
    for mut variable in std::mem::take(&mut container.env) {
        let mut variable_out = Map::new();
        put(&mut variable_out, "name", json!(variable.name.take()));
        put(&mut variable_out, "value", json!(variable.value.take()));
        nothing_else(&variable, kind, "env valueFrom")?;
        env.push(Value::Object(variable_out));
    }
    put(&mut out, "env", json!(env));
    if let Some(mut resources) = container.resources.take() {
        let quantities =
            |map: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>| {
                let map: BTreeMap<String, String> = map
                    .into_iter()
                    .map(|(name, quantity)| (name, quantity.string.unwrap_or_default()))
                    .collect();
                json!(map)
            };
        let mut resources_out = Map::new();
        put(
            &mut resources_out,
            "limits",
            quantities(std::mem::take(&mut resources.limits)),
        );
        put(
            &mut resources_out,
            "requests",
            quantities(std::mem::take(&mut resources.requests)),
        );
        nothing_else(&resources, kind, "resource claims")?;
        out.insert("resources".into(), Value::Object(resources_out));
    }
    // kubectl sets these on interactive runs; a sandbox has no terminal.
    for (flag, name) in [
        (container.stdin.take(), "stdin"),
        (container.tty.take(), "tty"),
    ] {
        if flag == Some(true) {
            return Err(ApiError::bad_request(format!(
                "{kind}: {name} is not supported: a WebAssembly sandbox has no terminal to attach"
            )));
        }
    }
    container.stdin_once = None;
    nothing_else(
        &container,
        kind,
        "container fields other than name, image, command, args, workingDir, ports, env and resources",
    )?;
    Ok(Value::Object(out))
}

fn pod_spec(mut spec: core::PodSpec, kind: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    let containers = std::mem::take(&mut spec.containers)
        .into_iter()
        .map(|c| container(c, kind))
        .collect::<Result<Vec<_>, _>>()?;
    put(&mut out, "containers", json!(containers));
    put(&mut out, "restartPolicy", json!(spec.restart_policy.take()));
    put(&mut out, "dnsPolicy", json!(spec.dns_policy.take()));
    put(
        &mut out,
        "terminationGracePeriodSeconds",
        json!(spec.termination_grace_period_seconds.take()),
    );
    put(
        &mut out,
        "serviceAccountName",
        json!(spec.service_account_name.take()),
    );
    put(
        &mut out,
        "nodeSelector",
        strings(std::mem::take(&mut spec.node_selector)),
    );
    nothing_else(
        &spec,
        kind,
        "pod spec fields other than containers, restartPolicy, dnsPolicy, terminationGracePeriodSeconds, serviceAccountName and nodeSelector",
    )?;
    Ok(Value::Object(out))
}

fn template(template: Option<core::PodTemplateSpec>, kind: &str) -> Result<Value, ApiError> {
    let mut template = template.unwrap_or_default();
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(template.metadata.take(), kind)?);
    out.insert(
        "spec".into(),
        pod_spec(template.spec.take().unwrap_or_default(), kind)?,
    );
    Ok(Value::Object(out))
}

fn selector(selector: Option<meta::LabelSelector>, kind: &str) -> Result<Value, ApiError> {
    let Some(mut selector) = selector else {
        return Ok(Value::Null);
    };
    let labels = std::mem::take(&mut selector.match_labels);
    nothing_else(&selector, kind, "selector matchExpressions")?;
    Ok(json!({"matchLabels": labels}))
}

fn pod(mut object: core::Pod) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), "Pod")?);
    out.insert(
        "spec".into(),
        pod_spec(object.spec.take().unwrap_or_default(), "Pod")?,
    );
    object.status = None;
    nothing_else(&object, "Pod", "unknown fields")?;
    Ok(Value::Object(out))
}

fn deployment(mut object: apps::Deployment) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "Deployment")?,
    );
    let mut spec = object.spec.take().unwrap_or_default();
    let mut spec_out = Map::new();
    put(&mut spec_out, "replicas", json!(spec.replicas.take()));
    put(
        &mut spec_out,
        "selector",
        selector(spec.selector.take(), "Deployment")?,
    );
    spec_out.insert(
        "template".into(),
        template(spec.template.take(), "Deployment")?,
    );
    // kubectl create deployment sends an empty strategy; the server
    // defaults it.
    if spec
        .strategy
        .as_ref()
        .is_some_and(|s| *s == apps::DeploymentStrategy::default())
    {
        spec.strategy = None;
    }
    nothing_else(
        &spec,
        "Deployment",
        "spec fields other than replicas, selector and template",
    )?;
    out.insert("spec".into(), Value::Object(spec_out));
    object.status = None;
    nothing_else(&object, "Deployment", "unknown fields")?;
    Ok(Value::Object(out))
}

fn job_spec(mut spec: batch::JobSpec, kind: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    put(&mut out, "parallelism", json!(spec.parallelism.take()));
    put(&mut out, "completions", json!(spec.completions.take()));
    put(&mut out, "backoffLimit", json!(spec.backoff_limit.take()));
    put(
        &mut out,
        "activeDeadlineSeconds",
        json!(spec.active_deadline_seconds.take()),
    );
    put(
        &mut out,
        "ttlSecondsAfterFinished",
        json!(spec.ttl_seconds_after_finished.take()),
    );
    out.insert("template".into(), template(spec.template.take(), kind)?);
    nothing_else(
        &spec,
        kind,
        "job spec fields other than parallelism, completions, backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished and template",
    )?;
    Ok(Value::Object(out))
}

fn job(mut object: batch::Job) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(object.metadata.take(), "Job")?);
    out.insert(
        "spec".into(),
        job_spec(object.spec.take().unwrap_or_default(), "Job")?,
    );
    object.status = None;
    nothing_else(&object, "Job", "unknown fields")?;
    Ok(Value::Object(out))
}

fn cron_job(mut object: batch::CronJob) -> Result<Value, ApiError> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(object.metadata.take(), "CronJob")?,
    );
    let mut spec = object.spec.take().unwrap_or_default();
    let mut spec_out = Map::new();
    put(&mut spec_out, "schedule", json!(spec.schedule.take()));
    put(
        &mut spec_out,
        "concurrencyPolicy",
        json!(spec.concurrency_policy.take()),
    );
    put(&mut spec_out, "suspend", json!(spec.suspend.take()));
    let mut job_template = spec.job_template.take().unwrap_or_default();
    spec_out.insert(
        "jobTemplate".into(),
        json!({
            "metadata": metadata(job_template.metadata.take(), "CronJob")?,
            "spec": job_spec(job_template.spec.take().unwrap_or_default(), "CronJob")?,
        }),
    );
    nothing_else(
        &spec,
        "CronJob",
        "spec fields other than schedule, concurrencyPolicy, suspend and jobTemplate",
    )?;
    out.insert("spec".into(), Value::Object(spec_out));
    object.status = None;
    nothing_else(&object, "CronJob", "unknown fields")?;
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_config_map_from_kubectl_create() {
        let config_map = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("settings".into()),
                ..Default::default()
            }),
            data: [("mode".to_string(), "a".to_string())].into(),
            binary_data: [("blob".to_string(), vec![0, 1, 2])].into(),
            ..Default::default()
        };
        let object = decode(&envelope("v1", "ConfigMap", config_map.encode_to_vec())).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                   "data": {"mode": "a"}, "binaryData": {"blob": "AAEC"}})
        );
    }

    #[test]
    fn fields_it_cannot_convert_are_refused_not_dropped() {
        let pod = core::Pod {
            metadata: Some(meta::ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("c".into()),
                    image: Some("hello:1".into()),
                    liveness_probe: Some(core::Probe {
                        period_seconds: Some(5),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = decode(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap_err();
        assert_eq!(error.code.as_u16(), 415);
        assert!(
            error.message.contains("send this object as JSON"),
            "{}",
            error.message
        );

        let error = decode(&envelope("networking.k8s.io/v1", "Ingress", Vec::new())).unwrap_err();
        assert_eq!(error.code.as_u16(), 415);
        assert_eq!(decode(b"not protobuf").unwrap_err().code.as_u16(), 400);
    }

    #[test]
    fn rbac_objects_read_as_kubectl_create_sends_them() {
        let binding = rbac::RoleBinding {
            metadata: Some(meta::ObjectMeta {
                name: Some("alice-edit".into()),
                ..Default::default()
            }),
            subjects: vec![rbac::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("alice".into()),
                namespace: None,
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("edit".into()),
            }),
        };
        let object = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            binding.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            object["subjects"],
            json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}])
        );
        assert_eq!(object["roleRef"]["name"], "edit");
        let role = rbac::ClusterRole {
            metadata: None,
            rules: vec![rbac::PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec![String::new()],
                resources: vec!["pods".into()],
                ..Default::default()
            }],
            aggregation_rule: Some(rbac::AggregationRule {
                cluster_role_selectors: vec![meta::LabelSelector {
                    match_labels: [("team".to_string(), "a".to_string())].into(),
                    ..Default::default()
                }],
            }),
        };
        let object = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            role.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            object["rules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
        );
        assert_eq!(
            object["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["team"],
            "a"
        );
    }
}
