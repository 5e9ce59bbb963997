//! One control-plane member as `flotilla server` runs it: a raft-store
//! member and the Kubernetes API on top of it, in one process.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_raft_store::member::{Member, MemberConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::storage::Storage;

/// Attempts to create the system namespaces while the store elects its
/// first leader.
const BOOTSTRAP_ATTEMPTS_MAX: u32 = 100;
const BOOTSTRAP_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "the API listens on plain HTTP, which is only allowed on loopback; \
         {0} is not a loopback address"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen for the API on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the store did not start: {0}")]
    Store(#[from] flotilla_raft_store::Error),
    #[error("the store did not become writable: {0}")]
    Bootstrap(#[from] crate::storage::StorageError),
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub store: MemberConfig,
    /// Where the Kubernetes API listens (HTTP; loopback only).
    pub api_listen: SocketAddr,
}

/// A running server. [`Server::shutdown`] stops it.
pub struct Server {
    member: Member,
    api_address: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
}

impl Server {
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        if !config.api_listen.ip().is_loopback() {
            return Err(ServerError::NotLoopback(config.api_listen));
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
        let member = Member::start(config.store).await?;
        let state = ApiState::new(Storage::new(member.service().clone(), member.kv().clone()));
        bootstrap(&state).await?;

        let (stop, stopped) = oneshot::channel::<()>();
        let router = api::router(state);
        let serving = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "the API server stopped");
            }
        });
        tracing::info!(%api_address, "Kubernetes API serving");
        Ok(Server {
            member,
            api_address,
            stop,
            serving,
        })
    }

    pub fn api_address(&self) -> SocketAddr {
        self.api_address
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        // Open watches keep graceful shutdown waiting; they end with the task.
        self.serving.abort();
        let _ = self.serving.await;
        self.member.shutdown().await;
    }
}

async fn bootstrap(state: &ApiState) -> Result<(), ServerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api::namespaces::bootstrap(state).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < BOOTSTRAP_ATTEMPTS_MAX => {
                tracing::debug!(%error, attempt, "waiting for the store to accept writes");
                tokio::time::sleep(BOOTSTRAP_PAUSE).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// A kubeconfig that points kubectl at `server` (an `http://` URL).
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: flotilla
  cluster:
    server: {server}
contexts:
- name: flotilla
  context:
    cluster: flotilla
    user: flotilla
    namespace: default
current-context: flotilla
users:
- name: flotilla
  user: {{}}
"
    )
}
