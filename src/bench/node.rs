//! `flotilla bench node`: the node runtime against `wasmtime serve`, and its
//! pod start time and density, in one run.
//!
//! 1. Density: N hello-http pods on one runtime, resident memory and start
//!    time as N grows. It runs first, in a fresh runtime, so no memory freed
//!    by the other phases can hide what the pods cost.
//! 2. Pod start: from handing a pod to the runtime to its first successful
//!    response, cold (empty artifact cache), from the on-disk artifact cache
//!    (a fresh runtime), and warm (the runtime already has the module).
//! 3. Serving: `examples/hello-http` behind a loopback listener that hands
//!    requests to the runtime, and under `wasmtime serve`, both driven by
//!    `hey` at each connection count, alternating.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use flotilla_node::NodeRuntime;

use super::node_http::{self, HeyResult, PodListener, Tools, WasmtimeServe};
use super::node_pods::{self, Latencies, PodFactory};
use super::{process, report};

#[derive(Args, Debug)]
pub struct NodeBenchArgs {
    /// Seconds each `hey` run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections of the `hey` runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 50])]
    connections: Vec<usize>,
    /// Warm pod starts measured (the runtime already has the module).
    #[arg(long, default_value_t = 1_000)]
    warm_pods: usize,
    /// Pod starts measured on a fresh runtime whose artifact is on disk.
    #[arg(long, default_value_t = 100)]
    cached_pods: usize,
    /// Cold pod starts measured (each a fresh runtime with an empty cache,
    /// so each compiles the module: seconds apiece).
    #[arg(long, default_value_t = 20)]
    cold_pods: usize,
    /// Pod counts at which density is measured.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000])]
    density: Vec<usize>,
    /// Upper bound on the density pod count (counts above it are skipped).
    #[arg(long)]
    max_pods: Option<usize>,
    /// Where runtimes keep their data and artifacts (cleared first).
    #[arg(long, default_value = "target/bench-node")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// The pod name both servers report in their greeting.
const SERVED_POD_NAME: &str = "hello-http-bench";

pub async fn run(args: NodeBenchArgs) -> Result<()> {
    let tools = Tools::find()?;
    let (repo_root, module) = process::example_module("hello-http")?;
    let factory = PodFactory::new(repo_root, &module)?;
    let data_dir = node_pods::empty_dir(&args.data_dir)?.canonicalize()?;

    let density = measure_density(&factory, &data_dir, &density_counts(&args)).await?;
    let starts = measure_starts(&factory, &data_dir, &args).await?;
    let serving = measure_serving(&tools, &factory, &module, &data_dir, &args).await?;

    let body = render(&tools, &args, &serving, &starts, &density);
    println!("{body}");
    report::write_section(
        &args.output,
        "## Node: runtime vs wasmtime serve, pod start, density",
        &body,
    )?;
    println!("written to {}", args.output.display());
    Ok(())
}

fn density_counts(args: &NodeBenchArgs) -> Vec<usize> {
    let mut counts: Vec<usize> = args
        .density
        .iter()
        .copied()
        .filter(|&count| args.max_pods.is_none_or(|max| count <= max))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Density at one pod count.
struct DensityRow {
    pods: usize,
    resident_bytes: u64,
    /// Resident memory above the runtime's own, per pod.
    per_pod_bytes: u64,
    /// Starts of the pods added since the previous count.
    starts: Latencies,
}

async fn measure_density(
    factory: &PodFactory,
    data_dir: &Path,
    counts: &[usize],
) -> Result<(u64, Vec<DensityRow>)> {
    let dir = data_dir.join("density");
    let runtime = node_pods::runtime(&dir, &dir.join("artifacts"))?;
    // One pod first, so the module is compiled and prepared before the
    // baseline: the baseline is a runtime ready to start pods.
    let (first, _) = node_pods::start_pod(&runtime, &factory.pod("density-warmup")?).await?;
    node_pods::remove_all(&runtime, &[first.uid().to_owned()]).await?;
    let baseline = node_pods::resident_bytes()?;
    eprintln!("density: runtime ready, {} MiB resident", baseline >> 20);
    let mut rows = Vec::new();
    let mut uids = Vec::new();
    for &count in counts {
        let mut starts = Latencies::new()?;
        while uids.len() < count {
            let pod = factory.pod(&format!("density-{}", uids.len()))?;
            let (handle, elapsed) = node_pods::start_pod(&runtime, &pod).await?;
            starts.record(elapsed);
            uids.push(handle.uid().to_owned());
        }
        let resident_bytes = node_pods::resident_bytes()?;
        let per_pod_bytes = resident_bytes.saturating_sub(baseline) / count.max(1) as u64;
        eprintln!(
            "density: {count} pods, {} MiB resident, {} KiB per pod, start p50 {} us p99 {} us",
            resident_bytes >> 20,
            per_pod_bytes >> 10,
            starts.p50_us(),
            starts.p99_us()
        );
        rows.push(DensityRow {
            pods: count,
            resident_bytes,
            per_pod_bytes,
            starts,
        });
    }
    node_pods::remove_all(&runtime, &uids).await?;
    Ok((baseline, rows))
}

/// Pod start latencies of one kind.
struct StartRow {
    kind: &'static str,
    starts: Latencies,
}

async fn measure_starts(
    factory: &PodFactory,
    data_dir: &Path,
    args: &NodeBenchArgs,
) -> Result<Vec<StartRow>> {
    let mut rows = Vec::new();

    // Cold: every sample is a new runtime with an empty artifact cache.
    let cold = fresh_runtime_starts(factory, data_dir, "cold", args.cold_pods, None).await?;
    rows.push(StartRow {
        kind: "cold: empty artifact cache (compiles)",
        starts: cold,
    });

    // Cached: every sample is a new runtime; the artifact is on disk.
    let cache_dir = data_dir.join("cached-artifacts");
    let warmup = node_pods::runtime(&data_dir.join("cached-warmup"), &cache_dir)?;
    start_and_remove(&warmup, factory, "cached-warmup").await?;
    drop(warmup);
    let cached = fresh_runtime_starts(
        factory,
        data_dir,
        "cached",
        args.cached_pods,
        Some(&cache_dir),
    )
    .await?;
    rows.push(StartRow {
        kind: "from disk: artifact cached, fresh runtime",
        starts: cached,
    });

    // Warm: one runtime that has started this module before.
    let dir = data_dir.join("warm");
    let runtime = node_pods::runtime(&dir, &cache_dir)?;
    start_and_remove(&runtime, factory, "warm-warmup").await?;
    let mut warm = Latencies::new()?;
    for sample in 0..args.warm_pods {
        warm.record(start_and_remove(&runtime, factory, &format!("warm-{sample}")).await?);
    }
    report_starts("warm", &warm);
    rows.push(StartRow {
        kind: "warm: module already on this runtime",
        starts: warm,
    });
    Ok(rows)
}

/// Starts `samples` pods, each on a new runtime in a fresh directory whose
/// artifact cache is `cache_dir`, or empty when `None`.
async fn fresh_runtime_starts(
    factory: &PodFactory,
    data_dir: &Path,
    name: &str,
    samples: usize,
    cache_dir: Option<&Path>,
) -> Result<Latencies> {
    let mut starts = Latencies::new()?;
    for sample in 0..samples {
        let dir = node_pods::empty_dir(&data_dir.join(name))?;
        let cache = cache_dir.map_or_else(|| dir.join("artifacts"), Path::to_path_buf);
        let runtime = node_pods::runtime(&dir, &cache)?;
        starts.record(start_and_remove(&runtime, factory, &format!("{name}-{sample}")).await?);
    }
    report_starts(name, &starts);
    Ok(starts)
}

/// Starts one pod, then removes it (untimed), so every sample starts on a
/// runtime in the same state.
async fn start_and_remove(
    runtime: &NodeRuntime,
    factory: &PodFactory,
    name: &str,
) -> Result<Duration> {
    let (handle, elapsed) = node_pods::start_pod(runtime, &factory.pod(name)?).await?;
    node_pods::remove_all(runtime, &[handle.uid().to_owned()]).await?;
    Ok(elapsed)
}

fn report_starts(kind: &str, starts: &Latencies) {
    eprintln!(
        "start {kind}: {} pods, p50 {} us, p99 {} us",
        starts.count(),
        starts.p50_us(),
        starts.p99_us()
    );
}

/// One connection count, both servers.
struct ServingRow {
    connections: usize,
    ours: HeyResult,
    theirs: HeyResult,
}

async fn measure_serving(
    tools: &Tools,
    factory: &PodFactory,
    module: &Path,
    data_dir: &Path,
    args: &NodeBenchArgs,
) -> Result<Vec<ServingRow>> {
    let dir = data_dir.join("serve");
    let runtime = node_pods::runtime(&dir, &data_dir.join("cached-artifacts"))?;
    let pod = factory.pod(SERVED_POD_NAME)?;
    let env = pod_env(&pod);
    let (handle, _) = node_pods::start_pod(&runtime, &pod).await?;
    let listener = PodListener::start(runtime.clone(), handle.uid().to_owned()).await?;
    let peer =
        WasmtimeServe::start(&tools.wasmtime, module, &env, &dir.join("wasmtime.log")).await?;
    let ours_body = node_http::http_get(listener.address, "/").await?;
    let theirs_body = node_http::http_get(peer.address, "/").await?;
    eprintln!(
        "node answers {} {:?}; wasmtime serve answers {} {:?}",
        ours_body.0, ours_body.1, theirs_body.0, theirs_body.1
    );
    anyhow::ensure!(
        ours_body == theirs_body,
        "the two servers answer differently, so they would not be compared fairly"
    );
    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for &connections in &args.connections {
        let ours = hey("node", tools, listener.address, connections, duration).await?;
        let theirs = hey("wasmtime", tools, peer.address, connections, duration).await?;
        rows.push(ServingRow {
            connections,
            ours,
            theirs,
        });
    }
    drop(peer);
    drop(listener);
    node_pods::remove_all(&runtime, &[handle.uid().to_owned()]).await?;
    Ok(rows)
}

async fn hey(
    system: &str,
    tools: &Tools,
    address: std::net::SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<HeyResult> {
    let result = node_http::run_hey(&tools.hey, address, connections, duration).await?;
    eprintln!(
        "{system:>8} x{connections}: {:.0} req/s, p50 {} us, p99 {} us, {} ok, {} failed",
        result.requests_per_sec, result.p50_us, result.p99_us, result.ok, result.failed
    );
    Ok(result)
}

/// The literal environment of the pod's first container, with the pod's
/// name for `POD_NAME` (a fieldRef in the manifest), for `wasmtime serve`.
fn pod_env(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, String)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|spec| spec.containers.first())
        .flat_map(|container| container.env.iter().flatten())
        .map(|var| {
            let value = match &var.value {
                Some(value) => value.clone(),
                None => name.clone(),
            };
            (var.name.clone(), value)
        })
        .collect()
}

fn render(
    tools: &Tools,
    args: &NodeBenchArgs,
    serving: &[ServingRow],
    starts: &[StartRow],
    (baseline, density): &(u64, Vec<DensityRow>),
) -> String {
    let mut out = format!(
        "Run with `cargo run --release --features bench -- bench node` on {}.\n\
         Peer: `{}` (`wasmtime serve -O pooling-allocator=y -S cli=y`); load generator: `hey`, \
         {} s per run, keep-alive, systems alternating, both on loopback. \
         The node runtime is reached through a hyper listener in the bench process that \
         hands each request to `NodeRuntime::serve_http`, as an agent does. \
         Both serve `examples/hello-http` with one fresh instance per request; the pod is \
         the Deployment template of its `k8s.yaml` (64 MiB, 500m CPU limits, probes on). \
         hey reports latencies to 0.1 ms.\n\n\
         | load | node req/s | p50 | p99 | wasmtime serve req/s | p50 | p99 | throughput ratio |\n\
         |---|---|---|---|---|---|---|---|\n",
        report::machine_description(),
        tools.wasmtime_version,
        args.seconds,
    );
    for row in serving {
        let ratio = row.ours.requests_per_sec / row.theirs.requests_per_sec.max(f64::MIN_POSITIVE);
        let plural = if row.connections == 1 { "" } else { "s" };
        out.push_str(&format!(
            "| GET /, {} connection{plural} | {:.0} | {} | {} | {:.0} | {} | {} | {ratio:.2}x |\n",
            row.connections,
            row.ours.requests_per_sec,
            millis(row.ours.p50_us),
            millis(row.ours.p99_us),
            row.theirs.requests_per_sec,
            millis(row.theirs.p50_us),
            millis(row.theirs.p99_us),
        ));
    }
    out.push_str(
        "\nPod start: from `run_pod` to the first successful response to `GET /`, \
         one pod at a time, each removed before the next.\n\n\
         | start | pods | p50 | p99 |\n|---|---|---|---|\n",
    );
    for row in starts {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.kind,
            row.starts.count(),
            millis(row.starts.p50_us()),
            millis(row.starts.p99_us()),
        ));
    }
    out.push_str(&format!(
        "\nDensity: hello-http pods added one at a time to one runtime and left running \
         (probes included); resident memory is the process's VmRSS; per pod is the growth \
         over the ready runtime's {} MiB, divided by the pod count; start times are of the \
         pods added since the previous row.\n\n\
         | pods | resident | per pod | start p50 | start p99 |\n|---|---|---|---|---|\n",
        baseline >> 20
    ));
    for row in density {
        out.push_str(&format!(
            "| {} | {} MiB | {} KiB | {} | {} |\n",
            row.pods,
            row.resident_bytes >> 20,
            row.per_pod_bytes >> 10,
            millis(row.starts.p50_us()),
            millis(row.starts.p99_us()),
        ));
    }
    out
}

/// Milliseconds with two decimals: hey's resolution is 0.1 ms, and pod
/// starts range from a fraction of a millisecond to seconds.
fn millis(value_us: u64) -> String {
    format!("{:.2} ms", value_us as f64 / 1_000.0)
}
