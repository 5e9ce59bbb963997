//! One running store member: the replica, the state machine, the durable
//! log, the QUIC endpoint, lease expiry and the client protocol, wired
//! together. This is what `flotilla store` runs and what `flotilla server`
//! embeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{Error, MemberId, Result};
use crate::kv::proto::{Command, LeaseRevokeRequest, command, encode_command};
use crate::kv::{KvStore, SystemClock};
use crate::log::DiskLog;
use crate::replica::{Network, Replica, ReplicaConfig, ReplicaHandle};
use crate::server::Service;
use crate::transport::tls::member_name;
use crate::transport::{ClusterCa, Credentials, Inbound, PeerNetwork, QuicEndpoint};

/// Raft messages from peers waiting for the replica. A burst beyond this is
/// dropped (raft retransmits); it covers a full inflight window from four
/// peers.
const INBOUND_RAFT_MESSAGES_MAX: usize = 4096;
/// How often the leader looks for expired leases. Lease TTLs are whole
/// seconds (at least two), so a quarter second keeps expiry within ~10 %.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 250;
/// Expired leases revoked per check; the rest wait for the next check, so a
/// mass expiry cannot flood the log in one go.
const LEASE_REVOKES_PER_CHECK_MAX: usize = 128;
/// How often idle watchers that asked for it learn the current revision.
/// The API server turns these into watch bookmarks.
pub const WATCH_PROGRESS_INTERVAL_MS: u64 = 1_000;

/// A member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: MemberId,
    pub address: SocketAddr,
}

/// How to run one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub id: MemberId,
    /// Holds the raft log and snapshots (`raft/`).
    pub data_dir: PathBuf,
    /// The UDP address of this member's QUIC endpoint (raft and clients).
    pub listen: SocketAddr,
    /// The members of a new cluster, this one included. Ignored on restart
    /// (the log knows the membership) and when joining.
    pub initial_members: Vec<PeerSpec>,
    /// Start empty and wait to be added by a running cluster.
    pub join: bool,
    /// The cluster CA (`ca.pem`, `ca-key.pem`), from which this member
    /// issues its own certificate.
    pub tls_dir: PathBuf,
    /// The cluster CA when the process holds it already (a server loads it
    /// once): then `tls_dir` is not read.
    pub ca: Option<Arc<ClusterCa>>,
    pub tick_interval: Duration,
    /// How long a write or linearizable read may wait before it fails with
    /// `Error::Timeout` (its outcome then unknown).
    pub proposal_timeout: Duration,
    pub lease_check_interval: Duration,
    pub watch_progress_interval: Duration,
    /// Which certificate names may use the client protocol, and change
    /// the membership ([`ClientAccess`]; by default the standalone store's
    /// own tools).
    pub client_access: crate::access::ClientAccess,
}

impl Default for MemberConfig {
    fn default() -> Self {
        MemberConfig {
            id: 1,
            data_dir: PathBuf::from("flotilla-store"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            initial_members: Vec::new(),
            join: false,
            tls_dir: PathBuf::from("flotilla-store/ca"),
            ca: None,
            tick_interval: Duration::from_millis(crate::replica::TICK_INTERVAL_MS_DEFAULT),
            proposal_timeout: Duration::from_millis(crate::replica::PROPOSAL_TIMEOUT_MS_DEFAULT),
            lease_check_interval: Duration::from_millis(LEASE_CHECK_INTERVAL_MS),
            watch_progress_interval: Duration::from_millis(WATCH_PROGRESS_INTERVAL_MS),
            client_access: crate::access::ClientAccess::default(),
        }
    }
}

/// Loads the cluster CA kept in `dir`, creating it first if `dir` has none
/// (a standalone store's first member does; see [`ClusterCa::ensure`]).
pub fn ensure_cluster_ca(dir: &Path) -> Result<ClusterCa> {
    Ok(ClusterCa::ensure(dir)?)
}

/// A running member. Dropping it without [`Member::shutdown`] leaves its
/// tasks running until the runtime ends.
pub struct Member {
    id: MemberId,
    address: SocketAddr,
    replica: ReplicaHandle,
    kv: Arc<KvStore>,
    service: Arc<Service>,
    endpoint: QuicEndpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl Member {
    /// Opens (or creates) the member's log, binds its endpoint and starts
    /// it. Must be called inside a tokio runtime.
    pub async fn start(config: MemberConfig) -> Result<Member> {
        let span = tracing::info_span!("store.member", id = config.id);
        Self::start_inner(config).instrument(span).await
    }

    async fn start_inner(config: MemberConfig) -> Result<Member> {
        validate(&config)?;
        let credentials = match &config.ca {
            Some(ca) => member_credentials(ca, &config)?,
            None => member_credentials(&ClusterCa::load(&config.tls_dir)?, &config)?,
        };
        let log = DiskLog::open(config.data_dir.join("raft"))?;
        let kv = Arc::new(KvStore::new(Arc::new(SystemClock)));

        let (raft_in, raft_messages) = mpsc::channel(INBOUND_RAFT_MESSAGES_MAX);
        let inbound = Inbound {
            raft: Some(raft_in),
            // Installed below, once the service exists: it needs the replica,
            // which needs this endpoint's network.
            client: None,
        };
        let endpoint = QuicEndpoint::bind(config.listen, &credentials, inbound)?;
        let address = endpoint.local_addr()?;
        let (network, reports) = PeerNetwork::new(endpoint.clone());
        let network = Arc::new(network);
        for peer in &config.initial_members {
            if peer.id != config.id {
                network.set_peer_address(peer.id, peer.address.to_string());
            }
        }

        let replica = Replica::start(replica_config(&config), log, kv.clone(), network.clone())?;
        let service = Arc::new(
            Service::new(
                replica.clone(),
                kv.clone(),
                network.clone(),
                address.to_string(),
            )
            .with_access(config.client_access.clone()),
        );
        let handler = service.clone();
        endpoint.set_client_handler(Arc::new(move |peer, send, recv| {
            handler.clone().serve_stream(peer, send, recv)
        }));

        let tasks = vec![
            tokio::spawn(forward_raft_messages(raft_messages, replica.clone())),
            tokio::spawn(forward_reports(reports, replica.clone())),
            tokio::spawn(
                expire_leases(replica.clone(), kv.clone(), config.lease_check_interval)
                    .instrument(tracing::info_span!("store.leases")),
            ),
            tokio::spawn(notify_progress(kv.clone(), config.watch_progress_interval)),
        ];
        tracing::info!(%address, "store member started");
        Ok(Member {
            id: config.id,
            address,
            replica,
            kv,
            service,
            endpoint,
            tasks,
        })
    }

    pub fn id(&self) -> MemberId {
        self.id
    }

    /// Where members and clients reach this one.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn replica(&self) -> &ReplicaHandle {
        &self.replica
    }

