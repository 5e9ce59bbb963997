//! Shared helpers for the replica tests and the seeded simulation: a small
//! deterministic register state machine, an in-memory network that can
//! drop, delay, duplicate, reorder and partition messages from a seeded RNG,
//! and a cluster of replicas over in-memory disks that can crash and restart.
//!
//! Nothing here sleeps to synchronise: waits are on watch channels or on a
//! polled condition with a bounded (virtual-time) deadline.

#![allow(dead_code)] // each test binary uses a different part

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_raft_store::error::MemberId;
use flotilla_raft_store::replica::{
    MemDisk, MemLog, Network, Replica, ReplicaConfig, ReplicaHandle, StateMachine,
};
use flotilla_raft_store::{Error, Result};
use raft::eraftpb::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Test results carry a message saying what went wrong.
pub type TestResult<T = ()> = std::result::Result<T, String>;

// ---------------------------------------------------------------------------
// The register state machine.

/// A command of the test state machine. Every command carries a unique
/// operation id so checkers can tell which writes were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value`; answers the previous value (0 when unset).
    Put { op: u64, key: u64, value: u64 },
    /// Sets `key` to `new` if it holds `expected`; answers (swapped, current).
    Cas {
        op: u64,
        key: u64,
        expected: u64,
        new: u64,
    },
}

const COMMAND_BYTES: usize = 33;

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, op, key, first, second) = match *self {
            Command::Put { op, key, value } => (0u8, op, key, value, 0),
            Command::Cas {
                op,
                key,
                expected,
                new,
            } => (1u8, op, key, expected, new),
        };
        let mut bytes = vec![tag];
        for word in [op, key, first, second] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Command> {
        if bytes.len() != COMMAND_BYTES {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (op, key, first, second) = (word(1), word(9), word(17), word(25));
        match bytes[0] {
            0 => Some(Command::Put {
                op,
                key,
                value: first,
            }),
            1 => Some(Command::Cas {
                op,
                key,
                expected: first,
                new: second,
            }),
            _ => None,
        }
    }

    pub fn op(&self) -> u64 {
        match *self {
            Command::Put { op, .. } | Command::Cas { op, .. } => op,
        }
    }
}

/// What a command answered. `revision` is the log index of the write (the
/// key's new mod_revision), or 0 when nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Put { previous: u64, revision: u64 },
    Cas { swapped: bool, revision: u64 },
}

