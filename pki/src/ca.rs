//! The cluster CA: generating it, issuing certificates from it, keeping
//! them as PEM files readable by their owner only, reading back who a
//! certificate names, and the rustls configs that present and trust them.
//!
//! Every member, server, agent and user holds [`Credentials`]: the CA
//! certificate, its own certificate signed by the CA, and its private key.
//! A certificate's common name is its holder's name and its organization
//! the holder's group ([`crate::names`] says which names mean what).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The CA's common name. Fixed, so that a CA loaded from its key and
/// certificate files can sign again without parsing the certificate: the
/// issuer name of every certificate it signs must equal its subject.
const CA_COMMON_NAME: &str = "Flotilla cluster CA";

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// The cluster's certificate authority: signs every member's and client's
/// certificate. Only the process that issues certificates needs it.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl ClusterCa {
    /// Generates a new CA with a fresh key.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().map_err(|e| tls_error("generating CA key", e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| tls_error("self-signing CA", e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `name` (its common name, which peers see as
    /// [`PeerIdentity::name`]) valid for the given subject alternative names:
    /// IP addresses and DNS names the holder is reached at, e.g.
    /// `["127.0.0.1", "localhost"]`. It is valid for both server and client
    /// use, since members are both.
    pub fn issue(&self, name: &str, subject_alt_names: &[String]) -> Result<Credentials> {
        self.issue_in_group(name, None, subject_alt_names)
    }

    /// As [`ClusterCa::issue`], with `group` as the certificate's
    /// organization, which Kubernetes reads as the holder's group
    /// (`system:masters`, `system:nodes`, a team's). One group at most:
    /// the certificate library keeps one value per subject attribute.
    pub fn issue_in_group(
        &self,
        name: &str,
        group: Option<&str>,
        subject_alt_names: &[String],
    ) -> Result<Credentials> {
        self.issue_with(name, group, subject_alt_names, None)
    }

    /// A client certificate for `name` in `group`, valid from now for
    /// `valid_for` (a user's credential that expires, as `kubeadm
    /// kubeconfig user --validity-period` issues).
    pub fn issue_client(
        &self,
        name: &str,
        group: Option<&str>,
        valid_for: std::time::Duration,
    ) -> Result<Credentials> {
        self.issue_with(name, group, &[], Some(valid_for))
    }

    fn issue_with(
        &self,
        name: &str,
        group: Option<&str>,
        subject_alt_names: &[String],
        valid_for: Option<std::time::Duration>,
    ) -> Result<Credentials> {
        let mut params = CertificateParams::new(subject_alt_names.to_vec())
            .map_err(|e| tls_error("certificate names", e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        if let Some(valid_for) = valid_for {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| tls_error("the clock", e))?;
            let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
            // A minute of slack for clocks a little behind the issuer's.
            params.not_before = now - std::time::Duration::from_secs(60);
            params.not_after = now + valid_for;
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(|e| tls_error("generating key", e))?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_error("signing certificate", e))?;
        Ok(Credentials {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA kept in `dir`, created there first if `dir` has none.
    pub fn ensure(dir: &Path) -> Result<Self> {
        if dir.join(CA_CERT_FILE).exists() {
            return ClusterCa::load(dir);
        }
        let ca = ClusterCa::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if needed; the key
    /// file is readable by its owner only).
    pub fn save(&self, dir: &Path) -> Result<()> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key.serialize_pem(), true)
    }

    /// Reads a CA written by [`ClusterCa::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_pem = read_file(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_file(&dir.join(CA_KEY_FILE))?;
        Self::from_pem(cert_pem, &key_pem)
    }

    /// A CA from its certificate and key, PEM (as a server that joins a
    /// cluster receives them).
    pub fn from_pem(cert_pem: String, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| tls_error("CA key", e))?;
        Ok(Self { cert_pem, key })
    }

    /// The CA's private key, PEM: handed only to servers that join.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// What one member or client presents and trusts: the CA certificate, its
/// own certificate and its private key, all PEM.
#[derive(Clone)]
pub struct Credentials {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Writes `ca.pem`, `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<()> {
        create_private_dir(dir)?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_cert_pem, false)?;
        write_file(&dir.join(format!("{stem}.pem")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, true)
    }

    /// Reads credentials written by [`Credentials::save`].
    pub fn load(dir: &Path, stem: &str) -> Result<Self> {
        Ok(Self {
            ca_cert_pem: read_file(&dir.join(CA_CERT_FILE))?,
            cert_pem: read_file(&dir.join(format!("{stem}.pem")))?,
            key_pem: read_file(&dir.join(format!("{stem}.key")))?,
        })
    }

    /// A rustls server config that presents this certificate and requires a
    /// client certificate signed by the CA. It names no ALPN protocol: each
    /// protocol sets its own.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = crypto_provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| tls_error("client verifier", e))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("server TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.private_key()?)
            .map_err(|e| tls_error("server certificate", e))?;
        Ok(config)
    }

    /// A rustls client config that trusts only the CA and presents this
    /// certificate; no ALPN protocol, as for the server's.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("client TLS versions", e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.private_key()?)
            .map_err(|e| tls_error("client certificate", e))?;
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            let cert = cert.map_err(|e| tls_error("CA certificate PEM", e))?;
            roots
                .add(cert)
                .map_err(|e| tls_error("CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("no CA certificate in credentials".into()));
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| tls_error("certificate PEM", e))
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| tls_error("private key PEM", e))
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The common name of a DER certificate (who it was issued to), for
/// servers that authenticate their clients by certificate.
pub fn certificate_common_name(certificate: &[u8]) -> Option<String> {
    der::subject(certificate).map(|subject| subject.common_name)
}

/// Who a DER certificate was issued to: its common name and organizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSubject {
    pub common_name: String,
    pub organizations: Vec<String>,
}

/// The subject of a DER certificate; `None` when it has no common name.
pub fn certificate_subject(certificate: &[u8]) -> Option<CertificateSubject> {
    der::subject(certificate)
}

/// Creates `dir` and its missing parents, readable by their owner only:
/// they hold private keys.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::File::options();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Just enough DER to read a certificate's subject common name. rustls has
/// already verified the certificate; this only reads a field out of it.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const EXPLICIT_VERSION: u8 = 0xa0;
    /// 2.5.4.3, id-at-commonName.
    const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];
    /// 2.5.4.10, id-at-organizationName.
    const ORGANIZATION_OID: &[u8] = &[0x55, 0x04, 0x0a];

    /// Splits one TLV off the front of `bytes`: (tag, contents, rest).
    fn next(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let length = rest[..count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (length, &rest[count..])
        };
        if rest.len() < length {
            return None;
        }
        Some((tag, &rest[..length], &rest[length..]))
    }

    fn expect(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (found, contents, rest) = next(bytes)?;
        (found == tag).then_some((contents, rest))
    }

    pub(super) fn subject(certificate: &[u8]) -> Option<super::CertificateSubject> {
        let (certificate, _) = expect(certificate, SEQUENCE)?;
        let (tbs, _) = expect(certificate, SEQUENCE)?;
        let mut fields = tbs;
        if fields.first() == Some(&EXPLICIT_VERSION) {
            fields = next(fields)?.2;
        }
        // serial, signature algorithm, issuer, validity, then subject.
        for _ in 0..4 {
            fields = next(fields)?.2;
        }
        let (mut subject, _) = expect(fields, SEQUENCE)?;
        let mut common_name = None;
        let mut organizations = Vec::new();
        while !subject.is_empty() {
            let (set, rest) = expect(subject, SET)?;
            subject = rest;
            let (attribute, _) = expect(set, SEQUENCE)?;
            let (oid, value) = expect(attribute, OID)?;
            let (_string_tag, text, _) = next(value)?;
            let text = || String::from_utf8(text.to_vec()).ok();
            if oid == COMMON_NAME_OID {
                common_name = text();
            } else if oid == ORGANIZATION_OID {
                organizations.extend(text());
            }
        }
        Some(super::CertificateSubject {
            common_name: common_name?,
            organizations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_read_from_an_issued_certificate() {
        let ca = ClusterCa::generate().expect("ca");
        let credentials = ca
            .issue("member-7", &["127.0.0.1".into(), "localhost".into()])
            .expect("issue");
        let chain = credentials.chain().expect("chain");
        assert_eq!(
            certificate_common_name(chain[0].as_ref()).as_deref(),
            Some("member-7")
        );
        let grouped = ca
            .issue_in_group("alice", Some("team-a"), &[])
            .expect("issue");
        let chain = grouped.chain().expect("chain");
        assert_eq!(
            certificate_subject(chain[0].as_ref()),
            Some(CertificateSubject {
                common_name: "alice".into(),
                organizations: vec!["team-a".into()],
            })
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_and_their_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("data").join("ca");
        ClusterCa::generate()
            .expect("ca")
            .save(&ca_dir)
            .expect("save");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    }

    #[test]
    fn ca_and_credentials_survive_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate().expect("ca");
        ca.save(dir.path()).expect("save ca");
        let loaded = ClusterCa::load(dir.path()).expect("load ca");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // A loaded CA still signs certificates its own certificate verifies.
        let credentials = loaded
            .issue("member-1", &["localhost".into()])
            .expect("issue");
        credentials.save(dir.path(), "member").expect("save");
        let again = Credentials::load(dir.path(), "member").expect("load");
        assert_eq!(again.cert_pem, credentials.cert_pem);
        again.server_config().expect("server config");
        again.client_config().expect("client config");
    }
}
