//! The node's HTTP listeners (NodePorts, the Ingress gateway): accept
//! loops with a bound on connections, optional TLS, HTTP/1.1 and HTTP/2,
//! each request handed to the router.
//!
//! This module knows sockets and protocols; what a request does is the
//! [`Handler`] it is given.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::workload::{RequestBody, ResponseBody};

/// Connections one listener serves at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 1024;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one request from the client at the given address.
pub(super) type Handler = Arc<
    dyn Fn(
            SocketAddr,
            http::Request<RequestBody>,
        ) -> Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// Serves `listener` with `handler` until the task is dropped (which ends
/// its connections too).
pub(super) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, handler: Handler) {
    let service = move |client: SocketAddr| {
        let handler = handler.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let response = handler(client, request.map(crate::request_body));
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        })
    };
    serve_with(listener, tls, CONNECTIONS_MAX, service).await;
}

/// Serves `listener` until the task is dropped, each connection (over TLS
/// when `tls` is given; at most `connections_max` at once) with the
/// service `service` makes for its client. The node's other HTTP
/// endpoints (the kubelet's) share this loop.
pub(crate) async fn serve_with<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections_max: usize,
    service: impl Fn(SocketAddr) -> S,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(connections_max));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let service = service(client);
        connections.spawn(async move {
            let _permit = permit;
            let builder = auto::Builder::new(TokioExecutor::new());
            let served =
                match tls {
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%client, %error, "TLS handshake refused");
                                    return;
                                }
                                Err(_) => return,
                            };
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                };
            if let Err(error) = served {
                tracing::debug!(%client, %error, "connection ended");
            }
        });
    }
}
