//! The node's identity over TLS once it has a certificate from the cluster
//! (given at join): the CA it trusts, and its own certificate and key,
//! which [`KubeletTls::replace`] swaps while the node runs.
//!
//! Everything the node opens or accepts from then on presents the current
//! certificate: its client of the API ([`KubeletTls::api_client`]), its
//! kubelet endpoint, which answers only clients with a certificate from the
//! same CA (what the API server presents when it proxies `kubectl logs`),
//! and the pod network's mesh. Connections already open keep the
//! certificate they were made with, as kubelet's do.
//!
//! This module knows TLS; when to renew is `renewal.rs`'s, the accept loop
//! `net/listen.rs`'s, what is served `logs.rs`'s.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use flotilla_pki::{CertificateInfo, Credentials};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::service::TowerToHyperService;
use kube::client::ConfigExt as _;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_layer::Layer as _;

use super::error::{AgentError, Result};

/// The node annotation that tells the API server to reach this node's
/// kubelet endpoint over HTTPS.
pub const KUBELET_SCHEME_ANNOTATION: &str = "flotilla.dev/kubelet-scheme";
/// Connections served at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 256;
/// How long the API client waits for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The file stem of the node's certificate and key in their directory.
pub const CREDENTIALS_STEM: &str = "node";

/// The node's certificate and key in use, and what the certificate says.
struct Current {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
    /// How many times the certificate was replaced before this one.
    generation: u64,
}

/// The node's TLS identity. Clones share it: a renewal seen by one is seen
/// by all, and by every rustls config made from any of them.
#[derive(Clone)]
pub struct KubeletTls {
    ca_pem: Arc<str>,
    roots: Arc<rustls::RootCertStore>,
    current: Arc<watch::Sender<Arc<Current>>>,
    /// Where renewed credentials are written (`node.pem`, `node.key`), so
    /// that a restart presents the newest.
    kept_in: Option<PathBuf>,
}

impl std::fmt::Debug for KubeletTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletTls")
            .field("holder", &self.certificate().subject.common_name)
            .finish_non_exhaustive()
    }
}

impl KubeletTls {
    /// The identity `credentials` hold: a certificate from the CA they
    /// carry, and its key.
    pub fn new(credentials: &Credentials) -> Result<KubeletTls> {
        let roots = credentials
            .roots()
            .map_err(|e| invalid("the CA certificate", &e))?;
        let (current, _) = watch::channel(Arc::new(current(credentials, 0)?));
        Ok(KubeletTls {
            ca_pem: credentials.ca_cert_pem.as_str().into(),
            roots: Arc::new(roots),
            current: Arc::new(current),
            kept_in: None,
        })
    }

    /// This identity, its renewals written into `dir` (where
    /// [`Credentials::load`] finds them as `node`).
    pub fn kept_in(mut self, dir: PathBuf) -> KubeletTls {
        self.kept_in = Some(dir);
        self
    }

    /// The cluster CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// What the certificate in use says: its holder, names and validity.
    pub fn certificate(&self) -> CertificateInfo {
        self.current.borrow().info.clone()
    }

    /// How many times the certificate was replaced.
    fn generation(&self) -> u64 {
        self.current.borrow().generation
    }

    /// The replacements of the certificate from now on.
    pub fn renewals(&self) -> Renewals {
        Renewals(self.current.subscribe())
    }

    /// Presents `credentials` from now on, after writing them where this
    /// identity is kept. They must be for the same holder, from the same CA.
    pub fn replace(&self, credentials: &Credentials) -> Result<()> {
        if credentials.ca_cert_pem.trim() != self.ca_pem.trim() {
            return Err(invalid(
                "the renewed certificate",
                &"it comes with another cluster CA",
            ));
        }
        let next = current(credentials, self.generation() + 1)?;
        let holder = self.certificate().subject.common_name;
        if next.info.subject.common_name != holder {
            return Err(invalid(
                "the renewed certificate",
                &format!(
                    "it names {:?}, not {holder:?}",
                    next.info.subject.common_name
                ),
            ));
        }
        if let Some(dir) = &self.kept_in {
            credentials
                .replace(dir, CREDENTIALS_STEM)
                .map_err(|e| invalid("keeping the renewed certificate", &e))?;
        }
        self.current.send_replace(Arc::new(next));
        Ok(())
    }

