//! The supercluster write path, seen from the ops team: the admin REST API
//! (axum over rustls), authentication, RBAC, validation and provisioning.
//!
//! Every region serves the same API from its own replica. Reads are local and
//! carry the revision they reflect; writes are planned against the local replica
//! and committed through the leader (`sc_raft::Node::write` forwards them over the
//! inter-region mutual-TLS channel) as one command guarded by the revisions read,
//! so a stale plan is refused by every replica alike and planned again.
//!
//! - [`keys`]: where things live in the store; [`docs`]: stored shapes and
//!   Illumio's JSON; [`world`]: stored docs → the policy model;
//! - [`db`]: typed reads and optimistic transactions; [`auth`], [`rbac`]: who
//!   may do what; [`api`]: the routes; [`server`]: HTTPS; [`jobs`]: async reads.

pub mod api;
pub mod auth;
pub mod client;
pub mod db;
pub mod docs;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod rbac;
pub mod server;
pub mod time;
pub mod world;

pub use error::{ApiError, ServeError};
pub use server::{serve, ApiOptions, ApiServer};

use crate::auth::{new_api_key, UserDoc};
use crate::db::{Db, Txn};
use crate::docs::{Meta, Record, ALL_SERVICES_ID, ANY_IP_LIST_ID, RECORD_V};
use crate::keys::{Kind, Space};
use crate::rbac::{Permission, Role};

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
        txn.put(b"un/owner".to_vec(), &OWNER_ID)?;
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
            doc: world::builtin_service(),
        };
        let ipl = Record {
            v: RECORD_V,
            meta,
            doc: world::builtin_ip_list(),
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
