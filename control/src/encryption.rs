//! Encryption at rest, configured as kube-apiserver's
//! `--encryption-provider-config` is: an `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`) naming, per resource, a list of
//! providers. The first provider encrypts every write; any of them
//! decrypts, so keys rotate as in Kubernetes (add the new key first,
//! rewrite the objects, drop the old key), and `identity` reads what was
//! stored before encryption was turned on.
//!
//! Providers: `aesgcm` (AES-GCM with a 16- or 32-byte key, a random nonce
//! per write, the storage key as additional data, so a value cannot be
//! moved to another object), `secretbox` (XSalsa20-Poly1305 with a
//! 32-byte key) and `identity`. A value is stored as Kubernetes stores it:
//! `k8s:enc:<provider>:v1:<key name>:` then the nonce and the sealed bytes.
//!
//! This module knows storage keys and bytes; which keys are which
//! resource's is `storage`'s `/registry/<plural>/` layout.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{Aead, KeyInit};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

/// The largest configuration file read: it holds a few keys.
const CONFIG_FILE_MAX: u64 = 1024 * 1024;
/// What every encrypted value starts with.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const SECRETBOX_NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("reading the encryption configuration {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the encryption configuration is invalid: {0}")]
    Invalid(String),
    #[error("a stored value of {key} cannot be decrypted: {reason}")]
    Decrypt { key: String, reason: String },
    #[error("a value of {key} cannot be encrypted: {reason}")]
    Encrypt { key: String, reason: String },
}

/// The parsed configuration: for each resource's key prefix, its
/// providers in order.
pub struct Encryption {
    rules: Vec<Rule>,
}

/// The resources and the providers' kinds and key names, never a key.
impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for rule in &self.rules {
            let providers: Vec<String> = rule
                .providers
                .iter()
                .map(|provider| match provider {
                    Provider::AesGcm { name, .. } => format!("aesgcm:{name}"),
                    Provider::SecretBox { name, .. } => format!("secretbox:{name}"),
                    Provider::Identity => "identity".to_owned(),
                })
                .collect();
            map.entry(&String::from_utf8_lossy(&rule.prefix), &providers);
        }
        map.finish()
    }
}

struct Rule {
    /// `/registry/<plural>/`.
    prefix: Vec<u8>,
    providers: Vec<Provider>,
}

enum Provider {
    AesGcm {
        name: String,
        key: Box<LessSafeKey>,
    },
    SecretBox {
        name: String,
        cipher: XSalsa20Poly1305,
    },
    Identity,
}

/// A value read back: its plaintext, and whether it was stored by another
/// provider than the one that writes now (so rewriting it re-encrypts it).
pub struct Opened {
    pub value: Vec<u8>,
    pub stale: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
    aescbc: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    secret: String,
}

