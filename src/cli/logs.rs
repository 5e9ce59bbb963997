//! `flotilla logs`: a pod's container log through the `pods/{name}/log`
//! subresource, which the API server proxies to the pod's node; streamed
//! to stdout as it arrives with `-f`. It knows the subresource's
//! parameters, not where logs are kept.
//!
//! `KIND/NAME` of a workload (`deploy/web`, `job/primes`) picks one of the
//! pods its `spec.selector` matches, the one kubectl would pick, and says so
//! when there were several. Any kind with a label-selector `spec.selector`
//! works; the kind's meaning is not known here.

use std::cmp::Reverse;

use anyhow::{Context, Result, bail};
use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, LogParams};
use kube::core::Selector;

use super::catalog::Catalog;
use super::get::LIST_PAGE_OBJECTS;
use super::output::print;
use super::session::{ClientArgs, Session};

/// Print a pod's container log, or that of one pod of a workload.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla logs web-7d4b9c-x2x8q
  flotilla logs deploy/web
  flotilla logs job/primes
  flotilla logs web-7d4b9c-x2x8q -c sidecar --tail 20
  flotilla logs -f worker-0
  flotilla logs --previous web-7d4b9c-x2x8q")]
pub struct Args {
    /// The pod (`NAME` or `pod/NAME`), or a workload whose pod to read
    /// (`deploy/NAME`, `rs/NAME`, `sts/NAME`, `ds/NAME`, `job/NAME`).
    pub pod: String,
    /// The container; may be left out when the pod has one.
    #[arg(short, long)]
    pub container: Option<String>,
    /// Keep printing as the container writes, until it ends or Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// The log of the container's previous instance (before its last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let session = if args.follow {
        Session::connect_streaming(&args.client).await?
    } else {
        Session::connect(&args.client).await?
    };
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let pod = match args.pod.split_once('/') {
        Some((kind, name)) => pod_of(&session, &pods, kind, name).await?,
        None => args.pod.clone(),
    };
    let params = LogParams {
        container: args.container.clone(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: args.tail,
        timestamps: args.timestamps,
        ..LogParams::default()
    };
    let what = format!("reading the log of pod/{pod}");
    if !args.follow {
        let text = pods.logs(&pod, &params).await.context(what)?;
        return print(&text);
    }
    // Passed on chunk by chunk as the node sends it: bounded memory
    // whatever the lines' lengths.
    let mut stream = Box::pin(pods.log_stream(&pod, &params).await.context(what.clone())?);
    loop {
        let chunk = stream.fill_buf().await.context(what.clone())?;
        if chunk.is_empty() {
            return Ok(());
        }
        let length = chunk.len();
        print(chunk)?;
        stream.consume_unpin(length);
    }
}

/// The pod whose log `KIND/NAME` means: `NAME` itself for a pod, else the
/// pod of the workload that kubectl would choose.
async fn pod_of(session: &Session, pods: &Api<Pod>, kind: &str, name: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') {
        bail!("\"{kind}/{name}\" is not KIND/NAME");
    }
    let catalog = Catalog::discover(&session.client).await?;
    let resource = catalog.resolve(kind)?;
    if resource.api.group.is_empty() && resource.api.kind == "Pod" {
        return Ok(name.to_owned());
    }
    let workload = resource.object_name(name);
    let object = resource
        .api(&session.client, Some(&session.namespace))
        .get(name)
        .await
        .with_context(|| format!("getting {workload}"))?;
    let selector = selector_of(&object.data["spec"]["selector"])
        .with_context(|| format!("choosing a pod of {workload}"))?;
    let mut matching = Vec::new();
    let mut params = ListParams::default()
        .labels_from(&selector)
        .limit(LIST_PAGE_OBJECTS);
    loop {
        let page = pods
            .list(&params)
            .await
            .with_context(|| format!("listing the pods of {workload}"))?;
        matching.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    let count = matching.len();
    let Some(chosen) = matching.into_iter().min_by_key(logging_preference) else {
        bail!("no pods found for {workload} (selector {selector})");
    };
    let chosen = chosen.metadata.name.unwrap_or_default();
    if count > 1 {
        eprintln!("Found {count} pods, using pod/{chosen}");
    }
    Ok(chosen)
}

/// A workload's `spec.selector` as a label selector. An empty or absent
/// one is refused: it would match every pod in the namespace.
fn selector_of(value: &serde_json::Value) -> Result<Selector> {
    let selector: LabelSelector = match value {
        serde_json::Value::Null => bail!("it has no spec.selector"),
        value => serde_json::from_value(value.clone())
            .context("its spec.selector is not a label selector")?,
    };
    let empty = selector.match_labels.as_ref().is_none_or(|l| l.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if empty {
        bail!("its spec.selector is empty or not a label selector");
    }
    Selector::try_from(selector).context("its spec.selector is not valid")
}

/// Sorts pods as kubectl's `podutils.ByLogging` does, most worth reading
/// first: on a node, then running, then ready, then most restarted, then
/// oldest; the name breaks ties so the choice is stable.
fn logging_preference(pod: &Pod) -> impl Ord + use<> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let scheduled =
        spec.is_some_and(|spec| spec.node_name.as_deref().is_some_and(|n| !n.is_empty()));
    let phase = match status.and_then(|status| status.phase.as_deref()) {
        Some("Running") => 2,
        Some("Unknown") => 1,
        _ => 0,
    };
    let ready = status
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        });
    let restarts: i32 = status
        .and_then(|status| status.container_statuses.as_ref())
        .map_or(0, |statuses| statuses.iter().map(|s| s.restart_count).sum());
    let created = pod.metadata.creation_timestamp.clone().map(|time| time.0);
    (
        Reverse(scheduled),
        Reverse(phase),
        Reverse(ready),
        Reverse(restarts),
        // A pod without a creation time sorts after every dated one.
        created.is_none(),
        created,
        pod.metadata.name.clone(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, created: &str, status: serde_json::Value, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [], "nodeName": node},
            "status": status,
        }))
        .unwrap()
    }

    fn chosen(pods: &[Pod]) -> String {
        let best = pods.iter().min_by_key(|pod| logging_preference(pod));
        best.unwrap().metadata.name.clone().unwrap()
    }

    #[test]
    fn the_pod_chosen_is_scheduled_running_ready_restarted_then_oldest() {
        let old = "2026-01-01T00:00:00Z";
        let new = "2026-01-02T00:00:00Z";
        let ready =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        let restarted = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 2}]});
        let pending = pod("pending", old, json!({"phase": "Pending"}), None);
        let running = pod("running", new, json!({"phase": "Running"}), Some("n"));
        let ready_new = pod("ready-new", new, ready.clone(), Some("n"));
        let ready_old = pod("ready-old", old, ready, Some("n"));
        let restarted = pod("restarted", new, restarted, Some("n"));
        assert_eq!(chosen(&[pending.clone(), running.clone()]), "running");
        assert_eq!(chosen(&[running.clone(), ready_new.clone()]), "ready-new");
        assert_eq!(chosen(&[ready_new.clone(), ready_old.clone()]), "ready-old");
        assert_eq!(chosen(&[ready_old, restarted, pending]), "restarted");
    }

    #[test]
    fn selectors_must_select_something() {
        let selector = selector_of(&json!({"matchLabels": {"app": "web"}})).unwrap();
        assert_eq!(selector.to_string(), "app=web");
        assert!(selector_of(&json!({})).is_err());
        assert!(selector_of(&serde_json::Value::Null).is_err());
        // A Service's plain map is not a label selector.
        assert!(selector_of(&json!({"app": "web"})).is_err());
    }
}
