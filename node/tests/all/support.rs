//! Shared test helpers: the built guests, a runtime with short timings,
//! pods from JSON or from the examples' manifests, requests, and waiting on
//! statuses with a bounded timeout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flotilla_node::guests::{GuestModules, build_examples};
use flotilla_node::{BackoffConfig, LocalSource, NodeConfig, NodeRuntime, PoolConfig};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};

/// Upper bound on any wait in these tests; conditions normally hold in
/// milliseconds, this only turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(30);

/// The guest examples, built once per test run.
pub fn guests() -> &'static GuestModules {
    static GUESTS: OnceLock<GuestModules> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("node/ has a parent");
        build_examples(repo_root, &target_dir()).unwrap_or_else(|error| panic!("{error}"))
    })
}

/// `file://` image of an example.
pub fn example_image(name: &str) -> String {
    format!(
        "file://{}",
        guests()
            .module(name)
            .unwrap_or_else(|error| panic!("{error}"))
            .display()
    )
}

/// The host target dir this test binary was built into.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<binary>
    exe.ancestors()
        .nth(3)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// A runtime with small pools, short back-off and a test-run-wide artifact
/// cache (so each module compiles once per run).
pub fn runtime(data_dir: &Path) -> NodeRuntime {
    runtime_with(data_dir, |_| {})
}

/// Like [`runtime`], with `adjust` applied to the config.
pub fn runtime_with(data_dir: &Path, adjust: impl FnOnce(&mut NodeConfig)) -> NodeRuntime {
    let mut config = config(data_dir);
    adjust(&mut config);
    NodeRuntime::new(config, Arc::new(LocalSource::files_only())).expect("runtime starts")
}

/// The test config: small pools, short back-off, the shared artifact cache.
pub fn config(data_dir: &Path) -> NodeConfig {
    let mut config = NodeConfig::new(data_dir);
    config.engine.cache_dir = target_dir().join("guests").join("artifact-cache");
    config.engine.pool = PoolConfig {
        component_instances: 64,
        core_instances: 512,
        memories: 128,
        tables: 512,
        stacks: 64,
    };
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(60),
    };
    config.request_timeout = Duration::from_secs(10);
    config
}

/// A pod from JSON, given a fresh uid (and a name if it has none).
pub fn pod(json: serde_json::Value) -> Pod {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut pod: Pod = serde_json::from_value(json).expect("valid pod JSON");
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    pod.metadata
        .name
        .get_or_insert_with(|| format!("pod-{serial}"));
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    pod.metadata.uid = Some(format!("uid-{serial}-{}", std::process::id()));
    pod
}

/// A pod with one container.
pub fn one_container_pod(container: serde_json::Value, spec: serde_json::Value) -> Pod {
    let mut json = serde_json::json!({ "metadata": {}, "spec": { "containers": [container] } });
    if let serde_json::Value::Object(extra) = spec {
        for (key, value) in extra {
            json["spec"][key] = value;
        }
    }
    pod(json)
}

/// The pod template of the first `kind` object in an example's `k8s.yaml`,
/// named `name`, with every container's image replaced by the built module.
pub fn pod_from_manifest(example: &str, kind: &str, name: &str) -> Pod {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example)
        .join("k8s.yaml");
    let text = std::fs::read_to_string(&path).expect("manifest exists");
    let document = serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("valid YAML"))
        .find(|value: &serde_json::Value| value["kind"] == kind)
        .unwrap_or_else(|| panic!("{path:?} has no {kind}"));
    let mut template = document["spec"]["template"].clone();
    template["metadata"]["name"] = serde_json::Value::String(name.to_owned());
    let image = example_image(example);
    for container in template["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
    {
        container["image"] = serde_json::Value::String(image.clone());
    }
    pod(template)
}

/// GETs `path` from the service on `port`; returns the status and body.
pub async fn get(
    runtime: &NodeRuntime,
    uid: &str,
    port: u16,
    path: &str,
) -> flotilla_node::Result<(u16, String)> {
    let body = Full::new(Bytes::new());
    let request = http::Request::get(path)
        .body(flotilla_node::request_body(body))
        .expect("valid request");
    let response = runtime.serve_http(uid, port, request).await?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until `condition` holds for the pod's status; panics with the last
/// status after [`WAIT`].
pub async fn wait_until(
    handle: &flotilla_node::PodHandle,
    what: &str,
    condition: impl FnMut(&PodStatus) -> bool,
) -> PodStatus {
    handle
        .wait_for(WAIT, condition)
        .await
        .unwrap_or_else(|last| panic!("timed out waiting for {what}; last status: {last:#?}"))
}

/// The status of the named container.
pub fn container<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status for container {name}"))
}

/// The phase, as a plain string.
pub fn phase(status: &PodStatus) -> &str {
    status.phase.as_deref().unwrap_or("")
}

/// The terminated state of a container, if it is terminated.
pub fn terminated(status: &PodStatus, name: &str) -> Option<(i32, String, String)> {
    let terminated = container(status, name)
        .state
        .as_ref()?
        .terminated
        .as_ref()?;
    Some((
        terminated.exit_code,
        terminated.reason.clone().unwrap_or_default(),
        terminated.message.clone().unwrap_or_default(),
    ))
}

/// The waiting reason and message of a container, if it is waiting.
pub fn waiting(status: &PodStatus, name: &str) -> Option<(String, String)> {
    let waiting = container(status, name).state.as_ref()?.waiting.as_ref()?;
    Some((
        waiting.reason.clone().unwrap_or_default(),
        waiting.message.clone().unwrap_or_default(),
    ))
}

/// Whether the container is running.
pub fn running(status: &PodStatus, name: &str) -> bool {
    container(status, name)
        .state
        .as_ref()
        .is_some_and(|state| state.running.is_some())
}

/// Writes `text` (WAT or Wasm) to a file in `dir`; returns its image reference.
pub fn module_image(dir: &Path, name: &str, text: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write module");
    format!("file://{}", path.display())
}

/// A hello-http pod with the given name, serving on 8080.
pub fn hello_pod(name: &str) -> Pod {
    pod_from_manifest("hello-http", "Deployment", name)
}
