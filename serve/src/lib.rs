//! Serving HTTP on a TCP listener so that no client can hold it: the
//! accept loop every Flotilla listener shares (the Kubernetes API, the
//! kubelet endpoint, NodePorts, the Ingress gateway).
//!
//! Each connection is bounded in number and in time:
//!
//! - at most [`Limits::connections_max`] at once; more wait in the
//!   kernel's accept queue;
//! - at most [`Limits::unauthenticated_per_address`] from one client
//!   address that have not authenticated (by a TLS client certificate, or
//!   by a request the service vouches for through [`Ticket`]); more are
//!   closed as soon as they are accepted, so idle connections from one
//!   address cannot take every slot;
//! - a TLS handshake within [`Limits::handshake_timeout`], an HTTP/1
//!   request head within [`Limits::header_read_timeout`] (which also ends
//!   an idle keep-alive HTTP/1 connection), and no longer than
//!   [`Limits::idle_timeout`] with no request in flight, whatever the
//!   protocol. A request is in flight until its response body is done, so
//!   a quiet watch is never cut.
//!
//! This crate knows sockets, TLS sessions and HTTP connections; what a
//! request means, and who is authenticated by what it carries, is the
//! service's.

mod activity;
mod addresses;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use self::activity::{Activity, Tracked};
use self::addresses::Addresses;
pub use self::addresses::Ticket;

/// How many connections a listener holds, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub connections_max: usize,
    /// Connections from one client address that have not authenticated;
    /// `None` for listeners whose clients never do (public NodePorts).
    pub unauthenticated_per_address: Option<usize>,
    /// A TLS handshake not done by then is dropped.
    pub handshake_timeout: Duration,
    /// An HTTP/1 request head not read by then ends the connection.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// Go's and kube-apiserver's orders of magnitude: half a minute for a
    /// request head, a minute and a half of idleness.
    fn default() -> Self {
        Limits {
            connections_max: 4096,
            unauthenticated_per_address: None,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// A connection, as its service is made for it.
pub struct Accepted<'a> {
    pub client: SocketAddr,
    /// The TLS session, when the listener speaks TLS.
    pub tls: Option<&'a rustls::ServerConnection>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service one connection's requests can be served with.
pub trait ConnectionService<B>:
    hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S where
    S: hyper::service::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// A response body such a service may answer with.
pub trait ResponseBody:
    hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

/// Serves `listener` until `stop` completes (or the future is dropped,
/// which ends its connections too): each connection, over TLS when `tls`
/// is given, with the service `make_service` makes for it, within
/// `limits`.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    make_service: F,
    stop: impl Future<Output = ()> + Send,
) where
    F: Fn(&Accepted<'_>) -> S + Send + Sync + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let make_service = Arc::new(make_service);
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let addresses = limits.unauthenticated_per_address.map(Addresses::new);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut stop => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, client) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    continue;
                }
            },
        };
        let ticket = match &addresses {
            None => None,
            Some(addresses) => match addresses.claim(client.ip()) {
                Some(ticket) => Some(ticket),
                None => {
                    tracing::debug!(%client, "too many unauthenticated connections from this address");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let make_service = make_service.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = tls else {
                let service = make_service(&Accepted { client, tls: None });
                serve_connection(stream, service, ticket, &limits, client).await;
                return;
            };
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%client, %error, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%client, "TLS handshake timed out");
                        return;
                    }
                };
            let session = stream.get_ref().1;
            // The verifier checked any certificate presented: one is there
            // only if it chains to the CA.
            if let Some(ticket) = &ticket
                && session.peer_certificates().is_some()
            {
                ticket.authenticated();
            }
            let service = make_service(&Accepted {
                client,
                tls: Some(session),
            });
            serve_connection(stream, service, ticket, &limits, client).await;
        });
    }
}

/// Serves HTTP/1 or HTTP/2 on one connection until the client ends it, it
/// breaks a limit, or it idles past the idle timeout.
async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    ticket: Option<Ticket>,
    limits: &Limits,
    client: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let activity = Arc::new(Activity::default());
    let service = Tracked::new(service, ticket, activity.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(%client, "closing an idle connection");
            connection.as_mut().graceful_shutdown();
            // Nothing is in flight: the goodbye is all that is left to send.
            match tokio::time::timeout(limits.handshake_timeout, connection).await {
                Ok(served) => served,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = served {
        tracing::debug!(%client, %error, "connection ended");
    }
}
