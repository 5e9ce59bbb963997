//! The node agent against a real API server in this process, on loopback:
//! node registration, the lease, pods from creation to graceful deletion,
//! resynchronisation after the agent was away, the kubelet endpoint, and a
//! pod running a module pushed to the cluster's registry.
//! Every wait is on a watch or a condition, bounded by `support::WAIT`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../all/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_control::controllers::election::ElectionConfig;
use flotilla_control::controllers::nodes::NodeTimings;
use flotilla_control::controllers::{Controllers, ControllersConfig};
use flotilla_control::registry::RegistryConfig;
use flotilla_control::{Server, ServerConfig};
use flotilla_node::agent::{
    Agent, AgentConfig, AgentError, NODE_LEASE_NAMESPACE, REGISTRY_BLOBS_PATH, RegistrySource,
};
use flotilla_node::{BackoffConfig, NodeRuntime};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use serde_json::json;
use support::WAIT;

/// A one-member control plane serving plain HTTP on loopback.
struct Cluster {
    server: Server,
    client: kube::Client,
    dir: tempfile::TempDir,
    /// The elected loops: node IPAM gives the node the podCIDR its pods'
    /// addresses come from, and the Endpoints controller lists them.
    controllers: Controllers,
}

/// The control loops with an election short enough for tests.
async fn start_controllers(server: &Server) -> Controllers {
    let config = ControllersConfig {
        identity: "test".into(),
        election: ElectionConfig {
            lease_duration: Duration::from_millis(1_500),
            renew_deadline: Duration::from_millis(1_000),
            retry_period: Duration::from_millis(100),
            ..ElectionConfig::default()
        },
        nodes: NodeTimings::default(),
        job_backoff: Duration::from_millis(50),
    };
    server.start_controllers(config).await.unwrap()
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // Short ticks: a one-member store elects itself in ~0.2 s.
        let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
        // Most pods here name their modules by file: the server and the
        // node share this machine, as under `flotilla up`.
        let registry = RegistryConfig {
            allow_file_images: true,
        };
        let server = Server::start_with(config, registry).await.unwrap();
        // The agent connects through a kubeconfig, as `flotilla agent` does.
        let kubeconfig = dir.path().join("kubeconfig");
        let url = format!("http://{}", server.api_address());
        std::fs::write(&kubeconfig, flotilla_control::kubeconfig(&url)).unwrap();
        let client = flotilla_node::agent::client_from_kubeconfig(&kubeconfig)
            .await
            .unwrap();
        let controllers = start_controllers(&server).await;
        Cluster {
            server,
            client,
            dir,
            controllers,
        }
    }

    /// A cluster with one node: its runtime and its running agent.
    async fn with_node(node: &str) -> (Cluster, NodeRuntime, Agent) {
        let cluster = Cluster::start().await;
        let runtime = cluster.runtime(node);
        let agent = cluster.agent(node, &runtime).await;
        (cluster, runtime, agent)
    }

    /// A runtime for one node, with its data under the cluster's directory.
    fn runtime(&self, node: &str) -> NodeRuntime {
        support::runtime(&self.dir.path().join(node))
    }

    /// Starts an agent for `node` on `runtime`, with short intervals.
    async fn agent(&self, node: &str, runtime: &NodeRuntime) -> Agent {
        self.agent_with(node, runtime, self.client.clone()).await
    }

    /// Starts an agent that reaches the API with `client`.
    async fn agent_with(&self, node: &str, runtime: &NodeRuntime, client: kube::Client) -> Agent {
        Agent::start(config(node), client, runtime.clone())
            .await
            .unwrap()
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn stop(self, agent: Agent) {
        agent.shutdown().await;
        drop(self.controllers);
        self.server.shutdown().await;
    }
}

fn config(node: &str) -> AgentConfig {
    let mut config = AgentConfig::new(node).unwrap();
    config.kubelet_listen = "127.0.0.1:0".parse().unwrap();
    config.lease_renew_interval = Duration::from_millis(200);
    config.node_status_interval = Duration::from_millis(200);
    config.retry = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        reset_after: Duration::from_secs(60),
    };
    config
}

