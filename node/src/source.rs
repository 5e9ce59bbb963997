//! Where a container's `image:` comes from. A [`ModuleSource`] turns an image
//! reference into the module's bytes; the runtime then checks the bytes
//! against the digest the reference names (always, whatever the source).
//!
//! Image forms understood here:
//! - `file:///path/to/module.wasm` (optionally `@sha256:<hex>`), for `flotilla up`;
//! - `name@sha256:<hex>` and bare `sha256:<hex>`, a blob fetched by digest;
//! - `name:tag`, resolved by a source that knows tags (the registry client).
//!
//! This module knows nothing of how blobs reach the node (the agent fetches
//! them from the control plane); it only reads what it is pointed at.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Largest module a source will hand over, in bytes. Real components are a
/// few MiB; 256 MiB bounds what a bad reference can make the node read.
pub const MODULE_BYTES_MAX: u64 = 256 << 20;

/// A parsed `image:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The reference as written in the spec.
    pub original: String,
    /// A local file, for `file://` references.
    pub file: Option<PathBuf>,
    /// The repository name (without tag or digest), if any.
    pub name: Option<String>,
    /// The tag, for `name:tag`.
    pub tag: Option<String>,
    /// The expected sha256 in lowercase hex, when the reference pins one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses an image reference.
    pub fn parse(image: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidImage {
            image: image.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match image.rsplit_once("sha256:") {
            Some((rest, hex_digest)) => {
                let valid = hex_digest.len() == 64
                    && hex_digest
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
                if !valid {
                    return Err(invalid("sha256 digest must be 64 lowercase hex digits"));
                }
                (rest.trim_end_matches('@'), Some(hex_digest.to_owned()))
            }
            None => (image, None),
        };
        let mut parsed = ImageRef {
            original: image.to_owned(),
            file: None,
            name: None,
            tag: None,
            digest,
        };
        if let Some(path) = rest.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("file:// references need an absolute path"));
            }
            parsed.file = Some(PathBuf::from(path));
        } else if !rest.is_empty() {
            match rest.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                Some((name, tag)) => {
                    parsed.name = Some(name.to_owned());
                    parsed.tag = Some(tag.to_owned());
                }
                None => parsed.name = Some(rest.to_owned()),
            }
        }
        if parsed.file.is_none()
            && parsed.digest.is_none()
            && parsed.tag.is_none()
            && parsed.name.is_none()
        {
            return Err(invalid("empty reference"));
        }
        Ok(parsed)
    }
}

/// Resolves image references to module bytes. Implementations need not
/// verify digests: the runtime does, for every source.
pub trait ModuleSource: Send + Sync + 'static {
    /// The module's bytes for `image`.
    fn fetch(&self, image: &ImageRef) -> Result<Vec<u8>>;
}

/// Reads `file://` images, and blobs by digest from a directory holding one
/// file per blob named by its sha256 hex (as the agent's blob cache does).
#[derive(Debug, Clone, Default)]
pub struct LocalSource {
    blob_dir: Option<PathBuf>,
}

impl LocalSource {
    /// A source for `file://` images only.
    pub fn files_only() -> Self {
        Self { blob_dir: None }
    }

    /// A source for `file://` images and for blobs under `blob_dir`.
    pub fn with_blob_dir(blob_dir: impl Into<PathBuf>) -> Self {
        Self {
            blob_dir: Some(blob_dir.into()),
        }
    }
}

impl ModuleSource for LocalSource {
    fn fetch(&self, image: &ImageRef) -> Result<Vec<u8>> {
        let pull_error = |reason: String| Error::ImagePull {
            image: image.original.clone(),
            reason,
        };
        let path = match (&image.file, &image.digest, &self.blob_dir) {
            (Some(file), _, _) => file.clone(),
            (None, Some(digest), Some(blob_dir)) => blob_dir.join(digest),
            (None, Some(_), None) => {
                return Err(pull_error("this node has no blob store".to_owned()));
            }
            (None, None, _) => {
                return Err(pull_error(
                    "tagged images need a registry source; pin a digest".to_owned(),
                ));
            }
        };
        read_bounded(&path).map_err(|error| pull_error(format!("{}: {error}", path.display())))
    }
}

