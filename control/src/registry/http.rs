//! The registry's endpoints on the API server, under [`PREFIX`]. They go
//! through the API's one handler, so they are authenticated (client
//! certificates), traced and counted in `/metrics` like every request.
//!
//! - `PUT blobs/sha256:<hex>`: upload a module (the body is its bytes);
//!   201 with `{"digest", "size"}`, or 200 when it was already stored.
//! - `GET blobs/sha256:<hex>`: download it (streamed chunk by chunk);
//!   `HEAD` asks whether it is stored.
//! - `PUT tags/<name>/<tag>` with `{"digest": "sha256:<hex>"}`: point a tag
//!   at a stored blob (moving it if it pointed elsewhere).
//! - `GET tags/<name>/<tag>`: `{"name", "tag", "digest"}`.
//! - `GET tags`: `{"items": [...], "remaining": <tags left out>}`.
//!
//! Errors are Kubernetes `Status` objects, as everywhere on the API.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use tracing::Instrument;

use super::blobs::{Blobs, Manifest};
use super::reference::Digest;
use super::{
    MODULE_BYTES_MAX, RegistryError, UPLOAD_QUEUE_WAIT, UPLOAD_TIMEOUT, reference::ReferenceError,
};
use crate::api::ApiState;
use crate::api::status::ApiError;
use crate::storage::StorageError;

/// Where the registry's endpoints live: outside Kubernetes' `/api` and
/// `/apis`, so no Kubernetes client mistakes them for resources.
pub const PREFIX: &str = "/flotilla/registry/v1/";

/// The largest body of a tag write: one small JSON object.
const TAG_BODY_BYTES_MAX: usize = 4 * 1024;

const BLOBS: &str = "registry/blobs";
const TAGS: &str = "registry/tags";

/// Serves `rest`, the path after [`PREFIX`]; returns the verb and resource
/// for metrics, and the answer.
pub async fn serve(
    state: &ApiState,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    body: Body,
) -> (&'static str, &'static str, Result<Response, ApiError>) {
    let blobs = Blobs::new(state.storage.clone());
    if let Some(digest) = rest.strip_prefix("blobs/") {
        let digest = match Digest::parse(digest) {
            Ok(digest) => digest,
            Err(error) => return ("unknown", BLOBS, Err(error.into())),
        };
        let span = tracing::info_span!("registry_blob", %digest);
        return match *method {
            Method::PUT => (
                "create",
                BLOBS,
                upload(state, &blobs, digest, headers, body)
                    .instrument(span)
                    .await,
            ),
            Method::GET => (
                "get",
                BLOBS,
                download(&blobs, digest).instrument(span).await,
            ),
            Method::HEAD => ("get", BLOBS, exists(&blobs, digest).instrument(span).await),
            _ => ("unknown", BLOBS, Err(not_allowed(method, "a blob"))),
        };
    }
    if rest == "tags" || rest == "tags/" {
        return match *method {
            Method::GET => ("list", TAGS, list_tags(&blobs).await),
            _ => ("unknown", TAGS, Err(not_allowed(method, "the tag list"))),
        };
    }
    let Some((name, tag)) = rest
        .strip_prefix("tags/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return ("unknown", "", Err(ApiError::no_route(rest)));
    };
    let span = tracing::info_span!("registry_tag", name, tag);
    match *method {
        Method::GET => (
            "get",
            TAGS,
            get_tag(&blobs, name, tag).instrument(span).await,
        ),
        Method::PUT => (
            "update",
            TAGS,
            put_tag(&blobs, name, tag, body).instrument(span).await,
        ),
        _ => ("unknown", TAGS, Err(not_allowed(method, "a tag"))),
    }
}

fn not_allowed(method: &Method, what: &str) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not supported on {what}"))
}

fn blob_json(digest: Digest, manifest: &Manifest) -> serde_json::Value {
    json!({"digest": digest, "size": manifest.size})
}

