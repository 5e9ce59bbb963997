//! The elected control loops against a real API server: leader election
//! through a Lease, and the garbage collector's three propagation policies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use support::TestServer;
use tokio::sync::watch;

use flotilla_control::controllers::election::{ElectionConfig, Elector};
use flotilla_control::controllers::nodes::NodeTimings;
use flotilla_control::controllers::{Controllers, ControllersConfig};

/// Bound on any one wait; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

/// Timings short enough for tests.
fn fast_election() -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_millis(1_500),
        renew_deadline: Duration::from_millis(1_000),
        retry_period: Duration::from_millis(100),
        ..ElectionConfig::default()
    }
}

/// A node is silent after half a second and loses its pods a second later.
fn fast_nodes() -> NodeTimings {
    NodeTimings {
        grace: Duration::from_millis(500),
        eviction: Duration::from_secs(1),
        monitor_period: Duration::from_millis(100),
    }
}

async fn client(server: &TestServer) -> kube::Client {
    server.server.as_ref().unwrap().client().await.unwrap()
}

/// A server whose controllers run (and lead) before the test goes on. Fake
/// nodes renew nothing, so the node timings are Kubernetes' (a silent node
/// is left alone for 50 s) unless the test is about silence.
async fn with_controllers() -> (TestServer, kube::Client, Controllers) {
    with_controllers_timed(NodeTimings::default(), Duration::from_millis(50)).await
}

/// `job_backoff`: how long the first replacement of a failed Job pod waits.
async fn with_controllers_timed(
    nodes: NodeTimings,
    job_backoff: Duration,
) -> (TestServer, kube::Client, Controllers) {
    // Over HTTPS, so that each loop calls the API with its own identity
    // and is held to its own role.
    let server = TestServer::start_https().await;
    let client = client(&server).await;
    let clients = server
        .server
        .as_ref()
        .unwrap()
        .controller_clients()
        .await
        .unwrap();
    let controllers = Controllers::start(
        clients,
        ControllersConfig {
            identity: "test".into(),
            election: fast_election(),
            nodes,
            job_backoff,
        },
    );
    wait_for(&mut controllers.leading(), true).await;
    (server, client, controllers)
}

async fn wait_for(leading: &mut watch::Receiver<bool>, wanted: bool) {
    tokio::time::timeout(WAIT, leading.wait_for(|now| *now == wanted))
        .await
        .expect("leadership did not change in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_another_takes_over_when_it_stops() {
    let server = TestServer::start().await;
    let client = client(&server).await;
    let mut first = Elector::start(client.clone(), "first".into(), fast_election());
    wait_for(&mut first.leading, true).await;
    let mut second = Elector::start(client.clone(), "second".into(), fast_election());
    // The second candidate sees a live holder and waits; leases held by
    // two at once would show here as the first losing its lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get("flotilla-control-plane").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("first"));
    assert!(!*second.leading.borrow());

    drop(first);
    wait_for(&mut second.leading, true).await;
    let spec = leases
        .get("flotilla-control-plane")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("second"));
    assert_eq!(spec.lease_transitions, Some(1));
    server.stop().await;
}

fn config_map(name: &str, owner: Option<&ConfigMap>, blocks: bool) -> ConfigMap {
    let owners = owner.map(|owner| {
        json!([{
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
            "blockOwnerDeletion": blocks,
        }])
    });
    serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners},
        "data": {"k": "v"},
    }))
    .unwrap()
}

async fn gone(api: &Api<ConfigMap>, object: &ConfigMap) {
    let name = object.metadata.name.clone().unwrap();
    let uid = object.metadata.uid.clone().unwrap();
    tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), &name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} was not deleted in time"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_follows_owner_references() {
    let (server, client, controllers) = with_controllers().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let create = |object: ConfigMap| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &object).await.unwrap() }
    };

    // Background: the owner goes at once, then its dependent.
    let owner = create(config_map("bg-owner", None, false)).await;
    let dependent = create(config_map("bg-dependent", Some(&owner), false)).await;
    api.delete("bg-owner", &DeleteParams::background())
        .await
        .unwrap();
    gone(&api, &dependent).await;

    // Foreground: the dependent goes first; then the owner's finalizer.
    let owner = create(config_map("fg-owner", None, false)).await;
    let dependent = create(config_map("fg-dependent", Some(&owner), true)).await;
    api.delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    gone(&api, &dependent).await;
    gone(&api, &owner).await;

    // Orphan: the owner goes and its dependent stays, without the reference.
    let owner = create(config_map("orphan-owner", None, false)).await;
    create(config_map("orphan-dependent", Some(&owner), true)).await;
    api.delete("orphan-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    gone(&api, &owner).await;
    let kept = api.get("orphan-dependent").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .is_none_or(|owners| owners.is_empty()),
        "the dependent still names its owner"
    );

    // A reference to an owner that never existed is dangling from the start.
    let mut phantom = config_map("phantom", None, false);
    phantom.metadata.name = Some("ghost".into());
    phantom.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let dangling = create(config_map("dangling", Some(&phantom), false)).await;
    gone(&api, &dangling).await;
    drop(controllers);
    server.stop().await;
}

/// Lists `api` until `done` holds, waking on its watch events rather than
/// on a timer; fails after [`WAIT`].
async fn wait_until<K>(api: &Api<K>, what: &str, done: impl Fn(&[K]) -> bool) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    let mut changes =
        kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default()).boxed();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let items = tokio::time::timeout_at(deadline, api.list(&Default::default()))
            .await
            .unwrap_or_else(|_| panic!("no answer to a list while waiting for {what}"))
            .unwrap()
            .items;
        if done(&items) {
            return items;
        }
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; last seen: {items:#?}"),
        }
    }
}

