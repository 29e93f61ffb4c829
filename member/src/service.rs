//! The VEN service (gRPC over TLS): pairing, the policy stream with its
//! heartbeats and acknowledgements, flow reports, and the RTT probe.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sc_proto::contract::MAX_ADDRESSES;
use sc_proto::ven::ven_server::{Ven, VenServer as VenGrpc};
use sc_proto::ven::{
    action, pce_message, ven_message, Action, FlowAck, FlowBatch, Member, PairRequest,
    PairResponse, PceMessage, PingRequest, PingResponse, Policy, VenMessage,
};
use sc_raft::pki::{common_name, VenSigner};
use sc_raft::{Node, TlsMaterial};
use sc_store::db::{Db, Txn};
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::WorkloadDoc;
use sc_store::record::Record;
use serde::{Deserialize, Serialize};
use std::pin::Pin;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::cache::PolicyCache;
use crate::error::MemberError;
use crate::pairing;
use crate::presence::Presence;
use crate::traffic::{Resolver, SledTraffic, TrafficStore};
use sc_policy::compute::CompiledPolicy;
use sc_policy::flowlog::{self, Decision, Direction};
use sc_policy::model::VisibilityLevel;
use sc_proto::federation::{FlowEnd, FlowQuery, FlowQueryReply, TrafficFlow, VenPolicy};

/// How the VEN service runs.
#[derive(Debug, Clone)]
pub struct VenOptions {
    /// Socket to listen on.
    pub listen: SocketAddr,
    /// Address VENs use to reach it (default: `listen`).
    pub advertise: Option<String>,
    /// The node's certificate and key (VENs verify the member with the cluster CA).
    pub tls: TlsMaterial,
    /// VEN CA certificate and key: trusts and signs VEN identities.
    pub ven_ca: (PathBuf, PathBuf),
    /// Where the region's flow summaries are kept.
    pub flow_dir: PathBuf,
    /// How long flows are kept.
    pub flow_retention: Duration,
    /// The most bytes of flow summaries kept (the oldest go first past it).
    pub flow_disk_budget: u64,
    /// How long a VEN may be disconnected before its workload goes offline.
    pub offline_after: Duration,
    /// The most flows one report may carry.
    pub max_flow_batch: usize,
    /// The most flow summaries one VEN may have stored per minute: a flooding
    /// VEN is refused beyond it while the others are served.
    pub flow_quota_per_minute: u64,
    /// How long a new stream may take to say hello.
    pub hello_timeout: Duration,
}

impl VenOptions {
    /// Defaults for everything but addresses and files.
    pub fn new(
        listen: SocketAddr,
        tls: TlsMaterial,
        ven_ca: (PathBuf, PathBuf),
        flow_dir: PathBuf,
    ) -> Self {
        VenOptions {
            listen,
            advertise: None,
            tls,
            ven_ca,
            flow_dir,
            flow_retention: Duration::from_secs(7 * 24 * 3600),
            flow_disk_budget: 10 << 30,
            offline_after: Duration::from_secs(60),
            max_flow_batch: 1000,
            flow_quota_per_minute: 20_000,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// One member in the replicated member list (`vm/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDoc {
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// VEN service address.
    pub addr: String,
}

/// What the member knows of one connected VEN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The policy hash the VEN last acknowledged.
    pub applied_hash: String,
    /// Its version.
    pub applied_version: u64,
    /// Policies sent on this stream.
    pub sent: u64,
}

/// Policy streams one VEN certificate may hold open at one member: its
/// stream, and a second while it reconnects and the first is not yet known to
/// be dead. More is a copied certificate or a broken agent.
const MAX_STREAMS_PER_VEN: usize = 2;

/// Open streams by session number, and how many each workload has (a VEN
/// reconnecting may briefly have two).
#[derive(Default)]
struct Sessions {
    by_session: HashMap<u64, (String, SessionState)>,
    open: HashMap<String, usize>,
}

impl Sessions {
    /// Opens a session unless the workload already holds
    /// [`MAX_STREAMS_PER_VEN`] here.
    fn open(&mut self, session: u64, id: &str) -> bool {
        let n = self.open.entry(id.to_string()).or_default();
        if *n >= MAX_STREAMS_PER_VEN {
            return false;
        }
        *n += 1;
        self.by_session
            .insert(session, (id.to_string(), SessionState::default()));
        true
    }

    /// Whether the workload has a policy stream here.
    fn streams(&self, id: &str) -> bool {
        self.open.get(id).is_some_and(|n| *n > 0)
    }

    /// Ends a session; returns whether its workload still has another.
    fn close(&mut self, session: u64) -> bool {
        let Some((id, _)) = self.by_session.remove(&session) else {
            return false;
        };
        match self.open.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            _ => {
                self.open.remove(&id);
                false
            }
        }
    }

