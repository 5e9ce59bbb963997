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
/// data directory, over plain HTTP (every caller is the administrator).
async fn audited_server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
    let server = start_audited(&dir, config).await;
    (dir, server)
}

async fn start_audited(dir: &tempfile::TempDir, config: ServerConfig) -> Server {
    let options = ServerOptions {
        audit: Some(AuditConfig {
            policy: Policy::parse(POLICY).unwrap(),
            log: LogConfig::file(dir.path().join("audit.log")),
        }),
        ..ServerOptions::default()
    };
    Server::start_with(config, options).await.unwrap()
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
    send_with(&server.client().await.unwrap(), request).await
}

async fn send_with(client: &kube::Client, request: http::Request<Vec<u8>>) -> (u16, String, Value) {
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

/// A client of an HTTPS server that trusts its CA and presents `user`
/// (kubeconfig YAML: `{}` for no credential at all).
async fn client_as(server: &Server, config: &ServerConfig, user: &str) -> kube::Client {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(config.ca_pem().unwrap());
    let document = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://{}
    certificate-authority-data: {ca}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
users:
- name: u
  user: {user}
",
        server.api_address()
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_for_their_credential_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20))
        .unwrap()
        .with_https(&[])
        .unwrap();
    let server = start_audited(&dir, config.clone()).await;
    let get = || {
        http::Request::get("/api/v1/namespaces/default/configmaps/settings")
            .body(Vec::new())
            .unwrap()
    };
    // No certificate: anonymous, refused.
    let anonymous = client_as(&server, &config, "{}").await;
    let (code, anonymous_id, _) = send_with(&anonymous, get()).await;
    assert_eq!(code, 401);
    // A token that is no ServiceAccount's: no user at all.
    let forged = client_as(&server, &config, "{token: not-a-token}").await;
    let (code, forged_id, _) = send_with(&forged, get()).await;
    assert_eq!(code, 401);

    let events = events(&server, &dir).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let unauthorized = json!({
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    });
    assert_eq!(events[0]["auditID"], anonymous_id);
    assert_eq!(
        events[0]["user"],
        json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]})
    );
    assert_eq!(events[0]["responseStatus"], unauthorized);
    assert_eq!(events[0]["sourceIPs"], json!(["127.0.0.1"]));
    assert_eq!(events[1]["auditID"], forged_id);
    assert_eq!(events[1]["user"], json!({}));
    assert_eq!(events[1]["responseStatus"], unauthorized);
    assert_eq!(events[1]["objectRef"]["name"], "settings");
    server.shutdown().await;
}