fn owned_by(pod: &k8s_openapi::api::core::v1::Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.uid == uid && owner.controller == Some(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_keeps_its_count_adopts_and_releases() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};

    let (server, client, controllers) = with_controllers().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let set: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]},
            },
        },
    }))
    .unwrap();
    let set = sets.create(&PostParams::default(), &set).await.unwrap();
    let uid = set.metadata.uid.clone().unwrap();
    let created = wait_until(&pods, "3 pods", |pods| {
        pods.iter().filter(|p| owned_by(p, &uid)).count() == 3
    })
    .await;
    assert!(
        created
            .iter()
            .all(|p| p.metadata.name.as_deref().unwrap().starts_with("web-"))
    );

    // A matching pod without a controller is adopted, and one of the now
    // four goes: the count is what the spec says.
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &stray).await.unwrap();
    wait_until(&pods, "adoption and 3 pods", |pods| {
        pods.iter().filter(|p| owned_by(p, &uid)).count() == 3
            && pods.iter().all(|p| owned_by(p, &uid))
    })
    .await;

    // A pod relabelled out of the selector is released and replaced.
    let some = pods.list(&Default::default()).await.unwrap().items[0].clone();
    let name = some.metadata.name.clone().unwrap();
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_until(&pods, "release and replacement", |pods| {
        let released = pods
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && !owned_by(p, &uid));
        released && pods.iter().filter(|p| owned_by(p, &uid)).count() == 3
    })
    .await;

    // Scale down to 1; readiness shows in the status.
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    let left = wait_until(&pods, "1 owned pod", |pods| {
        pods.iter().filter(|p| owned_by(p, &uid)).count() == 1
    })
    .await;
    let last = left.iter().find(|p| owned_by(p, &uid)).unwrap();
    pods.patch_status(
        last.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}
        ]}})),
    )
    .await
    .unwrap();
    wait_until(&sets, "ready replicas in the status", |sets| {
        sets.iter().any(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.replicas == 1 && st.ready_replicas == Some(1) && st.available_replicas == Some(1)
            })
        })
    })
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "SuccessfulDelete"),
        "{reasons:?}"
    );
    drop(controllers);
    server.stop().await;
}

/// A Node object as an agent would register it; the test drives it.
fn fake_node(name: &str, cpu: &str, labels: serde_json::Value) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap()
}

fn node_of(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_spreads_fits_and_explains() {
    use k8s_openapi::api::core::v1::{Event, Node, Pod};

    let (server, client, controllers) = with_controllers().await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["a", "b"] {
        nodes
            .create(
                &PostParams::default(),
                &fake_node(name, "1", json!({"zone": name})),
            )
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, cpu: &str, selector: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": selector,
                "containers": [{"name": "c", "image": "hello:1.0",
                    "resources": {"requests": {"cpu": cpu}}}],
            },
        }))
        .unwrap()
    };
    // Four pods of 400m on two 1-CPU nodes: two each, whatever the order.
    for index in 0..4 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{index}"), "400m", json!({})),
        )
        .await
        .unwrap();
    }
    let placed = wait_until(&pods, "4 bound pods", |pods| {
        pods.iter().filter(|p| node_of(p).is_some()).count() == 4
    })
    .await;
    for node in ["a", "b"] {
        let count = placed
            .iter()
            .filter(|p| node_of(p).as_deref() == Some(node))
            .count();
        assert_eq!(count, 2, "node {node} got {count}");
    }

    // A fifth fits nowhere, and says why.
    pods.create(&PostParams::default(), &pod("p4", "400m", json!({})))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    // (Pods created before the scheduler's cache held the nodes may have
    // failed once with "0/0 nodes"; p4's own story is the one to read.)
    let about_p4 = |e: &Event| {
        e.reason.as_deref() == Some("FailedScheduling")
            && e.involved_object.name.as_deref() == Some("p4")
    };
    let failed = wait_until(&events, "FailedScheduling for p4", |events| {
        events.iter().any(about_p4)
    })
    .await;
    let message = failed
        .iter()
        .find(|e| about_p4(e))
        .and_then(|e| e.message.clone())
        .unwrap();
    assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
    let waiting = pods.get("p4").await.unwrap();
    assert!(node_of(&waiting).is_none());

    // A new node makes room; a pod selecting a zone lands only there.
    nodes
        .create(
            &PostParams::default(),
            &fake_node("c", "2", json!({"zone": "c"})),
        )
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("picky", "100m", json!({"zone": "c"})),
    )
    .await
    .unwrap();
    let placed = wait_until(&pods, "p4 and picky bound", |pods| {
        pods.iter().all(|p| node_of(p).is_some())
    })
    .await;
    for pod in &placed {
        if ["p4", "picky"].contains(&pod.metadata.name.as_deref().unwrap()) {
            assert_eq!(node_of(pod).as_deref(), Some("c"));
        }
    }
    // Each binding is told in a Scheduled event, written just after it.
    wait_until(&events, "six Scheduled events", |events| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .count()
            == 6
    })
    .await;
    drop(controllers);
    server.stop().await;
}

/// Plays the kubelet for pods no agent runs: every pod that appears is
/// reported Running and Ready, as the agent would once it started it, and
/// a pod being deleted is let go (deleted with no grace), as the agent
/// does once it has stopped it.
fn spawn_fake_kubelet(client: kube::Client) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut applied = watcher(pods.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = applied.next().await {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if pod.metadata.deletion_timestamp.is_some() {
                let name = pod.metadata.name.clone().unwrap();
                let _ = pods
                    .delete(&name, &kube::api::DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if ready {
                continue;
            }
            let patch = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}
            ]}});
            let name = pod.metadata.name.unwrap();
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_within_its_bounds_and_rolls_back() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod;

    let (server, client, controllers) = with_controllers().await;
    let kubelet = spawn_fake_kubelet(client.clone());
    let manifest = |image: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
