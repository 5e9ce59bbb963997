//! Applying one replicated [`Command`] to the deterministic state: the MVCC
//! index plus the lease table. This is where etcd's request semantics live:
//! one revision per write request, transactions that pick a branch on the
//! pre-transaction state, leases whose revoke deletes keys in one revision.
//!
//! It knows nothing of watchers, clocks or raft: it returns the events a
//! command produced and the lease changes, and the caller
//! ([`super::state::KvStore`]) publishes them. Every check that can fail
//! runs before the first write, so a failed command changes nothing and does
//! not bump the revision.

use super::lease::LeaseTable;
use super::limits::validate;
use super::mvcc::MvccIndex;
use super::proto::{
    Command, CommandError, CommandResponse, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, Event, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse, command, command_response, request_op, response_op,
};
use crate::error::{Error, Result};

/// A lease change the (unreplicated) lessor must follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl_secs: i64 },
    Revoked { id: i64 },
}

/// What applying one command did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub response: CommandResponse,
    /// The events of the revision this command wrote, in op order, each with
    /// its `prev_kv`; empty if it wrote nothing.
    pub events: Vec<Event>,
    /// The store's revision after the command.
    pub revision: i64,
    pub lease_changes: Vec<LeaseChange>,
}

/// The replicated state that commands change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub index: MvccIndex,
    pub leases: LeaseTable,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Which branch each transaction on the path takes, decided before any op
/// runs (as etcd's `compareToPath`): nested compares see the state before
/// the outer transaction, not halfway through it.
struct Path {
    succeeded: bool,
    /// One entry per nested transaction in the chosen branch, in op order.
    nested: Vec<Path>,
}

impl Machine {
    /// Applies a command. Never panics on bad input: an invalid command
    /// yields an error response and leaves the state as it was.
    pub fn execute(&mut self, command: &Command) -> Outcome {
        let before = self.index.current_revision();
        let mut lease_changes = Vec::new();
        let result = validate(command).and_then(|()| match &command.request {
            Some(request) => self.execute_request(request, &mut lease_changes),
            None => Err(Error::InvalidRequest("empty command".into())),
        });
        match result {
            Ok((response, events)) => Outcome {
                response: CommandResponse {
                    response: Some(response),
                },
                events,
                revision: self.index.current_revision(),
                lease_changes,
            },
            Err(error) => {
                debug_assert_eq!(self.index.current_revision(), before);
                Outcome {
                    response: CommandResponse {
                        response: Some(command_response::Response::Error(
                            CommandError::from_error(&error),
                        )),
                    },
                    events: Vec::new(),
                    revision: before,
                    lease_changes: Vec::new(),
                }
            }
        }
    }

    fn execute_request(
        &mut self,
        request: &command::Request,
        lease_changes: &mut Vec<LeaseChange>,
    ) -> Result<(command_response::Response, Vec<Event>)> {
        use command_response::Response;
        match request {
            command::Request::Put(put) => {
                self.check_put(put)?;
                let (response, events) = self.write_with(|writer| writer.put(put));
                Ok((Response::Put(response), events))
            }
            command::Request::DeleteRange(delete) => {
                let (response, events) = self.write_with(|writer| writer.delete(delete));
                Ok((Response::DeleteRange(response), events))
            }
            command::Request::Txn(txn) => {
                let path = self.choose_path(txn);
                let ops = branch(txn, path.succeeded);
                let (responses, events) = self.write(ops, &path.nested)?;
                let response = TxnResponse {
                    header: header(self.index.current_revision()),
                    succeeded: path.succeeded,
                    responses,
                };
                Ok((Response::Txn(response), events))
            }
            command::Request::Compaction(compaction) => {
                self.index.compact(compaction.revision)?;
                let response = CompactionResponse {
                    header: header(self.index.current_revision()),
                };
                Ok((Response::Compaction(response), Vec::new()))
            }
            command::Request::LeaseGrant(grant) => {
                let response = self.grant(grant, lease_changes)?;
                Ok((Response::LeaseGrant(response), Vec::new()))
            }
            command::Request::LeaseRevoke(revoke) => {
                let events = self.revoke(revoke.id, lease_changes)?;
                let response = LeaseRevokeResponse {
                    header: header(self.index.current_revision()),
                };
                Ok((Response::LeaseRevoke(response), events))
            }
            command::Request::LeaseCheckpoint(_) => {
                let response = LeaseCheckpointResponse {
                    header: header(self.index.current_revision()),
                };
                Ok((Response::LeaseCheckpoint(response), Vec::new()))
            }
        }
    }

