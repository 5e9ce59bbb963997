//! The replicated state: an in-memory MVCC key-value index with watches,
//! leases and compaction, with etcd v3's semantics and guarantees.
//!
//! Start at [`state::KvStore`]: it implements [`crate::replica::StateMachine`]
//! (committed [`proto::Command`]s in, encoded [`proto::CommandResponse`]s
//! out) and serves reads ([`state::KvStore::range`]), watches
//! ([`state::KvStore::watch`]) and the lease queries. The parts:
//!
//! - [`proto`]: the wire messages, mirroring etcd's `rpc.proto`/`kv.proto`;
//! - [`limits`]: size bounds and the stateless [`limits::validate`] the
//!   replica runs before proposing;
//! - [`mvcc`]: the multi-version index (revisions, ranges, compaction);
//! - [`apply`]: one command's effect (transactions, lease revokes);
//! - [`lease`]: the replicated lease table and the leader's lessor clock;
//! - [`watch`]: watchers, catch-up from history and live delivery;
//! - [`snapshot`]: the state's snapshot encoding.
//!
//! **Architecture invariant:** nothing here knows raft or Kubernetes. The
//! state changes only through [`crate::replica::StateMachine::apply`], and
//! the same commands in the same order give byte-identical snapshots on
//! every member.

pub mod apply;
pub mod lease;
pub mod limits;
pub mod mvcc;
pub mod proto;
#[cfg(test)]
mod replicated_tests;
mod snapshot;
pub mod state;
#[cfg(test)]
mod testing;
pub mod watch;

pub use lease::Lessor;
pub use limits::validate;
pub use proto::prefix_end;
pub use state::{Clock, KvStore, SystemClock};
pub use watch::Watcher;
