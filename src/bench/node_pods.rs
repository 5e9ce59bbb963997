//! Pods for the node benchmark: the hello-http pod as its `k8s.yaml`
//! declares it, runtimes configured as an agent would configure them, the
//! time from handing a pod to the runtime to its first successful response,
//! and the process's resident memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use flotilla_node::{LocalSource, NodeConfig, NodeRuntime, PodHandle, PodInputs};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::{Pod, PodStatus};

/// The port hello-http's manifest declares.
pub const SERVICE_PORT: u16 = 8080;
/// How long one pod may take to answer its first request. A cold start
/// compiles the module, which takes seconds on a loaded machine; longer than
/// this is a failure, not a data point.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Latencies above this are clamped into the histogram's top bucket.
const LATENCY_MAX_US: u64 = 600_000_000;

/// Makes hello-http pods: the Deployment's pod template from
/// `examples/hello-http/k8s.yaml`, unchanged except for its name, uid and
/// image (the built module, as `file://`).
#[derive(Clone)]
pub struct PodFactory {
    template: serde_json::Value,
}

impl PodFactory {
    pub fn new(repo_root: &Path, module: &Path) -> Result<Self> {
        let path = repo_root.join("examples/hello-http/k8s.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut template = None;
        // Documents are separated by `---` lines.
        for document in text.split("\n---") {
            let value: serde_json::Value = serde_yaml::from_str(document)
                .with_context(|| format!("parsing {}", path.display()))?;
            if value["kind"] == "Deployment" {
                template = Some(value["spec"]["template"].clone());
                break;
            }
        }
        let Some(mut template) = template else {
            bail!("{} has no Deployment", path.display());
        };
        let image = format!("file://{}", module.display());
        let Some(containers) = template["spec"]["containers"].as_array_mut() else {
            bail!("{}: the pod template has no containers", path.display());
        };
        for container in containers {
            container["image"] = serde_json::Value::String(image.clone());
        }
        template["metadata"]["namespace"] = "default".into();
        Ok(Self { template })
    }

    /// The pod named `name`, with uid `bench-<name>`.
    pub fn pod(&self, name: &str) -> Result<Pod> {
        let mut value = self.template.clone();
        value["metadata"]["name"] = name.into();
        value["metadata"]["uid"] = format!("bench-{name}").into();
        serde_json::from_value(value).context("the hello-http pod template is not a Pod")
    }
}

/// A runtime with the defaults an agent uses (pools, back-off, timeouts,
/// log files), its data under `data_dir` and its artifacts in `cache_dir`.
pub fn runtime(data_dir: &Path, cache_dir: &Path) -> Result<NodeRuntime> {
    let mut config = NodeConfig::new(data_dir);
    config.engine.cache_dir = cache_dir.to_path_buf();
    NodeRuntime::new(config, Arc::new(LocalSource::files_only())).context("starting the runtime")
}

/// Hands `pod` to the runtime and returns its handle and the time until its
/// first successful response to `GET /`.
pub async fn start_pod(runtime: &NodeRuntime, pod: &Pod) -> Result<(PodHandle, Duration)> {
    let started = Instant::now();
    let handle = runtime.run_pod(pod, &PodInputs::default())?;
    // The runtime fills the service slot before it reports Running, so the
    // first request after Running is served.
    handle
        .wait_for(START_TIMEOUT, container_running)
        .await
        .map_err(|last| anyhow::anyhow!("pod not running after {START_TIMEOUT:?}: {last:?}"))?;
    let (code, _) = get(runtime, handle.uid(), "/").await?;
    let elapsed = started.elapsed();
    if code != 200 {
        bail!("first request answered {code}");
    }
    Ok((handle, elapsed))
}

fn container_running(status: &PodStatus) -> bool {
    status.container_statuses.iter().flatten().all(|container| {
        container
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some())
    }) && status
        .container_statuses
        .as_ref()
        .is_some_and(|c| !c.is_empty())
}

/// `GET path` into the pod in-process; the status and the whole body.
pub async fn get(runtime: &NodeRuntime, uid: &str, path: &str) -> Result<(u16, Bytes)> {
    let request = http::Request::get(path)
        .body(flotilla_node::request_body(Full::new(Bytes::new())))
        .context("building a request")?;
    let response = runtime.serve_http(uid, SERVICE_PORT, request).await?;
    let (status, body) = read_response(response).await?;
    Ok((status.as_u16(), body))
}

/// A response's status and its whole body.
pub async fn read_response<B>(response: http::Response<B>) -> Result<(http::StatusCode, Bytes)>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    Ok((status, body))
}

/// Removes pods, a bounded number at a time (each removal waits for the
/// pod's in-flight requests, probes included, to drain).
pub async fn remove_all(runtime: &NodeRuntime, uids: &[String]) -> Result<()> {
    const CONCURRENT_REMOVALS_MAX: usize = 64;
    for chunk in uids.chunks(CONCURRENT_REMOVALS_MAX) {
        let mut removals = tokio::task::JoinSet::new();
        for uid in chunk {
            let runtime = runtime.clone();
            let uid = uid.clone();
            removals.spawn(async move { runtime.remove_pod(&uid).await });
        }
        while let Some(removed) = removals.join_next().await {
            removed??;
        }
    }
    Ok(())
}

/// Start latencies, exact to three significant digits.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
        })
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(1, LATENCY_MAX_US));
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn p50_us(&self) -> u64 {
        self.histogram.value_at_quantile(0.50)
    }

    pub fn p99_us(&self) -> u64 {
        self.histogram.value_at_quantile(0.99)
    }
}

/// This process's resident memory in bytes (`VmRSS` in `/proc/self/status`).
pub fn resident_bytes() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// A fresh, empty directory.
pub fn empty_dir(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("clearing {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path.to_path_buf())
}
