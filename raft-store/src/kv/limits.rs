//! The store's size bounds and the cheap, stateless check of a command
//! against them. The replica calls [`validate`] before proposing, so an
//! oversized or malformed command never reaches the log; apply checks again
//! because a log may hold entries written by an older or buggy proposer.
//!
//! This module knows the shape of commands, not the state: whether a lease
//! exists or a revision is compacted is decided at apply time.

use std::collections::BTreeSet;

use prost::Message;

use super::proto::{Command, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use super::proto::{command, request_op};
use crate::error::{Error, Result};

/// 1.5 MiB: etcd's default `--max-request-bytes`. Kubernetes caps objects
/// at this size because etcd does, so every object the API server stores fits.
pub const VALUE_BYTES_MAX: usize = 1536 * 1024;

/// 32 KiB: far above any key the API server builds
/// (`/registry/<resource>/<namespace>/<name>` is under 1 KiB), and small
/// enough that the in-memory index cannot be blown up through keys alone.
pub const KEY_BYTES_MAX: usize = 32 * 1024;

/// A whole encoded command: one maximal value plus 64 KiB of room for its
/// key, compares and framing. etcd bounds the request, not the value; we
/// bound both so the error names what was too large.
pub const REQUEST_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;

/// 128: etcd's default `--max-txn-ops`, per list (compares, success,
/// failure) of a transaction.
pub const TXN_OPS_MAX: usize = 128;

/// 8 levels of nested transactions: etcd has no explicit bound, but apply
/// recurses through the nesting, so it must be bounded; real callers nest
/// at most once or twice.
pub const TXN_DEPTH_MAX: usize = 8;

/// A range has no default limit, as in etcd: 0 means "all matching keys".
/// The API server passes its page size as `limit` when it paginates.
pub const RANGE_LIMIT_DEFAULT: i64 = 0;

/// Checks a command's shape and sizes without looking at the state.
pub fn validate(command: &Command) -> Result<()> {
    let size = command.encoded_len();
    if size > REQUEST_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "request",
            size,
            limit: REQUEST_BYTES_MAX,
        });
    }
    match &command.request {
        None => Err(Error::InvalidRequest("empty command".into())),
        Some(command::Request::Put(put)) => validate_put(put),
        Some(command::Request::DeleteRange(delete)) => validate_delete(delete),
        Some(command::Request::Txn(txn)) => validate_txn(txn, 1).map(|_| ()),
        Some(command::Request::Compaction(compaction)) if compaction.revision <= 0 => Err(
            Error::InvalidRequest("compaction revision must be positive".into()),
        ),
        Some(command::Request::LeaseGrant(grant)) => validate_lease_grant(grant.ttl_secs, grant.id),
        Some(command::Request::LeaseRevoke(revoke)) if revoke.id <= 0 => {
            Err(Error::InvalidRequest("lease id must be positive".into()))
        }
        Some(_) => Ok(()),
    }
}

fn validate_lease_grant(ttl_secs: i64, id: i64) -> Result<()> {
    if id < 0 {
        return Err(Error::InvalidRequest(
            "lease id must not be negative".into(),
        ));
    }
    if ttl_secs > super::lease::LEASE_TTL_MAX_SECS {
        return Err(Error::InvalidRequest(format!(
            "lease ttl {ttl_secs} s is over the maximum of {} s",
            super::lease::LEASE_TTL_MAX_SECS
        )));
    }
    Ok(())
}

fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidRequest("key is not provided".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "key",
            size: key.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn validate_range_end(range_end: &[u8]) -> Result<()> {
    if range_end.len() > KEY_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "key",
            size: range_end.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn validate_put(put: &PutRequest) -> Result<()> {
    validate_key(&put.key)?;
    if put.value.len() > VALUE_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "value",
            size: put.value.len(),
            limit: VALUE_BYTES_MAX,
        });
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(Error::InvalidRequest(
            "value is provided together with ignore_value".into(),
        ));
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(Error::InvalidRequest(
            "lease is provided together with ignore_lease".into(),
        ));
    }
    Ok(())
}

fn validate_delete(delete: &DeleteRangeRequest) -> Result<()> {
    validate_key(&delete.key)?;
    validate_range_end(&delete.range_end)
}

/// Checks a range's shape: also used by the read path, which never goes
/// through the log.
pub fn validate_range(range: &RangeRequest) -> Result<()> {
    validate_key(&range.key)?;
    validate_range_end(&range.range_end)?;
    if range.limit < 0 {
        return Err(Error::InvalidRequest("range limit is negative".into()));
    }
    if range.revision < 0 {
        return Err(Error::InvalidRequest("range revision is negative".into()));
    }
    Ok(())
}

/// The keys one transaction branch writes: puts by key, deletes by range.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn is_deleted(&self, key: &[u8]) -> bool {
        self.deletes
            .iter()
            .any(|(start, end)| super::mvcc::in_range(key, start, end))
    }

    /// Adds a put; a key put twice, or put and deleted, is etcd's
    /// "duplicate key given in txn request": the order inside one revision
    /// would be ambiguous to a watcher.
    fn add_put(&mut self, key: &[u8]) -> Result<()> {
        if self.is_deleted(key) || !self.puts.insert(key.to_vec()) {
            return Err(duplicate_key());
        }
        Ok(())
    }

    fn add_delete(&mut self, start: &[u8], end: &[u8]) -> Result<()> {
        if self
            .puts
            .iter()
            .any(|key| super::mvcc::in_range(key, start, end))
        {
            return Err(duplicate_key());
        }
        self.deletes.push((start.to_vec(), end.to_vec()));
        Ok(())
    }

    fn merge(&mut self, other: Writes) -> Result<()> {
        for key in &other.puts {
            self.add_put(key)?;
        }
        for (start, end) in &other.deletes {
            self.add_delete(start, end)?;
        }
        Ok(())
    }
}

