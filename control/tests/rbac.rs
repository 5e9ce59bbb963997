//! Authorization as tenants meet it, through real clients: RBAC over every
//! verb and the main resources for users of two teams, a viewer, a
//! ServiceAccount, a node and a user bound to nothing; escalation refused;
//! `kubectl auth can-i` and `whoami`; the Node authorizer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use flotilla_control::controllers::{Controllers, ControllersConfig};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;
use support::TestServer;

/// How long the aggregation controller may take to fill `edit` and `view`.
const WAIT: Duration = Duration::from_secs(20);

/// A server over HTTPS whose controllers run (the ClusterRole aggregation
/// fills `admin`, `edit` and `view`), with two team namespaces.
async fn cluster() -> (TestServer, Controllers) {
    let server = TestServer::start_https().await;
    let running = server.server.as_ref().unwrap();
    let controllers = Controllers::start(
        running.controller_clients().await.unwrap(),
        ControllersConfig {
            identity: "rbac-test".into(),
            election: flotilla_control::controllers::election::ElectionConfig {
                lease_duration: Duration::from_millis(1_500),
                renew_deadline: Duration::from_millis(1_000),
                retry_period: Duration::from_millis(100),
                ..Default::default()
            },
            nodes: Default::default(),
            job_backoff: Duration::from_millis(50),
        },
    );
    let client = running.client().await.unwrap();
    let roles: Api<ClusterRole> = Api::all(client);
    for name in ["admin", "edit", "view"] {
        let filled = kube::runtime::wait::await_condition(
            roles.clone(),
            name,
            |role: Option<&ClusterRole>| {
                role.and_then(|role| role.rules.as_ref())
                    .is_some_and(|rules| !rules.is_empty())
            },
        );
        tokio::time::timeout(WAIT, filled)
            .await
            .expect("aggregated in time")
            .unwrap();
    }
    for namespace in ["team-a", "team-b"] {
        server.ok(&["create", "namespace", namespace]);
    }
    (server, controllers)
}

