//! How Raft entries are written to the log and to AppendEntries, and how
//! entries written by the release before are still read.
//!
//! Version 1 entries carried one [`Command`]; version 2 entries carry a
//! [`Proposal`] of several ([`ENTRY_FORMAT_VERSION`]). bincode has no field
//! tags, so the two layouts cannot be told apart by their bytes: the version
//! byte decides. A node upgraded in place reads its old log, and a leader of the
//! release before can still replicate to it; a node of the release before
//! refuses version 2 with a message naming the version (it never misreads it).

use openraft::raft::AppendEntriesRequest;
use openraft::{Entry, EntryPayload, LogId, Membership, Vote};
use serde::Serialize;

use crate::codec::{self, CodecError, ENTRY_FORMAT_VERSION};
use crate::types::{
    Command, CommandResponse, NodeId, NodeInfo, Proposal, SnapshotFile, TypeConfig,
};

openraft::declare_raft_types!(
    /// The type configuration of format version 1: one command per entry.
    pub(crate) V1:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<V1>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

fn upgrade(e: Entry<V1>) -> Entry<TypeConfig> {
    Entry {
        log_id: e.log_id,
        payload: match e.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(cmd) => EntryPayload::Normal(Proposal::from(cmd)),
            EntryPayload::Membership(m) => EntryPayload::Membership(m),
        },
    }
}

/// openraft's `Entry` of version 1, borrowed: the same fields and variants in
/// the same order, so bincode writes the same bytes without copying a command.
#[derive(Serialize)]
struct V1EntryRef<'a> {
    log_id: &'a LogId<NodeId>,
    payload: V1PayloadRef<'a>,
}

#[derive(Serialize)]
enum V1PayloadRef<'a> {
    Blank,
    Normal(&'a Command),
    Membership(&'a Membership<NodeId, NodeInfo>),
}

/// One log record. An entry that version 1 can hold (anything but a proposal
/// of several commands) is written as version 1, byte for byte what the
/// release before wrote, so a node can still be rolled back to it as long as
/// no leader of this release has batched writes into its log.
pub(crate) fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, CodecError> {
    match as_v1(entry) {
        Some(v1) => codec::encode(&v1),
        None => codec::encode_as(ENTRY_FORMAT_VERSION, entry),
    }
}

/// The entry as version 1 holds it, if it can.
fn as_v1(entry: &Entry<TypeConfig>) -> Option<V1EntryRef<'_>> {
    let payload = match &entry.payload {
        EntryPayload::Blank => V1PayloadRef::Blank,
        EntryPayload::Membership(m) => V1PayloadRef::Membership(m),
        EntryPayload::Normal(p) => match p.commands.as_slice() {
            [one] => V1PayloadRef::Normal(one),
            _ => return None,
        },
    };
    Some(V1EntryRef {
        log_id: &entry.log_id,
        payload,
    })
}

/// openraft's `AppendEntriesRequest` of version 1, borrowed (fields in its order).
#[derive(Serialize)]
struct V1AppendRef<'a> {
    vote: &'a Vote<NodeId>,
    prev_log_id: &'a Option<LogId<NodeId>>,
    entries: Vec<V1EntryRef<'a>>,
    leader_commit: &'a Option<LogId<NodeId>>,
}

/// One log record of either version.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, CodecError> {
    match codec::split_version(bytes)? {
        (ENTRY_FORMAT_VERSION, body) => codec::decode_body(body),
        (1, body) => Ok(upgrade(codec::decode_body(body)?)),
        (found, _) => Err(CodecError::EntryVersion { found }),
    }
}

/// An AppendEntries payload: version 1 while every entry fits it, so a
/// follower of the release before keeps following a leader of this one (a
/// heartbeat always fits) until a proposal of several commands must go.
pub(crate) fn encode_append(req: &AppendEntriesRequest<TypeConfig>) -> Result<Vec<u8>, CodecError> {
    let entries: Option<Vec<V1EntryRef<'_>>> = req.entries.iter().map(as_v1).collect();
    match entries {
        Some(entries) => codec::encode(&V1AppendRef {
            vote: &req.vote,
            prev_log_id: &req.prev_log_id,
            entries,
            leader_commit: &req.leader_commit,
        }),
        None => codec::encode_as(ENTRY_FORMAT_VERSION, req),
    }
}

