//! Roles and what they allow. Roles stack: a principal may do what any one of its
//! permissions allows. Scoped roles carry a scope (labels); a ruleset is inside a
//! scope when its own scope carries every label of it, a workload when it carries
//! every label of it (see `sc_policy::guard`).

use serde::{Deserialize, Serialize};

use sc_policy::guard::rule_set_within_scope;
use sc_policy::model::{self as m, Actor};

use sc_store::keys::Id;

/// The roles, named as Illumio names them in role hrefs (`/orgs/1/roles/{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including users and API keys.
    Owner,
    /// Everything but users.
    Admin,
    /// Reads everything.
    ReadOnly,
    /// Provisions label groups, services, IP lists, boundaries (not rulesets).
    GlobalObjectProvisioner,
    /// Edits rulesets inside its scope.
    RulesetManager,
    /// Edits and provisions rulesets inside its scope.
    RulesetProvisioner,
    /// Reads rulesets inside its scope.
    RulesetViewer,
    /// Edits workloads (and pairing) inside its scope.
    WorkloadManager,
}

impl Role {
    /// Every role, for the matrix test and the roles listing.
    pub const ALL: [Role; 8] = [
        Role::Owner,
        Role::Admin,
        Role::ReadOnly,
        Role::GlobalObjectProvisioner,
        Role::RulesetManager,
        Role::RulesetProvisioner,
        Role::RulesetViewer,
        Role::WorkloadManager,
    ];

    /// The role's name in hrefs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::ReadOnly => "read_only",
            Role::GlobalObjectProvisioner => "global_object_provisioner",
            Role::RulesetManager => "ruleset_manager",
            Role::RulesetProvisioner => "ruleset_provisioner",
            Role::RulesetViewer => "ruleset_viewer",
            Role::WorkloadManager => "workload_manager",
        }
    }

    /// Parses a role name.
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// Whether the role takes a scope.
    pub fn scoped(self) -> bool {
        matches!(
            self,
            Role::RulesetManager
                | Role::RulesetProvisioner
                | Role::RulesetViewer
                | Role::WorkloadManager
        )
    }

    fn global_writer(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    fn global_reader(self) -> bool {
        matches!(
            self,
            Role::Owner | Role::Admin | Role::ReadOnly | Role::GlobalObjectProvisioner
        )
    }
}

/// A role, with its scope (label ids) for scoped roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The role.
    pub role: Role,
    /// Label ids (empty for global roles; for scoped roles, empty means "all").
    pub scope: Vec<Id>,
}

impl Permission {
    fn scope_actors(&self) -> Vec<Actor> {
        self.scope.iter().cloned().map(Actor::Label).collect()
    }

    fn covers_rule_set(&self, rs: &m::RuleSet) -> bool {
        rule_set_within_scope(rs, &self.scope_actors())
    }

    fn covers_workload_labels(&self, labels: &[Id]) -> bool {
        self.scope.iter().all(|l| labels.contains(l))
    }
}

/// Who is calling, resolved from their API key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: Id,
    /// User name.
    pub username: String,
    /// Their permissions.
    pub perms: Vec<Permission>,
}

/// The classes of things the API guards, each answered by [`Principal::may`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read labels, groups, services, IP lists, boundaries, versions, pending.
    ReadObjects,
    /// Create, change, delete labels, groups, services, IP lists, boundaries.
    WriteObjects,
    /// Read audit events.
    ReadAudit,
    /// Users and API keys of others.
    ManageUsers,
    /// Restore an old version.
    Rollback,
    /// The DR runbook: fence a region, move leadership, read the cluster's state.
    OperateCluster,
}

impl Principal {
    /// The user's href.
    pub fn href(&self) -> String {
        format!("/users/{}", self.user_id)
    }

    /// Whether any permission allows `action` (scope-free actions).
    pub fn may(&self, action: Action) -> bool {
        self.perms.iter().any(|p| match action {
            Action::ReadObjects => true,
            Action::WriteObjects | Action::Rollback => p.role.global_writer(),
            Action::ReadAudit => matches!(p.role, Role::Owner | Role::Admin | Role::ReadOnly),
            Action::ManageUsers | Action::OperateCluster => p.role == Role::Owner,
        })
    }

    /// Whether the principal may read a ruleset.
    pub fn may_read_rule_set(&self, rs: &m::RuleSet) -> bool {
        self.perms.iter().any(|p| {
            p.role.global_reader()
                || (matches!(
                    p.role,
                    Role::RulesetManager | Role::RulesetProvisioner | Role::RulesetViewer
                ) && p.covers_rule_set(rs))
        })
    }

    /// Whether the principal may edit a ruleset (and its rules) in the draft.
    pub fn may_write_rule_set(&self, rs: &m::RuleSet) -> bool {
        self.perms.iter().any(|p| {
            p.role.global_writer()
                || (matches!(p.role, Role::RulesetManager | Role::RulesetProvisioner)
                    && p.covers_rule_set(rs))
        })
    }

    /// Whether the principal may provision (or revert) a change of this kind;
    /// for rulesets, `rs` holds its draft and active forms (both must be covered).
    pub fn may_provision(&self, kind_is_rule_set: bool, rs: &[&m::RuleSet]) -> bool {
        self.perms.iter().any(|p| {
            p.role.global_writer()
                || (!kind_is_rule_set && p.role == Role::GlobalObjectProvisioner)
                || (kind_is_rule_set
                    && p.role == Role::RulesetProvisioner
                    && rs.iter().all(|r| p.covers_rule_set(r)))
        })
    }

    /// Whether the principal reads every object whatever its labels (a global
    /// role), so per-object checks can be skipped.
    pub fn reads_everything(&self) -> bool {
        self.perms.iter().any(|p| p.role.global_reader())
    }

    /// Whether the principal may read a workload with these labels.
    pub fn may_read_workload(&self, labels: &[Id]) -> bool {
        self.perms.iter().any(|p| {
            p.role.global_reader() || (p.role.scoped() && p.covers_workload_labels(labels))
        })
    }

    /// Whether the principal may create, change or delete a workload (or a pairing
    /// profile) with these labels.
    pub fn may_write_workload(&self, labels: &[Id]) -> bool {
        self.perms.iter().any(|p| {
            p.role.global_writer()
                || (p.role == Role::WorkloadManager && p.covers_workload_labels(labels))
        })
    }

    /// Whether the principal holds a global role that may write (for the
    /// broad-rule guard rail).
    pub fn is_global_admin(&self) -> bool {
        self.perms.iter().any(|p| p.role.global_writer())
    }
}
