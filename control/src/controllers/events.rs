//! Kubernetes Events from the control loops, so that `kubectl describe`
//! tells what they did: `Scheduled`, `SuccessfulCreate`, `FailedScheduling`.
//!
//! Repeats of one story (same object, reason and message) are folded into
//! one Event whose `count` grows, as kubelet and client-go's recorder do.
//! What was recorded is remembered in a bounded map; a failure to record
//! is logged and never fails the loop that recorded it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

/// Remembered stories; past this the memory starts again (a repeat then
/// starts a new Event, which is harmless).
const REMEMBERED_MAX: usize = 4_096;

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One story: the object's uid, the reason, the message.
type Story = (String, String, String);
/// Where it was told: the Event's name and namespace, and how often.
type Told = (String, String, i32);

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: &'static str,
    seen: Arc<Mutex<HashMap<Story, Told>>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Self {
        Recorder {
            client,
            component,
            seen: Arc::default(),
        }
    }

    /// Records that `reason` happened to `object`.
    pub async fn record<K>(&self, object: &K, kind: EventType, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        if let Err(error) = self.try_record(object, kind, reason, &message).await {
            tracing::debug!(%error, reason, "could not record an event");
        }
    }

    async fn try_record<K>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let uid = object.uid().unwrap_or_default();
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let now = Time(Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self
            .seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(&key).cloned());
        if let Some((name, event_namespace, count)) = repeat
            && event_namespace == namespace
        {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    self.remember(key, name, namespace, count + 1);
                    return Ok(());
                }
                // Gone (expired or deleted): start a new one below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let name = format!("{}.{:016x}", object.name_any(), rand::random::<u64>());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(object.name_any()),
                namespace: object.namespace(),
                uid: Some(uid),
                resource_version: object.resource_version(),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.component.to_string()),
                host: None,
            }),
            reporting_component: Some(self.component.to_string()),
            reporting_instance: Some(self.component.to_string()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            event_time: Some(MicroTime(now.0)),
            count: Some(1),
            action: Some(reason.to_string()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.remember(key, name, namespace, 1);
        Ok(())
    }

    fn remember(&self, key: Story, name: String, namespace: String, count: i32) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= REMEMBERED_MAX && !seen.contains_key(&key) {
                seen.clear();
            }
            seen.insert(key, (name, namespace, count));
        }
    }
}
