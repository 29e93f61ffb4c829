//! Regions replicating one store: writes from anywhere, leader loss, restarts,
//! snapshot catch-up, partitions. Real nodes, real TLS, real disk.

use std::time::Duration;

use sc_raft::{Consistency, Outcome, Tuning};
use sc_testkit::read;
use sc_testkit::{TestCluster, Writer};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_region_are_committed_once_and_read_back_everywhere() {
    let c = TestCluster::start(3).await;
    let mut w = Writer::new();
    for id in [1, 2, 3] {
        for i in 0..5 {
            let r = w
                .write(c.node(id), &format!("via-{id}/{i}"), &format!("v{id}.{i}"))
                .await
                .unwrap();
            assert_eq!(r.outcome, Outcome::Applied);
        }
    }
    // A retried request (same client, same serial), sent through two other regions,
    // is answered with the first answer and changes nothing.
    let cmd = w.put("once", "1");
    let first = c.node(1).write(cmd.clone()).await.unwrap();
    let again = c.node(2).write(cmd.clone()).await.unwrap();
    let third = c.node(3).write(cmd).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(first, third);
    assert_eq!(first.revision, 16);

    for id in [1, 2, 3] {
        let node = c.node(id);
        // Linearizable reads, on the leader and on members alike.
        assert_eq!(
            read(node, "via-3/4", Consistency::Linearizable)
                .await
                .unwrap()
                .as_deref(),
            Some("v3.4")
        );
        let r = node.get(b"once", Consistency::Linearizable).await.unwrap();
        assert_eq!(r.revision, 16, "read on node {id} reflects revision 16");
        assert_eq!(r.value.unwrap().version, 1, "applied once");
    }
    c.wait_converged(T).await;
    for id in [1, 2, 3] {
        let scan = c
            .node(id)
            .scan(b"via-", 100, Consistency::Local)
            .await
            .unwrap();
        assert_eq!(scan.value.len(), 15);
        assert_eq!(scan.revision, 16);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leader_elects_a_new_one_and_keeps_every_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let old = c.leader().await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let mut w = Writer::new();
    let mut acked = Vec::new();
    for i in 0..20 {
        let via = [1, 2, 3][i % 3];
        let key = format!("before/{i}");
        w.write(c.node(via), &key, "x").await.unwrap();
        acked.push(key);
    }

    c.stop(old).await;
    let new = c.leader_among(&survivors, T).await;
    assert_ne!(new, old);
    for i in 0..20 {
        let via = survivors[i % 2];
        let key = format!("after/{i}");
        w.write(c.node(via), &key, "y").await.unwrap();
        acked.push(key);
    }
    for id in &survivors {
        for key in &acked {
            assert!(
                read(c.node(*id), key, Consistency::Linearizable)
                    .await
                    .unwrap()
                    .is_some(),
                "{key} lost on {id}"
            );
        }
    }

    // The old leader comes back from its disk, rejoins as a follower and catches up.
    c.restart(old).await;
    c.wait_converged(T).await;
    for key in &acked {
        assert!(
            read(c.node(old), key, Consistency::Local)
                .await
                .unwrap()
                .is_some(),
            "{key} missing on restarted {old}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_catches_up_and_a_new_region_catches_up_through_a_snapshot() {
    let tuning = Tuning {
        snapshot_every: 40,
        keep_logs: 5,
        ..Tuning::default()
    };
    let mut c = TestCluster::start_with(3, tuning).await;
    let leader = c.leader().await;
    let lagger = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    c.stop(lagger).await;
    let mut w = Writer::new();
    for i in 0..150 {
        w.write(c.node(leader), &format!("k/{i:04}"), &"v".repeat(200))
            .await
            .unwrap();
    }
    // Restarted from its own disk, the node catches up with no manual step.
    c.restart(lagger).await;
    c.wait_converged(T).await;
    assert_eq!(
        c.node(lagger)
            .scan(b"k/", 1000, Consistency::Local)
            .await
            .unwrap()
            .value
            .len(),
        150
    );

    // With every follower caught up the leader snapshots and purges its log, so a
    // region that joins now can only get the state from a snapshot.
    for i in 150..200 {
        w.write(c.node(leader), &format!("k/{i:04}"), &"v".repeat(200))
            .await
            .unwrap();
    }
    // openraft postpones a purge while a replication stream is using those
    // entries; a snapshot taken while the cluster is idle purges at once.
    c.wait_converged(T).await;
    c.node(leader).trigger_snapshot().await.unwrap();
    let s = c
        .node(leader)
        .wait_until(T, "log purged behind a snapshot", |s| {
            s.purged.unwrap_or(0) > 100
        })
        .await
        .unwrap();
    let learner = c.add_node(4, false).await;
    let caught = learner
        .wait_until(T, "learner caught up through a snapshot", |s| {
            s.role == "learner" && s.revision == 200 && s.snapshot.is_some()
        })
        .await
        .unwrap();
    assert!(
        caught.snapshot.unwrap_or(0) > s.purged.unwrap_or(0) - 1,
        "installed a snapshot: {caught:?}"
    );
    let view = c.node(leader).membership_view();
    assert!(view.learners.contains(&4) && !view.voters.contains(&4));
    assert_eq!(
        learner
            .scan(b"k/", 1000, Consistency::Local)
            .await
            .unwrap()
            .value
            .len(),
        200
    );
    c.wait_converged(T).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_partition_cannot_commit_and_converges_after_healing() {
    let c = TestCluster::start(3).await;
    // Formed means settled: no node is in the middle of a membership change
    // (a joint configuration would need the cut-off node's vote too).
    for id in [1, 2, 3] {
        assert!(!c.node(id).status().membership_changing, "node {id}");
    }
    let old = c.leader().await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let mut w = Writer::new();
    w.write(c.node(old), "before", "1").await.unwrap();

    c.faults.partition(&[old], &majority);
    // The isolated leader cannot commit: the write fails (outcome unknown, never acknowledged).
    let lost = w.write(c.node(old), "minority", "x").await;
    assert!(lost.is_err(), "a minority must not commit: {lost:?}");
    // The majority elects a leader and commits.
    let new = c.leader_among(&majority, T).await;
    assert_ne!(new, old);
    let mut w2 = Writer::new();
    for i in 0..10 {
        w2.write(c.node(majority[i % 2]), &format!("majority/{i}"), "y")
            .await
            .unwrap();
    }

    c.faults.heal();
    c.wait_converged(T).await;
    for id in [1, 2, 3] {
        let node = c.node(id);
        assert_eq!(
            read(node, "minority", Consistency::Local).await.unwrap(),
            None,
            "unacknowledged write on {id}"
        );
        assert_eq!(
            node.scan(b"majority/", 100, Consistency::Local)
                .await
                .unwrap()
                .value
                .len(),
            10
        );
        assert_eq!(
            read(node, "before", Consistency::Local)
                .await
                .unwrap()
                .as_deref(),
            Some("1")
        );
    }
    c.shutdown().await;
}

/// Writes to `node` every 20 ms until told to stop; returns (acknowledged, failed).
fn steady_writer(
    node: sc_raft::Node,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut w = Writer::new();
        let (mut ok, mut failed) = (0, Vec::new());
        let mut i = 0u64;
        while !*stop.borrow() {
            i += 1;
            match w.write(&node, &format!("steady/{i}"), "v").await {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_region_does_not_raise_its_term_or_depose_the_leader_when_it_returns() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let cut = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != cut).collect();
    let term = c.node(leader).status().term;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let writer = steady_writer(c.node(leader).clone(), stop);
    // Well past its election timeout (LAN: 500-700 ms), twice: partitioned by
    // the network, then fenced for a drill.
    c.faults.partition(&[cut], &others);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        c.node(cut).status().term,
        term,
        "a partitioned node must not campaign (pre-vote finds no majority)"
    );
    c.faults.heal();
    c.wait_converged(T).await;
    c.node(cut).fence().raise(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        c.node(cut).status().term,
        term,
        "a fenced node must not campaign"
    );
    c.node(cut).fence().lift();
    c.wait_converged(T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let (ok, failed) = writer.await.unwrap();
    // Its return deposes nobody: same leader, same term, no write failed.
    assert_eq!(c.leader().await, leader);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).status().term, term, "node {id}");
    }
    assert!(ok > 100, "the writer kept writing ({ok})");
    assert!(
        failed.is_empty(),
        "{} writes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_can_be_demoted_promoted_and_removed() {
    use sc_raft::MembershipOp;
    let mut c = TestCluster::start(3).await;
    c.add_node(4, true).await;
    c.wait_for_members(4, T).await;
    // Membership changes are accepted by any node and routed to the leader.
    let v = c
        .node(2)
        .change_membership(MembershipOp::Demote, 4, None)
        .await
        .unwrap();
    assert!(v.learners.contains(&4) && !v.voters.contains(&4));
    let v = c
        .node(3)
        .change_membership(MembershipOp::Promote, 4, None)
        .await
        .unwrap();
    assert!(v.voters.contains(&4));
    let v = c
        .node(1)
        .change_membership(MembershipOp::Remove, 4, None)
        .await
        .unwrap();
    assert!(!v.voters.contains(&4) && !v.learners.contains(&4));
    c.stop(4).await;
    // The three remaining regions still commit.
    Writer::new()
        .write(c.node(3), "after-remove", "1")
        .await
        .unwrap();
    // Removing an unknown node is refused with a reason.
    let err = c
        .node(1)
        .change_membership(MembershipOp::Promote, 99, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_link_to_one_region_does_not_hold_back_commits() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (far, near) = (others[0], others[1]);
    // The far region sits behind a 100 ms link each way (well inside the election
    // timeout, so it stays a follower); the near one is on the LAN.
    c.faults.delay(leader, far, Duration::from_millis(100));
    c.faults.delay(far, leader, Duration::from_millis(100));
    let mut w = Writer::new();
    let mut acked_before_far_applied = 0;
    for i in 0..20 {
        let r = w
            .write(c.node(leader), &format!("slow/{i}"), "v")
            .await
            .unwrap();
        // Acknowledged with the near follower's copy; the far one applies it later.
        let far_rev = c.node(far).status().revision;
        if far_rev < r.revision {
            acked_before_far_applied += 1;
        }
    }
    assert!(
        acked_before_far_applied > 0,
        "every commit waited for the far region"
    );
    for key in ["slow/0", "slow/19"] {
        assert!(read(c.node(near), key, Consistency::Linearizable)
            .await
            .unwrap()
            .is_some());
    }
    c.faults.heal();
    c.wait_converged(T).await;
    c.shutdown().await;
}

/// The durability promise at its hardest: every region loses power at once.
/// Writers run through all three regions while every log sync is slowed (the
/// followers' to 20 ms);
/// then no disk makes anything durable any more (`set_syncs_failing`, the
/// instant of the cut), the nodes stop, their logs lose what no sync covered
/// (`DiskFaults::lose_unsynced`), and they start again, the old leader last.
/// Every write any region acknowledged is there, through whichever region
/// it went. A log
/// that reported an append durable before its sync (a follower's
/// acknowledgement, or a leader's counted before its own copy, decision
/// 0027) would lose acknowledged writes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_of_every_region_at_once_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut c = TestCluster::start(3).await;
    let leader = c.leader().await;
    // The followers' disks are the slow ones: an acknowledgement sent before
    // its sync would leave a wide window for the cut.
    for id in [1, 2, 3] {
        let ms = if id == leader { 2 } else { 20 };
        c.disk(id).set_sync_delay(Duration::from_millis(ms));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut acked = Vec::new();
    for i in 0..6u64 {
        let node = c.node(i % 3 + 1).clone();
        let stop = stop.clone();
        let last = Arc::new(AtomicU64::new(0));
        acked.push(last.clone());
        writers.push(tokio::spawn(async move {
            // Each writer owns one key and writes 1, 2, 3, ... in turn.
            let mut w = Writer::new();
            let mut n = 1u64;
            while !stop.load(Ordering::SeqCst) {
                match w.write(&node, &format!("w{i}"), &n.to_string()).await {
                    Ok(r) if r.outcome == Outcome::Applied => {
                        last.store(n, Ordering::SeqCst);
                        n += 1;
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The cut: from here on no sync of any region succeeds.
    for id in [1, 2, 3] {
        c.disk(id).set_syncs_failing(true);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        // A write in flight at the cut fails once its node's core stops.
        let _ = tokio::time::timeout(T, w).await;
    }
    let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert!(
        acked.iter().all(|n| *n > 0),
        "every writer had a write acknowledged before the cut: {acked:?}"
    );
    let mut lost_files = 0;
    for id in [1, 2, 3] {
        c.stop(id).await;
        let disk = c.disk(id);
        lost_files += disk.lose_unsynced().expect("power cut");
        disk.set_syncs_failing(false);
        disk.set_sync_delay(Duration::ZERO);
    }
    assert!(lost_files > 0, "the cut found nothing unsynced to take");
    // The two followers come back first and elect one of themselves: what
    // they acknowledged must be on their own disks, whatever the old
    // leader's holds.
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &others {
        c.restart(*id).await;
    }
    c.leader_among(&others, T).await;
    c.restart(leader).await;
    c.wait_converged(T).await;
    for (i, last) in acked.iter().enumerate() {
        let key = format!("w{i}");
        for id in [1, 2, 3] {
            let v = read(c.node(id), &key, Consistency::Linearizable)
                .await
                .unwrap()
                .and_then(|v| v.parse::<u64>().ok());
            assert!(
                v.is_some_and(|v| v >= *last),
                "{key}: {last} was acknowledged, node {id} reads {v:?} after the power cut"
            );
        }
    }
    c.shutdown().await;
}