impl Encryption {
    /// Reads the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Encryption, EncryptionError> {
        use std::io::Read as _;
        let read_error = |source| EncryptionError::Read {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(CONFIG_FILE_MAX + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > CONFIG_FILE_MAX {
            return Err(EncryptionError::Invalid(format!(
                "{} is larger than {CONFIG_FILE_MAX} bytes",
                path.display()
            )));
        }
        Encryption::parse(&text)
    }

    /// Parses a configuration (YAML or JSON).
    pub fn parse(text: &str) -> Result<Encryption, EncryptionError> {
        let invalid = EncryptionError::Invalid;
        let file: ConfigFile = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.api_version != "apiserver.config.k8s.io/v1"
            || file.kind != "EncryptionConfiguration"
        {
            return Err(invalid(format!(
                "expected apiVersion apiserver.config.k8s.io/v1 and kind EncryptionConfiguration, \
                 got {} {}",
                file.api_version, file.kind
            )));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (index, resource) in file.resources.iter().enumerate() {
            let at = format!("resources[{index}]");
            if resource.providers.is_empty() {
                return Err(invalid(format!("{at}.providers: at least one is needed")));
            }
            let mut providers = Vec::new();
            for (position, provider) in resource.providers.iter().enumerate() {
                providers.extend(provider_of(
                    provider,
                    &format!("{at}.providers[{position}]"),
                )?);
            }
            for name in &resource.resources {
                let plural = resource_plural(name)
                    .map_err(|why| invalid(format!("{at}.resources: {name:?} {why}")))?;
                let prefix = format!("/registry/{plural}/").into_bytes();
                if rules.iter().any(|rule| rule.prefix == prefix) {
                    return Err(invalid(format!("{at}.resources: {name:?} is named twice")));
                }
                rules.push(Rule {
                    prefix,
                    providers: providers.iter().map(Provider::duplicate).collect(),
                });
            }
        }
        Ok(Encryption { rules })
    }

    fn rule(&self, key: &[u8]) -> Option<&Rule> {
        self.rules.iter().find(|rule| key.starts_with(&rule.prefix))
    }

    /// `value` as it is to be stored at `key`.
    pub fn seal(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        let Some(provider) = self.rule(key).and_then(|rule| rule.providers.first()) else {
            return Ok(value);
        };
        let failed = |reason: &str| EncryptionError::Encrypt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_owned(),
        };
        match provider {
            Provider::Identity => Ok(value),
            Provider::AesGcm { name, key: cipher } => {
                let mut nonce = [0u8; NONCE_LEN];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| failed("no randomness for a nonce"))?;
                let mut sealed = value;
                cipher
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(key),
                        &mut sealed,
                    )
                    .map_err(|_| failed("AES-GCM refused the value"))?;
                Ok([prefix("aesgcm", name).as_slice(), &nonce, &sealed].concat())
            }
            Provider::SecretBox { name, cipher } => {
                let mut nonce = [0u8; SECRETBOX_NONCE_LEN];
                SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| failed("no randomness for a nonce"))?;
                let sealed = cipher
                    .encrypt(&nonce.into(), value.as_slice())
                    .map_err(|_| failed("secretbox refused the value"))?;
                Ok([prefix("secretbox", name).as_slice(), &nonce, &sealed].concat())
            }
        }
    }

    /// The plaintext of `value`, as stored at `key`.
    pub fn open(&self, key: &[u8], value: Vec<u8>) -> Result<Opened, EncryptionError> {
        let Some(rule) = self.rule(key) else {
            return Ok(Opened {
                value,
                stale: false,
            });
        };
        let failed = |reason: String| EncryptionError::Decrypt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        for (position, provider) in rule.providers.iter().enumerate() {
            let opened = match provider {
                Provider::Identity if !value.starts_with(ENCRYPTED_PREFIX) => Some(value.clone()),
                Provider::Identity => None,
                Provider::AesGcm { name, key: cipher } => {
                    match value.strip_prefix(prefix("aesgcm", name).as_slice()) {
                        Some(rest) if rest.len() >= NONCE_LEN => {
                            let (nonce, sealed) = rest.split_at(NONCE_LEN);
                            let nonce = Nonce::try_assume_unique_for_key(nonce)
                                .map_err(|_| failed("a malformed nonce".into()))?;
                            let mut buffer = sealed.to_vec();
                            let plain = cipher
                                .open_in_place(nonce, Aad::from(key), &mut buffer)
                                .map_err(|_| {
                                    failed(format!("aesgcm key {name:?} does not open it"))
                                })?;
                            Some(plain.to_vec())
                        }
                        Some(_) => return Err(failed("it is too short".into())),
                        None => None,
                    }
                }
                Provider::SecretBox { name, cipher } => {
                    match value.strip_prefix(prefix("secretbox", name).as_slice()) {
                        Some(rest) if rest.len() >= SECRETBOX_NONCE_LEN => {
                            let (nonce, sealed) = rest.split_at(SECRETBOX_NONCE_LEN);
                            let nonce: [u8; SECRETBOX_NONCE_LEN] = nonce
                                .try_into()
                                .map_err(|_| failed("a malformed nonce".into()))?;
                            let plain = cipher.decrypt(&nonce.into(), sealed).map_err(|_| {
                                failed(format!("secretbox key {name:?} does not open it"))
                            })?;
                            Some(plain)
                        }
                        Some(_) => return Err(failed("it is too short".into())),
                        None => None,
                    }
                }
            };
            if let Some(value) = opened {
                return Ok(Opened {
                    value,
                    stale: position > 0,
                });
            }
        }
        let reason = if value.starts_with(ENCRYPTED_PREFIX) {
            let label: Vec<u8> = value
                .iter()
                .copied()
                .take_while(|byte| byte.is_ascii_graphic())
                .take(80)
                .collect();
            format!(
                "it was encrypted with a provider or key the configuration does not name ({})",
                String::from_utf8_lossy(&label)
            )
        } else {
            "it is stored unencrypted and the configuration has no identity provider".into()
        };
        Err(failed(reason))
    }
}

