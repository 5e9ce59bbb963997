//! Join tokens: what a new server or agent presents to join a cluster.
//!
//! A token is a Kubernetes bootstrap token (`<id>.<secret>`, stored as the
//! Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`, so `kubectl` can list and revoke it)
//! together with the sha256 of the cluster CA's certificate, which lets the
//! newcomer check that it talks to the cluster it was told about before it
//! sends the secret (as `kubeadm join --discovery-token-ca-cert-hash` does):
//!
//! `flotilla1:<sha256 of the CA certificate, hex>:<id>.<secret>`
//!
//! This module knows the format and how to check a token against its
//! Secret; nothing of HTTP or certificates.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PREFIX: &str = "flotilla1";
const ID_LENGTH: usize = 6;
const SECRET_LENGTH: usize = 16;
/// Kubernetes' bootstrap token alphabet.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// The namespace and type Kubernetes keeps bootstrap tokens under.
pub const TOKEN_NAMESPACE: &str = "kube-system";
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// What a token admits. Kept in the Secret's `auth-extra-groups`, as
/// Kubernetes keeps a bootstrap token's groups: agents and servers join
/// with different tokens, since only a server receives the CA's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Agent,
    Server,
}

impl Purpose {
    /// The bootstrap group a token of this purpose names.
    pub fn group(self) -> &'static str {
        match self {
            Purpose::Agent => AGENT_GROUP,
            Purpose::Server => SERVER_GROUP,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Agent => "agents",
            Purpose::Server => "servers",
        })
    }
}

pub const AGENT_GROUP: &str = "system:bootstrappers:flotilla:agents";
pub const SERVER_GROUP: &str = "system:bootstrappers:flotilla:servers";

/// Why a token was refused; the message is safe to show the newcomer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a join token looks like flotilla1:<64 hex digits>:<6 chars>.<16 chars>; this one {0}")]
    Malformed(&'static str),
    #[error("the token is unknown or revoked")]
    Unknown,
    #[error("the token expired at {0}")]
    Expired(String),
    #[error("the token may not be used to join (usage-bootstrap-authentication is not \"true\")")]
    NotForJoining,
    #[error(
        "this token admits {token}, not {wanted}; make one with `flotilla token create{}`",
        if *wanted == Purpose::Server { " --server" } else { "" }
    )]
    WrongPurpose { token: Purpose, wanted: Purpose },
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The sha256 of the CA certificate's DER bytes, lowercase hex.
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: tokens end up in logs through Debug.
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}:{}:{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl JoinToken {
    /// A fresh token for the cluster whose CA certificate is `ca_pem`.
    pub fn generate(ca_pem: &str) -> Result<JoinToken, TokenError> {
        let mut rng = rand::rng();
        let mut draw = |length: usize| -> String {
            (0..length)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        };
        Ok(JoinToken {
            ca_hash: ca_hash(ca_pem).ok_or(TokenError::Malformed("has an unreadable CA"))?,
            id: draw(ID_LENGTH),
            secret: draw(SECRET_LENGTH),
        })
    }

    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let mut parts = text.trim().splitn(3, ':');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError::Malformed("does not start with flotilla1:"));
        }
        let ca_hash = parts.next().unwrap_or_default();
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed("has no 64-digit CA hash"));
        }
        let bootstrap = parts.next().unwrap_or_default();
        let (id, secret) = parse_bootstrap(bootstrap)?;
        Ok(JoinToken {
            ca_hash: ca_hash.to_ascii_lowercase(),
            id,
            secret,
        })
    }

    /// `<id>.<secret>`, as the newcomer sends it (`Authorization: Bearer`).
    pub fn bootstrap(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that makes this token valid, expiring at `expiration`
    /// (RFC 3339) when given.
    pub fn secret_object(
        &self,
        expiration: Option<String>,
        description: &str,
        purpose: Purpose,
    ) -> Value {
        let mut data = BTreeMap::from([
            ("token-id", self.id.clone()),
            ("token-secret", self.secret.clone()),
            ("usage-bootstrap-authentication", "true".to_string()),
            ("auth-extra-groups", purpose.group().to_string()),
            ("description", description.to_string()),
        ]);
        if let Some(expiration) = expiration {
            data.insert("expiration", expiration);
        }
        let data: BTreeMap<&str, String> = data
            .into_iter()
            .map(|(key, value)| (key, STANDARD.encode(value)))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret_name(&self.id), "namespace": TOKEN_NAMESPACE},
            "type": TOKEN_SECRET_TYPE,
            "data": data,
        })
    }
}

