//! The `flotilla` client verbs, run as the built binary against a real
//! API server started in this process on loopback (plain HTTP), with the
//! controllers where a test needs them. The test reads back what a verb did
//! through kube-rs, and waits on watch events, never on a timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use flotilla_control::controllers::election::ElectionConfig;
use flotilla_control::controllers::nodes::NodeTimings;
use flotilla_control::controllers::{Controllers, ControllersConfig};
use flotilla_control::{Server, ServerConfig};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use kube::api::Api;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Bound on any one wait; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// A one-member server on loopback, a kubeconfig for it, and a client.
/// An empty core module: what the test pods' images name.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

struct Cluster {
    server: Server,
    client: kube::Client,
    kubeconfig: PathBuf,
    controllers: Option<Controllers>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // Short ticks: a one-member store elects itself in ~0.2 s.
        let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
        let server = Server::start(config).await.unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let url = format!("http://{}", server.api_address());
        std::fs::write(&kubeconfig, flotilla_control::server::kubeconfig(&url)).unwrap();
        let client = server.client().await.unwrap();
        // The registry refuses pods whose images it does not hold; these
        // pods never run, so the smallest module stands in for them.
        for image in ["hello:1.0", "hello:2.0"] {
            flotilla_control::registry::push(&client, EMPTY_MODULE, image)
                .await
                .unwrap();
        }
        Cluster {
            server,
            client,
            kubeconfig,
            controllers: None,
            dir,
        }
    }

    /// A cluster whose controllers are running and leading.
    async fn with_controllers() -> Cluster {
        let mut cluster = Cluster::start().await;
        let controllers = cluster
            .server
            .start_controllers(ControllersConfig {
                identity: "test".into(),
                election: ElectionConfig {
                    lease_duration: Duration::from_millis(1_500),
                    renew_deadline: Duration::from_millis(1_000),
                    retry_period: Duration::from_millis(100),
                    ..ElectionConfig::default()
                },
                nodes: NodeTimings::default(),
                job_backoff: Duration::from_millis(50),
            })
            .await
            .unwrap();
        let mut leading = controllers.leading();
        tokio::time::timeout(WAIT, leading.wait_for(|leads| *leads))
            .await
            .expect("the controllers did not lead in time")
            .unwrap();
        cluster.controllers = Some(controllers);
        cluster
    }

    /// `flotilla ARGS --kubeconfig …`, output piped, killed when dropped.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `flotilla ARGS --kubeconfig …` with `input` on stdin.
    async fn flotilla(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut command = self.command(args);
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().unwrap();
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).await.unwrap();
        }
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("flotilla {args:?} did not finish in time"))
            .unwrap()
    }

    /// `flotilla ARGS`, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_with_input(args, None).await
    }

    async fn ok_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        let output = self.flotilla(args, input).await;
        assert!(
            output.status.success(),
            "flotilla {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `flotilla ARGS`, which must fail; its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let output = self.flotilla(args, None).await;
        assert!(
            !output.status.success(),
            "flotilla {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    async fn stop(self) {
        drop(self.controllers);
        self.server.shutdown().await;
    }
}

