//! Mutual TLS between regions: a peer without a certificate from the cluster CA
//! is refused, whichever side it is on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sc_proto::federation::federation_client::FederationClient;
use sc_proto::federation::StatusRequest;
use sc_raft::network::peers::connect_lazy;
use sc_raft::{pki, DiskFaults, NetFaults, Node, NodeInfo, NodeOptions, TlsMaterial, Tuning};
use sc_testkit::TestCluster;
use sc_testkit::{free_port, test_timeouts};

fn foreign_tls(dir: &std::path::Path, name: &str) -> TlsMaterial {
    pki::init_ca(dir, "impostor").unwrap();
    let issued = pki::issue(dir, name, "nowhere", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    TlsMaterial::load(&dir.join(pki::CA_CERT), &issued.cert, &issued.key).unwrap()
}

async fn status_with(tls: &TlsMaterial, target: &NodeInfo) -> Result<String, tonic::Status> {
    let channel = connect_lazy(tls, target, &test_timeouts()).unwrap();
    let reply = FederationClient::new(channel)
        .status(StatusRequest {})
        .await?;
    Ok(reply.into_inner().role)
}

/// The server refused the connection during the handshake. With TLS 1.3 the
/// client may see that as an alert, a closed stream or a cancelled call,
/// depending on timing; what matters is that no answer came back.
fn assert_refused(err: tonic::Status) {
    use tonic::Code::{Cancelled, Unavailable, Unknown};
    assert!(
        matches!(err.code(), Unknown | Cancelled | Unavailable),
        "not a transport refusal: {err:?}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "no transport error behind {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_with_a_foreign_certificate_or_none_is_refused() {
    let c = TestCluster::start(1).await;
    let target = c.node(1).info().clone();

    // Control: a certificate from the cluster CA is accepted.
    let ours = c.options(2, true).tls;
    assert_eq!(status_with(&ours, &target).await.unwrap(), "leader");

    let other = tempfile::tempdir().unwrap();
    let mut theirs = foreign_tls(other.path(), "node-2");
    // It trusts our CA (so it would accept our server) but presents a certificate
    // our CA never signed: our server must refuse it.
    theirs.ca_pem = ours.ca_pem.clone();
    assert_refused(status_with(&theirs, &target).await.unwrap_err());

    // No client certificate at all.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ours.ca_pem))
        .domain_name(target.name.clone());
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", target.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    assert_refused(
        FederationClient::new(channel)
            .status(StatusRequest {})
            .await
            .unwrap_err(),
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_a_server_from_another_ca_and_an_impostor_cannot_join() {
    let c = TestCluster::start(1).await;
    let other = tempfile::tempdir().unwrap();
    let impostor_tls = foreign_tls(&other.path().join("certs"), "node-7");
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    let impostor = Node::start(NodeOptions {
        id: 7,
        info: NodeInfo {
            name: "node-7".into(),
            region: "nowhere".into(),
            addr: listen.to_string(),
        },
        listen,
        data_dir: other.path().join("data"),
        tls: impostor_tls,
        timeouts: test_timeouts(),
        tuning: Tuning::default(),
        cluster_name: "impostor".into(),
        bootstrap: false,
        join: vec![c.node(1).info().clone()],
        voter: true,
        net_faults: NetFaults::new(),
        disk_faults: DiskFaults::default(),
    })
    .await
    .unwrap();

    // Our side, as a client, refuses the impostor's server certificate.
    let ours = c.options(2, true).tls;
    let err = status_with(&ours, impostor.info()).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // The impostor keeps asking to join; the cluster never admits it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = c.node(1).membership_view();
    assert!(
        !view.voters.contains(&7) && !view.learners.contains(&7),
        "{view:?}"
    );
    assert_eq!(
        impostor.status().role,
        "learner",
        "the impostor stays outside any cluster"
    );
    impostor.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_certificate_that_names_no_member_reads_status_and_nothing_else() {
    use sc_proto::raft::raft_service_client::RaftServiceClient;
    use sc_proto::raft::RaftPayload;
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let target = c.node(leader).info().clone();
    // Issued by the cluster CA, for a tool: it names no node of the cluster.
    let issued = pki::issue(
        &c.certs_dir(),
        "ops-tool",
        "ops",
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .unwrap();
    let tool =
        TlsMaterial::load(&c.certs_dir().join(pki::CA_CERT), &issued.cert, &issued.key).unwrap();
    assert_eq!(status_with(&tool, &target).await.unwrap(), "leader");
    let client = sc_raft::Client::new(tool.clone(), target.clone(), test_timeouts()).unwrap();
    let mut w = sc_testkit::Writer::new();
    let err = client
        .write(&w.put("intruded", "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a member"), "{err}");
    let err = client
        .read(b"intruded", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a member"), "{err}");
    let err = client
        .change_membership(sc_raft::MembershipOp::Remove, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a member"), "{err}");
    // Raft itself: refused before the payload is even read.
    let channel = connect_lazy(&tool, &target, &test_timeouts()).unwrap();
    let st = RaftServiceClient::new(channel)
        .vote(RaftPayload {
            data: vec![1, 2, 3],
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    // A member's certificate writes as before.
    let member = c.node_options(2).unwrap().tls.clone();
    let client = sc_raft::Client::new(member, target, test_timeouts()).unwrap();
    client.write(&w.put("by-a-member", "ok")).await.unwrap();
    c.shutdown().await;
}