/// `k8s:enc:<kind>:v1:<name>:`.
fn prefix(kind: &str, name: &str) -> Vec<u8> {
    format!("k8s:enc:{kind}:v1:{name}:").into_bytes()
}

/// The plural a configured resource names: `secrets`, `configmaps`,
/// `deployments.apps`; the store's keys hold the plural alone.
fn resource_plural(name: &str) -> Result<&str, &'static str> {
    if name.contains('*') {
        return Err("is a wildcard; name each resource (secrets, configmaps, …)");
    }
    let plural = name.split('.').next().unwrap_or_default();
    if plural.is_empty()
        || !plural
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("is not a resource name");
    }
    Ok(plural)
}

fn provider_of(config: &ProviderConfig, at: &str) -> Result<Vec<Provider>, EncryptionError> {
    let invalid = EncryptionError::Invalid;
    let given = [
        config.aesgcm.is_some(),
        config.secretbox.is_some(),
        config.identity.is_some(),
        config.aescbc.is_some(),
        config.kms.is_some(),
    ];
    if given.iter().filter(|given| **given).count() != 1 {
        return Err(invalid(format!(
            "{at}: exactly one provider type per entry"
        )));
    }
    if config.aescbc.is_some() || config.kms.is_some() {
        return Err(invalid(format!(
            "{at}: aescbc and kms are not supported; use aesgcm or secretbox"
        )));
    }
    if config.identity.is_some() {
        return Ok(vec![Provider::Identity]);
    }
    let (kind, keys) = match (&config.aesgcm, &config.secretbox) {
        (Some(keys), _) => ("aesgcm", keys),
        (_, Some(keys)) => ("secretbox", keys),
        _ => return Err(invalid(format!("{at}: no provider"))),
    };
    if keys.keys.is_empty() {
        return Err(invalid(format!("{at}.{kind}.keys: at least one is needed")));
    }
    let mut providers = Vec::new();
    for (index, key) in keys.keys.iter().enumerate() {
        let field = format!("{at}.{kind}.keys[{index}]");
        if key.name.is_empty() || key.name.contains(':') {
            return Err(invalid(format!(
                "{field}.name: must be non-empty and without ':'"
            )));
        }
        let secret = STANDARD
            .decode(key.secret.trim())
            .map_err(|_| invalid(format!("{field}.secret: is not base64")))?;
        let name = key.name.clone();
        providers.push(match kind {
            "aesgcm" => {
                let algorithm = match secret.len() {
                    16 => &AES_128_GCM,
                    32 => &AES_256_GCM,
                    other => {
                        return Err(invalid(format!(
                            "{field}.secret: an aesgcm key is 16 or 32 bytes, this one is {other}"
                        )));
                    }
                };
                let bound = UnboundKey::new(algorithm, &secret)
                    .map_err(|_| invalid(format!("{field}.secret: not an AES key")))?;
                Provider::AesGcm {
                    name,
                    key: Box::new(LessSafeKey::new(bound)),
                }
            }
            _ => {
                let cipher = XSalsa20Poly1305::new_from_slice(&secret).map_err(|_| {
                    invalid(format!(
                        "{field}.secret: a secretbox key is 32 bytes, this one is {}",
                        secret.len()
                    ))
                })?;
                Provider::SecretBox { name, cipher }
            }
        });
    }
    Ok(providers)
}