fn duplicate_key() -> Error {
    Error::InvalidRequest("duplicate key given in txn request".into())
}

/// Validates a transaction at nesting `depth` and returns the union of what
/// its two branches write, so the enclosing branch can check for overlap
/// (as etcd does: either nested branch may run).
fn validate_txn(txn: &TxnRequest, depth: usize) -> Result<Writes> {
    if depth > TXN_DEPTH_MAX {
        return Err(Error::TooLarge {
            what: "transaction depth",
            size: depth,
            limit: TXN_DEPTH_MAX,
        });
    }
    for list_len in [txn.compare.len(), txn.success.len(), txn.failure.len()] {
        if list_len > TXN_OPS_MAX {
            return Err(Error::TooLarge {
                what: "transaction ops",
                size: list_len,
                limit: TXN_OPS_MAX,
            });
        }
    }
    for compare in &txn.compare {
        validate_key(&compare.key)?;
        validate_range_end(&compare.range_end)?;
        if compare.target_union.is_none() {
            return Err(Error::InvalidRequest("compare has no target value".into()));
        }
    }
    // Each branch must be free of duplicates on its own; the branches are
    // alternatives, so their union may repeat keys.
    let mut writes = validate_branch(&txn.success, depth)?;
    let failure = validate_branch(&txn.failure, depth)?;
    writes.puts.extend(failure.puts);
    writes.deletes.extend(failure.deletes);
    Ok(writes)
}

fn validate_branch(ops: &[RequestOp], depth: usize) -> Result<Writes> {
    let mut writes = Writes::default();
    for op in ops {
        match &op.request {
            None => return Err(Error::InvalidRequest("empty transaction op".into())),
            Some(request_op::Request::RequestRange(range)) => validate_range(range)?,
            Some(request_op::Request::RequestPut(put)) => {
                validate_put(put)?;
                writes.add_put(&put.key)?;
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                validate_delete(delete)?;
                writes.add_delete(&delete.key, &delete.range_end)?;
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                writes.merge(validate_txn(nested, depth + 1)?)?;
            }
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::proto::{LeaseGrantRequest, command};

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.into(),
                    range_end: end.into(),
                    prev_kv: false,
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    fn check(txn_request: TxnRequest, expected: std::result::Result<(), &str>) {
        let command = Command {
            request: Some(command::Request::Txn(txn_request)),
        };
        let result = validate(&command).map_err(|error| error.to_string());
        match expected {
            Ok(()) => assert!(result.is_ok(), "{result:?}"),
            Err(fragment) => assert!(
                result
                    .as_ref()
                    .is_err_and(|message| message.contains(fragment)),
                "expected an error containing {fragment:?}, got {result:?}"
            ),
        }
    }

    #[test]
    fn txn_duplicate_keys() {
        check(txn(vec![put("a"), put("b")], vec![]), Ok(()));
        check(txn(vec![put("a"), put("a")], vec![]), Err("duplicate key"));
        check(
            txn(vec![put("b"), delete("a", "c")], vec![]),
            Err("duplicate key"),
        );
        check(
            txn(vec![delete("a", "c"), put("b")], vec![]),
            Err("duplicate key"),
        );
        check(
            txn(vec![delete("a", "c"), delete("b", "d")], vec![]),
            Ok(()),
        );
        // The two branches are alternatives: they may touch the same key.
        check(txn(vec![put("a")], vec![put("a")]), Ok(()));
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(vec![], vec![put("a")]))),
        };
        check(txn(vec![put("a"), nested], vec![]), Err("duplicate key"));
    }

    #[test]
    fn bounds() {
        let many: Vec<RequestOp> = (0..=TXN_OPS_MAX).map(|i| put(&format!("k{i}"))).collect();
        check(txn(many, vec![]), Err("transaction ops"));
        let mut deep = txn(vec![put("a")], vec![]);
        for _ in 0..TXN_DEPTH_MAX {
            deep = txn(
                vec![RequestOp {
                    request: Some(request_op::Request::RequestTxn(deep)),
                }],
                vec![],
            );
        }
        check(deep, Err("transaction depth"));
        check(txn(vec![put("")], vec![]), Err("key is not provided"));

        let big = Command {
            request: Some(command::Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![0; VALUE_BYTES_MAX + 1],
                ..Default::default()
            })),
        };
        assert!(matches!(
            validate(&big),
            Err(Error::TooLarge { what: "value", .. })
        ));
        let fits = Command {
            request: Some(command::Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![0; VALUE_BYTES_MAX],
                ..Default::default()
            })),
        };
        assert!(validate(&fits).is_ok());
        let huge_ttl = Command {
            request: Some(command::Request::LeaseGrant(LeaseGrantRequest {
                ttl_secs: i64::MAX,
                id: 0,
            })),
        };
        assert!(validate(&huge_ttl).is_err());
    }
}
