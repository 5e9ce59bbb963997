//! A whole cluster of real `flotilla` processes on loopback: three servers
//! (the first creates the cluster, two join it with its servers' token),
//! two agents that join with its agents' token and get node certificates, modules pushed with
//! `flotilla push`, and kubectl 1.37 driving Deployments and a Job. Then an
//! agent and the raft leader are killed with SIGKILL.
//!
//! Kubernetes' timings are shortened through the servers' and agents'
//! flags. Every wait follows a watch or a process's log line, bounded by
//! `WAIT`; none sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../control/tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;

/// Bound on any one wait: generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

/// A `flotilla` process whose log lines the test can wait for; killed with
/// SIGKILL when dropped.
struct Process {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, args: &[String], logs: &Path) -> Process {
        let log = logs.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .env_remove("FLOTILLA_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = send.send(line);
            }
        });
        Process {
            name: name.to_string(),
            child,
            lines,
            log,
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} never logged {needle:?}; its log is {}:\n{}",
                    self.name,
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The loopback address agent `index` runs at.
fn agent_ip(index: usize) -> String {
    format!("127.0.20.{}", index + 1)
}

/// The example Service's nodePort (`examples/hello-http/k8s.yaml`).
const NODE_PORT: u16 = 30080;

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The cluster under test.
struct Cluster {
    root: tempfile::TempDir,
    servers: Vec<Process>,
    apis: Vec<SocketAddr>,
    stores: Vec<SocketAddr>,
    agents: Vec<Process>,
}

impl Cluster {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn url(&self, server: usize) -> String {
        format!("https://{}", self.apis[server])
    }

    /// The admin kubeconfig, pointed at `server`.
    fn kubeconfig(&self, server: usize) -> PathBuf {
        let original = std::fs::read_to_string(self.dir("server-0").join("kubeconfig")).unwrap();
        let path = self.root.path().join(format!("kubeconfig-{server}"));
        std::fs::write(&path, original.replace(&self.url(0), &self.url(server))).unwrap();
        path
    }

