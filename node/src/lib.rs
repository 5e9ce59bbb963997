//! `flotilla-node` runs Wasm pods in wasmtime sandboxes: the kubelet and the
//! container runtime in one.
//!
//! Start reading at [`NodeRuntime`] (in `runtime.rs`): it takes Kubernetes
//! `Pod` objects, runs their containers and reports `PodStatus`es, logs and
//! in-process HTTP. Below it:
//! - `engine.rs`: the one wasmtime engine and the compiled-artifact cache;
//! - `source.rs`: image references to verified module bytes;
//! - `spec.rs`: a `Pod` to a plain [`PodPlan`];
//! - `workload.rs`: services (`wasi:http/proxy`) and processes (`wasi:cli`
//!   commands, WASI preview 1 modules);
//! - `sandbox.rs`: what a guest is given, and the limits it runs under;
//! - `sockets/`: the guest's `wasi:sockets` TCP and name lookups, carried
//!   by the pod network instead of the host's;
//! - `pod.rs`: the container lifecycle (restarts, back-off, stop);
//! - `probes.rs`, `logs.rs`, `status.rs`;
//! - `net/`: the pod network: routing guests' requests to siblings, pods
//!   and Services, the QUIC mesh between nodes, NodePort listeners;
//! - `agent/`: the node agent (`flotilla agent`), which registers the node
//!   with the API server and runs the pods bound to it in a [`NodeRuntime`].
//!
//! Architecture invariant: this crate is a client of the API, as kubelet is.
//! It never talks to the store, and the runtime knows nothing of the API
//! server: the agent hands it pods and publishes what it reports.
//!
//! ```no_run
//! # async fn example(pod: k8s_openapi::api::core::v1::Pod) -> flotilla_node::Result<()> {
//! use std::sync::Arc;
//! use flotilla_node::{LocalSource, NodeConfig, NodeRuntime, PodInputs};
//!
//! let runtime = NodeRuntime::new(NodeConfig::new("/var/lib/flotilla"), Arc::new(LocalSource::files_only()))?;
//! let handle = runtime.run_pod(&pod, &PodInputs::default())?;
//! println!("{:?}", handle.status().phase);
//! runtime.stop_pod(handle.uid(), None).await?;
//! # Ok(())
//! # }
//! ```

pub mod agent;
mod engine;
mod error;
pub mod guests;
mod logs;
pub mod net;
mod pod;
mod probes;
mod runtime;
mod sandbox;
pub mod sockets;
mod source;
mod spec;
mod status;
mod workload;

pub use engine::{
    ArtifactOrigin, Compiled, EPOCH_TICK_MS, EngineConfig, MEMORY_BYTES_MAX, NodeEngine,
    PoolConfig, TABLE_ELEMENTS_MAX, WASM_STACK_BYTES_MAX,
};
pub use error::{Error, Result};
pub use logs::{
    ContainerLog, LOG_FILE_BYTES_MAX, LOG_LINE_BYTES_MAX, LOG_RING_BYTES_MAX, LogLine, LogQuery,
    LogStream,
};
pub use pod::{
    BACKOFF_INITIAL_SECS, BACKOFF_MAX_SECS, BACKOFF_RESET_SECS, BackoffConfig, PodHandle,
};
pub use runtime::{
    LogFollower, NodeConfig, NodeRuntime, REQUEST_TIMEOUT_SECS_DEFAULT, WeakNodeRuntime,
};
pub use sandbox::{DenyOutgoing, OutgoingFuture, OutgoingHttp};
pub use source::{ImageRef, LocalSource, MODULE_BYTES_MAX, ModuleSource, fetch_verified};
pub use spec::{
    ContainerPlan, MountPlan, PodInputs, PodPlan, ProbeCheck, ProbePlan,
    REQUEST_TIMEOUT_ANNOTATION, RestartPolicy, VolumePlan,
};
pub use status::{State, Terminated};
/// Types an [`OutgoingHttp`] implementation works with.
pub use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};
pub use workload::{
    Exit, KILLED_EXIT_CODE, RequestBody, ResponseBody, TRAP_EXIT_CODE, WorkloadKind, request_body,
};
