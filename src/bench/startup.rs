//! `flotilla bench startup`: how fast a cluster of real processes brings up
//! a 1,000-replica Deployment (issue 6, deliverable 8).
//!
//! One `flotilla server` and two `flotilla agent` processes on loopback,
//! the agents joined with the server's token as `tests/cluster.rs` starts
//! them. hello-http is pushed to the cluster's registry, then one
//! Deployment of it is created through the API, as `kubectl apply` creates
//! a new object. Measured: the time from the create until the Deployment
//! reports every replica ready, and each pod's time from its creation to
//! Running and Ready.
//!
//! Kubernetes timestamps have one-second precision, so the pods' own
//! timestamps cannot time them. The benchmark watches the pods (and the
//! Deployment) from before the create and stamps every event on its own
//! monotonic clock: a pod's latency runs from its first event (ADDED) to
//! the first event that shows it Running with `Ready=True`. This is how
//! Kubernetes' pod-startup SLI is defined too ("observed via watch").
//!
//! The peer: Kubernetes cannot run on this machine, so the report sets the
//! numbers against Kubernetes' pod-startup SLO (p99 at most 5 s for
//! stateless pods, image pulls excluded) and the targets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;

use super::node_pods::Latencies;
use super::process::{self, Processes};
use super::report;
use super::store::{free_tcp_port, free_udp_port};

#[derive(Args, Debug)]
pub struct StartupBenchArgs {
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 1_000)]
    replicas: u32,
    /// Each pod's memory limit (the manifest's 64Mi would not let 1,000
    /// pods fit on two nodes of this machine).
    #[arg(long, default_value = "16Mi")]
    memory_limit: String,
    /// Memory each agent offers the scheduler, in MiB (`--memory-mib`).
    #[arg(long, default_value_t = 10_240)]
    node_memory_mib: u64,
    /// CPU each agent offers the scheduler, in millicores
    /// (`--cpu-millis`): the manifest's 500m per pod, times the pods a
    /// node takes.
    #[arg(long, default_value_t = 500_000)]
    node_cpu_millis: u64,
    /// Pods each agent takes (`--max-pods`).
    #[arg(long, default_value_t = 1_000)]
    node_max_pods: u32,
    /// How long the Deployment may take to become ready before the run
    /// fails.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Where the server and agents keep their data (cleared first).
    #[arg(long, default_value = "target/bench-startup")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// The targets.
const TARGET_ALL_READY: Duration = Duration::from_secs(3);
const TARGET_POD_P99_US: u64 = 100_000;
/// Kubernetes' pod-startup SLO: p99 at most 5 s.
const KUBERNETES_SLO_P99_US: u64 = 5_000_000;
/// Agents the pods spread over.
const AGENTS: usize = 2;
/// How long the server, the agents and the controllers may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often start-up conditions (files, nodes, the election) are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The Deployment: the file the user would `kubectl apply`.
const MANIFEST: &str = include_str!("../../examples/hello-http/k8s.yaml");
const NAMESPACE: &str = "default";
const NAME: &str = "hello-http";
const IMAGE: &str = "hello-http:0.1.0";

pub async fn run(args: StartupBenchArgs) -> Result<()> {
    let (_, module) = process::example_module("hello-http")?;
    let data_dir = process::fresh_dir(&args.data_dir)?;

    let cluster = Cluster::start(&data_dir, &args).await?;
    cluster.push(&module)?;
    let deployment = deployment(&args)?;
    let measured = measure(&cluster.client, &deployment, &args).await?;
    drop(cluster);

    let body = render(&args, &measured);
    println!("{body}");
    report::write_section(
        &args.output,
        "## Pod startup: a 1,000-replica Deployment on two agents",
        &body,
    )?;
    println!("written to {}", args.output.display());
    Ok(())
}

/// The server and agents, killed when dropped, and an admin client.
struct Cluster {
    _processes: Processes,
    client: kube::Client,
    kubeconfig: PathBuf,
}

