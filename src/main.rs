//! The `flotilla` binary: command-line parsing and process wiring only. Each
//! process subcommand hands its flags to the crate that does the work; the
//! client verbs (`apply`, `get`, …) live in `cli/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use flotilla_raft_store::member::{Member, MemberConfig, PeerSpec};

#[cfg(feature = "bench")]
mod bench;
mod cli;
mod up;

/// Flotilla: a WebAssembly-native orchestrator that speaks the Kubernetes API.
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one standalone raft-store member (for benchmarks and fault tests).
    ///
    /// Example, a three-member store on one machine:
    ///
    ///   flotilla store --id 1 --data-dir /tmp/s1 --listen 127.0.0.1:7001 \
    ///       --peer 1=127.0.0.1:7001 --peer 2=127.0.0.1:7002 --peer 3=127.0.0.1:7003 \
    ///       --tls-dir /tmp/ca
    Store(StoreArgs),
    /// Run one control-plane member: the replicated store and the
    /// Kubernetes API on top of it. Writes a kubeconfig for kubectl into the
    /// data directory.
    ///
    /// Example, a one-member cluster on this machine:
    ///
    ///   flotilla server --data-dir /tmp/flotilla
    ///   kubectl --kubeconfig /tmp/flotilla/kubeconfig get namespaces
    Server(ServerArgs),
    /// Run one node: register it with the API server, renew its lease, run
    /// the pods bound to it, and serve their logs to `kubectl logs`.
    ///
    /// Example, beside `flotilla server --data-dir /tmp/flotilla`:
    ///
    ///   flotilla agent --kubeconfig /tmp/flotilla/kubeconfig --data-dir /tmp/node-1
    Agent(AgentArgs),
    /// Run a whole cluster in this process, on loopback: one server and one
    /// node, with the state in a data directory that the next run resumes.
    Up(up::UpArgs),
    /// Print a kubeconfig that points kubectl at a Flotilla API server;
    /// with --user, one holding a new certificate for that user, issued
    /// from the cluster CA of a server's data directory (as `kubeadm
    /// kubeconfig user` does on a control-plane machine).
    ///
    /// Example, a kubeconfig for alice of team-a, valid for 30 days:
    ///
    ///   flotilla kubeconfig --data-dir /var/lib/flotilla --server https://A:6443 \
    ///       --user alice --group team-a --ttl 30d > alice.kubeconfig
    Kubeconfig(KubeconfigArgs),
    /// Run a benchmark of Flotilla beside a real peer and record it in BENCHMARKS.md.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    #[command(flatten)]
    Client(cli::Verb),
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// This member's id: a non-zero integer, unique in the cluster.
    #[arg(long)]
    id: u64,
    /// Where the raft log, snapshots and certificates are kept.
    #[arg(long)]
    data_dir: PathBuf,
    /// The UDP address members and clients reach this member at (QUIC).
    #[arg(long)]
    listen: SocketAddr,
    /// A member of the initial cluster, as ID=HOST:PORT. Repeat for each
    /// member, this one included. Ignored once the data directory holds a log.
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    peers: Vec<PeerSpec>,
    /// Start empty and wait to be added to a running cluster (see
    /// `member add`) instead of bootstrapping a new one.
    #[arg(long)]
    join: bool,
    /// A directory with the cluster CA (`ca.pem`, `ca-key.pem`). Every member
    /// of one cluster must use the same CA. It is created when missing, so
    /// start one member first, or copy its CA to the others' machines.
    #[arg(long)]
    tls_dir: PathBuf,
    /// Raft tick interval in milliseconds (elections time out after 10 ticks).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Where the store's log, the cluster CA and the kubeconfig are kept.
    #[arg(long, default_value = "flotilla-data")]
    data_dir: PathBuf,
    /// The TCP address of the Kubernetes API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_listen: SocketAddr,
    /// Another address or DNS name clients reach the API at, for its
    /// certificate (loopback is always included). Repeat for each.
    #[arg(long = "api-san", value_name = "HOST")]
    api_sans: Vec<String>,
    /// Serve the API over plain HTTP without client certificates. Allowed
    /// only on a loopback address.
    #[arg(long)]
    plain_http: bool,
    /// This member's store id (see `flotilla store`). A server that joins
    /// is given one instead.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Join the cluster of the server at this URL (`https://HOST:6443`)
    /// instead of creating one. Needs --token. Ignored once the data
    /// directory holds a store.
    #[arg(long, value_name = "URL", requires = "token")]
    join: Option<String>,
    /// A servers' join token (`flotilla token create --server`, or a
    /// server's `<data-dir>/server-token`).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long the join tokens a server writes into its data directory
    /// (`token` for agents, `server-token` for servers) are valid; `0`
    /// for ever. A server writes new ones when it starts after they expired.
    #[arg(long, default_value = "24h", value_parser = cli::duration::parse_duration)]
    token_ttl: std::time::Duration,
    /// How long the certificates a server issues for itself are valid:
    /// the API's, its store member's, its components' and the admin
    /// kubeconfig's (kubeadm's certificateValidityPeriod). They are issued
    /// again at every start. At least 10m.
    #[arg(long, default_value = "365d", value_parser = certificate_validity)]
    cert_validity: std::time::Duration,
    /// How long node certificates are valid (kube-controller-manager's
    /// --cluster-signing-duration); agents renew theirs at 70-90 % of it
    /// without a new token. At least 10m.
    #[arg(long, default_value = "365d", value_parser = certificate_validity)]
    cluster_signing_duration: std::time::Duration,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1), as
    /// kube-apiserver's flag of this name: the resources it names (Secrets)
    /// are stored encrypted with its first provider (aesgcm, secretbox or
    /// identity) and read with any of them. Every server of a cluster must
    /// be given the same keys.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// The UDP address of this member's store endpoint (QUIC).
    #[arg(long, default_value = "127.0.0.1:7001")]
    store_listen: SocketAddr,
    /// A store member of the initial cluster, as ID=HOST:PORT; repeat for
    /// each. Without any, this server is a cluster of one.
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    peers: Vec<PeerSpec>,
    #[command(flatten)]
    timings: ControlTimings,
    /// Where Services' ClusterIPs come from (kube-apiserver's
    /// --service-cluster-ip-range). Every server must be given the same.
    #[arg(long, default_value_t = flotilla_control::api::services::SERVICE_CIDR_DEFAULT)]
    service_cidr: ipnet::Ipv4Net,
    /// Where Services' node ports come from, as FIRST-LAST
    /// (kube-apiserver's flag of the same name). Every server must be
    /// given the same.
    #[arg(long, default_value_t = flotilla_control::api::nodeports::NODE_PORT_RANGE_DEFAULT)]
    service_node_port_range: flotilla_control::api::nodeports::NodePortRange,
    /// The range nodes' pod ranges are cut from (kube-controller-manager's
    /// --cluster-cidr).
    #[arg(long, default_value_t = flotilla_control::controllers::ipam::CLUSTER_CIDR_DEFAULT)]
    cluster_cidr: ipnet::Ipv4Net,
    /// The prefix length of each node's pod range
    /// (kube-controller-manager's --node-cidr-mask-size).
    #[arg(long, default_value_t = flotilla_control::controllers::ipam::NODE_MASK_DEFAULT)]
    node_cidr_mask_size: u8,
    #[command(flatten)]
    audit: AuditArgs,
}

