//! The agent's side of the pod network: it keeps the node's
//! [`RoutingTable`] current from the API, as kube-proxy and an ingress
//! controller and a policy agent do, by watching Services,
//! EndpointSlices, Nodes, Ingresses, NetworkPolicies with the Pods and
//! Namespaces they select, and, for the gateway's certificates, each
//! Secret an Ingress names for TLS: one watch per Secret, as the Node
//! authorizer lets a node read Secrets only one by one.
//!
//! Each watch relists after a disconnect; what the relist no longer shows
//! is removed from the table, so a Service deleted while the API was away
//! does not linger. Routing itself is `crate::net`'s; this module only
//! translates watch events into table updates.

use std::collections::HashSet;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::BackoffConfig;
use crate::net::RoutingTable;

/// `namespace/name`, or `""/name` for a cluster-scoped object.
type Key = (String, String);

/// How one kind's events change the table.
trait Follow: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    fn apply(table: &RoutingTable, object: &Self);
    fn remove(table: &RoutingTable, key: &Key);
    fn keys(table: &RoutingTable) -> Vec<Key>;
}

impl Follow for Service {
    fn apply(table: &RoutingTable, service: &Self) {
        table.upsert_service(service);
    }
    fn remove(table: &RoutingTable, (namespace, name): &Key) {
        table.remove_service(namespace, name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table.service_keys()
    }
}

impl Follow for EndpointSlice {
    fn apply(table: &RoutingTable, slice: &Self) {
        table.upsert_slice(slice);
    }
    fn remove(table: &RoutingTable, (namespace, name): &Key) {
        table.remove_slice(namespace, name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table.slice_keys()
    }
}

impl Follow for Node {
    fn apply(table: &RoutingTable, node: &Self) {
        table.upsert_node(node);
    }
    fn remove(table: &RoutingTable, (_, name): &Key) {
        table.remove_node(name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table
            .node_names()
            .into_iter()
            .map(|name| (String::new(), name))
            .collect()
    }
}

impl Follow for Ingress {
    fn apply(table: &RoutingTable, ingress: &Self) {
        table.ingresses().upsert(ingress);
    }
    fn remove(table: &RoutingTable, (namespace, name): &Key) {
        table.ingresses().remove(namespace, name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table.ingresses().keys()
    }
}

impl Follow for NetworkPolicy {
    fn apply(table: &RoutingTable, policy: &Self) {
        table.policies().upsert_policy(policy);
    }
    fn remove(table: &RoutingTable, (namespace, name): &Key) {
        table.policies().remove_policy(namespace, name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table.policies().policy_keys()
    }
}

/// Every pod of the cluster, for the labels policies select by.
impl Follow for Pod {
    fn apply(table: &RoutingTable, pod: &Self) {
        table.policies().upsert_pod(pod);
    }
    fn remove(table: &RoutingTable, (namespace, name): &Key) {
        table.policies().remove_pod(namespace, name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table.policies().pod_keys()
    }
}

impl Follow for Namespace {
    fn apply(table: &RoutingTable, namespace: &Self) {
        table.policies().upsert_namespace(namespace);
    }
    fn remove(table: &RoutingTable, (_, name): &Key) {
        table.policies().remove_namespace(name);
    }
    fn keys(table: &RoutingTable) -> Vec<Key> {
        table
            .policies()
            .namespace_names()
            .into_iter()
            .map(|name| (String::new(), name))
            .collect()
    }
}

/// Keeps `table` current until dropped.
pub async fn follow(client: kube::Client, table: RoutingTable, retry: BackoffConfig) {
    tokio::join!(
        follow_kind::<Service>(Api::all(client.clone()), table.clone(), &retry),
        follow_kind::<EndpointSlice>(Api::all(client.clone()), table.clone(), &retry),
        follow_kind::<Node>(Api::all(client.clone()), table.clone(), &retry),
        follow_kind::<Ingress>(Api::all(client.clone()), table.clone(), &retry),
        follow_tls_secrets(client.clone(), table.clone(), &retry),
        follow_kind::<NetworkPolicy>(Api::all(client.clone()), table.clone(), &retry),
        follow_kind::<Pod>(Api::all(client.clone()), table.clone(), &retry),
        follow_kind::<Namespace>(Api::all(client), table, &retry),
    );
}

/// An object's key; a cluster-scoped object has no namespace.
fn key_of<K: Resource>(object: &K) -> Option<Key> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

async fn follow_kind<K>(api: Api<K>, table: RoutingTable, retry: &BackoffConfig)
where
    K: Follow,
    K::DynamicType: Default,
{
    let events = watcher::watcher(api, watcher::Config::default())
        .backoff(super::backoff::for_watches(retry));
    let mut events = std::pin::pin!(events);
    let mut relisted: Option<HashSet<Key>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object)) => K::apply(&table, &object),
            Ok(watcher::Event::Delete(object)) => {
                if let Some(key) = key_of(&object) {
                    K::remove(&table, &key);
                }
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(object)) => {
                K::apply(&table, &object);
                if let (Some(seen), Some(key)) = (relisted.as_mut(), key_of(&object)) {
                    seen.insert(key);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let Some(seen) = relisted.take() else {
                    continue;
                };
                for key in K::keys(&table) {
                    if !seen.contains(&key) {
                        K::remove(&table, &key);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "network watch failed; relisting"),
        }
    }
}

/// TLS Secrets followed at once; an Ingress naming more is served without
/// the rest, as a Secret that does not exist would be.
const TLS_SECRETS_MAX: usize = 1024;

/// Follows each Secret the Ingresses name for TLS with a watch of its own,
/// started and stopped as the Ingresses change.
async fn follow_tls_secrets(client: kube::Client, table: RoutingTable, retry: &BackoffConfig) {
    let ingresses = table.ingresses();
    let mut followed: std::collections::HashMap<Key, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    loop {
        let mut wanted = ingresses.tls_secrets();
        if wanted.len() > TLS_SECRETS_MAX {
            tracing::warn!(
                named = wanted.len(),
                followed = TLS_SECRETS_MAX,
                "the Ingresses name more TLS Secrets than a node follows"
            );
            wanted = wanted.into_iter().take(TLS_SECRETS_MAX).collect();
        }
        followed.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                table.ingresses().remove_secret(&key.0, &key.1);
            }
            keep
        });
        for key in wanted {
            if let std::collections::hash_map::Entry::Vacant(entry) = followed.entry(key) {
                let key = entry.key().clone();
                entry.insert(tokio::spawn(follow_secret(
                    client.clone(),
                    table.clone(),
                    key,
                    retry.clone(),
                )));
            }
        }
        ingresses.changed().await;
    }
}

/// Keeps one Secret's certificate current: a watch narrowed to its name.
async fn follow_secret(client: kube::Client, table: RoutingTable, key: Key, retry: BackoffConfig) {
    let (namespace, name) = &key;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).backoff(super::backoff::for_watches(&retry));
    let mut events = std::pin::pin!(events);
    let mut seen = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                seen = true;
                table.ingresses().upsert_secret(&secret);
            }
            Ok(watcher::Event::Delete(_)) => table.ingresses().remove_secret(namespace, name),
            Ok(watcher::Event::Init) => seen = false,
            Ok(watcher::Event::InitDone) if !seen => {
                table.ingresses().remove_secret(namespace, name);
            }
            Ok(watcher::Event::InitDone) => {}
            Err(error) => {
                tracing::warn!(%error, %namespace, %name, "TLS Secret watch failed; relisting")
            }
        }
    }
}
