//! `meta.k8s.io/v1` Table responses: the columns `kubectl get` prints, with
//! the same headers and cell formats Kubernetes' own printers use. Columns
//! of priority 1 show only under `-o wide`.

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
}

const fn column(name: &'static str, priority: u8, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        priority,
        cell,
    }
}

fn name(object: &Value) -> Value {
    object["metadata"]["name"].clone()
}

fn age(object: &Value) -> Value {
    json!(age_of(object["metadata"]["creationTimestamp"].as_str()))
}

fn age_of(created: Option<&str>) -> String {
    match created.and_then(super::clock::seconds_since) {
        Some(seconds) => human_duration(seconds.max(0)),
        None => "<unknown>".into(),
    }
}

/// Kubernetes' `HumanDuration`: two significant units while they matter.
pub fn human_duration(seconds: i64) -> String {
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    match seconds {
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        },
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        },
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 => match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        },
        _ if days < 365 * 2 => format!("{days}d"),
        _ => format!("{}y", days / 365),
    }
}

fn text(value: &Value) -> Value {
    match value {
        Value::Null => json!("<none>"),
        Value::String(s) if s.is_empty() => json!("<none>"),
        other => other.clone(),
    }
}

fn count(value: &Value) -> Value {
    json!(value.as_object().map_or(0, |map| map.len()))
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

fn pod_ready(pod: &Value) -> Value {
    let statuses = pod["status"]["containerStatuses"].as_array();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    json!(format!("{ready}/{total}"))
}

fn pod_status(pod: &Value) -> Value {
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    for status in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let state = &status["state"];
        if let Some(waiting) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = waiting.to_string();
        } else if let Some(terminated) = state["terminated"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = terminated.to_string();
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    json!(reason)
}

fn pod_restarts(pod: &Value) -> Value {
    let restarts: i64 = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| int(&c["restartCount"]))
        .sum();
    json!(restarts)
}

fn containers_of(template_spec: &Value) -> (String, String) {
    let containers = template_spec["containers"].as_array();
    let names = containers
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect::<Vec<_>>()
        .join(",");
    let images = containers
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str())
        .collect::<Vec<_>>()
        .join(",");
    (names, images)
}

fn selector_text(selector: &Value) -> Value {
    let labels = selector["matchLabels"].as_object().or(selector.as_object());
    let text = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect::<Vec<_>>()
        .join(",");
    text_or_none(text)
}