/// Waits until the named object satisfies `condition`; panics after `WAIT`.
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> Option<K>
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    tokio::time::timeout(WAIT, await_condition(api.clone(), name, condition))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
}

/// Polls a condition of this process's own state (the runtime's table of
/// pods has no watch), every few milliseconds, for at most `WAIT`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        ticker.tick().await;
    }
}

/// A pod bound to `node`: the hello-http service, or a job with `args`.
fn pod(name: &str, node: &str, job_args: Option<&[&str]>) -> Pod {
    let mut pod = match job_args {
        None => support::hello_pod(name),
        Some(args) => support::one_container_pod(
            json!({"name": "job", "image": support::example_image("job"), "args": args}),
            json!({"restartPolicy": "Never"}),
        ),
    };
    pod.metadata.name = Some(name.to_owned());
    // The API server gives the uid.
    pod.metadata.uid = None;
    let spec = pod.spec.as_mut().unwrap();
    spec.node_name = Some(node.to_owned());
    pod
}

/// The pod's address, which `status.podIPs` repeats.
fn pod_ip(pod: &Pod) -> std::net::Ipv4Addr {
    let status = pod.status.as_ref().unwrap();
    let ip = status.pod_ip.clone().expect("a pod IP");
    let ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    assert_eq!(ips, std::slice::from_ref(&ip));
    ip.parse().unwrap()
}

/// The node's podCIDR, once the IPAM controller has given it.
async fn node_cidr(cluster: &Cluster, node: &str) -> ipnet::Ipv4Net {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let given = wait_for(&nodes, node, "the node's podCIDR", |n: Option<&Node>| {
        n.and_then(|n| n.spec.as_ref()?.pod_cidr.as_ref()).is_some()
    })
    .await
    .unwrap();
    given.spec.unwrap().pod_cidr.unwrap().parse().unwrap()
}

fn condition_true(pod: &Pod, kind: &str) -> bool {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == kind && condition.status == "True")
}

fn running_and_ready(pod: Option<&Pod>) -> bool {
    pod.is_some_and(|pod| {
        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && condition_true(pod, "Ready")
    })
}

