//! [`PeerNetwork`]: the [`Network`] that carries raft messages to peer
//! members over QUIC.
//!
//! Each peer has a bounded outbound queue and one task that holds one
//! connection and one long-lived unidirectional raft stream, writing framed
//! [`RaftEnvelope`]s. `send` only queues and never blocks: a message is
//! dropped (and counted) when the queue is full or the peer is down, which
//! raft tolerates by retransmitting. The task reconnects with bounded
//! exponential backoff. What the replica must tell raft about delivery
//! (`report_unreachable`, `report_snapshot`) comes out as [`PeerReport`]s.
//!
//! Messages to one peer travel on the connection this member opened; the
//! peer's messages to us arrive on the one it opened. This module knows
//! nothing of raft's state; it moves messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::frame::{RAFT_FRAME_BYTES_MAX, encode_frame, write_message};
use super::quic::{QuicEndpoint, RaftEnvelope, TransportStats, open_raft_stream};
use crate::error::MemberId;
use crate::replica::Network;
use crate::{Error, Result};

/// Messages queued for one peer. raft keeps at most `max_inflight_msgs`
/// (256 by default) appends in flight per peer plus heartbeats and votes;
/// 4096 absorbs several Ready rounds of that while a stream is slow, and
/// bounds what an unreachable peer can hold in memory.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;

/// Messages taken from the queue and written with one stream write. Raft
/// emits a Ready's messages together; writing them as one buffer saves a
/// stream lock and a wakeup per message, and 64 keeps the buffer small.
pub const PUMP_BATCH_MESSAGES_MAX: usize = 64;

/// First wait before reconnecting to a peer; doubled per failure.
pub const RECONNECT_BACKOFF_INITIAL_MS: u64 = 50;

/// Longest wait between reconnection attempts: a restarted member is
/// reached within about two seconds, while a dead one costs one handshake
/// attempt every two seconds.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;

/// Delivery reports waiting for the replica. The replica drains them every
/// loop turn; if it falls behind, later reports are dropped, which only
/// delays raft noticing (it probes again on the next heartbeat).
pub const PEER_REPORTS_MAX: usize = 1024;

/// What the replica must pass on to raft-rs after the network learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerReport {
    /// Call `raw_node.report_unreachable(id)`: a connection attempt or a
    /// stream to the peer failed.
    Unreachable(MemberId),
    /// Call `raw_node.report_snapshot(id, SnapshotStatus::Finish)`: the
    /// peer acknowledged every byte of a `MsgSnapshot` (sent on a stream of
    /// its own).
    SnapshotSent(MemberId),
    /// Call `raw_node.report_snapshot(id, SnapshotStatus::Failure)`: a
    /// `MsgSnapshot` was dropped.
    SnapshotFailed(MemberId),
}

/// Raft messages to peer members over QUIC. Create it inside a tokio
/// runtime; its peer tasks run there and stop when it is dropped.
pub struct PeerNetwork {
    endpoint: QuicEndpoint,
    peers: Mutex<HashMap<MemberId, Peer>>,
    reports: mpsc::Sender<PeerReport>,
    runtime: tokio::runtime::Handle,
}

struct Peer {
    address: String,
    queue: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNetwork").finish_non_exhaustive()
    }
}

impl PeerNetwork {
    /// A network sending through `endpoint`, and the receiver of its
    /// delivery reports. Must be called inside a tokio runtime.
    pub fn new(endpoint: QuicEndpoint) -> (Self, mpsc::Receiver<PeerReport>) {
        let (reports, receiver) = mpsc::channel(PEER_REPORTS_MAX);
        let network = Self {
            endpoint,
            peers: Mutex::new(HashMap::new()),
            reports,
            runtime: tokio::runtime::Handle::current(),
        };
        (network, receiver)
    }

