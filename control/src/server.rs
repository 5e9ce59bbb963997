//! One control-plane member as `flotilla server` runs it: a raft-store
//! member, the Kubernetes API on top of it, and (when started) its
//! candidacy for running the controllers, in one process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{ClusterCa, Credentials};
use flotilla_raft_store::member::{Member, MemberConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::api::{self, ApiState};
use crate::auth::tokens::{Accounts, Signer, Tokens};
use crate::controllers::ipam::IpamConfig;
use crate::controllers::{ControllerClients, Controllers, ControllersConfig};
use crate::registry::{ModuleRegistry, RegistryConfig};
use crate::storage::Storage;

/// Kubernetes' default compaction interval.
pub const COMPACTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);
/// Attempts to create the system namespaces while the store elects its
/// first leader.
const BOOTSTRAP_ATTEMPTS_MAX: u32 = 100;
const BOOTSTRAP_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "plain HTTP is only allowed on loopback and {0} is not a loopback \
         address; serve the API over HTTPS (give it TLS credentials)"
    )]
    NotLoopback(SocketAddr),
    #[error("the API's TLS setup failed: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen for the API on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the store did not start: {0}")]
    Store(#[from] flotilla_raft_store::Error),
    #[error("the store did not become writable: {0}")]
    Bootstrap(#[from] crate::storage::StorageError),
    #[error("the server's own API client could not be set up: {0}")]
    Client(String),
    #[error("cannot admit newcomers: {0}")]
    Join(#[from] crate::join::JoinError),
    #[error("cannot issue ServiceAccount tokens: {0}")]
    Tokens(#[from] crate::auth::tokens::TokenError),
    #[error("cannot audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(
        "the service CIDR {0} must be a /{min} to a /{max}",
        min = crate::api::services::SERVICE_CIDR_PREFIX_MIN,
        max = crate::api::services::SERVICE_CIDR_PREFIX_MAX
    )]
    ServiceCidr(ipnet::Ipv4Net),
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub store: MemberConfig,
    /// Where the Kubernetes API listens.
    pub api_listen: SocketAddr,
    /// How often history is compacted, keeping one interval of it: the
    /// store keeps every revision of the last interval or two, so watches
    /// and paged lists can resume within that window (Kubernetes: 5 min).
    pub compaction_interval: Duration,
    /// The API's certificate (see `tls::server_credentials`): HTTPS with
    /// client certificates. Without it the API speaks plain HTTP, which is
    /// refused anywhere but on loopback.
    pub api_tls: Option<Credentials>,
    /// The cluster CA, loaded once by the process: the server and its
    /// store member issue from it, whatever the store's `tls_dir` holds.
    /// `None`: read from `tls_dir` (created there if missing) when the
    /// server starts.
    pub ca: Option<Arc<ClusterCa>>,
}

impl ServerConfig {
    /// A cluster of one on this machine: a store member on a free loopback
    /// port, its data and cluster CA under `data_dir`, and the API over plain
    /// HTTP on a loopback port the system picks. `tick_interval` paces the
    /// store (a member elects itself in ten ticks); watch progress is sent
    /// every ten ticks.
    pub fn loopback(data_dir: &Path, tick_interval: Duration) -> Result<ServerConfig, ServerError> {
        let tls_dir = data_dir.join("ca");
        let ca = Arc::new(ClusterCa::ensure(&tls_dir).map_err(crate::tls::TlsError::from)?);
        // Raft peers need a known port (not 0): take a free UDP one.
        let loopback = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let store_address = std::net::UdpSocket::bind(loopback)
            .and_then(|socket| socket.local_addr())
            .map_err(|source| ServerError::Bind {
                address: loopback,
                source,
            })?;
        let store = MemberConfig {
            id: 1,
            data_dir: data_dir.join("store"),
            listen: store_address,
            initial_members: vec![flotilla_raft_store::member::PeerSpec {
                id: 1,
                address: store_address,
            }],
            tls_dir,
            ca: Some(ca.clone()),
            tick_interval,
            watch_progress_interval: tick_interval.saturating_mul(10),
            ..MemberConfig::default()
        };
        Ok(ServerConfig {
            store,
            api_listen: loopback,
            compaction_interval: COMPACTION_INTERVAL_DEFAULT,
            api_tls: None,
            ca: Some(ca),
        })
    }

    /// This configuration with the API over HTTPS, its certificate issued
    /// by the cluster CA for loopback and `hosts`.
    pub fn with_https(mut self, hosts: &[String]) -> Result<ServerConfig, ServerError> {
        let ca = self.cluster_ca()?;
        self.ca = Some(ca.clone());
        self.api_tls = Some(crate::tls::server_credentials(&ca, hosts)?);
        Ok(self)
    }

    /// The cluster CA's certificate, PEM (what join tokens pin).
    pub fn ca_pem(&self) -> Result<String, ServerError> {
        Ok(self.cluster_ca()?.cert_pem().to_string())
    }

    /// The CA this configuration holds, else the one in the store's
    /// `tls_dir` (created there if missing).
    fn cluster_ca(&self) -> Result<Arc<ClusterCa>, ServerError> {
        match &self.ca {
            Some(ca) => Ok(ca.clone()),
            None => Ok(Arc::new(
                ClusterCa::ensure(&self.store.tls_dir).map_err(crate::tls::TlsError::from)?,
            )),
        }
    }
}

/// What a server is started with besides its [`ServerConfig`]: a second
/// argument of [`Server::start_with`], not `ServerConfig` fields, so that
/// callers building `ServerConfig` literally keep compiling. A
/// [`RegistryConfig`] converts into it, with the other defaults.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub registry: RegistryConfig,
    /// Where Services' ClusterIPs come from (kube-apiserver's
    /// `--service-cluster-ip-range`): a /12 to a /29, by default
    /// [`SERVICE_CIDR_DEFAULT`](crate::api::services::SERVICE_CIDR_DEFAULT),
    /// 10.96.0.0/12. Every server of a cluster must be given the same.
    pub service_cidr: ipnet::Ipv4Net,
    /// Where Services' node ports come from (kube-apiserver's
    /// `--service-node-port-range`), by default
    /// [`NODE_PORT_RANGE_DEFAULT`](crate::api::nodeports::NODE_PORT_RANGE_DEFAULT),
    /// 30000-32767. Every server of a cluster must be given the same.
    pub node_port_range: crate::api::nodeports::NodePortRange,
    /// How long the node certificates issued at join and renewal are valid
    /// (kube-controller-manager's `--cluster-signing-duration`), by default
    /// a year. Agents renew theirs at 70–90 % of it.
    pub node_certificate_validity: Duration,
    /// What is encrypted at rest (kube-apiserver's
    /// `--encryption-provider-config`); none: nothing is.
    pub encryption: Option<Arc<crate::encryption::Encryption>>,
    /// Kubernetes auditing (`--audit-policy-file`, `--audit-log-*`): none
    /// records nothing, as kube-apiserver without a policy.
    pub audit: Option<crate::audit::AuditConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            registry: RegistryConfig::default(),
            service_cidr: crate::api::services::SERVICE_CIDR_DEFAULT,
            node_port_range: crate::api::nodeports::NODE_PORT_RANGE_DEFAULT,
            node_certificate_validity: flotilla_pki::CERTIFICATE_VALIDITY_DEFAULT,
            encryption: None,
            audit: None,
        }
    }
}

