//! The replicated policy store: an ordered key/value map with revisions, client
//! sessions for exactly-once retries, and openraft's `RaftStateMachine`.
//!
//! Layout in the node's sled database. The live state is one *generation* of
//! three trees, `sm_kv.<g>`, `sm_sessions.<g>` and `sm_state.<g>` (last applied
//! log id, membership, revision); `sm_meta` names the live generation and the
//! current snapshot. Applying entries is one sled transaction over the three
//! trees, so the data, `last_applied` and membership never disagree. Installing a
//! snapshot fills generation g+1, syncs it, then switches the pointer in one
//! write: a crash at any point leaves either the old or the new state, whole.
//!
//! Applying does not write to sled: applied changes collect in memory and a
//! writer thread moves them into the trees, with `last_applied`, in one
//! transaction every 100 ms ([`super::overlay`], decision 0021). After a crash
//! the trees hold an earlier prefix of the history, whole, and openraft
//! re-applies the log after it. Readers see the trees through the changes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, TryLockError, Weak};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use sled::Transactional;
use tokio::sync::{broadcast, watch};

pub use super::notices::ChangeNotice;
use super::notices::Notices;

use super::engine::sync_sled;
use super::key_filter::KeyFilter;
use super::overlay::{
    changes_under, Changes, Delta, Merged, MAX_PENDING_BYTES, MAX_WRITE_FAILURES, WRITE_AT_BYTES,
    WRITE_AT_KEYS, WRITE_INTERVAL,
};
use super::snapshot::{read_snapshot, sync_dir_of, SnapRecord, SnapshotFile, SnapshotWriter};
use super::{codec_io, io_err, sled_io, sled_writes};
use crate::codec;
use crate::types::{
    ClientId, Command, CommandResponse, KvEntry, Mutation, NodeId, NodeInfo, Outcome, TypeConfig,
};

const STATE_LAST_APPLIED: &str = "last_applied";
const STATE_MEMBERSHIP: &str = "membership";
const STATE_REVISION: &str = "revision";
const META_GENERATION: &str = "generation";
const META_SNAPSHOT: &str = "snapshot";
/// Snapshot files kept on disk: the current one and the one before, so a peer
/// still streaming the previous snapshot is not cut off by a new one.
const SNAPSHOTS_KEPT: usize = 2;

/// One generation of live state trees.
#[derive(Clone)]
struct Generation {
    id: u64,
    kv: sled::Tree,
    sessions: sled::Tree,
    state: sled::Tree,
}

impl Generation {
    fn open(db: &sled::Db, id: u64) -> io::Result<Self> {
        Ok(Generation {
            id,
            kv: db.open_tree(format!("sm_kv.{id}")).map_err(sled_io)?,
            sessions: db.open_tree(format!("sm_sessions.{id}")).map_err(sled_io)?,
            state: db.open_tree(format!("sm_state.{id}")).map_err(sled_io)?,
        })
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.state.get(key).map_err(sled_io)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(codec_io)?)),
            None => Ok(None),
        }
    }

    fn revision(&self) -> io::Result<u64> {
        Ok(self.get_state(STATE_REVISION)?.unwrap_or(0))
    }

    fn last_applied(&self) -> io::Result<Option<LogId<NodeId>>> {
        Ok(self
            .get_state::<Option<LogId<NodeId>>>(STATE_LAST_APPLIED)?
            .flatten())
    }

    fn membership(&self) -> io::Result<StoredMembership<NodeId, NodeInfo>> {
        Ok(self.get_state(STATE_MEMBERSHIP)?.unwrap_or_default())
    }

    /// Writes `delta` into the trees in one transaction, so the trees always
    /// hold a whole prefix of the applied history with its `last_applied`.
    fn write(&self, delta: &Delta) -> io::Result<()> {
        let mut state: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(last) = &delta.last_applied {
            state.push((STATE_LAST_APPLIED, codec::encode(last).map_err(codec_io)?));
        }
        if let Some(revision) = &delta.revision {
            state.push((STATE_REVISION, codec::encode(revision).map_err(codec_io)?));
        }
        if let Some(m) = &delta.membership {
            state.push((STATE_MEMBERSHIP, codec::encode(m).map_err(codec_io)?));
        }
        let written = sled_writes::write(|| {
            (&self.kv, &self.sessions, &self.state).transaction(|(kv, sessions, state_tree)| {
                for (tree, changes) in [(kv, &delta.kv), (sessions, &delta.sessions)] {
                    for (k, v) in changes {
                        match v {
                            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
                            None => tree.remove(k.as_slice())?,
                        };
                    }
                }
                for (k, v) in &state {
                    state_tree.insert(*k, v.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<io::Error>>(())
            })
        });
        written.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => sled_io(e),
        })
    }
}

/// An item of a tree as owned bytes, so sled's items and the overlay's merge.
fn owned(item: sled::Result<(sled::IVec, sled::IVec)>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let (k, v) = item.map_err(sled_io)?;
    Ok((k.to_vec(), v.to_vec()))
}

/// Items of a tree or of the overlay over it, in either direction.
type Items<'a> = Box<dyn Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// How far the live state has got, as readers wait for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Applied {
    /// The store revision: a write's answer names it (read-your-writes).
    revision: u64,
    /// The Raft log index, blank and membership entries included: a
    /// linearizable read waits for its read index.
    index: u64,
}

/// The live state: a generation's trees and the applied changes not yet in them.
struct Live {
    trees: Generation,
    /// Applied since the writer last took the changes.
    pending: Delta,
    /// Taken by the writer and being written to `trees`; read from here until
    /// the transaction is done, so readers never see it half-written.
    writing: Option<Arc<Delta>>,
    /// Every key that may be in the trees or the layers above them, so a put
    /// of a new key skips the read of sled ([`super::key_filter`]).
    known: KeyFilter,
}

impl Live {
    /// The live state over `trees`, with the filter built from their keys
    /// (one pass over the tree, when a node opens or installs a snapshot).
    fn new(trees: Generation) -> io::Result<Self> {
        let mut known = KeyFilter::new();
        for key in trees.kv.iter().keys() {
            known.insert(&key.map_err(sled_io)?);
        }
        Ok(Live {
            trees,
            pending: Delta::default(),
            writing: None,
            known,
        })
    }

    /// The changes over the trees, newest first.
    fn layers(&self) -> impl Iterator<Item = &Delta> {
        std::iter::once(&self.pending).chain(self.writing.as_deref())
    }

    fn get(
        &self,
        tree: &sled::Tree,
        changes: fn(&Delta) -> &Changes,
        key: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        for layer in self.layers() {
            if let Some(v) = changes(layer).get(key) {
                return Ok(v.clone());
            }
        }
        Ok(tree.get(key).map_err(sled_io)?.map(|v| v.to_vec()))
    }

