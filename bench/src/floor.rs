//! `pce bench floor`: what pushing one message to N VENs and reading their
//! acknowledgements costs on this machine with nothing of the PCE in the way.
//!
//! The same stack as the VEN service (tonic, HTTP/2, rustls with client
//! certificates, the VEN protocol and its codec, TCP_NODELAY) and the same
//! client channel as the agent, one TLS connection and stream per VEN, but the
//! server holds no cache, no engine and no Raft: each round it hands every
//! stream the same payload, and each client acknowledges it. The figure is the
//! floor under `pce bench vens` on the same cores: the transport's own cost.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use sc_proto::ven::ven_client::VenClient;
use sc_proto::ven::ven_server::{Ven, VenServer};
use sc_proto::ven::{
    pce_message, ven_message, Applied, FlowAck, FlowBatch, Hello, PairRequest, PairResponse,
    PceMessage, PingRequest, PingResponse, Policy, VenMessage,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use serde_json::json;

use super::{cpu_ms, pct};
use crate::report::Report;

/// Options of `pce bench floor`.
#[derive(clap::Args)]
pub struct FloorArgs {
    /// Stream counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    counts: Vec<usize>,
    /// Pushes measured per count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bytes of each pushed message's payload (the compiled policies of `pce
    /// bench vens` are of this order: a few short rules).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Internal: be the server process, with the certificates in this directory.
    #[arg(long, hide = true)]
    serve: Option<std::path::PathBuf>,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// The server: every stream waits for the next round and sends its payload.
struct Floor {
    round: watch::Receiver<u64>,
    payload: String,
}

type Out = Pin<Box<dyn Stream<Item = Result<PceMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Ven for Floor {
    async fn pair(&self, _: Request<PairRequest>) -> Result<Response<PairResponse>, Status> {
        Err(Status::unimplemented("the floor bench only streams"))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Err(Status::unimplemented("the floor bench only streams"))
    }

    type PolicyStreamStream = Out;

    async fn policy_stream(
        &self,
        req: Request<Streaming<VenMessage>>,
    ) -> Result<Response<Out>, Status> {
        // The same shape as the VEN service's session: the response stream
        // itself waits for either a new round or a message from the VEN.
        let mut round = self.round.clone();
        // A stream opened after a round started gets that round at once.
        if *round.borrow() > 0 {
            round.mark_changed();
        }
        let state = (req.into_inner(), round, self.payload.clone());
        let out =
            futures_util::stream::unfold(state, |(mut inbound, mut round, payload)| async move {
                loop {
                    tokio::select! {
                        changed = round.changed() => {
                            changed.ok()?;
                            let version = *round.borrow_and_update();
                            let msg = PceMessage {
                                kind: Some(pce_message::Kind::Policy(Policy {
                                    version,
                                    hash: String::new(),
                                    compiled_json: payload.clone(),
                                })),
                            };
                            return Some((Ok(msg), (inbound, round, payload)));
                        }
                        msg = inbound.message() => match msg {
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return None,
                        },
                    }
                }
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn report_flows(&self, _: Request<FlowBatch>) -> Result<Response<FlowAck>, Status> {
        Err(Status::unimplemented("the floor bench only streams"))
    }
}

/// The cluster CA and one client certificate (the handshake is not measured,
/// so the clients share it); the server's files stay in the directory.
struct Certs {
    ca: String,
    client: (String, String),
}

fn certs(dir: &std::path::Path) -> Result<Certs> {
    sc_raft::pki::init_ca(dir, "floor")?;
    sc_raft::pki::issue(dir, "floor", "bench", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let signer = sc_raft::pki::VenSigner::load(
        &dir.join(sc_raft::pki::VEN_CA_CERT),
        &dir.join(sc_raft::pki::VEN_CA_KEY),
    )?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let cert = signer.sign(&csr, "floor-ven")?;
    Ok(Certs {
        ca: read(dir.join("ca.pem"))?,
        client: (cert, key.serialize_pem()),
    })
}

/// One client, reconnecting until the bench stops it (10,000 handshakes at
/// once can time out).
async fn client(
    addr: String,
    certs: Arc<Certs>,
    i: usize,
    acked: mpsc::UnboundedSender<(usize, u64, Instant)>,
) {
    loop {
        if let Err(e) = stream(addr.clone(), certs.clone(), i, acked.clone()).await {
            tracing::debug!(client = i, error = %e, "floor client reconnects");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One stream: hello, then acknowledge every push; reports when it did.
async fn stream(
    addr: String,
    certs: Arc<Certs>,
    i: usize,
    acked: mpsc::UnboundedSender<(usize, u64, Instant)>,
) -> Result<()> {
    let ch = sc_ven::identity::channel(
        &addr,
        &certs.ca,
        Some((&certs.client.0, &certs.client.1)),
        Duration::from_secs(30),
    )
    .await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(VenMessage {
        kind: Some(ven_message::Kind::Hello(Hello::default())),
    })
    .await?;
    let mut inbound = VenClient::new(ch)
        .policy_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(m) = inbound.message().await? {
        if let Some(pce_message::Kind::Policy(p)) = m.kind {
            let ack = VenMessage {
                kind: Some(ven_message::Kind::Applied(Applied {
                    policy_hash: p.hash,
                    policy_version: p.version,
                })),
            };
            tx.send(ack).await?;
            let _ = acked.send((i, p.version, Instant::now()));
        }
    }
    Ok(())
}

/// The server process (`pce bench floor --serve DIR`): listens on loopback,
/// prints its address, and starts round N when it reads the line "N" on stdin;
/// ends at end of input.
async fn serve(dir: &std::path::Path, payload: usize) -> Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))
    };
    let (round_tx, round) = watch::channel(0u64);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("floor.pem")?, read("floor.key")?))
        .client_ca_root(Certificate::from_pem(read(sc_raft::pki::VEN_CA_CERT)?));
    let svc = Floor {
        round,
        payload: "x".repeat(payload),
    };
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        // As the VEN service.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(VenServer::new(svc))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        );
    tokio::spawn(server);
    println!("{addr}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let r: u64 = line.trim().parse().context("a round number on stdin")?;
        round_tx.send(r)?;
    }
    Ok(())
}

/// `pce bench floor`.
pub async fn floor(args: FloorArgs) -> Result<()> {
    if let Some(dir) = &args.serve {
        return serve(dir, args.payload).await;
    }
    let dir = tempfile::tempdir()?;
    let certs = Arc::new(certs(dir.path())?);
    let mut report = Report::new("floor", args.json);
    report.set(
        "options",
        json!({"counts": args.counts, "rounds": args.rounds, "payload_bytes": args.payload}),
    );
    report.line(format!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>15} {:>15}",
        "streams", "connect s", "p50 ms", "p99 ms", "max ms", "server CPU ms", "client CPU ms"
    ));
    for &n in &args.counts {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "floor", "--payload", &args.payload.to_string()])
            .arg("--serve")
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the server process")?;
        let server_pid = child.id();
        let mut rounds_in = child.stdin.take().context("server stdin")?;
        let mut out =
            tokio::io::BufReader::new(child.stdout.take().context("server stdout")?).lines();
        let addr = out
            .next_line()
            .await?
            .context("the server process ended before listening")?;

        // Connect every client, 64 at a time, then wait for every stream.
        let (acked_tx, mut acked) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
        let t0 = Instant::now();
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            clients.push(tokio::spawn(client(
                addr.clone(),
                certs.clone(),
                i,
                acked_tx.clone(),
            )));
            if i % 64 == 63 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Round 1 is not measured: clients are ready when they acknowledge it.
        let mut hist = Histogram::<u64>::new(3)?;
        let (mut server_cpu, mut client_cpu) = (0.0, 0.0);
        let mut connect_s = 0.0;
        for r in 1..=args.rounds as u64 + 1 {
            let cpu0 = (server_pid.and_then(|p| cpu_ms(Some(p))), cpu_ms(None));
            let start = Instant::now();
            rounds_in.write_all(format!("{r}\n").as_bytes()).await?;
            rounds_in.flush().await?;
            let mut seen = 0;
            let deadline = start + Duration::from_secs(120);
            while seen < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, acked.recv()).await {
                    Ok(Some((_, v, at))) if v == r => {
                        seen += 1;
                        if r > 1 {
                            let _ =
                                hist.record(at.saturating_duration_since(start).as_micros() as u64);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("every client stopped"),
                    Err(_) => bail!("round {r}: {seen} of {n} streams acknowledged in 120 s"),
                }
            }
            if r == 1 {
                connect_s = t0.elapsed().as_secs_f64();
            } else {
                if let (Some(a), Some(b)) = (cpu0.0, server_pid.and_then(|p| cpu_ms(Some(p)))) {
                    server_cpu += b - a;
                }
                if let (Some(a), Some(b)) = (cpu0.1, cpu_ms(None)) {
                    client_cpu += b - a;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let per_round = |ms: f64| ms / args.rounds.max(1) as f64;
        report.line(format!(
            "{n:>7} {connect_s:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>15.0} {:>15.0}",
            pct(&hist, 0.5),
            pct(&hist, 0.99),
            hist.max() as f64 / 1000.0,
            per_round(server_cpu),
            per_round(client_cpu),
        ));
        report.row(
            "rows",
            json!({
                "streams": n,
                "connect_s": connect_s,
                "p50_ms": pct(&hist, 0.5),
                "p99_ms": pct(&hist, 0.99),
                "max_ms": hist.max() as f64 / 1000.0,
                "server_cpu_ms_per_push": per_round(server_cpu),
                "client_cpu_ms_per_push": per_round(client_cpu),
            }),
        );
        for c in clients {
            c.abort();
        }
        drop(rounds_in);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    report.finish()
}
