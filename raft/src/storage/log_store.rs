//! openraft's `RaftLogStorage` over a [`LogEngine`].
//!
//! Durability rules (docs/decisions/0002-sled-durability.md):
//! - an appended entry is reported flushed to openraft only after the engine has
//!   synced it (flush + fsync): the callback fires from the flusher thread;
//! - the vote is synced before `save_vote` returns;
//! - truncation is synced before returning, so a conflicting suffix cannot come
//!   back after a crash and be mistaken for replicated data.
//!
//! Group commit: `append` only writes; one dedicated flusher thread takes every
//! callback queued so far, syncs once, then completes them in order. With many
//! concurrent clients one fsync covers many entries.
//!
//! A leader's own appends are the exception (decision 0027): openraft 0.9's
//! core waits for every append's callback before it replicates, so a leader
//! that waited for its fsync sent the entry only after it, and the follower's
//! fsync came after that. The callback of an append of entries this node
//! created as the leader of its saved vote fires at once; the sync still
//! follows on the flusher, and [`Durable`] holds back what must wait for it
//! (the follower acknowledgements the leader counts, the applies, the
//! committed hint). A follower's appends keep the rule above.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    Vote,
};
use prometheus_client::metrics::histogram::Histogram;

use super::durable::Durable;
use super::engine::LogEngine;
use super::{codec_io, io_err};
use crate::codec;
use crate::entry_format::{decode_entry, encode_entry};
use crate::types::{NodeId, TypeConfig};

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "purged";

/// The Raft log of one node.
///
/// Cheap to clone: clones share the engine and the flusher, which is how
/// openraft's log reader and the status report see the same log.
pub struct LogStore<E: LogEngine> {
    engine: Arc<E>,
    /// Callbacks waiting for the next sync; the thread ends when every clone is dropped.
    flush_tx: mpsc::Sender<Flush>,
    /// The last committed log id openraft told us about, for status reports.
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    /// How long each sync took, for the node's metrics.
    fsync: Histogram,
    /// How far the log is on disk.
    durable: Durable,
    /// What the flusher needs to move `durable`.
    extent: Arc<Extent>,
    /// This node's id, once the node says it (only then are a leader's own
    /// appends reported flushed early; the conformance suite never says it).
    me: Arc<OnceLock<NodeId>>,
    /// The vote last saved: whose leadership the node's appends belong to.
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
}

/// A message to the flusher thread.
enum Flush {
    /// Sync, then tell openraft.
    Notify(LogFlushed<TypeConfig>),
    /// Sync: openraft was told already (a leader's own append).
    Sync,
}

/// The log's written extent, as the flusher reads it before a sync.
#[derive(Default)]
struct Extent {
    /// The last index written (not yet necessarily synced).
    appended: AtomicU64,
    /// Bumped by every truncation, under this lock, with `durable` lowered; a
    /// sync that began before one does not raise `durable` (what it covered
    /// may have been cut and written again).
    truncations: Mutex<u64>,
}

impl<E: LogEngine> Clone for LogStore<E> {
    fn clone(&self) -> Self {
        LogStore {
            engine: self.engine.clone(),
            flush_tx: self.flush_tx.clone(),
            committed: self.committed.clone(),
            fsync: self.fsync.clone(),
            durable: self.durable.clone(),
            extent: self.extent.clone(),
            me: self.me.clone(),
            vote: self.vote.clone(),
        }
    }
}

