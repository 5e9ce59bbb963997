//! `?watch=true`: a stream of `{"type": …, "object": …}` lines, one per
//! change, from a raft-store watch.
//!
//! The store's watch guarantees (ordered, unique, reliable, atomic,
//! resumable) carry over unchanged. On top of them this module adds what
//! Kubernetes adds: the initial ADDED events when no `resourceVersion` is
//! given, selector transitions (an object leaving a selector is DELETED for
//! that watcher), BOOKMARKs from the store's progress notifications, 410
//! Gone as an ERROR event for a compacted revision, and `timeoutSeconds`.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_raft_store::kv::proto::{Event, EventType, WatchResponse};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ApiState;
use super::list::{ListOptions, collect};
use super::objects::{decode, prefix};
use super::request::{Params, resource_version};
use super::status::ApiError;
use crate::api::path::Target;
use crate::resources::ResourceInfo;
use crate::storage::{StorageError, Stored, Watch};

/// How long a watch lasts when the client does not say: Kubernetes' minimum
/// request timeout. Clients re-watch from their last resourceVersion.
const WATCH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1800);
/// The longest a watch lasts whatever the client asks: a day. A client
/// asking for longer re-watches then, as after any timeout.
const WATCH_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// How long a watch asked to last `requested` seconds lasts: the default
/// when it says nothing (or zero or less), never more than a day.
fn watch_timeout(requested: Option<i64>) -> Duration {
    match requested.and_then(|seconds| u64::try_from(seconds).ok()) {
        None | Some(0) => WATCH_TIMEOUT_DEFAULT,
        Some(seconds) => Duration::from_secs(seconds).min(WATCH_TIMEOUT_MAX),
    }
}

pub async fn watch(
    state: &ApiState,
    target: &Target<'static>,
    params: &Params,
) -> Result<Response, ApiError> {
    let info = target.info;
    let mut options = ListOptions::from_params(params)?;
    options.limit = 0;
    options.resume = None;
    options.revision = 0;
    let allow_bookmarks = params.flag("allowWatchBookmarks")?;
    let send_initial = params.flag("sendInitialEvents")?;
    let timeout = watch_timeout(params.integer("timeoutSeconds")?);
    let requested = resource_version(params.get("resourceVersion"), "resourceVersion")?;

    let mut queued = VecDeque::new();
    // No version, "0", or sendInitialEvents: start with the current state.
    let after = match requested {
        Some(rv) if rv > 0 && !send_initial => rv,
        _ => {
            let listed = collect(state, target, &options).await?;
            for object in listed.items {
                queued.push_back(line("ADDED", &object));
            }
            if send_initial && allow_bookmarks {
                let mut bookmark = bookmark(info, listed.revision);
                bookmark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                queued.push_back(line("BOOKMARK", &bookmark));
            }
            listed.revision
        }
    };
    let watcher = match state
        .storage
        .watch(&prefix(info, target.namespace.as_deref()), after)
    {
        Ok(watcher) => Some(watcher),
        Err(StorageError::Compacted {
            requested,
            compacted,
        }) => {
            queued.push_back(line("ERROR", &too_old(requested, compacted)));
            None
        }
        Err(error) => return Err(ApiError::from_storage(error, info, "")),
    };
    tracing::debug!(resource = info.plural, after, "watch started");
    let stream = WatchStream {
        _open: state.metrics.watch_opened(),
        info,
        options,
        allow_bookmarks,
        queued,
        watcher,
        deadline: Instant::now() + timeout,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        stream
            .next_line()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), stream))
    }));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response())
}

struct WatchStream {
    _open: super::metrics::WatchGuard,
    info: &'static ResourceInfo,
    options: ListOptions,
    allow_bookmarks: bool,
    queued: VecDeque<Bytes>,
    watcher: Option<Watch>,
    deadline: Instant,
}

impl WatchStream {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.queued.pop_front() {
                return Some(line);
            }
            let watcher = self.watcher.as_mut()?;
            let batch = tokio::time::timeout_at(self.deadline, watcher.next())
                .await
                .ok()??;
            self.translate(batch);
        }
    }

    fn translate(&mut self, batch: WatchResponse) {
        if batch.canceled {
            if batch.compact_revision > 0 {
                let line = line("ERROR", &too_old(0, batch.compact_revision));
                self.queued.push_back(line);
            } else {
                tracing::debug!(reason = %batch.cancel_reason, "watch cancelled by the store");
            }
            self.watcher = None;
            return;
        }
        if batch.events.is_empty() {
            if self.allow_bookmarks && !batch.created {
                let revision = batch.header.as_ref().map_or(0, |header| header.revision);
                self.queued
                    .push_back(line("BOOKMARK", &bookmark(self.info, revision)));
            }
            return;
        }
        for event in &batch.events {
            if let Some((kind, object)) = self.event(event) {
                self.queued.push_back(line(kind, &object));
            }
        }
    }

    /// One store event as the watcher sees it through its selectors.
    fn event(&self, event: &Event) -> Option<(&'static str, Value)> {
        let kv = event.kv.as_ref()?;
        let previous = event.prev_kv.as_ref().and_then(|prev| {
            decode(&Stored {
                key: prev.key.clone(),
                value: prev.value.clone(),
                mod_revision: prev.mod_revision,
                stale: false,
            })
            .ok()
        });
        let was = previous
            .as_ref()
            .is_some_and(|object| self.options.matches(object));
        if event.r#type == EventType::Delete as i32 {
            let mut object = previous?;
            object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
            return was.then_some(("DELETED", object));
        }
        let object = decode(&Stored {
            key: kv.key.clone(),
            value: kv.value.clone(),
            mod_revision: kv.mod_revision,
            stale: false,
        })
        .ok()?;
        let is = self.options.matches(&object);
        match (was, is) {
            (false, true) => Some(("ADDED", object)),
            (true, true) => Some(("MODIFIED", object)),
            (true, false) => Some(("DELETED", object)),
            (false, false) => None,
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(info: &ResourceInfo, revision: i64) -> Value {
    json!({
        "kind": info.kind,
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
    })
}

fn too_old(requested: i64, compacted: i64) -> Value {
    let message = if requested > 0 {
        format!("too old resource version: {requested} ({compacted})")
    } else {
        format!("too old resource version: ({compacted})")
    };
    ApiError::gone(message).to_status()
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn a_watch_lasts_what_it_asks_within_a_day() {
        assert_eq!(watch_timeout(None), WATCH_TIMEOUT_DEFAULT);
        assert_eq!(watch_timeout(Some(0)), WATCH_TIMEOUT_DEFAULT);
        assert_eq!(watch_timeout(Some(-5)), WATCH_TIMEOUT_DEFAULT);
        assert_eq!(watch_timeout(Some(290)), Duration::from_secs(290));
        // Whatever it asks, its deadline is a time that exists.
        let longest = watch_timeout(Some(i64::MAX));
        assert_eq!(longest, WATCH_TIMEOUT_MAX);
        assert!(Instant::now().checked_add(longest).is_some());
    }
}
