//! The Job controller: runs pods until `completions` of them succeed, at
//! most `parallelism` at once, and gives up after `backoffLimit` failed
//! pods or `activeDeadlineSeconds`; `ttlSecondsAfterFinished` deletes a
//! finished Job. Conditions and counters are Kubernetes': Complete, Failed
//! (BackoffLimitExceeded, DeadlineExceeded), Suspended; active, ready,
//! succeeded, failed, startTime, completionTime.
//!
//! Pods are the Job's by their controller reference, read fresh from the
//! API on each reconcile; failed pods are kept (they are the record of the
//! failures), as Kubernetes keeps them. A failed pod is replaced after a
//! delay that doubles with each failure.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::events::EventType;
use super::replicaset::{controller_of, ready_since};
use super::{Context, Error};

/// Pods created per reconcile.
const BURST_MAX: usize = 256;
/// The labels Kubernetes puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// Jobs whose latest failure time is remembered at once.
const FAILURES_REMEMBERED_MAX: usize = 10_000;
/// The longest wait before a failed pod is replaced (Kubernetes' 6 min).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The shared context, the first retry delay, and when each Job's latest
/// failure was seen (on this member's clock: pod timestamps have whole
/// seconds only).
struct JobContext {
    shared: Arc<Context>,
    backoff: Duration,
    failures: std::sync::Mutex<std::collections::HashMap<String, (usize, tokio::time::Instant)>>,
}

impl JobContext {
    /// How long ago the Job's failure count last grew to `failed`.
    fn since_latest_failure(&self, uid: &str, failed: usize) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Duration::MAX;
        };
        let now = tokio::time::Instant::now();
        // Jobs deleted while failing leave entries; bound them (a cleared
        // entry only restarts that Job's current wait).
        if failures.len() >= FAILURES_REMEMBERED_MAX && !failures.contains_key(uid) {
            failures.clear();
        }
        let entry = failures.entry(uid.to_string()).or_insert((failed, now));
        if entry.0 != failed {
            *entry = (failed, now);
        }
        now.duration_since(entry.1)
    }

    fn forget(&self, uid: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(uid);
        }
    }
}

pub async fn run(client: kube::Client, backoff: Duration) {
    let jobs = Api::<Job>::all(client.clone());
    let pods = Api::<Pod>::all(client.clone());
    let context = Arc::new(JobContext {
        shared: Context::new(client.clone(), "job-controller"),
        backoff,
        failures: Default::default(),
    });
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "job reconcile failed");
            }
        })
        .await;
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn seconds(value: Option<i64>) -> Option<Duration> {
    value
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

fn elapsed_since(time: &Timestamp) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(*time)).unwrap_or_default()
}

/// The condition of `kind` that is True, if any.
fn condition<'a>(status: Option<&'a JobStatus>, kind: &str) -> Option<&'a JobCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

