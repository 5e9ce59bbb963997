//! kube-rs, the Rust Kubernetes client, against a Flotilla API server:
//! typed `Api<K>` calls and a `watcher` stream that outlives a server
//! restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::TestServer;

/// Bound on waiting for one watch event, including a server restart.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn client(server: &TestServer) -> kube::Client {
    let url = server.url().parse().unwrap();
    let mut config = kube::Config::new(url);
    config.default_namespace = "default".into();
    kube::Client::try_from(config).unwrap()
}

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"key": "value"},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_api_create_get_list_patch_delete() {
    let server = TestServer::start().await;
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client(&server));

    let created = config_maps
        .create(
            &PostParams::default(),
            &config_map("one", json!({"tier": "web"})),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    config_maps
        .create(
            &PostParams::default(),
            &config_map("two", json!({"tier": "db"})),
        )
        .await
        .unwrap();
    let error = config_maps
        .create(&PostParams::default(), &config_map("one", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists"),
        "{error:?}"
    );

    let fetched = config_maps.get("one").await.unwrap();
    assert_eq!(fetched.metadata.uid.as_deref(), Some(uid.as_str()));
    let web = config_maps
        .list(&ListParams::default().labels("tier in (web,cache)"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(web.items[0].metadata.name.as_deref(), Some("one"));
    let paged = config_maps
        .list(&ListParams::default().limit(1))
        .await
        .unwrap();
    assert_eq!(paged.items.len(), 1);
    let rest = config_maps
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(paged.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("two"));

    let patched = config_maps
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    let patched = config_maps
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "remove", "path": "/data/extra"}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 1);

    // A stale resourceVersion is a 409 Conflict, as on Kubernetes.
    let mut stale = fetched.clone();
    stale.data = Some([("key".to_string(), "stale".to_string())].into());
    let error = config_maps
        .replace("one", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict"),
        "{error:?}"
    );

    let deployments: Api<Deployment> = Api::default_namespaced(client(&server));
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "hello-http:0.1.0"}]}}
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let scale = deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    let status = deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 4}})),
        )
        .await
        .unwrap();
    // The status write changed the status only, so the generation stays.
    assert_eq!(status.metadata.generation, Some(2));
    assert_eq!(status.status.unwrap().replicas, Some(4));

    config_maps
        .delete("one", &DeleteParams::default())
        .await
        .unwrap();
    let error = config_maps.get("one").await.unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 404),
        "{error:?}"
    );
    server.stop().await;
}

/// Foreground and orphan deletions leave the object marked, with the
/// finalizer the garbage collector clears; background deletion removes it
/// at once. An unknown policy is a 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_policies_mark_objects_as_kubernetes_does() {
    let server = TestServer::start().await;
    let client = client(&server);
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for (name, params, finalizer) in [
        ("fg", DeleteParams::foreground(), "foregroundDeletion"),
        ("orphan", DeleteParams::orphan(), "orphan"),
    ] {
        config_maps
            .create(&PostParams::default(), &config_map(name, json!({})))
            .await
            .unwrap();
        let marked = config_maps
            .delete(name, &params)
            .await
            .unwrap()
            .left()
            .expect("the marked object");
        assert!(marked.metadata.deletion_timestamp.is_some());
        assert_eq!(
            marked.metadata.finalizers,
            Some(vec![finalizer.to_string()])
        );
        // Still there, until whoever owns the finalizer removes it.
        let stored = config_maps.get(name).await.unwrap();
        assert!(stored.metadata.deletion_timestamp.is_some());
        config_maps
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        let error = config_maps.get(name).await.unwrap_err();
        assert!(
            matches!(&error, kube::Error::Api(status) if status.code == 404),
            "{error:?}"
        );
    }

    config_maps
        .create(&PostParams::default(), &config_map("bg", json!({})))
        .await
        .unwrap();
    config_maps
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    assert!(config_maps.get("bg").await.is_err());

    config_maps
        .create(&PostParams::default(), &config_map("odd", json!({})))
        .await
        .unwrap();
    let request = axum::http::Request::delete(
        "/api/v1/namespaces/default/configmaps/odd?propagationPolicy=Sideways",
    )
    .body(Vec::new())
    .unwrap();
    let error = client.request_text(request).await.unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status)
            if status.code == 422 && status.reason == "Invalid" && status.message.contains("propagationPolicy")),
        "{error:?}"
    );
    // Nothing was deleted.
    config_maps.get("odd").await.unwrap();
    server.stop().await;
}

