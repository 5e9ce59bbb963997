//! Real `flotilla store` processes on loopback: kill -9 a member (the leader
//! too) during a write load, restart it, and check that every acknowledged
//! write is present afterwards, on every member.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_raft_store::client::Client;
use flotilla_raft_store::kv::proto::RangeRequest;

/// How long the cluster may take to elect a leader after a start or a kill.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Writers running during the kills.
const WRITERS: usize = 8;
/// Tick of the members: elections happen after 10 ticks, so a kill costs
/// about half a second of unavailability rather than the default second.
const TICK_MS: u64 = 50;

struct Cluster {
    root: tempfile::TempDir,
    addresses: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn start() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let addresses: Vec<SocketAddr> = (0..3)
            .map(|_| {
                UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            })
            .collect();
        flotilla_pki::ClusterCa::ensure(&root.path().join("ca")).unwrap();
        let mut cluster = Cluster {
            root,
            addresses,
            children: vec![None, None, None],
        };
        for index in 0..3 {
            cluster.spawn(index);
        }
        cluster
    }

    fn tls_dir(&self) -> PathBuf {
        self.root.path().join("ca")
    }

    fn spawn(&mut self, index: usize) {
        let id = index + 1;
        let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .arg("store")
            .arg(format!("--id={id}"))
            .arg(format!(
                "--data-dir={}",
                self.root.path().join(format!("m{id}")).display()
            ))
            .arg(format!("--listen={}", self.addresses[index]))
            .arg(format!("--tls-dir={}", self.tls_dir().display()))
            .arg(format!("--tick-ms={TICK_MS}"));
        for (peer, address) in self.addresses.iter().enumerate() {
            command.arg(format!("--peer={}={address}", peer + 1));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("m{id}.log")))
            .unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[index] = Some(child);
    }

    /// SIGKILL: the process gets no chance to flush anything.
    fn kill(&mut self, index: usize) {
        let mut child = self.children[index].take().expect("member is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    async fn client(&self) -> Client {
        Client::connect(self.addresses.clone(), &self.tls_dir())
            .await
            .unwrap()
    }

    /// The index of the member that leads now, asked of the members.
    async fn leader(&self, client: &Client) -> usize {
        let deadline = Instant::now() + ELECTION_TIMEOUT;
        loop {
            if let Ok(status) = client.status().await
                && status.leader != 0
            {
                return usize::try_from(status.leader - 1).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {ELECTION_TIMEOUT:?}; logs in {}",
                self.root.path().display()
            );
            tokio::task::yield_now().await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for id in 1..=3 {
            let path = self.root.path().join(format!("m{id}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- member {id} (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the writers had acknowledged, and a count to wait on.
#[derive(Clone)]
struct Acknowledged {
    writes: Arc<std::sync::Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Acknowledged {
    fn new() -> Self {
        Acknowledged {
            writes: Arc::default(),
            count: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    fn record(&self, key: Vec<u8>, value: Vec<u8>) {
        let mut writes = self.writes.lock().unwrap();
        writes.insert(key, value);
        self.count.send_replace(writes.len());
    }

    fn len(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until `more` writes beyond the current count are acknowledged.
    async fn wait_for_more(&self, more: usize) {
        let target = self.len() + more;
        let mut count = self.count.subscribe();
        tokio::time::timeout(ELECTION_TIMEOUT, count.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("writes stalled below {target}"))
            .unwrap();
    }
}

/// Writes distinct keys until aborted, recording each acknowledged one.
async fn writer(client: Arc<Client>, writer_id: usize, acknowledged: Acknowledged) {
    for sequence in 0..u64::MAX {
        let key = format!("w{writer_id:02}/{sequence:08}").into_bytes();
        let value = format!("value-{writer_id}-{sequence}").into_bytes();
        if client.put(key.clone(), value.clone()).await.is_ok() {
            acknowledged.record(key, value);
        }
    }
}

async fn assert_all_present(cluster: &Cluster, expected: &BTreeMap<Vec<u8>, Vec<u8>>, path: &Path) {
    // Ask each member in turn: a linearizable read from any of them must see
    // every acknowledged write.
    for index in 0..3 {
        let mut addresses = cluster.addresses.clone();
        addresses.rotate_left(index);
        let client = Client::connect(addresses, &cluster.tls_dir())
            .await
            .unwrap();
        let response = client
            .range(RangeRequest {
                key: b"w".to_vec(),
                range_end: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let stored: BTreeMap<Vec<u8>, Vec<u8>> = response
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        for (key, value) in expected {
            assert_eq!(
                stored.get(key),
                Some(value),
                "acknowledged write {} lost (asked via member {}); data in {}",
                String::from_utf8_lossy(key),
                index + 1,
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start();
    let client = Arc::new(cluster.client().await);
    let leader = cluster.leader(&client).await;

    let acknowledged = Acknowledged::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(client.clone(), id, acknowledged.clone())))
        .collect();

    // Kill the leader mid-load, let a new leader take writes, bring it back.
    acknowledged.wait_for_more(200).await;
    cluster.kill(leader);
    acknowledged.wait_for_more(200).await;
    cluster.spawn(leader);

    // Then a follower.
    let leader = cluster.leader(&client).await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    acknowledged.wait_for_more(200).await;
    cluster.spawn(follower);
    acknowledged.wait_for_more(100).await;

    for writer in writers {
        writer.abort();
        let _ = writer.await;
    }
    let expected = acknowledged.writes.lock().unwrap().clone();
    assert!(
        expected.len() >= 700,
        "only {} writes acknowledged",
        expected.len()
    );
    let root = cluster.root.path().to_path_buf();
    let check = tokio::time::timeout(
        ELECTION_TIMEOUT,
        assert_all_present(&cluster, &expected, &root),
    );
    if check.await.is_err() {
        panic!("reads did not finish in time\n{}", cluster.logs());
    }
}
