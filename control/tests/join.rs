//! Joining a cluster with a token, against real HTTPS API servers on
//! loopback: an agent gets a node certificate it can use, a server becomes
//! a store member that serves what the first one wrote, and every way a
//! token can be wrong is refused with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flotilla_control::join::client::{add_server_member, join_node, join_server};
use flotilla_control::join::token::{JoinToken, Purpose};
use flotilla_control::join::{
    self, JoinError, MemberAddRequest, NodeJoinRequest, ServerJoinRequest,
};
use flotilla_control::{Server, ServerConfig, tls};
use flotilla_pki::{ClusterCa, Credentials, certificate_common_name};
use flotilla_raft_store::member::PeerSpec;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use support::TestServer;

fn ca_pem(server: &TestServer) -> String {
    std::fs::read_to_string(server.dir.path().join("ca").join("ca.pem")).unwrap()
}

fn https_url(server: &Server) -> String {
    format!("https://{}", server.api_address())
}

async fn client_with(url: &str, credentials: &Credentials) -> kube::Client {
    let document = tls::kubeconfig(url, credentials);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn node(name: &str) -> NodeJoinRequest {
    NodeJoinRequest {
        node_name: name.into(),
        addresses: vec!["127.0.0.1".into()],
    }
}

fn refused_because(outcome: Result<impl Sized, JoinError>, expected: &str) {
    match outcome {
        Err(JoinError::Refused { reason, .. }) => {
            assert!(
                reason.contains(expected),
                "{reason:?} does not say {expected:?}"
            )
        }
        Err(other) => panic!("expected a refusal saying {expected:?}, got {other}"),
        Ok(_) => panic!("expected a refusal saying {expected:?}, got an admission"),
    }
}

#[tokio::test]
async fn a_node_joins_with_a_token_and_every_bad_token_is_refused() {
    let server = TestServer::start_https().await;
    let running = server.server.as_ref().unwrap();
    let admin = running.client().await.unwrap();
    let url = https_url(running);
    let ca = ca_pem(&server);
    let token = join::create_token(
        &admin,
        &ca,
        Some(Duration::from_secs(3600)),
        "test",
        Purpose::Agent,
    )
    .await
    .unwrap();
    // The token survives printing and parsing.
    assert_eq!(JoinToken::parse(&token.to_string()).unwrap(), token);

    let answer = join_node(&url, &token, &node("node-1")).await.unwrap();
    let credentials: Credentials = answer;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(credentials.cert_pem.as_bytes())
        .map(|der: rustls_pki_types::CertificateDer<'_>| der.to_vec())
        .unwrap();
    assert_eq!(
        certificate_common_name(&der).as_deref(),
        Some("system:node:node-1")
    );
    // The certificate is a working client of the API.
    let as_node = client_with(&url, &credentials).await;
    Api::<Namespace>::all(as_node).get("default").await.unwrap();

    // A node name Kubernetes would refuse is refused here too.
    refused_because(
        join_node(&url, &token, &node("Node_1")).await,
        "DNS subdomain",
    );
    // A wrong secret.
    let mut wrong = token.clone();
    wrong.secret = "0000000000000000".into();
    refused_because(
        join_node(&url, &wrong, &node("node-2")).await,
        "unknown or revoked",
    );
    // A token for another cluster's CA never reaches the point of sending
    // its secret.
    let mut elsewhere = token.clone();
    elsewhere.ca_hash = "0".repeat(64);
    assert!(matches!(
        join_node(&url, &elsewhere, &node("node-2")).await,
        Err(JoinError::WrongCa { .. })
    ));
    // An expired token.
    let expired = join::create_token(&admin, &ca, Some(Duration::ZERO), "expired", Purpose::Agent)
        .await
        .unwrap();
    refused_because(join_node(&url, &expired, &node("node-2")).await, "expired");
    // A second machine may not take over a registered node's name: the
    // first one registers its Node, as its agent does.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let registered: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "node-1"}})).unwrap();
    nodes
        .create(&PostParams::default(), &registered)
        .await
        .unwrap();
    refused_because(
        join_node(&url, &token, &node("node-1")).await,
        "already registered",
    );
    // Once the Node is gone the name is free again.
    nodes
        .delete("node-1", &DeleteParams::default())
        .await
        .unwrap();
    join_node(&url, &token, &node("node-1")).await.unwrap();
    // An agents' token does not admit a server, which would get the CA key.
    let store_address = "127.0.0.1:7999".to_string();
    refused_because(
        join_server(&url, &token, &ServerJoinRequest { store_address }).await,
        "flotilla token create --server",
    );
    // A revoked token: its Secret deleted.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    secrets
        .delete(
            &join::token::secret_name(&token.id),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    refused_because(
        join_node(&url, &token, &node("node-2")).await,
        "unknown or revoked",
    );
    // Plain HTTP is refused before anything is sent.
    assert!(matches!(
        join_node(&server.url(), &token, &node("node-2")).await,
        Err(JoinError::Invalid(_))
    ));
    server.stop().await;
}

/// `POST` to the renewal path as `client`: the new credentials, or the
/// status code of the refusal.
async fn renew(client: &kube::Client) -> Result<Credentials, u16> {
    let request = http::Request::post(join::RENEWAL_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(b"{}".to_vec())
        .unwrap();
    match client.request::<Credentials>(request).await {
        Ok(credentials) => Ok(credentials),
        Err(kube::Error::Api(status)) => Err(status.code),
        Err(other) => panic!("renewal failed without a status: {other}"),
    }
}

#[tokio::test]
async fn a_node_renews_its_own_certificate_and_no_one_else_does() {
    let server = TestServer::start_https().await;
    let running = server.server.as_ref().unwrap();
    let admin = running.client().await.unwrap();
    let url = https_url(running);
    let token = join::create_token(&admin, &ca_pem(&server), None, "renew", Purpose::Agent)
        .await
        .unwrap();
    let request = NodeJoinRequest {
        node_name: "node-r".into(),
        addresses: vec!["127.0.0.1".into(), "node-r.example".into()],
    };
    let joined = join_node(&url, &token, &request).await.unwrap();
    let first = joined.certificate().unwrap();
    let as_node = client_with(&url, &joined).await;

    // The node gets a new certificate and key, for the same names, with no
    // token; the new one works as a client of the API.
    let renewed = renew(&as_node).await.unwrap();
    let second = renewed.certificate().unwrap();
    assert_eq!(second.subject, first.subject);
    assert_eq!(second.names, first.names);
    assert!(second.not_after >= first.not_after);
    assert_ne!(renewed.key_pem, joined.key_pem);
    let renewed_client = client_with(&url, &renewed).await;
    Api::<Namespace>::all(renewed_client)
        .get("default")
        .await
        .unwrap();

    // Anyone else is refused: without a certificate (401), a user without
    // the role (403), the administrator impersonating the node, whose
    // certificate is not the node's (403), and a GET (403).
    let anonymous = {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.root_cert = Some(vec![
            rustls_pki_types::pem::PemObject::from_pem_slice(joined.ca_cert_pem.as_bytes())
                .map(|der: rustls_pki_types::CertificateDer<'_>| der.to_vec())
                .unwrap(),
        ]);
        kube::Client::try_from(config).unwrap()
    };
    assert_eq!(renew(&anonymous).await.unwrap_err(), 401);
    let ca = ClusterCa::load(&server.dir.path().join("ca")).unwrap();
    let alice = client_with(&url, &tls::user_credentials(&ca, "alice", None).unwrap()).await;
    assert_eq!(renew(&alice).await.unwrap_err(), 403);
    let admin_credentials = tls::admin_credentials(&ca).unwrap();
    let impersonating = {
        let document = tls::kubeconfig(&url, &admin_credentials);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        config.auth_info.impersonate = Some("system:node:node-r".into());
        config.auth_info.impersonate_groups = Some(vec!["system:nodes".into()]);
        kube::Client::try_from(config).unwrap()
    };
    assert_eq!(renew(&impersonating).await.unwrap_err(), 403);
    let get = http::Request::get(join::RENEWAL_PATH)
        .body(Vec::new())
        .unwrap();
    match as_node.request_text(get).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("a GET renewed: {other:?}"),
    }
}

/// A certificate is checked on every request, not only when the
/// connection is made, as kube-apiserver checks it: a connection that
/// outlives its client certificate is refused from then on.
#[tokio::test]
async fn a_certificate_that_expires_on_an_open_connection_is_refused() {
    let server = TestServer::start_https().await;
    let running = server.server.as_ref().unwrap();
    let url = https_url(running);
    let ca = ClusterCa::load(&server.dir.path().join("ca")).unwrap();
    let short = ca
        .issue_valid_for(
            "short-lived",
            Some("system:masters"),
            &[],
            Duration::from_secs(2),
        )
        .unwrap();
    let expires = short.certificate().unwrap().not_after;
    let client = client_with(&url, &short).await;
    let namespaces = Api::<Namespace>::all(client);
    namespaces.get("default").await.unwrap();
    // Wall-clock time must pass for the certificate to expire.
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    match namespaces.get("default").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("an expired certificate was served: {other:?}"),
    }
}

#[tokio::test]
async fn a_server_joins_the_store_and_serves_what_the_first_one_wrote() {
    let first = TestServer::start_https().await;
    let running = first.server.as_ref().unwrap();
    let admin = running.client().await.unwrap();
    let url = https_url(running);
    let token_path = first.dir.path().join("server-token");
    let ttl = Some(Duration::from_secs(3600));
    let token = join::ensure_token(&admin, &ca_pem(&first), &token_path, Purpose::Server, ttl)
        .await
        .unwrap();
    // The token is kept, not replaced, on the next start while it is valid.
    let kept = join::ensure_token(&admin, &ca_pem(&first), &token_path, Purpose::Server, ttl)
        .await
        .unwrap();
    assert_eq!(kept, token);
    // A servers' token does not admit an agent.
    refused_because(
        join_node(&url, &token, &node("node-9")).await,
        "admits servers, not agents",
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let written: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "before-the-join"},
        "data": {"answer": "42"},
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &written)
        .await
        .unwrap();

    // The newcomer's store address.
    let store_address = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let request = ServerJoinRequest {
        store_address: store_address.to_string(),
    };
    let admission = join_server(&url, &token, &request).await.unwrap();
    assert_eq!(admission.id, 2);
    assert_eq!(admission.members.len(), 1);
    // Asking again (a retry after a lost answer) gives the same id.
    assert_eq!(join_server(&url, &token, &request).await.unwrap().id, 2);

    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::from_pem(admission.ca.clone(), &admission.ca_key).unwrap();
    ca.save(&dir.path().join("ca")).unwrap();
    // As `flotilla server --join` does: the servers share the key tokens
    // are signed with.
    flotilla_control::auth::tokens::Signer::save(
        &dir.path().join("ca"),
        &admission.service_account_key,
    )
    .unwrap();
    let mut config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
    config.store.id = admission.id;
    config.store.listen = store_address;
    config.store.join = true;
    config.store.initial_members = admission
        .members
        .iter()
        .map(|member| PeerSpec {
            id: member.id,
            address: member.address.parse().unwrap(),
        })
        .collect();
    config.api_tls = Some(tls::server_credentials(&ca, &[]).unwrap());
    // The member is added once it runs: the store's one member could not
    // commit the change (now needing two) otherwise.
    let member = MemberAddRequest {
        id: admission.id,
        store_address: store_address.to_string(),
    };
    let adding = tokio::spawn({
        let (url, token) = (url.clone(), token.clone());
        async move { add_server_member(&url, &token, &member).await }
    });
    let second = Server::start(config).await.unwrap();
    let members = adding.await.unwrap().unwrap();
    assert_eq!(members.len(), 2);
    let through_second: Api<ConfigMap> = Api::namespaced(second.client().await.unwrap(), "default");
    let read = through_second.get("before-the-join").await.unwrap();
    assert_eq!(read.data, written.data);
    // A token the first server issues authenticates on the second.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(second.client().await.unwrap(), "default");
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "ci"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 600}})).unwrap();
    let issued =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), "default")
            .create_token_request("ci", &PostParams::default(), &request)
            .await
            .unwrap();
    let token = issued.status.unwrap().token.unwrap();
    let document = tls::kubeconfig(
        &https_url(&second),
        &Credentials {
            ca_cert_pem: admission.ca.clone(),
            cert_pem: String::new(),
            key_pem: String::new(),
        },
    );
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token.clone())),
            ..Default::default()
        });
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let as_ci = kube::Client::try_from(config).unwrap();
    let reviews: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = Api::all(as_ci);
    let review = reviews
        .create(&PostParams::default(), &Default::default())
        .await
        .unwrap();
    let username = review.status.unwrap().user_info.unwrap().username;
    assert_eq!(
        username.as_deref(),
        Some("system:serviceaccount:default:ci")
    );
    second.shutdown().await;
    first.stop().await;
}

