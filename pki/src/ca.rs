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
use std::time::{Duration, SystemTime};

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

/// How long the certificates a CA issues are valid unless told otherwise
/// (kubeadm's `certificateValidityPeriod` and kube-controller-manager's
/// `--cluster-signing-duration`): a year.
pub const CERTIFICATE_VALIDITY_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a new CA's own certificate is valid (kubeadm's
/// `caCertificateValidityPeriod`): ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The most a certificate is dated back, for clocks a little behind the
/// issuer's; a tenth of a short lifetime at most.
const BACKDATE_MAX: Duration = Duration::from_secs(60);

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
    /// How long the certificates it issues are valid.
    validity: Duration,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    // Issuing never reads these (only the issuer's name and key); a new
    // CA's certificate gets its dates in `generate`.
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
        let mut params = ca_params();
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_error("self-signing CA", e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            validity: CERTIFICATE_VALIDITY_DEFAULT,
        })
    }

    /// This CA issuing certificates valid for `validity` from the moment
    /// each is issued (by default [`CERTIFICATE_VALIDITY_DEFAULT`]).
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// How long the certificates it issues are valid.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `name` (its common name, which peers see as
    /// [`PeerIdentity::name`]) valid for the given subject alternative names:
    /// IP addresses and DNS names the holder is reached at, e.g.
    /// `["127.0.0.1", "localhost"]`. It is valid for both server and client
    /// use, since members are both, for the CA's [`ClusterCa::validity`].
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
        self.issue_valid_for(name, group, subject_alt_names, self.validity)
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
        self.issue_valid_for(name, group, &[], valid_for)
    }

    /// As [`ClusterCa::issue_in_group`], valid from now for `valid_for`
    /// rather than the CA's [`ClusterCa::validity`] (node certificates
    /// follow the signing duration, not the control plane's validity).
    pub fn issue_valid_for(
        &self,
        name: &str,
        group: Option<&str>,
        subject_alt_names: &[String],
        valid_for: Duration,
    ) -> Result<Credentials> {
        let mut params = CertificateParams::new(subject_alt_names.to_vec())
            .map_err(|e| tls_error("certificate names", e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(group) = group {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
        }
        set_validity(&mut params, valid_for)?;
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
        Ok(Self {
            cert_pem,
            key,
            validity: CERTIFICATE_VALIDITY_DEFAULT,
        })
    }

    /// The CA's private key, PEM: handed only to servers that join.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// `params` valid from now (dated back a little) for `valid_for`.
fn set_validity(params: &mut CertificateParams, valid_for: Duration) -> Result<()> {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| tls_error("the clock", e))?;
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE_MAX.min(valid_for / 10);
    params.not_after = now + valid_for;
    Ok(())
}

/// What one member or client presents and trusts: the CA certificate, its
/// own certificate and its private key, all PEM. On the wire (a join's or
/// a renewal's answer) the fields are `ca`, `cert` and `key`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    #[serde(rename = "ca")]
    pub ca_cert_pem: String,
    #[serde(rename = "cert")]
    pub cert_pem: String,
    #[serde(rename = "key")]
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

    /// Replaces `<stem>.pem` and `<stem>.key` in `dir` (written by
    /// [`Credentials::save`]) with these, each file whole or not at all:
    /// written aside, flushed to disk, then renamed over the old one, the
    /// key first (a crash between the two renames leaves a new key beside
    /// the old certificate, which loading reports as a mismatch).
    pub fn replace(&self, dir: &Path, stem: &str) -> Result<()> {
        for (name, contents, private) in [
            (format!("{stem}.key"), &self.key_pem, true),
            (format!("{stem}.pem"), &self.cert_pem, false),
        ] {
            let path = dir.join(&name);
            let aside = dir.join(format!(".{name}.new"));
            write_file(&aside, contents, private)?;
            std::fs::File::open(&aside)
                .and_then(|file| file.sync_all())
                .and_then(|()| std::fs::rename(&aside, &path))
                .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
        }
        std::fs::File::open(dir)
            .and_then(|directory| directory.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
    }

    /// What the certificate says: its holder, names and validity.
    pub fn certificate(&self) -> Result<CertificateInfo> {
        let chain = self.chain()?;
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Tls("no certificate in credentials".into()))?;
        certificate_info(leaf.as_ref())
            .ok_or_else(|| Error::Tls("the certificate cannot be read".into()))
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

    /// The CA certificate as the only root a rustls config trusts.
    pub fn roots(&self) -> Result<RootCertStore> {
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
    certificate_subject(certificate).map(|subject| subject.common_name)
}

/// Who a DER certificate was issued to: its common name and organizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSubject {
    pub common_name: String,
    pub organizations: Vec<String>,
}

/// The subject of a DER certificate; `None` when it has no common name.
pub fn certificate_subject(certificate: &[u8]) -> Option<CertificateSubject> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    subject_of(&parsed)
}

