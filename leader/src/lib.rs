//! The supercluster write path, seen from the ops team: the admin REST API
//! (axum over rustls), authentication, RBAC, validation and provisioning.
//!
//! Every region serves the same API from its own replica. Reads are local and
//! carry the revision they reflect; writes are planned against the local replica
//! and committed through the leader (`sc_raft::Node::write` forwards them over the
//! inter-region mutual-TLS channel) as one command guarded by the revisions read,
//! so a stale plan is refused by every replica alike and planned again.
//!
//! The store itself (keys, stored records, transactions, the policy world) is
//! `sc_store`, shared with the VEN service; this crate holds what is HTTP:
//!
//! - [`docs`]: Illumio's JSON for each stored object, and input parsing;
//! - [`auth`], [`rbac`]: who may do what; [`api`]: the routes; [`server`]:
//!   HTTPS; [`jobs`]: async reads; [`error`]: the API's error answers.

pub mod api;
pub mod audit_queue;
pub mod auth;
pub mod client;
pub mod console;
pub mod docs;
pub mod error;
pub mod failed_logins;
pub mod jobs;
pub mod metrics;
pub mod rbac;
pub mod retention;
pub mod server;
pub mod session;

pub use error::{ApiError, ServeError};
pub use server::{serve, ApiOptions, ApiServer};

use sc_store::db::{Db, Txn};
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::{builtin_ip_list, builtin_service, ALL_SERVICES_ID, ANY_IP_LIST_ID};
use sc_store::record::{Meta, Record, RECORD_V};
use sc_store::time;

use crate::auth::{new_api_key, UserDoc};
use crate::rbac::{Permission, Role};

/// Plans and commits a write with the API's error type: `sc_store::transact!`
/// with [`ApiError`] (whose 404/406 refusals may only reflect a lagging replica).
#[macro_export]
macro_rules! transact {
    ($db:expr, $plan:expr) => {
        sc_store::transact!($db, $crate::ApiError, $plan)
    };
}

/// The bootstrap owner's user id.
pub const OWNER_ID: &str = "owner";

/// Credentials shown once.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// HTTP Basic user name.
    pub auth_username: String,
    /// HTTP Basic password.
    pub secret: String,
}

/// Creates the owner user with one API key, and the org's built-in objects, once
/// per cluster. Returns the key when this call created it, `None` when an owner
/// already exists (the secret was shown to whoever created it).
pub async fn bootstrap(node: &sc_raft::Node) -> Result<Option<Credentials>, ServeError> {
    let db = Db::new(node.clone());
    let now = time::now_ms();
    let (key, auth_username, secret) = new_api_key(OWNER_ID, "bootstrap", now);
    let result = transact!(&db, async {
        if db.rev(&keys::user(OWNER_ID)).await?.is_some() {
            return Err(ApiError::conflict("owner_exists", "the owner exists"));
        }
        let mut txn = Txn::default();
        let user = UserDoc {
            username: "owner".into(),
            full_name: Some("Bootstrap owner".into()),
            permissions: vec![Permission {
                role: Role::Owner,
                scope: vec![],
            }],
            created_at: now,
            created_by: "/users/owner".into(),
        };
        txn.expect(keys::user(OWNER_ID), None);
        txn.put(keys::user(OWNER_ID), &user)?;
        txn.put(keys::username("owner"), &OWNER_ID)?;
        txn.put(keys::api_key(&auth_username), &key)?;
        let meta = Meta {
            created_at: now,
            updated_at: now,
            created_by: "/users/owner".into(),
            updated_by: "/users/owner".into(),
        };
        let svc = Record {
            v: RECORD_V,
            meta: meta.clone(),
            doc: builtin_service(),
        };
        let ipl = Record {
            v: RECORD_V,
            meta,
            doc: builtin_ip_list(),
        };
        for space in [Space::Draft, Space::Active] {
            txn.put(keys::obj(space, Kind::Service, ALL_SERVICES_ID), &svc)?;
            txn.put(keys::obj(space, Kind::IpList, ANY_IP_LIST_ID), &ipl)?;
        }
        txn.put(
            keys::name(Space::Draft, Kind::Service, &svc.doc.name),
            &ALL_SERVICES_ID,
        )?;
        txn.put(
            keys::name(Space::Draft, Kind::IpList, &ipl.doc.name),
            &ANY_IP_LIST_ID,
        )?;
        Ok((txn, true))
    });
    match result {
        Ok((true, _)) => Ok(Some(Credentials {
            auth_username,
            secret,
        })),
        Ok((false, _)) => Ok(None),
        Err(e) if e.token() == "owner_exists" => Ok(None),
        Err(e) => Err(ServeError::Bootstrap(
            e.errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}
