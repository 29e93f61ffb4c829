//! The VEN's connection loop: measure the round trip to every known member,
//! stream policy from the nearest, apply and acknowledge each push, heartbeat,
//! and on any failure move to the next member, keeping identity and policy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sc_policy::compute::CompiledPolicy;
use sc_proto::ven::ven_client::VenClient;
use sc_proto::ven::{
    pce_message, ven_message, Applied, Flow, FlowBatch, Goodbye, Heartbeat, Hello, PingRequest,
    VenMessage,
};
use sc_proto::version::stamped;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::applier::Applier;
use crate::enforce::Enforcer;
use crate::flows::FlowSource;
use crate::identity::{channel_from, Identity, MemberAddr, StoredPolicy, VenError};

/// Flows sent per `ReportFlows` call (members accept 1,000 by default).
const FLOWS_PER_BATCH: usize = 1000;
/// Flow summaries kept while no member accepts them; beyond, the oldest are
/// dropped and counted.
const MAX_PENDING_FLOWS: usize = 50_000;

/// Flow summaries waiting for a member, bounded.
#[derive(Default)]
struct Pending {
    flows: std::collections::VecDeque<Flow>,
    dropped: u64,
}

impl Pending {
    fn add(&mut self, flows: Vec<Flow>, dropped: u64) {
        self.dropped += dropped;
        for f in flows {
            if self.flows.len() >= MAX_PENDING_FLOWS {
                if let Some(old) = self.flows.pop_front() {
                    self.dropped += old.count;
                }
            }
            self.flows.push_back(f);
        }
    }
}

/// What the agent did, for logs, tests and the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Streaming from this member.
    Connected(String),
    /// A policy was applied and acknowledged.
    Applied {
        /// Its version.
        version: u64,
        /// Its hash.
        hash: String,
    },
    /// The stream to this member ended.
    Disconnected(String, String),
    /// The PCE unpaired this VEN: table removed, identity forgotten, agent stopped.
    Unpaired,
    /// The workload's home region is now this one (its application moved):
    /// saved, and the VEN streams from that region's nodes when one answers.
    Rehomed(String),
}

/// An event of one agent of many reporting into one channel (the simulator):
/// one consumer for the fleet instead of a task per VEN, and the time taken
/// where it happened, not where the consumer got to it.
#[derive(Debug, Clone)]
pub struct FleetEvent {
    /// The agent, as numbered by whoever started it.
    pub agent: usize,
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub event: AgentEvent,
}

/// Where an agent reports what it does.
enum Events {
    One(mpsc::UnboundedSender<AgentEvent>),
    Fleet(mpsc::UnboundedSender<FleetEvent>, usize),
}

/// One VEN.
pub struct Agent {
    dir: Option<PathBuf>,
    identity: Identity,
    /// Programs the firewall and writes the policy cache, off the async
    /// threads and in order (see [`crate::applier`]).
    applier: Applier,
    current: Option<StoredPolicy>,
    events: Option<Events>,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Whether to adopt the member list members report (default); off pins the
    /// VEN to the members it was given (tests, benchmarks).
    pub learn_members: bool,
    /// Where flow summaries come from (none: this VEN reports no flows).
    flows: Option<Box<dyn FlowSource>>,
    /// How often flow summaries are sent.
    pub flow_report_interval: Duration,
    pending: Pending,
    /// The host's addresses, reported in every hello so the workload's record
    /// (and its peers' rules) follow a host that moved; empty: not reported
    /// (the addresses given at pairing stand).
    pub addresses: Vec<String>,
    /// The address this VEN's connections leave from (`None`: the system
    /// picks). Set by the simulator only: see [`crate::identity::channel_from`].
    pub local_address: Option<std::net::IpAddr>,
}

enum End {
    Stopped,
    Unpaired,
    Broken(String),
    /// Told of a new home region elsewhere: pick members again at once.
    Rehome,
}

