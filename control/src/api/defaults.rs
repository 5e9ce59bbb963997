//! Defaults Kubernetes fills in for fields users leave out, so that
//! `kubectl get -o yaml` shows what a Kubernetes cluster would show and
//! controllers can rely on the fields being set.

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

/// Fills `object`'s unset fields. Runs on create and update, before
/// validation, so validation sees the object as it will be stored.
/// What Kubernetes sets on a new Job once it has its uid (its
/// `generateSelector`): unless `spec.manualSelector` is true and a selector
/// is given, the selector is the Job's own uid, and the template carries
/// the labels that match it, so `kubectl logs job/NAME` finds its pods.
pub fn job_selector(object: &mut Value) {
    let uid = object["metadata"]["uid"].clone();
    let name = object["metadata"]["name"].clone();
    let spec = &mut object["spec"];
    if spec["manualSelector"].as_bool() == Some(true) && spec["selector"].is_object() {
        return;
    }
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut spec["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = value.clone();
    }
}

pub fn apply(info: &ResourceInfo, object: &mut Value) {
    match info.kind {
        "Pod" => pod_spec(&mut object["spec"]),
        "Deployment" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            pod_template(&mut spec["template"]);
        }
        "ReplicaSet" => {
            default(&mut object["spec"], "replicas", json!(1));
            pod_template(&mut object["spec"]["template"]);
        }
        "StatefulSet" => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            pod_template(&mut spec["template"]);
        }
        "DaemonSet" => {
            let spec = &mut object["spec"];
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
            );
            pod_template(&mut spec["template"]);
        }
        "Job" => {
            let spec = &mut object["spec"];
            default(spec, "backoffLimit", json!(6));
            default(spec, "completions", json!(1));
            default(spec, "parallelism", json!(1));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(
                &mut spec["template"]["spec"],
                "restartPolicy",
                json!("Never"),
            );
            pod_template(&mut spec["template"]);
        }
        "CronJob" => {
            let spec = &mut object["spec"];
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
        }
        "Service" => service(&mut object["spec"]),
        "Secret" => {
            default(object, "type", json!("Opaque"));
            merge_string_data(object);
        }
        "Namespace" => {
            default(&mut object["spec"], "finalizers", json!(["kubernetes"]));
        }
        _ => {}
    }
}

/// A Secret's `stringData` is write-only, as in Kubernetes: each of its
/// keys is written into `data`, base64-encoded, over a `data` key of the
/// same name, and `stringData` itself is not stored.
fn merge_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(map) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if data.is_null() {
        *data = json!({});
    }
    let Some(data) = data.as_object_mut() else {
        return;
    };
    for (key, value) in strings {
        if let Value::String(text) = value {
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

/// Sets `object[field]` when it is missing or null. `object` becomes a map
/// if it was null, which is how an absent `spec` gets its defaults.
fn default(object: &mut Value, field: &str, value: Value) {
    if object.is_null() {
        *object = json!({});
    }
    if let Some(map) = object.as_object_mut() {
        let slot = map.entry(field).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

fn pod_template(template: &mut Value) {
    if template.is_object() {
        pod_spec(&mut template["spec"]);
    }
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for container in containers {
                default(container, "imagePullPolicy", json!("IfNotPresent"));
                default(
                    container,
                    "terminationMessagePath",
                    json!("/dev/termination-log"),
                );
                default(container, "terminationMessagePolicy", json!("File"));
                default(container, "resources", json!({}));
                if let Some(ports) = container["ports"].as_array_mut() {
                    for port in ports {
                        default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn service(spec: &mut Value) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports {
            default(port, "protocol", json!("TCP"));
            let number = port["port"].clone();
            default(port, "targetPort", number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn a_deployment_gets_kubernetes_defaults_without_losing_what_was_set() {
        let registry = Registry::kubernetes();
        let deployments = registry.find("apps", "v1", "deployments").unwrap();
        let mut object = json!({
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "c", "image": "x:1", "ports": [{"containerPort": 80}]}
            ]}}}
        });
        apply(deployments, &mut object);
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(
            object["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            "25%"
        );
        let container = &object["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        assert_eq!(container["ports"][0]["protocol"], "TCP");
        assert_eq!(
            object["spec"]["template"]["spec"]["restartPolicy"],
            "Always"
        );
    }

    #[test]
    fn a_secrets_string_data_is_written_into_its_data() {
        let registry = Registry::kubernetes();
        let secrets = registry.find("", "v1", "secrets").unwrap();
        let mut object = json!({
            "data": {"kept": "eA==", "replaced": "eA=="},
            "stringData": {"replaced": "new", "added": "ok"},
        });
        apply(secrets, &mut object);
        assert_eq!(
            object,
            json!({
                "type": "Opaque",
                "data": {"kept": "eA==", "replaced": "bmV3", "added": "b2s="},
            })
        );
    }

    #[test]
    fn a_service_port_targets_itself_by_default() {
        let registry = Registry::kubernetes();
        let services = registry.find("", "v1", "services").unwrap();
        let mut object = json!({"spec": {"ports": [{"port": 80}]}});
        apply(services, &mut object);
        assert_eq!(object["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(object["spec"]["type"], "ClusterIP");
    }
}
