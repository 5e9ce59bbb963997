//! The verbs on single objects: get, create, update (and the `status` and
//! `scale` subresources), patch and delete, with Kubernetes' semantics for
//! metadata, optimistic concurrency, generations and finalizers.
//!
//! Every write is one raft-store transaction that compares the revision the
//! change was computed from; a lost race is retried on the fresh object
//! when the caller gave no `resourceVersion`, and is a 409 when it did.

use serde_json::{Value, json};

use super::clock::now;
use super::patch;
use super::request::{FieldValidation, Params, resource_version};
use super::status::{ApiError, FieldError};
use super::{ApiState, Reply, defaults, services, validation};
use crate::api::path::Target;
use crate::auth::admission;
use crate::auth::pod_security;
use crate::fence::{FENCE_ANNOTATION, LeaseFence};
use crate::resources::ResourceInfo;
use crate::storage::{Fence, StorageError, Stored};

/// Attempts of one write against concurrent writers before giving up.
const WRITE_ATTEMPTS_MAX: usize = 8;
/// Attempts to create an object whose generated name (`generateName`) or
/// picked ClusterIP another writer took meanwhile.
const CREATE_ATTEMPTS_MAX: usize = 8;
/// Characters of a generated name suffix, as Kubernetes picks them (no
/// vowels, no look-alikes).
const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const NAME_SUFFIX_LEN: usize = 5;
/// Pods get this long to stop when neither the request nor the pod says.
const DEFAULT_GRACE_PERIOD_SECS: i64 = 30;

/// `/registry/<plural>/<namespace>/<name>`, or without the namespace for
/// cluster-scoped resources.
pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> Vec<u8> {
    let mut key = prefix(info, namespace);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix under which a collection's objects are stored.
pub fn prefix(info: &ResourceInfo, namespace: Option<&str>) -> Vec<u8> {
    match namespace {
        Some(namespace) if info.namespaced => format!("/registry/{}/{namespace}/", info.plural),
        _ => format!("/registry/{}/", info.plural),
    }
    .into_bytes()
}

/// A stored object as clients see it: `resourceVersion` is the revision
/// that wrote it, never stored in the bytes themselves.
pub fn decode(stored: &Stored) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&stored.value).map_err(|error| {
        ApiError::internal(format!(
            "stored object {} is not JSON: {error}",
            String::from_utf8_lossy(&stored.key)
        ))
    })?;
    object["metadata"]["resourceVersion"] = json!(stored.mod_revision.to_string());
    Ok(object)
}

/// An object as it is stored: without its `resourceVersion`.
pub(crate) fn encode(object: &Value) -> Result<Vec<u8>, ApiError> {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
    }
    serde_json::to_vec(&object).map_err(|error| ApiError::internal(error.to_string()))
}

fn target_name<'t>(target: &'t Target<'_>) -> Result<&'t str, ApiError> {
    target
        .name
        .as_deref()
        .ok_or_else(|| ApiError::method_not_allowed("this verb needs an object name in the path"))
}

fn stored_key(target: &Target<'_>, name: &str) -> Vec<u8> {
    key(target.info, target.namespace.as_deref(), name)
}

/// The stored object `name` of `target`'s collection, or a 404.
pub(crate) async fn read_object(
    state: &ApiState,
    target: &Target<'_>,
    name: &str,
) -> Result<Stored, ApiError> {
    state
        .storage
        .get(&stored_key(target, name))
        .await
        .map_err(|error| ApiError::from_storage(error, target.info, name))?
        .ok_or_else(|| ApiError::not_found(target.info, name))
}

pub async fn get(state: &ApiState, target: &Target<'_>) -> Result<Reply, ApiError> {
    let name = target_name(target)?;
    let object = decode(&read_object(state, target, name).await?)?;
    match target.subresource.as_deref() {
        None | Some("status") => Ok(Reply::ok(object)),
        Some("scale") if target.info.has_subresource("scale") => Ok(Reply::ok(scale_of(&object))),
        Some(other) => Err(no_subresource(target.info, other)),
    }
}

fn no_subresource(info: &ResourceInfo, subresource: &str) -> ApiError {
    ApiError::no_route(&format!("{}/{subresource}", info.qualified_plural()))
}

