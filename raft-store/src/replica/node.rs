//! The replica's task: the one owner of a raft-rs `RawNode`, driving its
//! Ready loop in the order raft-rs documents, applying committed entries to
//! the [`StateMachine`], persisting through the [`LogStore`] and sending
//! through the [`Network`]. Everything else talks to it through its mailbox
//! ([`super::ReplicaHandle`]). It knows nothing of what commands mean.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::{
    MAILBOX_BATCH_MAX, MAILBOX_CAPACITY, PENDING_PROPOSALS_MAX, PENDING_READS_MAX,
    PROPOSAL_BYTES_MAX,
};
use super::handle::{Leadership, MembershipChange, ReplicaHandle, ReplicaStatus, Request};
use super::logging::raft_logger;
use super::metrics::ReplicaMetrics;
use super::pending::{PendingProposals, PendingReads, ProposalId};
use super::{LogStore, Network, ReplicaConfig, StateMachine};
use crate::error::{Error, MemberId, Result};

/// The index and term of the snapshot a brand-new cluster starts from. It
/// carries the initial voters, so a member joining later must install a
/// snapshot before any entry: it can never replay a membership change
/// against an empty configuration and elect itself alone.
const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// One member's replica. Start it with [`Replica::start`]; the returned
/// [`ReplicaHandle`] is the only way to talk to it.
///
/// A single-member cluster over the in-memory log, with a state machine
/// that counts commands:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use flotilla_raft_store::replica::{
///     MemDisk, MemLog, Network, Replica, ReplicaConfig, StateMachine,
/// };
///
/// #[derive(Default)]
/// struct Counter { applied: AtomicU64, commands: AtomicU64 }
///
/// impl StateMachine for Counter {
///     fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
///         self.applied.store(index, Ordering::SeqCst);
///         if command.is_empty() { return Vec::new(); }
///         let count = self.commands.fetch_add(1, Ordering::SeqCst) + 1;
///         count.to_be_bytes().to_vec()
///     }
///     fn applied_index(&self) -> u64 { self.applied.load(Ordering::SeqCst) }
///     fn snapshot(&self) -> flotilla_raft_store::Result<(u64, Vec<u8>)> {
///         let count = self.commands.load(Ordering::SeqCst);
///         Ok((self.applied_index(), count.to_be_bytes().to_vec()))
///     }
///     fn restore(&self, index: u64, data: &[u8]) -> flotilla_raft_store::Result<()> {
///         let count = data.try_into().map(u64::from_be_bytes).unwrap_or(0);
///         self.commands.store(count, Ordering::SeqCst);
///         self.applied.store(index, Ordering::SeqCst);
///         Ok(())
///     }
/// }
///
/// /// Nobody to talk to in a one-member cluster.
/// struct Alone;
/// impl Network for Alone {
///     fn send(&self, _to: u64, _message: raft::eraftpb::Message) {}
///     fn set_peer_address(&self, _id: u64, _address: String) {}
///     fn remove_peer(&self, _id: u64) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> flotilla_raft_store::Result<()> {
/// let mut config = ReplicaConfig::new(1, vec![1]);
/// config.tick_interval_ms = 10;
/// let disk = MemDisk::new();
/// let counter = Arc::new(Counter::default());
/// let replica = Replica::start(config, MemLog::open(&disk), counter.clone(), Arc::new(Alone))?;
/// let mut leadership = replica.leadership();
/// leadership.wait_for(|view| view.leader_id == Some(1)).await.ok();
/// let response = replica.propose(b"increment".to_vec()).await?;
/// assert_eq!(response, 1u64.to_be_bytes());
/// replica.read_index().await?; // linearizable: counter is current now
/// assert_eq!(counter.commands.load(Ordering::SeqCst), 1);
/// replica.stop().await?;
/// # Ok(())
/// # }
/// ```
pub struct Replica<L: LogStore, S: StateMachine, N: Network> {
    id: MemberId,
    config: ReplicaConfig,
    raw: RawNode<L>,
    state_machine: Arc<S>,
    network: Arc<N>,
    incarnation: u64,
    next_counter: u64,
    proposals: PendingProposals,
    reads: PendingReads,
    /// Index of the last entry applied to the state machine.
    applied: u64,
    last_snapshot_index: u64,
    /// Set when a member was added: raft-rs refuses a snapshot whose
    /// configuration lacks the receiver, so the snapshot a joining member
    /// will be sent must be taken after its addition applied.
    snapshot_wanted: bool,
    /// Members we sent a snapshot to in this Ready; reported to raft after.
    snapshots_sent: Vec<MemberId>,
    leadership: watch::Sender<Leadership>,
    metrics: Arc<ReplicaMetrics>,
}