impl Cluster {
    async fn start(root: &Path, args: &StartupBenchArgs) -> Result<Cluster> {
        let exe = std::env::current_exe().context("finding the flotilla binary")?;
        let mut processes = Processes::default();
        let server_dir = root.join("server");
        let api_address = free_tcp_port()?;
        let mut server = Command::new(&exe);
        server
            .arg("server")
            .arg(format!("--data-dir={}", server_dir.display()))
            .arg(format!("--api-listen={api_address}"))
            .arg(format!("--store-listen={}", free_udp_port()?))
            .env("RUST_LOG", "warn");
        processes.spawn(&mut server, &root.join("server.log"))?;
        // The server writes its token and admin kubeconfig once it serves.
        let token_path = server_dir.join("token");
        let kubeconfig = server_dir.join("kubeconfig");
        poll("the server's token and kubeconfig", || async {
            Ok(token_path.is_file() && kubeconfig.is_file())
        })
        .await?;
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?;
        let url = format!("https://{api_address}");
        for index in 0..AGENTS {
            let name = format!("agent-{index}");
            let mut agent = Command::new(&exe);
            agent
                .arg("agent")
                .arg(format!("--server={url}"))
                .arg(format!("--node-name={name}"))
                .arg(format!("--data-dir={}", root.join(&name).display()))
                .arg("--kubelet-listen=127.0.0.1:0")
                .arg(format!("--max-pods={}", args.node_max_pods))
                .arg(format!("--memory-mib={}", args.node_memory_mib))
                .arg(format!("--cpu-millis={}", args.node_cpu_millis))
                // Through the environment, so it is not in `ps`.
                .env("FLOTILLA_TOKEN", token.trim())
                .env("RUST_LOG", "warn");
            processes.spawn(&mut agent, &root.join(format!("{name}.log")))?;
        }
        let client = client(&kubeconfig).await?;
        wait_until_ready(&client).await?;
        Ok(Cluster {
            _processes: processes,
            client,
            kubeconfig,
        })
    }

