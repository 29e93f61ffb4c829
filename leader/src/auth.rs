//! Users, API keys and request authentication.
//!
//! API keys are HTTP Basic credentials: `auth_username` + secret. The secret is 256
//! random bits shown once at creation; the store keeps only a salted SHA-256 of it.
//! A slow password hash would add tens of milliseconds to every request and buys
//! nothing against guessing a 256-bit random secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::rbac::{Permission, Principal};
use sc_store::db::Db;
use sc_store::keys::{self, Id};

/// A user and their roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDoc {
    /// Login name, unique.
    pub username: String,
    /// Display name.
    pub full_name: Option<String>,
    /// Roles (stackable).
    pub permissions: Vec<Permission>,
    /// Creation time (ms).
    pub created_at: u64,
    /// Creator's href.
    pub created_by: String,
}

/// A stored API key: never the secret, only its salted hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyDoc {
    /// Key id (href segment).
    pub key_id: Id,
    /// Owner.
    pub user_id: Id,
    /// Label given at creation.
    pub name: String,
    /// Random salt, hex.
    pub salt: String,
    /// SHA-256(salt || secret), hex.
    pub hash: String,
    /// Creation time (ms).
    pub created_at: u64,
}

use sc_store::hash::{hex, sha256_hex};

/// A fresh random token of `bytes` bytes, hex.
pub fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex(&v)
}

/// A new key: the stored doc, the `auth_username` and the secret to show once.
pub fn new_api_key(user_id: &str, name: &str, now: u64) -> (ApiKeyDoc, String, String) {
    let key_id = random_hex(8);
    let auth_username = format!("api_{key_id}");
    let secret = random_hex(32);
    let salt = random_hex(16);
    let hash = sha256_hex(&[salt.as_bytes(), secret.as_bytes()]);
    (
        ApiKeyDoc {
            key_id,
            user_id: user_id.to_string(),
            name: name.to_string(),
            salt,
            hash,
            created_at: now,
        },
        auth_username,
        secret,
    )
}

fn eq_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user name of HTTP Basic credentials, if they decode (for the audit
/// trail of a failed sign-in; never trusted otherwise).
pub fn basic_username(header: Option<&str>) -> Option<String> {
    let encoded = header?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let name = text.split_once(':')?.0;
    // Only what could be a key's name goes into the trail.
    (name.len() <= 64 && !name.chars().any(crate::docs::deceptive)).then(|| name.to_string())
}

/// Resolves an `Authorization: Basic ...` header to a principal.
pub async fn authenticate(db: &Db, header: Option<&str>) -> Result<Principal, ApiError> {
    let Some(header) = header else {
        return Err(ApiError::unauthorized(
            "send an API key as HTTP Basic credentials (auth_username:secret)",
        ));
    };
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or_else(|| ApiError::unauthorized("only HTTP Basic authentication is accepted"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::unauthorized("the Basic credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| ApiError::unauthorized("the Basic credentials are not UTF-8"))?;
    let (username, secret) = text
        .split_once(':')
        .ok_or_else(|| ApiError::unauthorized("the Basic credentials need a ':'"))?;
    let bad = || ApiError::unauthorized("unknown API key or wrong secret");
    // Every key's user name is `api_` and hex (see new_api_key): anything else
    // is refused without a store lookup or a read index.
    let shaped = username.strip_prefix("api_").is_some_and(|h| {
        !h.is_empty() && h.len() <= 60 && h.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if !shaped {
        return Err(bad());
    }
    let key = match db.get::<ApiKeyDoc>(&keys::api_key(username)).await? {
        Some(k) => k,
        // A key created a moment ago in another region may not have reached this
        // replica yet: catch up with the leader once before calling it unknown.
        // Without a leader the local answer stands.
        None if db.linearize().await.is_ok() => db
            .get::<ApiKeyDoc>(&keys::api_key(username))
            .await?
            .ok_or_else(bad)?,
        None => return Err(bad()),
    }
    .value;
    let hash = sha256_hex(&[key.salt.as_bytes(), secret.as_bytes()]);
    if !eq_ct(hash.as_bytes(), key.hash.as_bytes()) {
        return Err(bad());
    }
    principal_of(db, key).await
}

/// The principal of a key already proven (a console session's): re-read,
/// so a deleted key or a changed user counts at once.
pub async fn principal_for_key(db: &Db, auth_username: &str) -> Result<Principal, ApiError> {
    let key = db
        .get::<ApiKeyDoc>(&keys::api_key(auth_username))
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized("the API key of this session is gone; sign in again")
        })?
        .value;
    principal_of(db, key).await
}

async fn principal_of(db: &Db, key: ApiKeyDoc) -> Result<Principal, ApiError> {
    let user = db
        .get::<UserDoc>(&keys::user(&key.user_id))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown API key or wrong secret"))?
        .value;
    Ok(Principal {
        user_id: key.user_id,
        username: user.username,
        perms: user.permissions,
    })
}

/// Byte strings equal, in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    eq_ct(a.as_bytes(), b.as_bytes())
}

/// A token bucket per API key: `rate` requests per second, bursts of `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `rate` 0 disables it.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `who`; on refusal, the seconds until one is available.
    pub fn check(&self, who: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 60);
        }
        let (tokens, last) = buckets.entry(who.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}
