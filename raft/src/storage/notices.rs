//! Change notices and who hears them.
//!
//! Every applied command produces a notice. A subscriber names the key prefixes
//! it follows and is woken only for notices that touch them: the member's
//! policy cache lives on the main runtime, and waking it for every raw key
//! written through the federation service cost each such write a cross-thread
//! wake-up on every node (`docs/benchmarks.md`, "One consensus worker,
//! notices by key, AppendEntries on a stream").

use std::sync::Mutex;

use tokio::sync::broadcast;

/// Notices a subscriber may fall behind by before it is told it lagged (and
/// rebuilds from the replica).
const BACKLOG: usize = 4096;

/// What one applied command changed; members use it to recompute only what moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNotice {
    /// The store revision after the change.
    pub revision: u64,
    /// The log index of the entry.
    pub log_index: u64,
    /// Keys written or deleted. Empty when the whole replica was replaced (a
    /// snapshot installed): every subscriber hears that one.
    pub keys: Vec<Vec<u8>>,
}

impl ChangeNotice {
    /// Whether a subscriber following `prefixes` must hear this notice.
    fn concerns(&self, prefixes: &[Vec<u8>]) -> bool {
        self.keys.is_empty()
            || self
                .keys
                .iter()
                .any(|k| prefixes.iter().any(|p| k.starts_with(p)))
    }
}

/// One subscriber: the prefixes it follows and its channel.
struct Follower {
    prefixes: Vec<Vec<u8>>,
    tx: broadcast::Sender<ChangeNotice>,
}

/// The subscribers of one replica's notices.
#[derive(Default)]
pub(crate) struct Notices {
    followers: Mutex<Vec<Follower>>,
}

impl Notices {
    /// A stream of the notices that touch a key under one of `prefixes` (an
    /// empty prefix follows every key), plus every whole-replica notice.
    pub(crate) fn subscribe(&self, prefixes: &[&[u8]]) -> broadcast::Receiver<ChangeNotice> {
        let (tx, rx) = broadcast::channel(BACKLOG);
        let follower = Follower {
            prefixes: prefixes.iter().map(|p| p.to_vec()).collect(),
            tx,
        };
        // A poisoned lock means a publisher panicked mid-send: the list itself
        // is still whole, so keep using it.
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers.push(follower);
        rx
    }

    /// Hands each notice to the subscribers it concerns, and forgets those
    /// that have dropped their receiver.
    pub(crate) fn publish(&self, notices: impl IntoIterator<Item = ChangeNotice>) {
        let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers.retain(|f| f.tx.receiver_count() > 0);
        if followers.is_empty() {
            return;
        }
        for n in notices {
            for f in followers.iter().filter(|f| n.concerns(&f.prefixes)) {
                // A receiver dropped since the retain above is fine.
                let _ = f.tx.send(n.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(revision: u64, keys: &[&[u8]]) -> ChangeNotice {
        ChangeNotice {
            revision,
            log_index: revision,
            keys: keys.iter().map(|k| k.to_vec()).collect(),
        }
    }

    #[test]
    fn a_subscriber_hears_only_its_prefixes_and_every_replacement() {
        let notices = Notices::default();
        let mut policy = notices.subscribe(&[b"o/", b"m/version"]);
        let mut all = notices.subscribe(&[b""]);
        notices.publish([
            notice(1, &[b"bench/0001"]),
            notice(2, &[b"bench/0002", b"o/live/labels/a"]),
            notice(3, &[b"m/version"]),
            notice(4, &[]),
        ]);
        let heard: Vec<u64> = std::iter::from_fn(|| policy.try_recv().ok())
            .map(|n| n.revision)
            .collect();
        assert_eq!(heard, vec![2, 3, 4]);
        let heard: Vec<u64> = std::iter::from_fn(|| all.try_recv().ok())
            .map(|n| n.revision)
            .collect();
        assert_eq!(heard, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_dropped_subscriber_is_forgotten() {
        let notices = Notices::default();
        let kept = notices.subscribe(&[b""]);
        drop(notices.subscribe(&[b""]));
        notices.publish([notice(1, &[b"k"])]);
        assert_eq!(notices.followers.lock().unwrap().len(), 1);
        assert_eq!(kept.len(), 1);
    }
}