    fn kv_get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get(&self.trees.kv, |d| &d.kv, key)
    }

    fn session_get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get(&self.trees.sessions, |d| &d.sessions, key)
    }

    fn items(
        &self,
        tree: &sled::Tree,
        changes: fn(&Delta) -> &Changes,
        prefix: &[u8],
        reverse: bool,
    ) -> Merged<'_, Items<'static>> {
        let scan = tree.scan_prefix(prefix);
        let tree_items: Items<'static> = if reverse {
            Box::new(scan.rev().map(owned))
        } else {
            Box::new(scan.map(owned))
        };
        let over = changes_under(self.layers().map(changes), prefix, reverse);
        Merged::new(tree_items, over, reverse)
    }

    /// Keys starting with `prefix` and their encoded entries, in key order
    /// (last first if `reverse`).
    fn kv_items(&self, prefix: &[u8], reverse: bool) -> Merged<'_, Items<'static>> {
        self.items(&self.trees.kv, |d| &d.kv, prefix, reverse)
    }

    fn session_items(&self) -> Merged<'_, Items<'static>> {
        self.items(&self.trees.sessions, |d| &d.sessions, b"", false)
    }

    fn revision(&self) -> io::Result<u64> {
        match self.layers().find_map(|d| d.revision) {
            Some(r) => Ok(r),
            None => self.trees.revision(),
        }
    }

    fn last_applied(&self) -> io::Result<Option<LogId<NodeId>>> {
        match self.layers().find_map(|d| d.last_applied) {
            Some(l) => Ok(l),
            None => self.trees.last_applied(),
        }
    }

    fn membership(&self) -> io::Result<StoredMembership<NodeId, NodeInfo>> {
        match self.layers().find_map(|d| d.membership.as_ref()) {
            Some(m) => Ok(m.clone()),
            None => self.trees.membership(),
        }
    }
}

/// Runs `wait`, which blocks until another thread lets go of a lock, without
/// holding up the tasks queued behind the caller. On a worker of a
/// multi-threaded runtime the worker's queue moves to a fresh thread first
/// (`block_in_place`): the consensus runtime has one worker, and a heartbeat
/// stuck behind an apply that waits for a long scan would cost the leader
/// its term. Elsewhere (a plain thread, a one-threaded test runtime) it just
/// waits. Only the contended case comes here: an uncontended lock is taken
/// by a first try, which costs what taking it outright does. (A thread that
/// entered a multi-threaded runtime's handle from inside a one-threaded
/// runtime would pass the check and panic in `block_in_place`; nothing here
/// does that.)
fn off_the_worker<T>(wait: impl FnOnce() -> T) -> T {
    let pool = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if pool {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// The error for a lock whose holder panicked: the live state may be half
/// changed, so nothing reads or applies on it any more.
fn poisoned<E>(_: E) -> io::Error {
    io::Error::other("state lock poisoned")
}

/// State shared by the state machine, its snapshot builder, its writer and readers.
struct Shared {
    /// How far the node's Raft log is on disk: an entry is applied only once
    /// it is (decision 0027: a leader's own appends are reported flushed
    /// before their sync). Unset in tests of the state machine alone.
    log: std::sync::OnceLock<super::durable::Durable>,
    db: sled::Db,
    meta: sled::Tree,
    /// The live state. A std lock, not a tokio one: it is never held across an
    /// await, and apply takes it exclusively so readers see whole commands only.
    live: RwLock<Live>,
    /// Held while changes are written to the trees or the trees are replaced,
    /// so an install never switches generations under a write in flight.
    writer: Mutex<()>,
    /// Wakes the writer before its interval when changes pile up.
    wake: mpsc::SyncSender<()>,
    data_file: fs::File,
    snapshot_dir: PathBuf,
    notices: Notices,
    /// The store revision and the Raft log index applied so far, for readers
    /// that wait for one ([`ReadView::applied`], [`ReadView::applied_index`])
    /// instead of polling for it.
    applied: watch::Sender<Applied>,
    /// Writes to the trees that failed in a row, and the last error: applying
    /// fails once sled has refused for too long.
    write_failures: std::sync::atomic::AtomicU32,
    last_write_error: Mutex<String>,
}

impl Shared {
    /// The live state for reading. A reader scanning a large prefix holds
    /// this for the whole scan, and an apply waiting for it makes later
    /// readers wait too: so waiting is done off the worker (see
    /// [`off_the_worker`]), which a node's one consensus worker needs to keep
    /// answering heartbeats meanwhile.
    fn live(&self) -> io::Result<std::sync::RwLockReadGuard<'_, Live>> {
        match self.live.try_read() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::WouldBlock) => off_the_worker(|| self.live.read()).map_err(poisoned),
            Err(TryLockError::Poisoned(e)) => Err(poisoned(e)),
        }
    }

    /// The live state for changing; waits like [`Shared::live`].
    fn live_mut(&self) -> io::Result<std::sync::RwLockWriteGuard<'_, Live>> {
        match self.live.try_write() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::WouldBlock) => off_the_worker(|| self.live.write()).map_err(poisoned),
            Err(TryLockError::Poisoned(e)) => Err(poisoned(e)),
        }
    }

    /// Runs `read` on the live state. A read that reaches sled waits for
    /// any sled write in the process (`sled_writes`): while one runs, the
    /// read runs off the worker, as a wait for the live lock does.
    fn reading<T>(&self, read: impl FnOnce(&Live) -> io::Result<T>) -> io::Result<T> {
        let run = || read(&*self.live()?);
        if sled_writes::in_flight() {
            off_the_worker(run)
        } else {
            run()
        }
    }

    /// Moves the applied changes into the trees. The lock is held only to take
    /// the changes and to let go of them: applies and reads go on meanwhile.
    fn write_behind(&self) -> io::Result<()> {
        // An idle node wakes the writer every interval: when nothing is
        // pending there is nothing to freeze or write, so skip the locks'
        // second half and the allocations. Applies that land after this look
        // are written on the next wake.
        if self.live()?.pending.is_empty() {
            return Ok(());
        }
        self.write_behind_with(|_| Ok(()))
    }

    /// [`Shared::write_behind`], running `during` first on the state as of
    /// the moment the changes were taken: the trees and those changes, which
    /// cannot change meanwhile (this holds the writer's lock, which installs
    /// take too). The live lock is not held, so applies and reads go on: a
    /// snapshot build or a backup reads here instead of holding up applies
    /// for as long as it takes to write the whole store to a file.
    fn write_behind_with<T>(&self, during: impl FnOnce(&Live) -> io::Result<T>) -> io::Result<T> {
        let _one = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("writer lock poisoned"))?;
        let (delta, trees) = {
            let mut live = self.live_mut()?;
            let delta = Arc::new(std::mem::take(&mut live.pending));
            live.writing = Some(delta.clone());
            (delta, live.trees.clone())
        };
        let frozen = Live {
            trees: trees.clone(),
            pending: Delta::default(),
            writing: Some(delta.clone()),
            // Dumps and snapshots scan; they never ask the filter.
            known: KeyFilter::blind(),
        };
        let result = during(&frozen);
        drop(frozen);
        let written = if delta.is_empty() {
            Ok(())
        } else {
            trees.write(&delta)
        };
        let mut live = self.live_mut()?;
        match &written {
            Ok(()) => self.write_failures.store(0, Ordering::Relaxed),
            Err(e) => {
                self.write_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_write_error.lock() {
                    *last = e.to_string();
                }
            }
        }
        if written.is_err() {
            // Keep the changes for the next try, under anything applied since.
            let newer = std::mem::take(&mut live.pending);
            let mut kept = Delta::clone(&delta);
            kept.absorb(newer);
            live.pending = kept;
        }
        live.writing = None;
        written.and(result)
    }

    fn sync(&self) -> io::Result<()> {
        sync_sled(&self.db, &self.data_file)
    }

    fn current_snapshot(&self) -> io::Result<Option<(SnapshotMeta<NodeId, NodeInfo>, String)>> {
        match self.meta.get(META_SNAPSHOT).map_err(sled_io)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(codec_io)?)),
            None => Ok(None),
        }
    }
}

