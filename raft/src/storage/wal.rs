//! The Raft log in segment files of its own: one write and one `fdatasync` per
//! group commit (decision 0018).
//!
//! sled 0.34 writes every sealed buffer with its own `pwrite` and
//! `sync_file_range`, and its batches and transactions each seal one: a write
//! cost the leader about six disk waits (`strace -c` under `pce bench write`),
//! where etcd's WAL costs one. Here the log is what etcd's is: records appended
//! to preallocated segment files, made durable by one `fdatasync`.
//!
//! - **Records**: `[len u32][crc32 u32][index u64][payload]`, little-endian; the
//!   CRC covers index and payload. A length of zero ends a segment's data.
//! - **Segments**: `seg-<seq>.wal`, zero-filled to [`SEGMENT_BYTES`] before use,
//!   so `fdatasync` never has a file size or block allocation to persist; the
//!   next one is prepared off the write path.
//! - **Recovery** reads segments in order and stops at the first record that is
//!   torn, fails its CRC, or does not follow its predecessor's index; what
//!   follows is zeroed or deleted, so a later append can never run into stale
//!   records that would read as valid.
//! - **Truncation** zeroes the segment from the cut to its end and deletes later
//!   segments, synced before it returns: a removed suffix cannot come back.
//! - **Metadata** (the vote, the purge point) is a small file replaced
//!   atomically (write, sync, rename, sync the directory) when a durable cell
//!   changed; hints ([`LogEngine::put_hint`]) ride along and may be lost.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::engine::{all_zero, sync_dir, zero, DiskFaults, LogEngine, Note};

/// Size of one segment file. A record larger than a segment gets a segment
/// of its own, sized to fit.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 16;
const META_FILE: &str = "meta";
const SPARE_FILE: &str = "spare.wal";

/// Where one record's payload lies.
#[derive(Clone, Copy)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    /// Where the next record goes.
    tail: u64,
    size: u64,
}

struct Wal {
    /// Segments by sequence number; the last one is written.
    segments: BTreeMap<u64, Segment>,
    /// Index of the first record in `locs`.
    first: u64,
    locs: VecDeque<Loc>,
    meta: BTreeMap<String, Vec<u8>>,
    meta_dirty: bool,
    /// Segments (by sequence number) written since the last sync, and
    /// whether the directory changed.
    unsynced: Vec<(u64, Arc<File>)>,
    dir_dirty: bool,
}

/// The segment-file log engine.
pub struct WalEngine {
    dir: PathBuf,
    wal: Mutex<Wal>,
    /// Serialises metadata file replacements (two syncs may race to write it).
    meta_write: Mutex<()>,
    /// Held while the spare segment is prepared.
    spare: Arc<Mutex<()>>,
    /// The thread preparing it, joined on drop so no file is being made in a
    /// directory its owner is about to rename or remove.
    spare_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    segment_bytes: u64,
    faults: DiskFaults,
}

