//! `flotilla bench scheduler`: scheduling throughput in the shape of
//! Kubernetes' `scheduler_perf` (`SchedulingBasic`): thousands of simulated
//! nodes, tens of thousands of pending pods, every binding persisted
//! through the API into raft-store (one member, fsyncing on a real disk).
//!
//! The server and the scheduler run in this process, as they do in
//! `flotilla server`; the scheduler is the elected one, fencing each
//! binding with its Lease. Nodes and pods are created first, with no
//! scheduler running; the clock starts when the scheduler starts, so the
//! end-to-end figure includes listing every pod into its cache. The rate
//! figure counts from the first binding to the last, as observed by a
//! separate watch.
//!
//! There is no peer to run beside it here: kube-scheduler is not packaged
//! for this machine, so the report quotes its published `scheduler_perf`
//! floor instead, and says so.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use flotilla_control::controllers::election::{ElectionConfig, Elector};
use flotilla_control::controllers::scheduler;
use flotilla_control::{Server, ServerConfig};

use super::process::fresh_dir;
use super::report;

#[derive(Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Cases as NODESxPODS, comma-separated.
    #[arg(long, default_value = "1000x10000,5000x50000", value_delimiter = ',')]
    cases: Vec<String>,
    /// Objects created at once while setting a case up.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Where the server keeps its data (a real disk: it fsyncs).
    #[arg(long, default_value = "target/bench-scheduler")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

const NAMESPACE: &str = "bench";
/// The target on this 2-core machine.
const TARGET_PODS_PER_SECOND: f64 = 5_000.0;
/// kube-scheduler's `scheduler_perf` floor at 5,000 nodes, as published
/// (on larger machines than this one).
const KUBE_SCHEDULER_FLOOR: f64 = 680.0;
/// How long a case may take to bind every pod before the run fails.
const PLACE_TIMEOUT: Duration = Duration::from_secs(600);
/// The module the pods name, and its bytes: an empty core module.
const IMAGE: &str = "bench-scheduler:1.0";
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
/// Server tick: elections and watch progress pace (the production value).
const TICK: Duration = Duration::from_millis(100);

/// One measured case.
struct Outcome {
    nodes: usize,
    pods: usize,
    setup: Duration,
    /// From the scheduler's start to the last binding seen.
    end_to_end: Duration,
    /// From the first binding seen to the last.
    placing: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        let seconds = self.placing.as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        (self.pods.saturating_sub(1)) as f64 / seconds
    }

    fn end_to_end_rate(&self) -> f64 {
        self.pods as f64 / self.end_to_end.as_secs_f64().max(f64::EPSILON)
    }
}

