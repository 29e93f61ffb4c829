//! Which keys the state machine may hold, so that putting a new key does not
//! cost a read of sled's tree.
//!
//! A put reads the key's previous entry for its `create_revision` and
//! `version`. For a key that was never written, that read found nothing only
//! after a walk down sled's tree, and it was the largest single cost of an
//! apply: 23 % of a follower's consensus runtime with 64 writing clients
//! (`docs/benchmarks.md`, "Where the CPU of a write goes now"). etcd answers the
//! same question from an index of every key in memory. This is a smaller one:
//! a Bloom filter says "certainly absent" or "perhaps present", never the
//! wrong way round. It costs about ten bits per key.
//!
//! The filter is local to a node and only saves work: a "perhaps" reads sled as
//! before, so every replica still computes the same entry. It must never say
//! "absent" for a key that is there, or a put would restart the key's
//! `version`. Hence every key a put writes is added when the apply's changes
//! join the live state, the filter of a generation is built from its tree
//! (when the node opens and when a snapshot is installed), and deleted keys
//! stay in it. It grows in stages, each twice as large as the one before, so
//! it never has to be rebuilt while the node runs.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Keys the first stage is sized for; each later stage holds twice as many.
const FIRST_STAGE_KEYS: usize = 1 << 16;
/// Bits per key: with [`PROBES`] bits per key a stage answers "perhaps" for
/// about 1 % of the keys it does not hold.
const BITS_PER_KEY: usize = 10;
/// Bits set and tested per key.
const PROBES: u64 = 7;

/// A scalable Bloom filter over byte-string keys.
#[derive(Debug)]
pub(crate) struct KeyFilter {
    stages: Vec<Stage>,
    /// A filter that knows nothing and answers "perhaps" for every key (a
    /// frozen view of the state, which only dumps and snapshots read).
    blind: bool,
}

#[derive(Debug)]
struct Stage {
    bits: Vec<u64>,
    keys: usize,
    capacity: usize,
}

impl Stage {
    fn new(capacity: usize) -> Self {
        let words = (capacity * BITS_PER_KEY).div_ceil(64);
        Stage {
            bits: vec![0; words],
            keys: 0,
            capacity,
        }
    }

    fn insert(&mut self, hash: (u64, u64)) {
        for p in positions(self.bits.len(), hash) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.keys += 1;
    }

    fn may_contain(&self, hash: (u64, u64)) -> bool {
        positions(self.bits.len(), hash).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// The bit positions of `hash` in a stage of `words` words: double hashing,
/// which Kirsch and Mitzenmacher showed does as well as independent hashes.
fn positions(words: usize, (h1, h2): (u64, u64)) -> impl Iterator<Item = usize> {
    let bits = (words * 64) as u64;
    (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
}

/// Two hashes of `key` from one SipHash (a fixed key: the filter is not
/// exposed to anyone who could choose keys to collide, and a collision only
/// costs a read of sled).
fn hash(key: &[u8]) -> (u64, u64) {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    let h1 = h.finish();
    // Never zero, so the probes do not all land on one bit.
    let h2 = h1.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (h1, h2)
}

impl KeyFilter {
    /// An empty filter for a state that holds no keys yet.
    pub(crate) fn new() -> Self {
        KeyFilter {
            stages: vec![Stage::new(FIRST_STAGE_KEYS)],
            blind: false,
        }
    }

    /// A filter that answers "perhaps" for every key.
    pub(crate) fn blind() -> Self {
        KeyFilter {
            stages: Vec::new(),
            blind: true,
        }
    }

    /// Notes that `key` is (or may be) held. Callers skip keys the filter
    /// may already hold: each insert counts toward a stage's capacity.
    pub(crate) fn insert(&mut self, key: &[u8]) {
        if self.blind {
            return;
        }
        let hash = hash(key);
        let full = self.stages.last().is_none_or(|s| s.keys >= s.capacity);
        if full {
            let capacity = self
                .stages
                .last()
                .map_or(FIRST_STAGE_KEYS, |s| s.capacity * 2);
            self.stages.push(Stage::new(capacity));
        }
        if let Some(stage) = self.stages.last_mut() {
            stage.insert(hash);
        }
    }

    /// False only if `key` was never inserted.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        if self.blind {
            return true;
        }
        let hash = hash(key);
        self.stages.iter().any(|s| s.may_contain(hash))
    }

    /// Keys inserted (deleted keys included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stages.iter().map(|s| s.keys).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        format!("bench/w/{:04}/{i:010}", i % 64).into_bytes()
    }

    #[test]
    fn every_inserted_key_is_perhaps_present_across_stages() {
        let mut f = KeyFilter::new();
        let n = FIRST_STAGE_KEYS * 3 + 17;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert_eq!(f.len(), n);
        assert_eq!(
            f.stages.len(),
            3,
            "64 Ki keys, 128 Ki, then the rest in 256 Ki"
        );
        assert!((0..n).all(|i| f.may_contain(&key(i))));
    }

    #[test]
    fn most_absent_keys_are_told_apart() {
        let mut f = KeyFilter::new();
        for i in 0..FIRST_STAGE_KEYS {
            f.insert(&key(i));
        }
        let tried = 20_000;
        let perhaps = (0..tried)
            .filter(|i| f.may_contain(&key(FIRST_STAGE_KEYS + i)))
            .count();
        // About 1 % at the stage's capacity; a wide margin, as the rate is a
        // property of the hash, not of this machine.
        assert!(
            perhaps < tried / 20,
            "{perhaps} of {tried} absent keys looked present"
        );
    }

    #[test]
    fn a_blind_filter_says_perhaps_to_everything() {
        let mut f = KeyFilter::blind();
        f.insert(b"a");
        assert!(f.may_contain(b"a") && f.may_contain(b"never inserted"));
    }
}