    fn grant(
        &mut self,
        grant: &LeaseGrantRequest,
        lease_changes: &mut Vec<LeaseChange>,
    ) -> Result<LeaseGrantResponse> {
        let (id, ttl_secs) = self.leases.grant(grant.id, grant.ttl_secs)?;
        lease_changes.push(LeaseChange::Granted { id, ttl_secs });
        Ok(LeaseGrantResponse {
            header: header(self.index.current_revision()),
            id,
            ttl_secs,
            error: String::new(),
        })
    }

    /// Revokes a lease and deletes its keys, all in one revision.
    fn revoke(&mut self, id: i64, lease_changes: &mut Vec<LeaseChange>) -> Result<Vec<Event>> {
        let keys = self.leases.revoke(id)?;
        lease_changes.push(LeaseChange::Revoked { id });
        let ((), events) = self.write_with(|writer| {
            for key in keys {
                writer.delete(&DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                    prev_kv: false,
                });
            }
        });
        Ok(events)
    }

    fn choose_path(&self, txn: &TxnRequest) -> Path {
        let head = self.index.current_revision();
        let succeeded = txn
            .compare
            .iter()
            .all(|guard| self.index.compare(guard, head));
        let nested = branch(txn, succeeded)
            .iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestTxn(inner)) => Some(self.choose_path(inner)),
                _ => None,
            })
            .collect();
        Path { succeeded, nested }
    }

    /// Runs a list of ops as one write request: checks all first, then
    /// applies them at the next revision, committing it if anything changed.
    fn write(
        &mut self,
        ops: &[RequestOp],
        nested: &[Path],
    ) -> Result<(Vec<ResponseOp>, Vec<Event>)> {
        self.check_ops(ops, nested)?;
        Ok(self.write_with(|writer| writer.run(ops, nested)))
    }

    /// Runs checked writes at the next revision and commits it if anything
    /// was written; returns what `run` returned and the events.
    fn write_with<R>(&mut self, run: impl FnOnce(&mut Writer<'_>) -> R) -> (R, Vec<Event>) {
        let revision = self.index.current_revision() + 1;
        let mut writer = Writer {
            machine: self,
            revision,
            events: Vec::new(),
        };
        let result = run(&mut writer);
        let events = writer.events;
        if !events.is_empty() {
            self.index.commit(revision);
        }
        (result, events)
    }

    /// Everything that could make an op fail, checked against the state
    /// before the request (as etcd's `checkRequestPut`/`checkRequestRange`).
    fn check_ops(&self, ops: &[RequestOp], nested: &[Path]) -> Result<()> {
        let mut nested = nested.iter();
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    let current = self.index.current_revision();
                    self.index.read_revision(range.revision, current)?;
                }
                Some(request_op::Request::RequestPut(put)) => self.check_put(put)?,
                Some(request_op::Request::RequestDeleteRange(_)) => {}
                Some(request_op::Request::RequestTxn(inner)) => {
                    let path = nested
                        .next()
                        .expect("invariant: one path per nested transaction");
                    self.check_ops(branch(inner, path.succeeded), &path.nested)?;
                }
                None => return Err(Error::InvalidRequest("empty transaction op".into())),
            }
        }
        Ok(())
    }

    fn check_put(&self, put: &PutRequest) -> Result<()> {
        if put.lease != 0 && !self.leases.contains(put.lease) {
            return Err(Error::LeaseNotFound { id: put.lease });
        }
        if (put.ignore_value || put.ignore_lease) && self.index.latest(&put.key).is_none() {
            return Err(Error::InvalidRequest("key not found".into()));
        }
        Ok(())
    }
}

fn branch(txn: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// Applies checked ops at one revision, collecting events in op order.
struct Writer<'a> {
    machine: &'a mut Machine,
    revision: i64,
    events: Vec<Event>,
}

