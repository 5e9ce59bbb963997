//! The examples' manifests run on the runtime: hello-http serves, the
//! frontend becomes ready, job completes with its known result, and all
//! report status as kubelet would.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_http_serves_its_greeting_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = hello_pod("hello-abc");
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "ready", |s| {
        running(s, "hello") && container(s, "hello").ready
    })
    .await;
    assert_eq!(phase(&status), "Running");
    assert!(container(&status, "hello").image_id.starts_with("sha256:"));
    let ready_since = |status: &k8s_openapi::api::core::v1::PodStatus| {
        let conditions = status.conditions.as_ref().unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (ready.status.clone(), ready.last_transition_time.clone())
    };
    assert_eq!(ready_since(&status).0, "True");
    assert_eq!(
        ready_since(&status),
        ready_since(&handle.status()),
        "unchanged conditions keep their time"
    );
    let (code, body) = get(&runtime, handle.uid(), 8080, "/greet").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "hello, flotilla! pod=hello-abc path=/greet\n");
    // Every request is a fresh instance: many in a row all succeed.
    for _ in 0..20 {
        assert_eq!(get(&runtime, handle.uid(), 8080, "/").await.unwrap().0, 200);
    }
    let stopped = runtime.stop_pod(handle.uid(), None).await.unwrap();
    assert_eq!(
        terminated(&stopped, "hello").map(|t| (t.0, t.1)),
        Some((0, "Completed".to_owned()))
    );
    assert_eq!(phase(&stopped), "Succeeded");
    let after = get(&runtime, handle.uid(), 8080, "/").await;
    assert!(
        matches!(after, Err(flotilla_node::Error::ServiceUnavailable { .. })),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_becomes_ready_and_reports_a_refused_backend() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = pod_from_manifest("frontend", "Deployment", "frontend-abc");
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    wait_until(&handle, "ready", |s| {
        running(s, "frontend") && container(s, "frontend").ready
    })
    .await;
    // Without a pod network, its call to the backend is refused, and it
    // says so.
    let (code, body) = get(&runtime, handle.uid(), 9090, "/").await.unwrap();
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("called http://hello-http.default/"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completes_with_its_known_result() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = pod_from_manifest("job", "Job", "primes-x");
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "completion", |s| phase(s) == "Succeeded").await;
    assert_eq!(
        terminated(&status, "primes").map(|t| (t.0, t.1)),
        Some((0, "Completed".to_owned()))
    );
    assert_eq!(container(&status, "primes").restart_count, 0);
    let lines = runtime
        .logs(handle.uid(), "primes", &Default::default())
        .unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["sum=454396537"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_restarts_with_back_off_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "job", "image": example_image("job"), "args": ["--fail"] }),
        json!({ "restartPolicy": "OnFailure" }),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "back-off", |s| {
        container(s, "job").restart_count >= 2
            && waiting(s, "job").is_some_and(|w| w.0 == "CrashLoopBackOff")
    })
    .await;
    assert_eq!(phase(&status), "Running");
    let last = container(&status, "job")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    let previous = flotilla_node::LogQuery {
        previous: true,
        ..Default::default()
    };
    let lines = runtime.logs(handle.uid(), "job", &previous).unwrap();
    assert_eq!(
        lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["failing on purpose"]
    );
    assert_eq!(lines[0].stream, flotilla_node::LogStream::Stderr);
    runtime.stop_pod(handle.uid(), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_never_leaves_a_failed_pod() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "job", "image": example_image("job"), "args": ["--fail"] }),
        json!({ "restartPolicy": "Never" }),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "failure", |s| phase(s) == "Failed").await;
    assert_eq!(
        terminated(&status, "job").map(|t| (t.0, t.1)),
        Some((1, "Error".to_owned()))
    );
    assert_eq!(container(&status, "job").restart_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_always_restarts_a_job_that_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "job", "image": example_image("job"), "args": ["10"] }),
        json!({}),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "restarts", |s| {
        container(s, "job").restart_count >= 2
    })
    .await;
    let last = container(&status, "job")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (0, Some("Completed"))
    );
    runtime.stop_pod(handle.uid(), None).await.unwrap();
}