/// Checks and completes a body for `target`: kind, namespace, defaults,
/// the type's own check, unknown fields, and validation.
fn prepare(
    target: &Target<'_>,
    mut object: Value,
    params: &Params,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let info = target.info;
    if !object.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            info.kind
        )));
    }
    let api_version = info.api_version();
    match object["apiVersion"].as_str() {
        None => object["apiVersion"] = json!(api_version),
        Some(given) if given == api_version => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match object["kind"].as_str() {
        None => object["kind"] = json!(info.kind),
        Some(given) if given == info.kind => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if info.namespaced {
        let namespace = target.namespace.as_deref().unwrap_or("default");
        match object["metadata"]["namespace"].as_str() {
            None | Some("") => object["metadata"]["namespace"] = json!(namespace),
            Some(given) if given == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("namespace");
    }

    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (mut object, unknown) = info
        .normalize(object)
        .map_err(|why| ApiError::bad_request(format!("{} \"{name}\": {why}", info.kind)))?;
    match params.field_validation()? {
        FieldValidation::Strict if !unknown.is_empty() => {
            let fields = unknown
                .iter()
                .map(|field| format!("unknown field \"{}\"", field.trim_start_matches('.')))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::bad_request(format!(
                "{} in version \"{api_version}\" cannot be handled as a {}: strict decoding error: {fields}",
                info.kind, info.kind
            )));
        }
        FieldValidation::Warn => warnings.extend(
            unknown
                .iter()
                .map(|field| format!("unknown field \"{}\"", field.trim_start_matches('.'))),
        ),
        _ => {}
    }
    defaults::apply(info, &mut object);
    let errors = validation::validate(info, &object);
    if !errors.is_empty() {
        return Err(ApiError::invalid(info, &name, errors));
    }
    Ok(object)
}

pub async fn create(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    body: Value,
) -> Result<Reply, ApiError> {
    match (target.name.as_deref(), target.subresource.as_deref()) {
        (None, None) => {}
        (Some(name), Some("binding")) if target.info.kind == "Pod" => {
            return bind(state, target, name, params, body).await;
        }
        (Some(name), Some("eviction")) if target.info.kind == "Pod" => {
            return super::eviction::evict(state, target, name, params, body).await;
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "POST creates objects in a collection; use PUT or PATCH on an object",
            ));
        }
    }
    let info = target.info;
    let mut body = body;
    if body["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let generate_name = body["metadata"]["generateName"]
        .as_str()
        .map(str::to_string)
        .filter(|prefix| !prefix.is_empty());
    let given_name = body["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if !given_name && generate_name.is_some() && body["metadata"].is_object() {
        // A placeholder that passes validation; replaced below.
        body["metadata"]["name"] = json!(format!("{}x", generate_name.as_deref().unwrap_or("")));
    }

    let mut warnings = Vec::new();
    let mut object = prepare(target, body, params, &mut warnings)?;
    let write = admission::Write {
        info,
        subresource: None,
        old: None,
        new: &object,
    };
    admission::admit(&state.authorizer, &state.user, &write)?;
    if info.namespaced {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let namespace = namespace_accepting_content(state, namespace).await?;
        let policy = pod_security_policy(state, &namespace);
        warnings.extend(pod_security::admit(info, &object, policy)?);
    }
    crate::registry::admit(state, info, &mut object).await?;
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
    metadata["creationTimestamp"] = json!(now());
    if let Some(metadata) = metadata.as_object_mut() {
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            metadata.remove(field);
        }
    }
    if info.tracks_generation() {
        object["metadata"]["generation"] = json!(1);
    }
    reset_status_on_create(info, &mut object);

    let address = if services::is_service(info) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        services::requested(state, &object)
            .map_err(|errors| ApiError::invalid(info, name, errors))?
    } else {
        services::Wanted::Nothing
    };
    // A generated name or a picked address or node port taken meanwhile
    // is picked again; a name, address or port the client chose is not.
    for attempt in 1..=CREATE_ATTEMPTS_MAX {
        if !given_name {
            let prefix = generate_name.as_deref().unwrap_or_default();
            object["metadata"]["name"] = json!(format!("{prefix}{}", name_suffix()));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if info.kind == "Job" {
            // After naming: the template's job-name label is the final name.
            defaults::job_selector(&mut object);
        }
        // Allocated into a copy: what one attempt picked must not read as
        // asked for by the client in the next.
        let mut object = object.clone();
        let allocation = services::assign(state, info, &address, &mut object).await?;
        if params.dry_run()? {
            return Ok(Reply::created(object).with_warnings(warnings));
        }
        let last = attempt == CREATE_ATTEMPTS_MAX;
        match state
            .storage
            .create_claiming(
                &stored_key(target, &name),
                encode(&object)?,
                &allocation.claims,
            )
            .await
        {
            Ok(revision) => {
                object["metadata"]["resourceVersion"] = json!(revision.to_string());
                let address = allocation.address;
                tracing::debug!(resource = info.plural, %name, revision, ?address, "created");
                return Ok(Reply::created(object).with_warnings(warnings));
            }
            Err(StorageError::AlreadyExists) if !given_name && !last => continue,
            Err(StorageError::Claimed { key }) => match allocation.refusal(&key) {
                Some(error) => return Err(ApiError::invalid(info, &name, vec![error])),
                None if !last => continue,
                None => {
                    let error = StorageError::Claimed { key };
                    return Err(ApiError::from_storage(error, info, &name));
                }
            },
            Err(StorageError::Conflict { .. }) if !last => continue,
            Err(error) => return Err(ApiError::from_storage(error, info, &name)),
        }
    }
    Err(ApiError::internal(
        "no free generated name or address was found",
    ))
}

