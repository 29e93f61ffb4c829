//! Where everything lives in the replicated key/value store, how a key parses
//! back into what it names, and how object hrefs map to keys. The one place that
//! knows the layout: the admin API, the VEN service and the DR tools all ask here.
//!
//! Every object is one key, so a write is a handful of puts guarded by the
//! `mod_revision` of what it read (optimistic concurrency, checked by every
//! replica's state machine). Layout, one prefix per concern:
//!
//! | prefix | holds |
//! |---|---|
//! | `o/live/{kind}/{id}` | labels, workloads, pairing profiles (not provisioned) |
//! | `o/draft/{kind}/{id}` | the draft policy (rules: `{ruleset}/{rule}`) |
//! | `o/active/{kind}/{id}` | the active policy, same shape |
//! | `v/{n}` | version `n`'s metadata; `vo/{n}/{kind}/{id}`: objects it changed |
//! | `m/epoch` | bumped by every write; deletes and provisions compare it |
//! | `m/version` | the active version number |
//! | `n/{kind}/{name}` | name index (unique names) |
//! | `u/{id}`, `un/{username}`, `k/{auth_username}` | users, user names, API keys |
//! | `vm/{member}` | the VEN service address of each member (node-local facts) |
//! | `pk/{hash}` | pairing keys |
//! | `a/{time}-{rand}` | audit events |

use serde::{Deserialize, Serialize};

/// An object id (random, URL-safe).
pub type Id = String;

/// The object kinds the API serves, named by their path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `labels` (live)
    Label,
    /// `label_groups` (provisioned)
    LabelGroup,
    /// `services` (provisioned)
    Service,
    /// `ip_lists` (provisioned)
    IpList,
    /// `rule_sets` (provisioned, with their rules)
    RuleSet,
    /// `sec_rules` of a ruleset
    SecRule,
    /// `deny_rules` of a ruleset
    DenyRule,
    /// `enforcement_boundaries` (provisioned)
    Boundary,
    /// `workloads` (live)
    Workload,
    /// `pairing_profiles` (live)
    PairingProfile,
}

impl Kind {
    /// The path segment of this kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Label => "labels",
            Kind::LabelGroup => "label_groups",
            Kind::Service => "services",
            Kind::IpList => "ip_lists",
            Kind::RuleSet => "rule_sets",
            Kind::SecRule => "sec_rules",
            Kind::DenyRule => "deny_rules",
            Kind::Boundary => "enforcement_boundaries",
            Kind::Workload => "workloads",
            Kind::PairingProfile => "pairing_profiles",
        }
    }

    /// Kinds that live in the draft and are provisioned.
    pub fn provisioned(self) -> bool {
        !matches!(self, Kind::Label | Kind::Workload | Kind::PairingProfile)
    }

    /// Kinds a provision or a revert names directly (rules travel with their ruleset).
    pub const TOP_POLICY: [Kind; 5] = [
        Kind::LabelGroup,
        Kind::Service,
        Kind::IpList,
        Kind::RuleSet,
        Kind::Boundary,
    ];

    fn from_segment(s: &str) -> Option<Kind> {
        [
            Kind::Label,
            Kind::LabelGroup,
            Kind::Service,
            Kind::IpList,
            Kind::RuleSet,
            Kind::SecRule,
            Kind::DenyRule,
            Kind::Boundary,
            Kind::Workload,
            Kind::PairingProfile,
        ]
        .into_iter()
        .find(|k| k.segment() == s)
    }
}

/// Which copy of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Space {
    /// Not provisioned: labels, workloads, pairing profiles.
    Live,
    /// What admins edit.
    Draft,
    /// What VENs enforce.
    Active,
}

impl Space {
    fn segment(self) -> &'static str {
        match self {
            Space::Live => "live",
            Space::Draft => "draft",
            Space::Active => "active",
        }
    }

    /// The space a kind's editable copy is in.
    pub fn of(kind: Kind) -> Space {
        if kind.provisioned() {
            Space::Draft
        } else {
            Space::Live
        }
    }
}

/// The prefix of every object's key, in every space.
pub const OBJECTS: &[u8] = b"o/";

/// The key of one object.
pub fn obj(space: Space, kind: Kind, id: &str) -> Vec<u8> {
    format!("o/{}/{}/{id}", space.segment(), kind.segment()).into_bytes()
}

