//! HTTPS for the kubelet endpoint once the node has a certificate from the
//! cluster (given at join): the endpoint presents the node's certificate
//! and answers only clients with a certificate from the same CA, which is
//! what the API server presents when it proxies `kubectl logs`.
//!
//! This module knows TLS; the accept loop is `net/listen.rs`'s, what is
//! served is `logs.rs`.

use std::sync::Arc;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::error::{AgentError, Result};

/// The node annotation that tells the API server to reach this node's
/// kubelet endpoint over HTTPS.
pub const KUBELET_SCHEME_ANNOTATION: &str = "flotilla.dev/kubelet-scheme";
/// Connections served at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 256;

/// The node's certificate, its key and the cluster CA, all PEM.
#[derive(Clone)]
pub struct KubeletTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KubeletTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletTls").finish_non_exhaustive()
    }
}

impl KubeletTls {
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
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| invalid("TLS versions", &e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .map_err(|e| invalid("the node certificate", &e))?;
        Ok(crate::net::MeshTls {
            server: self.server_config(versions)?,
            client,
        })
    }

    /// Presents the node's certificate; requires one from the CA.
    fn server_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| invalid("the client verifier", &e))?;
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| invalid("TLS versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(|e| invalid("the node certificate", &e))
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| invalid("the CA certificate", &e))?;
            roots
                .add(cert)
                .map_err(|e| invalid("the CA certificate", &e))?;
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| invalid("the node certificate", &e))
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid("the node key", &e))
    }
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