async fn upload(
    state: &ApiState,
    blobs: &Blobs,
    digest: Digest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Content addressing: the same bytes are stored once, so a re-push
    // ends here without reading the body.
    if let Some(manifest) = blobs.manifest(&digest).await? {
        return Ok(axum::Json(blob_json(digest, &manifest)).into_response());
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MODULE_BYTES_MAX) {
        return Err(RegistryError::TooLarge {
            limit: MODULE_BYTES_MAX,
        }
        .into());
    }
    let _slot = tokio::time::timeout(UPLOAD_QUEUE_WAIT, state.modules.uploads.acquire())
        .await
        .map_err(|_| {
            ApiError::too_many_requests(format!(
                "{} uploads are in progress; try again later",
                super::UPLOADS_CONCURRENT_MAX
            ))
        })?
        .map_err(|_| ApiError::unavailable("the registry is shutting down"))?;
    let manifest = tokio::time::timeout(UPLOAD_TIMEOUT, store_body(blobs, digest, body))
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the upload took longer than {} s",
                UPLOAD_TIMEOUT.as_secs()
            ))
        })??;
    tracing::info!(
        size = manifest.size,
        chunks = manifest.chunks,
        "module stored"
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(blob_json(digest, &manifest)),
    )
        .into_response())
}

/// Streams the request body into the store, one chunk at a time.
async fn store_body(blobs: &Blobs, digest: Digest, mut body: Body) -> Result<Manifest, ApiError> {
    let mut writer = blobs.writer(digest);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|error| ApiError::bad_request(format!("the upload was cut: {error}")))?;
        if let Ok(data) = frame.into_data() {
            writer.write(&data).await?;
        }
    }
    Ok(writer.finish().await?)
}

async fn stored(blobs: &Blobs, digest: Digest) -> Result<Manifest, ApiError> {
    blobs
        .manifest(&digest)
        .await?
        .ok_or_else(|| RegistryError::BlobNotFound { digest }.into())
}

async fn exists(blobs: &Blobs, digest: Digest) -> Result<Response, ApiError> {
    let manifest = stored(blobs, digest).await?;
    Ok(([(CONTENT_LENGTH, manifest.size.to_string())], Body::empty()).into_response())
}

/// The blob's bytes, read from the store a chunk at a time as the client
/// takes them, so a download holds one chunk in memory.
async fn download(blobs: &Blobs, digest: Digest) -> Result<Response, ApiError> {
    let manifest = stored(blobs, digest).await?;
    let blobs = blobs.clone();
    let chunks = futures::stream::try_unfold(0, move |index| {
        let blobs = blobs.clone();
        async move {
            if index >= manifest.chunks {
                return Ok(None);
            }
            let chunk = blobs
                .chunk(&digest, &manifest, index)
                .await
                .inspect_err(|error| tracing::warn!(%error, "blob download failed"))?;
            Ok::<_, RegistryError>(Some((Bytes::from(chunk), index + 1)))
        }
    });
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
            (CONTENT_LENGTH, manifest.size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

async fn list_tags(blobs: &Blobs) -> Result<Response, ApiError> {
    let (items, remaining) = blobs.tags().await?;
    Ok(axum::Json(json!({"items": items, "remaining": remaining})).into_response())
}

async fn get_tag(blobs: &Blobs, name: &str, tag: &str) -> Result<Response, ApiError> {
    let digest = blobs
        .tag(name, tag)
        .await?
        .ok_or_else(|| RegistryError::TagNotFound {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })?;
    Ok(axum::Json(json!({"name": name, "tag": tag, "digest": digest})).into_response())
}

async fn put_tag(blobs: &Blobs, name: &str, tag: &str, body: Body) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    struct Request {
        digest: Digest,
    }
    let bytes = axum::body::to_bytes(body, TAG_BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::too_large(TAG_BODY_BYTES_MAX))?;
    let request: Request = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(format!(
            "a tag write is {{\"digest\": \"sha256:<hex>\"}}: {error}"
        ))
    })?;
    let moved = blobs.set_tag(name, tag, request.digest).await?;
    if moved {
        tracing::info!(digest = %request.digest, "tag moved");
    }
    Ok(axum::Json(json!({"name": name, "tag": tag, "digest": request.digest})).into_response())
}

impl From<ReferenceError> for ApiError {
    fn from(error: ReferenceError) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        match error {
            RegistryError::NotWasm(_) => ApiError::unprocessable(message),
            RegistryError::TooLarge { limit } => {
                ApiError::too_large(usize::try_from(limit).unwrap_or(usize::MAX))
            }
            RegistryError::DigestMismatch { .. } | RegistryError::Reference(_) => {
                ApiError::bad_request(message)
            }
            RegistryError::BlobNotFound { .. } | RegistryError::TagNotFound { .. } => {
                ApiError::missing(message)
            }
            RegistryError::Contended { .. } => ApiError::conflict_message(message),
            RegistryError::Storage(StorageError::Store(store)) => ApiError::from_store(store),
            RegistryError::Corrupt { .. } | RegistryError::Storage(_) => {
                ApiError::internal(message)
            }
        }
    }
}
