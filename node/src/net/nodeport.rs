//! NodePort listeners: for every nodePort of a NodePort or LoadBalancer
//! Service, a real TCP listener on the node's address that routes into
//! the Service wherever its pods run, as kube-proxy's rules do.
//!
//! One task follows the routing table and opens or closes listeners as
//! nodePorts come and go; each listener serves HTTP/1.1 and HTTP/2 and
//! hands every request to the router, which looks the Service up afresh,
//! so a Service that changes keeps its listener.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::PodNetwork;

/// Connections one nodePort serves at once; more wait in the accept queue.
const CONNECTIONS_PER_PORT_MAX: usize = 1024;
/// A port that could not be bound (taken by another process) is tried
/// again this often, for as long as its Service wants it.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Keeps one listener per nodePort on `address` until dropped.
pub(super) async fn run(network: PodNetwork, address: IpAddr) {
    let mut changes = network.table().subscribe();
    let mut listeners: HashMap<u16, JoinHandle<()>> = HashMap::new();
    loop {
        let wanted = network.table().node_ports();
        listeners.retain(|port, task| {
            let keep = wanted.contains(port) && !task.is_finished();
            if !keep {
                tracing::info!(port, "closing nodePort");
                task.abort();
            }
            keep
        });
        let mut failed = false;
        for port in wanted {
            if listeners.contains_key(&port) {
                continue;
            }
            let bind_at = SocketAddr::new(address, port);
            match TcpListener::bind(bind_at).await {
                Ok(listener) => {
                    tracing::info!(address = %bind_at, "serving nodePort");
                    let task = tokio::spawn(
                        serve(network.clone(), listener, port)
                            .instrument(tracing::info_span!("node_port", port)),
                    );
                    listeners.insert(port, task);
                }
                Err(error) => {
                    tracing::warn!(address = %bind_at, %error, "cannot listen on nodePort");
                    failed = true;
                }
            }
        }
        let changed = changes.changed();
        if failed {
            // Wake for the next change or to retry the ports that failed.
            let _ = tokio::time::timeout(BIND_RETRY, changed).await;
        } else if changed.await.is_err() {
            break;
        }
    }
    for task in listeners.into_values() {
        task.abort();
    }
}

async fn serve(network: PodNetwork, listener: TcpListener, port: u16) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_PER_PORT_MAX));
    // Aborting the listener's task drops the set, which ends its connections.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a nodePort connection failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let network = network.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let network = network.clone();
                    async move {
                        let request = request.map(crate::request_body);
                        Ok::<_, std::convert::Infallible>(
                            network.serve_node_port(port, client, request).await,
                        )
                    }
                });
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%client, %error, "nodePort connection ended");
            }
        });
    }
}