fn phase_is(phase: &'static str) -> impl Condition<Pod> {
    move |pod: Option<&Pod>| {
        pod.and_then(|pod| pod.status.as_ref()?.phase.as_deref()) == Some(phase)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_is_ready_and_renews_its_lease() {
    let (cluster, runtime, agent) = Cluster::with_node("node-a").await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());

    let node = wait_for(
        &nodes,
        "node-a",
        "the node to be Ready",
        |node: Option<&Node>| {
            node.is_some_and(|node| {
                node.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        },
    )
    .await
    .unwrap();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("wasm32")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("wasi")
    );
    assert!(labels.contains_key("kubernetes.io/hostname"), "{labels:?}");
    let status = node.status.clone().unwrap();
    let capacity = status.capacity.clone().unwrap();
    assert_eq!(capacity["pods"].0, "1000");
    assert!(
        capacity.contains_key("cpu") && capacity.contains_key("memory"),
        "{capacity:?}"
    );
    assert_eq!(status.allocatable, status.capacity);
    let info = status.node_info.clone().unwrap();
    assert_eq!(info.container_runtime_version, "wasmtime://48.0.8");
    assert_eq!(info.architecture, "wasm32");
    let addresses: BTreeMap<String, String> = status
        .addresses
        .unwrap()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert_eq!(addresses["InternalIP"], "127.0.0.1");
    assert_eq!(
        status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port,
        i32::from(agent.kubelet_address().port())
    );
    let first_heartbeat = heartbeat(&node);
    wait_for(
        &nodes,
        "node-a",
        "a newer heartbeat",
        move |node: Option<&Node>| node.is_some_and(|node| heartbeat(node) > first_heartbeat),
    )
    .await;

    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NODE_LEASE_NAMESPACE);
    let lease = wait_for(
        &leases,
        "node-a",
        "the node's lease",
        |lease: Option<&Lease>| lease.is_some(),
    )
    .await
    .unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(
        lease.metadata.owner_references.unwrap()[0].uid,
        node.metadata.uid.clone().unwrap()
    );
    let renewed = spec.renew_time.unwrap().0;
    wait_for(
        &leases,
        "node-a",
        "a lease renewal",
        move |lease: Option<&Lease>| {
            lease
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
                .is_some_and(|time| time.0 > renewed)
        },
    )
    .await;

    // A restarted agent takes its Node over instead of failing.
    agent.shutdown().await;
    let agent = cluster.agent("node-a", &runtime).await;
    let again = nodes.get("node-a").await.unwrap();
    assert_eq!(again.metadata.uid, node.metadata.uid);
    assert!(heartbeat(&again) > first_heartbeat);

    let metrics = get(agent.kubelet_address(), "/metrics").await;
    assert_eq!(metrics.0, 200);
    assert!(
        metrics.1.contains("flotilla_agent_lease_renewals_total"),
        "{}",
        metrics.1
    );
    assert_eq!(
        get(agent.kubelet_address(), "/healthz").await,
        (200, "ok".to_owned())
    );
    cluster.stop(agent).await;
}

fn heartbeat(node: &Node) -> k8s_openapi::jiff::Timestamp {
    node.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|time| time.0)
        .expect("a Ready condition with a heartbeat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_reports_status_and_goes_when_deleted_gracefully() {
    let (cluster, runtime, agent) = Cluster::with_node("node-b").await;
    let pods = cluster.pods();

    let created = pods
        .create(&PostParams::default(), &pod("web", "node-b", None))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let running = wait_for(
        &pods,
        "web",
        "the pod to run and be ready",
        running_and_ready,
    )
    .await
    .unwrap();
    let status = running.status.clone().unwrap();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            condition_true(&running, kind),
            "{kind} is not True: {status:#?}"
        );
    }
    assert!(status.start_time.is_some());
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert_eq!(container.name, "hello");
    assert!(container.ready);
    assert_eq!(container.restart_count, 0);
    assert!(container.state.as_ref().unwrap().running.is_some());
    // The service answers in the runtime the agent gave it to.
    let (code, _) = support::get(&runtime, &uid, 8080, "/healthz")
        .await
        .unwrap();
    assert_eq!(code, 200);

    // Its address is from the node's podCIDR (not the network or gateway
    // one), and a Service selecting it lists it in its Endpoints.
    let address = pod_ip(&running);
    let range = node_cidr(&cluster, "node-b").await;
    assert!(range.contains(&address), "{address} is not in {range}");
    assert!(![range.network(), range.hosts().next().unwrap()].contains(&address));
    let ready_addresses = |endpoints: Option<&Endpoints>| {
        endpoints
            .and_then(|e| e.subsets.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|subset| subset.addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect::<Vec<_>>()
    };
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let selector = running.metadata.labels.clone().unwrap_or_default();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let endpoints: Api<Endpoints> = Api::namespaced(cluster.client.clone(), "default");
    let wanted = vec![address.to_string()];
    wait_for(
        &endpoints,
        "web",
        "the Endpoints to list the pod",
        move |e: Option<&Endpoints>| ready_addresses(e) == wanted,
    )
    .await;

    // `kubectl delete pod web`: graceful, so the API keeps the pod until
    // the node has stopped it and deleted it with a zero grace period.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for(
        &pods,
        "web",
        "the pod to be deleted",
        conditions::is_deleted(&uid),
    )
    .await;
    assert!(
        runtime.pod(&uid).is_none(),
        "the pod still runs on the node"
    );

    cluster.stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_the_module_pushed_to_the_registry() {
    // What the control plane and the node both know, written in each.
    assert_eq!(
        flotilla_control::registry::MODULE_BYTES_MAX,
        flotilla_node::MODULE_BYTES_MAX
    );
    assert_eq!(
        format!("{}blobs/", flotilla_control::registry::http::PREFIX),
        REGISTRY_BLOBS_PATH
    );
    let cluster = Cluster::start().await;
    let module_path = support::guests().module("hello-http").unwrap();
    let pushed =
        flotilla_control::registry::push_file(&cluster.client, &module_path, "hello-http:0.1.0")
            .await
            .unwrap();
    let node_dir = cluster.dir.path().join("node-r");
    let blob_dir = node_dir.join("blobs");
    let source = RegistrySource::new(cluster.client.clone(), &blob_dir).unwrap();
    let runtime = NodeRuntime::new(support::config(&node_dir), Arc::new(source)).unwrap();
    let agent = cluster.agent("node-r", &runtime).await;

    let mut web = pod("web", "node-r", None);
    web.spec.as_mut().unwrap().containers[0].image = Some("hello-http:0.1.0".into());
    let pods = cluster.pods();
    let created = pods.create(&PostParams::default(), &web).await.unwrap();
    let pinned = format!("hello-http:0.1.0@{}", pushed.digest);
    assert_eq!(
        created.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some(pinned.as_str())
    );
    let running = wait_for(&pods, "web", "the pushed module to run", running_and_ready)
        .await
        .unwrap();
    let container = &running.status.unwrap().container_statuses.unwrap()[0];
    assert!(
        container.image_id.contains(&pushed.digest.hex()),
        "{container:?}"
    );
    let uid = created.metadata.uid.unwrap();
    let (code, _) = support::get(&runtime, &uid, 8080, "/healthz")
        .await
        .unwrap();
    assert_eq!(code, 200);
    // The node keeps the blob, named by its digest, for the next start.
    assert!(
        std::fs::read(blob_dir.join(pushed.digest.hex())).unwrap()
            == std::fs::read(&module_path).unwrap(),
        "the cached blob differs from the pushed module"
    );

    cluster.stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_its_pods_and_removes_those_deleted_meanwhile() {
    let (cluster, runtime, agent) = Cluster::with_node("node-c").await;
    let pods = cluster.pods();
    let mut uids = BTreeMap::new();
    for name in ["keep", "drop"] {
        let created = pods
            .create(&PostParams::default(), &pod(name, "node-c", None))
            .await
            .unwrap();
        uids.insert(name, created.metadata.uid.unwrap());
        wait_for(&pods, name, "the pod to run", running_and_ready).await;
    }
    let kept_address = pod_ip(&pods.get("keep").await.unwrap());

    // The agent goes away; its pods keep running. Meanwhile one is deleted
    // with a zero grace period, so the API forgets it without the node.
    agent.shutdown().await;
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("drop", &force).await.unwrap();
    wait_for(
        &pods,
        "drop",
        "the forced deletion",
        conditions::is_deleted(&uids["drop"]),
    )
    .await;
    assert!(
        runtime.pod(&uids["drop"]).is_some(),
        "pods run on while the agent is away"
    );

    let agent = cluster.agent("node-c", &runtime).await;
    eventually("the deleted pod to be removed from the node", || {
        runtime.pod(&uids["drop"]).is_none()
    })
    .await;
    let kept = runtime
        .pod(&uids["keep"])
        .expect("the listed pod is adopted");
    let status = kept.status();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.container_statuses.unwrap()[0].restart_count, 0);
    // The adopted pod keeps its address, recovered from its status, and a
    // pod started after the restart is not given it again.
    pods.create(&PostParams::default(), &pod("fresh", "node-c", None))
        .await
        .unwrap();
    let fresh = wait_for(&pods, "fresh", "the new pod to run", running_and_ready)
        .await
        .unwrap();
    assert_ne!(pod_ip(&fresh), kept_address);
    assert_eq!(pod_ip(&pods.get("keep").await.unwrap()), kept_address);
    // Adopted pods are still served by the endpoint and deleted gracefully.
    pods.delete("keep", &DeleteParams::default()).await.unwrap();
    wait_for(
        &pods,
        "keep",
        "the adopted pod's deletion",
        conditions::is_deleted(&uids["keep"]),
    )
    .await;
    assert!(runtime.pod(&uids["keep"]).is_none());

    cluster.stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_endpoint_serves_container_logs() {
    let (cluster, _runtime, agent) = Cluster::with_node("node-d").await;
    let address = agent.kubelet_address();
    let pods = cluster.pods();

    pods.create(
        &PostParams::default(),
        &pod("primes", "node-d", Some(&["1000"])),
    )
    .await
    .unwrap();
    let done = wait_for(&pods, "primes", "the job to succeed", phase_is("Succeeded"))
        .await
        .unwrap();
    let container = &done.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(
        container
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );

    let logs = "/containerLogs/default/primes/job";
    assert_eq!(get(address, logs).await, (200, "sum=76127\n".to_owned()));
    let (code, stamped) = get(address, &format!("{logs}?timestamps=true")).await;
    assert_eq!(code, 200);
    let (time, line) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(line, "sum=76127");
    assert!(
        time.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "{time}"
    );
    assert_eq!(
        get(address, &format!("{logs}?tailLines=0")).await,
        (200, String::new())
    );
    assert_eq!(
        get(address, &format!("{logs}?limitBytes=3")).await,
        (200, "sum".to_owned())
    );
    // A finished container's follow ends after its last line.
    assert_eq!(
        get(address, &format!("{logs}?follow=true")).await,
        (200, "sum=76127\n".to_owned())
    );
    assert_eq!(
        get(address, "/containerLogs/default/primes/nope").await.0,
        404
    );
    assert_eq!(get(address, "/containerLogs/default/nope/job").await.0, 404);
    assert_eq!(get(address, &format!("{logs}?follow=maybe")).await.0, 400);

    // A running container's follow streams lines as they come.
    pods.create(
        &PostParams::default(),
        &pod("ticker", "node-d", Some(&["--spin"])),
    )
    .await
    .unwrap();
    wait_for(&pods, "ticker", "the ticker to run", phase_is("Running")).await;
    let (code, ticks) = get(
        address,
        "/containerLogs/default/ticker/job?follow=true&limitBytes=14",
    )
    .await;
    assert_eq!((code, ticks.as_str()), (200, "tick 1\ntick 2\n"));

    // `kubectl logs` goes through the API server, which proxies to this
    // endpoint: the same lines, the same limits, Kubernetes' errors.
    let params = kube::api::LogParams::default;
    assert_eq!(pods.logs("primes", &params()).await.unwrap(), "sum=76127\n");
    let tail = kube::api::LogParams {
        tail_lines: Some(0),
        ..params()
    };
    assert_eq!(pods.logs("primes", &tail).await.unwrap(), "");
    let wrong = kube::api::LogParams {
        container: Some("nope".into()),
        ..params()
    };
    let error = pods.logs("primes", &wrong).await.unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status)
            if status.code == 400 && status.message == "container nope is not valid for pod primes"),
        "{error:?}"
    );
    let followed = kube::api::LogParams {
        follow: true,
        limit_bytes: Some(14),
        ..params()
    };
    let stream = pods.log_stream("ticker", &followed).await.unwrap();
    let lines: Vec<String> =
        futures::StreamExt::collect::<Vec<_>>(futures::AsyncBufReadExt::lines(stream))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(lines, ["tick 1", "tick 2"]);

    cluster.stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_keep_running_while_the_api_is_away_and_the_agent_catches_up() {
    let cluster = Cluster::start().await;
    let runtime = cluster.runtime("node-e");
    // The agent reaches the API through a link the test can cut.
    let mut link = Link::open(cluster.server.api_address()).await;
    let url = format!("http://{}", link.address).parse().unwrap();
    let through_link = kube::Client::try_from(kube::Config::new(url)).unwrap();
    let agent = cluster.agent_with("node-e", &runtime, through_link).await;
    let pods = cluster.pods();
    let created = pods
        .create(&PostParams::default(), &pod("steady", "node-e", None))
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();
    wait_for(&pods, "steady", "the pod to run", running_and_ready).await;

    link.cut().await;
    // Deleted while the agent cannot hear it: the API keeps the pod
    // (marked) until the node confirms, and the pod keeps running.
    pods.delete("steady", &DeleteParams::default())
        .await
        .unwrap();
    let (code, _) = support::get(&runtime, &uid, 8080, "/healthz")
        .await
        .unwrap();
    assert_eq!(code, 200, "the pod serves while the API is away");
    let logs = get(
        agent.kubelet_address(),
        "/containerLogs/default/steady/hello",
    )
    .await;
    assert_eq!(logs.0, 200, "the endpoint serves while the API is away");
    let marked = pods.get("steady").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());

    // Back again: the agent's watch reconnects, sees the deletion, and
    // completes it.
    link.restore().await;
    wait_for(
        &pods,
        "steady",
        "the pod's deletion",
        conditions::is_deleted(&uid),
    )
    .await;
    assert!(runtime.pod(&uid).is_none());
    cluster.stop(agent).await;
}