impl Agent {
    /// An agent for `identity`, keeping state in `dir` (`None`: memory only).
    pub fn new(
        identity: Identity,
        dir: Option<PathBuf>,
        enforcer: Enforcer,
    ) -> Result<Agent, VenError> {
        let current = match &dir {
            Some(d) => StoredPolicy::load(d)?,
            None => None,
        };
        // A simulated VEN with no directory never touches the host.
        let inline = matches!(enforcer, Enforcer::Simulated) && dir.is_none();
        Ok(Agent {
            dir,
            identity,
            applier: Applier::new(enforcer, inline),
            current,
            events: None,
            heartbeat: Duration::from_secs(10),
            learn_members: true,
            flows: None,
            flow_report_interval: Duration::from_secs(10),
            pending: Pending::default(),
            addresses: Vec::new(),
            local_address: None,
        })
    }

    /// Reports the flows `source` gives, every `flow_report_interval`.
    pub fn with_flows(mut self, source: impl FlowSource + 'static) -> Self {
        source.ignore(&self.control());
        self.flows = Some(Box::new(source));
        self
    }

    /// Sends what the collector summarised, and what earlier reports could not
    /// deliver. On failure the summaries stay pending (bounded) for the next
    /// member; `Err` only says the report did not go through.
    async fn report_flows(&mut self, ch: &tonic::transport::Channel) -> Result<(), String> {
        if let Some(c) = &self.flows {
            // The agent's own channel to its members is not the workload's
            // traffic (its rules accept it before any policy rule).
            c.ignore(&self.control());
            let (flows, dropped) = c.take();
            self.pending.add(flows, dropped);
        }
        let mut client = VenClient::new(stamped(ch.clone()));
        while !self.pending.flows.is_empty() || self.pending.dropped > 0 {
            let n = self.pending.flows.len().min(FLOWS_PER_BATCH);
            let batch = FlowBatch {
                flows: self.pending.flows.iter().take(n).cloned().collect(),
                dropped: self.pending.dropped,
            };
            let sent =
                tokio::time::timeout(Duration::from_secs(5), client.report_flows(batch)).await;
            match sent {
                Ok(Ok(_)) => {
                    self.pending.flows.drain(..n);
                    self.pending.dropped = 0;
                }
                Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => return Err("timed out".into()),
            }
        }
        Ok(())
    }

