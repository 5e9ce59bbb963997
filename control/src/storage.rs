//! Objects in raft-store: the API server's only way to read and write state.
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped
//! objects leave the namespace out); values are the object's JSON. An
//! object's `resourceVersion` is the store revision that last wrote it, so
//! every write is a transaction that compares `mod_revision`, which is how
//! optimistic concurrency reaches the store unchanged.
//!
//! Values of the resources an encryption configuration names are sealed
//! on their way in and opened on their way out (`crate::encryption`), so
//! the store, its log and its snapshots hold them only encrypted.
//!
//! This module knows keys, bytes and revisions. It does not know what the
//! bytes mean: that is the API layer's business.

use std::sync::Arc;

use flotilla_raft_store::Error as StoreError;
use flotilla_raft_store::kv::proto::WatchResponse;
use flotilla_raft_store::kv::proto::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, compare, request_op,
    response_op,
};
use flotilla_raft_store::kv::{KvStore, Watcher, prefix_end};
use flotilla_raft_store::server::Service;

use crate::auth::feed::Table;
use crate::encryption::{Encryption, EncryptionError};

/// What the API layer can get wrong or run into. Each maps to one HTTP
/// status with Kubernetes' reason.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// The object changed since the caller read it.
    #[error("the object has been modified (now at revision {current})")]
    Conflict { current: i64 },
    /// The write was fenced by another key that has moved on since the
    /// caller read it (`current` is 0 when that key is gone).
    #[error("the fencing key has changed (now at revision {current})")]
    Fenced { current: i64 },
    /// The revision asked for is older than the store keeps.
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted { requested: i64, compacted: i64 },
    /// A key claimed with the write (an allocated address) is held
    /// already, by another object.
    #[error("{} is taken already", String::from_utf8_lossy(key))]
    Claimed { key: Vec<u8> },
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One stored object: its JSON and the revision that last wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// Stored under another encryption provider or key than the one that
    /// writes now: writing it again, unchanged, re-encrypts it.
    pub stale: bool,
}

/// A page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The revision the whole page was read at.
    pub revision: i64,
    /// Matching keys after this page, when it was cut by a limit.
    pub remaining: i64,
}

/// Another key a write depends on, at the revision the writer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub mod_revision: i64,
}

/// A key written in the same transaction as an object, and only if no key
/// is there: what makes an allocation (a Service's ClusterIP) unique
/// among any number of API servers, and never outlive its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// raft-store as the API server uses it: in-process, through the member's
/// service, so every read is linearizable (ReadIndex) and every write a
/// raft proposal.
#[derive(Clone)]
pub struct Storage {
    service: Arc<Service>,
    kv: Arc<KvStore>,
    /// In-memory tables told of this server's writes as they commit
    /// (`Storage::observe`), before the write is answered.
    observers: Arc<std::sync::RwLock<Vec<Arc<dyn Table>>>>,
    /// What is encrypted at rest, and how; none: nothing is.
    encryption: Option<Arc<Encryption>>,
    /// Whether lists and watches leave out values that cannot be
    /// decrypted (logged) rather than fail: for in-memory tables, to which
    /// such an object is as good as absent.
    skip_unreadable: bool,
}

/// The value a write is about to store, kept for the observers whose
/// prefixes hold its key.
type Observed = Option<Vec<u8>>;

impl Storage {
    pub fn new(service: Arc<Service>, kv: Arc<KvStore>) -> Self {
        Storage {
            service,
            kv,
            observers: Arc::default(),
            encryption: None,
            skip_unreadable: false,
        }
    }

    /// This storage, its lists and watches leaving out (and logging) what
    /// cannot be decrypted instead of failing: for the in-memory tables
    /// (`auth::feed`), so that one Secret under a removed key does not stop
    /// the server.
    pub fn skipping_unreadable(&self) -> Storage {
        Storage {
            skip_unreadable: true,
            ..self.clone()
        }
    }

    /// This storage, encrypting at rest as `encryption` says.
    pub fn with_encryption(mut self, encryption: Option<Arc<Encryption>>) -> Self {
        self.encryption = encryption;
        self
    }

    /// `value` as it is to be stored at `key`.
    fn seal(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        match &self.encryption {
            Some(encryption) => Ok(encryption.seal(key, value)?),
            None => Ok(value),
        }
    }

    /// Whether `opened` is a value, logging why not.
    fn readable(&self, opened: &Result<Stored>) -> bool {
        match opened {
            Err(error) => {
                tracing::error!(%error, "left out of a list");
                false
            }
            Ok(_) => true,
        }
    }

