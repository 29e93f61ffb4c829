//! The disk under the Raft log, behind a trait.
//!
//! sled 0.34 is unmaintained and its `flush` ends in `sync_file_range`, which does
//! not persist file metadata (a grown file's size). Keeping the log behind
//! [`LogEngine`] means crash tests can push the log onto another engine without
//! touching the Raft glue, and it is the seam where a failing disk can be injected.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::sled_io;

/// Ordered, index-addressed log records plus a few metadata cells.
///
/// Writes may sit in memory until [`LogEngine::sync`], which makes everything
/// written before it durable; the log store never acknowledges before that.
pub trait LogEngine: Send + Sync + 'static {
    /// Writes records `(index, bytes)`; they are not durable until `sync`.
    fn append(&self, records: &[(u64, Vec<u8>)]) -> io::Result<()>;
    /// Makes every earlier write durable (data and file metadata).
    fn sync(&self) -> io::Result<()>;
    /// Records with `start <= index < end` (`end` unbounded when `None`), in order.
    fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<(u64, Vec<u8>)>>;
    /// The record with the highest index.
    fn last(&self) -> io::Result<Option<(u64, Vec<u8>)>>;
    /// Removes every record with `index >= from`.
    fn truncate_from(&self, from: u64) -> io::Result<()>;
    /// Removes every record with `index <= upto`.
    fn purge_upto(&self, upto: u64) -> io::Result<()>;
    /// Writes a metadata cell (not durable until `sync`).
    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()>;
    /// Writes a metadata cell that may be lost in a crash (a hint that speeds
    /// up recovery, such as the commit index); a sync need not persist it.
    fn put_hint(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.put_meta(key, value)
    }
    /// Every metadata cell, to move a log to another engine.
    fn meta_cells(&self) -> io::Result<Vec<(String, Vec<u8>)>>;
    /// Reads a metadata cell.
    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
}

/// A switch that makes a node's disk fail every write, for fault-injection tests.
///
/// Shared between the engine and the test that flips it; a failed write makes
/// openraft stop the node rather than acknowledge something that is not on disk.
#[derive(Debug, Clone, Default)]
pub struct DiskFaults {
    failing: Arc<AtomicBool>,
    /// Only syncs fail: writes reach the page cache but never the disk (the
    /// case where a leader's early-reported append must not be counted,
    /// decision 0027).
    syncs_failing: Arc<AtomicBool>,
    /// Milliseconds every sync of the Raft log takes first (a slow disk).
    sync_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// What a power cut would leave of the log (see [`DiskFaults::lose_unsynced`]).
    power: Arc<PowerCut>,
}

/// The Raft log's files as a power cut would leave them: kill -9 keeps what
/// a process wrote in the page cache, so only this model can drop what was
/// written and never synced, the case a restarted leader must survive
/// (decision 0027).
#[derive(Debug, Default)]
struct PowerCut {
    /// Off in production: nothing is recorded.
    tracking: AtomicBool,
    /// Also kept in [`POWER_CUT_MODEL`] beside the log, for a harness that
    /// kills the process (the chaos suite).
    on_disk: AtomicBool,
    /// Per segment file written while tracking: how many of its first bytes
    /// a sync has made durable. A sync racing a truncation may leave a count
    /// too high (the model then keeps bytes a real cut might drop), never
    /// one too low.
    durable: Mutex<BTreeMap<PathBuf, u64>>,
    /// What the file says: never less than what is durable (it is written
    /// before each sync with what the sync will cover), so a harness that
    /// cuts the power by it never drops a synced byte.
    at_most_lost: Mutex<BTreeMap<PathBuf, u64>>,
}

/// How a note changes what a power-cut model counts durable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Note {
    /// A sync covered this much: the count only grows, since two syncs (the
    /// flusher's, a vote's) may finish in either order, and a late note of
    /// the older one must not take back what the newer made durable.
    Synced,
    /// The file was made, found or cut here, and that is on disk: the count
    /// is set.
    Reset,
}

fn set(model: &mut BTreeMap<PathBuf, u64>, path: &Path, len: u64, how: Note) {
    let count = model.entry(path.to_path_buf()).or_insert(len);
    *count = match how {
        Note::Synced => (*count).max(len),
        Note::Reset => len,
    };
}