type Events =
    futures::stream::BoxStream<'static, Result<watcher::Event<ConfigMap>, watcher::Error>>;

/// The name of the next object the watcher reports as applied.
async fn next_applied(events: &mut Events) -> String {
    tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            // Errors while the server is away are retried by the watcher,
            // after its back-off.
            if let Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) =
                events.next().await.expect("the watcher ended")
            {
                return object.metadata.name.unwrap();
            }
        }
    })
    .await
    .expect("a watch event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let mut events = watcher(config_maps.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();

    config_maps
        .create(&PostParams::default(), &config_map("before", json!({})))
        .await
        .unwrap();
    assert_eq!(next_applied(&mut events).await, "before");

    server.restart().await;
    config_maps
        .create(&PostParams::default(), &config_map("after", json!({})))
        .await
        .unwrap();
    // The watcher reconnects and resumes; "after" arrives (a re-list may
    // show "before" again first, which is how watchers recover).
    let mut seen = next_applied(&mut events).await;
    while seen == "before" {
        seen = next_applied(&mut events).await;
    }
    assert_eq!(seen, "after");
    let listed: Vec<String> = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cm| cm.metadata.name.unwrap())
        .collect();
    assert_eq!(listed, ["after", "before"]);
    server.stop().await;
}

/// `/livez` and `/readyz` tell the truth about the store: a server whose
/// member lost its quorum is live but not ready, as kube-apiserver is
/// with etcd away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_store_has_no_quorum() {
    use flotilla_control::Server;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = support::three_member_configs(&dirs);
    let mut servers: Vec<Server> =
        futures::future::join_all(configs.into_iter().map(Server::start))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let last = servers.pop().unwrap();
    assert_eq!(check(&last, "/readyz").await.0, 200);
    let mut leadership = last.member().replica().leadership();
    for server in servers {
        server.shutdown().await;
    }
    tokio::time::timeout(
        EVENT_TIMEOUT,
        leadership.wait_for(|now| now.leader_id.is_none()),
    )
    .await
    .expect("the member noticed it lost its quorum")
    .unwrap();
    let (code, text) = check(&last, "/readyz").await;
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("no leader"), "{text}");
    assert_eq!(check(&last, "/livez").await.0, 200);
    last.shutdown().await;
}

/// A health path of `server`: its status code and text.
async fn check(server: &flotilla_control::Server, path: &str) -> (u16, String) {
    let url = format!("http://{}", server.api_address());
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(request).await {
        Ok(text) => (200, text),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(other) => panic!("{path}: {other}"),
    }
}