    /// A key-value the store holds, as the API sees it.
    fn open(&self, kv: flotilla_raft_store::kv::proto::KeyValue) -> Result<Stored> {
        let (value, stale) = match &self.encryption {
            Some(encryption) => {
                let opened = encryption.open(&kv.key, kv.value)?;
                (opened.value, opened.stale)
            }
            None => (kv.value, false),
        };
        Ok(Stored {
            key: kv.key,
            value,
            mod_revision: kv.mod_revision,
            stale,
        })
    }

    /// Whether the store member under this server can serve now.
    pub fn health(&self) -> flotilla_raft_store::server::Health {
        self.service.health()
    }

    /// Has `table` told of every write this server commits under its
    /// prefixes, so what it holds is never older than what this server
    /// answered (a RoleBinding just created authorizes the next request).
    pub fn observe(&self, table: Arc<dyn Table>) {
        self.observers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(table);
    }

    fn observers_of(&self, key: &[u8]) -> Vec<Arc<dyn Table>> {
        let observers = self
            .observers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        observers
            .iter()
            .filter(|table| {
                table
                    .prefixes()
                    .iter()
                    .any(|prefix| key.starts_with(prefix.as_bytes()))
            })
            .cloned()
            .collect()
    }

    /// A copy of `value` when someone observes `key`.
    fn keep(&self, key: &[u8], value: &[u8]) -> Observed {
        (!self.observers_of(key).is_empty()).then(|| value.to_vec())
    }

