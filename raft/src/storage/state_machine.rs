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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::broadcast;

use super::engine::sync_sled;
use super::snapshot::{read_snapshot, sync_dir_of, SnapRecord, SnapshotFile, SnapshotWriter};
use super::{codec_io, io_err, sled_io};
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

/// What one applied command changed; members use it to recompute only what moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNotice {
    /// The store revision after the change.
    pub revision: u64,
    /// The log index of the entry.
    pub log_index: u64,
    /// Keys written or deleted.
    pub keys: Vec<Vec<u8>>,
}

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
}

/// State shared by the state machine, its snapshot builder and readers.
struct Shared {
    db: sled::Db,
    meta: sled::Tree,
    /// The live generation. A std lock, not a tokio one: it is never held across an
    /// await, and apply takes it exclusively so readers see whole commands only.
    live: RwLock<Generation>,
    data_file: fs::File,
    snapshot_dir: PathBuf,
    notices: broadcast::Sender<ChangeNotice>,
}

impl Shared {
    fn live(&self) -> io::Result<std::sync::RwLockReadGuard<'_, Generation>> {
        self.live
            .read()
            .map_err(|_| io::Error::other("state lock poisoned"))
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
        let live = self.shared.live()?;
        let value = match live.kv.get(key).map_err(sled_io)? {
            Some(bytes) => Some(codec::decode(&bytes).map_err(codec_io)?),
            None => None,
        };
        Ok(ReadResult {
            value,
            revision: live.revision()?,
            applied_index: live.last_applied()?.map(|l| l.index),
        })
    }

    /// Up to `limit` keys starting with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8], limit: usize) -> io::Result<ReadResult<KvList>> {
        let live = self.shared.live()?;
        let items = live.kv.scan_prefix(prefix).take(limit);
        read_all(&live, items)
    }

    /// Up to `limit` keys starting with `prefix`, last key first (the newest
    /// of time-ordered keys, such as audit events, without reading the rest).
    pub fn scan_newest(&self, prefix: &[u8], limit: usize) -> io::Result<ReadResult<KvList>> {
        let live = self.shared.live()?;
        let items = live.kv.scan_prefix(prefix).rev().take(limit);
        read_all(&live, items)
    }

    /// Writes the whole store, as of one point of history, to `path` in the
    /// checksummed snapshot format (an operator's backup; not recorded as a Raft
    /// snapshot). Returns the revision it reflects.
    pub fn dump(&self, path: &Path) -> io::Result<u64> {
        let live = self.shared.live()?;
        let last_applied = live.last_applied()?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: live.membership()?,
            snapshot_id: format!("backup-{}", last_applied.map(|l| l.index).unwrap_or(0)),
        };
        write_state(&live, &meta, path)?;
        live.revision()
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
        self.shared.live()?.revision()
    }

    /// A stream of change notices, one per applied command.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.shared.notices.subscribe()
    }

    /// A digest of the whole store (keys, values, revisions, sessions), so tests
    /// and drills can check that replicas are identical.
    pub fn digest(&self) -> io::Result<u64> {
        let live = self.shared.live()?;
        let mut h = crc32fast::Hasher::new();
        let mut h2 = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
        for tree in [&live.kv, &live.sessions] {
            for item in tree.iter() {
                let (k, v) = item.map_err(sled_io)?;
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
        let live = Generation::open(&db, gen_id)?;
        let data_file = fs::File::open(db_dir.join("db"))?;
        let (notices, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            db,
            meta,
            live: RwLock::new(live),
            data_file,
            snapshot_dir: snapshot_dir.to_path_buf(),
            notices,
        });
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
        let next_id = shared.live()?.id + 1;
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
                next.kv
                    .apply_batch(std::mem::take(&mut kv))
                    .map_err(sled_io)?;
                next.sessions
                    .apply_batch(std::mem::take(&mut sessions))
                    .map_err(sled_io)?;
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
        next.kv.apply_batch(kv).map_err(sled_io)?;
        next.sessions.apply_batch(sessions).map_err(sled_io)?;
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
        next.state.apply_batch(state).map_err(sled_io)?;

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
        shared.meta.apply_batch(switch).map_err(sled_io)?;
        shared.sync()?;
        let old = {
            let mut live = shared
                .live
                .write()
                .map_err(|_| io::Error::other("state lock poisoned"))?;
            std::mem::replace(&mut *live, next)
        };
        for tree in [&old.kv, &old.sessions, &old.state] {
            shared.db.drop_tree(tree.name()).map_err(sled_io)?;
        }
        self.remove_stray_files(false)?;
        let _ = shared.notices.send(ChangeNotice {
            revision,
            log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            keys: Vec::new(),
        });
        Ok(())
    }
}