"#
        )
    };
    server.ok_with_input(&["apply", "-f", "-"], Some(&manifest("hello:1.0")));
    let status = server.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");

    // Watch every pod change through the second rollout: never more than
    // replicas + maxSurge pods, never fewer than replicas - maxUnavailable
    // ready ones.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let observed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let checker = {
        let pods = pods.clone();
        let observed = observed.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let (reader, writer) = kube::runtime::reflector::store::<Pod>();
            let mut changes = kube::runtime::reflector::reflector(
                writer,
                kube::runtime::watcher(pods, kube::runtime::watcher::Config::default()),
            )
            .boxed();
            let mut listed = false;
            while let Some(Ok(event)) = changes.next().await {
                // The store holds the first list only once it is complete.
                listed |= matches!(event, kube::runtime::watcher::Event::InitDone);
                if !listed {
                    continue;
                }
                let live: Vec<_> = reader
                    .state()
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let ready = live
                    .iter()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                assert!(live.len() <= 4, "{} pods during the rollout", live.len());
                assert!(ready >= 3, "{ready} ready pods during the rollout");
                observed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    server.ok_with_input(&["apply", "-f", "-"], Some(&manifest("hello:2.0")));
    let status = server.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    checker.abort();
    let outcome = checker.await;
    assert!(
        outcome.as_ref().err().is_some_and(|e| e.is_cancelled()),
        "{outcome:?}"
    );

    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let listed = sets.list(&Default::default()).await.unwrap().items;
    assert_eq!(listed.len(), 2, "one set per template");
    let history = server.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // kubectl rolls back by putting the old template back; the old set
    // becomes revision 3 and takes over.
    server.ok(&["rollout", "undo", "deployment/web"]);
    let status = server.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let web = deployments.get("web").await.unwrap();
    let image = web.spec.template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("hello:1.0"));
    assert_eq!(
        web.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let running = pods.list(&Default::default()).await.unwrap().items;
    let images: Vec<_> = running
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    // Pods are pinned to the digest their tag named when they were created.
    assert!(
        images.len() == 3 && images.iter().all(|i| i.starts_with("hello:1.0@sha256:")),
        "{images:?}"
    );

    // Scaling to zero and deleting with the default (background) policy
    // takes the sets and their pods too.
    server.ok(&["delete", "deployment", "web"]);
    wait_until(&sets, "no replica sets", |sets| sets.is_empty()).await;
    wait_until(&pods, "no pods", |pods| pods.is_empty()).await;
    kubelet.abort();
    drop(controllers);
    server.stop().await;
}

/// Plays the kubelet for Job pods: each pod that appears ends in `phase`.
fn spawn_fake_job_kubelet(
    client: kube::Client,
    phase: &'static str,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut applied = watcher(pods.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = applied.next().await {
            let done = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(done, Some("Succeeded" | "Failed"))
                || pod.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let patch = json!({"status": {"phase": phase}});
            let name = pod.metadata.name.unwrap();
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await;
        }
    })
}

fn job(name: &str, spec: serde_json::Value) -> k8s_openapi::api::batch::v1::Job {
    let mut base = json!({
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "work", "image": "job:1.0"}],
            }},
        },
    });
    json_patch::merge(&mut base["spec"], &spec);
    serde_json::from_value(base).unwrap()
}

fn has_condition(job: &k8s_openapi::api::batch::v1::Job, kind: &str, reason: Option<&str>) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == kind
                    && c.status == "True"
                    && (reason.is_none() || c.reason.as_deref() == reason)
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_retry_up_to_their_backoff_limit_and_expire() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;

    // Failed pods are replaced after 400 ms, then 800 ms.
    let backoff = Duration::from_millis(400);
    let (server, client, controllers) =
        with_controllers_timed(NodeTimings::default(), backoff).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Three completions, two at a time, every pod succeeding; the finished
    // Job goes after its time to live, and its pods with it.
    let kubelet = spawn_fake_job_kubelet(client.clone(), "Succeeded");
    let spec = json!({"completions": 3, "parallelism": 2, "ttlSecondsAfterFinished": 1});
    let created = jobs
        .create(&PostParams::default(), &job("batch", spec))
        .await
        .unwrap();
    let done = wait_until(&jobs, "the job to complete", |jobs| {
        jobs.iter().any(|j| has_condition(j, "Complete", None))
    })
    .await;
    let status = done[0].status.clone().unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active, Some(0));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let job_pods = pods.list(&Default::default()).await.unwrap().items;
    assert_eq!(job_pods.len(), 3, "exactly the completions, no more");
    assert!(job_pods.iter().all(|p| {
        p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-name"] == "batch"
    }));
    tokio::time::timeout(
        WAIT,
        await_condition(
            jobs.clone(),
            "batch",
            conditions::is_deleted(created.metadata.uid.as_deref().unwrap()),
        ),
    )
    .await
    .expect("the finished job outlived its ttl")
    .unwrap();
    wait_until(&pods, "its pods gone", |pods| pods.is_empty()).await;
    kubelet.abort();

    // Every pod failing: one first try and two retries, then Failed.
    let kubelet = spawn_fake_job_kubelet(client.clone(), "Failed");
    let started = std::time::Instant::now();
    jobs.create(
        &PostParams::default(),
        &job("flaky", json!({"backoffLimit": 2})),
    )
    .await
    .unwrap();
    let failed = wait_until(&jobs, "the job to fail", |jobs| {
        jobs.iter()
            .any(|j| has_condition(j, "Failed", Some("BackoffLimitExceeded")))
    })
    .await;
    assert_eq!(failed[0].status.as_ref().unwrap().failed, Some(3));
    // Two replacements, after 400 ms and then 800 ms.
    assert!(started.elapsed() >= backoff * 3, "{:?}", started.elapsed());
    let tries = pods.list(&Default::default()).await.unwrap().items;
    assert_eq!(tries.len(), 3, "backoffLimit 2 means three pods in all");
    kubelet.abort();
    drop(controllers);
    server.stop().await;
}