/// The file, in the log's directory, that says how much of each segment a
/// power cut would keep (see [`DiskFaults::track_power_cuts_on_disk`]).
pub const POWER_CUT_MODEL: &str = "power-cut.model";

/// The environment variable that makes `pce serve` keep [`POWER_CUT_MODEL`],
/// its value the milliseconds to add to every log sync (the chaos suite sets
/// it; nothing else should).
pub const POWER_CUT_ENV: &str = "PCE_CHAOS_POWER_CUTS";

/// Zeroes each file of `lengths` from its length on: the bytes a power cut
/// takes. Returns how many files lost something (segments are preallocated
/// zeros, so a file counts only when something was written past its length).
fn zero_beyond(lengths: &BTreeMap<PathBuf, u64>) -> io::Result<usize> {
    let mut changed = 0;
    for (path, len) in lengths {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            // Deleted since (purged or truncated away).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        if size > *len && !all_zero(&file, *len, size)? {
            zero(&file, *len, size)?;
            file.sync_all()?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// The model of `log_dir` as written: each segment and how many of its
/// bytes a power cut keeps.
fn read_model(log_dir: &Path) -> io::Result<BTreeMap<PathBuf, u64>> {
    let text = match std::fs::read_to_string(log_dir.join(POWER_CUT_MODEL)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut lengths = BTreeMap::new();
    for line in text.lines() {
        let parsed = line
            .split_once(' ')
            .and_then(|(name, len)| Some((name, len.parse::<u64>().ok()?)));
        let Some((name, len)) = parsed else {
            return Err(io::Error::other(format!(
                "{}: not a line of <file> <length>: {line:?}",
                log_dir.join(POWER_CUT_MODEL).display()
            )));
        };
        lengths.insert(log_dir.join(name), len);
    }
    Ok(lengths)
}

/// Whether a running node's log in `log_dir` holds a record that no sync has
/// been asked to cover yet: what a power cut at this moment would take. The
/// chaos suite waits for this before it cuts, so that a cut takes something.
pub fn holds_unsynced(log_dir: &Path) -> io::Result<bool> {
    for (path, len) in read_model(log_dir)? {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A record starts with its length, never zero: the first bytes past
        // the count say whether one follows.
        let size = file.metadata()?.len();
        let to = size.min(len + 8);
        if to > len && !all_zero(&file, len, to)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A power cut of a node that was killed: every segment in `log_dir` loses
/// what its [`POWER_CUT_MODEL`] does not count as durable. Returns how many
/// files lost something (none when the node kept no model).
pub fn cut_power(log_dir: &Path) -> io::Result<usize> {
    zero_beyond(&read_model(log_dir)?)
}

impl DiskFaults {
    /// Makes every later write and sync fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes every later sync of the Raft log fail while writes succeed.
    pub fn set_syncs_failing(&self, failing: bool) {
        self.syncs_failing.store(failing, Ordering::SeqCst);
    }

    /// Makes every later sync of the Raft log take `delay` longer.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.sync_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Starts recording how much of each log file is durable, so that a test
    /// can later cut the power ([`DiskFaults::lose_unsynced`]). Call it before
    /// the node opens its log.
    pub fn track_power_cuts(&self) {
        self.power.tracking.store(true, Ordering::SeqCst);
    }

    /// [`DiskFaults::track_power_cuts`], and the model kept in a file beside
    /// the log ([`POWER_CUT_MODEL`]), so that a harness can kill the process
    /// and then cut the power with [`cut_power`]. Costs a small file write per
    /// sync: for the chaos suite only.
    pub fn track_power_cuts_on_disk(&self) {
        self.power.on_disk.store(true, Ordering::SeqCst);
        self.track_power_cuts();
    }

    /// A power cut, for a node that has stopped: every log file loses what was
    /// written after its last sync (the bytes read back as zeros, as in a
    /// preallocated segment). Returns how many files lost something.
    pub fn lose_unsynced(&self) -> io::Result<usize> {
        let durable = self
            .power
            .durable
            .lock()
            .map_err(|_| io::Error::other("power-cut model lock poisoned"))?
            .clone();
        zero_beyond(&durable)
    }

    /// Whether a power-cut model is kept (the log skips building its notes
    /// when not).
    pub(crate) fn tracking(&self) -> bool {
        self.power.tracking.load(Ordering::SeqCst)
    }

    /// Records that the first `len` bytes of `path` are durable (while tracking).
    pub(crate) fn note_durable(&self, path: &Path, len: u64, how: Note) {
        if !self.tracking() {
            return;
        }
        if let Ok(mut d) = self.power.durable.lock() {
            set(&mut d, path, len, how);
        }
        self.note_on_disk(path, len, how);
    }

    /// Records, in the model on disk, that a sync is about to make the first
    /// `len` bytes of `path` durable.
    pub(crate) fn note_syncing(&self, path: &Path, len: u64) {
        self.note_on_disk(path, len, Note::Synced);
    }

    fn note_on_disk(&self, path: &Path, len: u64, how: Note) {
        if !self.power.on_disk.load(Ordering::SeqCst) {
            return;
        }
        let Some(dir) = path.parent() else {
            return;
        };
        let Ok(mut m) = self.power.at_most_lost.lock() else {
            return;
        };
        set(&mut m, path, len, how);
        // Only this directory's files: one node's seam may have served a
        // log being moved in another directory first.
        let text: String = m
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, l)| Some(format!("{} {l}\n", p.file_name()?.to_string_lossy())))
            .collect();
        // Replaced whole, so a kill mid-write leaves the old model; not
        // synced: kill -9 keeps the page cache, and that is all it models.
        let tmp = dir.join(format!("{POWER_CUT_MODEL}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(POWER_CUT_MODEL));
        }
    }

    pub(crate) fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected disk failure"));
        }
        Ok(())
    }

    pub(crate) fn check_sync(&self) -> io::Result<()> {
        self.check()?;
        let delay = self.sync_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if self.syncs_failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        Ok(())
    }
}

/// The sled implementation: the log in one tree, metadata in another, in the
/// node's single sled database (shared with the state machine, so one fsync
/// covers both).
pub struct SledEngine {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// sled's data file, kept open so `sync` is one `fdatasync` call, not an open+sync.
    data_file: File,
    /// sled's directory for values too big for a log segment (see [`sync_blobs`]).
    blob_dir: PathBuf,
    /// Blob files already made durable, so each is fsynced once.
    synced_blobs: Mutex<HashSet<OsString>>,
    faults: DiskFaults,
}

impl SledEngine {
    /// Opens the engine on the node's database, which lives in `dir`.
    pub fn open(db: sled::Db, dir: &Path, faults: DiskFaults) -> io::Result<Self> {
        let log = db.open_tree("raft_log").map_err(sled_io)?;
        let meta = db.open_tree("raft_meta").map_err(sled_io)?;
        let data_file = File::open(dir.join("db"))?;
        // sled creates its files on first open; make their directory entries durable.
        sync_sled(&db, &data_file)?;
        sync_dir(dir)?;
        Ok(SledEngine {
            db,
            log,
            meta,
            data_file,
            blob_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            faults,
        })
    }
}

/// Flushes sled and then fdatasyncs its data file, because sled's flush alone
/// (`sync_file_range`) does not persist the file size of a grown log.
///
/// The directory is not synced here: sled's files exist from the first open
/// (whose directory entries [`sync_dir`] made durable), and fdatasync persists
/// the size of a grown file. This keeps one write path at one extra fsync.
pub fn sync_sled(db: &sled::Db, data_file: &File) -> io::Result<()> {
    db.flush().map_err(sled_io)?;
    data_file.sync_data()
}

/// fsyncs the blob files sled wrote since the last call, then their directory.
///
/// sled stores a value larger than a quarter of a log segment (128 KiB by default)
/// in a file of its own under `blobs/`, written but never fsynced; a large command
/// (a provision of many rules) is such a value. Without this, the log entry's
/// pointer would be durable and the data it points to not.
pub fn sync_blobs(dir: &Path, synced: &mut HashSet<OsString>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut present = HashSet::new();
    let mut new = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                // sled removed it since the listing: it only removes blobs no
                // live value points to, so there is nothing to make durable.
                // (Found under load: a fatal error here stopped a node.)
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new = true;
        }
        present.insert(name);
    }
    if new {
        sync_dir(dir)?;
    }
    // Forget blobs sled has garbage-collected, so the set stays small.
    *synced = present;
    Ok(())
}

