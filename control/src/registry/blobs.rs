//! The registry's layout in raft-store, outside `/registry/` (which holds
//! Kubernetes objects, and which no watch or list of objects reaches past):
//!
//! - `/flotilla/modules/blobs/<hex>/<index>`: a blob's bytes in chunks of
//!   [`CHUNK_BYTES`], because a store value is at most 1.5 MiB;
//! - `/flotilla/modules/manifests/<hex>`: its size and chunk count, written
//!   last, so a blob is visible only once every chunk is in place (a push
//!   cut half-way leaves chunks no reader looks for);
//! - `/flotilla/modules/tags/<name>/<tag>`: the digest a tag points at.
//!
//! Each chunk is one store write (one raft entry), so a 256 MiB module is
//! 256 writes, none near the store's request limit. This module knows keys
//! and bytes; what a push or a pod asks of them is `http`'s and
//! `admission`'s business.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::reference::{Digest, Reference, check_name, check_tag};
use super::wasm::{HEADER_BYTES, check_header};
use super::{MODULE_BYTES_MAX, RegistryError, Result};
use crate::storage::{Storage, StorageError};

/// 1 MiB a chunk: under the store's 1.5 MiB value limit with room for the
/// key and framing, and large enough that a module is few writes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Tags one list answers with; more are reported as `remaining`.
pub const TAGS_LIST_MAX: i64 = 10_000;

/// Attempts to move a tag against concurrent writers of the same tag.
const TAG_WRITE_ATTEMPTS_MAX: usize = 8;

const BLOBS_PREFIX: &str = "/flotilla/modules/blobs/";
const MANIFESTS_PREFIX: &str = "/flotilla/modules/manifests/";
const TAGS_PREFIX: &str = "/flotilla/modules/tags/";

/// What is known of a stored blob without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub size: u64,
    pub chunks: u32,
    /// The chunk size the blob was written with, so a later change of
    /// [`CHUNK_BYTES`] still reads older blobs.
    pub chunk_bytes: u32,
}

impl Manifest {
    /// How many bytes chunk `index` holds.
    fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_bytes))
    }
}

/// One tag and the digest it points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    pub name: String,
    pub tag: String,
    pub digest: Digest,
}

/// The value stored at a tag's key.
#[derive(Serialize, Deserialize)]
struct TagValue {
    digest: Digest,
}

/// The registry's view of the store.
#[derive(Clone)]
pub struct Blobs {
    storage: Storage,
}

impl Blobs {
    pub fn new(storage: Storage) -> Self {
        Blobs { storage }
    }

