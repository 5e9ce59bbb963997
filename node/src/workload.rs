//! The two kinds of workload and how each runs, told apart by what the
//! compiled code exports:
//! - a component exporting `wasi:http/incoming-handler` is a **service**: it
//!   is pre-instantiated once, and every request gets a fresh instance;
//! - a component exporting `wasi:cli/run`, or a core module exporting
//!   `_start` (WASI preview 1), is a **process**: it runs its entry point once
//!   per container start, with argv, env and an exit code.
//!
//! This module knows sandboxes and instances; restart policies, states and
//! pods belong to the lifecycle above it.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use wasmtime::{Engine, InstancePre, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::engine::Compiled;
use crate::error::{Error, Result, describe};
use crate::sandbox::{ComponentState, CoreState, HasLimits, LimitHit, SandboxSpec, install_limits};

/// Exit code reported when a limit or a stop kills an instance (SIGKILL's,
/// as Kubernetes reports for OOM kills).
pub const KILLED_EXIT_CODE: i32 = 137;

/// Exit code reported when a guest traps (SIGABRT's: a trap is the guest
/// aborting).
pub const TRAP_EXIT_CODE: i32 = 134;

/// The kind of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// A `wasi:http/proxy` component.
    Service,
    /// A `wasi:cli/command` component.
    Command,
    /// A WASI preview 1 core module.
    CoreProcess,
}

/// Compiled code linked against the node's host functions, ready to
/// instantiate many times.
#[derive(Clone)]
pub(crate) enum Prepared {
    Service(ProxyPre<ComponentState>),
    Command(CommandPre<ComponentState>),
    Core(InstancePre<CoreState>),
}

impl Prepared {
    pub(crate) fn kind(&self) -> WorkloadKind {
        match self {
            Prepared::Service(_) => WorkloadKind::Service,
            Prepared::Command(_) => WorkloadKind::Command,
            Prepared::Core(_) => WorkloadKind::CoreProcess,
        }
    }
}

/// The host functions guests may import. Built once per node.
pub(crate) struct Linkers {
    component: wasmtime::component::Linker<ComponentState>,
    core: wasmtime::Linker<CoreState>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> Result<Self> {
        let engine_error = |error: wasmtime::Error| Error::Engine {
            reason: describe(&error),
        };
        let mut component = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component).map_err(engine_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component)
            .map_err(engine_error)?;
        crate::sockets::add_to_linker(&mut component, ComponentState::sockets)
            .map_err(engine_error)?;
        let mut core = wasmtime::Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut core, |state: &mut CoreState| &mut state.wasi)
            .map_err(engine_error)?;
        Ok(Self { component, core })
    }

    /// Links compiled code, deciding its kind from its exports.
    pub(crate) fn prepare(&self, engine: &Engine, compiled: &Compiled) -> Result<Prepared> {
        let link_error = |error: wasmtime::Error| Error::Link {
            reason: describe(&error),
        };
        match compiled {
            Compiled::Component(component) => {
                // Linking first: a missing import is the clearer report.
                let pre = self
                    .component
                    .instantiate_pre(component)
                    .map_err(link_error)?;
                let kind = component_kind(engine, component)?;
                Ok(match kind {
                    WorkloadKind::Service => {
                        Prepared::Service(ProxyPre::new(pre).map_err(link_error)?)
                    }
                    _ => Prepared::Command(CommandPre::new(pre).map_err(link_error)?),
                })
            }
            Compiled::Module(module) => {
                if module.get_export("_start").is_none() {
                    return Err(Error::UnsupportedWorkload {
                        reason: "core module exports no `_start` entry point".to_owned(),
                    });
                }
                Ok(Prepared::Core(
                    self.core.instantiate_pre(module).map_err(link_error)?,
                ))
            }
        }
    }
}

fn component_kind(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> Result<WorkloadKind> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports
        .iter()
        .any(|name| name.starts_with("wasi:http/incoming-handler@0.2"))
    {
        return Ok(WorkloadKind::Service);
    }
    if exports
        .iter()
        .any(|name| name.starts_with("wasi:cli/run@0.2"))
    {
        return Ok(WorkloadKind::Command);
    }
    Err(Error::UnsupportedWorkload {
        reason: format!(
            "component exports neither wasi:http/incoming-handler nor wasi:cli/run (exports: {})",
            exports.join(", ")
        ),
    })
}

/// How a process instance ended, as a container's terminated state reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code (see [`KILLED_EXIT_CODE`], [`TRAP_EXIT_CODE`]).
    pub exit_code: i32,
    /// Kubernetes' reason: `Completed`, `Error`, `OOMKilled` or `DeadlineExceeded`.
    pub reason: &'static str,
    /// What happened, for a failure.
    pub message: Option<String>,
}

impl Exit {
    fn code(exit_code: i32) -> Self {
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        Self {
            exit_code,
            reason,
            message: None,
        }
    }