/// Who the matrix asks as.
struct Tenant {
    label: &'static str,
    kubeconfig: PathBuf,
    /// kubectl's `--as` for the ServiceAccount, asked through the admin.
    impersonate: Option<&'static str>,
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn object(resource: &ApiResource, name: &str) -> DynamicObject {
    let mut object = DynamicObject::new(name, resource);
    object.data = match resource.kind.as_str() {
        "ConfigMap" => json!({"data": {"k": "v"}}),
        "Secret" => json!({"stringData": {"k": "v"}}),
        "Service" => json!({"spec": {"ports": [{"port": 80}]}}),
        "Deployment" => json!({"spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "hello:1.0"}]}}}}),
        other => panic!("no fixture for {other}"),
    };
    object
}

/// Whether an API call was allowed: anything but a 403 (a 404 on a get of
/// something absent was allowed to look).
fn allowed<T>(result: &Result<T, kube::Error>) -> bool {
    !matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_allowed_exactly_what_rbac_grants() {
    let (server, _controllers) = cluster().await;
    server.ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "bob-edit",
        "--clusterrole=edit",
        "--group=team-b",
        "-n",
        "team-b",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "carol-view",
        "--clusterrole=view",
        "--user=carol",
        "-n",
        "team-a",
    ]);
    server.ok(&["create", "serviceaccount", "ci", "-n", "team-a"]);
    server.ok(&[
        "create",
        "rolebinding",
        "ci-edit",
        "--clusterrole=edit",
        "--serviceaccount=team-a:ci",
        "-n",
        "team-a",
    ]);
    // The admin (system:masters) may impersonate the ServiceAccount.
    let tenants = [
        Tenant {
            label: "alice",
            kubeconfig: server.user_kubeconfig("alice", None),
            impersonate: None,
        },
        Tenant {
            label: "bob",
            kubeconfig: server.user_kubeconfig("bob", Some("team-b")),
            impersonate: None,
        },
        Tenant {
            label: "carol",
            kubeconfig: server.user_kubeconfig("carol", None),
            impersonate: None,
        },
        Tenant {
            label: "ci",
            kubeconfig: server.kubeconfig.clone(),
            impersonate: Some("system:serviceaccount:team-a:ci"),
        },
        Tenant {
            label: "node",
            kubeconfig: server.user_kubeconfig("system:node:n1", Some("system:nodes")),
            impersonate: None,
        },
        Tenant {
            label: "dave",
            kubeconfig: server.user_kubeconfig("dave", None),
            impersonate: None,
        },
    ];
    let resources = [
        resource("", "v1", "ConfigMap", "configmaps"),
        resource("", "v1", "Secret", "secrets"),
        resource("", "v1", "Service", "services"),
        resource("apps", "v1", "Deployment", "deployments"),
    ];
    let admin = TestServer::client_from(&server.kubeconfig).await;
    let mut checked = 0;
    for tenant in &tenants {
        let mut client_config = {
            let document = std::fs::read_to_string(&tenant.kubeconfig).unwrap();
            let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap()
        };
        if let Some(user) = tenant.impersonate {
            client_config.auth_info.impersonate = Some(user.to_string());
        }
        let client = kube::Client::try_from(client_config).unwrap();
        for namespace in ["team-a", "team-b", "kube-system"] {
            for resource in &resources {
                let expected_write = matches!(
                    (tenant.label, namespace),
                    ("alice" | "ci", "team-a") | ("bob", "team-b")
                );
                // A viewer reads all but Secrets; a node reads Services
                // everywhere (it routes them) and nothing else here: no
                // pod of its uses these ConfigMaps or Secrets.
                let expected_read = expected_write
                    || (tenant.label == "carol"
                        && namespace == "team-a"
                        && resource.kind != "Secret")
                    || (tenant.label == "node" && resource.kind == "Service");
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, resource);
                let name = format!("{}-{}", tenant.label, resource.plural);
                let created = api
                    .create(&PostParams::default(), &object(resource, &name))
                    .await;
                assert_eq!(
                    allowed(&created),
                    expected_write,
                    "{} create {} in {namespace}: {created:?}",
                    tenant.label,
                    resource.plural
                );
                // Nothing is written on a refusal.
                let by_admin: Api<DynamicObject> =
                    Api::namespaced_with(admin.clone(), namespace, resource);
                assert_eq!(
                    by_admin.get_opt(&name).await.unwrap().is_some(),
                    expected_write,
                    "{name} in {namespace}"
                );
                let listed = api.list(&Default::default()).await;
                assert_eq!(
                    allowed(&listed),
                    expected_read,
                    "{} list {} in {namespace}",
                    tenant.label,
                    resource.plural
                );
                let got = api.get(&name).await;
                assert_eq!(
                    allowed(&got),
                    expected_read,
                    "{} get {} in {namespace}",
                    tenant.label,
                    resource.plural
                );
                let patched = api
                    .patch(
                        &name,
                        &Default::default(),
                        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
                    )
                    .await;
                assert_eq!(
                    allowed(&patched),
                    expected_write,
                    "{} patch {} in {namespace}",
                    tenant.label,
                    resource.plural
                );
                let deleted = api.delete(&name, &Default::default()).await;
                assert_eq!(
                    allowed(&deleted),
                    expected_write,
                    "{} delete {} in {namespace}",
                    tenant.label,
                    resource.plural
                );
                // can-i agrees with what happened.
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            namespace: Some(namespace.into()),
                            verb: Some("list".into()),
                            group: Some(resource.group.clone()),
                            resource: Some(resource.plural.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .unwrap();
                assert_eq!(
                    answer.status.unwrap().allowed,
                    expected_read,
                    "{} can-i list {} in {namespace}",
                    tenant.label,
                    resource.plural
                );
                checked += 1;
            }
        }
        // Namespaces themselves are cluster-scoped: only the admin makes them.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
        namespace.metadata.name = Some(format!("by-{}", tenant.label));
        let created = namespaces.create(&PostParams::default(), &namespace).await;
        assert!(!allowed(&created), "{} created a namespace", tenant.label);
    }
    assert_eq!(checked, tenants.len() * 3 * resources.len());
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_and_whoami_answer_for_each_user() {
    let (server, _controllers) = cluster().await;
    server.ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    let alice = server.user_kubeconfig("alice", Some("developers"));
    let whoami = server.kubectl_as(&alice, &["auth", "whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    let review: serde_json::Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        json!(["developers", "system:authenticated"])
    );

    let can = |args: &[&str]| stdout(&server.kubectl_as(&alice, args)).trim().to_string();
    assert_eq!(
        can(&["auth", "can-i", "create", "deployments", "-n", "team-a"]),
        "yes"
    );
    assert_eq!(
        can(&["auth", "can-i", "create", "deployments", "-n", "team-b"]),
        "no"
    );
    assert_eq!(
        can(&["auth", "can-i", "get", "secrets", "-n", "kube-system"]),
        "no"
    );
    assert_eq!(can(&["auth", "can-i", "get", "/healthz"]), "yes");
    // The admin asks on someone's behalf.
    let as_alice = server.ok(&[
        "auth", "can-i", "delete", "pods", "-n", "team-a", "--as", "alice",
    ]);
    assert_eq!(as_alice.trim(), "yes");
    let as_dave = server.kubectl(&[
        "auth", "can-i", "delete", "pods", "-n", "team-a", "--as", "dave",
    ]);
    assert_eq!(stdout(&as_dave).trim(), "no");

    // --list agrees: edit's resources with write verbs in team-a, none of
    // it in team-b.
    let listed = can(&["auth", "can-i", "--list", "-n", "team-a"]);
    let row = listed
        .lines()
        .find(|line| line.starts_with("deployments.apps "))
        .unwrap_or_else(|| panic!("no deployments row in:\n{listed}"));
    for verb in [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ] {
        assert!(row.contains(verb), "{verb} missing from {row}");
    }
    let elsewhere = can(&["auth", "can-i", "--list", "-n", "team-b"]);
    assert!(!elsewhere.contains("deployments.apps"), "{elsewhere}");
    assert!(
        elsewhere.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{elsewhere}"
    );

    // A refusal reads as Kubernetes words it.
    let refused = server.kubectl_as(&alice, &["get", "secrets", "-n", "kube-system"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            "secrets is forbidden: User \"alice\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
        ),
        "{}",
        stderr(&refused)
    );
    // Without a certificate only the public paths answer.
    let anonymous = client_with(&server, Default::default()).await;
    anonymous
        .apiserver_version()
        .await
        .expect("/version is public");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(anonymous);
    match namespaces.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("an anonymous list answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_grants_what_they_do_not_hold() {
    let (server, _controllers) = cluster().await;
    server.ok(&[
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    let alice = server.user_kubeconfig("alice", None);
    let run = |args: &[&str]| server.kubectl_as(&alice, args);
    // What alice holds she may grant in her namespace.
    let granted = run(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
        "-n",
        "team-a",
    ]);
    assert!(granted.status.success(), "{}", stderr(&granted));
    let bound = run(&[
        "create",
        "rolebinding",
        "bob-reads",
        "--role=pod-reader",
        "--user=bob",
        "-n",
        "team-a",
    ]);
    assert!(bound.status.success(), "{}", stderr(&bound));
    let edit = run(&[
        "create",
        "rolebinding",
        "bob-edits",
        "--clusterrole=edit",
        "--user=bob",
        "-n",
        "team-a",
    ]);
    assert!(edit.status.success(), "{}", stderr(&edit));
    // Not what she does not: nodes, another namespace, cluster-admin.
    let nodes = run(&[
        "create",
        "role",
        "node-reader",
        "--verb=get",
        "--resource=nodes",
        "-n",
        "team-a",
    ]);
    assert!(!nodes.status.success());
    assert!(
        stderr(&nodes).contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&nodes)
    );
    let escalate = run(&[
        "create",
        "rolebinding",
        "alice-root",
        "--clusterrole=cluster-admin",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    assert!(!escalate.status.success());
    assert!(
        stderr(&escalate).contains("forbidden"),
        "{}",
        stderr(&escalate)
    );
    let cluster_wide = run(&[
        "create",
        "clusterrolebinding",
        "alice-root",
        "--clusterrole=cluster-admin",
        "--user=alice",
    ]);
    assert!(!cluster_wide.status.success());
    let other = run(&[
        "create",
        "role",
        "r",
        "--verb=get",
        "--resource=pods",
        "-n",
        "team-b",
    ]);
    assert!(!other.status.success());
    // Nothing was written by the refusals.
    assert!(
        !server
            .kubectl(&["get", "role", "node-reader", "-n", "team-a"])
            .status
            .success()
    );
    assert!(
        !server
            .kubectl(&["get", "rolebinding", "alice-root", "-n", "team-a"])
            .status
            .success()
    );
    assert!(
        !server
            .kubectl(&["get", "clusterrolebinding", "alice-root"])
            .status
            .success()
    );
    // Impersonating someone needs the verb.
    let impersonated = run(&["get", "pods", "-n", "team-b", "--as", "bob"]);
    assert!(!impersonated.status.success());
    assert!(
        stderr(&impersonated).contains("cannot impersonate resource \"users\""),
        "{}",
        stderr(&impersonated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_only_what_its_pods_use_and_writes_only_its_own() {
    let (server, _controllers) = cluster().await;
    server.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
        "-n",
        "team-a",
    ]);
    server.ok(&[
        "create",
        "secret",
        "generic",
        "other",
        "--from-literal=k=v",
        "-n",
        "team-a",
    ]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"nodeName": "n1",
                 "containers": [{"name": "c", "image": "hello:1.0",
                                 "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}
    });
    server.ok_with_input(&["apply", "-f", "-"], Some(&pod.to_string()));
    let n1 = server.user_kubeconfig("system:node:n1", Some("system:nodes"));
    let n2 = server.user_kubeconfig("system:node:n2", Some("system:nodes"));
    let read = |node: &PathBuf, name: &str| {
        server.kubectl_as(node, &["get", "secret", name, "-n", "team-a"])
    };
    assert!(
        read(&n1, "db").status.success(),
        "{}",
        stderr(&read(&n1, "db"))
    );
    let other = read(&n1, "other");
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("no relationship found between node 'n1' and this object"),
        "{}",
        stderr(&other)
    );
    assert!(!read(&n2, "db").status.success());
    let all = server.kubectl_as(&n1, &["get", "secrets", "-A"]);
    assert!(!all.status.success(), "a node listed every Secret");
    // Its own Node, not another's; not a restricted label.
    let node = |name: &str, labels: serde_json::Value| {
        json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        .to_string()
    };
    let own = server.kubectl_as_with_input(&n1, &["create", "-f", "-"], &node("n1", json!({})));
    assert!(own.status.success(), "{}", stderr(&own));
    let theirs = server.kubectl_as_with_input(&n1, &["create", "-f", "-"], &node("n2", json!({})));
    assert!(!theirs.status.success());
    let label = server.kubectl_as(
        &n1,
        &[
            "label",
            "node",
            "n1",
            "node-restriction.kubernetes.io/tier=gold",
        ],
    );
    assert!(!label.status.success());
    assert!(
        stderr(&label).contains("is not allowed to modify labels"),
        "{}",
        stderr(&label)
    );
    // Pods: only those bound to it.
    let deleted = server.kubectl_as(
        &n2,
        &["delete", "pod", "web", "-n", "team-a", "--grace-period=0"],
    );
    assert!(!deleted.status.success());
    assert!(
        server
            .kubectl(&["get", "pod", "web", "-n", "team-a"])
            .status
            .success()
    );
}

/// A client presenting `token` and no certificate.
async fn token_client(server: &TestServer, token: &str) -> kube::Client {
    let auth = kube::config::AuthInfo {
        token: Some(secrecy::SecretString::from(token.to_string())),
        ..Default::default()
    };
    client_with(server, auth).await
}

/// A client of the server presenting `auth` instead of the admin's
/// certificate (nothing, for an anonymous one).
async fn client_with(server: &TestServer, auth: kube::config::AuthInfo) -> kube::Client {
    let document = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(auth.clone());
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The status a token's first call gets: 200, 401 or 403.
async fn status_with(client: kube::Client, namespace: &str) -> u16 {
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client, namespace);
    match config_maps.list(&Default::default()).await {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_while_valid_and_bound() {
    use flotilla_control::auth::tokens::{self, ObjectRef, Signer};
    let (server, _controllers) = cluster().await;
    server.ok(&["create", "serviceaccount", "ci", "-n", "team-a"]);
    server.ok(&[
        "create",
        "rolebinding",
        "ci-edit",
        "--clusterrole=edit",
        "--serviceaccount=team-a:ci",
        "-n",
        "team-a",
    ]);
    let token = server.ok(&["create", "token", "ci", "-n", "team-a", "--duration", "1h"]);
    let ci = token_client(&server, token.trim()).await;
    assert_eq!(status_with(ci.clone(), "team-a").await, 200);
    assert_eq!(status_with(ci.clone(), "team-b").await, 403);
    let reviews: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = Api::all(ci);
    let review = reviews
        .create(&PostParams::default(), &Default::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:team-a:ci")
    );
    assert!(
        user.groups
            .unwrap()
            .contains(&"system:serviceaccounts:team-a".to_string())
    );

    // Another audience's token is not the API's.
    let vault = server.ok(&[
        "create",
        "token",
        "ci",
        "-n",
        "team-a",
        "--audience",
        "vault",
    ]);
    assert_eq!(
        status_with(token_client(&server, vault.trim()).await, "team-a").await,
        401
    );
    // Too short a life is refused as Kubernetes refuses it.
    let short = server.fails(
        &["create", "token", "ci", "-n", "team-a", "--duration", "1m"],
        None,
    );
    assert!(
        short.contains("may not specify a duration less than 10 minutes"),
        "{short}"
    );
    // An expired token, signed with the servers' own key.
    let signer = Signer::ensure(&server.dir.path().join("ca")).unwrap();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(TestServer::client_from(&server.kubeconfig).await, "team-a");
    let uid = accounts.get("ci").await.unwrap().metadata.uid.unwrap();
    let request =
        tokens::parse_request("ci", &json!({"spec": {"expirationSeconds": 600}})).unwrap();
    let an_hour_ago = k8s_openapi::jiff::Timestamp::now().as_second() - 3_600;
    let account = ObjectRef {
        name: "ci".into(),
        uid,
    };
    let expired = signer
        .sign(&tokens::claims(
            "team-a",
            account,
            None,
            &request,
            an_hour_ago,
        ))
        .unwrap();
    assert_eq!(
        status_with(token_client(&server, &expired).await, "team-a").await,
        401
    );

    // Bound to a pod, a token lives as long as the pod.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner", "namespace": "team-a"},
        "spec": {"serviceAccountName": "ci", "containers": [{"name": "c", "image": "hello:1.0"}]}
    });
    server.ok_with_input(&["apply", "-f", "-"], Some(&pod.to_string()));
    let bound_to = |kind: &str, name: &str| {
        let args = [
            "create",
            "token",
            "ci",
            "-n",
            "team-a",
            "--bound-object-kind",
            kind,
            "--bound-object-name",
            name,
        ];
        args.map(str::to_string)
    };
    let args = bound_to("Pod", "runner");
    let bound = server.ok(&args.each_ref().map(String::as_str));
    let runner = token_client(&server, bound.trim()).await;
    assert_eq!(status_with(runner.clone(), "team-a").await, 200);
    server.ok(&[
        "delete",
        "pod",
        "runner",
        "-n",
        "team-a",
        "--grace-period=0",
        "--force",
    ]);
    assert_eq!(status_with(runner, "team-a").await, 401);
    // Bound to a Secret, as long as the Secret.
    server.ok(&[
        "create",
        "secret",
        "generic",
        "ci-key",
        "-n",
        "team-a",
        "--from-literal=k=v",
    ]);
    let args = bound_to("Secret", "ci-key");
    let bound = server.ok(&args.each_ref().map(String::as_str));
    let keyed = token_client(&server, bound.trim()).await;
    assert_eq!(status_with(keyed.clone(), "team-a").await, 200);
    server.ok(&["delete", "secret", "ci-key", "-n", "team-a"]);
    assert_eq!(status_with(keyed, "team-a").await, 401);
    // Bound to nothing that exists, no token at all.
    let args = bound_to("Node", "no-such-node");
    let missing = server.fails(&args.each_ref().map(String::as_str), None);
    assert!(missing.contains("not found"), "{missing}");
    // Deleting the account ends all of its tokens.
    server.ok(&["delete", "serviceaccount", "ci", "-n", "team-a"]);
    assert_eq!(
        status_with(token_client(&server, token.trim()).await, "team-a").await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_who_may_update_a_namespace_opens_its_egress() {
    let (server, _controllers) = cluster().await;
    // carol may create namespaces, not update them.
    server.ok(&[
        "create",
        "clusterrole",
        "namespace-creator",
        "--verb=create,get",
        "--resource=namespaces",
    ]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "carol-creates",
        "--clusterrole=namespace-creator",
        "--user=carol",
    ]);
    let carol = server.user_kubeconfig("carol", None);
    let open = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations:\n    \
             flotilla.dev/egress-allow: \"0.0.0.0/0\"\n"
        )
    };
    let refused = server.kubectl_as_with_input(&carol, &["create", "-f", "-"], &open("wide"));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("setting the flotilla.dev/egress-allow annotation needs permission to update the Namespace"),
        "{}",
        stderr(&refused)
    );
    let plain = server.kubectl_as(&carol, &["create", "namespace", "closed"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    // Whoever may update it may open it.
    server.ok(&[
        "annotate",
        "namespace",
        "closed",
        "flotilla.dev/egress-allow=api.example.com",
    ]);
}
