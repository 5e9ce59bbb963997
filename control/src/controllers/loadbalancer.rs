//! LoadBalancer status, as k3s's servicelb gives it: a Service of type
//! LoadBalancer is served on its node ports by every node, so its
//! `status.loadBalancer.ingress` lists the InternalIPs of the Ready nodes
//! (sorted, each once), and follows them as nodes come, go and change
//! readiness. A Service naming a `loadBalancerClass` belongs to another
//! implementation and is left alone; one that is no longer a LoadBalancer
//! has its ingress cleared.
//!
//! Every node is also the Ingress gateway, so an Ingress of the
//! `flotilla` class (or of none) gets the same addresses in its own
//! `status.loadBalancer.ingress`, as ingress controllers publish theirs
//! (kubectl's ADDRESS column); one of another class is left alone.
//!
//! The nodes are held in a reflector. Only a change of the addresses they
//! add up to wakes the Services and Ingresses (all of them, through
//! `reconcile_all_on`), so the heartbeats that rewrite node status every
//! few seconds cost a comparison, not a write; and a reconcile writes only
//! a status that differs.

use std::net::IpAddr;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::Error;
use super::scheduler::fit::is_ready;

/// The label that keeps a node out of load balancers (Kubernetes').
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The IngressClass the nodes' gateways serve (with Ingresses naming none).
pub const INGRESS_CLASS: &str = "flotilla";

struct Context {
    client: kube::Client,
    nodes: Store<Node>,
}

pub async fn run(client: kube::Client) {
    let (nodes, writer) = reflector::store::<Node>();
    let reader = nodes.clone();
    let mut last: Option<Vec<IpAddr>> = None;
    // One wake-up queued per controller is enough: a reconcile of all
    // reads the addresses as they are when it runs.
    let (mut wake_services, services_woken) = mpsc::channel(1);
    let (mut wake_ingresses, ingresses_woken) = mpsc::channel(1);
    let follow_nodes = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(move |event| {
        if super::reflector_settled(&event) {
            let now = addresses(&reader.state());
            if last.as_ref() != Some(&now) {
                let _ = wake_services.try_send(());
                let _ = wake_ingresses.try_send(());
            }
            last = Some(now);
        }
        future::ready(())
    });
    let context = Arc::new(Context { client, nodes });
    let services = Controller::new(
        Api::<Service>::all(context.client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(services_woken)
    .run(reconcile, super::retry_later, context.clone())
    .for_each(|outcome| async move {
        if let Err(error) = outcome {
            tracing::debug!(%error, "load balancer reconcile failed");
        }
    });
    let ingresses = Controller::new(
        Api::<Ingress>::all(context.client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(ingresses_woken)
    .run(reconcile_ingress, super::retry_later, context)
    .for_each(|outcome| async move {
        if let Err(error) = outcome {
            tracing::debug!(%error, "Ingress status reconcile failed");
        }
    });
    tokio::join!(follow_nodes, services, ingresses);
}

#[tracing::instrument(skip_all, fields(namespace = service.namespace(), name = service.name_any()))]
async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action, Error> {
    let spec = service.spec.as_ref();
    let foreign = spec.is_some_and(|spec| spec.load_balancer_class.is_some());
    if foreign || service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let wanted: Vec<LoadBalancerIngress> =
        if spec.and_then(|spec| spec.type_.as_deref()) == Some("LoadBalancer") {
            node_addresses(&context)
                .await?
                .into_iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ..LoadBalancerIngress::default()
                })
                .collect()
        } else {
            Vec::new()
        };
    let current = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|balancer| balancer.ingress.clone());
    publish(&context, service.as_ref(), current, wanted).await
}

#[tracing::instrument(skip_all, fields(namespace = ingress.namespace(), name = ingress.name_any()))]
async fn reconcile_ingress(ingress: Arc<Ingress>, context: Arc<Context>) -> Result<Action, Error> {
    let class = ingress
        .spec
        .as_ref()
        .and_then(|spec| spec.ingress_class_name.as_deref());
    if class.is_some_and(|class| class != INGRESS_CLASS)
        || ingress.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let wanted: Vec<IngressLoadBalancerIngress> = node_addresses(&context)
        .await?
        .into_iter()
        .map(|ip| IngressLoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..IngressLoadBalancerIngress::default()
        })
        .collect();
    let current = ingress
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|balancer| balancer.ingress.clone());
    publish(&context, ingress.as_ref(), current, wanted).await
}

/// Writes `wanted` as the object's `status.loadBalancer.ingress`, unless
/// that is what it says already.
async fn publish<K, A>(
    context: &Context,
    object: &K,
    current: Option<Vec<A>>,
    wanted: Vec<A>,
) -> Result<Action, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    A: serde::Serialize + PartialEq + std::fmt::Debug,
{
    if current.unwrap_or_default() == wanted {
        return Ok(Action::await_change());
    }
    tracing::info!(addresses = ?wanted, "setting the load balancer's addresses");
    // Null, not an empty list, removes the field in a merge patch, as
    // Kubernetes leaves it out when empty.
    let addresses = (!wanted.is_empty()).then_some(&wanted);
    let status = serde_json::json!({"loadBalancer": {"ingress": addresses}});
    super::write_status(&context.client, object, None, &status).await?;
    Ok(Action::await_change())
}

/// The nodes' addresses, once the nodes are listed: before, an empty list
/// would be a lie that clears every status.
async fn node_addresses(context: &Context) -> Result<Vec<IpAddr>, Error> {
    context
        .nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::Invalid("the nodes' cache is gone".into()))?;
    Ok(addresses(&context.nodes.state()))
}

/// The InternalIPs of the Ready nodes not excluded from load balancers,
/// sorted, each once.
fn addresses(nodes: &[Arc<Node>]) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = nodes
        .iter()
        .filter(|node| is_ready(node) && !node.labels().contains_key(EXCLUDE_LABEL))
        .filter_map(|node| node.status.as_ref()?.addresses.as_ref())
        .flatten()
        .filter(|address| address.type_ == "InternalIP")
        .filter_map(|address| address.address.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: &str, ips: &[&str], labels: serde_json::Value) -> Arc<Node> {
        let addresses: Vec<_> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .chain([json!({"type": "Hostname", "address": name})])
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {
                    "addresses": addresses,
                    "conditions": [{"type": "Ready", "status": ready}],
                },
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_ready_nodes_internal_ips_sorted_and_once_each() {
        let nodes = [
            node("a", "True", &["10.0.0.10", "10.0.0.9"], json!({})),
            node("b", "True", &["10.0.0.9"], json!({})),
            node("c", "Unknown", &["10.0.0.3"], json!({})),
            node("d", "True", &["10.0.0.4"], json!({EXCLUDE_LABEL: ""})),
        ];
        let ips: Vec<String> = addresses(&nodes).iter().map(IpAddr::to_string).collect();
        assert_eq!(ips, ["10.0.0.9", "10.0.0.10"]);
    }
}
