//! HTTPS for the Kubernetes API, with certificates from the cluster CA.
//!
//! The server presents a certificate the CA issued for the addresses it is
//! reached at. A client authenticates with a certificate from the same CA,
//! as with Kubernetes' client certificates; the API answers 401 to requests
//! without one (`api::authenticate`). The kubeconfig `flotilla server`
//! writes carries an `admin` certificate.

use std::sync::Arc;

use axum::Router;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
pub use flotilla_pki::Credentials;
use flotilla_pki::{ClusterCa, certificate_info};
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::auth::UserInfo;

/// The common name of the API server's certificate.
pub const SERVER_NAME: &str = flotilla_pki::names::API_SERVER;
/// The common name of the certificate `flotilla server`'s kubeconfig holds.
pub const ADMIN_NAME: &str = flotilla_pki::names::ADMIN;
/// Open connections at once; more wait in the kernel's accept queue.
const CONNECTIONS_MAX: usize = 4096;
/// Connections one client address may hold before it authenticates (a
/// client certificate, or a request with a valid token): enough for a
/// load balancer's health checks, too few to take the server's slots.
pub const UNAUTHENTICATED_PER_ADDRESS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("issuing a certificate: {0}")]
    Issue(#[from] flotilla_pki::Error),
    #[error("the TLS configuration is invalid: {0}")]
    Config(String),
}

/// The server's certificate, valid for `hosts` (IP addresses or DNS names)
/// and for loopback.
pub fn server_credentials(ca: &ClusterCa, hosts: &[String]) -> Result<Credentials, TlsError> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(str::to_string)
        .collect();
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    Ok(ca.issue(SERVER_NAME, &names)?)
}

/// The user the servers' leader election presents to the API.
pub const CONTROLLER_NAME: &str = flotilla_pki::names::CONTROLLER_MANAGER;

/// A client certificate for one control-plane component of a server (the
/// elector, the scheduler, each controller), named as its user.
pub fn component_credentials(ca: &ClusterCa, user: &str) -> Result<Credentials, TlsError> {
    Ok(ca.issue(user, &[])?)
}

/// The API server's side of its calls to node agents (the log proxy):
/// trusts only the cluster CA and presents `credentials`.
pub fn kubelet_connector(
    credentials: &Credentials,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut config = credentials.client_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A client certificate for the cluster's administrator, in
/// `system:masters`.
pub fn admin_credentials(ca: &ClusterCa) -> Result<Credentials, TlsError> {
    user_credentials(ca, ADMIN_NAME, Some(crate::auth::user::MASTERS))
}

/// A client certificate for `user` in `group`, as `kubeadm kubeconfig
/// user` makes them.
pub fn user_credentials(
    ca: &ClusterCa,
    user: &str,
    group: Option<&str>,
) -> Result<Credentials, TlsError> {
    Ok(ca.issue_in_group(user, group, &[])?)
}

/// A kubeconfig for `server` (an `https://` URL) that trusts the cluster CA
/// and presents `client`'s certificate.
pub fn kubeconfig(server: &str, client: &Credentials) -> String {
    kubeconfig_as(server, "admin", client)
}

/// As [`kubeconfig`], its user entry named `user`.
pub fn kubeconfig_as(server: &str, user: &str, client: &Credentials) -> String {
    let data = |pem: &str| STANDARD.encode(pem.as_bytes());
    crate::server::kubeconfig_document(
        server,
        user,
        &format!(
            "\n    certificate-authority-data: {}",
            data(&client.ca_cert_pem)
        ),
        &format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}",
            data(&client.cert_pem),
            data(&client.key_pem)
        ),
    )
}

/// A kubeconfig for `server` whose CA, certificate and key are the files
/// `ca.pem`, `<stem>.pem` and `<stem>.key` in `dir` (as
/// [`Credentials::save`] writes them), as kubelet's kubeconfig names its
/// rotated certificate: replacing the files keeps it current.
pub fn kubeconfig_with_files(
    server: &str,
    user: &str,
    dir: &std::path::Path,
    stem: &str,
) -> String {
    let path = |name: String| serde_json::Value::from(dir.join(name).display().to_string());
    crate::server::kubeconfig_document(
        server,
        user,
        &format!("\n    certificate-authority: {}", path("ca.pem".into())),
        &format!(
            "\n    client-certificate: {}\n    client-key: {}",
            path(format!("{stem}.pem")),
            path(format!("{stem}.key"))
        ),
    )
}