/// The first object of `api` (listed or changed later) that `wanted`
/// accepts, as the watch reports it; fails after [`WAIT`].
async fn first_seen<K>(api: &Api<K>, what: &str, wanted: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let mut seen = Box::pin(
        watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .filter_map(|object| std::future::ready(object.ok().filter(|object| wanted(object)))),
    );
    tokio::time::timeout(WAIT, seen.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("the watch ended while waiting for {what}"))
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: web, tier: front}
data:
  greeting: hello
  colour: blue
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: hello:1.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_then_leaves_alone_then_removes_dropped_fields() {
    let cluster = Cluster::start().await;
    let file = cluster.write("web.yaml", MANIFEST);
    let first = cluster.ok(&["apply", "-f", &file]).await;
    assert_eq!(
        first,
        "configmap/settings created\ndeployment.apps/web created\n"
    );
    let again = cluster.ok(&["apply", "-f", &file]).await;
    assert_eq!(
        again,
        "configmap/settings unchanged\ndeployment.apps/web unchanged\n"
    );

    // Drop a label and a data key, change another: both are removed.
    let edited = MANIFEST
        .replace("labels: {app: web, tier: front}", "labels: {app: web}")
        .replace("  colour: blue\n", "")
        .replace("greeting: hello", "greeting: hi");
    let output = cluster
        .ok_with_input(&["apply", "-f", "-"], Some(&edited))
        .await;
    assert_eq!(
        output,
        "configmap/settings configured\ndeployment.apps/web unchanged\n"
    );
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let settings = maps.get("settings").await.unwrap();
    let data = settings.data.unwrap();
    assert_eq!(data.get("greeting").map(String::as_str), Some("hi"));
    assert!(!data.contains_key("colour"), "{data:?}");
    let labels = settings.metadata.labels.unwrap();
    assert!(!labels.contains_key("tier"), "{labels:?}");
    let recorded =
        &settings.metadata.annotations.unwrap()["kubectl.kubernetes.io/last-applied-configuration"];
    let recorded: Value = serde_json::from_str(recorded).unwrap();
    assert_eq!(recorded["data"], json!({"greeting": "hi"}));

    // A directory of JSON (a List) applies too.
    let directory = cluster.dir.path().join("manifests");
    std::fs::create_dir(&directory).unwrap();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-json"}},
    ]});
    std::fs::write(directory.join("list.json"), list.to_string()).unwrap();
    let output = cluster
        .ok(&["apply", "-f", directory.to_str().unwrap()])
        .await;
    assert_eq!(output, "configmap/from-json created\n");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_tables_yaml_json_and_names() {
    let cluster = Cluster::start().await;
    let file = cluster.write("web.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &file]).await;

    let table = cluster.ok(&["get", "deploy"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    assert!(lines.next().unwrap().starts_with("web "), "{table}");
    let wide = cluster
        .ok(&["get", "deployments.apps", "web", "-o", "wide"])
        .await;
    assert!(
        wide.contains("IMAGES") && wide.contains("hello:1.0"),
        "{wide}"
    );
    let short = cluster.ok(&["get", "cm", "-l", "app=web"]).await;
    assert!(
        short.contains("settings") && !short.contains("kube-root"),
        "{short}"
    );

    let yaml = cluster
        .ok(&["get", "deployment", "web", "-o", "yaml"])
        .await;
    let object: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(object["kind"], "Deployment");
    assert_eq!(object["spec"]["replicas"], 2);
    let json = cluster.ok(&["get", "configmaps", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["kind"] == "ConfigMap"),
        "{json}"
    );
    let names = cluster
        .ok(&["get", "deploy/web", "cm/settings", "-o", "name"])
        .await;
    assert_eq!(names, "deployment.apps/web\nconfigmap/settings\n");
    let several = cluster.ok(&["get", "deploy,cm", "-A"]).await;
    assert!(several.contains("deployment.apps/web"), "{several}");
    assert!(several.starts_with("NAMESPACE"), "{several}");

    let all = cluster.ok(&["get", "all"]).await;
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(!all.contains("configmap/"), "{all}");
    let unknown = cluster.fails(&["get", "flurbs"]).await;
    assert!(unknown.contains("unknown kind \"flurbs\""), "{unknown}");
    let missing = cluster.fails(&["get", "deploy", "nope"]).await;
    assert!(
        missing.contains("Error from server (NotFound)"),
        "{missing}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_scale_logs_and_delete_speak_to_the_api() {
    let cluster = Cluster::start().await;
    let output = cluster
        .ok(&["run", "hello", "--image", "hello:1.0", "--port", "8080"])
        .await;
    assert_eq!(
        output,
        "deployment.apps/hello created\nservice/hello created\n"
    );
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let hello = deployments.get("hello").await.unwrap();
    let template = hello.spec.template.clone();
    assert_eq!(template.metadata.unwrap().labels.unwrap()["app"], "hello");
    let container = &template.spec.unwrap().containers[0];
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let service = services.get("hello").await.unwrap().spec.unwrap();
    assert_eq!(service.selector.unwrap()["app"], "hello");
    assert_eq!(service.ports.unwrap()[0].port, 8080);

    let scaled = cluster
        .ok(&["scale", "deployment/hello", "--replicas", "4"])
        .await;
    assert_eq!(scaled, "deployment.apps/hello scaled\n");
    let replicas = deployments.get("hello").await.unwrap().spec.replicas;
    assert_eq!(replicas, Some(4));

    // A pod no node runs has no log to show; the API says why.
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lonely"},
                  "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]}}"#;
    cluster
        .ok_with_input(&["apply", "-f", "-"], Some(pod))
        .await;
    let logs = cluster.fails(&["logs", "lonely"]).await;
    assert!(logs.contains("Error from server (BadRequest)"), "{logs}");
    assert!(logs.contains("does not have a host assigned"), "{logs}");

    let deleted = cluster
        .ok(&["delete", "deploy/hello", "svc/hello", "--cascade=orphan"])
        .await;
    assert_eq!(
        deleted,
        "deployments.apps \"hello\" deleted\nservices \"hello\" deleted\n"
    );
    // Orphaning leaves the object to the garbage collector (not running
    // here), marked with the policy's finalizer.
    let hello = deployments.get("hello").await.unwrap().metadata;
    assert!(hello.deletion_timestamp.is_some());
    assert_eq!(hello.finalizers, Some(vec!["orphan".to_owned()]));
    let file = cluster.write(
        "pod.json",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lonely"}}"#,
    );
    let deleted = cluster.ok(&["delete", "-f", &file]).await;
    assert_eq!(deleted, "pods \"lonely\" deleted\n");

    let missing = cluster.fails(&["apply", "-f", "no-such.yaml"]).await;
    assert!(
        missing.contains("the path \"no-such.yaml\" does not exist"),
        "{missing}"
    );
    let unknown = cluster.fails(&["delete", "gizmo", "x"]).await;
    assert!(unknown.contains("unknown kind \"gizmo\""), "{unknown}");
    cluster.stop().await;
}

/// Plays the kubelet for pods no agent runs: every pod that appears is
/// reported Running and Ready; a pod being deleted is let go at once.
fn spawn_fake_kubelet(client: kube::Client) -> tokio::task::JoinHandle<()> {
    use kube::api::{DeleteParams, Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut applied = watcher(pods.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = applied.next().await {
            let name = pod.metadata.name.clone().unwrap();
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                continue;
            }
            let patch = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}
            ]}});
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_history_undo_and_describe_with_the_controllers() {
    let cluster = Cluster::with_controllers().await;
    let kubelet = spawn_fake_kubelet(cluster.client.clone());
    let file = cluster.write("web.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &file]).await;
    let status = cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout", "60s"])
        .await;
    assert_eq!(status, "deployment \"web\" successfully rolled out\n");

    let updated = MANIFEST.replace("hello:1.0", "hello:2.0");
    let output = cluster
        .ok_with_input(&["apply", "-f", "-"], Some(&updated))
        .await;
    assert!(
        output.contains("deployment.apps/web configured"),
        "{output}"
    );
    let status = cluster
        .flotilla(&["rollout", "status", "deploy", "web"], None)
        .await;
    assert!(status.status.success(), "{status:?}");
    let history = cluster.ok(&["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let first = cluster
        .ok(&["rollout", "history", "deployment/web", "--revision", "1"])
        .await;
    assert!(first.contains("image: hello:1.0"), "{first}");

    let undone = cluster.ok(&["rollout", "undo", "deployment/web"]).await;
    assert_eq!(undone, "deployment.apps/web rolled back\n");
    cluster.ok(&["rollout", "status", "deployment/web"]).await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let web = deployments.get("web").await.unwrap();
    let image = web.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("hello:1.0"));
    assert_eq!(
        web.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let again = cluster
        .ok(&["rollout", "undo", "deployment/web", "--to-revision", "3"])
        .await;
    assert!(again.contains("skipped rollback"), "{again}");

    // The controller's events about the Deployment show in describe.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    first_seen(&events, "a ScalingReplicaSet event", |event| {
        event.reason.as_deref() == Some("ScalingReplicaSet")
    })
    .await;
    let described = cluster.ok(&["describe", "deployment", "web"]).await;
    for expected in [
        "Name:",
        "web",
        "Replicas:",
        "Events:",
        "ScalingReplicaSet",
        "hello:1.0",
    ] {
        assert!(
            described.contains(expected),
            "{expected} missing:\n{described}"
        );
    }
    let status = cluster
        .fails(&["rollout", "status", "deployment/absent"])
        .await;
    assert!(status.contains("NotFound"), "{status}");
    kubelet.abort();
    cluster.stop().await;
}

/// The next line a running `flotilla` printed; fails after [`WAIT`].
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no line in time")
        .unwrap()
        .expect("the output ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_the_table_then_a_row_per_change() {
    use tokio::io::AsyncBufReadExt;
    let cluster = Cluster::start().await;
    let file = cluster.write("web.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &file]).await;
    let mut watch = cluster
        .command(&["get", "configmaps", "-l", "app=web", "-w"])
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let header = next_line(&mut lines).await;
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["NAME", "DATA", "AGE"], "{header}");
    let listed = next_line(&mut lines).await;
    assert!(listed.starts_with("settings "), "{listed}");
    // The data column lines up under its header.
    assert_eq!(listed.find('2'), header.find("DATA"), "{header}\n{listed}");

    // Changes after the listing, and only those the selector matches.
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    let config_map = |name: &str, labels: Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    let create = kube::api::PostParams::default();
    maps.create(&create, &config_map("unlabelled", json!({})))
        .await
        .unwrap();
    maps.create(
        &create,
        &config_map("a-much-longer-name", json!({"app": "web"})),
    )
    .await
    .unwrap();
    let added = next_line(&mut lines).await;
    assert!(added.starts_with("a-much-longer-name   0 "), "{added}");
    maps.delete("settings", &Default::default()).await.unwrap();
    let deleted = next_line(&mut lines).await;
    assert!(deleted.starts_with("settings             2 "), "{deleted}");
    watch.kill().await.unwrap();

    let several = cluster.fails(&["get", "deploy,cm", "-w"]).await;
    assert!(several.contains("-w watches one kind"), "{several}");
    cluster.stop().await;
}

/// Answers every request with its own path, as an agent's log endpoint
/// answers with a log: enough to tell which pod's log the API asked for.
async fn spawn_fake_log_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or_default();
                let body = format!("{path}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_workload_read_the_pod_kubectl_would_choose() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Patch, PatchParams, PostParams};
    let cluster = Cluster::start().await;
    let (port, endpoint) = spawn_fake_log_endpoint().await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "fake-node"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }});
    nodes
        .patch_status("fake-node", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let file = cluster.write("web.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &file]).await;

    // Two pods the Deployment's selector matches: one waiting for a node,
    // one running and ready on the fake node (the one to read); and one it
    // does not match.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for (name, app, node) in [
        ("web-waiting", "web", None),
        ("web-running", "web", Some("fake-node")),
        ("other", "other", Some("fake-node")),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "hello:1.0"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let running = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}
    ]}});
    pods.patch_status(
        "web-running",
        &PatchParams::default(),
        &Patch::Merge(running),
    )
    .await
    .unwrap();

    let output = cluster.flotilla(&["logs", "deploy/web"], None).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "/containerLogs/default/web-running/web\n");
    assert_eq!(stderr, "Found 2 pods, using pod/web-running\n");
    for named in ["deployment.apps/web", "pod/web-running"] {
        let output = cluster
            .flotilla(&["logs", named, "--tail", "5"], None)
            .await;
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "/containerLogs/default/web-running/web?tailLines=5\n"
        );
        assert!(
            output.stderr.is_empty() || named.starts_with("deployment"),
            "{output:?}"
        );
    }
    let missing = cluster.fails(&["logs", "deploy/absent"]).await;
    assert!(
        missing.contains("Error from server (NotFound)"),
        "{missing}"
    );
    let lonely = MANIFEST
        .split("---")
        .nth(1)
        .unwrap()
        .replace("web", "lonely");
    cluster
        .ok_with_input(&["apply", "-f", "-"], Some(&lonely))
        .await;
    let nothing = cluster.fails(&["logs", "deployment/lonely"]).await;
    assert!(
        nothing.contains("no pods found for deployment.apps/lonely (selector app=lonely)"),
        "{nothing}"
    );
    endpoint.abort();
    cluster.stop().await;
}

/// `flotilla kubeconfig --user` on a server's data directory: a
/// certificate for that user and group, which the API knows them by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_issues_a_user_certificate_from_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::loopback(dir.path(), Duration::from_millis(20))
        .unwrap()
        .with_https(&[])
        .unwrap();
    let server = Server::start(config).await.unwrap();
    let url = format!("https://{}", server.api_address());
    let issue = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["kubeconfig", "--server", &url, "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let issued = issue(&["--user", "alice", "--group", "team-a", "--ttl", "1h"]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let document = String::from_utf8(issued.stdout).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let alice = kube::Client::try_from(config).unwrap();
    let reviews: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = Api::all(alice);
    let review = reviews
        .create(&Default::default(), &Default::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(
        user.groups.unwrap(),
        ["team-a".to_string(), "system:authenticated".to_string()]
    );
    // The cluster's own names and lifetimes past five years are refused.
    for refused in [
        &["--user", "system:admin"][..],
        &["--user", "member-1"],
        &["--user", "bob", "--ttl", "0"],
        &["--user", "bob", "--ttl", "20000d"],
    ] {
        let output = issue(refused);
        assert!(!output.status.success(), "{refused:?} was issued");
    }
    server.shutdown().await;
}