    /// `flotilla push`, as a user would push the module.
    fn push(&self, module: &Path) -> Result<()> {
        let exe = std::env::current_exe().context("finding the flotilla binary")?;
        let output = Command::new(exe)
            .arg("push")
            .arg(module)
            .arg(IMAGE)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
            .context("running flotilla push")?;
        if !output.status.success() {
            bail!(
                "flotilla push failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .context("loading the admin kubeconfig")?;
    kube::Client::try_from(config).context("building the API client")
}

/// Waits until both nodes are Ready with a pod range and the controllers
/// have a leader, so the measurement starts with a cluster at rest.
async fn wait_until_ready(client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    poll("both nodes Ready with a pod range", || async {
        let Ok(listed) = nodes.list(&ListParams::default()).await else {
            return Ok(false);
        };
        let ready = listed.items.iter().filter(|node| {
            let cidr = node.spec.as_ref().and_then(|spec| spec.pod_cidr.as_ref());
            let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
            cidr.is_some()
                && conditions
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        Ok(ready.count() == AGENTS)
    })
    .await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-system");
    poll("the controllers' leader", || async {
        let lease = leases.get_opt("flotilla-control-plane").await;
        let holder = lease
            .ok()
            .flatten()
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity);
        Ok(holder.is_some_and(|holder| !holder.is_empty()))
    })
    .await
}

/// Checks `done` every [`POLL_INTERVAL`] until it holds; fails after
/// [`READY_TIMEOUT`].
async fn poll<F, Fut>(what: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    while !done().await? {
        if started.elapsed() > READY_TIMEOUT {
            bail!("timed out after {READY_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// The Deployment of `examples/hello-http/k8s.yaml`, with the replicas and
/// memory limit asked for; everything else (CPU limit, probes, env) as the
/// file has it.
fn deployment(args: &StartupBenchArgs) -> Result<Deployment> {
    let mut found = None;
    for document in serde_yaml::Deserializer::from_str(MANIFEST) {
        let value = serde_json::Value::deserialize(document).context("parsing k8s.yaml")?;
        if value["kind"] == "Deployment" {
            found = Some(value);
        }
    }
    let Some(mut value) = found else {
        bail!("examples/hello-http/k8s.yaml has no Deployment");
    };
    value["metadata"]["name"] = NAME.into();
    value["spec"]["replicas"] = args.replicas.into();
    let Some(containers) = value["spec"]["template"]["spec"]["containers"].as_array_mut() else {
        bail!("the hello-http Deployment has no containers");
    };
    for container in containers {
        container["resources"]["limits"]["memory"] = args.memory_limit.clone().into();
    }
    serde_json::from_value(value).context("the hello-http Deployment is not a Deployment")
}

/// When the benchmark saw each step of one pod, on its own clock.
#[derive(Clone, Copy, Debug)]
struct PodTimes {
    added: Instant,
    bound: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
}

/// What one run measured.
struct Measured {
    /// From the create to the Deployment's `readyReplicas` reaching the
    /// replicas.
    all_ready: Duration,
    /// From the create to the first and the last pod's ADDED event.
    first_added: Duration,
    last_added: Duration,
    /// Per pod: ADDED to Running and Ready, and its three steps.
    startup: Latencies,
    to_bound: Latencies,
    to_running: Latencies,
    to_ready: Latencies,
    /// Ready pods per node.
    per_node: BTreeMap<String, usize>,
}

type Timeline = Arc<Mutex<HashMap<String, PodTimes>>>;

async fn measure(
    client: &kube::Client,
    deployment: &Deployment,
    args: &StartupBenchArgs,
) -> Result<Measured> {
    let timeline: Timeline = Arc::default();
    let nodes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(None::<Instant>);
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel::<()>(2);
    let pods_task = tokio::spawn(watch_pods(
        client.clone(),
        timeline.clone(),
        nodes.clone(),
        synced_tx.clone(),
    ));
    let deployment_task = tokio::spawn(watch_deployment(
        client.clone(),
        args.replicas,
        ready_tx,
        synced_tx,
    ));
    // Both watches have listed before the create, so no event is missed.
    for _ in 0..2 {
        tokio::time::timeout(READY_TIMEOUT, synced_rx.recv())
            .await
            .context("the watches did not start in time")?
            .context("a watch ended before it started")?;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    eprintln!("creating deployment {NAME} with {} replicas", args.replicas);
    let created = Instant::now();
    deployments
        .create(&PostParams::default(), deployment)
        .await
        .context("creating the Deployment")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let waited = tokio::time::timeout(timeout, ready_rx.wait_for(Option::is_some)).await;
    pods_task.abort();
    deployment_task.abort();
    let all_ready_at = match waited {
        Ok(Ok(at)) => (*at).context("invariant: waited for Some")?,
        Ok(Err(_)) => bail!("the Deployment's watch ended"),
        Err(_) => {
            let ready = lock(&timeline)?
                .values()
                .filter(|t| t.ready.is_some())
                .count();
            bail!(
                "after {timeout:?} only {ready} of {} pods were seen ready",
                args.replicas
            );
        }
    };
    let timeline = lock(&timeline)?.clone();
    let nodes = lock(&nodes)?.clone();
    summarise(created, all_ready_at, &timeline, &nodes)
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| anyhow::anyhow!("a watch task panicked"))
}

fn summarise(
    created: Instant,
    all_ready_at: Instant,
    timeline: &HashMap<String, PodTimes>,
    nodes: &HashMap<String, String>,
) -> Result<Measured> {
    let mut measured = Measured {
        all_ready: all_ready_at.saturating_duration_since(created),
        first_added: Duration::MAX,
        last_added: Duration::ZERO,
        startup: Latencies::new()?,
        to_bound: Latencies::new()?,
        to_running: Latencies::new()?,
        to_ready: Latencies::new()?,
        per_node: BTreeMap::new(),
    };
    for (uid, times) in timeline {
        let added = times.added.saturating_duration_since(created);
        measured.first_added = measured.first_added.min(added);
        measured.last_added = measured.last_added.max(added);
        let (Some(bound), Some(running), Some(ready)) = (times.bound, times.running, times.ready)
        else {
            continue;
        };
        measured
            .startup
            .record(ready.saturating_duration_since(times.added));
        measured
            .to_bound
            .record(bound.saturating_duration_since(times.added));
        measured
            .to_running
            .record(running.saturating_duration_since(bound));
        measured
            .to_ready
            .record(ready.saturating_duration_since(running));
        if let Some(node) = nodes.get(uid) {
            *measured.per_node.entry(node.clone()).or_default() += 1;
        }
    }
    Ok(measured)
}

/// Hands each object `api`'s watch reports (added or changed) to `seen`
/// with the moment it arrived, and says on `synced` when the first listing
/// is done. Runs until aborted; failed watches are retried with back-off,
/// bounded by the run's deadline.
async fn watch_stamped<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: tokio::sync::mpsc::Sender<()>,
    mut seen: impl FnMut(K, Instant) -> Result<()>,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let at = Instant::now();
        match event {
            Err(error) => eprintln!("a watch failed, retrying: {error}"),
            // Only the first listing is waited for; a later one (after a
            // lost watch) has no one waiting, and must not block.
            Ok(watcher::Event::InitDone) => {
                let _ = synced.try_send(());
            }
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                seen(object, at)?;
            }
            Ok(watcher::Event::Init | watcher::Event::Delete(_)) => {}
        }
    }
    bail!("a watch ended")
}

/// Stamps each pod's steps as the watch reports them.
async fn watch_pods(
    client: kube::Client,
    timeline: Timeline,
    nodes: Arc<Mutex<HashMap<String, String>>>,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let config = watcher::Config::default().labels(&format!("app={NAME}"));
    watch_stamped(pods, config, synced, |pod: Pod, seen| {
        let Some(uid) = pod.metadata.uid.clone() else {
            return Ok(());
        };
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = running
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let mut timeline = lock(&timeline)?;
        let times = timeline.entry(uid.clone()).or_insert(PodTimes {
            added: seen,
            bound: None,
            running: None,
            ready: None,
        });
        if let Some(node) = node {
            times.bound.get_or_insert(seen);
            lock(&nodes)?.insert(uid, node);
        }
        if running {
            times.running.get_or_insert(seen);
        }
        if ready {
            times.ready.get_or_insert(seen);
        }
        Ok(())
    })
    .await
}

/// Notes when the Deployment first reports every replica ready.
async fn watch_deployment(
    client: kube::Client,
    replicas: u32,
    ready: tokio::sync::watch::Sender<Option<Instant>>,
    synced: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client, NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    watch_stamped(
        deployments,
        config,
        synced,
        |deployment: Deployment, seen| {
            let ready_replicas = deployment
                .status
                .as_ref()
                .and_then(|status| status.ready_replicas)
                .unwrap_or(0);
            if u32::try_from(ready_replicas).unwrap_or(0) >= replicas && ready.borrow().is_none() {
                ready.send_replace(Some(seen));
            }
            Ok(())
        },
    )
    .await
}

fn render(args: &StartupBenchArgs, measured: &Measured) -> String {
    let all_ready = measured.all_ready;
    let verdict_all = if all_ready <= TARGET_ALL_READY {
        "met".to_string()
    } else {
        format!(
            "missed by {}",
            seconds(all_ready.saturating_sub(TARGET_ALL_READY))
        )
    };
    let p99 = measured.startup.p99_us();
    let verdict_p99 = if p99 < TARGET_POD_P99_US {
        "met".to_string()
    } else {
        format!("missed by {}", millis(p99 - TARGET_POD_P99_US))
    };
    let slo = if p99 <= KUBERNETES_SLO_P99_US {
        "within it"
    } else {
        "outside it"
    };
    let per_node: Vec<String> = measured
        .per_node
        .iter()
        .map(|(node, pods)| format!("{node} {pods}"))
        .collect();
    let mut out = format!(
        "Run with `cargo run --release --features bench -- bench startup` on {machine}.\n\
         One `flotilla server` (TLS, token auth, fsync on) and two `flotilla agent` processes \
         on loopback, joined with the server's token as `tests/cluster.rs` starts them; \
         agents with `--max-pods {max_pods} --memory-mib {memory} --cpu-millis {cpu}` (the \
         pods' 500m CPU limits would otherwise fit four to a node). hello-http is pushed with \
         `flotilla push`, then the Deployment of `examples/hello-http/k8s.yaml` is created \
         through the API with {replicas} replicas and a {limit} memory limit (probes, 500m \
         CPU limit and env as in the file). Neither agent has fetched or compiled the module \
         before, so the first pods on each node include that (Kubernetes' SLO excludes image \
         pulls).\n\n\
         Method: the benchmark watches the pods and the Deployment from before the create and \
         stamps each event on its own monotonic clock, since Kubernetes timestamps have \
         one-second precision. A pod's startup runs from its first event (ADDED) to the first \
         event showing it Running with `Ready=True`; the delay of the watch itself is in both \
         ends. Kubernetes cannot run on this machine, so the peer is its pod-startup SLO: p99 \
         at most 5 s for stateless pods, image pulls excluded, observed via watch.\n\n\
         | measure | Flotilla | target | vs target | Kubernetes SLO |\n\
         |---|---|---|---|---|\n\
         | create to all {replicas} ready (Deployment `readyReplicas`) | {all} | 3 s | \
         {verdict_all} | none |\n\
         | per pod, ADDED to Running and Ready, p50 | {p50} | | | |\n\
         | per pod, ADDED to Running and Ready, p99 | {p99} | under 100 ms | {verdict_p99} | \
         at most 5 s: {slo} |\n\n\
         Where a pod's time goes (each step from the event that showed the previous one):\n\n\
         | step | p50 | p99 |\n|---|---|---|\n",
        machine = report::machine_description(),
        max_pods = args.node_max_pods,
        memory = args.node_memory_mib,
        cpu = args.node_cpu_millis,
        replicas = args.replicas,
        limit = args.memory_limit,
        all = seconds(all_ready),
        p50 = millis(measured.startup.p50_us()),
        p99 = millis(p99),
    );
    for (step, latencies) in [
        ("ADDED to bound to a node", &measured.to_bound),
        ("bound to Running", &measured.to_running),
        ("Running to Ready", &measured.to_ready),
    ] {
        out.push_str(&format!(
            "| {step} | {} | {} |\n",
            millis(latencies.p50_us()),
            millis(latencies.p99_us())
        ));
    }
    out.push_str(&format!(
        "\nPods measured: {}. The first pod's ADDED arrived {} after the create, the last \
         {} after it. Ready pods per node: {}.\n",
        measured.startup.count(),
        millis(micros_of(measured.first_added)),
        millis(micros_of(measured.last_added)),
        per_node.join(", "),
    ));
    out
}

fn micros_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn millis(value_us: u64) -> String {
    format!("{:.1} ms", value_us as f64 / 1_000.0)
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}
