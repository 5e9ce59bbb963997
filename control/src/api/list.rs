//! `list` and `deletecollection`: selectors, `limit`/`continue` paging and
//! the `resourceVersion` rules, all read at one store revision so that a
//! list followed by a watch from its `resourceVersion` misses nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::objects::{self, decode, prefix};
use super::request::{Params, resource_version};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::{ApiState, Reply};
use crate::api::path::Target;
use crate::storage::StorageError;

/// Store reads per list page, whatever the client's `limit`: bounds the
/// memory one request holds while selectors filter.
const STORE_PAGE_MAX: i64 = 500;

/// The filters and page of a list request.
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// 0: no limit.
    pub limit: i64,
    /// Where to resume: the revision and the first key of the next page.
    pub resume: Option<(i64, Vec<u8>)>,
    /// The revision to read at (0: the newest).
    pub revision: i64,
}

impl ListOptions {
    pub fn from_params(params: &Params) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default())
            .map_err(|why| {
                ApiError::bad_request(format!("unable to parse labelSelector: {why}"))
            })?;
        let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or_default())
            .map_err(|why| {
                ApiError::bad_request(format!("unable to parse fieldSelector: {why}"))
            })?;
        let limit = params.integer("limit")?.unwrap_or(0).max(0);
        let resume = params.get("continue").map(decode_continue).transpose()?;
        let requested = resource_version(params.get("resourceVersion"), "resourceVersion")?;
        if resume.is_some() && requested.is_some_and(|rv| rv != 0) {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        // Exact reads at that revision; NotOlderThan (the default for a
        // non-zero version) and "0" read the newest, which is never older.
        let revision = match (params.get("resourceVersionMatch"), requested) {
            (Some("Exact"), Some(rv)) if rv > 0 => rv,
            (Some("Exact"), _) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch=Exact needs a non-zero resourceVersion",
                ));
            }
            (None | Some("NotOlderThan"), _) => 0,
            (Some(other), _) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch must be Exact or NotOlderThan, not {other:?}"
                )));
            }
        };
        Ok(ListOptions {
            labels,
            fields,
            limit,
            resume,
            revision,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

fn encode_continue(revision: i64, next_key: &[u8]) -> String {
    let token = json!({"rv": revision, "start": String::from_utf8_lossy(next_key)});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, Vec<u8>), ApiError> {
    let invalid =
        || ApiError::bad_request("continue key is not valid: it was not issued by this server");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let revision = value["rv"].as_i64().ok_or_else(invalid)?;
    let start = value["start"].as_str().ok_or_else(invalid)?;
    Ok((revision, start.as_bytes().to_vec()))
}

/// One page of matching objects, with the list's metadata.
pub struct Listed {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

pub async fn collect(
    state: &ApiState,
    target: &Target<'_>,
    options: &ListOptions,
) -> Result<Listed, ApiError> {
    let info = target.info;
    let prefix = prefix(info, target.namespace.as_deref());
    let (mut revision, mut start) = match &options.resume {
        Some((revision, start)) => (*revision, start.clone()),
        None => (options.revision, Vec::new()),
    };
    let filtered = !options.labels.is_empty() || options.fields != FieldSelector::default();
    let mut items = Vec::new();
    loop {
        let want = if options.limit > 0 {
            (options.limit - items.len() as i64).clamp(1, STORE_PAGE_MAX)
        } else {
            STORE_PAGE_MAX
        };
        let page = state
            .storage
            .list(&prefix, &start, want, revision)
            .await
            .map_err(|error| match error {
                StorageError::Compacted { .. } if options.resume.is_some() => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list \
                     result. You can start a new list without the continue parameter.",
                ),
                other => ApiError::from_storage(other, info, ""),
            })?;
        revision = page.revision;
        let fetched = page.items.len();
        let mut last_key = None;
        for (index, stored) in page.items.iter().enumerate() {
            last_key = Some(stored.key.clone());
            let object = decode(stored)?;
            if options.matches(&object) {
                items.push(object);
            }
            if options.limit > 0 && items.len() as i64 >= options.limit {
                let more_in_page = index + 1 < fetched;
                if more_in_page || page.remaining > 0 {
                    let next = after(&stored.key);
                    let remaining =
                        (!filtered).then(|| (fetched - index - 1) as i64 + page.remaining);
                    return Ok(Listed {
                        items,
                        revision,
                        continue_token: Some(encode_continue(revision, &next)),
                        remaining,
                    });
                }
                break;
            }
        }
        match last_key {
            Some(key) if page.remaining > 0 => start = after(&key),
            _ => break,
        }
    }
    Ok(Listed {
        items,
        revision,
        continue_token: None,
        remaining: None,
    })
}

/// The smallest key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

pub fn list_document(target: &Target<'_>, listed: Listed) -> Value {
    let mut metadata = json!({"resourceVersion": listed.revision.to_string()});
    if let Some(token) = listed.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = listed.remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    json!({
        "kind": format!("{}List", target.info.kind),
        "apiVersion": target.info.api_version(),
        "metadata": metadata,
        "items": listed.items,
    })
}

pub async fn list(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
) -> Result<Value, ApiError> {
    let options = ListOptions::from_params(params)?;
    let listed = collect(state, target, &options).await?;
    Ok(list_document(target, listed))
}

/// `DELETE` on a collection: every matching object, each as a single
/// delete would, in one list.
pub async fn delete_collection(
    state: &ApiState,
    target: &Target<'_>,
    params: &Params,
    options: &Value,
) -> Result<Reply, ApiError> {
    let list_options = ListOptions::from_params(params)?;
    let listed = collect(state, target, &list_options).await?;
    let mut deleted = Vec::new();
    for object in &listed.items {
        let Some(name) = object["metadata"]["name"].as_str() else {
            continue;
        };
        let one = Target {
            info: target.info,
            namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
            name: Some(name.to_string()),
            subresource: None,
        };
        match objects::delete(state, &one, params, options).await {
            Ok(reply) => deleted.push(reply.body),
            // Deleted meanwhile: that is what was asked.
            Err(error) if error.code.as_u16() == 404 => {}
            Err(error) => return Err(error),
        }
    }
    let revision = state.storage.current_revision();
    Ok(Reply::ok(list_document(
        target,
        Listed {
            items: deleted,
            revision,
            continue_token: None,
            remaining: None,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, b"/registry/pods/default/web-1\0");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, b"/registry/pods/default/web-1\0".to_vec())
        );
        let error = decode_continue("not-a-token").unwrap_err();
        assert_eq!(error.code.as_u16(), 400);
    }
}
