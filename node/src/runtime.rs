//! [`NodeRuntime`]: the node's API for running pods. The agent (and tests,
//! and later the router) call it: run a pod, stop it, read its status and
//! logs, and send HTTP requests into its services in-process.
//!
//! It owns the engine, the linkers, the cache of prepared modules and the
//! table of pods. It knows nothing of the API server: callers hand it `Pod`
//! objects and report the statuses it returns.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::engine::{EngineConfig, NodeEngine};
use crate::error::{Error, Result};
use crate::logs::{ContainerLog, LogLine, LogQuery};
use crate::pod::{
    BackoffConfig, ContainerHost, PodHandle, PodShared, StopRequest, enforce_active_deadline, lock,
    run_container,
};
use crate::probes::{Attempt, ProbeFuture, ProbeSender, run_probes};
use crate::sandbox::{DenyOutgoing, OutgoingHttp, Preopen, SandboxSpec};
use crate::sockets::{NoSockets, PodSockets};
use crate::source::{ImageRef, ModuleSource, fetch_verified};
use crate::spec::{ContainerPlan, PodInputs, PodPlan, VolumePlan};
use crate::status::Terminated;
use crate::workload::{
    Exit, Linkers, Prepared, RequestBody, ResponseBody, ServeError, serve_request,
};

/// Time a service request may take when the pod does not say, in seconds.
/// Long enough for any interactive request; short enough that a stuck
/// instance is reclaimed.
pub const REQUEST_TIMEOUT_SECS_DEFAULT: u64 = 30;

/// Settings of a node's runtime.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory for volumes (`pods/`) and logs (`logs/`).
    pub data_dir: PathBuf,
    /// Engine settings (the artifact cache defaults to `<data_dir>/artifacts`).
    pub engine: EngineConfig,
    /// Crash back-off.
    pub backoff: BackoffConfig,
    /// Service request timeout when the pod sets none.
    pub request_timeout: Duration,
    /// Whether container logs are also written to files.
    pub log_files: bool,
}

impl NodeConfig {
    /// Kubernetes' defaults with everything stored under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            engine: EngineConfig::new(data_dir.join("artifacts")),
            data_dir,
            backoff: BackoffConfig::default(),
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECS_DEFAULT),
            log_files: true,
        }
    }
}

/// The node's pod runtime. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct NodeRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    config: NodeConfig,
    engine: Arc<NodeEngine>,
    linkers: Linkers,
    source: Arc<dyn ModuleSource>,
    outgoing: Arc<dyn OutgoingHttp>,
    sockets: Arc<dyn PodSockets>,
    /// Prepared modules by sha256; the lock also keeps two pods of one new
    /// module from compiling it twice.
    prepared: tokio::sync::Mutex<HashMap<String, Prepared>>,
    pods: Mutex<HashMap<String, PodEntry>>,
    /// Pods by address, for the pod network: uid of the pod holding each
    /// `status.podIP`.
    addresses: Mutex<HashMap<IpAddr, String>>,
}

struct PodEntry {
    shared: Arc<PodShared>,
    tasks: Vec<JoinHandle<()>>,
}

/// A [`NodeRuntime`] that may have been dropped.
#[derive(Clone)]
pub struct WeakNodeRuntime {
    inner: std::sync::Weak<RuntimeInner>,
}

impl WeakNodeRuntime {
    /// The runtime, while it lives.
    pub fn upgrade(&self) -> Option<NodeRuntime> {
        self.inner.upgrade().map(|inner| NodeRuntime { inner })
    }
}

/// A follower of a container's log: the backlog first, then new lines.
pub struct LogFollower {
    backlog: std::collections::VecDeque<LogLine>,
    receiver: broadcast::Receiver<LogLine>,
}

