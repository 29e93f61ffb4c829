//! Applied changes that sled does not hold yet, and reads that see through them.
//!
//! Why write-behind: a sled transaction per applied batch cost more CPU than the
//! rest of a write's path (sled 0.34 rolls its IO buffer before and after every
//! transaction, and wakes its IO pool to write both). The state machine does not
//! need sled to be current: the Raft log is durable before anything is
//! applied, so sled only has to hold *some* prefix of the applied history
//! together with its `last_applied`, and openraft re-applies the log after it
//! when the node starts. Applied changes therefore collect in memory, in a
//! [`Delta`], and a writer moves them into sled in one transaction every
//! [`WRITE_INTERVAL`], as etcd's backend commits every 100 ms (decision 0021).

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::time::Duration;

use openraft::{LogId, StoredMembership};

use crate::types::{NodeId, NodeInfo};

/// How often applied changes are written to sled. Longer means fewer sled
/// transactions; the cost is memory and a longer re-apply after a crash.
pub(crate) const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// Changed keys, or bytes, beyond which the writer is woken before its
/// interval ends, so a burst of writes is written sooner.
pub(crate) const WRITE_AT_KEYS: usize = 16_384;
/// See [`WRITE_AT_KEYS`].
pub(crate) const WRITE_AT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes pending beyond which an apply waits for the write itself: the bound
/// on the memory the changes take when sled cannot keep up.
pub(crate) const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

/// Failed writes in a row after which applying fails too (a storage error
/// stops the Raft core, as a failed apply did when it wrote to sled itself):
/// a disk that refuses writes for this long is not coming back by itself.
pub(crate) const MAX_WRITE_FAILURES: u32 = 50;

/// Keys of one tree mapped to their new encoded value, or to `None` once deleted.
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a run of applied entries changed, not yet written to sled.
#[derive(Debug, Default, Clone)]
pub(crate) struct Delta {
    /// The key/value tree.
    pub(crate) kv: Changes,
    /// The client-session tree (never deleted from, but kept in the same shape).
    pub(crate) sessions: Changes,
    /// The last applied log id, set by every apply (`None` when nothing was).
    pub(crate) last_applied: Option<Option<LogId<NodeId>>>,
    /// The store revision after the last applied entry.
    pub(crate) revision: Option<u64>,
    /// The membership, when an applied entry changed it.
    pub(crate) membership: Option<StoredMembership<NodeId, NodeInfo>>,
    /// Bytes of keys and values absorbed (overwrites counted again): what
    /// the changes hold in memory, roughly.
    pub(crate) bytes: usize,
}

impl Delta {
    /// Nothing has been applied into this delta.
    pub(crate) fn is_empty(&self) -> bool {
        self.last_applied.is_none() && self.kv.is_empty() && self.sessions.is_empty()
    }

    /// Keys this delta holds, to decide when to write before the interval ends.
    pub(crate) fn keys(&self) -> usize {
        self.kv.len() + self.sessions.len()
    }

    /// Lays `newer` over this delta: its keys and state win.
    pub(crate) fn absorb(&mut self, newer: Delta) {
        let size = |c: &Changes| -> usize {
            c.iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum()
        };
        // A delta that absorbed others has counted its bytes already.
        self.bytes += if newer.bytes > 0 {
            newer.bytes
        } else {
            size(&newer.kv) + size(&newer.sessions)
        };
        self.kv.extend(newer.kv);
        self.sessions.extend(newer.sessions);
        if newer.last_applied.is_some() {
            self.last_applied = newer.last_applied;
        }
        if newer.revision.is_some() {
            self.revision = newer.revision;
        }
        if newer.membership.is_some() {
            self.membership = newer.membership;
        }
    }
}

/// The changes of `layers` (newest first) to keys starting with `prefix`,
/// the newest layer winning, in key order (reversed if `reverse`). Read
/// lazily from the layers' own maps: a scan that stops after a few keys
/// copies only those.
pub(crate) fn changes_under<'a>(
    layers: impl Iterator<Item = &'a Changes>,
    prefix: &[u8],
    reverse: bool,
) -> LayeredChanges<'a> {
    let start = Bound::Included(prefix.to_vec());
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    let heads = layers
        .map(|layer| {
            let range = layer.range((start.clone(), end.clone()));
            let it: LayerIter<'a> = if reverse {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            it.peekable()
        })
        .collect();
    LayeredChanges { heads, reverse }
}

/// The first key after every key that starts with `prefix` (`None`: no such
/// key, the range is open).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

type LayerIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;

/// See [`changes_under`].
pub(crate) struct LayeredChanges<'a> {
    heads: Vec<std::iter::Peekable<LayerIter<'a>>>,
    reverse: bool,
}

