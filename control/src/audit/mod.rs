//! Kubernetes auditing: a record of who did what through the API, when,
//! from where and with what answer, as kube-apiserver's `--audit-*` flags
//! give it. An `audit.k8s.io/v1` Policy (`policy.rs`) picks each request's
//! level; the request path fills an `audit.k8s.io/v1` Event (`event.rs`)
//! as it learns things; the events go as JSON lines to a file rotated by
//! size, or to standard output (`log.rs`).
//!
//! What it knows: a request's attributes as the authorizer sees them, its
//! requester (the policy matches on the requester, not on whom it
//! impersonates), the decoded request object that the handler hands over
//! (only when the level keeps objects), and the response as sent. It does
//! not know the store or what handlers do with an object; it records
//! nothing that did not pass through the API's one handler.
//!
//! Stages: `RequestReceived` when a request arrives, `ResponseComplete`
//! when its answer is ready, and for long-running requests (watches,
//! logs) `ResponseStarted` when the stream starts and `ResponseComplete`
//! when it ends; each unless the policy omits it. `Panic` is never written:
//! handlers do not panic.
//!
//! Writing never holds a request up: events go through a bounded queue to
//! one writer thread, and an event that finds the queue full is dropped
//! and counted (`flotilla_apiserver_audit_dropped_total` in `/metrics`),
//! with a warning at most every ten seconds. Kubernetes' log backend
//! blocks instead; here a slow disk loses events rather than stalls the
//! API.

pub mod event;
pub mod log;
pub mod policy;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use self::event::{EVENT_BYTES_MAX, Event};
use self::event::{ObjectRef, ResponseStatus, User, without_managed_fields};
pub use self::log::LogConfig;
use self::policy::Decision;
pub use self::policy::{Level, Policy, PolicyError, Stage};
use crate::api::metrics::{AuditOutcome, Metrics};
use crate::api::status::ApiError;
use crate::auth::{Attributes, UserInfo};

/// Events waiting for the writer at most. At a thousand requests a
/// second that is four seconds of a stalled disk before events are lost.
const QUEUE_EVENTS_MAX: usize = 4096;
/// Bytes waiting for the writer at most: the events' own bound
/// ([`EVENT_BYTES_MAX`]) times the count would be 400 MiB.
const QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Lines the writer takes from the queue between two flushes, so that a
/// steady stream is still flushed and a flush waits for no more.
const BATCH_LINES_MAX: usize = 256;
/// The least time between two warnings that events were lost.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The longest `Audit-ID` a client may choose; a longer one is replaced.
const AUDIT_ID_BYTES_MAX: usize = 128;
/// The header that carries a request's audit ID, both ways.
pub const AUDIT_ID_HEADER: &str = "audit-id";

/// `flotilla server --audit-policy-file … --audit-log-path …`.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub policy: Policy,
    pub log: LogConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {target}: {source}")]
    Open {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot start the audit log's writer: {0}")]
    Writer(std::io::Error),
}

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

/// The server's auditing: its policy and the queue to its writer.
pub struct Auditor {
    policy: Policy,
    queue: mpsc::Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    warnings: Arc<Warnings>,
}