/// The prefix of every object of one kind in one space.
pub fn obj_prefix(space: Space, kind: Kind) -> Vec<u8> {
    format!("o/{}/{}/", space.segment(), kind.segment()).into_bytes()
}

/// The prefix of the rules (allow or deny) of one ruleset.
pub fn rules_prefix(space: Space, kind: Kind, rule_set: &str) -> Vec<u8> {
    format!("o/{}/{}/{rule_set}/", space.segment(), kind.segment()).into_bytes()
}

/// Parses an object key (`o/{space}/{kind}/{id}`) back into what it names;
/// `None` for any other key. Rule ids keep their `{ruleset}/{rule}` form.
pub fn parse(key: &[u8]) -> Option<(Space, Kind, Id)> {
    let k = std::str::from_utf8(key).ok()?;
    let rest = k.strip_prefix("o/")?;
    let (space, rest) = rest.split_once('/')?;
    let space = [Space::Live, Space::Draft, Space::Active]
        .into_iter()
        .find(|s| s.segment() == space)?;
    let (kind, id) = split_kind_id(rest)?;
    Some((space, kind, id))
}

/// The ruleset and the rule of a rule id (`{ruleset}/{rule}`): rules are stored
/// under their ruleset, and everything that maps a rule to its ruleset asks here.
pub fn split_rule_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or((id, ""))
}

/// The id part of an object key (after the kind prefix).
pub fn id_of(key: &[u8], prefix: &[u8]) -> String {
    String::from_utf8_lossy(&key[prefix.len().min(key.len())..]).into_owned()
}

/// Bumped by every write; see the module docs.
pub const EPOCH: &[u8] = b"m/epoch";
/// The active version number.
pub const VERSION: &[u8] = b"m/version";

/// Version metadata.
pub fn version(n: u64) -> Vec<u8> {
    format!("v/{n:012}").into_bytes()
}

/// The prefix of all version metadata.
pub const VERSIONS: &[u8] = b"v/";

/// The state of one object as of version `n` (only objects version `n` changed).
pub fn version_obj(n: u64, kind: Kind, id: &str) -> Vec<u8> {
    format!("vo/{n:012}/{}/{id}", kind.segment()).into_bytes()
}

/// The prefix of the objects version `n` changed.
pub fn version_objs(n: u64) -> Vec<u8> {
    format!("vo/{n:012}/").into_bytes()
}

/// Splits a `vo/{n}/{kind}/{id}` key's tail into kind and id.
pub fn split_kind_id(tail: &str) -> Option<(Kind, String)> {
    let (seg, id) = tail.split_once('/')?;
    Some((Kind::from_segment(seg)?, id.to_string()))
}

/// The chunk `i` of version `n`'s affected-workload list.
pub fn version_affected(n: u64, i: usize) -> Vec<u8> {
    format!("va/{n:012}/{i:06}").into_bytes()
}

/// The prefix of version `n`'s affected-workload chunks.
pub fn version_affected_prefix(n: u64) -> Vec<u8> {
    format!("va/{n:012}/").into_bytes()
}

/// The name index entry of a uniquely named object.
pub fn name(space: Space, kind: Kind, name: &str) -> Vec<u8> {
    format!("n/{}/{}/{name}", space.segment(), kind.segment()).into_bytes()
}

/// A user.
pub fn user(id: &str) -> Vec<u8> {
    format!("u/{id}").into_bytes()
}

/// The user-name index entry (user names are unique).
pub fn username(name: &str) -> Vec<u8> {
    format!("un/{name}").into_bytes()
}

/// The VEN service address a member announces (written by the member itself).
pub fn ven_member(name: &str) -> Vec<u8> {
    format!("vm/{name}").into_bytes()
}

/// The prefix of every member's VEN service address.
pub const VEN_MEMBERS: &[u8] = b"vm/";

/// Prefixes that hold facts about the nodes themselves, not the org's data: a
/// backup restored into another cluster leaves them out.
pub const NODE_LOCAL: [&[u8]; 1] = [VEN_MEMBERS];

/// The prefix of all users.
pub const USERS: &[u8] = b"u/";

/// An API key, by its `auth_username`.
pub fn api_key(auth_username: &str) -> Vec<u8> {
    format!("k/{auth_username}").into_bytes()
}

/// The prefix of all API keys.
pub const API_KEYS: &[u8] = b"k/";