/// Kubernetes auditing, as kube-apiserver's flags of the same names.
#[derive(Args, Debug, Clone)]
struct AuditArgs {
    /// An audit.k8s.io/v1 Policy (YAML or JSON): which requests are
    /// recorded, and how much of each. Without one nothing is recorded.
    #[arg(long, value_name = "FILE", requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events are written, one JSON line each; `-` is
    /// standard output.
    #[arg(long, value_name = "PATH")]
    audit_log_path: Option<PathBuf>,
    /// The size in megabytes an audit log file may reach before it is
    /// rotated.
    #[arg(long, value_name = "MB", default_value_t = flotilla_control::audit::log::MAX_SIZE_MB_DEFAULT)]
    audit_log_maxsize: u64,
    /// How many rotated audit log files are kept; 0 keeps them all (as
    /// kube-apiserver's default does: here the default is bounded).
    #[arg(long, value_name = "N", default_value_t = flotilla_control::audit::log::MAX_BACKUPS_DEFAULT)]
    audit_log_maxbackup: usize,
    /// How many days rotated audit log files are kept; 0 keeps them
    /// however old.
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    audit_log_maxage: u64,
}

impl AuditArgs {
    /// The server's audit configuration; none without a policy, as in
    /// Kubernetes. A policy that does not load is an error here, at start.
    fn config(&self) -> Result<Option<flotilla_control::audit::AuditConfig>> {
        use flotilla_control::audit::log::{LogConfig, Target};
        let (Some(policy_file), Some(path)) = (&self.audit_policy_file, &self.audit_log_path)
        else {
            if self.audit_log_path.is_some() {
                tracing::warn!("--audit-log-path without --audit-policy-file: nothing is audited");
            }
            return Ok(None);
        };
        let policy = flotilla_control::audit::Policy::load(policy_file)?;
        let target = if path.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(path.clone())
        };
        Ok(Some(flotilla_control::audit::AuditConfig {
            policy,
            log: LogConfig {
                target,
                max_size_mb: self.audit_log_maxsize,
                max_backups: self.audit_log_maxbackup,
                max_age_days: self.audit_log_maxage,
            },
        }))
    }
}

