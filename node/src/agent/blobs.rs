//! The agent's [`ModuleSource`]: modules by digest from the cluster's
//! registry on the API server, cached on disk in a blob directory (one file
//! per blob, named by its sha256 hex, as [`LocalSource::with_blob_dir`]
//! reads it).
//!
//! A blob is fetched once per node: it is downloaded with the agent's API
//! client (`GET /flotilla/registry/v1/blobs/sha256:<hex>`, with the node's
//! credentials), its digest checked, and written to a temporary file that
//! is renamed into place, so a reader never sees half a blob. A cached blob
//! whose bytes no longer match its name is fetched again. `file://` images
//! are read as [`LocalSource`] reads them (the API server admits them only
//! under `flotilla up`).
//!
//! It knows nothing of tags: the API server pins every pod's images to
//! digests when the pod is created, so a tag never reaches a node.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::source::{ImageRef, LocalSource, MODULE_BYTES_MAX, ModuleSource};

/// The registry's blob endpoint on the API server. `flotilla-control`
/// defines it (`registry::http::PREFIX`); the node does not depend on the
/// control plane, so it is written here too and a test checks they agree.
pub const REGISTRY_BLOBS_PATH: &str = "/flotilla/registry/v1/blobs/";

/// How long one blob download may take: 256 MiB at a slow 1 MiB/s fits; a
/// stalled API server does not hold a pod's start forever (it is retried
/// with the container's back-off).
pub const BLOB_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest error body read from the API server.
const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;

/// Suffix of blobs being written; such files are never read as blobs and
/// are removed when a source starts (left by a crash mid-write).
const PARTIAL_SUFFIX: &str = ".part";

/// Modules by digest from the API server's registry, cached under a blob
/// directory. [`ModuleSource::fetch`] blocks on the download: call it
/// outside the async runtime's worker threads (the runtime calls it inside
/// `spawn_blocking`).
pub struct RegistrySource {
    client: kube::Client,
    blob_dir: PathBuf,
    local: LocalSource,
    runtime: tokio::runtime::Handle,
    partial_count: AtomicU64,
}

impl RegistrySource {
    /// A source downloading with `client` into `blob_dir` (created when
    /// missing). Must be called within a tokio runtime, which the downloads
    /// then run on.
    pub fn new(client: kube::Client, blob_dir: impl Into<PathBuf>) -> Result<Self> {
        let blob_dir = blob_dir.into();
        std::fs::create_dir_all(&blob_dir)
            .map_err(|source| Error::io("create blob dir", &blob_dir, source))?;
        remove_partials(&blob_dir)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|error| Error::Engine {
            reason: format!("the registry source needs a tokio runtime: {error}"),
        })?;
        Ok(RegistrySource {
            client,
            local: LocalSource::with_blob_dir(&blob_dir),
            blob_dir,
            runtime,
            partial_count: AtomicU64::new(0),
        })
    }

    /// The cached blob, if it is there and still hashes to its name.
    fn cached(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.blob_dir.join(digest);
        if !path.exists() {
            return None;
        }
        let bytes = crate::source::read_bounded(&path).unwrap_or_default();
        if hex::encode(Sha256::digest(&bytes)) == digest {
            return Some(bytes);
        }
        tracing::warn!(path = %path.display(), "cached blob is damaged; fetching it again");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Writes `bytes` as the blob `digest`: a temporary file, synced, then
    /// renamed over the final name (atomic within one directory).
    fn store(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        let count = self.partial_count.fetch_add(1, Ordering::Relaxed);
        let partial = self.blob_dir.join(format!(
            ".{digest}.{}.{count}{PARTIAL_SUFFIX}",
            std::process::id()
        ));
        let written = std::fs::File::create(&partial).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&partial, self.blob_dir.join(digest)));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        renamed
    }
}

impl ModuleSource for RegistrySource {
    fn fetch(&self, image: &ImageRef) -> Result<Vec<u8>> {
        let digest = match (&image.file, &image.digest) {
            (None, Some(digest)) => digest,
            _ => return self.local.fetch(image),
        };
        if let Some(bytes) = self.cached(digest) {
            return Ok(bytes);
        }
        let pull_error = |reason: String| Error::ImagePull {
            image: image.original.clone(),
            reason,
        };
        let span = tracing::info_span!("blob_download", %digest);
        let _entered = span.enter();
        let download = tokio::time::timeout(BLOB_DOWNLOAD_TIMEOUT, download(&self.client, digest));
        let bytes = self
            .runtime
            .block_on(download)
            .map_err(|_| {
                pull_error(format!(
                    "the download took longer than {} s",
                    BLOB_DOWNLOAD_TIMEOUT.as_secs()
                ))
            })?
            .map_err(pull_error)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != *digest {
            return Err(Error::DigestMismatch {
                image: image.original.clone(),
                expected: digest.clone(),
                actual,
            });
        }
        // The pod can run from the bytes in hand even when caching fails
        // (a full disk): the next start downloads again.
        if let Err(error) = self.store(digest, &bytes) {
            tracing::warn!(%error, "cannot cache the blob");
        }
        tracing::info!(size = bytes.len(), "blob downloaded");
        Ok(bytes)
    }
}

/// The blob's bytes from the API server, at most [`MODULE_BYTES_MAX`].
async fn download(client: &kube::Client, digest: &str) -> std::result::Result<Vec<u8>, String> {
    let request = http::Request::get(format!("{REGISTRY_BLOBS_PATH}sha256:{digest}"))
        .body(kube::client::Body::empty())
        .map_err(|error| error.to_string())?;
    let response = client
        .send(request)
        .await
        .map_err(|error| format!("the API server could not be reached: {error}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = http_body_util::Limited::new(body, ERROR_BODY_BYTES_MAX)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|status| status["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
        return Err(format!("the registry answered {status}: {message}"));
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| format!("the download was cut: {error}"))?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > MODULE_BYTES_MAX {
                return Err(format!(
                    "the blob is larger than the {MODULE_BYTES_MAX}-byte limit"
                ));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Removes blobs left half-written by a crash.
fn remove_partials(blob_dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(blob_dir)
        .map_err(|source| Error::io("read blob dir", blob_dir, source))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