impl Provider {
    /// The same provider for another resource.
    fn duplicate(&self) -> Provider {
        match self {
            Provider::AesGcm { name, key } => Provider::AesGcm {
                name: name.clone(),
                key: key.clone(),
            },
            Provider::SecretBox { name, cipher } => Provider::SecretBox {
                name: name.clone(),
                cipher: cipher.clone(),
            },
            Provider::Identity => Provider::Identity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"/registry/secrets/default/token";

    fn config(providers: &str) -> Encryption {
        Encryption::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n\
             resources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    fn key(name: &str, byte: u8, len: usize) -> String {
        format!(
            "      - name: {name}\n        secret: {}\n",
            STANDARD.encode(vec![byte; len])
        )
    }

    #[test]
    fn each_provider_seals_what_only_it_opens() {
        for providers in [
            format!("  - aesgcm:\n      keys:\n{}", key("k1", 1, 32)),
            format!("  - aesgcm:\n      keys:\n{}", key("k1", 1, 16)),
            format!("  - secretbox:\n      keys:\n{}", key("k1", 1, 32)),
        ] {
            let encryption = config(&providers);
            let sealed = encryption.seal(KEY, b"hunter2".to_vec()).unwrap();
            assert!(sealed.starts_with(b"k8s:enc:"));
            assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
            let opened = encryption.open(KEY, sealed.clone()).unwrap();
            assert_eq!(opened.value, b"hunter2");
            assert!(!opened.stale);
            // Bound to its key (aesgcm) or at least to its key's bytes.
            let mut tampered = sealed;
            if let Some(last) = tampered.last_mut() {
                *last ^= 1;
            }
            assert!(encryption.open(KEY, tampered).is_err());
        }
    }

    #[test]
    fn aesgcm_values_cannot_move_to_another_key() {
        let encryption = config(&format!("  - aesgcm:\n      keys:\n{}", key("k1", 1, 32)));
        let sealed = encryption.seal(KEY, b"hunter2".to_vec()).unwrap();
        let error = encryption
            .open(b"/registry/secrets/default/other", sealed)
            .err()
            .unwrap();
        assert!(error.to_string().contains("does not open it"), "{error}");
    }

    #[test]
    fn keys_rotate_and_identity_reads_what_was_plain() {
        let old = config(&format!("  - aesgcm:\n      keys:\n{}", key("old", 1, 32)));
        let sealed_old = old.seal(KEY, b"v1".to_vec()).unwrap();
        let rotated = config(&format!(
            "  - secretbox:\n      keys:\n{}  - aesgcm:\n      keys:\n{}  - identity: {{}}\n",
            key("new", 2, 32),
            key("old", 1, 32)
        ));
        let opened = rotated.open(KEY, sealed_old).unwrap();
        assert_eq!((opened.value.as_slice(), opened.stale), (&b"v1"[..], true));
        let plain = rotated.open(KEY, b"{\"plain\":1}".to_vec()).unwrap();
        assert!(plain.stale);
        let sealed_new = rotated.seal(KEY, b"v2".to_vec()).unwrap();
        assert!(sealed_new.starts_with(b"k8s:enc:secretbox:v1:new:"));
        assert!(!rotated.open(KEY, sealed_new.clone()).unwrap().stale);
        // Without the old key or identity, what they wrote is unreadable,
        // with an error that says why.
        let error = old.open(KEY, sealed_new).err().unwrap();
        assert!(error.to_string().contains("does not name"), "{error}");
        let error = old.open(KEY, b"{}".to_vec()).err().unwrap();
        assert!(
            error.to_string().contains("no identity provider"),
            "{error}"
        );
        // Other resources are left alone.
        let config_map = b"/registry/configmaps/default/x";
        assert_eq!(old.seal(config_map, b"x".to_vec()).unwrap(), b"x");
    }

    #[test]
    fn a_bad_configuration_names_the_problem() {
        let bad = [
            (
                "  - aesgcm:\n      keys:\n".to_owned() + &key("k", 1, 24),
                "16 or 32 bytes",
            ),
            ("  - aescbc:\n      keys: []\n".to_owned(), "not supported"),
            (
                "  - secretbox:\n      keys: []\n".to_owned(),
                "at least one",
            ),
        ];
        for (providers, wanted) in bad {
            let text = format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n\
                 resources:\n- resources: [secrets]\n  providers:\n{providers}"
            );
            let error = Encryption::parse(&text).err().unwrap().to_string();
            assert!(error.contains(wanted), "{error}");
            assert!(error.contains("resources[0].providers[0]"), "{error}");
        }
        let wildcard = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n\
                        resources:\n- resources: ['*.*']\n  providers:\n  - identity: {}\n";
        let error = Encryption::parse(wildcard).err().unwrap().to_string();
        assert!(error.contains("wildcard"), "{error}");
    }
}