/// Kubernetes' control-plane timings (kube-controller-manager's flags of
/// the same names), shared by `flotilla server` and `flotilla up`; tests
/// shorten them.
#[derive(Args, Debug, Clone)]
struct ControlTimings {
    /// Raft tick interval in milliseconds (elections time out after 10 ticks).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// How long a node may go without renewing its lease before it is
    /// marked NotReady (kube-controller-manager's flag of the same name).
    #[arg(long, default_value = "50s", value_parser = cli::duration::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How long pods stay on an unreachable node before they are evicted
    /// and replaced (Kubernetes' default toleration of 300 s).
    #[arg(long, default_value = "300s", value_parser = cli::duration::parse_duration)]
    pod_eviction_timeout: std::time::Duration,
    /// How long the controllers' leader may go unrenewed before another
    /// server takes over (kube-controller-manager's --leader-elect-lease-duration).
    #[arg(long, default_value = "15s", value_parser = cli::duration::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
}

impl ControlTimings {
    /// The controllers' configuration, as candidate `identity`.
    fn controllers(&self, identity: String) -> flotilla_control::controllers::ControllersConfig {
        flotilla_control::controllers::ControllersConfig {
            identity,
            election: election_config(self.leader_elect_lease_duration),
            nodes: flotilla_control::controllers::nodes::NodeTimings {
                grace: self.node_monitor_grace_period,
                eviction: self.pod_eviction_timeout,
                // Looked at five times per grace period, at most every 5 s.
                monitor_period: (self.node_monitor_grace_period / 5).clamp(
                    std::time::Duration::from_millis(50),
                    std::time::Duration::from_secs(5),
                ),
            },
            job_backoff: std::time::Duration::from_secs(10),
        }
    }
}

/// How often a node reports to the API server, shared by `flotilla agent`
/// and `flotilla up`.
#[derive(Args, Debug, Clone)]
struct NodeIntervals {
    /// Seconds between renewals of the node's lease.
    #[arg(long, default_value_t = flotilla_node::agent::LEASE_RENEW_INTERVAL_SECS_DEFAULT)]
    lease_renew_secs: u64,
    /// Seconds between node status heartbeats.
    #[arg(long, default_value_t = flotilla_node::agent::NODE_STATUS_INTERVAL_SECS_DEFAULT)]
    node_status_secs: u64,
}

impl NodeIntervals {
    fn apply(&self, config: &mut flotilla_node::agent::AgentConfig) {
        config.lease_renew_interval = std::time::Duration::from_secs(self.lease_renew_secs);
        config.node_status_interval = std::time::Duration::from_secs(self.node_status_secs);
    }
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Join the cluster of the server at this URL (`https://HOST:6443`):
    /// the node gets a certificate, keeps it in its data directory and
    /// serves its endpoint over HTTPS. Needs --token the first time.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A servers' join token (`flotilla token create --server`, or a
    /// server's `<data-dir>/server-token`).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long the join tokens a server writes into its data directory
    /// (`token` for agents, `server-token` for servers) are valid; `0`
    /// for ever. A server writes new ones when it starts after they expired.
    #[arg(long, default_value = "24h", value_parser = cli::duration::parse_duration)]
    token_ttl: std::time::Duration,
    /// Without --server: the kubeconfig to reach the API server with
    /// (`flotilla server` writes one into its data directory; plain HTTP
    /// servers on loopback, for development).
    #[arg(
        long,
        default_value = "flotilla-data/kubeconfig",
        conflicts_with = "server"
    )]
    kubeconfig: PathBuf,
    /// The node's name. Defaults to the host's name.
    #[arg(long)]
    node_name: Option<String>,
    /// Where pod volumes, logs and compiled modules are kept.
    #[arg(long, default_value = "flotilla-node")]
    data_dir: PathBuf,
    /// The TCP address of the kubelet endpoint (container logs, /healthz,
    /// /metrics). HTTPS with the node's certificate when joined with
    /// --server; otherwise plain HTTP, on loopback only.
    #[arg(long, default_value_t = flotilla_node::agent::KUBELET_LISTEN_DEFAULT)]
    kubelet_listen: SocketAddr,
    /// The node's InternalIP, where the API server reaches the kubelet
    /// endpoint and other nodes reach the mesh. Defaults to the endpoint's
    /// address.
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// The UDP address of the pod network's mesh (QUIC between nodes, with
    /// the node's certificate). Defaults to --kubelet-listen's address and
    /// port, over UDP.
    #[arg(long)]
    mesh_listen: Option<SocketAddr>,
    /// Where Services' nodePorts listen (kube-proxy's
    /// --nodeport-addresses). Defaults to --node-ip.
    #[arg(long)]
    node_port_address: Option<std::net::IpAddr>,
    /// Where the Ingress gateway serves HTTP. Defaults to port 80 of
    /// --node-ip.
    #[arg(long)]
    ingress_listen: Option<SocketAddr>,
    /// Where the Ingress gateway serves HTTPS, with the certificates of
    /// the Ingresses' TLS Secrets. Defaults to port 443 of --node-ip.
    #[arg(long)]
    ingress_https_listen: Option<SocketAddr>,
    /// Run no Ingress gateway on this node.
    #[arg(long, conflicts_with_all = ["ingress_listen", "ingress_https_listen"])]
    no_ingress: bool,
    /// CPU the node offers, in millicores. Defaults to the host's CPUs.
    #[arg(long)]
    cpu_millis: Option<u64>,
    /// Memory the node offers, in MiB. Defaults to the host's memory.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// How many pods the node takes.
    #[arg(long, default_value_t = flotilla_node::agent::PODS_MAX_DEFAULT)]
    max_pods: u32,
    #[command(flatten)]
    intervals: NodeIntervals,
}