impl<'a> Iterator for LayeredChanges<'a> {
    type Item = (&'a Vec<u8>, &'a Option<Vec<u8>>);

    fn next(&mut self) -> Option<Self::Item> {
        // The first key in order; on a tie the newest layer (lowest index) wins.
        let mut best: Option<(usize, &'a Vec<u8>)> = None;
        for (i, head) in self.heads.iter_mut().enumerate() {
            if let Some(&(k, _)) = head.peek() {
                if best.is_none_or(|(_, b)| before(self.reverse, k, b)) {
                    best = Some((i, k));
                }
            }
        }
        let (i, key) = best?;
        let item = self.heads[i].next();
        // Older layers' changes to the same key are hidden by this one.
        for head in self.heads.iter_mut().skip(i + 1) {
            if head.peek().is_some_and(|&(k, _)| k == key) {
                head.next();
            }
        }
        item
    }
}

/// A tree's items with newer changes laid over them, in the tree's order.
///
/// `tree` and `over` must run in the same direction (`reverse`). A key in
/// `over` replaces the tree's item of that key; `None` hides it.
pub(crate) struct Merged<'a, I: Iterator> {
    tree: std::iter::Peekable<I>,
    over: std::iter::Peekable<LayeredChanges<'a>>,
    reverse: bool,
}

impl<'a, I> Merged<'a, I>
where
    I: Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
{
    /// Merges `tree` with `over` (from [`changes_under`] with the same `reverse`).
    pub(crate) fn new(tree: I, over: LayeredChanges<'a>, reverse: bool) -> Self {
        Merged {
            tree: tree.peekable(),
            over: over.peekable(),
            reverse,
        }
    }
}

/// Whether key `a` comes before key `b` in a merge's direction.
fn before(reverse: bool, a: &[u8], b: &[u8]) -> bool {
    if reverse {
        a > b
    } else {
        a < b
    }
}

impl<I> Iterator for Merged<'_, I>
where
    I: Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>,
{
    type Item = io::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let reverse = self.reverse;
            let take_tree = match (self.tree.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(Ok((tk, _))), Some(&(ok, _))) => {
                    if tk == ok {
                        // The change replaces the tree's item: drop the older one.
                        self.tree.next();
                        false
                    } else {
                        before(reverse, tk, ok)
                    }
                }
            };
            if take_tree {
                return self.tree.next();
            }
            match self.over.next() {
                Some((k, Some(v))) => return Some(Ok((k.clone(), v.clone()))),
                // Deleted since the tree was written: skip it.
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(items: &[(&str, &str)]) -> Vec<io::Result<(Vec<u8>, Vec<u8>)>> {
        items
            .iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
            .collect()
    }

    fn changes(items: &[(&str, Option<&str>)]) -> Changes {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    fn keys(merged: impl Iterator<Item = io::Result<(Vec<u8>, Vec<u8>)>>) -> Vec<String> {
        merged
            .map(|r| {
                let (k, v) = r.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8(k).unwrap(),
                    String::from_utf8(v).unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn the_newest_layer_wins_and_deletes_hide_the_tree() {
        let base = tree(&[("a", "1"), ("b", "1"), ("c", "1"), ("x", "1")]);
        let older = changes(&[("b", Some("2")), ("d", Some("2")), ("c", None)]);
        let newer = changes(&[("b", None), ("c", Some("3")), ("e", Some("3"))]);
        let over = changes_under([&newer, &older].into_iter(), b"", false);
        let merged = Merged::new(base.into_iter(), over, false);
        assert_eq!(keys(merged), ["a=1", "c=3", "d=2", "e=3", "x=1"]);
    }

    #[test]
    fn a_reverse_merge_under_a_prefix_gives_the_newest_keys_first() {
        let base = tree(&[("p/1", "t"), ("p/3", "t")]);
        let over = changes(&[("p/2", Some("o")), ("p/4", Some("o")), ("q/9", Some("o"))]);
        let over = changes_under([&over].into_iter(), b"p/", true);
        let merged = Merged::new(base.into_iter().rev(), over, true);
        assert_eq!(keys(merged), ["p/4=o", "p/3=t", "p/2=o", "p/1=t"]);
    }

    #[test]
    fn absorbing_keeps_the_newer_state() {
        let mut d = Delta {
            revision: Some(3),
            last_applied: Some(None),
            ..Delta::default()
        };
        d.absorb(Delta {
            revision: Some(4),
            kv: changes(&[("k", Some("v"))]),
            ..Delta::default()
        });
        assert_eq!(d.revision, Some(4));
        assert_eq!(d.last_applied, Some(None));
        assert_eq!(d.keys(), 1);
    }
}
