//! What a caller tells the engine changed. Its own file because the indexes
//! (which rules a change touches) and the update (what it recomputes) both
//! read it, and neither owns it.

use crate::model::Id;

/// A changed object, as reported to [`crate::compute::Engine::update`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// A workload added, changed (labels, addresses, mode, online) or removed.
    Workload(Id),
    /// A label added, changed or removed.
    Label(Id),
    /// A label group added, changed or removed.
    LabelGroup(Id),
    /// A service added, changed or removed.
    Service(Id),
    /// An IP list added, changed or removed.
    IpList(Id),
    /// A ruleset (with its rules) added, changed or removed.
    RuleSet(Id),
    /// An enforcement boundary added, changed or removed.
    Boundary(Id),
}
