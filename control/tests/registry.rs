//! The module registry against a real server on loopback, through kube-rs
//! clients as the CLI and the agents use it: pushes (re-push, re-tag,
//! refusal of what is not Wasm), a blob of several chunks round-tripped
//! byte-exact, pods pinned to digests at creation and refused when their
//! image is not in the registry, admitted again when a patch changes them,
//! client certificates on HTTPS, metrics,
//! and a blob still served by a three-member cluster after a member stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flotilla_control::Server;
use flotilla_control::registry::{self, ClientError, Digest};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::TestServer;

/// Upper bound on any wait; conditions normally hold in milliseconds.
const WAIT: Duration = Duration::from_secs(30);

/// A component (the empty one, which wasmtime accepts) carrying a custom
/// section of `payload_bytes` bytes that differ from chunk to chunk.
fn component(payload_bytes: usize, seed: u8) -> Vec<u8> {
    let name = b"flotilla-test";
    let mut section = leb128(name.len());
    section.extend_from_slice(name);
    section.extend((0..payload_bytes).map(|i| (i % 251) as u8 ^ seed ^ (i >> 20) as u8));
    let mut module = b"\0asm\x0d\0\x01\0".to_vec();
    module.push(0); // custom section
    module.extend(leb128(section.len()));
    module.extend(section);
    module
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            return bytes;
        }
        bytes.push(byte | 0x80);
    }
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }))
    .unwrap()
}

fn image_of(pod: &Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// The 422 a pod with `image` gets; returns its message.
async fn refused(pods: &Api<Pod>, image: &str) -> String {
    refusal(pods, image, 422).await
}

/// The 403 a pod with `image` gets; returns its message.
async fn forbidden(pods: &Api<Pod>, image: &str) -> String {
    refusal(pods, image, 403).await
}

/// The refusal, with `code` and naming the image's field, that a pod with
/// `image` gets; returns its message.
async fn refusal(pods: &Api<Pod>, image: &str, code: u16) -> String {
    match pods
        .create(&PostParams::default(), &pod("refused", image))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, code, "{image}: {status:?}");
            assert!(
                status.message.contains("spec.containers[0].image"),
                "{image}: {}",
                status.message
            );
            status.message
        }
        other => panic!("{image} should have been refused: {other:?}"),
    }
}

/// A raw request to the registry: status and body.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::from(body))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect_bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn pods_are_pinned_to_pushed_modules_and_unknown_images_refused() {
    let server = TestServer::start().await;
    let client = server.server.as_ref().unwrap().client().await.unwrap();
    let first = component(100, 1);

    let pushed = registry::push(&client, first.clone(), "app:1.0")
        .await
        .unwrap();
    assert_eq!(pushed.digest, Digest::of(&first));
    assert!(pushed.uploaded);
    let again = registry::push(&client, first.clone(), "app:1.0")
        .await
        .unwrap();
    assert_eq!((again.digest, again.uploaded), (pushed.digest, false));
    assert_eq!(
        registry::resolve(&client, "app:1.0").await.unwrap(),
        pushed.digest
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("pinned", "app:1.0"))
        .await
        .unwrap();
    let pinned = format!("app:1.0@{}", pushed.digest);
    assert_eq!(image_of(&created), pinned);
    assert_eq!(image_of(&pods.get("pinned").await.unwrap()), pinned);
    let by_digest = format!("app@{}", pushed.digest);
    let created = pods
        .create(&PostParams::default(), &pod("by-digest", &by_digest))
        .await
        .unwrap();
    assert_eq!(image_of(&created), by_digest);

    let message = refused(&pods, "app:2.0").await;
    assert!(
        message.contains("app:2.0 is not in the registry"),
        "{message}"
    );
    assert!(message.contains("flotilla push"), "{message}");
    let absent = format!("app@sha256:{}", "0".repeat(64));
    let message = refused(&pods, &absent).await;
    assert!(message.contains("is not in the registry"), "{message}");
    refused(&pods, "app@sha256:abc").await;
    // A file:// image is a host interface: baseline namespaces refuse it,
    // and a privileged one still needs a server that allows it.
    let message = forbidden(&pods, "file:///srv/app.wasm").await;
    assert!(message.contains("file:// images"), "{message}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let trusted: Namespace = serde_json::from_value(json!({"metadata": {
        "name": "trusted",
        "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
    }}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &trusted)
        .await
        .unwrap();
    let message = refused(
        &Api::namespaced(client.clone(), "trusted"),
        "file:///srv/app.wasm",
    )
    .await;
    assert!(message.contains("flotilla up"), "{message}");

    // Templates keep their tags; each pod made from one is pinned.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}},
                         "spec": {"containers": [{"name": "app", "image": "app:1.0"}]}}
        }
    }))
    .unwrap();
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let template = created.spec.template.spec.unwrap();
    assert_eq!(template.containers[0].image.as_deref(), Some("app:1.0"));

    // Pushing other bytes moves the tag; the pod keeps what it was given.
    let second = component(200, 2);
    let moved = registry::push(&client, second.clone(), "app:1.0")
        .await
        .unwrap();
    assert_ne!(moved.digest, pushed.digest);
    assert_eq!(
        registry::resolve(&client, "app:1.0").await.unwrap(),
        moved.digest
    );
    assert_eq!(image_of(&pods.get("pinned").await.unwrap()), pinned);
    let tags = registry::list(&client).await.unwrap();
    let app = tags.iter().find(|entry| entry.name == "app").unwrap();
    assert_eq!((app.tag.as_str(), app.digest), ("1.0", moved.digest));
    assert!(matches!(
        registry::resolve(&client, "app:9").await,
        Err(ClientError::NotFound { .. })
    ));

    server.stop().await;
}

