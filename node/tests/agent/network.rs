//! The pod network between real agents: two nodes with certificates from
//! one CA, each on its own loopback address, with their mesh endpoints
//! (QUIC) and NodePort listeners, fed by the API like kube-proxy.
//!
//! Guests call each other with ordinary URLs: `examples/frontend`'s
//! `/call?url=…` reports what its outgoing request got back.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use flotilla_node::agent::KubeletTls;
use flotilla_node::net::{Mesh, MeshError, MeshTls, PodNetwork};
use flotilla_pki::ClusterCa;
use http_body_util::Full;

use super::*;

/// A node of the pod network: its runtime, agent and network.
struct NetNode {
    runtime: NodeRuntime,
    agent: Agent,
    network: PodNetwork,
    ip: IpAddr,
}

/// The node certificate `ca` issues to `node` at `ip`, as a join does.
fn node_credentials(ca: &ClusterCa, node: &str, ip: IpAddr) -> flotilla_pki::Credentials {
    ca.issue_in_group(
        &format!("system:node:{node}"),
        Some("system:nodes"),
        &[ip.to_string(), node.to_owned()],
    )
    .unwrap()
}

/// [`node_credentials`] as the node presents them.
fn node_tls(ca: &ClusterCa, node: &str, ip: IpAddr) -> KubeletTls {
    KubeletTls::new(&node_credentials(ca, node, ip)).unwrap()
}

impl Cluster {
    /// Starts `node` at `ip` (a loopback address of its own, so each node
    /// has its own NodePorts), with a certificate from `ca`.
    async fn net_node(&self, node: &str, ip: &str, ca: &ClusterCa) -> NetNode {
        let ip: IpAddr = ip.parse().unwrap();
        let network = PodNetwork::new(node);
        let runtime = NodeRuntime::with_outgoing_http(
            support::config(&self.dir.path().join(node)),
            Arc::new(flotilla_node::LocalSource::files_only()),
            Arc::new(network.clone()),
        )
        .unwrap();
        let mut config = config(node);
        config.node_ip = ip;
        config.kubelet_listen = SocketAddr::new(ip, 0);
        config.mesh_listen = SocketAddr::new(ip, 0);
        config.kubelet_tls = Some(node_tls(ca, node, ip));
        config.ingress_http_listen = Some(SocketAddr::new(ip, 0));
        config.ingress_https_listen = Some(SocketAddr::new(ip, 0));
        let agent = Agent::start_with_network(
            config,
            self.client.clone(),
            runtime.clone(),
            Some(network.clone()),
        )
        .await
        .unwrap();
        NetNode {
            runtime,
            agent,
            network,
            ip,
        }
    }

    /// Creates `pod` and waits until it runs and is ready; returns it.
    async fn running(&self, pod: Pod) -> Pod {
        let name = pod.metadata.name.clone().unwrap();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.create(&PostParams::default(), &pod).await.unwrap();
        wait_for(&pods, &name, "the pod to be ready", running_and_ready)
            .await
            .unwrap()
    }

    /// Creates any namespaced object from JSON.
    async fn create<K>(&self, object: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let object: K = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap()
    }

    /// Stops the nodes' agents, then the control plane.
    async fn stop_with(self, nodes: Vec<NetNode>) {
        for node in nodes {
            node.agent.shutdown().await;
        }
        drop(self.controllers);
        self.server.shutdown().await;
    }
}

/// A frontend pod (port 9090) bound to `node`, labelled `app: <name>`.
fn frontend(name: &str, node: &str) -> Pod {
    let mut pod = support::pod(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "frontend",
                "image": support::example_image("frontend"),
                "ports": [{"containerPort": 9090}],
            }],
        },
    }));
    pod.metadata.uid = None;
    pod
}

/// A hello-http pod (port 8080) bound to `node`, labelled `app: hello`.
fn hello(name: &str, node: &str) -> Pod {
    let mut pod = super::pod(name, node, None);
    pod.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "hello".to_owned())]));
    pod
}

/// Asks the frontend `pod` on `node` to GET `url`; returns its answer.
async fn call(node: &NetNode, pod: &Pod, url: &str) -> (u16, String) {
    let uid = pod.metadata.uid.as_deref().unwrap();
    support::get(&node.runtime, uid, 9090, &format!("/call?url={url}"))
        .await
        .unwrap()
}