/// Integers from a request never overflow: a watch asking for the
/// largest timeout is served (for a day at most), and the server lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_asking_for_forever_is_served() {
    let server = TestServer::start().await;
    let client = client(&server);
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    config_maps
        .create(&PostParams::default(), &config_map("seen", json!({})))
        .await
        .unwrap();
    let request = http::Request::get(format!(
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds={}",
        i64::MAX
    ))
    .body(Vec::new())
    .unwrap();
    let events = client.request_events::<ConfigMap>(request).await.unwrap();
    let mut events = std::pin::pin!(events);
    let first = tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .expect("an event in time")
        .expect("the watch is open")
        .unwrap();
    match first {
        kube::api::WatchEvent::Added(map) => assert_eq!(map.metadata.name.as_deref(), Some("seen")),
        other => panic!("expected the ConfigMap, got {other:?}"),
    }
    config_maps.get("seen").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_bomb_is_answered_with_a_4xx_within_a_second() {
    let server = TestServer::start().await;
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    config_maps
        .create(&PostParams::default(), &config_map("bomb", json!({})))
        .await
        .unwrap();
    // Each copy doubles the object: forty would make a terabyte.
    let mut operations = vec![json!({"op": "add", "path": "/metadata/annotations", "value": {}})];
    for n in 0..40 {
        operations.push(json!({"op": "copy", "from": "/data", "path": format!("/data/k{n}")}));
        operations.push(json!({"op": "copy", "from": "/data", "path": "/metadata/annotations/a"}));
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(operations)).unwrap();
    let started = std::time::Instant::now();
    let answer = config_maps
        .patch("bomb", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await;
    let elapsed = started.elapsed();
    match answer {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 413, "{status:?}"),
        other => panic!("the bomb should have been refused: {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(1), "answered in {elapsed:?}");
    // Nothing was written, and the server still serves.
    let stored = config_maps.get("bomb").await.unwrap();
    assert_eq!(stored.data.unwrap().len(), 1);
    server.stop().await;
}

/// Options whose encryption configuration has `providers` for Secrets.
fn encrypting(providers: &str) -> flotilla_control::ServerOptions {
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n\
         resources:\n- resources: [secrets]\n  providers:\n{providers}"
    );
    let encryption = flotilla_control::encryption::Encryption::parse(&text).unwrap();
    flotilla_control::ServerOptions {
        encryption: Some(std::sync::Arc::new(encryption)),
        ..Default::default()
    }
}

fn provider(kind: &str, name: &str, byte: u8) -> String {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    format!("  - {kind}:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path)
                .unwrap()
                .windows(needle.len())
                .any(|window| window == needle)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    use k8s_openapi::api::core::v1::Secret;
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        flotilla_control::ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
    let start = |config: &flotilla_control::ServerConfig, providers: String| {
        let config = config.clone();
        async move {
            flotilla_control::Server::start_with(config, encrypting(&providers))
                .await
                .unwrap()
        }
    };
    let server = start(&config, provider("aesgcm", "first", 1)).await;
    config.api_listen = server.api_address();
    let secret = |name: &str, value: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"token": value}}))
            .unwrap()
    };
    let secrets: Api<Secret> = Api::default_namespaced(server.client().await.unwrap());
    let create = PostParams::default();
    secrets
        .create(&create, &secret("kept", "needle-kept-4242"))
        .await
        .unwrap();
    secrets
        .create(&create, &secret("old", "needle-old-4242"))
        .await
        .unwrap();
    let config_maps: Api<ConfigMap> = Api::default_namespaced(server.client().await.unwrap());
    let mut plain = config_map("plain", json!({}));
    plain.data = Some([("note".to_owned(), "needle-plain-4242".to_owned())].into());
    config_maps.create(&create, &plain).await.unwrap();
    server.shutdown().await;

    // No Secret in the clear anywhere: neither its bytes nor their base64.
    // (The ConfigMap, not encrypted, shows the search finds what is there.)
    assert!(!files_holding(dir.path(), b"needle-plain-4242").is_empty());
    for needle in ["needle-kept-4242", "bmVlZGxlLWtlcHQtNDI0Mg=="] {
        let found = files_holding(dir.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle} in the clear in {found:?}");
    }
    // And the store's files are the server's user's alone.
    for path in files_under(&dir.path().join("store")) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }

    // Rotation: the new key first, the old one still read; an unchanged
    // replace rewrites with the new key.
    let both = provider("secretbox", "second", 2) + &provider("aesgcm", "first", 1);
    let server = start(&config, both).await;
    let secrets: Api<Secret> = Api::default_namespaced(server.client().await.unwrap());
    let kept = secrets.get("kept").await.unwrap();
    let token = kept.data.as_ref().unwrap()["token"].0.clone();
    assert_eq!(token, b"needle-kept-4242");
    secrets.replace("kept", &create, &kept).await.unwrap();
    server.shutdown().await;

    // Without the old key: what was rewritten reads, what was not says why.
    let server = start(&config, provider("secretbox", "second", 2)).await;
    let secrets: Api<Secret> = Api::default_namespaced(server.client().await.unwrap());
    let kept = secrets.get("kept").await.unwrap();
    assert_eq!(kept.data.unwrap()["token"].0, b"needle-kept-4242");
    match secrets.get("old").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 500, "{status:?}");
            assert!(status.message.contains("does not name"), "{status:?}");
        }
        other => panic!("the old key's Secret should not read: {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revisions_are_410_gone() {
    let server = TestServer::start().await;
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client(&server));
    let first = config_maps
        .create(&PostParams::default(), &config_map("history", json!({})))
        .await
        .unwrap();
    let old = first.metadata.resource_version.unwrap();
    config_maps
        .create(&PostParams::default(), &config_map("other", json!({})))
        .await
        .unwrap();
    let page = config_maps
        .list(&ListParams::default().limit(1))
        .await
        .unwrap();
    let latest = config_maps
        .patch(
            "history",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server
        .server
        .as_ref()
        .unwrap()
        .member()
        .service()
        .compact(flotilla_raft_store::kv::proto::CompactionRequest {
            revision: latest.parse().unwrap(),
            physical: true,
        })
        .await
        .unwrap();

    // A watch from before the compaction: one ERROR event, 410 Expired.
    let mut events = config_maps
        .watch(&kube::api::WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();
    match event {
        Ok(kube::api::WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410, "{status:?}");
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // A list at that exact revision, and a continue token from before it.
    let error = config_maps
        .list(
            &ListParams::default()
                .at(&old)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 410),
        "{error:?}"
    );
    let token = page.metadata.continue_.as_deref().expect("a second page");
    let error = config_maps
        .list(&ListParams::default().limit(1).continue_token(token))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 410),
        "{error:?}"
    );
    server.stop().await;
}

