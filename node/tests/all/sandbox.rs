//! A guest sees only what its spec gives it: its env (no host env), its
//! volumes (ConfigMap files read-only, emptyDir writable), no other files.

use std::collections::BTreeMap;

use flotilla_node::{NodeRuntime, PodInputs};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::support::*;

/// Runs the job example with `args` and `extra` container fields; returns
/// its exit code and its output lines.
async fn run_job(
    runtime: &NodeRuntime,
    args: &[&str],
    extra: serde_json::Value,
    inputs: &PodInputs,
) -> (i32, Vec<String>) {
    let mut container = json!({ "name": "job", "image": example_image("job"), "args": args });
    if let serde_json::Value::Object(extra) = extra {
        for (key, value) in extra {
            container[key] = value;
        }
    }
    let volumes = json!([
        { "name": "config", "configMap": { "name": "settings" } },
        { "name": "scratch", "emptyDir": {} },
    ]);
    let pod: Pod = one_container_pod(
        container,
        json!({ "restartPolicy": "Never", "volumes": volumes }),
    );
    let handle = runtime.run_pod(&pod, inputs).unwrap();
    let status = wait_until(&handle, "the job to end", |s| {
        matches!(phase(s), "Succeeded" | "Failed")
    })
    .await;
    let lines = runtime
        .logs(handle.uid(), "job", &Default::default())
        .unwrap();
    (
        terminated(&status, "job").unwrap().0,
        lines.into_iter().map(|line| line.text).collect(),
    )
}

fn inputs() -> PodInputs {
    let mut inputs = PodInputs::default();
    let data = BTreeMap::from([("greeting".to_owned(), b"from a config map".to_vec())]);
    inputs.config_maps.insert("settings".to_owned(), data);
    inputs
}

fn mounts() -> serde_json::Value {
    json!({ "volumeMounts": [
        { "name": "config", "mountPath": "/etc/config" },
        { "name": "scratch", "mountPath": "/scratch" },
    ] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_sees_only_its_own_env() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let env = json!({ "env": [
        { "name": "COLOR", "value": "blue" },
        { "name": "FROM_CM", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "greeting" } } },
        { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
    ] });
    let (code, lines) = run_job(&runtime, &["--env"], env, &inputs()).await;
    assert_eq!(code, 0);
    assert_eq!(
        lines,
        [
            "COLOR=blue",
            "FROM_CM=from a config map",
            "POD_NAMESPACE=default"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_files_are_readable_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let (code, lines) = run_job(
        &runtime,
        &["--cat", "/etc/config/greeting"],
        mounts(),
        &inputs(),
    )
    .await;
    assert_eq!(
        (code, lines.as_slice()),
        (0, ["from a config map".to_owned()].as_slice())
    );
    let (code, _) = run_job(
        &runtime,
        &["--write", "/etc/config/greeting", "x"],
        mounts(),
        &inputs(),
    )
    .await;
    assert_eq!(code, 1, "writing a ConfigMap volume must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_dir_is_writable_and_host_files_are_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let (code, _) = run_job(
        &runtime,
        &["--write", "/scratch/out.txt", "written"],
        mounts(),
        &inputs(),
    )
    .await;
    assert_eq!(code, 0);
    let (code, lines) = run_job(&runtime, &["--cat", "/etc/passwd"], mounts(), &inputs()).await;
    assert_eq!(code, 1, "host files must be invisible: {lines:?}");
    let (code, _) = run_job(
        &runtime,
        &["--cat", "/scratch/../../../etc/passwd"],
        mounts(),
        &inputs(),
    )
    .await;
    assert_eq!(code, 1, "a volume must not lead out of itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_host_directory_can_be_read_but_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data.txt"), "host data").unwrap();
    let volume = json!([{ "name": "host", "hostPath": { "path": host.path() } }]);
    let run = |args: Vec<&'static str>| {
        let container = json!({
            "name": "job",
            "image": example_image("job"),
            "args": args,
            "volumeMounts": [{ "name": "host", "mountPath": "/host", "readOnly": true }],
        });
        one_container_pod(
            container,
            json!({ "restartPolicy": "Never", "volumes": volume.clone() }),
        )
    };
    for (args, expected_code) in [
        (vec!["--cat", "/host/data.txt"], 0),
        (vec!["--write", "/host/new.txt", "x"], 1),
    ] {
        let handle = runtime.run_pod(&run(args), &Default::default()).unwrap();
        let status = wait_until(&handle, "the job to end", |s| {
            matches!(phase(s), "Succeeded" | "Failed")
        })
        .await;
        assert_eq!(terminated(&status, "job").unwrap().0, expected_code);
    }
    assert!(!host.path().join("new.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_a_service_and_a_process_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = crate::support::pod(json!({
        "metadata": { "name": "pair" },
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                { "name": "web", "image": example_image("hello-http"), "ports": [{ "containerPort": 8080 }] },
                { "name": "batch", "image": example_image("job"), "args": ["100"] },
            ],
        },
    }));
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "batch done, web running", |s| {
        running(s, "web") && terminated(s, "batch").is_some()
    })
    .await;
    assert_eq!(phase(&status), "Running");
    assert_eq!(terminated(&status, "batch").unwrap().1, "Completed");
    assert_eq!(get(&runtime, handle.uid(), 8080, "/").await.unwrap().0, 200);
    let lines = runtime
        .logs(handle.uid(), "batch", &Default::default())
        .unwrap();
    assert_eq!(lines[0].text, "sum=1060");
    runtime.stop_pod(handle.uid(), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_cannot_open_host_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let pod = one_container_pod(
        json!({ "name": "job", "image": example_image("job"), "args": ["--connect", address] }),
        json!({ "restartPolicy": "Never" }),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let status = wait_until(&handle, "the job to end", |s| {
        matches!(phase(s), "Succeeded" | "Failed")
    })
    .await;
    let lines = runtime
        .logs(handle.uid(), "job", &Default::default())
        .unwrap();
    assert_eq!(terminated(&status, "job").unwrap().0, 1, "{lines:?}");
    assert!(listener.accept().is_err(), "no connection reached the host");
    // Refused by the sandbox, not merely unsupported by the guest's libc.
    assert!(lines[0].text.contains("Permission denied"), "{lines:?}");
}