/// Splits `<id>.<secret>` and checks Kubernetes' bootstrap token grammar.
pub fn parse_bootstrap(text: &str) -> Result<(String, String), TokenError> {
    let (id, secret) = text
        .split_once('.')
        .ok_or(TokenError::Malformed("has no <id>.<secret>"))?;
    let valid = |part: &str, length: usize| {
        part.len() == length && part.bytes().all(|b| ALPHABET.contains(&b))
    };
    if !valid(id, ID_LENGTH) || !valid(secret, SECRET_LENGTH) {
        return Err(TokenError::Malformed(
            "has an <id>.<secret> that is not 6 and 16 lowercase letters or digits",
        ));
    }
    Ok((id.to_string(), secret.to_string()))
}

/// The name of the Secret that holds token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// Checks a presented `<id>.<secret>` against its stored Secret (`None`
/// when there is none) at time `now` (RFC 3339 strings compare as times
/// when both are UTC, which Kubernetes writes); returns what it admits. A
/// token without the servers' group admits agents only.
pub fn check(secret: &str, stored: Option<&Value>, now: &str) -> Result<Purpose, TokenError> {
    let stored = stored.ok_or(TokenError::Unknown)?;
    let field = |name: &str| -> Option<String> {
        let encoded = stored["data"][name].as_str()?;
        let bytes = STANDARD.decode(encoded).ok()?;
        String::from_utf8(bytes).ok()
    };
    if stored["type"].as_str() != Some(TOKEN_SECRET_TYPE) {
        return Err(TokenError::Unknown);
    }
    // Constant-time enough: both sides are fixed-length, and a mismatch
    // tells nothing a timing could refine beyond "wrong".
    let matches = field("token-secret").is_some_and(|stored| {
        stored.len() == secret.len()
            && stored
                .bytes()
                .zip(secret.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    });
    if !matches {
        return Err(TokenError::Unknown);
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(TokenError::NotForJoining);
    }
    if let Some(expiration) = field("expiration") {
        let expired = match (
            expiration.parse::<k8s_openapi::jiff::Timestamp>(),
            now.parse::<k8s_openapi::jiff::Timestamp>(),
        ) {
            (Ok(expires), Ok(now)) => now >= expires,
            // An expiration nobody can read is not a licence to join.
            _ => true,
        };
        if expired {
            return Err(TokenError::Expired(expiration));
        }
    }
    let groups = field("auth-extra-groups").unwrap_or_default();
    if groups.split(',').any(|group| group.trim() == SERVER_GROUP) {
        Ok(Purpose::Server)
    } else {
        Ok(Purpose::Agent)
    }
}

/// The sha256 of a PEM certificate's DER bytes, hex; `None` if it is not a
/// certificate.
pub fn ca_hash(ca_pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            ca_hash: "0".repeat(64),
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn a_token_admits_what_it_was_made_for() {
        let now = "2026-01-01T00:00:00Z";
        let agents = token().secret_object(None, "t", Purpose::Agent);
        assert_eq!(
            check(&token().secret, Some(&agents), now),
            Ok(Purpose::Agent)
        );
        let servers = token().secret_object(None, "t", Purpose::Server);
        assert_eq!(
            check(&token().secret, Some(&servers), now),
            Ok(Purpose::Server)
        );
        let expired =
            token().secret_object(Some("2025-12-31T00:00:00Z".into()), "t", Purpose::Server);
        assert!(matches!(
            check(&token().secret, Some(&expired), now),
            Err(TokenError::Expired(_))
        ));
        assert_eq!(
            check("ffffffffffffffff", Some(&agents), now),
            Err(TokenError::Unknown)
        );
        let refusal = TokenError::WrongPurpose {
            token: Purpose::Agent,
            wanted: Purpose::Server,
        };
        assert!(
            refusal
                .to_string()
                .contains("flotilla token create --server"),
            "{refusal}"
        );
    }
}
