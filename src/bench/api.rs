//! `flotilla bench api`: three `flotilla server` processes (each a store
//! member and an API server) under the load issue 4 names: 10,000 stored
//! ConfigMaps, 1,000 open watches, 64 clients doing get, list (500 items),
//! create and update; then the delay for one write to reach all the
//! watches.
//!
//! The peer is etcd 3.4 (three members, the store under kube-apiserver)
//! doing the same reads and writes on the same keys and bytes, so the
//! table shows what the API layer costs above a bare store. Kubernetes' own
//! API SLO (p99 under 1 s for single-object and mutating calls) is the
//! bar; the target is p99 under 10 ms for get and create.
//!
//! Get and create are also measured as a tenant whose rights come from a
//! RoleBinding (`Impersonate-User` on the same plain-HTTP connections), so
//! that RBAC is decided on every call, interleaved request by request with
//! the same calls as the superuser, whose requests authorization lets
//! through at once: the cost of authorization, with whatever else changes
//! during the run falling on both alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;

use super::etcd::{EtcdClient, EtcdCluster, find_etcd};
use super::load::{self, KvTarget, LoadResult};
use super::process::{self, Processes};
use super::report;
use super::store::{etcd_clients, free_tcp_port, free_udp_port, micros};

#[derive(Args, Debug)]
pub struct ApiBenchArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// ConfigMaps stored before measuring.
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    /// Watches held open on the API servers throughout.
    #[arg(long, default_value_t = 1_000)]
    watches: usize,
    /// Concurrent clients of each measurement.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Writes whose delivery to every watch is timed.
    #[arg(long, default_value_t = 100)]
    fanout_events: usize,
    /// Where both systems keep their data (a real disk: both fsync).
    #[arg(long, default_value = "target/bench-api")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// Items per list call, as the issue asks.
const LIST_LIMIT: i64 = 500;
/// The namespace the load works in, and the one the watches follow.
const NAMESPACE: &str = "bench";
const FANOUT_NAMESPACE: &str = "fanout";
/// How long servers may take to answer their first request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write may take to reach every watch before the run fails.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Payload of each ConfigMap, so that objects weigh what small real ones do.
const PAYLOAD_BYTES: usize = 1_024;
/// The user whose calls RBAC decides: it may work with ConfigMaps in the
/// load's namespace through a RoleBinding, and nothing else.
const TENANT: &str = "bench-tenant";
/// Other tenants' namespaces, each with its own Role and RoleBinding, so
/// the index authorization reads holds a cluster's worth of bindings.
const OTHER_TENANTS: usize = 200;

/// One of the measured calls.
#[derive(Clone, Copy, Debug)]
enum Call {
    Get,
    List,
    Create,
    Update,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::Get => "get",
            Call::List => "list (500 items)",
            Call::Create => "create",
            Call::Update => "update",
        }
    }
}

pub async fn run(args: ApiBenchArgs) -> Result<()> {
    let etcd = find_etcd()?;
    let data_dir = process::fresh_dir(&args.data_dir)?;

    let servers = Servers::start(&data_dir.join("flotilla"))?;
    let api = Api::connect(&servers.api_addresses, args.clients).await?;
    for namespace in [NAMESPACE, FANOUT_NAMESPACE] {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        api.request(0, "POST", "/api/v1/namespaces", Some(body.to_string()))
            .await?;
    }
    let etcd_addresses: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| Ok((free_tcp_port()?, free_tcp_port()?)))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(data_dir.join("etcd"))?;
    let etcd_cluster = EtcdCluster::start(&etcd, &data_dir.join("etcd"), &etcd_addresses)?;
    let etcd = etcd_clients(&etcd_cluster.client_addresses).await?;

    grant_tenants(&api).await?;
    eprintln!("storing {} ConfigMaps in each system", args.objects);
    preload(&api, &etcd, args.objects, args.clients).await?;
    eprintln!("opening {} watches", args.watches);
    let watches = Watches::open(&servers.api_addresses, args.watches).await?;

    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    let mut authorized = Vec::new();
    let tenant = api.as_user(TENANT);
    for call in [Call::Get, Call::List, Call::Create, Call::Update] {
        let ours = measure_api(&api, call, args.objects, args.clients, duration).await?;
        if matches!(call, Call::Get | Call::Create) {
            // The superuser's and the tenant's requests interleaved on the
            // same clients, so that what changes with time (a store
            // growing with every create, a noisy disk) falls on both alike.
            let (superuser, decided) = measure_interleaved(
                &api,
                &tenant,
                call,
                args.objects,
                args.clients,
                duration * 2,
            )
            .await?;
            authorized.push((call, superuser, decided));
        }
        let theirs = measure_etcd(&etcd, call, args.objects, args.clients, duration).await?;
        rows.push((call, ours, theirs));
    }
    let fanout = watches.fanout(&api, args.fanout_events).await?;

    drop(etcd_cluster);
    drop(servers);
    let body = render(&args, &rows, &fanout) + &render_authorization(&authorized);
    println!("{body}");
    report::write_section(
        &args.output,
        "## API: Kubernetes API on raft-store vs etcd 3.4",
        &body,
    )?;
    println!("written to {}", args.output.display());
    Ok(())
}

