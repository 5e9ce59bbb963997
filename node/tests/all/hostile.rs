//! Hostile guests end their own container with a clear reason; the node and
//! a healthy neighbour pod keep serving. One test per kind of attack.

use flotilla_node::NodeRuntime;
use k8s_openapi::api::core::v1::PodStatus;
use serde_json::json;

use crate::support::*;

/// Runs `module` (WAT or bytes) as a process pod beside a hello-http pod,
/// waits until `ended` holds for it, then checks the neighbour still serves.
async fn check_contained(
    module: &[u8],
    resources: serde_json::Value,
    spec: serde_json::Value,
    ended: impl FnMut(&PodStatus) -> bool,
) -> PodStatus {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let neighbour = runtime
        .run_pod(&hello_pod("neighbour"), &Default::default())
        .unwrap();
    wait_until(&neighbour, "neighbour ready", |s| {
        container(s, "hello").ready
    })
    .await;
    let image = module_image(dir.path(), "hostile.wasm", module);
    let hostile = one_container_pod(
        json!({ "name": "hostile", "image": image, "resources": resources }),
        spec,
    );
    let handle = runtime.run_pod(&hostile, &Default::default()).unwrap();
    let status = wait_until(&handle, "the hostile container to end", ended).await;
    assert_serves(&runtime, neighbour.uid()).await;
    status
}

async fn assert_serves(runtime: &NodeRuntime, uid: &str) {
    let (code, body) = get(runtime, uid, 8080, "/")
        .await
        .expect("neighbour still serves");
    assert_eq!(code, 200, "{body}");
}

fn never() -> serde_json::Value {
    json!({ "restartPolicy": "Never" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_hits_its_deadline() {
    let module = br#"(module (func (export "_start") (loop (br 0))))"#;
    let spec = json!({ "restartPolicy": "Never", "activeDeadlineSeconds": 1 });
    let status = check_contained(module, json!({ "limits": { "cpu": "500m" } }), spec, |s| {
        phase(s) == "Failed" && terminated(s, "hostile").is_some()
    })
    .await;
    let (code, reason, _) = terminated(&status, "hostile").unwrap();
    assert_eq!((code, reason.as_str()), (137, "DeadlineExceeded"));
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_oom_killed() {
    let module = br#"(module
        (memory 1)
        (func (export "_start")
            (loop (drop (memory.grow (i32.const 16))) (br 0))))"#;
    let status = check_contained(
        module,
        json!({ "limits": { "memory": "32Mi" } }),
        never(),
        |s| phase(s) == "Failed",
    )
    .await;
    let (code, reason, message) = terminated(&status, "hostile").unwrap();
    assert_eq!((code, reason.as_str()), (137, "OOMKilled"), "{message}");
    assert!(message.contains("33554432"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_wasm_stack() {
    let module = br#"(module
        (func $down (param i64) (result i64) (i64.add (call $down (local.get 0)) (i64.const 1)))
        (func (export "_start") (drop (call $down (i64.const 0)))))"#;
    let status = check_contained(module, json!({}), never(), |s| phase(s) == "Failed").await;
    let (code, reason, message) = terminated(&status, "hostile").unwrap();
    assert_eq!((code, reason.as_str()), (134, "Error"));
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_table_is_refused() {
    let module = br#"(module
        (table 100000000 funcref)
        (func (export "_start")))"#;
    let status = check_contained(module, json!({}), never(), |s| {
        waiting(s, "hostile").is_some_and(|w| w.0 != "ContainerCreating") || phase(s) == "Failed"
    })
    .await;
    let message = waiting(&status, "hostile")
        .map(|w| w.1)
        .or_else(|| terminated(&status, "hostile").map(|t| t.2))
        .unwrap();
    assert!(message.contains("table"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_wasm_are_refused() {
    let status = check_contained(b"\x7fELF definitely not wasm", json!({}), never(), |s| {
        waiting(s, "hostile").is_some_and(|w| w.0 == "CreateContainerError")
    })
    .await;
    let (_, message) = waiting(&status, "hostile").unwrap();
    assert!(message.starts_with("invalid module"), "{message}");
    assert_eq!(phase(&status), "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_an_unknown_interface_is_refused() {
    let module = br#"(component
        (import "acme:missing/thing@1.0.0" (instance (export "poke" (func)))))"#;
    let status = check_contained(module, json!({}), never(), |s| {
        waiting(s, "hostile").is_some_and(|w| w.0 == "CreateContainerError")
    })
    .await;
    let (_, message) = waiting(&status, "hostile").unwrap();
    assert!(message.contains("acme:missing/thing@1.0.0"), "{message}");
    assert!(message.starts_with("cannot link"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_over_its_memory_limit_fails_the_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut pod = hello_pod("tiny");
    let spec_container = &mut pod.spec.as_mut().unwrap().containers[0];
    let limits = spec_container
        .resources
        .as_mut()
        .unwrap()
        .limits
        .as_mut()
        .unwrap();
    limits.insert(
        "memory".to_owned(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Ki".to_owned()),
    );
    spec_container.readiness_probe = None;
    spec_container.liveness_probe = None;
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    let error = get(&runtime, handle.uid(), 8080, "/").await.unwrap_err();
    assert!(error.to_string().contains("OOMKilled"), "{error}");
    let status = handle.status();
    let last = container_last(&status);
    assert_eq!(last, ("OOMKilled".to_owned(), 137));
    assert!(
        running(&status, "hello"),
        "a failed request does not stop the service"
    );
}

fn container_last(status: &PodStatus) -> (String, i32) {
    let last = container(status, "hello")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    (last.reason.clone().unwrap_or_default(), last.exit_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_answers_hits_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let neighbour = runtime
        .run_pod(&hello_pod("neighbour"), &Default::default())
        .unwrap();
    let mut pod = hello_pod("busy");
    pod.metadata.annotations = Some(
        [(
            flotilla_node::REQUEST_TIMEOUT_ANNOTATION.to_owned(),
            "200".to_owned(),
        )]
        .into(),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    wait_until(&neighbour, "neighbour running", |s| running(s, "hello")).await;
    let error = get(&runtime, handle.uid(), 8080, "/busy")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            flotilla_node::Error::RequestTimeout { timeout_ms: 200 }
        ),
        "{error}"
    );
    assert_eq!(
        container_last(&handle.status()),
        ("DeadlineExceeded".to_owned(), 137)
    );
    assert_serves(&runtime, neighbour.uid()).await;
    assert_serves(&runtime, handle.uid()).await;
}
