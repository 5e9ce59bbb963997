//! What every handler reads from a request: query parameters and a JSON or
//! YAML body, each checked with an error that names the problem.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use super::status::ApiError;

/// The largest request body accepted, as Kubernetes' default (3 MiB).
pub const REQUEST_BODY_MAX: usize = 3 * 1024 * 1024;

/// Query parameters, by name.
#[derive(Debug, Default)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `true`/`1` and `false`/`0`, as Go's `strconv.ParseBool` takes them.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "1" | "True" | "TRUE" | "t") => Ok(true),
            Some("false" | "0" | "False" | "FALSE" | "f") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "query parameter {name}={other} is not a boolean"
            ))),
        }
    }

    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {name}={text} is not an integer"
                    ))
                })
            })
            .transpose()
    }

    /// `dryRun=All`: do everything but write.
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "unsupported dryRun value {other:?}: only \"All\" is supported"
            ))),
        }
    }

    /// `fieldValidation`: what to do with fields the type does not know.
    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.get("fieldValidation") {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// A resourceVersion as a store revision; `None` when absent or empty.
/// `field` names where it came from, for the error.
pub fn resource_version(text: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("{field} {text:?} is not a resource version"))
        }),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// The request's media type, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "application/json".into())
}

/// Whether the client asked for a `meta.k8s.io` Table (as `kubectl get`
/// does).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A body as JSON, decoded from JSON or YAML.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > REQUEST_BODY_MAX {
        return Err(ApiError::too_large(REQUEST_BODY_MAX));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let media = content_type(headers);
    let value: Value = match media.as_str() {
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|error| {
                ApiError::bad_request(format!("the YAML body is malformed: {error}"))
            })?,
        super::protobuf::MEDIA_TYPE => super::protobuf::decode(body)?,
        _ if media.ends_with("json") => serde_json::from_slice(body).map_err(|error| {
            ApiError::bad_request(format!("the JSON body is malformed: {error}"))
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn malformed_bodies_point_at_the_problem() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let error = decode_body(&headers, b"{\"a\": }").unwrap_err();
        assert_eq!(error.code.as_u16(), 400);
        assert!(
            error.message.contains("line 1 column 7"),
            "{}",
            error.message
        );

        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        let value = decode_body(&headers, b"a: 1\nb: [x]\n").unwrap();
        assert_eq!(value["b"][0], "x");

        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(decode_body(&headers, b"x").unwrap_err().code.as_u16(), 415);
    }

    #[test]
    fn kubectl_get_asks_for_a_table() {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(wants_table(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&headers));
    }
}
