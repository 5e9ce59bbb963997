//! The lifecycle of one pod: a task per container that prepares its module,
//! starts it, records how it ends, and restarts it as `restartPolicy` says,
//! backing off exponentially between restarts (reported as CrashLoopBackOff).
//!
//! A service container stays Running and serves requests, each in a fresh
//! instance, until the pod stops or its liveness probe fails. A process
//! container runs its entry point; its exit is the container's exit.
//!
//! This module knows the pod's state machine; compiling, sandboxes and
//! probing live in their own modules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::PodStatus;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::logs::ContainerLog;
use crate::sandbox::SandboxSpec;
use crate::spec::{ContainerPlan, PodPlan, RestartPolicy};
use crate::status::{
    ContainerRecord, PodFailure, State, Terminated, Transitions, conditions, pod_status,
};
use crate::workload::{Exit, KILLED_EXIT_CODE, Prepared, WorkloadKind, run_process};

/// First crash back-off, in seconds (kubelet's).
pub const BACKOFF_INITIAL_SECS: u64 = 10;
/// Longest crash back-off, in seconds (kubelet's five minutes).
pub const BACKOFF_MAX_SECS: u64 = 300;
/// A container that ran this long without failing starts over at the first
/// back-off, in seconds (kubelet's ten minutes).
pub const BACKOFF_RESET_SECS: u64 = 600;

/// Restart back-off settings; tests shorten them.
#[derive(Debug, Clone)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Run time after which the delay starts over.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(BACKOFF_INITIAL_SECS),
            max: Duration::from_secs(BACKOFF_MAX_SECS),
            reset_after: Duration::from_secs(BACKOFF_RESET_SECS),
        }
    }
}

impl BackoffConfig {
    /// The delay before the restart that follows `failures` consecutive quick exits.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How a stop was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopRequest {
    pub(crate) grace: Duration,
    /// The pod ran past `activeDeadlineSeconds`: what is killed reports
    /// DeadlineExceeded.
    pub(crate) deadline_exceeded: bool,
}

impl StopRequest {
    /// How a container ended by this stop after its grace period reports it.
    fn killed(&self, message: String) -> Exit {
        if self.deadline_exceeded {
            return Exit {
                exit_code: KILLED_EXIT_CODE,
                reason: "DeadlineExceeded",
                message: Some(ACTIVE_DEADLINE_MESSAGE.to_owned()),
            };
        }
        Exit {
            exit_code: KILLED_EXIT_CODE,
            reason: "Error",
            message: Some(message),
        }
    }
}

/// What Kubernetes says of a pod that ran past `activeDeadlineSeconds`.
const ACTIVE_DEADLINE_MESSAGE: &str =
    "Pod was active on the node longer than the specified deadline";

/// A running service container's request target.
#[derive(Clone)]
pub(crate) struct ServiceSlot {
    pub(crate) pre: wasmtime_wasi_http::p2::bindings::ProxyPre<crate::sandbox::ComponentState>,
    pub(crate) spec: SandboxSpec,
    /// Turns true when the container instance is killed: requests still
    /// running end with it.
    pub(crate) killed: watch::Receiver<bool>,
}

/// Per-container state shared between its task, requests and probes.
pub(crate) struct ContainerShared {
    pub(crate) service: Mutex<Option<ServiceSlot>>,
    pub(crate) in_flight: InFlight,
    /// Signalled when the liveness probe decides the container must restart.
    pub(crate) restart: Notify,
    /// Kills the current instance's requests (see [`ServiceSlot::killed`]).
    pub(crate) kill: Mutex<Option<watch::Sender<bool>>>,
}

/// State shared by everything that touches one pod.
pub(crate) struct PodShared {
    pub(crate) plan: PodPlan,
    records: Mutex<PodRecords>,
    version: watch::Sender<u64>,
    pub(crate) stop: watch::Sender<Option<StopRequest>>,
    pub(crate) containers: Vec<ContainerShared>,
    start_time: SystemTime,
}

struct PodRecords {
    containers: Vec<ContainerRecord>,
    failure: Option<PodFailure>,
    transitions: Transitions,
}

impl PodRecords {
    fn observe_conditions(&mut self) {
        let conditions = conditions(&self.containers, self.failure.as_ref());
        self.transitions.observe(&conditions);
    }
}

