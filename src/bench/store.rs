//! `flotilla bench store`: three raft-store members and three etcd 3.4
//! members on loopback, both fsyncing to the same disk, measured alternately
//! in one run with the same closed-loop load generator.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use flotilla_raft_store::client::Client;

use super::etcd::{EtcdClient, EtcdCluster, find_etcd};
use super::load::{self, KvTarget, LoadResult, Operation};
use super::process::{self, Processes};
use super::report;

#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client counts of the put runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64, 256])]
    put_clients: Vec<usize>,
    /// Client count of the linearizable read run.
    #[arg(long, default_value_t = 64)]
    read_clients: usize,
    /// Where both systems keep their data: a directory on a real disk (not
    /// tmpfs), so that fsync costs what it costs.
    #[arg(long, default_value = "target/bench-store")]
    data_dir: PathBuf,
    /// The report to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

/// Connections per system: clients share them round-robin, as etcd's own
/// benchmark tool shares `--conns` among `--clients`.
const CONNECTIONS_MAX: usize = 8;
/// How long a freshly started cluster may take to accept its first write.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

impl KvTarget for Client {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        Client::put(self, key, value).await?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>) -> Result<bool> {
        Ok(Client::get(self, key).await?.is_some())
    }
}

pub async fn run(args: StoreBenchArgs) -> Result<()> {
    let etcd = find_etcd()?;
    let data_dir = process::fresh_dir(&args.data_dir)?;

    let flotilla = FlotillaCluster::start(&data_dir.join("flotilla"))?;
    let flotilla_targets = flotilla.clients().await?;
    let etcd_addresses: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| Ok((free_tcp_port()?, free_tcp_port()?)))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(data_dir.join("etcd"))?;
    let etcd_cluster = EtcdCluster::start(&etcd, &data_dir.join("etcd"), &etcd_addresses)?;
    let etcd_targets = etcd_clients(&etcd_cluster.client_addresses).await?;

    let duration = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for &clients in &args.put_clients {
        let ours = measure(
            "flotilla",
            &flotilla_targets,
            Operation::Put,
            clients,
            duration,
        )
        .await?;
        let theirs = measure("etcd", &etcd_targets, Operation::Put, clients, duration).await?;
        let plural = if clients == 1 { "" } else { "s" };
        rows.push(Row::new(
            format!("put, {clients} client{plural}"),
            ours,
            theirs,
        ));
    }
    load::preload(&flotilla_targets[0], 64).await?;
    load::preload(&etcd_targets[0], 64).await?;
    let clients = args.read_clients;
    let ours = measure(
        "flotilla",
        &flotilla_targets,
        Operation::Get,
        clients,
        duration,
    )
    .await?;
    let theirs = measure("etcd", &etcd_targets, Operation::Get, clients, duration).await?;
    rows.push(Row::new(
        format!("linearizable get, {clients} clients"),
        ours,
        theirs,
    ));

    drop(etcd_cluster);
    drop(flotilla);
    let body = render(&rows, args.seconds);
    println!("{body}");
    report::write_section(&args.output, "## Store: raft-store vs etcd 3.4", &body)?;
    println!("written to {}", args.output.display());
    Ok(())
}

async fn measure<T: KvTarget>(
    system: &str,
    targets: &[T],
    operation: Operation,
    clients: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let result = load::run(targets, operation, clients, duration).await?;
    eprintln!(
        "{system:>8} {operation:?} x{clients}: {:.0} ops/s, p50 {} us, p99 {} us, {} errors",
        result.ops_per_sec(),
        result.p50_us,
        result.p99_us,
        result.errors
    );
    Ok(result)
}

struct Row {
    load: String,
    ours: LoadResult,
    theirs: LoadResult,
}

impl Row {
    fn new(load: String, ours: LoadResult, theirs: LoadResult) -> Self {
        Row { load, ours, theirs }
    }
}