/// fsyncs a directory, so files created in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes zeros over `[from, to)` of `file`.
pub(crate) fn zero(file: &File, from: u64, to: u64) -> io::Result<()> {
    let block = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(block.len() as u64) as usize;
        file.write_all_at(&block[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// True when `[from, to)` of `file` holds only zeros.
pub(crate) fn all_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

impl LogEngine for SledEngine {
    fn append(&self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        self.faults.check()?;
        let mut batch = sled::Batch::default();
        for (index, bytes) in records {
            batch.insert(&index.to_be_bytes(), bytes.as_slice());
        }
        super::sled_writes::write(|| self.log.apply_batch(batch)).map_err(sled_io)
    }

    fn sync(&self) -> io::Result<()> {
        self.faults.check_sync()?;
        sync_sled(&self.db, &self.data_file)?;
        let mut synced = self
            .synced_blobs
            .lock()
            .map_err(|_| io::Error::other("blob set lock poisoned"))?;
        sync_blobs(&self.blob_dir, &mut synced)
    }

    fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let iter = match end {
            Some(end) => self.log.range(start.to_be_bytes()..end.to_be_bytes()),
            None => self.log.range(start.to_be_bytes()..),
        };
        iter.map(|item| {
            let (k, v) = item.map_err(sled_io)?;
            Ok((index_of(&k)?, v.to_vec()))
        })
        .collect()
    }

    fn last(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        match self.log.last().map_err(sled_io)? {
            Some((k, v)) => Ok(Some((index_of(&k)?, v.to_vec()))),
            None => Ok(None),
        }
    }

    fn truncate_from(&self, from: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(from.to_be_bytes()..) {
            let (k, _) = item.map_err(sled_io)?;
            batch.remove(k);
        }
        super::sled_writes::write(|| self.log.apply_batch(batch)).map_err(sled_io)
    }

    fn purge_upto(&self, upto: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=upto.to_be_bytes()) {
            let (k, _) = item.map_err(sled_io)?;
            batch.remove(k);
        }
        super::sled_writes::write(|| self.log.apply_batch(batch)).map_err(sled_io)
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.faults.check()?;
        self.meta.insert(key, value).map_err(sled_io).map(|_| ())
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(sled_io)?.map(|v| v.to_vec()))
    }

    fn meta_cells(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        self.meta
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(sled_io)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }
}

