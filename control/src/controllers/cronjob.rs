//! The CronJob controller: a Job from the template at each time the
//! schedule names (five cron fields or `@hourly`-style macros, in
//! `timeZone` or UTC), as Kubernetes runs them.
//!
//! - A start missed by more than `startingDeadlineSeconds` is skipped.
//! - `concurrencyPolicy`: Allow runs Jobs side by side, Forbid skips a
//!   start while one runs, Replace deletes the running one first.
//! - Finished Jobs beyond `successfulJobsHistoryLimit` and
//!   `failedJobsHistoryLimit` are deleted, oldest first.
//!
//! A Job is named after its CronJob and scheduled time (in minutes since
//! the epoch), so a start is never made twice. After each pass the
//! controller sleeps until the next scheduled time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::events::EventType;
use super::replicaset::controller_of;
use super::{Context, Error};

/// Missed starts looked at, at most, as Kubernetes bounds them.
const MISSED_STARTS_MAX: usize = 100;
/// The annotation recording the time a Job was scheduled for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub async fn run(client: kube::Client) {
    let cronjobs = Api::<CronJob>::all(client.clone());
    let context = Context::new(client.clone(), "cronjob-controller");
    Controller::new(cronjobs, watcher::Config::default())
        .owns(Api::<Job>::all(client), watcher::Config::default())
        .run(reconcile, super::retry_later, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::debug!(%error, "cronjob reconcile failed");
            }
        })
        .await;
}

/// Whether the Job has finished, and whether it succeeded.
fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some(true),
            ("Failed", "True") => Some(false),
            _ => None,
        })
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(job.name_any()),
        namespace: job.namespace(),
        uid: job.uid(),
        resource_version: job.resource_version(),
        ..ObjectReference::default()
    }
}

#[tracing::instrument(skip_all, fields(namespace = cached.namespace(), name = cached.name_any()))]
async fn reconcile(cached: Arc<CronJob>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = cached.namespace().ok_or(Error::Missing("namespace"))?;
    // The cache may not yet hold this controller's own last status write;
    // a stale lastScheduleTime would start a run twice, so read it fresh.
    let cronjobs: Api<CronJob> = Api::namespaced(context.client.clone(), &namespace);
    let Some(cronjob) = cronjobs.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if cronjob.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = cronjob.uid().ok_or(Error::Missing("uid"))?;
    let spec = &cronjob.spec;
    let jobs_api: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let mut owned: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|job| controller_of(&job.metadata).is_some_and(|c| c.uid == uid))
        .filter(|job| job.metadata.deletion_timestamp.is_none())
        .collect();
    owned.sort_by_key(|job| job.metadata.creation_timestamp.clone().map(|t| t.0));

    // History: the newest finished Jobs are kept up to the limits.
    for (succeeded, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = owned
            .iter()
            .filter(|j| finished(j) == Some(succeeded))
            .collect();
        let surplus = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for job in done.into_iter().take(surplus) {
            super::delete_exact(&jobs_api, job, PropagationPolicy::Background).await?;
        }
    }
    let mut active: Vec<Job> = owned
        .iter()
        .filter(|j| finished(j).is_none())
        .cloned()
        .collect();
    let last_successful = owned
        .iter()
        .filter(|j| finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0);

    let mut status = CronJobStatus {
        active: None,
        last_schedule_time: cronjob
            .status
            .as_ref()
            .and_then(|s| s.last_schedule_time.clone()),
        last_successful_time: last_successful.or_else(|| {
            cronjob
                .status
                .as_ref()
                .and_then(|s| s.last_successful_time.clone())
        }),
    };
    let mut requeue = None;
    if spec.suspend != Some(true) {
        match schedule(spec.schedule.as_str(), spec.time_zone.as_deref()) {
            Err(message) => {
                context
                    .recorder
                    .record(&cronjob, EventType::Warning, "InvalidSchedule", message)
                    .await;
            }
            Ok((cron, zone)) => {
                let now = Timestamp::now();
                let since = status
                    .last_schedule_time
                    .clone()
                    .or_else(|| cronjob.metadata.creation_timestamp.clone())
                    .map_or(now, |t| t.0);
                let due = latest_due(&cron, &zone, since, now);
                let deadline = spec
                    .starting_deadline_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map(Duration::from_secs);
                if let Some(due) = due {
                    let late = Duration::try_from(now.duration_since(due)).unwrap_or_default();
                    if deadline.is_some_and(|deadline| late > deadline) {
                        let message = format!("Missed scheduled time to start a job: {due}");
                        context
                            .recorder
                            .record(&cronjob, EventType::Warning, "MissSchedule", message)
                            .await;
                        status.last_schedule_time = Some(Time(due));
                    } else if let Some(job) =
                        start(&context, &cronjob, &uid, &jobs_api, &mut active, due).await?
                    {
                        active.push(job);
                        status.last_schedule_time = Some(Time(due));
                    }
                }
                requeue = next_after(&cron, &zone, now)
                    .map(|next| Duration::try_from(next.duration_since(now)).unwrap_or_default());
            }
        }
    }
    let refs: Vec<ObjectReference> = active.iter().map(reference).collect();
    status.active = (!refs.is_empty()).then_some(refs);
    super::write_status(&context.client, &cronjob, cronjob.status.as_ref(), &status).await?;
    // Sleep until the next start (plus a second, so it is due on waking).
    Ok(requeue.map_or_else(Action::await_change, |wait| {
        Action::requeue(wait + Duration::from_secs(1))
    }))
}