#[derive(Args, Debug)]
struct KubeconfigArgs {
    /// The API server's URL.
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    server: String,
    /// Issue a client certificate for this user name (its common name).
    /// What the user may do is what RoleBindings grant the name or group.
    #[arg(long, requires = "data_dir")]
    user: Option<String>,
    /// The user's group (the certificate's organization); one at most.
    #[arg(long, requires = "user")]
    group: Option<String>,
    /// How long the certificate is valid (Kubernetes' user certificates:
    /// a year).
    #[arg(long, default_value = "8760h", value_parser = cli::duration::parse_duration)]
    ttl: std::time::Duration,
    /// A server's data directory, whose `ca/` holds the cluster CA.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The longest a user certificate may be valid: past that, a lost laptop
/// is a credential for good.
const USER_CERTIFICATE_TTL_MAX: std::time::Duration =
    std::time::Duration::from_secs(5 * 365 * 24 * 3600);

/// A kubeconfig for `args.user`, or the plain one.
fn kubeconfig_for(args: &KubeconfigArgs) -> Result<String> {
    let (Some(user), Some(data_dir)) = (&args.user, &args.data_dir) else {
        return Ok(flotilla_control::kubeconfig(&args.server));
    };
    if let Some(reason) = flotilla_pki::names::reserved(user) {
        anyhow::bail!("--user {user:?} is refused: {reason}");
    }
    if args.ttl.is_zero() || args.ttl > USER_CERTIFICATE_TTL_MAX {
        anyhow::bail!("--ttl must be more than 0 and at most 5 years (43800h)");
    }
    if !args.server.starts_with("https://") {
        anyhow::bail!("--server must be an https:// URL: certificates are only presented over TLS");
    }
    let ca_dir = data_dir.join("ca");
    let ca = flotilla_pki::ClusterCa::load(&ca_dir).with_context(|| {
        format!(
            "reading the cluster CA in {} (is --data-dir a server's?)",
            ca_dir.display()
        )
    })?;
    let credentials = ca
        .issue_client(user, args.group.as_deref(), args.ttl)
        .context("issuing the user's certificate")?;
    Ok(flotilla_control::tls::kubeconfig_as(
        &args.server,
        user,
        &credentials,
    ))
}

fn parse_peer(text: &str) -> Result<PeerSpec, String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not ID=HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .map_err(|_| format!("member id `{id}` is not a positive integer"))?;
    if id == 0 {
        return Err("member id 0 is reserved; ids start at 1".into());
    }
    let address: SocketAddr = address
        .parse()
        .map_err(|error| format!("`{address}` is not HOST:PORT: {error}"))?;
    Ok(PeerSpec { id, address })
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A client's stderr is for its own messages, and `flotilla up`'s
    // terminal for a newcomer's next steps: library logs only when they are
    // warnings (RUST_LOG=info shows them all).
    let quiet = matches!(cli.command, Command::Client(_) | Command::Up(_));
    init_tracing(if quiet { "warn" } else { "info" });
    runtime.block_on(run(cli.command))
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(command: Command) -> Result<ExitCode> {
    let outcome = match command {
        // Client verbs report their own errors, readably, and pick the code.
        Command::Client(verb) => return Ok(cli::run(verb).await),
        Command::Store(args) => run_store(args).await,
        Command::Server(args) => run_server(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Kubeconfig(args) => kubeconfig_for(&args).map(|document| print!("{document}")),
        #[cfg(feature = "bench")]
        Command::Bench(command) => bench::run(command).await,
    };
    outcome.map(|()| ExitCode::SUCCESS)
}

async fn run_store(args: StoreArgs) -> Result<()> {
    let ca = flotilla_pki::ClusterCa::ensure(&args.tls_dir)
        .with_context(|| format!("preparing the cluster CA in {}", args.tls_dir.display()))?;
    let config = MemberConfig {
        ca: Some(std::sync::Arc::new(ca)),
        id: args.id,
        data_dir: args.data_dir,
        listen: args.listen,
        initial_members: args.peers,
        join: args.join,
        tls_dir: args.tls_dir,
        tick_interval: std::time::Duration::from_millis(args.tick_ms),
        ..MemberConfig::default()
    };
    let member = Member::start(config)
        .await
        .context("starting the store member")?;
    tracing::info!(address = %member.address(), "store member running; Ctrl-C stops it");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    member.shutdown().await;
    Ok(())
}

async fn run_server(args: ServerArgs) -> Result<()> {
    // First: a policy that does not load stops the server before it joins.
    let audit = args.audit.config()?;
    let tls_dir = args.data_dir.join("ca");
    let store_dir = args.data_dir.join("store");
    let joining = match (&args.join, store_dir.exists()) {
        (Some(url), false) => Some(join_cluster(&args, url, &tls_dir).await?),
        (Some(_), true) => {
            tracing::info!("the data directory holds a store already; --join is ignored");
            None
        }
        (None, _) => None,
    };
    // The one load of the CA in this process: everything issues from it.
    let ca = std::sync::Arc::new(
        flotilla_pki::ClusterCa::ensure(&tls_dir)
            .with_context(|| format!("preparing the cluster CA in {}", tls_dir.display()))?
            .with_validity(args.cert_validity),
    );
    // A joined server keeps the id it was given; restarts read it back.
    let id_file = args.data_dir.join("member-id");
    let id = match &joining {
        Some(joined) => joined.id,
        None => match std::fs::read_to_string(&id_file) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("reading the member id in {}", id_file.display()))?,
            Err(_) => args.id,
        },
    };
    let peers = match &joining {
        Some(joined) => joined.peers.clone(),
        None if args.peers.is_empty() => vec![PeerSpec {
            id,
            address: args.store_listen,
        }],
        None => args.peers.clone(),
    };
    let store = MemberConfig {
        id,
        data_dir: store_dir,
        listen: args.store_listen,
        initial_members: peers,
        join: joining.is_some(),
        tls_dir,
        tick_interval: std::time::Duration::from_millis(args.timings.tick_ms),
        ..MemberConfig::default()
    };
    let (api_tls, admin) = if args.plain_http {
        (None, None)
    } else {
        let mut hosts = args.api_sans.clone();
        if !args.api_listen.ip().is_unspecified() {
            hosts.push(args.api_listen.ip().to_string());
        }
        let server = flotilla_control::tls::server_credentials(&ca, &hosts)
            .context("issuing the API server's certificate")?;
        let admin = flotilla_control::tls::admin_credentials(&ca)
            .context("issuing the admin client certificate")?;
        (Some(server), Some(admin))
    };
    if joining.is_some() {
        // Before the member starts: a restart must come back as this id.
        flotilla_pki::create_private_dir(&args.data_dir)?;
        std::fs::write(&id_file, format!("{id}\n"))
            .with_context(|| format!("writing {}", id_file.display()))?;
    }
    // A joining server's member is added once it runs (the store could
    // lose its quorum otherwise); the server's start waits for that.
    let adding = joining.map(|joined| tokio::spawn(joined.add_member));
    let ipam = flotilla_control::controllers::ipam::IpamConfig::new(
        args.cluster_cidr,
        args.node_cidr_mask_size,
    )
    .context("--cluster-cidr and --node-cidr-mask-size")?;
    let options = flotilla_control::ServerOptions {
        service_cidr: args.service_cidr,
        node_port_range: args.service_node_port_range,
        node_certificate_validity: args.cluster_signing_duration,
        encryption: match &args.encryption_provider_config {
            Some(path) => Some(std::sync::Arc::new(
                flotilla_control::encryption::Encryption::load(path)
                    .context("--encryption-provider-config")?,
            )),
            None => None,
        },
        audit,
        ..flotilla_control::ServerOptions::default()
    };
    let server = flotilla_control::Server::start_with(
        flotilla_control::ServerConfig {
            store,
            api_listen: args.api_listen,
            compaction_interval: flotilla_control::server::COMPACTION_INTERVAL_DEFAULT,
            api_tls,
            ca: Some(ca.clone()),
        },
        options,
    )
    .await
    .context("starting the server")?;
    if let Some(adding) = adding {
        adding
            .await
            .context("joining the store")?
            .context("joining the store")?;
    }
    // Every server is a candidate; the controllers run on the elected one.
    let controllers = server
        .start_controllers_with(args.timings.controllers(format!("server-{id}")), ipam)
        .await
        .context("starting the controllers")?;
    let kubeconfig = args.data_dir.join("kubeconfig");
    let address = server.api_address();
    let url = match &admin {
        Some(admin) => {
            let url = format!("https://{address}");
            save_admin_kubeconfig(&args.data_dir, &url, admin)?;
            url
        }
        None => {
            let url = format!("http://{address}");
            std::fs::write(&kubeconfig, flotilla_control::kubeconfig(&url))
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            url
        }
    };
    tracing::info!(
        api = %url,
        kubeconfig = %kubeconfig.display(),
        "server running; Ctrl-C stops it"
    );
    if admin.is_some() {
        use flotilla_control::join::token::Purpose;
        let client = server.client().await.context("connecting to the API")?;
        let ttl = (!args.token_ttl.is_zero()).then_some(args.token_ttl);
        let agents = args.data_dir.join("token");
        let servers = args.data_dir.join("server-token");
        for (path, purpose) in [(&agents, Purpose::Agent), (&servers, Purpose::Server)] {
            flotilla_control::join::ensure_token(&client, ca.cert_pem(), path, purpose, ttl)
                .await
                .with_context(|| format!("creating the join token for {purpose}"))?;
        }
        tracing::info!(
            "join more: flotilla server --join {url} --token $(cat {servers}) …, \
             flotilla agent --server {url} --token $(cat {agents})",
            servers = servers.display(),
            agents = agents.display(),
        );
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    drop(controllers);
    server.shutdown().await;
    Ok(())
}

/// Writes the admin's certificate into `<data_dir>/admin/` (`ca.pem`,
/// `admin.pem`, `admin.key`, for curl and other clients) and a kubeconfig
/// holding it, for the server at `url`, into `<data_dir>/kubeconfig`;
/// returns that file's path.
fn save_admin_kubeconfig(
    data_dir: &std::path::Path,
    url: &str,
    admin: &flotilla_control::tls::Credentials,
) -> Result<PathBuf> {
    admin
        .save(&data_dir.join("admin"), "admin")
        .context("writing the admin certificate")?;
    let kubeconfig = data_dir.join("kubeconfig");
    write_private(&kubeconfig, &flotilla_control::tls::kubeconfig(url, admin))?;
    Ok(kubeconfig)
}

/// Writes `contents` into a file only its owner may read: a kubeconfig
/// holds a private key.
fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// A certificate lifetime from the command line: long enough that renewing
/// it is not most of what a node does.
fn certificate_validity(text: &str) -> Result<std::time::Duration> {
    const MIN: std::time::Duration = std::time::Duration::from_secs(600);
    let validity = cli::duration::parse_duration(text)?;
    if validity < MIN {
        anyhow::bail!("{text:?} is too short for a certificate's validity: give at least 10m");
    }
    Ok(validity)
}

/// Kubernetes' election timings scaled to `lease`: renew deadline 2/3 of
/// it, retry period 2/15 (10 s and 2 s for the default 15 s).
fn election_config(
    lease: std::time::Duration,
) -> flotilla_control::controllers::election::ElectionConfig {
    flotilla_control::controllers::election::ElectionConfig {
        lease_duration: lease,
        renew_deadline: lease * 2 / 3,
        retry_period: lease * 2 / 15,
        ..flotilla_control::controllers::election::ElectionConfig::default()
    }
}

/// What a server that joins takes from the cluster it joins.
struct Joined {
    id: u64,
    peers: Vec<PeerSpec>,
    /// Adds this server's store member once it runs.
    add_member: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'static>>,
}

/// Asks the server at `url` to admit this one; writes the cluster CA it
/// answers with into `tls_dir`.
async fn join_cluster(args: &ServerArgs, url: &str, tls_dir: &std::path::Path) -> Result<Joined> {
    use flotilla_control::join::{self, MemberAddRequest, ServerJoinRequest, token::JoinToken};
    let text = args.token.as_deref().context("--join needs --token")?;
    let token = JoinToken::parse(text).context("reading --token")?;
    let store_address = args.store_listen.to_string();
    let request = ServerJoinRequest {
        store_address: store_address.clone(),
    };
    let admission = join::client::join_server(url, &token, &request)
        .await
        .with_context(|| format!("joining {url}"))?;
    let ca = flotilla_pki::ClusterCa::from_pem(admission.ca.clone(), &admission.ca_key)
        .context("reading the cluster CA")?;
    ca.save(tls_dir)
        .with_context(|| format!("writing the cluster CA to {}", tls_dir.display()))?;
    if !admission.service_account_key.is_empty() {
        flotilla_control::auth::tokens::Signer::save(tls_dir, &admission.service_account_key)
            .context("writing the ServiceAccount token key")?;
    }
    let mut peers = Vec::new();
    for member in &admission.members {
        let address = member
            .address
            .parse()
            .with_context(|| format!("member {} has address {:?}", member.id, member.address))?;
        peers.push(PeerSpec {
            id: member.id,
            address,
        });
    }
    tracing::info!(id = admission.id, "admitted; starting the store member");
    let (url, id) = (url.to_string(), admission.id);
    let add_member = Box::pin(async move {
        let request = MemberAddRequest { id, store_address };
        join::client::add_server_member(&url, &token, &request)
            .await
            .map(|_| ())
            .with_context(|| format!("adding store member {id} through {url}"))
    });
    Ok(Joined {
        id,
        peers,
        add_member,
    })
}

/// The node's identity: the certificate kept in its data directory
/// (renewed there while the agent runs), or a new one from joining `url`
/// with the token. A kubeconfig naming those files is written beside them
/// for kubectl.
async fn node_identity(
    args: &AgentArgs,
    url: &str,
    config: &flotilla_node::agent::AgentConfig,
) -> Result<flotilla_node::agent::KubeletTls> {
    use flotilla_control::join::{self, NodeJoinRequest, token::JoinToken};
    use flotilla_control::tls::Credentials;
    use flotilla_node::agent::CREDENTIALS_STEM;
    flotilla_pki::create_private_dir(&args.data_dir)?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("finding {}", args.data_dir.display()))?;
    let pki = data_dir.join("pki");
    let credentials = match Credentials::load(&pki, CREDENTIALS_STEM) {
        Ok(credentials) => credentials,
        Err(_) => {
            let text = args
                .token
                .as_deref()
                .context("the first join of a node needs --token")?;
            let token = JoinToken::parse(text).context("reading --token")?;
            let request = NodeJoinRequest {
                node_name: config.node_name.clone(),
                addresses: vec![config.node_ip.to_string()],
            };
            let credentials = join::client::join_node(url, &token, &request)
                .await
                .with_context(|| format!("joining {url}"))?;
            credentials
                .save(&pki, CREDENTIALS_STEM)
                .with_context(|| format!("writing the node certificate to {}", pki.display()))?;
            tracing::info!(node = %config.node_name, "joined the cluster");
            credentials
        }
    };
    let tls = flotilla_node::agent::KubeletTls::new(&credentials)
        .with_context(|| format!("reading the node certificate in {}", pki.display()))?
        .kept_in(pki.clone());
    let expires = tls.certificate().not_after;
    if expires <= std::time::SystemTime::now() {
        anyhow::bail!(
            "the node certificate in {} has expired, so the node can no longer renew it; \
             join again: `kubectl delete node {}`, remove {}, and start the agent with a new --token",
            pki.display(),
            config.node_name,
            pki.display()
        );
    }
    write_private(
        &data_dir.join("kubeconfig"),
        &flotilla_control::tls::kubeconfig_with_files(
            url,
            &config.node_name,
            &pki,
            CREDENTIALS_STEM,
        ),
    )?;
    Ok(tls)
}

