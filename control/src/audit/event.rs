//! The `audit.k8s.io/v1` Event, field for field as kube-apiserver writes
//! it (one JSON object per line), and the pieces of a request it is made
//! from: who, from where, on what, and how it ended.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::http::HeaderMap;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::policy::{Level, Stage};
use crate::auth::{Attributes, UserInfo};

/// The largest event written, serialized, as Kubernetes' truncating
/// backend's default (`--audit-log-truncate-max-event-size`, 100 KiB): an
/// event over it loses its request and response objects, and one still
/// over it is dropped. Also bounds what the writer's queue holds.
pub const EVENT_BYTES_MAX: usize = 100 * 1024;
/// The longest User-Agent kept, as kube-apiserver's; longer ones are cut
/// and marked.
const USER_AGENT_BYTES_MAX: usize = 1024;
const USER_AGENT_TRUNCATED: &str = "...TRUNCATED";
/// The most addresses taken from `X-Forwarded-For`: a proxy chain is a
/// few hops, and the header is the client's to fill.
const FORWARDED_IPS_MAX: usize = 16;

/// The annotation an event carries when its objects were left out for
/// size, with the value Kubernetes gives it.
pub const TRUNCATED_ANNOTATION: &str = "audit.k8s.io/truncated";

/// One audit event.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    kind: &'static str,
    api_version: &'static str,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Value>,
    #[serde(serialize_with = "micro_time")]
    pub request_received_timestamp: Timestamp,
    #[serde(serialize_with = "micro_time")]
    pub stage_timestamp: Timestamp,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A user as authentication/v1's UserInfo: empty fields are left out, so
/// a refused credential is `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for User {
    fn from(user: &UserInfo) -> Self {
        User {
            username: user.name.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
        }
    }
}

/// What a resource request is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

impl ObjectRef {
    /// The object a resource request names; none for other requests.
    pub fn of(attributes: &Attributes) -> Option<ObjectRef> {
        let Attributes::Resource(resource) = attributes else {
            return None;
        };
        Some(ObjectRef {
            resource: resource.resource.clone(),
            namespace: resource.namespace.clone(),
            name: resource.name.clone(),
            api_group: resource.group.clone(),
            api_version: resource.version.clone(),
            subresource: resource.subresource.clone(),
            ..ObjectRef::default()
        })
    }

    /// Fills what the path did not say from the request's object (a
    /// create names its object only in its body), as Kubernetes does.
    pub fn complete_from(&mut self, object: &Value) {
        let metadata = &object["metadata"];
        let fill = |field: &mut String, key: &str| {
            if field.is_empty()
                && let Some(value) = metadata[key].as_str()
            {
                *field = value.to_string();
            }
        };
        fill(&mut self.namespace, "namespace");
        fill(&mut self.name, "name");
        fill(&mut self.uid, "uid");
        fill(&mut self.resource_version, "resourceVersion");
    }
}

/// The answer, as a `meta/v1` Status: the code always; status, reason and
/// message when it is an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResponseStatus {
    /// Always `{}`, as Kubernetes writes it.
    pub metadata: BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
    pub code: u16,
}

impl ResponseStatus {
    pub fn code(code: u16) -> Self {
        ResponseStatus {
            code,
            ..ResponseStatus::default()
        }
    }

    /// From a `Status` object (an error's body).
    pub fn from_status(status: &Value, code: u16) -> Self {
        let text = |key: &str| status[key].as_str().unwrap_or_default().to_string();
        ResponseStatus {
            status: text("status"),
            message: text("message"),
            reason: text("reason"),
            details: status["details"].clone(),
            ..ResponseStatus::code(code)
        }
    }
}

