//! The floor under a member read (`pce bench compare --workloads read-floor`):
//! the node's own transport answering the federation `Read` RPC from a map.
//!
//! A one-client read is a round trip whose cost is the client's CPU and the
//! server's, one after the other. Most of both is the transport: TLS records,
//! HTTP/2 frames, tonic's codec, and the sockets' sleep and wake. This server
//! is built from the node's pieces (its certificate and the cluster CA, the
//! same handshake bound, listener limits and TCP_NODELAY, the protocol-version
//! interceptor, the consensus runtime's shape, the spin after each read) with
//! no Raft, no state machine and no sled behind the service. Measured against
//! etcd in the same run, it says how far above etcd any Supercluster member
//! could read with this stack, and so how much of `read`'s distance from a
//! goal is the node's own.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sc_proto::federation::federation_server::{Federation, FederationServer};
use sc_proto::federation::{
    FlowQuery, FlowQueryReply, MembershipReply, MembershipRequest, PrepareTransferReply,
    PrepareTransferRequest, ReadIndexReply, ReadIndexRequest, ReadReply, ReadRequest, StatusReply,
    StatusRequest, VenPoliciesReply, VenPoliciesRequest, WriteReply, WriteRequest,
};
use sc_raft::network::listen::{incoming_watched, ConnLimits};
use sc_raft::network::read_spin::ReadSpin;
use sc_raft::{Client, KvEntry, ReadResult};
use tokio::io::AsyncBufReadExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// The keys it answers, with the values `bench compare` wrote to the nodes.
struct FloorRead {
    keys: HashMap<Vec<u8>, Vec<u8>>,
    /// The node's own spinner, with the node's window.
    spin: Arc<ReadSpin>,
}

fn only_read(what: &str) -> Status {
    Status::unimplemented(format!("{what}: the read floor answers Read only"))
}

#[tonic::async_trait]
impl Federation for FloorRead {
    async fn write(&self, _: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        Err(only_read("Write"))
    }

    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        Err(only_read("ReadIndex"))
    }

    async fn change_membership(
        &self,
        _: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        Err(only_read("ChangeMembership"))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let arrival = self.spin.arrived();
        // The node's own request and reply conversions, so the bytes on the
        // wire are a node's.
        let (key, _) = sc_raft::convert::read_from_proto(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let value = self.keys.get(&key).map(|v| KvEntry {
            value: v.clone(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        });
        self.spin.served(arrival);
        Ok(Response::new(sc_raft::convert::read_reply(ReadResult {
            value,
            revision: 1,
            applied_index: Some(1),
        })))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(only_read("Status"))
    }

    async fn query_flows(&self, _: Request<FlowQuery>) -> Result<Response<FlowQueryReply>, Status> {
        Err(only_read("QueryFlows"))
    }

    async fn ven_policies(
        &self,
        _: Request<VenPoliciesRequest>,
    ) -> Result<Response<VenPoliciesReply>, Status> {
        Err(only_read("VenPolicies"))
    }

    async fn prepare_transfer(
        &self,
        _: Request<PrepareTransferRequest>,
    ) -> Result<Response<PrepareTransferReply>, Status> {
        Err(only_read("PrepareTransfer"))
    }
}

/// The server process (`pce bench compare --serve-floor CONFIG`): serves with
/// the identity of the node `config` describes, on that node's address and a
/// port of the OS's choice, prints the address, and stops at end of input.
pub fn serve(config: &Path, keys: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    let opts = sc_region::config::NodeConfig::load(config)?.to_options()?;
    let rt = sc_raft::runtime::builder("floor").build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.listen.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        // As `sc_raft`'s server: the handshake bound, the interceptor, the
        // listener's caps and TCP_NODELAY.
        let server = Server::builder()
            .tls_config(opts.tls.server_config(opts.timeouts.connect * 2))?
            .add_service(InterceptedService::new(
                FederationServer::new(FloorRead {
                    keys: keys.into_iter().collect(),
                    spin: ReadSpin::start(opts.tuning.read_spin),
                })
                .max_decoding_message_size(sc_raft::network::peers::MAX_MESSAGE),
                sc_proto::version::check,
            ))
            .serve_with_incoming(incoming_watched(
                listener,
                ConnLimits::default(),
                "floor",
                None,
            ));
        // On the runtime's worker, as a node's server is; this thread
        // waits for the end of input or the server's end, whichever first.
        let mut served = tokio::spawn(server);
        println!("{addr}");
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let input_ended = async move { while let Ok(Some(_)) = lines.next_line().await {} };
        tokio::select! {
            _ = input_ended => {
                served.abort();
                Ok(())
            }
            ended = &mut served => match ended {
                Ok(Ok(())) => bail!("the read floor's server stopped"),
                Ok(Err(e)) => Err(anyhow!("the read floor's server failed: {e}")),
                Err(e) => Err(anyhow!("the read floor's server task: {e}")),
            },
        }
    })
}