    fn server_args(&self, index: usize) -> Vec<String> {
        let mut args: Vec<String> = [
            "server",
            "--data-dir",
            &self.dir(&format!("server-{index}")).display().to_string(),
            "--api-listen",
            &self.apis[index].to_string(),
            "--store-listen",
            &self.stores[index].to_string(),
            "--tick-ms",
            "50",
            "--node-monitor-grace-period",
            "3s",
            "--pod-eviction-timeout",
            "1s",
            "--leader-elect-lease-duration",
            "3s",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if index > 0 {
            let token = self.token("server-token");
            args.extend(["--join".into(), self.url(0), "--token".into(), token]);
        }
        args
    }

    /// A join token the first server wrote: `token` for agents,
    /// `server-token` for servers.
    fn token(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir("server-0").join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    fn start_agent(&mut self, index: usize) {
        let name = format!("agent-{index}");
        let args: Vec<String> = [
            "agent",
            "--server",
            &self.url(0),
            "--token",
            &self.token("token"),
            "--node-name",
            &name,
            "--data-dir",
            &self.dir(&name).display().to_string(),
            // Each agent on its own loopback address, as on its own machine,
            // so each has its own NodePorts.
            "--kubelet-listen",
            &format!("{}:0", agent_ip(index)),
            "--node-ip",
            &agent_ip(index),
            "--lease-renew-secs",
            "1",
            "--node-status-secs",
            "1",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut agent = Process::spawn(&name, &args, self.root.path());
        agent.wait_for("agent running");
        self.agents.push(agent);
    }

    fn start() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            apis: (0..3).map(|_| free_tcp()).collect(),
            stores: (0..3).map(|_| free_udp()).collect(),
            root,
            servers: Vec::new(),
            agents: Vec::new(),
        };
        for index in 0..3 {
            let args = cluster.server_args(index);
            let mut server = Process::spawn(&format!("server-{index}"), &args, cluster.root.path());
            // The first server logs how to join once its token is written.
            server.wait_for(if index == 0 {
                "join more"
            } else {
                "server running"
            });
            cluster.servers.push(server);
        }
        cluster.start_agent(0);
        cluster.start_agent(1);
        cluster
    }

    fn flotilla(&self, args: &[&str]) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig(0))
            .output()
            .unwrap();
        succeeded("flotilla", args, output)
    }

    fn kubectl(&self, server: usize, args: &[&str]) -> String {
        let output = Command::new(support::kubectl())
            .arg("--kubeconfig")
            .arg(self.kubeconfig(server))
            .arg("--cache-dir")
            .arg(self.root.path().join("kube-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        succeeded("kubectl", args, output)
    }

    async fn client(&self, server: usize) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig(server)).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

fn succeeded(tool: &str, args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "{tool} {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Waits until the pods labelled `app=<app>` satisfy `done`.
async fn wait_pods(client: &kube::Client, app: &str, what: &str, done: impl Fn(&[Pod]) -> bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let mut stream = watcher(pods.clone(), config).boxed();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let listed = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .unwrap();
            if done(&listed.items) {
                return;
            }
            // The next change to these pods.
            stream.try_next().await.unwrap();
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Scales hello-http to 4 and waits until they serve, spread over both
/// agents.
async fn four_on_both_agents(cluster: &Cluster, client: &kube::Client) {
    cluster.kubectl(0, &["scale", "deployment/hello-http", "--replicas", "4"]);
    wait_pods(
        client,
        "hello-http",
        "4 ready pods on both agents",
        |pods| serving(pods) == (4, BTreeSet::from(["agent-0".into(), "agent-1".into()])),
    )
    .await;
}

/// GETs `/` from `address` over HTTP/1.1 as curl would; the status and
/// body, or why it failed.
fn http_get(address: &str) -> Result<(u16, String), String> {
    http_get_as(address, address, "/")
}

/// GETs `path` from `address` naming `host`, as `curl -H 'Host: …'` would.
fn http_get_as(address: &str, host: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// GETs until the answer satisfies `check`, for at most `WAIT` (the
/// agents' tables follow the API a moment behind).
fn get_until(address: &str, host: &str, path: &str, check: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = http_get_as(address, host, path);
        if let Ok((status, body)) = &answer
            && check(*status, body)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {host}{path} at {address}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pod named in hello-http's greeting (`… pod=<name> path=/`).
fn greeter(body: &str) -> Option<String> {
    Some(
        body.split("pod=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_owned(),
    )
}

/// GETs through `address` until every pod in `pods` has answered, for at
/// most `WAIT` (routing tables follow the API a moment behind).
fn answered_by_all(address: &str, pods: &BTreeSet<String>) {
    let deadline = Instant::now() + WAIT;
    let mut seen = BTreeSet::new();
    while !pods.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "through {address} only {seen:?} of {pods:?} answered"
        );
        if let Ok((200, body)) = http_get(address)
            && let Some(pod) = greeter(&body)
        {
            seen.insert(pod);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The names of the ready hello-http pods.
async fn ready_pod_names(client: &kube::Client) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let listed = pods
        .list(&ListParams::default().labels("app=hello-http"))
        .await
        .unwrap();
    listed
        .items
        .iter()
        .filter(|pod| serving(std::slice::from_ref(pod)).0 == 1)
        .filter_map(|pod| pod.metadata.name.clone())
        .collect()
}

/// A client sending GETs to an address one after another, from its start
/// until `expect_no_failure`, counting the answered and failed ones.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    fn start(address: String) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = 0;
            let mut failures = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(&address) {
                    Ok((200, _)) => answered += 1,
                    Ok((status, body)) => failures.push(format!("{status} {body}")),
                    Err(error) => failures.push(error),
                }
            }
            (answered, failures)
        });
        Load { stop, thread }
    }

    /// Stops the client; fails unless every request `during` was answered.
    fn expect_no_failure(self, during: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (answered, failures) = self.thread.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed {during}: {failures:?}",
            failures.len(),
            answered + failures.len()
        );
        assert!(answered > 0, "no request was answered {during}");
    }
}

