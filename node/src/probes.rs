//! Startup, liveness and readiness probes of a container, on Kubernetes'
//! schedule (initial delay, period, timeout, success and failure
//! thresholds): `httpGet` sends its GET in-process into a service
//! container (no socket); `tcpSocket` opens a connection to the port in
//! the pod's network and closes it, as kubelet does.
//!
//! Time comes from tokio's clock, so tests can pause and advance it. This
//! module decides; the container task acts (a failed liveness or startup
//! probe asks it to restart the container).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::sync::watch;

use crate::pod::PodShared;
use crate::spec::{ProbeCheck, ProbePlan};
use crate::workload::request_body;

/// One probe's attempt.
pub(crate) enum Attempt {
    /// This request, to the container's port (boxed: a request is large
    /// beside nothing).
    Http(Box<http::Request<crate::workload::RequestBody>>),
    /// A connection to the port.
    Tcp,
}

/// Makes one attempt of a probe on a port; implemented by the runtime.
pub(crate) type ProbeSender =
    Arc<dyn Fn(Arc<PodShared>, usize, u16, Attempt, Duration) -> ProbeFuture + Send + Sync>;

/// Whether the attempt succeeded in time (for HTTP, a 2xx or 3xx answer).
pub(crate) type ProbeFuture = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

/// Runs the container's probes until `stopped` turns true.
pub(crate) async fn run_probes(
    send: ProbeSender,
    pod: Arc<PodShared>,
    index: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let probes = async {
        let container = &pod.plan.containers[index];
        if let Some(startup) = &container.startup {
            if !Prober::new(&send, &pod, index, startup)
                .until_started()
                .await
            {
                pod.containers[index].restart.notify_one();
                return;
            }
            let ready = container.readiness.is_none();
            pod.update(index, |record| {
                record.started = true;
                record.ready = ready;
            });
        }
        let readiness = async {
            if let Some(readiness) = &container.readiness {
                Prober::new(&send, &pod, index, readiness).readiness().await;
            }
        };
        let liveness = async {
            match &container.liveness {
                Some(liveness) => {
                    Prober::new(&send, &pod, index, liveness).until_dead().await;
                    pod.containers[index].restart.notify_one();
                }
                // Without a liveness probe nothing ends the probing, so
                // readiness goes on (ending here would stop it too).
                None => std::future::pending().await,
            }
        };
        // Readiness never ends; liveness ends only when the container must restart.
        tokio::select! {
            () = readiness => {}
            () = liveness => {}
        }
    };
    tokio::select! {
        () = probes => {}
        _ = stopped.wait_for(|stopped| *stopped) => {}
    }
}

struct Prober<'a> {
    send: &'a ProbeSender,
    pod: &'a Arc<PodShared>,
    index: usize,
    plan: &'a ProbePlan,
}

impl<'a> Prober<'a> {
    fn new(
        send: &'a ProbeSender,
        pod: &'a Arc<PodShared>,
        index: usize,
        plan: &'a ProbePlan,
    ) -> Self {
        Self {
            send,
            pod,
            index,
            plan,
        }
    }

    async fn probe(&self) -> bool {
        let attempt = match &self.plan.check {
            ProbeCheck::HttpGet { path } => {
                let request = http::Request::get(path.as_str())
                    .header(http::header::USER_AGENT, "flotilla-probe")
                    .body(request_body(Empty::<Bytes>::new()));
                let Ok(request) = request else {
                    return false;
                };
                Attempt::Http(Box::new(request))
            }
            ProbeCheck::TcpSocket => Attempt::Tcp,
        };
        (self.send)(
            self.pod.clone(),
            self.index,
            self.plan.port,
            attempt,
            self.plan.timeout,
        )
        .await
    }

    /// Probes until the success threshold (startup: true) or the failure
    /// threshold (false) is reached.
    async fn until_started(&self) -> bool {
        tokio::time::sleep(self.plan.initial_delay).await;
        let mut failures = 0;
        loop {
            if self.probe().await {
                return true;
            }
            failures += 1;
            if failures >= self.plan.failure_threshold {
                return false;
            }
            tokio::time::sleep(self.plan.period).await;
        }
    }

    /// Probes until `failure_threshold` consecutive failures.
    async fn until_dead(&self) {
        tokio::time::sleep(self.plan.initial_delay).await;
        let mut failures = 0;
        loop {
            if self.probe().await {
                failures = 0;
            } else {
                failures += 1;
                if failures >= self.plan.failure_threshold {
                    return;
                }
            }
            tokio::time::sleep(self.plan.period).await;
        }
    }

    /// Keeps the container's ready flag following the thresholds.
    async fn readiness(&self) {
        tokio::time::sleep(self.plan.initial_delay).await;
        let (mut successes, mut failures) = (0, 0);
        loop {
            if self.probe().await {
                (successes, failures) = (successes + 1, 0);
                if successes >= self.plan.success_threshold {
                    self.set_ready(true);
                }
            } else {
                (successes, failures) = (0, failures + 1);
                if failures >= self.plan.failure_threshold {
                    self.set_ready(false);
                }
            }
            tokio::time::sleep(self.plan.period).await;
        }
    }

    fn set_ready(&self, ready: bool) {
        if self.pod.read(self.index, |record| record.ready) != Some(ready) {
            self.pod.update(self.index, |record| record.ready = ready);
        }
    }
}
