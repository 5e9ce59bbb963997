//! `flotilla-pki` is the cluster's identity: the CA (`ca`), issuing
//! certificates from it for a chosen validity, keeping them private on
//! disk, reading back whom a certificate names and until when, and the
//! naming rules (`names`) that say which names
//! are nodes, store members, the join authority, the control plane's
//! components and the administrators.
//!
//! It is a leaf: it knows no other Flotilla crate, no network protocol and
//! nothing of what the store, the API or the node do with an identity.
//! Start with [`ClusterCa::ensure`] and [`ClusterCa::issue_in_group`].

mod ca;
pub mod names;

pub use ca::{
    CA_VALIDITY, CERTIFICATE_VALIDITY_DEFAULT, CertificateInfo, CertificateSubject, ClusterCa,
    Credentials, certificate_common_name, certificate_info, certificate_subject,
    create_private_dir,
};

/// What issuing and keeping certificates can run into.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or TLS configuration could not be made or read.
    #[error("{0}")]
    Tls(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
