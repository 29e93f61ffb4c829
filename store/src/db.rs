//! Typed access to the replicated store: reads off the local replica and
//! optimistic transactions sent through the leader, for the admin API and the
//! VEN service alike.
//!
//! A write reads what it needs (each value comes with its `mod_revision`), builds
//! one [`Txn`] whose preconditions are exactly those revisions, and commits it.
//! If anything it read moved in between, every replica refuses the command alike;
//! [`Db::transact`] then catches the local replica up (ReadIndex) and plans again.

use std::sync::Mutex;

use sc_raft::{ClientId, Command, Compare, Consistency, Mutation, Node, Outcome};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;
use crate::keys;
use crate::record::{decode, encode};

/// How many times a write is planned again after a precondition failed.
pub const MAX_ATTEMPTS: usize = 8;

/// Typed access to the store through one node.
pub struct Db {
    node: Node,
    /// Writer sessions (client id, last serial) not in use: one per concurrent
    /// write, so retried commands are applied once and the session table stays as
    /// small as the peak concurrency.
    sessions: Mutex<Vec<(ClientId, u64)>>,
    /// The highest revision a write through this node committed: reads through
    /// this node wait until the local replica has applied it, so a client that
    /// writes to a member and reads back from it sees its write.
    written: std::sync::atomic::AtomicU64,
}

/// How long a read waits for the local replica to apply this node's own writes.
const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One atomic change: preconditions and mutations.
#[derive(Debug, Default, Clone)]
pub struct Txn {
    compare: Vec<Compare>,
    ops: Vec<Mutation>,
}

impl Txn {
    /// Requires `key` to still be at `mod_revision` (`None`: still absent).
    pub fn expect(&mut self, key: Vec<u8>, mod_revision: Option<u64>) -> &mut Self {
        if !self.compare.iter().any(|c| c.key == key) {
            self.compare.push(Compare { key, mod_revision });
        }
        self
    }

    /// Writes `value` as JSON at `key`.
    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<&mut Self, StoreError> {
        self.ops.push(Mutation::Put {
            key,
            value: encode(value)?,
        });
        Ok(self)
    }

    /// Writes raw bytes at `key`.
    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Mutation::Put { key, value });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push(Mutation::Delete { key });
        self
    }

    /// Number of mutations so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// No mutation yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The Raft command for this transaction from writer session `client`:
    /// every write bumps the epoch ([`keys::EPOCH`]), which deletes and
    /// provisions compare, so a writer that bypasses [`Db`] (a bulk loader
    /// talking to a node's Raft client) still keeps the store's contract.
    pub fn into_command(mut self, client: ClientId, serial: u64) -> Command {
        self.put_raw(keys::EPOCH.to_vec(), Vec::new());
        Command {
            client,
            serial,
            expect_revision: None,
            compare: self.compare,
            ops: self.ops,
        }
    }
}

/// A scan's entries decoded, with the revision they were read at.
fn stored<T: DeserializeOwned>(
    r: sc_raft::ReadResult<sc_raft::storage::state_machine::KvList>,
) -> Result<(Vec<Stored<T>>, u64), StoreError> {
    let mut out = Vec::with_capacity(r.value.len());
    for (key, e) in r.value {
        out.push(Stored {
            key,
            value: decode(&e.value)?,
            rev: e.mod_revision,
        });
    }
    Ok((out, r.revision))
}

/// Why a commit did not happen.
pub enum CommitError {
    /// A precondition failed: plan again.
    Conflict(String),
    /// Anything else: the write did not happen and planning again will not help.
    Store(StoreError),
}

/// One stored value with its revision.
pub struct Stored<T> {
    /// The key.
    pub key: Vec<u8>,
    /// The decoded value.
    pub value: T,
    /// Its `mod_revision`, for preconditions.
    pub rev: u64,
}

impl Db {
    /// Wraps a running node.
    pub fn new(node: Node) -> Db {
        Db {
            node,
            sessions: Mutex::new(Vec::new()),
            written: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The node (status, leadership).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Waits (briefly) until the local replica has applied every write this node
    /// committed; reads call it first (read-your-writes through one node).
    async fn catch_up(&self) {
        let want = self.written.load(std::sync::atomic::Ordering::Relaxed);
        if want == 0 {
            return;
        }
        // A replica that does not get there in time is read as it is: the
        // limit bounds the wait, not the read.
        self.node.applied(want, CATCH_UP_LIMIT).await;
    }

    /// Waits until the local replica reflects every write acknowledged before now.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        Ok(self.node.linearize().await?)
    }

    /// The local replica's revision.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        self.catch_up().await;
        Ok(self
            .node
            .get(keys::EPOCH, Consistency::Local)
            .await?
            .revision)
    }

    /// One value with its revision (`None`: absent).
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<Stored<T>>, StoreError> {
        self.catch_up().await;
        let r = self.node.get(key, Consistency::Local).await?;
        match r.value {
            None => Ok(None),
            Some(e) => Ok(Some(Stored {
                key: key.to_vec(),
                value: decode(&e.value)?,
                rev: e.mod_revision,
            })),
        }
    }

    /// One value's raw bytes with its revision.
    pub async fn raw(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.catch_up().await;
        let r = self.node.get(key, Consistency::Local).await?;
        Ok(r.value.map(|e| (e.value, e.mod_revision)))
    }

