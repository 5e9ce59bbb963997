//! Stopping, grace periods, back-off arithmetic and the API's errors.

use std::time::Duration;

use flotilla_node::BackoffConfig;
use serde_json::json;

use crate::support::*;

#[test]
fn back_off_doubles_from_ten_seconds_to_five_minutes() {
    let backoff = BackoffConfig::default();
    let delays: Vec<u64> = (0..8)
        .map(|failures| backoff.delay(failures).as_secs())
        .collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_stop_is_ended_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "worker", "image": example_image("job"), "args": ["--spin"] }),
        json!({}),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    wait_until(&handle, "running", |s| running(s, "worker")).await;
    let status = runtime
        .stop_pod(handle.uid(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    let (code, reason, message) = terminated(&status, "worker").unwrap();
    assert_eq!((code, reason.as_str()), (137, "Error"));
    assert!(message.contains("grace period"), "{message}");
    assert_eq!(
        container(&status, "worker").restart_count,
        0,
        "a stopped pod does not restart"
    );
    assert_eq!(phase(&status), "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_unknown_pods_and_ports() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    assert!(matches!(
        runtime.stop_pod("nope", None).await,
        Err(flotilla_node::Error::PodNotFound { .. })
    ));
    assert!(runtime.pod_status("nope").is_none());
    let pod = hello_pod("ports");
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    assert!(matches!(
        runtime.run_pod(&pod, &Default::default()),
        Err(flotilla_node::Error::PodExists { .. })
    ));
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    let wrong_port = get(&runtime, handle.uid(), 9999, "/").await;
    assert!(
        matches!(
            wrong_port,
            Err(flotilla_node::Error::NoService { port: 9999, .. })
        ),
        "{wrong_port:?}"
    );
    runtime.remove_pod(handle.uid()).await.unwrap();
    assert!(runtime.pod_uids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "c", "image": "file:///x.wasm", "resources": { "limits": { "memory": "lots" } } }),
        json!({}),
    );
    assert!(matches!(
        runtime.run_pod(&pod, &Default::default()),
        Err(flotilla_node::Error::InvalidSpec { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_waits_with_err_image_pull() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "c", "image": "file:///does/not/exist.wasm" }),
        json!({}),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "pull error", |s| {
        waiting(s, "c").is_some_and(|w| w.0 == "ErrImagePull")
    })
    .await;
    assert_eq!(phase(&status), "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_service_waits_out_the_grace_period_for_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let handle = runtime
        .run_pod(&hello_pod("draining"), &Default::default())
        .unwrap();
    wait_until(&handle, "running", |s| running(s, "hello")).await;
    let busy = tokio::spawn({
        let runtime = runtime.clone();
        let uid = handle.uid().to_owned();
        async move { get(&runtime, &uid, 8080, "/busy").await }
    });
    let in_flight = async {
        while handle.requests_in_flight() == 0 {
            assert!(!busy.is_finished(), "the busy request ended early");
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the request reaches the instance");
    let status = runtime
        .stop_pod(handle.uid(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    let (code, reason, message) = terminated(&status, "hello").unwrap();
    assert_eq!((code, reason.as_str()), (137, "Error"), "{message}");
    assert!(message.contains("in flight"), "{message}");
    let killed = tokio::time::timeout(WAIT, busy)
        .await
        .expect("the request ends with the container");
    let error = killed.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("container stopped while the request ran"),
        "{error}"
    );
    assert_eq!(handle.requests_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_ends_sleeping_processes_and_services() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let sleeper = one_container_pod(
        json!({ "name": "sleeper", "image": example_image("job"), "args": ["--sleep", "600"] }),
        json!({ "activeDeadlineSeconds": 1 }),
    );
    let mut service = hello_pod("short-lived");
    service.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    let handles = [
        (
            runtime.run_pod(&sleeper, &Default::default()).unwrap(),
            "sleeper",
        ),
        (
            runtime.run_pod(&service, &Default::default()).unwrap(),
            "hello",
        ),
    ];
    for (handle, name) in &handles {
        let status = wait_until(handle, "the deadline", |s| {
            phase(s) == "Failed" && terminated(s, name).is_some()
        })
        .await;
        assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
        let (code, reason, _) = terminated(&status, name).unwrap();
        assert_eq!((code, reason.as_str()), (137, "DeadlineExceeded"), "{name}");
        assert_eq!(
            container(&status, name).restart_count,
            0,
            "{name} is not restarted"
        );
    }
}
