//! `flotilla bench network`: what the pod network adds to a request (issue
//! 7, deliverable 9). The same `GET /` to a hello-http pod, measured four
//! ways:
//!
//! 1. pod to pod on one node: to the target's pod IP, served in-process;
//! 2. through a Service whose endpoint is on the same node, by its name;
//! 3. through a Service whose endpoint is on the other node, over the
//!    QUIC mesh with mutual TLS;
//! 4. the baseline: HTTP/1.1 with keep-alive over loopback TCP to a
//!    listener that hands each request to the target pod, a direct
//!    connection with no pod network in between.
//!
//! Two nodes run in this process, each a [`NodeRuntime`] with its own
//! [`PodNetwork`], their mesh endpoints on 127.0.0.1 and 127.0.0.2 with
//! node certificates from one cluster CA, as two agents would run them.
//! There is no API server: each routing table is fed the Node, Service and
//! EndpointSlice objects an agent's watches would deliver.
//!
//! Paths 1 to 3 enter the network where a guest's outgoing `wasi:http`
//! request does, `PodNetwork::send_from_pod` on behalf of a caller pod, so
//! they measure the network without a calling guest's own execution. One
//! closed-loop generator in this process drives all four; a path's "added"
//! latency is its percentile minus the baseline's at the same concurrency.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use clap::Args;
use flotilla_node::agent::KubeletTls;
use flotilla_node::net::{MESH_PORT_ANNOTATION, PodNetwork, SERVICE_NAME_LABEL};
use flotilla_node::{LocalSource, NodeConfig, NodeRuntime};
use flotilla_pki::ClusterCa;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tracing::Instrument;

use super::load::{self, LoadResult};
use super::node_http::PodListener;
use super::node_pods::{self, PodFactory, SERVICE_PORT};
use super::{process, report};

#[derive(Args, Debug)]
pub struct NetworkBenchArgs {
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of the same load before each measured run, not recorded
    /// (connections made, instance pools and caches warm).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Concurrent requests (closed loops) of the runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 50])]
    concurrency: Vec<usize>,
    /// Where the runtimes keep their data and artifacts (cleared first).
    #[arg(long, default_value = "target/bench-network")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// The issue's targets for the cross-node Service path; req/s is judged at
/// 50 concurrent requests.
const TARGET_CONCURRENCY: usize = 50;
const TARGET_ADDED_P50_US: i64 = 150;
const TARGET_REQUESTS_PER_SEC: f64 = 20_000.0;

const NAMESPACE: &str = "default";
/// The port the Services expose (the pods listen on [`SERVICE_PORT`]).
const CLUSTER_PORT: u16 = 80;

/// One node: its name, the address its mesh listens on (a loopback
/// address of its own), and the range its pods' addresses come from.
#[derive(Clone, Copy)]
struct NodeSpec {
    name: &'static str,
    address: &'static str,
    pod_cidr: &'static str,
}

const NODE_A: NodeSpec = NodeSpec {
    name: "bench-a",
    address: "127.0.0.1",
    pod_cidr: "10.244.1.0/24",
};
const NODE_B: NodeSpec = NodeSpec {
    name: "bench-b",
    address: "127.0.0.2",
    pod_cidr: "10.244.2.0/24",
};

/// The calling pod (on node A) and a target on each node, with the
/// addresses an agent's IPAM would give them. The targets' names have one
/// length, so both answer with bodies of one size.
const CALLER: (&str, &str) = ("caller", "10.244.1.2");
const TARGET_A: (&str, &str) = ("target-a", "10.244.1.3");
const TARGET_B: (&str, &str) = ("target-b", "10.244.2.3");
/// A Service in front of each target: (name, ClusterIP, target).
const LOCAL_SERVICE: (&str, &str, (&str, &str)) = ("hello-local", "10.96.0.10", TARGET_A);
const REMOTE_SERVICE: (&str, &str, (&str, &str)) = ("hello-remote", "10.96.0.11", TARGET_B);

/// The four ways the request goes, in the issue's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Pod,
    LocalService,
    RemoteService,
    Direct,
}