impl Auditor {
    /// Opens the log (an error now, not a loss later, if it cannot be
    /// written) and starts its writer thread, which ends when the last
    /// handle to this auditor goes.
    pub fn start(config: AuditConfig, metrics: Arc<Metrics>) -> Result<Arc<Auditor>, AuditError> {
        let sink = log::Sink::open(&config.log).map_err(|source| AuditError::Open {
            target: match &config.log.target {
                log::Target::Stdout => "on standard output".into(),
                log::Target::File(path) => path.display().to_string(),
            },
            source,
        })?;
        let (auditor, queue) = Auditor::new(config.policy, metrics, QUEUE_EVENTS_MAX);
        let (queued_bytes, metrics, warnings) = (
            auditor.queued_bytes.clone(),
            auditor.metrics.clone(),
            auditor.warnings.clone(),
        );
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_lines(sink, queue, &queued_bytes, &metrics, &warnings))
            .map_err(AuditError::Writer)?;
        Ok(Arc::new(auditor))
    }

    /// An auditor whose queue of `capacity` the caller drains.
    fn new(
        policy: Policy,
        metrics: Arc<Metrics>,
        capacity: usize,
    ) -> (Auditor, mpsc::Receiver<Message>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let auditor = Auditor {
            policy,
            queue,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            metrics,
            warnings: Arc::new(Warnings::new()),
        };
        (auditor, receiver)
    }

    /// Starts the record of a request, writing its `RequestReceived`
    /// event; an entry that records nothing when the policy says `None`.
    pub fn begin(self: &Arc<Self>, request: Received<'_>) -> Entry {
        let decision = self.policy.decide(request.attributes, request.requester);
        if decision.level == Level::None {
            return Entry::off();
        }
        let mut event = Event::new(decision.level, request.audit_id.to_string(), request.at);
        event.request_uri = request
            .uri
            .path_and_query()
            .map_or_else(|| request.uri.path().to_string(), |whole| whole.to_string());
        event.verb = request.attributes.verb().to_string();
        event.user = request.requester.map(User::from).unwrap_or_default();
        event.source_ips = event::source_ips(request.headers, request.remote);
        event.user_agent = event::user_agent(request.headers);
        event.object_ref = ObjectRef::of(request.attributes);
        let mut open = Open {
            auditor: self.clone(),
            event,
            decision,
        };
        open.emit(Stage::RequestReceived);
        Entry(Some(Box::new(open)))
    }

    /// Waits until every event queued so far is written and flushed.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    fn send(&self, event: &Event) {
        let Some(line) = event.to_line() else {
            self.lost(AuditOutcome::TooLarge);
            return;
        };
        let length = line.len();
        if self.queued_bytes.fetch_add(length, Ordering::Relaxed) + length > QUEUE_BYTES_MAX {
            self.queued_bytes.fetch_sub(length, Ordering::Relaxed);
            self.lost(AuditOutcome::QueueFull);
            return;
        }
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => self.metrics.audit(AuditOutcome::Queued),
            Err(_) => {
                self.queued_bytes.fetch_sub(length, Ordering::Relaxed);
                self.lost(AuditOutcome::QueueFull);
            }
        }
    }

    fn lost(&self, outcome: AuditOutcome) {
        self.metrics.audit(outcome);
        self.warnings.warn(|dropped| {
            tracing::warn!(
                ?outcome,
                dropped,
                "audit events were dropped (queue full or too large)"
            );
        });
    }
}

/// What an auditor is told of a request as it arrives.
pub struct Received<'a> {
    pub audit_id: &'a str,
    pub at: Timestamp,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The connection's address; none when not served over a socket.
    pub remote: Option<IpAddr>,
    pub attributes: &'a Attributes,
    /// None when the request's credential was refused.
    pub requester: Option<&'a UserInfo>,
}

/// Subresources whose requests stream, as kube-apiserver's long-running
/// check lists them.
const LONG_RUNNING_SUBRESOURCES: &[&str] = &["attach", "exec", "log", "portforward", "proxy"];

/// Whether a request streams (a watch, logs) and so is recorded as it
/// starts and again as it ends.
pub fn long_running(attributes: &Attributes) -> bool {
    match attributes {
        Attributes::Resource(resource) => {
            matches!(resource.verb.as_str(), "watch" | "proxy")
                || LONG_RUNNING_SUBRESOURCES.contains(&resource.subresource.as_str())
        }
        Attributes::NonResource { .. } => false,
    }
}

/// The audit ID of a request: the client's `Audit-ID` when it sent a
/// usable one (as kube-apiserver takes it, so that one request keeps one
/// ID across servers), else a new UUID.
pub fn audit_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(AUDIT_ID_HEADER)
        .filter(|value| {
            let length = value.as_bytes().len();
            length > 0 && length <= AUDIT_ID_BYTES_MAX && value.to_str().is_ok()
        })
        .cloned()
        .unwrap_or_else(|| {
            // A version 4 UUID from the thread's generator: no system call
            // on every request.
            let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            HeaderValue::from_str(&uuid.to_string())
                .expect("invariant: a UUID is a valid header value")
        })
}

/// One request's record while it is served; records nothing when the
/// policy's level for it is `None`, or when auditing is off.
pub struct Entry(Option<Box<Open>>);

struct Open {
    auditor: Arc<Auditor>,
    event: Event,
    decision: Decision,
}

impl Entry {
    pub fn off() -> Entry {
        Entry(None)
    }