    /// Reports what happens on `tx`.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<AgentEvent>) -> Self {
        self.events = Some(Events::One(tx));
        self
    }

    /// Reports what happens on a channel shared by a fleet, as agent `agent`.
    pub fn with_fleet_events(
        mut self,
        tx: mpsc::UnboundedSender<FleetEvent>,
        agent: usize,
    ) -> Self {
        self.events = Some(Events::Fleet(tx, agent));
        self
    }

    /// The workload this VEN speaks for.
    pub fn workload_id(&self) -> &str {
        &self.identity.workload_id
    }

    fn emit(&self, event: AgentEvent) {
        match &self.events {
            Some(Events::One(tx)) => {
                let _ = tx.send(event);
            }
            Some(Events::Fleet(tx, agent)) => {
                let _ = tx.send(FleetEvent {
                    agent: *agent,
                    at: Instant::now(),
                    event,
                });
            }
            None => {}
        }
    }

    fn control(&self) -> Vec<SocketAddr> {
        self.identity
            .members
            .iter()
            .filter_map(|m| m.addr.parse().ok())
            .collect()
    }

    /// Re-applies the policy kept on disk (before any PCE is reachable).
    /// Returns whether there was one.
    ///
    /// It runs `nft` on the calling thread and returns when it is done: call
    /// it once at startup, before [`Agent::run`] (which applies every later
    /// policy off the async threads).
    pub fn reapply_cached(&self) -> Result<bool, VenError> {
        let Some(p) = &self.current else {
            return Ok(false);
        };
        let compiled: CompiledPolicy = serde_json::from_str(&p.compiled_json)
            .map_err(|e| VenError::Other(format!("cached policy: {e}")))?;
        self.applier.enforcer().apply(&compiled, &self.control())?;
        Ok(true)
    }

    /// Members in the order to try them: the home region's reachable nodes,
    /// then other regions' by measured round-trip time, unreachable ones last
    /// (see [`failover_order`]).
    pub async fn nearest(&mut self) -> Vec<MemberAddr> {
        let mut probes = Vec::new();
        for m in self.identity.members.clone() {
            let ca = self.identity.server_ca_pem.clone();
            let local = self.local_address;
            probes.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = async {
                    let ch =
                        channel_from(&m.addr, &ca, None, Duration::from_secs(2), local).await?;
                    VenClient::new(stamped(ch))
                        .ping(PingRequest {})
                        .await
                        .map_err(|s| VenError::Unreachable(s.message().to_string()))
                }
                .await;
                (m, r.ok().map(|r| (t0.elapsed(), r.into_inner().members)))
            }));
        }
        let mut measured = Vec::new();
        let mut learned = Vec::new();
        for p in probes {
            if let Ok((m, r)) = p.await {
                match r {
                    Some((rtt, members)) => {
                        learned = members;
                        measured.push((rtt, m));
                    }
                    None => measured.push((Duration::MAX, m)),
                }
            }
        }
        // Learn of members added since pairing.
        if self.learn_members && !learned.is_empty() {
            let list: Vec<MemberAddr> = learned.into_iter().map(MemberAddr::from).collect();
            if list != self.identity.members {
                self.identity.members = list;
                if let Some(d) = &self.dir {
                    if let Err(e) = self.identity.save(d) {
                        tracing::warn!(error = %e, "could not save the member list");
                    }
                }
            }
        }
        failover_order(
            self.identity.home_region.as_deref(),
            &self.identity.workload_id,
            measured,
        )
    }

    /// Runs until `stop` turns true, moving between members as they fail.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), VenError> {
        // A member refuses a hello with more; checked here, the VEN says so
        // once instead of reconnecting forever.
        let most = sc_proto::contract::MAX_ADDRESSES;
        if self.addresses.len() > most {
            return Err(VenError::Other(format!(
                "{} addresses to report: a VEN reports at most {most} (give fewer --address)",
                self.addresses.len()
            )));
        }
        'members: loop {
            let order = self.nearest().await;
            for m in order {
                if *stop.borrow() {
                    return Ok(());
                }
                match self.session(&m, &mut stop).await {
                    End::Stopped => return Ok(()),
                    End::Rehome => {
                        tracing::info!(member = %m.name, home = ?self.identity.home_region, "workload moved to another region; reconnecting there");
                        continue 'members;
                    }
                    End::Unpaired => {
                        self.forget().await?;
                        self.emit(AgentEvent::Unpaired);
                        return Ok(());
                    }
                    End::Broken(why) => {
                        tracing::info!(member = %m.name, reason = %why, "member lost; trying the next");
                        self.emit(AgentEvent::Disconnected(m.name.clone(), why));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    async fn session(&mut self, m: &MemberAddr, stop: &mut watch::Receiver<bool>) -> End {
        let ch = match channel_from(
            &m.addr,
            &self.identity.server_ca_pem,
            Some((&self.identity.cert_pem, &self.identity.key_pem)),
            Duration::from_secs(5),
            self.local_address,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return End::Broken(e.to_string()),
        };
        let (tx, rx) = mpsc::channel(8);
        let hello = VenMessage {
            kind: Some(ven_message::Kind::Hello(Hello {
                policy_hash: self
                    .current
                    .as_ref()
                    .map(|p| p.hash.clone())
                    .unwrap_or_default(),
                policy_version: self.current.as_ref().map(|p| p.version).unwrap_or(0),
                addresses: self.addresses.clone(),
            })),
        };
        if tx.send(hello).await.is_err() {
            return End::Broken("stream closed".into());
        }
        let mut inbound = match VenClient::new(stamped(ch.clone()))
            .policy_stream(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return End::Broken(format!("{:?}: {}", s.code(), s.message())),
        };
        self.emit(AgentEvent::Connected(m.name.clone()));
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.tick().await;
        let mut report = tokio::time::interval(self.flow_report_interval);
        report.tick().await;
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(pm)) => match pm.kind {
                        Some(pce_message::Kind::Policy(p)) => {
                            let have = self.current.as_ref().map(|c| c.version);
                            if !supersedes(have, p.version) {
                                tracing::info!(?have, offered = p.version, member = %m.name, "kept the newer policy over an older one from a lagging member");
                                continue;
                            }
                            // Awaited here, so pushes are applied one at a time in
                            // the order they came; the stream waits meanwhile.
                            if let Err(e) = self.apply(p.version, p.hash.clone(), p.compiled_json).await {
                                // Keep enforcing the previous policy; say nothing applied.
                                tracing::error!(error = %e, "could not apply the new policy");
                                continue;
                            }
                            let ack = VenMessage { kind: Some(ven_message::Kind::Applied(Applied { policy_hash: p.hash.clone(), policy_version: p.version })) };
                            if tx.send(ack).await.is_err() {
                                return End::Broken("stream closed".into());
                            }
                            self.emit(AgentEvent::Applied { version: p.version, hash: p.hash });
                        }
                        Some(pce_message::Kind::Action(a)) => {
                            if a.kind == sc_proto::ven::action::Kind::Unpair as i32 {
                                return End::Unpaired;
                            }
                            if a.kind == sc_proto::ven::action::Kind::Rehome as i32 {
                                if self.rehome(a.region, a.revision) && self.identity.home_region.as_deref() != Some(m.region.as_str()) {
                                    return End::Rehome;
                                }
                                continue;
                            }
                            tracing::warn!(action = a.kind, "unknown PCE action ignored");
                        }
                        None => {}
                    },
                    Ok(None) => return End::Broken("the member closed the stream".into()),
                    Err(s) => return End::Broken(format!("{:?}: {}", s.code(), s.message())),
                },
                _ = report.tick(), if self.flows.is_some() => {
                    if let Err(e) = self.report_flows(&ch).await {
                        tracing::warn!(error = %e, pending = self.pending.flows.len(), "flow report not accepted; kept for the next one");
                    }
                }
                _ = beat.tick() => {
                    let hb = VenMessage { kind: Some(ven_message::Kind::Heartbeat(Heartbeat {})) };
                    if tx.send(hb).await.is_err() {
                        return End::Broken("stream closed".into());
                    }
                }
                _ = stop.changed() => {
                    let bye = VenMessage { kind: Some(ven_message::Kind::Goodbye(Goodbye {})) };
                    let _ = tx.send(bye).await;
                    // Let the goodbye leave before the stream is dropped.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return End::Stopped;
                }
            }
        }
    }

    /// Takes `region` as the workload's home (saved with the identity) as of
    /// the workload record's revision `rev`; returns whether it changed. A
    /// member tells a VEN its home whenever the VEN streams from another
    /// region, so the same region again is no news; and a member whose replica
    /// lags may name the region the workload had before it moved, at an older
    /// revision: that is ignored, or the VEN would go back and forth between
    /// the two regions until every replica had applied the move.
    fn rehome(&mut self, region: String, rev: u64) -> bool {
        if !self.identity.take_home(&region, rev) {
            return false;
        }
        if let Some(d) = &self.dir {
            if let Err(e) = self.identity.save(d) {
                tracing::warn!(error = %e, "could not save the new home region");
            }
        }
        self.emit(AgentEvent::Rehomed(region));
        true
    }

    /// Unpaired: stop enforcing (remove the table) and forget identity and policy.
    async fn forget(&mut self) -> Result<(), VenError> {
        let idle = CompiledPolicy {
            workload: self.identity.workload_id.clone(),
            mode: sc_policy::model::EnforcementMode::Idle,
            addresses: vec![],
            inbound: vec![],
            outbound: vec![],
            visibility: Default::default(),
        };
        let dir = self.dir.clone();
        self.applier
            .run(move |enforcer| {
                enforcer.apply(&idle, &[])?;
                if let Some(d) = &dir {
                    for f in [Identity::path(d), StoredPolicy::path(d)] {
                        if let Err(e) = std::fs::remove_file(&f) {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                return Err(VenError::Io { path: f, source: e });
                            }
                        }
                    }
                }
                Ok(())
            })
            .await?;
        self.current = None;
        Ok(())
    }

    /// Checks a pushed policy, enforces it and keeps it on disk. On an error
    /// the previous policy stays enforced and current.
    async fn apply(&mut self, version: u64, hash: String, json: String) -> Result<(), VenError> {
        let got = sc_proto::contract::policy_hash(json.as_bytes());
        if got != hash {
            return Err(VenError::Other(format!(
                "policy hash mismatch: got {got}, told {hash}"
            )));
        }
        let stored = StoredPolicy {
            version,
            hash,
            compiled_json: json,
        };
        let control = self.control();
        if let Some(f) = &self.flows {
            f.ignore(&control);
        }
        let dir = self.dir.clone();
        let stored = self
            .applier
            .run(move |enforcer| {
                // A simulated VEN checks what it received and acknowledges it;
                // parsing and rendering are a real host's own work (see
                // `Enforcer::Simulated`).
                if !matches!(enforcer, Enforcer::Simulated) {
                    let compiled: CompiledPolicy = serde_json::from_str(&stored.compiled_json)
                        .map_err(|e| VenError::Other(format!("policy from the PCE: {e}")))?;
                    enforcer.apply(&compiled, &control)?;
                }
                if let Some(d) = &dir {
                    stored.save(d)?;
                }
                Ok(stored)
            })
            .await?;
        self.current = Some(stored);
        Ok(())
    }
}