/// An AppendEntries payload of either version.
pub(crate) fn decode_append(bytes: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    match codec::split_version(bytes)? {
        (ENTRY_FORMAT_VERSION, body) => codec::decode_body(body),
        (1, body) => {
            let old: AppendEntriesRequest<V1> = codec::decode_body(body)?;
            Ok(AppendEntriesRequest {
                vote: old.vote,
                prev_log_id: old.prev_log_id,
                leader_commit: old.leader_commit,
                entries: old.entries.into_iter().map(upgrade).collect(),
            })
        }
        (found, _) => Err(CodecError::EntryVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;
    use crate::types::{ClientId, Mutation};

    fn command() -> Command {
        Command {
            client: ClientId(0xfeed_beef_0000_0000_1234_5678_9abc_def0),
            serial: 7,
            expect_revision: Some(3),
            compare: vec![],
            ops: vec![Mutation::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }],
        }
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    /// Bytes as the release before wrote them (its `codec::encode` of an
    /// `Entry` with one command) read as a proposal of that one command.
    #[test]
    fn a_version_1_log_record_reads_as_a_proposal_of_its_command() {
        let old: Entry<V1> = Entry {
            log_id: log_id(5),
            payload: EntryPayload::Normal(command()),
        };
        let bytes = codec::encode(&old).unwrap();
        assert_eq!(bytes[0], 1);
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!(entry.log_id, log_id(5));
        match entry.payload {
            EntryPayload::Normal(p) => assert_eq!(p.commands, vec![command()]),
            other => panic!("expected a normal entry, got {other:?}"),
        }
    }

    /// What needs no second command is written exactly as the release before
    /// wrote it; a proposal of several is version 2 and reads back whole.
    #[test]
    fn log_records_stay_version_1_until_an_entry_holds_several_commands() {
        let membership = Membership::<NodeId, NodeInfo>::new(
            vec![[1u64].into_iter().collect()],
            [(1u64, NodeInfo::default())]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let old: Vec<Entry<V1>> = vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Membership(membership.clone()),
            },
            Entry {
                log_id: log_id(3),
                payload: EntryPayload::Normal(command()),
            },
        ];
        for e in &old {
            let new = upgrade(e.clone());
            assert_eq!(encode_entry(&new).unwrap(), codec::encode(e).unwrap());
        }
        let two = Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![command(), command()],
            }),
        };
        let bytes = encode_entry(&two).unwrap();
        assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
        assert_eq!(
            format!("{:?}", decode_entry(&bytes).unwrap()),
            format!("{two:?}")
        );
    }

    #[test]
    fn a_version_1_append_entries_reads_and_version_2_round_trips() {
        let old: AppendEntriesRequest<V1> = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(4)),
            leader_commit: Some(log_id(4)),
            entries: vec![
                Entry {
                    log_id: log_id(5),
                    payload: EntryPayload::Normal(command()),
                },
                Entry {
                    log_id: log_id(6),
                    payload: EntryPayload::Blank,
                },
            ],
        };
        let old_bytes = codec::encode(&old).unwrap();
        let req = decode_append(&old_bytes).unwrap();
        assert_eq!(req.entries.len(), 2);
        // Nothing here needs version 2: the release before reads it as written.
        assert_eq!(encode_append(&req).unwrap(), old_bytes);
        let mut batched = req.clone();
        batched.entries.push(Entry {
            log_id: log_id(7),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![command(), command()],
            }),
        });
        let bytes = encode_append(&batched).unwrap();
        assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
        let again = decode_append(&bytes).unwrap();
        assert_eq!(format!("{again:?}"), format!("{batched:?}"));
    }

    #[test]
    fn an_unknown_entry_version_is_refused_by_name() {
        let mut bytes = encode_entry(&Entry {
            log_id: log_id(1),
            payload: EntryPayload::Normal(Proposal::from(command())),
        })
        .unwrap();
        bytes[0] = 3;
        let err = decode_entry(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("version 3") && err.contains("1 and 2"),
            "{err}"
        );
    }
}