    /// The request acts as `user` (`kubectl --as`).
    pub fn impersonated(&mut self, user: &UserInfo) {
        if let Some(open) = &mut self.0 {
            open.event.impersonated_user = Some(User::from(user));
        }
    }

    /// The authorizer's decision, as Kubernetes annotates events with it.
    pub fn authorized(&mut self, allowed: bool) {
        if let Some(open) = &mut self.0 {
            let decision = if allowed { "allow" } else { "forbid" };
            open.event
                .annotations
                .insert("authorization.k8s.io/decision".into(), decision.into());
        }
    }

    /// The request's decoded object, from a body of `body_bytes`: it names
    /// the object a create does not name in its path, and at the Request
    /// levels it is kept. A body larger than an event may be is not
    /// copied at all: the event is marked truncated.
    pub fn request_object(&mut self, object: &Value, body_bytes: usize) {
        let Some(open) = &mut self.0 else {
            return;
        };
        if let Some(object_ref) = &mut open.event.object_ref {
            object_ref.complete_from(object);
        }
        if open.decision.level < Level::Request {
            return;
        }
        if body_bytes > EVENT_BYTES_MAX {
            open.event.truncate();
            return;
        }
        open.event.request_object = Some(open.kept(object.clone()));
    }

    /// A patch's body, kept as the request object at the Request levels.
    pub fn request_patch(&mut self, media: &str, patch: &[u8]) {
        let Some(open) = &mut self.0 else {
            return;
        };
        if open.decision.level < Level::Request {
            return;
        }
        if patch.len() > EVENT_BYTES_MAX {
            open.event.truncate();
            return;
        }
        let parsed = if media.ends_with("yaml") {
            serde_yaml::from_slice(patch).ok()
        } else {
            serde_json::from_slice(patch).ok()
        };
        open.event.request_object = parsed;
    }

    /// The request failed with `error`: its Status goes in the event.
    pub fn failed(&mut self, error: &ApiError) {
        if let Some(open) = &mut self.0 {
            let status = ResponseStatus::from_status(&error.to_status(), error.code.as_u16());
            open.event.response_status = Some(status);
        }
    }

    /// Records the answer and writes the final event: now, or for a
    /// long-running request when its body has been sent (or dropped), with
    /// `ResponseStarted` now.
    pub async fn finish(self, response: Response, long_running: bool) -> Response {
        let Some(mut open) = self.0 else {
            return response;
        };
        let code = response.status().as_u16();
        let mut status = open
            .event
            .response_status
            .take()
            .unwrap_or_else(|| ResponseStatus::code(code));
        status.code = code;
        open.event.response_status = Some(status);
        if !long_running {
            let response = match open.decision.level {
                Level::RequestResponse => open.capture_response(response).await,
                _ => response,
            };
            open.emit(Stage::ResponseComplete);
            return response;
        }
        open.emit(Stage::ResponseStarted);
        let (parts, body) = response.into_parts();
        let completion = Completion(Some(open));
        let stream = body.into_data_stream().map(move |chunk| {
            // The stream owns the completion: its end, or its drop when the
            // client goes, writes `ResponseComplete`.
            let _owned = &completion;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

/// Writes a long-running request's last event when dropped.
struct Completion(Option<Box<Open>>);

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut open) = self.0.take() {
            open.emit(Stage::ResponseComplete);
        }
    }
}

impl Open {
    /// Writes the event at `stage`, unless the policy omits that stage.
    fn emit(&mut self, stage: Stage) {
        if self.decision.omit_stages.contains(stage) {
            return;
        }
        let event = &mut self.event;
        event.stage = stage;
        event.stage_timestamp = match stage {
            Stage::RequestReceived => event.request_received_timestamp,
            _ => Timestamp::now(),
        };
        self.auditor.send(event);
    }

    fn kept(&self, object: Value) -> Value {
        if self.decision.omit_managed_fields {
            without_managed_fields(object)
        } else {
            object
        }
    }

