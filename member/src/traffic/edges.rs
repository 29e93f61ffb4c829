//! The region's side of the app group map: its matching flows aggregated
//! into edges between app groups, so a map over a million flows crosses the
//! federation as a few thousand edges.
//!
//! A connection between two managed workloads is reported by both VENs (the
//! source's outbound, the destination's inbound); an edge counts it once,
//! from the destination's report. Outbound reports count only when the
//! destination has no VEN to report it (an unmanaged workload or an address)
//! or when the source blocked it (it never arrived).

use std::collections::BTreeMap;

use sc_proto::federation::{FlowEnd, FlowQuery, MapEdge, TrafficFlow};

/// What the ends of edges are: app groups (the map) or single workloads
/// (the policy generator, which proposes rules per role and needs to know
/// each workload's current labels, not the ones its flows recorded).
#[derive(Debug, Clone, Copy)]
pub enum Grouping<'a> {
    /// Groups made of these label keys.
    Labels(&'a [String]),
    /// One end per workload.
    Workloads,
}

impl Grouping<'_> {
    /// The grouping a query asks for; `None`: it asks for flows, not edges.
    pub fn of(q: &FlowQuery) -> Option<Grouping<'_>> {
        if q.by_workload {
            Some(Grouping::Workloads)
        } else if q.group_keys.is_empty() {
            None
        } else {
            Some(Grouping::Labels(&q.group_keys))
        }
    }
}

/// An end's place on the map: its group (`key=labelid` for each label key,
/// `|`-joined), `unlabelled` when it lacks one of them, `w:<id>` when
/// grouping by workload, `ip:<address>` when it is no workload.
pub fn group_of(end: Option<&FlowEnd>, grouping: Grouping) -> String {
    let Some(e) = end else {
        return "ip:".into();
    };
    let Some(w) = &e.workload else {
        return format!("ip:{}", e.ip);
    };
    let keys = match grouping {
        Grouping::Workloads => return format!("w:{}", w.id),
        Grouping::Labels(keys) => keys,
    };
    let mut parts = Vec::with_capacity(keys.len());
    for k in keys {
        match w.labels.iter().find(|l| &l.key == k) {
            Some(l) => parts.push(format!("{k}={}", l.id)),
            None => return "unlabelled".into(),
        }
    }
    parts.join("|")
}

/// Whether this report is the one an edge counts (see the module comment).
/// A connection the source blocked never reached the destination: its
/// outbound report is the only one.
fn counted(f: &TrafficFlow, dst_managed: bool) -> bool {
    f.direction != "outbound" || f.decision == "blocked" || !dst_managed
}

/// Edges being summed, keyed by (source, destination, port, proto).
#[derive(Default)]
pub struct Edges(BTreeMap<(String, String, u32, u32), MapEdge>);

impl Edges {
    /// Adds one flow whose ends are the groups `src` and `dst` (see
    /// [`group_of`]); `dst_managed`: the destination has a VEN of its own.
    pub fn add(&mut self, f: &TrafficFlow, src: &str, dst: &str, dst_managed: bool) {
        if !counted(f, dst_managed) {
            return;
        }
        let e = self.slot(src, dst, f.port, f.proto);
        let n = f.num_connections;
        match f.decision.as_str() {
            "allowed" => e.allowed += n,
            "potentially_blocked" => e.potentially_blocked += n,
            "blocked" => e.blocked += n,
            _ => e.unknown += n,
        }
        e.last_ms = e.last_ms.max(f.last_ms);
    }

    /// Adds an edge summed elsewhere (another bucket's, kept).
    pub fn merge(&mut self, e: &MapEdge) {
        let acc = self.slot(&e.src, &e.dst, e.port, e.proto);
        acc.allowed += e.allowed;
        acc.potentially_blocked += e.potentially_blocked;
        acc.blocked += e.blocked;
        acc.unknown += e.unknown;
        acc.last_ms = acc.last_ms.max(e.last_ms);
    }