impl Event {
    /// An event at `level` for a request received at `received`, at its
    /// first stage; the caller fills what it knows.
    pub fn new(level: Level, audit_id: String, received: Timestamp) -> Self {
        Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level,
            audit_id,
            stage: Stage::RequestReceived,
            request_uri: String::new(),
            verb: String::new(),
            user: User::default(),
            impersonated_user: None,
            source_ips: Vec::new(),
            user_agent: String::new(),
            object_ref: None,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: received,
            stage_timestamp: received,
            annotations: BTreeMap::new(),
        }
    }

    /// The event as one line of JSON (newline included), at most
    /// [`EVENT_BYTES_MAX`] bytes: over it, the objects are left out and
    /// the event marked truncated, as Kubernetes' truncating backend does;
    /// `None` if it is still too large.
    pub fn to_line(&self) -> Option<Vec<u8>> {
        let line = encode(self)?;
        if line.len() <= EVENT_BYTES_MAX {
            return Some(line);
        }
        let mut smaller = self.clone();
        smaller.truncate();
        encode(&smaller).filter(|line| line.len() <= EVENT_BYTES_MAX)
    }

    /// Leaves the objects out and says so.
    pub fn truncate(&mut self) {
        self.request_object = None;
        self.response_object = None;
        self.annotations
            .insert(TRUNCATED_ANNOTATION.into(), "true".into());
    }
}

fn encode(event: &Event) -> Option<Vec<u8>> {
    let mut line = serde_json::to_vec(event)
        .inspect_err(|error| tracing::warn!(%error, "an audit event could not be encoded"))
        .ok()?;
    line.push(b'\n');
    Some(line)
}

/// Kubernetes' MicroTime: RFC 3339 in UTC with microseconds.
fn micro_time<S: serde::Serializer>(time: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{time:.6}"))
}

/// The client's User-Agent, cut as kube-apiserver cuts it.
pub fn user_agent(headers: &HeaderMap) -> String {
    let Some(agent) = headers
        .get(axum::http::header::USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
    else {
        return String::new();
    };
    if agent.len() <= USER_AGENT_BYTES_MAX {
        return agent.into_owned();
    }
    let mut end = USER_AGENT_BYTES_MAX;
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{USER_AGENT_TRUNCATED}", &agent[..end])
}

/// Where a request came from, as kube-apiserver lists it: the addresses
/// of `X-Forwarded-For`, then `X-Real-Ip` unless already there, then the
/// connection's own address unless it ends the list already.
pub fn source_ips(headers: &HeaderMap, remote: Option<IpAddr>) -> Vec<String> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let mut ips: Vec<IpAddr> = header("x-forwarded-for")
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .take(FORWARDED_IPS_MAX)
        .collect();
    if let Some(real) = header("x-real-ip").and_then(|text| text.trim().parse().ok())
        && !ips.contains(&real)
    {
        ips.push(real);
    }
    if let Some(remote) = remote
        && ips.last() != Some(&remote)
    {
        ips.push(remote);
    }
    ips.into_iter().map(|ip| ip.to_string()).collect()
}

