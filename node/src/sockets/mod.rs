//! A guest's raw TCP (`wasi:sockets`), carried by the virtual pod network
//! instead of the host's: a socket binds and listens in its pod's own port
//! space, and connects to whatever the pod network says an address is (a
//! pod, a ClusterIP, the pod's own loopback). Name lookups
//! (`wasi:sockets/ip-name-lookup`) ask the same network, so a guest's
//! `TcpStream::connect("echo.default:7000")` works as it would in a
//! Kubernetes pod.
//!
//! This module knows the WASI socket state machine and the guest's byte
//! streams. Where a connection goes, and whether it may, is the
//! [`PodSockets`] it is given: the pod network, or [`NoSockets`], which
//! refuses everything. UDP stays off (wasmtime-wasi's, with UDP denied).

mod host;
mod stream;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

pub(crate) use host::{SocketsView, add_to_linker};
pub use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode;

/// Chunks buffered in each direction of a connection before the writer
/// waits: with [`CHUNK_BYTES_MAX`], at most 1 MiB per direction.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The largest chunk a guest may write at once (what `check-write` offers).
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Accepted connections a listener queues before new ones are refused
/// (the guest's backlog is clamped to this).
pub const BACKLOG_MAX: usize = 1024;

/// One end of a connection: the bytes the other end sent, and a sender
/// for the bytes to it. Dropping `outgoing` is the end of the stream (FIN);
/// a closed `incoming` is the other end's.
pub struct Duplex {
    pub incoming: mpsc::Receiver<Bytes>,
    pub outgoing: mpsc::Sender<Bytes>,
}

impl Duplex {
    /// Two ends joined to each other, bounded in both directions.
    pub fn pair() -> (Duplex, Duplex) {
        let (to_b, from_a) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (to_a, from_b) = mpsc::channel(CHUNKS_IN_FLIGHT);
        (
            Duplex {
                incoming: from_b,
                outgoing: to_b,
            },
            Duplex {
                incoming: from_a,
                outgoing: to_a,
            },
        )
    }
}

/// An established connection as one end sees it.
pub struct Connection {
    pub duplex: Duplex,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The connections arriving at a listening port. Dropping it stops the
/// listening: the port is free again and new connections are refused.
pub struct Listener {
    pub connections: mpsc::Receiver<Connection>,
}

/// A future of the pod network.
pub type NetFuture<T> = Pin<Box<dyn Future<Output = Result<T, ErrorCode>> + Send>>;

/// The pod network as a guest's sockets see it. Every call names the pod
/// the socket belongs to: its port space, its address and its policies.
pub trait PodSockets: Send + Sync + 'static {
    /// The pod's own address, which its sockets are bound to.
    fn pod_ip(&self, pod_uid: &str) -> Option<IpAddr>;

    /// Claims `port` in the pod's port space, or a free ephemeral one for
    /// port 0; fails with `address-in-use` when something listens there.
    fn bind(&self, pod_uid: &str, port: u16) -> Result<u16, ErrorCode>;

    /// Listens on `port` in the pod's port space, queueing at most
    /// `backlog` connections.
    fn listen(&self, pod_uid: &str, port: u16, backlog: usize) -> Result<Listener, ErrorCode>;

    /// Connects the pod's socket bound at `local` to `remote`.
    fn connect(
        &self,
        pod_uid: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> NetFuture<Connection>;

    /// Resolves `name` as the pod's DNS would.
    fn resolve(&self, pod_uid: &str, name: &str) -> NetFuture<Vec<IpAddr>>;
}

/// Refuses all sockets: a guest reaches nothing it was not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSockets;

impl PodSockets for NoSockets {
    fn pod_ip(&self, _: &str) -> Option<IpAddr> {
        None
    }

    fn bind(&self, _: &str, _: u16) -> Result<u16, ErrorCode> {
        Err(ErrorCode::AccessDenied)
    }

    fn listen(&self, _: &str, _: u16, _: usize) -> Result<Listener, ErrorCode> {
        Err(ErrorCode::AccessDenied)
    }

    fn connect(&self, _: &str, _: SocketAddr, _: SocketAddr) -> NetFuture<Connection> {
        Box::pin(async { Err(ErrorCode::AccessDenied) })
    }

    fn resolve(&self, _: &str, _: &str) -> NetFuture<Vec<IpAddr>> {
        Box::pin(async { Err(ErrorCode::AccessDenied) })
    }
}

/// Sockets one instance may hold open at once; the next is refused with
/// `new-socket-limit` (as a process past its descriptor limit gets
/// EMFILE).
pub const SOCKETS_PER_INSTANCE_MAX: usize = 1024;

/// What an instance's sockets are given: its pod, the network, and the
/// count of sockets it holds.
#[derive(Clone)]
pub(crate) struct SocketsCtx {
    pub(crate) pod_uid: String,
    pub(crate) network: Arc<dyn PodSockets>,
    open: Arc<AtomicUsize>,
}

impl SocketsCtx {
    pub(crate) fn new(pod_uid: String, network: Arc<dyn PodSockets>) -> Self {
        Self {
            pod_uid,
            network,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts one more open socket, unless the instance is at its limit.
    fn claim(&self) -> Result<(), ErrorCode> {
        self.open
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < SOCKETS_PER_INSTANCE_MAX).then_some(open + 1)
            })
            .map(drop)
            .map_err(|_| ErrorCode::NewSocketLimit)
    }

    /// Counts a socket closed.
    fn release(&self) {
        let _ = self
            .open
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                open.checked_sub(1)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_holds_at_most_its_limit_of_sockets() {
        let ctx = SocketsCtx::new("pod".to_owned(), Arc::new(NoSockets));
        for _ in 0..SOCKETS_PER_INSTANCE_MAX {
            ctx.claim().unwrap();
        }
        assert_eq!(ctx.claim(), Err(ErrorCode::NewSocketLimit));
        ctx.release();
        assert_eq!(ctx.claim(), Ok(()), "a closed socket frees its place");
        let clone = ctx.clone();
        assert_eq!(
            clone.claim(),
            Err(ErrorCode::NewSocketLimit),
            "clones count together"
        );
    }
}