/// Whether a policy version a member offers replaces the one enforced.
/// Versions come from the replicated store, so a lower one is from a member
/// whose replica lags (the VEN failed over to it): the VEN keeps enforcing its
/// own until that member catches up and sends the current one (found by `pce
/// chaos`). The same version may come again with other rules (a peer went
/// offline), so equal versions are applied.
fn supersedes(enforced: Option<u64>, offered: u64) -> bool {
    enforced.is_none_or(|have| offered >= have)
}

/// The order a VEN tries members in.
///
/// The home region's reachable nodes come first: they already compile the
/// workload's policy from their region's replica, so losing one node moves its
/// VENs to a sibling with the same policy bytes (no push), and another region
/// adopts the workload only when the whole home region is unreachable. Nodes
/// of one region are equally near, so among them the order is a rendezvous
/// hash of (workload, node): VENs spread over a region's nodes, each VEN's
/// choice survives its restarts, and losing a node moves only that node's VENs.
/// Other regions follow by round-trip time. Unreachable members (`Duration::MAX`)
/// come last, still tried: a ping can fail where a stream would not.
pub fn failover_order(
    home: Option<&str>,
    workload: &str,
    measured: Vec<(Duration, MemberAddr)>,
) -> Vec<MemberAddr> {
    let mut keyed: Vec<_> = measured
        .into_iter()
        .map(|(rtt, m)| {
            let unreachable = rtt == Duration::MAX;
            let away = home != Some(m.region.as_str());
            let (rank, rtt) = if away {
                (0, rtt)
            } else {
                (u64::MAX - rendezvous(workload, &m.name), Duration::ZERO)
            };
            ((unreachable, away, rank, rtt), m)
        })
        .collect();
    keyed.sort_by_key(|a| a.0);
    keyed.into_iter().map(|(_, m)| m).collect()
}