impl<L: LogStore, S: StateMachine, N: Network> Replica<L, S, N> {
    /// Starts a replica on the current tokio runtime.
    ///
    /// `log` is this member's log (empty for a new member). A fresh log with
    /// `config.initial_voters` set bootstraps a new cluster; a fresh log
    /// without them waits to be added and sent a snapshot. A non-empty log is
    /// a restart: the state machine (which must be new, as the store's is in
    /// memory) is restored from the log's snapshot and the rest replayed.
    ///
    /// The network must already know how to reach the members this one will
    /// talk to; later membership changes update it through
    /// [`Network::set_peer_address`].
    pub fn start(
        config: ReplicaConfig,
        mut log: L,
        state_machine: Arc<S>,
        network: Arc<N>,
    ) -> Result<ReplicaHandle> {
        if !config.initial_voters.is_empty() && !config.initial_voters.contains(&config.id) {
            return Err(Error::InvalidRequest(format!(
                "member {} is not among the initial voters {:?}",
                config.id, config.initial_voters
            )));
        }
        bootstrap_if_new(&config, &mut log, &*state_machine)?;
        let applied = recover_state_machine(&config, &log, &*state_machine)?;
        let logger = raft_logger(config.id);
        let raw = RawNode::new(&config.raft_config(applied), log, &logger)?;
        let (mailbox_sender, mailbox) = mpsc::channel(MAILBOX_CAPACITY);
        let (leadership, leadership_receiver) = watch::channel(Leadership::default());
        let metrics = Arc::new(ReplicaMetrics::default());
        metrics.applied_index.store(applied, Ordering::Relaxed);
        let handle = ReplicaHandle::new(
            config.id,
            mailbox_sender,
            leadership_receiver,
            metrics.clone(),
        );
        let replica = Replica {
            id: config.id,
            config,
            raw,
            state_machine,
            network,
            incarnation: rand::random(),
            next_counter: 0,
            proposals: PendingProposals::default(),
            reads: PendingReads::default(),
            applied,
            last_snapshot_index: applied,
            snapshot_wanted: false,
            snapshots_sent: Vec::new(),
            leadership,
            metrics,
        };
        tokio::spawn(replica.run(mailbox));
        Ok(handle)
    }

    async fn run(mut self, mut mailbox: mpsc::Receiver<Request>) {
        let mut ticker = tokio::time::interval(self.config.tick_interval());
        // A stalled task must not fire a burst of ticks afterwards: that
        // would look like a long silence and start a needless election.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopped_signal = None;
        loop {
            // `biased`: a fixed polling order keeps seeded simulations
            // reproducible; ticks first, since they only fire when due.
            tokio::select! {
                biased;
                _ = ticker.tick() => self.on_tick(),
                request = mailbox.recv() => {
                    let Some(request) = request else { break };
                    if let Some(done) = self.on_requests(request, &mut mailbox) {
                        stopped_signal = Some(done);
                        break;
                    }
                }
            }
            self.issue_read_index();
            if let Err(error) = self.on_ready() {
                // The log or the state machine failed mid-Ready: continuing
                // could acknowledge what is not durable. Stop, as a crash
                // would; a restart recovers from what the disk holds.
                tracing::error!(member = self.id, %error, "replica stops on an unrecoverable error");
                break;
            }
        }
        // Close the mailbox first so that no new request slips in, then fail
        // what is pending, then drop the log before saying we are done.
        drop(mailbox);
        self.proposals.fail_all(|| Error::Stopped);
        self.reads.fail_all(|| Error::Stopped);
        tracing::debug!(member = self.id, "replica stopped");
        drop(self);
        if let Some(done) = stopped_signal {
            let _ = done.send(());
        }
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        let now = Instant::now();
        let timeout_ms = self.config.proposal_timeout_ms;
        let expired = self.proposals.expire(now, timeout_ms);
        ReplicaMetrics::add(&self.metrics.proposals_failed, expired as u64);
        self.reads.expire(now, timeout_ms);
    }

