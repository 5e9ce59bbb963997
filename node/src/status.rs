//! What the runtime records about each container, and how that becomes a
//! Kubernetes `PodStatus` (phase, conditions, container states) exactly as
//! kubelet would report it.
//!
//! This module knows Kubernetes' status vocabulary; it does not run anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::logs::ContainerLog;
use crate::workload::Exit;

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: pulling, backing off, or unable to start.
    Waiting {
        reason: String,
        message: Option<String>,
    },
    /// Running since the given time.
    Running { started_at: SystemTime },
    /// Ended.
    Terminated(Terminated),
}

/// How a container instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    /// How it ended.
    pub exit: Exit,
    /// When it started.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: SystemTime,
}

/// Everything recorded about one container.
pub(crate) struct ContainerRecord {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) image_id: Option<String>,
    pub(crate) state: State,
    pub(crate) last_terminated: Option<Terminated>,
    pub(crate) restart_count: i32,
    pub(crate) started: bool,
    pub(crate) ready: bool,
    /// The task will not start this container again.
    pub(crate) finished: bool,
    pub(crate) log: Arc<ContainerLog>,
    pub(crate) previous_log: Option<Arc<ContainerLog>>,
}

impl ContainerRecord {
    pub(crate) fn new(name: String, image: String, log: Arc<ContainerLog>) -> Self {
        Self {
            name,
            image,
            image_id: None,
            state: State::Waiting {
                reason: "ContainerCreating".to_owned(),
                message: None,
            },
            last_terminated: None,
            restart_count: 0,
            started: false,
            ready: false,
            finished: false,
            log,
            previous_log: None,
        }
    }

    fn to_k8s(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self
                .image_id
                .as_ref()
                .map(|digest| format!("sha256:{digest}"))
                .unwrap_or_default(),
            ready: self.ready,
            restart_count: self.restart_count,
            started: Some(self.started),
            state: Some(state_to_k8s(&self.state)),
            last_state: self
                .last_terminated
                .as_ref()
                .map(|terminated| state_to_k8s(&State::Terminated(terminated.clone()))),
            ..ContainerStatus::default()
        }
    }
}

/// A pod-level failure that overrides the phase (as `activeDeadlineSeconds` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodFailure {
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// The pod's conditions now, by type.
pub(crate) fn conditions(
    containers: &[ContainerRecord],
    failure: Option<&PodFailure>,
) -> [(&'static str, bool); 5] {
    let all_ready = containers.iter().all(|c| c.ready);
    [
        ("PodScheduled", true),
        // The pod's sandbox (its volumes) exists from the moment it runs here.
        ("PodReadyToStartContainers", true),
        ("Initialized", true),
        ("ContainersReady", all_ready),
        ("Ready", all_ready && failure.is_none()),
    ]
}

/// When each condition last changed value.
#[derive(Debug, Default)]
pub(crate) struct Transitions(BTreeMap<&'static str, (bool, SystemTime)>);

impl Transitions {
    /// Records the conditions' values, stamping those that changed.
    pub(crate) fn observe(&mut self, conditions: &[(&'static str, bool)]) {
        let now = SystemTime::now();
        for &(kind, status) in conditions {
            let entry = self.0.entry(kind).or_insert((status, now));
            if entry.0 != status {
                *entry = (status, now);
            }
        }
    }

    fn since(&self, kind: &str) -> SystemTime {
        self.0
            .get(kind)
            .map_or_else(SystemTime::now, |(_, since)| *since)
    }
}

/// Builds the pod's status from its containers' records.
pub(crate) fn pod_status(
    containers: &[ContainerRecord],
    failure: Option<&PodFailure>,
    start_time: SystemTime,
    transitions: &Transitions,
) -> PodStatus {
    let conditions = conditions(containers, failure)
        .iter()
        .map(|&(kind, status)| condition(kind, status, transitions.since(kind)))
        .collect();
    PodStatus {
        phase: Some(phase(containers, failure).to_owned()),
        reason: failure.map(|f| f.reason.clone()),
        message: failure.map(|f| f.message.clone()),
        start_time: Some(time(start_time)),
        conditions: Some(conditions),
        container_statuses: Some(containers.iter().map(ContainerRecord::to_k8s).collect()),
        ..PodStatus::default()
    }
}

fn phase(containers: &[ContainerRecord], failure: Option<&PodFailure>) -> &'static str {
    if failure.is_some() {
        return "Failed";
    }
    let all_terminated_for_good = containers
        .iter()
        .all(|c| c.finished && matches!(c.state, State::Terminated(_)));
    if all_terminated_for_good {
        let all_succeeded = containers
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.exit.exit_code == 0));
        return if all_succeeded { "Succeeded" } else { "Failed" };
    }
    let any_ran = containers.iter().any(|c| {
        matches!(c.state, State::Running { .. } | State::Terminated(_)) || c.restart_count > 0
    });
    if any_ran { "Running" } else { "Pending" }
}

fn state_to_k8s(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(terminated) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: terminated.exit.exit_code,
                reason: Some(terminated.exit.reason.to_owned()),
                message: terminated.exit.message.clone(),
                started_at: Some(time(terminated.started_at)),
                finished_at: Some(time(terminated.finished_at)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        },
    }
}

fn condition(kind: &str, status: bool, since: SystemTime) -> PodCondition {
    PodCondition {
        type_: kind.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        last_transition_time: Some(time(since)),
        ..PodCondition::default()
    }
}

fn time(at: SystemTime) -> Time {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let nanoseconds = i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0);
    Time(Timestamp::new(seconds, nanoseconds).unwrap_or(Timestamp::UNIX_EPOCH))
}