fn name_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..NAME_SUFFIX_LEN)
        .map(|_| NAME_SUFFIX_ALPHABET[rng.random_range(0..NAME_SUFFIX_ALPHABET.len())] as char)
        .collect()
}

/// What a new object's status starts as, whatever the client sent: the
/// status belongs to the controllers and the agents.
fn reset_status_on_create(info: &ResourceInfo, object: &mut Value) {
    if !info.has_subresource("status") || info.kind == "Node" {
        return;
    }
    object["status"] = match info.kind {
        "Pod" => json!({"phase": "Pending", "qosClass": "BestEffort"}),
        "Namespace" => json!({"phase": "Active"}),
        "Service" => json!({"loadBalancer": {}}),
        _ => json!({}),
    };
}

/// The pod security policy of the Namespace object `namespace` on this
/// server.
fn pod_security_policy(state: &ApiState, namespace: &Value) -> pod_security::Policy {
    pod_security::Policy {
        file_images_allowed: state.modules.config.allow_file_images,
        ..pod_security::Policy::of_namespace(namespace)
    }
}

/// The Namespace object named `namespace`.
async fn namespace_object(state: &ApiState, namespace: &str) -> Result<Value, ApiError> {
    let namespaces = state
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    let stored = state
        .storage
        .get(&key(namespaces, None, namespace))
        .await
        .map_err(|error| ApiError::from_storage(error, namespaces, namespace))?
        .ok_or_else(|| ApiError::not_found(namespaces, namespace))?;
    decode(&stored)
}

/// The Namespace object `namespace`, which content may be created in only
/// while it exists and is not being deleted.
async fn namespace_accepting_content(state: &ApiState, namespace: &str) -> Result<Value, ApiError> {
    let object = namespace_object(state, namespace).await?;
    if !object["metadata"]["deletionTimestamp"].is_null() {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(object)
}

/// `POST pods/<name>/binding`: the scheduler's one write to a pod.
async fn bind(
    state: &ApiState,
    target: &Target<'_>,
    name: &str,
    params: &Params,
    body: Value,
) -> Result<Reply, ApiError> {
    let node = body["target"]["name"]
        .as_str()
        .filter(|node| !node.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(target.info, name, vec![FieldError::required("target.name")])
        })?
        .to_string();
    let dry_run = params.dry_run()?;
    let fence = fence_of(&body)?;
    update_fenced_with(
        state,
        target,
        name,
        None,
        fence.as_ref(),
        dry_run,
        |current| {
            if let Some(bound) = current["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict_message(format!(
                    "pod {name} is already assigned to node \"{bound}\""
                )));
            }
            let mut pod = current.clone();
            pod["spec"]["nodeName"] = json!(node);
            Ok(pod)
        },
    )
    .await?;
    Ok(Reply::created(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201
    })))
}

