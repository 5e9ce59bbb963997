//! NodePort listeners: for every nodePort of a NodePort or LoadBalancer
//! Service, a real TCP listener on the node's address that routes into
//! the Service wherever its pods run, as kube-proxy's rules do; and for
//! every port of a LoadBalancer Service too, since the nodes' addresses
//! are the balancer's (`status.loadBalancer.ingress`), as with k3s.
//!
//! One task follows the routing table and opens or closes listeners as
//! nodePorts come and go; each listener (`listen.rs`) hands every request
//! to the router, which looks the Service up afresh,
//! so a Service that changes keeps its listener.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{PodNetwork, listen};

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

/// Serves one nodePort's listener.
async fn serve(network: PodNetwork, listener: TcpListener, port: u16) {
    let handler: listen::Handler = Arc::new(move |client, request| {
        let network = network.clone();
        Box::pin(async move { network.serve_node_port(port, client, request).await })
    });
    listen::serve(listener, None, handler).await;
}