fn seg_name(seq: u64) -> String {
    format!("seg-{seq:016x}.wal")
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Creates `path` zero-filled to `size` and durable (through a temporary name).
fn create_zeroed(dir: &Path, path: &Path, size: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    zero(&f, 0, size)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes the spare segment if there is none (holding `lock`).
fn prepare_spare(dir: &Path, lock: &Mutex<()>, size: u64) -> io::Result<()> {
    let _g = lock
        .lock()
        .map_err(|_| io::Error::other("spare lock poisoned"))?;
    let spare = dir.join(SPARE_FILE);
    if spare.exists() {
        return Ok(());
    }
    create_zeroed(dir, &spare, size)
}

/// Reads a segment's valid records, starting at `expect` (any index when
/// `None`). Returns the records' places and where the valid data ends.
fn scan(
    file: &File,
    seq: u64,
    size: u64,
    mut expect: Option<u64>,
) -> io::Result<(Vec<(u64, Loc)>, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        file.read_exact_at(&mut header, at)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut ix = [0u8; 8];
        ix.copy_from_slice(&header[8..16]);
        let index = u64::from_le_bytes(ix);
        let end = at + HEADER as u64 + len as u64;
        if len == 0 || end > size || expect.is_some_and(|e| e != index) {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, at + HEADER as u64)?;
        if checksum(index, &payload) != crc {
            break;
        }
        out.push((
            index,
            Loc {
                seg: seq,
                offset: at + HEADER as u64,
                len,
            },
        ));
        expect = Some(index + 1);
        at = end;
    }
    Ok((out, at))
}

impl WalEngine {
    /// Opens (or creates) the log in `dir`, recovering what the last run made
    /// durable.
    pub fn open(dir: &Path, faults: DiskFaults) -> io::Result<WalEngine> {
        Self::open_with(dir, faults, SEGMENT_BYTES)
    }

    /// [`WalEngine::open`] with segments of `segment_bytes` (tests use small
    /// ones to cross segment boundaries).
    pub fn open_with(dir: &Path, faults: DiskFaults, segment_bytes: u64) -> io::Result<WalEngine> {
        fs::create_dir_all(dir)?;
        let meta = read_meta(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A file being made when the last run stopped; never part of the log.
                fs::remove_file(dir.join(&*name))?;
                continue;
            }
            if let Some(hex) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".wal"))
            {
                let seq = u64::from_str_radix(hex, 16).map_err(|_| {
                    corrupt(format!(
                        "{}: not a segment name",
                        dir.join(&*name).display()
                    ))
                })?;
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut locs = VecDeque::new();
        let mut first = 0u64;
        let mut expect = None;
        let mut ended = false;
        for seq in seqs {
            let path = dir.join(seg_name(seq));
            if ended {
                // Past the end of the log: written but never made durable in order.
                fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let (records, tail) = scan(&file, seq, size, expect)?;
            if !all_zero(&file, tail, size)? {
                // A torn record, or one that does not follow: nothing after it
                // is part of the log, and it must not be read as such later.
                zero(&file, tail, size)?;
                file.sync_data()?;
                ended = true;
            }
            if let Some((index, _)) = records.first() {
                if locs.is_empty() {
                    first = *index;
                }
            }
            if let Some((index, _)) = records.last() {
                expect = Some(index + 1);
            }
            locs.extend(records.into_iter().map(|(_, l)| l));
            segments.insert(
                seq,
                Segment {
                    file: Arc::new(file),
                    tail,
                    size,
                },
            );
        }
        if ended {
            sync_dir(dir)?;
        }
        // What a killed process wrote may still be only in the page cache: the
        // first sync covers every segment found.
        let unsynced = segments
            .iter()
            .map(|(seq, s)| (*seq, s.file.clone()))
            .collect();
        // A power-cut model starts from the files as found.
        for (seq, s) in &segments {
            faults.note_durable(&dir.join(seg_name(*seq)), s.tail, Note::Reset);
        }
        let engine = WalEngine {
            dir: dir.to_path_buf(),
            wal: Mutex::new(Wal {
                segments,
                first,
                locs,
                meta,
                meta_dirty: false,
                unsynced,
                dir_dirty: false,
            }),
            meta_write: Mutex::new(()),
            spare: Arc::new(Mutex::new(())),
            spare_thread: Mutex::new(None),
            segment_bytes,
            faults,
        };
        {
            let mut wal = engine.lock()?;
            if wal.segments.is_empty() {
                engine.roll(&mut wal, 0)?;
            } else {
                engine.prepare_spare_later();
            }
        }
        Ok(engine)
    }

    /// Sets a metadata cell; `durable` marks the metadata file for the next
    /// sync (a hint rides along with whatever is synced next).
    fn insert_meta(&self, key: &str, value: &[u8], durable: bool) -> io::Result<()> {
        self.faults.check()?;
        let mut wal = self.lock()?;
        wal.meta.insert(key.to_string(), value.to_vec());
        if durable {
            wal.meta_dirty = true;
        }
        Ok(())
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Wal>> {
        self.wal
            .lock()
            .map_err(|_| io::Error::other("log lock poisoned"))
    }

    /// Prepares the next segment on a thread of its own, off the write path.
    fn prepare_spare_later(&self) {
        let dir = self.dir.clone();
        let lock = self.spare.clone();
        let size = self.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || {
                if let Err(e) = prepare_spare(&dir, &lock, size) {
                    tracing::warn!(error = %e, "could not prepare the next log segment; it will be made when needed");
                }
            });
        if let (Ok(handle), Ok(mut slot)) = (spawned, self.spare_thread.lock()) {
            // The previous one has finished or is about to: the new one waits
            // for its lock, so replacing the handle loses nothing.
            if let Some(old) = slot.replace(handle) {
                let _ = old.join();
            }
        }
    }

    /// Starts a new segment able to hold a record of `need` bytes.
    fn roll(&self, wal: &mut Wal, need: u64) -> io::Result<()> {
        let seq = wal.segments.keys().next_back().map_or(1, |s| s + 1);
        let path = self.dir.join(seg_name(seq));
        if need > self.segment_bytes {
            create_zeroed(&self.dir, &path, need)?;
        } else {
            prepare_spare(&self.dir, &self.spare, self.segment_bytes)?;
            fs::rename(self.dir.join(SPARE_FILE), &path)?;
            wal.dir_dirty = true;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        self.faults.note_durable(&path, 0, Note::Reset);
        wal.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                tail: 0,
                size,
            },
        );
        self.prepare_spare_later();
        Ok(())
    }

    /// Replaces the metadata file if a durable cell changed since it was written.
    fn write_meta(&self) -> io::Result<()> {
        let _g = self
            .meta_write
            .lock()
            .map_err(|_| io::Error::other("meta lock poisoned"))?;
        let snapshot = {
            let mut wal = self.lock()?;
            if !wal.meta_dirty {
                return Ok(());
            }
            wal.meta_dirty = false;
            wal.meta.clone()
        };
        let body = crate::codec::encode(&snapshot).map_err(super::codec_io)?;
        let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let tmp = self.dir.join(format!("{META_FILE}.tmp"));
        let result = (|| {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all_at(&bytes, 0)?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(META_FILE))?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            if let Ok(mut wal) = self.lock() {
                wal.meta_dirty = true;
            }
        }
        result
    }
}