impl<E: LogEngine> LogStore<E> {
    /// Wraps `engine` and starts its flusher thread.
    pub fn new(engine: E) -> io::Result<Self> {
        let engine = Arc::new(engine);
        // An engine may keep records at or below the purge point after a
        // restart (a segment is deleted only when all of it is purged).
        if let Some(bytes) = engine.get_meta(META_PURGED)? {
            let purged: LogId<NodeId> = codec::decode(&bytes).map_err(codec_io)?;
            engine.purge_upto(purged.index)?;
        }
        // Everything found at start is on disk once synced (a killed process's
        // writes may be only in the page cache): a record is read back whole,
        // checksum and all, or the log ends before it.
        engine.sync()?;
        // Purged entries are in the snapshot: durable too.
        let purged = match engine.get_meta(META_PURGED)? {
            Some(bytes) => {
                codec::decode::<LogId<NodeId>>(&bytes)
                    .map_err(codec_io)?
                    .index
            }
            None => 0,
        };
        let last = engine.last()?.map_or(0, |(index, _)| index).max(purged);
        let durable = Durable::new(last);
        let extent = Arc::new(Extent {
            appended: AtomicU64::new(last),
            truncations: Mutex::new(0),
        });
        let (flush_tx, flush_rx) = mpsc::channel::<Flush>();
        let fsync = crate::instruments::fsync_histogram();
        let flusher = Flusher {
            engine: engine.clone(),
            fsync: fsync.clone(),
            durable: durable.clone(),
            extent: extent.clone(),
        };
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher.run(flush_rx))?;
        let vote = match engine.get_meta(META_VOTE)? {
            Some(bytes) => Some(codec::decode(&bytes).map_err(codec_io)?),
            None => None,
        };
        let committed = match engine.get_meta(META_COMMITTED)? {
            Some(bytes) => codec::decode(&bytes).map_err(codec_io)?,
            None => None,
        };
        Ok(LogStore {
            engine,
            flush_tx,
            committed: Arc::new(Mutex::new(committed)),
            fsync,
            durable,
            extent,
            me: Arc::new(OnceLock::new()),
            vote: Arc::new(Mutex::new(vote)),
        })
    }

    /// How far this log is on disk.
    pub(crate) fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// The vote a restarting node resumes with. openraft 0.9 makes a node
    /// whose saved vote is its own committed one leader again at start, in the
    /// same term and without a new first entry. But a leader that reports its
    /// appends flushed early (decision 0027) may have sent followers entries
    /// its own disk lost (a power cut, a sync that failed and dropped the
    /// pages): resuming in that term, it would write different entries under
    /// the same log ids, and a follower that kept the old ones would take the
    /// new ones for them. So such a vote comes back uncommitted: the node must
    /// win a new term, whose entries conflict with, and truncate, any stale
    /// ones. The vote on disk is unchanged.
    fn restarted_vote(&self, vote: Vote<NodeId>) -> Vote<NodeId> {
        match self.me.get() {
            Some(me) if vote.is_committed() && vote.leader_id().voted_for() == Some(*me) => {
                Vote::new(vote.leader_id().get_term(), *me)
            }
            _ => vote,
        }
    }

    /// Whether `records` are this node's own, appended as the leader of the
    /// vote it saved last (only such a leader creates entries of that leader
    /// id; a follower's appends carry another node's, or an older term's).
    fn own_leader_append(&self, ids: &[LogId<NodeId>]) -> bool {
        let Some(me) = self.me.get() else {
            return false;
        };
        let Ok(vote) = self.vote.lock() else {
            return false;
        };
        let Some(vote) = vote.as_ref() else {
            return false;
        };
        let leader = vote.leader_id();
        leader.voted_for() == Some(*me)
            && !ids.is_empty()
            && ids.iter().all(|id| id.leader_id == *leader)
    }

    /// The term of the vote saved on disk (0 if none or unreadable): what a
    /// restarted node had already counted before it stopped.
    pub(crate) fn saved_vote_term(&self) -> u64 {
        self.read_meta::<Vote<NodeId>>(META_VOTE)
            .ok()
            .flatten()
            .map_or(0, |v| v.leader_id().get_term())
    }

    /// The durations of this log's syncs (the node registers it as a metric).
    pub(crate) fn fsync_seconds(&self) -> Histogram {
        self.fsync.clone()
    }

    /// The last committed log index known to this node (for status reports).
    pub fn committed_index(&self) -> Option<u64> {
        self.committed
            .lock()
            .map(|c| c.map(|id| id.index))
            .unwrap_or(None)
    }

    /// The id of the last entry in the log (or the last purged one): what a
    /// pre-vote compares. Read from the engine, so an entry being appended
    /// right now may not count yet; the real vote, in openraft, decides.
    pub fn last_log_id(&self) -> io::Result<Option<LogId<NodeId>>> {
        match self.engine.last()? {
            Some((_, bytes)) => {
                let entry = decode_entry(&bytes).map_err(codec_io)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => self.read_meta(META_PURGED),
        }
    }

    /// Runs a blocking engine call off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&E) -> io::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.engine.get_meta(key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(codec_io)?)),
            None => Ok(None),
        }
    }
}