impl PodShared {
    pub(crate) fn new(plan: PodPlan, logs: Vec<Arc<ContainerLog>>) -> Arc<Self> {
        let containers = plan
            .containers
            .iter()
            .zip(logs)
            .map(|(container, log)| {
                ContainerRecord::new(container.name.clone(), container.image.clone(), log)
            })
            .collect();
        let mut records = PodRecords {
            containers,
            failure: None,
            transitions: Transitions::default(),
        };
        records.observe_conditions();
        let containers = plan
            .containers
            .iter()
            .map(|_| ContainerShared {
                service: Mutex::new(None),
                in_flight: InFlight::default(),
                restart: Notify::new(),
                kill: Mutex::new(None),
            })
            .collect();
        Arc::new(Self {
            plan,
            records: Mutex::new(records),
            version: watch::channel(0).0,
            stop: watch::channel(None).0,
            containers,
            start_time: SystemTime::now(),
        })
    }

    /// The pod's status now.
    pub(crate) fn status(&self) -> PodStatus {
        let records = self.lock();
        pod_status(
            &records.containers,
            records.failure.as_ref(),
            self.start_time,
            &records.transitions,
        )
    }

    /// Changes one container's record and tells watchers.
    pub(crate) fn update(&self, index: usize, change: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut records = self.lock();
            if let Some(record) = records.containers.get_mut(index) {
                change(record);
            }
            records.observe_conditions();
        }
        self.version.send_modify(|version| *version += 1);
    }

    /// Reads one container's record.
    pub(crate) fn read<R>(
        &self,
        index: usize,
        read: impl FnOnce(&ContainerRecord) -> R,
    ) -> Option<R> {
        self.lock().containers.get(index).map(read)
    }

    fn fail_pod(&self, failure: PodFailure) {
        {
            let mut records = self.lock();
            records.failure.get_or_insert(failure);
            records.observe_conditions();
        }
        self.version.send_modify(|version| *version += 1);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub(crate) fn stop_requested(&self) -> Option<StopRequest> {
        *self.stop.borrow()
    }

    /// Asks every container to stop; the first request wins.
    pub(crate) fn request_stop(&self, request: StopRequest) {
        self.stop.send_if_modified(|current| {
            let first = current.is_none();
            current.get_or_insert(request);
            first
        });
    }

    fn lock(&self) -> MutexGuard<'_, PodRecords> {
        // Records stay consistent under a panic elsewhere: each update is one assignment.
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts requests in flight so a stop can wait for them to drain.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub(crate) fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What a container task needs from the runtime.
pub(crate) trait ContainerHost: Send + Sync + 'static {
    /// Fetches, verifies, compiles (or loads) and links the container's module.
    fn prepare(
        &self,
        container: &ContainerPlan,
    ) -> impl Future<Output = Result<(Prepared, String)>> + Send;
    /// Builds the sandbox spec of one instance of the container.
    fn sandbox_spec(
        &self,
        pod: &PodShared,
        index: usize,
        log: Arc<ContainerLog>,
    ) -> Result<SandboxSpec>;
    /// A fresh log for the next instance of the container.
    fn new_log(&self, pod: &PodShared, index: usize, restart_count: i32) -> Arc<ContainerLog>;
    /// Restart back-off settings.
    fn backoff(&self) -> &BackoffConfig;
    /// Starts the probes of a container instance; they end when
    /// `instance_stopped` changes.
    fn start_probes(
        &self,
        pod: &Arc<PodShared>,
        index: usize,
        instance_stopped: watch::Receiver<bool>,
    );
}

/// Runs one container for the life of the pod.
pub(crate) async fn run_container<H: ContainerHost>(
    host: Arc<H>,
    pod: Arc<PodShared>,
    index: usize,
) {
    let plan = &pod.plan.containers[index];
    let prepared = match host.prepare(plan).await {
        Ok((prepared, digest)) => {
            pod.update(index, |record| record.image_id = Some(digest));
            prepared
        }
        Err(error) => {
            pod.update(index, |record| {
                record.state = State::Waiting {
                    reason: waiting_reason(&error).to_owned(),
                    message: Some(error.to_string()),
                };
                record.finished = true;
            });
            return;
        }
    };
    let mut quick_failures = 0u32;
    loop {
        if pod.stop_requested().is_some() {
            break;
        }
        let started_at = SystemTime::now();
        let started = Instant::now();
        let exit = match start_instance(&host, &pod, index, &prepared, started_at).await {
            Ok(exit) => exit,
            Err(error) => {
                pod.update(index, |record| {
                    record.state = State::Waiting {
                        reason: "CreateContainerError".to_owned(),
                        message: Some(error.to_string()),
                    };
                    record.finished = true;
                });
                return;
            }
        };
        let deadline_hit = exit.reason == "DeadlineExceeded";
        let terminated = Terminated {
            exit,
            started_at,
            finished_at: SystemTime::now(),
        };
        let failed = terminated.exit.exit_code != 0;
        pod.update(index, |record| {
            record.ready = false;
            record.state = State::Terminated(terminated.clone());
        });
        if deadline_hit && prepared.kind() != WorkloadKind::Service {
            pod.fail_pod(PodFailure {
                reason: "DeadlineExceeded".to_owned(),
                message: ACTIVE_DEADLINE_MESSAGE.to_owned(),
            });
        }
        let restart = pod.stop_requested().is_none()
            && !deadline_hit
            && match pod.plan.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Never => false,
            };
        if !restart {
            break;
        }
        if started.elapsed() >= host.backoff().reset_after {
            quick_failures = 0;
        }
        let delay = host.backoff().delay(quick_failures);
        quick_failures = quick_failures.saturating_add(1);
        if !back_off(&host, &pod, index, terminated, delay).await {
            break;
        }
    }
    pod.update(index, |record| record.finished = true);
}

