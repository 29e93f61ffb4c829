//! The typed policy store on top of Raft, shared by the admin API (`sc-leader`)
//! and the VEN service (`sc-member`): neither reaches into the other to read or
//! write the store, and both agree on its layout because only this crate knows it.
//!
//! - [`keys`]: where everything lives, and the parser back from a key;
//! - [`record`]: the envelope of a stored object and its encoding;
//!   [`objects`]: the stored policy objects and their model form;
//!   [`audit`]: the audit record;
//! - [`db`]: typed reads off the local replica and optimistic transactions
//!   (preconditions and the epoch) committed through the leader; [`transact!`];
//! - [`world`]: stored objects → the policy model;
//! - [`time`], [`hash`]: the clock and digests the records carry.

pub mod audit;
pub mod db;
pub mod error;
pub mod hash;
pub mod keys;
pub mod objects;
pub mod record;
pub mod time;
pub mod world;

pub use db::{Db, PlanError, Txn};
pub use error::StoreError;
