//! Fencing tokens: how a writer that acts on a leader's authority proves,
//! in the same store transaction as its write, that it still holds it.
//!
//! A leader elected through a Lease may briefly overlap with its successor
//! (a paused process that wakes after its lease expired elsewhere). Writes
//! that must not come from two leaders at once, such as the scheduler's
//! bindings, carry the leader's term in the [`FENCE_ANNOTATION`]: the
//! Lease, its holder and its `leaseTransitions`, which every take-over
//! increments and renewals leave alone. The API server reads the Lease,
//! checks that it still names that term, and commits the write in one
//! transaction with a compare on the revision it read; a Lease written in
//! between (a renewal) makes it read and check again, a take-over makes
//! the write fail with a 409.
//!
//! This module knows the token's format, nothing of who checks it.

use std::fmt;

/// The annotation on a request body (a `Binding`) that names the fence:
/// `leases/<namespace>/<name>@<leaseTransitions>:<holderIdentity>`.
pub const FENCE_ANNOTATION: &str = "flotilla.dev/fence";

/// A leader's term: the Lease, who holds it, and how many take-overs it
/// has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    pub namespace: String,
    pub name: String,
    pub holder: String,
    pub transitions: i64,
}

impl LeaseFence {
    /// Parses an annotation value, saying what is wrong with a bad one.
    pub fn parse(value: &str) -> Result<LeaseFence, String> {
        let malformed = || {
            format!(
                "{FENCE_ANNOTATION} must be \
                 leases/<namespace>/<name>@<leaseTransitions>:<holderIdentity>, not {value:?}"
            )
        };
        let rest = value.strip_prefix("leases/").ok_or_else(malformed)?;
        let (path, term) = rest.split_once('@').ok_or_else(malformed)?;
        let (namespace, name) = path.split_once('/').ok_or_else(malformed)?;
        let (transitions, holder) = term.split_once(':').ok_or_else(malformed)?;
        let transitions = transitions.parse::<i64>().map_err(|_| malformed())?;
        if namespace.is_empty()
            || name.is_empty()
            || name.contains('/')
            || holder.is_empty()
            || transitions < 0
        {
            return Err(malformed());
        }
        Ok(LeaseFence {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            transitions,
        })
    }

    /// Whether the Lease (as JSON) still names this term.
    pub fn holds(&self, lease: &serde_json::Value) -> bool {
        let spec = &lease["spec"];
        spec["holderIdentity"].as_str() == Some(self.holder.as_str())
            && spec["leaseTransitions"].as_i64().unwrap_or(0) == self.transitions
    }
}

impl fmt::Display for LeaseFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leases/{}/{}@{}:{}",
            self.namespace, self.name, self.transitions, self.holder
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_refuses_malformed_tokens() {
        let fence = LeaseFence {
            namespace: "kube-system".into(),
            name: "flotilla-control-plane".into(),
            holder: "server-1:a".into(),
            transitions: 3,
        };
        assert_eq!(LeaseFence::parse(&fence.to_string()), Ok(fence));
        for bad in [
            "",
            "kube-system/x@1:a",
            "leases/kube-system@1:a",
            "leases/kube-system/x@1",
            "leases/kube-system/x@one:a",
            "leases//x@1:a",
            "leases/a/b/c@1:a",
            "leases/a/b@-1:a",
            "leases/a/b@1:",
        ] {
            assert!(LeaseFence::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_term_is_its_holder_and_its_transitions() {
        let fence = LeaseFence::parse("leases/kube-system/l@2:server-1").unwrap();
        assert!(
            fence.holds(&json!({"spec": {"holderIdentity": "server-1", "leaseTransitions": 2}}))
        );
        assert!(
            !fence.holds(&json!({"spec": {"holderIdentity": "server-2", "leaseTransitions": 2}}))
        );
        assert!(
            !fence.holds(&json!({"spec": {"holderIdentity": "server-1", "leaseTransitions": 3}}))
        );
        let first = LeaseFence::parse("leases/kube-system/l@0:server-1").unwrap();
        assert!(first.holds(&json!({"spec": {"holderIdentity": "server-1"}})));
    }
}