/// Starts one node: its runtime, with pod data and compiled modules under
/// `data_dir`, and the agent that connects it to the API through `client`.
/// `flotilla agent` and `flotilla up` both start their node here, so
/// everything a node runs is wired in this one place.
async fn start_node(
    config: flotilla_node::agent::AgentConfig,
    client: kube::Client,
    data_dir: &std::path::Path,
) -> Result<flotilla_node::agent::Agent> {
    // Modules come from the cluster's registry, by digest, cached on disk.
    let source = flotilla_node::agent::RegistrySource::new(client.clone(), data_dir.join("blobs"))
        .context("preparing the module cache")?;
    // The pod network carries the guests' outgoing requests, so the
    // runtime is made with it.
    let network = flotilla_node::net::PodNetwork::new(config.node_name.clone());
    let runtime = flotilla_node::NodeRuntime::with_outgoing_http(
        flotilla_node::NodeConfig::new(data_dir),
        std::sync::Arc::new(source),
        std::sync::Arc::new(network.clone()),
    )
    .context("starting the node runtime")?;
    flotilla_node::agent::Agent::start_with_network(config, client, runtime, Some(network))
        .await
        .context("starting the agent")
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    use flotilla_node::agent::AgentConfig;
    let node_name = match args.node_name.clone() {
        Some(name) => name,
        None => flotilla_node::agent::hostname().context("naming the node")?,
    };
    let mut config = AgentConfig::new(node_name).context("inspecting the host")?;
    config.kubelet_listen = args.kubelet_listen;
    config.node_ip = args.node_ip.unwrap_or(args.kubelet_listen.ip());
    config.mesh_listen = args.mesh_listen.unwrap_or(args.kubelet_listen);
    config.node_port_address = args.node_port_address;
    if !args.no_ingress {
        let on = |port| std::net::SocketAddr::new(config.node_ip, port);
        config.ingress_http_listen = Some(args.ingress_listen.unwrap_or(on(80)));
        config.ingress_https_listen = Some(args.ingress_https_listen.unwrap_or(on(443)));
    }
    if let Some(cpu_millis) = args.cpu_millis {
        config.capacity.cpu_millis = cpu_millis;
    }
    if let Some(memory_mib) = args.memory_mib {
        config.capacity.memory_bytes = memory_mib.saturating_mul(1024 * 1024);
    }
    config.capacity.pods = args.max_pods;
    args.intervals.apply(&mut config);
    let client = match &args.server {
        Some(url) => {
            let tls = node_identity(&args, url, &config).await?;
            let client = tls
                .api_client(url)
                .context("connecting to the API server")?;
            config.kubelet_tls = Some(tls);
            client
        }
        None => flotilla_node::agent::client_from_kubeconfig(&args.kubeconfig)
            .await
            .context("connecting to the API server")?,
    };
    let agent = start_node(config, client, &args.data_dir).await?;
    tracing::info!(
        kubelet = %agent.kubelet_address(),
        "agent running; Ctrl-C stops it"
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_control::audit::log::{LogConfig, Target};

    /// The audit flags of `flotilla server ARGS…`.
    fn audit_args(args: &[&str]) -> Result<AuditArgs, clap::Error> {
        let command = ["flotilla", "server"].iter().chain(args);
        match Cli::try_parse_from(command)?.command {
            Command::Server(server) => Ok(server.audit),
            other => panic!("not a server: {other:?}"),
        }
    }

    /// A policy file in `dir` whose rules are `rules` (YAML).
    fn policy_file(dir: &tempfile::TempDir, rules: &str) -> String {
        let path = dir.path().join("policy.yaml");
        let text = format!("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n{rules}");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn audit_flags_make_the_audit_config() {
        let dir = tempfile::tempdir().unwrap();
        let policy = &policy_file(&dir, "- level: Metadata\n");
        let log = dir.path().join("audit.log");
        let args = audit_args(&[
            "--audit-policy-file",
            policy,
            "--audit-log-path",
            log.to_str().unwrap(),
            "--audit-log-maxsize",
            "5",
            "--audit-log-maxbackup",
            "2",
            "--audit-log-maxage",
            "7",
        ])
        .unwrap();
        let config = args.config().unwrap().unwrap();
        assert_eq!(
            config.log,
            LogConfig {
                target: Target::File(log),
                max_size_mb: 5,
                max_backups: 2,
                max_age_days: 7,
            }
        );
        let stdout = audit_args(&["--audit-policy-file", policy, "--audit-log-path", "-"]);
        let config = stdout.unwrap().config().unwrap().unwrap();
        assert_eq!(config.log.target, Target::Stdout);
        assert_eq!(
            config.log.max_backups,
            flotilla_control::audit::log::MAX_BACKUPS_DEFAULT
        );

        // No policy, no audit; a policy needs somewhere to write.
        assert!(audit_args(&[]).unwrap().config().unwrap().is_none());
        assert!(audit_args(&["--audit-policy-file", policy]).is_err());
    }

    #[test]
    fn a_bad_policy_stops_the_server_naming_file_rule_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            "- level: None\n- level: Metadata\n  namespaces: [a]\n  nonResourceURLs: [/healthz]\n";
        let policy = &policy_file(&dir, rules);
        let args = audit_args(&["--audit-policy-file", policy, "--audit-log-path", "-"]).unwrap();
        let error = args.config().unwrap_err().to_string();
        assert!(error.contains(policy), "{error}");
        assert!(error.contains("rules[1].nonResourceURLs"), "{error}");
    }
}