impl Response {
    pub fn decode(bytes: &[u8]) -> Option<Response> {
        if bytes.len() != 17 {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        match bytes[0] {
            0 => Some(Response::Put {
                previous: word(1),
                revision: word(9),
            }),
            1 => Some(Response::Cas {
                swapped: word(1) == 1,
                revision: word(9),
            }),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (tag, first, second) = match *self {
            Response::Put { previous, revision } => (0u8, previous, revision),
            Response::Cas { swapped, revision } => (1u8, u64::from(swapped), revision),
        };
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&first.to_le_bytes());
        bytes.extend_from_slice(&second.to_le_bytes());
        bytes
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Registers {
    applied: u64,
    /// key -> (value, mod_revision): the log index that last wrote it.
    values: BTreeMap<u64, (u64, u64)>,
    /// Every applied operation id, in the snapshot too, so "no acknowledged
    /// write lost" can be checked on any member at any time.
    ops: BTreeSet<u64>,
}

impl Registers {
    fn encode(&self) -> Vec<u8> {
        let mut words = vec![self.applied, self.values.len() as u64];
        for (key, (value, revision)) in &self.values {
            words.extend([*key, *value, *revision]);
        }
        words.push(self.ops.len() as u64);
        words.extend(self.ops.iter().copied());
        words.iter().flat_map(|word| word.to_le_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Option<Registers> {
        let mut words = bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|chunk| u64::from_le_bytes(*chunk));
        let applied = words.next()?;
        let value_count = words.next()?;
        let mut values = BTreeMap::new();
        for _ in 0..value_count {
            let key = words.next()?;
            values.insert(key, (words.next()?, words.next()?));
        }
        let op_count = words.next()?;
        let ops = (0..op_count).map(|_| words.next()).collect::<Option<_>>()?;
        Some(Registers {
            applied,
            values,
            ops,
        })
    }
}

/// A map of u64 registers; deterministic, as `StateMachine` requires.
pub struct RegisterMachine {
    registers: Mutex<Registers>,
    applied: watch::Sender<u64>,
}

impl Default for RegisterMachine {
    fn default() -> Self {
        RegisterMachine {
            registers: Mutex::new(Registers::default()),
            applied: watch::channel(0).0,
        }
    }
}

impl RegisterMachine {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Registers> {
        self.registers.lock().expect("register lock")
    }

    /// The value of `key` (0 when unset).
    pub fn get(&self, key: u64) -> u64 {
        self.read(key).0
    }

    /// The value and mod_revision of `key` ((0, 0) when unset).
    pub fn read(&self, key: u64) -> (u64, u64) {
        self.lock().values.get(&key).copied().unwrap_or((0, 0))
    }

    pub fn values(&self) -> BTreeMap<u64, (u64, u64)> {
        self.lock().values.clone()
    }

    pub fn has_op(&self, op: u64) -> bool {
        self.lock().ops.contains(&op)
    }

    pub fn ops(&self) -> BTreeSet<u64> {
        self.lock().ops.clone()
    }

    /// Waits until this machine has applied `index`, for at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> TestResult {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|now| *now >= index))
            .await
            .map_err(|_| {
                format!(
                    "applied {} < {index} after {timeout:?}",
                    self.applied_index()
                )
            })?
            .map_err(|_| "machine dropped".to_string())?;
        Ok(())
    }
}

impl StateMachine for RegisterMachine {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut registers = self.lock();
        registers.applied = index;
        let response = match Command::decode(command) {
            None => Vec::new(), // raft's no-op, or a membership change
            Some(Command::Put { op, key, value }) => {
                registers.ops.insert(op);
                let previous = registers.values.insert(key, (value, index));
                let previous = previous.map_or(0, |(value, _)| value);
                Response::Put {
                    previous,
                    revision: index,
                }
                .encode()
            }
            Some(Command::Cas {
                op,
                key,
                expected,
                new,
            }) => {
                registers.ops.insert(op);
                let current = registers.values.get(&key).map(|(value, _)| *value);
                // A missing key never matches, as an etcd value compare.
                let swapped = current == Some(expected);
                if swapped {
                    registers.values.insert(key, (new, index));
                }
                let revision = if swapped { index } else { 0 };
                Response::Cas { swapped, revision }.encode()
            }
        };
        drop(registers);
        self.applied.send_replace(index);
        response
    }

    fn applied_index(&self) -> u64 {
        self.lock().applied
    }

    fn snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let registers = self.lock();
        Ok((registers.applied, registers.encode()))
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<()> {
        let mut registers =
            Registers::decode(data).ok_or_else(|| Error::Corrupt("register snapshot".into()))?;
        registers.applied = index;
        *self.lock() = registers;
        self.applied.send_replace(index);
        Ok(())
    }
}

/// A state machine the test cluster can create fresh for each member start.
pub trait TestMachine: StateMachine {
    fn fresh() -> Arc<Self>;
}

impl TestMachine for RegisterMachine {
    fn fresh() -> Arc<Self> {
        RegisterMachine::new()
    }
}

// ---------------------------------------------------------------------------
// The simulated network.

/// What the network does to messages, in parts per thousand and milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Each copy is delayed by a uniform [0, delay_ms_max] ms; different
    /// delays reorder messages.
    pub delay_ms_max: u64,
}

struct InFlight {
    deliver_at: Instant,
    sequence: u64,
    to: MemberId,
    message: Message,
}

#[derive(Default)]
struct NetState {
    faults: Faults,
    members: BTreeMap<MemberId, ReplicaHandle>,
    /// Members in different groups cannot talk; absent means group 0.
    groups: BTreeMap<MemberId, u32>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: BTreeMap<u64, InFlight>,
    next_sequence: u64,
    delivered: u64,
    dropped: u64,
}

impl NetState {
    fn connected(&self, from: MemberId, to: MemberId) -> bool {
        let group = |id| self.groups.get(&id).copied().unwrap_or(0);
        group(from) == group(to)
    }

    fn deliver(&mut self, from: MemberId, to: MemberId, message: Message) {
        match self.members.get(&to) {
            Some(handle) if self.connected(from, to) => {
                // A stopped member's mailbox is closed: the message is lost,
                // as it would be to a dead process.
                let _ = handle.step(message);
                self.delivered += 1;
            }
            _ => self.dropped += 1,
        }
    }
}

/// An in-memory network between replicas, shared by the whole cluster.
/// Randomness comes from the seeded RNG it is given; with `Faults::default()`
/// it delivers every message at once and in order.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    rng: Arc<Mutex<StdRng>>,
    wake: Arc<Notify>,
}

impl SimNet {
    /// A network; spawns its delivery task on the current runtime.
    pub fn new(faults: Faults, rng: Arc<Mutex<StdRng>>) -> SimNet {
        let net = SimNet {
            state: Arc::new(Mutex::new(NetState {
                faults,
                ..NetState::default()
            })),
            rng,
            wake: Arc::new(Notify::new()),
        };
        tokio::spawn(net.clone().deliver_delayed());
        net
    }