#[tokio::test]
async fn a_patch_that_changes_a_pod_is_admitted_again() {
    let server = TestServer::start().await;
    let client = server.server.as_ref().unwrap().client().await.unwrap();
    registry::push(&client, component(100, 1), "app:1.0")
        .await
        .unwrap();
    let second = registry::push(&client, component(200, 2), "app:2.0")
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("app", "app:1.0"))
        .await
        .unwrap();
    let with_image = |image: &str| {
        Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "image": image}]}}))
    };
    let params = PatchParams::default();

    // A new image is pinned as at creation.
    let patched = pods.patch("app", &params, &with_image("app:2.0")).await;
    let pinned = format!("app:2.0@{}", second.digest);
    assert_eq!(image_of(&patched.unwrap()), pinned);

    // What creation refuses, a patch cannot bring in.
    let refusals = [
        (
            with_image("file:///var/lib/flotilla/ca/ca.key"),
            403,
            "file:// images",
        ),
        (with_image("app:9"), 422, "app:9 is not in the registry"),
        (
            Patch::Strategic(
                json!({"spec": {"volumes": [{"name": "ca", "hostPath": {"path": "/"}}]}}),
            ),
            422,
            "pod updates may not change fields other than",
        ),
    ];
    for (patch, code, message) in refusals {
        match pods.patch("app", &params, &patch).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, code, "{status:?}");
                assert!(status.message.contains(message), "{status:?}");
            }
            other => panic!("{patch:?} should have been refused: {other:?}"),
        }
    }
    assert_eq!(image_of(&pods.get("app").await.unwrap()), pinned);

    // Labels change without the spec being admitted again.
    let labels = Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}}));
    pods.patch("app", &params, &labels).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn what_is_not_wasm_is_refused_at_push() {
    let server = TestServer::start().await;
    let client = server.server.as_ref().unwrap().client().await.unwrap();
    let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0".to_vec();

    // The client checks before sending...
    let error = registry::push(&client, elf.clone(), "tool:1")
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::NotWasm(_)), "{error}");
    assert!(error.to_string().contains("ELF executable"), "{error}");

    // ...and the server refuses on its own, whatever the client.
    let path = format!("/flotilla/registry/v1/blobs/{}", Digest::of(&elf));
    let (code, status) = raw(&client, "PUT", &path, elf).await;
    assert_eq!(code, 422, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("not WebAssembly"), "{message}");
    let (code, _) = raw(&client, "HEAD", &path, Vec::new()).await;
    assert_eq!(code, 404, "nothing was stored");

    // Bytes that do not hash to the digest they are sent under.
    let module = component(10, 3);
    let wrong = format!("/flotilla/registry/v1/blobs/{}", Digest::of(b"other"));
    let (code, status) = raw(&client, "PUT", &wrong, module).await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("hash to"),
        "{status}"
    );

    // A tag cannot point at a blob the registry does not hold.
    let (code, _) = raw(
        &client,
        "PUT",
        "/flotilla/registry/v1/tags/tool/1",
        json!({"digest": Digest::of(b"other")})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(code, 404);

    // The registry's requests are counted with the API's.
    let metrics = client
        .request_text(
            axum::http::Request::get("/metrics")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"verb="create",resource="registry/blobs",code="422""#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_blob_of_several_chunks_round_trips_byte_exact() {
    let server = TestServer::start().await;
    let client = server.server.as_ref().unwrap().client().await.unwrap();
    // Two full chunks of 1 MiB and a partial third.
    let module = component((5 << 20) / 2, 4);
    let pushed = registry::push(&client, module.clone(), "big:1")
        .await
        .unwrap();
    assert_eq!(pushed.size, module.len() as u64);
    let fetched = registry::fetch(&client, pushed.digest).await.unwrap();
    assert!(fetched == module, "the blob came back changed");
    server.stop().await;
}

#[tokio::test]
async fn the_registry_needs_a_client_certificate_over_https() {
    let server = TestServer::start_https().await;
    let admin = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let pushed = registry::push(&admin, component(10, 5), "app:1")
        .await
        .unwrap();

    // The same cluster, trusted, but no certificate of our own.
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.auth_info = Default::default();
    let anonymous = kube::Client::try_from(config).unwrap();
    match registry::fetch(&anonymous, pushed.digest).await {
        Err(ClientError::Refused { code: 401, .. }) => {}
        other => panic!("an anonymous fetch should be refused: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn three_servers_serve_a_blob_after_one_stops() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = support::three_member_configs(&dirs);
    let mut servers: Vec<Option<Server>> =
        futures::future::join_all(configs.into_iter().map(Server::start))
            .await
            .into_iter()
            .map(|server| Some(server.unwrap()))
            .collect();
    let client = servers[0].as_ref().unwrap().client().await.unwrap();
    let module = component((3 << 20) / 2, 6);
    let pushed = registry::push(&client, module.clone(), "app:1")
        .await
        .unwrap();

    servers[0].take().unwrap().shutdown().await;
    let survivor = servers[1].as_ref().unwrap().client().await.unwrap();
    // The survivors may be electing a leader: until they have one, reads
    // are refused with 503. Poll, bounded by WAIT.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let fetched = loop {
        ticker.tick().await;
        match registry::fetch(&survivor, pushed.digest).await {
            Ok(bytes) => break bytes,
            Err(ClientError::Refused { code: 503, .. })
                if tokio::time::Instant::now() < deadline => {}
            Err(error) => panic!("the survivors do not serve the blob: {error}"),
        }
    };
    assert!(fetched == module, "the blob came back changed");
    for server in servers.into_iter().flatten() {
        server.shutdown().await;
    }
}
