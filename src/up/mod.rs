//! `flotilla up`: a whole cluster in one process, on loopback only. One
//! server (a one-member store, the Kubernetes API over HTTPS, the module
//! registry, the elected controllers) and one agent, started as `flotilla
//! server` and `flotilla agent` start theirs; all state in one data
//! directory, so that running it again resumes the same cluster. `--demo`
//! also deploys `examples/hello-http` (`demo.rs`); `files.rs` holds the
//! data directory and the kubeconfig files.
//!
//! This is wiring only: it knows which parts to start and in which order,
//! not how any of them works.

mod demo;
mod files;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flotilla_control::registry::RegistryConfig;
use flotilla_control::{Server, ServerConfig, ServerOptions};
use flotilla_node::agent::{Agent, AgentConfig, CREDENTIALS_STEM, KubeletTls};
use flotilla_pki::{ClusterCa, Credentials};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The API's address unless `--api-listen` says otherwise: Kubernetes' port.
const API_LISTEN_DEFAULT: &str = "127.0.0.1:6443";

/// The candidate name of the only server. Fixed, so that a restart takes
/// back its own controllers' Lease at once instead of waiting for the old
/// holder's lease to run out.
const CONTROLLERS_IDENTITY: &str = "flotilla-up";

/// Start a whole cluster in this process, on loopback: one server and one
/// node, with kubectl access.
///
/// The state (store, cluster CA, kubeconfig, the node's data) stays in the
/// data directory: running `flotilla up` again resumes the same cluster.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla up --demo                 # and then: curl http://127.0.0.1:30080/
  flotilla up --data-dir /tmp/flotilla --write-kubeconfig
  flotilla up --node-monitor-grace-period 5s --pod-eviction-timeout 10s")]
pub struct UpArgs {
    /// Where the store, the cluster CA, the kubeconfig and the node's data
    /// are kept. Defaults to $XDG_DATA_HOME/flotilla, else
    /// ~/.local/share/flotilla.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The TCP address of the Kubernetes API: a loopback address, as
    /// `flotilla up` serves this machine only (`flotilla server` serves others).
    #[arg(long, default_value = API_LISTEN_DEFAULT)]
    api_listen: SocketAddr,
    /// The node's name. Defaults to the host's name.
    #[arg(long)]
    node_name: Option<String>,
    /// Also deploy the example `examples/hello-http` (built when no built
    /// module is found) as 4 pods behind a NodePort Service on port 30080.
    #[arg(long)]
    demo: bool,
    /// Merge the cluster into ~/.kube/config as the context `flotilla` and
    /// make it current, instead of only printing the `export KUBECONFIG`
    /// line for the data directory's own kubeconfig.
    #[arg(long)]
    write_kubeconfig: bool,
    #[command(flatten)]
    timings: crate::ControlTimings,
    #[command(flatten)]
    intervals: crate::NodeIntervals,
}

pub async fn run(args: UpArgs) -> Result<()> {
    if !args.api_listen.ip().is_loopback() {
        bail!(
            "--api-listen {} is not a loopback address: `flotilla up` serves this machine \
             only; run `flotilla server` and `flotilla agent` for a cluster others reach",
            args.api_listen
        );
    }
    // Listening before anything starts: a signal that comes while the
    // cluster starts or the demo deploys still stops it cleanly.
    let mut stop = StopSignals::listen()?;
    let data_dir = files::data_dir(args.data_dir.as_deref())?;
    let cluster = Cluster::start(&args, &data_dir).await?;
    cluster.print_next_steps(&data_dir, args.write_kubeconfig)?;
    let deploying = async {
        if args.demo {
            demo::deploy(&cluster.kubeconfig, &data_dir, &cluster.client).await?;
        }
        // Until stopped.
        std::future::pending::<Result<()>>().await
    };
    let outcome = tokio::select! {
        outcome = deploying => outcome,
        () = stop.wait() => Ok(()),
    };
    if let Err(error) = outcome {
        cluster.stop().await;
        return Err(error.context("deploying the demo (the cluster was stopped)"));
    }
    eprintln!("stopping…");
    cluster.stop().await;
    println!("flotilla stopped");
    Ok(())
}

/// What runs in this process.
struct Cluster {
    server: Server,
    controllers: flotilla_control::controllers::Controllers,
    agent: Agent,
    /// The admin's kubeconfig, in the data directory.
    kubeconfig: PathBuf,
    /// A client of the API, as the server's own controllers use it.
    client: kube::Client,
    url: String,
    node_name: String,
}

