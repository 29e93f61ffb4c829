//! `pce policy generate`: the policy generator from the command line. It
//! names the app group by label values, asks any region, and prints the
//! proposed rules with the coverage before and after.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::dr::{open_cluster, Conn};
use sc_leader::client::cluster::{ok, post};
use sc_leader::client::ApiClient;

/// `pce policy` commands.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Propose allow rules for one app group from its observed traffic, and
    /// write them into the draft (never provisioned; `--dry-run` writes nothing).
    Generate(GenerateArgs),
}

/// `pce policy generate`
#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    conn: Conn,
    /// The app group's app label value.
    #[arg(long)]
    app: String,
    /// The app group's env label value.
    #[arg(long)]
    env: String,
    /// The app group's loc label value, when groups are made by location.
    #[arg(long)]
    loc: Option<String>,
    /// How far back, in hours.
    #[arg(long, default_value_t = 168)]
    hours: u64,
    /// One rule for everything inside the app group instead of role-to-role rules.
    #[arg(long)]
    ring_fence: bool,
    /// Propose only; write nothing (`--json` prints the API's answer).
    #[arg(long)]
    dry_run: bool,
}

fn iso(ms: u64) -> String {
    format!("{}Z", &sc_store::time::iso8601(ms)[..19])
}

/// The `key=value` of every label the proposed rules name, by href, so
/// rules print as people wrote them (one GET per label; there are few).
async fn label_names(c: &mut ApiClient, r: &Value) -> Result<HashMap<String, String>> {
    let mut names = HashMap::new();
    for rule in r["rules"].as_array().into_iter().flatten() {
        for side in ["providers", "consumers"] {
            for a in rule["rule"][side].as_array().into_iter().flatten() {
                let Some(href) = a["label"]["href"].as_str() else {
                    continue;
                };
                if names.contains_key(href) {
                    continue;
                }
                let path = format!("/api/v2{href}");
                let l = ok(c.get(&path).await?, &format!("GET {path}"))?;
                names.insert(
                    href.to_string(),
                    format!(
                        "{}={}",
                        l["key"].as_str().unwrap_or("?"),
                        l["value"].as_str().unwrap_or("?")
                    ),
                );
            }
        }
    }
    Ok(names)
}

/// One side of a proposed rule, for people: labels by `key=value`, other
/// actors by kind and id.
fn side(list: &Value, names: &HashMap<String, String>) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            if a["actors"] == "ams" {
                return "all workloads".to_string();
            }
            let Some((kind, v)) = a.as_object().and_then(|o| o.iter().next()) else {
                return "?".into();
            };
            let href = v["href"].as_str().unwrap_or("?");
            match names.get(href) {
                Some(n) => n.clone(),
                None => format!("{kind}:{}", href.rsplit('/').next().unwrap_or("?")),
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn services(list: &Value) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|s| match (s["proto"].as_u64(), s["port"].as_u64()) {
            (Some(6), Some(p)) => format!("{p}/tcp"),
            (Some(17), Some(p)) => format!("{p}/udp"),
            (Some(1 | 58), _) => "icmp".into(),
            _ if s.get("href").is_some() => "all services".into(),
            _ => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn print(r: &Value, names: &HashMap<String, String>) {
    let c = &r["coverage"];
    let pct = |k: &str| c[k].as_f64().unwrap_or(0.0) * 100.0;
    println!(
        "ruleset {:?}{}{}",
        r["rule_set"]["name"].as_str().unwrap_or_default(),
        if r["rule_set"]["new"] == json!(true) {
            " (new)"
        } else {
            ""
        },
        if r["dry_run"] == json!(true) {
            " - dry run, nothing written"
        } else {
            ""
        }
    );
    println!(
        "coverage: {:.1}% -> {:.1}% of {} observed connections",
        pct("before"),
        pct("after"),
        c["observed_connections"].as_u64().unwrap_or(0)
    );
    let rules = r["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        println!("no new rules: the draft already allows what was observed");
    } else {
        println!(
            "{:<12} {:>7}  {:<36} {:<24} SERVICES",
            "KIND", "CONNS", "CONSUMERS", "PROVIDERS"
        );
    }
    for p in &rules {
        let rule = &p["rule"];
        println!(
            "{:<12} {:>7}  {:<36} {:<24} {}{}",
            p["kind"].as_str().unwrap_or_default(),
            p["connections"].as_u64().unwrap_or(0),
            side(&rule["consumers"], names),
            side(&rule["providers"], names),
            services(&rule["ingress_services"]),
            if rule["unscoped_consumers"] == json!(true) {
                " (extra-scope)"
            } else {
                ""
            }
        );
    }
    let left = &r["left_out"];
    for a in left["unnamed_addresses"].as_array().into_iter().flatten() {
        println!(
            "{} ({} connections) is in no IP list: add it to one and run again",
            a["ip"].as_str().unwrap_or_default(),
            a["connections"].as_u64().unwrap_or(0)
        );
    }
    for g in r["regions"].as_array().into_iter().flatten() {
        if g["responded"] != json!(true) {
            eprintln!(
                "region {} did not answer: {}",
                g["region"].as_str().unwrap_or("?"),
                g["error"].as_str().unwrap_or("")
            );
        }
    }
}

/// Runs `pce policy ...`.
pub async fn run(cmd: PolicyCommand) -> Result<()> {
    let PolicyCommand::Generate(args) = cmd;
    if args.hours == 0 {
        bail!("--hours must be at least 1");
    }
    let cluster = open_cluster(&args.conn)?;
    let mut c = cluster.client(cluster.entry())?;
    let mut labels = vec![
        crate::labels::href(&mut c, "app", &args.app).await?,
        crate::labels::href(&mut c, "env", &args.env).await?,
    ];
    if let Some(loc) = &args.loc {
        labels.push(crate::labels::href(&mut c, "loc", loc).await?);
    }
    let now = sc_store::time::now_ms();
    let body = json!({
        "labels": labels.iter().map(|h| json!({"href": h})).collect::<Vec<_>>(),
        "start_date": iso(now.saturating_sub(args.hours * 3_600_000)),
        "end_date": iso(now + 60_000),
        "ring_fence": args.ring_fence,
        "dry_run": args.dry_run,
    });
    let r = post(&mut c, "/api/v2/orgs/1/policy_generator", body)
        .await
        .context("the policy generator")?;
    if args.conn.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r, &label_names(&mut c, &r).await?);
    }
    Ok(())
}