pub async fn run(args: SchedulerBenchArgs) -> Result<()> {
    let mut outcomes = Vec::new();
    for case in &args.cases {
        let (nodes, pods) = parse_case(case)?;
        eprintln!("== {nodes} nodes, {pods} pods");
        let outcome = run_case(&args, nodes, pods).await?;
        eprintln!(
            "   placed at {:.0} pods/s ({:.1} s from the scheduler's start; set-up {:.1} s)",
            outcome.rate(),
            outcome.end_to_end.as_secs_f64(),
            outcome.setup.as_secs_f64()
        );
        outcomes.push(outcome);
    }
    report::write_section(
        &args.output,
        "## Scheduler (`flotilla bench scheduler`)",
        &render(&outcomes),
    )?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

fn parse_case(case: &str) -> Result<(usize, usize)> {
    let (nodes, pods) = case
        .split_once('x')
        .with_context(|| format!("a case is NODESxPODS, like 1000x10000, not {case:?}"))?;
    let nodes: usize = nodes.trim().parse().context("the node count")?;
    let pods: usize = pods.trim().parse().context("the pod count")?;
    if nodes == 0 || pods == 0 {
        bail!("a case needs at least one node and one pod, not {case:?}");
    }
    Ok((nodes, pods))
}

async fn run_case(args: &SchedulerBenchArgs, nodes: usize, pods: usize) -> Result<Outcome> {
    let dir = fresh_dir(&args.data_dir)?;
    let server = Server::start(ServerConfig::loopback(&dir, TICK)?).await?;
    let client = server.client().await?;
    let started = Instant::now();
    create_all(args.clients, 0..nodes, |index| {
        let api: Api<Node> = Api::all(client.clone());
        async move { api.create(&PostParams::default(), &node(index)).await }
    })
    .await
    .context("creating the nodes")?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    // Pods name a module the registry holds (it refuses any other); the
    // smallest valid one will do, as nothing runs them.
    flotilla_control::registry::push(&client, EMPTY_MODULE.to_vec(), IMAGE)
        .await
        .context("pushing the pods' module")?;
    create_all(args.clients, 0..pods, |index| {
        let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        async move { api.create(&PostParams::default(), &pod(index)).await }
    })
    .await
    .context("creating the pods")?;
    let setup = started.elapsed();

    // The observer's watch starts before the scheduler, so it sees every
    // binding.
    let observed = tokio::spawn(observe_bindings(client.clone(), pods));
    let start = Instant::now();
    let elector = Elector::start(
        client.clone(),
        "bench-scheduler".into(),
        ElectionConfig::default(),
    );
    let mut leading = elector.leading.clone();
    leading.wait_for(|leads| *leads).await?;
    let scheduling = tokio::spawn(scheduler::run(client.clone(), Some(elector.fence.clone())));
    let outcome = tokio::time::timeout(PLACE_TIMEOUT, observed).await;
    scheduling.abort();
    drop(elector);
    server.shutdown().await;
    let (first, last) = outcome
        .with_context(|| format!("not every pod was bound within {PLACE_TIMEOUT:?}"))???;
    Ok(Outcome {
        nodes,
        pods,
        setup,
        end_to_end: last.duration_since(start),
        placing: last.duration_since(first),
    })
}

/// Runs `create` for every index, `clients` at a time; the first failure
/// fails them all.
async fn create_all<F, Fut, T>(
    clients: usize,
    indices: std::ops::Range<usize>,
    create: F,
) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    stream::iter(indices)
        .map(create)
        .buffer_unordered(clients.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// The times of the first and the last binding, once `pods` are bound.
async fn observe_bindings(client: kube::Client, pods: usize) -> Result<(Instant, Instant)> {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let mut bound: HashSet<String> = HashSet::with_capacity(pods);
    let mut first = None;
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.try_next().await? {
        let changed = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
            _ => continue,
        };
        let on_node = changed.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        if on_node && bound.insert(changed.metadata.name.unwrap_or_default()) {
            let now = Instant::now();
            first.get_or_insert(now);
            if bound.len() == pods {
                return Ok((first.unwrap_or(now), now));
            }
        }
    }
    bail!("the pod watch ended with {} of {pods} bound", bound.len())
}

/// A simulated node: Ready, with room for far more than its share.
fn node(index: usize) -> Node {
    let name = format!("node-{index:05}");
    let value = json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/arch": "wasm32",
        }},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    serde_json::from_value(value).unwrap_or_default()
}

/// A pending pod as `scheduler_perf`'s default template has it: small
/// requests, no constraints.
fn pod(index: usize) -> Pod {
    let value = json!({
        "metadata": {"name": format!("pod-{index:06}"), "labels": {"app": "bench"}},
        "spec": {"containers": [{
            "name": "c",
            "image": IMAGE,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        }]},
    });
    serde_json::from_value(value).unwrap_or_default()
}

fn render(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "Machine: {}.\n\nOne `flotilla server` member (in-process, fsyncing) and its elected \
         scheduler. Nodes and pending pods are created first; the scheduler then binds every \
         pod through the `binding` subresource, each binding fenced by the scheduler's Lease \
         and written through raft-store. Rate: pods bound per second from the first binding to \
         the last. End to end: from the scheduler's start (including listing every pod into \
         its cache) to the last binding.\n\n\
         Peer: kube-scheduler is not packaged for this machine, so it is not run here; its \
         published `scheduler_perf` floor is about {KUBE_SCHEDULER_FLOOR:.0} pods/s at 5,000 \
         nodes, on larger machines. Target: at least {TARGET_PODS_PER_SECOND:.0} pods/s.\n\n\
         | nodes | pods | rate | vs kube-scheduler's floor | end to end | set-up | target |\n\
         |---|---|---|---|---|---|---|\n",
        report::machine_description()
    );
    for outcome in outcomes {
        let rate = outcome.rate();
        let verdict = if rate >= TARGET_PODS_PER_SECOND {
            "met".to_string()
        } else {
            format!("missed by {:.0} pods/s", TARGET_PODS_PER_SECOND - rate)
        };
        out.push_str(&format!(
            "| {} | {} | {rate:.0} pods/s | {:.1}x | {:.1} s ({:.0} pods/s) | {:.1} s | {verdict} |\n",
            outcome.nodes,
            outcome.pods,
            rate / KUBE_SCHEDULER_FLOOR,
            outcome.end_to_end.as_secs_f64(),
            outcome.end_to_end_rate(),
            outcome.setup.as_secs_f64(),
        ));
    }
    out
}
