//! The node's HTTP listeners (NodePorts, the Ingress gateway): the shared
//! accept loop (`flotilla_serve`: bounded connections, handshake, header
//! and idle timeouts), optional TLS, HTTP/1.1 and HTTP/2, each request
//! handed to the router.
//!
//! This module knows sockets and protocols; what a request does is the
//! [`Handler`] it is given.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::workload::{RequestBody, ResponseBody};

/// Connections one listener serves at once; more wait in the accept queue.
const CONNECTIONS_MAX: usize = 1024;

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
/// its connections too). Its clients are the public's: no cap per
/// address, the timeouts of every listener.
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
/// service `service` makes for its client, bounded in time as
/// `flotilla_serve` bounds it. The node's other HTTP endpoints (the
/// kubelet's) share this loop.
pub(crate) async fn serve_with<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections_max: usize,
    service: impl Fn(SocketAddr) -> S + Send + Sync + 'static,
) where
    S: flotilla_serve::ConnectionService<B>,
    B: flotilla_serve::ResponseBody,
{
    let limits = flotilla_serve::Limits {
        connections_max,
        ..flotilla_serve::Limits::default()
    };
    let make_service = move |accepted: &flotilla_serve::Accepted<'_>| service(accepted.client);
    flotilla_serve::serve(listener, tls, limits, make_service, std::future::pending()).await;
}