impl Route {
    const ALL: [Route; 4] = [
        Route::Pod,
        Route::LocalService,
        Route::RemoteService,
        Route::Direct,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Pod => "pod IP, same node (in-process)",
            Route::LocalService => "Service, same node",
            Route::RemoteService => "Service, across nodes (QUIC mesh, mTLS)",
            Route::Direct => "baseline: direct HTTP/1.1, loopback TCP",
        }
    }

    /// The URL a guest would call; the baseline has no pod network.
    fn url(self) -> Option<String> {
        match self {
            Route::Pod => Some(format!("http://{}:{SERVICE_PORT}/", TARGET_A.1)),
            Route::LocalService => Some(format!("http://{}/", LOCAL_SERVICE.0)),
            Route::RemoteService => Some(format!("http://{}/", REMOTE_SERVICE.0)),
            Route::Direct => None,
        }
    }

    /// The pod that must answer.
    fn target(self) -> &'static str {
        match self {
            Route::RemoteService => TARGET_B.0,
            _ => TARGET_A.0,
        }
    }
}

pub async fn run(args: NetworkBenchArgs) -> Result<()> {
    ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency needs counts of at least 1"
    );
    let (repo_root, module) = process::example_module("hello-http")?;
    let factory = PodFactory::new(repo_root, &module)?;
    let data_dir = process::fresh_dir(&args.data_dir)?;
    let bench = Bench::start(&factory, &data_dir).await?;
    let mut rows = Vec::new();
    for &concurrency in &args.concurrency {
        for route in Route::ALL {
            let result = bench.measure(route, concurrency, &args).await?;
            rows.push(Row {
                route,
                concurrency,
                result,
            });
        }
    }
    bench.stop().await?;

    let body = render(&args, &rows);
    println!("{body}");
    report::write_section(
        &args.output,
        "## Network: pod to pod, Service, across nodes, vs direct HTTP",
        &body,
    )?;
    println!("written to {}", args.output.display());
    Ok(())
}

/// A node of the benchmark: a runtime and its pod network, in the mesh.
struct BenchNode {
    spec: NodeSpec,
    runtime: NodeRuntime,
    network: PodNetwork,
    mesh: SocketAddr,
}

impl BenchNode {
    /// Wires the runtime and network as an agent does, and joins the mesh
    /// with a node certificate from `ca`.
    fn start(spec: NodeSpec, data_dir: &Path, ca: &ClusterCa) -> Result<Self> {
        let mut config = NodeConfig::new(data_dir.join(spec.name));
        // One artifact cache for both nodes, so the module compiles once.
        config.engine.cache_dir = data_dir.join("artifacts");
        let network = PodNetwork::new(spec.name);
        let runtime = NodeRuntime::with_outgoing_http(
            config,
            Arc::new(LocalSource::files_only()),
            Arc::new(network.clone()),
        )
        .context("starting the runtime")?;
        network.attach_runtime(&runtime);
        let ip: IpAddr = spec.address.parse()?;
        let issued = ca.issue_in_group(
            &format!("system:node:{}", spec.name),
            Some("system:nodes"),
            &[ip.to_string(), spec.name.to_owned()],
        )?;
        let tls = KubeletTls::new(&issued)?;
        let mesh = network.start_mesh(SocketAddr::new(ip, 0), tls.mesh_tls()?)?;
        Ok(Self {
            spec,
            runtime,
            network,
            mesh,
        })
    }

