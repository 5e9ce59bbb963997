//! [`KvStore`] under the real replica: the seam between [`crate::kv`] and
//! [`crate::replica`]. Members run in one process over in-memory logs and a
//! loopback network; these tests check what only the combination shows:
//! the bootstrap snapshot restores, proposals return decodable responses,
//! members converge, watches on a follower see the leader's writes, and a
//! restart rebuilds the state from snapshot plus log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::Message;

use super::KvStore;
use super::proto::{
    CompareResult, KeyValue, WatchCreateRequest, command_response::Response, compare,
    decode_response, encode_command, prefix_end,
};
use super::testing::{guard, op_put, put_cmd, range, txn_cmd};
use crate::error::MemberId;
use crate::replica::{MemDisk, MemLog, Network, Replica, ReplicaConfig, ReplicaHandle};

/// Bound on every wait for the cluster to do something.
const WAIT: Duration = Duration::from_secs(20);

/// Delivers raft messages straight to the other members' mailboxes.
#[derive(Default)]
struct Loopback {
    members: Mutex<HashMap<MemberId, ReplicaHandle>>,
}

impl Network for Loopback {
    fn send(&self, to: MemberId, message: Message) {
        let member = self.members.lock().expect("members").get(&to).cloned();
        if let Some(member) = member {
            // A stopped member drops messages, as a dead peer would.
            let _ = member.step(message);
        }
    }

    fn set_peer_address(&self, _id: MemberId, _address: String) {}

    fn remove_peer(&self, id: MemberId) {
        self.members.lock().expect("members").remove(&id);
    }
}

fn config(id: MemberId, voters: &[MemberId]) -> ReplicaConfig {
    let mut config = ReplicaConfig::new(id, voters.to_vec());
    config.tick_interval_ms = 10;
    config.snapshot_interval_entries = 40;
    config
}

fn start(
    id: MemberId,
    voters: &[MemberId],
    disk: &MemDisk,
    network: &Arc<Loopback>,
) -> (ReplicaHandle, Arc<KvStore>) {
    let store = Arc::new(KvStore::default());
    let handle = Replica::start(
        config(id, voters),
        MemLog::open(disk),
        store.clone(),
        network.clone(),
    )
    .expect("replica starts");
    network
        .members
        .lock()
        .expect("members")
        .insert(id, handle.clone());
    (handle, store)
}

async fn wait_for_leader(handle: &ReplicaHandle) {
    let mut leadership = handle.leadership();
    tokio::time::timeout(WAIT, leadership.wait_for(|view| view.leader_id.is_some()))
        .await
        .expect("a leader within the bound")
        .expect("the replica runs");
}

async fn propose(handle: &ReplicaHandle, command: &super::proto::Command) -> Response {
    let answer = tokio::time::timeout(WAIT, handle.propose(encode_command(command)))
        .await
        .expect("committed within the bound")
        .expect("proposal accepted");
    decode_response(&answer).expect("applied without error")
}

/// Every key and value, read linearizably from one member.
async fn read_all(handle: &ReplicaHandle, store: &KvStore) -> (i64, Vec<KeyValue>) {
    tokio::time::timeout(WAIT, handle.read_index())
        .await
        .expect("read index within the bound")
        .expect("read index");
    let response = store.range(&range("a", "\0")).expect("range");
    (store.current_revision(), response.kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_converge_and_a_follower_watch_sees_every_write() {
    let network = Arc::new(Loopback::default());
    let voters = [1, 2, 3];
    let members: Vec<(ReplicaHandle, Arc<KvStore>)> = voters
        .iter()
        .map(|id| start(*id, &voters, &MemDisk::new(), &network))
        .collect();
    wait_for_leader(&members[0].0).await;

    let writes = 120;
    for i in 0..writes {
        let member = &members[i % 3].0; // followers forward to the leader
        propose(member, &put_cmd(&format!("k{}", i % 10), &format!("v{i}"))).await;
    }
    // The API server's create-if-absent and update-if-unchanged.
    let cas = txn_cmd(
        vec![guard(
            "obj",
            CompareResult::Equal,
            compare::TargetUnion::ModRevision(0),
        )],
        vec![op_put("obj", "created")],
        vec![],
    );
    match propose(&members[1].0, &cas).await {
        Response::Txn(txn) => assert!(txn.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    match propose(&members[2].0, &cas).await {
        Response::Txn(txn) => assert!(!txn.succeeded, "the object exists now"),
        other => panic!("unexpected {other:?}"),
    }

    let (revision, kvs) = read_all(&members[0].0, &members[0].1).await;
    assert_eq!(revision, 1 + writes as i64 + 1, "one revision per write");
    for (handle, store) in &members[1..] {
        assert_eq!(read_all(handle, store).await, (revision, kvs.clone()));
    }

    // A follower's watch from the first write replays everything in order.
    let follower = &members[2].1;
    let mut watcher = follower
        .watch(&WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: prefix_end(b"k"),
            start_revision: 2,
            ..Default::default()
        })
        .expect("watch");
    let mut revisions = Vec::new();
    while let Some(response) = watcher.try_next() {
        revisions.extend(
            response
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision),
        );
    }
    assert_eq!(revisions, (2..2 + writes as i64).collect::<Vec<i64>>());

    for (handle, _) in &members {
        handle.stop().await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_rebuilds_its_state_from_snapshot_and_log() {
    let network = Arc::new(Loopback::default());
    let disk = MemDisk::new();
    let (handle, store) = start(1, &[1], &disk, &network);
    wait_for_leader(&handle).await;
    // More entries than the snapshot interval, so the log is truncated
    // and the restart must restore a snapshot taken by KvStore.
    for i in 0..100 {
        propose(&handle, &put_cmd(&format!("k{}", i % 7), &format!("v{i}"))).await;
    }
    let before = read_all(&handle, &store).await;
    handle.stop().await.expect("stops");
    assert!(
        disk.first_index() > 1,
        "the log was truncated after a snapshot"
    );

    let (handle, store) = start(1, &[1], &disk, &network);
    wait_for_leader(&handle).await;
    assert_eq!(read_all(&handle, &store).await, before);
    propose(&handle, &put_cmd("after", "restart")).await;
    assert_eq!(store.current_revision(), before.0 + 1);
    handle.stop().await.expect("stops");
}