/// A running floor process, killed and reaped on drop.
pub(crate) struct Floor {
    child: Child,
    /// Its standard output, kept open: the process ends itself on a write to
    /// a closed pipe (the binary's SIGPIPE handling), and a TLS alert to a
    /// reset connection must not be taken for one.
    _out: std::io::BufReader<ChildStdout>,
    /// A client of the floor with the node's certificate, as `read` uses.
    pub(crate) client: Client,
}

/// How long the floor's process may take to listen.
const LISTENING_WITHIN: Duration = Duration::from_secs(30);

impl Floor {
    /// Starts `pce bench compare --serve-floor` for the node `config`
    /// describes, answering the keys `bench compare` prepares with values
    /// of `value_size` bytes.
    pub(crate) async fn start(config: &Path, value_size: usize) -> Result<Floor> {
        // The client's side first: a bad file fails before any process runs.
        let opts = sc_region::config::NodeConfig::load(config)?.to_options()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "compare", "--value-size", &value_size.to_string()])
            .arg("--serve-floor")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the read floor's process")?;
        let Some(out) = child.stdout.take() else {
            stop(&mut child);
            bail!("the read floor's process has no standard output");
        };
        // Its first line is its address; read off the async worker.
        let first = tokio::time::timeout(
            LISTENING_WITHIN,
            tokio::task::spawn_blocking(move || {
                let mut out = std::io::BufReader::new(out);
                let mut line = String::new();
                let n = out.read_line(&mut line)?;
                Ok::<_, std::io::Error>((out, line, n))
            }),
        )
        .await;
        let (out, addr) = match first {
            Ok(Ok(Ok((out, line, n)))) if n > 0 => (out, line.trim().to_string()),
            Ok(_) => {
                stop(&mut child);
                bail!("the read floor's process ended before it listened");
            }
            Err(_) => {
                stop(&mut child);
                bail!("the read floor's process did not listen within {LISTENING_WITHIN:?}");
            }
        };
        let mut target = opts.info.clone();
        target.addr = addr;
        match Client::new(opts.tls, target, opts.timeouts) {
            Ok(client) => Ok(Floor {
                child,
                _out: out,
                client,
            }),
            Err(e) => {
                stop(&mut child);
                bail!("a client of the read floor: {e}")
            }
        }
    }

    /// Its process, whose CPU is the servers' CPU of a `read-floor` level.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Kills and reaps the floor's process.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Floor {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Checks the floor answers before it is measured: a key `bench compare`
/// prepared must be there.
pub(crate) async fn check(floor: &Floor, key: &[u8]) -> Result<()> {
    let (v, _) = floor
        .client
        .read(key, false)
        .await
        .map_err(|e| anyhow!("the read floor: {e}"))?;
    if v.is_none() {
        bail!("the read floor does not hold the prepared keys");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor() -> FloorRead {
        FloorRead {
            keys: HashMap::from([(b"bench/read/0001".to_vec(), b"rrr".to_vec())]),
            spin: ReadSpin::off(),
        }
    }

    fn read(key: &[u8]) -> Request<ReadRequest> {
        Request::new(ReadRequest {
            key: key.to_vec(),
            linearizable: false,
        })
    }

    #[tokio::test]
    async fn the_floor_answers_a_prepared_key_as_a_node_would() {
        let r = floor()
            .read(read(b"bench/read/0001"))
            .await
            .unwrap()
            .into_inner();
        assert!(r.found);
        assert_eq!(r.value, b"rrr");
        // The node's own conversion back: what the bench's client reads.
        let back = sc_raft::convert::read_result_from_proto(r);
        assert_eq!(back.value.map(|e| e.value), Some(b"rrr".to_vec()));
        let missing = floor()
            .read(read(b"bench/read/9999"))
            .await
            .unwrap()
            .into_inner();
        assert!(!missing.found);
    }

    #[tokio::test]
    async fn the_floor_refuses_what_a_node_refuses_and_answers_nothing_else() {
        let empty = floor().read(read(b"")).await.unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        let write = floor()
            .write(Request::new(WriteRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(write.code(), tonic::Code::Unimplemented);
        assert!(write.message().contains("Read only"), "{}", write.message());
    }
}
