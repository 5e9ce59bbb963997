//! Auditing as an operator meets it: a server started with an
//! `audit.k8s.io/v1` Policy and a log file, requests made with kube-rs, and
//! the JSON lines the log holds afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flotilla_control::audit::{AuditConfig, LogConfig, Policy};
use flotilla_control::{Server, ServerConfig, ServerOptions};
use serde_json::{Value, json};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Request
    verbs: [create]
    resources:
      - group: ""
        resources: [configmaps]
  - level: Metadata
    verbs: [get]
    resources:
      - group: ""
        resources: [configmaps]
"#;

/// A server on loopback that audits by `POLICY` into `audit.log` in its
/// data directory.
async fn audited_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
    let options = ServerOptions {
        audit: Some(AuditConfig {
            policy: Policy::parse(POLICY).unwrap(),
            log: LogConfig::file(dir.path().join("audit.log")),
        }),
        ..ServerOptions::default()
    };
    let server = Server::start_with(config, options).await.unwrap();
    (dir, server)
}

/// The events in the log once every answered request's are written.
async fn events(server: &Server, dir: &tempfile::TempDir) -> Vec<Value> {
    server.flush_audit().await;
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Sends `request` with the server's own client; returns the code, the
/// `Audit-Id` header and the body.
async fn send(server: &Server, request: http::Request<Vec<u8>>) -> (u16, String, Value) {
    let client = server.client().await.unwrap();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .unwrap();
    let code = response.status().as_u16();
    let audit_id = response.headers()["audit-id"].to_str().unwrap().to_string();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (code, audit_id, serde_json::from_slice(&body).unwrap())
}

fn is_micro_time(value: &Value) -> bool {
    let text = value.as_str().unwrap_or_default();
    // 2026-03-01T12:00:00.123456Z
    text.len() == 27 && text.ends_with('Z') && text.as_bytes()[19] == b'.'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_line_for_a_create() {
    let (dir, server) = audited_server().await;
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"mode": "strict"},
    });
    let request = http::Request::post("/api/v1/namespaces/default/configmaps?fieldManager=test")
        .header("content-type", "application/json")
        .header("user-agent", "audit-test/1.0")
        .body(serde_json::to_vec(&config_map).unwrap())
        .unwrap();
    let (code, audit_id, _) = send(&server, request).await;
    assert_eq!(code, 201);

    let events = events(&server, &dir).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let mut event = events[0].clone();
    assert!(is_micro_time(&event["requestReceivedTimestamp"]), "{event}");
    assert!(is_micro_time(&event["stageTimestamp"]), "{event}");
    let object = event.as_object_mut().unwrap();
    object.remove("requestReceivedTimestamp");
    object.remove("stageTimestamp");
    assert_eq!(
        event,
        json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Request",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/default/configmaps?fieldManager=test",
            "verb": "create",
            "user": {
                "username": "system:admin",
                "groups": ["system:masters", "system:authenticated"],
            },
            "sourceIPs": ["127.0.0.1"],
            "userAgent": "audit-test/1.0",
            "objectRef": {
                "resource": "configmaps",
                "namespace": "default",
                "name": "settings",
                "apiVersion": "v1",
            },
            "responseStatus": {"metadata": {}, "code": 201},
            "requestObject": config_map,
            "annotations": {"authorization.k8s.io/decision": "allow"},
        })
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_impersonation_and_unmatched_requests() {
    let (dir, server) = audited_server().await;
    // A get as someone with no rights: Metadata, the impersonated user
    // beside the requester, and the refusal's Status.
    let request = http::Request::get("/api/v1/namespaces/default/configmaps/settings")
        .header("impersonate-user", "alice")
        .header("audit-id", "chosen-by-client")
        .body(Vec::new())
        .unwrap();
    let (code, audit_id, status) = send(&server, request).await;
    assert_eq!((code, audit_id.as_str()), (403, "chosen-by-client"));
    // Neither a list (no rule) nor a delete (no rule) is recorded.
    let list = http::Request::get("/api/v1/namespaces/default/configmaps")
        .body(Vec::new())
        .unwrap();
    assert_eq!(send(&server, list).await.0, 200);
    let missing = http::Request::get("/api/v1/namespaces/default/configmaps/missing")
        .body(Vec::new())
        .unwrap();
    let (code, _, _) = send(&server, missing).await;
    assert_eq!(code, 404);

    let events = events(&server, &dir).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let refused = &events[0];
    assert_eq!(refused["auditID"], "chosen-by-client");
    assert_eq!(refused["level"], "Metadata");
    assert_eq!(refused["verb"], "get");
    assert_eq!(refused["user"]["username"], "system:admin");
    assert_eq!(
        refused["impersonatedUser"],
        json!({"username": "alice", "groups": ["system:authenticated"]})
    );
    let answered = &refused["responseStatus"];
    assert_eq!(answered["metadata"], json!({}));
    assert_eq!(answered["code"], 403);
    assert_eq!(answered["status"], "Failure");
    assert_eq!(answered["reason"], "Forbidden");
    assert_eq!(answered["message"], status["message"]);
    assert_eq!(answered.get("details"), status.get("details"));
    assert_eq!(
        refused["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert!(refused.get("requestObject").is_none());
    let missing = &events[1];
    assert_eq!(missing["objectRef"]["name"], "missing");
    assert_eq!(missing["responseStatus"]["reason"], "NotFound");
    assert_eq!(missing["responseStatus"]["code"], 404);

    // The counters say what was written.
    let metrics = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let client = server.client().await.unwrap();
    let text = client.request_text(metrics).await.unwrap();
    assert!(
        text.contains("flotilla_apiserver_audit_event_total 2"),
        "{text}"
    );
    assert!(text.contains("flotilla_apiserver_audit_dropped_total{reason=\"queue_full\"} 0"));
    server.shutdown().await;
}
