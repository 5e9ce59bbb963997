//! `flotilla bench …`: benchmarks that run Flotilla and a real peer side by
//! side in one run and record the ratio in `BENCHMARKS.md`.
//!
//! Benchmarks are not tests: they take minutes, and their numbers depend on
//! the machine, which every report names.

mod api;
mod etcd;
mod load;
mod network;
mod node;
mod node_http;
mod node_pods;
mod process;
mod report;
mod scheduler;
mod startup;
mod store;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Three raft-store members against three etcd 3.4 members, both
    /// fsyncing, on loopback: puts at 1/16/64/256 clients and linearizable
    /// reads at 64 clients.
    Store(store::StoreBenchArgs),
    /// The node runtime serving examples/hello-http against `wasmtime
    /// serve` (both under `hey` at 1 and 50 connections), pod start times
    /// (cold, from the artifact cache, warm) and density (resident memory
    /// and start time at 100, 1,000 and 10,000 pods).
    Node(node::NodeBenchArgs),
    /// Three `flotilla server` processes against three etcd 3.4 members:
    /// get, list (500 items), create and update at 64 clients with 10,000
    /// objects stored and 1,000 watches open, then the watch fan-out delay.
    Api(api::ApiBenchArgs),
    /// Scheduling throughput as Kubernetes' `scheduler_perf` measures it:
    /// 1,000 and 5,000 simulated nodes, 10,000 and 50,000 pending pods,
    /// every binding persisted through raft-store.
    Scheduler(scheduler::SchedulerBenchArgs),
    /// A 1,000-replica Deployment of examples/hello-http on one `flotilla
    /// server` and two `flotilla agent` processes: create to all ready, and
    /// each pod's ADDED to Running and Ready (p50, p99), against
    /// Kubernetes' pod-startup SLO.
    Startup(startup::StartupBenchArgs),
    /// The same request four ways on two in-process nodes: pod to pod on
    /// one node, a Service on the same node, a Service across nodes over
    /// the QUIC mesh, and direct HTTP over loopback as the baseline:
    /// req/s, p50 and p99 at 1 and 50 concurrent requests.
    Network(network::NetworkBenchArgs),
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Store(args) => store::run(args).await,
        BenchCommand::Node(args) => node::run(args).await,
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Scheduler(args) => scheduler::run(args).await,
        BenchCommand::Startup(args) => startup::run(args).await,
        BenchCommand::Network(args) => network::run(args).await,
    }
}
