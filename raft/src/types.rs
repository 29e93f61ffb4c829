//! The openraft type configuration and the domain types the Raft group is made
//! of: nodes and membership, the commands the replicated store accepts and their
//! answers, the snapshot data, and how fresh a read must be.
//!
//! openraft's types stay inside this crate: other crates see [`Command`],
//! [`CommandResponse`], [`NodeInfo`] and the [`crate::Node`] facade.
//!
//! This module sits below everything else in the crate (storage, network, node):
//! it imports none of them, so each can use these types without a circle.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A node's id in the Raft group: unique for the life of the cluster, never reused.
pub type NodeId = u64;

/// What the cluster stores about each member: enough to reach it and to report on it.
///
/// It is replicated in the membership config, so every node can find every other
/// node (and the leader) without a separate discovery service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// A DNS-label name, also the name in the node's TLS certificate.
    pub name: String,
    /// The region this node serves (e.g. `us-east`).
    pub region: String,
    /// `host:port` of the node's inter-region gRPC endpoint.
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.name, self.addr, self.region)
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration of the policy store.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResponse>,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot held as a file on disk, so a large state is never held in memory
/// whole, neither when built nor when streamed.
///
/// It is openraft's snapshot data, named by [`TypeConfig`], so it lives here;
/// the file's format (written and read by [`crate::storage::snapshot`]) builds
/// on the types of this module, not the other way round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Where the snapshot file is.
    pub path: PathBuf,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever the local replica has applied (may lag the leader).
    Local,
    /// Reflects every write acknowledged before the read began (ReadIndex).
    Linearizable,
}

/// What a membership change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipOp {
    /// Add as a learner and wait until it has caught up.
    AddLearner,
    /// Learner → voter.
    Promote,
    /// Voter → learner.
    Demote,
    /// Out of the cluster.
    Remove,
}

/// The voters and learners after a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// Voting members.
    pub voters: BTreeSet<NodeId>,
    /// Learners (replicas with no vote).
    pub learners: BTreeSet<NodeId>,
}

/// The largest key accepted by the store: keys are ids and paths, not data.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value accepted: policy objects are small; big blobs belong elsewhere.
/// It also keeps every log entry well below sled's blob threshold (see
/// docs/decisions/0002-sled-durability.md).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// The most mutations one command may carry: a provision of a large draft is one
/// command (all or nothing), so this is generous. Preconditions count too.
pub const MAX_OPS_PER_COMMAND: usize = 16 * 1024;
/// The most bytes (keys, values and precondition keys) one command may carry:
/// a bound on one log entry, so one write cannot stall replication for
/// everyone else.
pub const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Identifies one writer, so a retried request is recognised and applied once.
///
/// Random 128-bit ids are chosen by the writer; `serial` numbers its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u128);

impl ClientId {
    /// A fresh random id for a new writer session.
    pub fn random() -> Self {
        ClientId(rand::random())
    }
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Set `key` to `value`, creating it if absent.
    Put {
        /// The key.
        #[serde(with = "crate::raw_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "crate::raw_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op when absent).
    Delete {
        /// The key.
        #[serde(with = "crate::raw_bytes")]
        key: Vec<u8>,
    },
}

impl Mutation {
    /// The key this mutation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
        }
    }
}

/// A precondition on one key, checked against the state the command is applied to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    #[serde(with = "crate::raw_bytes")]
    pub key: Vec<u8>,
    /// The key's expected `mod_revision`; `None` means "the key must not exist".
    pub mod_revision: Option<u64>,
}

/// A state-machine command: all-or-nothing mutations under preconditions.
///
/// The policy layer validates a change against the state at a known revision and
/// sends that revision along; if anything moved since, the command is refused on
/// every replica alike, never half-applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who sent it.
    pub client: ClientId,
    /// The writer's sequence number; a repeat of an applied serial is answered from
    /// the session table, not applied again.
    pub serial: u64,
    /// If set, the store's revision must equal this.
    pub expect_revision: Option<u64>,
    /// Per-key preconditions.
    pub compare: Vec<Compare>,
    /// The changes, applied in order.
    pub ops: Vec<Mutation>,
}

/// Why a command is malformed (refused before it is proposed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No mutation at all.
    #[error("the command has no operations")]
    Empty,
    /// Too many mutations and preconditions.
    #[error("the command has {0} operations and preconditions; at most {MAX_OPS_PER_COMMAND} are allowed")]
    TooManyOps(usize),
    /// A key is empty or too long.
    #[error("operation {index}: key length {len} is outside 1..={MAX_KEY_LEN}")]
    KeyLength {
        /// Which operation.
        index: usize,
        /// The length found.
        len: usize,
    },
    /// The command as a whole is too big.
    #[error("the command carries {0} bytes; at most {MAX_COMMAND_BYTES} are allowed")]
    TooBig(usize),
    /// A value is too long.
    #[error("operation {index}: value of {len} bytes exceeds {MAX_VALUE_LEN}")]
    ValueLength {
        /// Which operation.
        index: usize,
        /// The length found.
        len: usize,
    },
}

