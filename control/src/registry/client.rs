//! The registry's client side, over a kube-rs client, so it reaches the API
//! server with the same kubeconfig, certificates and address as every
//! other call: [`push`] and [`push_file`] (what `flotilla push` does),
//! [`resolve`], [`list`] and [`fetch`].
//!
//! A push checks the module before sending it (size, Wasm header), uploads
//! the blob only when the registry does not hold it yet, then points the
//! tag at it. This module knows the endpoints of `http`, not the store.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), flotilla_control::registry::ClientError> {
//! let pushed = flotilla_control::registry::push_file(&client, "app.wasm".as_ref(), "app:1.0").await?;
//! println!("app:1.0@{} ({} bytes)", pushed.digest, pushed.size);
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use kube::client::Body;
use serde::de::DeserializeOwned;

use super::MODULE_BYTES_MAX;
use super::blobs::TagEntry;
use super::http::PREFIX;
use super::reference::{Digest, Reference, ReferenceError};
use super::wasm::{NotWasm, check_header};

/// The largest JSON answer (or error) read from the registry: a tag list
/// of `TAGS_LIST_MAX` entries fits.
const ANSWER_BYTES_MAX: usize = 4 << 20;

/// What a registry call can run into.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{reference:?} is not a module reference: {source}")]
    InvalidReference {
        reference: String,
        source: ReferenceError,
    },
    #[error(
        "{reference:?} pins a digest; push to name:tag (the digest is computed from the bytes)"
    )]
    DigestInReference { reference: String },
    #[error("{0}")]
    NotWasm(#[from] NotWasm),
    #[error("the module is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{reference} is not in the registry")]
    NotFound { reference: String },
    /// The API server answered with an error `Status`.
    #[error("the API server refused: {message} ({code} {reason})")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("the API server could not be reached: {0}")]
    Transport(#[from] kube::Error),
    #[error("the API server's answer is not the registry's: {0}")]
    BadResponse(String),
    #[error("the downloaded blob hashes to {actual}, not to {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
}

/// What a push stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub name: String,
    pub tag: String,
    pub digest: Digest,
    pub size: u64,
    /// Whether the bytes were sent: false when the registry held them
    /// already (only the tag was written).
    pub uploaded: bool,
}

/// Stores `module` in the registry and points `reference` (`name:tag`, or
/// `name` for `name:latest`) at it. Re-pushing the same bytes uploads
/// nothing; pushing other bytes to a tag moves it.
pub async fn push(
    client: &kube::Client,
    module: impl Into<Bytes>,
    reference: &str,
) -> Result<Pushed, ClientError> {
    let module = module.into();
    let parsed = parse(reference)?;
    if parsed.digest.is_some() {
        return Err(ClientError::DigestInReference {
            reference: reference.to_owned(),
        });
    }
    let size = module.len() as u64;
    if size > MODULE_BYTES_MAX {
        return Err(ClientError::TooLarge {
            size,
            limit: MODULE_BYTES_MAX,
        });
    }
    check_header(&module)?;
    let digest = Digest::of(&module);
    let blob_path = format!("{PREFIX}blobs/{digest}");
    let uploaded = match send(client, request(Method::HEAD, &blob_path, Body::empty())?).await {
        Ok(_) => false,
        Err(ClientError::Refused { code: 404, .. }) => {
            let upload = Request::put(&blob_path)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(module))
                .map_err(|error| ClientError::BadResponse(error.to_string()))?;
            send(client, upload).await?;
            true
        }
        Err(error) => return Err(error),
    };
    let tag = parsed.tag_or_default().to_owned();
    let body = serde_json::json!({ "digest": digest }).to_string();
    let tag_write = Request::put(format!("{PREFIX}tags/{}/{tag}", parsed.name))
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body.into_bytes()))
        .map_err(|error| ClientError::BadResponse(error.to_string()))?;
    send(client, tag_write).await?;
    Ok(Pushed {
        name: parsed.name,
        tag,
        digest,
        size,
        uploaded,
    })
}