/// A server started with `options`, and the directory it keeps its data
/// in (gone when dropped).
async fn server_with(
    options: flotilla_control::ServerOptions,
) -> (tempfile::TempDir, flotilla_control::Server) {
    let dir = tempfile::tempdir().unwrap();
    let config =
        flotilla_control::ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
    let server = flotilla_control::Server::start_with(config, options)
        .await
        .unwrap();
    (dir, server)
}

fn service(name: &str, cluster_ip: Option<&str>) -> k8s_openapi::api::core::v1::Service {
    let mut spec = json!({"selector": {"app": name}, "ports": [{"port": 80}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn cluster_ip_of(service: &k8s_openapi::api::core::v1::Service) -> std::net::Ipv4Addr {
    let spec = service.spec.as_ref().unwrap();
    let ip = spec.cluster_ip.clone().unwrap();
    assert_eq!(spec.cluster_ips.as_deref(), Some(&[ip.clone()][..]));
    ip.parse().unwrap()
}

fn refused_on_cluster_ip(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 422 && status.message.contains("spec.clusterIP"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_distinct_cluster_ips_and_give_them_back() {
    use k8s_openapi::api::core::v1::Service;
    use std::collections::HashSet;
    // A /27: the network, the broadcast and the first host (kept for the
    // `kubernetes` Service) leave 29 addresses to hand out.
    let range: ipnet::Ipv4Net = "10.0.0.0/27".parse().unwrap();
    let (_dir, server) = server_with(flotilla_control::ServerOptions {
        service_cidr: range,
        ..flotilla_control::ServerOptions::default()
    })
    .await;
    let services: Api<Service> = Api::default_namespaced(server.client().await.unwrap());
    let params = PostParams::default();

    // Concurrent creations race for addresses; none is given twice.
    let names: Vec<String> = (0..29).map(|i| format!("s{i}")).collect();
    let first: Vec<Service> = names[..8].iter().map(|name| service(name, None)).collect();
    let racing = first.iter().map(|one| services.create(&params, one));
    let mut created = futures::future::try_join_all(racing).await.unwrap();
    for name in &names[8..] {
        created.push(
            services
                .create(&params, &service(name, None))
                .await
                .unwrap(),
        );
    }
    let addresses: HashSet<_> = created.iter().map(cluster_ip_of).collect();
    assert_eq!(addresses.len(), 29, "{addresses:?}");
    let reserved = [
        range.network(),
        range.broadcast(),
        "10.0.0.1".parse().unwrap(),
    ];
    assert!(
        addresses
            .iter()
            .all(|ip| range.contains(ip) && !reserved.contains(ip))
    );

    // The range is full; a deleted Service's address is free again.
    let error = services
        .create(&params, &service("full", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 500 && status.message.contains("range is full")),
        "{error:?}"
    );
    let freed = cluster_ip_of(&created[3]);
    services
        .delete("s3", &DeleteParams::default())
        .await
        .unwrap();
    let again = services
        .create(&params, &service("again", None))
        .await
        .unwrap();
    assert_eq!(cluster_ip_of(&again), freed);

    // A requested address: honoured when free, refused when held or
    // outside the range.
    let asked = services
        .create(&params, &service("asked", Some("10.0.0.1")))
        .await
        .unwrap();
    assert_eq!(cluster_ip_of(&asked).to_string(), "10.0.0.1");
    let held = cluster_ip_of(&created[0]).to_string();
    for refused in [held.as_str(), "10.0.1.5", "10.0.0.31", "not-an-ip"] {
        let error = services
            .create(&params, &service("refused", Some(refused)))
            .await
            .unwrap_err();
        assert!(refused_on_cluster_ip(&error), "{refused}: {error:?}");
    }
    // Headless Services take nothing.
    let headless = services
        .create(&params, &service("headless", Some("None")))
        .await
        .unwrap();
    let spec = headless.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.cluster_ips, Some(vec!["None".to_owned()]));

    // The address is immutable; a replacement that leaves it out keeps it.
    let mut replacement = service("asked", None);
    replacement.metadata.resource_version = asked.metadata.resource_version.clone();
    let replaced = services
        .replace("asked", &params, &replacement)
        .await
        .unwrap();
    assert_eq!(cluster_ip_of(&replaced).to_string(), "10.0.0.1");
    let error = services
        .patch(
            "asked",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"]}})),
        )
        .await
        .unwrap_err();
    assert!(refused_on_cluster_ip(&error), "{error:?}");
    server.shutdown().await;
}

/// A Service of `kind` (NodePort, LoadBalancer, ClusterIP) with one port
/// for each of `node_ports` (80, 81, …), asking for that node port when
/// given one.
fn typed_service(
    name: &str,
    kind: &str,
    node_ports: &[Option<i32>],
) -> k8s_openapi::api::core::v1::Service {
    let ports: Vec<_> = node_ports
        .iter()
        .enumerate()
        .map(|(index, node_port)| {
            let mut port = json!({"name": format!("p{index}"), "port": 80 + index});
            if let Some(node_port) = node_port {
                port["nodePort"] = json!(node_port);
            }
            port
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": kind, "selector": {"app": name}, "ports": ports},
    }))
    .unwrap()
}

fn node_ports_of(service: &k8s_openapi::api::core::v1::Service) -> Vec<Option<i32>> {
    let ports = service.spec.as_ref().unwrap().ports.as_ref().unwrap();
    ports.iter().map(|port| port.node_port).collect()
}

/// A server giving node ports from `range`, and its Services.
async fn with_node_ports(
    range: &str,
) -> (
    tempfile::TempDir,
    flotilla_control::Server,
    Api<k8s_openapi::api::core::v1::Service>,
) {
    let (dir, server) = server_with(flotilla_control::ServerOptions {
        node_port_range: range.parse().unwrap(),
        ..flotilla_control::ServerOptions::default()
    })
    .await;
    let services = Api::default_namespaced(server.client().await.unwrap());
    (dir, server, services)
}

/// The node ports of all `services`, each once.
fn all_node_ports(
    services: &[k8s_openapi::api::core::v1::Service],
) -> std::collections::HashSet<i32> {
    services
        .iter()
        .flat_map(node_ports_of)
        .map(Option::unwrap)
        .collect()
}

fn range_is_full(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 500 && status.message.contains("range is full"))
}

/// Whether `error` is a 422 naming `field` with `message`.
fn refused(error: &kube::Error, field: &str, message: &str) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 422
            && status.message.contains(&format!("{field}: "))
            && status.message.contains(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_given_honoured_refused_kept_and_freed() {
    use k8s_openapi::api::core::v1::Service;
    let (_dir, server, services) = with_node_ports("30000-30009").await;
    let params = PostParams::default();
    let create = |service: Service| {
        let services = services.clone();
        async move { services.create(&PostParams::default(), &service).await }
    };

    // Given: one per port, distinct, in the range; LoadBalancers too.
    let given = create(typed_service("given", "NodePort", &[None, None]))
        .await
        .unwrap();
    let [Some(first), Some(second)] = node_ports_of(&given)[..] else {
        panic!("no node ports: {given:?}");
    };
    assert_ne!(first, second);
    assert!(
        [first, second]
            .iter()
            .all(|port| (30000..=30009).contains(port))
    );
    let balanced = create(typed_service("balanced", "LoadBalancer", &[None]))
        .await
        .unwrap();
    let [Some(balanced_port)] = node_ports_of(&balanced)[..] else {
        panic!("no node port: {balanced:?}");
    };

    // Requested: honoured when free; refused when held or out of range.
    let free = (30000..=30009)
        .find(|port| ![first, second, balanced_port].contains(port))
        .unwrap();
    let asked = create(typed_service("asked", "NodePort", &[Some(free)]))
        .await
        .unwrap();
    assert_eq!(node_ports_of(&asked), [Some(free)]);
    let error = create(typed_service("held", "NodePort", &[Some(second)]))
        .await
        .unwrap_err();
    let field = "spec.ports[0].nodePort";
    assert!(
        refused(&error, field, "provided port is already allocated"),
        "{error:?}"
    );
    let error = create(typed_service("outside", "NodePort", &[Some(31000)]))
        .await
        .unwrap_err();
    let outside =
        "provided port is not in the valid range. The range of valid ports is 30000-30009";
    assert!(refused(&error, field, outside), "{error:?}");
    let error = create(typed_service("plain", "ClusterIP", &[Some(free)]))
        .await
        .unwrap_err();
    let forbidden = "Forbidden: may not be used when `type` is 'ClusterIP'";
    assert!(refused(&error, field, forbidden), "{error:?}");

    // Kept: a replacement that leaves them out gets them back.
    let mut replacement = typed_service("given", "NodePort", &[None, None]);
    replacement.metadata.resource_version = given.metadata.resource_version.clone();
    let replaced = services
        .replace("given", &params, &replacement)
        .await
        .unwrap();
    assert_eq!(node_ports_of(&replaced), node_ports_of(&given));

    // A type change to NodePort gives one; back to ClusterIP frees it.
    create(typed_service("changing", "ClusterIP", &[None]))
        .await
        .unwrap();
    let to_type = |kind: &str| Patch::Merge(json!({"spec": {"type": kind}}));
    let changed = services
        .patch("changing", &PatchParams::default(), &to_type("NodePort"))
        .await
        .unwrap();
    let [Some(changed_port)] = node_ports_of(&changed)[..] else {
        panic!("no node port after the type change: {changed:?}");
    };
    let back = services
        .patch("changing", &PatchParams::default(), &to_type("ClusterIP"))
        .await
        .unwrap();
    assert_eq!(node_ports_of(&back), [None]);
    create(typed_service(
        "reuses-changed",
        "NodePort",
        &[Some(changed_port)],
    ))
    .await
    .unwrap();

    // Freed: a deleted Service's ports can be asked for again.
    services
        .delete("given", &DeleteParams::default())
        .await
        .unwrap();
    let reused = create(typed_service("reused", "NodePort", &[Some(second)]))
        .await
        .unwrap();
    assert_eq!(node_ports_of(&reused), [Some(second)]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_services_never_share_a_node_port() {
    use k8s_openapi::api::core::v1::Service;
    let (_dir, server, services) = with_node_ports("30000-30011").await;
    let params = PostParams::default();

    // Twelve ports, six Services of two ports each, created at once.
    let racers: Vec<Service> = (0..6)
        .map(|index| typed_service(&format!("r{index}"), "NodePort", &[None, None]))
        .collect();
    let racing = racers.iter().map(|one| services.create(&params, one));
    let created = futures::future::try_join_all(racing).await.unwrap();
    let ports = all_node_ports(&created);
    assert_eq!(ports.len(), 12, "{ports:?}");

    // The range is full; a deleted Service's ports are free again.
    let error = services
        .create(&params, &typed_service("full", "NodePort", &[None]))
        .await
        .unwrap_err();
    assert!(range_is_full(&error), "{error:?}");
    services
        .delete("r2", &DeleteParams::default())
        .await
        .unwrap();
    let again = services
        .create(&params, &typed_service("again", "NodePort", &[None, None]))
        .await
        .unwrap();
    let mut freed = node_ports_of(&created[2]);
    let mut reused = node_ports_of(&again);
    freed.sort();
    reused.sort();
    assert_eq!(reused, freed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_type_changes_never_share_a_node_port() {
    let (_dir, server, services) = with_node_ports("30000-30005").await;
    let params = PostParams::default();
    let names: Vec<String> = (0..7).map(|index| format!("t{index}")).collect();
    for name in &names {
        let plain = typed_service(name, "ClusterIP", &[None]);
        services.create(&params, &plain).await.unwrap();
    }
    let to_type = |kind: &str| Patch::Merge(json!({"spec": {"type": kind}}));
    let node_port = to_type("NodePort");
    let patch_params = PatchParams::default();

    // Six ports, six updates claiming one each at once.
    let racing = names[..6]
        .iter()
        .map(|name| services.patch(name, &patch_params, &node_port));
    let changed = futures::future::try_join_all(racing).await.unwrap();
    let ports = all_node_ports(&changed);
    assert_eq!(ports.len(), 6, "{ports:?}");

    // The seventh finds the range full and stays as it was; a change back
    // to ClusterIP frees a port for it.
    let error = services
        .patch("t6", &PatchParams::default(), &node_port)
        .await
        .unwrap_err();
    assert!(range_is_full(&error), "{error:?}");
    let unchanged = services.get("t6").await.unwrap();
    assert_eq!(unchanged.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    services
        .patch("t3", &PatchParams::default(), &to_type("ClusterIP"))
        .await
        .unwrap();
    let last = services
        .patch("t6", &PatchParams::default(), &node_port)
        .await
        .unwrap();
    assert_eq!(node_ports_of(&last), node_ports_of(&changed[3]));
    server.shutdown().await;
}