impl Command {
    /// The keys and values it carries, in bytes: what its encoding's size,
    /// and the time a replica takes to decode and store it, grow with.
    pub fn payload_bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Mutation::Put { key, value } => key.len() + value.len(),
                Mutation::Delete { key } => key.len(),
            })
            .sum();
        ops + self.compare.iter().map(|c| c.key.len()).sum::<usize>()
    }

    /// Checks the limits above; the state machine calls it too, so a malformed
    /// command that slipped in is refused identically on every replica.
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.ops.is_empty() {
            return Err(CommandError::Empty);
        }
        let count = self.ops.len() + self.compare.len();
        if count > MAX_OPS_PER_COMMAND {
            return Err(CommandError::TooManyOps(count));
        }
        let keys = self
            .ops
            .iter()
            .map(Mutation::key)
            .chain(self.compare.iter().map(|c| c.key.as_slice()));
        for (index, key) in keys.enumerate() {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(CommandError::KeyLength {
                    index,
                    len: key.len(),
                });
            }
        }
        let bytes = self.payload_bytes();
        if bytes > MAX_COMMAND_BYTES {
            return Err(CommandError::TooBig(bytes));
        }
        for (index, op) in self.ops.iter().enumerate() {
            if let Mutation::Put { value, .. } = op {
                if value.len() > MAX_VALUE_LEN {
                    return Err(CommandError::ValueLength {
                        index,
                        len: value.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command {:x}#{} ({} ops)",
            self.client.0,
            self.serial,
            self.ops.len()
        )
    }
}

/// What one Raft entry carries: the commands that reached the leader
/// together, applied in order, each with its own answer.
///
/// Why several: openraft 0.9's core handles every entry on its own (an
/// append, a flush notice, a replication event, an apply), one at a time on
/// one task; with many writers that core, not the disk, set the pace. Writes
/// that arrive while earlier ones are in flight share an entry instead
/// ([`crate::proposer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, in the order they are applied.
    pub commands: Vec<Command>,
}

impl Proposal {
    /// The keys and values of every command, in bytes (see
    /// [`Command::payload_bytes`]).
    pub fn payload_bytes(&self) -> usize {
        self.commands.iter().map(Command::payload_bytes).sum()
    }
}

impl From<Command> for Proposal {
    fn from(cmd: Command) -> Self {
        Proposal {
            commands: vec![cmd],
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.commands.as_slice() {
            [one] => one.fmt(f),
            many => write!(f, "{} commands", many.len()),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// All mutations applied; the store is now at `revision`.
    Applied,
    /// A precondition failed; nothing changed.
    Conflict {
        /// A human-readable reason naming the key or revision that moved.
        reason: String,
    },
    /// The command broke a limit (see [`CommandError`]); nothing changed.
    Invalid {
        /// The reason.
        reason: String,
    },
    /// A Raft-internal entry (blank or membership): no client waits for it.
    Internal,
}

/// The answer to a command, identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The store revision after this command (unchanged when refused).
    pub revision: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// One stored value with the revisions that let writers compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The value.
    #[serde(with = "crate::raw_bytes")]
    pub value: Vec<u8>,
    /// The store revision that created the key.
    pub create_revision: u64,
    /// The store revision that last changed it.
    pub mod_revision: u64,
    /// How many times it was written since creation (1 after creation).
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], len: usize) -> Mutation {
        Mutation::Put {
            key: key.to_vec(),
            value: vec![0; len],
        }
    }

    fn cmd(ops: Vec<Mutation>) -> Command {
        Command {
            client: ClientId(1),
            serial: 1,
            expect_revision: None,
            compare: vec![],
            ops,
        }
    }

    /// Preconditions weigh like operations, so no command can make an entry
    /// (or a proposal of many) larger than the limits say.
    #[test]
    fn preconditions_count_against_the_limits() {
        let mut c = cmd(vec![put(b"k", 1)]);
        c.compare = (0..MAX_OPS_PER_COMMAND)
            .map(|i| Compare {
                key: format!("c{i}").into_bytes(),
                mod_revision: None,
            })
            .collect();
        assert_eq!(
            c.validate(),
            Err(CommandError::TooManyOps(MAX_OPS_PER_COMMAND + 1))
        );
        c.compare.truncate(2);
        assert_eq!(c.payload_bytes(), 1 + 1 + 2 + 2);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn limits_are_checked_with_the_offending_operation_named() {
        assert_eq!(cmd(vec![]).validate(), Err(CommandError::Empty));
        assert_eq!(
            cmd(vec![put(b"a", 1), put(b"", 1)]).validate(),
            Err(CommandError::KeyLength { index: 1, len: 0 })
        );
        assert_eq!(
            cmd(vec![put(b"a", MAX_VALUE_LEN + 1)]).validate(),
            Err(CommandError::ValueLength {
                index: 0,
                len: MAX_VALUE_LEN + 1
            })
        );
        assert!(cmd(vec![put(b"a", MAX_VALUE_LEN)]).validate().is_ok());
    }
}
