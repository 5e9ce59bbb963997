//! In-process clusters of replicas over a reliable in-memory network and
//! in-memory disks, with the register state machine from `support`. Time is
//! tokio's paused clock, so elections and timeouts cost no real time.

mod support;

use std::time::Duration;

use flotilla_raft_store::Error;
use flotilla_raft_store::replica::{ReplicaMetrics, ReplicaStatus, StateMachine};
use support::{
    Cluster, Command, RegisterCluster, RegisterMachine, Response, TestResult, WAIT, eventually,
};

async fn status(cluster: &Cluster, id: u64) -> ReplicaStatus {
    cluster.handle(id).status().await.expect("status")
}

/// Writes `count` puts through `via` (ops and values from `first_op`) and
/// returns the leader's commit index afterwards.
async fn write_many(cluster: &Cluster, via: u64, first_op: u64, count: u64) -> TestResult<u64> {
    for op in first_op..first_op + count {
        cluster
            .put(via, op, op % 7, op)
            .await
            .map_err(|error| format!("put {op}: {error}"))?;
    }
    Ok(status(cluster, via).await.applied_index)
}

#[tokio::test(start_paused = true)]
async fn three_members_replicate_and_agree() -> TestResult {
    support::init_tracing();
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let applied = write_many(&cluster, leader, 1, 20).await?;
    cluster.converge(applied).await?;
    let expected = cluster.machine(leader).values();
    assert_eq!(expected.len(), 7, "keys 0..7 written");
    for id in 1..=3 {
        assert_eq!(cluster.machine(id).values(), expected, "member {id} agrees");
    }
    let metrics = cluster.handle(leader).metrics();
    assert!(ReplicaMetrics::get(&metrics.proposals) >= 20);
    assert!(ReplicaMetrics::get(&metrics.fsyncs) >= 1);
    let status = status(&cluster, leader).await;
    assert!(status.is_leader);
    assert_eq!(status.voters, vec![1, 2, 3]);
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn concurrent_proposals_share_fsyncs() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let handle = cluster.handle(leader).clone();
    let fsyncs_before = ReplicaMetrics::get(&handle.metrics().fsyncs);
    let proposals = (1..=200u64).map(|op| {
        let handle = handle.clone();
        async move {
            let command = Command::Put {
                op,
                key: op,
                value: op,
            };
            handle.propose(command.encode()).await
        }
    });
    for outcome in futures::future::join_all(proposals).await {
        outcome.map_err(|error| error.to_string())?;
    }
    let fsyncs = ReplicaMetrics::get(&handle.metrics().fsyncs) - fsyncs_before;
    assert!(
        fsyncs < 50,
        "200 concurrent proposals took {fsyncs} fsyncs on the leader"
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_follower_forwards_proposals_to_the_leader() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let previous = cluster
        .put(follower, 1, 5, 50)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(previous, 0);
    let previous = cluster
        .put(follower, 2, 5, 51)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        previous, 50,
        "the follower's answer comes from the applied entry"
    );
    assert_eq!(cluster.machine(follower).get(5), 51);
    assert!(ReplicaMetrics::get(&cluster.handle(leader).metrics().proposals) == 0);
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn read_index_sees_every_acknowledged_write() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    for follower in (1..=3).filter(|id| *id != leader) {
        for op in 1..=10u64 {
            let value = follower * 100 + op;
            cluster
                .put(leader, value, 9, value)
                .await
                .map_err(|e| e.to_string())?;
            // Right after the acknowledgement, a linearizable read on a
            // follower must see the write, however far behind it was.
            let read_index = cluster
                .handle(follower)
                .read_index()
                .await
                .map_err(|e| e.to_string())?;
            assert!(cluster.machine(follower).applied_index() >= read_index);
            assert_eq!(cluster.machine(follower).get(9), value);
        }
    }
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn concurrent_reads_share_one_read_index_round() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    cluster
        .put(leader, 1, 1, 1)
        .await
        .map_err(|e| e.to_string())?;
    let handle = cluster.handle(leader).clone();
    let before = ReplicaMetrics::get(&handle.metrics().read_index_requests);
    let reads = (0..100).map(|_| handle.read_index());
    for outcome in futures::future::join_all(reads).await {
        outcome.map_err(|e| e.to_string())?;
    }
    let rounds = ReplicaMetrics::get(&handle.metrics().read_index_requests) - before;
    assert!(
        rounds <= 5,
        "100 concurrent reads took {rounds} read-index rounds"
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn five_members_survive_leader_failure_and_reelect() -> TestResult {
    let mut cluster = RegisterCluster::start(5, |_| {});
    let first = cluster.leader().await?;
    let first_term = status(&cluster, first).await.term;
    write_many(&cluster, first, 1, 10).await?;
    cluster.crash(first).await;
    let second = cluster.leader().await?;
    assert_ne!(second, first);
    let second_term = status(&cluster, second).await.term;
    assert!(second_term > first_term, "a new leader needs a new term");
    let applied = write_many(&cluster, second, 11, 10).await?;
    // The old leader restarts from its log and catches up.
    cluster.restart(first).map_err(|e| e.to_string())?;
    cluster.converge(applied).await?;
    assert_eq!(
        cluster.machine(first).values(),
        cluster.machine(second).values()
    );
    for op in 1..=20 {
        assert!(
            cluster.machine(first).has_op(op),
            "op {op} survived the failover"
        );
    }
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_follower_restarts_from_its_own_log() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let applied = write_many(&cluster, leader, 1, 30).await?;
    cluster.converge(applied).await?;
    cluster.crash(follower).await;
    // Cut off from the others, the restarted follower can only replay what
    // its own disk holds.
    cluster.net.isolate(follower);
    cluster.restart(follower).map_err(|e| e.to_string())?;
    let durable_commit = applied.saturating_sub(3);
    cluster
        .machine(follower)
        .wait_applied(durable_commit, WAIT)
        .await?;
    cluster.net.heal();
    let applied = write_many(&cluster, leader, 31, 5).await?;
    cluster.converge(applied).await?;
    assert_eq!(
        cluster.machine(follower).values(),
        cluster.machine(leader).values()
    );
    let metrics = cluster.handle(follower).metrics();
    assert_eq!(
        ReplicaMetrics::get(&metrics.snapshots_installed),
        0,
        "caught up from the log"
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_member_down_for_many_entries_catches_up_by_snapshot() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |config| config.snapshot_interval_entries = 50);
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.crash(follower).await;
    let applied = write_many(&cluster, leader, 1, 300).await?;
    let leader_metrics = cluster.handle(leader).metrics();
    assert!(ReplicaMetrics::get(&leader_metrics.snapshots_taken) >= 5);
    assert!(
        cluster.members[&leader].disk.first_index() > 200,
        "the leader's log was truncated"
    );
    cluster.restart(follower).map_err(|e| e.to_string())?;
    cluster.converge(applied).await?;
    let metrics = cluster.handle(follower).metrics();
    assert!(ReplicaMetrics::get(&metrics.snapshots_installed) >= 1);
    assert_eq!(
        cluster.machine(follower).values(),
        cluster.machine(leader).values()
    );
    assert_eq!(cluster.machine(follower).ops().len(), 300);
    // And it restarts from its snapshot plus log.
    cluster.crash(follower).await;
    cluster.restart(follower).map_err(|e| e.to_string())?;
    let applied = write_many(&cluster, leader, 301, 5).await?;
    cluster.converge(applied).await?;
    assert_eq!(cluster.machine(follower).ops().len(), 305);
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn members_are_added_by_snapshot_and_removed_at_runtime() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |config| config.snapshot_interval_entries = 20);
    let leader = cluster.leader().await?;
    write_many(&cluster, leader, 1, 50).await?;
    // Member 4 starts empty, with no voters: it waits to be added.
    cluster.add_stopped(support::test_config(4, Vec::new()));
    cluster.restart(4).map_err(|e| e.to_string())?;
    let empty: Vec<u64> = Vec::new();
    assert_eq!(status(&cluster, 4).await.voters, empty);
    cluster
        .handle(leader)
        .add_member(4, "member-4".into())
        .await
        .map_err(|e| e.to_string())?;
    let applied = write_many(&cluster, leader, 51, 5).await?;
    cluster.converge(applied).await?;
    assert_eq!(status(&cluster, 4).await.voters, vec![1, 2, 3, 4]);
    assert!(ReplicaMetrics::get(&cluster.handle(4).metrics().snapshots_installed) >= 1);
    assert_eq!(
        cluster.machine(4).values(),
        cluster.machine(leader).values()
    );

    // Remove a follower other than the new member; the rest carry on.
    let removed = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster
        .handle(leader)
        .remove_member(removed)
        .await
        .map_err(|e| e.to_string())?;
    cluster.crash(removed).await;
    let applied = write_many(&cluster, leader, 56, 5).await?;
    cluster.converge(applied).await?;
    let mut expected: Vec<u64> = vec![1, 2, 3, 4];
    expected.retain(|id| *id != removed);
    assert_eq!(status(&cluster, leader).await.voters, expected);
    // With member 4 a voter, losing one more member still leaves a quorum.
    let other = expected
        .iter()
        .copied()
        .find(|id| *id != leader && *id != 4)
        .expect("a third");
    cluster.crash(other).await;
    write_many(&cluster, leader, 61, 3).await?;
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn leadership_can_be_transferred() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let target = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut leadership = cluster.handle(target).leadership();
    cluster
        .handle(leader)
        .transfer_leader(target)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        WAIT,
        leadership.wait_for(|now| now.leader_id == Some(target)),
    )
    .await
    .map_err(|_| "leadership never moved".to_string())?
    .map_err(|e| e.to_string())?;
    assert_eq!(cluster.leader().await?, target);
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_report_does_not_disturb_replication() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // The leader falls back to probing the follower; it catches up anyway.
    for _ in 0..3 {
        cluster
            .handle(leader)
            .report_unreachable(follower)
            .map_err(|e| e.to_string())?;
    }
    let applied = write_many(&cluster, leader, 1, 20).await?;
    cluster.converge(applied).await?;
    assert_eq!(
        cluster.machine(follower).values(),
        cluster.machine(leader).values()
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_a_leader_proposals_fail_fast() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    cluster.crash(2).await;
    cluster.crash(3).await;
    let started = tokio::time::Instant::now();
    let outcome = cluster.put(1, 1, 1, 1).await;
    assert!(
        matches!(outcome, Err(Error::NotLeader { leader_hint: None })),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "answered at once"
    );
    let read = cluster.handle(1).read_index().await;
    assert!(
        matches!(read, Err(Error::NotLeader { leader_hint: None })),
        "{read:?}"
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_proposal_that_cannot_commit_times_out() -> TestResult {
    // The timeout is shorter than an election, so the isolated follower
    // still believes in its leader when the deadline passes.
    let mut cluster = RegisterCluster::start(3, |config| config.proposal_timeout_ms = 50);
    let leader = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.net.isolate(follower);
    let outcome = cluster.put(follower, 1, 1, 1).await;
    assert!(
        matches!(outcome, Err(Error::Timeout { timeout_ms: 50 })),
        "{outcome:?}"
    );
    cluster.net.heal();
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_its_quorum_steps_down() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    cluster.net.isolate(leader);
    let new_leader = cluster.leader_among(&others).await?;
    assert_ne!(new_leader, leader);
    // check_quorum: the old leader notices it lost its quorum.
    eventually("the old leader to step down", || async {
        (!status(&cluster, leader).await.is_leader).then_some(())
    })
    .await?;
    cluster.net.heal();
    assert_eq!(
        cluster.leader().await?,
        new_leader,
        "pre-vote: no disruption on rejoin"
    );
    cluster.stop_all().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn stopped_replicas_refuse_requests() -> TestResult {
    let mut cluster = RegisterCluster::start(1, |_| {});
    let leader = cluster.leader().await?;
    let handle = cluster.handle(leader).clone();
    cluster
        .put(leader, 1, 1, 1)
        .await
        .map_err(|e| e.to_string())?;
    cluster.crash(leader).await;
    assert!(handle.is_stopped());
    assert!(matches!(handle.status().await, Err(Error::Stopped)));
    let command = Command::Put {
        op: 2,
        key: 1,
        value: 2,
    };
    assert!(matches!(
        handle.propose(command.encode()).await,
        Err(Error::Stopped)
    ));
    // Single-member cluster restarts and keeps its data.
    cluster.restart(leader).map_err(|e| e.to_string())?;
    cluster.leader().await?;
    let response = cluster
        .handle(leader)
        .propose(command.encode())
        .await
        .map_err(|e| e.to_string())?;
    assert!(matches!(
        Response::decode(&response),
        Some(Response::Put { previous: 1, revision }) if revision > 0
    ));
    cluster.stop_all().await;
    Ok(())
}

#[test]
fn register_snapshots_round_trip() {
    let machine = RegisterMachine::default();
    machine.apply(
        1,
        &Command::Put {
            op: 1,
            key: 2,
            value: 3,
        }
        .encode(),
    );
    let (index, data) = machine.snapshot().expect("snapshot");
    let copy = RegisterMachine::default();
    copy.restore(index, &data).expect("restore");
    assert_eq!(copy.values(), machine.values());
    assert!(copy.has_op(1));
}

#[tokio::test(start_paused = true)]
async fn a_leader_dying_in_fsync_loses_no_acknowledged_write() -> TestResult {
    let mut cluster = RegisterCluster::start(3, |_| {});
    let leader = cluster.leader().await?;
    write_many(&cluster, leader, 1, 10).await?;
    // The leader's next Ready fails its fsync: the entries it appended (and
    // may already have sent to followers) are not on its disk.
    cluster.members[&leader].disk.fail_next_sync();
    let lost_durable_index = cluster.members[&leader].disk.last_index();
    let outcome = cluster.put(leader, 11, 1, 11).await;
    assert!(
        matches!(outcome, Err(Error::Stopped)),
        "the proposal's fate is unknown to its caller: {outcome:?}"
    );
    assert!(
        cluster.handle(leader).is_stopped(),
        "a failed fsync stops the replica"
    );
    assert_eq!(
        cluster.members[&leader].disk.last_index(),
        lost_durable_index
    );
    cluster.crash(leader).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster.leader_among(&others).await?;
    let applied = write_many(&cluster, new_leader, 12, 5).await?;
    cluster
        .members
        .get_mut(&leader)
        .expect("member")
        .disk
        .disarm();
    cluster.restart(leader).map_err(|e| e.to_string())?;
    cluster.converge(applied).await?;
    for op in (1..=10).chain(12..=16) {
        assert!(
            cluster.machine(leader).has_op(op),
            "acknowledged op {op} survived"
        );
    }
    assert_eq!(
        cluster.machine(leader).values(),
        cluster.machine(new_leader).values()
    );
    cluster.stop_all().await;
    Ok(())
}