impl LogStore<super::wal::WalEngine> {
    /// Names the node this log belongs to: from now on, entries it appends as
    /// the leader of its saved vote are reported flushed before their sync
    /// (see the module's note), and its own committed vote is read back
    /// uncommitted at start ([`LogStore::restarted_vote`]). Whoever calls this
    /// must hold back, with [`LogStore::durable`], what may not run ahead of
    /// the disk. Only for the segment log, whose writes are in the kernel's
    /// page cache once `append` returns (sled keeps them in its own memory
    /// until a flush, which a killed process loses).
    pub(crate) fn report_own_appends_early(&self, me: NodeId) {
        let _ = self.me.set(me);
    }
}

/// Copies a whole log, records and metadata, from one engine to another and
/// makes the copy durable; returns how many records moved.
pub fn copy_log<A: LogEngine, B: LogEngine>(from: &A, to: &B) -> io::Result<usize> {
    for (key, value) in from.meta_cells()? {
        to.put_meta(&key, &value)?;
    }
    let records = from.range(0, None)?;
    for chunk in records.chunks(1024) {
        to.append(chunk)?;
    }
    to.sync()?;
    Ok(records.len())
}

/// The flusher thread's state.
struct Flusher<E: LogEngine> {
    engine: Arc<E>,
    fsync: Histogram,
    durable: Durable,
    extent: Arc<Extent>,
}

impl<E: LogEngine> Flusher<E> {
    fn run(self, rx: mpsc::Receiver<Flush>) {
        while let Ok(first) = rx.recv() {
            let mut waiting = vec![first];
            while let Ok(more) = rx.try_recv() {
                waiting.push(more);
            }
            // Read before the sync: every record written by now is covered.
            let truncations = self.truncations();
            let upto = self.extent.appended.load(Ordering::SeqCst);
            let started = std::time::Instant::now();
            let result = self.engine.sync();
            self.fsync.observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(()) => {
                    if let Ok(t) = self.extent.truncations.lock() {
                        if *t == truncations {
                            self.durable.raise(upto);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "raft log sync failed; entries are not acknowledged");
                    self.durable.fail();
                }
            }
            for flush in waiting {
                if let Flush::Notify(callback) = flush {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    callback.log_io_completed(r);
                }
            }
        }
    }

    fn truncations(&self) -> u64 {
        self.extent
            .truncations
            .lock()
            .map(|t| *t)
            .unwrap_or(u64::MAX)
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

fn logs_err(verb: ErrorVerb, e: &io::Error) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, verb, e)
}

impl<E: LogEngine> RaftLogReader<TypeConfig> for LogStore<E> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = bounds(&range);
        let records = self
            .engine
            .range(start, end)
            .map_err(|e| logs_err(ErrorVerb::Read, &e))?;
        let mut entries = Vec::with_capacity(records.len());
        for (_, bytes) in records {
            entries
                .push(decode_entry(&bytes).map_err(|e| logs_err(ErrorVerb::Read, &codec_io(e)))?);
        }
        Ok(entries)
    }
}