/// Decodes scanned entries, stamped with the generation's revision.
fn read_all(
    live: &Generation,
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> io::Result<ReadResult<KvList>> {
    let mut out = Vec::new();
    for item in items {
        let (k, v) = item.map_err(sled_io)?;
        out.push((k.to_vec(), codec::decode(&v).map_err(codec_io)?));
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

/// Applies one command inside the apply transaction. Pure function of the state:
/// every replica computes the same answer.
fn apply_command(
    kv: &TransactionalTree,
    sessions: &TransactionalTree,
    revision: &mut u64,
    cmd: &Command,
    changed: &mut Vec<Vec<u8>>,
) -> Result<CommandResponse, ConflictableTransactionError<io::Error>> {
    let abort = |e: io::Error| ConflictableTransactionError::Abort(e);
    let session_key = cmd.client.0.to_be_bytes();
    if let Some(bytes) = sessions.get(session_key)? {
        let (serial, response): (u64, CommandResponse) =
            codec::decode(&bytes).map_err(|e| abort(codec_io(e)))?;
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
    let response = evaluate(kv, revision, cmd, changed)?;
    sessions.insert(
        &session_key,
        codec::encode(&(cmd.serial, &response)).map_err(|e| abort(codec_io(e)))?,
    )?;
    Ok(response)
}

fn evaluate(
    kv: &TransactionalTree,
    revision: &mut u64,
    cmd: &Command,
    changed: &mut Vec<Vec<u8>>,
) -> Result<CommandResponse, ConflictableTransactionError<io::Error>> {
    let abort = |e: io::Error| ConflictableTransactionError::Abort(e);
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
        let current = match kv.get(&c.key)? {
            Some(bytes) => Some(
                codec::decode::<KvEntry>(&bytes)
                    .map_err(|e| abort(codec_io(e)))?
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
                let old = match kv.get(key)? {
                    Some(bytes) => {
                        Some(codec::decode::<KvEntry>(&bytes).map_err(|e| abort(codec_io(e)))?)
                    }
                    None => None,
                };
                let entry = KvEntry {
                    value: value.clone(),
                    create_revision: old.as_ref().map_or(next, |o| o.create_revision),
                    mod_revision: next,
                    version: old.as_ref().map_or(1, |o| o.version + 1),
                };
                kv.insert(
                    key.as_slice(),
                    codec::encode(&entry).map_err(|e| abort(codec_io(e)))?,
                )?;
            }
            Mutation::Delete { key } => {
                kv.remove(key.as_slice())?;
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

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let live = self
            .shared
            .live()
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        let applied = live
            .last_applied()
            .map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        let membership = live.membership().map_err(|e| sm_err(ErrorVerb::Read, &e))?;
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let live = shared
            .live
            .write()
            .map_err(|_| sm_err(ErrorVerb::Write, &io::Error::other("state lock poisoned")))?;
        let result =
            (&live.kv, &live.sessions, &live.state).transaction(|(kv, sessions, state)| {
                let abort = |e: io::Error| ConflictableTransactionError::Abort(e);
                let mut revision: u64 = match state.get(STATE_REVISION)? {
                    Some(b) => codec::decode(&b).map_err(|e| abort(codec_io(e)))?,
                    None => 0,
                };
                let mut responses = Vec::with_capacity(entries.len());
                let mut notices = Vec::new();
                let mut membership = None;
                for entry in &entries {
                    match &entry.payload {
                        EntryPayload::Blank => responses.push(CommandResponse {
                            revision,
                            outcome: Outcome::Internal,
                        }),
                        EntryPayload::Membership(m) => {
                            membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                            responses.push(CommandResponse {
                                revision,
                                outcome: Outcome::Internal,
                            });
                        }
                        EntryPayload::Normal(cmd) => {
                            let mut changed = Vec::new();
                            let before = revision;
                            responses.push(apply_command(
                                kv,
                                sessions,
                                &mut revision,
                                cmd,
                                &mut changed,
                            )?);
                            if revision != before {
                                notices.push(ChangeNotice {
                                    revision,
                                    log_index: entry.log_id.index,
                                    keys: changed,
                                });
                            }
                        }
                    }
                }
                let last = entries.last().map(|e| e.log_id);
                state.insert(
                    STATE_LAST_APPLIED,
                    codec::encode(&last).map_err(|e| abort(codec_io(e)))?,
                )?;
                state.insert(
                    STATE_REVISION,
                    codec::encode(&revision).map_err(|e| abort(codec_io(e)))?,
                )?;
                if let Some(m) = &membership {
                    state.insert(
                        STATE_MEMBERSHIP,
                        codec::encode(m).map_err(|e| abort(codec_io(e)))?,
                    )?;
                }
                Ok((responses, notices))
            });
        drop(live);
        let (responses, notices) = result.map_err(|e| {
            let e = match e {
                sled::transaction::TransactionError::Abort(e) => e,
                sled::transaction::TransactionError::Storage(e) => sled_io(e),
            };
            sm_err(ErrorVerb::Write, &e)
        })?;
        for n in notices {
            // Nobody listening is fine: members subscribe when they start.
            let _ = shared.notices.send(n);
        }
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
/// one format for Raft snapshots and operators' backups. The caller holds the
/// read lock, so the file is one point of history.
fn write_state(
    live: &Generation,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    path: &Path,
) -> io::Result<SnapshotFile> {
    let mut w = SnapshotWriter::create(path)?;
    w.write(&SnapRecord::Header {
        meta: meta.clone(),
        revision: live.revision()?,
    })?;
    for item in live.kv.iter() {
        let (k, v) = item.map_err(sled_io)?;
        w.write(&SnapRecord::Kv {
            key: k.to_vec(),
            entry: codec::decode(&v).map_err(codec_io)?,
        })?;
    }
    for item in live.sessions.iter() {
        let (k, v) = item.map_err(sled_io)?;
        let client: [u8; 16] = k.as_ref().try_into().map_err(|_| {
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

/// Builds a snapshot of the live state. It is created on the state machine's own
/// task, so no entry is applied while it reads (the apply lock is held shared).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl SnapshotBuilder {
    fn build(shared: &Shared) -> io::Result<(SnapshotMeta<NodeId, NodeInfo>, SnapshotFile)> {
        let live = shared.live()?;
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
        let path = shared.snapshot_dir.join(&file_name);
        let file = write_state(&live, &meta, &path)?;
        drop(live);
        // The state the snapshot covers must be durable before openraft purges the
        // log behind it, and so must the pointer to the snapshot.
        // An install may have finished while we were writing; never point back
        // to an older snapshot than the one recorded.
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