impl Drop for Shared {
    /// When the state machine and its last read view are dropped (a node
    /// stopping cleanly), what is pending is written, so the next start
    /// re-applies nothing. Not synced here: sled flushes when its database is
    /// dropped, and a crash skips all of it; the re-apply covers that.
    fn drop(&mut self) {
        if let Ok(live) = self.live.get_mut() {
            if !live.pending.is_empty() {
                if let Err(e) = live.trees.write(&live.pending) {
                    tracing::warn!(error = %e, "applied state not written at shutdown; the log will be re-applied");
                }
            }
        }
    }
}

/// Starts the thread that writes applied changes behind the state machine. It
/// holds the state weakly and ends when the state machine and its readers are
/// gone (the waker's sender goes with them).
fn start_writer(shared: &Arc<Shared>, wake: mpsc::Receiver<()>) -> io::Result<()> {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("sm-writer".into())
        .spawn(move || loop {
            match wake.recv_timeout(WRITE_INTERVAL) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if let Err(e) = shared.write_behind() {
                tracing::warn!(error = %e, "writing applied state to sled failed; kept in memory, retrying");
            }
        })?;
    Ok(())
}

/// The policy store's Raft state machine.
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// A read-only handle on the live state, for serving reads off the replica.
#[derive(Clone)]
pub struct ReadView {
    shared: Arc<Shared>,
}

/// Keys with their entries, in key order.
pub type KvList = Vec<(Vec<u8>, KvEntry)>;

/// The result of a read: the values and the point of history they reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult<T> {
    /// What was read.
    pub value: T,
    /// The store revision the read reflects.
    pub revision: u64,
    /// The Raft log index applied when the read was served.
    pub applied_index: Option<u64>,
}

impl ReadView {
    /// One key.
    pub fn get(&self, key: &[u8]) -> io::Result<ReadResult<Option<KvEntry>>> {
        self.shared.reading(|live| {
            let value = match live.kv_get(key)? {
                Some(bytes) => Some(codec::decode(&bytes).map_err(codec_io)?),
                None => None,
            };
            Ok(ReadResult {
                value,
                revision: live.revision()?,
                applied_index: live.last_applied()?.map(|l| l.index),
            })
        })
    }

    /// Up to `limit` keys starting with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8], limit: usize) -> io::Result<ReadResult<KvList>> {
        self.shared.reading(|live| {
            let items = live.kv_items(prefix, false).take(limit);
            read_all(live, items)
        })
    }

    /// Up to `limit` keys starting with `prefix`, last key first (the newest
    /// of time-ordered keys, such as audit events, without reading the rest).
    pub fn scan_newest(&self, prefix: &[u8], limit: usize) -> io::Result<ReadResult<KvList>> {
        self.shared.reading(|live| {
            let items = live.kv_items(prefix, true).take(limit);
            read_all(live, items)
        })
    }

    /// Writes the whole store, as of one point of history, to `path` in the
    /// checksummed snapshot format (an operator's backup; not recorded as a Raft
    /// snapshot). Returns the revision it reflects.
    pub fn dump(&self, path: &Path) -> io::Result<u64> {
        self.shared.write_behind_with(|live| {
            let last_applied = live.last_applied()?;
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: live.membership()?,
                snapshot_id: format!("backup-{}", last_applied.map(|l| l.index).unwrap_or(0)),
            };
            write_state(live, &meta, path)?;
            live.revision()
        })
    }

    /// Size of the current snapshot file (`None` before the first snapshot,
    /// or if it cannot be read): for the node's metrics.
    pub fn snapshot_bytes(&self) -> Option<u64> {
        let (_, file) = self.shared.current_snapshot().ok()??;
        fs::metadata(self.shared.snapshot_dir.join(file))
            .ok()
            .map(|m| m.len())
    }

    /// The current store revision.
    pub fn revision(&self) -> io::Result<u64> {
        self.shared.reading(|live| live.revision())
    }

    /// Resolves once the replica has applied store revision `revision` (at
    /// once if it has), or after `limit`, returning whether it got there:
    /// read-your-writes through one node waits here for its own last write
    /// rather than polling the revision.
    pub async fn applied(&self, revision: u64, limit: std::time::Duration) -> bool {
        self.wait_applied(limit, |a| a.revision >= revision).await
    }

    /// Resolves once the replica has applied Raft log index `index` (at once
    /// if it has), or after `limit`, returning whether it got there: a
    /// linearizable read waits here for its read index. openraft's own wait
    /// would watch its full metrics, which it sends on every pass of its
    /// core's loop, waking every waiting reader each time.
    pub async fn applied_index(&self, index: u64, limit: std::time::Duration) -> bool {
        self.wait_applied(limit, |a| a.index >= index).await
    }

    async fn wait_applied(
        &self,
        limit: std::time::Duration,
        reached: impl Fn(&Applied) -> bool,
    ) -> bool {
        let mut seen = self.shared.applied.subscribe();
        let waited =
            tokio::time::timeout(limit, async { seen.wait_for(|a| reached(a)).await.is_ok() })
                .await;
        waited.unwrap_or(false)
    }

    /// A stream of the change notices (one per applied command) that touch a
    /// key under one of `prefixes`, and of every whole-replica replacement.
    pub fn subscribe(&self, prefixes: &[&[u8]]) -> broadcast::Receiver<ChangeNotice> {
        self.shared.notices.subscribe(prefixes)
    }

    /// A digest of the whole store (keys, values, revisions, sessions), so tests
    /// and drills can check that replicas are identical.
    pub fn digest(&self) -> io::Result<u64> {
        self.shared.reading(Self::digest_of)
    }

    fn digest_of(live: &Live) -> io::Result<u64> {
        let mut h = crc32fast::Hasher::new();
        let mut h2 = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
        for items in [live.kv_items(b"", false), live.session_items()] {
            for item in items {
                let (k, v) = item?;
                for hasher in [&mut h, &mut h2] {
                    hasher.update(&(k.len() as u64).to_le_bytes());
                    hasher.update(&k);
                    hasher.update(&(v.len() as u64).to_le_bytes());
                    hasher.update(&v);
                }
            }
        }
        h.update(&live.revision()?.to_le_bytes());
        Ok(((h.finalize() as u64) << 32) | h2.finalize() as u64)
    }
}

