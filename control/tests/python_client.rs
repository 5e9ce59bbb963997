//! The Python `kubernetes` client (the release for Kubernetes 1.37)
//! against a Flotilla API server: typed calls, a watch, conflicts and
//! validation errors, as `tests/python/client.py` checks them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_unchanged() {
    let server = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let url = server.url();
    let client = support::python_client();
    // The script blocks on the server; run it off the runtime's threads.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("PYTHONPATH", client)
            .env("FLOTILLA_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the Python client failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    server.stop().await;
}