impl Cluster {
    async fn start(args: &UpArgs, data_dir: &Path) -> Result<Cluster> {
        // Store under `store/` and the CA under `ca/`, as `flotilla server`
        // keeps them; the store's own port is any free one, as a store of
        // one member has no peer to be found by.
        let tick = std::time::Duration::from_millis(args.timings.tick_ms);
        let mut config = ServerConfig::loopback(data_dir, tick)
            .context("preparing the store and the cluster CA")?;
        config.api_listen = args.api_listen;
        let config = config
            .with_https(&[])
            .context("issuing the API server's certificate")?;
        let ca = config.ca.clone().context("the cluster CA was not loaded")?;
        let options = ServerOptions {
            // Server and node are one process on one machine, so a path
            // on the node means the same to both: `file://` images work.
            registry: RegistryConfig {
                allow_file_images: true,
            },
            ..ServerOptions::default()
        };
        let server = Server::start_with(config, options).await.with_context(|| {
            format!(
                "starting the server (is another `flotilla up` or `flotilla server` \
                     using {}? pick another address with --api-listen)",
                args.api_listen
            )
        })?;
        let controllers = server
            .start_controllers(args.timings.controllers(CONTROLLERS_IDENTITY.into()))
            .await
            .context("starting the controllers")?;
        let url = format!("https://{}", server.api_address());
        let admin = flotilla_control::tls::admin_credentials(&ca)
            .context("issuing the admin client certificate")?;
        let kubeconfig = crate::save_admin_kubeconfig(data_dir, &url, &admin)?;
        let client = server.client().await.context("connecting to the API")?;
        let node_name = match &args.node_name {
            Some(name) => name.clone(),
            None => flotilla_node::agent::hostname().context("naming the node")?,
        };
        let agent = start_agent(args, &ca, &url, &node_name, &data_dir.join("node")).await?;
        Ok(Cluster {
            server,
            controllers,
            agent,
            kubeconfig,
            client,
            url,
            node_name,
        })
    }

    /// The agent first, so the node stops reporting before the API it
    /// reports to goes; then the controllers and the server, whose store
    /// has made every acknowledged write durable.
    async fn stop(self) {
        self.agent.shutdown().await;
        drop(self.controllers);
        self.server.shutdown().await;
    }

    /// What a newcomer does next, on stdout.
    fn print_next_steps(&self, data_dir: &Path, write_kubeconfig: bool) -> Result<()> {
        println!(
            "flotilla is up: the Kubernetes API at {}, node {}, state in {}",
            self.url,
            self.node_name,
            data_dir.display()
        );
        println!();
        if write_kubeconfig {
            let merged = files::merge_into_user_kubeconfig(&self.kubeconfig)?;
            println!(
                "kubectl's context `flotilla` is now current in {}",
                merged.display()
            );
        } else {
            println!("In another shell:");
            println!(
                "  export KUBECONFIG={}",
                files::shell_quoted(&self.kubeconfig)
            );
        }
        println!("  kubectl get nodes                 # or: flotilla get nodes");
        println!(
            "  flotilla push app.wasm app:1.0    # a wasm32-wasip2 component, into the registry"
        );
        println!("  kubectl apply -f app.yaml         # pods that name `image: app:1.0`");
        println!();
        println!("Ctrl-C stops it; `flotilla up` on the same data directory resumes it.");
        Ok(())
    }
}

/// The node: a certificate issued straight from the cluster CA (the one
/// a joining agent would get), so that its kubelet endpoint serves HTTPS
/// as a joined agent's does, and the node started as `flotilla agent`
/// starts it, at 127.0.0.1.
async fn start_agent(
    args: &UpArgs,
    ca: &ClusterCa,
    url: &str,
    node_name: &str,
    node_dir: &Path,
) -> Result<Agent> {
    let mut config = AgentConfig::new(node_name).context("inspecting the host")?;
    // Any free port: the Node advertises the one bound, and a fixed one
    // would clash with a `flotilla agent` on the same machine.
    config.kubelet_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config.node_ip = Ipv4Addr::LOCALHOST.into();
    config.mesh_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    // The Ingress gateway on the usual ports, as a laptop cluster's; one
    // that cannot bind them (taken, or no privilege) runs without it.
    config.ingress_http_listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 80)));
    config.ingress_https_listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 443)));
    args.intervals.apply(&mut config);
    // Issued again at every start rather than kept: the CA is at hand, and
    // a new certificate always matches the node's current name.
    let names = vec![node_name.to_string(), config.node_ip.to_string()];
    let credentials: Credentials = ca
        .issue_in_group(
            &format!("{}{node_name}", flotilla_control::join::NODE_USER_PREFIX),
            Some(flotilla_control::auth::user::NODES),
            &names,
        )
        .context("issuing the node's certificate")?;
    flotilla_pki::create_private_dir(node_dir)?;
    let node_dir = node_dir
        .canonicalize()
        .with_context(|| format!("finding {}", node_dir.display()))?;
    // Kept as `flotilla agent` keeps its own, where renewals replace it.
    let pki = node_dir.join("pki");
    credentials
        .save(&pki, CREDENTIALS_STEM)
        .with_context(|| format!("writing the node certificate to {}", pki.display()))?;
    crate::write_private(
        &node_dir.join("kubeconfig"),
        &flotilla_control::tls::kubeconfig_with_files(url, node_name, &pki, CREDENTIALS_STEM),
    )?;
    let tls = KubeletTls::new(&credentials)
        .context("reading the node certificate")?
        .kept_in(pki);
    let client = tls
        .api_client(url)
        .context("connecting the node to the API")?;
    config.kubelet_tls = Some(tls);
    crate::start_node(config, client, &node_dir).await
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the start.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn listen() -> Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