fn sm_err(verb: ErrorVerb, e: &io::Error) -> StorageError<NodeId> {
    io_err(ErrorSubject::StateMachine, verb, e)
}

impl StateMachine {
    /// Applies entries only once `log` has them on disk.
    pub(crate) fn apply_after(&self, log: super::durable::Durable) {
        let _ = self.shared.log.set(log);
    }

    /// Opens the state machine in the node's database, recovering from a crash in
    /// the middle of a snapshot install.
    pub fn open(db: sled::Db, db_dir: &Path, snapshot_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(snapshot_dir)?;
        let meta = db.open_tree("sm_meta").map_err(sled_io)?;
        let gen_id = match meta.get(META_GENERATION).map_err(sled_io)? {
            Some(bytes) => codec::decode(&bytes).map_err(codec_io)?,
            None => 0u64,
        };
        // Trees of any other generation are leftovers of an interrupted install.
        let live_names = [
            format!("sm_kv.{gen_id}"),
            format!("sm_sessions.{gen_id}"),
            format!("sm_state.{gen_id}"),
        ];
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).to_string();
            let ours = ["sm_kv.", "sm_sessions.", "sm_state."]
                .iter()
                .any(|p| name.starts_with(p));
            if ours && !live_names.contains(&name) {
                tracing::info!(tree = %name, "dropping state left by an interrupted snapshot install");
                db.drop_tree(name.as_bytes()).map_err(sled_io)?;
            }
        }
        let live = Live::new(Generation::open(&db, gen_id)?)?;
        let applied = watch::Sender::new(Applied {
            revision: live.revision()?,
            index: live.last_applied()?.map_or(0, |l| l.index),
        });
        let data_file = fs::File::open(db_dir.join("db"))?;
        let (wake, woken) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            log: std::sync::OnceLock::new(),
            db,
            meta,
            live: RwLock::new(live),
            writer: Mutex::new(()),
            wake,
            data_file,
            snapshot_dir: snapshot_dir.to_path_buf(),
            notices: Notices::default(),
            applied,
            write_failures: std::sync::atomic::AtomicU32::new(0),
            last_write_error: Mutex::new(String::new()),
        });
        start_writer(&shared, woken)?;
        let sm = StateMachine { shared };
        sm.recover_from_snapshot()?;
        sm.remove_stray_files(true)?;
        Ok(sm)
    }

    /// A read handle on the live state.
    pub fn read_view(&self) -> ReadView {
        ReadView {
            shared: self.shared.clone(),
        }
    }

    /// If the state on disk is older than the current snapshot (possible only if
    /// the disk lost writes that sled had flushed), reload it from the snapshot
    /// file, because the log before the snapshot may already be purged.
    fn recover_from_snapshot(&self) -> io::Result<()> {
        let Some((meta, file)) = self.shared.current_snapshot()? else {
            return Ok(());
        };
        let applied = self.shared.live()?.last_applied()?;
        if applied >= meta.last_log_id {
            return Ok(());
        }
        tracing::warn!(?applied, snapshot = ?meta.last_log_id, "state is behind its snapshot; reloading it");
        self.install_file(&meta, &self.shared.snapshot_dir.join(file))
    }

    /// Removes snapshot files that no longer back a current snapshot (half-received
    /// transfers, superseded snapshots).
    /// Removes snapshots beyond the ones kept, and, at start-up only
    /// (`startup`), half-received ones. While the node runs, an `incoming-`
    /// file belongs to a stream or an install in flight, which removes it
    /// itself: deleting it here, after another install of the same snapshot
    /// (a node adding itself while the operator adds it too), made that
    /// install find its file gone, a storage error that stopped the Raft
    /// core for good.
    fn remove_stray_files(&self, startup: bool) -> io::Result<()> {
        let keep = self.shared.current_snapshot()?.map(|(_, f)| f);
        let mut snaps = Vec::new();
        for entry in fs::read_dir(&self.shared.snapshot_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("incoming-") {
                if startup {
                    fs::remove_file(entry.path())?;
                }
            } else if name.ends_with(".snap") && Some(&name) != keep.as_ref() {
                snaps.push((entry.metadata()?.modified()?, entry.path()));
            }
        }
        snaps.sort();
        let excess = snaps.len().saturating_sub(SNAPSHOTS_KEPT - 1);
        for (_, path) in snaps.into_iter().take(excess) {
            fs::remove_file(path)?;
        }
        Ok(())
    }

    /// Replaces the live state with the snapshot in `path` (checked first), crash-safely.
    fn install_file(&self, meta: &SnapshotMeta<NodeId, NodeInfo>, path: &Path) -> io::Result<()> {
        let shared = &self.shared;
        // No applied changes are written to the trees while they are replaced.
        let _writer = shared
            .writer
            .lock()
            .map_err(|_| io::Error::other("writer lock poisoned"))?;
        let next_id = shared.live()?.trees.id + 1;
        let next = Generation::open(&shared.db, next_id)?;
        for tree in [&next.kv, &next.sessions, &next.state] {
            tree.clear().map_err(sled_io)?;
        }
        let mut kv = sled::Batch::default();
        let mut sessions = sled::Batch::default();
        let mut pending = 0usize;
        let (file_meta, revision) = read_snapshot(path, |record| {
            match record {
                SnapRecord::Kv { key, entry } => {
                    kv.insert(key, codec::encode(&entry).map_err(codec_io)?);
                }
                SnapRecord::Session {
                    client,
                    serial,
                    response,
                } => {
                    sessions.insert(
                        &client.0.to_be_bytes(),
                        codec::encode(&(serial, response)).map_err(codec_io)?,
                    );
                }
                SnapRecord::Header { .. } | SnapRecord::End { .. } => {}
            }
            pending += 1;
            if pending >= 4096 {
                let (k, s) = (std::mem::take(&mut kv), std::mem::take(&mut sessions));
                sled_writes::write(|| next.kv.apply_batch(k)).map_err(sled_io)?;
                sled_writes::write(|| next.sessions.apply_batch(s)).map_err(sled_io)?;
                pending = 0;
            }
            Ok(())
        })?;
        if file_meta.last_log_id != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot file covers {:?} but its meta says {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ),
            ));
        }
        sled_writes::write(|| next.kv.apply_batch(kv)).map_err(sled_io)?;
        sled_writes::write(|| next.sessions.apply_batch(sessions)).map_err(sled_io)?;
        let mut state = sled::Batch::default();
        state.insert(
            STATE_LAST_APPLIED,
            codec::encode(&meta.last_log_id).map_err(codec_io)?,
        );
        state.insert(
            STATE_MEMBERSHIP,
            codec::encode(&meta.last_membership).map_err(codec_io)?,
        );
        state.insert(STATE_REVISION, codec::encode(&revision).map_err(codec_io)?);
        sled_writes::write(|| next.state.apply_batch(state)).map_err(sled_io)?;
        // The new state's key filter, read from its tree before the switch:
        // a failure here leaves the node on the old generation, whole.
        let fresh = Live::new(next)?;

        // Keep the file as our current snapshot (unless it already is ours).
        let file_name = format!("snap-{}.snap", sanitize(&meta.snapshot_id));
        let kept = shared.snapshot_dir.join(&file_name);
        if path != kept {
            if fs::rename(path, &kept).is_err() {
                fs::copy(path, &kept)?;
            }
            fs::File::open(&kept)?.sync_all()?;
            sync_dir_of(&kept)?;
        }
        // 1. the new generation is durable; 2. switch to it in one write.
        shared.sync()?;
        let mut switch = sled::Batch::default();
        switch.insert(META_GENERATION, codec::encode(&next_id).map_err(codec_io)?);
        switch.insert(
            META_SNAPSHOT,
            codec::encode(&(meta, &file_name)).map_err(codec_io)?,
        );
        sled_writes::write(|| shared.meta.apply_batch(switch)).map_err(sled_io)?;
        shared.sync()?;
        // The snapshot replaces everything applied, written or not.
        let old = std::mem::replace(&mut *shared.live_mut()?, fresh).trees;
        // The snapshot's revision is readable from here on (a waiter for a
        // revision the snapshot lacks waits for the log after it).
        shared.applied.send_replace(Applied {
            revision,
            index: meta.last_log_id.map_or(0, |l| l.index),
        });
        for tree in [&old.kv, &old.sessions, &old.state] {
            shared.db.drop_tree(tree.name()).map_err(sled_io)?;
        }
        self.remove_stray_files(false)?;
        shared.notices.publish([ChangeNotice {
            revision,
            log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            keys: Vec::new(),
        }]);
        Ok(())
    }
}