    /// Tells the observers of `key` it now holds `value` (`None`: deleted).
    fn written(&self, key: &[u8], value: Option<&[u8]>, revision: i64) {
        for table in self.observers_of(key) {
            table.apply(key, value, revision);
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Stored>> {
        let response = self
            .service
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        response
            .kvs
            .into_iter()
            .next()
            .map(|kv| self.open(kv))
            .transpose()
    }

    /// Keys under `prefix` from `start` (inclusive; the prefix itself when
    /// empty), at most `limit` of them (0: all), at `revision` (0: now).
    pub async fn list(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Page> {
        let key = if start.is_empty() {
            prefix.to_vec()
        } else {
            start.to_vec()
        };
        let response = self
            .service
            .range(RangeRequest {
                key,
                range_end: prefix_end(prefix),
                limit,
                revision,
                ..Default::default()
            })
            .await
            .map_err(|error| self.compacted(error, revision))?;
        let revision = match revision {
            0 => response.header.as_ref().map_or(0, |header| header.revision),
            asked => asked,
        };
        let returned = response.kvs.len() as i64;
        Ok(Page {
            items: response
                .kvs
                .into_iter()
                .map(|kv| self.open(kv))
                .filter(|opened| !self.skip_unreadable || self.readable(opened))
                .collect::<Result<_>>()?,
            revision,
            remaining: (response.count - returned).max(0),
        })
    }

    /// Writes `value` at `key` only if nothing is there; returns the new
    /// revision.
    pub async fn create(&self, key: &[u8], value: Vec<u8>) -> Result<i64> {
        let kept = self.keep(key, &value);
        let value = self.seal(key, value)?;
        let response = self
            .txn(
                compare_mod_revision(key, 0),
                put(key, value),
                StorageError::AlreadyExists,
            )
            .await?;
        let revision = revision_of(&response);
        if let Some(value) = kept {
            self.written(key, Some(&value), revision);
        }
        Ok(revision)
    }

    /// As [`Storage::create`], writing every claim with the object in one
    /// transaction, and only if none of their keys exists either. Tells
    /// which failed: the object's key (`AlreadyExists`) before a claim's
    /// (`Claimed`).
    pub async fn create_claiming(
        &self,
        key: &[u8],
        value: Vec<u8>,
        claims: &[Claim],
    ) -> Result<i64> {
        let kept = self.keep(key, &value);
        let value = self.seal(key, value)?;
        let keys = std::iter::once(key).chain(claims.iter().map(|claim| claim.key.as_slice()));
        let compare = keys
            .clone()
            .map(|key| compare_mod_revision(key, 0))
            .collect();
        let failure = keys.clone().map(range).collect();
        let mut success = vec![put(key, value)];
        success.extend(
            claims
                .iter()
                .map(|claim| put(&claim.key, claim.value.clone())),
        );
        let response = self
            .service
            .txn(TxnRequest {
                compare,
                success,
                failure,
            })
            .await?;
        if response.succeeded {
            let revision = revision_of(&response);
            if let Some(value) = kept {
                self.written(key, Some(&value), revision);
            }
            return Ok(revision);
        }
        let mut found = ranges_of(&response).into_iter();
        if found.next().flatten().is_some() {
            return Err(StorageError::AlreadyExists);
        }
        Err(held_claim(claims, found))
    }

    /// Replaces the object at `key` if it is still at `expected` (its
    /// mod_revision); returns the new revision.
    pub async fn update(&self, key: &[u8], value: Vec<u8>, expected: i64) -> Result<i64> {
        self.update_claiming(key, value, expected, &[], &[]).await
    }

    /// As [`Storage::update`], writing `claims` (only if none of their keys
    /// exists, as [`Storage::create_claiming`] does) and deleting
    /// `releases`, in the same transaction: how an update that changes
    /// what its object holds (a Service's node ports) takes and frees it
    /// exactly when the object changes. An object that moved on or went is
    /// told before a claim's key that is held (`Claimed`).
    pub async fn update_claiming(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected: i64,
        claims: &[Claim],
        releases: &[Vec<u8>],
    ) -> Result<i64> {
        let kept = self.keep(key, &value);
        let value = self.seal(key, value)?;
        let mut ops = vec![put(key, value)];
        ops.extend(
            claims
                .iter()
                .map(|claim| put(&claim.key, claim.value.clone())),
        );
        ops.extend(releases.iter().map(Vec::as_slice).map(delete_op));
        let guards = Guards {
            fence: None,
            claims,
        };
        let revision = self.guarded(key, expected, guards, ops).await?;
        if let Some(value) = kept {
            self.written(key, Some(&value), revision);
        }
        Ok(revision)
    }

    /// As [`Storage::update`], and only if `fence` is also still at the
    /// revision the caller saw: a writer whose authority is held in another
    /// key (a leader's Lease) cannot write once that key has moved on.
    pub async fn update_fenced(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected: i64,
        fence: &Fence,
    ) -> Result<i64> {
        let guards = Guards {
            fence: Some(fence),
            claims: &[],
        };
        let kept = self.keep(key, &value);
        let value = self.seal(key, value)?;
        let revision = self
            .guarded(key, expected, guards, vec![put(key, value)])
            .await?;
        if let Some(value) = kept {
            self.written(key, Some(&value), revision);
        }
        Ok(revision)
    }

    /// Deletes the object at `key` if it is still at `expected`; returns
    /// the deleting revision.
    pub async fn delete(&self, key: &[u8], expected: i64) -> Result<i64> {
        self.delete_releasing(key, expected, &[]).await
    }

    /// As [`Storage::delete`], deleting the object's claims (see
    /// [`Storage::create_claiming`]) in the same transaction, so an
    /// allocation is freed exactly when its object goes.
    pub async fn delete_releasing(
        &self,
        key: &[u8],
        expected: i64,
        claims: &[Vec<u8>],
    ) -> Result<i64> {
        let deletes = std::iter::once(key)
            .chain(claims.iter().map(Vec::as_slice))
            .map(delete_op)
            .collect();
        let revision = self
            .guarded(key, expected, Guards::default(), deletes)
            .await?;
        self.written(key, None, revision);
        Ok(revision)
    }

    /// Runs `ops` if `key` is still at `expected` and `guards` hold;
    /// otherwise tells a conflict (the key moved on) from a deletion (it is
    /// gone) from a fence that moved from a claim that is held.
    async fn guarded(
        &self,
        key: &[u8],
        expected: i64,
        guards: Guards<'_>,
        ops: Vec<RequestOp>,
    ) -> Result<i64> {
        let mut compare = vec![compare_mod_revision(key, expected)];
        let mut failure = vec![range(key)];
        if let Some(fence) = guards.fence {
            compare.push(compare_mod_revision(&fence.key, fence.mod_revision));
            failure.push(range(&fence.key));
        }
        for claim in guards.claims {
            compare.push(compare_mod_revision(&claim.key, 0));
            failure.push(range(&claim.key));
        }
        let response = self
            .service
            .txn(TxnRequest {
                compare,
                success: ops,
                failure,
            })
            .await?;
        if response.succeeded {
            return Ok(revision_of(&response));
        }
        let found = ranges_of(&response);
        let mut found = found.into_iter();
        match found.next().flatten() {
            Some(current) if current != expected => return Err(StorageError::Conflict { current }),
            None => return Err(StorageError::NotFound),
            Some(_) => {}
        }
        // The object was as expected: a fence moved, or a claim is held.
        if let Some(fence) = guards.fence {
            let current = found.next().flatten().unwrap_or(0);
            if current != fence.mod_revision {
                return Err(StorageError::Fenced { current });
            }
        }
        Err(held_claim(guards.claims, found))
    }

    /// Changes under `prefix` after `after` (a revision the caller has
    /// seen; 0 means from now).
    pub fn watch(&self, prefix: &[u8], after: i64) -> Result<Watch> {
        let start_revision = if after == 0 { 0 } else { after + 1 };
        let watcher = self
            .kv
            .watch(&WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            })
            .map_err(|error| self.compacted(error, start_revision))?;
        Ok(Watch {
            watcher,
            encryption: self.encryption.clone(),
            skip_unreadable: self.skip_unreadable,
        })
    }

    /// Forgets history before `revision`: reads and watches below it get
    /// `Compacted`. Compacting to a revision already compacted is a no-op.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        if revision <= self.kv.compact_revision() {
            return Ok(());
        }
        match self
            .service
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
        {
            Ok(_) => Ok(()),
            // Another server compacted further meanwhile.
            Err(StoreError::Compacted { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The store's newest revision as this member has applied it.
    pub fn current_revision(&self) -> i64 {
        self.kv.current_revision()
    }

    async fn txn(
        &self,
        compare: Compare,
        success: RequestOp,
        failed: StorageError,
    ) -> Result<TxnResponse> {
        let response = self
            .service
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![success],
                failure: Vec::new(),
            })
            .await?;
        if response.succeeded {
            Ok(response)
        } else {
            Err(failed)
        }
    }

    fn compacted(&self, error: StoreError, requested: i64) -> StorageError {
        match error {
            StoreError::Compacted { .. } => StorageError::Compacted {
                requested,
                compacted: self.kv.compact_revision(),
            },
            other => StorageError::Store(other),
        }
    }
}

/// What a guarded write checks besides its object's revision.
#[derive(Default)]
struct Guards<'a> {
    /// Another key that must still be at the revision the writer saw.
    fence: Option<&'a Fence>,
    /// Keys that must be absent, to be written with the object.
    claims: &'a [Claim],
}

/// The error of a claiming write that failed with its object as expected:
/// the first claim whose key `found` (their revisions, in order) says is
/// held.
/// A store watch whose values read as the API sees them (decrypted).
pub struct Watch {
    watcher: Watcher,
    encryption: Option<Arc<Encryption>>,
    skip_unreadable: bool,
}

impl Watch {
    /// The next batch of events or progress; `None` once the watch ended.
    /// A value that cannot be decrypted ends the watch, cancelled with the
    /// reason, as a list of it would fail; or, when the storage skips
    /// what is unreadable, its event is left out.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        let mut batch = self.watcher.next().await?;
        let Some(encryption) = &self.encryption else {
            return Some(batch);
        };
        let open = |event: &mut flotilla_raft_store::kv::proto::Event| {
            let kvs = [event.kv.as_mut(), event.prev_kv.as_mut()];
            kvs.into_iter().flatten().try_for_each(|kv| {
                let opened = encryption.open(&kv.key, std::mem::take(&mut kv.value))?;
                kv.value = opened.value;
                Ok::<_, EncryptionError>(())
            })
        };
        let mut failure = None;
        batch.events.retain_mut(|event| match open(event) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "a watched value cannot be decrypted");
                failure.get_or_insert(error);
                false
            }
        });
        if let Some(error) = failure
            && !self.skip_unreadable
        {
            batch.events.clear();
            batch.canceled = true;
            batch.cancel_reason = error.to_string();
        }
        Some(batch)
    }
}

fn held_claim(claims: &[Claim], found: impl Iterator<Item = Option<i64>>) -> StorageError {
    match claims
        .iter()
        .zip(found)
        .find(|(_, revision)| revision.is_some())
    {
        Some((claim, _)) => StorageError::Claimed {
            key: claim.key.clone(),
        },
        // Gone again between the compare and the ranges: a race lost to a
        // delete, which the caller retries like any conflict.
        None => StorageError::Conflict { current: 0 },
    }
}

fn compare_mod_revision(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

fn put(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..Default::default()
        })),
    }
}

fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn range(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..Default::default()
        })),
    }
}

fn revision_of(response: &TxnResponse) -> i64 {
    response.header.as_ref().map_or(0, |header| header.revision)
}

/// The mod_revisions a failed compare found, one per range of the failure
/// branch, in order (`None`: the key is gone).
fn ranges_of(response: &TxnResponse) -> Vec<Option<i64>> {
    response
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(range)) => {
                Some(range.kvs.first().map(|kv| kv.mod_revision))
            }
            _ => None,
        })
        .collect()
}