    /// The Node object the API would show for it: its address, mesh port
    /// and pod range are what the other node routes by.
    fn object(&self) -> Result<Node> {
        Ok(serde_json::from_value(json!({
            "metadata": {
                "name": self.spec.name,
                "annotations": {MESH_PORT_ANNOTATION: self.mesh.port().to_string()},
            },
            "spec": {"podCIDR": self.spec.pod_cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": self.spec.address}]},
        }))?)
    }

    /// Starts a hello-http pod named `name` at `ip`; returns its uid.
    async fn start_pod(&self, factory: &PodFactory, (name, ip): (&str, &str)) -> Result<String> {
        let mut pod = factory.pod(name)?;
        // The agent's IPAM would give the address; the runtime maps it to
        // the pod for the network.
        pod.status = Some(PodStatus {
            pod_ip: Some(ip.to_owned()),
            ..PodStatus::default()
        });
        let (handle, _) = node_pods::start_pod(&self.runtime, &pod).await?;
        Ok(handle.uid().to_owned())
    }
}

/// A Service of one port, and the EndpointSlice listing its one pod.
fn service_objects(
    (name, cluster_ip, (_, pod_ip)): (&str, &str, (&str, &str)),
    node: &str,
) -> Result<(Service, EndpointSlice)> {
    let service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": CLUSTER_PORT, "targetPort": SERVICE_PORT}]},
    }))?;
    let slice = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-1"),
            "namespace": NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: name},
        },
        "addressType": "IPv4",
        "ports": [{"port": SERVICE_PORT}],
        "endpoints": [{"addresses": [pod_ip], "nodeName": node, "conditions": {"ready": true}}],
    }))?;
    Ok((service, slice))
}

/// Both nodes with their pods, the baseline's listener, and what each
/// route needs.
struct Bench {
    a: BenchNode,
    b: BenchNode,
    caller_uid: Arc<str>,
    /// Serves node A's target pod over loopback TCP.
    listener: PodListener,
}

impl Bench {
    async fn start(factory: &PodFactory, data_dir: &Path) -> Result<Self> {
        let ca = ClusterCa::generate()?;
        let a = BenchNode::start(NODE_A, data_dir, &ca)?;
        let b = BenchNode::start(NODE_B, data_dir, &ca)?;
        let nodes = [a.object()?, b.object()?];
        let services = [
            service_objects(LOCAL_SERVICE, NODE_A.name)?,
            service_objects(REMOTE_SERVICE, NODE_B.name)?,
        ];
        for table in [a.network.table(), b.network.table()] {
            for node in &nodes {
                table.upsert_node(node);
            }
            for (service, slice) in &services {
                table.upsert_service(service);
                table.upsert_slice(slice);
            }
        }
        let caller_uid = a.start_pod(factory, CALLER).await?.into();
        let target_a = a.start_pod(factory, TARGET_A).await?;
        b.start_pod(factory, TARGET_B).await?;
        let listener = PodListener::start(a.runtime.clone(), target_a).await?;
        let bench = Self {
            a,
            b,
            caller_uid,
            listener,
        };
        bench.check().await?;
        Ok(bench)
    }

    /// One request along each route, so a route that reaches the wrong
    /// pod (or none) fails the run instead of being measured.
    async fn check(&self) -> Result<()> {
        for route in Route::ALL {
            let body = self.caller(route, 1).await?.get(0).await?;
            let body = String::from_utf8_lossy(&body);
            eprintln!("{}: {}", route.label(), body.trim_end());
            ensure!(
                body.contains(&format!("pod={} ", route.target())),
                "{} reached the wrong pod: {body}",
                route.label()
            );
        }
        Ok(())
    }

    async fn caller(&self, route: Route, concurrency: usize) -> Result<Caller> {
        Ok(match route.url() {
            Some(url) => Caller::Network {
                network: self.a.network.clone(),
                pod_uid: self.caller_uid.clone(),
                uri: url.parse()?,
            },
            None => Caller::Direct(Arc::new(
                Loopback::connect(self.listener.address, concurrency).await?,
            )),
        })
    }