impl SledEngine {
    /// Empties the log and its metadata (after they moved to another engine).
    pub fn clear(&self) -> io::Result<()> {
        self.log.clear().map_err(sled_io)?;
        self.meta.clear().map_err(sled_io)?;
        sync_sled(&self.db, &self.data_file)
    }
}

fn index_of(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_entry_larger_than_a_segment_quarter_is_synced_and_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        {
            let db = super::super::open_db(dir.path()).expect("db");
            let e = SledEngine::open(db, dir.path(), DiskFaults::default()).expect("engine");
            e.append(&[(1, big.clone())]).expect("append");
            e.sync().expect("sync");
            let synced = e.synced_blobs.lock().expect("lock").len();
            assert!(
                synced >= 1,
                "sled put the entry in a blob file, and sync made it durable"
            );
        }
        let db = super::super::open_db(dir.path()).expect("reopen");
        let e = SledEngine::open(db, dir.path(), DiskFaults::default()).expect("engine");
        assert_eq!(e.range(1, None).expect("read"), vec![(1, big)]);
    }

    #[test]
    fn a_blob_removed_between_listing_and_sync_is_skipped() {
        // sled deletes unreferenced blobs concurrently with our sync; a listed
        // name whose file is gone (here: a dangling link) must not fail the sync.
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("1"), b"kept").expect("write");
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("2")).expect("link");
        let mut synced = HashSet::new();
        sync_blobs(dir.path(), &mut synced).expect("a vanished blob is not an error");
        assert!(synced.contains(&OsString::from("1")));
        assert!(!synced.contains(&OsString::from("2")));
    }
}
