//! Bookkeeping for requests waiting on raft: proposals waiting for their
//! entry to apply, and linearizable reads waiting for a read index and then
//! for the local state machine to catch up with it. It knows nothing of raft
//! itself; the replica's task tells it what was applied and confirmed.

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{Error, MemberId, Result};

/// Bytes of a proposal's entry context: member id, incarnation, counter.
const PROPOSAL_CONTEXT_BYTES: usize = 24;

/// Who proposed an entry. Every member applies every entry; the member whose
/// id and incarnation match answers its caller. The incarnation (random per
/// start) keeps a restarted member from mistaking a previous life's entries,
/// still in flight, for its own new proposals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProposalId {
    pub member: MemberId,
    pub incarnation: u64,
    pub counter: u64,
}

impl ProposalId {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(PROPOSAL_CONTEXT_BYTES);
        bytes.extend_from_slice(&self.member.to_be_bytes());
        bytes.extend_from_slice(&self.incarnation.to_be_bytes());
        bytes.extend_from_slice(&self.counter.to_be_bytes());
        bytes
    }

    /// `None` for entries without our context (raft's no-ops, or a conf
    /// change raft replaced with an empty entry).
    pub(crate) fn decode(bytes: &[u8]) -> Option<ProposalId> {
        if bytes.len() != PROPOSAL_CONTEXT_BYTES {
            return None;
        }
        let word = |at: usize| {
            let mut buffer = [0u8; 8];
            buffer.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(buffer)
        };
        Some(ProposalId {
            member: word(0),
            incarnation: word(8),
            counter: word(16),
        })
    }
}

struct PendingProposal {
    reply: oneshot::Sender<Result<Vec<u8>>>,
    deadline: Instant,
    /// The entry's index when this member proposed it as leader; `None` when
    /// it was forwarded and only the leader knows where it landed.
    index: Option<u64>,
}

/// Proposals of this member not yet answered, keyed by counter. Counters
/// increase and every deadline is "now + the same timeout", so key order is
/// deadline order.
#[derive(Default)]
pub(crate) struct PendingProposals {
    by_counter: BTreeMap<u64, PendingProposal>,
    by_index: BTreeMap<u64, u64>,
}

impl PendingProposals {
    pub(crate) fn len(&self) -> usize {
        self.by_counter.len()
    }

    pub(crate) fn insert(
        &mut self,
        counter: u64,
        reply: oneshot::Sender<Result<Vec<u8>>>,
        deadline: Instant,
        index: Option<u64>,
    ) {
        if let Some(index) = index {
            self.by_index.insert(index, counter);
        }
        let pending = PendingProposal {
            reply,
            deadline,
            index,
        };
        self.by_counter.insert(counter, pending);
    }

    /// The entry at `index` was applied with `response`. Answers its
    /// proposer if that is us, and fails a proposal of ours that expected
    /// `index` but was overwritten by another leader's entry: raft never
    /// moves an entry to another index, so it is lost for good.
    pub(crate) fn on_applied(
        &mut self,
        index: u64,
        proposer: Option<ProposalId>,
        ours: impl Fn(&ProposalId) -> bool,
        response: Vec<u8>,
        leader_hint: Option<MemberId>,
    ) -> bool {
        let mine = proposer.filter(|id| ours(id)).map(|id| id.counter);
        if let Some(expected) = self.by_index.remove(&index)
            && Some(expected) != mine
            && let Some(lost) = self.by_counter.remove(&expected)
        {
            let _ = lost.reply.send(Err(Error::NotLeader { leader_hint }));
        }
        let Some(pending) = mine.and_then(|counter| self.by_counter.remove(&counter)) else {
            return false;
        };
        if let Some(expected_index) = pending.index {
            self.by_index.remove(&expected_index);
        }
        let _ = pending.reply.send(Ok(response));
        true
    }

    /// Fails proposals whose deadline has passed; returns how many.
    pub(crate) fn expire(&mut self, now: Instant, timeout_ms: u64) -> usize {
        let expired: Vec<u64> = self
            .by_counter
            .iter()
            .take_while(|(_, pending)| pending.deadline <= now)
            .map(|(counter, _)| *counter)
            .collect();
        for counter in &expired {
            self.fail(*counter, Error::Timeout { timeout_ms });
        }
        expired.len()
    }

    /// Fails every proposal (the replica is stopping).
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> Error) {
        for (_, pending) in std::mem::take(&mut self.by_counter) {
            let _ = pending.reply.send(Err(error()));
        }
        self.by_index.clear();
    }

    fn fail(&mut self, counter: u64, error: Error) {
        if let Some(pending) = self.by_counter.remove(&counter) {
            if let Some(index) = pending.index {
                self.by_index.remove(&index);
            }
            let _ = pending.reply.send(Err(error));
        }
    }
}