/// The leader's term a request's [`FENCE_ANNOTATION`] names, if any.
fn fence_of(body: &Value) -> Result<Option<LeaseFence>, ApiError> {
    let Some(value) = body["metadata"]["annotations"][FENCE_ANNOTATION].as_str() else {
        return Ok(None);
    };
    LeaseFence::parse(value)
        .map(Some)
        .map_err(ApiError::bad_request)
}

/// The Lease `fence` names, checked to still name its term, as the store
/// key and revision a write compares: a renewal after this read makes the
/// write retry, a take-over makes this check fail.
async fn current_fence(state: &ApiState, fence: &LeaseFence) -> Result<Fence, ApiError> {
    let leases = state
        .registry
        .find("coordination.k8s.io", "v1", "leases")
        .ok_or_else(|| ApiError::internal("the Lease resource is not served"))?;
    let key = key(leases, Some(&fence.namespace), &fence.name);
    let lost = || {
        ApiError::conflict_message(format!(
            "the Lease {}/{} named by {FENCE_ANNOTATION} is no longer held by {} in term {}; \
             the writer no longer leads",
            fence.namespace, fence.name, fence.holder, fence.transitions
        ))
    };
    let stored = state
        .storage
        .get(&key)
        .await
        .map_err(|error| ApiError::from_storage(error, leases, &fence.name))?
        .ok_or_else(lost)?;
    if !fence.holds(&decode(&stored)?) {
        return Err(lost());
    }
    Ok(Fence {
        key,
        mod_revision: stored.mod_revision,
    })
}