/// The tenant's Role and RoleBinding in the load's namespace, and those of
/// [`OTHER_TENANTS`] others in namespaces of their own.
async fn grant_tenants(api: &Api) -> Result<()> {
    eprintln!("binding {} tenants", OTHER_TENANTS + 1);
    let grant = |namespace: &str, user: &str| {
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "configmaps", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "verbs": ["get", "list", "watch", "create", "update", "delete"]}],
        });
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "configmaps", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        });
        (role.to_string(), binding.to_string())
    };
    let rbac = |namespace: &str, plural: &str| {
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}")
    };
    for tenant in 0..OTHER_TENANTS {
        let namespace = format!("tenant-{tenant}");
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        api.request(0, "POST", "/api/v1/namespaces", Some(body.to_string()))
            .await?;
        let (role, binding) = grant(&namespace, &format!("user-{tenant}"));
        api.request(0, "POST", &rbac(&namespace, "roles"), Some(role))
            .await?;
        api.request(0, "POST", &rbac(&namespace, "rolebindings"), Some(binding))
            .await?;
    }
    let (role, binding) = grant(NAMESPACE, TENANT);
    api.request(0, "POST", &rbac(NAMESPACE, "roles"), Some(role))
        .await?;
    api.request(0, "POST", &rbac(NAMESPACE, "rolebindings"), Some(binding))
        .await?;
    Ok(())
}

fn object_name(index: u64) -> String {
    format!("cm-{index:06}")
}

fn config_map(namespace: &str, name: &str, round: u64) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "data": {"round": round.to_string(), "payload": "x".repeat(PAYLOAD_BYTES)},
    })
    .to_string()
}

fn etcd_key(name: &str) -> Vec<u8> {
    format!("/registry/configmaps/{NAMESPACE}/{name}").into_bytes()
}