struct ReadWaiter {
    reply: oneshot::Sender<Result<u64>>,
    deadline: Instant,
}

/// Linearizable reads in their three stages.
#[derive(Default)]
pub(crate) struct PendingReads {
    /// Arrived since the last raft read-index request.
    waiting: Vec<ReadWaiter>,
    /// Sent to raft under a context counter, awaiting the leader's answer.
    in_flight: BTreeMap<u64, Vec<ReadWaiter>>,
    /// Confirmed at a read index, awaiting the local apply to reach it.
    confirmed: BTreeMap<u64, Vec<ReadWaiter>>,
    /// Readers in all three stages.
    len: usize,
}

impl PendingReads {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn wait(&mut self, reply: oneshot::Sender<Result<u64>>, deadline: Instant) {
        self.waiting.push(ReadWaiter { reply, deadline });
        self.len += 1;
    }

    /// Answers one reader that has left the queues.
    fn answer(&mut self, waiter: ReadWaiter, outcome: Result<u64>) {
        self.len -= 1;
        let _ = waiter.reply.send(outcome);
    }

    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Moves every waiting reader into one raft request under `context`.
    pub(crate) fn send_waiting(&mut self, context: u64) {
        let batch = std::mem::take(&mut self.waiting);
        self.in_flight.insert(context, batch);
    }

    /// Fails readers that could not be sent (no leader known).
    pub(crate) fn fail_waiting(&mut self, error: impl Fn() -> Error) {
        for waiter in std::mem::take(&mut self.waiting) {
            self.answer(waiter, Err(error()));
        }
    }

    /// The leader confirmed request `context` at `read_index`.
    pub(crate) fn confirm(&mut self, context: u64, read_index: u64) {
        if let Some(batch) = self.in_flight.remove(&context) {
            self.confirmed.entry(read_index).or_default().extend(batch);
        }
    }

    /// Answers every confirmed reader whose read index is now applied.
    pub(crate) fn release(&mut self, applied: u64) {
        let later = self.confirmed.split_off(&(applied + 1));
        for (read_index, batch) in std::mem::replace(&mut self.confirmed, later) {
            for waiter in batch {
                self.answer(waiter, Ok(read_index));
            }
        }
    }

    /// Leadership changed: the old leader will not answer requests in flight.
    pub(crate) fn fail_in_flight(&mut self, leader_hint: Option<MemberId>) {
        for (_, batch) in std::mem::take(&mut self.in_flight) {
            for waiter in batch {
                self.answer(waiter, Err(Error::NotLeader { leader_hint }));
            }
        }
    }

    /// Fails readers past their deadline.
    pub(crate) fn expire(&mut self, now: Instant, timeout_ms: u64) {
        let mut expired = Vec::new();
        for map in [&mut self.in_flight, &mut self.confirmed] {
            for batch in map.values_mut() {
                let (late, on_time) = std::mem::take(batch)
                    .into_iter()
                    .partition(|waiter| waiter.deadline <= now);
                *batch = on_time;
                expired.extend::<Vec<ReadWaiter>>(late);
            }
            map.retain(|_, batch| !batch.is_empty());
        }
        for waiter in expired {
            self.answer(waiter, Err(Error::Timeout { timeout_ms }));
        }
    }

    /// Fails every reader (the replica is stopping).
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> Error) {
        self.fail_waiting(&error);
        let in_flight = std::mem::take(&mut self.in_flight);
        let confirmed = std::mem::take(&mut self.confirmed);
        for waiter in in_flight
            .into_values()
            .chain(confirmed.into_values())
            .flatten()
        {
            self.answer(waiter, Err(error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_ids_round_trip() {
        let id = ProposalId {
            member: 3,
            incarnation: 77,
            counter: 9,
        };
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(b""), None);
    }

    #[tokio::test]
    async fn an_overwritten_entry_fails_its_proposal() {
        let mut pending = PendingProposals::default();
        let (reply, answer) = oneshot::channel();
        pending.insert(1, reply, Instant::now(), Some(10));
        let other = ProposalId {
            member: 2,
            incarnation: 1,
            counter: 1,
        };
        pending.on_applied(10, Some(other), |id| id.member == 1, vec![], Some(2));
        let outcome = answer.await.expect("answered");
        assert!(matches!(
            outcome,
            Err(Error::NotLeader {
                leader_hint: Some(2)
            })
        ));
        assert_eq!(pending.len(), 0);
    }

    #[tokio::test]
    async fn reads_are_released_once_applied() {
        let mut reads = PendingReads::default();
        let (reply, answer) = oneshot::channel();
        reads.wait(reply, Instant::now());
        reads.send_waiting(1);
        reads.confirm(1, 5);
        reads.release(4);
        assert_eq!(reads.len(), 1);
        reads.release(5);
        assert_eq!(answer.await.expect("answered").expect("ok"), 5);
        assert_eq!(reads.len(), 0);
    }
}
