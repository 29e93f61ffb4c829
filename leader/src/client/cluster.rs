//! The whole supercluster seen through its admin API: every node's status
//! from any region's API (falling back to the others), what is wrong with it,
//! and waiting for it to settle. The DR runbook, drills and the chaos runner
//! use it; all it needs is the CA and an owner key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sc_raft::NodeStatus;
use serde::Serialize;
use serde_json::Value;

use super::{Answer, ApiClient, ClientError};

type Result<T> = std::result::Result<T, ClientError>;

/// The `href` of an API object (empty if absent).
pub fn href(v: &Value) -> String {
    v["href"].as_str().unwrap_or_default().to_string()
}

/// POSTs `body` and returns the answer's JSON, or the refusal as an error.
pub async fn post(c: &mut ApiClient, path: &str, body: Value) -> Result<Value> {
    let a = c.post(path, &body).await?;
    ok(a, &format!("POST {path}"))
}

/// One node as the status endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Raft id.
    pub id: u64,
    /// Its name and region as the membership records them (known even when
    /// it does not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Its status, when it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not, when it did not.
    pub error: Option<String>,
}

/// The connection, with every region's API once known.
pub struct Cluster {
    ca: String,
    user: String,
    secret: String,
    entry: SocketAddr,
    /// Other regions' APIs to try when the entry cannot answer for the
    /// cluster (down, fenced, cut off).
    fallbacks: Vec<SocketAddr>,
}

impl Cluster {
    /// A connection through the API at `entry` with the cluster CA and an
    /// owner's key (the DR runbook reads them from files; harnesses that made
    /// the cluster have them in hand).
    pub fn new(ca: String, user: String, secret: String, entry: SocketAddr) -> Cluster {
        Cluster {
            ca,
            user,
            secret,
            entry,
            fallbacks: Vec::new(),
        }
    }

    /// Also tries these APIs when the entry cannot answer for the cluster.
    pub fn with_fallbacks(mut self, apis: Vec<SocketAddr>) -> Cluster {
        self.fallbacks = apis.into_iter().filter(|a| *a != self.entry).collect();
        self
    }

    /// The first of the entry and the fallbacks whose region serves (its
    /// health probe answers 200): where a backup or restore should go, not
    /// a fenced or cut-off region's stale replica.
    pub async fn serving_entry(&self) -> Result<SocketAddr> {
        let mut why = Vec::new();
        for addr in std::iter::once(self.entry).chain(self.fallbacks.iter().copied()) {
            match answer_within(addr, self.client(addr)?.get("/api/v2/health")).await {
                Ok(a) if a.status.is_success() => return Ok(addr),
                Ok(a) => why.push(format!(
                    "{addr}: {}",
                    a.json()[0]["reason"].as_str().unwrap_or("not serving")
                )),
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        Err(ClientError::Transport(format!(
            "no region serves: {}",
            why.join("; ")
        )))
    }

    /// The API this connection entered through.
    pub fn entry(&self) -> SocketAddr {
        self.entry
    }

    /// The cluster CA this connection trusts (PEM): it names the cluster.
    pub fn ca_pem(&self) -> &str {
        &self.ca
    }

    /// The API key's user name the calls are made as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A client of the API at `addr` with the owner's credentials.
    pub fn client(&self, addr: SocketAddr) -> Result<ApiClient> {
        Ok(ApiClient::new(addr, Some(&self.ca))?.with_key(&self.user, &self.secret))
    }

    /// Every node's status, asked of `addr`.
    async fn status_via(&self, addr: SocketAddr) -> Result<Vec<NodeView>> {
        let a = answer_within(addr, self.client(addr)?.get("/api/v2/supercluster/status"))
            .await
            .map_err(|e| ClientError::Transport(format!("asking {addr}: {e}")))?;
        let v = ok(a, &format!("status from {addr}"))?;
        let mut out = Vec::new();
        for n in v["nodes"].as_array().cloned().unwrap_or_default() {
            out.push(NodeView {
                id: n["id"].as_u64().unwrap_or_default(),
                name: n["name"].as_str().map(str::to_string),
                region: n["region"].as_str().map(str::to_string),
                status: serde_json::from_value(n["status"].clone()).ok(),
                error: n["error"].as_str().map(str::to_string),
            });
        }
        Ok(out)
    }

    /// Every node's status, from the entry API or, if it cannot answer, from
    /// any other region's API it has told us about.
    pub async fn status(&self, known: &[SocketAddr]) -> Result<Vec<NodeView>> {
        let mut last = None;
        let fallbacks = self.fallbacks.iter().chain(known.iter()).copied();
        for addr in std::iter::once(self.entry).chain(fallbacks) {
            match self.status_via(addr).await {
                Ok(v) if v.iter().all(|n| n.status.is_some()) => return Ok(v),
                Ok(v) => last = Some(Ok(v)),
                Err(e) => {
                    if last.is_none() {
                        last = Some(Err(e));
                    }
                }
            }
        }
        last.unwrap_or_else(|| Err(ClientError::Transport("no API answered".into())))
    }
}

/// How long a status or health question to one API may take in all. A node
/// asks all its peers at once, each within the Raft RPC timeout (3 s on the
/// WAN profile), so a healthy API answers well inside it, dead peers or not;
/// past it the next region is asked.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// `ask`'s answer, or an error once [`ANSWER_TIMEOUT`] has passed: an API
/// that took the connection and then hangs must not hold the operator (the
/// connection itself is bounded by the client's connect timeout).
async fn answer_within(
    addr: SocketAddr,
    ask: impl std::future::Future<Output = Result<Answer>>,
) -> Result<Answer> {
    tokio::time::timeout(ANSWER_TIMEOUT, ask)
        .await
        .map_err(|_| {
            ClientError::Transport(format!("{addr} did not answer within {ANSWER_TIMEOUT:?}"))
        })?
}

/// The body of a 2xx answer, or an error quoting the API's own message.
pub fn ok(a: Answer, what: &str) -> Result<Value> {
    if a.status.is_success() {
        return Ok(a.json());
    }
    let msg = a.json()[0]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&a.body).to_string());
    if a.status.as_u16() == 401 {
        return Err(ClientError::Refused(format!(
            "{what}: the API key was refused ({msg}); give an owner's key with --key-file"
        )));
    }
    Err(ClientError::Refused(format!("{what}: {} {msg}", a.status)))
}