/// Renews `node`'s Lease every 100 ms, as its agent would every 10 s.
fn spawn_heartbeat(client: kube::Client, node: &str) -> tokio::task::JoinHandle<()> {
    use kube::api::{Patch, PatchParams};
    let node = node.to_string();
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": node},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 1},
        }))
        .unwrap();
        let _ = leases.create(&PostParams::default(), &lease).await;
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            beat.tick().await;
            let now = k8s_openapi::jiff::Timestamp::now();
            let patch = json!({"spec": {"renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now)}});
            let _ = leases
                .patch(&node, &PatchParams::default(), &Patch::Merge(patch))
                .await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_are_replaced_elsewhere() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{Node, Pod};

    let (server, client, controllers) =
        with_controllers_timed(fast_nodes(), Duration::from_millis(50)).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let heart_a = spawn_heartbeat(client.clone(), "a");
    nodes
        .create(&PostParams::default(), &fake_node("a", "4", json!({})))
        .await
        .unwrap();
    let set: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]},
            },
        },
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    wait_until(&pods, "2 pods on a", |pods| {
        pods.iter()
            .filter(|p| node_of(p).as_deref() == Some("a"))
            .count()
            == 2
    })
    .await;
    let heart_b = spawn_heartbeat(client.clone(), "b");
    nodes
        .create(&PostParams::default(), &fake_node("b", "4", json!({})))
        .await
        .unwrap();

    // a goes silent: tainted, then its pods evicted and replaced on b.
    heart_a.abort();
    let tainted = wait_until(&nodes, "a tainted unreachable", |nodes| {
        nodes.iter().any(|n| {
            n.metadata.name.as_deref() == Some("a")
                && n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| {
                        t.iter().any(|t| {
                            t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                        })
                    })
        })
    })
    .await;
    let a = tainted
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("a"))
        .unwrap();
    let ready = a.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown"),
        "{ready:?}"
    );
    wait_until(&pods, "2 live pods on b", |pods| {
        let live_on_b = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none() && node_of(p).as_deref() == Some("b")
            })
            .count();
        let evicted = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some() && node_of(p).as_deref() == Some("a")
            })
            .count();
        live_on_b == 2 && evicted == 2
    })
    .await;

    // a comes back: the taints go.
    let heart_a = spawn_heartbeat(client.clone(), "a");
    wait_until(&nodes, "a untainted", |nodes| {
        nodes.iter().any(|n| {
            n.metadata.name.as_deref() == Some("a")
                && n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_none_or(|t| t.iter().all(|t| t.key != "node.kubernetes.io/unreachable"))
        })
    })
    .await;
    heart_a.abort();
    heart_b.abort();
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_ready_pods_of_a_service() {
    use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Patch, PatchParams};

    let (server, client, controllers) = with_controllers().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    // Pods as an agent reports them: an IP, and Ready or not.
    let run = |name: &str, ip: &str, ready: bool| {
        let pods = pods.clone();
        let name = name.to_string();
        let ip = ip.to_string();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "hello:1.0",
                    "ports": [{"name": "http", "containerPort": 8080}]}]},
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let status = if ready { "True" } else { "False" };
            let patch = json!({"status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": status}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    run("a", "10.1.0.2", true).await;
    run("b", "10.1.0.3", false).await;
    let ips = |e: &Endpoints, ready: bool| -> Vec<String> {
        e.subsets
            .iter()
            .flatten()
            .flat_map(|s| {
                if ready {
                    s.addresses.clone()
                } else {
                    s.not_ready_addresses.clone()
                }
            })
            .flatten()
            .map(|a| a.ip)
            .collect()
    };
    let found = wait_until(&endpoints, "a ready and b not", |all| {
        all.iter()
            .any(|e| ips(e, true) == ["10.1.0.2"] && ips(e, false) == ["10.1.0.3"])
    })
    .await;
    let subset = &found[0].subsets.as_ref().unwrap()[0];
    assert_eq!(
        subset.ports.as_ref().unwrap()[0].port,
        8080,
        "the named port resolved"
    );

    // b becomes ready; a goes away.
    pods.patch_status(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    pods.delete("a", &Default::default()).await.unwrap();
    wait_until(&endpoints, "only b, ready", |all| {
        all.iter()
            .any(|e| ips(e, true) == ["10.1.0.3"] && ips(e, false).is_empty())
    })
    .await;
    let slice = wait_until(&slices, "the slice with b", |all| {
        all.iter().any(|s| {
            let endpoints = s.endpoints.as_deref().unwrap_or_default();
            endpoints.len() == 1
                && endpoints[0].addresses == ["10.1.0.3"]
                && endpoints[0].conditions.as_ref().and_then(|c| c.ready) == Some(true)
        })
    })
    .await;
    assert_eq!(
        slice[0].metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
        "web"
    );

    // Both go with the Service.
    services.delete("web", &Default::default()).await.unwrap();
    wait_until(&endpoints, "no endpoints", |all| all.is_empty()).await;
    wait_until(&slices, "no slices", |all| all.is_empty()).await;
    drop(service);
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_one_pod_per_fitting_node_and_rolls() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Patch, PatchParams};

    let (server, client, controllers) = with_controllers().await;
    let kubelet = spawn_fake_kubelet(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    nodes
        .create(&PostParams::default(), &fake_node("a", "2", json!({})))
        .await
        .unwrap();
    let mut tainted = fake_node("b", "2", json!({}));
    tainted.spec = Some(
        serde_json::from_value(
            json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        )
        .unwrap(),
    );
    nodes
        .create(&PostParams::default(), &tainted)
        .await
        .unwrap();
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let set: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agentd"},
        "spec": {
            "selector": {"matchLabels": {"app": "agentd"}},
            "template": {
                "metadata": {"labels": {"app": "agentd"}},
                "spec": {"containers": [{"name": "d", "image": "agentd:1.0"}]},
            },
        },
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let live = |pods: &[Pod]| -> Vec<String> {
        let mut on: Vec<String> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(node_of)
            .collect();
        on.sort();
        on
    };
    wait_until(&pods, "a daemon on a only", |pods| {
        live(pods) == ["a"] && pods.len() == 1
    })
    .await;

    // A new node gets one; the tainted node does once it is tolerated.
    nodes
        .create(&PostParams::default(), &fake_node("c", "2", json!({})))
        .await
        .unwrap();
    wait_until(&pods, "daemons on a and c", |pods| live(pods) == ["a", "c"]).await;
    sets.patch(
        "agentd",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "d", "image": "agentd:2.0"}],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        }}}})),
    )
    .await
    .unwrap();
    let rolled = wait_until(&pods, "daemons of the new template on a, b and c", |pods| {
        let current: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        live(pods) == ["a", "b", "c"]
            && current.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .as_deref()
                    .is_some_and(|image| image.starts_with("agentd:2.0@sha256:"))
            })
    })
    .await;
    assert_eq!(rolled.len(), 3, "the replaced pods are gone");
    let status = wait_until(&sets, "the status", |sets| {
        sets[0].status.as_ref().is_some_and(|s| {
            s.desired_number_scheduled == 3
                && s.number_ready == 3
                && s.updated_number_scheduled == Some(3)
        })
    })
    .await;
    assert_eq!(status[0].status.as_ref().unwrap().number_misscheduled, 0);

    // A node that goes takes its daemon with it.
    nodes.delete("c", &Default::default()).await.unwrap();
    wait_until(&pods, "daemons on a and b", |pods| live(pods) == ["a", "b"]).await;
    kubelet.abort();
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_creates_in_order_removes_in_reverse_and_rolls() {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::watcher;

    let (server, client, controllers) = with_controllers().await;
    let kubelet = spawn_fake_kubelet(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    // Every first sight and deletion of a pod, in the order the API saw them.
    let (tell, mut story) = tokio::sync::mpsc::channel::<String>(64);
    let recorder = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            let mut seen = std::collections::HashSet::new();
            while let Some(Ok(event)) = events.next().await {
                let (verb, pod) = match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => ("+", pod),
                    watcher::Event::Delete(pod) => ("-", pod),
                    _ => continue,
                };
                let key = format!("{verb}{}", pod.metadata.name.unwrap());
                if (verb == "-" || seen.insert(key.clone())) && tell.send(key).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut next = async |count: usize| -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < count {
            let event = tokio::time::timeout(WAIT, story.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(event);
        }
        got
    };
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "db:1.0"}]},
            },
        },
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    assert_eq!(next(3).await, ["+db-0", "+db-1", "+db-2"]);
    let made = wait_until(&pods, "db-0, db-1 and db-2", |pods| pods.len() == 3).await;
    let db1 = made
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("db-1"))
        .unwrap();
    assert_eq!(db1.spec.as_ref().unwrap().hostname.as_deref(), Some("db-1"));
    assert_eq!(db1.spec.as_ref().unwrap().subdomain.as_deref(), Some("db"));

    sets.patch_scale(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    assert_eq!(next(2).await, ["-db-2", "-db-1"]);

    // A new template: db-0 is replaced, under its own name.
    let before = pods.get("db-0").await.unwrap().metadata.uid;
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "db:2.0"}]}}}})),
    )
    .await
    .unwrap();
    let rolled = wait_until(&sets, "the new revision everywhere", |sets| {
        sets[0].status.as_ref().is_some_and(|s| {
            s.updated_replicas == Some(1)
                && s.ready_replicas == Some(1)
                && s.current_revision == s.update_revision
                && s.observed_generation == sets[0].metadata.generation
        })
    })
    .await;
    let after = pods.get("db-0").await.unwrap();
    assert_ne!(after.metadata.uid, before);
    assert_eq!(
        after.metadata.labels.as_ref().unwrap()["controller-revision-hash"],
        rolled[0]
            .status
            .as_ref()
            .unwrap()
            .update_revision
            .clone()
            .unwrap()
    );
    recorder.abort();
    kubelet.abort();
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_has_a_default_service_account() {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};

    let (server, client, controllers) = with_controllers().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let has_default = |all: &[ServiceAccount]| {
        all.iter()
            .any(|a| a.metadata.name.as_deref() == Some("default"))
    };
    wait_until(&accounts, "team/default", has_default).await;
    // Deleted, it comes back.
    accounts
        .delete("default", &Default::default())
        .await
        .unwrap();
    let back = wait_until(&accounts, "team/default again", has_default).await;
    assert_eq!(back.len(), 1);
    let system: Api<ServiceAccount> = Api::namespaced(client, "default");
    wait_until(&system, "default/default", has_default).await;
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_starts_its_missed_run_once_and_forbids_overlap() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{Patch, PatchParams};

    let (server, client, controllers) = with_controllers().await;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cronjob: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "startingDeadlineSeconds": 600,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "tick", "image": "tick:1.0"}],
            }}}},
        },
    }))
    .unwrap();
    cronjobs
        .create(&PostParams::default(), &cronjob)
        .await
        .unwrap();
    // Instead of waiting for the next minute, say the last run was three
    // minutes ago: the latest missed start is due now.
    let three_minutes_ago =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(180);
    let back_in_time = |at: k8s_openapi::jiff::Timestamp| {
        let cronjobs = cronjobs.clone();
        async move {
            cronjobs
                .patch_status(
                    "tick",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"lastScheduleTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)}})),
                )
                .await
                .unwrap();
        }
    };
    back_in_time(three_minutes_ago).await;
    let started = wait_until(&jobs, "the missed run", |jobs| !jobs.is_empty()).await;
    assert_eq!(started.len(), 1);
    let job = &started[0];
    assert!(job.metadata.name.as_deref().unwrap().starts_with("tick-"));
    assert!(
        job.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
    );
    wait_until(&cronjobs, "the job in status.active", |all| {
        all[0]
            .status
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .is_some_and(|a| a.len() == 1)
    })
    .await;

    // A start while an earlier run is active is forbidden: give the
    // CronJob a run of its own that never finishes (no agent runs it).
    let owner = cronjobs.get("tick").await.unwrap();
    let earlier: Job = serde_json::from_value(json!({
        "metadata": {"name": "tick-earlier", "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "CronJob", "name": "tick",
            "uid": owner.metadata.uid, "controller": true,
        }]},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "tick", "image": "tick:1.0"}]}}},
    }))
    .unwrap();
    // (Created before the first run is deleted, so that no pass in between
    // sees the CronJob without an active run.)
    jobs.create(&PostParams::default(), &earlier).await.unwrap();
    jobs.delete(job.metadata.name.as_deref().unwrap(), &Default::default())
        .await
        .unwrap();
    back_in_time(three_minutes_ago).await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_until(&events, "JobAlreadyActive", |events| {
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("JobAlreadyActive"))
    })
    .await;
    let names: Vec<String> = jobs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["tick-earlier"]);
    drop(controllers);
    server.stop().await;
}