/// The bytes of the regular file at `path`, at most [`MODULE_BYTES_MAX`]
/// of them whatever its metadata says: a device (`/dev/zero`), a FIFO or
/// a file that grows while read is refused, never read to exhaustion.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a module is read from a file, never a device or a pipe)",
        ));
    }
    let too_large = || {
        std::io::Error::other(format!(
            "the module is larger than the {MODULE_BYTES_MAX} bytes allowed"
        ))
    };
    if metadata.len() > MODULE_BYTES_MAX {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MODULE_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MODULE_BYTES_MAX {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Fetches `image` from `source` and checks its digest when it pins one.
/// Returns the bytes and their sha256 hex (reported as the container's imageID).
pub fn fetch_verified(source: &dyn ModuleSource, image: &ImageRef) -> Result<(Vec<u8>, String)> {
    let bytes = source.fetch(image)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if let Some(expected) = &image.digest
        && *expected != actual
    {
        return Err(Error::DigestMismatch {
            image: image.original.clone(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok((bytes, actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_pipes_are_not_read() {
        for path in ["/dev/zero", "/dev/urandom"] {
            let error = read_bounded(Path::new(path)).unwrap_err();
            assert!(error.to_string().contains("not a regular file"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm").unwrap();
        assert_eq!(read_bounded(&module).unwrap(), b"\0asm");
    }

    #[test]
    fn parses_the_image_forms() {
        let digest = "a".repeat(64);
        let file = ImageRef::parse("file:///srv/hello.wasm").unwrap();
        assert_eq!(file.file, Some(PathBuf::from("/srv/hello.wasm")));
        let pinned = ImageRef::parse(&format!("hello@sha256:{digest}")).unwrap();
        assert_eq!(
            (pinned.name.as_deref(), pinned.digest.as_deref()),
            (Some("hello"), Some(digest.as_str()))
        );
        let tagged = ImageRef::parse("registry.local:5000/hello:v1").unwrap();
        assert_eq!(
            (tagged.name.as_deref(), tagged.tag.as_deref()),
            (Some("registry.local:5000/hello"), Some("v1"))
        );
        assert!(ImageRef::parse("hello@sha256:XYZ").is_err());
        assert!(ImageRef::parse("file://relative.wasm").is_err());
    }

    #[test]
    fn blobs_are_found_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let digest = hex::encode(Sha256::digest(b"blob"));
        std::fs::write(dir.path().join(&digest), b"blob").unwrap();
        let source = LocalSource::with_blob_dir(dir.path());
        let image = ImageRef::parse(&format!("app@sha256:{digest}")).unwrap();
        assert_eq!(
            fetch_verified(&source, &image).unwrap(),
            (b"blob".to_vec(), digest)
        );
        let tagged = ImageRef::parse("app:v1").unwrap();
        assert!(matches!(
            source.fetch(&tagged),
            Err(Error::ImagePull { .. })
        ));
    }

    #[test]
    fn a_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.wasm");
        std::fs::write(&path, b"bytes").unwrap();
        let wrong = "0".repeat(64);
        let image = ImageRef::parse(&format!("file://{}@sha256:{wrong}", path.display())).unwrap();
        let error = fetch_verified(&LocalSource::files_only(), &image).unwrap_err();
        assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
        let right = hex::encode(Sha256::digest(b"bytes"));
        let image = ImageRef::parse(&format!("file://{}@sha256:{right}", path.display())).unwrap();
        assert_eq!(
            fetch_verified(&LocalSource::files_only(), &image)
                .unwrap()
                .1,
            right
        );
    }
}
