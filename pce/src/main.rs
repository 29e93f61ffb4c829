//! `pce`: the Supercluster node program and operator CLI.
//!
//! One binary wires the crates together: `serve` runs one node, `up` a whole
//! three-region cluster on this machine, and the other commands operate a
//! running cluster over the same mutual-TLS channel the regions use.

mod dr;
mod flows;
mod generate;
mod labels;
mod map;
mod notify;
mod ops;
mod output;
mod up;
mod ven_cmd;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use sc_region::config::{LogFormat, NodeConfig};

#[derive(Parser)]
#[command(
    name = "pce",
    version,
    about = "Supercluster Policy Compute Engine: node and operator CLI"
)]
struct Cli {
    /// Log format (overrides the config file's `[log] format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a 3-region supercluster on this machine (loopback addresses).
    Up {
        /// Where certificates, configs and data go (reused on the next run).
        #[arg(long, default_value = "pce-data")]
        dir: PathBuf,
        /// Port every region listens on (each region has its own loopback address).
        #[arg(long, default_value_t = 7400)]
        port: u16,
        /// Port of every region's admin API.
        #[arg(long, default_value_t = 8443)]
        api_port: u16,
        /// Port of every region's VEN service.
        #[arg(long, default_value_t = 7450)]
        ven_port: u16,
        /// Port of every region's Prometheus `/metrics` (plain HTTP, on the
        /// region's loopback address; 0: one the system picks, printed).
        #[arg(long, default_value_t = 9464)]
        metrics_port: u16,
        /// Serve the admin API over plain HTTP (local experiments only).
        #[arg(long)]
        insecure_http: bool,
        /// Nodes in each region (1 to 9): node k of a region listens on
        /// 127.0.(k-1).x; its VENs move to a sibling when it is lost.
        #[arg(long, default_value_t = 1)]
        nodes_per_region: usize,
        /// Make the nodes after each region's first learners (replicas that
        /// serve VENs but do not vote) instead of voters.
        #[arg(long)]
        learners: bool,
    },
    /// The VEN agent: pair this host, then enforce its policy.
    Ven {
        #[command(subcommand)]
        command: ven_cmd::VenCommand,
    },
    /// Thousands of simulated VENs in one process (no firewall), for scale tests.
    VenSim(ven_cmd::SimArgs),
    /// The fault suite: 3 regions as processes in network namespaces, faults from
    /// a seed, then linearizability, replica and VEN checks (root, nft, ip).
    Chaos(sc_chaos::runner::ChaosArgs),
    /// Run one node.
    Serve {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Serve the admin API over plain HTTP (local experiments only).
        #[arg(long)]
        insecure_http: bool,
    },
    /// Cluster certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Role, leader, term, indexes and replication lag of every node.
    Status {
        /// Configuration of the node to ask (its certificates are used).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Membership changes (routed to the leader).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Read or write one key of the replicated store.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// The DR runbook: status, fences, leader transfer, failover drills.
    Dr {
        #[command(subcommand)]
        command: dr::DrCommand,
    },
    /// Explorer: the flows every region holds (`query`), or new ones as they come (`tail`).
    Flows {
        #[command(subcommand)]
        command: flows::FlowsCommand,
    },
    /// The app group map from every region: groups, the traffic between them,
    /// its decisions and rule coverage (a table, DOT or SVG).
    Map(map::MapArgs),
    /// Policy from traffic: `generate` proposes allow rules for an app group.
    Policy {
        #[command(subcommand)]
        command: generate::PolicyCommand,
    },
    /// Benchmarks against a running cluster.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The node configuration file: check one, or print the reference of
    /// every key.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Shell completions on stdout, e.g. `pce completions bash >
    /// /etc/bash_completion.d/pce`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Man pages for `pce` and every subcommand (`pce.1`, `pce-dr-drill.1`,
    /// ...), written into a directory (e.g. /usr/local/share/man/man1).
    Man {
        /// Where the pages go (created if missing).
        #[arg(long, default_value = "man")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the cluster CA (`ca.pem`, `ca.key` with mode 0600).
    Init {
        /// Directory for the CA and the certificates it issues.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Cluster name written into the CA certificate.
        #[arg(long, default_value = "supercluster")]
        cluster: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Issue a node certificate signed by the CA (`NAME.pem`, `NAME.key`).
    Issue {
        /// Directory holding the CA.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Node name (a DNS label, used as the TLS server name).
        #[arg(long)]
        node: String,
        /// Region of the node.
        #[arg(long)]
        region: String,
        /// IP addresses to include as subject alternative names.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a node's configuration file and the files it names
    /// (certificates, VEN CA) without starting anything.
    Check {
        /// The file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Every key of the file with its type, default and meaning (Markdown;
    /// the same text as docs/config-reference.md).
    Reference,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Make a learner a voter.
    Promote(MemberArgs),
    /// Make a voter a learner.
    Demote(MemberArgs),
    /// Remove a node from the cluster.
    Remove(MemberArgs),
}

#[derive(clap::Args)]
struct MemberArgs {
    /// Configuration of a node to send the change through.
    #[arg(long)]
    config: PathBuf,
    /// Raft id of the node to change.
    #[arg(long)]
    id: u64,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Write a key (through any region).
    Put {
        /// Configuration of the node to send it through.
        #[arg(long)]
        config: PathBuf,
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Read a key from the node's replica.
    Get {
        /// Configuration of the node to read from.
        #[arg(long)]
        config: PathBuf,
        /// Key.
        key: String,
        /// Confirm with the leader first (sees every acknowledged write).
        #[arg(long)]
        linearizable: bool,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Committed writes per second and latency at several client counts.
    Write(sc_bench::write::WriteArgs),
    /// Rule edits and provisioning through the admin API of a `pce up` cluster.
    Api(sc_bench::api::ApiArgs),
    /// Provision-to-acknowledgement latency and memory per VEN with simulated VENs.
    Vens(sc_bench::vens::VensArgs),
    /// Time for the VENs of a restarted member to resync (a cluster in this process).
    Resync(sc_bench::vens::ResyncArgs),
    /// Leader killed with SIGKILL: time until writes resume, Supercluster and etcd.
    Failover(sc_bench::failover::FailoverArgs),
    /// Writes and reads against etcd, measured alternately in one run.
    Compare(sc_bench::compare::CompareArgs),
    /// The transport alone: one push to N TLS streams and their acknowledgements,
    /// with no PCE behind it (the floor under `bench vens`).
    Floor(sc_bench::floor::FloorArgs),
    /// A region's traffic store: ingest rate, CPU and bytes per flow summary,
    /// selective and broad Explorer queries, at growing sizes.
    Flows(sc_bench::flows::FlowsArgs),
    /// Global visibility on a real three-region cluster with real VENs in
    /// network namespaces: how fresh a flow is at another region, and global
    /// Explorer queries over a million summaries per region (needs root).
    Visibility(sc_bench::visibility::VisibilityArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // openraft's core warns, at start-up and after each membership
        // change, about internal messages it drops as stale ("... ignore
        // when ..."): nothing an operator acts on, and our own watchdog logs
        // every change of role and vote at INFO. Its replication logs each
        // failed heartbeat to an unreachable peer five times (33 lines a
        // second for a fenced region); the network logs the peer's failing
        // and recovering once each instead (issue 20). Core errors stay.
        tracing_subscriber::EnvFilter::new(
            "info,openraft=warn,openraft::core::raft_core=error,openraft::replication=off,\
             openraft::engine::handler::replication_handler=off,sled=warn,h2=warn,tonic=warn",
        )
    });
    // Colour only for a person at a terminal: a log file or a journal kept
    // the escape codes, which grep and log pipelines then had to strip
    // (issue 20). NO_COLOR (no-color.org) turns it off at a terminal too.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up {
            dir,
            port,
            api_port,
            ven_port,
            metrics_port,
            insecure_http,
            nodes_per_region,
            learners,
        } => {
            init_logging(cli.log_format.unwrap_or_default());
            let ports = sc_region::local::Ports {
                raft: port,
                api: api_port,
                ven: ven_port,
                metrics: Some(metrics_port),
            };
            let shape = up::Shape {
                nodes_per_region,
                learners,
            };
            up::run(&dir, ports, insecure_http, shape).await
        }
        Command::Ven { command } => {
            init_logging(cli.log_format.unwrap_or_default());
            ven_cmd::run(command).await
        }
        Command::VenSim(args) => {
            init_logging(cli.log_format.unwrap_or_default());
            ven_cmd::sim(args).await
        }
        // No logging set up: the suite prints its own progress, and the nodes
        // it starts log to files in the run directory.
        Command::Chaos(args) => sc_chaos::runner::run(args).await,
        Command::Serve {
            config,
            insecure_http,
        } => {
            let cfg = NodeConfig::load(&config)?;
            init_logging(cli.log_format.unwrap_or(cfg.log.format));
            ops::serve(cfg, insecure_http).await
        }
        Command::Certs { command } => match command {
            CertsCommand::Init { dir, cluster, json } => {
                let ca = sc_raft::pki::init_ca(&dir, &cluster)?;
                let key = dir.join(sc_raft::pki::CA_KEY);
                let v = serde_json::json!({
                    "ca_cert": ca.display().to_string(),
                    "ca_key": key.display().to_string(),
                    "ven_ca_cert": dir.join(sc_raft::pki::VEN_CA_CERT).display().to_string(),
                });
                output::print(json, &v, || {
                    format!(
                        "cluster CA written to {} (key: {}, mode 0600)",
                        ca.display(),
                        key.display()
                    )
                })
            }
            CertsCommand::Issue {
                dir,
                node,
                region,
                ip,
                json,
            } => {
                let issued = sc_raft::pki::issue(&dir, &node, &region, &ip)?;
                let v = serde_json::json!({
                    "node": node,
                    "region": region,
                    "cert": issued.cert.display().to_string(),
                    "key": issued.key.display().to_string(),
                });
                output::print(json, &v, || {
                    format!(
                        "certificate {} and key {} (mode 0600) issued for {node} in {region}",
                        issued.cert.display(),
                        issued.key.display()
                    )
                })
            }
        },
        Command::Status { config, json } => ops::status(&config, json).await,
        Command::Cluster { command } => {
            let (op, args) = match command {
                ClusterCommand::Promote(a) => (sc_raft::MembershipOp::Promote, a),
                ClusterCommand::Demote(a) => (sc_raft::MembershipOp::Demote, a),
                ClusterCommand::Remove(a) => (sc_raft::MembershipOp::Remove, a),
            };
            ops::membership(&args.config, op, args.id, args.json).await
        }
        Command::Kv { command } => match command {
            KvCommand::Put {
                config,
                key,
                value,
                json,
            } => ops::put(&config, &key, &value, json).await,
            KvCommand::Get {
                config,
                key,
                linearizable,
                json,
            } => ops::get(&config, &key, linearizable, json).await,
        },
        Command::Dr { command } => dr::run(command).await,
        Command::Flows { command } => flows::run(command).await,
        Command::Map(args) => map::run(args).await,
        Command::Policy { command } => generate::run(command).await,
        Command::Config { command } => match command {
            ConfigCommand::Check { config, json } => ops::check_config(&config, json),
            ConfigCommand::Reference => {
                print!("{}", sc_region::reference::markdown());
                Ok(())
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "pce", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        Command::Bench { command } => match command {
            BenchCommand::Write(args) => sc_bench::write::write(args).await,
            BenchCommand::Api(args) => sc_bench::api::api(args).await,
            BenchCommand::Vens(args) => sc_bench::vens::vens(args).await,
            BenchCommand::Resync(args) => sc_bench::vens::resync(args).await,
            BenchCommand::Failover(args) => sc_bench::failover::failover(args).await,
            BenchCommand::Compare(args) => sc_bench::compare::compare(args).await,
            BenchCommand::Floor(args) => sc_bench::floor::floor(args).await,
            BenchCommand::Flows(args) => sc_bench::flows::flows(args).await,
            BenchCommand::Visibility(args) => sc_bench::visibility::visibility(args).await,
        },
    }
}

/// jemalloc, not glibc's malloc: a member holding thousands of VEN streams
/// spends a sixth of its CPU in glibc's malloc and free (buffers allocated on
/// one worker thread and freed on another), about a quarter less CPU per policy
/// push with jemalloc at the same memory per VEN (docs/decisions/0010-jemalloc.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// SIGPIPE for a command: ends the process as the default disposition would
/// when stdout's reader is gone (`| head`), and is ignored otherwise (the
/// write that raised it, to a socket a peer reset, fails with EPIPE and is
/// handled as the I/O error it is).
extern "C" fn on_sigpipe(_: libc::c_int) {
    let mut out = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll, signal and raise are async-signal-safe; `out` is ours.
    unsafe {
        // The write end of a pipe with no reader polls as POLLERR.
        if libc::poll(&mut out, 1, 0) == 1 && out.revents & libc::POLLERR != 0 {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
}

fn main() -> ExitCode {
    // Everything this process writes (the Raft store, snapshots, flows,
    // certificates, backups, VEN identities) is for its own user only.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    // `pce ... | head` closes the pipe early: a command that prints and ends
    // then stops quietly, as Unix tools do, rather than panic on its next
    // print (Rust ignores SIGPIPE by default). Only for stdout: a write to a
    // connection a peer reset raises SIGPIPE too, and a drill that kills a
    // node must not die of it (see `on_sigpipe`). Not the servers and
    // agents: a closed log pipe must never stop a region or a VEN.
    if !matches!(
        cli.command,
        Command::Up { .. }
            | Command::Serve { .. }
            | Command::Ven { .. }
            | Command::VenSim(_)
            | Command::Chaos(_)
    ) {
        // SAFETY: installs an async-signal-safe handler before any thread
        // of ours exists.
        unsafe {
            libc::signal(
                libc::SIGPIPE,
                on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's definition only when it is parsed: this checks
    /// every subcommand at once (a flag declared twice through a flattened
    /// group panicked only when that subcommand ran).
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
