//! The reviews: objects a client creates to ask a question and reads the
//! answer from, never stored. SelfSubjectReview (`kubectl auth whoami`),
//! SelfSubjectAccessReview (`kubectl auth can-i`), SubjectAccessReview and
//! LocalSubjectAccessReview (the same about someone else), and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use super::attributes::{Attributes, ResourceAttributes};
use super::user::UserInfo;
use super::{Authorizer, Decision, node};
use crate::api::Reply;
use crate::api::path::Target;
use crate::api::status::ApiError;

/// Answers the review `object` asked by `user`.
pub fn create(
    authorizer: &Authorizer,
    user: &UserInfo,
    target: &Target<'_>,
    mut object: Value,
) -> Result<Reply, ApiError> {
    let info = target.info;
    object["apiVersion"] = json!(info.api_version());
    object["kind"] = json!(info.kind);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]["creationTimestamp"] = Value::Null;
    let status = match info.kind {
        "SelfSubjectReview" => json!({"userInfo": user_info(user)}),
        "SelfSubjectAccessReview" => access(authorizer, user, &object["spec"])?,
        "SubjectAccessReview" => {
            let subject = subject_of(&object["spec"])?;
            access(authorizer, &subject, &object["spec"])?
        }
        "LocalSubjectAccessReview" => {
            let namespace = target.namespace.as_deref().unwrap_or_default();
            let given = object["spec"]["resourceAttributes"]["namespace"].as_str();
            if given.is_some_and(|given| given != namespace) {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {namespace}"
                )));
            }
            if object["spec"]["resourceAttributes"].is_object() {
                object["spec"]["resourceAttributes"]["namespace"] = json!(namespace);
            } else {
                return Err(ApiError::bad_request(
                    "spec.resourceAttributes: Required value: disallowed on this kind of request",
                ));
            }
            let subject = subject_of(&object["spec"])?;
            access(authorizer, &subject, &object["spec"])?
        }
        "SelfSubjectRulesReview" => rules(authorizer, user, &object["spec"])?,
        other => return Err(ApiError::bad_request(format!("{other} is not a review"))),
    };
    object["status"] = status;
    Ok(Reply::created(object))
}

fn user_info(user: &UserInfo) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}

/// The user a (Local)SubjectAccessReview asks about, exactly as given.
fn subject_of(spec: &Value) -> Result<UserInfo, ApiError> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = spec["user"].as_str().unwrap_or_default().to_string();
    let groups = strings(&spec["groups"]);
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::bad_request(
            "spec.user or spec.groups: at least one of user or group must be specified",
        ));
    }
    let extra = spec["extra"]
        .as_object()
        .map(|extra| {
            extra
                .iter()
                .map(|(key, values)| (key.clone(), strings(values)))
                .collect()
        })
        .unwrap_or_default();
    Ok(UserInfo {
        name,
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups,
        extra,
    })
}

/// The status of an access review of `spec` for `user`.
fn access(authorizer: &Authorizer, user: &UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let resource = &spec["resourceAttributes"];
    let path = &spec["nonResourceAttributes"];
    let attributes = match (resource.is_object(), path.is_object()) {
        (true, false) => Attributes::Resource(ResourceAttributes {
            verb: text(&resource["verb"]),
            group: text(&resource["group"]),
            version: text(&resource["version"]),
            resource: text(&resource["resource"]),
            subresource: text(&resource["subresource"]),
            namespace: text(&resource["namespace"]),
            name: text(&resource["name"]),
        }),
        (false, true) => Attributes::NonResource {
            verb: text(&path["verb"]),
            path: text(&path["path"]),
        },
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be specified",
            ));
        }
    };
    Ok(match authorizer.decide(user, &attributes) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion => json!({"allowed": false}),
    })
}

/// What `user` may do in `spec.namespace`, split as Kubernetes splits it.
fn rules(authorizer: &Authorizer, user: &UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let namespace = spec["namespace"].as_str().unwrap_or_default();
    if namespace.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let mut rules = authorizer.rbac.rules_for(user, namespace);
    if user.is_superuser() {
        rules.extend(super::admission::full_authority());
    }
    if user.node_name().is_some() {
        rules.extend(node::node_rules().iter().cloned());
    }
    let (paths, resources): (Vec<PolicyRule>, Vec<PolicyRule>) =
        rules.into_iter().partition(|rule| {
            rule.non_resource_urls
                .as_ref()
                .is_some_and(|urls| !urls.is_empty())
        });
    let resource_rules: Vec<Value> = resources
        .iter()
        .map(|rule| {
            let mut out = json!({
                "verbs": rule.verbs,
                "apiGroups": rule.api_groups.clone().unwrap_or_default(),
                "resources": rule.resources.clone().unwrap_or_default(),
            });
            if let Some(names) = rule
                .resource_names
                .as_ref()
                .filter(|names| !names.is_empty())
            {
                out["resourceNames"] = json!(names);
            }
            out
        })
        .collect();
    let path_rules: Vec<Value> = paths
        .iter()
        .map(|rule| json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}))
        .collect();
    Ok(json!({
        "resourceRules": resource_rules,
        "nonResourceRules": path_rules,
        "incomplete": false,
    }))
}