/// Decodes scanned entries, stamped with the generation's revision.
fn read_all(
    live: &Live,
    items: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
) -> io::Result<ReadResult<KvList>> {
    let mut out = Vec::new();
    for item in items {
        let (k, v) = item?;
        out.push((k, codec::decode(&v).map_err(codec_io)?));
    }
    Ok(ReadResult {
        value: out,
        revision: live.revision()?,
        applied_index: live.last_applied()?.map(|l| l.index),
    })
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One apply call's changes, read through to the live state beneath them. An
/// apply that fails drops it, so nothing of the batch is applied.
struct Applying<'a> {
    live: &'a Live,
    delta: Delta,
}

impl Applying<'_> {
    fn kv_get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.delta.kv.get(key) {
            Some(v) => Ok(v.clone()),
            None if !self.live.known.may_contain(key) => {
                // Every test build checks the filter's one promise.
                debug_assert!(
                    matches!(self.live.kv_get(key), Ok(None)),
                    "the key filter said absent for a key that is stored: {:?}",
                    String::from_utf8_lossy(key)
                );
                Ok(None)
            }
            None => self.live.kv_get(key),
        }
    }

    fn session_get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.delta.sessions.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.live.session_get(key),
        }
    }
}

/// Applies one command to the batch's changes. Pure function of the state:
/// every replica computes the same answer.
fn apply_command(
    state: &mut Applying<'_>,
    revision: &mut u64,
    cmd: &Command,
    changed: &mut Vec<Vec<u8>>,
) -> io::Result<CommandResponse> {
    let session_key = cmd.client.0.to_be_bytes();
    if let Some(bytes) = state.session_get(&session_key)? {
        let (serial, response): (u64, CommandResponse) = codec::decode(&bytes).map_err(codec_io)?;
        if serial == cmd.serial {
            return Ok(response);
        }
        if cmd.serial < serial {
            return Ok(CommandResponse {
                revision: *revision,
                outcome: Outcome::Conflict {
                    reason: format!(
                        "request serial {} is older than this client's last applied serial {serial}",
                        cmd.serial
                    ),
                },
            });
        }
    }
    let response = evaluate(state, revision, cmd, changed)?;
    state.delta.sessions.insert(
        session_key.to_vec(),
        Some(codec::encode(&(cmd.serial, &response)).map_err(codec_io)?),
    );
    Ok(response)
}

fn evaluate(
    state: &mut Applying<'_>,
    revision: &mut u64,
    cmd: &Command,
    changed: &mut Vec<Vec<u8>>,
) -> io::Result<CommandResponse> {
    let refuse = |outcome| {
        Ok(CommandResponse {
            revision: *revision,
            outcome,
        })
    };
    if let Err(e) = cmd.validate() {
        return refuse(Outcome::Invalid {
            reason: e.to_string(),
        });
    }
    if let Some(expected) = cmd.expect_revision {
        if expected != *revision {
            return refuse(Outcome::Conflict {
                reason: format!(
                    "store is at revision {}, the change was made against {expected}",
                    *revision
                ),
            });
        }
    }
    for c in &cmd.compare {
        let current = match state.kv_get(&c.key)? {
            Some(bytes) => Some(
                codec::decode::<KvEntry>(&bytes)
                    .map_err(codec_io)?
                    .mod_revision,
            ),
            None => None,
        };
        if current != c.mod_revision {
            return refuse(Outcome::Conflict {
                reason: format!(
                    "key {:?} is at mod_revision {current:?}, expected {:?}",
                    String::from_utf8_lossy(&c.key),
                    c.mod_revision
                ),
            });
        }
    }
    let next = *revision + 1;
    for op in &cmd.ops {
        match op {
            Mutation::Put { key, value } => {
                let old = match state.kv_get(key)? {
                    Some(bytes) => Some(codec::decode::<KvEntry>(&bytes).map_err(codec_io)?),
                    None => None,
                };
                let entry = KvEntry {
                    value: value.clone(),
                    create_revision: old.as_ref().map_or(next, |o| o.create_revision),
                    mod_revision: next,
                    version: old.as_ref().map_or(1, |o| o.version + 1),
                };
                let bytes = codec::encode(&entry).map_err(codec_io)?;
                state.delta.kv.insert(key.clone(), Some(bytes));
            }
            Mutation::Delete { key } => {
                state.delta.kv.insert(key.clone(), None);
            }
        }
        changed.push(op.key().to_vec());
    }
    *revision = next;
    Ok(CommandResponse {
        revision: next,
        outcome: Outcome::Applied,
    })
}