    /// The local state machine (reads here are as fresh as this member).
    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// The client protocol served in-process: what an embedding API server
    /// calls instead of going through QUIC.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops the replica, the background tasks and the endpoint.
    pub async fn shutdown(self) {
        let _ = self.replica.stop().await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        // The endpoint holds the handler, which holds the service, which
        // holds the network, which holds the endpoint: swap the handler out
        // to break that cycle, or the UDP port would stay bound.
        self.endpoint
            .set_client_handler(Arc::new(|_peer, _send, _recv| async {}));
        drop(self.service);
        self.endpoint.shutdown().await;
        tracing::info!(id = self.id, "store member stopped");
    }
}

fn validate(config: &MemberConfig) -> Result<()> {
    if config.id == 0 {
        return Err(Error::InvalidRequest(
            "member id 0 is reserved; ids start at 1".into(),
        ));
    }
    if !config.join
        && !config.initial_members.is_empty()
        && !config
            .initial_members
            .iter()
            .any(|peer| peer.id == config.id)
    {
        return Err(Error::InvalidRequest(format!(
            "the initial members do not include this member ({}); list it with --peer {}=HOST:PORT",
            config.id, config.id
        )));
    }
    Ok(())
}

fn member_credentials(ca: &ClusterCa, config: &MemberConfig) -> Result<Credentials> {
    let mut names = vec![
        config.listen.ip().to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    names.dedup();
    Ok(ca.issue(&member_name(config.id), &names)?)
}

fn replica_config(config: &MemberConfig) -> ReplicaConfig {
    let voters = if config.join {
        Vec::new()
    } else if config.initial_members.is_empty() {
        vec![config.id]
    } else {
        config.initial_members.iter().map(|peer| peer.id).collect()
    };
    let mut replica = ReplicaConfig::new(config.id, voters);
    replica.tick_interval_ms = u64::try_from(config.tick_interval.as_millis()).unwrap_or(u64::MAX);
    replica.proposal_timeout_ms =
        u64::try_from(config.proposal_timeout.as_millis()).unwrap_or(u64::MAX);
    replica
}

async fn forward_raft_messages(
    mut messages: mpsc::Receiver<raft::eraftpb::Message>,
    replica: ReplicaHandle,
) {
    while let Some(message) = messages.recv().await {
        if replica.step(message).is_err() {
            return;
        }
    }
}

/// Tells raft which peers the network could not reach, so the leader stops
/// pipelining to them and probes instead. Snapshot delivery needs no report:
/// raft learns of an installed snapshot from the follower's answer.
async fn forward_reports(
    mut reports: mpsc::Receiver<crate::transport::PeerReport>,
    replica: ReplicaHandle,
) {
    while let Some(report) = reports.recv().await {
        if let crate::transport::PeerReport::Unreachable(member) = report
            && replica.report_unreachable(member).is_err()
        {
            return;
        }
    }
}

/// The leader's lease clock: promote on winning leadership (every lease gets
/// a full TTL, so a leader change never expires leases en masse), demote on
/// losing it, and propose revokes for leases past their deadline.
async fn expire_leases(replica: ReplicaHandle, kv: Arc<KvStore>, interval: Duration) {
    let mut leadership = replica.leadership();
    let mut leading = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_leading = leadership.borrow().leader_id == Some(replica.id());
                if now_leading && !leading {
                    kv.promote(Instant::now());
                } else if !now_leading && leading {
                    kv.demote();
                }
                leading = now_leading;
            }
            _ = ticker.tick() => {
                if leading {
                    revoke_expired(&replica, &kv).await;
                }
            }
        }
    }
}

async fn revoke_expired(replica: &ReplicaHandle, kv: &KvStore) {
    for id in kv.expired_leases(Instant::now(), LEASE_REVOKES_PER_CHECK_MAX) {
        let command = Command {
            request: Some(command::Request::LeaseRevoke(LeaseRevokeRequest { id })),
        };
        // A failed revoke is retried by the lessor after its retry delay.
        if let Err(error) = replica.propose(encode_command(&command)).await {
            tracing::warn!(lease = id, %error, "revoking an expired lease failed");
        }
    }
}

async fn notify_progress(kv: Arc<KvStore>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        kv.progress_notify();
    }
}