    /// Reads a JSON answer whose whole body is at hand and small enough
    /// for an event into the response object, and gives the answer back
    /// unchanged. Streams and other media are not recorded.
    async fn capture_response(&mut self, response: Response) -> Response {
        let json = response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|media| media.starts_with("application/json"));
        match response.body().size_hint().exact() {
            Some(length) if json && length as usize <= EVENT_BYTES_MAX => {}
            Some(_) if json => {
                self.event.truncate();
                return response;
            }
            _ => return response,
        }
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, EVENT_BYTES_MAX).await {
            Ok(bytes) => {
                let object = serde_json::from_slice(&bytes).ok();
                self.event.response_object = object.map(|object| self.kept(object));
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(error) => {
                // An in-memory body does not fail; if one did, the client
                // would have seen it fail too.
                tracing::warn!(%error, "a response body failed while it was audited");
                axum::response::IntoResponse::into_response(ApiError::internal(
                    "the response failed while it was being written",
                ))
            }
        }
    }
}

/// Warnings at most every [`WARNING_INTERVAL`], counting what happened in
/// between.
struct Warnings {
    start: Instant,
    /// Milliseconds since `start` of the last warning; `u64::MAX`: none yet.
    last_ms: AtomicU64,
    since_last: AtomicU64,
}

