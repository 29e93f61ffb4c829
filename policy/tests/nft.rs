//! The rendered rulesets are accepted by the real `nft`: each is checked with
//! `nft -c -f` inside a network namespace this test creates (so nothing on the
//! host is touched), and the full-mode one is also loaded and listed there.
//!
//! Needs root and the `nftables` package (`.ci/run` installs it). Outside CI,
//! without them, the test says so and passes; with `CI` set it fails instead.

mod support;

use sc_policy::model::VisibilityLevel;
use std::io::Write;
use std::process::Command;

use sc_policy::model::*;
use sc_policy::render::nftables;
use support::*;

struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("pce-nft-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Netns(name))
    }

    fn nft(&self, args: &[&str], input: &str) -> (bool, String) {
        let mut file = tempfile_path();
        file.write_all(input.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let mut all = vec!["netns", "exec", &self.0, "nft"];
        all.extend_from_slice(args);
        all.push(&path);
        let out = Command::new("ip").args(&all).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

struct TempFile(std::path::PathBuf, std::fs::File);

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_path() -> TempFile {
    let p = std::env::temp_dir().join(format!(
        "pce-nft-{}-{}.nft",
        std::process::id(),
        rand_suffix()
    ));
    let f = std::fs::File::create(&p).unwrap();
    TempFile(p, f)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn world() -> World {
    let mut w = World::new();
    for (id, mode) in [
        ("full", EnforcementMode::Full),
        ("sel", EnforcementMode::Selective),
        ("vis", EnforcementMode::VisibilityOnly),
        ("idle", EnforcementMode::Idle),
    ] {
        w.workload(
            id,
            &["role-db", "env-prod"],
            &["10.0.3.9", "2001:db8::9"],
            mode,
        );
    }
    w.workload(
        "web",
        &["role-web", "env-prod"],
        &["10.0.1.5", "10.0.1.6", "2001:db8::5"],
        EnforcementMode::Full,
    );
    w.ip_list(
        "corp",
        &["192.168.0.0/16", "2001:db8:100::/48"],
        &["192.168.7.0/24"],
    );
    w.policy.services.insert(
        "mix".into(),
        Service {
            id: "mix".into(),
            name: "mix".into(),
            ports: vec![
                PortRange {
                    proto: Proto::Tcp,
                    port: Some(5432),
                    to_port: None,
                },
                PortRange {
                    proto: Proto::Tcp,
                    port: Some(8000),
                    to_port: Some(8100),
                },
                PortRange {
                    proto: Proto::Udp,
                    port: None,
                    to_port: None,
                },
                PortRange {
                    proto: Proto::Icmp,
                    port: None,
                    to_port: None,
                },
            ],
        },
    );
    let rs = w.rule_set("rs", &["env-prod"]);
    rs.rules.push(allow(
        "a",
        labels(&["role-db"]),
        labels(&["role-web"]),
        vec![ServiceRef::Service("mix".into())],
    ));
    rs.rules.push(allow(
        "b",
        labels(&["role-db"]),
        vec![Actor::IpList("corp".into())],
        vec![ServiceRef::All],
    ));
    rs.deny_rules.push(deny(
        "d",
        labels(&["role-db"]),
        vec![Actor::IpList("corp".into())],
        vec![tcp(22)],
        true,
    ));
    w
}

#[test]
fn rendered_rulesets_are_accepted_by_the_real_nft() {
    let have_tools = Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let ns = if have_tools { Netns::new() } else { None };
    let Some(ns) = ns else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: install nftables and run as root"
        );
        eprintln!("skipping: needs the nft tool and root to create a network namespace");
        return;
    };
    let engine = world().engine();
    for (id, c) in engine.all_compiled() {
        for vis in LEVELS {
            let mut c = (*c).clone();
            c.visibility = vis;
            let text = nftables(&c);
            let (ok, msg) = ns.nft(&["-c", "-f"], &text);
            assert!(
                ok,
                "nft refused the ruleset of {id} ({vis:?}): {msg}\n{text}"
            );
        }
    }
    // Load the full-mode one for real (inside the namespace), twice: the second
    // load must replace the first atomically.
    let full = nftables(&engine.compiled("full").unwrap());
    for _ in 0..2 {
        let (ok, msg) = ns.nft(&["-f"], &full);
        assert!(ok, "{msg}");
    }
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "list", "table", "inet", "pce",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("chain input")
            && listed.contains("chain output")
            && listed.contains("10.0.1.5"),
        "{listed}"
    );
}

const LEVELS: [VisibilityLevel; 5] = [
    VisibilityLevel::FlowFullDetail,
    VisibilityLevel::FlowSummary,
    VisibilityLevel::FlowDrops,
    VisibilityLevel::FlowOff,
    VisibilityLevel::EnhancedDataCollection,
];

#[test]
fn the_visibility_level_decides_which_decisions_are_logged() {
    let engine = world().engine();
    for (id, c) in engine.all_compiled() {
        if c.mode == EnforcementMode::Idle {
            continue;
        }
        for vis in LEVELS {
            let mut c = (*c).clone();
            c.visibility = vis;
            let text = nftables(&c);
            let allowed = text.contains("\"sc:a:");
            let refused = text.contains("\"sc:b:") || text.contains("\"sc:p:");
            match vis {
                VisibilityLevel::FlowOff => assert!(
                    !text.contains("log prefix"),
                    "{id}: flow_off logs nothing\n{text}"
                ),
                VisibilityLevel::FlowDrops => assert!(
                    !allowed && refused,
                    "{id}: flow_drops logs only what is refused\n{text}"
                ),
                _ => assert!(
                    allowed && refused,
                    "{id} {vis:?} logs every decision\n{text}"
                ),
            }
        }
    }
}