    fn state(&mut self, session: u64) -> Option<&mut SessionState> {
        self.by_session.get_mut(&session).map(|(_, st)| st)
    }
}

struct Svc {
    node: Node,
    db: Db,
    cache: Arc<PolicyCache>,
    signer: VenSigner,
    server_ca: String,
    opts: VenOptions,
    traffic: Arc<SledTraffic>,
    resolver: Resolver,
    /// Per VEN: (minute, flows stored in it), for the quota.
    flow_quota: Mutex<HashMap<String, (u64, u64)>>,
    /// Open streams.
    sessions: Mutex<Sessions>,
    /// Online/offline changes, committed in batches.
    presence: Presence,
    /// Turns true when the service stops: open streams end, so VENs fail over.
    stopping: watch::Receiver<bool>,
    /// True while the node is fenced for a drill: streams end and new ones are
    /// refused, as if the region were down, so VENs fail over.
    fenced: watch::Receiver<bool>,
    next_session: std::sync::atomic::AtomicU64,
    /// For the region's `/metrics`.
    metrics: crate::metrics::VenMetrics,
}

/// A running VEN service.
pub struct VenServer {
    /// Bound address.
    pub addr: SocketAddr,
    svc: Arc<Svc>,
    /// Cancelled to stop: by [`VenServer::stop`] or by the region that owns it.
    shutdown: CancellationToken,
    /// The gRPC server first (it drains), then the tasks beside it.
    tasks: Vec<JoinHandle<()>>,
}

async fn members(db: &Db) -> Vec<Member> {
    match db.scan::<MemberDoc>(keys::VEN_MEMBERS, 10_000).await {
        Ok((list, _)) => list
            .into_iter()
            .map(|m| Member {
                name: m.value.name,
                region: m.value.region,
                addr: m.value.addr,
            })
            .collect(),
        Err(_) => vec![],
    }
}

impl Svc {
    fn region(&self) -> String {
        self.node.info().region.clone()
    }

    /// A member fenced for a drill serves no VEN: it answers as a lost region
    /// would, and fast, so VENs go to another member at once.
    fn refuse_if_fenced(&self) -> Result<(), Status> {
        match self.node.fence().serving_blocked() {
            Some(left) => Err(Status::unavailable(format!(
                "this member is fenced for a drill for another {} s; connect to another",
                left.as_secs() + 1
            ))),
            None => Ok(()),
        }
    }

    /// The workload a client certificate speaks for.
    fn identity<T>(req: &Request<T>) -> Result<String, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("present the certificate you received at pairing")
        })?;
        let first = certs.first().ok_or_else(|| {
            Status::unauthenticated("present the certificate you received at pairing")
        })?;
        common_name(first.as_ref())
            .filter(|id| keys::valid_id(id))
            .ok_or_else(|| Status::unauthenticated("the client certificate names no workload"))
    }

    async fn workload(&self, id: &str) -> Result<(WorkloadDoc, u64), Status> {
        let rec = self
            .db
            .get::<Record<WorkloadDoc>>(&keys::obj(Space::Live, Kind::Workload, id))
            .await
            .map_err(MemberError::from)?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "workload {id} is not paired (unpaired or deleted)"
                ))
            })?;
        if !rec.value.doc.managed {
            return Err(Status::permission_denied(format!(
                "workload {id} is not managed"
            )));
        }
        Ok((rec.value.doc, rec.rev))
    }
}

/// The member's side of a policy stream. It is the `Session` itself, polled by
/// the HTTP/2 stream's own task: a push is rendered and framed where it is sent,
/// with no task or channel between (at 10,000 VENs, one task wake-up and one
/// channel hand-off less per push, on the cores the pushes share).
type PolicyStreamOut = Pin<Box<dyn Stream<Item = Result<PceMessage, Status>> + Send>>;

/// The gRPC handle on the shared service state.
#[derive(Clone)]
struct Handle(Arc<Svc>);

impl std::ops::Deref for Handle {
    type Target = Svc;
    fn deref(&self) -> &Svc {
        &self.0
    }
}

#[tonic::async_trait]
impl Ven for Handle {
    async fn pair(&self, req: Request<PairRequest>) -> Result<Response<PairResponse>, Status> {
        self.refuse_if_fenced()?;
        let r = req.into_inner();
        let info = self.node.info().clone();
        let paired = pairing::pair(
            &self.db,
            &self.signer,
            &info.region,
            &info.name,
            &r,
            sc_store::time::now_ms(),
        )
        .await?;
        tracing::info!(workload = %paired.workload_id, host = %r.hostname, "VEN paired");
        Ok(Response::new(PairResponse {
            workload_id: paired.workload_id,
            cert_pem: paired.cert_pem,
            server_ca_pem: self.server_ca.clone(),
            members: members(&self.db).await,
            region: info.region,
        }))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let info = self.node.info();
        Ok(Response::new(PingResponse {
            name: info.name.clone(),
            region: info.region.clone(),
            members: members(&self.db).await,
        }))
    }