/// A pairing key, by the hash of its activation code.
pub fn pairing_key(hash_hex: &str) -> Vec<u8> {
    format!("pk/{hash_hex}").into_bytes()
}

/// The key of the pairing key whose activation code is `code`: only the code's
/// hash is stored, so a leaked store does not hand out pairing keys.
pub fn pairing_key_of_code(code: &str) -> Vec<u8> {
    pairing_key(&crate::hash::sha256_hex(&[code.as_bytes()]))
}

/// An audit event; keys sort by time.
pub fn audit(time_ms: u64, rand: u64) -> Vec<u8> {
    format!("a/{time_ms:015}-{rand:016x}").into_bytes()
}

/// The prefix of all audit events.
pub const AUDIT: &[u8] = b"a/";

/// The single org this PCE serves (Illumio's on-premises default).
pub const ORG: u64 = 1;

/// A fresh random id: 128 bits, hex in UUID layout, as Illumio's hrefs look.
pub fn new_id() -> Id {
    let b: u128 = rand::random();
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether an id from a URL or href can be one of ours (and is safe in a key).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The href of an object (`draft` for provisioned kinds unless `space` says active).
pub fn href(space: Space, kind: Kind, id: &str) -> String {
    match kind {
        Kind::SecRule | Kind::DenyRule => {
            let (rs, rule) = split_rule_id(id);
            format!(
                "/orgs/{ORG}/sec_policy/{}/rule_sets/{rs}/{}/{rule}",
                if space == Space::Active {
                    "active"
                } else {
                    "draft"
                },
                kind.segment()
            )
        }
        k if k.provisioned() => format!(
            "/orgs/{ORG}/sec_policy/{}/{}/{id}",
            if space == Space::Active {
                "active"
            } else {
                "draft"
            },
            k.segment()
        ),
        k => format!("/orgs/{ORG}/{}/{id}", k.segment()),
    }
}

/// Parses an href into kind and id, accepting draft or active for policy objects.
pub fn parse_href(href: &str) -> Option<(Kind, Id)> {
    let rest = href.strip_prefix(&format!("/orgs/{ORG}/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (kind, id) = match parts.as_slice() {
        [seg, id] => (Kind::from_segment(seg)?, id.to_string()),
        ["sec_policy", "draft" | "active", seg, id] => (Kind::from_segment(seg)?, id.to_string()),
        ["sec_policy", "draft" | "active", "rule_sets", rs, seg, rule] => {
            let kind = Kind::from_segment(seg)?;
            if !valid_id(rs) || !valid_id(rule) {
                return None;
            }
            (kind, format!("{rs}/{rule}"))
        }
        _ => return None,
    };
    if kind.provisioned() != rest.starts_with("sec_policy/") {
        return None;
    }
    if !matches!(kind, Kind::SecRule | Kind::DenyRule) && !valid_id(&id) {
        return None;
    }
    Some((kind, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_round_trip() {
        for kind in [Kind::Label, Kind::Service, Kind::Workload, Kind::RuleSet] {
            let id = new_id();
            assert_eq!(
                parse_href(&href(Space::of(kind), kind, &id)),
                Some((kind, id))
            );
        }
        let rule = format!("{}/{}", new_id(), new_id());
        assert_eq!(
            parse_href(&href(Space::Draft, Kind::SecRule, &rule)),
            Some((Kind::SecRule, rule))
        );
        assert_eq!(parse_href("/orgs/1/sec_policy/draft/labels/x"), None);
        assert_eq!(parse_href("/orgs/2/labels/x"), None);
        assert_eq!(parse_href("/orgs/1/labels/../x"), None);
    }

    #[test]
    fn object_keys_parse_back() {
        let rule = format!("{}/{}", new_id(), new_id());
        let key = obj(Space::Active, Kind::SecRule, &rule);
        assert_eq!(
            parse(&key),
            Some((Space::Active, Kind::SecRule, rule.clone()))
        );
        assert_eq!(split_rule_id(&rule).0, &rule[..rule.find('/').unwrap()]);
        let id = new_id();
        assert_eq!(
            parse(&obj(Space::Live, Kind::Workload, &id)),
            Some((Space::Live, Kind::Workload, id))
        );
        assert_eq!(parse(EPOCH), None);
        assert_eq!(parse(b"o/nowhere/labels/x"), None);
        assert_eq!(parse(b"o/live/nothing/x"), None);
    }
}