    /// Classifies an error that ended an instance.
    pub(crate) fn from_error(error: &wasmtime::Error, hit: Option<&LimitHit>) -> Self {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            return Self::code(exit.0);
        }
        match hit {
            Some(LimitHit::Memory {
                limit_bytes,
                requested_bytes,
            }) => Self {
                exit_code: KILLED_EXIT_CODE,
                reason: "OOMKilled",
                message: Some(format!(
                    "memory limit of {limit_bytes} bytes exceeded ({requested_bytes} bytes requested)"
                )),
            },
            Some(LimitHit::Deadline) => Self {
                exit_code: KILLED_EXIT_CODE,
                reason: "DeadlineExceeded",
                message: Some("ran past its deadline".to_owned()),
            },
            None => Self {
                exit_code: TRAP_EXIT_CODE,
                reason: "Error",
                message: Some(describe(error)),
            },
        }
    }
}

/// Runs a process instance to its end. `Err` means it could not start
/// (the sandbox could not be built).
pub(crate) async fn run_process(
    prepared: &Prepared,
    spec: &SandboxSpec,
    deadline: Option<Instant>,
) -> Result<Exit> {
    match prepared {
        Prepared::Command(pre) => {
            let mut store = Store::new(pre.engine(), ComponentState::new(spec, deadline)?);
            install_limits(&mut store);
            let result = match pre.instantiate_async(&mut store).await {
                Ok(command) => command.wasi_cli_run().call_run(&mut store).await,
                Err(error) => Err(error),
            };
            Ok(match result {
                Ok(Ok(())) => Exit::code(0),
                Ok(Err(())) => Exit::code(1),
                Err(error) => Exit::from_error(&error, store.data_mut().limits().hit()),
            })
        }
        Prepared::Core(pre) => {
            let mut store = Store::new(pre.module().engine(), CoreState::new(spec, deadline)?);
            install_limits(&mut store);
            let result = run_start(pre, &mut store).await;
            Ok(match result {
                Ok(()) => Exit::code(0),
                Err(error) => Exit::from_error(&error, store.data_mut().limits().hit()),
            })
        }
        Prepared::Service(_) => Err(Error::UnsupportedWorkload {
            reason: "a service has no entry point to run".to_owned(),
        }),
    }
}

async fn run_start(
    pre: &InstancePre<CoreState>,
    store: &mut Store<CoreState>,
) -> wasmtime::Result<()> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
    start.call_async(&mut *store, ()).await
}

/// Body of a response from a service.
pub type ResponseBody = HyperOutgoingBody;

/// Body of a request to a service: any byte body.
pub type RequestBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// Serves one request with a fresh instance of a service. The response
/// returns once the guest sets it; the body streams while the instance runs
/// on (bounded by the same deadline).
pub(crate) async fn serve_request(
    pre: &ProxyPre<ComponentState>,
    spec: &SandboxSpec,
    request: http::Request<RequestBody>,
    deadline: Option<Instant>,
    mut killed: tokio::sync::watch::Receiver<bool>,
) -> Result<http::Response<ResponseBody>, ServeError> {
    let setup_error = |error: wasmtime::Error| ServeError::Setup(describe(&error));
    let mut store = Store::new(
        pre.engine(),
        ComponentState::new(spec, deadline)
            .map_err(|error| ServeError::Setup(error.to_string()))?,
    );
    install_limits(&mut store);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(setup_error)?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(setup_error)?;
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        let handle = async {
            match pre.instantiate_async(&mut store).await {
                Ok(proxy) => {
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await
                }
                Err(error) => Err(error),
            }
        };
        // Dropping the call when the container is killed ends the instance
        // wherever it is; its response, if not yet set, is dropped with it.
        let result = tokio::select! {
            result = handle => result,
            _ = killed.wait_for(|killed| *killed) => return Err(Exit {
                exit_code: KILLED_EXIT_CODE,
                reason: "Error",
                message: Some("container stopped while the request ran".to_owned()),
            }),
        };
        result.map_err(|error| Exit::from_error(&error, store.data_mut().limits().hit()))
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(ServeError::Guest(Exit {
            exit_code: 0,
            reason: "Error",
            message: Some(format!("guest answered with error code {code:?}")),
        })),
        // The guest dropped the outparam without setting it: the task says why.
        Err(_) => Err(match task.await {
            Ok(Err(exit)) => ServeError::Guest(exit),
            Ok(Ok(())) => ServeError::Guest(Exit {
                exit_code: 0,
                reason: "Error",
                message: Some("guest returned without setting a response".to_owned()),
            }),
            Err(join_error) => ServeError::Setup(format!("request task failed: {join_error}")),
        }),
    }
}

/// Why a request did not get a response.
#[derive(Debug)]
pub(crate) enum ServeError {
    /// The host could not set up the instance.
    Setup(String),
    /// The instance failed: trapped, hit a limit, or answered with an error.
    Guest(Exit),
}

/// Wraps any body whose data is `Bytes` as a [`RequestBody`].
pub fn request_body<B>(body: B) -> RequestBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    body.map_err(Into::into).boxed_unsync()
}
