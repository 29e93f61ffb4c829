//! The app-shaped estate `pce bench visibility` measures the map and the
//! policy generator on: 10,000 managed workloads in 200 app groups (50 apps
//! × 4 envs, 5 roles), made the way a real estate is made: labels, one
//! pairing profile per (app, env, role), and every workload paired through
//! its region's VEN service, so the generator finds them in the estate with
//! their labels and addresses, as VENs would leave them.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use sc_leader::client::ApiClient;
use sc_proto::federation::{FlowLabel, FlowWorkload};
use sc_ven::identity::{pair, HostFacts};
use serde_json::{json, Value};

use super::flows::{ip, Estate, PARTNERS};

const ORG: &str = "/api/v2/orgs/1";
/// Apps, envs and roles: 50 × 4 app groups of 5 roles.
pub(crate) const APPS: usize = 50;
pub(crate) const ENVS: usize = 4;
const ROLES: usize = 5;
/// App groups.
pub(crate) const GROUPS: usize = APPS * ENVS;
/// Pairings in flight at once.
const PARALLEL: usize = 32;

async fn post(api: &mut ApiClient, path: &str, body: Value) -> Result<Value> {
    let a = api.post(path, &body).await?;
    if !a.status.is_success() {
        bail!("POST {path}: {} {}", a.status, a.json());
    }
    Ok(a.json())
}

fn href(v: &Value) -> Result<String> {
    v["href"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no href in {v}"))
}

/// Workload `i`'s (app, env, role) indexes: its app group is `i % GROUPS`.
fn place(i: usize) -> (usize, usize, usize) {
    let g = i % GROUPS;
    (g % APPS, g / APPS, i / GROUPS % ROLES)
}

/// The estate, built through the admin API at `api` and the VEN services at
/// `vens` (workload `i` pairs through `vens[i % vens.len()]`, so every region
/// serves a share). Returns it with every label's href by `key=value`.
pub(crate) async fn build(
    api: &mut ApiClient,
    vens: &[String],
    ca_pem: &str,
    workloads: usize,
) -> Result<(Estate, HashMap<String, String>)> {
    if vens.is_empty() || workloads < GROUPS {
        bail!("need a VEN service and at least {GROUPS} workloads");
    }
    let t0 = Instant::now();
    let mut labels = HashMap::new();
    let names = (0..APPS)
        .map(|i| ("app", format!("app{i}")))
        .chain((0..ENVS).map(|i| ("env", format!("env{i}"))))
        .chain((0..ROLES).map(|i| ("role", format!("role{i}"))));
    for (key, value) in names {
        let l = post(
            api,
            &format!("{ORG}/labels"),
            json!({"key": key, "value": value}),
        )
        .await?;
        labels.insert(format!("{key}={value}"), href(&l)?);
    }
    // An IP list naming half of the internet sources, provisioned so the
    // map names them too.
    post(
        api,
        &format!("{ORG}/sec_policy/draft/ip_lists"),
        json!({"name": "partners", "ip_ranges": [{"from_ip": PARTNERS}]}),
    )
    .await?;
    post(
        api,
        &format!("{ORG}/sec_policy"),
        json!({"update_description": "partners"}),
    )
    .await?;
    let label = |k: &str, i: usize| labels[&format!("{k}={k}{i}")].clone();
    let mut codes: HashMap<(usize, usize, usize), String> = HashMap::new();
    for a in 0..APPS {
        for e in 0..ENVS {
            for r in 0..ROLES {
                let body = json!({
                    "name": format!("app{a}-env{e}-role{r}"),
                    "labels": [{"href": label("app", a)}, {"href": label("env", e)}, {"href": label("role", r)}],
                    "enforcement_mode": "visibility_only",
                });
                let p = href(&post(api, &format!("{ORG}/pairing_profiles"), body).await?)?;
                let k = post(api, &format!("/api/v2{p}/pairing_key"), json!({})).await?;
                let code = k["activation_code"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no activation code in {k}"))?;
                codes.insert((a, e, r), code.to_string());
            }
        }
    }
    eprintln!(
        "{} labels, {} pairing profiles in {:.1} s",
        labels.len(),
        codes.len(),
        t0.elapsed().as_secs_f64()
    );
    let t1 = Instant::now();
    let mut ids = Vec::with_capacity(workloads);
    let mut batch = Vec::new();
    for i in 0..workloads {
        let (server, ca, code) = (
            vens[i % vens.len()].clone(),
            ca_pem.to_string(),
            codes[&place(i)].clone(),
        );
        batch.push(tokio::spawn(async move {
            let facts = HostFacts {
                hostname: format!("host-{i}"),
                addresses: vec![ip(i)],
                os: "bench".into(),
            };
            pair(&server, &ca, &code, &facts).await
        }));
        if batch.len() == PARALLEL || i + 1 == workloads {
            for b in batch.drain(..) {
                ids.push(b.await??.workload_id);
            }
        }
    }
    eprintln!(
        "{workloads} workloads paired in {:.1} s",
        t1.elapsed().as_secs_f64()
    );
    let flow_label = |key: &str, i: usize| FlowLabel {
        id: label(key, i)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        key: key.into(),
        value: format!("{key}{i}"),
    };
    let list = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let (a, e, r) = place(i);
            FlowWorkload {
                id,
                name: format!("host-{i}"),
                hostname: format!("host-{i}"),
                labels: vec![
                    flow_label("app", a),
                    flow_label("env", e),
                    flow_label("role", r),
                ],
                enforcement_mode: "visibility_only".into(),
                managed: true,
            }
        })
        .collect();
    Ok((
        Estate {
            workloads: list,
            ips: (0..workloads).map(ip).collect(),
            groups: GROUPS,
        },
        labels,
    ))
}