/// Who a request came from over TLS: the user of its verified client
/// certificate, or `None` when it sent none. Requests over plain HTTP
/// (loopback only) carry no `Peer` at all.
#[derive(Clone, Debug)]
pub struct Peer {
    pub user: Option<UserInfo>,
    /// The verified client certificate (DER) the user was read from: a
    /// node renewing its certificate keeps the names this one holds.
    pub certificate: Option<Arc<CertificateDer<'static>>>,
    /// When that certificate expires. A connection can outlive it, and
    /// kube-apiserver checks a certificate's validity on every request,
    /// not only at the handshake: so does the API (`api::authenticate`).
    pub not_after: Option<std::time::SystemTime>,
}

/// The rustls configuration: the server's certificate, and client
/// certificates from the cluster CA verified when sent. A client without
/// one still connects, so that it gets a readable 401 from the API rather
/// than a failed handshake.
fn server_config(credentials: &Credentials) -> Result<rustls::ServerConfig, TlsError> {
    let invalid =
        |what: &str, error: &dyn std::fmt::Display| TlsError::Config(format!("{what}: {error}"));
    let roots = credentials
        .roots()
        .map_err(|e| invalid("the CA certificate", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid("the client verifier", &e))?;
    let chain = CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
        .map_err(|e| invalid("the server key", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("the server certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Who sent a verified client certificate on `connection`, if one did.
fn peer_of(connection: &rustls::ServerConnection) -> Peer {
    let certificate = connection.peer_certificates().and_then(<[_]>::first);
    let info = certificate.and_then(|certificate| certificate_info(certificate.as_ref()));
    Peer {
        not_after: info.as_ref().map(|info| info.not_after),
        user: info.map(|info| {
            UserInfo::from_certificate(&info.subject.common_name, info.subject.organizations)
        }),
        certificate: certificate.map(|certificate| Arc::new(certificate.clone().into_owned())),
    }
}

/// Serves `router` on `listener` until `stop` fires or the task is
/// dropped: over TLS with client certificates when `credentials` are
/// given (each request carrying its connection's [`Peer`]), else plain
/// HTTP (the caller allows that on loopback only). Every connection task
/// belongs to this one, so stopping the server ends open connections
/// (watches included) and frees what they hold. Connections are bounded in
/// number and time as `flotilla_serve` bounds them; over TLS one address
/// holds at most [`UNAUTHENTICATED_PER_ADDRESS_MAX`] that have not
/// authenticated.
pub async fn serve(
    listener: TcpListener,
    credentials: Option<&Credentials>,
    router: Router,
    stop: oneshot::Receiver<()>,
) -> Result<(), TlsError> {
    let acceptor = match credentials {
        Some(credentials) => Some(TlsAcceptor::from(Arc::new(server_config(credentials)?))),
        None => None,
    };
    let limits = flotilla_serve::Limits {
        connections_max: CONNECTIONS_MAX,
        // Plain HTTP is served on loopback only, to the machine's admins.
        unauthenticated_per_address: acceptor.as_ref().map(|_| UNAUTHENTICATED_PER_ADDRESS_MAX),
        ..flotilla_serve::Limits::default()
    };
    let make_service = move |accepted: &flotilla_serve::Accepted<'_>| {
        // Each request knows the address it came from (the audit's
        // `sourceIPs`), as axum's `ConnectInfo` carries it.
        let router = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(accepted.client)));
        match accepted.tls {
            Some(session) => {
                TowerToHyperService::new(router.layer(axum::Extension(peer_of(session))))
            }
            None => TowerToHyperService::new(router),
        }
    };
    let stop = async {
        let _ = stop.await;
    };
    flotilla_serve::serve(listener, acceptor, limits, make_service, stop).await;
    Ok(())
}