/// Calls until the answer satisfies `check` (the routing tables follow the
/// API a moment behind it), for at most `WAIT`.
async fn call_until(
    node: &NetNode,
    pod: &Pod,
    url: &str,
    check: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        let (status, body) = call(node, pod, url).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "calling {url}: still {status} {body}"
        );
        ticker.tick().await;
    }
}

/// GETs `path` from `address` over a real TCP connection, as curl would.
async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    exchange(stream, &address.to_string(), path).await
}

/// One HTTP/1.1 GET over `stream`, naming `host`.
async fn exchange<S>(stream: S, host: &str, path: &str) -> Option<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_two_nodes_call_each_other_by_name_and_cluster_ip() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("net-a", "127.0.10.1", &ca).await;
    let b = cluster.net_node("net-b", "127.0.10.2", &ca).await;
    let front_a = cluster.running(frontend("front-a", "net-a")).await;
    let front_b = cluster.running(frontend("front-b", "net-b")).await;
    for name in ["front-a", "front-b"] {
        cluster
            .create::<Service>(json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 9090}]},
            }))
            .await;
    }
    let ok = |status: u16, body: &str| status == 200 && body.contains(": 200 ok");
    // a → b and b → a, each across the mesh, by the names a pod's search
    // path allows.
    let answer = call_until(&a, &front_a, "http://front-b/healthz", ok).await;
    assert!(
        answer.contains("called http://front-b/healthz: 200 ok"),
        "{answer}"
    );
    call_until(
        &b,
        &front_b,
        "http://front-a.default.svc.cluster.local/healthz",
        ok,
    )
    .await;
    call_until(&a, &front_a, "http://front-b.default.svc:80/healthz", ok).await;

    // By ClusterIP.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let cluster_ip = services
        .get("front-b")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    call_until(&a, &front_a, &format!("http://{cluster_ip}/healthz"), ok).await;
    // And a pod by its address, on its own port.
    let pod_b_ip = pod_ip(&front_b);
    call_until(&a, &front_a, &format!("http://{pod_b_ip}:9090/healthz"), ok).await;

    let (local, mesh_out, _) = a.network.metrics().requests();
    assert!(
        mesh_out >= 4,
        "requests from a went over the mesh: {mesh_out}"
    );
    let (_, _, mesh_in) = b.network.metrics().requests();
    assert!(mesh_in >= 4, "and arrived at b: {mesh_in}");
    assert_eq!(local, 0, "nothing from a stayed on a");

    // A port the Service does not have, and a name no Service has.
    let (status, body) = call(&a, &front_a, "http://front-b:81/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("ConnectionRefused"), "{body}");
    let (status, body) = call(&a, &front_a, "http://nothing.default.svc/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DnsError"), "{body}");

    cluster.stop_with(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_port_on_every_node_reaches_every_replica() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("np-a", "127.0.11.1", &ca).await;
    let b = cluster.net_node("np-b", "127.0.11.2", &ca).await;
    cluster.running(hello("hello-a", "np-a")).await;
    cluster.running(hello("hello-b", "np-b")).await;
    cluster
        .create::<Service>(json!({
            "metadata": {"name": "hello"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "hello"},
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 31080}],
            },
        }))
        .await;
    // Through either node's NodePort, both replicas answer in turn.
    for node in [&a, &b] {
        let address = SocketAddr::new(node.ip, 31080);
        let mut seen = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        while seen.len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {seen:?} answered at {address}"
            );
            if let Some((200, body)) = http_get(address, "/").await
                && let Some(pod) = body.split("pod=").nth(1)
            {
                seen.insert(pod.split_whitespace().next().unwrap_or_default().to_owned());
            } else {
                ticker.tick().await;
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["hello-a", "hello-b"],
            "at {address}"
        );
    }
    // The counters show where the choices went.
    let text = a.network.metrics().render();
    assert!(
        text.contains("flotilla_network_endpoint_choices_total{locality=\"same_node\"}"),
        "{text}"
    );

    cluster.stop_with(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_localhost_and_egress_needs_an_allowance() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("lo-a", "127.0.12.1", &ca).await;
    let mut pod = support::pod(json!({
        "metadata": {"name": "two"},
        "spec": {
            "nodeName": "lo-a",
            "containers": [
                {"name": "hello", "image": support::example_image("hello-http"),
                 "ports": [{"containerPort": 8080}]},
                {"name": "frontend", "image": support::example_image("frontend"),
                 "ports": [{"containerPort": 9090}]},
            ],
        },
    }));
    pod.metadata.uid = None;
    let pod = cluster.running(pod).await;
    let (status, body) = call(&a, &pod, "http://localhost:8080/").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("called http://localhost:8080/: 200 hello, world!"),
        "{body}"
    );
    let (status, body) = call(&a, &pod, "http://127.0.0.1:8080/healthz").await;
    assert_eq!((status, body.contains(": 200 ok")), (200, true), "{body}");

    // Outside the cluster: refused by default, and counted.
    let (status, body) = call(&a, &pod, "http://example.com/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    assert_eq!(a.network.metrics().denied_egress(), 1);

    // A server outside the pod network (the host's loopback, but not the
    // pod's own 127.0.0.1) is outside too, until the namespace allows it.
    let outside = tokio::net::TcpListener::bind("127.0.12.9:0").await.unwrap();
    let outside_address = outside.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = outside.accept().await {
            let service =
                hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| {
                    let host = request.headers().get("host").cloned();
                    async move {
                        let text = format!("outside, host {host:?}");
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let url = format!("http://{outside_address}/");
    let (status, body) = call(&a, &pod, &url).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let allow = json!({"metadata": {"annotations": {"flotilla.dev/egress-allow": "127.0.12.9, api.example.com"}}});
    namespaces
        .patch(
            "default",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(allow),
        )
        .await
        .unwrap();
    let body = call_until(&a, &pod, &url, |status, _| status == 200).await;
    assert!(
        body.contains(": 200 outside, host Some(\"127.0.12.9:"),
        "{body}"
    );

    cluster.stop_with(vec![a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_refuses_a_node_whose_certificate_is_forged() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("mesh-a", "127.0.13.1", &ca).await;
    let pod = cluster.running(hello("hello-m", "mesh-a")).await;
    let target = SocketAddr::new(pod_ip(&pod).into(), 8080);
    let mesh_address = SocketAddr::new(a.ip, a.agent.mesh_port().unwrap());

    // A node that trusts the cluster's CA but whose own certificate, naming
    // a plausible node, comes from another CA.
    let forger = ClusterCa::generate().unwrap();
    let forged_cert = node_credentials(&forger, "mesh-x", "127.0.13.9".parse().unwrap());
    let forged = KubeletTls::new(&flotilla_pki::Credentials {
        ca_cert_pem: ca.cert_pem().to_owned(),
        ..forged_cert
    })
    .unwrap()
    .mesh_tls()
    .unwrap();
    let refuse: flotilla_node::net::InboundHandler =
        Arc::new(|_, _, _| Box::pin(async { unreachable!("nothing should arrive") }));
    let intruder = Mesh::bind("127.0.13.9:0".parse().unwrap(), forged, refuse.clone()).unwrap();
    let request = || {
        http::Request::get("/")
            .body(flotilla_node::request_body(Full::new(Bytes::new())))
            .unwrap()
    };
    let refused = intruder
        .send("mesh-a", mesh_address, target, None, request())
        .await;
    assert!(refused.is_err(), "a forged certificate was let in");
    assert_eq!(a.network.metrics().requests().2, 0, "nothing arrived");
    // Nor does a node that trusts another CA accept this cluster's nodes.
    let stranger = node_tls(&forger, "mesh-y", "127.0.13.8".parse().unwrap())
        .mesh_tls()
        .unwrap();
    let stranger = Mesh::bind("127.0.13.8:0".parse().unwrap(), stranger, refuse.clone()).unwrap();
    let refused = stranger
        .send("mesh-a", mesh_address, target, None, request())
        .await
        .unwrap_err();
    assert!(matches!(refused, MeshError::Connect { .. }), "{refused}");

    // Nor is a certificate from the cluster's CA that is not a node's (an
    // administrator's, say).
    let issued = ca.issue("admin", &["127.0.13.7".to_owned()]).unwrap();
    let admin = KubeletTls::new(&issued).unwrap().mesh_tls().unwrap();
    let admin = Mesh::bind("127.0.13.7:0".parse().unwrap(), admin, refuse.clone()).unwrap();
    let refused = admin
        .send("mesh-a", mesh_address, target, None, request())
        .await;
    assert!(refused.is_err(), "a user's certificate was let in");
    assert_eq!(a.network.metrics().requests().2, 0, "nothing arrived");

    // A node with a certificate from the cluster's CA is served.
    let genuine: MeshTls = node_tls(&ca, "mesh-b", "127.0.13.2".parse().unwrap())
        .mesh_tls()
        .unwrap();
    let member = Mesh::bind("127.0.13.2:0".parse().unwrap(), genuine, refuse).unwrap();
    let response = member
        .send("mesh-a", mesh_address, target, None, request())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    cluster.stop_with(vec![a]).await;
}

/// GETs `path` from the gateway at `address` for `host`, over HTTPS when
/// `ca` (the only root trusted) is given, with `host` as SNI.
async fn gateway_get(
    address: SocketAddr,
    host: &str,
    path: &str,
    ca: Option<&ClusterCa>,
) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let Some(ca) = ca else {
        return exchange(stream, host, path).await;
    };
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let stream = connector.connect(name, stream).await.ok()?;
    exchange(stream, host, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_routes_by_host_and_path_over_http_and_https() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("in-a", "127.0.14.1", &ca).await;
    let [http_address, https_address] = a.agent.ingress_addresses() else {
        panic!(
            "the gateway listens twice: {:?}",
            a.agent.ingress_addresses()
        );
    };
    let (http_address, https_address) = (*http_address, *https_address);
    cluster.running(hello("hello-i", "in-a")).await;
    cluster.running(frontend("front-i", "in-a")).await;
    cluster
        .create::<Service>(json!({
            "metadata": {"name": "hello"},
            "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .await;
    cluster
        .create::<Service>(json!({
            "metadata": {"name": "front-i"},
            "spec": {"selector": {"app": "front-i"},
                     "ports": [{"name": "web", "port": 80, "targetPort": 9090}]},
        }))
        .await;
    // The site's certificate, kept in a kubernetes.io/tls Secret.
    let site_ca = ClusterCa::generate().unwrap();
    let site = site_ca
        .issue("secure.test", &["secure.test".to_owned()])
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client.clone(), "default");
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "secure-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": site.cert_pem, "tls.key": site.key_pem},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> =
        Api::namespaced(cluster.client.clone(), "default");
    let ingress = serde_json::from_value(json!({
        "metadata": {"name": "site"},
        "spec": {
            "tls": [{"hosts": ["secure.test"], "secretName": "secure-tls"}],
            "rules": [
                {"host": "hello.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "hello", "port": {"number": 80}}}}]}},
                {"host": "front.test", "http": {"paths": [
                    {"path": "/healthz", "pathType": "Exact",
                     "backend": {"service": {"name": "front-i", "port": {"name": "web"}}}}]}},
                {"host": "secure.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "hello", "port": {"number": 80}}}}]}},
            ],
        },
    }))
    .unwrap();
    ingresses
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();

    // The gateway follows the API a moment behind: ask until it routes.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for (address, host, path, ca, expected) in [
        (http_address, "hello.test", "/", None, "pod=hello-i path=/"),
        (http_address, "front.test", "/healthz", None, "ok"),
        (
            https_address,
            "secure.test",
            "/x",
            Some(&site_ca),
            "path=/x",
        ),
    ] {
        loop {
            let answer = gateway_get(address, host, path, ca).await;
            if let Some((200, body)) = &answer
                && body.contains(expected)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{host}{path} at {address}: {answer:?}"
            );
            ticker.tick().await;
        }
    }
    // No rule for this host, and no default backend.
    let (status, body) = gateway_get(http_address, "nothing.test", "/", None)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no Ingress rule matches nothing.test/"),
        "{body}"
    );
    // No certificate for a host no Ingress lists: the handshake fails.
    assert!(
        gateway_get(https_address, "hello.test", "/", Some(&site_ca))
            .await
            .is_none()
    );

    cluster.stop_with(vec![a]).await;
}

/// Calls until the frontend's answer says `allowed` (200 from the target)
/// or denied (`HttpRequestDenied`), as the policy tables catch up.
async fn expect_reach(node: &NetNode, pod: &Pod, url: &str, allowed: bool) {
    call_until(node, pod, url, |status, body| {
        if allowed {
            status == 200 && body.contains(": 200 ")
        } else {
            status == 502 && body.contains("HttpRequestDenied")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_allow_and_deny_across_namespaces() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("pol-a", "127.0.15.1", &ca).await;
    let b = cluster.net_node("pol-b", "127.0.15.2", &ca).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    for (name, team) in [("alpha", "a"), ("beta", "b")] {
        let namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
                .unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    let in_namespace = |mut pod: Pod, namespace: &str| {
        pod.metadata.namespace = Some(namespace.to_owned());
        pod
    };
    let alpha_front = cluster
        .running(in_namespace(frontend("front", "pol-a"), "alpha"))
        .await;
    let beta_front = cluster
        .running(in_namespace(frontend("front", "pol-b"), "beta"))
        .await;
    let mut back = in_namespace(hello("back", "pol-b"), "beta");
    back.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "back".to_owned())]));
    cluster.running(back).await;
    cluster
        .create::<Service>(json!({
            "metadata": {"name": "back", "namespace": "beta"},
            "spec": {"selector": {"app": "back"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .await;
    // alpha/front calls across nodes, beta/front on the same node.
    let (from_alpha, from_beta) = ((&a, &alpha_front), (&b, &beta_front));
    let check = |alpha: bool, beta: bool| async move {
        expect_reach(from_alpha.0, from_alpha.1, "http://back.beta/", alpha).await;
        expect_reach(from_beta.0, from_beta.1, "http://back/", beta).await;
    };
    check(true, true).await;

    // Ingress to beta/back only from namespaces of team a.
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(cluster.client.clone(), "beta");
    cluster
        .create::<k8s_openapi::api::networking::v1::NetworkPolicy>(json!({
            "metadata": {"name": "from-team-a", "namespace": "beta"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "back"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}],
            },
        }))
        .await;
    check(true, false).await;
    assert!(b.network.metrics().denied_by_policy() > 0);

    // Allowing pods of its own namespace too, on the named port only.
    cluster
        .create::<k8s_openapi::api::networking::v1::NetworkPolicy>(json!({
            "metadata": {"name": "from-front", "namespace": "beta"},
            "spec": {
                "podSelector": {},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "front"}}}],
                             "ports": [{"port": 8080}]}],
            },
        }))
        .await;
    check(true, true).await;

    // No egress at all from alpha: its call is refused before it leaves.
    cluster
        .create::<k8s_openapi::api::networking::v1::NetworkPolicy>(json!({
            "metadata": {"name": "no-egress", "namespace": "alpha"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
        }))
        .await;
    check(false, true).await;
    let (status, body) = call(&a, &alpha_front, "http://back.beta/").await;
    assert_eq!(status, 502, "{body}");

    // Policies gone, everything flows again.
    policies
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
    let alpha_policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(cluster.client.clone(), "alpha");
    alpha_policies
        .delete("no-egress", &Default::default())
        .await
        .unwrap();
    check(true, true).await;

    cluster.stop_with(vec![a, b]).await;
}

/// A `tcp-echo` pod bound to `node`, running `args` once.
fn tcp_echo(name: &str, node: &str, args: &[&str], labels: serde_json::Value) -> Pod {
    let mut pod = support::pod(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{
                "name": "echo",
                "image": support::example_image("tcp-echo"),
                "args": args,
                "ports": [{"containerPort": 7000}],
            }],
        },
    }));
    pod.metadata.uid = None;
    pod
}