/// Two schedulers at once, as when two servers briefly both believe they
/// lead: every pod is bound exactly once (the API refuses a second binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_schedulers_never_bind_a_pod_twice() {
    use k8s_openapi::api::core::v1::{Event, Node, Pod};

    let server = TestServer::start().await;
    let client = client(&server).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["a", "b", "c"] {
        nodes
            .create(&PostParams::default(), &fake_node(name, "64", json!({})))
            .await
            .unwrap();
    }
    let first = tokio::spawn(flotilla_control::controllers::scheduler::run(
        client.clone(),
        None,
    ));
    let second = tokio::spawn(flotilla_control::controllers::scheduler::run(
        client.clone(),
        None,
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    const PODS: usize = 40;
    for index in 0..PODS {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{index}")},
            "spec": {"containers": [{"name": "c", "image": "hello:1.0",
                "resources": {"requests": {"cpu": "100m"}}}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    wait_until(&pods, "every pod bound", |pods| {
        pods.len() == PODS && pods.iter().all(|p| node_of(p).is_some())
    })
    .await;
    // One Scheduled event per successful binding: exactly one per pod.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let told = wait_until(&events, "a Scheduled event per pod", |events| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .count()
            >= PODS
    })
    .await;
    let mut bound: Vec<String> = told
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| e.involved_object.name.clone())
        .collect();
    bound.sort();
    bound.dedup();
    let scheduled = told
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .map(|e| e.count.unwrap_or(1))
        .sum::<i32>();
    assert_eq!(bound.len(), PODS);
    assert_eq!(
        scheduled,
        i32::try_from(PODS).unwrap(),
        "a pod was bound twice"
    );
    first.abort();
    second.abort();
    server.stop().await;
}

/// A scheduler whose Lease was taken over binds nothing, however much room
/// it sees: its bindings carry a fence the API refuses. The new leader's
/// bindings go through.
#[tokio::test]
async fn a_deposed_scheduler_cannot_bind() {
    use flotilla_control::controllers::scheduler;
    use flotilla_control::fence::{FENCE_ANNOTATION, LeaseFence};
    use k8s_openapi::api::core::v1::{Event, Node, Pod};

    let server = TestServer::start().await;
    let client = client(&server).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "flotilla-control-plane"},
        "spec": {"holderIdentity": "deposed", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let lease = leases.create(&PostParams::default(), &lease).await.unwrap();
    let fence_of = |lease: &Lease| {
        let spec = lease.spec.clone().unwrap();
        LeaseFence {
            namespace: "kube-system".into(),
            name: "flotilla-control-plane".into(),
            holder: spec.holder_identity.unwrap(),
            transitions: i64::from(spec.lease_transitions.unwrap_or(0)),
        }
    };
    let stale = fence_of(&lease);
    // A take-over, as the election writes it.
    let mut taken = lease.clone();
    let spec = taken.spec.as_mut().unwrap();
    spec.holder_identity = Some("leader".into());
    spec.lease_transitions = Some(1);
    let taken = leases
        .replace("flotilla-control-plane", &PostParams::default(), &taken)
        .await
        .unwrap();
    let current = fence_of(&taken);
    // The new leader renews: its term, and so its fence, is unchanged.
    let mut renewed = taken.clone();
    renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(16);
    leases
        .replace("flotilla-control-plane", &PostParams::default(), &renewed)
        .await
        .unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &fake_node("a", "1", json!({})))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    const PODS: usize = 4;
    for index in 0..PODS {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{index}")},
            "spec": {"containers": [{"name": "c", "image": "hello:1.0",
                "resources": {"requests": {"cpu": "250m"}}}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }

    // A malformed token is the caller's mistake, and says so.
    let malformed = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p0", "annotations": {FENCE_ANNOTATION: "leases/x"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "a"},
    });
    let error = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "p0",
            &PostParams::default(),
            &malformed,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, kube::Error::Api(status) if status.code == 400
            && status.message.contains(FENCE_ANNOTATION)),
        "{error:?}"
    );

    let (_keep_stale, stale_fence) = watch::channel(Some(stale));
    let deposed = tokio::spawn(scheduler::run(client.clone(), Some(stale_fence)));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_until(
        &events,
        "every binding of the deposed scheduler refused",
        |events| {
            let mut refused: Vec<_> = events
                .iter()
                .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .filter(|e| {
                    e.message.as_deref().is_some_and(|m| {
                        m.starts_with("Binding rejected") && m.contains(FENCE_ANNOTATION)
                    })
                })
                .filter_map(|e| e.involved_object.name.clone())
                .collect();
            refused.sort();
            refused.dedup();
            refused.len() == PODS
        },
    )
    .await;
    let unbound = pods.list(&Default::default()).await.unwrap();
    assert!(
        unbound.items.iter().all(|p| node_of(p).is_none()),
        "a deposed scheduler bound a pod"
    );

    let (_keep_current, current_fence) = watch::channel(Some(current));
    let leader = tokio::spawn(scheduler::run(client.clone(), Some(current_fence)));
    wait_until(&pods, "the leader binds every pod", |pods| {
        pods.len() == PODS && pods.iter().all(|p| node_of(p).as_deref() == Some("a"))
    })
    .await;
    deposed.abort();
    leader.abort();
    server.stop().await;
}