fn waiting_reason(error: &Error) -> &'static str {
    match error {
        Error::InvalidImage { .. } => "InvalidImageName",
        Error::ImagePull { .. } | Error::DigestMismatch { .. } => "ErrImagePull",
        _ => "CreateContainerError",
    }
}

/// Waits out a restart delay reported as CrashLoopBackOff; false if the pod
/// stopped meanwhile. The new instance gets a fresh log; the last one is kept
/// as the previous instance's.
async fn back_off<H: ContainerHost>(
    host: &Arc<H>,
    pod: &Arc<PodShared>,
    index: usize,
    terminated: Terminated,
    delay: Duration,
) -> bool {
    let restart_count = pod.read(index, |record| record.restart_count).unwrap_or(0) + 1;
    let log = host.new_log(pod, index, restart_count);
    pod.update(index, |record| {
        record.last_terminated = Some(terminated);
        record.restart_count = restart_count;
        record.state = State::Waiting {
            reason: "CrashLoopBackOff".to_owned(),
            message: Some(format!(
                "back-off {}ms restarting failed container={} pod={}",
                delay.as_millis(),
                record.name,
                pod.plan.name
            )),
        };
        record.previous_log = Some(std::mem::replace(&mut record.log, log));
    });
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = stop_requested(pod) => false,
    }
}

/// Runs one instance of the container until it ends or the pod stops.
async fn start_instance<H: ContainerHost>(
    host: &Arc<H>,
    pod: &Arc<PodShared>,
    index: usize,
    prepared: &Prepared,
    started_at: SystemTime,
) -> Result<Exit> {
    let log = pod
        .read(index, |record| record.log.clone())
        .ok_or_else(|| Error::InvalidSpec {
            reason: "container index out of range".to_owned(),
        })?;
    let spec = host.sandbox_spec(pod, index, log.clone())?;
    let container = &pod.plan.containers[index];
    let has_startup_probe = container.startup.is_some();
    let has_readiness_probe = container.readiness.is_some();
    if let Prepared::Service(pre) = prepared {
        // Serving first, then Running: whoever sees Running can send requests.
        let (kill, killed) = watch::channel(false);
        *lock(&pod.containers[index].kill) = Some(kill);
        *lock(&pod.containers[index].service) = Some(ServiceSlot {
            pre: pre.clone(),
            spec: spec.clone(),
            killed,
        });
    }
    pod.update(index, |record| {
        record.state = State::Running { started_at };
        record.started = !has_startup_probe;
        record.ready = !has_startup_probe && !has_readiness_probe;
    });
    let exit = match prepared {
        Prepared::Service(_) => run_service(host, pod, index).await,
        _ => run_process_until_stopped(host, pod, index, prepared, &spec).await?,
    };
    log.finish();
    Ok(exit)
}

/// Keeps a service container running (its slot was filled by the caller)
/// until the pod stops or its liveness probe fails.
async fn run_service<H: ContainerHost>(host: &Arc<H>, pod: &Arc<PodShared>, index: usize) -> Exit {
    let shared = &pod.containers[index];
    let (instance_stopped, stopped_receiver) = watch::channel(false);
    host.start_probes(pod, index, stopped_receiver);
    let exit = tokio::select! {
        request = stop_requested(pod) => {
            *lock(&shared.service) = None;
            match tokio::time::timeout(request.grace, shared.in_flight.drained()).await {
                Ok(()) if !request.deadline_exceeded => {
                    Exit { exit_code: 0, reason: "Completed", message: None }
                }
                _ => request.killed(format!(
                    "requests still in flight after the {} ms grace period",
                    request.grace.as_millis()
                )),
            }
        }
        () = shared.restart.notified() => Exit {
            exit_code: KILLED_EXIT_CODE,
            reason: "Error",
            message: Some("liveness probe failed; container will be restarted".to_owned()),
        },
    };
    *lock(&shared.service) = None;
    // Whatever still runs is killed with the instance; no receiver is fine.
    if let Some(kill) = lock(&shared.kill).take() {
        let _ = kill.send(true);
    }
    let _ = instance_stopped.send(true);
    exit
}

