//! Online/offline state through `Presence` against a real 3-node cluster: a
//! member that lost a VEN to another member cannot mark it offline afterwards.

use std::time::{Duration, Instant};

use sc_member::presence::Presence;
use sc_store::db::{Db, Txn};
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::WorkloadDoc;
use sc_store::record::{Meta, Record, RECORD_V};
use sc_testkit::TestCluster;

async fn doc(db: &Db, key: &[u8]) -> WorkloadDoc {
    db.get::<Record<WorkloadDoc>>(key)
        .await
        .expect("read")
        .expect("present")
        .value
        .doc
}

async fn wait_for(db: &Db, key: &[u8], what: &str, pred: impl Fn(&WorkloadDoc) -> bool) {
    let t0 = Instant::now();
    loop {
        db.linearize().await.expect("linearize");
        if pred(&doc(db, key).await) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_member_serving_a_ven_marks_it_offline() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let db = Db::new(cluster.node(leader).clone());
    let id = keys::new_id();
    let key = keys::obj(Space::Live, Kind::Workload, &id);
    let rec = Record {
        v: RECORD_V,
        meta: Meta {
            created_at: 0,
            updated_at: 0,
            created_by: "/users/owner".into(),
            updated_by: "/users/owner".into(),
        },
        doc: WorkloadDoc {
            name: "w".into(),
            hostname: "w".into(),
            description: None,
            interfaces: vec![],
            labels: vec![],
            enforcement_mode: sc_policy::model::EnforcementMode::Full,
            online: false,
            managed: true,
            public_ip: None,
            region: Some("us-east".into()),
            quarantined: false,
            suspended: false,
            served_by: None,
            visibility_level: Default::default(),
        },
    };
    let mut txn = Txn::default();
    txn.put(key.clone(), &rec).expect("encode");
    db.commit(txn).await.ok().expect("seed");

    // The VEN streams to member a: a claims it.
    let (a, _ta) = Presence::start(Db::new(cluster.node(1).clone()), "member-a");
    let (b, _tb) = Presence::start(Db::new(cluster.node(2).clone()), "member-b");
    a.set(&id, true);
    wait_for(&db, &key, "online, served by a", |d| {
        d.online && d.served_by.as_deref() == Some("member-a")
    })
    .await;
    // It fails over to b, which claims it although it is already online.
    assert!(b.must_claim(&doc(&db, &key).await));
    b.set(&id, true);
    wait_for(&db, &key, "served by b", |d| {
        d.online && d.served_by.as_deref() == Some("member-b")
    })
    .await;
    // a's late "offline" (it lost the stream, and could not write until now)
    // is skipped: the workload stays online.
    a.set(&id, false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    db.linearize().await.expect("linearize");
    let d = doc(&db, &key).await;
    assert!(
        d.online && d.served_by.as_deref() == Some("member-b"),
        "a stale offline from a must not apply: {d:?}"
    );
    // b's own goes through.
    b.set(&id, false);
    wait_for(&db, &key, "offline", |d| !d.online && d.served_by.is_none()).await;
}