/// A module that behaves as `module` but has another digest: the same
/// bytes with a custom section appended (Wasm ignores those), as a
/// rebuilt release would.
fn new_release(module: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(module).unwrap();
    let name = b"flotilla-test-release";
    let payload = b"2";
    // Section id 0 (custom), its size, the name's size, the name, payload.
    bytes.push(0);
    bytes.push(u8::try_from(1 + name.len() + payload.len()).unwrap());
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("hello_http_v2.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Ready pods not being deleted, and the nodes they run on.
fn serving(pods: &[Pod]) -> (usize, BTreeSet<String>) {
    let ready: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    let nodes = ready
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    (ready.len(), nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_two_agent_cluster_runs_scales_and_survives_kills() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let guests = flotilla_node::guests::build_examples(repo, &target)
        .unwrap_or_else(|error| panic!("{error}"));
    let mut cluster = Cluster::start();
    let client = cluster.client(0).await;

    // Both agents joined with the token and registered.
    let nodes = cluster.kubectl(0, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");

    // Modules pushed with the CLI; the examples' manifests unchanged.
    let hello = guests.module("hello-http").unwrap();
    let job = guests.module("job").unwrap();
    let tcp_echo = guests.module("tcp-echo").unwrap();
    cluster.flotilla(&["push", &hello.display().to_string(), "hello-http:0.1.0"]);
    cluster.flotilla(&["push", &job.display().to_string(), "job:0.1.0"]);
    let manifest = repo.join("examples/hello-http/k8s.yaml");
    cluster.kubectl(0, &["apply", "-f", &manifest.display().to_string()]);
    four_on_both_agents(&cluster, &client).await;

    // Through either agent's NodePort, every replica answers.
    let replicas = ready_pod_names(&client).await;
    assert_eq!(replicas.len(), 4, "{replicas:?}");
    for index in 0..2 {
        answered_by_all(&format!("{}:{NODE_PORT}", agent_ip(index)), &replicas);
    }

    // A rolling update to a new release loses no request, and so does
    // undoing it.
    let release = new_release(&hello, cluster.root.path());
    cluster.flotilla(&["push", &release.display().to_string(), "hello-http:0.2.0"]);
    for image in ["hello-http:0.2.0", "undo"] {
        let load = Load::start(format!("{}:{NODE_PORT}", agent_ip(0)));
        if image == "undo" {
            cluster.kubectl(0, &["rollout", "undo", "deployment/hello-http"]);
        } else {
            cluster.kubectl(
                0,
                &[
                    "set",
                    "image",
                    "deployment/hello-http",
                    &format!("hello={image}"),
                ],
            );
        }
        cluster.kubectl(
            0,
            &[
                "rollout",
                "status",
                "deployment/hello-http",
                "--timeout=120s",
            ],
        );
        load.expect_no_failure(&format!("during {image}"));
    }
    let image = cluster.kubectl(
        0,
        &[
            "get",
            "deployment/hello-http",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(
        image.trim(),
        "hello-http:0.1.0",
        "undone to the first release"
    );

    // The multi-service example: the frontend calls hello-http by its
    // name, across agents, through either agent's NodePort and through
    // the Ingress gateway; its NetworkPolicy lets it call nothing else.
    let frontend = guests.module("frontend").unwrap();
    cluster.flotilla(&["push", &frontend.display().to_string(), "frontend:0.1.0"]);
    let frontend_manifest = repo.join("examples/frontend/k8s.yaml");
    cluster.kubectl(
        0,
        &["apply", "-f", &frontend_manifest.display().to_string()],
    );
    cluster.kubectl(
        0,
        &["rollout", "status", "deployment/frontend", "--timeout=120s"],
    );
    let called = |status: u16, body: &str| {
        status == 200 && body.contains("called http://hello-http.default/: 200 hello, flotilla!")
    };
    for index in 0..2 {
        let node_port = format!("{}:30081", agent_ip(index));
        get_until(&node_port, &node_port, "/", called);
        let gateway = format!("{}:80", agent_ip(index));
        get_until(&gateway, "frontend.flotilla.local", "/", called);
    }
    let node_port = format!("{}:30081", agent_ip(0));
    get_until(
        &node_port,
        &node_port,
        "/call?url=http://frontend.default/healthz",
        |status, body| status == 502 && body.contains("HttpRequestDenied"),
    );
    // Its pods' CPU is needed for 8 hello-http replicas below.
    let frontend_manifest = frontend_manifest.display().to_string();
    cluster.kubectl(0, &["delete", "-f", &frontend_manifest, "--wait=true"]);

    cluster.kubectl(0, &["scale", "deployment/hello-http", "--replicas", "8"]);
    wait_pods(&client, "hello-http", "8 ready pods", |pods| {
        serving(pods).0 == 8
    })
    .await;
    cluster.kubectl(0, &["scale", "deployment/hello-http", "--replicas", "2"]);
    wait_pods(&client, "hello-http", "2 pods left", |pods| pods.len() == 2).await;

    // A Job runs to completion, and kubectl logs shows its output.
    let job_manifest = repo.join("examples/job/k8s.yaml");
    cluster.kubectl(0, &["apply", "-f", &job_manifest.display().to_string()]);
    cluster.kubectl(
        0,
        &[
            "wait",
            "--for=condition=complete",
            "job/primes",
            "--timeout=120s",
        ],
    );
    let logs = cluster.kubectl(0, &["logs", "job/primes"]);
    assert_eq!(logs.trim(), "sum=454396537");

    // Raw TCP between pods: examples/tcp-echo's server behind its Service
    // (ready once its port accepts), then its Job, which connects by name.
    cluster.flotilla(&["push", &tcp_echo.display().to_string(), "tcp-echo:0.1.0"]);
    let manifest = std::fs::read_to_string(repo.join("examples/tcp-echo/k8s.yaml")).unwrap();
    let (server_part, job_part): (Vec<&str>, Vec<&str>) = manifest
        .split("\n---\n")
        .partition(|document| !document.contains("kind: Job"));
    let mut applied = Vec::new();
    for (name, documents) in [
        ("tcp-echo-server", server_part),
        ("tcp-echo-client", job_part),
    ] {
        let path = cluster.dir(&format!("{name}.yaml"));
        std::fs::write(&path, documents.join("\n---\n")).unwrap();
        cluster.kubectl(0, &["apply", "-f", &path.display().to_string()]);
        applied.push(path);
        if name == "tcp-echo-server" {
            cluster.kubectl(
                0,
                &["rollout", "status", "deployment/tcp-echo", "--timeout=120s"],
            );
        }
    }
    cluster.kubectl(
        0,
        &[
            "wait",
            "--for=condition=complete",
            "job/tcp-echo-client",
            "--timeout=120s",
        ],
    );
    let logs = cluster.kubectl(0, &["logs", "job/tcp-echo-client"]);
    assert!(logs.contains("echo: hello over tcp"), "{logs}");
    // Its CPU is needed back: after the agent kill below, agent-0 alone
    // holds all four hello-http replicas. The server has nothing to drain,
    // so its pod goes without the 30 s grace period.
    for path in &applied {
        let path = path.display().to_string();
        cluster.kubectl(0, &["delete", "-f", &path, "--wait=false"]);
    }
    cluster.kubectl(
        0,
        &[
            "delete",
            "pods",
            "-l",
            "app=tcp-echo",
            "--grace-period=0",
            "--force",
        ],
    );
    wait_pods(
        &client,
        "tcp-echo",
        "the echo server gone",
        <[Pod]>::is_empty,
    )
    .await;

    // Objects written before the kills, to count after them.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for index in 0..20 {
        let object: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("kept-{index}")},
            "data": {"index": index.to_string()},
        }))
        .unwrap();
        config_maps
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    // kill -9 of an agent: its pods are replaced on the other one, and
    // calls through the survivor's NodePort go on meanwhile.
    four_on_both_agents(&cluster, &client).await;
    // The survivor's table must hold its own pods before the kill, or
    // there would be nothing left for it to route to.
    let through_survivor = format!("{}:{NODE_PORT}", agent_ip(0));
    answered_by_all(&through_survivor, &ready_pod_names(&client).await);
    let load = Load::start(through_survivor);
    cluster.agents[1].kill();
    wait_pods(
        &client,
        "hello-http",
        "4 ready pods on agent-0 alone",
        |pods| serving(pods) == (4, BTreeSet::from(["agent-0".into()])),
    )
    .await;
    load.expect_no_failure("while agent-1 died");

    // kill -9 of the raft leader: kubectl keeps working through another
    // server, and nothing written is lost.
    // The servers' store answers only their join authority over the
    // network; the test, holding the CA, speaks as it.
    let ca = flotilla_pki::ClusterCa::load(&cluster.dir("server-0").join("ca")).unwrap();
    let authority = ca
        .issue(
            flotilla_control::join::AUTHORITY_NAME,
            &["localhost".into()],
        )
        .unwrap();
    let addresses = cluster.stores.iter().map(ToString::to_string).collect();
    let store =
        flotilla_raft_store::client::Client::with_credentials(addresses, &authority).unwrap();
    let leader = store.status().await.unwrap().leader;
    let leader_index = cluster
        .stores
        .iter()
        .position(|address| store_member_id(&cluster, *address) == Some(leader))
        .expect("the leader is one of the three");
    cluster.servers[leader_index].kill();
    let survivor = (leader_index + 1) % 3;
    let names = cluster.kubectl(survivor, &["get", "configmaps", "-o", "name"]);
    for index in 0..20 {
        assert!(
            names.contains(&format!("configmap/kept-{index}")),
            "kept-{index} is missing after the leader died:\n{names}"
        );
    }
    let deployment = cluster.kubectl(
        survivor,
        &[
            "get",
            "deployment/hello-http",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(deployment.trim(), "4");
    cluster.kubectl(survivor, &["create", "configmap", "after-the-kill"]);
}

/// The member id of the server whose store listens at `address`: the first
/// server is 1, joined servers keep theirs in `member-id`.
fn store_member_id(cluster: &Cluster, address: SocketAddr) -> Option<u64> {
    let index = cluster.stores.iter().position(|a| *a == address)?;
    if index == 0 {
        return Some(1);
    }
    let text =
        std::fs::read_to_string(cluster.dir(&format!("server-{index}")).join("member-id")).ok()?;
    text.trim().parse().ok()
}
