//! The app group map's edges of each bucket, kept between queries.
//!
//! A map over a day reads every flow of the day: at a million flows sled's
//! iteration alone costs seconds (`pce bench flows`), and the map is what an
//! operator (and the console) asks for again and again. Most of those
//! buckets no longer change: minutes are written only while they are the
//! last hour's, hours only when an hour rolls up into them. So the edges
//! each whole bucket contributes to one kind of map (its grouping and
//! filters) are kept, tagged with the bucket's write count: a write to the
//! bucket makes them stale, and the next map reads that bucket again. A
//! map then reads only the buckets written since the last one.
//!
//! Bounded: past [`MAX_EDGES`] cached edges nothing more is kept, so an
//! estate whose every group talks to every other cannot grow the member.

use std::collections::HashMap;
use std::sync::Mutex;

use sc_proto::federation::{FlowQuery, MapEdge};

use super::edges::Grouping;

/// Cached edges, across every bucket and kind of map.
const MAX_EDGES: usize = 500_000;

/// A bucket: its tier, its partition's start, its own start.
pub type Slot = (u8, u64, u64);

struct Entry {
    /// The bucket's write count when the edges were read.
    generation: u64,
    edges: Vec<MapEdge>,
    matches: u64,
}

#[derive(Default)]
struct Inner {
    /// Writes per bucket since the store opened (absent: none).
    writes: HashMap<Slot, u64>,
    /// (bucket, kind of map) → its edges.
    entries: HashMap<(Slot, String), Entry>,
    /// Edges held in `entries`.
    held: usize,
}

/// See the module comment.
#[derive(Default)]
pub struct EdgeCache {
    inner: Mutex<Inner>,
}

/// The kind of map a query asks for: everything but its time range (whole
/// buckets are inside it, so time filters nothing in them).
pub fn kind_of(q: &FlowQuery, grouping: Grouping) -> String {
    format!(
        "{grouping:?}|{:?}|{:?}|{:?}",
        q.decisions, q.services_include, q.services_exclude
    )
}

impl EdgeCache {
    /// Records a write to `slot`, made after the write itself (a map that
    /// read the bucket before it then finds its edges stale).
    pub fn touch(&self, slot: Slot) {
        if let Ok(mut i) = self.inner.lock() {
            *i.writes.entry(slot).or_default() += 1;
        }
    }

    /// The write count of `slot`, taken before reading it.
    pub fn generation(&self, slot: Slot) -> u64 {
        self.inner
            .lock()
            .map(|i| i.writes.get(&slot).copied().unwrap_or(0))
            .unwrap_or(u64::MAX)
    }

    /// Hands `slot`'s cached edges for `kind` to `f`, if they are current;
    /// returns the flows they summed.
    pub fn visit(&self, slot: Slot, kind: &str, mut f: impl FnMut(&MapEdge)) -> Option<u64> {
        let i = self.inner.lock().ok()?;
        let e = i.entries.get(&(slot, kind.to_string()))?;
        if e.generation != i.writes.get(&slot).copied().unwrap_or(0) {
            return None;
        }
        e.edges.iter().for_each(&mut f);
        Some(e.matches)
    }

    /// Keeps `slot`'s edges for `kind`, read when its write count was
    /// `generation` (stale at once if it was written meanwhile).
    pub fn put(&self, slot: Slot, kind: &str, generation: u64, edges: Vec<MapEdge>, matches: u64) {
        let Ok(mut i) = self.inner.lock() else { return };
        let old = i
            .entries
            .remove(&(slot, kind.to_string()))
            .map_or(0, |e| e.edges.len());
        i.held -= old;
        if i.held + edges.len() > MAX_EDGES {
            return;
        }
        i.held += edges.len();
        i.entries.insert(
            (slot, kind.to_string()),
            Entry {
                generation,
                edges,
                matches,
            },
        );
    }

    /// Forgets the buckets of partition (`tier`, `start`) that begin before
    /// `before` (the whole partition: `u64::MAX`), as they are deleted.
    pub fn forget(&self, tier: u8, start: u64, before: u64) {
        let Ok(mut i) = self.inner.lock() else { return };
        let gone = |s: &Slot| s.0 == tier && s.1 == start && s.2 < before;
        i.writes.retain(|s, _| !gone(s));
        let mut freed = 0;
        i.entries.retain(|(s, _), e| {
            let keep = !gone(s);
            if !keep {
                freed += e.edges.len();
            }
            keep
        });
        i.held -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(n: u64) -> MapEdge {
        MapEdge {
            src: "a".into(),
            dst: "b".into(),
            allowed: n,
            ..MapEdge::default()
        }
    }

    #[test]
    fn a_write_to_the_bucket_makes_its_edges_stale() {
        let c = EdgeCache::default();
        let slot = (1, 0, 3_600_000);
        let g = c.generation(slot);
        c.put(slot, "k", g, vec![edge(2)], 5);
        let mut seen = 0;
        assert_eq!(c.visit(slot, "k", |e| seen += e.allowed), Some(5));
        assert_eq!(seen, 2);
        assert_eq!(c.visit(slot, "other kind", |_| ()), None);
        c.touch(slot);
        assert_eq!(c.visit(slot, "k", |_| ()), None, "written since");
        // Read while a write came in: kept, but stale at once.
        let g = c.generation(slot);
        c.touch(slot);
        c.put(slot, "k", g, vec![edge(1)], 1);
        assert_eq!(c.visit(slot, "k", |_| ()), None);
        c.forget(1, 0, u64::MAX);
        assert_eq!(c.inner.lock().unwrap().held, 0);
    }
}
