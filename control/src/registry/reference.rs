//! Module references as the registry reads them: `name`, `name:tag`,
//! `name@sha256:<hex>` and `name:tag@sha256:<hex>`, and the sha256
//! [`Digest`] that names a blob.
//!
//! Names follow the OCI distribution grammar, simplified: lowercase
//! components separated by `/`. A first component that looks like a host
//! (`registry.example.com/…`, `localhost:5000/…`) names an external
//! registry, which this cluster's registry does not serve. This module
//! knows only text: whether a name or digest exists is the store's business.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The longest module name: the OCI distribution spec's limit on a
/// repository name, so any name an OCI registry takes fits here too.
pub const NAME_BYTES_MAX: usize = 255;

/// The longest tag, from the OCI tag grammar (`[\w][\w.-]{0,127}`).
pub const TAG_BYTES_MAX: usize = 128;

/// The tag a reference without one means, as in every container registry.
pub const TAG_DEFAULT: &str = "latest";

/// What is wrong with a reference. The messages name the problem and the
/// expected form, because they reach users in 422s and push errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the digest {digest:?} is malformed: a digest is sha256:<64 lowercase hex digits>")]
    MalformedDigest { digest: String },
    #[error(
        "{name:?} is not a module name: a name is up to {NAME_BYTES_MAX} characters of \
         lowercase letters, digits and separators (. _ -) between them, in components \
         separated by /"
    )]
    BadName { name: String },
    #[error(
        "{tag:?} is not a tag: a tag is 1 to {TAG_BYTES_MAX} characters of lowercase \
         letters, digits, _ . and -, not starting with . or -"
    )]
    BadTag { tag: String },
    #[error(
        "{reference:?} names the external registry {host:?}; only this cluster's registry \
         is served: push the module with `flotilla push`"
    )]
    External { reference: String, host: String },
}

/// The sha256 of a blob's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything fed to `hasher`.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(hasher.finalize().into())
    }

    /// `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Result<Digest, ReferenceError> {
        let malformed = || ReferenceError::MalformedDigest {
            digest: text.to_owned(),
        };
        let hex_digits = text.strip_prefix("sha256:").ok_or_else(malformed)?;
        Digest::from_hex(hex_digits).ok_or_else(malformed)
    }

    /// 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn from_hex(hex_digits: &str) -> Option<Digest> {
        // Lowercase only: the hex is a store key and a file name, so one
        // digest must have one spelling.
        if hex_digits.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The 64 lowercase hex digits, as keys and the agents' blob files use them.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A parsed reference to a module in this cluster's registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `name[:tag][@sha256:<hex>]`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (text, None),
        };
        // The tag follows the last `:` that has no `/` after it; a `:`
        // before a `/` is a host's port.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (rest, None),
        };
        if let Some(host) = external_host(name) {
            return Err(ReferenceError::External {
                reference: text.to_owned(),
                host: host.to_owned(),
            });
        }
        check_name(name)?;
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        Ok(Reference {
            name: name.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The tag, or [`TAG_DEFAULT`] when the reference has none.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(TAG_DEFAULT)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host a name starts with, when its first component looks like one
/// (has a `.` or a `:`, or is `localhost`), as Docker reads names.
fn external_host(name: &str) -> Option<&str> {
    let (first, _) = name.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

/// A module name: `/`-separated components, each lowercase alphanumerics
/// with `.`, `_` or `-` only between them.
pub fn check_name(name: &str) -> Result<(), ReferenceError> {
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .iter()
                .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
    };
    if name.len() <= NAME_BYTES_MAX && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ReferenceError::BadName {
            name: name.to_owned(),
        })
    }
}

/// A tag: the OCI grammar, lowercase (pod images are lowercase, so an
/// uppercase tag could be pushed but never used).
pub fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= TAG_BYTES_MAX
        && !matches!(bytes[0], b'.' | b'-')
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadTag {
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_into_name_tag_and_digest() {
        let digest = Digest::of(b"module");
        let check = |text: &str, name: &str, tag: Option<&str>, pinned: Option<Digest>| {
            let reference = Reference::parse(text).unwrap();
            assert_eq!(
                (
                    reference.name.as_str(),
                    reference.tag.as_deref(),
                    reference.digest
                ),
                (name, tag, pinned),
                "{text}"
            );
            assert_eq!(reference.to_string(), text);
        };
        check("hello", "hello", None, None);
        check("hello:1.0", "hello", Some("1.0"), None);
        check(
            "team/hello-http:v2_rc.1",
            "team/hello-http",
            Some("v2_rc.1"),
            None,
        );
        check(&format!("hello@{digest}"), "hello", None, Some(digest));
        check(
            &format!("hello:1.0@{digest}"),
            "hello",
            Some("1.0"),
            Some(digest),
        );
        assert_eq!(
            Reference::parse("hello").unwrap().tag_or_default(),
            "latest"
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let hex = "a".repeat(64);
        for (text, fragment) in [
            ("hello@sha256:abc", "malformed"),
            (&format!("hello@sha256:{}", hex.to_uppercase()), "malformed"),
            (&format!("hello@md5:{hex}"), "malformed"),
            ("Hello:1", "not a module name"),
            ("-hello:1", "not a module name"),
            ("team//hello", "not a module name"),
            ("hello:.x", "not a tag"),
            ("hello:", "not a tag"),
            (
                "registry.example.com:5000/team/hello:v2",
                "external registry",
            ),
            ("localhost/hello", "external registry"),
        ] {
            let error = Reference::parse(text).unwrap_err().to_string();
            assert!(error.contains(fragment), "{text}: {error}");
        }
    }

    #[test]
    fn digests_print_and_parse_the_same() {
        let digest = Digest::of(b"");
        assert_eq!(
            digest.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
    }
}
