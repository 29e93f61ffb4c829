//! The log and state machine: openraft's own storage conformance suite (on the
//! segment-file log nodes run, and on the sled log it replaced), then the
//! behaviours the suite does not cover (durability across reopen, exactly-once
//! retries, preconditions, crash-safe snapshot install).

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::RaftLogReader;
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, Vote,
};
use sc_raft::storage::{LogStore, NodeLog, SledEngine, StateMachine, WalEngine};
use sc_raft::types::TypeConfig;
use sc_raft::{ClientId, Command, Compare, DiskFaults, Mutation, NodeId, Outcome};
use tempfile::TempDir;

/// The log and state machine as a node opens them.
fn open(dir: &Path) -> (NodeLog, StateMachine) {
    sc_raft::storage::open_node_storage(dir, &dir.join("snapshots"), &DiskFaults::default())
        .unwrap()
}

/// The same with the log in sled (the engine before decision 0018).
fn open_sled(dir: &Path) -> (LogStore<SledEngine>, StateMachine) {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let db = sc_raft::storage::open_db(&store).unwrap();
    let log = LogStore::new(SledEngine::open(db.clone(), &store, DiskFaults::default()).unwrap())
        .unwrap();
    let sm = StateMachine::open(db, &store, &dir.join("snapshots")).unwrap();
    (log, sm)
}

struct Builder;