    /// Raw keys and values under `prefix`.
    pub async fn raw_scan(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.catch_up().await;
        let r = self.node.scan(prefix, limit, Consistency::Local).await?;
        Ok(r.value.into_iter().map(|(k, e)| (k, e.value)).collect())
    }

    /// The `mod_revision` of a key (`None`: absent).
    pub async fn rev(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        self.catch_up().await;
        let r = self.node.get(key, Consistency::Local).await?;
        Ok(r.value.map(|e| e.mod_revision))
    }

    /// Every value under `prefix` (up to `limit`), and the revision read at.
    pub async fn scan<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<Stored<T>>, u64), StoreError> {
        self.catch_up().await;
        stored(self.node.scan(prefix, limit, Consistency::Local).await?)
    }

    /// Up to `limit` values under `prefix`, last key first, and the revision
    /// read at: the newest of time-ordered keys however many there are.
    pub async fn scan_newest<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<Stored<T>>, u64), StoreError> {
        self.catch_up().await;
        stored(self.node.scan_newest(prefix, limit)?)
    }

    /// Commits `txn` through the leader; returns the new store revision.
    pub async fn commit(&self, txn: Txn) -> Result<u64, CommitError> {
        if txn.ops.is_empty() {
            return Err(CommitError::Store(StoreError::Internal(
                "empty transaction".into(),
            )));
        }
        if !self.node.has_leader() {
            // An election (a failover, a planned transfer) takes about one
            // election window: hold the write that long rather than fail it.
            // A region cut off for longer answers at once after that.
            let window = self.node.timeouts().election_max * 2;
            let started = std::time::Instant::now();
            while !self.node.has_leader() && started.elapsed() < window {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if !self.node.has_leader() {
                return Err(CommitError::Store(StoreError::NoLeader(
                    "no leader is known right now (election in progress or this region is cut off)"
                        .into(),
                )));
            }
        }
        let (client, serial) = self.take_session();
        let cmd = txn.into_command(client, serial);
        let result = self.node.write(cmd).await;
        self.give_back(client, serial);
        match result {
            Ok(r) => match r.outcome {
                Outcome::Applied => {
                    self.written
                        .fetch_max(r.revision, std::sync::atomic::Ordering::Relaxed);
                    Ok(r.revision)
                }
                Outcome::Conflict { reason } => Err(CommitError::Conflict(reason)),
                Outcome::Invalid { reason } => {
                    Err(CommitError::Store(StoreError::TooLarge(reason)))
                }
                Outcome::Internal => Err(CommitError::Store(StoreError::Internal(
                    "unexpected internal outcome".into(),
                ))),
            },
            Err(e) => Err(CommitError::Store(e.into())),
        }
    }

    fn take_session(&self) -> (ClientId, u64) {
        let popped = self.sessions.lock().ok().and_then(|mut s| s.pop());
        match popped {
            Some((c, serial)) => (c, serial + 1),
            None => (ClientId::random(), 1),
        }
    }

    fn give_back(&self, client: ClientId, serial: u64) {
        if let Ok(mut s) = self.sessions.lock() {
            s.push((client, serial));
        }
    }
}

/// What a plan's error type must offer [`transact!`]: it takes store errors,
/// and it says whether a refusal may only reflect a lagging replica (an object
/// just made in another region not yet applied here), so the plan is worth one
/// more try after catching up. The admin API and the VEN service each implement
/// it for their own error type.
pub trait PlanError: From<StoreError> {
    /// A refusal that catching up (ReadIndex) might turn into a success.
    fn may_be_stale(&self) -> bool;
}

/// Plans and commits a write, planning again (after catching up) while its
/// preconditions fail: `transact!(db, E, async { ...; Ok((txn, answer)) })` gives
/// `Result<(answer, revision), E>` for any `E: PlanError`. The plan reads, checks,
/// and returns the transaction. A plan refused with a possibly stale refusal is
/// planned once more after catching up (ReadIndex); then the refusal stands.
/// A macro rather than a function taking a closure, so the plan may borrow the
/// caller's locals across awaits and the caller's future stays `Send`.
#[macro_export]
macro_rules! transact {
    ($db:expr, $err:ty, $plan:expr) => {{
        let db: &$crate::db::Db = $db;
        let mut last = String::new();
        let mut done: Option<Result<_, $err>> = None;
        let mut caught_up = false;
        for _ in 0..$crate::db::MAX_ATTEMPTS {
            let planned: Result<_, $err> = $plan.await;
            let (txn, out) = match planned {
                Ok(x) => x,
                Err(e) if !caught_up && $crate::db::PlanError::may_be_stale(&e) => {
                    caught_up = true;
                    if let Err(e) = db.linearize().await {
                        done = Some(Err(<$err>::from(e)));
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    done = Some(Err(e));
                    break;
                }
            };
            match db.commit(txn).await {
                Ok(rev) => {
                    done = Some(Ok((out, rev)));
                    break;
                }
                Err($crate::db::CommitError::Store(e)) => {
                    done = Some(Err(<$err>::from(e)));
                    break;
                }
                Err($crate::db::CommitError::Conflict(reason)) => {
                    last = reason;
                    caught_up = true;
                    if let Err(e) = db.linearize().await {
                        done = Some(Err(<$err>::from(e)));
                        break;
                    }
                }
            }
        }
        done.unwrap_or_else(|| Err(<$err>::from($crate::StoreError::KeptChanging(last))))
    }};
}
