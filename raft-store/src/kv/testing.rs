//! Builders shared by the kv unit tests: short constructors for commands
//! and a store wrapper that applies them at consecutive indexes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::proto::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    command, command_response, compare, decode_response, encode_command, request_op,
};
use super::state::{Clock, KvStore};
use crate::error::Result;
use crate::replica::StateMachine;

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            now: Mutex::new(Instant::now()),
        })
    }

    pub fn advance(&self, by: Duration) {
        *self.now.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().expect("clock lock")
    }
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn put_cmd(key: &str, value: &str) -> Command {
    Command {
        request: Some(command::Request::Put(put(key, value))),
    }
}

pub fn delete(key: &str, range_end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: true,
    }
}

pub fn delete_cmd(key: &str, range_end: &str) -> Command {
    Command {
        request: Some(command::Request::DeleteRange(delete(key, range_end))),
    }
}

pub fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

pub fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

pub fn op_delete(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(delete(key, ""))),
    }
}

pub fn op_range(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range(key, ""))),
    }
}

pub fn guard(key: &str, result: CompareResult, target: compare::TargetUnion) -> Compare {
    let target_kind = match &target {
        compare::TargetUnion::Version(_) => CompareTarget::Version,
        compare::TargetUnion::CreateRevision(_) => CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => CompareTarget::Mod,
        compare::TargetUnion::Value(_) => CompareTarget::Value,
        compare::TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target_kind as i32,
        key: key.into(),
        target_union: Some(target),
        range_end: Vec::new(),
    }
}

pub fn txn_cmd(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Command {
    Command {
        request: Some(command::Request::Txn(TxnRequest {
            compare,
            success,
            failure,
        })),
    }
}

pub fn grant_cmd(id: i64, ttl_secs: i64) -> Command {
    Command {
        request: Some(command::Request::LeaseGrant(LeaseGrantRequest {
            ttl_secs,
            id,
        })),
    }
}

pub fn revoke_cmd(id: i64) -> Command {
    Command {
        request: Some(command::Request::LeaseRevoke(LeaseRevokeRequest { id })),
    }
}

/// A store plus the next raft index to apply at.
pub struct TestStore {
    pub store: KvStore,
    next_index: AtomicU64,
}

impl TestStore {
    pub fn new() -> Self {
        Self::with_clock(ManualClock::new())
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        TestStore {
            store: KvStore::new(clock),
            next_index: AtomicU64::new(1),
        }
    }

    /// Applies a command at the next index and decodes the answer.
    pub fn apply(&self, command: &Command) -> Result<command_response::Response> {
        let index = self.next_index.fetch_add(1, Ordering::SeqCst);
        decode_response(&self.store.apply(index, &encode_command(command)))
    }

    pub fn put(&self, key: &str, value: &str) -> i64 {
        match self.apply(&put_cmd(key, value)).expect("put applies") {
            command_response::Response::Put(response) => response.header.expect("header").revision,
            other => panic!("unexpected response {other:?}"),
        }
    }

    pub fn delete(&self, key: &str, range_end: &str) -> i64 {
        match self
            .apply(&delete_cmd(key, range_end))
            .expect("delete applies")
        {
            command_response::Response::DeleteRange(response) => response.deleted,
            other => panic!("unexpected response {other:?}"),
        }
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        let response = self.store.range(&range(key, "")).expect("range");
        response.kvs.into_iter().next()
    }
}
