//! `flotilla nodes`: the cluster's nodes at a glance: readiness, how many
//! pods each runs against how many it takes, what CPU and memory it offers
//! the scheduler, and age. It reads Nodes and Pods; it knows nothing of
//! agents beyond what they write into their Node.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use super::get::LIST_PAGE_OBJECTS;
use super::output::{self, print};
use super::session::{ClientArgs, Session};

/// Show the nodes, with their pods and allocatable resources.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla nodes
  flotilla nodes --kubeconfig /tmp/flotilla/kubeconfig")]
pub struct Args {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let session = Session::connect(&args.client).await?;
    let nodes: Api<Node> = Api::all(session.client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .items;
    if nodes.is_empty() {
        eprintln!("No nodes have registered (start one with `flotilla agent`).");
        return Ok(());
    }
    let running = pods_per_node(&session).await?;
    let header = ["NAME", "STATUS", "PODS", "CPU", "MEMORY", "AGE"];
    let rows: Vec<Vec<String>> = nodes.iter().map(|node| row(node, &running)).collect();
    print(output::table(&header, &rows))
}

/// How many pods that have not finished are bound to each node.
async fn pods_per_node(session: &Session) -> Result<BTreeMap<String, usize>> {
    let pods: Api<Pod> = Api::all(session.client.clone());
    let mut params = ListParams::default().limit(LIST_PAGE_OBJECTS);
    let mut counts = BTreeMap::new();
    loop {
        let page = pods.list(&params).await.context("listing pods")?;
        for pod in &page.items {
            let phase = pod
                .status
                .as_ref()
                .and_then(|status| status.phase.as_deref());
            let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
            if let Some(node) = node.filter(|_| !matches!(phase, Some("Succeeded" | "Failed"))) {
                *counts.entry(node).or_insert(0) += 1;
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(counts),
        }
    }
}

fn row(node: &Node, running: &BTreeMap<String, usize>) -> Vec<String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let allocatable = node
        .status
        .as_ref()
        .and_then(|status| status.allocatable.as_ref());
    let quantity = |key: &str| {
        allocatable
            .and_then(|all| all.get(key))
            .map(|q| q.0.clone())
    };
    let pods_max = quantity("pods").unwrap_or_else(|| "?".into());
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|time| time.0.to_string());
    vec![
        name.clone(),
        status(node),
        format!("{}/{pods_max}", running.get(&name).copied().unwrap_or(0)),
        quantity("cpu").map_or_else(|| "<none>".into(), |cpu| cpu_text(&cpu)),
        quantity("memory").map_or_else(|| "<none>".into(), |memory| memory_text(&memory)),
        output::age(created.as_deref()),
    ]
}

/// `Ready`, `NotReady` or `Unknown`, with `,SchedulingDisabled` when
/// cordoned, as kubectl prints it.
fn status(node: &Node) -> String {
    let conditions = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref());
    let ready = conditions
        .into_iter()
        .flatten()
        .find(|condition| condition.type_ == "Ready");
    let mut text = match ready.map(|condition| condition.status.as_str()) {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if node.spec.as_ref().and_then(|spec| spec.unschedulable) == Some(true) {
        text.push_str(",SchedulingDisabled");
    }
    text
}

/// CPU in cores (`4`) or millicores (`1500m`).
fn cpu_text(quantity: &str) -> String {
    use flotilla_control::controllers::scheduler::quantity::milli;
    match milli(quantity) {
        Some(millis) if millis % 1000 == 0 => format!("{}", millis / 1000),
        Some(millis) => format!("{millis}m"),
        None => quantity.to_owned(),
    }
}

/// Memory in the largest binary unit that keeps it at one or more (`16Gi`,
/// `512Mi`), to one decimal place.
fn memory_text(quantity: &str) -> String {
    use flotilla_control::controllers::scheduler::quantity::milli;
    let Some(bytes) = milli(quantity).map(|millis| millis / 1000) else {
        return quantity.to_owned();
    };
    let units = [
        ("Ti", 1i128 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in units {
        if bytes >= size {
            let tenths = bytes * 10 / size;
            return match tenths % 10 {
                0 => format!("{}{unit}", tenths / 10),
                rest => format!("{}.{rest}{unit}", tenths / 10),
            };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_read_in_human_units() {
        assert_eq!(cpu_text("4"), "4");
        assert_eq!(cpu_text("1500m"), "1500m");
        assert_eq!(memory_text("16318372Ki"), "15.5Gi");
        assert_eq!(memory_text("512Mi"), "512Mi");
        assert_eq!(memory_text("100"), "100");
    }

    #[test]
    fn status_reads_ready_and_cordoned() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        assert_eq!(status(&node), "Ready,SchedulingDisabled");
        assert_eq!(status(&Node::default()), "Unknown");
    }
}