fn pod_cidr(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    let cidr = spec.pod_cidr.clone()?;
    assert_eq!(spec.pod_cidrs.as_deref(), Some(&[cidr.clone()][..]));
    Some(cidr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_and_freed_ones_are_reused() {
    use flotilla_control::controllers::ipam::IpamConfig;
    use k8s_openapi::api::core::v1::{Event, Node};
    use std::collections::{BTreeMap, HashSet};

    let server = TestServer::start().await;
    let client = client(&server).await;
    // A /22 cut into /24s: room for four nodes.
    let ipam = IpamConfig::new("10.250.0.0/22".parse().unwrap(), 24).unwrap();
    let config = ControllersConfig {
        identity: "test".into(),
        election: fast_election(),
        nodes: NodeTimings::default(),
        job_backoff: Duration::from_millis(50),
    };
    let controllers = Controllers::start_with(client.clone(), config, ipam);
    wait_for(&mut controllers.leading(), true).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let create = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            let node = fake_node(name, "2", json!({}));
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
    };
    for name in ["a", "b", "c", "d"] {
        create(name).await;
    }
    let all = wait_until(&nodes, "four podCIDRs", |nodes| {
        nodes.iter().filter(|node| pod_cidr(node).is_some()).count() == 4
    })
    .await;
    let ranges: BTreeMap<String, String> = all
        .iter()
        .map(|node| (node.metadata.name.clone().unwrap(), pod_cidr(node).unwrap()))
        .collect();
    let distinct: HashSet<&String> = ranges.values().collect();
    assert_eq!(distinct.len(), 4, "{ranges:?}");
    assert!(distinct.iter().all(|range| range.starts_with("10.250.")));

    // The cluster CIDR is full: the fifth node is told so, and gets the
    // range of a node deleted after.
    create("e").await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_until(&events, "a CIDRNotAvailable event", |events| {
        events.iter().any(|event| {
            event.reason.as_deref() == Some("CIDRNotAvailable")
                && event.involved_object.name.as_deref() == Some("e")
        })
    })
    .await;
    assert_eq!(pod_cidr(&nodes.get("e").await.unwrap()), None);
    nodes.delete("b", &DeleteParams::default()).await.unwrap();
    let freed = ranges["b"].clone();
    wait_until(&nodes, "node e to get node b's range", |nodes| {
        nodes.iter().any(|node| {
            node.metadata.name.as_deref() == Some("e") && pod_cidr(node) == Some(freed.clone())
        })
    })
    .await;
    drop(controllers);
    server.stop().await;
}

/// The addresses in the status of the Ingress called `name`, if it is there.
fn ingress_addresses(
    ingresses: &[k8s_openapi::api::networking::v1::Ingress],
    name: &str,
) -> Option<Vec<String>> {
    let ingress = ingresses
        .iter()
        .find(|ingress| ingress.metadata.name.as_deref() == Some(name))?;
    let status = ingress.status.as_ref();
    let balancer = status.and_then(|status| status.load_balancer.as_ref());
    let addresses = balancer.and_then(|balancer| balancer.ingress.as_ref());
    Some(
        addresses
            .into_iter()
            .flatten()
            .map(|address| address.ip.clone().unwrap_or_default())
            .collect(),
    )
}

/// The ingress addresses of the Service called `name`, if it is there.
fn ingress_of(services: &[k8s_openapi::api::core::v1::Service], name: &str) -> Option<Vec<String>> {
    let service = services
        .iter()
        .find(|service| service.metadata.name.as_deref() == Some(name))?;
    let balancer = service.status.as_ref()?.load_balancer.as_ref();
    let ingress = balancer.and_then(|balancer| balancer.ingress.as_ref());
    Some(
        ingress
            .into_iter()
            .flatten()
            .map(|ingress| ingress.ip.clone().unwrap_or_default())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_lists_the_ready_nodes() {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, Service};
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{Patch, PatchParams};

    let (server, client, controllers) = with_controllers().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let add_node = |name: &'static str, ip: &'static str| {
        let nodes = nodes.clone();
        async move {
            let mut node = fake_node(name, "2", json!({}));
            let status = node.status.as_mut().unwrap();
            status.addresses = Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]);
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
    };
    add_node("a", "10.0.0.10").await;
    add_node("b", "10.0.0.9").await;
    let service = |name: &str, kind: &str| -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": kind, "selector": {"app": name}, "ports": [{"port": 80}]},
        }))
        .unwrap()
    };
    let params = PostParams::default();
    services
        .create(&params, &service("lb", "LoadBalancer"))
        .await
        .unwrap();
    services
        .create(&params, &service("plain", "ClusterIP"))
        .await
        .unwrap();
    let expect = |wanted: &'static [&'static str]| {
        move |all: &[Service]| ingress_of(all, "lb").is_some_and(|ips| ips == wanted)
    };
    // Sorted as addresses, not as text.
    wait_until(&services, "both nodes", expect(&["10.0.0.9", "10.0.0.10"])).await;

    // Every node is the Ingress gateway too: an Ingress of the flotilla
    // class (or none) lists them; one of another class is left alone.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    for (name, class) in [("web", None), ("theirs", Some("nginx"))] {
        let ingress = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "ingressClassName": class,
                "defaultBackend": {"service": {"name": "lb", "port": {"number": 80}}},
            },
        }))
        .unwrap();
        ingresses.create(&params, &ingress).await.unwrap();
    }
    let ingress_expect = |wanted: &'static [&'static str]| {
        move |all: &[Ingress]| ingress_addresses(all, "web").is_some_and(|ips| ips == wanted)
    };
    wait_until(
        &ingresses,
        "the Ingress to list both nodes",
        ingress_expect(&["10.0.0.9", "10.0.0.10"]),
    )
    .await;

    // A node joins, one stops being Ready, one goes.
    add_node("c", "10.0.0.11").await;
    wait_until(
        &services,
        "three nodes",
        expect(&["10.0.0.9", "10.0.0.10", "10.0.0.11"]),
    )
    .await;
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    nodes
        .patch_status("b", &PatchParams::default(), &Patch::Merge(not_ready))
        .await
        .unwrap();
    wait_until(
        &services,
        "b not ready",
        expect(&["10.0.0.10", "10.0.0.11"]),
    )
    .await;
    nodes.delete("a", &DeleteParams::default()).await.unwrap();
    wait_until(&services, "a gone", expect(&["10.0.0.11"])).await;
    let all = wait_until(
        &ingresses,
        "a gone from the Ingress",
        ingress_expect(&["10.0.0.11"]),
    )
    .await;
    let theirs = ingress_addresses(&all, "theirs").expect("the other class's Ingress");
    assert!(
        theirs.is_empty(),
        "another class's Ingress was given {theirs:?}"
    );

    // No longer a LoadBalancer: no ingress. A ClusterIP Service never had one.
    let to_cluster_ip = json!({"spec": {"type": "ClusterIP"}});
    services
        .patch("lb", &PatchParams::default(), &Patch::Merge(to_cluster_ip))
        .await
        .unwrap();
    wait_until(&services, "no ingress", expect(&[])).await;
    let all = services.list(&Default::default()).await.unwrap().items;
    assert_eq!(ingress_of(&all, "plain"), Some(Vec::new()));
    drop(controllers);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_a_disruption_budget() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::EvictParams;
    let (server, client, controllers) = with_controllers().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Two running, ready replicas on a node (no agent: the test is it).
    for name in ["web-a", "web-b"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "hello:1.0"}]},
        }))
        .unwrap();
        let mut created = pods.create(&PostParams::default(), &pod).await.unwrap();
        created.status = Some(
            serde_json::from_value(json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }))
            .unwrap(),
        );
        pods.replace_status(name, &PostParams::default(), &created)
            .await
            .unwrap();
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }))
    .unwrap();
    budgets
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    wait_until(&budgets, "the budget to allow one disruption", |budgets| {
        budgets.iter().any(|b| {
            b.status.as_ref().is_some_and(|s| {
                (s.current_healthy, s.desired_healthy, s.disruptions_allowed)
                    == (Some(2), Some(1), Some(1))
            })
        })
    })
    .await;

    // One eviction spends the one disruption; the next is refused (429,
    // which kubectl drain retries, as kube-rs would: not here) and the pod
    // stays.
    let document = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    pods.evict("web-a", &EvictParams::default()).await.unwrap();
    let marked = pods.get("web-a").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    match pods.evict("web-b", &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(
                status
                    .message
                    .contains("would violate the pod's disruption budget"),
                "{status:?}"
            );
        }
        other => panic!("the second eviction should have been refused: {other:?}"),
    }
    let kept = pods.get("web-b").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    let spent = budgets.get("web").await.unwrap().status.unwrap();
    assert_eq!(spent.disruptions_allowed, Some(0));

    // kubectl drain cordons the node and stops at the budget.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &fake_node("n1", "4", json!({})))
        .await
        .unwrap();
    let output = server.kubectl(&["drain", "n1", "--force", "--timeout=2s"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{error}"
    );
    let cordoned = nodes.get("n1").await.unwrap().spec.unwrap();
    assert_eq!(cordoned.unschedulable, Some(true));
    assert!(
        pods.get("web-b")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    // A pod no budget selects is evicted at once.
    let lone: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lone"},
        "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &lone).await.unwrap();
    pods.evict("lone", &EvictParams::default()).await.unwrap();
    assert!(pods.get_opt("lone").await.unwrap().is_none());
    drop(controllers);
    server.stop().await;
}
