//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it: every member tries to hold one Lease; the
//! holder renews it, and another member takes it over only after it has
//! gone unrenewed for the lease duration.
//!
//! Expiry is judged on this member's own clock (how long since it last saw
//! the Lease change), never by comparing the holder's timestamps with ours,
//! so clock skew between servers cannot elect two leaders. Every write is a
//! compare-and-swap on the Lease's `resourceVersion`. A leader that cannot
//! renew within the renew deadline steps down before its lease can expire
//! elsewhere; what it still writes in that moment is fenced by the
//! `resourceVersion` preconditions of the writes themselves, and its
//! bindings by its term (`fence`, see [`crate::fence`]).
//!
//! This module knows the Lease and the clock, nothing of what the leader
//! does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::fence::LeaseFence;

/// Timings and the Lease's name; the defaults are kube-controller-manager's.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    /// How long a Lease unrenewed stays its holder's.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often every member tries to acquire or renew.
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            namespace: "kube-system".into(),
            lease_name: "flotilla-control-plane".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs the election for `identity` until dropped; `leading` says whether
/// this member leads now, and `fence` the term it leads in (see
/// [`crate::fence`]).
pub struct Elector {
    pub leading: watch::Receiver<bool>,
    pub fence: watch::Receiver<Option<LeaseFence>>,
    task: tokio::task::JoinHandle<()>,
}

impl Elector {
    pub fn start(client: kube::Client, identity: String, config: ElectionConfig) -> Self {
        let (tell, leading) = watch::channel(false);
        let (tell_fence, fence) = watch::channel(None);
        let api = Api::<Lease>::namespaced(client, &config.namespace);
        let span = tracing::info_span!("election", %identity, lease = %config.lease_name);
        let candidate = Candidate {
            api,
            identity,
            config,
            observed: None,
        };
        let task = tokio::spawn(candidate.run(tell, tell_fence).instrument(span));
        Elector {
            leading,
            fence,
            task,
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Candidate {
    api: Api<Lease>,
    identity: String,
    config: ElectionConfig,
    /// The Lease's `resourceVersion` when last read, and when (on our clock)
    /// it was first seen at that version.
    observed: Option<(String, Instant)>,
}

impl Candidate {
    async fn run(
        mut self,
        tell: watch::Sender<bool>,
        tell_fence: watch::Sender<Option<LeaseFence>>,
    ) {
        let mut renewed_at: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Some(lease)) => {
                    if !*tell.borrow() {
                        tracing::info!("became the leader");
                    }
                    renewed_at = Some(Instant::now());
                    // The fence first: a leader's writes must never go out
                    // with a token of an older term. Renewals keep the term.
                    let fence = self.fence_of(&lease);
                    tell_fence.send_if_modified(|current| {
                        let changed = *current != fence;
                        *current = fence;
                        changed
                    });
                    tell.send_replace(true);
                }
                Ok(None) => {
                    if *tell.borrow() {
                        tracing::warn!("lost the lease to another member");
                    }
                    renewed_at = None;
                    tell.send_replace(false);
                    tell_fence.send_replace(None);
                }
                Err(error) => {
                    tracing::warn!(%error, "could not reach the lease");
                    let deadline_passed =
                        renewed_at.is_some_and(|at| at.elapsed() >= self.config.renew_deadline);
                    if deadline_passed && *tell.borrow() {
                        tracing::warn!("stepping down: the lease was not renewed in time");
                        tell.send_replace(false);
                        tell_fence.send_replace(None);
                        renewed_at = None;
                    }
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// The fencing token of this member's term, from the Lease it wrote.
    fn fence_of(&self, lease: &Lease) -> Option<LeaseFence> {
        let spec = lease.spec.as_ref()?;
        Some(LeaseFence {
            namespace: self.config.namespace.clone(),
            name: self.config.lease_name.clone(),
            holder: spec.holder_identity.clone()?,
            transitions: i64::from(spec.lease_transitions.unwrap_or(0)),
        })
    }

    /// One round: the Lease as written when this member holds it afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<Option<Lease>, kube::Error> {
        let now = Some(MicroTime(Timestamp::now()));
        let duration_secs =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&self.config.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: now.clone(),
                    renew_time: now,
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return written(self.api.create(&PostParams::default(), &lease).await);
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => Instant::now(),
        };
        self.observed = Some((version, first_seen));
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        if holder.is_some() && !ours && first_seen.elapsed() < held_for {
            return Ok(None);
        }
        let mut next = current;
        let transitions = spec.lease_transitions.unwrap_or(0);
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: if ours { spec.acquire_time } else { now.clone() },
            renew_time: now,
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..spec
        });
        // `next` carries the resourceVersion we read: a member that wrote in
        // between makes this a 409, and this round is lost.
        written(
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), &next)
                .await,
        )
    }
}

/// A write that lost a race (409) means another member holds the Lease.
fn written(outcome: Result<Lease, kube::Error>) -> Result<Option<Lease>, kube::Error> {
    match outcome {
        Ok(lease) => Ok(Some(lease)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}