#[tracing::instrument(skip_all, fields(namespace = job.namespace(), name = job.name_any()))]
async fn reconcile(job: Arc<Job>, job_context: Arc<JobContext>) -> Result<Action, Error> {
    let context = &job_context.shared;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = job.uid().ok_or(Error::Missing("uid"))?;
    let spec = job.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let status = job.status.as_ref();
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);

    // A finished Job only waits for its time to live.
    let finished = condition(status, "Complete").or_else(|| condition(status, "Failed"));
    if let Some(finished) = finished {
        let Some(ttl) = seconds(spec.ttl_seconds_after_finished.map(i64::from)) else {
            return Ok(Action::await_change());
        };
        let at = finished
            .last_transition_time
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0);
        let waited = elapsed_since(&at);
        if waited < ttl {
            return Ok(Action::requeue(ttl - waited));
        }
        tracing::info!("deleting the finished job: its time to live is over");
        super::delete_exact(&jobs, job.as_ref(), PropagationPolicy::Background).await?;
        return Ok(Action::await_change());
    }

    let owned: Vec<Pod> = pods_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|c| c.uid == uid))
        .collect();
    let succeeded = owned
        .iter()
        .filter(|p| phase(p) == Some("Succeeded"))
        .count();
    let failed = owned.iter().filter(|p| phase(p) == Some("Failed")).count();
    let active: Vec<&Pod> = owned
        .iter()
        .filter(|p| !matches!(phase(p), Some("Succeeded" | "Failed")))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let completions = usize::try_from(spec.completions.unwrap_or(1)).unwrap_or(1);
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(1);
    let backoff_limit = usize::try_from(spec.backoff_limit.unwrap_or(6)).unwrap_or(6);
    let suspended = spec.suspend == Some(true);
    let start = status.and_then(|s| s.start_time.clone()).map(|t| t.0);

    let mut next = JobStatus {
        active: Some(count(active.len())),
        ready: Some(count(
            active.iter().filter(|p| ready_since(p).is_some()).count(),
        )),
        succeeded: Some(count(succeeded)),
        failed: Some(count(failed)),
        start_time: status.and_then(|s| s.start_time.clone()),
        completion_time: status.and_then(|s| s.completion_time.clone()),
        conditions: status.and_then(|s| s.conditions.clone()),
        ..JobStatus::default()
    };
    let mut requeue = None;
    let verdict = if succeeded >= completions {
        next.completion_time = Some(Time(Timestamp::now()));
        Some(("Complete", None, None))
    } else if failed > backoff_limit {
        Some((
            "Failed",
            Some("BackoffLimitExceeded"),
            Some("Job has reached the specified backoff limit"),
        ))
    } else if let (Some(deadline), Some(start)) = (seconds(spec.active_deadline_seconds), start) {
        let ran = elapsed_since(&start);
        if ran >= deadline {
            Some((
                "Failed",
                Some("DeadlineExceeded"),
                Some("Job was active longer than specified deadline"),
            ))
        } else {
            requeue = Some(deadline - ran);
            None
        }
    } else {
        None
    };

    if let Some((kind, reason, message)) = verdict {
        job_context.forget(&uid);
        for pod in &active {
            delete_pod(&pods_api, pod).await?;
        }
        next.active = Some(0);
        next.ready = Some(0);
        set_condition(&mut next, kind, reason, message);
        let event = match kind {
            "Complete" => (EventType::Normal, "Completed", "Job completed".to_string()),
            _ => (
                EventType::Warning,
                reason.unwrap_or("Failed"),
                message.unwrap_or_default().to_string(),
            ),
        };
        context
            .recorder
            .record(job.as_ref(), event.0, event.1, event.2)
            .await;
    } else if suspended {
        for pod in &active {
            delete_pod(&pods_api, pod).await?;
        }
        next.active = Some(0);
        set_condition(
            &mut next,
            "Suspended",
            Some("JobSuspended"),
            Some("Job suspended"),
        );
    } else {
        if next.start_time.is_none() {
            next.start_time = Some(Time(Timestamp::now()));
        }
        if let Some(conditions) = next.conditions.as_mut() {
            conditions.retain(|c| c.type_ != "Suspended");
        }
        let wanted = parallelism.min(completions - succeeded);
        let mut missing = wanted.saturating_sub(active.len()).min(BURST_MAX);
        // After failures, replacements wait: the base delay doubled per
        // failure, counted from the latest one, as Kubernetes does.
        if missing > 0 && failed > 0 {
            let delay = job_context
                .backoff
                .saturating_mul(1 << (failed - 1).min(16))
                .min(BACKOFF_MAX);
            let since = job_context.since_latest_failure(&uid, failed);
            if since < delay {
                missing = 0;
                requeue = Some(requeue.map_or(delay - since, |r: Duration| r.min(delay - since)));
            }
        }
        for _ in 0..missing {
            let created = pods_api
                .create(&PostParams::default(), &pod_for(&job, &uid))
                .await?;
            let message = format!("Created pod: {}", created.name_any());
            context
                .recorder
                .record(job.as_ref(), EventType::Normal, "SuccessfulCreate", message)
                .await;
            next.active = next.active.map(|a| a + 1);
        }
    }
    super::write_status(&context.client, job.as_ref(), job.status.as_ref(), &next).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Sets the condition of `kind` to True (once: a repeat keeps its times).
fn set_condition(status: &mut JobStatus, kind: &str, reason: Option<&str>, message: Option<&str>) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
    {
        return;
    }
    conditions.retain(|c| c.type_ != kind);
    let now = Time(Timestamp::now());
    conditions.push(JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: reason.map(str::to_string),
        message: message.map(str::to_string),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

fn pod_for(job: &Job, uid: &str) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let labels = [
        (JOB_NAME_LABEL, job.name_any()),
        ("job-name", job.name_any()),
        (CONTROLLER_UID_LABEL, uid.to_string()),
        ("controller-uid", uid.to_string()),
    ];
    super::pod_from_template(
        job,
        uid,
        &template,
        None,
        labels.map(|(k, v)| (k.to_string(), v)),
    )
}

async fn delete_pod(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    super::delete_exact(api, pod, PropagationPolicy::Background)
        .await
        .map(drop)
}
