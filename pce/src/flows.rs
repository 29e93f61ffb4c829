//! `pce flows`: Explorer from the command line. `query` asks every region
//! once (through any region's admin API); `tail` follows new flows as they
//! arrive, like `hubble observe`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::dr::{open_cluster, Conn};
use sc_leader::client::cluster::post;
use sc_leader::client::ApiClient;

const ORG: &str = "/api/v2/orgs/1";

/// Filters both commands take.
#[derive(clap::Args, Clone)]
pub struct Filters {
    /// A source label `key=value` (repeat: all of them).
    #[arg(long = "src-label")]
    src_labels: Vec<String>,
    /// A destination label `key=value` (repeat: all of them).
    #[arg(long = "dst-label")]
    dst_labels: Vec<String>,
    /// A source address or CIDR.
    #[arg(long)]
    src_ip: Option<String>,
    /// A destination address or CIDR.
    #[arg(long)]
    dst_ip: Option<String>,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// IANA protocol (6 TCP, 17 UDP).
    #[arg(long)]
    proto: Option<u8>,
    /// `allowed`, `potentially_blocked` or `blocked` (repeat; none: all).
    #[arg(long = "decision")]
    decisions: Vec<String>,
}

/// `pce flows ...`
#[derive(clap::Subcommand)]
pub enum FlowsCommand {
    /// The flows every region holds that match, newest first.
    Query {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        filters: Filters,
        /// How far back, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// The most flows to print (`--json`: the API's flows as one array).
        #[arg(long, default_value_t = 100)]
        max: u64,
    },
    /// Print new matching flows as they arrive, until interrupted.
    Tail {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        filters: Filters,
        /// Seconds between polls (`--json`: one JSON flow per line).
        #[arg(long, default_value_t = 2)]
        every: u64,
    },
}

fn iso(ms: u64) -> String {
    let t = sc_store::time::iso8601(ms);
    format!("{}Z", &t[..19])
}

/// A label `key=value` as its href, looked up through the API.
async fn label_href(c: &mut ApiClient, kv: &str) -> Result<String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| anyhow!("{kv:?}: give a label as key=value, e.g. role=web"))?;
    crate::labels::href(c, k, v).await
}

async fn side(c: &mut ApiClient, labels: &[String], ip: &Option<String>) -> Result<Value> {
    let mut and = Vec::new();
    for l in labels {
        and.push(json!({"label": {"href": label_href(c, l).await?}}));
    }
    if let Some(ip) = ip {
        and.push(json!({"ip_address": ip}));
    }
    Ok(if and.is_empty() {
        json!({"include": [], "exclude": []})
    } else {
        json!({"include": [and], "exclude": []})
    })
}

async fn query_body(c: &mut ApiClient, f: &Filters, from_ms: u64, max: u64) -> Result<Value> {
    let now = sc_store::time::now_ms();
    let mut services = vec![];
    if f.port.is_some() || f.proto.is_some() {
        let mut s = json!({});
        if let Some(p) = f.port {
            s["port"] = json!(p);
        }
        if let Some(p) = f.proto {
            s["proto"] = json!(p);
        }
        services.push(s);
    }
    Ok(json!({
        "start_date": iso(from_ms),
        "end_date": iso(now + 60_000),
        "sources": side(c, &f.src_labels, &f.src_ip).await?,
        "destinations": side(c, &f.dst_labels, &f.dst_ip).await?,
        "services": {"include": services, "exclude": []},
        "policy_decisions": f.decisions,
        "max_results": max,
    }))
}

fn end(v: &Value) -> String {
    let ip = v["ip"].as_str().unwrap_or_default();
    match v["workload"]["hostname"].as_str() {
        Some(h) if !h.is_empty() => format!("{h} ({ip})"),
        _ => ip.to_string(),
    }
}

fn header() {
    println!(
        "{:<24} {:<28} {:<28} {:>7} {:<20} {:<8} {:>6} {:<5} {:>9} {:>9} {:<8}",
        "LAST SEEN",
        "SOURCE",
        "DESTINATION",
        "PORT",
        "DECISION",
        "DIR",
        "CONNS",
        "STATE",
        "BYTES IN",
        "BYTES OUT",
        "REGION"
    );
}

fn row(f: &Value) {
    // Bytes are collected only at enhanced_data_collection.
    let bytes = |k: &str| f[k].as_u64().map_or("-".to_string(), |b| b.to_string());
    println!(
        "{:<24} {:<28} {:<28} {:>7} {:<20} {:<8} {:>6} {:<5} {:>9} {:>9} {:<8}",
        f["timestamp_range"]["last_detected"]
            .as_str()
            .unwrap_or_default(),
        end(&f["src"]),
        end(&f["dst"]),
        format!(
            "{}/{}",
            f["service"]["port"],
            match f["service"]["proto"].as_u64() {
                Some(6) => "tcp".to_string(),
                Some(17) => "udp".to_string(),
                Some(p) => p.to_string(),
                None => "?".to_string(),
            }
        ),
        f["policy_decision"].as_str().unwrap_or_default(),
        f["flow_direction"].as_str().unwrap_or_default(),
        f["num_connections"],
        f["state"].as_str().unwrap_or("-"),
        bytes("dst_bi"),
        bytes("dst_bo"),
        f["region"].as_str().unwrap_or_default(),
    );
}

/// Runs a `pce flows` command.
pub async fn run(cmd: FlowsCommand) -> Result<()> {
    match cmd {
        FlowsCommand::Query {
            conn,
            filters,
            minutes,
            max,
        } => {
            let json = conn.json;
            if max == 0 || max > 200_000 {
                bail!("--max must be 1 to 200000");
            }
            let cluster = open_cluster(&conn)?;
            let mut c = cluster.client(cluster.entry())?;
            let from = sc_store::time::now_ms().saturating_sub(minutes * 60_000);
            let body = query_body(&mut c, &filters, from, max).await?;
            let flows = post(
                &mut c,
                &format!("{ORG}/traffic_flows/traffic_analysis_queries"),
                body,
            )
            .await
            .context("the Explorer query")?;
            let list = flows.as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                header();
                list.iter().for_each(row);
                eprintln!("{} flows", list.len());
            }
            Ok(())
        }
        FlowsCommand::Tail {
            conn,
            filters,
            every,
        } => {
            let json = conn.json;
            if every == 0 {
                bail!("--every must be at least 1 second");
            }
            let cluster = open_cluster(&conn)?;
            let mut c = cluster.client(cluster.entry())?;
            let mut seen: HashSet<String> = HashSet::new();
            let mut from = sc_store::time::now_ms();
            if !json {
                header();
            }
            loop {
                let body =
                    query_body(&mut c, &filters, from.saturating_sub(120_000), 10_000).await?;
                let flows = post(
                    &mut c,
                    &format!("{ORG}/traffic_flows/traffic_analysis_queries"),
                    body,
                )
                .await?;
                let mut list = flows.as_array().cloned().unwrap_or_default();
                list.reverse(); // oldest first
                for f in &list {
                    // A flow is new when its (ends, service, decision, last seen) is.
                    let id = format!(
                        "{}|{}|{}|{}|{}|{}",
                        f["src"]["ip"],
                        f["dst"]["ip"],
                        f["service"],
                        f["policy_decision"],
                        f["flow_direction"],
                        f["timestamp_range"]["last_detected"]
                    );
                    if seen.insert(id) {
                        if json {
                            println!("{f}");
                        } else {
                            row(f);
                        }
                    }
                }
                from = sc_store::time::now_ms();
                if seen.len() > 100_000 {
                    seen.clear();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(every)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
}