    /// Handles `first` and whatever else is queued, up to a batch, so that
    /// everything waiting shares the next Ready and its one fsync. Returns
    /// the stop signal if a stop was asked for.
    fn on_requests(
        &mut self,
        first: Request,
        mailbox: &mut mpsc::Receiver<Request>,
    ) -> Option<oneshot::Sender<()>> {
        if let Some(done) = self.on_request(first) {
            return Some(done);
        }
        for _ in 1..MAILBOX_BATCH_MAX {
            let Ok(request) = mailbox.try_recv() else {
                break;
            };
            if let Some(done) = self.on_request(request) {
                return Some(done);
            }
        }
        None
    }

    fn on_request(&mut self, request: Request) -> Option<oneshot::Sender<()>> {
        match request {
            Request::Propose { command, reply } => self.propose(command, reply),
            Request::ReadIndex { reply } => self.read_index(reply),
            Request::Step(message) => {
                if let Err(error) = self.raw.step(message) {
                    // Messages for a member we no longer know, or stale
                    // local ones: raft has nothing to do with them.
                    tracing::debug!(member = self.id, %error, "raft refused a message");
                }
            }
            Request::ReportUnreachable { member } => self.raw.report_unreachable(member),
            Request::ChangeMembership { change, reply } => self.propose_membership(change, reply),
            Request::TransferLeader { to } => self.raw.transfer_leader(to),
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Stop { done } => return Some(done),
        }
        None
    }

    fn leader_hint(&self) -> Option<MemberId> {
        Some(self.raw.raft.leader_id).filter(|id| *id != raft::INVALID_ID)
    }

    fn next_proposal_id(&mut self) -> ProposalId {
        self.next_counter += 1;
        ProposalId {
            member: self.id,
            incarnation: self.incarnation,
            counter: self.next_counter,
        }
    }

    /// Refuses a proposal that cannot succeed now, before raft sees it.
    fn admit(&self, command_bytes: usize) -> Result<()> {
        if command_bytes > PROPOSAL_BYTES_MAX {
            return Err(Error::TooLarge {
                what: "proposal",
                size: command_bytes,
                limit: PROPOSAL_BYTES_MAX,
            });
        }
        if self.proposals.len() >= PENDING_PROPOSALS_MAX {
            return Err(Error::TooLarge {
                what: "pending proposals",
                size: self.proposals.len(),
                limit: PENDING_PROPOSALS_MAX,
            });
        }
        // Without a known leader raft would drop the proposal anyway; say so
        // at once so the caller can look elsewhere.
        if self.leader_hint().is_none() {
            return Err(Error::NotLeader { leader_hint: None });
        }
        Ok(())
    }

    fn propose(&mut self, command: Vec<u8>, reply: oneshot::Sender<Result<Vec<u8>>>) {
        if let Err(error) = self.admit(command.len()) {
            self.refuse(reply, error);
            return;
        }
        let id = self.next_proposal_id();
        let outcome = self.raw.propose(id.encode(), command);
        self.track(id, outcome, reply);
    }

    fn propose_membership(
        &mut self,
        change: MembershipChange,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    ) {
        if let Err(error) = self.admit(0) {
            self.refuse(reply, error);
            return;
        }
        // raft-rs would silently turn a second concurrent change into a
        // no-op; refusing it here tells the caller.
        if self.raw.raft.has_pending_conf() {
            let error = Error::InvalidRequest("a membership change is already in progress".into());
            self.refuse(reply, error);
            return;
        }
        let mut conf_change = ConfChange::default();
        match change {
            MembershipChange::Add { id, address } => {
                conf_change.set_change_type(ConfChangeType::AddNode);
                conf_change.node_id = id;
                conf_change.context = address.into_bytes().into();
            }
            MembershipChange::Remove { id } => {
                conf_change.set_change_type(ConfChangeType::RemoveNode);
                conf_change.node_id = id;
            }
        }
        let id = self.next_proposal_id();
        let outcome = self.raw.propose_conf_change(id.encode(), conf_change);
        self.track(id, outcome, reply);
    }

