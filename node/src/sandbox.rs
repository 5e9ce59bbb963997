//! One sandbox: the wasmtime store state of one instance, with the limits
//! enforced on it and the WASI context that decides what the guest sees.
//!
//! A guest gets exactly what its container spec gives: argv, the listed
//! environment, stdout/stderr into its log, its volume mounts as preopened
//! directories. No host files beyond those, no host environment, no host
//! sockets and no host name lookups: outgoing `wasi:http` requests go to
//! an [`OutgoingHttp`] the node supplies (by default one that refuses
//! them), and `wasi:sockets` TCP and name lookups to its
//! [`PodSockets`](crate::sockets::PodSockets), if it has one.
//!
//! This module knows nothing of pods' lifecycles: it builds stores.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::engine::TABLE_ELEMENTS_MAX;
use crate::error::{Error, Result};
use crate::logs::{ContainerLog, LogPipe, LogStream};
use crate::sockets::{PodSockets, SocketsCtx, SocketsView};

/// A response future from an [`OutgoingHttp`].
pub type OutgoingFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send>,
>;

/// Carries a guest's outgoing `wasi:http` requests. The pod network
/// implements this (routing to siblings, pods, Services or egress); until
/// then [`DenyOutgoing`] refuses every request.
pub trait OutgoingHttp: Send + Sync + 'static {
    /// Sends `request` on behalf of the pod `pod_uid`.
    fn send(
        &self,
        pod_uid: &str,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingFuture;

    /// The carrier of guests' raw TCP and name lookups (`wasi:sockets`),
    /// if this one has them; without, every socket is refused.
    fn sockets(&self) -> Option<Arc<dyn PodSockets>> {
        None
    }
}

/// Refuses all outgoing HTTP: a guest reaches nothing it was not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyOutgoing;

impl OutgoingHttp for DenyOutgoing {
    fn send(
        &self,
        _: &str,
        _: http::Request<WasiBody>,
        _: Option<RequestOptions>,
    ) -> OutgoingFuture {
        Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Which limit ended an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitHit {
    /// The instance's memories together would exceed the memory limit.
    Memory {
        limit_bytes: u64,
        requested_bytes: u64,
    },
    /// The deadline (request timeout or active deadline) passed while it ran.
    Deadline,
}

/// Limits of one instance, enforced through the store's resource limiter
/// and epoch callback.
#[derive(Debug)]
pub struct GuestLimits {
    memory_limit_bytes: Option<u64>,
    memory_bytes: u64,
    cpu_limit_millis: Option<u64>,
    epoch_tick: Duration,
    /// When the guest last started running: at instantiation, or when it
    /// came back from a throttling pause.
    resumed_at: Instant,
    deadline: Option<Instant>,
    hit: Option<LimitHit>,
}

impl GuestLimits {
    pub(crate) fn new(spec: &SandboxSpec, deadline: Option<Instant>) -> Self {
        Self {
            memory_limit_bytes: spec.memory_limit_bytes,
            memory_bytes: 0,
            cpu_limit_millis: spec.cpu_limit_millis,
            epoch_tick: spec.epoch_tick,
            resumed_at: Instant::now(),
            deadline,
            hit: None,
        }
    }

    /// The limit that ended the instance, if one did.
    pub(crate) fn hit(&self) -> Option<&LimitHit> {
        self.hit.as_ref()
    }

    /// Called each epoch tick the guest spends running. Past the deadline it
    /// traps; otherwise it yields to the executor so one guest never holds a
    /// worker thread, sleeping long enough to keep the guest within its CPU
    /// limit (as CFS quotas do, in proportion to the time it ran).
    fn on_epoch_tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let now = Instant::now();
        if let Some(deadline) = self.deadline
            && now >= deadline
        {
            self.hit = Some(LimitHit::Deadline);
            return Err(wasmtime::Error::msg("deadline exceeded"));
        }
        // The ticker is global, so a tick can land just after the guest
        // started: charge the time it ran, not a whole tick. Nor more than
        // a tick: longer means it was waiting (on I/O) part of the time.
        let ran = now
            .saturating_duration_since(self.resumed_at)
            .min(self.epoch_tick);
        match self.throttle_pause(ran) {
            Some(pause) => {
                self.resumed_at = now + pause;
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep(pause)),
                ))
            }
            None => {
                self.resumed_at = now;
                Ok(UpdateDeadline::Yield(1))
            }
        }
    }

    /// How long to pause after running for `ran` to stay within the CPU
    /// limit; none at a limit of one core or more (a guest uses one thread).
    fn throttle_pause(&self, ran: Duration) -> Option<Duration> {
        let millis = self.cpu_limit_millis.filter(|millis| *millis < 1000)?;
        Some(ran.mul_f64((1000 - millis) as f64 / millis as f64))
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_bytes - current as u64 + desired as u64;
        if let Some(limit_bytes) = self.memory_limit_bytes
            && total > limit_bytes
        {
            self.hit = Some(LimitHit::Memory {
                limit_bytes,
                requested_bytes: total,
            });
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {limit_bytes} bytes exceeded: {total} bytes requested"
            )));
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Store state that carries [`GuestLimits`].
pub(crate) trait HasLimits: Send + 'static {
    fn limits(&mut self) -> &mut GuestLimits;
}

/// Installs the limiter and the epoch callback on a fresh store.
pub(crate) fn install_limits<T: HasLimits>(store: &mut Store<T>) {
    store.limiter(|state| state.limits());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| context.data_mut().limits().on_epoch_tick());
}