    /// The peers currently known and their addresses.
    pub fn peers(&self) -> Vec<(MemberId, String)> {
        self.lock_peers()
            .iter()
            .map(|(id, peer)| (*id, peer.address.clone()))
            .collect()
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<MemberId, Peer>> {
        // The map holds no invariant a panic elsewhere could break.
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report(&self, report: PeerReport) {
        let _ = self.reports.try_send(report);
    }
}

impl Network for PeerNetwork {
    fn send(&self, to: MemberId, message: Message) {
        let stats = self.endpoint.stats();
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let outcome = match self.lock_peers().get(&to) {
            Some(peer) => peer.queue.try_send(message).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => &stats.raft_dropped_queue_full,
                mpsc::error::TrySendError::Closed(_) => &stats.raft_dropped_peer_down,
            }),
            None => Err(&stats.raft_dropped_peer_down),
        };
        if let Err(counter) = outcome {
            TransportStats::bump(counter);
            tracing::trace!(to, "dropped a raft message");
            if is_snapshot {
                self.report(PeerReport::SnapshotFailed(to));
            }
        }
    }

    fn set_peer_address(&self, id: MemberId, address: String) {
        let mut peers = self.lock_peers();
        if peers.get(&id).is_some_and(|peer| peer.address == address) {
            return;
        }
        let (queue, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let sender = PeerSender {
            id,
            address: address.clone(),
            endpoint: self.endpoint.clone(),
            stats: self.endpoint.stats_handle(),
            reports: self.reports.clone(),
        };
        let span = tracing::info_span!("raft_peer", peer = id, address = %address);
        let task = self.runtime.spawn(sender.run(receiver).instrument(span));
        if let Some(old) = peers.insert(
            id,
            Peer {
                address,
                queue,
                task,
            },
        ) {
            old.task.abort();
        }
    }

    fn remove_peer(&self, id: MemberId) {
        if let Some(peer) = self.lock_peers().remove(&id) {
            peer.task.abort();
        }
    }
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        for (_, peer) in self.lock_peers().drain() {
            peer.task.abort();
        }
    }
}

/// The task side of one peer.
struct PeerSender {
    id: MemberId,
    address: String,
    endpoint: QuicEndpoint,
    stats: Arc<TransportStats>,
    reports: mpsc::Sender<PeerReport>,
}

