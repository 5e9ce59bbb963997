//! Fencing tokens: how a writer that acts on a leader's authority proves,
//! in the same store transaction as its write, that it still holds it.
//!
//! A leader elected through a Lease may briefly overlap with its successor
//! (a paused process that wakes after its lease expired elsewhere). Writes
//! that must not come from two leaders at once, such as the scheduler's
//! bindings, carry the Lease's `resourceVersion` as the leader last wrote it
//! in the [`FENCE_ANNOTATION`]; the API server commits the write only if the
//! Lease is still at that revision. A take-over writes the Lease, so every
//! write of the deposed leader fails from that moment on.
//!
//! This module knows the token's format, nothing of who checks it.

use std::fmt;

/// The annotation on a request body (a `Binding`) that names the fence:
/// `leases/<namespace>/<name>@<resourceVersion>`.
pub const FENCE_ANNOTATION: &str = "flotilla.dev/fence";

/// A Lease at the revision its holder last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    pub namespace: String,
    pub name: String,
    pub resource_version: i64,
}

impl LeaseFence {
    /// Parses an annotation value, saying what is wrong with a bad one.
    pub fn parse(value: &str) -> Result<LeaseFence, String> {
        let malformed = || {
            format!(
                "{FENCE_ANNOTATION} must be leases/<namespace>/<name>@<resourceVersion>, not {value:?}"
            )
        };
        let rest = value.strip_prefix("leases/").ok_or_else(malformed)?;
        let (path, version) = rest.rsplit_once('@').ok_or_else(malformed)?;
        let (namespace, name) = path.split_once('/').ok_or_else(malformed)?;
        let resource_version = version.parse::<i64>().map_err(|_| malformed())?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') || resource_version <= 0 {
            return Err(malformed());
        }
        Ok(LeaseFence {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resource_version,
        })
    }
}

impl fmt::Display for LeaseFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leases/{}/{}@{}",
            self.namespace, self.name, self.resource_version
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_tokens() {
        let fence = LeaseFence {
            namespace: "kube-system".into(),
            name: "flotilla-control-plane".into(),
            resource_version: 42,
        };
        assert_eq!(LeaseFence::parse(&fence.to_string()), Ok(fence));
        for bad in [
            "",
            "kube-system/x@1",
            "leases/kube-system@1",
            "leases/kube-system/x",
            "leases/kube-system/x@zero",
            "leases//x@1",
            "leases/a/b/c@1",
            "leases/a/b@0",
        ] {
            assert!(LeaseFence::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