/// What one container's instances are given; shared by every instance of it.
#[derive(Clone)]
pub struct SandboxSpec {
    /// The pod's uid (for the outgoing HTTP carrier).
    pub pod_uid: String,
    /// argv, program name first.
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Host directories preopened at guest paths.
    pub preopens: Vec<Preopen>,
    /// Where stdout and stderr go.
    pub log: Arc<ContainerLog>,
    /// Cap on the sum of the instance's memories.
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// The engine's epoch tick (for CPU throttling).
    pub epoch_tick: Duration,
    /// Carrier of outgoing HTTP.
    pub outgoing: Arc<dyn OutgoingHttp>,
    /// Carrier of raw TCP and name lookups.
    pub sockets: Arc<dyn PodSockets>,
}

/// A host directory the guest sees at `guest_path`.
#[derive(Debug, Clone)]
pub struct Preopen {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

impl SandboxSpec {
    fn wasi_builder(&self) -> Result<WasiCtxBuilder> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&self.argv)
            .envs(&self.env)
            .stdout(LogPipe::new(self.log.clone(), LogStream::Stdout))
            .stderr(LogPipe::new(self.log.clone(), LogStream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for preopen in &self.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&preopen.host_path, &preopen.guest_path, perms)
                .map_err(|error| Error::InvalidSpec {
                    reason: format!("cannot open volume at {}: {error}", preopen.guest_path),
                })?;
        }
        Ok(builder)
    }
}

/// Store state of a component instance (WASI 0.2, optionally `wasi:http`).
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: HttpHooks,
    sockets: SocketsCtx,
    limits: GuestLimits,
}

impl ComponentState {
    pub(crate) fn new(spec: &SandboxSpec, deadline: Option<Instant>) -> Result<Self> {
        Ok(Self {
            wasi: spec.wasi_builder()?.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: HttpHooks {
                pod_uid: spec.pod_uid.clone(),
                outgoing: spec.outgoing.clone(),
            },
            sockets: SocketsCtx::new(spec.pod_uid.clone(), spec.sockets.clone()),
            limits: GuestLimits::new(spec, deadline),
        })
    }
}

impl ComponentState {
    /// The view our `wasi:sockets` host functions work on.
    pub(crate) fn sockets(&mut self) -> SocketsView<'_> {
        SocketsView {
            table: &mut self.table,
            ctx: &self.sockets,
        }
    }
}

impl HasLimits for ComponentState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Store state of a core module instance (WASI preview 1).
pub(crate) struct CoreState {
    pub(crate) wasi: WasiP1Ctx,
    limits: GuestLimits,
}

impl CoreState {
    pub(crate) fn new(spec: &SandboxSpec, deadline: Option<Instant>) -> Result<Self> {
        Ok(Self {
            wasi: spec.wasi_builder()?.build_p1(),
            limits: GuestLimits::new(spec, deadline),
        })
    }
}

impl HasLimits for CoreState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

/// Routes a guest's outgoing requests to the node's [`OutgoingHttp`].
struct HttpHooks {
    pod_uid: String,
    outgoing: Arc<dyn OutgoingHttp>,
}

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_io: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), wasmtime_wasi_http::Error>>
            + Send,
    > {
        let response = self.outgoing.send(&self.pod_uid, request, options);
        Box::new(async move {
            let response = response.await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu_limit_millis: Option<u64>, memory_limit_bytes: Option<u64>) -> GuestLimits {
        GuestLimits {
            memory_limit_bytes,
            memory_bytes: 0,
            cpu_limit_millis,
            epoch_tick: Duration::from_millis(10),
            resumed_at: Instant::now(),
            deadline: None,
            hit: None,
        }
    }

    #[test]
    fn cpu_limits_pause_in_proportion_to_the_time_run() {
        let tick = Duration::from_millis(10);
        assert_eq!(
            limits(Some(250), None).throttle_pause(tick),
            Some(Duration::from_millis(30))
        );
        assert_eq!(
            limits(Some(500), None).throttle_pause(tick),
            Some(Duration::from_millis(10))
        );
        // A guest that ran a fraction of a tick pauses a fraction as long.
        assert_eq!(
            limits(Some(500), None).throttle_pause(Duration::from_micros(300)),
            Some(Duration::from_micros(300))
        );
        assert_eq!(limits(Some(1000), None).throttle_pause(tick), None);
        assert_eq!(limits(None, None).throttle_pause(tick), None);
    }

    #[tokio::test]
    async fn a_tick_right_after_the_start_charges_only_the_time_run() {
        let mut limits = limits(Some(500), None);
        let before = Instant::now();
        limits.resumed_at = before;
        assert!(limits.on_epoch_tick().is_ok());
        let after = Instant::now();
        // At 500 millicores it pauses as long as it ran, at most
        // `after - before`, not a whole 10 ms tick; its next run is counted
        // from the end of that pause.
        assert!(
            limits.resumed_at <= after + (after - before),
            "paused until {:?} after the tick",
            limits.resumed_at - after
        );
    }

    #[test]
    fn the_memory_limit_counts_every_memory_of_the_instance() {
        let mut limits = limits(None, Some(3 << 16));
        assert!(limits.memory_growing(0, 1 << 16, None).unwrap());
        assert!(
            limits.memory_growing(0, 2 << 16, None).unwrap(),
            "a second memory fits the rest"
        );
        assert!(
            limits.memory_growing(1 << 16, 2 << 16, None).is_err(),
            "together they would exceed it"
        );
        assert!(matches!(
            limits.hit(),
            Some(LimitHit::Memory {
                limit_bytes: 196608,
                requested_bytes: 262144
            })
        ));
    }

    #[tokio::test]
    async fn a_passed_deadline_traps() {
        let mut limits = limits(None, None);
        assert!(limits.on_epoch_tick().is_ok());
        limits.deadline = Some(Instant::now());
        assert!(limits.on_epoch_tick().is_err());
        assert_eq!(limits.hit(), Some(&LimitHit::Deadline));
    }
}