/// Why a connection's pump stopped.
enum PumpEnd {
    /// The network forgot the peer: stop for good.
    QueueClosed,
    Failed(Error),
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let mut backoff_ms = RECONNECT_BACKOFF_INITIAL_MS;
        loop {
            match self.connect().await {
                Ok((connection, stream)) => {
                    tracing::info!("connected to peer");
                    backoff_ms = RECONNECT_BACKOFF_INITIAL_MS;
                    match self.pump(&connection, stream, &mut queue).await {
                        PumpEnd::QueueClosed => return,
                        PumpEnd::Failed(e) => tracing::warn!(error = %e, "peer stream failed"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, backoff_ms, "peer unreachable"),
            }
            self.report(PeerReport::Unreachable(self.id));
            if !self.discard_for(&mut queue, backoff_ms).await {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
        }
    }

    async fn connect(&self) -> Result<(quinn::Connection, quinn::SendStream)> {
        let connection = self.endpoint.connect(&self.address).await?;
        let stream = open_raft_stream(&connection).await?;
        Ok((connection, stream))
    }

    /// Writes queued messages to the stream until it or the queue ends.
    async fn pump(
        &self,
        connection: &quinn::Connection,
        mut stream: quinn::SendStream,
        queue: &mut mpsc::Receiver<Message>,
    ) -> PumpEnd {
        let mut batch = Vec::with_capacity(PUMP_BATCH_MESSAGES_MAX);
        let mut bytes = Vec::new();
        loop {
            tokio::select! {
                received = queue.recv_many(&mut batch, PUMP_BATCH_MESSAGES_MAX) => {
                    if received == 0 {
                        return PumpEnd::QueueClosed;
                    }
                },
                reason = connection.closed() => {
                    return PumpEnd::Failed(Error::Transport(format!("connection closed: {reason}")));
                }
            }
            let count = self.encode_batch(connection, &mut batch, &mut bytes);
            if let Err(e) = stream.write_all(&bytes).await {
                for _ in 0..count {
                    TransportStats::bump(&self.stats.raft_dropped_peer_down);
                }
                return PumpEnd::Failed(Error::Transport(format!("writing raft stream: {e}")));
            }
            for _ in 0..count {
                TransportStats::bump(&self.stats.raft_sent);
            }
        }
    }

    /// Frames the batch into `bytes` (one write for the lot), sending
    /// snapshots off on their own streams. Returns how many messages were
    /// framed.
    fn encode_batch(
        &self,
        connection: &quinn::Connection,
        batch: &mut Vec<Message>,
        bytes: &mut Vec<u8>,
    ) -> usize {
        bytes.clear();
        let mut count = 0;
        for message in batch.drain(..) {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(connection.clone(), message);
                continue;
            }
            let framed = RaftEnvelope::wrap(&message)
                .and_then(|envelope| encode_frame(&envelope, RAFT_FRAME_BYTES_MAX, bytes));
            match framed {
                Ok(()) => count += 1,
                Err(e) => {
                    // This message's fault, not the stream's.
                    self.dropped(&message);
                    tracing::warn!(error = %e, "dropped an unsendable raft message");
                }
            }
        }
        count
    }

    /// Sends a snapshot on a stream of its own, so that a state machine
    /// image of many megabytes does not hold up heartbeats and votes behind
    /// it, and reports the outcome once the peer has acknowledged every
    /// byte. raft sends one snapshot per peer at a time, which bounds these
    /// tasks.
    fn send_snapshot(&self, connection: quinn::Connection, message: Message) {
        let id = self.id;
        let stats = self.stats.clone();
        let reports = self.reports.clone();
        let span = tracing::info_span!(
            "send_snapshot",
            peer = id,
            index = message.get_snapshot().get_metadata().index
        );
        let task = async move {
            let outcome = async {
                let mut stream = open_raft_stream(&connection).await?;
                let envelope = RaftEnvelope::wrap(&message)?;
                write_message(&mut stream, &envelope, RAFT_FRAME_BYTES_MAX).await?;
                let _ = stream.finish();
                match stream.stopped().await {
                    Ok(None) => Ok(()),
                    Ok(Some(code)) => Err(Error::Transport(format!(
                        "peer stopped the snapshot stream ({code})"
                    ))),
                    Err(e) => Err(Error::Transport(format!("snapshot stream: {e}"))),
                }
            }
            .await;
            let report = match outcome {
                Ok(()) => {
                    TransportStats::bump(&stats.raft_sent);
                    tracing::info!("snapshot delivered");
                    PeerReport::SnapshotSent(id)
                }
                Err(e) => {
                    TransportStats::bump(&stats.raft_dropped_peer_down);
                    tracing::warn!(error = %e, "snapshot not delivered");
                    PeerReport::SnapshotFailed(id)
                }
            };
            let _ = reports.try_send(report);
        };
        tokio::spawn(task.instrument(span));
    }

    /// Waits `backoff_ms`, dropping what is queued meanwhile (raft resends
    /// what matters once the peer is back). False if the queue closed.
    async fn discard_for(&self, queue: &mut mpsc::Receiver<Message>, backoff_ms: u64) -> bool {
        let deadline = tokio::time::sleep(Duration::from_millis(backoff_ms));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return true,
                message = queue.recv() => match message {
                    Some(message) => self.dropped(&message),
                    None => return false,
                },
            }
        }
    }

    fn dropped(&self, message: &Message) {
        TransportStats::bump(&self.stats.raft_dropped_peer_down);
        if message.get_msg_type() == MessageType::MsgSnapshot {
            self.report(PeerReport::SnapshotFailed(self.id));
        }
    }

    fn report(&self, report: PeerReport) {
        let _ = self.reports.try_send(report);
    }
}
