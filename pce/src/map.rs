//! `pce map`: the app group map from the command line, as a table or as
//! Graphviz DOT (and SVG through Graphviz's own `dot`, when installed).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::dr::{open_cluster, Conn};
use sc_leader::client::cluster::post;

/// How `pce map` prints.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Groups and edges as two tables.
    Table,
    /// Graphviz DOT.
    Dot,
    /// SVG drawn by Graphviz `dot` (must be installed).
    Svg,
    /// The API's answer.
    Json,
}

/// `pce map`
#[derive(clap::Args)]
pub struct MapArgs {
    #[command(flatten)]
    conn: Conn,
    /// How far back, in hours.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Group by app, env and loc (default: app and env).
    #[arg(long)]
    include_location: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn iso(ms: u64) -> String {
    format!("{}Z", &sc_store::time::iso8601(ms)[..19])
}

/// An edge's services as `port/proto`.
fn services(e: &Value) -> Vec<String> {
    e["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let proto = if s["proto"] == 17 { "udp" } else { "tcp" };
            format!("{}/{proto}", s["port"])
        })
        .collect()
}

/// Colour and line style by decision mix: a second cue besides colour.
fn style(e: &Value) -> (&'static str, &'static str) {
    let d = &e["policy_decisions"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    if n("blocked") > 0 {
        ("#d55e00", "dashed")
    } else if n("potentially_blocked") + n("unknown") > 0 {
        ("#e69f00", "dotted")
    } else {
        ("#0072b2", "solid")
    }
}

/// The map as Graphviz DOT: a node per group (box: app group, ellipse:
/// addresses), an edge per pair with its services and rule coverage.
pub fn dot(map: &Value) -> String {
    let mut out =
        String::from("digraph app_group_map {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    let esc = |s: &str| s.replace('"', "\\\"");
    for n in map["nodes"].as_array().into_iter().flatten() {
        let shape = if n["kind"] == "app_group" || n["kind"] == "unlabelled" {
            "box"
        } else {
            "ellipse"
        };
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} workloads\", shape={shape}];\n",
            esc(n["id"].as_str().unwrap_or_default()),
            esc(n["name"].as_str().unwrap_or_default()),
            n["workloads"]
        ));
    }
    for e in map["edges"].as_array().into_iter().flatten() {
        let services = services(e);
        let (color, line) = style(e);
        out.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{}\\n{} conns, {:.0}% allowed\", color=\"{color}\", style={line}];\n",
            esc(e["src"].as_str().unwrap_or_default()),
            esc(e["dst"].as_str().unwrap_or_default()),
            services.join(", "),
            e["connections"],
            e["rule_coverage"].as_f64().unwrap_or(0.0) * 100.0
        ));
    }
    out.push_str("}\n");
    out
}

fn table(map: &Value) {
    let name = |id: &Value| {
        map["nodes"]
            .as_array()
            .and_then(|l| l.iter().find(|n| &n["id"] == id))
            .and_then(|n| n["name"].as_str())
            .unwrap_or_else(|| id.as_str().unwrap_or("?"))
            .to_string()
    };
    println!(
        "{:<32} {:<12} {:>9} {:<24} REGIONS",
        "GROUP", "KIND", "WORKLOADS", "MODES"
    );
    for n in map["nodes"].as_array().into_iter().flatten() {
        let modes: Vec<String> = n["enforcement_modes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(m, c)| format!("{m}:{c}"))
            .collect();
        let regions: Vec<&str> = n["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<32} {:<12} {:>9} {:<24} {}",
            n["name"].as_str().unwrap_or_default(),
            n["kind"].as_str().unwrap_or_default(),
            n["workloads"].as_u64().unwrap_or(0),
            modes.join(" "),
            regions.join(",")
        );
    }
    println!();
    println!(
        "{:<28} {:<28} {:<24} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "FROM", "TO", "SERVICES", "CONNS", "ALLOWED", "POT.BLK", "BLOCKED", "COVERAGE"
    );
    for e in map["edges"].as_array().into_iter().flatten() {
        let services = services(e);
        let d = &e["policy_decisions"];
        println!(
            "{:<28} {:<28} {:<24} {:>7} {:>8} {:>8} {:>8} {:>8.0}%",
            name(&e["src"]),
            name(&e["dst"]),
            services.join(","),
            e["connections"].as_u64().unwrap_or(0),
            d["allowed"].as_u64().unwrap_or(0),
            d["potentially_blocked"].as_u64().unwrap_or(0),
            d["blocked"].as_u64().unwrap_or(0),
            e["rule_coverage"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    for r in map["regions"].as_array().into_iter().flatten() {
        if r["responded"] != json!(true) {
            eprintln!(
                "region {} did not answer: {}",
                r["region"].as_str().unwrap_or("?"),
                r["error"].as_str().unwrap_or("")
            );
        }
    }
}

/// Runs `pce map`.
pub async fn run(args: MapArgs) -> Result<()> {
    if args.hours == 0 {
        bail!("--hours must be at least 1");
    }
    let cluster = open_cluster(&args.conn)?;
    let mut c = cluster.client(cluster.entry())?;
    let now = sc_store::time::now_ms();
    let body = json!({
        "start_date": iso(now.saturating_sub(args.hours * 3_600_000)),
        "end_date": iso(now + 60_000),
    });
    let path = format!(
        "/api/v2/orgs/1/app_group_map{}",
        if args.include_location {
            "?include_location=true"
        } else {
            ""
        }
    );
    let map = post(&mut c, &path, body).await.context("the map query")?;
    // `--json` (shared by every cluster command) means `--format json`.
    let format = if args.conn.json {
        Format::Json
    } else {
        args.format
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&map)?),
        Format::Table => table(&map),
        Format::Dot => print!("{}", dot(&map)),
        Format::Svg => {
            let mut child = Command::new("dot")
                .arg("-Tsvg")
                .stdin(Stdio::piped())
                .spawn()
                .context("--format svg needs Graphviz's `dot` on the PATH (apt-get install graphviz); --format dot prints its input")?;
            child
                .stdin
                .take()
                .context("dot's stdin")?
                .write_all(dot(&map).as_bytes())?;
            if !child.wait()?.success() {
                bail!("dot failed");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_draws_each_group_and_each_edge_with_a_second_cue_besides_colour() {
        let map = json!({
            "nodes": [
                {"id": "a", "kind": "app_group", "name": "shop | prod", "workloads": 2},
                {"id": "internet", "kind": "internet", "name": "internet", "workloads": 0}
            ],
            "edges": [
                {"src": "internet", "dst": "a", "services": [{"port": 443, "proto": 6}], "connections": 4,
                 "policy_decisions": {"allowed": 3, "blocked": 1}, "rule_coverage": 0.75},
                {"src": "a", "dst": "a", "services": [{"port": 53, "proto": 17}], "connections": 2,
                 "policy_decisions": {"allowed": 2}, "rule_coverage": 1.0}
            ]
        });
        let d = dot(&map);
        assert!(d.starts_with("digraph app_group_map {"));
        assert!(
            d.contains("\"a\" [label=\"shop | prod\\n2 workloads\", shape=box];"),
            "{d}"
        );
        assert!(d.contains("shape=ellipse"), "{d}");
        assert!(d.contains("\"internet\" -> \"a\" [label=\"443/tcp\\n4 conns, 75% allowed\", color=\"#d55e00\", style=dashed];"), "{d}");
        assert!(d.contains("53/udp") && d.contains("style=solid"), "{d}");
    }
}