/// Applies `entries` over `live` without changing it: the changes, the answers
/// and the change notices, or an error and nothing applied.
fn apply_entries(
    live: &Live,
    entries: &[Entry<TypeConfig>],
) -> io::Result<(Delta, Vec<Vec<CommandResponse>>, Vec<ChangeNotice>)> {
    let mut state = Applying {
        live,
        delta: Delta::default(),
    };
    let mut revision = live.revision()?;
    let mut responses = Vec::with_capacity(entries.len());
    let mut notices = Vec::new();
    for entry in entries {
        match &entry.payload {
            // No client waits for these.
            EntryPayload::Blank => responses.push(Vec::new()),
            EntryPayload::Membership(m) => {
                state.delta.membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                responses.push(Vec::new());
            }
            EntryPayload::Normal(proposal) => {
                let mut answers = Vec::with_capacity(proposal.commands.len());
                for cmd in &proposal.commands {
                    let mut changed = Vec::new();
                    let before = revision;
                    answers.push(apply_command(&mut state, &mut revision, cmd, &mut changed)?);
                    if revision != before {
                        notices.push(ChangeNotice {
                            revision,
                            log_index: entry.log_id.index,
                            keys: changed,
                        });
                    }
                }
                responses.push(answers);
            }
        }
    }
    let mut delta = state.delta;
    delta.last_applied = Some(entries.last().map(|e| e.log_id));
    delta.revision = Some(revision);
    Ok((delta, responses, notices))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        self.shared
            .reading(|live| Ok((live.last_applied()?, live.membership()?)))
            .map_err(|e| sm_err(ErrorVerb::Read, &e))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<CommandResponse>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            return Ok(Vec::new());
        };
        if let Some(log) = self.shared.log.get() {
            log.wait(last)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        }
        let shared = self.shared.clone();
        let failures = shared.write_failures.load(Ordering::Relaxed);
        if failures >= MAX_WRITE_FAILURES {
            let last = shared
                .last_write_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            let e = io::Error::other(format!(
                "applied state could not be written to sled {failures} times in a row: {last}"
            ));
            return Err(sm_err(ErrorVerb::Write, &e));
        }
        // A closure, not a block that drops: the guard must not live across
        // the await below. Applying reads sled (sessions, keys it holds), so
        // while a sled write runs it applies off the worker (`sled_writes`).
        let absorb = || {
            let mut live = shared.live_mut()?;
            let (delta, responses, notices) = apply_entries(&live, &entries)?;
            let revision = delta.revision;
            for (key, value) in &delta.kv {
                // A key already there (an update) is not added again, so
                // the filter grows with the keys, not with the puts.
                if value.is_some() && !live.known.may_contain(key) {
                    live.known.insert(key);
                }
            }
            live.pending.absorb(delta);
            let (keys, bytes) = (live.pending.keys(), live.pending.bytes);
            Ok::<_, io::Error>((responses, notices, keys, bytes, revision))
        };
        let absorbed = if sled_writes::in_flight() {
            off_the_worker(absorb)
        } else {
            absorb()
        };
        let (responses, notices, keys, bytes, revision) =
            absorbed.map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        if bytes >= MAX_PENDING_BYTES {
            // sled is not keeping up: write before applying more, on the
            // blocking pool, so no consensus worker is held for the length
            // of the write while this apply waits.
            let writer = shared.clone();
            tokio::task::spawn_blocking(move || writer.write_behind())
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, &io::Error::other(e.to_string())))?
                .map_err(|e| sm_err(ErrorVerb::Write, &e))?;
        } else if keys >= WRITE_AT_KEYS || bytes >= WRITE_AT_BYTES {
            // A full channel means the writer is already woken.
            let _ = shared.wake.try_send(());
        }
        // Readable from here on: the changes are in the live state.
        shared.applied.send_if_modified(|a| {
            let revision = revision.unwrap_or(a.revision);
            let moved = revision > a.revision || last > a.index;
            a.revision = a.revision.max(revision);
            a.index = a.index.max(last);
            moved
        });
        shared.notices.publish(notices);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        let name = format!("incoming-{:016x}.snap", rand::random::<u64>());
        Ok(Box::new(SnapshotFile {
            path: self.shared.snapshot_dir.join(name),
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let sm = StateMachine {
            shared: self.shared.clone(),
        };
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || sm.install_file(&meta2, &snapshot.path))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    &e,
                )
            })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self
            .shared
            .current_snapshot()
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile {
                path: self.shared.snapshot_dir.join(file),
            }),
        }))
    }
}

/// Writes the whole state `live` holds (keys, sessions) as a snapshot file:
/// one format for Raft snapshots and operators' backups. `live` is a frozen
/// view ([`Shared::write_behind_with`]), so the file is one point of history.
fn write_state(
    live: &Live,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    path: &Path,
) -> io::Result<SnapshotFile> {
    let mut w = SnapshotWriter::create(path)?;
    w.write(&SnapRecord::Header {
        meta: meta.clone(),
        revision: live.revision()?,
    })?;
    for item in live.kv_items(b"", false) {
        let (k, v) = item?;
        w.write(&SnapRecord::Kv {
            key: k,
            entry: codec::decode(&v).map_err(codec_io)?,
        })?;
    }
    for item in live.session_items() {
        let (k, v) = item?;
        let client: [u8; 16] = k.as_slice().try_into().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "session key is not 16 bytes")
        })?;
        let (serial, response): (u64, CommandResponse) = codec::decode(&v).map_err(codec_io)?;
        w.write(&SnapRecord::Session {
            client: ClientId(u128::from_be_bytes(client)),
            serial,
            response,
        })?;
    }
    w.finish()
}