/// The admin API address a node announces.
pub fn api_of(n: &NodeView) -> Option<SocketAddr> {
    n.status.as_ref()?.services.api.as_ref()?.parse().ok()
}

/// The region a node serves (from its answer, else from the membership).
pub fn region_of(n: &NodeView) -> Option<&str> {
    n.status
        .as_ref()
        .map(|s| s.region.as_str())
        .or(n.region.as_deref())
}

/// What is wrong with the cluster (empty: healthy).
pub fn problems(nodes: &[NodeView]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        match &n.status {
            None => out.push(format!(
                "node {} ({} in {}) is unreachable: {}",
                n.id,
                n.name.as_deref().unwrap_or("unknown name"),
                n.region.as_deref().unwrap_or("an unknown region"),
                n.error.as_deref().unwrap_or("no answer")
            )),
            Some(s) => {
                if let Some(ms) = s.fenced_for_ms {
                    out.push(format!(
                        "{} ({}) is fenced for another {} s",
                        s.name,
                        s.region,
                        ms / 1000 + 1
                    ));
                }
                if s.leader.is_none() {
                    out.push(format!("{} knows no leader", s.name));
                }
                if s.membership_changing {
                    out.push(format!(
                        "{} ({}) is in the middle of a membership change: losing a region now could leave the others unable to elect; wait for it to finish",
                        s.name, s.region
                    ));
                }
            }
        }
    }
    let leaders: std::collections::BTreeSet<u64> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.leader)
        .collect();
    if leaders.len() > 1 {
        out.push(format!("nodes disagree on the leader: {leaders:?}"));
    }
    if let Some(l) = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
    {
        for p in &l.peers {
            if p.lag.unwrap_or(0) > 1000 {
                out.push(format!(
                    "{} is {} entries behind",
                    p.name,
                    p.lag.unwrap_or(0)
                ));
            }
        }
    }
    out
}

/// What leaves the cluster one failure from stopping (empty: it survives the
/// loss of any one region). Not a reason to wait (see [`converge`]), but a
/// reason for the verdict not to say "healthy".
pub fn risks(nodes: &[NodeView]) -> Vec<String> {
    let Some(l) = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
    else {
        return vec![];
    };
    // Fewer than three voters: one region's loss (or a fence) stops writes.
    let voters = l.peers.iter().filter(|p| p.voter).count();
    if voters < 3 {
        return vec![format!(
            "only {voters} voter{}: losing any one region stops writes; promote a learner or add a region (pce dr add-region --voter)",
            if voters == 1 { "" } else { "s" }
        )];
    }
    // A region is lost as a whole (its site, its network): the voters of the
    // others must still be a majority of all, whichever region goes.
    let mut per_region: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in l.peers.iter().filter(|p| p.voter) {
        *per_region.entry(p.region.as_str()).or_default() += 1;
    }
    let majority = voters / 2 + 1;
    per_region
        .into_iter()
        .filter(|(_, n)| voters - n < majority)
        .map(|(region, n)| {
            format!(
                "{region} holds {n} of {voters} voters: losing it leaves {} of the {majority} needed to write; \
                 make some of its nodes learners (pce dr demote) or add voters elsewhere",
                voters - n
            )
        })
        .collect()
}

/// Waits until every node is reachable, agrees on one leader, and has applied
/// the same index; returns the final status.
pub async fn converge(
    c: &Cluster,
    apis: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<NodeView>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(nodes) = c.status(apis).await {
            let applied: std::collections::BTreeSet<u64> = nodes
                .iter()
                .filter_map(|n| n.status.as_ref().and_then(|s| s.last_applied))
                .collect();
            if problems(&nodes).is_empty() && applied.len() == 1 {
                return Ok(nodes);
            }
        }
        if Instant::now() > deadline {
            let nodes = c.status(apis).await.unwrap_or_default();
            return Err(ClientError::NotConverged(format!(
                "the cluster did not converge in {timeout:?}: {}",
                problems(&nodes).join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A healthy node's status as the status endpoint reports it.
    fn view(id: u64, leader: u64, membership_changing: bool) -> NodeView {
        let status = serde_json::json!({
            "id": id, "name": format!("node-{id}"), "region": format!("r{id}"),
            "addr": "127.0.0.1:1", "role": if id == leader { "leader" } else { "follower" },
            "leader": leader, "term": 3, "revision": 9, "peers": [],
            "services": {}, "membership_changing": membership_changing,
        });
        NodeView {
            name: None,
            region: None,
            id,
            status: Some(serde_json::from_value(status).expect("a status")),
            error: None,
        }
    }

    #[test]
    fn a_membership_change_in_flight_is_reported_as_a_problem() {
        let calm: Vec<NodeView> = (1..=3).map(|id| view(id, 1, false)).collect();
        assert!(problems(&calm).is_empty(), "{:?}", problems(&calm));
        let mut changing = calm;
        changing[1] = view(2, 1, true);
        let found = problems(&changing);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("node-2") && found[0].contains("membership change"),
            "{found:?}"
        );
    }
}
