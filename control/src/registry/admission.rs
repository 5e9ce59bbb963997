//! Images at admission: a Pod being created, or whose spec an update
//! changes, gets each container's image pinned to the digest its tag
//! points at now (`name:tag` becomes `name:tag@sha256:<hex>`; the name and
//! tag stay for people to read), so the pod runs exactly those bytes
//! however the tag moves later, and a patch cannot swap them. A name,
//! tag or digest the registry does not hold is a 422 naming the field.
//!
//! Pod templates (Deployments, Jobs, …) keep their tags: each pod made from
//! them is pinned when it is created. `file://` images, in pods and
//! templates alike, are refused unless the server allows them
//! ([`RegistryConfig::allow_file_images`](super::RegistryConfig)).
//!
//! This module decides what an image means; checking the reference's
//! syntax is `api::validation`'s, which runs first.

use serde_json::{Value, json};

use super::blobs::Blobs;
use super::reference::Reference;
use super::{RegistryConfig, RegistryError};
use crate::api::ApiState;
use crate::api::status::{ApiError, FieldError};
use crate::resources::ResourceInfo;

/// Why `file://` images are refused, and what to do instead.
const FILE_IMAGES_REFUSED: &str = "file:// images are for `flotilla up` only, where the \
     server and the node share one machine; push the module with \
     `flotilla push <file.wasm> <name>:<tag>` and use `image: <name>:<tag>`";

/// Admits the images of `object` (of kind `info`) as the module comment
/// says; only Pods are changed.
pub async fn admit(
    state: &ApiState,
    info: &ResourceInfo,
    object: &mut Value,
) -> Result<(), ApiError> {
    let Some(spec_pointer) = crate::auth::pod_security::pod_spec_pointer(info.kind) else {
        return Ok(());
    };
    let pin = info.kind == "Pod";
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(spec) = object.pointer_mut(spec_pointer) else {
        return Ok(());
    };
    let blobs = Blobs::new(state.storage.clone());
    let field_path = spec_pointer[1..].replace('/', ".");
    let mut errors = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for (index, container) in containers.iter_mut().enumerate() {
            let Some(image) = container["image"].as_str().map(str::to_owned) else {
                continue;
            };
            match admit_image(&blobs, &state.modules.config, &image, pin).await {
                Ok(Some(pinned)) => container["image"] = json!(pinned),
                Ok(None) => {}
                Err(Refusal::Invalid(why)) => errors.push(FieldError::invalid(
                    format!("{field_path}.{list}[{index}].image"),
                    format!("Invalid value: \"{image}\": {why}"),
                )),
                Err(Refusal::Failed(error)) => return Err(error),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(info, &name, errors))
    }
}

enum Refusal {
    /// The image is wrong: a field error.
    Invalid(String),
    /// The registry could not answer (the store is unavailable).
    Failed(ApiError),
}

/// The pinned image, when it changes.
async fn admit_image(
    blobs: &Blobs,
    config: &RegistryConfig,
    image: &str,
    pin: bool,
) -> Result<Option<String>, Refusal> {
    if image.starts_with("file://") {
        return if config.allow_file_images {
            Ok(None)
        } else {
            Err(Refusal::Invalid(FILE_IMAGES_REFUSED.to_owned()))
        };
    }
    let reference = Reference::parse(image).map_err(|error| Refusal::Invalid(error.to_string()))?;
    if !pin {
        return Ok(None);
    }
    match blobs.resolve(&reference).await {
        // Already pinned: the digest wins over any tag beside it.
        Ok(_) if reference.digest.is_some() => Ok(None),
        Ok(digest) => Ok(Some(format!("{image}@{digest}"))),
        Err(RegistryError::TagNotFound { name, tag }) => Err(Refusal::Invalid(format!(
            "{name}:{tag} is not in the registry; push it with `flotilla push <file.wasm> {name}:{tag}`"
        ))),
        Err(error @ RegistryError::BlobNotFound { .. }) => Err(Refusal::Invalid(error.to_string())),
        Err(error) => Err(Refusal::Failed(error.into())),
    }
}