    /// A rustls acceptor that requires a client certificate from the CA.
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        let versions = rustls::DEFAULT_VERSIONS;
        let mut config = self.server_config(versions)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// TLS for the pod network's mesh: the node's certificate on both
    /// ends, the cluster CA to verify the other (QUIC needs TLS 1.3).
    pub fn mesh_tls(&self) -> Result<crate::net::MeshTls> {
        let versions = &[&rustls::version::TLS13];
        Ok(crate::net::MeshTls {
            server: self.server_config(versions)?,
            client: self.client_config(versions)?,
        })
    }

    /// A client of the API server at `server` (`https://host:port`) that
    /// trusts only the cluster CA and presents this identity, renewals
    /// included, as kubelet's client does with its rotated certificate:
    /// once the certificate is replaced, requests go over new connections
    /// (`Rotating`).
    pub fn api_client(&self, server: &str) -> Result<kube::Client> {
        let url: http::Uri = server
            .parse()
            .map_err(|e| invalid(&format!("the API server URL {server:?}"), &e))?;
        let mut tls = self.client_config(rustls::DEFAULT_VERSIONS)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnector::from((tcp, Arc::new(tls)));
        let rotating = Rotating {
            tls: self.clone(),
            pool: Arc::new(Mutex::new((self.generation(), pool(&connector)))),
            connector,
        };
        let service = kube::Config::new(url).base_uri_layer().layer(rotating);
        Ok(kube::Client::new(service, "default"))
    }

    /// Presents the node's certificate; requires one from the CA.
    fn server_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| invalid("the client verifier", &e))?;
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| invalid("TLS versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Presenter(self.current.clone()))))
    }

    /// Trusts only the CA; presents the node's certificate. No session is
    /// resumed: a resumed TLS session carries the certificate of the one
    /// it resumes, so after a renewal the server would still see the old
    /// one.
    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| invalid("TLS versions", &e))?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(Presenter(self.current.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Pool = hyper_util::client::legacy::Client<Connector, kube::client::Body>;

/// New connections through `connector`, made as needed and kept alive.
fn pool(connector: &Connector) -> Pool {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector.clone())
}

/// The API client's connections, started afresh once the certificate is
/// replaced, as kubelet closes its connections when it rotates: the API
/// server checks a client certificate's expiry on every request, so a
/// request must not ride on a connection made with the old one. Requests
/// in flight (watches) finish on the old connections, which close once
/// idle.
#[derive(Clone)]
struct Rotating {
    tls: KubeletTls,
    connector: Connector,
    /// The connections, and the certificate generation they present.
    pool: Arc<Mutex<(u64, Pool)>>,
}

impl tower_service::Service<http::Request<kube::client::Body>> for Rotating {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        // The pool takes requests at any time and connects on demand.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let generation = self.tls.generation();
        let client = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.0 != generation {
                *pool = (generation, self::pool(&self.connector));
            }
            pool.1.clone()
        };
        client.request(request)
    }
}

/// The certificates a [`KubeletTls`] is given, one at a time.
pub struct Renewals(watch::Receiver<Arc<Current>>);

impl Renewals {
    /// What the next certificate says, once it is in use.
    pub async fn next(&mut self) -> Option<CertificateInfo> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().info.clone())
    }
}

/// Hands rustls the certificate in use at each handshake.
struct Presenter(Arc<watch::Sender<Arc<Current>>>);

impl Presenter {
    fn key(&self) -> Arc<CertifiedKey> {
        self.0.borrow().key.clone()
    }
}

impl std::fmt::Debug for Presenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presenter").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Presenter {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        _acceptable_issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The signing key and chain of `credentials`, checked to belong together.
fn current(credentials: &Credentials, generation: u64) -> Result<Current> {
    let chain = CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid("the node certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
        .map_err(|e| invalid("the node key", &e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid("the node key", &e))?;
    let info = credentials
        .certificate()
        .map_err(|e| invalid("the node certificate", &e))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        invalid(
            "the node key",
            &format!("it does not match the certificate: {e}"),
        )
    })?;
    Ok(Current {
        key: Arc::new(key),
        info,
        generation,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &str, error: &dyn std::fmt::Display) -> AgentError {
    AgentError::Tls {
        reason: format!("{what}: {error}"),
    }
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    let service = move |_| TowerToHyperService::new(router.clone());
    crate::net::listen::serve_with(listener, Some(acceptor), CONNECTIONS_MAX, service).await;
}
