//! Turns a Kubernetes `Pod` into a [`PodPlan`]: the plain values the runtime
//! acts on (images, argv, environment, limits, mounts, probes, policies).
//!
//! All validation of the spec against what this runtime can do happens here,
//! before anything runs. ConfigMap and Secret contents are not fetched here:
//! the caller passes them in [`PodInputs`], as kubelet resolves them from the
//! API before starting containers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Error, Result};

/// Grace period when the pod does not set one (Kubernetes' default).
pub const TERMINATION_GRACE_SECS_DEFAULT: i64 = 30;

/// Annotation that sets a service's per-request timeout in milliseconds.
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "flotilla.dev/request-timeout-ms";

/// ConfigMap and Secret contents the caller resolved for this pod, by object
/// name then key.
#[derive(Debug, Clone, Default)]
pub struct PodInputs {
    /// ConfigMaps' `data` and `binaryData`, merged.
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Secrets' decoded `data`.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// When a container that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restart.
    Always,
    /// Restart only after a failure (non-zero exit or a trap).
    OnFailure,
    /// Never restart.
    Never,
}

/// Everything the runtime needs from a pod spec.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// `metadata.uid` (the runtime's key for the pod).
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds`.
    pub grace_period: Duration,
    /// `spec.activeDeadlineSeconds`: how long the pod's processes may run.
    pub active_deadline: Option<Duration>,
    /// Per-request timeout for services (annotation), if set.
    pub request_timeout: Option<Duration>,
    /// The containers, in spec order.
    pub containers: Vec<ContainerPlan>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumePlan>,
    /// `status.podIP`, the pod's address in the pod network, once the
    /// node gave it one.
    pub pod_ip: Option<std::net::IpAddr>,
}

/// One container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: String,
    /// argv after the program name: `command` then `args`.
    pub args: Vec<String>,
    /// Resolved environment, in spec order.
    pub env: Vec<(String, String)>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// `resources.limits.cpu` in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// `ports[].containerPort`.
    pub ports: Vec<u16>,
    /// `volumeMounts`.
    pub mounts: Vec<MountPlan>,
    /// `livenessProbe`.
    pub liveness: Option<ProbePlan>,
    /// `readinessProbe`.
    pub readiness: Option<ProbePlan>,
    /// `startupProbe`.
    pub startup: Option<ProbePlan>,
}

/// A volume's contents.
#[derive(Debug, Clone)]
pub enum VolumePlan {
    /// A fresh directory that lives as long as the pod.
    EmptyDir,
    /// A directory of the host.
    HostPath(std::path::PathBuf),
    /// Files written from the given contents (ConfigMap or Secret), read-only.
    Files(BTreeMap<String, Vec<u8>>),
}

/// A volume mounted into a container.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// The volume's name.
    pub volume: String,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// `httpGet`: a GET of this path and query answers 2xx or 3xx.
    HttpGet { path: String },
    /// `tcpSocket`: a connection to the port in the pod's network opens.
    TcpSocket,
}

/// A probe with Kubernetes' timing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub check: ProbeCheck,
    /// Container port to probe.
    pub port: u16,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `successThreshold`.
    pub success_threshold: u32,
    /// `failureThreshold`.
    pub failure_threshold: u32,
}

impl PodPlan {
    /// Builds the plan for `pod`, resolving references from `inputs`.
    pub fn from_pod(pod: &Pod, inputs: &PodInputs) -> Result<Self> {
        let metadata = &pod.metadata;
        let uid = metadata
            .uid
            .clone()
            .ok_or_else(|| invalid("metadata.uid is required"))?;
        let name = metadata
            .name
            .clone()
            .ok_or_else(|| invalid("metadata.name is required"))?;
        let namespace = metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| invalid("spec is required"))?;
        if spec.containers.is_empty() {
            return Err(invalid("spec.containers must not be empty"));
        }
        let identity = Identity {
            pod,
            name: &name,
            namespace: &namespace,
            uid: &uid,
        };
        let containers = spec
            .containers
            .iter()
            .map(|container| container_plan(container, &identity, inputs))
            .collect::<Result<Vec<_>>>()?;
        let volumes = spec
            .volumes
            .iter()
            .flatten()
            .map(|volume| Ok((volume.name.clone(), volume_plan(volume, inputs)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        check_mounts(&containers, &volumes)?;
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.as_deref())
            .map(|ip| {
                ip.parse()
                    .map_err(|_| invalid(format!("status.podIP {ip:?} is not an IP address")))
            })
            .transpose()?;
        Ok(Self {
            pod_ip,
            restart_policy: restart_policy(spec.restart_policy.as_deref())?,
            grace_period: seconds(
                spec.termination_grace_period_seconds
                    .unwrap_or(TERMINATION_GRACE_SECS_DEFAULT),
            ),
            active_deadline: spec.active_deadline_seconds.map(seconds),
            request_timeout: request_timeout(pod)?,
            uid,
            name,
            namespace,
            containers,
            volumes,
        })
    }
}

struct Identity<'a> {
    pod: &'a Pod,
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidSpec {
        reason: reason.into(),
    }
}

fn seconds(value: i64) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

fn restart_policy(policy: Option<&str>) -> Result<RestartPolicy> {
    match policy {
        None | Some("Always") => Ok(RestartPolicy::Always),
        Some("OnFailure") => Ok(RestartPolicy::OnFailure),
        Some("Never") => Ok(RestartPolicy::Never),
        Some(other) => Err(invalid(format!("unknown restartPolicy {other:?}"))),
    }
}

fn request_timeout(pod: &Pod) -> Result<Option<Duration>> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_TIMEOUT_ANNOTATION))
    else {
        return Ok(None);
    };
    let millis = value.parse::<u64>().map_err(|_| {
        invalid(format!(
            "{REQUEST_TIMEOUT_ANNOTATION} must be milliseconds, got {value:?}"
        ))
    })?;
    Ok(Some(Duration::from_millis(millis)))
}

fn container_plan(
    container: &Container,
    identity: &Identity<'_>,
    inputs: &PodInputs,
) -> Result<ContainerPlan> {
    let image = container
        .image
        .clone()
        .ok_or_else(|| invalid(format!("container {:?} has no image", container.name)))?;
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let memory_limit_bytes = limits
        .and_then(|l| l.get("memory"))
        .map(memory_bytes)
        .transpose()?;
    let cpu_limit_millis = limits
        .and_then(|l| l.get("cpu"))
        .map(cpu_millis)
        .transpose()?;
    let ports = container
        .ports
        .iter()
        .flatten()
        .map(|port| {
            u16::try_from(port.container_port).map_err(|_| invalid("containerPort out of range"))
        })
        .collect::<Result<Vec<_>>>()?;
    let env = container
        .env
        .iter()
        .flatten()
        .map(|var| Ok((var.name.clone(), env_value(var, identity, inputs)?)))
        .collect::<Result<Vec<_>>>()?;
    let mounts = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| MountPlan {
            volume: mount.name.clone(),
            guest_path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
        })
        .collect();
    Ok(ContainerPlan {
        name: container.name.clone(),
        image,
        args: container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .cloned()
            .collect(),
        env,
        memory_limit_bytes,
        cpu_limit_millis,
        liveness: container
            .liveness_probe
            .as_ref()
            .map(|p| probe_plan(p, container))
            .transpose()?,
        readiness: container
            .readiness_probe
            .as_ref()
            .map(|p| probe_plan(p, container))
            .transpose()?,
        startup: container
            .startup_probe
            .as_ref()
            .map(|p| probe_plan(p, container))
            .transpose()?,
        ports,
        mounts,
    })
}

fn env_value(var: &EnvVar, identity: &Identity<'_>, inputs: &PodInputs) -> Result<String> {
    if let Some(value) = &var.value {
        return Ok(value.clone());
    }
    let Some(source) = &var.value_from else {
        return Ok(String::new());
    };
    if let Some(field) = &source.field_ref {
        return field_value(&field.field_path, identity);
    }
    let lookup = |objects: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
                  kind: &str,
                  name: &str,
                  key: &str| {
        objects
            .get(name)
            .and_then(|data| data.get(key))
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .ok_or_else(|| {
                invalid(format!(
                    "env {:?}: {kind} {name:?} has no key {key:?}",
                    var.name
                ))
            })
    };
    if let Some(selector) = &source.config_map_key_ref {
        return lookup(
            &inputs.config_maps,
            "ConfigMap",
            &selector.name,
            &selector.key,
        );
    }
    if let Some(selector) = &source.secret_key_ref {
        return lookup(&inputs.secrets, "Secret", &selector.name, &selector.key);
    }
    Err(invalid(format!(
        "env {:?}: unsupported valueFrom",
        var.name
    )))
}

fn field_value(path: &str, identity: &Identity<'_>) -> Result<String> {
    let spec = identity.pod.spec.as_ref();
    match path {
        "metadata.name" => Ok(identity.name.to_owned()),
        "metadata.namespace" => Ok(identity.namespace.to_owned()),
        "metadata.uid" => Ok(identity.uid.to_owned()),
        "spec.nodeName" => Ok(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        "spec.serviceAccountName" => Ok(spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        "status.podIP" => Ok(identity
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()),
        other => Err(invalid(format!("unsupported fieldRef {other:?}"))),
    }
}

fn volume_plan(volume: &Volume, inputs: &PodInputs) -> Result<VolumePlan> {
    if volume.empty_dir.is_some() {
        return Ok(VolumePlan::EmptyDir);
    }
    if let Some(host) = &volume.host_path {
        return Ok(VolumePlan::HostPath(host.path.clone().into()));
    }
    let objects =
        |objects: &BTreeMap<String, BTreeMap<String, Vec<u8>>>, kind: &str, name: &str| {
            objects
                .get(name)
                .cloned()
                .map(VolumePlan::Files)
                .ok_or_else(|| {
                    invalid(format!(
                        "volume {:?}: {kind} {name:?} was not provided",
                        volume.name
                    ))
                })
        };
    if let Some(config_map) = &volume.config_map {
        return objects(&inputs.config_maps, "ConfigMap", &config_map.name);
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        return objects(&inputs.secrets, "Secret", &name);
    }
    Err(invalid(format!(
        "volume {:?}: unsupported volume type",
        volume.name
    )))
}

fn check_mounts(
    containers: &[ContainerPlan],
    volumes: &BTreeMap<String, VolumePlan>,
) -> Result<()> {
    for container in containers {
        for mount in &container.mounts {
            if !volumes.contains_key(&mount.volume) {
                return Err(invalid(format!(
                    "container {:?} mounts unknown volume {:?}",
                    container.name, mount.volume
                )));
            }
        }
    }
    Ok(())
}

fn probe_plan(probe: &Probe, container: &Container) -> Result<ProbePlan> {
    let (check, port) = match (&probe.http_get, &probe.tcp_socket) {
        (Some(get), _) => {
            let path = get.path.clone().unwrap_or_else(|| "/".to_owned());
            (ProbeCheck::HttpGet { path }, &get.port)
        }
        (None, Some(tcp)) => (ProbeCheck::TcpSocket, &tcp.port),
        (None, None) => {
            return Err(invalid(
                "only httpGet and tcpSocket probes are supported (exec and grpc are not)",
            ));
        }
    };
    let port = match port {
        IntOrString::Int(port) => {
            u16::try_from(*port).map_err(|_| invalid("probe port out of range"))?
        }
        // A name is one of the container's named ports, as in Kubernetes.
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name.as_str()))
            .and_then(|port| u16::try_from(port.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| {
                invalid(format!(
                    "probe port {name:?} names no port of container {:?}",
                    container.name
                ))
            })?,
    };
    let count = |value: Option<i32>, default: u32| {
        value
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Ok(ProbePlan {
        check,
        port,
        initial_delay: seconds(probe.initial_delay_seconds.unwrap_or(0).into()),
        period: seconds(count(probe.period_seconds, 10).into()),
        timeout: seconds(count(probe.timeout_seconds, 1).into()),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// Parses a memory quantity (`128Mi`, `1G`, `1e9`, `512`) into bytes.
pub fn memory_bytes(quantity: &Quantity) -> Result<u64> {
    let text = quantity.0.trim();
    let bad = || invalid(format!("bad memory quantity {text:?}"));
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("Pi", 1024.0f64.powi(5)),
        ("Ei", 1024.0f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, scale) = suffixes
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|number| (number, *scale)))
        .unwrap_or((text, 1.0));
    let value = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok(value.ceil() as u64)
}

/// Parses a CPU quantity (`500m`, `0.5`, `2`) into millicores.
pub fn cpu_millis(quantity: &Quantity) -> Result<u64> {
    let text = quantity.0.trim();
    let bad = || invalid(format!("bad cpu quantity {text:?}"));
    let millis = match text.strip_suffix('m') {
        Some(number) => number.parse::<f64>().map_err(|_| bad())?,
        None => text.parse::<f64>().map_err(|_| bad())? * 1000.0,
    };
    if !millis.is_finite() || millis <= 0.0 {
        return Err(bad());
    }
    Ok(millis.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities() {
        let q = |s: &str| Quantity(s.to_owned());
        assert_eq!(memory_bytes(&q("128Mi")).unwrap(), 128 << 20);
        assert_eq!(memory_bytes(&q("1G")).unwrap(), 1_000_000_000);
        assert_eq!(memory_bytes(&q("4096")).unwrap(), 4096);
        assert!(memory_bytes(&q("lots")).is_err());
        assert_eq!(cpu_millis(&q("500m")).unwrap(), 500);
        assert_eq!(cpu_millis(&q("0.25")).unwrap(), 250);
        assert_eq!(cpu_millis(&q("2")).unwrap(), 2000);
        assert!(cpu_millis(&q("0")).is_err());
    }

    #[test]
    fn probes_check_http_or_tcp_and_refuse_the_rest() {
        let probe = |json: serde_json::Value| -> Probe { serde_json::from_value(json).unwrap() };
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "web",
            "ports": [{"containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
        }))
        .unwrap();
        let http = probe_plan(
            &probe(serde_json::json!({"httpGet": {"port": 8080}})),
            &container,
        );
        assert_eq!(
            http.unwrap().check,
            ProbeCheck::HttpGet {
                path: "/".to_owned()
            }
        );
        let tcp = probe_plan(
            &probe(serde_json::json!({"tcpSocket": {"port": 7000}, "periodSeconds": 2})),
            &container,
        )
        .unwrap();
        assert_eq!((tcp.check, tcp.port), (ProbeCheck::TcpSocket, 7000));
        assert_eq!(tcp.period, Duration::from_secs(2));
        let named = probe_plan(
            &probe(serde_json::json!({"tcpSocket": {"port": "admin"}})),
            &container,
        );
        assert_eq!(named.unwrap().port, 9090, "a named port is looked up");
        let unknown = probe_plan(
            &probe(serde_json::json!({"httpGet": {"port": "metrics"}})),
            &container,
        );
        let error = unknown.unwrap_err().to_string();
        assert!(error.contains("\"metrics\" names no port"), "{error}");
        let exec = probe_plan(
            &probe(serde_json::json!({"exec": {"command": ["true"]}})),
            &container,
        );
        let error = exec.unwrap_err().to_string();
        assert!(error.contains("httpGet and tcpSocket"), "{error}");
    }
}