/// What a certificate says of its holder: who, the names it is valid for
/// (DNS names and IP addresses), and when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: CertificateSubject,
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What a DER certificate says; `None` when it cannot be read or names no
/// one. It does not verify the certificate: rustls has, or will.
pub fn certificate_info(certificate: &[u8]) -> Option<CertificateInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(alternatives)) = parsed.subject_alternative_name() {
        for name in &alternatives.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_string()),
                GeneralName::IPAddress(octets) => names.extend(ip_address(octets)),
                _ => {}
            }
        }
    }
    let time = |seconds: i64| {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
    };
    Some(CertificateInfo {
        subject: subject_of(&parsed)?,
        names,
        not_before: time(parsed.validity().not_before.timestamp())?,
        not_after: time(parsed.validity().not_after.timestamp())?,
    })
}

fn subject_of(
    certificate: &x509_parser::certificate::X509Certificate,
) -> Option<CertificateSubject> {
    let text = |attribute: &x509_parser::x509::AttributeTypeAndValue| {
        attribute.as_str().ok().map(str::to_string)
    };
    let subject = certificate.subject();
    Some(CertificateSubject {
        common_name: subject.iter_common_name().find_map(text)?,
        organizations: subject.iter_organization().filter_map(text).collect(),
    })
}

fn ip_address(octets: &[u8]) -> Option<String> {
    let address = match octets.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(octets).ok()?),
        _ => return None,
    };
    Some(address.to_string())
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

    #[test]
    fn certificates_carry_the_validity_they_were_issued_with() {
        let ca = ClusterCa::generate()
            .expect("ca")
            .with_validity(Duration::from_secs(3600));
        let before = SystemTime::now() - Duration::from_secs(1);
        let credentials = ca
            .issue_in_group(
                "system:node:n1",
                Some("system:nodes"),
                &["10.0.0.7".into(), "n1".into()],
            )
            .expect("issue");
        let info = credentials.certificate().expect("readable");
        assert_eq!(info.subject.common_name, "system:node:n1");
        assert_eq!(info.names, vec!["10.0.0.7".to_string(), "n1".to_string()]);
        let lifetime = info.not_after.duration_since(before).expect("after");
        assert!(
            (Duration::from_secs(3600)..=Duration::from_secs(3602)).contains(&lifetime),
            "{lifetime:?}"
        );
        // Dated back a tenth of its lifetime at most, and a minute at most.
        let backdate = before.duration_since(info.not_before).expect("backdated");
        assert!(backdate <= Duration::from_secs(60), "{backdate:?}");
        let short = ca
            .issue_valid_for("system:node:n2", None, &[], Duration::from_secs(10))
            .expect("issue")
            .certificate()
            .expect("readable");
        let total = short
            .not_after
            .duration_since(short.not_before)
            .expect("ordered");
        assert!(total <= Duration::from_secs(12), "{total:?}");
    }

    #[test]
    fn replaced_credentials_load_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate().expect("ca");
        let first = ca.issue("node", &[]).expect("issue");
        first.save(dir.path(), "node").expect("save");
        let second = ca.issue("node", &[]).expect("issue");
        second.replace(dir.path(), "node").expect("replace");
        let loaded = Credentials::load(dir.path(), "node").expect("load");
        assert_eq!(loaded.cert_pem, second.cert_pem);
        assert_eq!(loaded.key_pem, second.key_pem);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".new"))
            .collect();
        assert!(leftovers.is_empty());
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