/// The lines a container of `pod` on `node` printed so far.
fn printed(node: &NetNode, pod: &Pod, container: &str) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap();
    let lines = node.runtime.logs(uid, container, &Default::default());
    lines
        .map(|lines| lines.into_iter().map(|line| line.text).collect::<Vec<_>>())
        .unwrap_or_default()
        .join("\n")
}

/// Runs `tcp-echo send TARGET TEXT` in a pod on `node`; whether it
/// succeeded, and what it printed.
async fn tcp_send(
    cluster: &Cluster,
    (node_name, node): (&str, &NetNode),
    name: &str,
    target: &str,
    labels: serde_json::Value,
) -> (bool, String) {
    let pod = tcp_echo(name, node_name, &["send", target, name], labels);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = |pod: &Pod| pod.status.as_ref()?.phase.clone();
    let done = wait_for(&pods, name, "the client to finish", |pod: Option<&Pod>| {
        pod.and_then(phase)
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    })
    .await
    .unwrap();
    let succeeded = phase(&done).as_deref() == Some("Succeeded");
    let output = printed(node, &done, "echo");
    (succeeded, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_echoes_between_pods_across_nodes_under_network_policy() {
    let cluster = Cluster::start().await;
    let ca = ClusterCa::generate().unwrap();
    let a = cluster.net_node("tcp-a", "127.0.16.1", &ca).await;
    let b = cluster.net_node("tcp-b", "127.0.16.2", &ca).await;
    let mut server = tcp_echo("echo", "tcp-b", &["serve", "7000"], json!({"app": "echo"}));
    // Ready once a tcpSocket probe connects: the server listens.
    let spec = server.spec.as_mut().unwrap();
    spec.restart_policy = Some("Always".to_owned());
    spec.containers[0].readiness_probe = Some(
        serde_json::from_value(json!({"tcpSocket": {"port": 7000}, "periodSeconds": 1})).unwrap(),
    );
    let server = cluster.running(server).await;
    assert!(
        printed(&b, &server, "echo").contains("listening on 7000"),
        "ready before listening"
    );
    let service: Service = cluster
        .create(json!({
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 7000, "targetPort": 7000}]},
        }))
        .await;
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let server_ip = pod_ip(&server);

    // By name and by ClusterIP from the other node (over the mesh); by
    // pod IP from the same node (in-process). The name resolves once the
    // Service's endpoints reach the table, so the first client retries.
    let mut attempt = 0;
    let (echoed, output) = loop {
        attempt += 1;
        let name = format!("by-name-{attempt}");
        let sent = tcp_send(&cluster, ("tcp-a", &a), &name, "echo:7000", json!({})).await;
        if sent.0 || attempt == 20 {
            break sent;
        }
    };
    assert!(echoed, "{output}");
    assert!(output.contains("echo: by-name-"), "{output}");
    let (echoed, output) = tcp_send(
        &cluster,
        ("tcp-a", &a),
        "by-cluster-ip",
        &format!("{cluster_ip}:7000"),
        json!({}),
    )
    .await;
    assert!(echoed, "{output}");
    assert_eq!(output, "echo: by-cluster-ip");
    let (echoed, output) = tcp_send(
        &cluster,
        ("tcp-b", &b),
        "by-pod-ip",
        &format!("{server_ip}:7000"),
        json!({}),
    )
    .await;
    assert!(echoed, "{output}");
    let (_, mesh_out, _) = a.network.metrics().tcp_connections();
    assert!(
        mesh_out >= 2,
        "a's connections went over the mesh: {mesh_out}"
    );
    let (local, _, mesh_in) = b.network.metrics().tcp_connections();
    assert!(mesh_in >= 2, "and arrived at b: {mesh_in}");
    assert!(local >= 1, "b's own stayed in the process: {local}");

    // A port nobody listens on is refused.
    let (echoed, output) = tcp_send(
        &cluster,
        ("tcp-a", &a),
        "no-listener",
        &format!("{server_ip}:7001"),
        json!({}),
    )
    .await;
    assert!(!echoed);
    assert!(output.contains("Connection refused"), "{output}");

    // Under a policy admitting only friends, a stranger is denied with a
    // clear error and a friend still gets through.
    cluster
        .create::<k8s_openapi::api::networking::v1::NetworkPolicy>(json!({
            "metadata": {"name": "friends-only"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "echo"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                    "ports": [{"port": 7000}],
                }],
            },
        }))
        .await;
    let mut attempt = 0;
    let (echoed, output) = loop {
        attempt += 1;
        let name = format!("stranger-{attempt}");
        let sent = tcp_send(&cluster, ("tcp-a", &a), &name, "echo:7000", json!({})).await;
        if !sent.0 || attempt == 20 {
            break sent;
        }
    };
    assert!(!echoed, "{output}");
    assert!(output.contains("Permission denied"), "{output}");
    // The friend connects as it starts, before its address has gone
    // round through the API: its node knows it already.
    let labels = json!({"role": "friend"});
    let (echoed, output) = tcp_send(&cluster, ("tcp-a", &a), "friend", "echo:7000", labels).await;
    assert!(echoed, "{output}");
    assert!(
        a.network
            .metrics()
            .render()
            .contains("flotilla_network_denied_total{reason=\"policy\"}"),
        "the denial is counted"
    );

    cluster.stop_with(vec![a, b]).await;
}
