//! Whole members in one process: the disk log, the QUIC transport with
//! mutual TLS, the replica and the kv state machine, used through the
//! client protocol exactly as another process would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use flotilla_raft_store::Error;
use flotilla_raft_store::client::Client;
use flotilla_raft_store::kv::proto::{
    Compare, CompareResult, CompareTarget, EventType, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, compare, request_op,
};
use flotilla_raft_store::member::{Member, MemberConfig, PeerSpec, ensure_cluster_ca};

/// Short ticks so elections take ~0.2 s instead of ~1 s.
const TICK: Duration = Duration::from_millis(20);
/// Proposals forwarded to a leader that just died fail this fast.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on any wait for the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

struct Cluster {
    root: tempfile::TempDir,
    peers: Vec<PeerSpec>,
    members: Vec<Option<Member>>,
}

impl Cluster {
    async fn start(size: u64) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        ensure_cluster_ca(&root.path().join("ca")).unwrap();
        let peers: Vec<PeerSpec> = (1..=size)
            .map(|id| PeerSpec {
                id,
                address: free_udp_address(),
            })
            .collect();
        let mut cluster = Cluster {
            root,
            peers,
            members: Vec::new(),
        };
        for index in 0..cluster.peers.len() {
            let member = cluster.start_member(index, false).await;
            cluster.members.push(Some(member));
        }
        cluster
    }

    fn config(&self, index: usize, join: bool) -> MemberConfig {
        let peer = &self.peers[index];
        MemberConfig {
            id: peer.id,
            data_dir: self.root.path().join(format!("m{}", peer.id)),
            listen: peer.address,
            initial_members: self.peers.clone(),
            join,
            tls_dir: self.root.path().join("ca"),
            tick_interval: TICK,
            proposal_timeout: PROPOSAL_TIMEOUT,
            ..MemberConfig::default()
        }
    }

    async fn start_member(&self, index: usize, join: bool) -> Member {
        Member::start(self.config(index, join)).await.unwrap()
    }

    async fn client(&self) -> Client {
        self.client_of(&(0..self.peers.len()).collect::<Vec<_>>())
            .await
    }

    /// A client that knows only the members at `indexes`.
    async fn client_of(&self, indexes: &[usize]) -> Client {
        let addresses: Vec<SocketAddr> = indexes.iter().map(|&i| self.peers[i].address).collect();
        Client::connect(addresses, &self.root.path().join("ca"))
            .await
            .unwrap()
    }

    /// Waits until some member leads and returns its index.
    async fn leader(&self, client: &Client) -> usize {
        tokio::time::timeout(SETTLE_TIMEOUT, async {
            loop {
                // A survivor may still name a stopped leader until its
                // election timeout passes: that is not a leader yet.
                if let Ok(status) = client.status().await
                    && let Some(index) = self.peers.iter().position(|peer| peer.id == status.leader)
                    && self.members.get(index).is_none_or(Option::is_some)
                {
                    return index;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a leader is elected")
    }

    async fn stop(&mut self, index: usize) {
        let member = self.members[index].take().unwrap();
        member.shutdown().await;
    }
}

/// A put retried while its outcome is unknown: a proposal forwarded to a
/// leader that just died times out (it may or may not commit), and writing
/// the same value again is harmless.
async fn put_retrying(client: &Client, key: Vec<u8>, value: Vec<u8>) {
    for _ in 0..5 {
        match client.put(key.clone(), value.clone()).await {
            Ok(_) => return,
            Err(Error::Timeout { .. } | Error::Transport(_)) => continue,
            Err(error) => panic!("put failed: {error}"),
        }
    }
    panic!("put of {} never succeeded", String::from_utf8_lossy(&key));
}

fn free_udp_address() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reads_and_cas_through_the_client_protocol() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    cluster.leader(&client).await;

    let put = client
        .put(b"/registry/pods/a".to_vec(), b"v1".to_vec())
        .await
        .unwrap();
    let revision = put.header.unwrap().revision;
    let got = client
        .get(b"/registry/pods/a".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, b"v1");
    assert_eq!(got.mod_revision, revision);

    // Compare-and-swap on mod_revision, the way the API server checks
    // resourceVersion: the first swap wins, the stale one loses.
    let swap = |expected: i64, value: &[u8]| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: b"/registry/pods/a".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"/registry/pods/a".to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    assert!(client.txn(swap(revision, b"v2")).await.unwrap().succeeded);
    assert!(!client.txn(swap(revision, b"v3")).await.unwrap().succeeded);
    let got = client
        .get(b"/registry/pods/a".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, b"v2");

    // Oversized values are refused with a typed error, and nothing is written.
    let huge = vec![0_u8; 2 * 1024 * 1024];
    let error = client.put(b"/big".to_vec(), huge).await.unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error}");
    assert!(client.get(b"/big".to_vec()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_revision_and_sees_every_event() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    cluster.leader(&client).await;

    let first = client.put(b"/w/1".to_vec(), b"a".to_vec()).await.unwrap();
    let start = first.header.unwrap().revision;
    for index in 2..=5 {
        client
            .put(format!("/w/{index}").into_bytes(), b"b".to_vec())
            .await
            .unwrap();
    }
    let mut watch = client
        .watch(WatchCreateRequest {
            key: b"/w/".to_vec(),
            range_end: flotilla_raft_store::kv::prefix_end(b"/w/"),
            start_revision: start,
            ..Default::default()
        })
        .await
        .unwrap();
    client.put(b"/w/6".to_vec(), b"c".to_vec()).await.unwrap();

    let mut keys = Vec::new();
    let mut revisions = Vec::new();
    tokio::time::timeout(SETTLE_TIMEOUT, async {
        while keys.len() < 6 {
            let batch = watch.next().await.unwrap().expect("watch open");
            for event in batch.events {
                let kv = event.kv.unwrap();
                revisions.push(kv.mod_revision);
                keys.push(String::from_utf8(kv.key).unwrap());
            }
        }
    })
    .await
    .expect("all six events arrive");
    assert_eq!(keys, ["/w/1", "/w/2", "/w/3", "/w/4", "/w/5", "/w/6"]);
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "{revisions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_and_a_restarted_member_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let leader = cluster.leader(&client).await;
    client
        .put(b"/before".to_vec(), b"1".to_vec())
        .await
        .unwrap();

    cluster.stop(leader).await;
    for index in 0..50 {
        put_retrying(
            &client,
            format!("/after/{index:02}").into_bytes(),
            b"2".to_vec(),
        )
        .await;
    }
    let new_leader = cluster.leader(&client).await;
    assert_ne!(new_leader, leader);

    // The old leader restarts from its own disk and catches up.
    let restarted = cluster.start_member(leader, false).await;
    let target = client.status().await.unwrap().applied_index;
    tokio::time::timeout(SETTLE_TIMEOUT, async {
        while restarted.replica().status().await.unwrap().applied_index < target {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the restarted member catches up");
    let local = restarted
        .kv()
        .range(&RangeRequest {
            key: b"/after/".to_vec(),
            range_end: flotilla_raft_store::kv::prefix_end(b"/after/"),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(local.count, 50);
    cluster.members[leader] = Some(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keep_alive_is_redirected_to_the_leader_and_revoke_deletes_keys() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    cluster.leader(&client).await;

    let lease = client
        .lease_grant(LeaseGrantRequest {
            ttl_secs: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .put_request(PutRequest {
            key: b"/nodes/a".to_vec(),
            value: b"alive".to_vec(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let renewed = client.lease_keep_alive(lease.id).await.unwrap();
    assert_eq!(renewed.ttl_secs, 30);
    client.lease_revoke(lease.id).await.unwrap();
    assert!(client.get(b"/nodes/a".to_vec()).await.unwrap().is_none());
    let error = client.lease_keep_alive(lease.id).await.unwrap_err();
    assert!(matches!(error, Error::LeaseNotFound { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_joins_at_runtime() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    cluster.leader(&client).await;
    for index in 0..20 {
        client
            .put(format!("/k/{index:02}").into_bytes(), b"v".to_vec())
            .await
            .unwrap();
    }

    cluster.peers.push(PeerSpec {
        id: 4,
        address: free_udp_address(),
    });
    let address = cluster.peers[3].address.to_string();
    let joining = cluster.start_member(3, true).await;
    let members = client.member_add(4, address).await.unwrap();
    assert_eq!(members.len(), 4, "{members:?}");
    let target = client.status().await.unwrap().applied_index;
    tokio::time::timeout(SETTLE_TIMEOUT, async {
        while joining.replica().status().await.unwrap().applied_index < target {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the new member catches up");
    let count = joining
        .kv()
        .range(&RangeRequest {
            key: b"/k/".to_vec(),
            range_end: flotilla_raft_store::kv::prefix_end(b"/k/"),
            count_only: true,
            ..Default::default()
        })
        .unwrap()
        .count;
    assert_eq!(count, 20);
    cluster.members.push(Some(joining));
    cluster.stop(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_change_then_expire_on_the_new_leader() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let leader = cluster.leader(&client).await;

    // Long enough that the checks after the election finish well inside it
    // on a loaded machine; the test then waits about this long for expiry.
    let ttl_secs = 4;
    let lease = client
        .lease_grant(LeaseGrantRequest {
            ttl_secs,
            ..Default::default()
        })
        .await
        .unwrap();
    let put_revision = client
        .put_request(PutRequest {
            key: b"/leases/held".to_vec(),
            value: b"x".to_vec(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;

    // The new leader gives every lease a full TTL rather than expiring
    // what the old leader's clock had counted down.
    cluster.stop(leader).await;
    let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let client = cluster.client_of(&survivors).await;
    cluster.leader(&client).await;
    let remaining = client
        .lease_time_to_live(flotilla_raft_store::kv::proto::LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        })
        .await
        .unwrap();
    assert!(remaining.ttl_secs > 0, "{remaining:?}");
    assert_eq!(remaining.keys, [b"/leases/held".to_vec()]);
    assert!(
        client
            .get(b"/leases/held".to_vec())
            .await
            .unwrap()
            .is_some()
    );

    // Without keep-alives the new leader expires it and the key goes with it.
    let mut watch = client
        .watch(WatchCreateRequest {
            key: b"/leases/held".to_vec(),
            start_revision: put_revision + 1,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::timeout(SETTLE_TIMEOUT, async {
        loop {
            let batch = watch.next().await.unwrap().expect("watch open");
            if batch
                .events
                .iter()
                .any(|event| event.r#type == EventType::Delete as i32)
            {
                break;
            }
        }
    })
    .await
    .expect("the lease expires on the new leader");
    assert!(
        client
            .get(b"/leases/held".to_vec())
            .await
            .unwrap()
            .is_none()
    );
    let error = client.lease_keep_alive(lease.id).await.unwrap_err();
    assert!(matches!(error, Error::LeaseNotFound { .. }), "{error}");
}