/// `PUT`: replace an object, its status, or its scale.
pub async fn update(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    body: Value,
) -> Result<Reply, ApiError> {
    let name = target_name(target)?.to_string();
    if body["metadata"]["name"]
        .as_str()
        .is_some_and(|given| given != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            body["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let precondition = resource_version_of(&body)?;
    let dry_run = params.dry_run()?;
    let mut warnings = Vec::new();
    let written = match target.subresource.as_deref() {
        None => {
            let replacement = prepare(target, with_name(body, &name), params, &mut warnings)?;
            update_with(state, target, &name, precondition, dry_run, |current| {
                Ok(carry_over(target.info, current, replacement.clone()))
            })
            .await?
        }
        Some("status") if target.info.has_subresource("status") => {
            let replacement = prepare(target, with_name(body, &name), params, &mut warnings)?;
            update_with(state, target, &name, precondition, dry_run, |current| {
                let mut object = current.clone();
                object["status"] = replacement["status"].clone();
                Ok(object)
            })
            .await?
        }
        Some("scale") if target.info.has_subresource("scale") => {
            let replicas = replicas_of_scale(&body)?;
            let written = update_with(state, target, &name, precondition, dry_run, |current| {
                let mut object = current.clone();
                object["spec"]["replicas"] = json!(replicas);
                Ok(object)
            })
            .await?;
            return Ok(Reply::ok(scale_of(&written.object)));
        }
        Some("finalize") if target.info.kind == "Namespace" => {
            let finalizers = body["spec"]["finalizers"].clone();
            update_with(state, target, &name, precondition, dry_run, |current| {
                let mut object = current.clone();
                object["spec"]["finalizers"] = finalizers.clone();
                Ok(object)
            })
            .await?
        }
        Some(other) => return Err(no_subresource(target.info, other)),
    };
    warnings.extend(written.warnings);
    Ok(Reply::ok(written.object).with_warnings(warnings))
}

fn with_name(mut body: Value, name: &str) -> Value {
    if body.is_object() {
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        body["metadata"]["name"] = json!(name);
    }
    body
}

/// The `resourceVersion` a body was computed from, if it names one.
pub fn resource_version_of(body: &Value) -> Result<Option<i64>, ApiError> {
    resource_version(
        body["metadata"]["resourceVersion"].as_str(),
        "metadata.resourceVersion",
    )
}

/// What an update may not change, taken from the stored object: identity,
/// creation and deletion marks, and the status when the resource has a
/// `status` subresource (that is the only way to write it).
fn carry_over(info: &ResourceInfo, current: &Value, mut replacement: Value) -> Value {
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match current["metadata"].get(field) {
            Some(value) => replacement["metadata"][field] = value.clone(),
            None => {
                if let Some(metadata) = replacement["metadata"].as_object_mut() {
                    metadata.remove(field);
                }
            }
        }
    }
    if info.has_subresource("status") {
        replacement["status"] = current["status"].clone();
        if replacement["status"].is_null()
            && let Some(object) = replacement.as_object_mut()
        {
            object.remove("status");
        }
    }
    replacement
}

/// An object as an update left it, and the warnings its admission gave.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Applies `change` to the stored object and writes the result, retrying
/// on the fresh object when another writer got there first and the caller
/// gave no `precondition`. Returns the object as written (or as found,
/// when the change changed nothing).
pub async fn update_with(
    state: &ApiState,
    target: &Target<'_>,
    name: &str,
    precondition: Option<i64>,
    dry_run: bool,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Written, ApiError> {
    update_fenced_with(state, target, name, precondition, None, dry_run, change).await
}

/// As [`update_with`], and the write also requires the leader's term
/// `fence` names to hold when it commits.
async fn update_fenced_with(
    state: &ApiState,
    target: &Target<'_>,
    name: &str,
    precondition: Option<i64>,
    fence: Option<&LeaseFence>,
    dry_run: bool,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Written, ApiError> {
    let info = target.info;
    let key = stored_key(target, name);
    for _ in 0..WRITE_ATTEMPTS_MAX {
        let stored = read_object(state, target, name).await?;
        if precondition.is_some_and(|expected| expected != stored.mod_revision) {
            return Err(ApiError::conflict(info, name));
        }
        let current = decode(&stored)?;
        let mut next = change(&current)?;
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if info.tracks_generation() && next["spec"] != current["spec"] {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        if services::is_service(info) {
            services::keep(state, &current, &mut next)
                .map_err(|errors| ApiError::invalid(info, name, errors))?;
        }
        let mut errors = validation::validate(info, &next);
        if target.subresource.is_none() {
            errors.extend(validation::validate_update(info, &current, &next));
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(info, name, errors));
        }
        let write = admission::Write {
            info,
            subresource: target.subresource.as_deref(),
            old: Some(&current),
            new: &next,
        };
        admission::admit(&state.authorizer, &state.user, &write)?;
        // A changed pod spec is admitted as a new one is: images pinned,
        // the namespace's pod security enforced.
        let mut warnings = Vec::new();
        if target.subresource.is_none() && pod_security::spec_changed(info.kind, &current, &next) {
            let namespace = next["metadata"]["namespace"].as_str().unwrap_or("default");
            let policy = pod_security_policy(state, &namespace_object(state, namespace).await?);
            warnings = pod_security::admit(info, &next, policy)?;
            crate::registry::admit(state, info, &mut next).await?;
        }
        let allocation = services::reassign(state, info, &current, &mut next).await?;
        // An unchanged object stored under an old encryption key is written
        // anyway: rewriting objects is how keys rotate.
        if (next == current && !stored.stale) || dry_run {
            return Ok(Written {
                object: next,
                warnings,
            });
        }
        // An object marked for deletion goes once its last finalizer does.
        let finished = !next["metadata"]["deletionTimestamp"].is_null()
            && next["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && !pod_awaits_its_node(info, &next);
        let outcome = if finished {
            // What the stored object holds, not what the last change
            // would have had it hold.
            let claims = services::claims_of(info, &current);
            state
                .storage
                .delete_releasing(&key, stored.mod_revision, &claims)
                .await
        } else if let Some(fence) = fence {
            let fence = current_fence(state, fence).await?;
            state
                .storage
                .update_fenced(&key, encode(&next)?, stored.mod_revision, &fence)
                .await
        } else {
            let (claims, releases) = (&allocation.claims, &allocation.releases);
            state
                .storage
                .update_claiming(&key, encode(&next)?, stored.mod_revision, claims, releases)
                .await
        };
        match outcome {
            Ok(revision) => {
                next["metadata"]["resourceVersion"] = json!(revision.to_string());
                return Ok(Written {
                    object: next,
                    warnings,
                });
            }
            Err(StorageError::Conflict { .. }) if precondition.is_none() => continue,
            // A node port picked for this write was taken meanwhile: pick
            // again; one the client asked for is refused.
            Err(StorageError::Claimed { key }) => match allocation.refusal(&key) {
                Some(error) => return Err(ApiError::invalid(info, name, vec![error])),
                None => continue,
            },
            // The Lease was renewed since it was checked: check it again.
            Err(StorageError::Fenced { .. }) => continue,
            Err(error) => return Err(ApiError::from_storage(error, info, name)),
        }
    }
    Err(ApiError::conflict(info, name))
}

/// A pod being deleted gracefully stays until its node confirms it stopped
/// (by deleting it with a zero grace period).
fn pod_awaits_its_node(info: &ResourceInfo, object: &Value) -> bool {
    info.kind == "Pod"
        && object["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|grace| grace > 0)
        && object["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
}

/// `PATCH`: merge, JSON or strategic merge patch on the stored object.
pub async fn patch(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    content_type: &str,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let name = target_name(target)?.to_string();
    let patch = patch::Patch::parse(content_type, body)?;
    let precondition = patch.resource_version()?;
    let dry_run = params.dry_run()?;
    let info = target.info;
    let subresource = target.subresource.as_deref();
    let warnings = std::sync::Mutex::new(Vec::new());
    let written = update_with(state, target, &name, precondition, dry_run, |current| {
        let view = match subresource {
            Some("scale") if info.has_subresource("scale") => scale_of(current),
            None | Some("status") => current.clone(),
            Some(other) => return Err(no_subresource(info, other)),
        };
        let patched = off_the_workers(|| patch.apply(&view))?;
        match subresource {
            Some("scale") => {
                let mut object = current.clone();
                object["spec"]["replicas"] = json!(replicas_of_scale(&patched)?);
                Ok(object)
            }
            Some("status") => {
                let mut object = current.clone();
                object["status"] = patched["status"].clone();
                Ok(object)
            }
            _ => {
                if patched["metadata"]["name"].as_str() != Some(name.as_str()) {
                    return Err(ApiError::bad_request(
                        "a patch may not change metadata.name",
                    ));
                }
                let mut local = Vec::new();
                let prepared = prepare(target, patched, params, &mut local)?;
                if let Ok(mut warnings) = warnings.lock() {
                    *warnings = local;
                }
                Ok(carry_over(info, current, prepared))
            }
        }
    })
    .await?;
    let mut warnings = warnings.into_inner().unwrap_or_default();
    warnings.extend(written.warnings);
    match subresource {
        Some("scale") => Ok(Reply::ok(scale_of(&written.object))),
        _ => Ok(Reply::ok(written.object).with_warnings(warnings)),
    }
}

/// Runs `work`, CPU-bound and bounded, without holding up the other tasks
/// of this async worker: on a multi-threaded runtime they move to another
/// worker meanwhile. (A single-threaded runtime, as in tests, has no other
/// worker to move them to.)
fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The `autoscaling/v1` Scale view of a workload.
fn scale_of(object: &Value) -> Value {
    let metadata = &object["metadata"];
    let selector = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}

fn replicas_of_scale(scale: &Value) -> Result<i64, ApiError> {
    match scale["spec"]["replicas"].as_i64() {
        Some(replicas) if replicas >= 0 => Ok(replicas),
        Some(replicas) => Err(ApiError::bad_request(format!(
            "spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
        ))),
        None => Ok(0),
    }
}

/// How the dependents of a deleted object (those whose `ownerReferences`
/// name it) are treated, as `DeleteOptions.propagationPolicy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents.
    Background,
    /// The object stays, with the `foregroundDeletion` finalizer, until the
    /// garbage collector has deleted its blocking dependents.
    Foreground,
    /// The object stays, with the `orphan` finalizer, until the garbage
    /// collector has removed it from its dependents' `ownerReferences`.
    Orphan,
}

/// The finalizers the garbage collector removes once it has handled an
/// object's dependents; Kubernetes' names.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    /// From the query or the `DeleteOptions` body, with the deprecated
    /// `orphanDependents` flag honoured as Kubernetes does.
    fn of(
        info: &ResourceInfo,
        name: &str,
        params: &Params,
        options: &Value,
    ) -> Result<Self, ApiError> {
        let invalid = |cause, message: String| {
            let error = FieldError {
                field: "propagationPolicy".into(),
                cause,
                message,
            };
            ApiError::invalid(info, name, vec![error])
        };
        let policy = params
            .get("propagationPolicy")
            .or_else(|| options["propagationPolicy"].as_str());
        let orphan = match params.get("orphanDependents") {
            Some(flag) => Some(flag == "true"),
            None => options["orphanDependents"].as_bool(),
        };
        if policy.is_some() && orphan.is_some() {
            return Err(invalid(
                "FieldValueInvalid",
                "orphanDependents and propagationPolicy cannot both be set".into(),
            ));
        }
        match (policy, orphan) {
            (Some("Background") | None, None | Some(false)) => Ok(Propagation::Background),
            (Some("Foreground"), _) => Ok(Propagation::Foreground),
            (Some("Orphan"), _) | (None, Some(true)) => Ok(Propagation::Orphan),
            (Some(other), _) => Err(invalid(
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            )),
        }
    }

    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// `DELETE` on one object. Returns the object as it was when it is gone,
/// or marked with its `deletionTimestamp` when finalizers, the
/// propagation policy or a pod's grace period hold it.
pub async fn delete(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    options: &Value,
) -> Result<Reply, ApiError> {
    let name = target_name(target)?.to_string();
    if target.subresource.is_some() {
        return Err(ApiError::method_not_allowed(
            "DELETE applies to whole objects",
        ));
    }
    let info = target.info;
    let dry_run = params.dry_run()? || options["dryRun"].as_array().is_some_and(|d| !d.is_empty());
    let grace = match params.integer("gracePeriodSeconds")? {
        Some(grace) => Some(grace),
        None => options["gracePeriodSeconds"].as_i64(),
    };
    let propagation = Propagation::of(info, &name, params, options)?;
    let key = stored_key(target, &name);
    for _ in 0..WRITE_ATTEMPTS_MAX {
        let stored = read_object(state, target, &name).await?;
        let current = decode(&stored)?;
        check_preconditions(info, &name, &current, &options["preconditions"])?;
        admission::admit_delete(&state.user, info, &current)?;
        let finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
            || propagation.finalizer().is_some();
        let pod_grace = if info.kind == "Pod"
            && current["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        {
            grace
                .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(DEFAULT_GRACE_PERIOD_SECS)
        } else {
            0
        };
        let namespace = info.kind == "Namespace";
        if !(finalizers || pod_grace > 0 || namespace) {
            if dry_run {
                return Ok(Reply::ok(current));
            }
            let claims = services::claims_of(info, &current);
            match state
                .storage
                .delete_releasing(&key, stored.mod_revision, &claims)
                .await
            {
                Ok(_) => return Ok(Reply::ok(current)),
                Err(StorageError::Conflict { .. }) => continue,
                Err(error) => return Err(ApiError::from_storage(error, info, &name)),
            }
        }
        // Mark it; whoever holds it (a finalizer's owner, the pod's node,
        // the namespace cleaner) completes the deletion.
        let mut marked = current.clone();
        if marked["metadata"]["deletionTimestamp"].is_null() {
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
        }
        if let Some(finalizer) = propagation.finalizer() {
            add_finalizer(&mut marked, finalizer);
        }
        if namespace {
            marked["status"]["phase"] = json!("Terminating");
        }
        if marked == current || dry_run {
            return Ok(Reply::ok(marked));
        }
        match state
            .storage
            .update(&key, encode(&marked)?, stored.mod_revision)
            .await
        {
            Ok(revision) => {
                marked["metadata"]["resourceVersion"] = json!(revision.to_string());
                if namespace {
                    super::namespaces::spawn_cleanup(state.clone(), name.clone());
                }
                return Ok(Reply::ok(marked));
            }
            Err(StorageError::Conflict { .. }) => continue,
            Err(error) => return Err(ApiError::from_storage(error, info, &name)),
        }
    }
    Err(ApiError::conflict(info, &name))
}

/// Adds `finalizer` unless the object has it already.
fn add_finalizer(object: &mut Value, finalizer: &str) {
    let finalizers = &mut object["metadata"]["finalizers"];
    match finalizers.as_array_mut() {
        Some(list) if list.iter().any(|f| f == finalizer) => {}
        Some(list) => list.push(json!(finalizer)),
        None => *finalizers = json!([finalizer]),
    }
}

fn check_preconditions(
    info: &ResourceInfo,
    name: &str,
    current: &Value,
    preconditions: &Value,
) -> Result<(), ApiError> {
    if let Some(uid) = preconditions["uid"].as_str() {
        let actual = current["metadata"]["uid"].as_str().unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict_message(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
            )));
        }
    }
    if let Some(version) = preconditions["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(version)
    {
        return Err(ApiError::conflict(info, name));
    }
    Ok(())
}
