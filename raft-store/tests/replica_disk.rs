//! Replicas over the real [`DiskLog`] in temporary directories: a member
//! stopped and reopened from its files (the "restart from disk" of a real
//! process), a whole cluster restarted, and a member that joins with an empty
//! data directory. Time is tokio's paused clock; the fsyncs are real.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use flotilla_raft_store::error::MemberId;
use flotilla_raft_store::log::DiskLog;
use flotilla_raft_store::replica::{Replica, ReplicaHandle, ReplicaMetrics};
use support::{Command, RegisterMachine, SimNet, TestResult, WAIT, eventually, test_config};

struct DiskMember {
    dir: PathBuf,
    machine: Arc<RegisterMachine>,
    handle: Option<ReplicaHandle>,
}

/// A cluster whose members keep their logs in `root`.
struct DiskCluster {
    _root: tempfile::TempDir,
    net: SimNet,
    members: BTreeMap<MemberId, DiskMember>,
    voters: Vec<MemberId>,
}

impl DiskCluster {
    fn new(size: u64) -> TestResult<DiskCluster> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut cluster = DiskCluster {
            net: SimNet::reliable(),
            members: BTreeMap::new(),
            voters: (1..=size).collect(),
            _root: root,
        };
        for id in 1..=size {
            cluster.start(id, true)?;
        }
        Ok(cluster)
    }

    /// (Re)starts `id` from its directory with a new state machine.
    fn start(&mut self, id: MemberId, initial: bool) -> TestResult {
        let dir = self._root.path().join(format!("member-{id}"));
        let voters = if initial {
            self.voters.clone()
        } else {
            Vec::new()
        };
        let mut config = test_config(id, voters);
        config.snapshot_interval_entries = 25;
        let log = DiskLog::open(&dir).map_err(|e| e.to_string())?;
        let machine = RegisterMachine::new();
        let handle = Replica::start(config, log, machine.clone(), self.net.endpoint(id))
            .map_err(|e| e.to_string())?;
        self.net.attach(handle.clone());
        let member = DiskMember {
            dir,
            machine,
            handle: Some(handle),
        };
        self.members.insert(id, member);
        Ok(())
    }

    async fn stop(&mut self, id: MemberId) -> TestResult {
        self.net.detach(id);
        if let Some(handle) = self.members.get_mut(&id).and_then(|m| m.handle.take()) {
            handle.stop().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn handle(&self, id: MemberId) -> &ReplicaHandle {
        self.members[&id].handle.as_ref().expect("running")
    }

    fn machine(&self, id: MemberId) -> &Arc<RegisterMachine> {
        &self.members[&id].machine
    }

    fn running(&self) -> Vec<MemberId> {
        let running = self.members.iter().filter(|(_, m)| m.handle.is_some());
        running.map(|(id, _)| *id).collect()
    }

    async fn leader(&self) -> TestResult<MemberId> {
        let running = self.running();
        let agreed = || {
            let views: Vec<_> = running
                .iter()
                .map(|id| self.handle(*id).leadership().borrow().leader_id)
                .collect();
            match views.first() {
                Some(Some(leader)) if views.iter().all(|view| *view == Some(*leader)) => {
                    Some(*leader)
                }
                _ => None,
            }
        };
        eventually("an agreed leader", || async { agreed() }).await
    }

    /// Writes ops `range` as puts through the leader; returns its applied index.
    async fn write(&self, ops: std::ops::Range<u64>) -> TestResult<u64> {
        let leader = self.leader().await?;
        for op in ops {
            let command = Command::Put {
                op,
                key: op % 5,
                value: op,
            };
            let handle = self.handle(leader);
            handle
                .propose(command.encode())
                .await
                .map_err(|e| format!("op {op}: {e}"))?;
        }
        Ok(self
            .handle(leader)
            .status()
            .await
            .map_err(|e| e.to_string())?
            .applied_index)
    }

    async fn converge(&self, index: u64) -> TestResult {
        for id in self.running() {
            self.machine(id).wait_applied(index, WAIT).await?;
        }
        Ok(())
    }

    async fn stop_all(&mut self) -> TestResult {
        for id in self.running() {
            self.stop(id).await?;
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_restarts_from_its_files() -> TestResult {
    let mut cluster = DiskCluster::new(3)?;
    let applied = cluster.write(1..61).await?;
    cluster.converge(applied).await?;
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await?;
    assert!(cluster.members[&follower].dir.exists());
    // Alone, the reopened member can only use its own snapshot and log.
    cluster.net.isolate(follower);
    cluster.start(follower, true)?;
    cluster
        .machine(follower)
        .wait_applied(applied - 3, WAIT)
        .await?;
    assert!(cluster.machine(follower).has_op(1), "from the snapshot");
    cluster.net.heal();
    let applied = cluster.write(61..71).await?;
    cluster.converge(applied).await?;
    let expected = cluster.machine(leader).values();
    assert_eq!(cluster.machine(follower).values(), expected);
    cluster.stop_all().await
}

#[tokio::test(start_paused = true)]
async fn a_whole_cluster_restarts_from_disk() -> TestResult {
    let mut cluster = DiskCluster::new(3)?;
    let applied = cluster.write(1..41).await?;
    cluster.converge(applied).await?;
    let before = cluster.machine(1).values();
    cluster.stop_all().await?;
    for id in 1..=3 {
        cluster.start(id, true)?;
    }
    cluster.converge(applied).await?;
    for id in 1..=3 {
        assert_eq!(cluster.machine(id).values(), before, "member {id}");
    }
    let applied = cluster.write(41..46).await?;
    cluster.converge(applied).await?;
    cluster.stop_all().await
}

#[tokio::test(start_paused = true)]
async fn a_member_with_an_empty_data_directory_joins_by_snapshot() -> TestResult {
    let mut cluster = DiskCluster::new(3)?;
    cluster.write(1..41).await?;
    let leader = cluster.leader().await?;
    cluster.start(4, false)?;
    let handle = cluster.handle(leader).clone();
    handle
        .add_member(4, "member-4".into())
        .await
        .map_err(|e| e.to_string())?;
    let applied = cluster.write(41..46).await?;
    cluster.converge(applied).await?;
    let metrics = cluster.handle(4).metrics();
    assert!(ReplicaMetrics::get(&metrics.snapshots_installed) >= 1);
    assert_eq!(
        cluster.machine(4).values(),
        cluster.machine(leader).values()
    );
    // And it restarts from what it wrote.
    cluster.stop(4).await?;
    cluster.start(4, false)?;
    cluster.converge(applied).await?;
    assert_eq!(cluster.machine(4).ops().len(), 45);
    cluster.stop_all().await
}
