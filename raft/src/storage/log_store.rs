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

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    Vote,
};
use prometheus_client::metrics::histogram::Histogram;

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
    flush_tx: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// The last committed log id openraft told us about, for status reports.
    committed: Arc<Mutex<Option<LogId<NodeId>>>>,
    /// How long each sync took, for the node's metrics.
    fsync: Histogram,
}

impl<E: LogEngine> Clone for LogStore<E> {
    fn clone(&self) -> Self {
        LogStore {
            engine: self.engine.clone(),
            flush_tx: self.flush_tx.clone(),
            committed: self.committed.clone(),
            fsync: self.fsync.clone(),
        }
    }
}

impl<E: LogEngine> LogStore<E> {
    /// Wraps `engine` and starts its flusher thread.
    pub fn new(engine: E) -> io::Result<Self> {
        let engine = Arc::new(engine);
        let (flush_tx, flush_rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flusher = engine.clone();
        let fsync = crate::instruments::fsync_histogram();
        let timed = fsync.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&*flusher, flush_rx, &timed))?;
        // An engine may keep records at or below the purge point after a
        // restart (a segment is deleted only when all of it is purged).
        if let Some(bytes) = engine.get_meta(META_PURGED)? {
            let purged: LogId<NodeId> = codec::decode(&bytes).map_err(codec_io)?;
            engine.purge_upto(purged.index)?;
        }
        let committed = match engine.get_meta(META_COMMITTED)? {
            Some(bytes) => codec::decode(&bytes).map_err(codec_io)?,
            None => None,
        };
        Ok(LogStore {
            engine,
            flush_tx,
            committed: Arc::new(Mutex::new(committed)),
            fsync,
        })
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

fn flush_loop<E: LogEngine>(
    engine: &E,
    rx: mpsc::Receiver<LogFlushed<TypeConfig>>,
    fsync: &Histogram,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let started = std::time::Instant::now();
        let result = engine.sync();
        fsync.observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log sync failed; entries are not acknowledged");
        }
        for callback in waiting {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(r);
        }
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
        .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(META_VOTE)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: openraft only uses it to re-apply faster after a restart, and
        // a stale value is always safe (the leader re-sends the commit index).
        let bytes =
            codec::encode(&committed).map_err(|e| logs_err(ErrorVerb::Write, &codec_io(e)))?;
        self.engine
            .put_hint(META_COMMITTED, &bytes)
            .map_err(|e| logs_err(ErrorVerb::Write, &e))?;
        if let Ok(mut c) = self.committed.lock() {
            *c = committed;
        }
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
        for entry in entries {
            let bytes =
                encode_entry(&entry).map_err(|e| logs_err(ErrorVerb::Write, &codec_io(e)))?;
            records.push((entry.get_log_id().index, bytes));
        }
        self.engine
            .append(&records)
            .map_err(|e| logs_err(ErrorVerb::Write, &e))?;
        // Durable later, on the flusher thread; openraft waits for the callback.
        self.flush_tx.send(callback).map_err(|_| {
            logs_err(
                ErrorVerb::Write,
                &io::Error::other("the log flusher thread has stopped"),
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index;
        self.blocking(move |engine| {
            engine.truncate_from(from)?;
            engine.sync()
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
