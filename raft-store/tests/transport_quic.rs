//! Tests of the QUIC transport over real loopback sockets: raft messages
//! between members with mutual TLS, refusal of a foreign CA, the generic
//! client-protocol stream, frame limits, and reconnection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_raft_store::Error;
use flotilla_raft_store::replica::Network;
use flotilla_raft_store::transport::{
    CLIENT_FRAME_BYTES_MAX, ClusterCa, Credentials, Inbound, PeerNetwork, PeerReport, QuicEndpoint,
    member_name, read_frame, read_message, write_message,
};
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Everything in these tests happens on loopback; this bounds each wait so
/// a broken transport fails the test instead of hanging it.
const WAIT_MS: u64 = 15_000;

/// Bound of the inbound raft channels in these tests.
const INBOUND_MESSAGES_MAX: usize = 64;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn credentials(ca: &ClusterCa, name: &str) -> Credentials {
    ca.issue(name, &["127.0.0.1".into(), "localhost".into()])
        .expect("issue")
}

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = from;
    message.to = to;
    message.term = term;
    message
}

struct Member {
    endpoint: QuicEndpoint,
    raft_in: mpsc::Receiver<Message>,
}

fn member(credentials: &Credentials, address: SocketAddr) -> flotilla_raft_store::Result<Member> {
    member_with_inbound(credentials, address, INBOUND_MESSAGES_MAX)
}