/// Runs a process; on stop, gives it the grace period to end by itself, then
/// ends it (a WASI guest has no signals to catch, so it cannot be asked).
async fn run_process_until_stopped<H: ContainerHost>(
    host: &Arc<H>,
    pod: &Arc<PodShared>,
    index: usize,
    prepared: &Prepared,
    spec: &SandboxSpec,
) -> Result<Exit> {
    // A deadline too far to be a time is no deadline (the API allows at
    // most 2^31 - 1 seconds; a node does not trust that).
    let deadline = pod
        .plan
        .active_deadline
        .and_then(|deadline| Instant::now().checked_add(deadline));
    // A process's probes (tcpSocket, for one that listens) run while it
    // does; a failed liveness probe ends it like a service's.
    let (instance_stopped, stopped_receiver) = watch::channel(false);
    host.start_probes(pod, index, stopped_receiver);
    let run = run_process(prepared, spec, deadline);
    tokio::pin!(run);
    let exit = tokio::select! {
        exit = &mut run => exit,
        () = pod.containers[index].restart.notified() => Ok(Exit {
            exit_code: KILLED_EXIT_CODE,
            reason: "Error",
            message: Some("liveness probe failed; container will be restarted".to_owned()),
        }),
        request = stop_requested(pod) => {
            match tokio::time::timeout(request.grace, &mut run).await {
                Ok(exit) if !request.deadline_exceeded => exit,
                _ => Ok(request.killed(format!(
                    "killed after the {} ms grace period",
                    request.grace.as_millis()
                ))),
            }
        }
    };
    let _ = instance_stopped.send(true);
    exit
}

/// Waits until the pod is asked to stop; returns how.
async fn stop_requested(pod: &PodShared) -> StopRequest {
    let mut stop = pod.stop.subscribe();
    // The watch guard is dropped inside this expression: it must not be held
    // across an await.
    let request = stop
        .wait_for(|request| request.is_some())
        .await
        .ok()
        .and_then(|request| *request);
    request.unwrap_or(StopRequest {
        grace: Duration::ZERO,
        deadline_exceeded: false,
    })
}

/// Ends the pod when it has run for `activeDeadlineSeconds`, as kubelet
/// does: Failed with reason DeadlineExceeded, containers killed at once.
/// (Processes also carry the deadline into their sandbox, so a guest that
/// spins ends at the same moment without waiting for this task.)
pub(crate) async fn enforce_active_deadline(pod: Arc<PodShared>) {
    let Some(deadline) = pod.plan.active_deadline else {
        return;
    };
    tokio::select! {
        () = tokio::time::sleep(deadline) => {}
        _ = stop_requested(&pod) => return,
    }
    pod.fail_pod(PodFailure {
        reason: "DeadlineExceeded".to_owned(),
        message: ACTIVE_DEADLINE_MESSAGE.to_owned(),
    });
    pod.request_stop(StopRequest {
        grace: Duration::ZERO,
        deadline_exceeded: true,
    });
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these mutexes is replaced whole, never left half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pod running on this node, as handed back by `run_pod`.
#[derive(Clone)]
pub struct PodHandle {
    pub(crate) shared: Arc<PodShared>,
}

impl PodHandle {
    /// The pod's uid.
    pub fn uid(&self) -> &str {
        &self.shared.plan.uid
    }

    /// The pod's status now.
    pub fn status(&self) -> PodStatus {
        self.shared.status()
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.shared.plan.namespace
    }

    /// The pod's address in the pod network, if it has one.
    pub fn pod_ip(&self) -> Option<std::net::IpAddr> {
        self.shared.plan.pod_ip
    }

    /// Service requests being handled in the pod now (all containers):
    /// zero means the pod is idle, which scale-to-zero and draining look at.
    pub fn requests_in_flight(&self) -> usize {
        self.shared
            .containers
            .iter()
            .map(|container| container.in_flight.count())
            .sum()
    }

    /// Waits until the status satisfies `condition`, for at most `timeout`.
    /// On timeout returns the last status seen, for the caller's message.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&PodStatus) -> bool,
    ) -> Result<PodStatus, Box<PodStatus>> {
        let mut changes = self.shared.subscribe();
        let wait = async {
            loop {
                let status = self.status();
                if condition(&status) {
                    return status;
                }
                if changes.changed().await.is_err() {
                    // The pod is gone; its last status is final.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Box::new(self.status()))
    }
}