async fn preload(api: &Api, etcd: &[EtcdClient], objects: u64, clients: usize) -> Result<()> {
    let per_client = objects.div_ceil(clients as u64);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let api = api.clone();
        let etcd = etcd[client % etcd.len()].clone();
        tasks.push(tokio::spawn(async move {
            let first = client as u64 * per_client;
            for index in first..(first + per_client).min(objects) {
                let name = object_name(index);
                let body = config_map(NAMESPACE, &name, 0);
                let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
                api.request(client, "POST", &path, Some(body.clone()))
                    .await?;
                etcd.put(etcd_key(&name), body.into_bytes()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Measurements of the API so far in this run.
static MEASUREMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn measure_api(
    api: &Api,
    call: Call,
    objects: u64,
    clients: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let api = api.clone();
    let round = MEASUREMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = load::closed_loop(clients, duration, move |client, index| {
        let api = api.clone();
        async move {
            let (method, path, body) = api_call(call, objects, round, client, index);
            api.request(client, method, &path, body).await.map(drop)
        }
    })
    .await?;
    report_line("flotilla", call, clients, &result);
    Ok(result)
}

/// `call` as `api`'s user and as `tenant`, each client alternating between
/// the two request by request: (the superuser's result, the tenant's).
async fn measure_interleaved(
    api: &Api,
    tenant: &Api,
    call: Call,
    objects: u64,
    clients: usize,
    duration: Duration,
) -> Result<(LoadResult, LoadResult)> {
    let users = [api.clone(), tenant.clone()];
    let round = MEASUREMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let histograms = Arc::new([
        Mutex::new(load::new_histogram()?),
        Mutex::new(load::new_histogram()?),
    ]);
    let recorded = histograms.clone();
    let started = Instant::now();
    let both = load::closed_loop(clients, duration, move |client, index| {
        let users = users.clone();
        let recorded = recorded.clone();
        async move {
            let who = usize::from(index % 2 == 1);
            let (method, path, body) = api_call(call, objects, round, client, index);
            let sent = Instant::now();
            users[who].request(client, method, &path, body).await?;
            let latency_us = sent.elapsed().as_micros() as u64;
            recorded[who]
                .lock()
                .map_err(|_| anyhow::anyhow!("a client panicked while recording"))?
                .saturating_record(latency_us.clamp(1, load::LATENCY_MAX_US));
            Ok(())
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let result = |who: usize| -> Result<LoadResult> {
        let histogram = histograms[who]
            .lock()
            .map_err(|_| anyhow::anyhow!("a client panicked while recording"))?;
        Ok(LoadResult {
            operations: histogram.len(),
            // Failures are not told apart by user; both count them all.
            errors: both.errors,
            elapsed,
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
        })
    };
    let (superuser, decided) = (result(0)?, result(1)?);
    report_line(
        "flotilla (superuser, interleaved)",
        call,
        clients,
        &superuser,
    );
    report_line("flotilla (tenant, interleaved)", call, clients, &decided);
    Ok((superuser, decided))
}

/// One request of `call`: its method, path and body. A created object gets
/// a name nobody used: each measurement (`round`) and each client count
/// their own.
fn api_call(
    call: Call,
    objects: u64,
    round: u64,
    client: usize,
    index: u64,
) -> (&'static str, String, Option<String>) {
    let collection = format!("/api/v1/namespaces/{NAMESPACE}/configmaps");
    let object = format!("{collection}/{}", object_name(index % objects));
    match call {
        Call::Get => ("GET", object, None),
        Call::List => ("GET", format!("{collection}?limit={LIST_LIMIT}"), None),
        Call::Create => {
            let name = format!("new-{round}-{client}-{index}");
            ("POST", collection, Some(config_map(NAMESPACE, &name, 0)))
        }
        Call::Update => {
            let name = object_name(index % objects);
            ("PUT", object, Some(config_map(NAMESPACE, &name, index)))
        }
    }
}

async fn measure_etcd(
    etcd: &[EtcdClient],
    call: Call,
    objects: u64,
    clients: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let etcd = etcd.to_vec();
    let prefix = format!("/registry/configmaps/{NAMESPACE}/").into_bytes();
    let result = load::closed_loop(clients, duration, move |client, index| {
        let etcd = etcd[client % etcd.len()].clone();
        let prefix = prefix.clone();
        async move {
            let name = object_name(index % objects);
            match call {
                Call::Get => etcd.get(etcd_key(&name)).await.map(drop),
                Call::List => etcd.range_prefix(&prefix, LIST_LIMIT).await.map(drop),
                Call::Create => {
                    let name = format!("new-{client}-{index}");
                    let body = config_map(NAMESPACE, &name, 0);
                    etcd.put(etcd_key(&name), body.into_bytes()).await
                }
                Call::Update => {
                    let body = config_map(NAMESPACE, &name, index);
                    etcd.put(etcd_key(&name), body.into_bytes()).await
                }
            }
        }
    })
    .await?;
    report_line("etcd", call, clients, &result);
    Ok(result)
}

fn report_line(system: &str, call: Call, clients: usize, result: &LoadResult) {
    eprintln!(
        "{system:>8} {} x{clients}: {:.0} ops/s, p50 {} us, p99 {} us, {} errors",
        call.label(),
        result.ops_per_sec(),
        result.p50_us,
        result.p99_us,
        result.errors
    );
}

/// HTTP/1.1 connections to the API servers, one per client, spread over
/// the servers as a load balancer would.
#[derive(Clone)]
struct Api {
    connections: Arc<Vec<AsyncMutex<SendRequest<Full<Bytes>>>>>,
    addresses: Arc<Vec<SocketAddr>>,
    /// Whom the requests impersonate; none: the superuser plain HTTP on
    /// loopback is.
    user: Option<Arc<str>>,
}

impl Api {
    async fn connect(addresses: &[SocketAddr], clients: usize) -> Result<Self> {
        let started = Instant::now();
        for address in addresses {
            loop {
                match probe_ready(*address).await {
                    Ok(()) => break,
                    Err(error) if started.elapsed() > READY_TIMEOUT => {
                        bail!("the API server at {address} is not ready: {error:#}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        let mut connections = Vec::with_capacity(clients);
        for client in 0..clients {
            let address = addresses[client % addresses.len()];
            connections.push(AsyncMutex::new(open(address).await?));
        }
        Ok(Api {
            connections: Arc::new(connections),
            addresses: Arc::new(addresses.to_vec()),
            user: None,
        })
    }

    /// The same connections, each request made as `user`.
    fn as_user(&self, user: &str) -> Self {
        Api {
            user: Some(Arc::from(user)),
            ..self.clone()
        }
    }

    /// Sends one request on client `client`'s connection and returns the
    /// body; any answer but 2xx is an error.
    async fn request(
        &self,
        client: usize,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes> {
        let slot = &self.connections[client % self.connections.len()];
        let mut connection = slot.lock().await;
        // A connection the server closed (or left unusable) is replaced.
        if connection.ready().await.is_err() {
            let address = self.addresses[client % self.addresses.len()];
            *connection = open(address).await?;
        }
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "flotilla")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(user) = &self.user {
            request = request.header("Impersonate-User", user.as_ref());
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}

async fn open(address: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `/readyz` answers once the server serves, and a namespace list once its
/// store has a leader.
async fn probe_ready(address: SocketAddr) -> Result<()> {
    let mut connection = open(address).await?;
    for path in ["/readyz", "/api/v1/namespaces"] {
        let request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, "flotilla")
            .body(Full::new(Bytes::new()))?;
        let status = connection.send_request(request).await?.status();
        if !status.is_success() {
            bail!("{path}: {status}");
        }
    }
    Ok(())
}

/// Watches on the fan-out namespace, spread over the servers, each noting
/// when it saw each object.
struct Watches {
    count: usize,
    /// Per fan-out object (by index): arrival times at the watches so far.
    arrivals: Arc<Mutex<Vec<Vec<Instant>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the fan-out measurement found: for each write, the delay until the
/// median and until the last watch saw it.
struct Fanout {
    events: usize,
    watches: usize,
    median: LoadResult,
    last: LoadResult,
}

impl Watches {
    async fn open(addresses: &[SocketAddr], count: usize) -> Result<Self> {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::with_capacity(count);
        let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(count.max(1));
        for index in 0..count {
            let address = addresses[index % addresses.len()];
            let arrivals = arrivals.clone();
            let opened = opened_tx.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = watch(address, arrivals, opened.clone()).await;
                if let Err(error) = outcome {
                    let _ = opened.send(Err(error)).await;
                }
            }));
        }
        drop(opened_tx);
        for _ in 0..count {
            match opened_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(error)) => return Err(error.context("opening a watch")),
                None => bail!("a watch ended before it opened"),
            }
        }
        Ok(Watches {
            count,
            arrivals,
            tasks,
        })
    }

    /// Creates `events` objects one after another; each time, waits until
    /// every watch has seen it.
    async fn fanout(&self, api: &Api, events: usize) -> Result<Fanout> {
        let mut median = load::new_histogram()?;
        let mut last = load::new_histogram()?;
        let started = Instant::now();
        let path = format!("/api/v1/namespaces/{FANOUT_NAMESPACE}/configmaps");
        for event in 0..events {
            let name = format!("fan-{event}");
            self.lock()?.push(Vec::with_capacity(self.count));
            let sent = Instant::now();
            api.request(
                0,
                "POST",
                &path,
                Some(config_map(FANOUT_NAMESPACE, &name, 0)),
            )
            .await?;
            let mut arrivals = loop {
                let seen = self.lock()?.get(event).cloned().unwrap_or_default();
                if seen.len() >= self.count {
                    break seen;
                }
                if sent.elapsed() > FANOUT_TIMEOUT {
                    bail!(
                        "only {} of {} watches saw {name} within {FANOUT_TIMEOUT:?}",
                        seen.len(),
                        self.count
                    );
                }
                // Polling costs the servers nothing: the arrivals are local.
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            arrivals.sort();
            let delay = |at: &Instant| at.saturating_duration_since(sent).as_micros() as u64;
            let record = |histogram: &mut hdrhistogram::Histogram<u64>, us: u64| {
                histogram.saturating_record(us.clamp(1, load::LATENCY_MAX_US))
            };
            record(&mut median, delay(&arrivals[arrivals.len() / 2]));
            record(&mut last, delay(&arrivals[arrivals.len() - 1]));
        }
        let summary = |histogram: &hdrhistogram::Histogram<u64>| LoadResult {
            operations: histogram.len(),
            errors: 0,
            elapsed: started.elapsed(),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
        };
        let fanout = Fanout {
            events,
            watches: self.count,
            median: summary(&median),
            last: summary(&last),
        };
        eprintln!(
            "fan-out to {} watches: median watch p50 {} us, last watch p50 {} us p99 {} us",
            self.count, fanout.median.p50_us, fanout.last.p50_us, fanout.last.p99_us
        );
        Ok(fanout)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<Vec<Instant>>>> {
        self.arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("a watch task panicked"))
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One watch: reads the event stream and notes when each `fan-N` object
/// arrives.
async fn watch(
    address: SocketAddr,
    arrivals: Arc<Mutex<Vec<Vec<Instant>>>>,
    opened: tokio::sync::mpsc::Sender<Result<()>>,
) -> Result<()> {
    let mut connection = open(address).await?;
    let request = hyper::Request::builder()
        .uri(format!(
            "/api/v1/namespaces/{FANOUT_NAMESPACE}/configmaps?watch=true"
        ))
        .header(hyper::header::HOST, "flotilla")
        .body(Full::new(Bytes::new()))?;
    let response = connection.send_request(request).await?;
    if !response.status().is_success() {
        bail!("watch: {}", response.status());
    }
    opened.send(Ok(())).await?;
    drop(opened);
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let arrived = Instant::now();
            let event: serde_json::Value = serde_json::from_slice(&line)?;
            let index = event["object"]["metadata"]["name"]
                .as_str()
                .and_then(|name| name.strip_prefix("fan-"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(index) = index {
                let mut arrivals = arrivals
                    .lock()
                    .map_err(|_| anyhow::anyhow!("arrivals poisoned"))?;
                if let Some(seen) = arrivals.get_mut(index) {
                    seen.push(arrived);
                }
            }
        }
    }
    bail!("the watch stream ended")
}

/// Three `flotilla server` processes on loopback, plain HTTP, one cluster,
/// killed when dropped.
struct Servers {
    _processes: Processes,
    api_addresses: Vec<SocketAddr>,
}

impl Servers {
    fn start(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let exe = std::env::current_exe().context("finding the flotilla binary")?;
        // Members trust each other through one cluster CA, made here and
        // copied into each server's data directory before it starts.
        let ca = root.join("ca");
        flotilla_pki::ClusterCa::ensure(&ca)?;
        let store: Vec<SocketAddr> = (0..3).map(|_| free_udp_port()).collect::<Result<_>>()?;
        let api_addresses: Vec<SocketAddr> =
            (0..3).map(|_| free_tcp_port()).collect::<Result<_>>()?;
        let mut processes = Processes::default();
        for (index, (store_address, api_address)) in store.iter().zip(&api_addresses).enumerate() {
            let id = index as u64 + 1;
            let data_dir = root.join(format!("server-{id}"));
            std::fs::create_dir_all(data_dir.join("ca"))?;
            for entry in std::fs::read_dir(&ca)? {
                let entry = entry?;
                std::fs::copy(entry.path(), data_dir.join("ca").join(entry.file_name()))?;
            }
            let mut command = Command::new(&exe);
            command
                .arg("server")
                .arg("--plain-http")
                .arg(format!("--id={id}"))
                .arg(format!("--data-dir={}", data_dir.display()))
                .arg(format!("--store-listen={store_address}"))
                .arg(format!("--api-listen={api_address}"));
            for (peer_index, peer) in store.iter().enumerate() {
                command.arg(format!("--peer={}={peer}", peer_index + 1));
            }
            command.env("RUST_LOG", "warn");
            processes.spawn(&mut command, &root.join(format!("server-{id}.log")))?;
        }
        Ok(Servers {
            _processes: processes,
            api_addresses,
        })
    }
}

fn render(args: &ApiBenchArgs, rows: &[(Call, LoadResult, LoadResult)], fanout: &Fanout) -> String {
    let mut out = format!(
        "Run with `cargo run --release --features bench -- bench api` on {}.\n\
         Three `flotilla server` processes (store member and API server each, plain HTTP) \
         against three etcd 3.4 members, on loopback, fsync on. {} ConfigMaps of about 1 KiB \
         stored in each; {} watches open on the API servers throughout; {} clients, \
         each with its own connection, spread over the three servers; {} s per measurement. \
         etcd does the same reads and writes on the same keys and bytes: it is the store \
         under kube-apiserver, so it bounds what an API server on it could do. \
         Kubernetes' API SLO is p99 under 1 s for single-object and mutating calls; \
         the target here is p99 under 10 ms for get and create.\n\n\
         | call | Flotilla ops/s | p50 | p99 | etcd ops/s | p50 | p99 | p99 vs target |\n\
         |---|---|---|---|---|---|---|---|\n",
        report::machine_description(),
        args.objects,
        args.watches,
        args.clients,
        args.seconds,
    );
    for (call, ours, theirs) in rows {
        let verdict = match call {
            Call::Get | Call::Create if ours.p99_us < 10_000 => "met (< 10 ms)".to_string(),
            Call::Get | Call::Create => {
                format!("missed by {}", micros(ours.p99_us.saturating_sub(10_000)))
            }
            _ if ours.p99_us < 1_000_000 => "within the 1 s SLO".to_string(),
            _ => "over the 1 s SLO".to_string(),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {verdict} |\n",
            call.label(),
            ours.ops_per_sec(),
            micros(ours.p50_us),
            micros(ours.p99_us),
            theirs.ops_per_sec(),
            micros(theirs.p50_us),
            micros(theirs.p99_us),
        ));
    }
    let errors: u64 = rows
        .iter()
        .map(|(_, ours, theirs)| ours.errors + theirs.errors)
        .sum();
    out.push_str(&format!(
        "\nWatch fan-out: {} creates, one at a time, each delivered to all {} watches. \
         Delay from the create request to the median watch: p50 {}, p99 {}; \
         to the last watch: p50 {}, p99 {}. Failed calls during the run: {errors}.\n",
        fanout.events,
        fanout.watches,
        micros(fanout.median.p50_us),
        micros(fanout.median.p99_us),
        micros(fanout.last.p50_us),
        micros(fanout.last.p99_us),
    ));
    out
}

/// The cost of authorization: each call as the superuser (let through at
/// once) and as a tenant RBAC decides for, interleaved in one measurement.
fn render_authorization(rows: &[(Call, LoadResult, LoadResult)]) -> String {
    let mut out = format!(
        "\nAuthorization: get and create as `{TENANT}`, whose rights are a RoleBinding \
         in the load's namespace (RBAC decides every call, from an index holding {} \
         tenants' Roles and RoleBindings besides the defaults), interleaved with the same \
         calls as the superuser: every other request of each client is the tenant's, \
         through the same servers and connections, for twice the measurement time \
         (`Impersonate-User`; the impersonation check itself is the superuser's). \
         Target: the tenant's p99 within 10 % of the superuser's.\n\n\
         | call | superuser ops/s | p99 | tenant (RBAC) ops/s | p99 | p99 change |\n\
         |---|---|---|---|---|---|\n",
        OTHER_TENANTS + 1,
    );
    for (call, superuser, tenant) in rows {
        let change = (tenant.p99_us as f64 / superuser.p99_us.max(1) as f64 - 1.0) * 100.0;
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.0} | {} | {change:+.1} % |\n",
            call.label(),
            superuser.ops_per_sec(),
            micros(superuser.p99_us),
            tenant.ops_per_sec(),
            micros(tenant.p99_us),
        ));
    }
    out
}
