//! The replica's public face: [`ReplicaHandle`], a cheap clone that sends
//! requests to the task that owns the raft node and awaits the answers. It
//! knows the shape of the mailbox, not how raft answers.

use std::sync::Arc;

use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::metrics::ReplicaMetrics;
use crate::error::{Error, MemberId, Result};

/// Who this member believes leads, and in which term. Published on a watch
/// channel whenever either changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The leader, if one is known.
    pub leader_id: Option<MemberId>,
    /// The current term.
    pub term: u64,
}

/// A snapshot of one replica's raft state, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: MemberId,
    pub leader_id: Option<MemberId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Current voters, sorted.
    pub voters: Vec<MemberId>,
    pub is_leader: bool,
}

/// A membership change, proposed through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add `id` as a voter; `address` is where the network reaches it.
    Add { id: MemberId, address: String },
    /// Remove `id` from the voters.
    Remove { id: MemberId },
}

/// Everything the replica's task can be asked to do: a closed set.
pub(crate) enum Request {
    Propose {
        command: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64>>,
    },
    Step(Message),
    ReportUnreachable {
        member: MemberId,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    TransferLeader {
        to: MemberId,
    },
    Status {
        reply: oneshot::Sender<ReplicaStatus>,
    },
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// Talks to one running replica. Clone it freely; every clone reaches the
/// same task. All methods fail with [`Error::Stopped`] once it has stopped.
#[derive(Clone, Debug)]
pub struct ReplicaHandle {
    id: MemberId,
    mailbox: mpsc::Sender<Request>,
    leadership: watch::Receiver<Leadership>,
    metrics: Arc<ReplicaMetrics>,
}

impl ReplicaHandle {
    pub(crate) fn new(
        id: MemberId,
        mailbox: mpsc::Sender<Request>,
        leadership: watch::Receiver<Leadership>,
        metrics: Arc<ReplicaMetrics>,
    ) -> Self {
        ReplicaHandle {
            id,
            mailbox,
            leadership,
            metrics,
        }
    }

    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.id
    }

    /// Replicates `command` and returns the state machine's response once it
    /// is committed and applied on this member.
    ///
    /// A follower forwards the proposal to the leader. Errors say whether
    /// the command can have taken effect:
    /// - [`Error::NotLeader`]: it was **not** applied and never will be (no
    ///   leader known, this member stopped leading before appending it, or
    ///   another leader's entry replaced it). Safe to retry at `leader_hint`.
    /// - [`Error::TooLarge`]: refused before raft saw it; not applied.
    /// - [`Error::Timeout`] or [`Error::Stopped`]: unknown, as with etcd. It
    ///   may still be applied; a caller that retries must make the command
    ///   conditional (a compare-and-swap) or idempotent.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Propose { command, reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Confirms with a quorum that this member's view is current and returns
    /// the read index once this member has applied at least that far. A read
    /// of the local state machine afterwards is linearizable. Concurrent
    /// callers share one raft read-index round.
    pub async fn read_index(&self) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ReadIndex { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Hands a raft message from the network to the replica. Never waits: a
    /// message that finds the mailbox full is dropped and counted, which raft
    /// tolerates by retrying, so a slow member cannot stall its peers' readers.
    pub fn step(&self, message: Message) -> Result<()> {
        match self.mailbox.try_send(Request::Step(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                ReplicaMetrics::add(&self.metrics.steps_dropped, 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Stopped),
        }
    }

    /// Tells raft the network could not deliver to `member`, so the leader
    /// stops streaming appends to it and probes instead. Never waits; a
    /// report that finds the mailbox full is dropped (the next one will do).
    /// Snapshot delivery needs no report: the replica counts a snapshot as
    /// delivered when sent and re-sends it if the follower still lags.
    pub fn report_unreachable(&self, member: MemberId) -> Result<()> {
        match self.mailbox.try_send(Request::ReportUnreachable { member }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Stopped),
        }
    }

    /// Adds `id` as a voter reachable at `address`; returns once the change
    /// is applied on this member. A new member starts with no initial voters
    /// and catches up from the leader's snapshot.
    pub async fn add_member(&self, id: MemberId, address: String) -> Result<()> {
        self.change_membership(MembershipChange::Add { id, address })
            .await
    }

    /// Removes voter `id`; returns once the change is applied on this member.
    pub async fn remove_member(&self, id: MemberId) -> Result<()> {
        self.change_membership(MembershipChange::Remove { id })
            .await
    }

    /// Proposes a membership change through the log.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ChangeMembership { change, reply })
            .await?;
        answer.await.map_err(|_| Error::Stopped)?.map(|_| ())
    }

    /// Asks the leader (this member, if it leads) to hand leadership to `to`.
    /// Returns at once; watch [`Self::leadership`] for the outcome.
    pub async fn transfer_leader(&self, to: MemberId) -> Result<()> {
        self.send(Request::TransferLeader { to }).await
    }

    /// The replica's current raft state.
    pub async fn status(&self) -> Result<ReplicaStatus> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Status { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Stops the replica and waits until its task has dropped the log, so the
    /// same log can be reopened. Pending requests fail with [`Error::Stopped`].
    /// Nothing is synced on the way out: stopping loses what a crash would.
    pub async fn stop(&self) -> Result<()> {
        let (done, stopped) = oneshot::channel();
        if self.send(Request::Stop { done }).await.is_err() {
            return Ok(()); // already stopped
        }
        // The sender is dropped once the task has released everything.
        let _ = stopped.await;
        Ok(())
    }

    /// Whether the replica's task has ended (stopped, or failed on its log).
    pub fn is_stopped(&self) -> bool {
        self.mailbox.is_closed()
    }

    /// Leadership as this member sees it; changes with every new leader or term.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// This replica's counters.
    pub fn metrics(&self) -> Arc<ReplicaMetrics> {
        self.metrics.clone()
    }

    async fn send(&self, request: Request) -> Result<()> {
        self.mailbox.send(request).await.map_err(|_| Error::Stopped)
    }
}