    type PolicyStreamStream = PolicyStreamOut;

    async fn policy_stream(
        &self,
        req: Request<Streaming<VenMessage>>,
    ) -> Result<Response<PolicyStreamOut>, Status> {
        let id = Svc::identity(&req)?;
        self.refuse_if_fenced()?;
        let (doc, rev) = self.workload(&id).await?;
        let away = doc.region.as_deref() != Some(self.region().as_str());
        let inbound = req.into_inner();
        let svc = self.0.clone();
        let session = svc
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opened = svc
            .sessions
            .lock()
            .map_err(|_| Status::internal("sessions lock"))?
            .open(session, &id);
        if !opened {
            return Err(Status::resource_exhausted(format!(
                "workload {id} already holds {MAX_STREAMS_PER_VEN} policy streams at this member; close one first"
            )));
        }
        // Adopted once the stream is open, so an earlier stream's end (its
        // release of the adoption) sees this one and leaves it.
        if away {
            svc.cache.adopt(&id, doc.region.as_deref());
        }
        let notify = svc.cache.watch(&id);
        if svc.presence.must_claim(&doc) {
            svc.presence.set(&id, true);
        }
        // A VEN away from its workload's home region (failed over, or its
        // application moved while it was away) is served, and told where home
        // is: it goes there when a node of that region answers.
        let queued = match (&doc.region, away) {
            (Some(home), true) => [Ok(rehome(home, rev))].into(),
            _ => Default::default(),
        };
        let session = Session {
            stopping: svc.stopping.clone(),
            fenced: svc.fenced.clone(),
            svc,
            id,
            session,
            inbound,
            notify,
            last_sent: None,
            ended: false,
            goodbye: false,
            pushed: None,
            region_seen: doc.region,
            queued,
        };
        let out = futures_util::stream::unfold(session, |mut s| async move {
            let msg = s.next().await?;
            Some((msg, s))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn report_flows(&self, req: Request<FlowBatch>) -> Result<Response<FlowAck>, Status> {
        let id = Svc::identity(&req)?;
        let batch = req.into_inner();
        if batch.flows.len() > self.opts.max_flow_batch {
            return Err(Status::resource_exhausted(format!(
                "{} flows in one report; at most {} per batch (split it)",
                batch.flows.len(),
                self.opts.max_flow_batch
            )));
        }
        if !self.resolver.exists(&id).await.map_err(Status::from)? {
            return Err(Status::permission_denied(format!(
                "workload {id} is not paired (unpaired or deleted); its flows are refused"
            )));
        }
        // Flows come from the member that serves the VEN (its agent reports on
        // its stream's channel), so one certificate cannot spend the flow
        // quota of every member, and an unpaired VEN (whose stream ended) none.
        let streaming = self
            .sessions
            .lock()
            .map_err(|_| Status::internal("sessions lock"))?
            .streams(&id);
        if !streaming {
            return Err(Status::failed_precondition(format!(
                "workload {id} has no policy stream at this member: report flows where you stream policy"
            )));
        }
        let now = sc_store::time::now_ms();
        self.charge_quota(&id, now, batch.flows.len() as u64)?;
        let started = std::time::Instant::now();
        let policy = self.cache.policy_of(&id).map(|r| r.compiled.clone());
        let mut records = Vec::with_capacity(batch.flows.len());
        for (i, f) in batch.flows.iter().enumerate() {
            records.extend(self.resolve_flow(&id, policy.as_deref(), i, f, now).await?);
        }
        if batch.dropped > 0 {
            tracing::warn!(workload = %id, dropped = batch.dropped, "a VEN dropped flow summaries it could not keep");
        }
        let store = self.traffic.clone();
        let stored = tokio::task::spawn_blocking(move || store.ingest(&records))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::from)?;
        self.metrics.flows_stored.inc_by(stored as u64);
        self.metrics
            .flow_ingest
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(FlowAck {
            stored: stored as u32,
        }))
    }
}

impl Svc {
    /// Counts `n` flows against `id`'s quota of this minute, or refuses them.
    fn charge_quota(&self, id: &str, now: u64, n: u64) -> Result<(), Status> {
        let minute = now / 60_000;
        let mut q = self
            .flow_quota
            .lock()
            .map_err(|_| Status::internal("quota lock"))?;
        if q.len() > 100_000 {
            q.retain(|_, (m, _)| *m == minute);
        }
        let e = q.entry(id.to_string()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        if e.1 + n > self.opts.flow_quota_per_minute {
            return Err(Status::resource_exhausted(format!(
                "workload {id} reported more than {} flows this minute; retry in the next",
                self.opts.flow_quota_per_minute
            )));
        }
        e.1 += n;
        Ok(())
    }

    /// Checks one reported flow and resolves both ends to workloads. A flow
    /// reported without a decision (only conntrack saw it) is decided here
    /// from the reporter's policy, as its firewall would have; flows its
    /// visibility level does not keep are left out (`None`), and bytes are
    /// kept only at `enhanced_data_collection`.
    async fn resolve_flow(
        &self,
        reporter: &str,
        policy: Option<&CompiledPolicy>,
        i: usize,
        f: &sc_proto::ven::Flow,
        now: u64,
    ) -> Result<Option<TrafficFlow>, Status> {
        let bad = |what: &str| Status::invalid_argument(format!("flows[{i}].{what}"));
        let src: IpAddr = f.src.parse().map_err(|_| bad("src: not an IP address"))?;
        let dst: IpAddr = f.dst.parse().map_err(|_| bad("dst: not an IP address"))?;
        let port = u16::try_from(f.port).map_err(|_| bad("port: above 65535"))?;
        let proto = u8::try_from(f.proto).map_err(|_| bad("proto: above 255"))?;
        if f.first_seen_ms > f.last_seen_ms {
            return Err(bad("first_seen_ms: after last_seen_ms"));
        }
        // A VEN's clock may run ahead: no flow is stored as from the future.
        if f.last_seen_ms > now + 60_000 {
            return Err(bad(
                "last_seen_ms: more than a minute ahead of the member's clock",
            ));
        }
        let direction = match f.direction.as_str() {
            "" | "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => return Err(bad("direction: inbound or outbound")),
        };
        if f.rule.len() > 160 {
            return Err(bad("rule: longer than a rule reference"));
        }
        if !matches!(f.state.as_str(), "" | "N" | "A" | "C" | "T") {
            return Err(bad("state: N, A, C, T or empty"));
        }
        let (decision, rule) = match f.decision.as_str() {
            "" if f.allowed => ("allowed", f.rule.clone()),
            "" => ("blocked", f.rule.clone()),
            d @ ("allowed" | "potentially_blocked" | "blocked") => (d, f.rule.clone()),
            "unknown" => {
                let peer = if direction == Direction::Inbound {
                    src
                } else {
                    dst
                };
                match policy.and_then(|c| flowlog::decide(c, direction, peer, proto, port)) {
                    Some((d, r)) => (
                        d.as_str(),
                        r.as_ref().map(flowlog::rule_name).unwrap_or_default(),
                    ),
                    None => ("unknown", String::new()),
                }
            }
            _ => {
                return Err(bad(
                    "decision: allowed, potentially_blocked, blocked or unknown",
                ))
            }
        };
        let level = policy.map(|c| c.visibility).unwrap_or_default();
        if let Some(d) = Decision::parse(decision) {
            if !flowlog::logs(level, d) {
                return Ok(None);
            }
        } else if level == VisibilityLevel::FlowOff {
            return Ok(None);
        }
        let bytes = level == VisibilityLevel::EnhancedDataCollection;
        let end = |ip: IpAddr| async move {
            Ok::<_, Status>(FlowEnd {
                ip: ip.to_string(),
                workload: self.resolver.workload_at(ip).await.map_err(Status::from)?,
            })
        };
        Ok(Some(TrafficFlow {
            src: Some(end(src).await?),
            dst: Some(end(dst).await?),
            port: u32::from(port),
            proto: u32::from(proto),
            direction: direction.as_str().into(),
            decision: decision.into(),
            rule,
            dst_bi: if bytes { f.bytes_in } else { 0 },
            dst_bo: if bytes { f.bytes_out } else { 0 },
            state: f.state.clone(),
            num_connections: f.count,
            first_ms: f.first_seen_ms,
            last_ms: f.last_seen_ms,
            reporter: reporter.to_string(),
            region: self.region(),
        }))
    }

    /// Rolls up and expires old traffic, off the async threads.
    async fn maintain_traffic(&self, now: u64) {
        let store = self.traffic.clone();
        match tokio::task::spawn_blocking(move || store.maintain(now)).await {
            Ok(Ok(m)) if m.expired + m.over_budget > 0 => tracing::info!(
                expired = m.expired,
                over_budget = m.over_budget,
                rolled_up = m.rolled_up,
                "dropped old traffic"
            ),
            Ok(Ok(m)) if m.rolled_up > 0 => {
                tracing::debug!(rolled_up = m.rolled_up, "rolled up old traffic")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not maintain the traffic store"),
            _ => {}
        }
    }
}

/// The region's side of a global flow query: the node's federation service
/// hands queries here.
struct RegionFlows(Arc<SledTraffic>, crate::metrics::VenMetrics);

#[tonic::async_trait]
impl sc_raft::FlowQueries for RegionFlows {
    async fn query(&self, q: FlowQuery) -> Result<FlowQueryReply, String> {
        let store = self.0.clone();
        let timer = self.1.flow_query.clone();
        tokio::task::spawn_blocking(move || timed_query(&store, &q, &timer))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// One query of the region's traffic store, its time observed.
fn timed_query(
    store: &SledTraffic,
    q: &FlowQuery,
    timer: &prometheus_client::metrics::histogram::Histogram,
) -> Result<FlowQueryReply, MemberError> {
    let started = std::time::Instant::now();
    let reply = store.query(q);
    timer.observe(started.elapsed().as_secs_f64());
    reply
}

/// One VEN's open policy stream: what it was sent, and what ends it.
struct Session {
    svc: Arc<Svc>,
    /// The workload (from the client certificate).
    id: String,
    session: u64,
    inbound: Streaming<VenMessage>,
    /// Pinged by the cache when this workload's policy may have changed.
    notify: Arc<Notify>,
    /// The hash of the policy the VEN has or was last sent; `None` until hello.
    last_sent: Option<String>,
    stopping: watch::Receiver<bool>,
    fenced: watch::Receiver<bool>,
    /// The last message (an error or an unpair) has been handed out.
    ended: bool,
    /// The VEN said goodbye: offline at once, without waiting for it to return.
    goodbye: bool,
    /// The policy last pushed and when, until the VEN acknowledges it.
    pushed: Option<(String, std::time::Instant)>,
    /// The workload's region as this stream last saw it: a change (its
    /// application moved) is told to the VEN.
    region_seen: Option<String>,
    /// Messages to hand out before anything else (a rehome before a policy).
    queued: std::collections::VecDeque<Result<PceMessage, Status>>,
}

/// The action that tells a VEN its home region, as of the workload record's
/// revision `rev` (the VEN ignores what is older than it already acted on).
fn rehome(region: &str, rev: u64) -> PceMessage {
    PceMessage {
        kind: Some(pce_message::Kind::Action(Action {
            kind: action::Kind::Rehome as i32,
            region: region.to_string(),
            revision: rev,
        })),
    }
}

/// What woke a session.
enum Wake {
    Stopping,
    Fenced,
    Notified,
    Inbound(Result<Option<VenMessage>, Status>),
}

impl Session {
    /// The next message for the VEN; `None` ends the stream.
    async fn next(&mut self) -> Option<Result<PceMessage, Status>> {
        if let Some(m) = self.queued.pop_front() {
            return Some(m);
        }
        if self.ended {
            return None;
        }
        if self.last_sent.is_none() {
            if let Err(last) = self.hello().await {
                self.ended = true;
                return last;
            }
            self.svc.metrics.streams.inc();
            // A VEN that enforced nothing yet (new) says hello with no hash:
            // its first policy is not a resync.
            let enforcing = self.last_sent.as_deref().is_some_and(|h| !h.is_empty());
            if let Some(msg) = self.current().await {
                // The VEN came back enforcing an older policy than its current one.
                let policy = matches!(
                    &msg,
                    Ok(PceMessage {
                        kind: Some(pce_message::Kind::Policy(_))
                    })
                );
                if enforcing && policy {
                    self.svc.metrics.resyncs.inc();
                }
                return Some(msg);
            }
        }
        loop {
            let wake = tokio::select! {
                _ = self.stopping.changed() => Wake::Stopping,
                Ok(()) = self.fenced.changed() => Wake::Fenced,
                _ = self.notify.notified() => Wake::Notified,
                msg = self.inbound.message() => Wake::Inbound(msg),
            };
            match wake {
                Wake::Stopping => {
                    self.ended = true;
                    return Some(Err(Status::unavailable(
                        "this member is shutting down; connect to another",
                    )));
                }
                Wake::Fenced => {
                    if *self.fenced.borrow() {
                        self.ended = true;
                        return Some(Err(Status::unavailable(
                            "this member is fenced for a drill; connect to another",
                        )));
                    }
                }
                Wake::Notified => {
                    if let Some(msg) = self.current().await {
                        return Some(msg);
                    }
                }
                Wake::Inbound(Ok(Some(VenMessage {
                    kind: Some(ven_message::Kind::Applied(a)),
                }))) => {
                    if let Some((hash, at)) = &self.pushed {
                        if *hash == a.policy_hash {
                            let took = at.elapsed().as_secs_f64();
                            self.svc.metrics.push_ack.observe(took);
                            self.pushed = None;
                        }
                    }
                    self.record(a.policy_hash, a.policy_version)
                }
                Wake::Inbound(Ok(Some(VenMessage {
                    kind: Some(ven_message::Kind::Heartbeat(_)),
                }))) => {}
                Wake::Inbound(Ok(Some(VenMessage {
                    kind: Some(ven_message::Kind::Goodbye(_)),
                }))) => {
                    self.goodbye = true;
                    return None;
                }
                Wake::Inbound(Ok(Some(VenMessage {
                    kind: Some(ven_message::Kind::Hello(_)) | None,
                }))) => {
                    self.ended = true;
                    return Some(Err(Status::invalid_argument(
                        "expected applied, heartbeat or goodbye",
                    )));
                }
                Wake::Inbound(Ok(None) | Err(_)) => return None,
            }
        }
    }

    /// Waits for the VEN's hello. `Err` holds the stream's last item.
    async fn hello(&mut self) -> Result<(), Option<Result<PceMessage, Status>>> {
        let timeout = self.svc.opts.hello_timeout;
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Ok(Ok(Some(VenMessage {
                kind: Some(ven_message::Kind::Hello(h)),
            }))) => {
                // What the VEN enforces now, until it acknowledges something newer.
                self.record(h.policy_hash.clone(), h.policy_version);
                self.last_sent = Some(h.policy_hash);
                self.addresses(&h.addresses).await.map_err(|e| Some(Err(e)))
            }
            Ok(Ok(Some(_))) => Err(Some(Err(Status::invalid_argument(
                "the first message must be hello",
            )))),
            Ok(Err(e)) => {
                tracing::debug!(workload = %self.id, error = %e, "stream broke before hello");
                Err(None)
            }
            Ok(Ok(None)) | Err(_) => Err(None),
        }
    }

    /// Records the addresses a VEN reports in its hello when they differ from
    /// its workload's (the host moved); none reported means unchanged.
    async fn addresses(&self, reported: &[String]) -> Result<(), Status> {
        if reported.is_empty() {
            return Ok(());
        }
        if reported.len() > MAX_ADDRESSES {
            return Err(Status::invalid_argument(format!(
                "{} addresses in hello; at most {MAX_ADDRESSES}",
                reported.len()
            )));
        }
        let mut addresses = Vec::with_capacity(reported.len());
        for a in reported {
            addresses.push(a.parse::<std::net::IpAddr>().map_err(|_| {
                Status::invalid_argument(format!("hello: {a:?} is not an IP address"))
            })?);
        }
        let key = keys::obj(Space::Live, Kind::Workload, &self.id);
        let doc = self
            .svc
            .db
            .get::<Record<WorkloadDoc>>(&key)
            .await
            .map_err(MemberError::from)?
            .map(|r| r.value.doc);
        if doc.is_some_and(|d| crate::presence::Presence::addresses_differ(&d, &addresses)) {
            self.svc.presence.set_addresses(&self.id, addresses);
        }
        Ok(())
    }

    /// Notes the policy the VEN says it enforces.
    fn record(&self, hash: String, version: u64) {
        if let Ok(mut s) = self.svc.sessions.lock() {
            if let Some(st) = s.state(self.session) {
                st.applied_hash = hash;
                st.applied_version = version;
            }
        }
    }

    /// What the VEN must hear now: a rehome if its workload's region changed
    /// (its application moved), then its policy if it changed.
    async fn current(&mut self) -> Option<Result<PceMessage, Status>> {
        let Some((region, rev)) = self.moved().await else {
            return self.policy().await;
        };
        if let Some(p) = self.policy().await {
            self.queued.push_back(p);
        }
        Some(Ok(rehome(&region, rev)))
    }

    /// The workload's region, and its record's revision, if the region
    /// changed since this stream last looked.
    async fn moved(&mut self) -> Option<(String, u64)> {
        let key = keys::obj(Space::Live, Kind::Workload, &self.id);
        let rec = self.svc.db.get::<Record<WorkloadDoc>>(&key).await.ok()??;
        let region = rec.value.doc.region;
        if region == self.region_seen {
            return None;
        }
        self.region_seen = region.clone();
        region.map(|r| (r, rec.rev))
    }

    /// This workload's current policy if it differs from what was last sent;
    /// an unpair action (and the end) if the workload is gone; the end if it
    /// moved to another region (after the rehome that says where).
    async fn policy(&mut self) -> Option<Result<PceMessage, Status>> {
        let Some(p) = self.svc.cache.policy_of(&self.id) else {
            // No policy for a streaming VEN: its workload was unpaired (deleted),
            // or moved to another region (no longer compiled here).
            let gone = self
                .svc
                .db
                .rev(&keys::obj(Space::Live, Kind::Workload, &self.id))
                .await
                .map(|r| r.is_none())
                .unwrap_or(false);
            if !gone {
                let mine = self.svc.region();
                return match self.region_seen.as_deref() {
                    Some(r) if r != mine => {
                        self.ended = true;
                        Some(Err(Status::unavailable(format!(
                            "workload {} is served by region {r} now; connect there",
                            self.id
                        ))))
                    }
                    _ => None,
                };
            }
            self.ended = true;
            return Some(Ok(PceMessage {
                kind: Some(pce_message::Kind::Action(Action {
                    kind: action::Kind::Unpair as i32,
                    ..Default::default()
                })),
            }));
        };
        if self.last_sent.as_deref() == Some(p.hash.as_str()) {
            return None;
        }
        self.last_sent = Some(p.hash.clone());
        self.pushed = Some((p.hash.clone(), std::time::Instant::now()));
        if let Ok(mut s) = self.svc.sessions.lock() {
            if let Some(st) = s.state(self.session) {
                st.sent += 1;
            }
        }
        Some(Ok(PceMessage {
            kind: Some(pce_message::Kind::Policy(Policy {
                version: p.version,
                hash: p.hash.clone(),
                compiled_json: p.json.clone(),
            })),
        }))
    }
}

impl Drop for Session {
    /// The stream is over (ended here, or dropped when its connection went):
    /// forget it, and take the workload offline unless the VEN comes back (here
    /// or to another member) in time.
    fn drop(&mut self) {
        let svc = &self.svc;
        svc.cache.unwatch(&self.id, &self.notify);
        let another = svc
            .sessions
            .lock()
            .map(|mut s| s.close(self.session))
            .unwrap_or(false);
        if another {
            // Another stream of the same VEN is still open here.
            return;
        }
        if self.goodbye {
            svc.presence.set(&self.id, false);
            svc.cache.release(&self.id);
            return;
        }
        // Dropped outside the runtime means the process is ending: nothing to do.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (svc, id) = (svc.clone(), self.id.clone());
        rt.spawn(async move {
            // A member that is stopping leaves that to the others.
            let mut stopping = svc.stopping.clone();
            tokio::select! {
                _ = tokio::time::sleep(svc.opts.offline_after) => {}
                _ = stopping.changed() => return,
            }
            let back = svc
                .sessions
                .lock()
                .map(|s| s.open.contains_key(&id))
                .unwrap_or(false);
            if !back {
                svc.presence.set(&id, false);
                svc.cache.release(&id);
            }
        });
    }
}

impl VenServer {
    /// Starts the VEN service beside `node` and the policy cache behind it;
    /// it serves until `shutdown` is cancelled (or [`VenServer::stop`]).
    pub async fn start(
        node: Node,
        opts: VenOptions,
        shutdown: CancellationToken,
    ) -> Result<VenServer, MemberError> {
        let signer = VenSigner::load(&opts.ven_ca.0, &opts.ven_ca.1)
            .map_err(|e| MemberError::Start(e.to_string()))?;
        let db = Db::new(node.clone());
        // Subscribe before loading: a change applied while the cache loads,
        // or before its follower task starts, is then replayed onto it (the
        // cache's update reads the keys' current state, so a replay of a
        // change the load already saw is harmless) instead of being missed
        // until the next change to the same objects.
        let notices = node.subscribe(&PolicyCache::FOLLOWED);
        let cache = Arc::new(PolicyCache::load(Db::new(node.clone()), &node.info().region).await?);
        let traffic = Arc::new(SledTraffic::open(
            &opts.flow_dir,
            crate::traffic::Limits::new(opts.flow_retention, opts.flow_disk_budget),
        )?);
        let metrics = crate::metrics::VenMetrics::default();
        node.serve_flow_queries(Arc::new(RegionFlows(traffic.clone(), metrics.clone())));
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| MemberError::Start(format!("cannot listen on {}: {e}", opts.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| MemberError::Start(e.to_string()))?;
        let limits = sc_raft::network::listen::ConnLimits::default();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&opts.tls.cert_pem, &opts.tls.key_pem))
            .client_ca_root(Certificate::from_pem(&signer.ca_pem))
            .client_auth_optional(true)
            // A VEN that stalls half-way through its handshake is dropped
            // after as long as a silent new connection may live.
            .timeout(limits.first_bytes);
        let (stop, stopped) = watch::channel(false);
        let (fenced_tx, fenced) = watch::channel(node.fence().serving_blocked().is_some());
        let (presence, presence_task) = Presence::start(Db::new(node.clone()), &node.info().name);
        let svc = Arc::new(Svc {
            stopping: stopped.clone(),
            fenced,
            node: node.clone(),
            db,
            cache: cache.clone(),
            signer,
            server_ca: opts.tls.ca_pem.clone(),
            opts: opts.clone(),
            traffic,
            resolver: Resolver::new(Db::new(node.clone())),
            flow_quota: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Sessions::default()),
            presence,
            next_session: std::sync::atomic::AtomicU64::new(1),
            metrics: metrics.clone(),
        });
        let grpc = VenGrpc::new(Handle(svc.clone())).max_decoding_message_size(4 * 1024 * 1024);
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .map_err(|e| MemberError::Start(e.to_string()))?
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                grpc,
                sc_proto::version::check,
            ))
            .serve_with_incoming_shutdown(
                // Within caps and timeouts (a flood of idle connections
                // cannot take the VENs' service down); TCP_NODELAY so small
                // policy pushes go out now, not after a delayed ACK.
                sc_raft::network::listen::incoming(listener, limits, "ven"),
                shutdown.clone().cancelled_owned(),
            );
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "VEN service stopped");
            }
        })];
        // Streams watch `stopping`: raise it when the shutdown token fires,
        // whoever cancels it, so they end and their VENs fail over.
        let cancelled = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            cancelled.cancelled().await;
            let _ = stop.send(true);
        }));
        tasks.push(tokio::spawn(cache.clone().follow(notices)));
        tasks.push(presence_task);
        tasks.push(tokio::spawn(report(svc.clone(), fenced_tx)));
        // Traffic maintenance (roll-ups, retention, the disk budget) once a
        // minute, whether or not VENs report.
        let maint = svc.clone();
        let stopped = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => maint.maintain_traffic(sc_store::time::now_ms()).await,
                }
            }
        }));
        // Announce this member (replicated), so VENs everywhere learn of it.
        let announce = MemberDoc {
            name: node.info().name.clone(),
            region: node.info().region.clone(),
            addr: opts.advertise.clone().unwrap_or_else(|| addr.to_string()),
        };
        let db2 = Db::new(node.clone());
        let node2 = node.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if node2.has_leader() {
                    let key = keys::ven_member(&announce.name);
                    let same = db2
                        .get::<MemberDoc>(&key)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|m| m.value == announce);
                    if same {
                        return;
                    }
                    let mut txn = Txn::default();
                    if txn.put(key, &announce).is_ok() && db2.commit(txn).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        tracing::info!(%addr, "VEN service listening");
        Ok(VenServer {
            addr,
            svc,
            shutdown,
            tasks,
        })
    }

    /// The policy cache (tests and metrics).
    pub fn cache(&self) -> &Arc<PolicyCache> {
        &self.svc.cache
    }

    /// What each connected VEN acknowledged.
    pub fn sessions(&self) -> HashMap<String, SessionState> {
        self.svc
            .sessions
            .lock()
            .map(|s| {
                s.by_session
                    .values()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// This region's flows matching `q` (tests and tools; global queries go
    /// through the node's federation service).
    pub fn query_flows(&self, q: &FlowQuery) -> Result<FlowQueryReply, MemberError> {
        timed_query(&self.svc.traffic, q, &self.svc.metrics.flow_query)
    }

    /// The service's metrics (the region registers them).
    pub fn metrics(&self) -> &crate::metrics::VenMetrics {
        &self.svc.metrics
    }

    /// Stops the service: open streams end with UNAVAILABLE so VENs fail over.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let mut tasks = self.tasks.into_iter();
        // The server drains: streams end (see `stopping`), VENs disconnect, and its
        // connection tasks finish, releasing the node (a restart can reopen it).
        if let Some(server) = tasks.next() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Follows the node's fence (ending streams when it is raised) and reports the
/// connected and up-to-date VENs in the node's status, for `pce dr status` and
/// drills.
async fn report(svc: Arc<Svc>, fenced_tx: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let fenced = svc.node.fence().serving_blocked().is_some();
        fenced_tx.send_if_modified(|f| std::mem::replace(f, fenced) != fenced);
        // Every tenth tick, starting with the first: a node that has just
        // started says at once that it serves VENs (none yet).
        n += 1;
        if n % 10 != 1 {
            continue;
        }
        let states: Vec<(String, SessionState)> = match svc.sessions.lock() {
            Ok(s) => s.by_session.values().cloned().collect(),
            Err(_) => continue,
        };
        // A workload with two streams (a VEN reconnecting) counts once, as
        // current if either stream has the current policy.
        let mut vens: BTreeMap<String, VenPolicy> = BTreeMap::new();
        for (id, st) in states {
            let current = svc
                .cache
                .policy_of(&id)
                .is_some_and(|p| p.hash == st.applied_hash);
            let v = vens.entry(id.clone()).or_insert(VenPolicy {
                workload: id,
                applied_version: st.applied_version,
                current,
            });
            if current && !v.current {
                v.applied_version = st.applied_version;
                v.current = true;
            }
        }
        let connected = vens.len() as u64;
        let current = vens.values().filter(|v| v.current).count() as u64;
        svc.metrics.connected.set(connected as i64);
        svc.metrics.current.set(current as i64);
        svc.node.set_ven_policies(vens.into_values().collect());
        svc.node.set_services(|s| {
            s.vens_connected = Some(connected);
            s.vens_current = Some(current);
            s.ven_resyncs = Some(svc.metrics.resyncs.get());
        });
    }
}

impl From<MemberError> for Status {
    fn from(e: MemberError) -> Self {
        crate::error::to_status(e)
    }
}