/// A stable 64-bit score of (workload, node): FNV-1a, then a mixer so that
/// names differing in one character still score far apart. Stable across
/// builds and hosts (unlike `std`'s hasher, which promises neither).
fn rendezvous(workload: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in workload.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod order_tests {
    use super::*;

    fn m(name: &str, region: &str) -> MemberAddr {
        MemberAddr {
            name: name.into(),
            region: region.into(),
            addr: format!("{name}:7450"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn names(order: &[MemberAddr]) -> Vec<&str> {
        order.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn the_home_region_comes_first_even_when_another_region_answers_faster() {
        let measured = vec![
            (ms(1), m("us-east-1", "us-east")),
            (ms(9), m("eu-west-1", "eu-west")),
            (ms(9), m("eu-west-2", "eu-west")),
            (ms(3), m("ap-south-1", "ap-south")),
        ];
        let order = failover_order(Some("eu-west"), "w1", measured);
        let names = names(&order);
        assert!(names[..2].contains(&"eu-west-1") && names[..2].contains(&"eu-west-2"));
        assert_eq!(
            &names[2..],
            ["us-east-1", "ap-south-1"],
            "then by round trip"
        );
    }

    #[test]
    fn an_unreachable_home_node_goes_last_and_its_sibling_takes_over() {
        let measured = vec![
            (Duration::MAX, m("eu-west-1", "eu-west")),
            (ms(9), m("eu-west-2", "eu-west")),
            (ms(1), m("us-east-1", "us-east")),
        ];
        let order = failover_order(Some("eu-west"), "w1", measured);
        assert_eq!(names(&order), ["eu-west-2", "us-east-1", "eu-west-1"]);
    }

    #[test]
    fn without_a_home_region_the_order_is_by_round_trip() {
        let measured = vec![
            (ms(5), m("a", "r1")),
            (Duration::MAX, m("b", "r2")),
            (ms(2), m("c", "r3")),
        ];
        assert_eq!(names(&failover_order(None, "w", measured)), ["c", "a", "b"]);
    }

    #[test]
    fn vens_spread_over_a_regions_nodes_and_losing_one_moves_only_its_own() {
        let region = [m("r-1", "r"), m("r-2", "r"), m("r-3", "r")];
        let first = |nodes: &[MemberAddr], w: &str| {
            let measured = nodes.iter().map(|n| (ms(1), n.clone())).collect();
            failover_order(Some("r"), w, measured)[0].name.clone()
        };
        let mut per_node = std::collections::HashMap::new();
        for i in 0..300 {
            let w = format!("workload-{i}");
            let before = first(&region, &w);
            *per_node.entry(before.clone()).or_insert(0) += 1;
            let after = first(&region[1..], &w);
            if before != "r-1" {
                assert_eq!(before, after, "{w} moved although its node stayed");
            }
        }
        for n in ["r-1", "r-2", "r-3"] {
            let got = per_node.get(n).copied().unwrap_or(0);
            assert!((60..=140).contains(&got), "{n} serves {got} of 300");
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::supersedes;

    #[test]
    fn an_older_version_from_a_lagging_member_never_replaces_the_enforced_one() {
        assert!(supersedes(None, 0), "a VEN without policy takes any");
        assert!(supersedes(Some(7), 8), "a newer version applies");
        assert!(
            supersedes(Some(7), 7),
            "the same version recomputed applies"
        );
        assert!(!supersedes(Some(7), 6), "an older version is kept out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member whose process hangs still has its connections taken by the
    /// kernel and never answers the TLS hello. The VEN probes every member
    /// before it picks one, so without a bound on the handshake one hung
    /// member held the choice for good, and the VEN never moved to a live one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_member_does_not_hold_the_choice_of_member() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr");
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        let listener = tokio::spawn(async move {
            while let Ok((conn, _)) = silent.accept().await {
                keep.lock().expect("held").push(conn);
            }
        });
        // A real CA certificate, so the probe gets as far as the handshake.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA");
        let identity = Identity {
            workload_id: "w-1".into(),
            key_pem: String::new(),
            cert_pem: String::new(),
            server_ca_pem: ca.pem(),
            members: vec![MemberAddr {
                name: "hung".into(),
                region: "r1".into(),
                addr: addr.to_string(),
            }],
            home_region: Some("r1".into()),
            home_revision: 0,
            home_taken_at: None,
        };
        let mut agent = Agent::new(identity, None, Enforcer::Simulated).expect("agent");
        agent.learn_members = false;
        let order = tokio::time::timeout(Duration::from_secs(30), agent.nearest())
            .await
            .expect("the probes ended despite the hung member");
        assert_eq!(order.len(), 1, "still listed, to try again later");
        assert!(!held.lock().expect("held").is_empty(), "the probe dialled");
        listener.abort();
    }
}