fn render(rows: &[Row], seconds: u64) -> String {
    let mut out = format!(
        "Run with `cargo run --release --features bench -- bench store` on {}.\n\
         Three members each, on loopback, fsync on, data on the same disk; \
         8-byte keys, 256-byte values; {seconds} s per measurement, systems alternating.\n\n\
         | load | raft-store ops/s | p50 | p99 | etcd ops/s | p50 | p99 | throughput ratio |\n\
         |---|---|---|---|---|---|---|---|\n",
        report::machine_description()
    );
    for row in rows {
        let ratio = row.ours.ops_per_sec() / row.theirs.ops_per_sec().max(f64::MIN_POSITIVE);
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {ratio:.2}x |\n",
            row.load,
            row.ours.ops_per_sec(),
            micros(row.ours.p50_us),
            micros(row.ours.p99_us),
            row.theirs.ops_per_sec(),
            micros(row.theirs.p50_us),
            micros(row.theirs.p99_us),
        ));
    }
    out
}

pub(super) fn micros(value_us: u64) -> String {
    if value_us >= 1_000 {
        format!("{:.1} ms", value_us as f64 / 1_000.0)
    } else {
        format!("{value_us} µs")
    }
}

/// Three `flotilla store` processes, killed when dropped.
struct FlotillaCluster {
    _processes: Processes,
    addresses: Vec<SocketAddr>,
    tls_dir: PathBuf,
}

impl FlotillaCluster {
    fn start(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        let exe = std::env::current_exe().context("finding the flotilla binary")?;
        let addresses: Vec<SocketAddr> = (0..3).map(|_| free_udp_port()).collect::<Result<_>>()?;
        let tls_dir = root.join("ca");
        flotilla_pki::ClusterCa::ensure(&tls_dir)?;
        let mut processes = Processes::default();
        for (index, address) in addresses.iter().enumerate() {
            let id = index as u64 + 1;
            let mut command = Command::new(&exe);
            command
                .arg("store")
                .arg(format!("--id={id}"))
                .arg(format!(
                    "--data-dir={}",
                    root.join(format!("member-{id}")).display()
                ))
                .arg(format!("--listen={address}"))
                .arg(format!("--tls-dir={}", tls_dir.display()));
            for (peer_index, peer) in addresses.iter().enumerate() {
                command.arg(format!("--peer={}={peer}", peer_index + 1));
            }
            command.env("RUST_LOG", "warn");
            processes.spawn(&mut command, &root.join(format!("member-{id}.log")))?;
        }
        Ok(FlotillaCluster {
            _processes: processes,
            addresses,
            tls_dir,
        })
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        let mut clients = Vec::new();
        for index in 0..CONNECTIONS_MAX {
            // Each connection starts at a different member, as etcd's clients
            // spread over endpoints.
            let mut addresses = self.addresses.clone();
            addresses.rotate_left(index % self.addresses.len());
            clients.push(Client::connect(addresses, &self.tls_dir).await?);
        }
        wait_ready(&clients[0]).await?;
        Ok(clients)
    }
}

pub(super) async fn etcd_clients(addresses: &[SocketAddr]) -> Result<Vec<EtcdClient>> {
    let started = Instant::now();
    let mut clients = Vec::new();
    for index in 0..CONNECTIONS_MAX {
        let address = addresses[index % addresses.len()];
        loop {
            match EtcdClient::connect(address).await {
                Ok(client) => {
                    clients.push(client);
                    break;
                }
                Err(error) if started.elapsed() > CLUSTER_READY_TIMEOUT => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    wait_ready(&clients[0]).await?;
    Ok(clients)
}

/// Polls with a write until the cluster has a leader, within a bound.
async fn wait_ready<T: KvTarget>(target: &T) -> Result<()> {
    let started = Instant::now();
    loop {
        match target.put(b"bench-ready".to_vec(), Vec::new()).await {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() > CLUSTER_READY_TIMEOUT => {
                bail!("cluster not ready after {CLUSTER_READY_TIMEOUT:?}: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(super) fn free_tcp_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) fn free_udp_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}