impl LogFollower {
    /// The next line; waits for one. Lines a slow follower missed are skipped.
    pub async fn next(&mut self) -> Option<LogLine> {
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        loop {
            match self.receiver.recv().await {
                Ok(line) => return Some(line),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl NodeRuntime {
    /// Starts the runtime: creates the engine (and its epoch ticker) and the
    /// linkers. Outgoing HTTP is refused until [`NodeRuntime::with_outgoing_http`].
    pub fn new(config: NodeConfig, source: Arc<dyn ModuleSource>) -> Result<Self> {
        Self::with_outgoing_http(config, source, Arc::new(DenyOutgoing))
    }

    /// Like [`NodeRuntime::new`], with a carrier for guests' outgoing HTTP.
    pub fn with_outgoing_http(
        config: NodeConfig,
        source: Arc<dyn ModuleSource>,
        outgoing: Arc<dyn OutgoingHttp>,
    ) -> Result<Self> {
        let engine = Arc::new(NodeEngine::new(&config.engine)?);
        let linkers = Linkers::new(engine.engine())?;
        let sockets = outgoing.sockets().unwrap_or_else(|| Arc::new(NoSockets));
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                config,
                engine,
                linkers,
                source,
                outgoing,
                sockets,
                prepared: tokio::sync::Mutex::new(HashMap::new()),
                pods: Mutex::new(HashMap::new()),
                addresses: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The node's engine.
    pub fn engine(&self) -> &NodeEngine {
        &self.inner.engine
    }

    /// Starts a pod: validates its spec, prepares its volumes and starts one
    /// task per container. Fails only for a spec this node cannot run;
    /// image and module problems show up in the container statuses.
    pub fn run_pod(&self, pod: &Pod, inputs: &PodInputs) -> Result<PodHandle> {
        let plan = PodPlan::from_pod(pod, inputs)?;
        let uid = plan.uid.clone();
        let mut pods = lock(&self.inner.pods);
        if pods.contains_key(&uid) {
            return Err(Error::PodExists { uid });
        }
        self.inner.prepare_volumes(&plan)?;
        let logs = (0..plan.containers.len())
            .map(|index| self.inner.log_for(&plan, index, 0))
            .collect();
        let shared = PodShared::new(plan, logs);
        let tasks = (0..shared.plan.containers.len())
            .map(|index| {
                let span = tracing::info_span!(
                    "container",
                    pod = %shared.plan.name,
                    namespace = %shared.plan.namespace,
                    container = %shared.plan.containers[index].name
                );
                tokio::spawn(
                    run_container(self.inner.clone(), shared.clone(), index).instrument(span),
                )
            })
            .collect();
        tokio::spawn(enforce_active_deadline(shared.clone()));
        if let Some(ip) = shared.plan.pod_ip {
            lock(&self.inner.addresses).insert(ip, uid.clone());
        }
        pods.insert(
            uid,
            PodEntry {
                shared: shared.clone(),
                tasks,
            },
        );
        Ok(PodHandle { shared })
    }

    /// The handle of a pod on this node.
    pub fn pod(&self, uid: &str) -> Option<PodHandle> {
        lock(&self.inner.pods).get(uid).map(|entry| PodHandle {
            shared: entry.shared.clone(),
        })
    }

    /// The pod with `uid`, or `Error::PodNotFound`.
    fn existing_pod(&self, uid: &str) -> Result<PodHandle> {
        self.pod(uid).ok_or_else(|| Error::PodNotFound {
            uid: uid.to_owned(),
        })
    }

    /// The uid of the pod on this node whose address is `ip`.
    pub fn pod_at(&self, ip: IpAddr) -> Option<String> {
        lock(&self.inner.addresses).get(&ip).cloned()
    }

    /// A handle that does not keep the runtime alive, for what the runtime
    /// itself holds (the pod network carries guests' requests back into it).
    pub fn downgrade(&self) -> WeakNodeRuntime {
        WeakNodeRuntime {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The uids of the pods on this node.
    pub fn pod_uids(&self) -> Vec<String> {
        lock(&self.inner.pods).keys().cloned().collect()
    }

    /// A pod's status, as Kubernetes reports it.
    pub fn pod_status(&self, uid: &str) -> Option<PodStatus> {
        self.pod(uid).map(|pod| pod.status())
    }

    /// Stops a pod: services stop taking requests and drain in-flight ones,
    /// processes get the grace period (the pod's own when `None`) to end, and
    /// whatever still runs after it is ended. Returns the final status; the
    /// pod stays listed until [`NodeRuntime::remove_pod`].
    pub async fn stop_pod(&self, uid: &str, grace: Option<Duration>) -> Result<PodStatus> {
        let (shared, tasks) = {
            let mut pods = lock(&self.inner.pods);
            let entry = pods.get_mut(uid).ok_or_else(|| Error::PodNotFound {
                uid: uid.to_owned(),
            })?;
            (entry.shared.clone(), std::mem::take(&mut entry.tasks))
        };
        shared.request_stop(StopRequest {
            grace: grace.unwrap_or(shared.plan.grace_period),
            deadline_exceeded: false,
        });
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, pod = %shared.plan.name, "container task failed");
            }
        }
        Ok(shared.status())
    }

    /// Stops a pod if needed and forgets it, deleting its volumes.
    pub async fn remove_pod(&self, uid: &str) -> Result<PodStatus> {
        let status = self.stop_pod(uid, None).await?;
        if let Some(entry) = lock(&self.inner.pods).remove(uid)
            && let Some(ip) = entry.shared.plan.pod_ip
        {
            let mut addresses = lock(&self.inner.addresses);
            if addresses.get(&ip).is_some_and(|holder| holder == uid) {
                addresses.remove(&ip);
            }
        }
        let dir = self.inner.pod_dir(uid);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(?dir, %error, "cannot delete pod volumes");
        }
        Ok(status)
    }

    /// Sends an HTTP request to the service listening on `port` in the pod,
    /// in-process: a fresh instance handles it.
    pub async fn serve_http(
        &self,
        uid: &str,
        port: u16,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<ResponseBody>> {
        let shared = self.existing_pod(uid)?.shared;
        let index = service_index(&shared, port).ok_or_else(|| Error::NoService {
            uid: uid.to_owned(),
            port,
        })?;
        let timeout = shared
            .plan
            .request_timeout
            .unwrap_or(self.inner.config.request_timeout);
        serve_container(&shared, index, port, request, timeout).await
    }

    /// Lines of a container's log.
    pub fn logs(&self, uid: &str, container: &str, query: &LogQuery) -> Result<Vec<LogLine>> {
        Ok(self
            .container_log(uid, container, query.previous)?
            .read(query))
    }

    /// Follows a container's log: the lines matching `query` now, then every new one.
    pub fn follow_logs(&self, uid: &str, container: &str, query: &LogQuery) -> Result<LogFollower> {
        let (backlog, receiver) = self
            .container_log(uid, container, query.previous)?
            .follow(query);
        Ok(LogFollower {
            backlog: backlog.into(),
            receiver,
        })
    }

    fn container_log(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<Arc<ContainerLog>> {
        let shared = self.existing_pod(uid)?.shared;
        let not_found = || Error::ContainerNotFound {
            uid: uid.to_owned(),
            container: container.to_owned(),
        };
        let index = shared
            .plan
            .containers
            .iter()
            .position(|c| c.name == container)
            .ok_or_else(not_found)?;
        shared
            .read(index, |record| {
                if previous {
                    record.previous_log.clone()
                } else {
                    Some(record.log.clone())
                }
            })
            .flatten()
            .ok_or_else(not_found)
    }
}

/// The container serving `port`: one that declares it, or else the only
/// service container when none declares ports.
fn service_index(shared: &PodShared, port: u16) -> Option<usize> {
    let containers = &shared.plan.containers;
    if let Some(index) = containers.iter().position(|c| c.ports.contains(&port)) {
        return Some(index);
    }
    let mut candidates = (0..containers.len()).filter(|&index| containers[index].ports.is_empty());
    let index = candidates.next()?;
    candidates.next().is_none().then_some(index)
}

/// Serves a request with a fresh instance of the container, recording a
/// failed instance as the container's last termination.
pub(crate) async fn serve_container(
    shared: &Arc<PodShared>,
    index: usize,
    port: u16,
    mut request: http::Request<RequestBody>,
    timeout: Duration,
) -> Result<http::Response<ResponseBody>> {
    let unavailable = |reason: &str| Error::ServiceUnavailable {
        uid: shared.plan.uid.clone(),
        port,
        reason: reason.to_owned(),
    };
    add_host(&mut request, &shared.plan.name, port);
    let slot = lock(&shared.containers[index].service)
        .clone()
        .ok_or_else(|| unavailable("not running"))?;
    let _in_flight = shared.containers[index].in_flight.enter();
    let started_at = std::time::SystemTime::now();
    let deadline = Instant::now() + timeout;
    let served = tokio::time::timeout(
        timeout,
        serve_request(
            &slot.pre,
            &slot.spec,
            request,
            Some(deadline),
            slot.killed.clone(),
        ),
    )
    .await;
    let exit = match served {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(ServeError::Setup(reason))) => return Err(Error::Guest { reason }),
        Ok(Err(ServeError::Guest(exit))) => exit,
        Err(_) => Exit {
            exit_code: crate::workload::KILLED_EXIT_CODE,
            reason: "DeadlineExceeded",
            message: Some(format!("no response within {} ms", timeout.as_millis())),
        },
    };
    let reason = format!(
        "{}: {}",
        exit.reason,
        exit.message.clone().unwrap_or_default()
    );
    let timed_out = exit.reason == "DeadlineExceeded";
    let terminated = Terminated {
        exit,
        started_at,
        finished_at: std::time::SystemTime::now(),
    };
    shared.update(index, |record| record.last_terminated = Some(terminated));
    if timed_out {
        return Err(Error::RequestTimeout {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Err(Error::Guest { reason })
}

/// `wasi:http` needs an authority; an in-process request (a probe, the
/// router's) may carry none, so it is addressed to the pod by name.
fn add_host(request: &mut http::Request<RequestBody>, pod_name: &str, port: u16) {
    if request.uri().authority().is_some() || request.headers().contains_key(http::header::HOST) {
        return;
    }
    if let Ok(host) = http::HeaderValue::from_str(&format!("{pod_name}:{port}")) {
        request.headers_mut().insert(http::header::HOST, host);
    }
}

impl RuntimeInner {
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.data_dir.join("pods").join(uid)
    }

    fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }

    /// Creates emptyDir volumes and writes ConfigMap/Secret files.
    fn prepare_volumes(&self, plan: &PodPlan) -> Result<()> {
        for (name, volume) in &plan.volumes {
            let dir = self.volume_dir(&plan.uid, name);
            match volume {
                VolumePlan::HostPath(_) => continue,
                VolumePlan::EmptyDir => create_dir(&dir)?,
                VolumePlan::Files(files) => {
                    create_dir(&dir)?;
                    for (key, contents) in files {
                        if key.contains('/') || key == ".." || key == "." {
                            return Err(Error::InvalidSpec {
                                reason: format!("volume {name:?}: bad key {key:?}"),
                            });
                        }
                        let path = dir.join(key);
                        std::fs::write(&path, contents)
                            .map_err(|source| Error::io("write volume file", path, source))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn log_for(&self, plan: &PodPlan, index: usize, restart_count: i32) -> Arc<ContainerLog> {
        let file = self.config.log_files.then(|| {
            self.config
                .data_dir
                .join("logs")
                .join(format!("{}_{}_{}", plan.namespace, plan.name, plan.uid))
                .join(&plan.containers[index].name)
                .join(format!("{restart_count}.log"))
        });
        ContainerLog::new(file)
    }

    fn probe_sender(&self) -> ProbeSender {
        let sockets = self.sockets.clone();
        Arc::new(
            move |pod: Arc<PodShared>,
                  index: usize,
                  port: u16,
                  attempt: Attempt,
                  timeout: Duration|
                  -> ProbeFuture {
                let sockets = sockets.clone();
                Box::pin(async move {
                    match attempt {
                        Attempt::Http(request) => {
                            match serve_container(&pod, index, port, *request, timeout).await {
                                Ok(response) => {
                                    let status = response.status();
                                    status.is_success() || status.is_redirection()
                                }
                                Err(_) => false,
                            }
                        }
                        // Opened and closed at once, as kubelet's probe
                        // does; the guest sees a connection end.
                        Attempt::Tcp => {
                            let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                            let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                            let connect = sockets.connect(&pod.plan.uid, local, remote);
                            matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
                        }
                    }
                })
            },
        )
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::io("create volume dir", dir, source))
}

impl ContainerHost for RuntimeInner {
    async fn prepare(&self, container: &ContainerPlan) -> Result<(Prepared, String)> {
        let image = ImageRef::parse(&container.image)?;
        let source = self.source.clone();
        let (bytes, digest) =
            tokio::task::spawn_blocking(move || fetch_verified(source.as_ref(), &image))
                .await
                .map_err(|error| Error::Engine {
                    reason: format!("fetch task failed: {error}"),
                })??;
        let mut prepared = self.prepared.lock().await;
        if let Some(ready) = prepared.get(&digest) {
            return Ok((ready.clone(), digest));
        }
        let engine = self.engine.clone();
        let (compiled, origin) = tokio::task::spawn_blocking(move || engine.compile(&bytes))
            .await
            .map_err(|error| Error::Engine {
                reason: format!("compile task failed: {error}"),
            })??;
        tracing::info!(%digest, ?origin, "module ready");
        let ready = self.linkers.prepare(self.engine.engine(), &compiled)?;
        prepared.insert(digest.clone(), ready.clone());
        Ok((ready, digest))
    }

    fn sandbox_spec(
        &self,
        pod: &PodShared,
        index: usize,
        log: Arc<ContainerLog>,
    ) -> Result<SandboxSpec> {
        let plan = &pod.plan;
        let container = &plan.containers[index];
        let preopens = container
            .mounts
            .iter()
            .map(|mount| {
                let host_path = match plan.volumes.get(&mount.volume) {
                    Some(VolumePlan::HostPath(path)) => path.clone(),
                    _ => self.volume_dir(&plan.uid, &mount.volume),
                };
                let files = matches!(plan.volumes.get(&mount.volume), Some(VolumePlan::Files(_)));
                Preopen {
                    host_path,
                    guest_path: mount.guest_path.clone(),
                    read_only: mount.read_only || files,
                }
            })
            .collect();
        Ok(SandboxSpec {
            pod_uid: plan.uid.clone(),
            argv: std::iter::once(container.name.clone())
                .chain(container.args.iter().cloned())
                .collect(),
            env: container.env.clone(),
            preopens,
            log,
            memory_limit_bytes: container.memory_limit_bytes,
            cpu_limit_millis: container.cpu_limit_millis,
            epoch_tick: self.config.engine.epoch_tick,
            outgoing: self.outgoing.clone(),
            sockets: self.sockets.clone(),
        })
    }

    fn new_log(&self, pod: &PodShared, index: usize, restart_count: i32) -> Arc<ContainerLog> {
        self.log_for(&pod.plan, index, restart_count)
    }

    fn backoff(&self) -> &BackoffConfig {
        &self.config.backoff
    }

    fn start_probes(
        &self,
        pod: &Arc<PodShared>,
        index: usize,
        instance_stopped: watch::Receiver<bool>,
    ) {
        let container = &pod.plan.containers[index];
        if container.liveness.is_none()
            && container.readiness.is_none()
            && container.startup.is_none()
        {
            return;
        }
        tokio::spawn(run_probes(
            self.probe_sender(),
            pod.clone(),
            index,
            instance_stopped,
        ));
    }
}