/// The store's client protocol answers only the join authority: not a
/// node, not a user, not even the administrator, whose certificates come
/// from the same CA.
#[tokio::test]
async fn the_store_serves_only_the_join_authority() {
    let server = TestServer::start_https().await;
    let running = server.server.as_ref().unwrap();
    let ca = flotilla_pki::ClusterCa::ensure(&server.dir.path().join("ca")).unwrap();
    let address = running.member().address().to_string();
    let client_as = |name: &str| {
        let credentials = ca
            .issue_in_group(name, None, &["localhost".to_string()])
            .unwrap();
        flotilla_raft_store::client::Client::with_credentials(vec![address.clone()], &credentials)
            .unwrap()
    };
    for name in [
        "system:node:n1",
        "admin",
        "system:apiserver",
        "store-client",
    ] {
        let client = client_as(name);
        let read = client.get(b"/registry/secrets/kube-system/".to_vec()).await;
        assert!(
            matches!(read, Err(flotilla_raft_store::Error::PermissionDenied(_))),
            "{name} read the store: {read:?}"
        );
        let added = client.member_add(7, "127.0.0.1:7999".into()).await;
        assert!(
            matches!(added, Err(flotilla_raft_store::Error::PermissionDenied(_))),
            "{name} changed the members: {added:?}"
        );
    }
    let authority = client_as(join::AUTHORITY_NAME);
    assert_eq!(authority.member_list().await.unwrap().len(), 1);
    server.stop().await;
}
