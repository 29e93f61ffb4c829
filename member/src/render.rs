//! The JSON a VEN receives, written with each rule serialised once.
//!
//! A provision usually gives thousands of workloads the same new rule: the
//! engine shares one `Arc` of the rule's peers, ports and source between all of
//! their compiled policies. Serialising every policy from scratch repeated that
//! work per workload and was the largest part of a member's cost per push, so
//! the text of each distinct rule is kept here, keyed by those shared pointers.
//! The output is byte for byte what `serde_json::to_string` gives for the whole
//! policy (a test holds it to that), so hashes do not depend on the cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sc_policy::compute::{CompiledPolicy, CompiledRule};
use sc_policy::model::EnforcementMode;
use serde::Serialize;

/// A rule by identity: its action and the addresses of its shared parts. The
/// entry keeps the rule itself, so none of these pointers can be freed and
/// reused by another rule while the key exists.
type Key = (u8, usize, usize, usize);

fn key(r: &CompiledRule) -> Key {
    (
        r.action as u8,
        Arc::as_ptr(&r.peers) as usize,
        Arc::as_ptr(&r.ports) as usize,
        Arc::as_ptr(&r.source) as usize,
    )
}

/// A bound on the cache whatever happens (distinct rules in use are far fewer):
/// past it, everything is dropped and serialised again on demand.
const MAX_RULES: usize = 100_000;

/// The fields before the rule lists, in the struct's order.
#[derive(Serialize)]
struct Head<'a> {
    workload: &'a str,
    mode: EnforcementMode,
    addresses: &'a [IpAddr],
}

/// Serialised rules, shared by every policy that holds them.
#[derive(Default)]
pub struct RuleTexts {
    /// A std mutex: held only to look up or insert, never across an await.
    texts: Mutex<HashMap<Key, (CompiledRule, Arc<str>)>>,
}

impl RuleTexts {
    /// The policy as JSON.
    pub fn json(&self, c: &CompiledPolicy) -> String {
        let head = serde_json::to_string(&Head {
            workload: &c.workload,
            mode: c.mode,
            addresses: &c.addresses,
        })
        .unwrap_or_default();
        let mut out = String::with_capacity(head.len() + 64 * (c.inbound.len() + 1));
        // Reopen the head object to append the two lists.
        out.push_str(head.strip_suffix('}').unwrap_or(&head));
        let Ok(mut texts) = self.texts.lock() else {
            return serde_json::to_string(c).unwrap_or_default();
        };
        for (name, rules) in [("inbound", &c.inbound), ("outbound", &c.outbound)] {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":[");
            for (i, r) in rules.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let text = texts.entry(key(r)).or_insert_with(|| {
                    let t: Arc<str> = serde_json::to_string(r).unwrap_or_default().into();
                    (r.clone(), t)
                });
                out.push_str(&text.1);
            }
            out.push(']');
        }
        // The fields after the lists, in declaration order, as serde writes them.
        out.push_str(",\"visibility\":");
        out.push_str(&serde_json::to_string(&c.visibility).unwrap_or_default());
        out.push('}');
        out
    }

    /// Forgets rules whose peers or ports nothing outside this cache holds any
    /// more (no compiled policy can contain them again), so the cache lives as
    /// long as the rules it serves. The source is not counted: the engine
    /// keeps every rule name it has seen.
    pub fn prune(&self) {
        let Ok(mut texts) = self.texts.lock() else {
            return;
        };
        if texts.len() > MAX_RULES {
            texts.clear();
            return;
        }
        let mut held: HashMap<usize, usize> = HashMap::new();
        for (k, _) in texts.iter() {
            *held.entry(k.1).or_default() += 1;
            *held.entry(k.2).or_default() += 1;
        }
        let outside = |ptr: usize, count: usize| count > held.get(&ptr).copied().unwrap_or(0);
        texts.retain(|k, (r, _)| {
            outside(k.1, Arc::strong_count(&r.peers)) && outside(k.2, Arc::strong_count(&r.ports))
        });
    }

    /// How many distinct rules are held (tests, metrics).
    pub fn len(&self) -> usize {
        self.texts.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether no rule is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_policy::compute::Ports;

    fn policy(rules: usize) -> CompiledPolicy {
        let peers = Arc::new(sc_policy::addr::AddrSet::from_ips(vec![
            "10.0.0.1".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ]));
        let ports = Arc::new(Ports::All);
        let inbound = (0..rules)
            .map(|i| CompiledRule {
                action: sc_policy::compute::Action::Allow,
                peers: peers.clone(),
                ports: ports.clone(),
                source: Arc::new(sc_policy::model::RuleRef::Allow {
                    rule_set: "rs \"quoted\"".into(),
                    rule: format!("r{i}"),
                }),
            })
            .collect::<Vec<_>>();
        CompiledPolicy {
            workload: "w1".into(),
            mode: EnforcementMode::Full,
            addresses: vec!["10.0.0.9".parse().unwrap()],
            outbound: inbound[..rules / 2].to_vec(),
            inbound,
            visibility: Default::default(),
        }
    }

    #[test]
    fn the_text_is_what_serde_writes_and_rules_are_serialised_once() {
        let texts = RuleTexts::default();
        for n in [0, 1, 5] {
            let c = policy(n);
            assert_eq!(texts.json(&c), serde_json::to_string(&c).unwrap());
            // The same rules again come from the cache, with the same bytes.
            let before = texts.len();
            assert_eq!(texts.json(&c), serde_json::to_string(&c).unwrap());
            assert_eq!(texts.len(), before);
        }
        let live = policy(3);
        texts.json(&live);
        texts.prune();
        assert_eq!(texts.len(), 3, "only the rules a live policy holds stay");
        drop(live);
        texts.prune();
        assert!(texts.is_empty(), "no policy holds those rules any more");
    }
}