fn text_or_none(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

fn service_ports(service: &Value) -> Value {
    let ports = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let protocol = port["protocol"].as_str().unwrap_or("TCP");
            match port["nodePort"].as_i64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", int(&port["port"])),
                None => format!("{}/{protocol}", int(&port["port"])),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    text_or_none(ports)
}

/// The addresses a `status.loadBalancer` lists (IPs, else hostnames).
fn balancer_addresses(balancer: &Value) -> Vec<String> {
    balancer["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress["ip"].as_str().or(ingress["hostname"].as_str()))
        .map(str::to_owned)
        .collect()
}

/// kubectl's External-IP: a LoadBalancer's addresses (`<pending>` before
/// it has any) after any `externalIPs`, an ExternalName's name, else the
/// `externalIPs` or `<none>`.
fn service_external_ip(service: &Value) -> Value {
    let external: Vec<String> = service["spec"]["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    match service["spec"]["type"].as_str() {
        Some("LoadBalancer") => {
            let balancer = balancer_addresses(&service["status"]["loadBalancer"]);
            if balancer.is_empty() && external.is_empty() {
                json!("<pending>")
            } else {
                json!([external, balancer].concat().join(","))
            }
        }
        Some("ExternalName") => text(&service["spec"]["externalName"]),
        _ => text_or_none(external.join(",")),
    }
}

/// kubectl's Hosts: the rules' hosts, `*` when none names one.
fn ingress_hosts(ingress: &Value) -> Value {
    let hosts: Vec<&str> = ingress["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rule| rule["host"].as_str())
        .collect();
    json!(if hosts.is_empty() {
        "*".to_owned()
    } else {
        hosts.join(",")
    })
}

fn columns(info: &ResourceInfo) -> Vec<Column> {
    let name_column = column("Name", 0, name);
    let age_column = column("Age", 0, age);
    match info.kind {
        "Pod" => vec![
            name_column,
            column("Ready", 0, pod_ready),
            column("Status", 0, pod_status),
            Column {
                kind: "integer",
                ..column("Restarts", 0, pod_restarts)
            },
            age_column,
            column("IP", 1, |p| text(&p["status"]["podIP"])),
            column("Node", 1, |p| text(&p["spec"]["nodeName"])),
            column("Nominated Node", 1, |p| {
                text(&p["status"]["nominatedNodeName"])
            }),
            column("Readiness Gates", 1, |_| json!("<none>")),
        ],
        "Namespace" => vec![
            name_column,
            column("Status", 0, |n| text(&n["status"]["phase"])),
            age_column,
        ],
        "ConfigMap" => vec![
            name_column,
            Column {
                kind: "integer",
                ..column("Data", 0, |c| {
                    json!(int(&count(&c["data"])) + int(&count(&c["binaryData"])))
                })
            },
            age_column,
        ],
        "Secret" => vec![
            name_column,
            column("Type", 0, |s| text(&s["type"])),
            Column {
                kind: "integer",
                ..column("Data", 0, |s| count(&s["data"]))
            },
            age_column,
        ],
        "Service" => vec![
            name_column,
            column("Type", 0, |s| text(&s["spec"]["type"])),
            column("Cluster-IP", 0, |s| text(&s["spec"]["clusterIP"])),
            column("External-IP", 0, service_external_ip),
            column("Port(s)", 0, service_ports),
            age_column,
            column("Selector", 1, |s| selector_text(&s["spec"]["selector"])),
        ],
        "Deployment" => vec![
            name_column,
            column("Ready", 0, |d| {
                json!(format!(
                    "{}/{}",
                    int(&d["status"]["readyReplicas"]),
                    int(&d["spec"]["replicas"])
                ))
            }),
            Column {
                kind: "integer",
                ..column("Up-to-date", 0, |d| {
                    json!(int(&d["status"]["updatedReplicas"]))
                })
            },
            Column {
                kind: "integer",
                ..column("Available", 0, |d| {
                    json!(int(&d["status"]["availableReplicas"]))
                })
            },
            age_column,
            column("Containers", 1, |d| {
                json!(containers_of(&d["spec"]["template"]["spec"]).0)
            }),
            column("Images", 1, |d| {
                json!(containers_of(&d["spec"]["template"]["spec"]).1)
            }),
            column("Selector", 1, |d| selector_text(&d["spec"]["selector"])),
        ],
        "ReplicaSet" | "StatefulSet" | "DaemonSet" => vec![
            name_column,
            Column {
                kind: "integer",
                ..column("Desired", 0, |r| json!(int(&r["spec"]["replicas"])))
            },
            Column {
                kind: "integer",
                ..column("Current", 0, |r| json!(int(&r["status"]["replicas"])))
            },
            Column {
                kind: "integer",
                ..column("Ready", 0, |r| json!(int(&r["status"]["readyReplicas"])))
            },
            age_column,
            column("Containers", 1, |r| {
                json!(containers_of(&r["spec"]["template"]["spec"]).0)
            }),
            column("Images", 1, |r| {
                json!(containers_of(&r["spec"]["template"]["spec"]).1)
            }),
            column("Selector", 1, |r| selector_text(&r["spec"]["selector"])),
        ],
        "Job" => vec![
            name_column,
            column("Status", 0, job_status),
            column("Completions", 0, |j| {
                json!(format!(
                    "{}/{}",
                    int(&j["status"]["succeeded"]),
                    j["spec"]["completions"].as_i64().unwrap_or(1)
                ))
            }),
            age_column,
        ],
        "Ingress" => vec![
            name_column,
            column("Class", 0, |i| {
                text_or_none(
                    i["spec"]["ingressClassName"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            }),
            column("Hosts", 0, ingress_hosts),
            column("Address", 0, |i| {
                json!(balancer_addresses(&i["status"]["loadBalancer"]).join(","))
            }),
            column("Ports", 0, |i| {
                let tls = i["spec"]["tls"]
                    .as_array()
                    .is_some_and(|tls| !tls.is_empty());
                json!(if tls { "80, 443" } else { "80" })
            }),
            age_column,
        ],
        "Node" => vec![
            name_column,
            column("Status", 0, node_status),
            column("Roles", 0, |_| json!("<none>")),
            age_column,
            column("Version", 0, |n| {
                text(&n["status"]["nodeInfo"]["kubeletVersion"])
            }),
        ],
        _ => vec![name_column, age_column],
    }
}

fn job_status(job: &Value) -> Value {
    let conditions = job["status"]["conditions"].as_array();
    let holds = |kind: &str| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True")
    };
    json!(if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if !job["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else {
        "Running"
    })
}

fn node_status(node: &Value) -> Value {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True");
    let mut status = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

/// A Table of `objects`. `include` is `?includeObject=`: `None`,
/// `Metadata` (the default) or `Object`.
pub fn table(info: &ResourceInfo, objects: &[Value], list_metadata: Value, include: &str) -> Value {
    let columns = columns(info);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": "", "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(object)).collect();
            let embedded = match include {
                "None" => Value::Null,
                "Object" => object.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": object["metadata"],
                }),
            };
            json!({"cells": cells, "object": embedded})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::registry;

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        for (seconds, text) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (800 * 86400, "2y"),
        ] {
            assert_eq!(human_duration(seconds), text);
        }
    }

    /// The cells of one object's row, as text.
    fn row(resource: &str, group: &str, version: &str, object: Value) -> Vec<Value> {
        let info = registry().find(group, version, resource).unwrap();
        let table = table(info, &[object], json!({}), "Metadata");
        table["rows"][0]["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn services_show_their_load_balancer_addresses() {
        let service = |kind: &str, status: Value| {
            json!({
                "metadata": {"name": "web"},
                "spec": {"type": kind, "clusterIP": "10.96.0.7", "ports": [{"port": 80}]},
                "status": status,
            })
        };
        let balanced =
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}, {"ip": "10.0.0.10"}]}});
        let cells = row("services", "", "v1", service("LoadBalancer", balanced));
        assert_eq!(cells[3], "10.0.0.9,10.0.0.10");
        let cells = row("services", "", "v1", service("LoadBalancer", json!({})));
        assert_eq!(cells[3], "<pending>");
        let cells = row("services", "", "v1", service("ClusterIP", json!({})));
        assert_eq!(cells[3], "<none>");
    }

    #[test]
    fn ingresses_show_class_hosts_address_and_ports() {
        let ingress = json!({
            "metadata": {"name": "front"},
            "spec": {
                "ingressClassName": "flotilla",
                "rules": [{"host": "a.example"}, {"host": "b.example"}],
                "tls": [{"hosts": ["a.example"], "secretName": "a-tls"}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}},
        });
        let cells = row("ingresses", "networking.k8s.io", "v1", ingress);
        assert_eq!(
            cells[..5],
            [
                json!("front"),
                json!("flotilla"),
                json!("a.example,b.example"),
                json!("10.0.0.9"),
                json!("80, 443")
            ]
        );
        let bare = json!({"metadata": {"name": "any"}, "spec": {"defaultBackend": {}}});
        let cells = row("ingresses", "networking.k8s.io", "v1", bare);
        assert_eq!(
            cells[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }

    #[test]
    fn pod_rows_show_readiness_status_and_wide_columns() {
        let pods = registry().find("", "v1", "pods").unwrap();
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.7", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let table = table(pods, &[pod], json!({}), "Metadata");
        let headers: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(headers[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "10.42.0.7");
        assert_eq!(cells[6], "node-a");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
