//! Container logs through the runtime: timestamps, tail, since, follow, and
//! files on disk.

use std::time::{Duration, SystemTime};

use flotilla_node::LogQuery;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sees_new_lines_and_tail_and_since_select() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let before = SystemTime::now();
    let pod = one_container_pod(
        json!({ "name": "worker", "image": example_image("job"), "args": ["--spin"] }),
        json!({}),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    wait_until(&handle, "running", |s| running(s, "worker")).await;
    let mut follower = runtime
        .follow_logs(handle.uid(), "worker", &LogQuery::default())
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(WAIT, follower.next())
            .await
            .expect("a line arrives")
            .expect("log open");
        assert!(line.time >= before);
        seen.push(line.text);
    }
    assert_eq!(seen[..2], ["tick 1", "tick 2"]);
    let tail = runtime
        .logs(
            handle.uid(),
            "worker",
            &LogQuery {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(tail.len(), 1);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let none = runtime
        .logs(
            handle.uid(),
            "worker",
            &LogQuery {
                since: Some(future),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(none.is_empty());
    runtime
        .stop_pod(handle.uid(), Some(Duration::ZERO))
        .await
        .unwrap();
    let files: Vec<_> = walk(&dir.path().join("logs"));
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.lines().next().unwrap().contains(" stdout F tick 1"),
        "{text}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path))
        } else {
            files.push(path)
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_finished_job_ends_after_its_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    let pod = one_container_pod(
        json!({ "name": "job", "image": example_image("job"), "args": ["100"] }),
        json!({ "restartPolicy": "Never" }),
    );
    let handle = runtime.run_pod(&pod, &Default::default()).unwrap();
    let mut follower = runtime
        .follow_logs(handle.uid(), "job", &LogQuery::default())
        .unwrap();
    let mut lines = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT, follower.next())
        .await
        .expect("the follow ends")
    {
        lines.push(line.text);
    }
    assert_eq!(lines, ["sum=1060"]);
}