impl Drop for WalEngine {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.spare_thread.lock() {
            if let Some(handle) = slot.take() {
                let _ = handle.join();
            }
        }
    }
}

fn read_meta(dir: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let path = dir.join(META_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    if bytes.len() < 4 {
        return Err(corrupt(format!("{}: too short", path.display())));
    }
    let (crc, body) = bytes.split_at(4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(corrupt(format!("{}: checksum mismatch", path.display())));
    }
    crate::codec::decode(body).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

impl LogEngine for WalEngine {
    fn append(&self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        self.faults.check()?;
        let mut wal = self.lock()?;
        for (index, payload) in records {
            if payload.is_empty() {
                return Err(io::Error::other("an empty log record cannot be written"));
            }
            let next = wal.first + wal.locs.len() as u64;
            if !wal.locs.is_empty() && *index != next {
                return Err(io::Error::other(format!(
                    "log append at {index}, but the log ends before {next}"
                )));
            }
            if wal.locs.is_empty() {
                wal.first = *index;
            }
            let need = (HEADER + payload.len()) as u64;
            let fits = wal
                .segments
                .values()
                .next_back()
                .is_some_and(|s| s.tail + need <= s.size);
            if !fits {
                self.roll(&mut wal, need)?;
            }
            let (seq, seg) = wal
                .segments
                .iter_mut()
                .next_back()
                .ok_or_else(|| io::Error::other("no log segment"))?;
            let mut buf = Vec::with_capacity(need as usize);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
            seg.file.write_all_at(&buf, seg.tail)?;
            let loc = Loc {
                seg: *seq,
                offset: seg.tail + HEADER as u64,
                len: payload.len() as u32,
            };
            seg.tail += need;
            let (seq, file) = (*seq, seg.file.clone());
            if !wal.unsynced.iter().any(|(_, f)| Arc::ptr_eq(f, &file)) {
                wal.unsynced.push((seq, file));
            }
            wal.locs.push_back(loc);
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.faults.check_sync()?;
        let (files, dir) = {
            let mut wal = self.lock()?;
            let files: Vec<(u64, Arc<File>, u64)> = std::mem::take(&mut wal.unsynced)
                .into_iter()
                .map(|(seq, f)| {
                    let tail = wal.segments.get(&seq).map_or(0, |s| s.tail);
                    (seq, f, tail)
                })
                .collect();
            (files, std::mem::replace(&mut wal.dir_dirty, false))
        };
        // A power-cut model (tests only) hears what this sync will cover
        // before it starts and what it covered once done.
        let tracking = self.faults.tracking();
        if tracking {
            for (seq, _, tail) in &files {
                self.faults
                    .note_syncing(&self.dir.join(seg_name(*seq)), *tail);
            }
        }
        // Outside the lock: appends go on while the disk works.
        for (_, f, _) in &files {
            f.sync_data()?;
        }
        if dir {
            sync_dir(&self.dir)?;
        }
        if tracking {
            for (seq, _, tail) in &files {
                self.faults
                    .note_durable(&self.dir.join(seg_name(*seq)), *tail, Note::Synced);
            }
        }
        self.write_meta()
    }

    fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let (wanted, files) = {
            let wal = self.lock()?;
            let last = wal.first + wal.locs.len() as u64;
            let from = start.max(wal.first);
            let to = end.map_or(last, |e| e.min(last));
            let mut wanted = Vec::new();
            for index in from..to {
                let i = (index - wal.first) as usize;
                wanted.push((index, wal.locs[i]));
            }
            // Only the segments the records lie in (usually one).
            let mut files: BTreeMap<u64, Arc<File>> = BTreeMap::new();
            for (_, loc) in &wanted {
                if let (std::collections::btree_map::Entry::Vacant(slot), Some(seg)) =
                    (files.entry(loc.seg), wal.segments.get(&loc.seg))
                {
                    slot.insert(seg.file.clone());
                }
            }
            (wanted, files)
        };
        let mut out = Vec::with_capacity(wanted.len());
        // One read per run of records that lie next to each other in a segment.
        let mut i = 0;
        while i < wanted.len() {
            let (_, first) = wanted[i];
            let mut j = i + 1;
            let mut end = first.offset + first.len as u64;
            while j < wanted.len()
                && wanted[j].1.seg == first.seg
                && wanted[j].1.offset == end + HEADER as u64
            {
                end = wanted[j].1.offset + wanted[j].1.len as u64;
                j += 1;
            }
            let file = files
                .get(&first.seg)
                .ok_or_else(|| io::Error::other("a log segment vanished"))?;
            let mut buf = vec![0u8; (end - first.offset) as usize];
            file.read_exact_at(&mut buf, first.offset)?;
            for (index, loc) in &wanted[i..j] {
                let at = (loc.offset - first.offset) as usize;
                out.push((*index, buf[at..at + loc.len as usize].to_vec()));
            }
            i = j;
        }
        Ok(out)
    }

    fn last(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let last = {
            let wal = self.lock()?;
            if wal.locs.is_empty() {
                return Ok(None);
            }
            wal.first + wal.locs.len() as u64 - 1
        };
        Ok(self.range(last, Some(last + 1))?.pop())
    }

    fn truncate_from(&self, from: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut wal = self.lock()?;
        let last = wal.first + wal.locs.len() as u64;
        if wal.locs.is_empty() || from >= last {
            return Ok(());
        }
        let keep = from.saturating_sub(wal.first) as usize;
        let cut = wal.locs[keep];
        let (seg, offset) = (cut.seg, cut.offset - HEADER as u64);
        wal.locs.truncate(keep);
        // Zero the segment from the cut, and drop every later segment.
        let later: Vec<u64> = wal.segments.range(seg + 1..).map(|(s, _)| *s).collect();
        let s = wal
            .segments
            .get_mut(&seg)
            .ok_or_else(|| io::Error::other("a log segment vanished"))?;
        zero(&s.file, offset, s.tail.max(offset))?;
        s.tail = offset;
        s.file.sync_data()?;
        self.faults
            .note_durable(&self.dir.join(seg_name(seg)), offset, Note::Reset);
        for l in later {
            wal.segments.remove(&l);
            fs::remove_file(self.dir.join(seg_name(l)))?;
        }
        // A later segment made again under a deleted one's number is another
        // file: the next sync must take the new one, not the old handle.
        wal.unsynced.retain(|(s, _)| *s <= seg);
        sync_dir(&self.dir)
    }

    fn purge_upto(&self, upto: u64) -> io::Result<()> {
        self.faults.check()?;
        // The purge point (a durable cell the caller set) is on disk before any
        // record it covers is deleted: never a gap between it and the log.
        self.write_meta()?;
        let mut wal = self.lock()?;
        while !wal.locs.is_empty() && wal.first <= upto {
            wal.locs.pop_front();
            wal.first += 1;
        }
        if wal.locs.is_empty() {
            wal.first = upto + 1;
            // Nothing live is left (a purge up to an installed snapshot may go
            // past the log's end): the next record must not follow purged ones
            // in a segment, or recovery would stop at the gap and zero it.
            // Found by the kill -9 test in pce/tests/processes.rs.
            self.roll(&mut wal, 0)?;
        }
        let first_seg = wal.locs.front().map(|l| l.seg);
        let active = wal.segments.keys().next_back().copied();
        let gone: Vec<u64> = wal
            .segments
            .keys()
            .copied()
            .filter(|s| Some(*s) != active && first_seg.is_none_or(|f| *s < f))
            .collect();
        for s in &gone {
            wal.segments.remove(s);
            fs::remove_file(self.dir.join(seg_name(*s)))?;
        }
        if !gone.is_empty() {
            wal.dir_dirty = true;
        }
        Ok(())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.insert_meta(key, value, true)
    }

    fn put_hint(&self, key: &str, value: &[u8]) -> io::Result<()> {
        // Written with the next durable change, never synced on its own.
        self.insert_meta(key, value, false)
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    fn meta_cells(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        Ok(self.lock()?.meta.clone().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64, size: usize) -> (u64, Vec<u8>) {
        (index, vec![(index % 251) as u8 + 1; size])
    }

    fn open(dir: &Path, seg: u64) -> WalEngine {
        WalEngine::open_with(dir, DiskFaults::default(), seg).expect("open")
    }

    fn indexes(e: &WalEngine) -> Vec<u64> {
        e.range(0, None)
            .expect("range")
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_power_cut_loses_exactly_what_no_sync_covered() {
        let dir = tempfile::tempdir().expect("dir");
        let faults = DiskFaults::default();
        faults.track_power_cuts();
        {
            let e = WalEngine::open_with(dir.path(), faults.clone(), 4096).expect("open");
            let synced: Vec<_> = (1..=20).map(|i| rec(i, 300)).collect();
            e.append(&synced).expect("append");
            e.sync().expect("sync");
            // Into the middle of a segment and across into new ones.
            let unsynced: Vec<_> = (21..=40).map(|i| rec(i, 300)).collect();
            e.append(&unsynced).expect("append");
            // A cut made durable by its own sync.
            e.truncate_from(18).expect("truncate");
            e.append(&[rec(18, 300)]).expect("append");
        }
        // Only the cut segment holds unsynced bytes: the later ones went
        // with the truncation.
        assert_eq!(faults.lose_unsynced().expect("power cut"), 1);
        let e = open(dir.path(), 4096);
        assert_eq!(indexes(&e), (1..=17).collect::<Vec<_>>());
        // Nothing stale ahead of the recovered end.
        e.append(&[rec(18, 300), rec(19, 300)]).expect("append");
        e.sync().expect("sync");
        drop(e);
        let e = open(dir.path(), 4096);
        assert_eq!(indexes(&e), (1..=19).collect::<Vec<_>>());
    }

    #[test]
    fn a_killed_process_cut_by_its_model_on_disk_keeps_every_synced_record() {
        let dir = tempfile::tempdir().expect("dir");
        let faults = DiskFaults::default();
        faults.track_power_cuts_on_disk();
        {
            let e = WalEngine::open_with(dir.path(), faults, 4096).expect("open");
            e.append(&(1..=30).map(|i| rec(i, 300)).collect::<Vec<_>>())
                .expect("append");
            e.sync().expect("sync");
            let holds = || super::super::engine::holds_unsynced(dir.path()).expect("model");
            assert!(!holds(), "everything written is synced");
            e.append(&(31..=35).map(|i| rec(i, 300)).collect::<Vec<_>>())
                .expect("append");
            assert!(holds(), "records were written since the last sync");
            // Dropped without a sync, as a kill -9 leaves it.
        }
        let cut = super::super::engine::cut_power(dir.path()).expect("cut");
        assert_eq!(cut, 1);
        let e = open(dir.path(), 4096);
        assert_eq!(indexes(&e), (1..=30).collect::<Vec<_>>());
        // A directory without a model loses nothing.
        let other = tempfile::tempdir().expect("dir");
        assert_eq!(
            super::super::engine::cut_power(other.path()).expect("cut"),
            0
        );
    }

    #[test]
    fn records_across_segments_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let e = open(dir.path(), 4096);
            let recs: Vec<_> = (1..=100).map(|i| rec(i, 300)).collect();
            e.append(&recs).expect("append");
            e.put_meta("vote", b"v1").expect("meta");
            e.put_hint("committed", b"c").expect("hint");
            e.sync().expect("sync");
            assert_eq!(
                e.range(40, Some(43)).expect("range"),
                vec![rec(40, 300), rec(41, 300), rec(42, 300)]
            );
        }
        let e = open(dir.path(), 4096);
        assert_eq!(indexes(&e), (1..=100).collect::<Vec<_>>());
        assert_eq!(e.last().expect("last"), Some(rec(100, 300)));
        assert_eq!(e.get_meta("vote").expect("meta"), Some(b"v1".to_vec()));
        assert!(
            e.lock().expect("lock").segments.len() > 5,
            "100 records of 316 bytes span several 4 KiB segments"
        );
    }

    #[test]
    fn a_torn_record_ends_the_log_and_is_zeroed() {
        let dir = tempfile::tempdir().expect("dir");
        let path;
        {
            let e = open(dir.path(), 1 << 20);
            e.append(&[rec(1, 100), rec(2, 100), rec(3, 100)])
                .expect("append");
            e.sync().expect("sync");
            let wal = e.lock().expect("lock");
            let (seq, _) = wal.segments.iter().next_back().expect("segment");
            path = dir.path().join(seg_name(*seq));
        }
        // Tear record 3: flip a payload byte, as a write cut short would leave it.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("segment");
        let at = 2 * (HEADER as u64 + 100) + HEADER as u64 + 50;
        f.write_all_at(&[0xff], at).expect("tear");
        let e = open(dir.path(), 1 << 20);
        assert_eq!(indexes(&e), vec![1, 2]);
        // The torn bytes are gone: an append of 3 and a reopen read only what was written.
        e.append(&[rec(3, 40)]).expect("append");
        e.sync().expect("sync");
        drop(e);
        assert_eq!(
            open(dir.path(), 1 << 20).range(3, None).expect("range"),
            vec![rec(3, 40)]
        );
    }

    #[test]
    fn a_truncated_suffix_never_comes_back_even_when_rewritten_with_equal_sizes() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let e = open(dir.path(), 4096);
            e.append(&(1..=40).map(|i| rec(i, 200)).collect::<Vec<_>>())
                .expect("append");
            e.sync().expect("sync");
            e.truncate_from(10).expect("truncate");
            // A new term writes 10 with the same size as the old 10: the old 11.. must not follow it.
            e.append(&[(10, vec![7u8; 200])]).expect("append");
            e.sync().expect("sync");
        }
        let e = open(dir.path(), 4096);
        assert_eq!(indexes(&e), (1..=10).collect::<Vec<_>>());
        assert_eq!(e.last().expect("last"), Some((10, vec![7u8; 200])));
    }

    #[test]
    fn purging_deletes_whole_segments_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("dir");
        let e = open(dir.path(), 4096);
        e.append(&(1..=100).map(|i| rec(i, 300)).collect::<Vec<_>>())
            .expect("append");
        e.sync().expect("sync");
        let before = e.lock().expect("lock").segments.len();
        e.put_meta("purged", b"50").expect("meta");
        e.purge_upto(50).expect("purge");
        assert_eq!(indexes(&e), (51..=100).collect::<Vec<_>>());
        let after = e.lock().expect("lock").segments.len();
        assert!(
            after < before,
            "segments wholly at or below 50 were deleted ({before} -> {after})"
        );
        // The purge point was made durable before the files went.
        drop(e);
        let e = open(dir.path(), 4096);
        assert_eq!(e.get_meta("purged").expect("meta"), Some(b"50".to_vec()));
        assert_eq!(indexes(&e).last(), Some(&100));
        assert!(
            indexes(&e)[0] <= 51,
            "no record after the purge point is missing"
        );
    }

    #[test]
    fn records_after_a_purge_past_the_end_survive_a_reopen() {
        // openraft purges past the log's end after installing a snapshot; the
        // next records must not follow the purged ones in a segment, or
        // recovery takes the gap for the end of the log and zeroes them.
        let dir = tempfile::tempdir().expect("dir");
        {
            let e = open(dir.path(), 1 << 20);
            e.append(&(1..=10).map(|i| rec(i, 50)).collect::<Vec<_>>())
                .expect("append");
            e.sync().expect("sync");
            e.put_meta("purged", b"20").expect("meta");
            e.purge_upto(20).expect("purge");
            assert!(indexes(&e).is_empty());
            e.append(&(21..=25).map(|i| rec(i, 50)).collect::<Vec<_>>())
                .expect("append");
            e.sync().expect("sync");
        }
        let e = open(dir.path(), 1 << 20);
        assert_eq!(indexes(&e), (21..=25).collect::<Vec<_>>());
    }

    #[test]
    fn an_append_that_leaves_a_gap_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let e = open(dir.path(), 4096);
        e.append(&[rec(1, 10)]).expect("append");
        assert!(e.append(&[rec(3, 10)]).is_err());
        assert_eq!(indexes(&e), vec![1]);
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_one_of_its_own() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let e = open(dir.path(), 4096);
            e.append(&[rec(1, 100), rec(2, 10_000), rec(3, 100)])
                .expect("append");
            e.sync().expect("sync");
        }
        assert_eq!(
            open(dir.path(), 4096).range(0, None).expect("range"),
            vec![rec(1, 100), rec(2, 10_000), rec(3, 100)]
        );
    }

    #[test]
    fn a_corrupt_metadata_file_stops_the_open_with_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let e = open(dir.path(), 4096);
            e.put_meta("vote", b"v").expect("meta");
            e.sync().expect("sync");
        }
        fs::write(dir.path().join(META_FILE), b"\x00\x01\x02\x03garbage").expect("write");
        let err = WalEngine::open_with(dir.path(), DiskFaults::default(), 4096)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("meta"), "{err}");
    }
}
