//! The Endpoints and EndpointSlice controller: for every Service with a
//! selector, the addresses of the pods it selects, ready ones apart from
//! the rest, with each Service port resolved to the pod's port (a named
//! `targetPort` by the container port of that name).
//!
//! Pods without an IP have no address yet and are left out, as in
//! Kubernetes. Both objects carry the Service as owner, so they go with
//! it. Any pod change in a namespace looks again at that namespace's
//! Services, which also catches a pod relabelled out of a selector.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::replicaset::ready_since;
use super::{Error, selector};

/// The label that ties a slice to its Service, and the one that says this
/// controller manages it: Kubernetes' names, which clients select by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub async fn run(client: kube::Client) {
    super::run_over_namespace_pods::<Service, _, _>(client, "endpoints", reconcile).await;
}

/// One pod's place behind a Service.
struct Member {
    pod: Pod,
    ip: String,
    ready: bool,
    ports: Vec<EndpointPort>,
}

#[tracing::instrument(skip_all, fields(namespace = service.namespace(), name = service.name_any()))]
async fn reconcile(service: Arc<Service>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let Some(selector_labels) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        // Without a selector the user manages the Endpoints.
        return Ok(Action::await_change());
    };
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().ok_or(Error::Missing("namespace"))?;
    let selector = LabelSelector {
        match_labels: Some(selector_labels),
        match_expressions: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.as_ref().clone(), &namespace);
    let members: Vec<Member> = pods
        .list(&ListParams::default().labels(&selector::to_query(&selector)))
        .await?
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| member(&service, pod))
        .collect();
    let uid = service.uid().ok_or(Error::Missing("uid"))?;
    let owner = super::controller_reference(service.as_ref(), &uid);
    write_endpoints(&client, &service, &namespace, &owner, &members).await?;
    write_slice(&client, &service, &namespace, &owner, &members).await?;
    Ok(Action::await_change())
}

/// The pod behind the Service, if it has an address.
fn member(service: &Service, pod: Pod) -> Option<Member> {
    let ip = pod
        .status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())?;
    let ports = service
        .spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            let target = match &port.target_port {
                None => port.port,
                Some(IntOrString::Int(number)) => *number,
                Some(IntOrString::String(name)) => {
                    pod.spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|p| p.name.as_deref() == Some(name.as_str()))?
                        .container_port
                }
            };
            Some(EndpointPort {
                name: port.name.clone(),
                port: target,
                protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect();
    Some(Member {
        ready: ready_since(&pod).is_some(),
        ip,
        pod,
        ports,
    })
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: Some(pod.name_any()),
        namespace: pod.namespace(),
        uid: pod.uid(),
        ..ObjectReference::default()
    }
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Kubernetes' Endpoints: one subset per distinct set of resolved ports,
/// addresses sorted so that equal sets compare equal.
fn subsets(members: &[Member]) -> Vec<EndpointSubset> {
    let mut by_ports: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for member in members {
        let key = serde_json::to_string(&member.ports).unwrap_or_default();
        let subset = by_ports.entry(key).or_insert_with(|| EndpointSubset {
            ports: (!member.ports.is_empty()).then(|| member.ports.clone()),
            ..EndpointSubset::default()
        });
        let address = EndpointAddress {
            ip: member.ip.clone(),
            node_name: node_name(&member.pod),
            target_ref: Some(target_ref(&member.pod)),
            hostname: None,
        };
        let list = if member.ready {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        let list = list.get_or_insert_with(Vec::new);
        list.push(address);
        list.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    by_ports.into_values().collect()
}

async fn write_endpoints(
    client: &kube::Client,
    service: &Service,
    namespace: &str,
    owner: &OwnerReference,
    members: &[Member],
) -> Result<(), Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let subsets = subsets(members);
    let wanted = Endpoints {
        metadata: ObjectMeta {
            name: Some(service.name_any()),
            namespace: Some(namespace.into()),
            labels: service.metadata.labels.clone(),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    upsert(&api, &service.name_any(), wanted, |current, wanted| {
        current.subsets == wanted.subsets && current.metadata.labels == wanted.metadata.labels
    })
    .await
}

async fn write_slice(
    client: &kube::Client,
    service: &Service,
    namespace: &str,
    owner: &OwnerReference,
    members: &[Member],
) -> Result<(), Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let mut endpoints: Vec<discovery::Endpoint> = members
        .iter()
        .map(|member| discovery::Endpoint {
            addresses: vec![member.ip.clone()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(member.ready),
                serving: Some(member.ready),
                terminating: Some(false),
            }),
            node_name: node_name(&member.pod),
            target_ref: Some(target_ref(&member.pod)),
            ..discovery::Endpoint::default()
        })
        .collect();
    endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    // One slice per Service: the ports of its first member (a Service whose
    // named ports resolve differently per pod is described by Endpoints).
    let ports: Vec<discovery::EndpointPort> = members
        .first()
        .map(|member| {
            member
                .ports
                .iter()
                .map(|p| discovery::EndpointPort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), service.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let name = format!("{}-slice", service.name_any());
    let wanted = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    };
    upsert(&api, &name, wanted, |current, wanted| {
        current.endpoints == wanted.endpoints
            && current.ports == wanted.ports
            && current.metadata.labels == wanted.metadata.labels
    })
    .await
}

/// Creates `wanted`, or replaces what is there unless `same` says it is
/// already so. A replace carries the version read (409 if it moved).
async fn upsert<K>(
    api: &Api<K>,
    name: &str,
    mut wanted: K,
    same: impl Fn(&K, &K) -> bool,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        None => {
            api.create(&PostParams::default(), &wanted).await?;
        }
        Some(current) if same(&current, &wanted) => {}
        Some(current) => {
            wanted.meta_mut().resource_version = current.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &wanted).await?;
        }
    }
    Ok(())
}