impl Warnings {
    fn new() -> Self {
        Warnings {
            start: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            since_last: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence and calls `warn` with the count since the last
    /// warning, if the interval has passed.
    fn warn(&self, warn: impl FnOnce(u64)) {
        let count = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = self.start.elapsed().as_millis() as u64;
        let last_ms = self.last_ms.load(Ordering::Relaxed);
        let due = last_ms == u64::MAX
            || now_ms.saturating_sub(last_ms) >= WARNING_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_last.fetch_sub(count, Ordering::Relaxed);
            warn(count);
        }
    }
}

/// The writer thread: lines in queue order, flushed after each batch.
fn write_lines(
    mut sink: log::Sink,
    mut queue: mpsc::Receiver<Message>,
    queued_bytes: &AtomicUsize,
    metrics: &Metrics,
    warnings: &Warnings,
) {
    let mut flushes = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    queued_bytes.fetch_sub(line.len(), Ordering::Relaxed);
                    if let Err(error) = sink.write_line(&line, SystemTime::now()) {
                        metrics.audit(AuditOutcome::WriteFailed);
                        warnings.warn(|failed| {
                            tracing::warn!(%error, failed, "audit events could not be written");
                        });
                    }
                }
                Message::Flush(done) => flushes.push(done),
            }
            taken += 1;
            next = (taken < BATCH_LINES_MAX)
                .then(|| queue.try_recv().ok())
                .flatten();
        }
        if let Err(error) = sink.flush() {
            metrics.audit(AuditOutcome::WriteFailed);
            warnings.warn(|failed| {
                tracing::warn!(%error, failed, "the audit log could not be flushed");
            });
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use axum::http::StatusCode;
    use serde_json::json;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: RequestResponse
    verbs: [update]
    omitManagedFields: true
  - level: Request
    verbs: [create]
  - level: Metadata
    verbs: [watch, get]
"#;

    /// Begins the record of alice's `verb` on ConfigMaps at `uri`.
    fn begin(auditor: &Arc<Auditor>, verb: &str, uri: &str) -> Entry {
        let attributes = Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            version: "v1".into(),
            resource: "configmaps".into(),
            namespace: "default".into(),
            ..ResourceAttributes::default()
        });
        let uri: Uri = uri.parse().unwrap();
        auditor.begin(Received {
            audit_id: "id-1",
            at: Timestamp::now(),
            uri: &uri,
            headers: &HeaderMap::new(),
            remote: Some("127.0.0.1".parse().unwrap()),
            attributes: &attributes,
            requester: Some(&UserInfo::authenticated("alice", vec![])),
        })
    }

    /// The lines an auditor has queued, as JSON.
    fn drain(queue: &mut mpsc::Receiver<Message>) -> Vec<Value> {
        let mut events = Vec::new();
        while let Ok(message) = queue.try_recv() {
            if let Message::Line(line) = message {
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
        events
    }

    fn auditor(capacity: usize) -> (Arc<Auditor>, mpsc::Receiver<Message>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let policy = Policy::parse(POLICY).unwrap();
        let (auditor, queue) = Auditor::new(policy, metrics.clone(), capacity);
        (Arc::new(auditor), queue, metrics)
    }

    const COLLECTION: &str = "/api/v1/namespaces/default/configmaps";

    #[tokio::test]
    async fn a_create_is_one_line_with_its_object() {
        let (auditor, mut queue, _) = auditor(8);
        let mut entry = begin(
            &auditor,
            "create",
            "/api/v1/namespaces/default/configmaps?x=1",
        );
        entry.authorized(true);
        let object = json!({"metadata": {"name": "settings"}, "data": {"a": "1"}});
        entry.request_object(&object, 64);
        let response = axum::response::IntoResponse::into_response((StatusCode::CREATED, "{}"));
        let response = entry.finish(response, false).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let events = drain(&mut queue);
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert_eq!(event["stage"], "ResponseComplete");
        assert_eq!(event["level"], "Request");
        assert_eq!(event["auditID"], "id-1");
        assert_eq!(
            event["requestURI"],
            "/api/v1/namespaces/default/configmaps?x=1"
        );
        assert_eq!(event["objectRef"]["name"], "settings");
        assert_eq!(
            event["responseStatus"],
            json!({"metadata": {}, "code": 201})
        );
        assert_eq!(event["requestObject"], object);
        assert_eq!(event["sourceIPs"], json!(["127.0.0.1"]));
        assert_eq!(
            event["annotations"]["authorization.k8s.io/decision"],
            "allow"
        );
        assert!(event.get("responseObject").is_none());
    }

    #[tokio::test]
    async fn request_response_keeps_the_answer_without_managed_fields() {
        let (auditor, mut queue, _) = auditor(8);
        let mut entry = begin(&auditor, "update", &format!("{COLLECTION}/settings"));
        let managed = json!({"metadata": {"name": "settings", "managedFields": [{}]}});
        entry.request_object(&managed, 64);
        let response = axum::response::IntoResponse::into_response(axum::Json(managed.clone()));
        let response = entry.finish(response, false).await;
        // The client still gets the whole answer.
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), managed);
        let events = drain(&mut queue);
        let stripped = json!({"metadata": {"name": "settings"}});
        assert_eq!(events[0]["requestObject"], stripped);
        assert_eq!(events[0]["responseObject"], stripped);
    }

    #[tokio::test]
    async fn long_running_requests_complete_when_their_stream_ends() {
        let (auditor, mut queue, _) = auditor(8);
        let entry = begin(&auditor, "watch", &format!("{COLLECTION}?watch=1"));
        let response = entry
            .finish(Response::new(Body::from("events")), true)
            .await;
        let stages = |events: Vec<Value>| -> Vec<String> {
            events
                .iter()
                .map(|e| e["stage"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(stages(drain(&mut queue)), ["ResponseStarted"]);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"events");
        assert_eq!(stages(drain(&mut queue)), ["ResponseComplete"]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_none_is_silent() {
        let (auditor, mut queue, metrics) = auditor(1);
        for _ in 0..3 {
            let entry = begin(&auditor, "create", COLLECTION);
            entry.finish(Response::new(Body::empty()), false).await;
        }
        assert_eq!(drain(&mut queue).len(), 1);
        let text = metrics.render();
        assert!(
            text.contains("flotilla_apiserver_audit_event_total 1"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_apiserver_audit_dropped_total{reason=\"queue_full\"} 2"),
            "{text}"
        );
        assert!(auditor.queued_bytes.load(Ordering::Relaxed) > 0);
        // `delete` matches no rule: nothing, not even a queue attempt.
        assert!(begin(&auditor, "delete", COLLECTION).0.is_none());
    }

    #[tokio::test]
    async fn the_writer_flushes_to_the_file_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let config = AuditConfig {
            policy: Policy::parse(POLICY).unwrap(),
            log: LogConfig::file(&path),
        };
        let auditor = Auditor::start(config, Arc::new(Metrics::default())).unwrap();
        let entry = begin(&auditor, "create", COLLECTION);
        entry.finish(Response::new(Body::empty()), false).await;
        auditor.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"verb\":\"create\""), "{text}");
    }

    #[test]
    fn audit_ids_are_the_clients_or_new() {
        let mut headers = HeaderMap::new();
        let fresh = audit_id(&headers);
        let fresh = uuid::Uuid::parse_str(fresh.to_str().unwrap()).unwrap();
        assert_eq!(fresh.get_version_num(), 4);
        assert_ne!(audit_id(&headers), fresh.to_string());
        headers.insert(AUDIT_ID_HEADER, HeaderValue::from_static("from-client"));
        assert_eq!(audit_id(&headers), "from-client");
        headers.insert(
            AUDIT_ID_HEADER,
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert_ne!(audit_id(&headers).len(), 200);
    }
}
