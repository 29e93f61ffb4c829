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
    /// `election_min..=election_max` after the last heartbeat, drawn afresh each
    /// time (see [`crate::election`]).
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

    /// How long a follower refuses openraft's real vote after it last heard
    /// its leader: openraft's leader lease, one and a half heartbeats.
    ///
    /// Why short: our pre-vote ([`crate::election`]) already keeps a follower
    /// that hears its leader from helping anyone campaign, for the whole
    /// shortest election timeout. The lease only has to cover what skips the
    /// pre-vote (a planned transfer's campaign), and a long lease made a
    /// follower that knew its leader's process was gone wait for it anyway
    /// before voting (decision 0019). Why not shorter (openraft would take a
    /// heartbeat and 2 ms): openraft also gives each vote request
    /// `election_timeout_min`, just under the lease, to be answered, and a
    /// voter syncs its vote to disk before it answers; a WAN round trip of
    /// 300 ms and a slow sync must fit.
    pub fn lease(&self) -> Duration {
        self.heartbeat * 3 / 2
    }

    /// Checks the relations openraft relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() {
            return Err("heartbeat must be above 0".into());
        }
        if self.election_min <= self.heartbeat * 3 {
            return Err(format!(
                "election_min ({:?}) must be more than three heartbeats ({:?} each): a follower must miss several heartbeats before it campaigns, or one late heartbeat starts an election",
                self.election_min, self.heartbeat
            ));
        }
        if self.election_max <= self.election_min {
            return Err(format!(
                "election_max ({:?}) must be above election_min ({:?}), or candidates that collide once collide every round",
                self.election_max, self.election_min
            ));
        }
        Ok(())
    }
}

/// When to snapshot, how much log to keep behind a snapshot, and how long the
/// consensus worker stays awake after a replica read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind the snapshot, so a briefly lagging peer catches up
    /// from the log instead of a full snapshot.
    pub keep_logs: u64,
    /// While reads come back to back, the worker spins this long after each
    /// for the next instead of sleeping ([`crate::network::read_spin`]); zero
    /// never spins, and more than [`crate::network::read_spin::MAX_WINDOW`]
    /// is cut to it.
    pub read_spin: Duration,
}

/// The default [`Tuning::read_spin`]: longer than a client's own turn between
/// two reads (about 50 us on the machine measured), so the next read lands
/// inside it.
pub const READ_SPIN: Duration = Duration::from_micros(100);

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_every: 10_000,
            keep_logs: 1_000,
            read_spin: READ_SPIN,
        }
    }
}

/// openraft's config from ours.
///
/// openraft's own election timer is off (`enable_elect = false`): it waits out
/// the leader lease, then a random time drawn once per process, and looks only
/// every 1.5 heartbeats, so it campaigned 1.5-2x later than etcd with the same
/// numbers. [`crate::election`] campaigns instead, at a fresh random deadline in
/// `election_min..=election_max` after each renewal. openraft still uses
/// `election_timeout_max` as the leader lease ([`Timeouts::lease`]);
/// `election_timeout_min` is how long openraft waits for each vote request's
/// answer, and must lie between the heartbeat and the lease (decisions 0005
/// and 0019).
pub(crate) fn raft_config(
    cluster: &str,
    t: &Timeouts,
    tuning: &Tuning,
) -> Result<openraft::Config, String> {
    let lease = t.lease().as_millis() as u64;
    let cfg = openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: t.heartbeat.as_millis() as u64,
        election_timeout_min: lease - 1,
        election_timeout_max: lease,
        enable_elect: false,
        install_snapshot_timeout: t.snapshot.as_millis() as u64,
        // openraft gives every AppendEntries one heartbeat to be answered
        // and resends the same batch when it is not: a follower catching up
        // after a restart that needed longer than that to decode and append
        // 1,000 entries (a debug build, a loaded machine) got the same batch
        // again and again, and the cluster could not commit for minutes
        // (chaos seed 3223985620). 64 entries keep each request small; a
        // steady stream of writes rarely batches more.
        max_payload_entries: 64,
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
    fn openraft_does_not_campaign_and_its_lease_is_the_shortest_it_allows() {
        for p in [Profile::Lan, Profile::Wan] {
            let t = Timeouts::profile(p);
            let c = raft_config("t", &t, &Tuning::default()).unwrap();
            assert!(
                !c.enable_elect,
                "{p:?}: openraft must leave elections to us"
            );
            let ms = |d: Duration| d.as_millis() as u64;
            // The lease is one and a half heartbeats, far inside our own
            // window, and a vote request (openraft gives it
            // election_timeout_min) gets more than a heartbeat.
            assert_eq!(c.election_timeout_max, ms(t.lease()));
            assert_eq!(c.election_timeout_max * 2, c.heartbeat_interval * 3);
            assert!(c.election_timeout_min > c.heartbeat_interval, "{p:?}");
            assert!(t.lease() * 3 < t.election_min, "{p:?}");
            assert!(c.election_timeout_min > c.heartbeat_interval, "{p:?}");
            assert!(c.election_timeout_min < c.election_timeout_max, "{p:?}");
        }
        let mut flat = Timeouts::profile(Profile::Lan);
        flat.election_max = flat.election_min;
        assert!(flat.validate().unwrap_err().contains("above election_min"));
    }

    #[test]
    fn an_election_timeout_near_the_heartbeat_is_refused() {
        let mut t = Timeouts::profile(Profile::Lan);
        t.election_min = t.heartbeat;
        assert!(t.validate().unwrap_err().contains("three heartbeats"));
    }
}
