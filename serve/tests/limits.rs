//! The limits against real sockets on loopback: raw HTTP/1 clients that
//! stall, idle, stream, or come many from one address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_serve::{Limits, Ticket, serve};
use http_body_util::{BodyExt, Channel, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Upper bound on any wait; limits here are fractions of a second.
const WAIT: Duration = Duration::from_secs(10);

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A server with `limits` on a loopback port: `/` answers at once, `/stream`
/// sends one chunk, waits three idle timeouts, then sends another; a
/// request with `authorization` marks its connection authenticated.
async fn start(limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let make_service = move |_: &flotilla_serve::Accepted<'_>| {
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            if request.headers().contains_key("authorization")
                && let Some(ticket) = request.extensions().get::<Ticket>()
            {
                ticket.authenticated();
            }
            let body: Body = if request.uri().path() == "/stream" {
                let (mut sender, body) = Channel::<Bytes>::new(1);
                tokio::spawn(async move {
                    sender.send_data(Bytes::from("first;")).await.unwrap();
                    tokio::time::sleep(limits.idle_timeout * 3).await;
                    sender.send_data(Bytes::from("second;")).await.unwrap();
                });
                body.boxed()
            } else {
                Full::new(Bytes::from("ok")).boxed()
            };
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
        })
    };
    tokio::spawn(serve(
        listener,
        None,
        limits,
        make_service,
        std::future::pending(),
    ));
    address
}

/// A connection to `server` from the loopback address `from`.
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// Reads until `stream` has sent `wanted`, or ends; returns what came.
async fn read_until(stream: &mut TcpStream, wanted: &str) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&received).contains(wanted) {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .expect("the server neither answered nor closed");
    String::from_utf8_lossy(&received).into_owned()
}

/// Waits for `stream` to be closed by the server.
async fn closed(stream: &mut TcpStream) {
    let rest = read_until(stream, "\u{0}never").await;
    assert!(!rest.contains("\u{0}never"));
}

async fn get(stream: &mut TcpStream, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until(stream, "ok").await
}

#[tokio::test]
async fn an_unfinished_request_head_is_cut_at_the_header_read_timeout() {
    let server = start(Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut stalled = TcpStream::connect(server).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    closed(&mut stalled).await;
    let mut prompt = TcpStream::connect(server).await.unwrap();
    assert!(get(&mut prompt, "/", "").await.contains("200 OK"));
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_slow_response_is_not() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut idle = TcpStream::connect(server).await.unwrap();
    assert!(get(&mut idle, "/", "").await.contains("200 OK"));
    closed(&mut idle).await;

    let mut streaming = TcpStream::connect(server).await.unwrap();
    let request = "GET /stream HTTP/1.1\r\nhost: test\r\n\r\n";
    streaming.write_all(request.as_bytes()).await.unwrap();
    let received = read_until(&mut streaming, "second;").await;
    assert!(received.contains("first;"), "{received}");
    assert!(received.contains("second;"), "{received}");
}

#[tokio::test]
async fn one_address_holds_at_most_its_cap_of_unauthenticated_connections() {
    let server = start(Limits {
        unauthenticated_per_address: Some(3),
        ..Limits::default()
    })
    .await;
    let attacker = [127, 0, 0, 2];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(attacker, server).await);
    }
    let mut refused = connect_from(attacker, server).await;
    closed(&mut refused).await;

    // Another address is served meanwhile.
    let mut other = connect_from([127, 0, 0, 1], server).await;
    assert!(get(&mut other, "/", "").await.contains("200 OK"));

    // A connection that authenticates gives its place back.
    assert!(
        get(&mut held[0], "/", "authorization: yes\r\n")
            .await
            .contains("200 OK")
    );
    let mut next = connect_from(attacker, server).await;
    assert!(get(&mut next, "/", "").await.contains("200 OK"));
}