fn member_with_inbound(
    credentials: &Credentials,
    address: SocketAddr,
    inbound_messages_max: usize,
) -> flotilla_raft_store::Result<Member> {
    let (sender, raft_in) = mpsc::channel(inbound_messages_max);
    let inbound = Inbound {
        raft: Some(sender),
        client: None,
    };
    let endpoint = QuicEndpoint::bind(address, credentials, inbound)?;
    Ok(Member { endpoint, raft_in })
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(WAIT_MS), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_for_count(counter: &AtomicU64, expected: u64) {
    within("a counter", async {
        while counter.load(Ordering::SeqCst) < expected {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(counter.load(Ordering::SeqCst), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_exchange_raft_messages() {
    let ca = ClusterCa::generate().expect("ca");
    let mut one = member(&credentials(&ca, "member-1"), loopback()).expect("member 1");
    let mut two = member(&credentials(&ca, "member-2"), loopback()).expect("member 2");
    let address_one = one.endpoint.local_addr().expect("addr").to_string();
    let address_two = two.endpoint.local_addr().expect("addr").to_string();

    let (network_one, _reports_one) = PeerNetwork::new(one.endpoint.clone());
    let (network_two, _reports_two) = PeerNetwork::new(two.endpoint.clone());
    network_one.set_peer_address(2, address_two);
    network_two.set_peer_address(1, address_one);

    for term in 1..=3 {
        network_one.send(2, heartbeat(1, 2, term));
    }
    for term in 1..=3 {
        let received = within("1 -> 2", two.raft_in.recv()).await.expect("open");
        assert_eq!(received, heartbeat(1, 2, term), "order and content kept");
    }
    network_two.send(1, heartbeat(2, 1, 9));
    let received = within("2 -> 1", one.raft_in.recv()).await.expect("open");
    assert_eq!(received, heartbeat(2, 1, 9));
    // Counters are bumped after the hand-over, so they may trail the
    // messages themselves by a moment.
    wait_for_count(&two.endpoint.stats().raft_received, 3).await;
    wait_for_count(&one.endpoint.stats().raft_sent, 3).await;

    // A message to a member nobody told us about is dropped and counted.
    network_one.send(7, heartbeat(1, 7, 1));
    assert_eq!(
        one.endpoint
            .stats()
            .raft_dropped_peer_down
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let cluster_ca = ClusterCa::generate().expect("ca");
    let other_ca = ClusterCa::generate().expect("other ca");
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let inbound = Inbound {
        raft: None,
        client: Some(Arc::new(
            move |_peer, mut send: quinn::SendStream, _recv| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = send.write_all(b"served").await;
                    let _ = send.finish();
                }
            },
        )),
    };
    let server = QuicEndpoint::bind(loopback(), &credentials(&cluster_ca, "member-1"), inbound)
        .expect("server");
    let address = server.local_addr().expect("addr").to_string();

    // A client whose certificate the cluster CA did not sign.
    let intruder =
        QuicEndpoint::client(loopback(), &credentials(&other_ca, "intruder")).expect("client");
    let attempt = within("the intruder's attempt", async {
        let (_send, mut recv) = intruder.open_client_stream(&address).await?;
        read_frame(&mut recv, CLIENT_FRAME_BYTES_MAX).await
    })
    .await;
    assert!(attempt.is_err(), "the intruder got through: {attempt:?}");
    wait_for_count(&server.stats().handshakes_failed, 1).await;
    assert_eq!(served.load(Ordering::SeqCst), 0);

    // And a member of the cluster refuses a server from the other CA.
    let (sender, _raft_in) = mpsc::channel(INBOUND_MESSAGES_MAX);
    let impostor = QuicEndpoint::bind(
        loopback(),
        &credentials(&other_ca, "impostor"),
        Inbound {
            raft: Some(sender),
            client: None,
        },
    )
    .expect("impostor");
    let impostor_address = impostor.local_addr().expect("addr").to_string();
    let client =
        QuicEndpoint::client(loopback(), &credentials(&cluster_ca, "client-1")).expect("client");
    let refused = within(
        "the connection to the impostor",
        client.connect(&impostor_address),
    )
    .await;
    assert!(matches!(refused, Err(Error::Transport(_))), "{refused:?}");
}

#[derive(Clone, PartialEq, prost::Message)]
struct Probe {
    #[prost(string, tag = "1")]
    text: String,
}

/// A handler in the shape the client protocol will have: read one request,
/// answer with the caller's verified name, finish.
fn echo_inbound() -> Inbound {
    Inbound {
        raft: None,
        client: Some(Arc::new(
            |peer: flotilla_raft_store::transport::PeerIdentity,
             mut send: quinn::SendStream,
             mut recv: quinn::RecvStream| async move {
                let request: Probe = match read_message(&mut recv, CLIENT_FRAME_BYTES_MAX).await {
                    Ok(Some(request)) => request,
                    _ => return,
                };
                let reply = Probe {
                    text: format!("{} said {}", peer.name, request.text),
                };
                if write_message(&mut send, &reply, CLIENT_FRAME_BYTES_MAX)
                    .await
                    .is_ok()
                {
                    let _ = send.finish();
                }
            },
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_round_trip_through_the_generic_handler() {
    let ca = ClusterCa::generate().expect("ca");
    // Bound first, handler installed after: the member's handler needs the
    // replica, which needs the endpoint.
    let server = QuicEndpoint::bind(
        loopback(),
        &credentials(&ca, "member-1"),
        Inbound::default(),
    )
    .expect("server");
    server.set_client_handler(echo_inbound().client.expect("a handler"));
    let address = server.local_addr().expect("addr").to_string();
    let client = QuicEndpoint::client(loopback(), &credentials(&ca, "client-7")).expect("client");

    for text in ["hello", "again on the same connection"] {
        let reply = within("a reply", async {
            let (mut send, mut recv) = client.open_client_stream(&address).await?;
            let request = Probe { text: text.into() };
            write_message(&mut send, &request, CLIENT_FRAME_BYTES_MAX).await?;
            let _ = send.finish();
            read_message::<_, Probe>(&mut recv, CLIENT_FRAME_BYTES_MAX).await
        })
        .await
        .expect("round trip");
        assert_eq!(
            reply.map(|probe| probe.text),
            Some(format!("client-7 said {text}"))
        );
    }
    assert_eq!(server.stats().client_streams.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_rejected_before_it_arrives() {
    let ca = ClusterCa::generate().expect("ca");
    let (verdicts, mut verdict) = mpsc::channel(1);
    let inbound = Inbound {
        raft: None,
        client: Some(Arc::new(
            move |_peer, _send: quinn::SendStream, mut recv: quinn::RecvStream| {
                let verdicts = verdicts.clone();
                async move {
                    let result = read_frame(&mut recv, CLIENT_FRAME_BYTES_MAX).await;
                    let _ = verdicts
                        .send(result.map(|frame| frame.map(|f| f.len())))
                        .await;
                }
            },
        )),
    };
    let server =
        QuicEndpoint::bind(loopback(), &credentials(&ca, "member-1"), inbound).expect("server");
    let address = server.local_addr().expect("addr").to_string();
    let client = QuicEndpoint::client(loopback(), &credentials(&ca, "client-1")).expect("client");

    let (mut send, _recv) = within("a stream", client.open_client_stream(&address))
        .await
        .expect("stream");
    // Only the length prefix of a frame one byte over the limit: the server
    // must refuse from the prefix, without waiting for the body.
    let claimed = CLIENT_FRAME_BYTES_MAX as u32 + 1;
    send.write_all(&claimed.to_be_bytes()).await.expect("write");
    send.flush().await.expect("flush");
    let result = within("the verdict", verdict.recv())
        .await
        .expect("verdict");
    assert!(
        matches!(result, Err(Error::TooLarge { size, .. }) if size == claimed as usize),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_reconnects_after_the_peer_restarts_on_the_same_port() {
    let ca = ClusterCa::generate().expect("ca");
    let credentials_two = credentials(&ca, "member-2");
    let one = member(&credentials(&ca, "member-1"), loopback()).expect("member 1");
    let mut two = member(&credentials_two, loopback()).expect("member 2");
    let address_two = two.endpoint.local_addr().expect("addr");

    let (network, mut reports) = PeerNetwork::new(one.endpoint.clone());
    network.set_peer_address(2, address_two.to_string());
    network.send(2, heartbeat(1, 2, 1));
    assert_eq!(
        within("first delivery", two.raft_in.recv()).await,
        Some(heartbeat(1, 2, 1))
    );

    two.endpoint.shutdown().await;
    drop(two);
    let report = within("the unreachable report", reports.recv()).await;
    assert_eq!(report, Some(PeerReport::Unreachable(2)));

    // The old socket is released asynchronously; bind again until it is.
    let mut restarted = within("rebinding the same port", async {
        loop {
            match member(&credentials_two, address_two) {
                Ok(member) => return member,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    // raft retransmits; so does this test, until the sender has reconnected.
    let delivered = within("delivery after the restart", async {
        let mut term = 2;
        loop {
            network.send(2, heartbeat(1, 2, term));
            let wait = Duration::from_millis(100);
            if let Ok(Some(message)) = tokio::time::timeout(wait, restarted.raft_in.recv()).await {
                return message;
            }
            term += 1;
        }
    })
    .await;
    assert_eq!(delivered.from, 1);
    assert_eq!(delivered.get_msg_type(), MessageType::MsgHeartbeat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_send_raft_and_only_in_their_own_name() {
    let ca = ClusterCa::generate().expect("ca");
    let mut two = member(&credentials(&ca, &member_name(2)), loopback()).expect("member 2");
    let address_two = two.endpoint.local_addr().expect("addr").to_string();

    // A client of the store holds a certificate from the same CA.
    let client = QuicEndpoint::client(loopback(), &credentials(&ca, "client-1")).expect("client");
    let (from_client, _reports) = PeerNetwork::new(client);
    from_client.set_peer_address(2, address_two.clone());
    from_client.send(2, heartbeat(1, 2, 1));
    wait_for_count(&two.endpoint.stats().raft_refused, 1).await;

    // Member 3 may speak raft, but not as member 1.
    let three = member(&credentials(&ca, &member_name(3)), loopback()).expect("member 3");
    let (from_three, _reports) = PeerNetwork::new(three.endpoint.clone());
    from_three.set_peer_address(2, address_two);
    from_three.send(2, heartbeat(1, 2, 1));
    wait_for_count(&two.endpoint.stats().raft_refused, 2).await;
    assert!(
        two.raft_in.try_recv().is_err(),
        "a refused message was delivered"
    );

    // As itself it is heard (on a new stream: the refused one was dropped).
    from_three.send(2, heartbeat(3, 2, 4));
    let heard = within("member 3's own message", async {
        loop {
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(100), two.raft_in.recv()).await
            {
                return message;
            }
            from_three.send(2, heartbeat(3, 2, 4));
        }
    })
    .await;
    assert_eq!(heard, heartbeat(3, 2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_travels_on_its_own_stream_and_is_reported() {
    let ca = ClusterCa::generate().expect("ca");
    let one = member(&credentials(&ca, &member_name(1)), loopback()).expect("member 1");
    let mut two = member(&credentials(&ca, &member_name(2)), loopback()).expect("member 2");
    let (network, mut reports) = PeerNetwork::new(one.endpoint.clone());
    network.set_peer_address(2, two.endpoint.local_addr().expect("addr").to_string());

    let mut snapshot = heartbeat(1, 2, 5);
    snapshot.set_msg_type(MessageType::MsgSnapshot);
    snapshot.mut_snapshot().data = vec![42u8; 3 * 1024 * 1024].into();
    snapshot.mut_snapshot().mut_metadata().index = 100;
    network.send(2, snapshot.clone());
    network.send(2, heartbeat(1, 2, 5));

    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(within("a message", two.raft_in.recv()).await.expect("open"));
    }
    assert!(
        received.contains(&snapshot),
        "snapshot not delivered intact"
    );
    assert!(received.contains(&heartbeat(1, 2, 5)));
    let report = within("the snapshot report", reports.recv()).await;
    assert_eq!(report, Some(PeerReport::SnapshotSent(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_channel_drops_and_counts() {
    let ca = ClusterCa::generate().expect("ca");
    let one = member(&credentials(&ca, &member_name(1)), loopback()).expect("member 1");
    let mut two =
        member_with_inbound(&credentials(&ca, &member_name(2)), loopback(), 2).expect("member 2");
    let (network, _reports) = PeerNetwork::new(one.endpoint.clone());
    network.set_peer_address(2, two.endpoint.local_addr().expect("addr").to_string());

    for term in 1..=10 {
        network.send(2, heartbeat(1, 2, term));
    }
    // Nobody reads member 2's channel until every message is accounted for.
    let stats = two.endpoint.stats();
    within("all ten to arrive", async {
        while stats.raft_received.load(Ordering::SeqCst)
            + stats.raft_dropped_inbound.load(Ordering::SeqCst)
            < 10
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(stats.raft_received.load(Ordering::SeqCst), 2);
    assert_eq!(stats.raft_dropped_inbound.load(Ordering::SeqCst), 8);
    // The first ones were kept, in order.
    assert_eq!(two.raft_in.recv().await, Some(heartbeat(1, 2, 1)));
    assert_eq!(two.raft_in.recv().await, Some(heartbeat(1, 2, 2)));
}