/// A loopback TCP link to the API server that the test can cut (every
/// connection dropped, new ones refused) and restore on the same port: an
/// API server the agent cannot reach.
struct Link {
    address: SocketAddr,
    target: SocketAddr,
    forwarding: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    async fn open(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        Link {
            address,
            target,
            forwarding: Some(tokio::spawn(forward(listener, target))),
        }
    }

    async fn cut(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
            let _ = forwarding.await;
        }
    }

    async fn restore(&mut self) {
        // tokio sets SO_REUSEADDR, so the port is free again at once.
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.forwarding = Some(tokio::spawn(forward(listener, self.target)));
    }
}

/// Accepts and forwards connections; dropping the task drops them all.
async fn forward(listener: tokio::net::TcpListener, target: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        connections.spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_endpoint_refuses_to_listen_off_loopback() {
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("node-f");
    config.kubelet_listen = "0.0.0.0:0".parse().unwrap();
    let error = Agent::start(config, client, support::runtime(dir.path()))
        .await
        .err()
        .expect("a non-loopback listen address is refused");
    assert!(matches!(error, AgentError::NotLoopback { .. }), "{error}");
    assert!(error.to_string().contains("loopback"), "{error}");
}

/// GETs `path` from the kubelet endpoint; returns the status and the body.
async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    try_get(address, path).await.unwrap()
}

