//! The control loops of `flotilla server`: the scheduler, the garbage
//! collector and the Deployment and ReplicaSet controllers so far; the
//! other workload and cluster controllers join them here.
//!
//! They run on one member at a time, the holder of a Lease (`election`),
//! and only through the Kubernetes API, as kube-controller-manager does:
//! each member's loops talk to that member's own API server with kube-rs,
//! so they see exactly what users see and are bound by the same
//! validation and optimistic concurrency. They know nothing of the store.

pub mod deployment;
pub mod election;
pub mod events;
pub mod gc;
pub mod replicaset;
pub mod scheduler;
pub mod selector;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::election::{ElectionConfig, Elector};

/// Who this member is in the election, and its timings.
#[derive(Clone, Debug)]
pub struct ControllersConfig {
    /// Unique among the members: the Lease's `holderIdentity`.
    pub identity: String,
    pub election: ElectionConfig,
}

/// The elected loops of one member; stopped when dropped.
pub struct Controllers {
    elector: Elector,
    task: JoinHandle<()>,
}

impl Controllers {
    pub fn start(client: kube::Client, config: ControllersConfig) -> Self {
        let elector = Elector::start(client.clone(), config.identity, config.election);
        let leading = elector.leading.clone();
        let task = tokio::spawn(lead_while_elected(client, leading));
        Controllers { elector, task }
    }

    /// Whether this member leads now, and when that changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.elector.leading.clone()
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the loops whenever `leading` says so, and stops them the moment it
/// does not.
async fn lead_while_elected(client: kube::Client, mut leading: watch::Receiver<bool>) {
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("starting the controllers");
        let loops = tokio::spawn(run_loops(client.clone()));
        let elected = loop {
            if leading.changed().await.is_err() {
                break false;
            }
            if !*leading.borrow_and_update() {
                break true;
            }
        };
        loops.abort();
        let _ = loops.await;
        if !elected {
            return;
        }
        tracing::info!("stopped the controllers: no longer the leader");
    }
}

async fn run_loops(client: kube::Client) {
    tokio::join!(
        gc::GarbageCollector::new(client.clone()).run(),
        deployment::run(client.clone()),
        replicaset::run(client.clone()),
        scheduler::run(client),
    );
}