    /// A perfect network for the in-process cluster tests.
    pub fn reliable() -> SimNet {
        Self::new(
            Faults::default(),
            Arc::new(Mutex::new(StdRng::seed_from_u64(0))),
        )
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().expect("network lock")
    }

    pub fn endpoint(&self, id: MemberId) -> Arc<SimEndpoint> {
        Arc::new(SimEndpoint {
            id,
            net: self.clone(),
        })
    }

    pub fn attach(&self, handle: ReplicaHandle) {
        self.lock().members.insert(handle.id(), handle);
    }

    pub fn detach(&self, id: MemberId) {
        self.lock().members.remove(&id);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Splits the members into groups that cannot reach each other.
    pub fn partition(&self, groups: &[Vec<MemberId>]) {
        let mut state = self.lock();
        state.groups.clear();
        for (number, group) in groups.iter().enumerate() {
            for id in group {
                state.groups.insert(*id, number as u32 + 1);
            }
        }
    }

    /// Cuts `id` off from everyone else.
    pub fn isolate(&self, id: MemberId) {
        self.lock().groups.insert(id, u32::MAX);
    }

    pub fn heal(&self) {
        self.lock().groups.clear();
    }

    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.dropped)
    }

    fn send(&self, from: MemberId, to: MemberId, message: Message) {
        let mut state = self.lock();
        let faults = state.faults;
        if faults.drop_per_mille == 0 && faults.duplicate_per_mille == 0 && faults.delay_ms_max == 0
        {
            state.deliver(from, to, message);
            return;
        }
        let mut rng = self.rng.lock().expect("rng lock");
        if !state.connected(from, to) || rng.random_range(0..1000) < faults.drop_per_mille {
            state.dropped += 1;
            return;
        }
        // Raft tolerates duplicated messages except a forwarded proposal,
        // which would be appended twice. Our QUIC transport never
        // duplicates; the simulation duplicates everything else.
        let duplicable = message.get_msg_type() != MessageType::MsgPropose;
        let copies = if duplicable && rng.random_range(0..1000) < faults.duplicate_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = Duration::from_millis(rng.random_range(0..=faults.delay_ms_max));
            let sequence = state.next_sequence;
            state.next_sequence += 1;
            let deliver_at = Instant::now() + delay;
            state.queue.push(Reverse((deliver_at, sequence)));
            let message = message.clone();
            state.in_flight.insert(
                sequence,
                InFlight {
                    deliver_at,
                    sequence,
                    to,
                    message,
                },
            );
        }
        drop(rng);
        drop(state);
        self.wake.notify_one();
    }

    /// Delivers queued messages when they are due. Ends when the network is
    /// dropped by everyone else.
    async fn deliver_delayed(self) {
        loop {
            let next = self.deliver_due();
            if Arc::strong_count(&self.state) == 1 {
                return;
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        biased;
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    fn deliver_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        while let Some(Reverse((at, sequence))) = state.queue.peek().copied() {
            if at > now {
                return Some(at);
            }
            state.queue.pop();
            if let Some(flight) = state.in_flight.remove(&sequence) {
                debug_assert_eq!(flight.sequence, sequence);
                debug_assert!(flight.deliver_at <= now);
                let from = flight.message.from;
                state.deliver(from, flight.to, flight.message);
            }
        }
        None
    }
}

/// One member's view of the [`SimNet`]: its `Network`.
pub struct SimEndpoint {
    id: MemberId,
    net: SimNet,
}

impl Network for SimEndpoint {
    fn send(&self, to: MemberId, message: Message) {
        self.net.send(self.id, to, message);
    }

    fn set_peer_address(&self, _id: MemberId, _address: String) {}

    fn remove_peer(&self, _id: MemberId) {}
}

// ---------------------------------------------------------------------------
// Clusters.

/// One member: its disk survives restarts, its state machine does not.
pub struct Member<M = RegisterMachine> {
    pub id: MemberId,
    pub disk: MemDisk,
    pub machine: Arc<M>,
    pub handle: Option<ReplicaHandle>,
    pub config: ReplicaConfig,
}

/// Replicas over a [`SimNet`] with in-memory disks.
pub struct Cluster<M = RegisterMachine> {
    pub net: SimNet,
    pub members: BTreeMap<MemberId, Member<M>>,
}

/// Short timings for tests: 10 ms ticks, so an election takes ~100-200 ms
/// of (virtual) time.
pub fn test_config(id: MemberId, initial_voters: Vec<MemberId>) -> ReplicaConfig {
    let mut config = ReplicaConfig::new(id, initial_voters);
    config.tick_interval_ms = 10;
    config.proposal_timeout_ms = 2_000;
    config
}

/// How long tests wait for a condition (virtual time under `start_paused`).
pub const WAIT: Duration = Duration::from_secs(30);

impl<M: TestMachine> Cluster<M> {
    /// Starts members `1..=size` as a new cluster on a reliable network.
    pub fn start(size: u64, tune: impl Fn(&mut ReplicaConfig)) -> Self {
        Self::start_on(SimNet::reliable(), size, tune)
    }

    pub fn start_on(net: SimNet, size: u64, tune: impl Fn(&mut ReplicaConfig)) -> Self {
        let voters: Vec<MemberId> = (1..=size).collect();
        let mut cluster = Cluster {
            net,
            members: BTreeMap::new(),
        };
        for id in 1..=size {
            let mut config = test_config(id, voters.clone());
            tune(&mut config);
            cluster.add_stopped(config);
            cluster.restart(id).expect("start member");
        }
        cluster
    }

    /// Registers a member that is not running yet.
    pub fn add_stopped(&mut self, config: ReplicaConfig) {
        let member = Member {
            id: config.id,
            disk: MemDisk::new(),
            machine: M::fresh(),
            handle: None,
            config,
        };
        self.members.insert(member.id, member);
    }

    /// (Re)starts a member from its disk with a new, empty state machine.
    pub fn restart(&mut self, id: MemberId) -> Result<ReplicaHandle> {
        let member = self.members.get_mut(&id).expect("known member");
        member.machine = M::fresh();
        let handle = Replica::start(
            member.config.clone(),
            MemLog::open(&member.disk),
            member.machine.clone(),
            self.net.endpoint(id),
        )?;
        member.handle = Some(handle.clone());
        self.net.attach(handle.clone());
        Ok(handle)
    }

    /// Stops a member; what it never synced is lost, as in a crash.
    pub async fn crash(&mut self, id: MemberId) {
        self.net.detach(id);
        let member = self.members.get_mut(&id).expect("known member");
        if let Some(handle) = member.handle.take() {
            handle.stop().await.expect("stop");
        }
    }

    pub fn handle(&self, id: MemberId) -> &ReplicaHandle {
        self.members[&id]
            .handle
            .as_ref()
            .expect("member is running")
    }

    pub fn machine(&self, id: MemberId) -> &Arc<M> {
        &self.members[&id].machine
    }

    pub fn running(&self) -> Vec<MemberId> {
        self.members
            .values()
            .filter(|member| member.handle.is_some())
            .map(|member| member.id)
            .collect()
    }

    /// Waits until every running member in `among` agrees on one leader,
    /// itself one of `among`, and returns it.
    pub async fn leader_among(&self, among: &[MemberId]) -> TestResult<MemberId> {
        let agreed = || {
            let views: BTreeSet<Option<MemberId>> = among
                .iter()
                .map(|id| self.handle(*id).leadership().borrow().leader_id)
                .collect();
            match views.into_iter().collect::<Vec<_>>()[..] {
                [Some(leader)] if among.contains(&leader) => Some(leader),
                _ => None,
            }
        };
        eventually("a leader all members agree on", || async { agreed() }).await
    }

    pub async fn leader(&self) -> TestResult<MemberId> {
        self.leader_among(&self.running()).await
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn converge(&self, index: u64) -> TestResult {
        let behind = || {
            self.running()
                .into_iter()
                .find(|id| self.machine(*id).applied_index() < index)
        };
        let what = format!("every member to apply {index}");
        eventually(&what, || async { behind().is_none().then_some(()) })
            .await
            .map_err(|error| match behind() {
                Some(id) => {
                    let applied = self.machine(id).applied_index();
                    format!("{error}: member {id} applied {applied}")
                }
                None => error,
            })
    }

    pub async fn stop_all(&mut self) {
        for id in self.running() {
            self.crash(id).await;
        }
    }
}

/// The cluster most tests use: register state machines.
pub type RegisterCluster = Cluster<RegisterMachine>;

impl Cluster<RegisterMachine> {
    /// Proposes a put through `via` and returns the previous value.
    pub async fn put(&self, via: MemberId, op: u64, key: u64, value: u64) -> Result<u64> {
        let command = Command::Put { op, key, value };
        let response = self.handle(via).propose(command.encode()).await?;
        match Response::decode(&response) {
            Some(Response::Put { previous, .. }) => Ok(previous),
            other => Err(Error::Corrupt(format!("unexpected response {other:?}"))),
        }
    }
}

/// Polls `condition` every 10 ms of (virtual) time until it yields a value,
/// for at most [`WAIT`]; the error names what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, mut condition: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {WAIT:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `tracing` output (raft's own logs included) to the test's captured
/// output, filtered by `RUST_LOG` (nothing by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
