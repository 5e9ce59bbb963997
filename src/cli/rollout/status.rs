//! `flotilla rollout status`: watches a Deployment until its rollout is
//! complete, printing each new progress line on stderr and the outcome on
//! stdout. The judgement is kubectl's, as a pure function of the
//! Deployment ([`progress`]); the watch only feeds it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::{WatchStreamExt, watcher};

use super::Target;
use crate::cli::output::print;
use crate::cli::session::ClientArgs;

/// How long `rollout status` waits unless told otherwise: long enough for
/// a large rolling update, and a bound so a stuck one does not hold a CI
/// job forever.
pub const ROLLOUT_TIMEOUT_DEFAULT: &str = "10m";

/// Watch a Deployment's rollout until it completes.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla rollout status deployment/web
  flotilla rollout status deploy web --timeout 2m")]
pub struct Args {
    /// deployment/NAME, or deployment NAME.
    #[arg(required = true, value_name = "deployment/NAME")]
    pub target: Vec<String>,
    /// How long to wait: seconds, or a number with s, m or h.
    #[arg(long, default_value = ROLLOUT_TIMEOUT_DEFAULT, value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let target = Target::open(&args.client, &args.target).await?;
    // A missing Deployment is an error now, not a silent wait.
    target.deployment().await?;
    let name = &target.name;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(target.api.clone(), config)
        .applied_objects()
        .boxed();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut shown = String::new();
    loop {
        let next = tokio::time::timeout_at(deadline, changes.try_next()).await;
        let deployment = match next {
            Err(_) => bail!(
                "timed out after {:?} waiting for the rollout of deployment/{name}; last: {shown}",
                args.timeout
            ),
            Ok(Ok(Some(deployment))) => deployment,
            Ok(Ok(None)) => bail!("the watch on deployment/{name} ended"),
            Ok(Err(error)) => {
                return Err(error).with_context(|| format!("watching deployment/{name}"));
            }
        };
        match progress(&deployment) {
            Progress::Waiting(line) if line != shown => {
                eprintln!("{line}");
                shown = line;
            }
            Progress::Waiting(_) => {}
            Progress::Done(line) => return print(format!("{line}\n")),
            Progress::Failed(reason) => bail!(reason),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Progress {
    Waiting(String),
    Done(String),
    Failed(String),
}

/// kubectl's reading of a Deployment's rollout.
pub fn progress(deployment: &Deployment) -> Progress {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    if generation > status.observed_generation.unwrap_or(0) {
        return Progress::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let deadline_exceeded = status.conditions.iter().flatten().any(|condition| {
        condition.type_.as_deref() == Some("Progressing")
            && condition.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return Progress::Failed(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    let wanted = deployment.spec.replicas;
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let waiting = |what: String| {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {what}..."
        ))
    };
    match wanted {
        Some(wanted) if updated < wanted => waiting(format!(
            "{updated} out of {wanted} new replicas have been updated"
        )),
        _ if total > updated => waiting(format!(
            "{} old replicas are pending termination",
            total - updated
        )),
        _ if available < updated => waiting(format!(
            "{available} of {updated} updated replicas are available"
        )),
        _ => Progress::Done(format!("deployment \"{name}\" successfully rolled out")),
    }
}

/// `90`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_secs) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        _ => (text, 1),
    };
    let count: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 5m or 1h"))?;
    Ok(Duration::from_secs(count.saturating_mul(unit_secs)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn progress_reads_as_kubectl_reads_it() {
        let waiting = |text: &str| Progress::Waiting(format!("Waiting for {text}..."));
        let cases = [
            (
                deployment(2, json!({"observedGeneration": 1})),
                waiting("deployment spec update to be observed"),
            ),
            (
                deployment(
                    1,
                    json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 3}),
                ),
                waiting(
                    "deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated",
                ),
            ),
            (
                deployment(
                    1,
                    json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 4}),
                ),
                waiting(
                    "deployment \"web\" rollout to finish: 1 old replicas are pending termination",
                ),
            ),
            (
                deployment(
                    1,
                    json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2}),
                ),
                waiting(
                    "deployment \"web\" rollout to finish: 2 of 3 updated replicas are available",
                ),
            ),
            (
                deployment(
                    1,
                    json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
                ),
                Progress::Done("deployment \"web\" successfully rolled out".into()),
            ),
            (
                deployment(
                    1,
                    json!({"observedGeneration": 1, "conditions": [
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                    ]}),
                ),
                Progress::Failed("deployment \"web\" exceeded its progress deadline".into()),
            ),
        ];
        for (deployment, expected) in cases {
            assert_eq!(progress(&deployment), expected);
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}
