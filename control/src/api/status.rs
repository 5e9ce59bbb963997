//! Errors as Kubernetes reports them: a `Status` object with the HTTP code,
//! a machine-readable reason, a message for people and, where a field is at
//! fault, its path. kubectl prints `message`; controllers branch on `reason`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::fence::FENCE_ANNOTATION;
use crate::resources::ResourceInfo;
use crate::storage::StorageError;

/// One invalid field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `metadata.name`, `spec.containers[0].image`.
    pub field: String,
    /// Kubernetes' cause type: `FieldValueInvalid`, `FieldValueRequired`, …
    pub cause: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueInvalid",
            message: message.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueRequired",
            message: "Required value".into(),
        }
    }

    /// A value the rest of the object rules out (Kubernetes'
    /// `field.Forbidden`); `detail` says why.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }

    /// A value another item of the same list has already
    /// (`field.Duplicate`).
    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
        }
    }

    pub fn unknown(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            cause: "FieldValueInvalid",
            message: "unknown field".into(),
        }
    }
}

/// An error answer. Built by the helpers below so that codes and reasons
/// match Kubernetes'.
#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    details: Value,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn with_details(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.details = json!({"name": name, "group": info.group, "kind": info.plural});
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", info.qualified_plural()),
        )
        .with_details(info, name)
    }

    /// Something that is not a Kubernetes object was not found (a module
    /// in the registry); `message` says what.
    pub fn missing(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// A path that names no resource the server knows.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", info.qualified_plural()),
        )
        .with_details(info, name)
    }

    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                info.qualified_plural()
            ),
        )
        .with_details(info, name)
    }

    /// A conflict that is not about resourceVersion (a bound pod, a UID
    /// precondition).
    pub fn conflict_message(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::unauthorized_because("Unauthorized")
    }

    /// A 401 that says why, where saying so tells the caller nothing it
    /// did not send (a bad join token).
    pub fn unauthorized_because(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// A refusal to act on an object, with Kubernetes' details (`kind` is
    /// the resource's plural there, as in its other errors).
    pub fn forbidden_object(
        group: &str,
        resource: &str,
        name: &str,
        message: impl Into<String>,
    ) -> Self {
        let mut error = ApiError::forbidden(message);
        error.details = json!({"name": name, "group": group, "kind": resource});
        error
    }

    /// A well-formed request that cannot be carried out (a JSON patch
    /// whose path does not exist).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    /// The server is at a bound it keeps (concurrent uploads); the
    /// client should try again later.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type})"),
        )
    }

    /// 413 with `message` saying what is too large.
    pub fn entity_too_large(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            message,
        )
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the {limit}-byte limit"),
        )
    }

    /// The object fails validation: 422 with every bad field listed.
    pub fn invalid(info: &ResourceInfo, name: &str, errors: Vec<FieldError>) -> Self {
        let summary = errors
            .iter()
            .map(|error| format!("{}: {}", error.field, error.message))
            .collect::<Vec<_>>()
            .join(", ");
        let causes: Vec<Value> = errors
            .iter()
            .map(|error| json!({"reason": error.cause, "message": error.message, "field": error.field}))
            .collect();
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {summary}", info.kind),
            details: json!({"name": name, "group": info.group, "kind": info.kind, "causes": causes}),
        }
    }

    /// An error a node's agent answered with, passed on with its code.
    pub fn from_node(code: StatusCode, message: String) -> Self {
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            _ => "InternalError",
        };
        let code = if code.is_client_error() || code.is_server_error() {
            code
        } else {
            StatusCode::BAD_GATEWAY
        };
        ApiError::new(code, reason, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// A storage failure while working on `name` of `info`.
    pub fn from_storage(error: StorageError, info: &ResourceInfo, name: &str) -> Self {
        match error {
            StorageError::NotFound => ApiError::not_found(info, name),
            StorageError::AlreadyExists => ApiError::already_exists(info, name),
            StorageError::Conflict { .. } => ApiError::conflict(info, name),
            StorageError::Claimed { key } => ApiError::conflict_message(format!(
                "{} \"{name}\" cannot be written: {} is held by another object",
                info.qualified_plural(),
                String::from_utf8_lossy(&key)
            )),
            StorageError::Fenced { .. } => ApiError::conflict_message(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the Lease named by \
                 {FENCE_ANNOTATION} kept changing while the write was checked against it; \
                 try again",
                info.qualified_plural()
            ))
            .with_details(info, name),
            StorageError::Compacted {
                requested,
                compacted,
            } => ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StorageError::Store(store) => ApiError::from_store(store),
            StorageError::Encryption(error) => ApiError::internal(error.to_string()),
        }
    }

    /// A failure of the store itself, whatever was being worked on.
    pub fn from_store(store: flotilla_raft_store::Error) -> Self {
        match store {
            flotilla_raft_store::Error::NotLeader { .. }
            | flotilla_raft_store::Error::NoQuorum { .. }
            | flotilla_raft_store::Error::Timeout { .. }
            | flotilla_raft_store::Error::Stopped => ApiError::unavailable(store.to_string()),
            flotilla_raft_store::Error::FutureRevision { requested, current } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            flotilla_raft_store::Error::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                store.to_string(),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code, axum::Json(self.to_status())).into_response();
        // A store electing a new leader answers within a second or two;
        // client-go (kubectl) and kube-rs retry a 503 or 429 that says
        // when, as they do against kube-apiserver.
        if matches!(
            self.code,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
