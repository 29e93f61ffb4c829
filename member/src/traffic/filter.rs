//! Whether a stored flow matches an Explorer query (the region's side of it;
//! label groups and IP lists arrive already resolved to labels and ranges).

use std::net::IpAddr;

use sc_policy::addr::{AddrSet, IpRange};
use sc_proto::federation::flow_actor::Kind as ActorKind;
use sc_proto::federation::{FlowActor, FlowEnd, FlowQuery, FlowSide, ServiceMatch, TrafficFlow};

fn actor_matches(a: &FlowActor, end: &FlowEnd) -> bool {
    let w = end.workload.as_ref();
    match &a.kind {
        Some(ActorKind::Label(id)) => w.is_some_and(|w| w.labels.iter().any(|l| &l.id == id)),
        Some(ActorKind::Workload(id)) => w.is_some_and(|w| &w.id == id),
        Some(ActorKind::AllWorkloads(_)) => w.is_some(),
        Some(ActorKind::Cidr(c)) => match (IpRange::parse(c), end.ip.parse::<IpAddr>()) {
            (Ok(r), Ok(ip)) => AddrSet::from_ranges([r]).contains(ip),
            _ => false,
        },
        None => false,
    }
}

/// (included, not excluded) for one side; an empty include includes all.
fn side(s: Option<&FlowSide>, end: &FlowEnd) -> (bool, bool) {
    let Some(s) = s else {
        return (true, true);
    };
    let included = s.include.is_empty()
        || s.include
            .iter()
            .any(|set| !set.all.is_empty() && set.all.iter().all(|a| actor_matches(a, end)));
    let kept = !s.exclude.iter().any(|a| actor_matches(a, end));
    (included, kept)
}

fn service_matches(m: &ServiceMatch, f: &TrafficFlow) -> bool {
    let proto_ok = m.proto == 0 || m.proto == f.proto;
    let port_ok = m.port == 0
        || if m.to_port >= m.port {
            (m.port..=m.to_port).contains(&f.port)
        } else {
            m.port == f.port
        };
    proto_ok && port_ok
}

/// Whether `f` answers `q` (time, decisions, services, both sides).
pub fn matches(q: &FlowQuery, f: &TrafficFlow) -> bool {
    if f.last_ms < q.start_ms || (q.end_ms > 0 && f.first_ms > q.end_ms) {
        return false;
    }
    if !q.decisions.is_empty() && !q.decisions.iter().any(|d| d == &f.decision) {
        return false;
    }
    if !q.services_include.is_empty() && !q.services_include.iter().any(|m| service_matches(m, f)) {
        return false;
    }
    if q.services_exclude.iter().any(|m| service_matches(m, f)) {
        return false;
    }
    let empty = FlowEnd::default();
    let (src_in, src_kept) = side(q.sources.as_ref(), f.src.as_ref().unwrap_or(&empty));
    let (dst_in, dst_kept) = side(q.destinations.as_ref(), f.dst.as_ref().unwrap_or(&empty));
    if !(src_kept && dst_kept) {
        return false;
    }
    if q.either_side {
        let has = |s: Option<&FlowSide>| s.is_some_and(|s| !s.include.is_empty());
        match (has(q.sources.as_ref()), has(q.destinations.as_ref())) {
            (true, true) => src_in || dst_in,
            (true, false) => src_in,
            (false, true) => dst_in,
            (false, false) => true,
        }
    } else {
        src_in && dst_in
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_proto::federation::{ActorSet, FlowLabel, FlowWorkload};

    fn end(ip: &str, labels: &[&str]) -> Option<FlowEnd> {
        Some(FlowEnd {
            ip: ip.into(),
            workload: (!labels.is_empty()).then(|| FlowWorkload {
                id: format!("w-{ip}"),
                labels: labels
                    .iter()
                    .map(|l| FlowLabel {
                        id: l.to_string(),
                        ..FlowLabel::default()
                    })
                    .collect(),
                ..FlowWorkload::default()
            }),
        })
    }

    fn flow() -> TrafficFlow {
        TrafficFlow {
            src: end("10.0.0.1", &["web"]),
            dst: end("10.0.0.2", &["db", "prod"]),
            port: 5432,
            proto: 6,
            decision: "blocked".into(),
            first_ms: 100,
            last_ms: 200,
            ..TrafficFlow::default()
        }
    }

    fn label(id: &str) -> FlowActor {
        FlowActor {
            kind: Some(ActorKind::Label(id.into())),
        }
    }

    #[test]
    fn sides_are_an_or_of_ands_and_excludes_win() {
        let f = flow();
        let mut q = FlowQuery::default();
        assert!(matches(&q, &f), "an empty query matches everything");
        q.destinations = Some(FlowSide {
            include: vec![
                ActorSet {
                    all: vec![label("db"), label("dev")],
                },
                ActorSet {
                    all: vec![label("db"), label("prod")],
                },
            ],
            exclude: vec![],
        });
        assert!(matches(&q, &f), "the second AND set matches");
        q.sources = Some(FlowSide {
            include: vec![],
            exclude: vec![FlowActor {
                kind: Some(ActorKind::Cidr("10.0.0.0/24".into())),
            }],
        });
        assert!(!matches(&q, &f), "the excluded range rules it out");
    }

    #[test]
    fn time_decision_and_service_filters_apply() {
        let f = flow();
        let q = |f: fn(&mut FlowQuery)| {
            let mut q = FlowQuery::default();
            f(&mut q);
            q
        };
        assert!(!matches(&q(|q| q.start_ms = 201), &f));
        assert!(!matches(&q(|q| q.end_ms = 99), &f));
        assert!(matches(
            &q(|q| {
                q.start_ms = 150;
                q.end_ms = 160
            }),
            &f
        ));
        assert!(!matches(&q(|q| q.decisions = vec!["allowed".into()]), &f));
        assert!(matches(
            &q(|q| q.services_include = vec![ServiceMatch {
                proto: 6,
                port: 5000,
                to_port: 6000
            }]),
            &f
        ));
        assert!(!matches(
            &q(|q| q.services_exclude = vec![ServiceMatch {
                proto: 0,
                port: 5432,
                to_port: 0
            }]),
            &f
        ));
    }
}
