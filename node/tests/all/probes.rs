//! Probes run in-process on Kubernetes' schedule. Time is tokio's, paused
//! once the pod runs, so periods of seconds pass instantly.

use std::time::Duration;

use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::support::*;

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(8080),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        initial_delay_seconds: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn readiness_gates_ready_and_failing_liveness_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut pod = hello_pod("probed");
    let spec_container = &mut pod.spec.as_mut().unwrap().containers[0];
    spec_container.readiness_probe = Some(probe("/healthz", 5, 3));
    spec_container.liveness_probe = Some(probe("/unhealthy", 10, 3));
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "running", |s| running(s, "hello")).await;
    assert!(
        !container(&status, "hello").ready,
        "not ready before the first readiness probe"
    );
    tokio::time::pause();
    let status = wait_until(&handle, "ready", |s| container(s, "hello").ready).await;
    assert_eq!(container(&status, "hello").restart_count, 0);
    let status = wait_until(&handle, "liveness restart", |s| {
        container(s, "hello").restart_count >= 1
    })
    .await;
    let last = container(&status, "hello")
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert!(
        last.message
            .as_deref()
            .unwrap_or("")
            .contains("liveness probe failed"),
        "{last:?}"
    );
    tokio::time::resume();
    runtime
        .stop_pod(handle.uid(), Some(Duration::ZERO))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_startup_probe_holds_readiness_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let mut pod = hello_pod("starting");
    let spec_container = &mut pod.spec.as_mut().unwrap().containers[0];
    spec_container.startup_probe = Some(probe("/healthz", 1, 30));
    spec_container.readiness_probe = None;
    spec_container.liveness_probe = None;
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "running", |s| running(s, "hello")).await;
    assert_eq!(container(&status, "hello").started, Some(false));
    assert!(!container(&status, "hello").ready);
    tokio::time::pause();
    let status = wait_until(&handle, "started", |s| {
        container(s, "hello").started == Some(true)
    })
    .await;
    assert!(
        container(&status, "hello").ready,
        "no readiness probe: ready once started"
    );
    tokio::time::resume();
    runtime
        .stop_pod(handle.uid(), Some(Duration::ZERO))
        .await
        .unwrap();
}