    /// Warms up, then measures `route` at `concurrency`. The mesh counters
    /// confirm where the requests went: all across for the cross-node
    /// Service, none for the others.
    async fn measure(
        &self,
        route: Route,
        concurrency: usize,
        args: &NetworkBenchArgs,
    ) -> Result<LoadResult> {
        let caller = self.caller(route, concurrency).await?;
        let run = |seconds: u64| {
            let caller = caller.clone();
            load::closed_loop(
                concurrency,
                Duration::from_secs(seconds),
                move |client, _| {
                    let caller = caller.clone();
                    async move { caller.get(client).await.map(drop) }
                },
            )
        };
        let span = tracing::info_span!("measure", route = ?route, concurrency);
        let (_, mesh_before, _) = self.a.network.metrics().requests();
        run(args.warmup_seconds).instrument(span.clone()).await?;
        let result = run(args.seconds).instrument(span).await?;
        let (_, mesh_after, _) = self.a.network.metrics().requests();
        let over_mesh = mesh_after - mesh_before;
        if route == Route::RemoteService {
            ensure!(
                over_mesh >= result.operations,
                "only {over_mesh} of {} requests went over the mesh",
                result.operations
            );
        } else {
            ensure!(over_mesh == 0, "{over_mesh} requests went over the mesh");
        }
        eprintln!(
            "{:>42} x{concurrency}: {:.0} req/s, p50 {} us, p99 {} us, {} failed",
            route.label(),
            result.ops_per_sec(),
            result.p50_us,
            result.p99_us,
            result.errors
        );
        Ok(result)
    }

    async fn stop(self) -> Result<()> {
        drop(self.listener);
        for node in [&self.a, &self.b] {
            node_pods::remove_all(&node.runtime, &node.runtime.pod_uids()).await?;
            node.network.close();
        }
        Ok(())
    }
}

/// Sends one `GET /` along a route. Cheap to clone.
#[derive(Clone)]
enum Caller {
    /// Into node A's pod network as the caller pod, where its guest's
    /// outgoing request would enter.
    Network {
        network: PodNetwork,
        pod_uid: Arc<str>,
        uri: http::Uri,
    },
    /// Over the baseline's keep-alive connections, one per client.
    Direct(Arc<Loopback>),
}

impl Caller {
    /// The body of a 200 response; any other answer is an error.
    async fn get(&self, client: usize) -> Result<Bytes> {
        match self {
            Caller::Network {
                network,
                pod_uid,
                uri,
            } => {
                let request = http::Request::get(uri.clone())
                    .body(flotilla_node::request_body(Empty::<Bytes>::new()))?;
                read_ok(network.send_from_pod(pod_uid, request, None).await?).await
            }
            Caller::Direct(loopback) => loopback.get(client).await,
        }
    }
}

/// HTTP/1.1 connections to one address, kept alive, one per client, as
/// `hey` keeps them in the node benchmark.
struct Loopback {
    host: String,
    connections: Vec<tokio::sync::Mutex<SendRequest<Empty<Bytes>>>>,
}

impl Loopback {
    async fn connect(address: SocketAddr, count: usize) -> Result<Self> {
        ensure!(count > 0, "no connections to make");
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let stream = tokio::net::TcpStream::connect(address).await?;
            // As the listener does: small requests go out at once.
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "baseline connection ended");
                }
            });
            connections.push(tokio::sync::Mutex::new(sender));
        }
        Ok(Self {
            host: address.to_string(),
            connections,
        })
    }

    async fn get(&self, client: usize) -> Result<Bytes> {
        // Each client has its own connection, so the lock is never contended.
        let mut sender = self.connections[client % self.connections.len()]
            .lock()
            .await;
        sender.ready().await?;
        let request = http::Request::get("/")
            .header(http::header::HOST, &self.host)
            .body(Empty::new())?;
        read_ok(sender.send_request(request).await?).await
    }
}