impl From<RegistryConfig> for ServerOptions {
    fn from(registry: RegistryConfig) -> Self {
        ServerOptions {
            registry,
            ..ServerOptions::default()
        }
    }
}

/// A running server. [`Server::shutdown`] stops it.
pub struct Server {
    member: Member,
    api_address: SocketAddr,
    /// The credentials this process's own admin client presents to its
    /// API (`system:apiserver` in `system:masters`, as kube-apiserver's
    /// loopback client), when the API is served over HTTPS.
    own_client: Option<Credentials>,
    /// Issues the control-plane components' certificates, over HTTPS.
    ca: Option<Arc<ClusterCa>>,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
    compactor: JoinHandle<()>,
    /// Keep the authorization indexes current.
    feeds: Vec<JoinHandle<()>>,
    audit: Option<Arc<crate::audit::Auditor>>,
}

/// The user this server's own admin client is, as kube-apiserver's.
const LOOPBACK_USER: &str = flotilla_pki::names::API_SERVER_CLIENT;

impl Server {
    /// Starts a member with the defaults of [`ServerOptions`] (no `file://`
    /// images, ClusterIPs from 10.96.0.0/12, node ports from 30000-32767).
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        Server::start_with(config, ServerOptions::default()).await
    }

    /// Starts a member with `options`: a [`RegistryConfig`] (`flotilla up`
    /// allows `file://` images) or a whole [`ServerOptions`].
    pub async fn start_with(
        config: ServerConfig,
        options: impl Into<ServerOptions>,
    ) -> Result<Server, ServerError> {
        let options = options.into();
        if config.api_tls.is_none() && !config.api_listen.ip().is_loopback() {
            return Err(ServerError::NotLoopback(config.api_listen));
        }
        if !crate::api::services::valid_service_cidr(options.service_cidr) {
            return Err(ServerError::ServiceCidr(options.service_cidr));
        }
        let listener = TcpListener::bind(config.api_listen)
            .await
            .map_err(|source| ServerError::Bind {
                address: config.api_listen,
                source,
            })?;
        let api_address = listener.local_addr().map_err(|source| ServerError::Bind {
            address: config.api_listen,
            source,
        })?;
        // Loaded once: the member, the join authority and the components'
        // certificates all issue from this one.
        let cluster_ca = config.cluster_ca()?;
        let ca = config.api_tls.as_ref().map(|_| cluster_ca.clone());
        let own_client = match &ca {
            Some(ca) => Some(crate::tls::user_credentials(
                ca,
                LOOPBACK_USER,
                Some(crate::auth::user::MASTERS),
            )?),
            None => None,
        };
        let tls_dir = config.store.tls_dir.clone();
        let mut store = config.store;
        store.ca = Some(cluster_ca);
        // The API server uses its member in-process; over the network the
        // store serves only the join authority, which alone changes members.
        store.client_access = flotilla_raft_store::access::ClientAccess {
            clients: vec![crate::join::AUTHORITY_NAME.to_string()],
            membership: vec![crate::join::AUTHORITY_NAME.to_string()],
        };
        // Before the store starts: an audit log that cannot be written
        // stops the server here, with nothing to undo.
        let metrics = Arc::new(crate::api::metrics::Metrics::default());
        let audit = options
            .audit
            .map(|config| crate::audit::Auditor::start(config, metrics.clone()))
            .transpose()?;
        let member = Member::start(store).await?;
        let storage = Storage::new(member.service().clone(), member.kv().clone())
            .with_encryption(options.encryption.clone());
        let mut state = ApiState::new(storage);
        let tokens = std::sync::Arc::new(Tokens {
            signer: Signer::ensure(&tls_dir)?,
            accounts: Accounts::new(),
        });
        state.tokens = Some(tokens.clone());
        if let Some(ca) = &ca {
            let authority = crate::join::Authority::new(ca.clone(), member.address())?
                .with_service_account_key(tokens.signer.pem())
                .with_node_validity(options.node_certificate_validity);
            state.join = Some(std::sync::Arc::new(authority));
        }
        if let Some(credentials) = &own_client {
            state.kubelet_tls = Some(crate::tls::kubelet_connector(credentials)?);
        }
        state.modules = std::sync::Arc::new(ModuleRegistry::new(options.registry));
        state.service_cidr = options.service_cidr;
        state.node_port_range = options.node_port_range;
        state.metrics = metrics;
        state.audit = audit.clone();
        bootstrap(&state).await?;
        let mut feeds = state.authorizer.start(&state.storage).await?;
        state.storage.observe(tokens.accounts.clone());
        feeds.push(crate::auth::feed::start(&state.storage, tokens.accounts.clone()).await?);

        let compactor = tokio::spawn(compact_periodically(
            state.storage.clone(),
            config.compaction_interval,
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let router = api::router(state);
        let api_tls = config.api_tls;
        let serving = tokio::spawn(async move {
            let served = crate::tls::serve(listener, api_tls.as_ref(), router, stopped).await;
            if let Err(error) = served {
                tracing::error!(%error, "the API server stopped");
            }
        });
        tracing::info!(%api_address, "Kubernetes API serving");
        Ok(Server {
            member,
            api_address,
            own_client,
            ca,
            stop,
            serving,
            compactor,
            feeds,
            audit,
        })
    }

    pub fn api_address(&self) -> SocketAddr {
        self.api_address
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Waits until every audit event of the requests answered so far is
    /// written to the audit log and flushed; at once without auditing.
    pub async fn flush_audit(&self) {
        if let Some(audit) = &self.audit {
            audit.flush().await;
        }
    }

    /// A kube-rs client of this server's own API with every permission
    /// (`system:apiserver` in `system:masters`).
    pub async fn client(&self) -> Result<kube::Client, ServerError> {
        self.client_with(self.own_client.as_ref()).await
    }

    /// A client of this server's own API as `user` (no groups beyond
    /// `system:authenticated`): a control-plane component's identity. Over
    /// plain HTTP, where there are no certificates, it is [`Server::client`].
    pub async fn client_as(&self, user: &str) -> Result<kube::Client, ServerError> {
        let Some(ca) = &self.ca else {
            return self.client().await;
        };
        let credentials = crate::tls::component_credentials(ca, user)?;
        self.client_with(Some(&credentials)).await
    }

    /// One client per control-plane component ([`identity`]), each with
    /// its own certificate, as kube-controller-manager's
    /// `--use-service-account-credentials`.
    ///
    /// [`identity`]: crate::controllers::identity
    pub async fn controller_clients(&self) -> Result<ControllerClients, ServerError> {
        use crate::controllers::identity;
        let mut clients = ControllerClients::shared(self.client().await?);
        if self.ca.is_none() {
            return Ok(clients);
        }
        for user in [identity::ELECTOR, identity::SCHEDULER] {
            clients = clients.with(user, self.client_as(user).await?);
        }
        for controller in identity::CONTROLLERS {
            let client = self.client_as(&identity::user_of(controller)).await?;
            clients = clients.with(controller, client);
        }
        Ok(clients)
    }

    async fn client_with(
        &self,
        credentials: Option<&Credentials>,
    ) -> Result<kube::Client, ServerError> {
        let mut host = self.api_address;
        if host.ip().is_unspecified() {
            host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let document = match credentials {
            Some(credentials) => crate::tls::kubeconfig(&format!("https://{host}"), credentials),
            None => kubeconfig(&format!("http://{host}")),
        };
        let client_error = |error: &dyn std::fmt::Display| ServerError::Client(error.to_string());
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&document).map_err(|e| client_error(&e))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| client_error(&e))?;
        kube::Client::try_from(config).map_err(|e| client_error(&e))
    }

    /// Starts this member's candidacy for running the controllers; they run
    /// while it holds the lease, until the returned value is dropped.
    pub async fn start_controllers(
        &self,
        config: ControllersConfig,
    ) -> Result<Controllers, ServerError> {
        self.start_controllers_with(config, IpamConfig::default())
            .await
    }

    /// As [`Server::start_controllers`], with Node podCIDRs cut from
    /// `ipam`'s cluster CIDR (by default 10.240.0.0/12 in /22s).
    pub async fn start_controllers_with(
        &self,
        config: ControllersConfig,
        ipam: IpamConfig,
    ) -> Result<Controllers, ServerError> {
        Ok(Controllers::start_with(
            self.controller_clients().await?,
            config,
            ipam,
        ))
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        // The serving task owns every connection: ending it ends them.
        self.serving.abort();
        let _ = self.serving.await;
        self.compactor.abort();
        let _ = self.compactor.await;
        for feed in self.feeds {
            feed.abort();
        }
        // The last requests' events reach the log before the process ends.
        if let Some(audit) = &self.audit {
            audit.flush().await;
        }
        self.member.shutdown().await;
    }
}

/// Kubernetes' compaction: at each tick, compact to the revision seen at
/// the tick before, so a full interval of history is always kept.
async fn compact_periodically(storage: Storage, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut previous = storage.current_revision();
    loop {
        ticker.tick().await;
        let span = tracing::debug_span!("compaction", revision = previous);
        if let Err(error) = storage.compact(previous).instrument(span).await {
            tracing::warn!(%error, "compaction failed; retrying at the next interval");
        }
        previous = storage.current_revision();
    }
}

async fn bootstrap(state: &ApiState) -> Result<(), ServerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let bootstrapped = async {
            api::namespaces::bootstrap(state).await?;
            crate::auth::policy::reconcile(state).await
        };
        match bootstrapped.await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < BOOTSTRAP_ATTEMPTS_MAX => {
                tracing::debug!(%error, attempt, "waiting for the store to accept writes");
                tokio::time::sleep(BOOTSTRAP_PAUSE).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A kubeconfig that points kubectl at `server` (an `http://` URL; see
/// `tls::kubeconfig` for HTTPS).
pub fn kubeconfig(server: &str) -> String {
    kubeconfig_document(server, "admin", "", " {}")
}

/// The kubeconfig document: one cluster, one user, one context.
/// `cluster_extra` and `user` are YAML continuing the `cluster:` and `user:`
/// lines.
pub(crate) fn kubeconfig_document(
    server: &str,
    user_name: &str,
    cluster_extra: &str,
    user: &str,
) -> String {
    let user_name = serde_json::Value::from(user_name);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: flotilla
  cluster:
    server: {server}{cluster_extra}
contexts:
- name: flotilla
  context:
    cluster: flotilla
    user: {user_name}
    namespace: default
current-context: flotilla
users:
- name: {user_name}
  user:{user}
"
    )
}