/// `object` without `metadata.managedFields`, in itself, in a list's
/// items and in a Table's rows, as a policy's `omitManagedFields` asks.
pub fn without_managed_fields(mut object: Value) -> Value {
    let strip = |object: &mut Value| {
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
        }
    };
    strip(&mut object);
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(strip);
    }
    if let Some(rows) = object.get_mut("rows").and_then(Value::as_array_mut) {
        for row in rows {
            if let Some(inner) = row.get_mut("object") {
                strip(inner);
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use serde_json::json;

    fn received() -> Timestamp {
        // 2026-03-01T12:00:00.123456Z
        Timestamp::from_microsecond(1_772_366_400_123_456).unwrap()
    }

    #[test]
    fn a_create_reads_as_kubernetes_writes_it() {
        let mut event = Event::new(Level::Request, "a1b2".into(), received());
        event.stage = Stage::ResponseComplete;
        event.request_uri = "/api/v1/namespaces/default/configmaps?fieldManager=kubectl".into();
        event.verb = "create".into();
        event.user = User::from(&UserInfo::authenticated("alice", vec!["dev".into()]));
        event.source_ips = vec!["127.0.0.1".into()];
        event.user_agent = "kubectl/v1.37.1".into();
        let attributes = Attributes::Resource(ResourceAttributes {
            verb: "create".into(),
            version: "v1".into(),
            resource: "configmaps".into(),
            namespace: "default".into(),
            ..ResourceAttributes::default()
        });
        let mut object_ref = ObjectRef::of(&attributes).unwrap();
        let object = json!({"metadata": {"name": "settings"}, "data": {"a": "1"}});
        object_ref.complete_from(&object);
        event.object_ref = Some(object_ref);
        event.response_status = Some(ResponseStatus::code(201));
        event.request_object = Some(object);
        event.stage_timestamp = Timestamp::from_microsecond(1_772_366_400_125_000).unwrap();
        let line = event.to_line().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(
            text.trim_end(),
            concat!(
                r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","#,
                r#""auditID":"a1b2","stage":"ResponseComplete","#,
                r#""requestURI":"/api/v1/namespaces/default/configmaps?fieldManager=kubectl","#,
                r#""verb":"create","#,
                r#""user":{"username":"alice","groups":["dev","system:authenticated"]},"#,
                r#""sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.37.1","#,
                r#""objectRef":{"resource":"configmaps","namespace":"default","name":"settings","apiVersion":"v1"},"#,
                r#""responseStatus":{"metadata":{},"code":201},"#,
                r#""requestObject":{"data":{"a":"1"},"metadata":{"name":"settings"}},"#,
                r#""requestReceivedTimestamp":"2026-03-01T12:00:00.123456Z","#,
                r#""stageTimestamp":"2026-03-01T12:00:00.125000Z"}"#,
            )
        );
    }

    #[test]
    fn failures_carry_the_status_and_refused_users_are_empty() {
        let mut event = Event::new(Level::Metadata, "x".into(), received());
        let status = json!({"kind": "Status", "status": "Failure", "reason": "Unauthorized",
            "message": "Unauthorized", "code": 401});
        event.response_status = Some(ResponseStatus::from_status(&status, 401));
        let value: Value = serde_json::from_slice(&event.to_line().unwrap()).unwrap();
        assert_eq!(value["user"], json!({}));
        assert_eq!(
            value["responseStatus"],
            json!({"metadata": {}, "status": "Failure", "message": "Unauthorized",
                "reason": "Unauthorized", "code": 401})
        );
        assert!(value.get("objectRef").is_none() && value.get("impersonatedUser").is_none());
    }

    #[test]
    fn large_objects_are_left_out_and_said_so() {
        let mut event = Event::new(Level::RequestResponse, "x".into(), received());
        event.request_object = Some(json!({"data": "x".repeat(EVENT_BYTES_MAX)}));
        event.response_object = Some(json!({"small": true}));
        let line = event.to_line().unwrap();
        assert!(line.len() < 1024);
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert!(value.get("requestObject").is_none() && value.get("responseObject").is_none());
        assert_eq!(value["annotations"][TRUNCATED_ANNOTATION], "true");
        // An event too large without its objects is not written at all.
        event.request_uri = "/".repeat(EVENT_BYTES_MAX);
        assert!(event.to_line().is_none());
    }

    #[test]
    fn source_addresses_and_agents_as_kubernetes_lists_them() {
        let mut headers = HeaderMap::new();
        let remote: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(source_ips(&headers, Some(remote)), ["10.0.0.9"]);
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, junk, 10.0.0.9".parse().unwrap(),
        );
        headers.insert("x-real-ip", "1.2.3.4".parse().unwrap());
        assert_eq!(source_ips(&headers, Some(remote)), ["1.2.3.4", "10.0.0.9"]);
        headers.insert("x-real-ip", "5.6.7.8".parse().unwrap());
        assert_eq!(
            source_ips(&headers, Some(remote)),
            ["1.2.3.4", "10.0.0.9", "5.6.7.8", "10.0.0.9"]
        );
        headers.insert(
            axum::http::header::USER_AGENT,
            "k".repeat(2000).parse().unwrap(),
        );
        let agent = user_agent(&headers);
        assert_eq!(
            agent.len(),
            USER_AGENT_BYTES_MAX + USER_AGENT_TRUNCATED.len()
        );
        assert!(agent.ends_with(USER_AGENT_TRUNCATED));
    }

    #[test]
    fn managed_fields_go_from_objects_lists_and_tables() {
        let managed = json!({"name": "a", "managedFields": [{"manager": "kubectl"}]});
        let object = without_managed_fields(json!({"metadata": managed}));
        assert_eq!(object, json!({"metadata": {"name": "a"}}));
        let list = without_managed_fields(json!({"items": [{"metadata": managed}]}));
        assert_eq!(list["items"][0]["metadata"], json!({"name": "a"}));
        let table = without_managed_fields(json!({"rows": [{"object": {"metadata": managed}}]}));
        assert_eq!(table["rows"][0]["object"]["metadata"], json!({"name": "a"}));
    }
}