impl<E: LogEngine> RaftLogStorage<TypeConfig> for LogStore<E> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self
            .read_meta(META_PURGED)
            .map_err(|e| logs_err(ErrorVerb::Read, &e))?;
        let last = match self
            .engine
            .last()
            .map_err(|e| logs_err(ErrorVerb::Read, &e))?
        {
            Some((_, bytes)) => {
                let entry =
                    decode_entry(&bytes).map_err(|e| logs_err(ErrorVerb::Read, &codec_io(e)))?;
                Some(*entry.get_log_id())
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = codec::encode(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &codec_io(e)))?;
        self.blocking(move |engine| {
            engine.put_meta(META_VOTE, &bytes)?;
            engine.sync()
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        if let Ok(mut saved) = self.vote.lock() {
            *saved = Some(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote: Option<Vote<NodeId>> = self
            .read_meta(META_VOTE)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &e))?;
        Ok(vote.map(|v| self.restarted_vote(v)))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: openraft only uses it to re-apply faster after a restart, and
        // a stale value is always safe (the leader re-sends the commit index).
        // Never past the durable log, though: a leader alone in its quorum
        // commits its own appends before their sync (decision 0027), and a
        // hint past the log's end after a crash would name entries not there.
        if let Ok(mut c) = self.committed.lock() {
            *c = committed;
        }
        if committed.is_some_and(|id| id.index > self.durable.upto()) {
            return Ok(());
        }
        let bytes =
            codec::encode(&committed).map_err(|e| logs_err(ErrorVerb::Write, &codec_io(e)))?;
        self.engine
            .put_hint(META_COMMITTED, &bytes)
            .map_err(|e| logs_err(ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(META_COMMITTED)
            .map_err(|e| logs_err(ErrorVerb::Read, &e))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut ids = Vec::new();
        for entry in entries {
            let bytes =
                encode_entry(&entry).map_err(|e| logs_err(ErrorVerb::Write, &codec_io(e)))?;
            ids.push(*entry.get_log_id());
            records.push((entry.get_log_id().index, bytes));
        }
        self.engine
            .append(&records)
            .map_err(|e| logs_err(ErrorVerb::Write, &e))?;
        if let Some(last) = ids.last() {
            self.extent.appended.store(last.index, Ordering::SeqCst);
        }
        // Durable later, on the flusher thread; openraft waits for the
        // callback, except for a leader's own entries (see the module's note).
        let flush = if self.own_leader_append(&ids) {
            callback.log_io_completed(Ok(()));
            Flush::Sync
        } else {
            Flush::Notify(callback)
        };
        self.flush_tx.send(flush).map_err(|_| {
            logs_err(
                ErrorVerb::Write,
                &io::Error::other("the log flusher thread has stopped"),
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index;
        let extent = self.extent.clone();
        let durable = self.durable.clone();
        self.blocking(move |engine| {
            engine.truncate_from(from)?;
            engine.sync()?;
            // Indexes from `from` on will be new entries, not yet on disk.
            let mut t = extent
                .truncations
                .lock()
                .map_err(|_| io::Error::other("log extent lock poisoned"))?;
            *t += 1;
            extent
                .appended
                .store(from.saturating_sub(1), Ordering::SeqCst);
            durable.lower(from.saturating_sub(1));
            Ok(())
        })
        .await
        .map_err(|e| logs_err(ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first: after a crash the log may hold entries at or
        // below it (harmless), never a gap above it.
        let bytes =
            codec::encode(&log_id).map_err(|e| logs_err(ErrorVerb::Delete, &codec_io(e)))?;
        let upto = log_id.index;
        self.blocking(move |engine| {
            engine.put_meta(META_PURGED, &bytes)?;
            engine.purge_upto(upto)
        })
        .await
        .map_err(|e| logs_err(ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::engine::DiskFaults;
    use crate::storage::wal::WalEngine;

    fn open(dir: &std::path::Path) -> LogStore<WalEngine> {
        let log = LogStore::new(WalEngine::open(dir, DiskFaults::default()).expect("engine"))
            .expect("log store");
        log.report_own_appends_early(1);
        log
    }

    /// Decision 0027: a leader that reported appends flushed before their
    /// sync may have lost them in a crash, so it must not resume its term.
    #[tokio::test]
    async fn a_restarted_leader_resumes_its_own_vote_uncommitted_and_others_as_saved() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut log = open(dir.path());
            log.save_vote(&Vote::new_committed(5, 1))
                .await
                .expect("save");
        }
        let mut log = open(dir.path());
        let vote = log.read_vote().await.expect("read").expect("a vote");
        assert_eq!(
            vote,
            Vote::new(5, 1),
            "its own leadership comes back uncommitted"
        );
        assert!(!vote.is_committed());

        log.save_vote(&Vote::new_committed(6, 2))
            .await
            .expect("save");
        drop(log);
        let mut log = open(dir.path());
        let vote = log.read_vote().await.expect("read").expect("a vote");
        assert_eq!(
            vote,
            Vote::new_committed(6, 2),
            "another leader's vote is kept"
        );
    }
}