    /// The edge (src, dst, port, proto), made empty if new.
    fn slot(&mut self, src: &str, dst: &str, port: u32, proto: u32) -> &mut MapEdge {
        self.0
            .entry((src.to_string(), dst.to_string(), port, proto))
            .or_insert_with(|| MapEdge {
                src: src.to_string(),
                dst: dst.to_string(),
                port,
                proto,
                ..MapEdge::default()
            })
    }

    /// The edges summed.
    pub fn into_edges(self) -> Vec<MapEdge> {
        self.0.into_values().collect()
    }
}

/// Aggregates whole flows (their ends' workloads attached) into edges.
pub fn aggregate<'a>(
    flows: impl IntoIterator<Item = &'a TrafficFlow>,
    grouping: Grouping,
) -> Vec<MapEdge> {
    let mut out = Edges::default();
    for f in flows {
        let managed = f
            .dst
            .as_ref()
            .and_then(|e| e.workload.as_ref())
            .is_some_and(|w| w.managed);
        out.add(
            f,
            &group_of(f.src.as_ref(), grouping),
            &group_of(f.dst.as_ref(), grouping),
            managed,
        );
    }
    out.into_edges()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_proto::federation::{FlowLabel, FlowWorkload};

    fn end(ip: &str, labels: &[(&str, &str)], managed: bool) -> Option<FlowEnd> {
        Some(FlowEnd {
            ip: ip.into(),
            workload: (!labels.is_empty()).then(|| FlowWorkload {
                id: format!("w-{ip}"),
                managed,
                labels: labels
                    .iter()
                    .map(|(k, id)| FlowLabel {
                        id: id.to_string(),
                        key: k.to_string(),
                        value: id.to_string(),
                    })
                    .collect(),
                ..FlowWorkload::default()
            }),
        })
    }

    fn flow(
        src: Option<FlowEnd>,
        dst: Option<FlowEnd>,
        dir: &str,
        decision: &str,
        n: u64,
    ) -> TrafficFlow {
        TrafficFlow {
            src,
            dst,
            port: 5432,
            proto: 6,
            direction: dir.into(),
            decision: decision.into(),
            num_connections: n,
            last_ms: 7,
            ..TrafficFlow::default()
        }
    }

    #[test]
    fn a_connection_both_ends_report_counts_once_and_groups_name_their_labels() {
        let keys = vec!["app".to_string(), "env".to_string()];
        let web = || {
            end(
                "10.0.0.1",
                &[("app", "shop"), ("env", "prod"), ("role", "web")],
                true,
            )
        };
        let db = || end("10.0.0.2", &[("app", "crm"), ("env", "prod")], true);
        let nolabel = || end("10.0.0.3", &[("role", "db")], false);
        let flows = vec![
            flow(web(), db(), "outbound", "allowed", 3),
            flow(web(), db(), "inbound", "allowed", 3),
            flow(web(), db(), "inbound", "blocked", 1),
            // Blocked on its way out: only the source saw it.
            flow(web(), db(), "outbound", "blocked", 2),
            // No VEN at the destination: the source's report is all there is.
            flow(web(), nolabel(), "outbound", "allowed", 2),
            flow(
                web(),
                end("203.0.113.9", &[], false),
                "outbound",
                "unknown",
                4,
            ),
        ];
        let edges = aggregate(&flows, Grouping::Labels(&keys));
        assert_eq!(edges.len(), 3, "{edges:?}");
        let to_db = edges.iter().find(|e| e.dst == "app=crm|env=prod").unwrap();
        assert_eq!(to_db.src, "app=shop|env=prod");
        assert_eq!((to_db.allowed, to_db.blocked), (3, 3));
        assert!(edges
            .iter()
            .any(|e| e.dst == "unlabelled" && e.allowed == 2));
        assert!(edges
            .iter()
            .any(|e| e.dst == "ip:203.0.113.9" && e.unknown == 4));
        // By workload: the same connections, each end by itself.
        let edges = aggregate(&flows, Grouping::Workloads);
        assert!(
            edges
                .iter()
                .any(|e| e.src == "w:w-10.0.0.1" && e.dst == "w:w-10.0.0.2" && e.blocked == 3),
            "{edges:?}"
        );
    }
}
