//! A 3-region cluster in-process (real Raft, TLS, sled on disk) with the admin
//! API served by every node over HTTPS, and an owner key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::cluster::TestCluster;
use sc_leader::client::{Answer, ApiClient};
use sc_leader::{ApiOptions, ApiServer, Credentials};
use serde_json::{json, Value};

/// The org prefix of Illumio-style paths.
pub const ORG: &str = "/api/v2/orgs/1";

/// A cluster with the admin API served by every node over HTTPS, and the
/// owner's key.
pub struct ApiCluster {
    /// The nodes.
    pub cluster: TestCluster,
    /// Each node's API server, by node id.
    pub apis: Vec<(u64, ApiServer)>,
    /// The cluster CA (PEM), to verify the APIs.
    pub ca: String,
    /// The bootstrap owner's key.
    pub owner: Credentials,
}

impl ApiCluster {
    /// `n` nodes, each with its API; `rate` per-user requests per second (0: off).
    pub async fn start(n: usize, rate: u32) -> ApiCluster {
        Self::start_with(n, rate, Duration::ZERO).await
    }

    /// As [`ApiCluster::start`], deleting audit events older than
    /// `audit_retention` (zero: never).
    pub async fn start_with(n: usize, rate: u32, audit_retention: Duration) -> ApiCluster {
        let cluster = TestCluster::start(n).await;
        let mut apis = Vec::new();
        for id in 1..=n as u64 {
            let node = cluster.node(id).clone();
            let tls = cluster.node_options(id).expect("node").tls.clone();
            let opts = ApiOptions {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                tls: Some(tls),
                rate,
                burst: rate.max(1),
                audit_retention,
                limits: ApiOptions::default_limits(),
            };
            apis.push((
                id,
                sc_leader::serve(node, opts, Default::default())
                    .await
                    .expect("api serves"),
            ));
        }
        let ca = std::fs::read_to_string(cluster.certs_dir().join("ca.pem")).expect("ca");
        let leader = cluster.leader().await;
        let owner = sc_leader::bootstrap(cluster.node(leader))
            .await
            .expect("bootstrap")
            .expect("first bootstrap creates the owner");
        assert!(
            sc_leader::bootstrap(cluster.node(leader))
                .await
                .expect("again")
                .is_none(),
            "a second bootstrap creates nothing"
        );
        // Every region knows the owner key before a test talks to it.
        cluster.wait_converged(Duration::from_secs(30)).await;
        ApiCluster {
            cluster,
            apis,
            ca,
            owner,
        }
    }

    /// The API address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.apis
            .iter()
            .find(|(i, _)| *i == id)
            .expect("api")
            .1
            .addr
    }

    /// An owner client of node `id`.
    pub fn client(&self, id: u64) -> ApiClient {
        ApiClient::new(self.addr(id), Some(&self.ca))
            .expect("client")
            .with_key(&self.owner.auth_username, &self.owner.secret)
    }

    /// A client of node `id` with another key.
    pub fn client_as(&self, id: u64, key: &(String, String)) -> ApiClient {
        ApiClient::new(self.addr(id), Some(&self.ca))
            .expect("client")
            .with_key(&key.0, &key.1)
    }

    /// The leader's id.
    pub async fn leader(&self) -> u64 {
        self.cluster.leader().await
    }

    /// A member (not the leader).
    pub async fn member(&self) -> u64 {
        let l = self.leader().await;
        self.apis
            .iter()
            .map(|(i, _)| *i)
            .find(|i| *i != l)
            .expect("a member")
    }
}

/// Asserts a status and returns the answer.
pub fn expect(a: Answer, status: u16, what: &str) -> Answer {
    assert_eq!(
        a.status.as_u16(),
        status,
        "{what}: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    a
}

/// Asserts an error answer: its status and its error token.
pub fn refused(a: &Answer, status: u16, token: &str) {
    assert_eq!(
        (a.status.as_u16(), a.token()),
        (status, token.to_string()),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}

/// Creates an object; returns its href.
pub async fn create(c: &mut ApiClient, path: &str, body: Value) -> String {
    let a = expect(
        c.post(&format!("{ORG}{path}"), &body).await.expect("post"),
        201,
        path,
    );
    a.json()["href"].as_str().expect("href").to_string()
}

/// `/api/v2` + href.
pub fn api(href: &str) -> String {
    format!("/api/v2{href}")
}

/// An actor naming a label.
pub fn label_ref(href: &str) -> Value {
    json!({"label": {"href": href}})
}

/// Creates a user with one permission and an API key; returns the key.
pub async fn user_with(
    c: &mut ApiClient,
    name: &str,
    role: &str,
    scope: &[&str],
) -> (String, String) {
    let scope: Vec<Value> = scope.iter().map(|h| label_ref(h)).collect();
    let body = json!({"username": name, "permissions": [{"role": {"href": format!("/orgs/1/roles/{role}")}, "scope": scope}]});
    let u = expect(
        c.post("/api/v2/users", &body).await.expect("user"),
        201,
        "create user",
    );
    let href = u.json()["href"].as_str().expect("href").to_string();
    let k = expect(
        c.post(&format!("/api/v2{href}/api_keys"), &json!({"name": "test"}))
            .await
            .expect("key"),
        201,
        "create key",
    );
    let k = k.json();
    (
        k["auth_username"].as_str().unwrap_or_default().to_string(),
        k["secret"].as_str().unwrap_or_default().to_string(),
    )
}

pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}