    /// The blob's manifest, or `None` when it is not (completely) stored.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<Manifest>> {
        let Some(stored) = self.storage.get(&manifest_key(digest)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&stored.value)
            .map(Some)
            .map_err(|error| {
                RegistryError::corrupt(
                    format_args!("blob {digest}"),
                    format_args!("the manifest is not readable: {error}"),
                )
            })
    }

    /// The bytes of chunk `index` of a blob whose manifest is `manifest`.
    pub async fn chunk(&self, digest: &Digest, manifest: &Manifest, index: u32) -> Result<Vec<u8>> {
        let corrupt =
            |reason: String| RegistryError::corrupt(format_args!("blob {digest}"), reason);
        let stored = self
            .storage
            .get(&chunk_key(digest, index))
            .await?
            .ok_or_else(|| corrupt(format!("chunk {index} is missing")))?;
        let expected = manifest.chunk_len(index);
        if stored.value.len() as u64 != expected {
            return Err(corrupt(format!(
                "chunk {index} holds {} bytes, not {expected}",
                stored.value.len()
            )));
        }
        Ok(stored.value)
    }

    /// A writer for a blob the caller says hashes to `expected`.
    pub fn writer(&self, expected: Digest) -> BlobWriter {
        BlobWriter {
            blobs: self.clone(),
            expected,
            hasher: Sha256::new(),
            buffer: Vec::new(),
            size: 0,
            chunks: 0,
            header_checked: false,
        }
    }

    /// The digest `name:tag` points at.
    pub async fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>> {
        let Some(stored) = self.storage.get(&tag_key(name, tag)).await? else {
            return Ok(None);
        };
        Ok(Some(tag_value(&stored.value, name, tag)?.digest))
    }

    /// The digest a reference means: its own digest if it pins one (which
    /// must be stored), else the one its tag points at.
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest> {
        if let Some(digest) = reference.digest {
            return match self.manifest(&digest).await? {
                Some(_) => Ok(digest),
                None => Err(RegistryError::BlobNotFound { digest }),
            };
        }
        let tag = reference.tag_or_default();
        self.tag(&reference.name, tag)
            .await?
            .ok_or_else(|| RegistryError::TagNotFound {
                name: reference.name.clone(),
                tag: tag.to_owned(),
            })
    }

    /// Points `name:tag` at `digest`, which must be stored; moving an
    /// existing tag is allowed (that is what a re-push does). Returns
    /// whether the tag changed.
    pub async fn set_tag(&self, name: &str, tag: &str, digest: Digest) -> Result<bool> {
        check_name(name)?;
        check_tag(tag)?;
        if self.manifest(&digest).await?.is_none() {
            return Err(RegistryError::BlobNotFound { digest });
        }
        let key = tag_key(name, tag);
        let value = serde_json::to_vec(&TagValue { digest })
            .map_err(|error| RegistryError::corrupt(format_args!("tag {name}:{tag}"), error))?;
        for _ in 0..TAG_WRITE_ATTEMPTS_MAX {
            let written = match self.storage.get(&key).await? {
                None => self.storage.create(&key, value.clone()).await,
                Some(stored) if tag_value(&stored.value, name, tag)?.digest == digest => {
                    return Ok(false);
                }
                Some(stored) => {
                    self.storage
                        .update(&key, value.clone(), stored.mod_revision)
                        .await
                }
            };
            match written {
                Ok(_) => return Ok(true),
                // Someone else moved the tag meanwhile: read it again.
                Err(
                    StorageError::AlreadyExists
                    | StorageError::Conflict { .. }
                    | StorageError::NotFound,
                ) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(RegistryError::Contended {
            key: String::from_utf8_lossy(&key).into_owned(),
        })
    }

    /// Every tag, sorted by name and tag, at most [`TAGS_LIST_MAX`]; the
    /// second value counts those left out.
    pub async fn tags(&self) -> Result<(Vec<TagEntry>, i64)> {
        let page = self
            .storage
            .list(TAGS_PREFIX.as_bytes(), b"", TAGS_LIST_MAX, 0)
            .await?;
        let mut entries = Vec::with_capacity(page.items.len());
        for item in page.items {
            let key = String::from_utf8_lossy(&item.key);
            let Some((name, tag)) = key
                .strip_prefix(TAGS_PREFIX)
                .and_then(|rest| rest.rsplit_once('/'))
            else {
                continue;
            };
            let digest = tag_value(&item.value, name, tag)?.digest;
            entries.push(TagEntry {
                name: name.to_owned(),
                tag: tag.to_owned(),
                digest,
            });
        }
        Ok((entries, page.remaining))
    }

    /// Stores one chunk. A chunk already there is kept when it holds the
    /// same bytes (a re-push, or a retry after a cut) and replaced when it
    /// does not (left by a push whose bytes did not match its digest).
    async fn put_chunk(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        match self.storage.create(&key, value.clone()).await {
            Ok(_) => Ok(()),
            Err(StorageError::AlreadyExists) => match self.storage.get(&key).await? {
                Some(stored) if stored.value == value => Ok(()),
                Some(stored) => {
                    self.storage
                        .update(&key, value, stored.mod_revision)
                        .await?;
                    Ok(())
                }
                None => {
                    self.storage.create(&key, value).await?;
                    Ok(())
                }
            },
            Err(error) => Err(error.into()),
        }
    }
}

/// Streams one blob into the store: chunks are written as they fill, the
/// header is checked as soon as it has arrived, and the manifest is written
/// by [`BlobWriter::finish`] only if the bytes hash to the expected digest.
pub struct BlobWriter {
    blobs: Blobs,
    expected: Digest,
    hasher: Sha256,
    buffer: Vec<u8>,
    size: u64,
    chunks: u32,
    header_checked: bool,
}

impl BlobWriter {
    /// Takes the next bytes of the blob.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > MODULE_BYTES_MAX {
            return Err(RegistryError::TooLarge {
                limit: MODULE_BYTES_MAX,
            });
        }
        self.hasher.update(data);
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buffer.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = later;
            // Refuse a wrong file before storing any of it.
            if !self.header_checked && self.chunks == 0 && self.buffer.len() >= HEADER_BYTES {
                check_header(&self.buffer)?;
                self.header_checked = true;
            }
            if self.buffer.len() == CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Stores the last chunk and, if the digest matches, the manifest that
    /// makes the blob visible.
    pub async fn finish(mut self) -> Result<Manifest> {
        if !self.header_checked {
            check_header(&self.buffer)?;
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(RegistryError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        let manifest = Manifest {
            size: self.size,
            chunks: self.chunks,
            chunk_bytes: CHUNK_BYTES as u32,
        };
        let value = serde_json::to_vec(&manifest)
            .map_err(|error| RegistryError::corrupt(format_args!("blob {actual}"), error))?;
        match self
            .blobs
            .storage
            .create(&manifest_key(&actual), value)
            .await
        {
            // Already there: the same bytes were pushed before (or by a
            // concurrent push); content addressing makes this a no-op.
            Ok(_) | Err(StorageError::AlreadyExists) => Ok(manifest),
            Err(error) => Err(error.into()),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        let chunk = std::mem::take(&mut self.buffer);
        self.blobs
            .put_chunk(chunk_key(&self.expected, self.chunks), chunk)
            .await?;
        self.chunks += 1;
        Ok(())
    }
}

fn chunk_key(digest: &Digest, index: u32) -> Vec<u8> {
    // Zero-padded so the chunks of a blob list in order.
    format!("{BLOBS_PREFIX}{}/{index:08}", digest.hex()).into_bytes()
}

fn manifest_key(digest: &Digest) -> Vec<u8> {
    format!("{MANIFESTS_PREFIX}{}", digest.hex()).into_bytes()
}

fn tag_key(name: &str, tag: &str) -> Vec<u8> {
    format!("{TAGS_PREFIX}{name}/{tag}").into_bytes()
}

fn tag_value(bytes: &[u8], name: &str, tag: &str) -> Result<TagValue> {
    serde_json::from_slice(bytes)
        .map_err(|error| RegistryError::corrupt(format_args!("tag {name}:{tag}"), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lengths_cover_the_blob() {
        let manifest = Manifest {
            size: 2 * CHUNK_BYTES as u64 + 3,
            chunks: 3,
            chunk_bytes: CHUNK_BYTES as u32,
        };
        let lengths: Vec<u64> = (0..manifest.chunks)
            .map(|i| manifest.chunk_len(i))
            .collect();
        assert_eq!(lengths, [CHUNK_BYTES as u64, CHUNK_BYTES as u64, 3]);
        assert!(chunk_key(&Digest::of(b""), 7).ends_with(b"/00000007"));
    }
}
