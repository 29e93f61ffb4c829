//! Timeouts and tuning: a LAN profile for tests and one-site clusters, a WAN
//! profile for real regions.
//!
//! openraft's 50 ms default heartbeat assumes a LAN; between continents a round
//! trip alone can take 150-300 ms, so the WAN profile waits long enough not to
//! depose a healthy leader over a slow link.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A named set of timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Nodes a few milliseconds apart.
    Lan,
    /// Nodes in different regions, up to ~300 ms apart.
    Wan,
}

/// Every timeout a node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// A follower that stops hearing from its leader campaigns a random time in
    /// `election_min..election_max` after the last heartbeat (see [`raft_config`]
    /// for how openraft is told so).
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
    /// Lower bound for one Raft or federation RPC.
    pub rpc: Duration,
    /// Establishing a TCP + TLS connection.
    pub connect: Duration,
    /// Streaming one snapshot to a peer.
    pub snapshot: Duration,
    /// How long a client write may wait for a leader (election, forwarding) before
    /// it fails with "no leader".
    pub write: Duration,
}

impl Timeouts {
    /// The timeouts of a profile.
    pub fn profile(p: Profile) -> Self {
        match p {
            Profile::Lan => Timeouts {
                heartbeat: Duration::from_millis(100),
                election_min: Duration::from_millis(500),
                election_max: Duration::from_millis(700),
                rpc: Duration::from_millis(1000),
                connect: Duration::from_millis(1000),
                snapshot: Duration::from_secs(60),
                write: Duration::from_secs(10),
            },
            Profile::Wan => Timeouts {
                heartbeat: Duration::from_millis(500),
                election_min: Duration::from_millis(9000),
                election_max: Duration::from_millis(12000),
                rpc: Duration::from_millis(3000),
                connect: Duration::from_millis(3000),
                snapshot: Duration::from_secs(600),
                write: Duration::from_secs(30),
            },
        }
    }

    /// Checks the relations openraft relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() {
            return Err("heartbeat must be above 0".into());
        }
        if self.election_min <= self.heartbeat * 2 {
            return Err(format!(
                "election_min ({:?}) must be more than twice the heartbeat ({:?}), or followers campaign against a healthy leader",
                self.election_min, self.heartbeat
            ));
        }
        if self.election_max <= self.election_min {
            return Err(format!(
                "election_max ({:?}) must be above election_min ({:?})",
                self.election_max, self.election_min
            ));
        }
        if self.election_min <= self.election_max / 2 + self.heartbeat {
            return Err(format!(
                "election_min ({:?}) must be more than half of election_max ({:?}) plus the heartbeat ({:?}): the leader lease is half of election_max, and a follower must see several heartbeats inside it",
                self.election_min, self.election_max, self.heartbeat
            ));
        }
        Ok(())
    }
}

/// When to snapshot and how much log to keep behind a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind the snapshot, so a briefly lagging peer catches up
    /// from the log instead of a full snapshot.
    pub keep_logs: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

/// openraft's config from ours.
///
/// A follower of openraft 0.9 that knew a leader waits out the leader lease (its
/// `election_timeout_max`), then a random time in its `election_timeout_min..max`,
/// so it campaigns in `min + max ..= 2 max` after the last heartbeat, and its peers
/// refuse votes for `max` after theirs. Passing our bounds straight through would
/// put that window at 1.5-2x `election_max` (1.5-2 s on LAN, where etcd with the
/// same numbers takes 0.5-1 s). So openraft gets `max = election_max / 2` and
/// `min = election_min - election_max / 2`: the window is exactly
/// `election_min..=election_max`, and the first candidate finds its peers' leases
/// expired (decision 0005).
pub(crate) fn raft_config(
    cluster: &str,
    t: &Timeouts,
    tuning: &Tuning,
) -> Result<openraft::Config, String> {
    let cfg = openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: t.heartbeat.as_millis() as u64,
        election_timeout_min: (t.election_min - t.election_max / 2).as_millis() as u64,
        election_timeout_max: (t.election_max / 2).as_millis() as u64,
        install_snapshot_timeout: t.snapshot.as_millis() as u64,
        max_payload_entries: 1000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: tuning.keep_logs,
        // Purge in batches, but never wait for more entries than one snapshot interval.
        purge_batch_size: (tuning.snapshot_every / 4).clamp(1, 256),
        ..Default::default()
    };
    cfg.validate().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_profiles_are_valid_and_wan_is_slower() {
        let lan = Timeouts::profile(Profile::Lan);
        let wan = Timeouts::profile(Profile::Wan);
        lan.validate().unwrap();
        wan.validate().unwrap();
        assert!(wan.election_min > lan.election_min && wan.heartbeat > lan.heartbeat);
        raft_config("t", &lan, &Tuning::default()).unwrap();
    }

    #[test]
    fn openraft_campaigns_inside_our_election_window() {
        for p in [Profile::Lan, Profile::Wan] {
            let t = Timeouts::profile(p);
            let c = raft_config("t", &t, &Tuning::default()).unwrap();
            // Lease (max) plus openraft's random timeout spans exactly our window.
            let ms = |d: Duration| d.as_millis() as u64;
            assert_eq!(
                c.election_timeout_max + c.election_timeout_min,
                ms(t.election_min)
            );
            assert_eq!(2 * c.election_timeout_max, ms(t.election_max));
            assert!(c.election_timeout_min > c.heartbeat_interval, "{p:?}");
        }
        let mut wide = Timeouts::profile(Profile::Lan);
        wide.election_min = Duration::from_millis(500);
        wide.election_max = Duration::from_millis(1000);
        assert!(wide
            .validate()
            .unwrap_err()
            .contains("half of election_max"));
    }

    #[test]
    fn an_election_timeout_near_the_heartbeat_is_refused() {
        let mut t = Timeouts::profile(Profile::Lan);
        t.election_min = t.heartbeat;
        assert!(t.validate().unwrap_err().contains("twice the heartbeat"));
    }
}