/// As [`get`], with a failure to get an answer returned, not a panic.
async fn try_get(address: SocketAddr, path: &str) -> Result<(u16, String), hyper::Error> {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, address.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")?;
    let code = response.status().as_u16();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the whole body in time")
        .unwrap()
        .to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// An agent that joined with a token serves its endpoint over HTTPS with
/// its node certificate, and `kubectl logs` reaches it through an API
/// server that presents its own. The certificate is short-lived here: the
/// agent renews it before it expires, without a token, and once the first
/// one has expired the kubelet endpoint and new connections to the API
/// present the renewed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_joined_serves_logs_over_tls_and_renews_its_certificate() {
    use flotilla_control::join::{self, NodeJoinRequest, client::join_node};
    use flotilla_node::agent::{CREDENTIALS_STEM, KUBELET_SCHEME_ANNOTATION, KubeletTls};
    // Renewed at 70-90 % of its lifetime, after 5 to 7 s.
    const NODE_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(7);

    let dir = tempfile::tempdir().unwrap();
    let server_config = ServerConfig::loopback(dir.path(), Duration::from_millis(20))
        .unwrap()
        .with_https(&[])
        .unwrap();
    let ca_pem = server_config.ca_pem().unwrap();
    let options = flotilla_control::ServerOptions {
        registry: RegistryConfig {
            allow_file_images: true,
        },
        node_certificate_validity: NODE_CERTIFICATE_VALIDITY,
        ..flotilla_control::ServerOptions::default()
    };
    let server = Server::start_with(server_config, options).await.unwrap();
    let controllers = start_controllers(&server).await;
    let admin = server.client().await.unwrap();
    let url = format!("https://{}", server.api_address());
    let token = join::create_token(&admin, &ca_pem, None, "test", join::token::Purpose::Agent)
        .await
        .unwrap();
    let request = NodeJoinRequest {
        node_name: "node-t".into(),
        addresses: vec!["127.0.0.1".into()],
    };
    let joined = join_node(&url, &token, &request).await.unwrap();
    let pki = dir.path().join("pki");
    joined.save(&pki, CREDENTIALS_STEM).unwrap();
    let tls = KubeletTls::new(&joined).unwrap().kept_in(pki.clone());
    let first = tls.certificate();
    let mut renewals = tls.renewals();
    let as_node = tls.api_client(&url).unwrap();
    let mut agent_config = config("node-t");
    agent_config.kubelet_tls = Some(tls.clone());
    let runtime = support::runtime(&dir.path().join("node-t"));
    let agent = Agent::start(agent_config, as_node, runtime).await.unwrap();

    let nodes: Api<Node> = Api::all(admin.clone());
    let node = nodes.get("node-t").await.unwrap();
    assert_eq!(
        node.metadata
            .annotations
            .unwrap_or_default()
            .get(KUBELET_SCHEME_ANNOTATION)
            .map(String::as_str),
        Some("https")
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("primes", "node-t", Some(&["1000"])),
    )
    .await
    .unwrap();
    wait_for(&pods, "primes", "the job to succeed", phase_is("Succeeded")).await;
    assert_eq!(
        pods.logs("primes", &kube::api::LogParams::default())
            .await
            .unwrap(),
        "sum=76127\n"
    );
    // Plain HTTP to the endpoint gets no answer: it speaks only TLS.
    assert!(
        try_get(agent.kubelet_address(), "/healthz").await.is_err(),
        "plain HTTP was answered"
    );

    // Renewed before it expires, for the same node and names, and kept
    // on disk for the next start.
    let renewed = tokio::time::timeout(NODE_CERTIFICATE_VALIDITY * 2, renewals.next())
        .await
        .expect("the certificate was renewed in time")
        .expect("the identity is alive");
    assert!(renewed.not_after > first.not_after);
    assert!(
        SystemTime::now() < first.not_after,
        "renewed only after expiry"
    );
    assert_eq!(renewed.subject, first.subject);
    assert_eq!(renewed.names, first.names);
    let kept = flotilla_pki::Credentials::load(&pki, CREDENTIALS_STEM).unwrap();
    assert_eq!(kept.certificate().unwrap(), renewed);
    // Wall-clock time must pass for the first certificate to expire.
    let expired_in = first
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(expired_in + Duration::from_secs(1)).await;
    // The API server verifies the kubelet endpoint's certificate on each
    // new connection: it sees the renewed one.
    assert_eq!(
        pods.logs("primes", &kube::api::LogParams::default())
            .await
            .unwrap(),
        "sum=76127\n"
    );
    // A new connection to the API presents the renewed certificate too.
    let fresh = tls.api_client(&url).unwrap();
    Api::<Node>::all(fresh).get("node-t").await.unwrap();
    // And the agent's own client moved to new connections: the API refuses
    // an expired certificate on every request, yet the lease is renewed.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NODE_LEASE_NAMESPACE);
    let seen = leases.get("node-t").await.unwrap();
    let seen = seen.spec.and_then(|spec| spec.renew_time).unwrap().0;
    wait_for(
        &leases,
        "node-t",
        "a lease renewal after the first certificate expired",
        move |lease: Option<&Lease>| {
            lease
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
                .is_some_and(|time| time.0 > seen)
        },
    )
    .await;
    agent.shutdown().await;
    drop(controllers);
    server.shutdown().await;
}

mod network;