impl Writer<'_> {
    /// The revision a read inside this request sees: the one being written
    /// once something was written, so later ops see earlier ones.
    fn head(&self) -> i64 {
        if self.events.is_empty() {
            self.machine.index.current_revision()
        } else {
            self.revision
        }
    }

    fn run(&mut self, ops: &[RequestOp], nested: &[Path]) -> Vec<ResponseOp> {
        let mut nested = nested.iter();
        ops.iter()
            .map(|op| {
                let response = match &op.request {
                    Some(request_op::Request::RequestRange(range)) => {
                        let head = self.head();
                        let response = self
                            .machine
                            .index
                            .range(range, head)
                            .expect("invariant: ranges were checked before writing");
                        response_op::Response::ResponseRange(response)
                    }
                    Some(request_op::Request::RequestPut(put)) => {
                        response_op::Response::ResponsePut(self.put(put))
                    }
                    Some(request_op::Request::RequestDeleteRange(delete)) => {
                        response_op::Response::ResponseDeleteRange(self.delete(delete))
                    }
                    Some(request_op::Request::RequestTxn(inner)) => {
                        let path = nested
                            .next()
                            .expect("invariant: one path per nested transaction");
                        response_op::Response::ResponseTxn(self.txn(inner, path))
                    }
                    None => unreachable!("invariant: empty ops were rejected by the check"),
                };
                ResponseOp {
                    response: Some(response),
                }
            })
            .collect()
    }

    fn put(&mut self, put: &PutRequest) -> PutResponse {
        let current = self.machine.index.latest(&put.key);
        let (value, lease) = match &current {
            Some(kv) => (
                if put.ignore_value {
                    kv.value.clone()
                } else {
                    put.value.clone()
                },
                if put.ignore_lease {
                    kv.lease
                } else {
                    put.lease
                },
            ),
            None => (put.value.clone(), put.lease),
        };
        let event = self
            .machine
            .index
            .put(self.revision, &put.key, value, lease);
        if let Some(prev) = &event.prev_kv {
            self.machine.leases.detach(prev.lease, &put.key);
        }
        self.machine.leases.attach(lease, &put.key);
        let response = PutResponse {
            header: header(self.revision),
            prev_kv: event.prev_kv.clone().filter(|_| put.prev_kv),
        };
        self.events.push(event);
        response
    }

    fn delete(&mut self, delete: &DeleteRangeRequest) -> DeleteRangeResponse {
        let events = self
            .machine
            .index
            .delete_range(self.revision, &delete.key, &delete.range_end);
        let mut response = DeleteRangeResponse {
            header: None,
            deleted: events.len() as i64,
            prev_kvs: Vec::new(),
        };
        for event in &events {
            if let Some(prev) = &event.prev_kv {
                self.machine.leases.detach(prev.lease, &prev.key);
                if delete.prev_kv {
                    response.prev_kvs.push(prev.clone());
                }
            }
        }
        self.events.extend(events);
        // A delete that deleted nothing reports the revision as it stands.
        response.header = header(self.head());
        response
    }

    fn txn(&mut self, txn: &TxnRequest, path: &Path) -> TxnResponse {
        let responses = self.run(branch(txn, path.succeeded), &path.nested);
        TxnResponse {
            header: header(self.head()),
            succeeded: path.succeeded,
            responses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::proto::{CompareResult, PutRequest, command_response::Response, compare};
    use crate::kv::testing::{
        TestStore, grant_cmd, guard, op_delete, op_put, op_range, put_cmd, revoke_cmd, txn_cmd,
    };

    fn txn_result(store: &TestStore, command: &Command) -> TxnResponse {
        match store.apply(command).expect("txn applies") {
            Response::Txn(response) => response,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn compare_matrix() {
        use CompareResult::{Equal, Greater, Less, NotEqual};
        use compare::TargetUnion::{CreateRevision, Lease, ModRevision, Value, Version};
        let store = TestStore::new();
        store.put("k", "b"); // 2
        store.put("k", "c"); // 3: create 2, mod 3, version 2
        let cases = [
            (guard("k", Equal, Version(2)), true),
            (guard("k", Greater, Version(1)), true),
            (guard("k", Less, Version(2)), false),
            (guard("k", NotEqual, Version(2)), false),
            (guard("k", Equal, CreateRevision(2)), true),
            (guard("k", Less, CreateRevision(3)), true),
            (guard("k", Equal, ModRevision(3)), true),
            (guard("k", Equal, ModRevision(2)), false),
            (guard("k", Greater, ModRevision(2)), true),
            (guard("k", Equal, Value(b"c".to_vec())), true),
            (guard("k", Greater, Value(b"b".to_vec())), true),
            (guard("k", Less, Value(b"b".to_vec())), false),
            (guard("k", NotEqual, Value(b"x".to_vec())), true),
            (guard("k", Equal, Lease(0)), true),
            // A missing key has zero fields and no value.
            (guard("missing", Equal, Version(0)), true),
            (guard("missing", Equal, CreateRevision(0)), true),
            (guard("missing", Equal, ModRevision(0)), true),
            (guard("missing", Equal, Value(Vec::new())), false),
            (guard("missing", NotEqual, Value(b"x".to_vec())), false),
        ];
        for (compare, expected) in cases {
            let response = txn_result(&store, &txn_cmd(vec![compare.clone()], vec![], vec![]));
            assert_eq!(response.succeeded, expected, "{compare:?}");
        }
        assert_eq!(
            store.store.current_revision(),
            3,
            "read-only txns write nothing"
        );
    }

    #[test]
    fn compare_and_swap_on_mod_revision() {
        use compare::TargetUnion::ModRevision;
        let store = TestStore::new();
        let created = txn_result(
            &store,
            &txn_cmd(
                vec![guard("obj", CompareResult::Equal, ModRevision(0))],
                vec![op_put("obj", "v1")],
                vec![op_range("obj")],
            ),
        );
        assert!(created.succeeded, "create-if-absent");
        let revision = created.header.expect("header").revision;
        let update = |expected_revision: i64, value: &str| {
            txn_result(
                &store,
                &txn_cmd(
                    vec![guard(
                        "obj",
                        CompareResult::Equal,
                        ModRevision(expected_revision),
                    )],
                    vec![op_put("obj", value)],
                    vec![op_range("obj")],
                ),
            )
        };
        let stale = update(revision - 1, "lost");
        assert!(!stale.succeeded);
        // The failure branch tells the caller the current object.
        match &stale.responses[0].response {
            Some(response_op::Response::ResponseRange(range)) => {
                assert_eq!(range.kvs[0].value, b"v1");
                assert_eq!(range.kvs[0].mod_revision, revision);
            }
            other => panic!("unexpected {other:?}"),
        }
        let fresh = update(revision, "v2");
        assert!(fresh.succeeded);
        assert_eq!(fresh.header.expect("header").revision, revision + 1);
        assert_eq!(store.get("obj").expect("obj").value, b"v2");
    }

    #[test]
    fn txn_ops_share_one_revision_and_see_earlier_ops() {
        let store = TestStore::new();
        store.put("gone", "x"); // 2
        let response = txn_result(
            &store,
            &txn_cmd(
                vec![],
                vec![
                    op_put("a", "1"),
                    op_range("a"),
                    op_delete("gone"),
                    op_put("b", "2"),
                ],
                vec![],
            ),
        );
        assert!(response.succeeded);
        assert_eq!(store.store.current_revision(), 3);
        for key in ["a", "b"] {
            assert_eq!(store.get(key).expect("written").mod_revision, 3);
        }
        match &response.responses[1].response {
            Some(response_op::Response::ResponseRange(range)) => {
                assert_eq!(range.kvs[0].value, b"1", "a read sees the earlier put");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn failed_commands_change_nothing() {
        let store = TestStore::new();
        store.put("k", "v"); // 2
        let unknown_lease = Command {
            request: Some(command::Request::Put(PutRequest {
                key: b"k2".to_vec(),
                lease: 99,
                ..Default::default()
            })),
        };
        assert!(matches!(
            store.apply(&unknown_lease),
            Err(Error::LeaseNotFound { id: 99 })
        ));
        // The put before the bad one in the same txn does not happen either.
        let bad_txn = txn_cmd(
            vec![],
            vec![
                op_put("first", "x"),
                RequestOp {
                    request: unknown_lease.request.clone().map(|request| match request {
                        command::Request::Put(put) => request_op::Request::RequestPut(put),
                        _ => unreachable!(),
                    }),
                },
            ],
            vec![],
        );
        assert!(store.apply(&bad_txn).is_err());
        let ignore_missing = Command {
            request: Some(command::Request::Put(PutRequest {
                key: b"missing".to_vec(),
                ignore_value: true,
                ..Default::default()
            })),
        };
        assert!(matches!(
            store.apply(&ignore_missing),
            Err(Error::InvalidRequest(_))
        ));
        let duplicate = txn_cmd(vec![], vec![op_put("x", "1"), op_put("x", "2")], vec![]);
        assert!(matches!(
            store.apply(&duplicate),
            Err(Error::InvalidRequest(_))
        ));
        assert_eq!(store.store.current_revision(), 2);
        assert!(store.get("first").is_none());
        // Garbage bytes are an error response, not a panic.
        use crate::replica::StateMachine;
        let garbage = store.store.apply(100, &[0xff, 0xff, 0xff]);
        assert!(crate::kv::proto::decode_response(&garbage).is_err());
        assert_eq!(store.store.current_revision(), 2);
    }

    #[test]
    fn lease_revoke_deletes_attached_keys_in_one_revision() {
        let store = TestStore::new();
        let id = match store.apply(&grant_cmd(0, 30)).expect("grant") {
            Response::LeaseGrant(grant) => grant.id,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            store.store.current_revision(),
            1,
            "a grant writes no revision"
        );
        for key in ["a", "b", "c"] {
            let mut command = put_cmd(key, "v");
            if let Some(command::Request::Put(put)) = &mut command.request {
                put.lease = if key == "c" { 0 } else { id };
            }
            store.apply(&command).expect("put with lease");
        }
        // Re-putting "b" without the lease detaches it.
        store.put("b", "free");
        let before = store.store.current_revision();
        store.apply(&revoke_cmd(id)).expect("revoke");
        assert_eq!(store.store.current_revision(), before + 1);
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert!(matches!(
            store.apply(&revoke_cmd(id)),
            Err(Error::LeaseNotFound { .. })
        ));
        let empty = match store.apply(&grant_cmd(0, 30)).expect("grant") {
            Response::LeaseGrant(grant) => grant.id,
            other => panic!("unexpected {other:?}"),
        };
        store.apply(&revoke_cmd(empty)).expect("revoke");
        assert_eq!(
            store.store.current_revision(),
            before + 1,
            "nothing to delete"
        );
    }

    #[test]
    fn nested_txns_decide_on_the_state_before_the_outer_txn() {
        use compare::TargetUnion::Version;
        let store = TestStore::new();
        // The outer success puts "k"; the nested txn's guard still sees "k"
        // absent (version 0), as etcd evaluates every compare up front.
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![guard("k", CompareResult::Equal, Version(0))],
                success: vec![op_put("nested", "saw-absent")],
                failure: vec![op_put("nested", "saw-present")],
            })),
        };
        let response = txn_result(
            &store,
            &txn_cmd(vec![], vec![op_put("k", "v"), nested], vec![]),
        );
        assert!(response.succeeded);
        assert_eq!(store.get("nested").expect("nested").value, b"saw-absent");
        assert_eq!(
            store.store.current_revision(),
            2,
            "one revision for both levels"
        );
    }

    #[test]
    fn put_options_and_previous_values() {
        let store = TestStore::new();
        let lease = match store.apply(&grant_cmd(0, 30)).expect("grant") {
            Response::LeaseGrant(grant) => grant.id,
            other => panic!("unexpected {other:?}"),
        };
        let put_with = |put: PutRequest| match store
            .apply(&Command {
                request: Some(command::Request::Put(put)),
            })
            .expect("put")
        {
            Response::Put(response) => response,
            other => panic!("unexpected {other:?}"),
        };
        put_with(PutRequest {
            key: b"k".to_vec(),
            value: b"one".to_vec(),
            lease,
            ..Default::default()
        });
        let kept = put_with(PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ignore_lease: true,
            prev_kv: true,
            ..Default::default()
        });
        assert_eq!(kept.prev_kv.expect("prev").value, b"one");
        let kv = store.get("k").expect("k");
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"one"[..], lease, 2)
        );
        let plain = put_with(PutRequest {
            key: b"k".to_vec(),
            value: b"two".to_vec(),
            ..Default::default()
        });
        assert!(plain.prev_kv.is_none(), "prev_kv only when asked");
        assert_eq!(
            store.get("k").expect("k").lease,
            0,
            "a put without lease detaches"
        );
        let deleted = match store
            .apply(&crate::kv::testing::delete_cmd("a", "\0"))
            .expect("delete")
        {
            Response::DeleteRange(response) => response,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(deleted.deleted, 1);
        assert_eq!(deleted.prev_kvs[0].value, b"two");
    }
}