    /// Records an accepted proposal, or answers a refused one.
    fn track(
        &mut self,
        id: ProposalId,
        outcome: raft::Result<()>,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    ) {
        match outcome {
            Ok(()) => {
                // A leader appends at once, so it knows the entry's index; a
                // follower forwarded it and does not.
                let index = (self.raw.raft.state == StateRole::Leader)
                    .then(|| self.raw.raft.raft_log.last_index());
                let deadline = Instant::now() + self.config.proposal_timeout();
                self.proposals.insert(id.counter, reply, deadline, index);
                ReplicaMetrics::add(&self.metrics.proposals, 1);
            }
            Err(raft::Error::ProposalDropped) => {
                // A leader handing over leadership drops proposals; point the
                // caller at the member it is handing over to.
                let leader_hint = self.raw.raft.lead_transferee.or(self.leader_hint());
                self.refuse(reply, Error::NotLeader { leader_hint });
            }
            Err(error) => self.refuse(reply, Error::Raft(error)),
        }
    }

    fn refuse(&self, reply: oneshot::Sender<Result<Vec<u8>>>, error: Error) {
        ReplicaMetrics::add(&self.metrics.proposals_failed, 1);
        let _ = reply.send(Err(error));
    }

    fn read_index(&mut self, reply: oneshot::Sender<Result<u64>>) {
        if self.reads.len() >= PENDING_READS_MAX {
            let error = Error::TooLarge {
                what: "pending reads",
                size: self.reads.len(),
                limit: PENDING_READS_MAX,
            };
            let _ = reply.send(Err(error));
            return;
        }
        let deadline = Instant::now() + self.config.proposal_timeout();
        self.reads.wait(reply, deadline);
    }

    /// One raft read-index request for every reader that arrived since the
    /// last one: the batching that makes linearizable reads cheap.
    fn issue_read_index(&mut self) {
        if !self.reads.has_waiting() {
            return;
        }
        if self.leader_hint().is_none() {
            // raft-rs drops a read index without a leader and never answers.
            self.reads
                .fail_waiting(|| Error::NotLeader { leader_hint: None });
            return;
        }
        // The context carries our incarnation like a proposal id does: a
        // delayed answer to a previous life's request must not confirm a
        // new request that happens to reuse its counter.
        let id = self.next_proposal_id();
        self.reads.send_waiting(id.counter);
        self.raw.read_index(id.encode());
        ReplicaMetrics::add(&self.metrics.read_index_requests, 1);
    }

    fn status(&self) -> ReplicaStatus {
        let mut voters: Vec<MemberId> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        ReplicaStatus {
            id: self.id,
            leader_id: self.leader_hint(),
            term: self.raw.raft.term,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied,
            voters,
            is_leader: self.raw.raft.state == StateRole::Leader,
        }
    }

    /// Handles one Ready, in the order raft-rs documents for `RawNode`.
    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        let span = tracing::debug_span!(
            "raft_ready",
            member = self.id,
            number = ready.number(),
            entries = ready.entries().len(),
            committed = ready.committed_entries().len(),
        );
        let _entered = span.enter();
        self.observe_leadership();

        // 1. Messages that promise nothing about our disk (a leader's
        //    appends and heartbeats) go first: followers then write in
        //    parallel with our own fsync (raft thesis 10.2.1). The leader
        //    counts itself towards a quorum only after step 6.
        self.send_messages(ready.take_messages());