/// The parsed schedule and its time zone, or why not.
fn schedule(text: &str, zone: Option<&str>) -> Result<(Cron, TimeZone), String> {
    let cron = Cron::from_str(text).map_err(|e| format!("invalid schedule {text:?}: {e}"))?;
    // Kubernetes takes five fields; croner would also take seconds.
    if !text.trim_start().starts_with('@') && text.split_whitespace().count() != 5 {
        return Err(format!(
            "invalid schedule {text:?}: a schedule has five fields"
        ));
    }
    let zone = match zone {
        None | Some("UTC" | "Etc/UTC") => TimeZone::UTC,
        Some(name) => {
            TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))?
        }
    };
    Ok((cron, zone))
}

/// The latest scheduled time in (since, now], if any.
fn latest_due(cron: &Cron, zone: &TimeZone, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let mut cursor = since.to_zoned(zone.clone());
    let mut latest = None;
    for _ in 0..MISSED_STARTS_MAX {
        let Ok(next) = cron.find_next_occurrence(&cursor, false) else {
            break;
        };
        if next.timestamp() > now {
            break;
        }
        latest = Some(next.timestamp());
        cursor = next;
    }
    if latest.is_some()
        && cron
            .find_next_occurrence(&cursor, false)
            .is_ok_and(|n| n.timestamp() <= now)
    {
        // More than the bound missed: take the latest of all, as Kubernetes does.
        return cron
            .find_previous_occurrence(&now.to_zoned(zone.clone()), true)
            .ok()
            .map(|z| z.timestamp());
    }
    latest
}

fn next_after(cron: &Cron, zone: &TimeZone, now: Timestamp) -> Option<Timestamp> {
    cron.find_next_occurrence(&now.to_zoned(zone.clone()), false)
        .ok()
        .map(|z| z.timestamp())
}

/// Starts the Job for `due` under the concurrency policy; the Job when one
/// was created (or found already created).
async fn start(
    context: &Context,
    cronjob: &CronJob,
    uid: &str,
    jobs_api: &Api<Job>,
    active: &mut Vec<Job>,
    due: Timestamp,
) -> Result<Option<Job>, Error> {
    let spec = &cronjob.spec;
    let name = format!("{}-{}", cronjob.name_any(), due.as_second() / 60);
    if active.iter().any(|j| j.name_any() == name) {
        return Ok(None);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            let message = "Not starting job because prior execution is still running".to_string();
            context
                .recorder
                .record(cronjob, EventType::Normal, "JobAlreadyActive", message)
                .await;
            return Ok(None);
        }
        Some("Replace") => {
            for job in active.drain(..) {
                super::delete_exact(jobs_api, &job, PropagationPolicy::Background).await?;
                let message = format!("Deleted job {}", job.name_any());
                context
                    .recorder
                    .record(cronjob, EventType::Normal, "SuccessfulDelete", message)
                    .await;
            }
        }
        _ => {}
    }
    let template = &spec.job_template;
    let mut annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), due.to_string());
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: cronjob.namespace(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![super::controller_reference(cronjob, uid)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let created = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.code == 409 => jobs_api.get(&name).await?,
        Err(error) => return Err(error.into()),
    };
    let message = format!("Created job {name}");
    context
        .recorder
        .record(cronjob, EventType::Normal, "SuccessfulCreate", message)
        .await;
    Ok(Some(created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_parse_as_kubernetes_writes_them() {
        assert!(schedule("*/5 * * * *", None).is_ok());
        assert!(schedule("@hourly", None).is_ok());
        assert!(
            schedule("0 0 * * * *", None)
                .unwrap_err()
                .contains("five fields")
        );
        assert!(schedule("61 * * * *", None).is_err());
        assert!(
            schedule("@hourly", Some("Not/AZone"))
                .unwrap_err()
                .contains("time zone")
        );
    }

    #[test]
    fn the_latest_missed_start_is_the_one_that_runs() {
        let (cron, zone) = schedule("*/10 * * * *", None).unwrap();
        let since = at("2026-11-23T10:00:00Z");
        assert_eq!(
            latest_due(&cron, &zone, since, at("2026-11-23T10:05:00Z")),
            None
        );
        assert_eq!(
            latest_due(&cron, &zone, since, at("2026-11-23T10:35:00Z")),
            Some(at("2026-11-23T10:30:00Z"))
        );
        // Far behind: still only the latest.
        let (every_minute, zone) = schedule("* * * * *", None).unwrap();
        assert_eq!(
            latest_due(&every_minute, &zone, since, at("2026-11-24T10:00:30Z")),
            Some(at("2026-11-24T10:00:00Z"))
        );
        assert_eq!(
            next_after(&cron, &zone, at("2026-11-23T10:35:00Z")),
            Some(at("2026-11-23T10:40:00Z"))
        );
    }
}
