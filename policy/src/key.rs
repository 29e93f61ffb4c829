//! Where policy objects live in the replicated key/value store.
//!
//! The store is an ordered map of byte keys; policy objects are kept under
//! `{state}/{kind}/{id}` so that one kind of one state (draft or active) is one
//! contiguous range, which makes "list all rulesets of the draft" a range scan.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a key string is not a valid policy object key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key does not have the `{state}/{kind}/{id}` shape.
    #[error("object key {0:?} must look like draft/<kind>/<id> or active/<kind>/<id>")]
    Shape(String),
    /// The kind segment names no known object kind.
    #[error("object key {key:?}: unknown object kind {kind:?}")]
    UnknownKind {
        /// The full key.
        key: String,
        /// The offending segment.
        kind: String,
    },
    /// The id is empty or contains characters that would break the ordering.
    #[error("object key {0:?}: the id must be 1-128 characters of [A-Za-z0-9_.-]")]
    BadId(String),
}

/// Whether an object belongs to the editable draft or to the provisioned policy.
///
/// Both live in one store so a provision is a single atomic command that copies
/// the draft range to the active range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyState {
    /// What admins edit.
    Draft,
    /// What VENs enforce.
    Active,
}

/// The kinds of objects the policy engine stores, named as in Illumio's API paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// `labels`
    Label,
    /// `label_groups`
    LabelGroup,
    /// `workloads`
    Workload,
    /// `services`
    Service,
    /// `ip_lists`
    IpList,
    /// `rule_sets`
    RuleSet,
    /// `enforcement_boundaries`
    EnforcementBoundary,
}

impl ObjectKind {
    /// Every kind, in key order, so callers can iterate the whole estate.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Label,
        ObjectKind::LabelGroup,
        ObjectKind::Workload,
        ObjectKind::Service,
        ObjectKind::IpList,
        ObjectKind::RuleSet,
        ObjectKind::EnforcementBoundary,
    ];

    /// The path segment used in keys and in the REST API.
    pub fn segment(self) -> &'static str {
        match self {
            ObjectKind::Label => "labels",
            ObjectKind::LabelGroup => "label_groups",
            ObjectKind::Workload => "workloads",
            ObjectKind::Service => "services",
            ObjectKind::IpList => "ip_lists",
            ObjectKind::RuleSet => "rule_sets",
            ObjectKind::EnforcementBoundary => "enforcement_boundaries",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.segment() == s)
    }
}

/// The store key of one policy object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Draft or active.
    pub state: PolicyState,
    /// The object kind.
    pub kind: ObjectKind,
    /// The object id, unique within its kind.
    pub id: String,
}

impl ObjectKey {
    /// Builds a key, checking the id so that every key round-trips through `parse`.
    pub fn new(state: PolicyState, kind: ObjectKind, id: &str) -> Result<Self, KeyError> {
        let key = ObjectKey {
            state,
            kind,
            id: id.to_string(),
        };
        if !valid_id(id) {
            return Err(KeyError::BadId(key.to_string()));
        }
        Ok(key)
    }

    /// Parses `{state}/{kind}/{id}`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let mut parts = s.splitn(3, '/');
        let (Some(state), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::Shape(s.to_string()));
        };
        let state = match state {
            "draft" => PolicyState::Draft,
            "active" => PolicyState::Active,
            _ => return Err(KeyError::Shape(s.to_string())),
        };
        let kind = ObjectKind::from_segment(kind).ok_or_else(|| KeyError::UnknownKind {
            key: s.to_string(),
            kind: kind.to_string(),
        })?;
        Self::new(state, kind, id).map_err(|_| KeyError::BadId(s.to_string()))
    }

    /// The key prefix holding every object of one kind in one state.
    pub fn prefix(state: PolicyState, kind: ObjectKind) -> String {
        format!("{}/{}/", state_segment(state), kind.segment())
    }
}

fn state_segment(state: PolicyState) -> &'static str {
    match state {
        PolicyState::Draft => "draft",
        PolicyState::Active => "active",
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            state_segment(self.state),
            self.kind.segment(),
            self.id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_string_form() {
        for kind in ObjectKind::ALL {
            let k = ObjectKey::new(PolicyState::Draft, kind, "42").unwrap();
            assert_eq!(ObjectKey::parse(&k.to_string()).unwrap(), k);
            assert!(k
                .to_string()
                .starts_with(&ObjectKey::prefix(PolicyState::Draft, kind)));
        }
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        assert!(matches!(
            ObjectKey::parse("draft/labels"),
            Err(KeyError::Shape(_))
        ));
        assert!(matches!(
            ObjectKey::parse("staging/labels/1"),
            Err(KeyError::Shape(_))
        ));
        assert!(matches!(
            ObjectKey::parse("draft/widgets/1"),
            Err(KeyError::UnknownKind { .. })
        ));
        assert!(matches!(
            ObjectKey::parse("draft/labels/a/b"),
            Err(KeyError::BadId(_))
        ));
        assert!(matches!(
            ObjectKey::parse("draft/labels/"),
            Err(KeyError::BadId(_))
        ));
    }
}