        // 2. A snapshot replaces the whole state, so it is installed before
        //    any entry that follows it can be applied.
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }

        // 3. Committed entries are already durable on a quorum, so applying
        //    them before our own append is safe and answers callers sooner.
        let read_states = ready.take_read_states();
        self.apply_entries(ready.take_committed_entries())?;

        // 4. New entries and the hard state, made durable with one fsync for
        //    the whole Ready: the group commit every proposal batched into
        //    this Ready shares.
        self.persist(&ready)?;

        // 5. Persisted messages (votes, a follower's append acknowledgements)
        //    promise that what they acknowledge is on disk, so they leave
        //    only after the sync above.
        self.send_messages(ready.take_persisted_messages());
        self.confirm_reads(read_states);

        // 6. Tell raft the Ready is handled. What the persist made possible
        //    (a leader's commit advancing with its own vote) comes back.
        let mut light = self.raw.advance(ready);

        // 7. The commit index is recorded but not synced: raft recovers it
        //    from the leader, so it need not cost an fsync.
        if let Some(commit) = light.commit_index() {
            let mut hard_state = self.raw.raft.hard_state();
            hard_state.commit = commit;
            self.raw.mut_store().set_hard_state(&hard_state)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;

        // 8. Everything handed out is applied; raft may hand out more.
        self.raw.advance_apply();
        self.after_apply()
    }

    /// Publishes a changed (leader, term) and fails the reads it lost.
    fn observe_leadership(&mut self) {
        let now = Leadership {
            leader_id: self.leader_hint(),
            term: self.raw.raft.term,
        };
        if *self.leadership.borrow() == now {
            return;
        }
        tracing::info!(member = self.id, leader = ?now.leader_id, term = now.term, "leadership changed");
        self.leadership.send_replace(now);
        ReplicaMetrics::add(&self.metrics.leader_changes, 1);
        // Reads change nothing, so the ones the old leader will never answer
        // fail now and are retried. Proposals are not failed here: one
        // forwarded to the old leader may still commit (raft re-forwards a
        // delayed MsgPropose to the new leader), so only its application,
        // an entry overwriting its index, or its deadline can settle it.
        self.reads.fail_in_flight(now.leader_id);
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(message.to);
            }
            self.network.send(message.to, message);
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let index = snapshot.get_metadata().index;
        let data = snapshot.data.clone();
        tracing::info!(
            member = self.id,
            index,
            bytes = data.len(),
            "installing snapshot"
        );
        self.raw.mut_store().apply_snapshot(snapshot)?;
        self.state_machine.restore(index, &data)?;
        self.applied = index;
        self.last_snapshot_index = index;
        ReplicaMetrics::add(&self.metrics.snapshots_installed, 1);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<()> {
        for entry in entries {
            // A snapshot installed in this Ready already covers older entries.
            if entry.index <= self.applied {
                continue;
            }
            let response = match entry.get_entry_type() {
                EntryType::EntryNormal => self.state_machine.apply(entry.index, entry.get_data()),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_membership(&entry)?;
                    // The state machine still counts the index as applied,
                    // so its snapshots line up with the log.
                    self.state_machine.apply(entry.index, &[])
                }
            };
            self.applied = entry.index;
            let proposer = ProposalId::decode(entry.get_context());
            let (id, incarnation) = (self.id, self.incarnation);
            let ours = |proposal: &ProposalId| {
                proposal.member == id && proposal.incarnation == incarnation
            };
            let leader_hint = self.leader_hint();
            self.proposals
                .on_applied(entry.index, proposer, ours, response, leader_hint);
        }
        self.metrics
            .applied_index
            .store(self.applied, Ordering::Relaxed);
        Ok(())
    }

    fn apply_membership(&mut self, entry: &Entry) -> Result<()> {
        let change = decode_conf_change(entry)?;
        let conf_state = self.raw.apply_conf_change(&change)?;
        self.raw.mut_store().set_conf_state(&conf_state)?;
        let address = String::from_utf8_lossy(change.get_context()).into_owned();
        for single in change.get_changes() {
            let member = single.node_id;
            match single.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    self.snapshot_wanted = true;
                    if member != self.id && !address.is_empty() {
                        self.network.set_peer_address(member, address.clone());
                    }
                }
                ConfChangeType::RemoveNode => self.network.remove_peer(member),
            }
        }
        tracing::info!(member = self.id, voters = ?conf_state.voters, "membership changed");
        Ok(())
    }

    fn persist(&mut self, ready: &raft::Ready) -> Result<()> {
        let store = self.raw.mut_store();
        if !ready.entries().is_empty() {
            store.append(ready.entries())?;
            ReplicaMetrics::add(&self.metrics.entries_appended, ready.entries().len() as u64);
        }
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state)?;
        }
        // raft sets must_sync for new entries, a snapshot, or a new term or
        // vote: everything a message may later promise is on disk.
        if ready.must_sync() {
            store.sync()?;
            ReplicaMetrics::add(&self.metrics.fsyncs, 1);
        }
        Ok(())
    }

    fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
        for state in read_states {
            let Some(id) = ProposalId::decode(&state.request_ctx) else {
                continue;
            };
            if id.member == self.id && id.incarnation == self.incarnation {
                self.reads.confirm(id.counter, state.index);
            }
        }
    }

    fn after_apply(&mut self) -> Result<()> {
        self.reads.release(self.applied);
        // We cannot know when a snapshot arrives; reporting it finished at
        // once puts the follower back to probing, so a lost snapshot is
        // noticed on the next rejected append and sent again rather than
        // leaving the follower paused for ever.
        for member in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(member, SnapshotStatus::Finish);
        }
        self.maybe_take_snapshot()
    }

    /// Every `snapshot_interval_entries` applied entries, and after a member
    /// is added, snapshots the state machine and lets the log drop what the
    /// snapshot covers.
    fn maybe_take_snapshot(&mut self) -> Result<()> {
        let due = self.last_snapshot_index + self.config.snapshot_interval_entries;
        if self.applied < due && !self.snapshot_wanted {
            return Ok(());
        }
        self.snapshot_wanted = false;
        let (index, data) = self.state_machine.snapshot()?;
        if index <= self.last_snapshot_index || index > self.applied {
            return Ok(());
        }
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = self.raw.store().term(index)?;
        // Membership changes apply synchronously with entries, so the
        // current configuration is the one as of `index`.
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        self.raw.mut_store().compact_to_snapshot(snapshot)?;
        self.last_snapshot_index = index;
        ReplicaMetrics::add(&self.metrics.snapshots_taken, 1);
        tracing::debug!(
            member = self.id,
            index,
            "took snapshot and compacted the log"
        );
        Ok(())
    }
}

fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2> {
    let corrupt = |error: protobuf::ProtobufError| {
        Error::Corrupt(format!("membership change at {}: {error}", entry.index))
    };
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::parse_from_bytes(entry.get_data()).map_err(corrupt)
        }
        _ => {
            // The single-change form, widened so one path applies both.
            let change = ConfChange::parse_from_bytes(entry.get_data()).map_err(corrupt)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(change.get_change_type());
            single.node_id = change.node_id;
            let mut widened = ConfChangeV2::default();
            widened.mut_changes().push(single);
            widened.context = change.context;
            Ok(widened)
        }
    }
}

/// Writes the bootstrap snapshot into a brand-new log of an initial member.
fn bootstrap_if_new<L: LogStore, S: StateMachine>(
    config: &ReplicaConfig,
    log: &mut L,
    state_machine: &S,
) -> Result<()> {
    let state = log.initial_state()?;
    let fresh =
        !state.initialized() && state.hard_state == HardState::default() && log.last_index()? == 0;
    if !fresh || config.initial_voters.is_empty() {
        return Ok(());
    }
    // The state machine's own image of its empty state, so that a member
    // restoring this snapshot gets exactly what it would have started with.
    let (_, data) = state_machine.snapshot()?;
    let conf_state = ConfState {
        voters: config.initial_voters.clone(),
        ..Default::default()
    };
    let mut snapshot = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    let metadata = snapshot.mut_metadata();
    metadata.index = BOOTSTRAP_INDEX;
    metadata.term = BOOTSTRAP_TERM;
    metadata.set_conf_state(conf_state.clone());
    log.apply_snapshot(snapshot)?;
    log.set_conf_state(&conf_state)?;
    let hard_state = HardState {
        term: BOOTSTRAP_TERM,
        commit: BOOTSTRAP_INDEX,
        ..Default::default()
    };
    log.set_hard_state(&hard_state)?;
    log.sync()?;
    tracing::info!(member = config.id, voters = ?config.initial_voters, "bootstrapped a new cluster");
    Ok(())
}

/// Restores the (new, empty) state machine from the log's snapshot and
/// returns the index raft should resume applying after.
fn recover_state_machine<L: LogStore, S: StateMachine>(
    config: &ReplicaConfig,
    log: &L,
    state_machine: &S,
) -> Result<u64> {
    // A log may say "unavailable" rather than hand out an empty snapshot
    // (the disk log does): for a new member that is simply "none yet".
    let snapshot = match log.snapshot(0, config.id) {
        Ok(snapshot) => snapshot,
        Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)) => {
            Snapshot::default()
        }
        Err(error) => return Err(error.into()),
    };
    let index = snapshot.get_metadata().index;
    if index > state_machine.applied_index() {
        state_machine.restore(index, snapshot.get_data())?;
    }
    let applied = state_machine.applied_index();
    let commit = log.initial_state()?.hard_state.commit.max(index);
    if applied > commit {
        return Err(Error::InvalidRequest(format!(
            "the state machine has applied {applied} but the log is committed only to {commit}; \
             start replicas with a new state machine"
        )));
    }
    Ok(applied)
}