impl StoreBuilder<TypeConfig, NodeLog, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, NodeLog, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open(dir.path());
        Ok((dir, log, sm))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledEngine>, StateMachine, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<SledEngine>, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open_sled(dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn the_segment_log_passes_openraft_conformance_suite() {
    Suite::test_all(Builder).unwrap();
}

#[test]
fn the_sled_log_passes_openraft_conformance_suite() {
    Suite::test_all(SledBuilder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put(client: u128, serial: u64, key: &str, value: &str) -> Command {
    Command {
        client: ClientId(client),
        serial,
        expect_revision: None,
        compare: vec![],
        ops: vec![Mutation::Put {
            key: key.into(),
            value: value.into(),
        }],
    }
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(cmd.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vote_and_flushed_entries_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path());
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.blocking_append(vec![
            entry(1, put(1, 1, "a", "1")),
            entry(2, put(1, 2, "b", "2")),
        ])
        .await
        .unwrap();
    }
    let (mut log, _sm) = open(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_applied_once_and_answered_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    let first = sm
        .apply(vec![entry(1, put(7, 1, "k", "v1"))])
        .await
        .unwrap();
    let retry = sm
        .apply(vec![entry(2, put(7, 1, "k", "v1"))])
        .await
        .unwrap();
    assert_eq!(first, retry);
    assert_eq!(first[0][0].revision, 1);
    let view = sm.read_view();
    let read = view.get(b"k").unwrap();
    assert_eq!(read.revision, 1);
    assert_eq!(read.value.unwrap().version, 1);
    // An older serial of the same client is refused, a newer one applies.
    let older = sm
        .apply(vec![entry(3, put(7, 0, "k", "old"))])
        .await
        .unwrap();
    assert!(matches!(older[0][0].outcome, Outcome::Conflict { .. }));
    let newer = sm
        .apply(vec![entry(4, put(7, 2, "k", "v2"))])
        .await
        .unwrap();
    assert_eq!(
        (newer[0][0].revision, &newer[0][0].outcome),
        (2, &Outcome::Applied)
    );
}

/// A proposal's commands apply in order, each as if it were an entry of its
/// own: its own answer, session and preconditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_of_one_proposal_apply_in_order_each_with_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    let mut stale = put(3, 1, "c", "never");
    stale.expect_revision = Some(0);
    let proposal = sc_raft::Proposal {
        commands: vec![
            put(1, 1, "a", "1"),
            // A retry of the same serial inside the same entry: answered, not re-applied.
            put(1, 1, "a", "1"),
            put(2, 1, "a", "2"),
            stale,
            put(2, 2, "b", "3"),
        ],
    };
    let answers = sm
        .apply(vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Normal(proposal),
        }])
        .await
        .unwrap();
    let answers = &answers[0];
    assert_eq!(answers.len(), 5);
    let revisions: Vec<u64> = answers.iter().map(|a| a.revision).collect();
    assert_eq!(revisions, [1, 1, 2, 2, 3]);
    assert!(matches!(answers[3].outcome, Outcome::Conflict { .. }));
    let view = sm.read_view();
    assert_eq!(view.get(b"a").unwrap().value.unwrap().value, b"2");
    assert!(view.get(b"c").unwrap().value.is_none());
    assert_eq!(view.revision().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_precondition_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    sm.apply(vec![entry(1, put(1, 1, "a", "1"))]).await.unwrap();
    let mut stale = put(2, 1, "b", "2");
    stale.expect_revision = Some(0);
    stale.ops.push(Mutation::Put {
        key: "c".into(),
        value: "3".into(),
    });
    let r = sm.apply(vec![entry(2, stale)]).await.unwrap();
    assert!(
        matches!(&r[0][0].outcome, Outcome::Conflict { reason } if reason.contains("revision 1"))
    );
    let mut cas = put(2, 2, "a", "new");
    cas.compare.push(Compare {
        key: "a".into(),
        mod_revision: Some(9),
    });
    let r = sm.apply(vec![entry(3, cas)]).await.unwrap();
    assert!(matches!(r[0][0].outcome, Outcome::Conflict { .. }));
    let view = sm.read_view();
    assert!(view.get(b"b").unwrap().value.is_none());
    assert!(view.get(b"c").unwrap().value.is_none());
    assert_eq!(view.get(b"a").unwrap().value.unwrap().value, b"1");
    assert_eq!(view.revision().unwrap(), 1);
    // applied index still moved: the entry was consumed, just refused.
    assert_eq!(view.get(b"a").unwrap().applied_index, Some(3));
}

/// A store under `dir` holding keys k001..=k`n`, and a snapshot of it.
async fn snapshot_of_keys(
    dir: &std::path::Path,
    n: u64,
) -> (NodeLog, StateMachine, openraft::Snapshot<TypeConfig>) {
    let (log, mut sm) = open(dir);
    for i in 1..=n {
        sm.apply(vec![entry(i, put(1, i, &format!("k{i:03}"), "v"))])
            .await
            .unwrap();
    }
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (log, sm, snap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_install_leaves_the_old_state_whole() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_l, leader, snap) = snapshot_of_keys(leader_dir.path(), 50).await;

    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open(dir.path());
        sm.apply(vec![entry(1, put(2, 1, "mine", "x"))])
            .await
            .unwrap();
    }
    // Simulate a crash half-way through an install: generation 1 trees exist and
    // are partly filled, but the pointer still names generation 0.
    {
        let db = sc_raft::storage::open_db(&dir.path().join("store")).unwrap();
        let half = db.open_tree("sm_kv.1").unwrap();
        half.insert("k001", "garbage").unwrap();
        db.flush().unwrap();
    }
    {
        let (_log, mut sm) = open(dir.path());
        let view = sm.read_view();
        assert_eq!(view.get(b"mine").unwrap().value.unwrap().value, b"x");
        assert!(view.get(b"k001").unwrap().value.is_none());
        // Now a real install, then a reopen: the new state, whole.
        let mut target = sm.begin_receiving_snapshot().await.unwrap();
        std::fs::copy(&snap.snapshot.path, &target.path).unwrap();
        *target = sc_raft::storage::SnapshotFile {
            path: target.path.clone(),
        };
        sm.install_snapshot(&snap.meta, target).await.unwrap();
    }
    let (_log, mut sm) = open(dir.path());
    let view = sm.read_view();
    assert!(view.get(b"mine").unwrap().value.is_none());
    assert_eq!(view.scan(b"k", 1000).unwrap().value.len(), 50);
    assert_eq!(view.digest().unwrap(), leader.read_view().digest().unwrap());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 50)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_snapshot_arriving_twice_installs_twice_without_losing_a_file() {
    // A node that adds itself while the operator adds it too is sent the
    // same snapshot on two streams: the first install must not delete the
    // second's file under it (issue 19: the Raft core stopped for good).
    let leader_dir = tempfile::tempdir().unwrap();
    let (_l, _leader, snap) = snapshot_of_keys(leader_dir.path(), 20).await;
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    let first = sm.begin_receiving_snapshot().await.unwrap();
    let second = sm.begin_receiving_snapshot().await.unwrap();
    std::fs::copy(&snap.snapshot.path, &first.path).unwrap();
    std::fs::copy(&snap.snapshot.path, &second.path).unwrap();
    sm.install_snapshot(&snap.meta, first).await.unwrap();
    assert!(
        second.path.exists(),
        "the second stream's file is still there"
    );
    sm.install_snapshot(&snap.meta, second).await.unwrap();
    assert_eq!(sm.read_view().scan(b"k", 100).unwrap().value.len(), 20);
    // What a crash left half-received is cleaned at the next start.
    let stray = sm.begin_receiving_snapshot().await.unwrap();
    std::fs::write(&stray.path, b"half").unwrap();
    drop(sm);
    drop(_log);
    let (_log, _sm) = open(dir.path());
    assert!(!stray.path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = open(dir.path());
    sm.apply(vec![entry(1, put(1, 1, "a", "1"))]).await.unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_l2, mut sm2) = open(other.path());
    sm2.apply(vec![entry(1, put(9, 1, "keep", "me"))])
        .await
        .unwrap();
    let target = sm2.begin_receiving_snapshot().await.unwrap();
    let mut bytes = std::fs::read(&snap.snapshot.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&target.path, &bytes).unwrap();
    assert!(sm2.install_snapshot(&snap.meta, target).await.is_err());
    assert_eq!(
        sm2.read_view().get(b"keep").unwrap().value.unwrap().value,
        b"me"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_reported_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let faults = DiskFaults::default();
    let mut log =
        LogStore::new(WalEngine::open(&dir.path().join("raft-log"), faults.clone()).unwrap())
            .unwrap();
    faults.set_failing(true);
    assert!(log.save_vote(&Vote::new(1, 1)).await.is_err());
    assert!(log
        .blocking_append(vec![entry(1, put(1, 1, "a", "1"))])
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_kept_in_sled_by_an_earlier_version_moves_to_the_segment_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open_sled(dir.path());
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        log.blocking_append((1..=300).map(|i| entry(i, put(1, i, &format!("k{i}"), "v"))))
            .await
            .unwrap();
        log.purge(log_id(1, 100)).await.unwrap();
    }
    for _ in 0..2 {
        // The first open moves the log; the second finds it moved.
        let (mut log, _sm) = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 100)));
        assert_eq!(state.last_log_id, Some(log_id(1, 300)));
        let entries = log.try_get_log_entries(101..=300).await.unwrap();
        assert_eq!(entries.len(), 200);
        assert_eq!(entries[0].log_id, log_id(1, 101));
    }
    assert!(!dir.path().join("raft-log.moving").exists());
    // sled no longer holds a log that could be mistaken for the current one.
    let (log, _sm) = open_sled(dir.path());
    let mut log = log;
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
}