/// Builds a snapshot of the live state. openraft runs the build on a task of
/// its own; it reads a frozen view (the trees and the changes taken for the
/// writer, [`Shared::write_behind_with`]), so the file is one point of
/// history and applies go on while it is written.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl SnapshotBuilder {
    fn build(shared: &Shared) -> io::Result<(SnapshotMeta<NodeId, NodeInfo>, SnapshotFile)> {
        let (meta, file_name, file) = shared.write_behind_with(|live| Self::write(shared, live))?;
        // The state the snapshot covers must be durable before openraft purges the
        // log behind it, and so must the pointer to the snapshot.
        // An install may have finished since; never point back to an older
        // snapshot than the one recorded.
        let newer_recorded = shared
            .current_snapshot()?
            .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id);
        if !newer_recorded {
            shared
                .meta
                .insert(
                    META_SNAPSHOT,
                    codec::encode(&(&meta, &file_name)).map_err(codec_io)?,
                )
                .map_err(sled_io)?;
        }
        shared.sync()?;
        Ok((meta, file))
    }

    /// Writes the snapshot file of `live` (a frozen view: see
    /// [`Shared::write_behind_with`]).
    fn write(
        shared: &Shared,
        live: &Live,
    ) -> io::Result<(SnapshotMeta<NodeId, NodeInfo>, String, SnapshotFile)> {
        let last_applied = live.last_applied()?;
        let membership = live.membership()?;
        let snapshot_id = format!(
            "{}-{}-{:08x}",
            last_applied.map(|l| l.leader_id.term).unwrap_or(0),
            last_applied.map(|l| l.index).unwrap_or(0),
            rand::random::<u32>()
        );
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let file_name = format!("snap-{}.snap", sanitize(&meta.snapshot_id));
        let file = write_state(live, &meta, &shared.snapshot_dir.join(&file_name))?;
        Ok((meta, file_name, file))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || {
            let built = Self::build(&shared)?;
            StateMachine { shared }.remove_stray_files(false)?;
            Ok::<_, io::Error>(built)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use openraft::CommittedLeaderId;

    use super::*;
    use crate::types::ClientId;

    fn entry(index: u64, ops: Vec<Mutation>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(
                Command {
                    client: ClientId(7),
                    serial: index,
                    expect_revision: None,
                    compare: vec![],
                    ops,
                }
                .into(),
            ),
        }
    }

    fn put(key: &str, value: &str) -> Mutation {
        Mutation::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn open(dir: &Path) -> StateMachine {
        let db = super::super::open_db(&dir.join("store")).unwrap();
        StateMachine::open(db, &dir.join("store"), &dir.join("snapshots")).unwrap()
    }

    fn values(result: ReadResult<KvList>) -> Vec<(String, String)> {
        result
            .value
            .into_iter()
            .map(|(k, e)| {
                (
                    String::from_utf8(k).unwrap(),
                    String::from_utf8(e.value).unwrap(),
                )
            })
            .collect()
    }

    /// Puts and deletes land in three layers (the trees, changes being
    /// written, changes pending); every read must see the model's state.
    #[tokio::test]
    async fn reads_see_the_trees_through_the_changes_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let view = sm.read_view();
        let shared = sm.shared.clone();
        // The simulated write in flight, and how it ends: written, then let go.
        let mut held = None;
        fn finish(shared: &Shared, held: Option<std::sync::MutexGuard<'_, ()>>) {
            if held.is_some() {
                let mut live = shared.live_mut().unwrap();
                if let Some(writing) = live.writing.take() {
                    live.trees.write(&writing).unwrap();
                }
            }
        }
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for index in 1..=300u64 {
            let key = format!("k/{:02}", next() % 40);
            let op = if next() % 3 == 0 {
                model.remove(&key);
                Mutation::Delete {
                    key: key.clone().into_bytes(),
                }
            } else {
                let value = format!("v{index}");
                model.insert(key.clone(), value.clone());
                put(&key, &value)
            };
            sm.apply(vec![entry(index, vec![op])]).await.unwrap();
            match next() % 10 {
                0 => {
                    finish(&shared, held.take());
                    shared.write_behind().unwrap();
                }
                1 => {
                    // A write in flight: hold the writer and leave the changes
                    // in the `writing` layer while more are applied and read.
                    finish(&shared, held.take());
                    let guard = shared.writer.lock().unwrap();
                    let mut live = shared.live_mut().unwrap();
                    let taken = std::mem::take(&mut live.pending);
                    live.writing = Some(Arc::new(taken));
                    drop(live);
                    held = Some(guard);
                }
                _ => {}
            }
            let expected: Vec<(String, String)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(values(view.scan(b"k/", 1000).unwrap()), expected);
            let newest: Vec<_> = expected.iter().rev().take(5).cloned().collect();
            assert_eq!(values(view.scan_newest(b"k/", 5).unwrap()), newest);
            for probe in 0..40 {
                let key = format!("k/{probe:02}");
                let got = view.get(key.as_bytes()).unwrap().value.map(|e| e.value);
                assert_eq!(got, model.get(&key).map(|v| v.clone().into_bytes()));
            }
            assert_eq!(view.revision().unwrap(), index);
        }
        finish(&shared, held.take());
    }

    /// A crash loses what was applied after the last write behind; openraft
    /// re-applies those entries from the log, and the state comes out the same.
    // The writer thread takes this lock, never the awaited apply.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_crash_before_the_write_behind_is_repaired_by_re_applying_the_log() {
        let entries: Vec<_> = (1..=20u64)
            .map(|i| entry(i, vec![put(&format!("k{i:02}"), "v")]))
            .collect();
        let reference = tempfile::tempdir().unwrap();
        let mut all = open(reference.path());
        all.apply(entries.clone()).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = open(dir.path());
            sm.apply(entries[..10].to_vec()).await.unwrap();
            sm.shared.write_behind().unwrap();
            let shared = sm.shared.clone();
            let _writer = shared.writer.lock().unwrap();
            sm.apply(entries[10..].to_vec()).await.unwrap();
            assert_eq!(sm.read_view().get(b"k15").unwrap().revision, 20);
            // The crash: the pending changes never reach sled.
            shared.live_mut().unwrap().pending = Delta::default();
        }
        let mut sm = open(dir.path());
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(10));
        assert!(sm.read_view().get(b"k15").unwrap().value.is_none());
        sm.apply(entries[10..].to_vec()).await.unwrap();
        assert_eq!(
            sm.read_view().digest().unwrap(),
            all.read_view().digest().unwrap()
        );
    }

    /// Applies one put on this (one-worker) runtime while `hold` keeps
    /// something the apply needs on another thread, and checks that a task
    /// on the same worker, a stand-in for a heartbeat, still runs: the
    /// waiting apply let the worker go. `hold` signals once it holds, and
    /// lets go when told.
    async fn check_an_apply_leaves_the_worker(
        hold: impl FnOnce(&Arc<Shared>, std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)
            + Send
            + 'static,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let view = sm.read_view();
        let shared = sm.shared.clone();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || hold(&shared, held_tx, release_rx));
        held_rx.recv().unwrap();
        let apply =
            tokio::spawn(
                async move { sm.apply(vec![entry(1, vec![put("k", "v")])]).await.is_ok() },
            );
        // Spawned after the apply, so it runs only if the waiting apply let
        // the worker go.
        let beats = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let beating = beats.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                beating.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        // A plain sleep: with the worker stuck, the runtime's timers would
        // not fire either, and the test would hang instead of failing.
        let mut waited = 0;
        while beats.load(Ordering::Relaxed) < 3 && waited < 1000 {
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        assert!(
            beats.load(Ordering::Relaxed) >= 3,
            "the heartbeat task never ran while the apply waited"
        );
        assert!(
            !apply.is_finished(),
            "the apply did not wait for the holder"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(apply.await.unwrap());
        heartbeat.abort();
        assert_eq!(
            values(view.scan(b"k", 10).unwrap()),
            vec![("k".into(), "v".into())]
        );
    }

    /// A reader holds the live lock for a long scan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_apply_waiting_for_a_scan_leaves_the_worker_to_other_tasks() {
        check_an_apply_leaves_the_worker(|shared, held, release| {
            let _live = shared.live().unwrap();
            held.send(()).unwrap();
            let _ = release.recv();
        })
        .await;
    }

    /// Another sled database of the process is in a long transaction: sled's
    /// reads everywhere wait for it, the apply's read of the client's session
    /// among them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_apply_waiting_for_a_sled_write_leaves_the_worker_to_other_tasks() {
        let other = tempfile::tempdir().unwrap();
        let db = super::super::open_db(other.path()).unwrap();
        let tree = db.open_tree("other").unwrap();
        check_an_apply_leaves_the_worker(move |_, held, release| {
            let written = sled_writes::write(|| {
                tree.transaction(|t| {
                    t.insert(b"a".as_slice(), b"b".as_slice())?;
                    held.send(()).unwrap();
                    let _ = release.recv();
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
            });
            assert!(written.is_ok());
        })
        .await;
    }

    /// A snapshot reads a frozen view: an entry applied while the file is
    /// written goes on (the live lock is free) and is not in the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_written_while_applies_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let first: Vec<_> = (1..=5u64)
            .map(|i| entry(i, vec![put(&format!("k{i}"), "v")]))
            .collect();
        sm.apply(first).await.unwrap();
        let shared = sm.shared.clone();
        let (meta, _, file) = shared
            .write_behind_with(|frozen| {
                let applied = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current()
                        .block_on(sm.apply(vec![entry(6, vec![put("k6", "v")])]))
                        .is_ok()
                });
                assert!(applied);
                SnapshotBuilder::write(&shared, frozen)
            })
            .unwrap();
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(5));
        assert_eq!(sm.read_view().revision().unwrap(), 6);
        let mut keys = Vec::new();
        read_snapshot(&file.path, |r| {
            if let SnapRecord::Kv { key, .. } = r {
                keys.push(key);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(keys.len(), 5);
        assert!(!keys.contains(&b"k6".to_vec()));
    }

    /// The key filter is rebuilt from the trees when a node opens and when it
    /// installs a snapshot: a put of a key written before either continues the
    /// key's history instead of restarting it.
    #[tokio::test]
    async fn a_key_written_before_a_restart_or_an_install_keeps_its_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = open(dir.path());
            sm.apply(vec![
                entry(1, vec![put("k", "1")]),
                entry(2, vec![put("j", "1")]),
            ])
            .await
            .unwrap();
            sm.shared.write_behind().unwrap();
        }
        let mut sm = open(dir.path());
        sm.apply(vec![entry(3, vec![put("k", "2")])]).await.unwrap();
        let k = sm.read_view().get(b"k").unwrap().value.unwrap();
        assert_eq!((k.create_revision, k.mod_revision, k.version), (1, 3, 2));

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut installed = open(other.path());
        let target = installed.begin_receiving_snapshot().await.unwrap();
        fs::copy(&snap.snapshot.path, &target.path).unwrap();
        installed
            .install_snapshot(&snap.meta, target)
            .await
            .unwrap();
        installed
            .apply(vec![entry(4, vec![put("j", "2")])])
            .await
            .unwrap();
        let j = installed.read_view().get(b"j").unwrap().value.unwrap();
        assert_eq!((j.create_revision, j.mod_revision, j.version), (2, 4, 2));
    }

    /// Updates do not grow the key filter: it holds keys, not puts.
    #[tokio::test]
    async fn the_key_filter_grows_with_the_keys_not_the_puts() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        for index in 1..=200u64 {
            let key = format!("k{}", index % 5);
            sm.apply(vec![entry(index, vec![put(&key, "v")])])
                .await
                .unwrap();
        }
        assert!(sm.shared.live().unwrap().known.len() <= 5);
        let k = sm.read_view().get(b"k1").unwrap().value.unwrap();
        assert_eq!(k.version, 40);
    }

    /// A clean stop writes what is pending, so the next start re-applies nothing.
    // The writer thread takes this lock, never the awaited apply.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_clean_stop_leaves_the_trees_current() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = open(dir.path());
            let shared = sm.shared.clone();
            let writer = shared.writer.lock().unwrap();
            sm.apply(vec![entry(1, vec![put("a", "1")])]).await.unwrap();
            assert!(!shared.live().unwrap().pending.is_empty());
            drop(writer);
            // The last handle goes: the state is written on the way out.
            drop(sm);
        }
        let mut sm = open(dir.path());
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
    }

    #[tokio::test]
    async fn a_reader_waiting_for_a_revision_wakes_when_it_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let view = sm.read_view();
        let long = Duration::from_secs(30);
        // Applied already (the empty store is at revision 0): at once.
        assert!(view.applied(0, long).await);
        let waiting = {
            let view = view.clone();
            tokio::spawn(async move { view.applied(2, long).await })
        };
        sm.apply(vec![entry(1, vec![put("a", "1")])]).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "revision 1 is not 2");
        sm.apply(vec![entry(2, vec![put("b", "2")])]).await.unwrap();
        assert!(waiting.await.unwrap());
        // The value is readable once the wait is over.
        assert!(view.get(b"b").unwrap().value.is_some());
        // A revision never applied: the limit ends the wait, and says so.
        assert!(!view.applied(99, Duration::from_millis(20)).await);
        // A reopened store starts from the revision on disk.
        drop(sm);
        drop(view);
        let sm = open(dir.path());
        assert!(sm.read_view().applied(2, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_reader_waiting_for_a_log_index_wakes_when_it_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let view = sm.read_view();
        let long = Duration::from_secs(30);
        assert!(view.applied_index(0, long).await);
        let waiting = {
            let view = view.clone();
            tokio::spawn(async move { view.applied_index(2, long).await })
        };
        sm.apply(vec![entry(1, vec![put("a", "1")])]).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "index 1 is not 2");
        // A blank entry (a new leader's) moves the index, not the revision:
        // a read index may point at one.
        let blank = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 2),
            payload: EntryPayload::Blank,
        };
        sm.apply(vec![blank]).await.unwrap();
        assert!(waiting.await.unwrap());
        assert!(
            !view.applied(2, Duration::from_millis(20)).await,
            "no second write"
        );
        assert!(!view.applied_index(3, Duration::from_millis(20)).await);
        // A reopened store starts from the index on disk.
        drop(sm);
        drop(view);
        let sm = open(dir.path());
        assert!(sm.read_view().applied_index(2, Duration::ZERO).await);
        assert!(!sm.read_view().applied_index(3, Duration::ZERO).await);
    }
}