/// The whole body of a 200 response.
async fn read_ok<B>(response: http::Response<B>) -> Result<Bytes>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (status, body) = node_pods::read_response(response).await?;
    ensure!(
        status == http::StatusCode::OK,
        "answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// One route at one concurrency.
struct Row {
    route: Route,
    concurrency: usize,
    result: LoadResult,
}

fn render(args: &NetworkBenchArgs, rows: &[Row]) -> String {
    let mut out = format!(
        "Run with `cargo run --release --features bench -- bench network` on {}.\n\
         Two nodes in one process, each a `NodeRuntime` with its own `PodNetwork`, their QUIC \
         mesh endpoints on 127.0.0.1 and 127.0.0.2 with node certificates from one cluster CA \
         (mutual TLS); the routing tables are fed the Node, Service and EndpointSlice objects \
         an agent's watches would deliver (no API server). Every path ends at a hello-http pod \
         (the Deployment template of its `k8s.yaml`, one fresh instance per request) \
         answering `GET /` with its one-line greeting:\n\n\
         - *pod IP, same node*: `PodNetwork::send_from_pod` as a caller pod on node A, to \
         `http://{}:{SERVICE_PORT}/`, a pod on node A: routed and served in-process, no socket.\n\
         - *Service, same node*: the same, to `http://{}/`, a ClusterIP Service whose one \
         endpoint is that pod: adds name resolution and endpoint choice.\n\
         - *Service, across nodes*: to `http://{}/`, whose one endpoint is a pod on node B: \
         adds a new QUIC stream per request on the mesh connection from A to B (the connection \
         is made once and reused), HTTP/1.1 over that stream, and B's side of it.\n\
         - *baseline*: HTTP/1.1 with keep-alive (one connection per client) over loopback TCP to \
         a hyper listener that hands each request to node A's pod (`NodeRuntime::serve_http`): \
         the same target reached directly, with no pod network.\n\n\
         `send_from_pod` is where a guest's outgoing `wasi:http` request enters the network, so \
         the routed paths leave out a calling guest's own execution and its `wasi:http` \
         conversions; they include building and reading the request and response in the \
         benchmark, as the baseline includes its client's HTTP/1.1. One closed-loop generator \
         in this process drives all four paths (each client sends its next request when the \
         previous one is answered), {} s per run after {} s of warm-up, on the same 2 cores as \
         both nodes. Percentiles come from an HDR histogram (3 significant digits); the mean \
         is concurrent / req/s (Little's law). Added = the path's figure minus the baseline's \
         at the same concurrency; negative means faster than the direct connection.\n\n\
         | path | concurrent | req/s | mean | p50 | p99 | added mean | added p50 | added p99 | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        report::machine_description(),
        TARGET_A.1,
        LOCAL_SERVICE.0,
        REMOTE_SERVICE.0,
        args.seconds,
        args.warmup_seconds,
    );
    for row in rows {
        let [mean, p50, p99] = latencies(row);
        let added = match baseline(rows, row.concurrency) {
            Some(base) if row.route != Route::Direct => {
                let [base_mean, base_p50, base_p99] = latencies(base);
                [mean - base_mean, p50 - base_p50, p99 - base_p99].map(|us| format!("{us:+} µs"))
            }
            _ => Default::default(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {mean} µs | {p50} µs | {p99} µs | {} | {} | {} | {} |\n",
            row.route.label(),
            row.concurrency,
            row.result.ops_per_sec(),
            added[0],
            added[1],
            added[2],
            row.result.errors,
        ));
    }
    out.push_str(&targets(rows));
    out.push_str(PEERS);
    out
}

/// A run's mean, p50 and p99 latency in µs. The mean follows from Little's
/// law (a closed loop keeps `concurrency` requests in flight): it shows
/// what the percentiles hide when a few requests wait much longer than the
/// rest.
fn latencies(row: &Row) -> [i64; 3] {
    let rate = row.result.ops_per_sec().max(f64::MIN_POSITIVE);
    let mean_us = row.concurrency as f64 * 1_000_000.0 / rate;
    [
        mean_us.round() as i64,
        row.result.p50_us as i64,
        row.result.p99_us as i64,
    ]
}

fn baseline(rows: &[Row], concurrency: usize) -> Option<&Row> {
    rows.iter()
        .find(|row| row.route == Route::Direct && row.concurrency == concurrency)
}

/// The issue's targets against the cross-node rows: added p50 at each
/// concurrency (unloaded at 1, loaded at 50), req/s at 50.
fn targets(rows: &[Row]) -> String {
    let mut out = "\nTargets (issue 7), for the cross-node Service path:\n\n\
                   | target | concurrent | measured | verdict |\n|---|---|---|---|\n"
        .to_owned();
    for row in rows.iter().filter(|row| row.route == Route::RemoteService) {
        let Some(base) = baseline(rows, row.concurrency) else {
            continue;
        };
        let added = latencies(row)[1] - latencies(base)[1];
        let verdict = if added < TARGET_ADDED_P50_US {
            "met".to_owned()
        } else {
            format!("missed by {} µs", added - TARGET_ADDED_P50_US)
        };
        out.push_str(&format!(
            "| added p50 under {TARGET_ADDED_P50_US} µs | {} | {added:+} µs | {verdict} |\n",
            row.concurrency
        ));
        if row.concurrency == TARGET_CONCURRENCY {
            let rate = row.result.ops_per_sec();
            let verdict = if rate >= TARGET_REQUESTS_PER_SEC {
                "met".to_owned()
            } else {
                format!(
                    "missed by {:.0} req/s ({:.0}% of it)",
                    TARGET_REQUESTS_PER_SEC - rate,
                    100.0 * rate / TARGET_REQUESTS_PER_SEC
                )
            };
            out.push_str(&format!(
                "| at least {TARGET_REQUESTS_PER_SEC:.0} req/s | {} | {rate:.0} req/s | {verdict} |\n",
                row.concurrency
            ));
        }
    }
    out
}

/// Published per-hop overheads of Linkerd and Istio: they cannot run here
/// (no images, no network), so their own numbers stand beside ours, with
/// the conditions they were measured under.
const PEERS: &str = "\nPeers, published (not run here: no container images or network on this \
machine). Their conditions differ from these in kind: fixed request rates well below saturation, \
real networks between many-core machines, sidecar proxies in separate processes; this run is \
closed-loop on loopback with both nodes and the load generator on 2 cores. Read them as the \
order of magnitude a mesh hop costs, not as a ratio.\n\n\
| mesh | published added latency | conditions | source |\n|---|---|---|---|\n\
| Istio 1.12.3 (Envoy sidecars) | p90 +2.65 ms | Istio's load-test mesh: 1,000 services, \
2,000 sidecars, 70,000 req/s mesh-wide | <https://istio.io/v1.12/docs/ops/deployment/performance-and-scalability/> |\n\
| Istio 1.12.3, client and server sidecars together | p90 +1.7 ms, p99 +2.7 ms over the \
baseline data plane | default configuration (telemetry v2); istio.io states its latency figures \
come from Istio's benchmarks: HTTP/1.1, 1 kB payload, 1,000 req/s, 16 client connections, \
2 proxy workers, mutual TLS | Red Hat's Service Mesh documentation quoting them: \
<https://docs.redhat.com/ko/documentation/openshift_container_platform/4.13/html/service_mesh/_additional-latency> |\n\
| Linkerd 2.11.1 | median +6 ms, max +42 ms (over 6 ms and 84 ms without a mesh) | \
end to end through a small microservice application under Kinvolk's benchmark harness, \
2,000 req/s sustained for 10-minute runs, mTLS on, bare-metal 24-core Xeon 4214 nodes, \
Kubernetes 1.21.4; the post adds that one Linkerd proxy's median latency is under a \
millisecond for most traffic | <https://linkerd.io/2021/11/29/linkerd-vs-istio-benchmarks-2021/> |\n\
| Istio 1.12.0 (\"minimal\" config) | median +17 ms, max about +350 ms | the same run | \
the same post |\n";