/// [`push`] of the file at `path`, refused before reading when it is too
/// large.
pub async fn push_file(
    client: &kube::Client,
    path: &Path,
    reference: &str,
) -> Result<Pushed, ClientError> {
    let read_error = |source| ClientError::Read {
        path: path.to_owned(),
        source,
    };
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let metadata = file.metadata().await.map_err(read_error)?;
    if !metadata.is_file() {
        let why = std::io::Error::other("not a regular file (a device or a pipe?)");
        return Err(read_error(why));
    }
    let too_large = |size| ClientError::TooLarge {
        size,
        limit: MODULE_BYTES_MAX,
    };
    if metadata.len() > MODULE_BYTES_MAX {
        return Err(too_large(metadata.len()));
    }
    // At most one byte past the limit, whatever the metadata said.
    let mut module = Vec::with_capacity(metadata.len() as usize);
    file.take(MODULE_BYTES_MAX + 1)
        .read_to_end(&mut module)
        .await
        .map_err(read_error)?;
    if module.len() as u64 > MODULE_BYTES_MAX {
        return Err(too_large(module.len() as u64));
    }
    push(client, module, reference).await
}

/// The digest `reference` means now: its tag's (`latest` when it has
/// none), or its own digest once checked to be stored.
pub async fn resolve(client: &kube::Client, reference: &str) -> Result<Digest, ClientError> {
    let parsed = parse(reference)?;
    let not_found = |error| match error {
        ClientError::Refused { code: 404, .. } => ClientError::NotFound {
            reference: reference.to_owned(),
        },
        other => other,
    };
    if let Some(digest) = parsed.digest {
        let path = format!("{PREFIX}blobs/{digest}");
        send(client, request(Method::HEAD, &path, Body::empty())?)
            .await
            .map_err(not_found)?;
        return Ok(digest);
    }
    let path = format!("{PREFIX}tags/{}/{}", parsed.name, parsed.tag_or_default());
    let entry: TagEntry = json(client, &path).await.map_err(not_found)?;
    Ok(entry.digest)
}

/// Every tag in the registry (up to the server's `TAGS_LIST_MAX`).
pub async fn list(client: &kube::Client) -> Result<Vec<TagEntry>, ClientError> {
    #[derive(serde::Deserialize)]
    struct TagList {
        items: Vec<TagEntry>,
    }
    let tags: TagList = json(client, &format!("{PREFIX}tags")).await?;
    Ok(tags.items)
}

/// The bytes of the blob `digest`, checked against it.
pub async fn fetch(client: &kube::Client, digest: Digest) -> Result<Vec<u8>, ClientError> {
    let path = format!("{PREFIX}blobs/{digest}");
    let response = send(client, request(Method::GET, &path, Body::empty())?)
        .await
        .map_err(|error| match error {
            ClientError::Refused { code: 404, .. } => ClientError::NotFound {
                reference: digest.to_string(),
            },
            other => other,
        })?;
    let bytes = read_bounded(response, MODULE_BYTES_MAX as usize).await?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(ClientError::DigestMismatch {
            expected: digest,
            actual,
        });
    }
    Ok(bytes.to_vec())
}

fn parse(reference: &str) -> Result<Reference, ClientError> {
    Reference::parse(reference).map_err(|source| ClientError::InvalidReference {
        reference: reference.to_owned(),
        source,
    })
}

fn request(method: Method, path: &str, body: Body) -> Result<Request<Body>, ClientError> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .map_err(|error| ClientError::BadResponse(error.to_string()))
}

async fn json<T: DeserializeOwned>(client: &kube::Client, path: &str) -> Result<T, ClientError> {
    let response = send(client, request(Method::GET, path, Body::empty())?).await?;
    let bytes = read_bounded(response, ANSWER_BYTES_MAX).await?;
    serde_json::from_slice(&bytes).map_err(|error| ClientError::BadResponse(error.to_string()))
}

/// Sends `request`; an error status becomes [`ClientError::Refused`] with
/// the `Status` message the server gave.
async fn send(
    client: &kube::Client,
    request: Request<Body>,
) -> Result<Response<Body>, ClientError> {
    let response = client.send(request).await?;
    if response.status().is_success() {
        return Ok(response);
    }
    let code = response.status();
    let bytes = read_bounded(response, ANSWER_BYTES_MAX)
        .await
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = |field: &str, fallback: &str| {
        status[field]
            .as_str()
            .map_or_else(|| fallback.to_owned(), str::to_owned)
    };
    Err(ClientError::Refused {
        code: code.as_u16(),
        reason: text("reason", code.canonical_reason().unwrap_or("")),
        message: text("message", &String::from_utf8_lossy(&bytes)),
    })
}

async fn read_bounded(response: Response<Body>, limit: usize) -> Result<Bytes, ClientError> {
    let code = response.status();
    Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| {
            ClientError::BadResponse(format!(
                "reading a {code} answer (at most {limit} bytes): {error}"
            ))
        })
}
